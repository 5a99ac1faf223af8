"""Forward processes: every coefficient against an independent computation (finite differences,
the defining identities, and a simulated forward SDE)."""

import math

import pytest
import torch

from sciffusion.processes import EDM, VE, VP, JointProcess, Linear, SubVP, get_process

PROCESSES = [VP(), SubVP(), VE(), EDM(), Linear()]
ids = [p.name for p in PROCESSES]


def _grid(p, n=7):
    return torch.linspace(p.t_min + 0.01 * (p.t_max - p.t_min), p.t_max, n, dtype=torch.float64)


def _step(p, t):
    """FD step 1e-5 x the distance to the nearest singularity of the coefficients: t = 0 (sigma -> 0,
    EDM/VE derivatives ~ 1/t) and, for Linear, t = 1 (alpha -> 0)."""
    dist = torch.minimum(t, 1 - t) if isinstance(p, Linear) else t
    return 1e-5 * dist


def _fd(fn, t, h):
    """Central difference, float64: truncation O(h^2 f''') plus round-off O(eps f / h)."""
    return (fn(t + h) - fn(t - h)) / (2 * h)


@pytest.mark.parametrize("p", PROCESSES, ids=ids)
def test_derivatives_match_finite_differences(p):
    """d_alpha, d_sigma, d_lam, f = dlog(alpha)/dt against central differences.

    Step h = 1e-5 * (t_max - t_min) relative: truncation ~h^2, round-off ~1e-16/h, both < 1e-7
    relative here; tolerance 1e-6 relative (plus 1e-9 absolute for VE/EDM's zero d_alpha).
    """
    t = _grid(p)
    h = _step(p, t)
    for exact, fn in [(p.d_alpha(t), p.alpha), (p.d_sigma(t), p.sigma), (p.d_lam(t), p.lam),
                      (p.f(t), lambda s: p.log_alpha(s))]:
        torch.testing.assert_close(exact, _fd(fn, t, h), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("p", PROCESSES, ids=ids)
def test_lambda_is_decreasing_and_inverts(p):
    """lambda strictly decreasing; t(lambda(t)) = t to 1e-9 relative (float64 round-trip)."""
    t = torch.linspace(p.t_min if p.t_min > 0 else 1e-3, p.t_max, 101, dtype=torch.float64)
    lam = p.lam(t)
    assert (lam[1:] < lam[:-1]).all() and (p.d_lam(t) < 0).all()
    torch.testing.assert_close(p.t_of_lam(lam), t, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(lam, p.log_alpha(t) - p.log_sigma(t), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("p", PROCESSES, ids=ids)
def test_g2_identity(p):
    """g^2 = d(sigma^2)/dt - 2 f sigma^2, with d(sigma^2)/dt by central differences (rtol 1e-6, as above)."""
    t = _grid(p)
    h = _step(p, t)
    rhs = _fd(lambda s: p.sigma(s) ** 2, t, h) - 2 * p.f(t) * p.sigma(t) ** 2
    torch.testing.assert_close(p.g2(t), rhs, rtol=1e-6, atol=1e-12)
    torch.testing.assert_close(p.diffusion(t) ** 2, p.g2(t), rtol=1e-12, atol=0)
    assert (p.g2(t) > 0).all()


def test_vp_subvp_closed_forms():
    """VP: alpha^2 + sigma^2 = 1 and beta(t) = -2 f(t); sub-VP: sigma = 1 - alpha^2 (Song et al. Eq. 29)."""
    t = _grid(VP())
    vp, svp = VP(), SubVP()
    torch.testing.assert_close(vp.alpha(t) ** 2 + vp.sigma(t) ** 2, torch.ones_like(t))
    torch.testing.assert_close(vp.beta(t), -2 * vp.f(t))
    torch.testing.assert_close(svp.sigma(t), 1 - svp.alpha(t) ** 2)
    torch.testing.assert_close(EDM().sigma(t * 10), t * 10)
    torch.testing.assert_close(Linear().alpha(t * 0.9) + Linear().sigma(t * 0.9), torch.ones_like(t))


@pytest.mark.parametrize("p", PROCESSES, ids=ids)
def test_forward_sde_marginal_matches_alpha_sigma(p):
    """Simulate dx = f x dt + g dW by Euler–Maruyama from s = t_min to T' = t_min + 0.9 (t_max - t_min),
    started from the exact marginal N(alpha_s m, alpha_s^2 c + sigma_s^2) of data N(m, c) (1-D, m=1.5, c=0.5).

    Figures: mean and variance at T' vs alpha m and alpha^2 c + sigma^2. Tolerance: 5 Monte
    Carlo standard errors (n = 20000: SE(mean) = sd/141, SE(var) = var * 1%) plus the EM weak
    bias, ~|f| dt <= 1% (VP: beta_max dt / 2 = 0.01; Linear: dt/(1-T') = 0.009; zero drift for VE/EDM).
    T' stays off Linear's t=1, where f = -1/(1-t) blows up and uniform EM steps would be unstable.
    """
    g = torch.Generator().manual_seed(0)
    n, steps, m, c = 20000, 1000, 1.5, 0.5
    s, T = p.t_min, p.t_min + 0.9 * (p.t_max - p.t_min)
    a_s, sig_s = float(p.alpha(s)), float(p.sigma(s))
    x = a_s * m + math.sqrt(a_s ** 2 * c + sig_s ** 2) * torch.randn(n, 1, generator=g, dtype=torch.float64)
    ts = torch.linspace(s, T, steps + 1, dtype=torch.float64)
    for i in range(steps):
        dt = ts[i + 1] - ts[i]
        x = x + p.drift(x, ts[i]) * dt + p.diffusion(ts[i]) * dt.sqrt() * p.noise_like(x, g)
    a, sig = float(p.alpha(T)), float(p.sigma(T))
    mean_ex, var_ex = a * m, a * a * c + sig * sig
    sd = math.sqrt(var_ex)
    assert abs(x.mean() - mean_ex) < 5 * sd / math.sqrt(n) + 0.01 * abs(mean_ex)
    assert abs(x.var() - var_ex) < var_ex * (5 * math.sqrt(2 / n) + 0.01)


@pytest.mark.parametrize("p", PROCESSES, ids=ids)
def test_perturb_and_marginal(p):
    """perturb returns x_t = alpha x0 + sigma eps exactly, with the eps it drew."""
    x0 = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    t = torch.linspace(p.t_min + 1e-3, p.t_max, 5, dtype=torch.float64)
    xt, eps = p.perturb(x0, t, torch.Generator().manual_seed(2))
    torch.testing.assert_close(xt, p.alpha(t)[:, None] * x0 + p.sigma(t)[:, None] * eps, rtol=0, atol=1e-12)
    mean, std = p.marginal(x0, 0.5 * (p.t_min + p.t_max))
    assert mean.shape == x0.shape and std.shape == (1, 1)


@pytest.mark.parametrize("p", PROCESSES, ids=ids)
def test_prior(p):
    """prior_std = sqrt(alpha_T^2 + sigma_T^2); prior_logp is the N(0, s^2 I) density; samples have
    that std (n = 40000 scalars: SE of the std 0.35%; tolerance 2%)."""
    s = p.prior_std()
    assert s == pytest.approx(math.sqrt(float(p.alpha(p.t_max)) ** 2 + float(p.sigma(p.t_max)) ** 2), rel=1e-12)
    x = p.prior_sample((10000, 4), torch.Generator().manual_seed(3), dtype=torch.float64)
    assert x.std().item() == pytest.approx(s, rel=0.02)
    y = torch.randn(3, 2, 2, dtype=torch.float64)
    ref = torch.distributions.Normal(0.0, s).log_prob(y).flatten(1).sum(1)
    torch.testing.assert_close(p.prior_logp(y), ref)


def test_joint_process_answers_componentwise():
    """JointProcess: each coefficient is the component's; common ends are the intersection."""
    a, b = VP(), VE()
    jp = JointProcess((a, b))
    t = torch.tensor([0.3, 0.6], dtype=torch.float64)
    for name in ("alpha", "sigma", "lam", "f", "g2", "d_alpha"):
        ca, cb = getattr(jp, name)(t)
        torch.testing.assert_close(ca, getattr(a, name)(t))
        torch.testing.assert_close(cb, getattr(b, name)(t))
    assert jp.t_min == max(a.t_min, b.t_min) and jp.t_max == min(a.t_max, b.t_max)
    x = (torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 2, 2, dtype=torch.float64))
    xt, eps = jp.perturb(x, t[0], torch.Generator().manual_seed(0))
    torch.testing.assert_close(xt[1], x[1] + b.sigma(t[0]) * eps[1])
    torch.testing.assert_close(xt[0], a.alpha(t[0]) * x[0] + a.sigma(t[0]) * eps[0])
    dr = jp.drift(x, t[0])
    torch.testing.assert_close(dr[0], a.f(t[0]) * x[0])
    lp = jp.prior_logp(x)
    torch.testing.assert_close(lp[1], b.prior_logp(x[1]))
    jd = JointProcess({"h": a, "adj": b})
    assert set(jd.alpha(0.5)) == {"h", "adj"}
    with pytest.raises(TypeError, match="Process"):
        JointProcess(())
    with pytest.raises(TypeError, match="Process"):
        JointProcess((a, 3))


def test_bad_arguments():
    with pytest.raises(ValueError, match="beta_min"):
        VP(beta_min=2.0, beta_max=1.0)
    with pytest.raises(ValueError, match="sigma_min"):
        VE(sigma_min=0.0)
    with pytest.raises(ValueError, match="sigma_min"):
        EDM(sigma_min=10.0, sigma_max=1.0)
    with pytest.raises(ValueError, match="t_min"):
        Linear(t_max=1.0)
    with pytest.raises(ValueError, match="edm, linear, subvp, ve, vp"):
        get_process("ddpm")
    assert isinstance(get_process("subvp"), SubVP)
