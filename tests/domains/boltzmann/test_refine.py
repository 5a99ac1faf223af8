"""Resample-move (MALA) refinement against exact answers: a correlated 2-D Gaussian stays
invariant, and the 2-D double well's P(x1 > 0) = 0.8443 (quadrature) is recovered from a poor
proposal, with and without a frozen bias; bad input and exact energy-call counts."""

import math

import pytest
import torch

from sciffusion import smc
from sciffusion.domains.boltzmann import resample_move
from sciffusion.domains.boltzmann.bias import WellTemperedBias
from sciffusion.domains.boltzmann.energies import DoubleWell2D, TorchEnergy
from sciffusion.domains.boltzmann.refine import mala

torch.set_num_threads(1)

COV = torch.tensor([[2.0, 1.2], [1.2, 1.0]], dtype=torch.float64)  # eigenvalues 2.8 and 0.2


class Gaussian2D(TorchEnergy):
    """u(x) = x^T Sigma^{-1} x / 2 (kT = 1)."""

    def __init__(self, cov):
        super().__init__((2,))
        self.precision = torch.linalg.inv(cov)

    def potential(self, x):
        return 0.5 * ((x @ self.precision) * x).sum(-1)


class NaNAbove(TorchEnergy):
    """The double well, but NaN for x1 > 5 (an energy that explodes)."""

    def __init__(self):
        super().__init__((2,))

    def potential(self, x):
        e = x[:, 0] ** 4 - 6 * x[:, 0] ** 2 + 0.5 * x[:, 1] ** 2
        return torch.where(x[:, 0] > 5, torch.full_like(e, math.nan), e)


def exact_gaussian(n, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 2, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(COV).T


@pytest.mark.parametrize("step_size", [None, 0.3])
def test_mala_leaves_gaussian_invariant(step_size):
    # i.i.d. exact samples moved by independent pi-invariant chains stay i.i.d. exact samples, so the
    # sample mean has standard error sqrt(Sigma_ii / N) and the sample covariance
    # sqrt((Sigma_ii Sigma_jj + Sigma_ij^2) / N) (Gaussian fourth moments); tolerance 5 of them.
    # h = 0.3 is where *unadjusted* Langevin is far off (stationary variance 1/(lam (1 - h lam/2)) along
    # the stiff direction lam = 5: 0.8 instead of 0.2): the Metropolis correction must undo that.
    n = 4000
    energy = Gaussian2D(COV)
    x0 = exact_gaussian(n, 0)
    res = mala(energy, x0, num_steps=40, step_size=step_size, generator=torch.Generator().manual_seed(1))
    x = res.x
    se_mean = torch.sqrt(torch.diag(COV) / n)
    assert (x.mean(0).abs() < 5 * se_mean).all(), x.mean(0)
    cov = torch.cov(x.T)
    se_cov = torch.sqrt((torch.diag(COV)[:, None] * torch.diag(COV)[None] + COV ** 2) / n)
    assert ((cov - COV).abs() < 5 * se_cov).all(), cov
    assert (x != x0).any(1).double().mean() > 0.5  # the particles did move
    if step_size is None:  # adapted towards 0.574 on the population's acceptance, then frozen
        assert 0.45 < res.acceptance_rate < 0.7, res.acceptance_rate
    else:
        assert res.step_size == 0.3


def poor_proposal(energy, n, seed):
    """A broad Gaussian N(0, diag(2^2, 1.5^2)) with exact importance weights log w = -u - log q."""
    g = torch.Generator().manual_seed(seed)
    std = torch.tensor([2.0, 1.5], dtype=torch.float64)
    x = torch.randn(n, 2, generator=g, dtype=torch.float64) * std
    log_q = (-0.5 * (x / std) ** 2 - torch.log(std)).sum(1)
    with torch.no_grad():
        return x, -energy(x) - log_q


def test_resample_move_recovers_double_well():
    energy = DoubleWell2D()
    exact = energy.exact_probability(0.0)
    assert abs(exact - 0.8443) < 1e-4
    n = 4000
    x, lw = poor_proposal(energy, n, 0)
    ess0 = float(smc.ess(lw))
    energy.reset_counter()
    res = resample_move(energy, x, lw, num_steps=50, generator=torch.Generator().manual_seed(2))
    p = float((res.x[:, 0] > 0).double().mean())
    # binomial error of the weighted estimate (Kish ESS) plus that of resampling N copies; 5 of them
    tol = 5 * math.sqrt(exact * (1 - exact) * (1 / ess0 + 1 / n))
    assert abs(p - exact) < tol, (p, exact, tol, ess0)
    assert torch.equal(res.log_weights, torch.zeros(n, dtype=torch.float64))
    assert res.energy_calls == n * 51 == energy.num_calls  # start + one proposal per particle per step
    assert res.ancestors.shape == (n,) and res.ancestors.unique().numel() < n  # duplicates were made
    assert res.x.unique(dim=0).shape[0] > 0.9 * n  # ... and the moves made them distinct


def flattening_bias():
    """Nine hills over the deep well (x1 > 0), V(1.73) = 1.69 kT: about the wells' free-energy
    difference, so the biased target exp(-(u + V)) puts about half its mass in each well."""
    bias = WellTemperedBias(1, lower=-4.0, upper=4.0, bins=161, sigma=0.3, height=0.45, gamma=10.0)
    bias.deposit(torch.linspace(0.9, 2.5, 9, dtype=torch.float64)[:, None])
    return bias.freeze()


def x1(x):
    return x[:, :1]


def test_resample_move_with_frozen_bias_recovers_double_well():
    energy = DoubleWell2D()
    exact = energy.exact_probability(0.0)
    bias = flattening_bias()
    n = 4000
    x, lw_u = poor_proposal(energy, n, 3)
    with torch.no_grad():
        v0 = bias(x1(x)) / bias.kT
    lw = lw_u - v0  # importance weights for the biased target exp(-(u + V))
    res = resample_move(energy, x, lw, num_steps=50, bias=bias, cvs=x1, generator=torch.Generator().manual_seed(4))
    raw = float((res.x[:, 0] > 0).double().mean())
    w = torch.softmax(res.log_weights, 0)
    p = float((w * (res.x[:, 0] > 0).double()).sum())
    # the biased law is far from the Boltzmann one, so the exp(V) weights do the work
    assert raw < exact - 0.2, raw
    with torch.no_grad():
        assert torch.allclose(res.log_weights, bias(x1(res.x)) / bias.kT)
    ess0, ess1 = float(smc.ess(lw)), float(smc.ess(res.log_weights))
    tol = 5 * math.sqrt(exact * (1 - exact) * (1 / ess0 + 1 / ess1))
    assert abs(p - exact) < tol, (p, exact, tol, ess0, ess1)


def test_valid_region_and_energy_calls():
    # target restricted to x1 < 2.2: proposals outside are rejected without an energy call
    energy = DoubleWell2D()
    g = torch.Generator().manual_seed(5)
    x = torch.stack([1.7 + 0.1 * torch.randn(500, generator=g, dtype=torch.float64),
                     torch.randn(500, generator=g, dtype=torch.float64)], 1).clamp(max=2.1)
    energy.reset_counter()
    res = mala(energy, x, num_steps=20, step_size=0.05, generator=g, valid=lambda y: y[:, 0] < 2.2)
    assert (res.x[:, 0] < 2.2).all()
    assert res.energy_calls == energy.num_calls
    assert 500 < res.energy_calls < 500 * 21  # some proposals fell outside and cost nothing
    with pytest.raises(ValueError, match="x: particle"):
        mala(energy, x + 1.0, num_steps=1, step_size=0.05, generator=g, valid=lambda y: y[:, 0] < 2.2)


def test_bad_input():
    energy = DoubleWell2D()
    g = torch.Generator().manual_seed(0)
    x = torch.zeros(8, 2, dtype=torch.float64)
    lw = torch.zeros(8, dtype=torch.float64)
    with pytest.raises(ValueError, match="x must have shape"):
        resample_move(energy, torch.zeros(8, 3, dtype=torch.float64), lw, num_steps=1, generator=g)
    with pytest.raises(ValueError, match="log_weights must have shape"):
        resample_move(energy, x, torch.zeros(7, dtype=torch.float64), num_steps=1, generator=g)
    with pytest.raises(ValueError, match="log_weights has NaN"):
        resample_move(energy, x, torch.tensor([math.nan] + [0.0] * 7, dtype=torch.float64), num_steps=1,
                      generator=g)
    with pytest.raises(ValueError, match="all -inf"):
        resample_move(energy, x, torch.full((8,), -math.inf, dtype=torch.float64), num_steps=1, generator=g)
    for bad in (0, -3, 2.5):
        with pytest.raises(ValueError, match="num_steps"):
            resample_move(energy, x, lw, num_steps=bad, generator=g)
    for bad in (0.0, -0.1, math.inf, math.nan):
        with pytest.raises(ValueError, match="step_size"):
            resample_move(energy, x, lw, num_steps=1, step_size=bad, generator=g)
    with pytest.raises(TypeError, match="generator"):
        resample_move(energy, x, lw, num_steps=1, generator=None)
    with pytest.raises(ValueError, match="x has a non-finite"):
        mala(energy, torch.full((2, 2), math.nan, dtype=torch.float64), num_steps=1, generator=g)
    bias = WellTemperedBias(1, lower=-4.0, upper=4.0, bins=81, sigma=0.3)
    with pytest.raises(ValueError, match="pass cvs"):
        resample_move(energy, x, lw, num_steps=1, bias=bias, generator=g)


def test_non_finite_energy_is_reported():
    x = torch.tensor([[0.5, 0.0], [6.0, 0.0]], dtype=torch.float64)
    with pytest.raises(ValueError, match="frame 1"):
        mala(NaNAbove(), x, num_steps=1, step_size=0.01, generator=torch.Generator().manual_seed(0))
