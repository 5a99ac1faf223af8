"""Well-tempered rounds on the 2-D double well (kT = 1), whose exact P(x1 > 0) = 0.8443 and
Delta F = -1.690 kT come from 1-D quadrature, plus checkpoint/resume."""

import math

import pytest
import torch

from sciffusion.domains.boltzmann.bias import WellTemperedBias
from sciffusion.domains.boltzmann.energies import DoubleWell2D
from sciffusion.domains.boltzmann.sampler import AdjointSampler
from sciffusion.domains.boltzmann.wtasbs import run_wtasbs

FIT = dict(samples_per_iteration=256, gradient_steps=20, batch_size=256)


def x1(x):
    return x[:, :1]


def make(seed=0, **kw):
    smp = AdjointSampler((2,), sigma_max=3.0, num_steps=kw.pop("num_steps", 50), hidden=kw.pop("hidden", 64),
                         depth=kw.pop("depth", 2), lr=2e-3, max_adjoint_norm=10.0, seed=seed)
    bias = WellTemperedBias(1, lower=-3.5, upper=3.5, bins=141, sigma=0.3, height=0.02, gamma=6.0)
    return smp, bias


def weighted_p(log_w, cv):
    w = torch.softmax(log_w, 0)
    return float((w * (cv[:, 0] > 0).double()).sum())


def test_biased_reweighted_sampler_reproduces_the_double_well():
    energy = DoubleWell2D(kT=1.0)
    exact_p = energy.exact_probability(0.0)
    exact_df = energy.exact_delta_f(0.0)
    assert exact_p == pytest.approx(0.8443, abs=1e-4)
    smp, bias = make()
    res = run_wtasbs(energy, x1, bias, smp, rounds=4, iterations_per_round=12, final_iterations=20,
                     deposit_samples=200, num_samples=3000, generator=torch.Generator().manual_seed(0),
                     fit_kwargs=FIT, path_weights=True)
    # the bias made the sampler visit both wells (the raw samples are far from 84:16)
    raw_b = float((res.x[:, 0] > 0).double().mean())
    assert 0.05 < raw_b < 0.8, raw_b
    assert bias.frozen and bias.num_hills == 4 * 200
    # every terminal sample of training cost one energy+force call, plus one per final sample
    assert res.energy_evaluations == (4 * 12 + 20) * 256 + 3000 == energy.num_calls
    p = weighted_p(res.path_log_weights, res.cv)
    # tolerance from the ESS: the self-normalised estimate of a probability has standard error
    # ~sqrt(p(1-p)/ESS); 4 of them (Delta F: the same through d(dF)/dp = 1/(p(1-p)))
    se = math.sqrt(exact_p * (1 - exact_p) / res.path_ess)
    assert res.path_ess > 200
    assert abs(p - exact_p) < 4 * se, (p, exact_p, se, res.path_ess)
    df = -math.log(p / (1 - p))
    assert abs(df - exact_df) < 4 * se / (exact_p * (1 - exact_p)), (df, exact_df)
    # the bias weights exp(V/kT) exist and are finite; they are exact only for an exact sampler
    assert torch.isfinite(res.log_weights).all() and res.ess > 1


def _tiny_run(tmp_path, deposit=16, on_round=None):
    smp, bias = make(num_steps=8, hidden=16, depth=1)
    return run_wtasbs(DoubleWell2D(), x1, bias, smp, rounds=3, iterations_per_round=2, final_iterations=2,
                      deposit_samples=deposit, num_samples=32, generator=torch.Generator().manual_seed(5),
                      fit_kwargs=dict(samples_per_iteration=16, gradient_steps=2, batch_size=16),
                      checkpoint=None if tmp_path is None else tmp_path / "ck.pt", on_round=on_round)


def test_interrupted_run_resumes_bit_identically(tmp_path):
    full = _tiny_run(None)

    def crash(r, rec):
        if r == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _tiny_run(tmp_path, on_round=crash)
    assert (tmp_path / "ck.pt").exists()
    resumed = _tiny_run(tmp_path)
    assert torch.equal(full.x, resumed.x)
    assert torch.equal(full.log_weights, resumed.log_weights)
    assert [h["hills"] for h in resumed.history] == [16, 32, 48]
    assert resumed.energy_evaluations == full.energy_evaluations


def test_mismatched_resume_is_refused_by_name(tmp_path):
    _tiny_run(tmp_path)
    with pytest.raises(ValueError, match="deposit_samples"):
        _tiny_run(tmp_path, deposit=8)


def test_resume_with_another_potential_of_the_same_type_is_refused(tmp_path):
    from sciffusion.domains.boltzmann.energies import GaussianMixtureEnergy, energy_fingerprint

    def run(means):
        smp, bias = make(num_steps=4, hidden=8, depth=1)
        return run_wtasbs(GaussianMixtureEnergy(torch.tensor(means)), x1, bias, smp, rounds=1,
                          iterations_per_round=1, final_iterations=0, deposit_samples=4, num_samples=4,
                          generator=torch.Generator().manual_seed(0), checkpoint=tmp_path / "ck.pt",
                          fit_kwargs=dict(samples_per_iteration=8, gradient_steps=1, batch_size=8))

    run([[0.0, 0.0]])
    with pytest.raises(ValueError, match="energy"):
        run([[5.0, 5.0]])
    # the call counter is not part of what the energy is
    e = DoubleWell2D()
    before = energy_fingerprint(e)
    e(torch.zeros(3, 2))
    assert energy_fingerprint(e) == before and e.num_calls == 3


def test_bad_input():
    smp, bias = make(num_steps=4, hidden=8, depth=1)
    g = torch.Generator()
    kw = dict(rounds=1, iterations_per_round=1, final_iterations=0, deposit_samples=4, num_samples=4, generator=g)
    with pytest.raises(ValueError, match="rounds"):
        run_wtasbs(DoubleWell2D(), x1, bias, smp, **{**kw, "rounds": -1})
    with pytest.raises(ValueError, match="num_samples"):
        run_wtasbs(DoubleWell2D(), x1, bias, smp, **{**kw, "num_samples": 0})
    bad = AdjointSampler((3,), num_steps=4, hidden=8, depth=1)
    with pytest.raises(ValueError, match="event_shape"):
        run_wtasbs(DoubleWell2D(), x1, bias, bad, **kw)
    bias.deposit(torch.zeros(1, 1))
    with pytest.raises(ValueError, match="fresh"):
        run_wtasbs(DoubleWell2D(), x1, bias, smp, **kw)
    _, bias = make()
    with pytest.raises(ValueError, match="fit_kwargs"):
        run_wtasbs(DoubleWell2D(), x1, bias, smp, fit_kwargs={"potential": None}, **kw)
    with pytest.raises(ValueError, match="valid rejected"):
        run_wtasbs(DoubleWell2D(), x1, bias, smp, valid=lambda x: torch.zeros(x.shape[0], dtype=torch.bool), **kw)


@pytest.mark.slow
def test_mueller_brown_three_basins():
    """Müller–Brown at kT = 20: the reweighted basin probabilities of the well-tempered sampler
    against 2-D quadrature, within 4 ESS-derived standard errors (about 2 CPU-minutes)."""
    from sciffusion.domains.boltzmann.cli import build_system, run_sample

    spec = build_system("mueller-brown", ["x", "y"])
    exact = spec.energy.exact_basin_probabilities()
    res = run_sample(spec, out=None, seed=0)
    idx = spec.energy.basin_index(res.x)
    w = torch.softmax(res.path_log_weights, 0)
    for k in range(3):
        p = float(w[idx == k].sum())
        se = math.sqrt(float(exact[k] * (1 - exact[k])) / res.path_ess)
        assert abs(p - float(exact[k])) < 4 * se, (k, p, float(exact[k]), se)


def test_bias_weights_recover_boltzmann_for_exact_biased_samples():
    """Exact samples of exp(-(U + V)) (inverse CDF of the x1 marginal on a fine grid; x2 is an
    independent standard normal) reweighted by exp(V/kT) through BiasPotential give P(x1 > 0)
    within 4 ESS-derived standard errors: the reweighting itself is exact."""
    from sciffusion.domains.boltzmann.wtasbs import BiasPotential

    energy = DoubleWell2D()
    bias = WellTemperedBias(1, lower=-3.5, upper=3.5, bins=141, sigma=0.3, height=1.0, gamma=6.0)
    bias.deposit(torch.tensor([[1.7], [1.8], [1.6], [1.75], [-1.6]], dtype=torch.float64), sequential=True)
    pot = BiasPotential(x1, bias)
    grid = torch.linspace(-3.5, 3.5, 200001, dtype=torch.float64)
    pts = torch.stack([grid, torch.zeros_like(grid)], 1)
    logq = -(grid ** 4 - 6 * grid ** 2 - 0.5 * grid) - pot(pts)
    cdf = torch.cumsum(torch.softmax(logq, 0), 0)
    g = torch.Generator().manual_seed(0)
    n = 20000
    idx = torch.searchsorted(cdf, torch.rand(n, generator=g, dtype=torch.float64)).clamp_max(len(grid) - 1)
    x = torch.stack([grid[idx], torch.randn(n, generator=g, dtype=torch.float64)], 1)
    assert float(bias.grid.max()) > 2.0  # a bias that matters: the raw samples are far from Boltzmann
    raw = float((x[:, 0] > 0).double().mean())
    lw = pot(x)
    p = weighted_p(lw, x[:, :1])
    ess = float(torch.exp(2 * torch.logsumexp(lw, 0) - torch.logsumexp(2 * lw, 0)))
    exact_p = energy.exact_probability(0.0)
    se = math.sqrt(exact_p * (1 - exact_p) / ess)
    assert abs(raw - exact_p) > 10 * se
    assert abs(p - exact_p) < 4 * se, (p, exact_p, se)


def test_sequential_deposit_applies_the_well_tempered_decay_within_a_round():
    heights, centers = {}, {}
    for seq in (False, True):
        smp, bias = make()
        bias.height = 1.0
        run_wtasbs(DoubleWell2D(), x1, bias, smp, rounds=1, iterations_per_round=1, final_iterations=0,
                   deposit_samples=50, num_samples=10, generator=torch.Generator().manual_seed(0), fit_kwargs=FIT,
                   sequential_deposit=seq)
        heights[seq], centers[seq] = bias.heights.clone(), bias.centers.clone()
    # batch: every hill of the first round has the full height (empty bias before it)
    assert torch.allclose(heights[False], torch.ones(50, dtype=torch.float64))
    # sequential: h_n = h0 exp(-V_n / (gamma - 1)), V_n = the sum of the earlier Gaussian hills at c_n
    # (closed form; the grid interpolation of V differs from it by ~1e-3 at 141 bins)
    c, h = centers[True][:, 0], heights[True]
    v = torch.stack([(h[:n] * torch.exp(-0.5 * ((c[n] - c[:n]) / 0.3) ** 2)).sum() for n in range(50)])
    inside = c.abs() < 3.4  # the grid spans [-3.5, 3.5]; outside it the bias is not represented
    assert int(inside.sum()) > 40
    assert torch.allclose(h[inside], torch.exp(-v[inside] / 5.0), atol=2e-3)
    assert float(h.min()) < 0.8  # the decay is visible: the test would catch batch heights
