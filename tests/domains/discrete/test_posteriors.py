"""Conversions between denoiser, leave-one-out posterior and concrete score; the plug-in bridge;
the Gibbs corrector's invariance — all against brute-force enumeration of the oracle (K=4, L=6)."""

import pytest
import torch

from sciffusion.domains.discrete import (MarkovChainOracle, UniformProcess, concrete_score_from_loo,
                                         denoiser_from_loo, gibbs_conditional, gibbs_corrector,
                                         loo_from_concrete_score, loo_from_denoiser, uniform_bridge)
from sciffusion.domains.discrete.oracle import chi2_sf

K, L = 4, 6


@pytest.fixture(scope="module")
def setup():
    oracle = MarkovChainOracle.random(K, L, seed=0)
    return oracle, UniformProcess(K)


def _pt(oracle, process, t):
    """Exact p_t over all 4096 states: p_t(x) = sum_x0 p(x0) prod_i q_t(x^i | x0^i)."""
    xs, p = oracle.enumerate()
    a = float(process.alpha(t))
    Q = a * torch.eye(K, dtype=torch.float64) + (1 - a) / K  # Q[v, b] = q_t(b | v)
    M = torch.ones(xs.shape[0], xs.shape[0], dtype=torch.float64)
    for i in range(L):
        M = M * Q[xs[:, i][:, None], xs[:, i][None, :]]
    return xs, p @ M


def test_conversions_round_trip(setup):
    """Figure: loo -> denoiser -> loo and loo -> concrete score -> loo reproduce the oracle's
    leave-one-out posterior to 1e-12, and loo -> denoiser equals the oracle's denoiser to 1e-12."""
    oracle, pr = setup
    g = torch.Generator().manual_seed(0)
    x0 = oracle.sample(64, g)
    t = torch.rand(64, generator=g, dtype=torch.float64) * 0.9 + 0.05
    xt = pr.perturb(x0, t, g)
    a = pr.alpha(t)
    loo, den = oracle.posteriors(pr.emission(xt, t))
    assert torch.allclose(denoiser_from_loo(loo, xt, a), den, atol=1e-12, rtol=0)
    assert torch.allclose(loo_from_denoiser(den, xt, a), loo, atol=1e-12, rtol=0)
    s = concrete_score_from_loo(loo, xt, a)
    assert torch.allclose(s.gather(-1, xt[..., None]), torch.ones_like(xt[..., None], dtype=torch.float64))
    assert torch.allclose(loo_from_concrete_score(s, xt, a), loo, atol=1e-12, rtol=0)


def test_concrete_score_is_the_ratio_of_marginals(setup):
    """Figure: s(b) = p_t(x^{i<-b}) / p_t(x) computed from the exact p_t table, to 1e-10."""
    oracle, pr = setup
    t = 0.4
    xs, pt = _pt(oracle, pr, t)
    x = xs[torch.tensor([5, 777, 2049, 4000])]
    loo, _ = oracle.posteriors(pr.emission(x, t))
    s = concrete_score_from_loo(loo, x, pr.alpha(torch.full((4,), t, dtype=torch.float64)))
    for bi in range(4):
        for i in range(L):
            for b in range(K):
                y = x[bi].clone()
                y[i] = b
                want = pt[oracle.index(y[None])] / pt[oracle.index(x[bi][None])]
                assert float(s[bi, i, b]) == pytest.approx(float(want), rel=1e-10)


def test_plugin_bridge_exact_with_loo_not_with_denoiser(setup):
    """Figure: the bridge built on the leave-one-out posterior equals the exact reverse transition
    p(x_s^i | x_t) (brute force over x0 and x_s^i) to 1e-12; plugging in the denoiser instead is off
    by more than 1e-2 (it counts the evidence of x_t^i twice)."""
    oracle, pr = setup
    xs, p = oracle.enumerate()
    t, s = 0.6, 0.35
    a_t, a_s = float(pr.alpha(t)), float(pr.alpha(s))
    Qt = a_t * torch.eye(K, dtype=torch.float64) + (1 - a_t) / K
    Qs = a_s * torch.eye(K, dtype=torch.float64) + (1 - a_s) / K
    r = a_t / a_s
    Qts = r * torch.eye(K, dtype=torch.float64) + (1 - r) / K  # q_{t|s}(b' | b)
    g = torch.Generator().manual_seed(4)
    xt = pr.perturb(oracle.sample(8, g), t, g)
    B = xt.shape[0]
    tb, sb = torch.full((B,), t, dtype=torch.float64), torch.full((B,), s, dtype=torch.float64)
    loo, den = oracle.posteriors(pr.emission(xt, tb))
    good = uniform_bridge(loo, xt, pr.alpha(tb), pr.alpha(sb))
    bad = uniform_bridge(den, xt, pr.alpha(tb), pr.alpha(sb))
    exact = torch.empty(B, L, K, dtype=torch.float64)
    for bi in range(B):
        lik = torch.stack([Qt[xs[:, j], xt[bi, j]] for j in range(L)])  # (L, N)
        for i in range(L):
            w = p * torch.cat([lik[:i], lik[i + 1:]]).prod(0)  # p(x0) prod_{j != i} q_t(x_t^j | x0^j)
            # sum_x0 w(x0) q_s(b | x0^i) q_{t|s}(x_t^i | b)
            col = (w @ Qs[xs[:, i]]) * Qts[:, xt[bi, i]]
            exact[bi, i] = col / col.sum()
    assert torch.allclose(good, exact, atol=1e-12, rtol=0)
    assert (bad - exact).abs().max() > 1e-2


def test_gibbs_kernel_leaves_p_t_invariant_exactly(setup):
    """Figure: one random-scan Gibbs step with the oracle's conditional maps the exact p_t (4096
    states) to itself to 1e-12; the conditional equals p_t(x^i | x^{-i}) from the table to 1e-12."""
    oracle, pr = setup
    t = 0.5
    xs, pt = _pt(oracle, pr, t)
    N = xs.shape[0]
    loo, _ = oracle.posteriors(pr.emission(xs, t))
    cond = gibbs_conditional(loo, pr.alpha(torch.full((N,), t, dtype=torch.float64)))  # (N, L, K)
    new = torch.zeros(N, dtype=torch.float64)
    w = K ** torch.arange(L - 1, -1, -1)
    for i in range(L):
        base = oracle.index(xs) - xs[:, i] * w[i]
        for b in range(K):
            new.index_add_(0, base + b * w[i], pt * cond[:, i, b] / L)
            # conditional check: p_t(x^{i<-b}) / sum_c p_t(x^{i<-c})
            tab = torch.stack([pt[base + c * w[i]] for c in range(K)], -1)
            assert torch.allclose(cond[:, i, b], tab[:, b] / tab.sum(-1), atol=1e-12)
    assert torch.allclose(new, pt, atol=1e-12, rtol=0)


def test_gibbs_corrector_sampler_keeps_p_t(setup):
    """Figure: 2e5 exact draws from p_t pushed through 3 corrector steps of the sampler still pass a
    chi-square test against p_t (4095 dof, p > 1e-4)."""
    oracle, pr = setup
    g = torch.Generator().manual_seed(5)
    t = 0.5
    xs, pt = _pt(oracle, pr, t)
    x = pr.perturb(oracle.sample(200_000, g), t, g)
    y = gibbs_corrector(oracle.uniform_model(pr), pr, x, t, 3, generator=g)
    assert (y != x).any(1).double().mean() > 0.3  # the corrector does move states
    counts = torch.bincount(oracle.index(y), minlength=xs.shape[0]).double()
    n = y.shape[0]
    chi2 = float(((counts - n * pt) ** 2 / (n * pt)).sum())
    assert chi2_sf(chi2, xs.shape[0] - 1) > 1e-4
