"""Probability-flow ODE likelihood against exact log-densities.

The PF-ODE log-likelihood returns log p_{t_min}(x): the density of the data noised to t_min, since
the grid cannot start at t=0. So every comparison is against the exact ``log p_{t_min}`` of the
Gaussian / mixture oracle, never against log p_0. The prior at t_max is N(0, s^2 I) by default,
which differs from the exact p_{t_max}; tests that want to isolate the ODE error pass the exact
p_{t_max} as ``prior_logp``, and the one test with the default prior adds the measured prior gap
(computed exactly from the oracle) to its tolerance.
"""

import math

import pytest
import torch

from sciffusion.denoisers import Denoiser
from sciffusion.likelihood import bits_per_dim, log_likelihood
from sciffusion.processes import EDM, VE, VP, Linear, SubVP
from sciffusion.testing import GaussianMixture, anisotropic_gaussian, standard_mixture_2d

PROCESSES = [VP(), SubVP(), VE(), EDM(), Linear()]


def _points(gm, process, n, seed):
    return gm.marginal(process, process.t_min).sample(n, torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("process", PROCESSES, ids=lambda p: p.name)
def test_gaussian_loglik_matches_exact(process):
    """Exact d=4 Gaussian, exact trace, RK4 on 48 logSNR steps, exact prior at t_max.

    Figure: max |logp - log p_{t_min}(x)| over 16 points. Tolerance 2e-3 nats: RK4's global error
    is O(h^4) in lambda; on the mixture below halving 32 -> 64 steps shrinks the error ~20x,
    and the Gaussian flow is smoother still, so 48 steps sit well under a millinat (a wrong
    divergence or a sign error moves logp by O(1) nats).
    """
    mean, cov = anisotropic_gaussian(4, 0.1, 2.0, seed=1)
    gm = GaussianMixture.gaussian(mean, cov)
    x = _points(gm, process, 16, 0)
    param = {"vp": "eps", "subvp": "x0", "ve": "score", "edm": "v", "linear": "velocity"}[process.name]
    res = log_likelihood(gm.denoiser(process, param), x, num_steps=48,
                         prior_logp=lambda y: gm.log_prob(y, process, process.t_max))
    exact = gm.log_prob(x, process, process.t_min)
    assert (res.logp - exact).abs().max() < 2e-3
    assert res.nfe == 4 * 48


@pytest.mark.parametrize("process", [VP(), Linear()], ids=lambda p: p.name)
def test_mixture_loglik_converges_to_exact(process):
    """2-D eight-Gaussian mixture (std 0.25) with exact scores, exact trace.

    Figures: error at 32 and 64 RK4 steps. Checks (a) error(64) < 1e-3 nats and (b) error(64) <
    error(32)/8: the integrator converges at order >= 3 *to the exact value*, which a solver
    converging to any other limit could not do. Exact prior at t_max isolates the ODE error.
    """
    gm = standard_mixture_2d()
    x = _points(gm, process, 48, 1)
    den = gm.denoiser(process, "eps")
    exact = gm.log_prob(x, process, process.t_min)
    prior = lambda y: gm.log_prob(y, process, process.t_max)  # noqa: E731
    err = [(log_likelihood(den, x, num_steps=n, prior_logp=prior).logp - exact).abs().max().item()
           for n in (32, 64)]
    assert err[1] < 1e-3
    assert err[1] < err[0] / 8


def test_default_prior_gap_is_the_only_extra_error():
    """With the default N(0, I) prior (VP), the extra error is exactly the prior mismatch.

    Figure: |logp_default - logp_exactprior| equals |log pi(x_T) - log p_T(x_T)| to round-off (the
    ODE part is shared), and that gap is small (VP alpha_T ~ 6.6e-3, so < 1e-3 nats here).
    """
    gm = standard_mixture_2d()
    p = VP()
    x = _points(gm, p, 32, 2)
    den = gm.denoiser(p, "eps")
    a = log_likelihood(den, x, num_steps=24)
    b = log_likelihood(den, x, num_steps=24, prior_logp=lambda y: gm.log_prob(y, p, p.t_max))
    gap = p.prior_logp(a.x_T.double()) - gm.log_prob(a.x_T, p, p.t_max)
    torch.testing.assert_close(a.logp - b.logp, gap, atol=1e-12, rtol=0)
    assert gap.abs().max() < 1e-3


def test_dopri5_matches_exact():
    """Adaptive dopri5 (torchdiffeq) at rtol 1e-7: error < 1e-4 nats on the mixture (the tolerance
    is ~100x the requested local tolerance, which accumulates over the solve)."""
    pytest.importorskip("torchdiffeq")
    gm = standard_mixture_2d()
    p = VP()
    x = _points(gm, p, 16, 3)
    res = log_likelihood(gm.denoiser(p, "eps"), x, method="dopri5", rtol=1e-7, atol=1e-9,
                         prior_logp=lambda y: gm.log_prob(y, p, p.t_max))
    assert (res.logp - gm.log_prob(x, p, p.t_min)).abs().max() < 1e-4


def test_heun_is_second_order():
    """Heun: error(64)/error(32) ~ 1/4 (order 2); checked < 1/3 and error(64) < 5e-2 nats."""
    mean, cov = anisotropic_gaussian(3, 0.1, 2.0, seed=2)
    gm = GaussianMixture.gaussian(mean, cov)
    p = VP()
    x = _points(gm, p, 8, 4)
    exact = gm.log_prob(x, p, p.t_min)
    prior = lambda y: gm.log_prob(y, p, p.t_max)  # noqa: E731
    err = [(log_likelihood(gm.denoiser(p), x, method="heun", num_steps=n, prior_logp=prior).logp - exact)
           .abs().max().item() for n in (32, 64)]
    assert err[1] < err[0] / 3 and err[1] < 5e-2


@pytest.mark.parametrize("noise", ["rademacher", "gaussian"])
def test_hutchinson_is_unbiased(noise):
    """Hutchinson's trace is unbiased for the exact-trace result of the same discretisation.

    One point of a d=8 Gaussian replicated 800 times gives 800 independent probes in one
    batched solve (the trajectory is shared, so the estimates are i.i.d.). Figure: |mean - exact|
    in standard errors; tolerance 4 SE (a false alarm has probability ~6e-5).
    """
    mean, cov = anisotropic_gaussian(8, 0.1, 2.0, seed=3)
    gm = GaussianMixture.gaussian(mean, cov)
    p = VP()
    x = _points(gm, p, 1, 5).expand(800, 8).clone()
    den = gm.denoiser(p)
    exact = log_likelihood(den, x[:1], num_steps=8, trace="exact").logp
    est = log_likelihood(den, x, num_steps=8, trace="hutchinson", noise=noise,
                         generator=torch.Generator().manual_seed(0)).logp
    se = est.std() / math.sqrt(len(est))
    assert est.std() > 0  # the estimator is random, so the check has teeth
    assert (est.mean() - exact).abs() < 4 * se


def test_hutchinson_is_reproducible_and_probes_average():
    """Same generator seed -> identical result; 16 probes shrink the spread across samples."""
    mean, cov = anisotropic_gaussian(8, 0.1, 2.0, seed=3)
    gm = GaussianMixture.gaussian(mean, cov)
    p = VP()
    x = _points(gm, p, 1, 5).expand(64, 8).clone()
    den = gm.denoiser(p)
    kw = dict(num_steps=4, trace="hutchinson")
    a = log_likelihood(den, x, generator=torch.Generator().manual_seed(7), **kw).logp
    b = log_likelihood(den, x, generator=torch.Generator().manual_seed(7), **kw).logp
    c = log_likelihood(den, x, generator=torch.Generator().manual_seed(7), num_probes=16, **kw).logp
    assert torch.equal(a, b)
    # variance falls as 1/K: 16 probes -> std / 4; checked with a factor 2 of sampling slack
    assert c.std() < a.std() / 2


def test_bits_per_dim_and_dequantisation_offset():
    """bpd = -logp/(d ln 2); 8-bit data in [0,1] (bin 1/256) adds exactly 8 bits, in [-1,1] 7 bits."""
    logp = torch.tensor([-3.0, 2.0], dtype=torch.float64)
    torch.testing.assert_close(bits_per_dim(logp, 3), -logp / (3 * math.log(2)))
    torch.testing.assert_close(bits_per_dim(logp, 3, 1 / 256) - bits_per_dim(logp, 3),
                               torch.full((2,), 8.0, dtype=torch.float64))
    torch.testing.assert_close(bits_per_dim(logp, 3, 2 / 256) - bits_per_dim(logp, 3),
                               torch.full((2,), 7.0, dtype=torch.float64))
    gm = standard_mixture_2d()
    p = VP()
    x = _points(gm, p, 4, 6)
    r = log_likelihood(gm.denoiser(p), x, num_steps=4, bin_width=1 / 256)
    torch.testing.assert_close(r.bpd, bits_per_dim(r.logp, 2, 1 / 256))


def test_errors():
    gm = standard_mixture_2d()
    p = VP()
    den = gm.denoiser(p)
    x = torch.zeros(3, 2, dtype=torch.float64)
    with pytest.raises(TypeError, match="Denoiser"):
        log_likelihood(gm.model(p), x)
    with pytest.raises(ValueError, match="rk4"):
        log_likelihood(den, x, method="rk5")
    with pytest.raises(ValueError, match="hutchinson"):
        log_likelihood(den, x, trace="approx")
    with pytest.raises(ValueError, match="rademacher"):
        log_likelihood(den, x, noise="uniform")
    with pytest.raises(ValueError, match="t_min"):
        log_likelihood(den, x, t_min=0.5, t_max=0.4)
    with pytest.raises(ValueError, match="lambda"):
        log_likelihood(den, x, t_min=0.0)  # VP: sigma_0 = 0
    with pytest.raises(ValueError, match="num_probes"):
        log_likelihood(den, x, num_probes=0)
    with pytest.raises(TypeError, match="tuple"):
        log_likelihood(den, (x, x))
    with pytest.raises(ValueError, match="NaN"):
        log_likelihood(den, torch.full((3, 2), float("nan"), dtype=torch.float64))
    frozen = Denoiser(lambda y, t: gm.model(p)(y.detach(), t), p, "eps")
    with pytest.raises(ValueError, match="differentiable"):
        log_likelihood(frozen, x, num_steps=2)
    nan_model = Denoiser(lambda y, t: y * float("nan"), p, "eps")
    with pytest.raises(FloatingPointError, match="step 0"):
        log_likelihood(nan_model, x, num_steps=2)
    with pytest.raises(ValueError, match="bin_width"):
        bits_per_dim(torch.zeros(1), 2, 0.0)


def test_float32_network_and_auto_trace():
    """A float32 MLP is called in float32 while the ODE runs in float64; ``trace='auto'`` switches to
    Hutchinson above ``exact_max_dim`` (the result then depends on the probe seed, the exact one not)."""
    from sciffusion.nn import MLP

    torch.manual_seed(0)
    den = Denoiser(MLP(3, hidden=8, depth=1), VP(), "eps")
    x = torch.randn(4, 3)
    exact = log_likelihood(den, x, num_steps=3)
    assert exact.logp.dtype == torch.float64 and torch.isfinite(exact.logp).all() and exact.x_T.dtype == torch.float32
    h1 = log_likelihood(den, x, num_steps=3, exact_max_dim=2, generator=torch.Generator().manual_seed(1)).logp
    h2 = log_likelihood(den, x, num_steps=3, exact_max_dim=2, generator=torch.Generator().manual_seed(2)).logp
    assert not torch.equal(h1, h2)
    torch.testing.assert_close(log_likelihood(den, x, num_steps=3).logp, exact.logp, rtol=0, atol=0)
