"""Bridge matching targets (exact for Brownian bridges) and the fitted drift network."""

import pytest
import torch

from sciffusion.domains.schrodinger_bridge import (Brownian, Linear, as_snapshots, bridge_matching_data,
                                                   fit_bridge, fit_drift)
from sciffusion.testing import w1_exact

F64 = torch.float64
A_ROT = torch.tensor([[-0.5, -1.0], [1.0, -0.5]], dtype=F64)


def test_brownian_bridge_matching_targets_are_exact():
    # Brownian bridge to x1 at T: drift (x1 - x) / (T - t) and marginal score -(x - mu_t) / var_t,
    # var_t = sigma^2 (t - t0)(T - t)/(T - t0), mu_t linear; the targets must equal them to round-off.
    g = torch.Generator().manual_seed(0)
    x0, x1 = torch.randn(5, 2, generator=g, dtype=F64), torch.randn(5, 2, generator=g, dtype=F64)
    res = fit_bridge(as_snapshots([x0, x1], [0.0, 1.0]), Brownian(0.5), iterations=1, max_step=0.25,
                     generator=g)
    # a deterministic coupling so every path's ends are known: identity plan
    res.plans = [torch.eye(5, dtype=F64) / 5]
    x, t, b, s2, mask = bridge_matching_data(res, num_paths=5, generator=g)
    ends = x.reshape(-1, 4, 2)[:, 0]  # the left end of each path is a snapshot point
    idx = torch.cdist(ends, x0).argmin(1)
    X1 = x1[idx].repeat_interleave(4, 0)
    X0 = x0[idx].repeat_interleave(4, 0)
    assert torch.allclose(b, (X1 - x) / (1.0 - t)[:, None], atol=1e-10)
    inner = mask.bool()
    var = 0.25 * t * (1 - t)
    mu = X0 + t[:, None] * (X1 - X0)
    assert torch.allclose(s2[inner] / 0.25, -(x - mu)[inner] / var[inner, None], atol=1e-8)
    assert (mask == (t > 0).to(F64)).all()


@pytest.fixture(scope="module")
def ou_drift():
    g = torch.Generator().manual_seed(0)
    truth = Linear(A_ROT, sigma=0.2)
    times = torch.arange(5, dtype=F64)
    draw = lambda: truth.simulate(torch.tensor([2.0, 0.0], dtype=F64) + 0.2 * torch.randn(200, 2, generator=g, dtype=F64),  # noqa: E731
                                  times, generator=g, max_step=0.01)
    P, Q = draw(), draw()
    train = as_snapshots([P[:, k] for k in range(0, 5, 2)], times[::2])
    res = fit_bridge(train, Linear(torch.zeros(2, 2), sigma=0.2), iterations=4, generator=g, max_step=0.1)
    model = fit_drift(res, steps=600, hidden=64, depth=2, generator=g)
    return truth, P, Q, model, g


def test_network_drift_matches_reference_drift(ou_drift):
    # The Markovian projection of the refined bridge is the OU drift itself (the bridge of a Markov
    # reference through its own coupling is that reference); 600 steps of bridge matching reach ~15%
    # relative L2 on the populations at t = 1, 3; bound 0.3.
    truth, P, _, model, _ = ou_drift
    for t in (1.0, 3.0):
        x = P[:, int(t)]
        err = (model.drift(x, t) - truth.drift(x)).norm() / truth.drift(x).norm()
        assert err < 0.3, (t, float(err))


def test_network_predicts_unseen_time_forward_and_backward(ou_drift):
    # Simulating the network from the t=0 population to t=1 (forward) and from t=2 back to t=1
    # (backward SDE with the learned score): W1 to a fresh true sample within 2.5x of the two-sample
    # floor (measured 1.6x / 1.9x here: a 600-step network on 200 paths adds its own error to the
    # floor, while a zero drift gives 29x).
    truth, P, Q, model, g = ou_drift
    floor = w1_exact(P[:, 1], Q[:, 1])
    fwd = model.simulate(P[:, 0], 0.0, [1.0], generator=g)[0]
    bwd = model.simulate(P[:, 2], 2.0, [1.0], generator=g)[0]
    assert w1_exact(fwd, Q[:, 1]) < 2.5 * floor
    assert w1_exact(bwd, Q[:, 1]) < 2.5 * floor
    with pytest.raises(ValueError, match="after t0"):
        model.simulate(P[:, 2], 2.0, [1.0, 3.0])
