"""The Gaussian Schrödinger bridge closed form and the fitted bridge against it."""

import pytest
import torch

from sciffusion.domains.schrodinger_bridge import (Brownian, as_snapshots, fit_bridge, gaussian_kl,
                                                   gaussian_sb_coupling, gaussian_sb_marginal,
                                                   static_residual)

F64 = torch.float64


def _spd(d, seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(d, d, generator=g, dtype=F64)
    return scale * (A @ A.T / d + 0.2 * torch.eye(d, dtype=F64))


@pytest.mark.parametrize("d", [2, 5])
@pytest.mark.parametrize("sigma", [0.2, 1.0, 3.0])
def test_static_coupling_solves_the_bridge_equation(d, sigma):
    # C must satisfy eps K + K S1 K^T = S0 (K = C S1^-1), keep the joint covariance PD, and tend to
    # the OT cross-covariance as sigma -> 0 (checked via the residual equation at each sigma).
    S0, S1 = _spd(d, 1), _spd(d, 2, 2.0)
    C = gaussian_sb_coupling(S0, S1, sigma, T=1.5)
    assert static_residual(S0, S1, C, sigma, T=1.5) < 1e-10
    joint = torch.cat([torch.cat([S0, C], 1), torch.cat([C.T, S1], 1)])
    assert torch.linalg.eigvalsh(joint).min() > 0


def test_marginal_endpoints_and_large_noise_limit():
    S0, S1 = _spd(2, 3), _spd(2, 4)
    m0, m1 = torch.zeros(2, dtype=F64), torch.ones(2, dtype=F64)
    assert torch.allclose(gaussian_sb_marginal(m0, S0, m1, S1, 1.0, 0.0)[1], S0)
    assert torch.allclose(gaussian_sb_marginal(m0, S0, m1, S1, 1.0, 1.0)[1], S1)
    # sigma -> infinity: independent coupling, C -> 0
    assert gaussian_sb_coupling(S0, S1, 1e4).abs().max() < 1e-6


@pytest.mark.parametrize("d,n,bound", [(2, 800, 0.02), (5, 800, 0.05)])
def test_fitted_bridge_reproduces_closed_form_marginals(d, n, bound):
    # Vanilla SB (Brownian reference, one pass) on n samples per end: the Gaussian fitted to the
    # bridge population at t = 0, 0.1, ..., 1 vs the closed form. The bounds (averaged KL
    # <= 0.02 in d=2, <= 0.05 in d=5); the finite-sample KL alone is ~(d + d(d+1)/2) / (2n) =
    # 0.003 (d=2) and 0.013 (d=5).
    sigma = 1.0
    S0, S1 = _spd(d, 10, 0.5), _spd(d, 11, 1.5)
    m0 = torch.zeros(d, dtype=F64)
    m1 = torch.linspace(1.0, -1.0, d, dtype=F64)
    g = torch.Generator().manual_seed(d)
    x0 = m0 + torch.randn(n, d, generator=g, dtype=F64) @ torch.linalg.cholesky(S0).T
    x1 = m1 + torch.randn(n, d, generator=g, dtype=F64) @ torch.linalg.cholesky(S1).T
    res = fit_bridge(as_snapshots([x0, x1], [0.0, 1.0]), Brownian(sigma), iterations=1, generator=g,
                     max_step=0.1)
    times = [i / 10 for i in range(11)]
    preds = res.predict(times, generator=g, num_paths=4 * n)
    kls = []
    for t, p in zip(times, preds):
        mean, cov = gaussian_sb_marginal(m0, S0, m1, S1, sigma, t)
        kls.append(gaussian_kl(p.mean(0), torch.cov(p.T), mean, cov))
    assert sum(kls) / len(kls) <= bound, kls
