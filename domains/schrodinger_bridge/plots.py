"""Figures: snapshots with predictions beside held-out truth, inferred trajectories, fitted vector
field. Each function returns a matplotlib figure and never picks a backend or shows it (in Jupyter
it renders inline; headless scripts save it with ``fig.savefig``, and pyplot chooses a
non-interactive backend by itself when there is no display).

Time is the data's own physical time (``t`` in the units of the time column); coordinates are in
the data's units, named by ``labels`` (e.g. the CSV column names).
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["plot_snapshots", "plot_trajectories", "plot_vector_field"]


def _plt():
    import matplotlib.pyplot as plt

    return plt


def _time_colours(tmin: float, tmax: float):
    plt = _plt()
    from matplotlib.colors import Normalize

    norm = Normalize(vmin=tmin, vmax=tmax if tmax > tmin else tmin + 1e-12)
    return plt.cm.viridis, norm


def _labels(labels, dims):
    if labels is None:
        return [f"x{dims[0]}", f"x{dims[1]}"]
    return [str(labels[dims[0]]), str(labels[dims[1]])]


def _colourbar(fig, ax, cmap, norm, label="time t"):
    from matplotlib.cm import ScalarMappable

    sm = ScalarMappable(norm=norm, cmap=cmap)
    sm.set_array([])
    fig.colorbar(sm, ax=ax, label=label)


def plot_snapshots(snapshots, predicted: dict | None = None, held_out: dict | None = None, dims=(0, 1),
                   labels=None, title: str = "observed snapshots and predictions"):
    """Observed populations coloured by time (colour bar); ``predicted`` ``{t: (n, d)}`` as crosses,
    and, where given, the held-out truth ``held_out`` ``{t: (n, d)}`` as open circles beside them
    (same colour for the same time), so a prediction can be judged by eye.

    Returns:
        the figure (one panel; a second panel per held-out time when ``held_out`` is given).
    """
    plt = _plt()
    predicted = {float(t): torch.as_tensor(x) for t, x in (predicted or {}).items()}
    held_out = {float(t): torch.as_tensor(x) for t, x in (held_out or {}).items()}
    times = snapshots.times.tolist() + list(predicted) + list(held_out)
    cmap, norm = _time_colours(min(times), max(times))
    ncols = 1 + len(held_out)
    fig, axes = plt.subplots(1, ncols, figsize=(5.2 + 3.8 * len(held_out), 4.5), squeeze=False)
    axes = axes[0]
    xl, yl = _labels(labels, dims)
    ax = axes[0]
    for t, x in zip(snapshots.times.tolist(), snapshots.xs):
        ax.scatter(x[:, dims[0]], x[:, dims[1]], s=3, alpha=0.5, color=cmap(norm(t)), label=f"observed t={t:g}")
    for t, x in predicted.items():
        ax.scatter(x[:, dims[0]], x[:, dims[1]], s=8, marker="x", alpha=0.6, color=cmap(norm(t)),
                   label=f"predicted t={t:g}")
    ax.set_xlabel(xl)
    ax.set_ylabel(yl)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=6, markerscale=2, loc="best")
    _colourbar(fig, ax, cmap, norm)
    for ax, (t, truth) in zip(axes[1:], held_out.items()):
        ax.scatter(truth[:, dims[0]], truth[:, dims[1]], s=10, facecolors="none", edgecolors="k",
                   alpha=0.5, label=f"held-out truth ({len(truth)})")
        if t in predicted:
            p = predicted[t]
            ax.scatter(p[:, dims[0]], p[:, dims[1]], s=8, marker="x", alpha=0.6, color=cmap(norm(t)),
                       label=f"predicted ({len(p)})")
        ax.set_title(f"t={t:g}: prediction vs held-out truth", fontsize=10)
        ax.set_xlabel(xl)
        ax.set_ylabel(yl)
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig


def plot_trajectories(ts, paths, snapshots=None, num: int = 40, dims=(0, 1), labels=None,
                      title: str = "inferred trajectories"):
    """``num`` inferred trajectories ``paths`` ``(n, S+1, d)`` on grid ``ts``, each drawn as a line
    whose colour runs with time (colour bar), over the observed snapshots in the same colours."""
    plt = _plt()
    from matplotlib.collections import LineCollection

    ts = torch.as_tensor(ts, dtype=torch.float64)
    cmap, norm = _time_colours(float(ts[0]), float(ts[-1]))
    fig, ax = plt.subplots(figsize=(5.6, 4.5))
    if snapshots is not None:
        for t, x in zip(snapshots.times.tolist(), snapshots.xs):
            ax.scatter(x[:, dims[0]], x[:, dims[1]], s=3, alpha=0.3, color=cmap(norm(t)))
    P = torch.as_tensor(paths)[:num][:, :, list(dims)].numpy()
    tmid = (0.5 * (ts[1:] + ts[:-1])).numpy()
    for p in P:
        seg = np.stack([p[:-1], p[1:]], 1)
        lc = LineCollection(seg, cmap=cmap, norm=norm, linewidths=0.8, alpha=0.8)
        lc.set_array(tmid)
        ax.add_collection(lc)
    ax.autoscale()
    xl, yl = _labels(labels, dims)
    ax.set_xlabel(xl)
    ax.set_ylabel(yl)
    ax.set_title(f"{title} ({len(P)} of {len(paths)}; dots: snapshots)", fontsize=10)
    _colourbar(fig, ax, cmap, norm)
    fig.tight_layout()
    return fig


def plot_vector_field(drift, snapshots, t: float | None = None, grid: int = 15, dims=(0, 1), labels=None,
                      title: str = "fitted vector field"):
    """Drift ``drift(x)`` (a reference's ``drift``) or ``drift(x, t)`` (a network) in 2-D: arrows of
    equal length showing the direction, coloured by the speed ``|f(x)|`` (colour bar, data units
    per unit time), over the snapshots; other coordinates are held at the mean of all snapshots."""
    plt = _plt()
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
    v = torch.as_tensor(v).detach()[:, list(dims)]
    speed = v.norm(dim=1)
    fig, ax = plt.subplots(figsize=(5.6, 4.5))
    for x in snapshots.xs:
        ax.scatter(x[:, dims[0]], x[:, dims[1]], s=2, alpha=0.25, color="0.5")
    if speed.max() > 0:
        u = v / speed.clamp_min(1e-12)[:, None]
        q = ax.quiver(pts[:, dims[0]], pts[:, dims[1]], u[:, 0], u[:, 1], speed, cmap="magma_r",
                      angles="xy", pivot="mid", scale=grid * 1.3, width=0.004)
        fig.colorbar(q, ax=ax, label="speed |f(x)| (units / time)")
    else:  # quiver cannot scale an all-zero field (Brownian reference)
        ax.text(0.5, 0.95, "zero drift", transform=ax.transAxes, ha="center")
    xl, yl = _labels(labels, dims)
    ax.set_xlabel(xl)
    ax.set_ylabel(yl)
    ax.set_title(title if t is None else f"{title} (t={t:g})", fontsize=10)
    fig.tight_layout()
    return fig
