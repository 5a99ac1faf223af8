"""Discrete schedules: endpoints, derivative against finite differences, inverse round trip."""

import pytest
import torch

from sciffusion.domains.discrete import Cosine, Geometric, LogLinear, get_discrete_schedule

SCHEDS = [LogLinear(), Cosine(), Geometric()]


@pytest.mark.parametrize("sched", SCHEDS, ids=lambda s: s.name)
def test_derivative_inverse_and_monotone(sched):
    """Figures: d_alpha equals the central difference (h = 1e-6, error O(h^2) ~ 1e-9 for these
    smooth functions, tolerance 1e-7); t_of_alpha(alpha(t)) = t to 1e-10 (float64, geometric
    inverts through two logs); alpha decreasing with alpha(0) ~ 1."""
    t = torch.linspace(0.01, 0.99, 50, dtype=torch.float64)
    h = 1e-6
    fd = (sched.alpha(t + h) - sched.alpha(t - h)) / (2 * h)
    assert torch.allclose(sched.d_alpha(t), fd, atol=1e-7, rtol=1e-6)
    assert torch.allclose(sched.t_of_alpha(sched.alpha(t)), t, atol=1e-10)
    a = sched.alpha(t)
    assert (a[1:] < a[:-1]).all()
    assert float(sched.alpha(0.0)) == pytest.approx(1.0, abs=2e-4)
    assert float(sched.alpha(1.0)) < 1e-8
    w = sched.elbo_weight(t)
    assert torch.allclose(w, -sched.d_alpha(t) / (1 - a), rtol=1e-9)


def test_get_schedule():
    assert isinstance(get_discrete_schedule("cosine"), Cosine)
    with pytest.raises(ValueError, match="loglinear"):
        get_discrete_schedule("nope")
    with pytest.raises(ValueError):
        Geometric(1.0, 0.5)
