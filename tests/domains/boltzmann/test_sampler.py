"""Adjoint Sampling / ASBS: exact checks on Gaussian targets, where the optimal control, the
bridge marginals and the terminal law are known in closed form."""

import math

import pytest
import torch

from sciffusion.domains.boltzmann.sampler import (AdjointSampler, ChiralityRestraint, ReplayBuffer,
                                                  energy_and_forces)

S = 1.5  # target std of the Gaussian tests


def gauss(x):
    return 0.5 * (x ** 2).sum(-1) / S ** 2


class ExactAdjoint(torch.nn.Module):
    r"""The optimal adjoint for a Dirac source and target N(0, S^2 I):
    V(x, tau) = c|x|^2 / (2 (1 + c r)), c = 1/S^2 - 1/nu1, r = nu1 - nu(tau) the remaining variance,
    so a = grad V = c x / (1 + c r)."""

    def __init__(self, sampler):
        super().__init__()
        self.s = sampler

    def forward(self, x, t):
        c = 1 / S ** 2 - 1 / self.s.nu1
        r = self.s.nu1 - self.s._nu_of(t.double()).to(x.dtype)
        return c * x / (1 + c * r)[:, None]


def test_exact_control_reaches_target_and_path_weights_are_flat():
    smp = AdjointSampler((2,), sigma_max=3.0, num_steps=100)
    smp.ema = ExactAdjoint(smp)
    g = torch.Generator().manual_seed(0)
    res = smp.simulate(10000, g, use_ema=True, dtype=torch.float64)
    # the variance of 2 x 10000 normals has relative std sqrt(2/N) = 1%; Euler on 100 steps adds
    # an O(1/steps) bias: 5% on the variance is > 4 sigma plus that bias
    var = res.x.var(0)
    assert torch.allclose(var, torch.full((2,), S ** 2, dtype=torch.float64), rtol=0.05), var
    lw = smp.log_weights(res, gauss(res.x))
    ess = float(torch.exp(2 * torch.logsumexp(lw, 0) - torch.logsumexp(2 * lw, 0)))
    assert ess > 0.9 * 10000, ess  # the exact control leaves only the O(1/steps) Euler error in the weights


def test_path_weights_correct_a_wrong_control():
    """A zero control samples the base N(0, nu1 I); the path weights must turn it into N(0, S^2)."""
    smp = AdjointSampler((2,), sigma_max=3.0, num_steps=20)
    smp.ema = lambda x, t: torch.zeros_like(x)
    res = smp.simulate(40000, torch.Generator().manual_seed(1), use_ema=True, dtype=torch.float64)
    assert abs(float(res.x.var()) - smp.nu1) < 0.05 * smp.nu1
    w = torch.softmax(smp.log_weights(res, gauss(res.x)), 0)
    wvar = float((w[:, None] * res.x ** 2).sum(0).mean())
    # ESS here is ~0.8 N; the weighted second moment of 30000 effective normals is within ~1.5%
    assert abs(wvar - S ** 2) < 0.06 * S ** 2, wvar


def test_path_weights_correct_a_shifted_source():
    """A Dirac source at m = (1, -0.5) with zero control samples N(m, nu1 I); weighted, N(0, S^2)."""
    m = torch.tensor([1.0, -0.5])
    smp = AdjointSampler((2,), sigma_max=3.0, num_steps=20, source_mean=m)
    smp.ema = lambda x, t: torch.zeros_like(x)
    res = smp.simulate(40000, torch.Generator().manual_seed(4), use_ema=True, dtype=torch.float64)
    assert torch.allclose(res.x.mean(0), m.double(), atol=0.06)  # 4 std of the mean of 40000 N(0, 9)
    w = torch.softmax(smp.log_weights(res, gauss(res.x)), 0)
    mean = (w[:, None] * res.x).sum(0)
    assert mean.abs().max() < 0.05, mean   # ESS ~0.75 N: std of the weighted mean ~0.009
    wvar = float((w[:, None] * (res.x - mean) ** 2).sum(0).mean())
    assert abs(wvar - S ** 2) < 0.06 * S ** 2, wvar


def test_bridge_has_the_base_marginal():
    """x1 ~ N(0, nu1) and x_tau ~ bridge(0 -> x1) give exactly the base marginal N(0, nu(tau))."""
    smp = AdjointSampler((3,), sigma_max=2.0)
    g = torch.Generator().manual_seed(2)
    n = 40000
    x1 = math.sqrt(smp.nu1) * torch.randn(n, 3, generator=g, dtype=torch.float64)
    for tau in (0.2, 0.5, 0.9):
        t = torch.full((n,), tau, dtype=torch.float64)
        xt = smp._bridge(torch.zeros_like(x1), x1, t, g)
        want = float(smp._nu_of(torch.tensor(tau)))
        assert abs(float(xt.var()) - want) < 0.03 * want  # 120000 values: rel. std 0.4%


@pytest.mark.parametrize("source", ["dirac", "gaussian"])
def test_training_learns_a_gaussian(source):
    smp = AdjointSampler((2,), sigma_max=3.0, source=source, num_steps=40, hidden=64, depth=2, lr=2e-3)
    g = torch.Generator().manual_seed(0)
    smp.fit(gauss, iterations=40, generator=g, samples_per_iteration=256, gradient_steps=20,
            corrector_every=10, corrector_steps=30)
    assert smp.energy_evaluations == 40 * 256  # one energy+force call per terminal sample
    res = smp.simulate(4000, g, use_ema=True)
    std = res.x.std(0)
    # a 40-iteration sampler: 10% on the std (MC error alone is 1.1%)
    assert torch.allclose(std, torch.full((2,), S, dtype=torch.float64), rtol=0.1), std
    lw = smp.log_weights(res, gauss(res.x))
    w = torch.softmax(lw, 0)
    assert abs(float((w[:, None] * res.x ** 2).sum(0).mean()) - S ** 2) < 0.1 * S ** 2


def test_resume_from_state_dict_is_bit_identical():
    def run(split):
        smp = AdjointSampler((2,), num_steps=10, hidden=16, depth=1)
        g = torch.Generator().manual_seed(3)
        kw = dict(generator=g, samples_per_iteration=32, gradient_steps=3, batch_size=16)
        if split:
            smp.fit(gauss, iterations=2, **kw)
            state, gstate = smp.state_dict(), g.get_state()
            smp = AdjointSampler((2,), num_steps=10, hidden=16, depth=1, seed=99)
            smp.load_state_dict(state)
            g.set_state(gstate)
            smp.fit(gauss, iterations=2, **kw)
        else:
            smp.fit(gauss, iterations=4, **kw)
        return smp.sample(8, torch.Generator().manual_seed(0))

    assert torch.equal(run(False), run(True))


def test_bad_input():
    with pytest.raises(ValueError, match="source"):
        AdjointSampler((2,), source="uniform")
    with pytest.raises(ValueError, match="num_steps"):
        AdjointSampler((2,), num_steps=0)
    with pytest.raises(ValueError, match="source_mean"):
        AdjointSampler((2,), source_mean=torch.zeros(3))
    with pytest.raises(ValueError, match="zero drift"):
        from sciffusion.processes import VP
        AdjointSampler((2,), process=VP())
    smp = AdjointSampler((2,), num_steps=5, hidden=8, depth=1)
    with pytest.raises(TypeError, match="generator"):
        smp.simulate(4, None)
    with pytest.raises(ValueError, match="iterations"):
        smp.fit(gauss, iterations=-1, generator=torch.Generator())

    class NanAtFrame2:
        def energy_and_forces(self, x):
            u = gauss(x)
            u[2] = float("nan")
            return u, -x

    with pytest.raises(FloatingPointError, match="frame 2"):
        energy_and_forces(NanAtFrame2(), torch.zeros(4, 2))
    with pytest.raises(ValueError, match="capacity"):
        ReplayBuffer(0)


def test_replay_buffer_is_fifo():
    b = ReplayBuffer(5)
    b.add(x=torch.arange(3.0))
    b.add(x=torch.arange(3.0, 7.0))
    assert torch.equal(b.data["x"], torch.arange(2.0, 7.0))


def test_chirality_restraint_sees_mirror_images():
    # a tetrahedral centre: atom 0 with neighbours 1, 2, 3
    pos = torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [2, 2, 2]], dtype=torch.float64)
    base = lambda x: (x ** 2).flatten(1).sum(1)  # reflection-invariant, like a force field  # noqa: E731
    r = ChiralityRestraint.from_reference(base, (0, 1, 2, 3), pos, k=10.0, v0=0.1)
    x = torch.stack([pos, -pos])  # the mirror image through the origin
    assert r.mask(x).tolist() == [True, False]
    u, f = r.energy_and_forces(x)
    assert float(u[0]) == pytest.approx(float(base(pos[None])))       # zero on the native side
    assert float(u[1]) == pytest.approx(float(base(pos[None])) + 10.0 * (1.0 / 0.1) ** 2)  # |v| = 1
    # forces agree with a finite difference of the restrained energy
    d = torch.zeros_like(x)
    d[1, 1, 0] = 1e-6
    fd = (r(x + d) - r(x - d))[1] / 2e-6
    assert float(-f[1, 1, 0]) == pytest.approx(float(fd), rel=1e-5)


def test_center_of_mass_constraint_is_honoured():
    constraints = pytest.importorskip("sciffusion.constraints")
    from sciffusion.processes import VE

    proc = VE(0.01, 1.0)
    if not hasattr(proc, "constrain"):
        pytest.skip("core constraint protocol not available")
    proc = proc.constrain(constraints.ZeroCenterOfMass())
    smp = AdjointSampler((4, 3), process=proc, num_steps=10, hidden=16, depth=1)
    pair = lambda x: ((x[:, :, None] - x[:, None]) ** 2).sum(-1).sum((1, 2)) / 8  # noqa: E731
    smp.fit(pair, iterations=2, generator=torch.Generator().manual_seed(0), samples_per_iteration=16,
            gradient_steps=2, batch_size=8)
    x = smp.sample(32, torch.Generator().manual_seed(1))
    assert x.mean(1).abs().max() < 1e-5  # float32 round-off only
