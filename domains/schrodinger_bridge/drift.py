"""A continuous-time drift and score network fitted by bridge matching on the final coupling.

The fitted multi-marginal bridge is a mixture of reference bridges through coupled points. Its
Markovian projection (Shi et al. 2023, bridge matching; Peluchetti 2023) has forward drift

.. math:: b(x, t) = E\\big[\\,\\beta(X_t, t \\mid X_{t_{k+1}})\\;\\big|\\; X_t = x\\big],

where :math:`\\beta` is the drift of the reference bridge pinned at the next snapshot point. On the
bridge grid, :math:`\\beta(x_k, t_k) \\approx (E[X_{k+1} \\mid X_k, X_{t_{k+1}}] - x_k)/h_k`, the
Gaussian conditional mean that :meth:`~.references.Reference.sample_bridge` already computes, so
the regression target has no sampling noise. The score of the marginal is the projection of the
bridge-marginal score :math:`-\\Sigma_k^{-1}(x - \\mu_k)` (:meth:`~.references.Reference.bridge_marginals`).
One :class:`sciffusion.nn.MLP` ``(x, t) -> [b, sigma^2 * score]`` is trained on both by least
squares with :func:`sciffusion.training.fit`.

Simulation: forward :math:`dX = b\\,dt + \\sigma dW`; backward in time (Anderson 1982)
:math:`dX = (b - \\sigma^2 \\nabla\\log p_t)\\,dt + \\sigma d\\bar W` integrated from later to earlier
times, both by Euler–Maruyama.
"""

from __future__ import annotations

import math

import torch

from sciffusion.nn import MLP
from sciffusion.training import fit

from .bridge import BridgeFit
from .coupling import sample_chain
from .references import make_grid

__all__ = ["DriftModel", "fit_drift", "bridge_matching_data"]

_F64 = torch.float64


def bridge_matching_data(result: BridgeFit, *, num_paths: int | None = None,
                         generator: torch.Generator | None = None):
    """Regression data from fresh bridges through the final coupling.

    Returns:
        ``(x, t, drift_target, score_target, score_mask)`` with shapes ``(N, d)``, ``(N,)``,
        ``(N, d)``, ``(N, d)`` (already multiplied by ``sigma^2``), ``(N,)``; ``N`` counts every
        grid point strictly before each gap's right end.
    """
    snaps, ref = result.snapshots, result.reference
    idx = sample_chain(result.plans, num_paths, generator=generator)
    xs, ts_all, bs, ss, masks = [], [], [], [], []
    for k in range(len(snaps) - 1):
        x0, x1 = snaps.xs[k][idx[:, k]], snaps.xs[k + 1][idx[:, k + 1]]
        ts = make_grid(float(snaps.times[k]), float(snaps.times[k + 1]), result.max_step)
        paths, means = ref.sample_bridge(x0, x1, ts, generator=generator, return_means=True)
        mu, cov = ref.bridge_marginals(x0, x1, ts)
        h = (ts[1:] - ts[:-1])
        x = paths[:, :-1]
        b = (means - x) / h[None, :, None]
        # score of the bridge marginal; undefined at the pinned left end (zero covariance)
        inner = cov[:, 1:-1]
        sc = torch.zeros_like(x)
        sc[:, 1:] = -torch.linalg.solve(inner, (x[:, 1:] - mu[:, 1:-1])[..., None])[..., 0]
        mask = torch.ones(x.shape[:2], dtype=_F64)
        mask[:, 0] = 0
        xs.append(x.reshape(-1, x.shape[-1]))
        ts_all.append(ts[:-1].repeat(x.shape[0]))
        bs.append(b.reshape(-1, x.shape[-1]))
        ss.append(ref.sigma ** 2 * sc.reshape(-1, x.shape[-1]))
        masks.append(mask.reshape(-1))
    return torch.cat(xs), torch.cat(ts_all), torch.cat(bs), torch.cat(ss), torch.cat(masks)


class DriftModel:
    """A fitted drift/score network with forward and backward simulation.

    Args:
        net: ``MLP(d, out_dim=2d)`` returning ``[b, sigma^2 * score]``; sigma: the reference noise;
        t_range: the time span of the training data.
    """

    def __init__(self, net: torch.nn.Module, sigma: float, t_range: tuple[float, float]):
        self.net, self.sigma, self.t_range = net, float(sigma), t_range

    def _out(self, x, t):
        x = torch.as_tensor(x, dtype=_F64)
        t = torch.as_tensor(t, dtype=_F64).expand(x.shape[0])
        with torch.no_grad():
            y = self.net(x, t)
        d = x.shape[1]
        return y[:, :d], y[:, d:]

    def drift(self, x, t) -> torch.Tensor:
        """Forward drift ``b(x, t)``; ``(n, d) -> (n, d)``."""
        return self._out(x, t)[0]

    def score(self, x, t) -> torch.Tensor:
        """Score ``grad log p_t(x)``; ``(n, d) -> (n, d)``."""
        return self._out(x, t)[1] / self.sigma ** 2

    def simulate(self, x, t0: float, times, *, generator: torch.Generator | None = None,
                 max_step: float = 0.01, noise: bool = True) -> list:
        """Simulate from population ``x`` at ``t0`` to each of ``times`` (all later or all earlier).

        Later times use the forward SDE, earlier times the backward SDE (module docstring).
        ``noise=False`` integrates the drift alone (no noise term).

        Returns:
            list of ``(n, d)`` populations, one per requested time.
        """
        times = [float(t) for t in torch.as_tensor(times, dtype=_F64).reshape(-1)]
        if not times:
            raise ValueError("times: give at least one target time")
        fwd = all(t >= t0 for t in times)
        if not fwd and not all(t <= t0 for t in times):
            raise ValueError("times must all lie after t0 (forward) or all before (backward)")
        x = torch.as_tensor(x, dtype=_F64).clone()
        order = sorted(times, reverse=not fwd)
        out, t = {}, float(t0)
        for target in order:
            n_sub = max(1, math.ceil(abs(target - t) / max_step - 1e-9))
            h = (target - t) / n_sub  # negative going backward
            for _ in range(n_sub):
                b, s2 = self._out(x, t)
                drift = b if fwd else b - s2
                x = x + drift * h
                if noise:
                    x = x + self.sigma * math.sqrt(abs(h)) * torch.randn(x.shape, generator=generator,
                                                                          dtype=_F64)
                t += h
            if not torch.isfinite(x).all():
                raise FloatingPointError(f"drift network simulation diverged before t={target}")
            out[target] = x.clone()
        return [out[t] for t in times]


def fit_drift(result: BridgeFit, *, steps: int = 2000, hidden: int = 64, depth: int = 3,
              batch_size: int = 512, lr: float = 2e-3, num_paths: int | None = None, seed: int = 0,
              score_weight: float = 1.0, progress: bool = False,
              generator: torch.Generator | None = None) -> DriftModel:
    """Bridge matching of a drift and score network on the final coupling of ``result``.

    Loss: :math:`\\|b_\\phi - \\beta\\|^2 + w\\,m\\,\\|\\sigma^2 s_\\phi - \\sigma^2 s\\|^2` averaged over
    the grid points of fresh bridges (``m`` masks the pinned left ends).

    Args:
        result: a :class:`~.bridge.BridgeFit`.
        steps, hidden, depth, batch_size, lr, seed: network and :func:`sciffusion.training.fit`
            settings; num_paths: bridges drawn; score_weight: ``w``.

    Returns:
        :class:`DriftModel` (the EMA network).
    """
    x, t, b, s, mask = bridge_matching_data(result, num_paths=num_paths, generator=generator)
    d = x.shape[1]
    t0, t1 = float(result.snapshots.times[0]), float(result.snapshots.times[-1])
    state = torch.random.get_rng_state()  # MLP initialises from the global generator: seed, restore
    torch.manual_seed(seed)
    net = MLP(d, hidden=hidden, depth=depth, out_dim=2 * d, t_scale=max(t1 - t0, 1e-8)).double()
    torch.random.set_rng_state(state)

    def loss_fn(model, batch, generator):
        xb, tb, bb, sb, mb = batch
        y = model(xb, tb)
        lb = (y[:, :d] - bb).pow(2).sum(-1)
        ls = mb * (y[:, d:] - sb).pow(2).sum(-1)
        return (lb + score_weight * ls).mean()

    res = fit(net, loss_fn, (x, t, b, s, mask), steps=steps, batch_size=batch_size, lr=lr, seed=seed,
              ema_decay=0.99, progress=progress, desc="bridge matching")
    return DriftModel(res.ema, result.reference.sigma, (t0, t1))
