import math

import pytest
import torch

from sciffusion.domains.boltzmann.bias import (
    WellTemperedBias, effective_sample_size, log_importance_weights)
from sciffusion.domains.boltzmann.energies import DoubleWell2D


def test_single_hill_and_well_tempered_height_closed_form():
    b = WellTemperedBias(1, lower=-4, upper=4, bins=81, sigma=0.5, height=1.2, gamma=5.0)
    h1 = b.deposit(torch.tensor([[1.0]]))
    h2 = b.deposit(torch.tensor([[1.0]]))
    # Barducci et al. 2008: h = h0 exp(-V(c)/((gamma-1) kT)); V(1) = 1.2 after the first hill,
    # read off a grid node exactly (1.0 is a node), so the closed form holds to rounding
    assert h1.item() == pytest.approx(1.2, abs=1e-14)
    assert h2.item() == pytest.approx(1.2 * math.exp(-1.2 / 4.0), abs=1e-12)
    s = torch.tensor([[1.0], [1.5], [-0.5]], dtype=torch.float64)
    exact = (h1 + h2) * torch.exp(-0.5 * ((s[:, 0] - 1.0) / 0.5) ** 2)
    torch.testing.assert_close(b(s), exact, atol=1e-12, rtol=0)  # nodes: interpolation exact
    b_h = WellTemperedBias(1, lower=-4, upper=4, bins=81, sigma=0.5, height=1.2, gamma=5.0, mode="hills")
    b_h.load_state_dict({**b.state_dict(), "mode": "hills"})
    s_off = torch.tensor([[0.77], [1.33]], dtype=torch.float64)
    exact_off = (h1 + h2) * torch.exp(-0.5 * ((s_off[:, 0] - 1.0) / 0.5) ** 2)
    torch.testing.assert_close(b_h(s_off), exact_off, atol=1e-12, rtol=0)
    # linear interpolation error <= h^2/8 max|V''| = 0.01/8 * 2.0/0.25 = 0.01
    assert (b(s_off) - exact_off).abs().max() < 0.01


def test_sequential_versus_batch_heights():
    c = torch.tensor([[0.0], [0.0], [0.0]])
    b = WellTemperedBias(1, lower=-3, upper=3, bins=61, sigma=0.4, height=1.0, gamma=3.0)
    hs = b.deposit(c, sequential=True)
    # V before hill n is sum of earlier heights at the shared centre
    h = [1.0]
    h.append(math.exp(-h[0] / 2.0))
    h.append(math.exp(-(h[0] + h[1]) / 2.0))
    torch.testing.assert_close(hs, torch.tensor(h, dtype=torch.float64), atol=1e-12, rtol=0)
    b2 = WellTemperedBias(1, lower=-3, upper=3, bins=61, sigma=0.4, height=1.0, gamma=3.0)
    torch.testing.assert_close(b2.deposit(c), torch.ones(3, dtype=torch.float64))


def test_periodic_hill_wraps_across_pi():
    b = WellTemperedBias(1, bins=72, sigma=0.3, height=1.0, gamma=10.0, periodic=True)
    b.deposit(torch.tensor([[math.pi - 0.05]]))
    # the minimum-image distance from pi - 0.05 to -pi + 0.05 is 0.1
    v = b(torch.tensor([[-math.pi + 0.05], [math.pi - 0.05 - 0.1]], dtype=torch.float64))
    assert v[0].item() == pytest.approx(v[1].item(), abs=2e-3)  # interpolation, h = 0.087
    # linear interpolation error <= h^2/8 max|V''| = 0.0873^2/8 / 0.3^2 = 0.0106
    assert v[0].item() == pytest.approx(math.exp(-0.5 * (0.1 / 0.3) ** 2), abs=0.011)
    # the gradient across the wrap: the hill at pi - 0.05 pushes s = -pi + 0.05 to larger s
    bh = WellTemperedBias.from_state_dict({**b.state_dict(), "mode": "hills"})
    sg = torch.tensor([[-math.pi + 0.05], [3.0], [-3.0]], dtype=torch.float64, requires_grad=True)
    (g_grid,) = torch.autograd.grad(b(sg).sum(), sg)
    (g_hill,) = torch.autograd.grad(bh(sg).sum(), sg)
    assert g_hill[0, 0] < -0.9
    # h^2/8 max|V'''| = 0.0873^2/8 * ~1.5/0.3^3 = 0.05
    torch.testing.assert_close(g_grid, g_hill, atol=0.05, rtol=0)
    # periodicity of the evaluation itself
    s = torch.tensor([[0.3]], dtype=torch.float64)
    torch.testing.assert_close(b(s + 2 * math.pi), b(s))
    # 2-D, second CV periodic: hill at psi = -pi seen at psi = +pi
    b2 = WellTemperedBias(2, lower=[-1, -math.pi], upper=[1, math.pi], bins=[21, 36], sigma=0.3,
                          height=1.0, gamma=10.0, periodic=[False, True], mode="hills")
    b2.deposit(torch.tensor([[0.0, -math.pi]]))
    assert b2(torch.tensor([[0.0, math.pi]])).item() == pytest.approx(1.0, abs=1e-12)


def test_differentiable_and_free_energy():
    b = WellTemperedBias(2, lower=-2, upper=2, bins=81, sigma=0.3, height=0.5, gamma=4.0)
    b.deposit(torch.tensor([[0.0, 0.0], [0.5, -0.5]]))
    s = torch.tensor([[0.12, 0.31]], dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(b(s).sum(), s)
    c = torch.tensor([[0.0, 0.0], [0.5, -0.5]], dtype=torch.float64)
    diff = s.detach() - c
    gex = (-(diff / 0.09) * (0.5 * torch.exp(-0.5 * (diff ** 2).sum(-1) / 0.09))[:, None]).sum(0)
    # interpolated exact-gradient grids: error <= h^2/8 max|V'''| ~ 0.05^2/8 * 26 = 0.008
    torch.testing.assert_close(g[0], gex, atol=0.01, rtol=0)
    # the same against the exact hill sum at 200 random points
    bh = WellTemperedBias.from_state_dict({**b.state_dict(), "mode": "hills"})
    r = torch.rand(200, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2.4 - 1.2
    r.requires_grad_(True)
    (g_grid,) = torch.autograd.grad(b(r).sum(), r)
    (g_hill,) = torch.autograd.grad(bh(r).sum(), r)
    assert (g_grid - g_hill).abs().max() < 0.01
    # values: linear interpolation error <= h^2/8 max|V''| = 0.05^2/8 * 0.5/0.09 = 0.0017, x2 hills
    assert (b(r.detach()) - bh(r.detach())).abs().max() < 0.004
    # outside a non-periodic range: the edge value and zero gradient along that CV
    out = torch.tensor([[3.0, 0.0]], dtype=torch.float64, requires_grad=True)
    (g_out,) = torch.autograd.grad(b(out).sum(), out)
    assert g_out[0, 0] == 0
    pts, f = b.free_energy()
    assert f.shape == (81, 81) and f.min().item() == 0.0
    torch.testing.assert_close(f, -(4.0 / 3.0) * b.grid - (-(4.0 / 3.0) * b.grid).min())
    # state dict round trip
    b2 = WellTemperedBias.from_state_dict(b.state_dict())
    torch.testing.assert_close(b2(s.detach()), b(s.detach()))
    # a state saved without gradient grids rebuilds them from the hills
    st = b.state_dict()
    del st["grad_grid"]
    b3 = WellTemperedBias.from_state_dict(st)
    torch.testing.assert_close(b3.grad_grid, b.grad_grid, atol=1e-12, rtol=0)
    b.freeze()
    with pytest.raises(RuntimeError, match="frozen"):
        b.deposit(torch.zeros(1, 2))


def test_weights_recover_unbiased_double_well():
    """Sample x1 exactly from the biased marginal exp(-(E + V)) by inverse CDF on a fine grid,
    reweight by exp(V) and compare P(x1 > 0) with the exact 0.8443 by quadrature."""
    dw = DoubleWell2D()
    b = WellTemperedBias(1, lower=-3, upper=3, bins=241, sigma=0.4, height=2.0, gamma=6.0)
    b.deposit(torch.tensor([[1.7], [1.5], [1.9], [-1.7], [0.0]]), sequential=True)
    x = torch.linspace(-4, 4, 80001, dtype=torch.float64)
    e = x ** 4 - 6 * x ** 2 - 0.5 * x
    v = b(x[:, None])
    logp = -(e + v)
    cdf = torch.cumsum(torch.exp(logp - logp.max()), 0)
    cdf = cdf / cdf[-1]
    g = torch.Generator().manual_seed(1)
    u = torch.rand(20000, generator=g, dtype=torch.float64)
    xs = x[torch.searchsorted(cdf, u).clamp_max(x.numel() - 1)]
    logw = b.log_weights(xs[:, None])
    w = torch.softmax(logw, 0)
    p_hat = float(w[xs > 0].sum())
    p = dw.exact_probability(0.0)
    n_eff = effective_sample_size(logw)
    assert 1000 < n_eff < 20000
    # self-normalised IS: std ~ sqrt(p(1-p)/ESS); 4 sigma (grid discretisation ~1e-4 is smaller)
    assert abs(p_hat - p) < 4 * math.sqrt(p * (1 - p) / n_eff)
    # the biased samples themselves are far off (the bias was built to flatten the wells)
    p_biased = float((xs > 0).double().mean())
    assert abs(p_biased - p) > 10 * math.sqrt(p * (1 - p) / n_eff)


def test_bad_input():
    with pytest.raises(ValueError, match="gamma"):
        WellTemperedBias(1, lower=0, upper=1, gamma=1.0)
    with pytest.raises(ValueError, match="lower and upper"):
        WellTemperedBias(1)
    b = WellTemperedBias(2, lower=-1, upper=1, bins=11)
    with pytest.raises(ValueError, match=r"shape \(B, 2\)"):
        b(torch.zeros(3, 3))
    with pytest.raises(ValueError, match="sample 1"):
        b.deposit(torch.tensor([[0.0, 0.0], [float("nan"), 0.0]]))
    with pytest.raises(ValueError, match="sample 0"):
        log_importance_weights(torch.tensor([float("inf")]))
    with pytest.raises(TypeError, match="cvs_or_dim"):
        WellTemperedBias("phi", lower=0, upper=1)
