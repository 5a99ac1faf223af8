"""Entropic couplings (POT log-domain Sinkhorn) and index chains."""

import pytest
import torch

from sciffusion.domains.schrodinger_bridge.coupling import entropic_plan, sample_chain

F64 = torch.float64


def test_plan_is_the_static_bridge_form_with_uniform_marginals():
    # The static SB plan is a_i exp(-C_ij) b_j: log P + C must be a sum f_i + g_j (double-centred
    # residual ~0), and both marginals uniform, even for costs spanning 1e3 (log domain).
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, 2, generator=g, dtype=F64), torch.randn(50, 2, generator=g, dtype=F64)
    C = torch.cdist(x, y) ** 2 / (2 * 0.05)  # a small-noise Brownian cost, up to ~500
    P, info = entropic_plan(C)
    assert abs(P.sum().item() - 1) < 1e-12
    assert info["marginal_error"] < 1e-6
    L = P.log() + C
    resid = L - L.mean(1, keepdim=True) - L.mean(0, keepdim=True) + L.mean()
    assert resid.abs().max() < 1e-6


def test_plan_rejects_nan_cost():
    C = torch.zeros(3, 3, dtype=F64)
    C[1, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        entropic_plan(C)


def test_chain_frequencies_follow_the_plans():
    # i0 uniform, i1 | i0 ~ P[i0] / a: empirical pair frequencies within 5 SE of the plan (60000 draws).
    P = torch.tensor([[0.2, 0.05, 0.0], [0.0, 0.1, 0.15], [0.1, 0.1, 0.05], [0.05, 0.1, 0.1]], dtype=F64)
    P = P / P.sum()
    rowsum = P.sum(1, keepdim=True)
    P = P / rowsum / 4  # uniform first marginal
    g = torch.Generator().manual_seed(0)
    n = 60000
    idx = sample_chain([P], n, generator=g)
    freq = torch.zeros_like(P)
    freq.index_put_((idx[:, 0], idx[:, 1]), torch.ones(n, dtype=F64), accumulate=True)
    freq /= n
    se = (P * (1 - P) / n).sqrt()
    assert ((freq - P).abs() <= 5 * se + 1e-12).all()


def test_chain_without_replacement_uses_each_point_once():
    g = torch.Generator().manual_seed(1)
    plans = [torch.full((30, 30), 1 / 900, dtype=F64), torch.full((30, 25), 1 / 750, dtype=F64)]
    idx = sample_chain(plans, 25, replace=False, generator=g)
    for k in range(3):
        assert idx[:, k].unique().numel() == 25
    with pytest.raises(ValueError, match="smallest snapshot"):
        sample_chain(plans, 26, replace=False, generator=g)
