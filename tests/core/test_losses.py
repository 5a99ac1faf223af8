"""DSM loss: each weighting equals the loss it claims to be, and the exact oracle attains the
closed-form minimum."""

import math

import pytest
import torch

from sciffusion.losses import WEIGHTINGS, dsm_loss, eps_weight
from sciffusion.processes import EDM, VE, VP, Linear, SubVP
from sciffusion.testing import GaussianMixture, anisotropic_gaussian

PROCESSES = [VP(), SubVP(), VE(), EDM(), Linear()]


def _draws(process, x0, seed):
    """Replay dsm_loss's random draws: t ~ U[t_min, t_max], then eps (same generator, same order)."""
    g = torch.Generator().manual_seed(seed)
    lo, hi = process.t_min, process.t_max
    t = lo + (hi - lo) * torch.rand(x0.shape[0], generator=g, dtype=torch.float64)
    xt, eps = process.perturb(x0, t, g)
    return t, xt, eps


def _model(seed):
    """A fixed, imperfect eps-model (so every error term is non-zero)."""
    w = torch.randn(3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)) * 0.3
    return lambda x, t: x @ w + torch.sin(t)[:, None]


@pytest.mark.parametrize("p", PROCESSES, ids=lambda p: p.name)
def test_weightings_equal_their_stated_losses(p):
    """Figure: each weighted eps loss equals the MSE it claims, computed independently from the
    same (t, eps) draws, to 1e-10 relative (float64 round-off)."""
    x0 = torch.randn(64, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    model = _model(1)
    t, xt, eps = _draws(p, x0, 5)
    eps_hat = model(xt, t)
    a, s = p.alpha(t)[:, None], p.sigma(t)[:, None]
    x0_hat = (xt - s * eps_hat) / a
    v, v_hat = a * eps - s * x0, a * eps_hat - s * x0_hat
    score, score_hat = -eps / s, -eps_hat / s
    sq = lambda u: u.pow(2).sum(1)  # noqa: E731
    snr = (a / s)[:, 0] ** 2
    sd = getattr(p, "sigma_data", 0.5)
    stated = {
        "eps": sq(eps_hat - eps),
        "x0": sq(x0_hat - x0),
        "v": sq(v_hat - v),
        "score": sq(score_hat - score),
        "likelihood": p.g2(t) * sq(score_hat - score),  # Song et al. 2021b: lambda = g^2 on the score
        "min_snr": torch.clamp(snr, max=5.0) * sq(x0_hat - x0),  # Hang et al. 2023 on the x0 loss
        # Karras et al. 2022, lambda(sigma) = (sigma^2 + sd^2)/(sigma sd)^2 on the denoiser D = x0_hat
        # (written with the *unscaled* x0 error; for alpha = 1 processes this is EDM's loss exactly)
        "edm": (s[:, 0] ** 2 + sd ** 2) / (s[:, 0] * sd) ** 2 * sq(a * (x0_hat - x0)),
    }
    for name in WEIGHTINGS:
        got = dsm_loss(model, x0, p, weighting=name, generator=torch.Generator().manual_seed(5), normalize=False)
        ref = stated[name].mean() if name != "edm" or isinstance(p, (VE, EDM)) else None
        if ref is not None:
            torch.testing.assert_close(got, ref, rtol=1e-10, atol=0, msg=name)
        # normalize=True divides by the mean weight of the drawn times
        w = eps_weight(p, t, name)
        got_n = dsm_loss(model, x0, p, weighting=name, generator=torch.Generator().manual_seed(5))
        torch.testing.assert_close(got_n, got / w.mean(), rtol=1e-10, atol=0)


@pytest.mark.parametrize("param", ["x0", "score", "v", "velocity"])
def test_parameterization_does_not_change_the_loss(param):
    """The same predictor expressed in another parameterization gives the same loss (1e-10)."""
    p = VP()
    x0 = torch.randn(32, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    eps_model = _model(3)

    def other(x, t):
        t64 = t.to(torch.float64)
        a, s = p.alpha(t64)[:, None], p.sigma(t64)[:, None]
        da, ds = p.d_alpha(t64)[:, None], p.d_sigma(t64)[:, None]
        e = eps_model(x, t)
        x0h = (x - s * e) / a
        return {"x0": x0h, "score": -e / s, "v": a * e - s * x0h, "velocity": da * x0h + ds * e}[param]

    ref = dsm_loss(eps_model, x0, p, generator=torch.Generator().manual_seed(4))
    got = dsm_loss(other, x0, p, parameterization=param, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=0)


def test_exact_oracle_attains_the_minimum():
    """For Gaussian data N(m, C) at a fixed t the minimal eps loss is
    E||E[eps|x_t] - eps||^2 = tr Cov(eps | x_t) = d - sigma^2 tr (alpha^2 C + sigma^2 I)^{-1}.

    Figures: the exact model's loss (n = 20000) matches it within 4 SE; the oracle shifted by 0.5
    has a larger loss for every weighting (n = 256, common random numbers: the excess is the
    deterministic d * 0.25 = 0.75 times the weight plus a zero-mean cross term whose SE is ~10x
    smaller).
    """
    mean, cov = anisotropic_gaussian(3, 0.1, 2.0, seed=4)
    gm = GaussianMixture.gaussian(mean, cov)
    p = VP()
    x0 = gm.sample(20000, torch.Generator().manual_seed(0))
    t = 0.3
    a, s = float(p.alpha(t)), float(p.sigma(t))
    floor = 3 - s * s * torch.trace(torch.linalg.inv(a * a * cov + s * s * torch.eye(3, dtype=torch.float64)))
    exact = gm.model(p, "eps")
    g = torch.Generator().manual_seed(1)
    xt, eps = p.perturb(x0, torch.full((20000,), t, dtype=torch.float64), g)
    per = (exact(xt, torch.full((20000,), t, dtype=torch.float64)) - eps).pow(2).sum(1)
    assert abs(per.mean() - floor) < 4 * per.std() / math.sqrt(len(per))
    got = dsm_loss(exact, x0, p, generator=torch.Generator().manual_seed(1), t_min=t, t_max=t, normalize=False)
    assert abs(got - floor) < 4 * per.std() / math.sqrt(len(per))
    shifted = lambda x, tt: exact(x, tt) + 0.5  # noqa: E731
    for name in WEIGHTINGS:
        kw = dict(weighting=name, normalize=False)
        l_exact = dsm_loss(exact, x0[:256], p, generator=torch.Generator().manual_seed(9), **kw)
        l_shift = dsm_loss(shifted, x0[:256], p, generator=torch.Generator().manual_seed(9), **kw)
        assert l_exact < l_shift, name


def test_errors():
    p = VP()
    x0 = torch.zeros(4, 3)
    with pytest.raises(ValueError, match="edm, eps, likelihood"):
        dsm_loss(_model(0), x0, p, weighting="snr")
    with pytest.raises(ValueError, match="eps, score, v, velocity, x0"):
        dsm_loss(_model(0), x0, p, parameterization="noise")
    with pytest.raises(ValueError, match="expected one of"):
        eps_weight(p, torch.tensor([0.5]), "bad")
