"""The exact oracles themselves, checked against independent computations (autograd, Tweedie,
fine ODE integration, closed forms, scipy)."""

import itertools
import math

import numpy as np
import pytest
import torch
from scipy.stats import wasserstein_distance

from sciffusion.denoisers import PARAMETERIZATIONS
from sciffusion.processes import EDM, VE, VP, Linear, SubVP
from sciffusion.testing import (GaussianMixture, anisotropic_gaussian, empirical_w2_gaussian, gaussian_flow_map,
                                gaussian_w2, sliced_w1, standard_mixture_2d, w1_1d, w1_exact)

PROCESSES = [VP(), SubVP(), VE(), EDM(), Linear()]


def _mixture3d():
    means = torch.tensor([[0.0, 1.0, -1.0], [1.5, -0.5, 0.0]], dtype=torch.float64)
    _, cov = anisotropic_gaussian(3, 0.2, 1.5, seed=7)
    return GaussianMixture(means, torch.stack([cov, 0.5 * torch.eye(3, dtype=torch.float64)]), [0.3, 0.7])


@pytest.mark.parametrize("p", PROCESSES, ids=lambda p: p.name)
def test_score_is_gradient_of_log_prob_and_tweedie(p):
    """score = autograd of log p_t (1e-10); Tweedie x0 = (x + sigma^2 score)/alpha; eps = -sigma score."""
    gm = _mixture3d()
    t = torch.tensor(p.t_min + 0.3 * (p.t_max - p.t_min), dtype=torch.float64)
    x = gm.marginal(p, t).sample(10, torch.Generator().manual_seed(0)).requires_grad_(True)
    (grad,) = torch.autograd.grad(gm.log_prob(x, p, t).sum(), x)
    score = gm.score(x.detach(), p, t)
    torch.testing.assert_close(score, grad, rtol=1e-10, atol=1e-10)
    a, s = float(p.alpha(t)), float(p.sigma(t))
    torch.testing.assert_close(gm.x0(x.detach(), p, t), (x.detach() + s * s * score) / a, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(gm.eps(x.detach(), p, t), -s * score)


@pytest.mark.parametrize("param", PARAMETERIZATIONS)
def test_oracle_models_agree_through_the_denoiser(param):
    """Every parameterization of the exact model returns the same (x0, eps) via the Denoiser,
    including a batch with a different time per row."""
    gm, p = _mixture3d(), VP()
    x = torch.randn(6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    t = torch.linspace(0.1, 0.9, 6, dtype=torch.float64)
    x0, eps = gm.denoiser(p, param).predict(x, t)
    for i in range(6):
        torch.testing.assert_close(x0[i], gm.x0(x[i:i + 1], p, t[i])[0], rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(eps[i], gm.eps(x[i:i + 1], p, t[i])[0], rtol=1e-9, atol=1e-9)


def test_sample_moments_and_marginal():
    """Samples have the mixture's mean/cov (n = 40000; 5 SE on the mean, 5% on the cov); the
    noised marginal's log_prob equals log_prob under the process."""
    gm = _mixture3d()
    x = gm.sample(40000, torch.Generator().manual_seed(2))
    se = (gm.cov.diagonal() / 40000).sqrt()
    assert ((x.mean(0) - gm.mean).abs() < 5 * se).all()
    torch.testing.assert_close(torch.cov(x.T), gm.cov, atol=0.05 * float(gm.cov.abs().max()), rtol=0)
    p = VP()
    y = x[:5]
    torch.testing.assert_close(gm.marginal(p, 0.4).log_prob(y), gm.log_prob(y, p, 0.4))


@pytest.mark.parametrize("p", [VP(), VE(), Linear()], ids=lambda p: p.name)
def test_flow_map_equals_fine_ode_integration(p):
    """gaussian_flow_map(t1 -> t2) equals RK4 on dx/dt = exact velocity with 200 steps (1e-8:
    RK4's error at this step size is far below that; the map is the ODE's exact solution)."""
    mean, cov = anisotropic_gaussian(3, 0.1, 2.0, seed=5)
    gm = GaussianMixture.gaussian(mean, cov)
    den = gm.denoiser(p, "eps")
    t1, t2 = p.t_max, p.t_min + 0.1 * (p.t_max - p.t_min)
    x = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    y = x.clone()
    ts = torch.linspace(t1, t2, 201, dtype=torch.float64)
    for i in range(200):
        h, t = ts[i + 1] - ts[i], ts[i]
        k1 = den.velocity(y, t)
        k2 = den.velocity(y + h / 2 * k1, t + h / 2)
        k3 = den.velocity(y + h / 2 * k2, t + h / 2)
        k4 = den.velocity(y + h * k3, ts[i + 1])
        y = y + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    torch.testing.assert_close(gaussian_flow_map(x, mean, cov, p, t1, t2), y, rtol=1e-8, atol=1e-8)


def test_gaussian_w2_known_values():
    """Closed forms: 1-D sqrt(dm^2 + (s1 - s2)^2); commuting covariances sum (sqrt a - sqrt b)^2;
    symmetric; zero on identical; invariant under a common rotation."""
    assert gaussian_w2([1.0], [[4.0]], [-2.0], [[1.0]]) == pytest.approx(math.sqrt(9 + 1), rel=1e-12)
    a, b = torch.tensor([1.0, 4.0, 9.0]), torch.tensor([4.0, 1.0, 1.0])
    ref = math.sqrt(float(((a.sqrt() - b.sqrt()) ** 2).sum()))
    assert gaussian_w2(torch.zeros(3), torch.diag(a), torch.zeros(3), torch.diag(b)) == pytest.approx(ref, rel=1e-10)
    mean, cov = anisotropic_gaussian(4, 0.1, 3.0, seed=1)
    _, cov2 = anisotropic_gaussian(4, 0.5, 2.0, seed=2)
    assert gaussian_w2(mean, cov, mean, cov) == pytest.approx(0.0, abs=1e-6)
    assert gaussian_w2(mean, cov, 0 * mean, cov2) == pytest.approx(gaussian_w2(0 * mean, cov2, mean, cov), rel=1e-8)
    Q, _ = torch.linalg.qr(torch.randn(4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))
    assert gaussian_w2(Q @ mean, Q @ cov @ Q.T, torch.zeros(4, dtype=torch.float64), Q @ cov2 @ Q.T) == \
        pytest.approx(gaussian_w2(mean, cov, torch.zeros(4), cov2), rel=1e-8)


def test_empirical_w2_gaussian_converges():
    """The fitted Gaussian of n exact samples is within O(sqrt(d^2/n)) of the truth: < 0.05 at n = 20000."""
    mean, cov = anisotropic_gaussian(8, 0.03, 3.0)
    x = GaussianMixture.gaussian(mean, cov).sample(20000, torch.Generator().manual_seed(0))
    assert empirical_w2_gaussian(x, mean, cov) < 0.05
    assert empirical_w2_gaussian(x + 0.5, mean, cov) == pytest.approx(0.5 * math.sqrt(8), rel=0.05)


def test_w1_one_dimension_matches_scipy():
    """w1_1d (any sizes) and w1_exact (equal sizes) equal scipy.stats.wasserstein_distance to 1e-12."""
    rng = np.random.default_rng(0)
    x, y, z = rng.normal(size=50), rng.gamma(2.0, size=73), rng.normal(1.0, 2.0, size=50)
    assert w1_1d(x, y) == pytest.approx(wasserstein_distance(x, y), rel=1e-12)
    assert w1_1d(x, z) == pytest.approx(wasserstein_distance(x, z), rel=1e-12)
    assert w1_exact(x, z) == pytest.approx(wasserstein_distance(x, z), rel=1e-12)


def test_w1_exact_is_the_optimal_assignment():
    """Against brute force over all 6! = 720 matchings of two 2-D point sets."""
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(6, 2)), rng.normal(size=(6, 2))
    cost = np.sqrt(((x[:, None] - y[None]) ** 2).sum(-1))
    best = min(cost[np.arange(6), list(perm)].mean() for perm in itertools.permutations(range(6)))
    assert w1_exact(x, y) == pytest.approx(best, rel=1e-12)
    with pytest.raises(ValueError, match="equal shape"):
        w1_exact(x, y[:5])


def test_sliced_w1_of_a_translation():
    """Sliced W1 between a point cloud and its translate by c is |c| E|u_1| = |c| 2/pi in 2-D.
    4096 random directions: SE of the mean |cos| is 0.3/64 = 0.5%; tolerance 2.5%."""
    x = standard_mixture_2d().sample(500, torch.Generator().manual_seed(0))
    c = torch.tensor([0.6, -0.8], dtype=torch.float64)
    assert sliced_w1(x, x + c, num_projections=4096) == pytest.approx(2 / math.pi, rel=0.025)
    assert sliced_w1(x, x) == 0.0
    with pytest.raises(ValueError, match="dimensions differ"):
        sliced_w1(x, torch.zeros(5, 3))


def test_mixture_errors():
    with pytest.raises(ValueError, match=r"means must have shape \(K, d\)"):
        GaussianMixture(torch.zeros(3), torch.ones(3))
    with pytest.raises(ValueError, match="covs"):
        GaussianMixture(torch.zeros(2, 3), torch.ones(2, 2, 2))
    with pytest.raises(ValueError, match="weights"):
        GaussianMixture(torch.zeros(2, 3), torch.ones(2), [1.0, -1.0])
