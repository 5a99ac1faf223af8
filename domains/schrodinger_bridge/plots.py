"""Figures: snapshots, inferred trajectories, fitted vector field (matplotlib, Agg; returned, never shown)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

__all__ = ["plot_snapshots", "plot_trajectories", "plot_vector_field"]


def _colors(times):
    t = np.asarray(times, dtype=float)
    span = max(t.max() - t.min(), 1e-12)
    return plt.cm.viridis((t - t.min()) / span)


def plot_snapshots(snapshots, predicted: dict | None = None, dims=(0, 1), title: str = "snapshots"):
    """Observed populations coloured by time; ``predicted`` ``{t: (n, d)}`` drawn as crosses."""
    fig, ax = plt.subplots(figsize=(5, 4.5))
    cols = _colors(snapshots.times.tolist() + list((predicted or {}).keys()))
    for k, (t, x) in enumerate(zip(snapshots.times.tolist(), snapshots.xs)):
        ax.scatter(x[:, dims[0]], x[:, dims[1]], s=3, alpha=0.5, color=cols[k], label=f"t={t:g}")
    for j, (t, x) in enumerate((predicted or {}).items()):
        x = torch.as_tensor(x)
        ax.scatter(x[:, dims[0]], x[:, dims[1]], s=6, marker="x", alpha=0.6,
                   color=cols[len(snapshots) + j], label=f"predicted t={t:g}")
    ax.set_xlabel(f"x{dims[0]}")
    ax.set_ylabel(f"x{dims[1]}")
    ax.set_title(title)
    ax.legend(fontsize=6, markerscale=2, loc="best")
    fig.tight_layout()
    return fig


def plot_trajectories(ts, paths, snapshots=None, num: int = 40, dims=(0, 1), title: str = "trajectories"):
    """A few inferred trajectories ``paths`` ``(n, S+1, d)`` over the snapshots."""
    fig, ax = plt.subplots(figsize=(5, 4.5))
    if snapshots is not None:
        cols = _colors(snapshots.times.tolist())
        for k, x in enumerate(snapshots.xs):
            ax.scatter(x[:, dims[0]], x[:, dims[1]], s=3, alpha=0.3, color=cols[k])
    P = torch.as_tensor(paths)[:num]
    for p in P:
        ax.plot(p[:, dims[0]], p[:, dims[1]], lw=0.6, alpha=0.7, color="k")
    ax.set_xlabel(f"x{dims[0]}")
    ax.set_ylabel(f"x{dims[1]}")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def plot_vector_field(drift, snapshots, t: float | None = None, grid: int = 20, dims=(0, 1),
                      title: str = "fitted vector field"):
    """Quiver plot of ``drift(x)`` (a reference's ``drift``) or ``drift(x, t)`` (a network) in 2-D.

    Other coordinates are held at the mean of all snapshots.
    """
    X = torch.cat(snapshots.xs)
    lo, hi = X.min(0).values, X.max(0).values
    pad = 0.15 * (hi - lo)
    g0 = torch.linspace(float(lo[dims[0]] - pad[dims[0]]), float(hi[dims[0]] + pad[dims[0]]), grid)
    g1 = torch.linspace(float(lo[dims[1]] - pad[dims[1]]), float(hi[dims[1]] + pad[dims[1]]), grid)
    A, B = torch.meshgrid(g0, g1, indexing="xy")
    pts = X.mean(0).repeat(grid * grid, 1).to(torch.float64)
    pts[:, dims[0]], pts[:, dims[1]] = A.reshape(-1).double(), B.reshape(-1).double()
    with torch.enable_grad():
        v = drift(pts) if t is None else drift(pts, t)
    v = torch.as_tensor(v).detach()
    fig, ax = plt.subplots(figsize=(5, 4.5))
    if v[:, list(dims)].abs().max() > 0:
        ax.quiver(pts[:, dims[0]], pts[:, dims[1]], v[:, dims[0]], v[:, dims[1]], alpha=0.7)
    else:  # quiver cannot scale an all-zero field (Brownian reference)
        ax.text(0.5, 0.95, "zero drift", transform=ax.transAxes, ha="center")
    cols = _colors(snapshots.times.tolist())
    for k, x in enumerate(snapshots.xs):
        ax.scatter(x[:, dims[0]], x[:, dims[1]], s=2, alpha=0.3, color=cols[k])
    ax.set_title(title if t is None else f"{title} (t={t:g})")
    fig.tight_layout()
    return fig
