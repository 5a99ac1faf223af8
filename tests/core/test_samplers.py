"""Samplers against exact answers.

* Order: on a Gaussian (closed-form flow map) every deterministic registered sampler's pathwise
  error falls with the slope of its declared order (read from ``SAMPLERS``, so a new sampler is
  tested automatically).
* Stochastic samplers: exact Gaussian marginals through the closed-form W2 of the fitted
  Gaussian; Euler–Maruyama shows weak order 1.
* A Gaussian mixture with exact scores: every sampler's samples converge to the mixture.
* Tuple states with a JointProcess: every sampler; the exponential integrators solve a
  factorised joint model exactly as its components alone, and keep their order.
* NFE counts, errors, the coefficient helpers.
"""

import math
import re
import sys

import numpy as np
import pytest
import torch

import sciffusion.samplers as S
from sciffusion.denoisers import Denoiser
from sciffusion.processes import EDM, VE, VP, JointProcess, Linear
from sciffusion.samplers import SAMPLERS, ei_weights, get_sampler, phi, sample
from sciffusion.schedules import logsnr_uniform, quadratic, time_uniform
from sciffusion.testing import (GaussianMixture, anisotropic_gaussian, empirical_w2_gaussian,
                                gaussian_flow_map, sliced_w1, standard_mixture_2d)

DETERMINISTIC = [k for k, v in SAMPLERS.items() if not v.stochastic and not v.adaptive]
STOCHASTIC = [k for k, v in SAMPLERS.items() if v.stochastic]
FIXED_GRID = [k for k, v in SAMPLERS.items() if not v.adaptive]
TUPLE = list(SAMPLERS)  # every sampler takes tuple/dict states with a JointProcess

MEAN, COV = anisotropic_gaussian(d=4)
GAUSS = GaussianMixture.gaussian(MEAN, COV)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _steps_for(info, nfe):
    return max(1, (nfe - info.extra_nfe) // info.nfe_per_step)


# ----------------------------------------------------------------------------------------------
# Coefficient helpers
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_phi_matches_its_integral(k):
    """phi_k(z) = int_0^1 e^{(1-th) z} th^{k-1}/(k-1)! dth, checked by 40-point Gauss-Legendre
    (exact to ~1e-16 for this entire integrand) on both sides of the series/recursion switch
    at |z| = 1 and near 0, where the recursion alone would cancel catastrophically."""
    x, w = np.polynomial.legendre.leggauss(40)
    th, w = 0.5 * (x + 1), 0.5 * w
    for z in [-4.0, -1.0000001, -0.9999999, -0.3, -1e-6, 0.0, 1e-6, 0.5, 0.9999999, 1.0000001, 3.0]:
        ref = float((w * np.exp((1 - th) * z) * th ** (k - 1)).sum() / math.factorial(k - 1))
        assert phi(k, z) == pytest.approx(ref, rel=1e-13, abs=1e-15), (k, z)


@pytest.mark.parametrize("c", [1.0, -1.0, -2.0])
def test_ei_weights_integrate_polynomials_exactly(c):
    """sum_j w_j P(r_j h) = int_0^h e^{c(h-u)} P(u) du for every monomial of degree < #nodes
    (reference: 40-point Gauss-Legendre, exact to round-off); nodes include negative ones
    (multistep history) and the weights are O(h)."""
    x, gw = np.polynomial.legendre.leggauss(40)
    for r, h in [([0.0], 0.7), ([0.0, 0.5], 0.3), ([0.0, -1.3], 2.0), ([0.0, 1 / 3, 2 / 3], 0.05),
                 ([0.0, -1.0, -2.1], 1e-3)]:
        w = ei_weights(r, h, c)
        u = 0.5 * h * (x + 1)
        for k in range(len(r)):
            ref = 0.5 * h * float((gw * np.exp(c * (h - u)) * u ** k).sum())
            got = float((w * (np.asarray(r) * h) ** k).sum())
            assert got == pytest.approx(ref, rel=1e-11, abs=1e-15 * h ** (k + 1)), (r, h, k)


def test_deis_lagrange_integrals_are_adams_bashforth():
    """On equally spaced history the rho-integrals of the Lagrange basis are the classical
    Adams–Bashforth coefficients (3/2, -1/2) and (23, -16, 5)/12."""
    assert S._lagrange_integrals([0.0, -1.0]).tolist() == pytest.approx([1.5, -0.5], abs=1e-14)
    assert S._lagrange_integrals([0.0, -1.0, -2.0]).tolist() == pytest.approx([23 / 12, -16 / 12, 5 / 12],
                                                                             abs=1e-14)


def test_module_table_matches_registry():
    """The order/NFE table in the module docstring is the registry (a new sampler must be added)."""
    rows = {}
    for line in S.__doc__.splitlines():
        m = re.match(r"^(\w+)\s+(\d+)\s+(\d+|adaptive)(?: \(\+(\d+)\))?", line)
        if m and m.group(1) in SAMPLERS:
            rows[m.group(1)] = (int(m.group(2)), m.group(3), int(m.group(4) or 0))
    assert set(rows) == set(SAMPLERS)
    for name, info in SAMPLERS.items():
        order, nfe, extra = rows[name]
        assert order == info.order, name
        assert nfe == ("adaptive" if info.adaptive else str(info.nfe_per_step)), name
        assert extra == info.extra_nfe, name


# ----------------------------------------------------------------------------------------------
# Order of the deterministic solvers on the exact Gaussian flow
# ----------------------------------------------------------------------------------------------

ORDER_NFES = [80, 160, 320]


def _gaussian_eps_model(mean, cov, process):
    """Exact eps of N(mean, cov) data in the eigenbasis, cov = U diag(c) U^T (one matmul per call,
    ~20x faster than the general mixture oracle, which it must equal: checked below):
    E[eps | x_t] = sigma_t U diag(1 / (alpha_t^2 c + sigma_t^2)) U^T (x_t - alpha_t mean)."""
    c, U = torch.linalg.eigh(cov)

    def model(x, t):
        t0 = t.reshape(-1)[0].double()
        a, s = float(process.alpha(t0)), float(process.sigma(t0))
        return s * (((x.double() - a * mean) @ U) / (a * a * c + s * s)) @ U.T

    return model


def test_fast_gaussian_model_is_the_oracle():
    for p in (VP(), EDM(), Linear()):
        x = torch.randn(8, 4, generator=_gen(0), dtype=torch.float64)
        for t in (0.3 * p.t_max, p.t_min):
            tt = torch.full((8,), t, dtype=torch.float64)
            assert torch.allclose(_gaussian_eps_model(MEAN, COV, p)(x, tt), GAUSS.eps(x, p, t), atol=1e-12)


@pytest.mark.parametrize("process", [VP(), EDM(), Linear()], ids=["vp", "edm", "linear"])
@pytest.mark.parametrize("name", DETERMINISTIC)
def test_pathwise_order(name, process):
    """Fitted slope of log RMS pathwise error vs log NFE is within 0.3 of the declared order.

    Setup: d = 4 Gaussian with variances 0.03..3 (float64), 16 points drawn from the exact
    marginal at ts[0], compared with the exact PF map (``gaussian_flow_map``). Grid: logSNR-
    uniform from lambda = -1 (not from the noise end: near lambda = -5 the flow is almost the
    identity, which hides start-up errors of multistep methods, e.g. an AB1 first step caps
    DEIS-3 at order 2) to t_min; NFE 80..320 is the asymptotic range (errors 4e-2..2e-7, far
    above float64 round-off). The 0.3 band absorbs the remaining pre-asymptotic curvature
    (largest seen: DPM-Solver-3 and DPM-Solver++(3) at +0.21, error ratios ~9.5 falling to 8).
    """
    info = SAMPLERS[name]
    slope, errs = _pathwise_slope(info, process)
    assert abs(slope - info.order) < 0.3, f"{name}: slope {slope:.2f} vs order {info.order}; errors {errs}"


def _pathwise_slope(info, process, **options):
    """Slope and errors of the setup of :func:`test_pathwise_order`. A JointProcess gets a tuple
    state, one Gaussian per component (TUP_A, TUP_B below), the grid of its first component and
    the RMS error over all components."""
    joint = hasattr(process, "processes")
    comps = (list(zip(process.processes, (TUP_A.means[0], TUP_B.means[0]), (TUP_A.covs[0], TUP_B.covs[0])))
             if joint else [(process, MEAN, COV)])
    models = [_gaussian_eps_model(m, c, q) for q, m, c in comps]
    model = (lambda x, t: tuple(f(xk, t) for f, xk in zip(models, x))) if joint else models[0]
    den = Denoiser(model, process, "eps")
    lead = comps[0][0]
    t_max = float(lead.t_of_lam(torch.tensor(-1.0, dtype=torch.float64)))
    nfes, errs = [], []
    for nfe in ORDER_NFES:
        n = _steps_for(info, nfe)
        ts = logsnr_uniform(lead, n, t_max=t_max)
        x_T = [GaussianMixture.gaussian(m, c).marginal(q, ts[0]).sample(16, _gen(1 + k))
               for k, (q, m, c) in enumerate(comps)]
        exact = [gaussian_flow_map(xk, m, c, q, ts[0], ts[-1]) for xk, (q, m, c) in zip(x_T, comps)]
        den.reset_nfe()
        out = info.fn(den, tuple(xk.clone() for xk in x_T) if joint else x_T[0].clone(), ts, **options)
        assert den.nfe == info.nfe(n)
        nfes.append(den.nfe)
        out = out if joint else [out]
        errs.append(math.sqrt(sum(float((o - e).pow(2).sum(1).mean()) for o, e in zip(out, exact))))
    return -np.polyfit(np.log(nfes), np.log(errs), 1)[0], errs


@pytest.mark.parametrize("order", [1, 2])
def test_unipc_bh1_order(order):
    """The B(h) = h variant (bh1) keeps UniPC's order (k + 1 for predictor order k), same setup
    as :func:`test_pathwise_order` on VP; bh2 is covered there through the registry."""
    slope, errs = _pathwise_slope(SAMPLERS[f"unipc_{order}"], VP(), variant="bh1")
    assert abs(slope - (order + 1)) < 0.3, (slope, errs)


def test_dopri5_hits_tolerance():
    """dopri5 is adaptive (no slope); with rtol = atol = 1e-9 its output matches the exact flow
    map to 1e-6 (the global error is a small multiple of the local tolerance per unit scale of
    the state, here O(1)), a loose tolerance is measurably worse, and the model calls are
    counted in ``denoiser.nfe``."""
    p = VP()
    ts = logsnr_uniform(p, 4)
    x_T = GAUSS.marginal(p, ts[0]).sample(16, _gen(1))
    exact = gaussian_flow_map(x_T, MEAN, COV, p, ts[0], ts[-1])
    den = GAUSS.denoiser(p, "eps")
    errs, nfes = [], []
    for tol in (1e-3, 1e-9):
        den.reset_nfe()
        out = S.sample_dopri5(den, x_T, ts, rtol=tol, atol=tol)
        errs.append(float((out - exact).abs().max()))
        nfes.append(den.nfe)
    assert errs[1] < 1e-6
    assert errs[0] > 10 * errs[1]
    assert nfes[1] > nfes[0] > 0


def test_dopri5_without_torchdiffeq_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchdiffeq", None)
    den = GAUSS.denoiser(VP(), "eps")
    with pytest.raises(ImportError, match=r"sciffusion\[ode\]"):
        S.sample_dopri5(den, torch.zeros(2, 4, dtype=torch.float64), logsnr_uniform(VP(), 2))


# ----------------------------------------------------------------------------------------------
# Stochastic samplers on exact Gaussian marginals
# ----------------------------------------------------------------------------------------------

SDE_MEAN, SDE_COV = anisotropic_gaussian(d=2, lo=0.1, hi=2.0)
SDE_GAUSS = GaussianMixture.gaussian(SDE_MEAN, SDE_COV)
SDE_STEPS = [8, 16, 32, 64]


def _sde_w2(name, n, steps, **options):
    """W2 between N(fitted mean, fitted cov) of the samples and the exact marginal at t_min."""
    p = VP()
    den = SDE_GAUSS.denoiser(p, "eps")
    out = []
    for k, n_steps in enumerate(steps):
        ts = quadratic(p, n_steps)
        target = SDE_GAUSS.marginal(p, ts[-1])
        x_T = SDE_GAUSS.marginal(p, ts[0]).sample(n, _gen(1))
        x = get_sampler(name)(den, x_T, ts, generator=_gen(2 + k), **options)
        out.append(empirical_w2_gaussian(x, target.means[0], target.covs[0]))
    return out


def test_euler_maruyama_weak_order_one():
    """EM's W2 error (closed form between Gaussians; the sampled law is exactly Gaussian here)
    falls as 1/N: fitted slope in [0.7, 1.3] over N = 8..64.

    n = 1e5 samples make the Monte Carlo W2 floor ~0.006 (sd 0.001), below the smallest error
    (~0.018 at N = 64), so the slope is the solver's. The quadratic grid (dense near the data,
    where EM's error constant is largest) reaches the 1/N regime by N = 8; errors seen:
    0.15, 0.063, 0.032, 0.018 (slope 1.01). The 0.3 band covers the floor's pull on the last point.
    """
    errs = _sde_w2("euler_maruyama", 100_000, SDE_STEPS)
    slope = -np.polyfit(np.log(SDE_STEPS), np.log(errs), 1)[0]
    assert abs(slope - 1.0) < 0.3, (slope, errs)


@pytest.mark.parametrize("name,options", [("ddim", {"eta": 1.0}), ("dpmpp_2m_sde", {}), ("pc", {}),
                                          ("euler_maruyama", {}), ("s4", {})])
def test_stochastic_samplers_converge_in_w2(name, options):
    """W2 to the exact marginal falls with the steps, down to near the Monte Carlo floor.

    n = 2e4: floor ~0.012 (sd 0.005; for pc, whose error nearly vanishes by 32 steps, runs at
    32 steps spread over 0.01..0.045). Quadratic grid. Checked: W2 falls by >= 1.4 from 8 to
    16 steps and by >= 2 from 8 to 32 (weak order 1 ideal: 2 and 4; errors at 8 steps are
    0.14..0.6, well above the floor), then W2 < 0.05 at 128 steps (about 7 floor sd above the
    floor; DDPM with eta = 1, the slowest, is ~0.03 there)."""
    errs = _sde_w2(name, 20_000, [8, 16, 32, 128], **options)
    assert errs[0] > 1.4 * errs[1], (name, errs)
    assert errs[0] > 2.0 * errs[2], (name, errs)
    assert errs[-1] < 0.05, (name, errs)


def test_stochastic_samplers_are_reproducible():
    p = VP()
    den = SDE_GAUSS.denoiser(p, "eps")
    ts = quadratic(p, 5)
    x_T = SDE_GAUSS.marginal(p, ts[0]).sample(8, _gen(1))
    for name in STOCHASTIC:
        a = get_sampler(name)(den, x_T, ts, generator=_gen(3))
        b = get_sampler(name)(den, x_T, ts, generator=_gen(3))
        c = get_sampler(name)(den, x_T, ts, generator=_gen(4))
        assert torch.equal(a, b), name
        assert not torch.equal(a, c), name


# ----------------------------------------------------------------------------------------------
# Gaussian mixture with exact scores
# ----------------------------------------------------------------------------------------------

MIX = standard_mixture_2d()
MIX_N = 2000


@pytest.fixture(scope="module")
def mixture_reference():
    """Exact samples of the noised mixture at t_min and the two-sample sliced-W1 floor (mean, sd
    over 4 independent pairs of exact sample sets of the same size)."""
    p = VP()
    target = MIX.marginal(p, p.t_min)
    ref = target.sample(MIX_N, _gen(10))
    floors = [sliced_w1(target.sample(MIX_N, _gen(20 + s)), ref, 64) for s in range(4)]
    return ref, float(np.mean(floors)), float(np.std(floors))


@pytest.mark.parametrize("name", FIXED_GRID)
def test_mixture_samples_converge(name, mixture_reference):
    """Every sampler, started from the exact noised mixture at ts[0] with the exact score, gives
    samples whose sliced W1 to exact mixture samples falls with NFE and, at the largest NFE,
    is within 3 floor sd of the two-sample floor (n = 2000, floor ~0.035, sd ~0.003).
    NFE: 4, 16, 64 for ODE solvers (logSNR grid); 8, 64, 512 for SDE samplers, whose weak error
    ~1/N needs more steps. "Falls": the smallest NFE is worse than the largest by more than
    3 floor sd."""
    ref, floor, sd = mixture_reference
    info = SAMPLERS[name]
    p = VP()
    den = MIX.denoiser(p, "eps")
    w = []
    for nfe in ([8, 64, 512] if info.stochastic else [4, 16, 64]):
        ts = logsnr_uniform(p, _steps_for(info, nfe))
        x_T = MIX.marginal(p, ts[0]).sample(MIX_N, _gen(1))
        x = info.fn(den, x_T, ts, generator=_gen(2))
        w.append(sliced_w1(x, ref, 64))
    assert w[0] > w[-1] + 3 * sd, (name, w, floor)
    assert w[-1] < floor + 3 * sd, (name, w, floor)


# ----------------------------------------------------------------------------------------------
# Tuple states: two Gaussians under different processes
# ----------------------------------------------------------------------------------------------

TUP_A = GaussianMixture.gaussian(*anisotropic_gaussian(d=2, lo=0.2, hi=1.5, seed=1))
TUP_B = GaussianMixture.gaussian(*anisotropic_gaussian(d=3, lo=0.1, hi=2.0, seed=2))
TUP_P = JointProcess((VP(), VE()))


def _tuple_denoiser():
    ma, mb = TUP_A.model(TUP_P.processes[0], "eps"), TUP_B.model(TUP_P.processes[1], "eps")
    return Denoiser(lambda x, t: (ma(x[0], t), mb(x[1], t)), TUP_P, "eps")


def _tuple_start(ts, n):
    pa, pb = TUP_P.processes
    return (TUP_A.marginal(pa, ts[0]).sample(n, _gen(1)), TUP_B.marginal(pb, ts[0]).sample(n, _gen(2)))


@pytest.mark.parametrize("name", ["euler", "heun"])
def test_tuple_state_ode_order(name):
    """(VP component of dim 2, VE component of dim 3) with the exact eps of each: the joint
    PF-ODE solution is each component's exact flow map, and the pathwise error's slope over
    N = 40, 80, 160 (quadratic grid, shared by both; at N = 20 Heun is still pre-asymptotic,
    error ratio 6 instead of 4) is the declared order within 0.3."""
    info = SAMPLERS[name]
    den = _tuple_denoiser()
    steps, errs = [40, 80, 160], []
    for n in steps:
        ts = quadratic(VP(), n)
        x_T = _tuple_start(ts, 16)
        out = info.fn(den, x_T, ts)
        assert isinstance(out, tuple) and out[0].shape == (16, 2) and out[1].shape == (16, 3)
        err = 0.0
        for xi, oi, gm, p in zip(x_T, out, (TUP_A, TUP_B), TUP_P.processes):
            exact = gaussian_flow_map(xi, gm.means[0], gm.covs[0], p, ts[0], ts[-1])
            err += float((oi - exact).pow(2).sum(1).mean())
        errs.append(math.sqrt(err))
    slope = -np.polyfit(np.log(steps), np.log(errs), 1)[0]
    assert abs(slope - info.order) < 0.3, (name, slope, errs)


def test_tuple_state_dopri5():
    den = _tuple_denoiser()
    ts = quadratic(VP(), 3)
    x_T = _tuple_start(ts, 8)
    out = S.sample_dopri5(den, x_T, ts, rtol=1e-9, atol=1e-9)
    for xi, oi, gm, p in zip(x_T, out, (TUP_A, TUP_B), TUP_P.processes):
        exact = gaussian_flow_map(xi, gm.means[0], gm.covs[0], p, ts[0], ts[-1])
        assert float((oi - exact).abs().max()) < 1e-6


@pytest.mark.parametrize("name", ["euler_maruyama", "pc"])
def test_tuple_state_sde_marginals(name):
    """Each component's law at t_min (closed-form W2 of its fitted Gaussian) approaches its own
    exact marginal: W2 falls from 8 to 128 steps and ends below 0.06 (n = 1e4: Monte Carlo
    floor ~0.02 for these dimensions; EM's 1/N error at 128 steps ~0.02)."""
    den = _tuple_denoiser()
    res = []
    for k, n in enumerate([8, 128]):
        ts = quadratic(VP(), n)
        out = get_sampler(name)(den, _tuple_start(ts, 10_000), ts, generator=_gen(5 + k))
        w = []
        for oi, gm, p in zip(out, (TUP_A, TUP_B), TUP_P.processes):
            tgt = gm.marginal(p, ts[-1])
            w.append(empirical_w2_gaussian(oi, tgt.means[0], tgt.covs[0]))
        res.append(w)
    for c in range(2):
        assert res[0][c] > res[1][c], (name, res)
        assert res[1][c] < 0.06, (name, res)


class _SymmetricVE(VE):
    """VE whose noise is a symmetric matrix, as for an adjacency (graph_sde): the samplers must
    draw dW through ``process.noise_like``."""

    def noise_like(self, x, generator=None):
        z = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        return (z + z.transpose(-1, -2)) / math.sqrt(2)


@pytest.mark.parametrize("name", TUPLE)
def test_graph_like_tuple_state_keeps_adjacency_symmetric(name):
    """Node features (B, 5, 3) under VP and a symmetric adjacency (B, 5, 5) under VE, model =
    exact eps of unit Gaussian entries (eps = sigma x / (alpha^2 + sigma^2), symmetric in A):
    every tuple-state sampler keeps A exactly symmetric and returns the state's structure."""
    proc = JointProcess((VP(), _SymmetricVE()))

    def model(x, t):
        t0 = t[0].double()
        out = []
        for xi, p in zip(x, proc.processes):
            a, s = float(p.alpha(t0)), float(p.sigma(t0))
            out.append(s * xi / (a * a + s * s))
        return tuple(out)

    den = Denoiser(model, proc, "eps")
    ts = quadratic(VP(), 6)
    A = proc.processes[1].noise_like(torch.zeros(4, 5, 5, dtype=torch.float64), _gen(1)) * 50
    x = (torch.randn(4, 5, 3, generator=_gen(0), dtype=torch.float64), A)
    out = get_sampler(name)(den, x, ts, generator=_gen(2))
    assert out[0].shape == (4, 5, 3) and out[1].shape == (4, 5, 5)
    assert torch.equal(out[1], out[1].transpose(-1, -2))
    assert all(torch.isfinite(o).all() for o in out)


@pytest.mark.parametrize("name", TUPLE)
def test_sample_front_door_tuple_shapes(name):
    """sample() draws a tuple state from the JointProcess prior (one shape per component) and
    integrates it with every sampler (default grid: time_uniform),
    returning the structure, shapes and dtype of the state, finite."""
    den = _tuple_denoiser()
    out = sample(den, ((5, 2), (5, 3)), sampler=name, num_steps=3, generator=_gen(0), dtype=torch.float64)
    assert isinstance(out, tuple) and out[0].shape == (5, 2) and out[1].shape == (5, 3)
    assert all(o.dtype == torch.float64 and torch.isfinite(o).all() for o in out)


# ----------------------------------------------------------------------------------------------
# Tuple states for the exponential integrators: component by component, each on its own lambda
# ----------------------------------------------------------------------------------------------

EXPONENTIAL = [k for k in SAMPLERS if k.startswith(("dpm_solver", "dpmpp", "unipc", "deis"))]
EXPONENTIAL_CASES = ([(k, {}) for k in EXPONENTIAL]
                     + [("dpmpp_2m", {"variant": "integral"}), ("unipc", {"order": 3, "variant": "bh1"})])
# methods that evaluate the model between grid points (singlestep steps, or a singlestep start)
INTERMEDIATE = {"dpm_solver_2", "dpm_solver_3", "dpmpp_3m", "deis_3"}


def _taped(cls, tape, replay, **kwargs):
    """An instance of the process class ``cls`` whose noise draws are recorded into ``tape`` (or,
    with ``replay``, taken from it in order): matched noise for joint vs separate solves."""

    class Taped(cls):
        def noise_like(self, x, generator=None):
            if replay:
                return tape.pop(0)
            z = super().noise_like(x, generator)
            tape.append(z)
            return z

    return Taped(**kwargs)


FACTOR_MIX_B = GaussianMixture(torch.tensor([[1.0, -0.5, 0.0], [-1.0, 0.5, 0.8]], dtype=torch.float64),
                               torch.stack([0.1 * torch.eye(3), 0.3 * torch.eye(3)]).double(),
                               torch.tensor([0.3, 0.7], dtype=torch.float64))
FACTOR_PAIRS = {  # (class, kwargs) per component, and whether the state is a dict
    "vp_ve": (((VP, {}), (VE, {})), False),
    "vp_vp2_dict": (((VP, {}), (VP, {"beta_min": 0.2, "beta_max": 10.0})), True),
    "vp_vp": (((VP, {}), (VP, {})), False),
}


@pytest.mark.parametrize("pair", list(FACTOR_PAIRS))
@pytest.mark.parametrize("name,options", EXPONENTIAL_CASES)
def test_exponential_tuple_state_factorises(name, options, pair):
    """A factorised joint model (each component the exact eps of its own Gaussian mixture under
    its own process, reading only its own component) solved as one tuple/dict state equals each
    component solved alone, as a tensor state with its own process, on the same grid (6 steps,
    time_uniform of the joint process), with matched noise for dpmpp_2m_sde (draws recorded by
    the joint solve and replayed). Compared: every component, except that for the methods with
    intermediate points (INTERMEDIATE) and two different processes only the first component is,
    since the intermediate time is set by the first component's lambda (the second's own solve
    would place it elsewhere); with one process twice ("vp_vp") both are. Tolerance 1e-10: the
    two computations do the same float64 arithmetic, except that in a joint state the first
    component's intermediate fraction is recomputed from its lambda at the intermediate time
    (round-off ~1e-15 relative). Also: NFE rule and callback unchanged for tuple states."""
    (spec_a, spec_b), as_dict = FACTOR_PAIRS[pair]
    gms = (standard_mixture_2d(), FACTOR_MIX_B)
    tapes = ([], [])
    procs = [_taped(cls, tape, False, **kw) for (cls, kw), tape in zip((spec_a, spec_b), tapes)]
    models = [gm.model(q, "eps") for gm, q in zip(gms, procs)]
    keys = ("x", "adj")
    if as_dict:
        joint = JointProcess(dict(zip(keys, procs)))
        den = Denoiser(lambda x, t: {k: f(x[k], t) for k, f in zip(keys, models)}, joint, "eps")
    else:
        joint = JointProcess(tuple(procs))
        den = Denoiser(lambda x, t: tuple(f(xk, t) for f, xk in zip(models, x)), joint, "eps")
    info = SAMPLERS[name]
    n = 6
    ts = time_uniform(joint, n)
    x_T = [gm.marginal(q, ts[0]).sample(8, _gen(1 + k)) for k, (gm, q) in enumerate(zip(gms, procs))]
    seen = []
    out = info.fn(den, dict(zip(keys, x_T)) if as_dict else tuple(x_T), ts, generator=_gen(7),
                  callback=lambda i, t, x: seen.append((i, float(t), type(x))), **options)
    out = [out[k] for k in keys] if as_dict else list(out)
    assert den.nfe == info.nfe(n)
    assert seen == [(i, float(ts[i + 1]), dict if as_dict else tuple) for i in range(n)]
    compare = [0] if name in INTERMEDIATE and pair != "vp_vp" else [0, 1]
    for k in compare:
        (cls, kw), gm = (spec_a, spec_b)[k], gms[k]
        q = _taped(cls, tapes[k], True, **kw)
        ref = info.fn(Denoiser(gm.model(q, "eps"), q, "eps"), x_T[k], ts, generator=_gen(99), **options)
        assert torch.allclose(out[k], ref, rtol=1e-10, atol=1e-10), (name, pair, k, (out[k] - ref).abs().max())


@pytest.mark.parametrize("name", ["dpmpp_2m", "unipc_3", "deis_3", "dpm_solver_3", "dpmpp_3m", "dpm_solver_2"])
def test_exponential_tuple_state_order(name):
    """Pathwise order on a tuple state: (VP component of dim 2, VE component of dim 3), each the
    exact eps of its Gaussian, so the exact solution is each component's closed-form flow map.
    Setup of :func:`test_pathwise_order` (NFE 80..320, from VP's lambda = -1) with the grid
    logSNR-uniform in the first (VP) component's lambda; VE's lambda is a smooth function of it,
    so its steps shrink at the same rate. Fitted slope of the RMS error over both components
    within 0.3 of the declared order: this is what proves that the intermediate points of
    DPM-Solver-2/3 and of the third-order start, set by the first component's lambda, keep the
    second component's order (its node fractions differ from r by O(h))."""
    info = SAMPLERS[name]
    slope, errs = _pathwise_slope(info, TUP_P)
    assert abs(slope - info.order) < 0.3, f"{name}: slope {slope:.2f} vs order {info.order}; errors {errs}"


def test_dpmpp_2m_sde_tuple_state_reproducible():
    """SDE-DPM-Solver++(2M) on a (VP, VE) tuple state: the same generator gives the same state,
    another generator another; the noise enters through each component's process (the
    factorisation test matches it, draw for draw, to the tensor solver, whose W2 convergence is
    tested above)."""
    den = _tuple_denoiser()
    ts = quadratic(VP(), 5)
    x_T = _tuple_start(ts, 8)
    a = S.sample_dpmpp_2m_sde(den, x_T, ts, generator=_gen(3))
    b = S.sample_dpmpp_2m_sde(den, x_T, ts, generator=_gen(3))
    c = S.sample_dpmpp_2m_sde(den, x_T, ts, generator=_gen(4))
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert all(not torch.equal(u, v) for u, v in zip(a, c))


def test_exponential_integrators_check_the_state_structure():
    """A tuple state with a single process, or a tensor state with a JointProcess, is a TypeError
    naming the mismatch; a non-float component is a TypeError too."""
    ts = quadratic(VP(), 2)
    tup = _tuple_start(ts, 2)
    with pytest.raises(TypeError, match="JointProcess"):
        S.sample_dpmpp_2m(GAUSS.denoiser(VP(), "eps"), tup, ts)
    with pytest.raises(TypeError, match="single process"):
        S.sample_unipc(_tuple_denoiser(), torch.zeros(2, 2, dtype=torch.float64), ts)
    with pytest.raises(TypeError, match="floating-point"):
        S.sample_deis_2(_tuple_denoiser(), (tup[0], tup[1].long()), ts)


def test_inner_nodes_share_one_time():
    """The intermediate point of a singlestep step on a JointProcess: one time for all components,
    the first component at the fraction r of its lambda step, every component's fraction its own
    (lambda_k(tau) - lambda_k(s)) / h_k, in (0, 1); a single process gets r itself."""
    ts = quadratic(VP(), 4)
    nodes = S._grid_nodes(TUP_P, ts)
    s, t = nodes[1], nodes[2]
    mid, r = S._inner_nodes(TUP_P, s, t, 2.0, 3.0)
    assert mid[0].t is mid[1].t and ts[2] < mid[0].t < ts[1]
    assert r[0] == pytest.approx(2 / 3, abs=1e-12)
    for q, m, sk, tk, rk in zip(TUP_P.processes, mid, s, t, r):
        assert rk == pytest.approx((float(q.lam(m.t)) - sk.lam) / (tk.lam - sk.lam), abs=1e-14)
        assert 0 < rk < 1
    assert r[1] != pytest.approx(2 / 3, abs=1e-3)  # VE's fraction differs: the point of the test
    single, r1 = S._inner_nodes(VP(), s[0], t[0], 2.0, 3.0)
    assert r1 == 2 / 3 and float(single.t) == pytest.approx(float(mid[0].t), abs=1e-14)


# ----------------------------------------------------------------------------------------------
# NFE, callbacks, dtypes
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", FIXED_GRID)
def test_nfe_rule_and_callback(name):
    """denoiser.nfe == num_steps * nfe_per_step + extra_nfe (SamplerInfo.nfe), for 1, 2 and 5
    steps; the callback sees every step once with the grid's next time; float32 stays float32."""
    info = SAMPLERS[name]
    p = VP()
    den = GAUSS.denoiser(p, "eps")
    for n in (1, 2, 5):
        seen = []
        den.reset_nfe()
        ts = logsnr_uniform(p, n)
        x = torch.randn(3, 4, generator=_gen(0))
        out = info.fn(den, x, ts, generator=_gen(1), callback=lambda i, t, xi: seen.append((i, float(t))))
        assert den.nfe == info.nfe(n), (name, n, den.nfe)
        assert seen == [(i, float(ts[i + 1])) for i in range(n)]
        assert out.dtype == torch.float32 and out.shape == x.shape


def test_first_order_integrators_agree():
    """DDIM, DPM-Solver-1 and DEIS-1 are three derivations of one exponential integrator
    (eps form, rho form, alpha/sigma form): equal to float64 round-off on any grid; and one
    step of SDE-DPM-Solver++ (kernel 2 e^{-2(h-u)}) is DDPM's posterior step, DDIM with eta = 1,
    given the same noise draw."""
    p = VP()
    den = GAUSS.denoiser(p, "eps")
    ts = logsnr_uniform(p, 7)
    x = GAUSS.marginal(p, ts[0]).sample(8, _gen(0))
    ref = S.sample_ddim(den, x, ts)
    for name in ("dpm_solver_1", "deis_1"):
        assert torch.allclose(get_sampler(name)(den, x, ts), ref, rtol=1e-12, atol=1e-12), name
    one = ts[:2]
    a = S.sample_dpmpp_2m_sde(den, x, one, generator=_gen(3))
    b = S.sample_ddim(den, x, one, eta=1.0, generator=_gen(3))
    assert torch.allclose(a, b, rtol=1e-12, atol=1e-12)


def test_pc_without_corrector_is_euler_maruyama():
    """n_corrector = 0 leaves the predictor: identical to euler_maruyama with the same seed;
    n_corrector = 2 costs 3 calls per step; a per-component snr tuple is accepted."""
    p = VP()
    den = GAUSS.denoiser(p, "eps")
    ts = quadratic(p, 5)
    x = GAUSS.marginal(p, ts[0]).sample(8, _gen(0))
    assert torch.equal(S.sample_pc(den, x, ts, n_corrector=0, generator=_gen(1)),
                       S.sample_euler_maruyama(den, x, ts, generator=_gen(1)))
    den.reset_nfe()
    S.sample_pc(den, x, ts, n_corrector=2, generator=_gen(1))
    assert den.nfe == 5 * 3
    tden = _tuple_denoiser()
    out = S.sample_pc(tden, _tuple_start(ts, 4), ts, snr=(0.1, 0.2), generator=_gen(1))
    assert all(torch.isfinite(o).all() for o in out)


def test_pc_scale_eps():
    """scale_eps = 1 is the default path bit for bit; another value changes only the Langevin
    noise (with n_corrector = 0 there is none, so the result is EM's); bad values are refused."""
    p = VP()
    den = GAUSS.denoiser(p, "eps")
    ts = quadratic(p, 5)
    x = GAUSS.marginal(p, ts[0]).sample(8, _gen(0))
    ref = S.sample_pc(den, x, ts, generator=_gen(1))
    assert torch.equal(S.sample_pc(den, x, ts, scale_eps=1.0, generator=_gen(1)), ref)
    assert not torch.equal(S.sample_pc(den, x, ts, scale_eps=0.7, generator=_gen(1)), ref)
    assert torch.equal(S.sample_pc(den, x, ts, n_corrector=0, scale_eps=0.7, generator=_gen(1)),
                       S.sample_euler_maruyama(den, x, ts, generator=_gen(1)))
    for bad in (0.0, -1.0, float("nan"), "1"):
        with pytest.raises(ValueError, match="scale_eps"):
            S.sample_pc(den, x, ts, scale_eps=bad)
        with pytest.raises(ValueError, match="scale_eps"):
            S.sample_s4(den, x, ts, scale_eps=bad)
    with pytest.raises(ValueError, match="snr"):
        S.sample_s4(den, x, ts, snr=0.0)


def test_s4_step_is_gdss_algorithm_2():
    """One S4 step by hand from the documented formulas (Langevin at s with the score at x, exact
    linear half steps, the frozen score drift), replaying the three noise draws: equal to
    round-off; and the correction is the pc Langevin rule (same step size)."""
    p = VP()
    den = GAUSS.denoiser(p, "eps")
    ts = torch.tensor([0.6, 0.5], dtype=torch.float64)
    x = GAUSS.marginal(p, ts[0]).sample(64, _gen(0))
    g = _gen(3)
    z0, z1, z2 = (torch.randn(x.shape, generator=g, dtype=x.dtype) for _ in range(3))
    s, t = ts[0], ts[1]
    m = 0.5 * (s + t)
    sc = den.score(x, s)
    norm = lambda v: v.flatten(1).norm(dim=1).mean()  # noqa: E731
    eps = 2 * (p.alpha(s) / p.alpha(t)) ** 2 * (0.05 * norm(z0) / norm(sc)) ** 2
    y = x + eps * sc + (2 * eps).sqrt() * z0

    def lin(y, u, v, z):
        return p.alpha(v) / p.alpha(u) * y + p.sigma(v) * torch.sqrt(torch.expm1(2 * (p.lam(v) - p.lam(u)))) * z

    y = lin(y, s, m, z1)
    y = y + p.g2(s) * sc * (s - t)
    y = lin(y, m, t, z2)
    out = S.sample_s4(den, x, ts, generator=_gen(3))
    torch.testing.assert_close(out, y, rtol=1e-12, atol=1e-12)


def test_dopri5_float32_and_callback():
    p = VP()
    den = GAUSS.denoiser(p, "eps")
    ts = logsnr_uniform(p, 3)
    seen = []
    out = S.sample_dopri5(den, torch.randn(4, 4, generator=_gen(0)), ts,
                          callback=lambda i, t, x: seen.append((i, float(t))))
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert seen == [(i, float(ts[i + 1])) for i in range(3)]


def test_sample_front_door_counts():
    den = GAUSS.denoiser(VP(), "eps")
    out = sample(den, (7, 4), sampler="unipc", num_steps=6, generator=_gen(0), order=3)
    assert out.shape == (7, 4) and den.nfe == 6


# ----------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------

def test_unknown_sampler_lists_names():
    with pytest.raises(ValueError) as err:
        get_sampler("dpm_solver_9")
    for name in SAMPLERS:
        assert name in str(err.value)
    with pytest.raises(ValueError, match="unknown sampler"):
        sample(GAUSS.denoiser(VP()), (2, 4), sampler="nope")


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_bad_time_grids(name):
    den = GAUSS.denoiser(VP(), "eps")
    x = torch.zeros(2, 4, dtype=torch.float64)
    fn = get_sampler(name)
    with pytest.raises(ValueError, match="decrease strictly"):
        fn(den, x, torch.tensor([1.0, 0.5, 0.7, 0.1], dtype=torch.float64))
    with pytest.raises(ValueError, match="must lie in"):
        fn(den, x, torch.tensor([1.5, 0.5, 0.1], dtype=torch.float64))
    with pytest.raises(ValueError, match="lambda"):  # t = 0: sigma = 0 for VP
        fn(den, x, torch.tensor([1.0, 0.5, 0.0], dtype=torch.float64))


def _nan_after(k, base):
    calls = [0]

    def model(x, t):
        calls[0] += 1
        out = base(x, t)
        return out * float("nan") if calls[0] >= k else out

    return model


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_nan_stops_with_the_step(name):
    """A model that returns NaN from its 5th call on stops the sampler with FloatingPointError
    naming the step that made that call: max(0, (5 - 1 - extra_nfe) // nfe_per_step)."""
    info = SAMPLERS[name]
    p = VP()
    den = Denoiser(_nan_after(5, GAUSS.model(p, "eps")), p, "eps")
    ts = logsnr_uniform(p, 8)
    x = GAUSS.marginal(p, ts[0]).sample(4, _gen(0))
    if info.adaptive:
        with pytest.raises(FloatingPointError, match=r"model evaluation 5\b"):
            info.fn(den, x, ts)
        return
    step = max(0, (5 - 1 - info.extra_nfe) // info.nfe_per_step)
    with pytest.raises(FloatingPointError, match=rf"at step {step}\b"):
        info.fn(den, x, ts, generator=_gen(1))


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_wrong_model_output_shape(name):
    p = VP()
    base = GAUSS.model(p, "eps")
    den = Denoiser(lambda x, t: base(x, t)[:, :3], p, "eps")
    with pytest.raises(ValueError, match="model output has shape"):
        get_sampler(name)(den, torch.zeros(2, 4, dtype=torch.float64), logsnr_uniform(p, 3))


def test_bad_options():
    den = GAUSS.denoiser(VP(), "eps")
    x, ts = torch.zeros(2, 4, dtype=torch.float64), logsnr_uniform(VP(), 3)
    bad = [(S.sample_unipc, {"order": 4}, "order"), (S.sample_unipc, {"variant": "bh3"}, "variant"),
           (S.sample_pc, {"snr": 0.0}, "snr"), (S.sample_pc, {"n_corrector": -1}, "n_corrector"),
           (S.sample_ddim, {"eta": -1.0}, "eta"), (S.sample_dpm_solver_2, {"r1": 1.5}, "r1"),
           (S.sample_dpm_solver_3, {"r1": 0.7, "r2": 0.5}, "r1"), (S.sample_dopri5, {"rtol": 0.0}, "rtol")]
    for fn, opts, word in bad:
        with pytest.raises(ValueError, match=word):
            fn(den, x, ts, **opts)
    with pytest.raises(TypeError, match="floating-point"):
        S.sample_dpmpp_2m(den, torch.zeros(2, 4, dtype=torch.long), ts)
