import math

import pytest
import torch

from sciffusion.domains.boltzmann.bias import WellTemperedBias
from sciffusion.domains.boltzmann.energies import DoubleWell2D
from sciffusion.domains.boltzmann.free_energy import (
    Basin, delta_f, delta_f_from_grid, free_energy_surface, mbar_delta_f)

DW = DoubleWell2D()
P_EXACT = DW.exact_probability(0.0)   # 0.8443 by quadrature
DF_EXACT = DW.exact_delta_f()         # -1.6906 kT


def _sample_x1(n, seed, bias=None):
    """Exact samples of x1 from exp(-(E + V)) by inverse CDF on a 80k-node grid (spacing 1e-4,
    far below any statistical error here)."""
    x = torch.linspace(-4, 4, 80001, dtype=torch.float64)
    logp = -(x ** 4 - 6 * x ** 2 - 0.5 * x)
    if bias is not None:
        logp = logp - bias(x[:, None])
    cdf = torch.cumsum(torch.exp(logp - logp.max()), 0)
    cdf = cdf / cdf[-1]
    u = torch.rand(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return x[torch.searchsorted(cdf, u).clamp_max(x.numel() - 1)]


def test_basin_parse_and_periodic_masks():
    phi = torch.tensor([0.5, 1.9, 2.1, -0.5, 3.1, -3.1, 0.5 + 2 * math.pi], dtype=torch.float64)
    b = Basin.parse("B: 0 < phi < 2")
    a = Basin.parse("A = rest")
    m_b = b.mask(phi, ["phi"], [True])
    assert m_b.tolist() == [True, True, False, False, False, False, True]  # 0.5 + 2pi wraps
    assert (a.mask(phi, ["phi"], [True], others=[b]) == ~m_b).all()
    # an arc through +-pi: 2.5 < phi < -2.5
    c = Basin.parse("C: 2.5 < phi < -2.5")
    assert c.mask(phi, ["phi"], [True]).tolist() == [False, False, False, False, True, True, False]
    # pi expressions, one-sided and 'or' clauses, two CVs
    s = torch.tensor([[-2.0, 2.5], [1.0, -1.0], [-1.0, 0.5]], dtype=torch.float64)
    d = Basin.parse("D: -pi < phi < 0 and psi > pi/2 or phi > 0.9, psi < -0.9")
    assert d.mask(s, ["phi", "psi"], [True, True]).tolist() == [True, True, False]
    e = Basin.parse("E: 2 > x1 > 0.5")
    assert e.mask(torch.tensor([1.0, 0.2, 2.5]), ["x1"]).tolist() == [True, False, False]
    for bad in ["B 0 < phi < 2", "B: 0 < < 2", "B: phi < foo()"]:
        with pytest.raises(ValueError):
            Basin.parse(bad)
    with pytest.raises(ValueError, match="uses CV 'phi'"):
        b.mask(phi, ["psi"], [True])


def test_delta_f_double_well_exact_samples():
    x1 = _sample_x1(20000, seed=0)
    r = delta_f(x1, None, "A: x1 < 0", "B: x1 > 0", names=["x1"], n_bootstrap=300,
                generator=torch.Generator().manual_seed(1))
    # delta method: sd(DeltaF) = 1/sqrt(N p (1-p)) = 0.0195 kT for N = 20000
    sd = 1 / math.sqrt(20000 * P_EXACT * (1 - P_EXACT))
    assert abs(r["delta_f"] - DF_EXACT) < 4 * sd
    assert abs(r["stderr"] / sd - 1) < 0.2  # bootstrap sd of 300 resamples: ~4% relative noise
    assert r["ci"][0] < r["delta_f"] < r["ci"][1]
    assert r["n_a"] + r["n_b"] == 20000 and r["ess"] == pytest.approx(20000)
    assert abs(r["p_b"] - P_EXACT) < 4 * math.sqrt(P_EXACT * (1 - P_EXACT) / 20000)
    # "rest" complement gives the same answer
    r2 = delta_f(x1, None, "A = rest", "B: x1 > 0", names=["x1"], n_bootstrap=0)
    assert r2["delta_f"] == pytest.approx(r["delta_f"], abs=1e-12)


def test_delta_f_reweighted_biased_samples():
    bias = WellTemperedBias(1, lower=-3, upper=3, bins=241, sigma=0.4, height=2.0, gamma=6.0)
    bias.deposit(torch.tensor([[1.7], [1.5], [1.9], [0.0]]), sequential=True)
    x1 = _sample_x1(20000, seed=2, bias=bias)
    lw = bias.log_weights(x1[:, None])
    r = delta_f(x1, lw, "A: x1 < 0", "B: x1 > 0", names=["x1"], n_bootstrap=200,
                generator=torch.Generator().manual_seed(0))
    # the tolerance is 4 bootstrap standard errors (the bootstrap reflects the ESS)
    assert abs(r["delta_f"] - DF_EXACT) < 4 * r["stderr"]
    assert r["ess"] < 20000
    raw = delta_f(x1, None, "A: x1 < 0", "B: x1 > 0", names=["x1"], n_bootstrap=0)
    assert abs(raw["delta_f"] - DF_EXACT) > 0.3  # without weights the biased samples are wrong


def test_free_energy_surface_matches_exact_profile():
    x1 = _sample_x1(50000, seed=3)
    edges, f = free_energy_surface(x1, None, bins=40, range=[(-3, 3)])
    e = edges[0].tolist()
    h = e[1] - e[0]
    # exact bin-averaged F = -ln(P(bin)/h) by quadrature (so no smearing error enters)
    exact = torch.tensor([-math.log(max(DW.exact_probability(lo, hi), 1e-300) / h)
                          for lo, hi in zip(e[:-1], e[1:])], dtype=torch.float64)
    counts = torch.histc(x1, 40, -3, 3)
    ok = counts > 100
    dev = f[ok] - exact[ok]
    dev = dev - dev.mean()  # F is defined up to a constant
    # Poisson: sd of ln(count) is 1/sqrt(count); 4 sd, plus the mean's own noise (~0.01)
    assert (dev.abs() < 4 / counts[ok].sqrt() + 0.02).all()
    assert torch.isinf(f[counts == 0]).all()
    # 2-D surface shape and indexing order [i_0, i_1]
    s = torch.stack([x1, torch.zeros_like(x1) + 0.5], -1)
    edges2, f2 = free_energy_surface(s, None, bins=[10, 4], range=[(-3, 3), (0, 1)])
    assert f2.shape == (10, 4) and torch.isinf(f2[:, 0]).all() and torch.isfinite(f2[4:8, 2]).all()


def test_mbar_several_biased_states():
    biases, xs = [], []
    heights = [0.0, 1.5, 3.0]
    for k, h in enumerate(heights):
        b = WellTemperedBias(1, lower=-3, upper=3, bins=241, sigma=0.5, height=max(h, 1e-9), gamma=math.inf)
        if h > 0:
            b.deposit(torch.tensor([[1.7], [-0.3]]))
        biases.append(b)
        xs.append(_sample_x1(4000, seed=10 + k, bias=b))
    x = torch.cat(xs)
    red = torch.stack([b.reduced(x[:, None]) for b in biases])
    r = mbar_delta_f(x, red, [4000] * 3, "A: x1 < 0", "B = rest", names=["x1"])
    assert abs(r["delta_f"] - DF_EXACT) < 4 * r["stderr"]
    assert 0.005 < r["stderr"] < 0.1
    assert r["f_k"][0] == 0.0
    # the MBAR weights reproduce the same estimate through delta_f
    r2 = delta_f(x, r["log_weights"], "A: x1 < 0", "B = rest", names=["x1"], n_bootstrap=0)
    assert r2["delta_f"] == pytest.approx(r["delta_f"], abs=1e-6)


def test_bad_input_names_basin():
    x1 = _sample_x1(100, seed=4)
    with pytest.raises(ValueError, match="basin 'C'"):
        delta_f(x1, None, "A: x1 < 0", "C: x1 > 10", names=["x1"])
    with pytest.raises(ValueError, match="log_weights"):
        delta_f(x1, torch.zeros(5), "A: x1 < 0", "B: x1 > 0", names=["x1"])
    with pytest.raises(ValueError, match="at most one basin"):
        delta_f(x1, None, "A = rest", "B = rest", names=["x1"])
    with pytest.raises(ValueError, match="sample 3"):
        bad = x1.clone()
        bad[3] = float("nan")
        delta_f(bad, None, "A: x1 < 0", "B: x1 > 0", names=["x1"])


def test_delta_f_from_grid_exact_profile():
    x = torch.linspace(-4, 4, 8001, dtype=torch.float64)
    f = x ** 4 - 6 * x ** 2 - 0.5 * x
    r = delta_f_from_grid([x], f - f.min(), "A: x1 < 0", "B = rest", names=["x1"])
    # a Riemann sum with spacing 1e-3 of a smooth density: error ~1e-6
    assert r["delta_f"] == pytest.approx(DF_EXACT, abs=1e-5)
    with pytest.raises(ValueError, match="does not match"):
        delta_f_from_grid([x[:-1]], f, "A: x1 < 0", "B = rest", names=["x1"])


def test_well_tempered_grid_estimate_converges():
    """Quasi-static well-tempered deposition on the 1-D double well: each round draws 20 exact
    samples of the current biased marginal exp(-(E + V)) and deposits hills there. The bias's own
    estimate F = -gamma/(gamma-1) V (Barducci et al. 2008) then reproduces the exact
    Delta F; the tolerance 0.15 kT covers the noise of the last hills (heights ~0.01 kT,
    ~20 per well per round) and was met with 3x margin at this seed."""
    x = torch.linspace(-3.5, 3.5, 7001, dtype=torch.float64)
    e = x ** 4 - 6 * x ** 2 - 0.5 * x
    g = torch.Generator().manual_seed(0)
    b = WellTemperedBias(1, lower=-3.5, upper=3.5, bins=351, sigma=0.2, height=0.05, gamma=4.0)
    for _ in range(400):
        logp = -(e + b(x[:, None]))
        cdf = torch.cumsum(torch.exp(logp - logp.max()), 0)
        cdf = cdf / cdf[-1]
        idx = torch.searchsorted(cdf, torch.rand(20, generator=g, dtype=torch.float64)).clamp_max(7000)
        b.deposit(x[idx][:, None])
    pts, f = b.free_energy()
    r = delta_f_from_grid(pts, f, "A: x1 < 0", "B: x1 > 0", names=["x1"])
    assert abs(r["delta_f"] - DF_EXACT) < 0.15
    # and the heights decayed as the bias grew: last round's hills are far below h0
    assert b.heights[-20:].max() < 0.3 * b.height
