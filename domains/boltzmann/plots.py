r"""Pictures of Boltzmann samples: CV histograms and free-energy surfaces (Ramachandran plots).

Every function returns a matplotlib ``Figure`` (it never selects a backend or shows it).
Grids are in this package's CV order, ``F[i_0, i_1]`` (e.g. ``F[i_phi, i_psi]``): phi runs
along x and psi along y, as in a Ramachandran plot.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from .free_energy import free_energy_surface


def _np(x):
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _edges(axis_values: np.ndarray, n: int) -> np.ndarray:
    """Bin edges from either ``n + 1`` edges or ``n`` equally spaced nodes."""
    v = np.asarray(axis_values, dtype=np.float64)
    if v.shape[0] == n + 1:
        return v
    if v.shape[0] == n:
        h = v[1] - v[0] if n > 1 else 1.0
        return np.concatenate([v - h / 2, [v[-1] + h / 2]])
    raise ValueError(f"an axis of {v.shape[0]} values does not fit a grid of {n} cells "
                     f"(give {n} nodes or {n + 1} edges)")


def plot_fes(grid, free_energy, names: Sequence[str] = ("phi", "psi"), kT_label: str = "kT",
             max_f: float | None = 12.0, levels: int = 13, ax=None, title: str | None = None,
             basins: Sequence[str] = (), periodic: bool = True):
    r"""A 2-D free-energy surface as a filled map with contours (a Ramachandran plot for phi/psi).

    Args:
        grid: two axes, each ``n`` nodes or ``n + 1`` edges (what :func:`free_energy_surface`,
            :meth:`WellTemperedBias.free_energy` or :func:`run_metadynamics` return).
        free_energy: ``(n_0, n_1)`` in CV order (``F[i_phi, i_psi]``); ``inf`` = unvisited.
        names: axis labels. kT_label: the unit shown on the colour bar.
        max_f: clip the colour scale at this many units above the minimum.
        basins: basin strings to annotate in the title (e.g. ``"B: 0 < phi < 2"``).
        periodic: axis limits ``(-pi, pi)`` in radians.
    """
    import matplotlib.pyplot as plt

    f = _np(free_energy).astype(np.float64)
    if f.ndim != 2:
        raise ValueError(f"free_energy must be 2-D (n_0, n_1), got shape {f.shape}")
    if len(grid) != 2:
        raise ValueError("grid must hold two axes")
    ex, ey = _edges(_np(grid[0]), f.shape[0]), _edges(_np(grid[1]), f.shape[1])
    finite = np.isfinite(f)
    if not finite.any():
        raise ValueError("free_energy has no finite value to plot")
    f = f - f[finite].min()
    vmax = float(max_f) if max_f is not None else float(f[finite].max())
    masked = np.ma.masked_where(~finite, np.minimum(f, vmax))
    if ax is None:
        fig, ax = plt.subplots(figsize=(5.2, 4.4))
    else:
        fig = ax.figure
    mesh = ax.pcolormesh(ex, ey, masked.T, cmap="viridis", vmin=0.0, vmax=vmax, shading="flat")
    cx, cy = (ex[1:] + ex[:-1]) / 2, (ey[1:] + ey[:-1]) / 2
    if finite.sum() > 3 and levels:
        ax.contour(cx, cy, masked.T, levels=np.linspace(0, vmax, int(levels)), colors="white",
                   linewidths=0.4, alpha=0.7)
    fig.colorbar(mesh, ax=ax, label=f"F [{kT_label}]")
    ax.set_xlabel(f"{names[0]} [rad]" if periodic else names[0])
    ax.set_ylabel(f"{names[1]} [rad]" if periodic else names[1])
    if periodic:
        ax.set_xlim(-math.pi, math.pi)
        ax.set_ylim(-math.pi, math.pi)
        ticks = [-math.pi, -math.pi / 2, 0, math.pi / 2, math.pi]
        labels = ["-π", "-π/2", "0", "π/2", "π"]
        ax.set_xticks(ticks, labels)
        ax.set_yticks(ticks, labels)
    t = title or "free-energy surface"
    if basins:
        t += "\n" + "; ".join(basins)
    ax.set_title(t, fontsize=9)
    return fig


def plot_ramachandran(phi_psi, log_weights=None, bins: int = 60, kT_label: str = "kT", ax=None,
                      title: str | None = None, max_f: float | None = 12.0):
    """The reweighted Ramachandran free energy of ``(F, 2)`` phi/psi samples (radians)."""
    s = torch.as_tensor(_np(phi_psi), dtype=torch.float64)
    edges, f = free_energy_surface(s, log_weights, bins=bins, periodic=[True, True])
    return plot_fes(edges, f, ("phi", "psi"), kT_label=kT_label, ax=ax, title=title, max_f=max_f)


def plot_cv_histograms(cv_values, log_weights=None, names: Sequence[str] | None = None,
                       bins: int = 60, periodic: Sequence[bool] | None = None, show_unweighted: bool = True,
                       reference=None):
    """One panel per CV: the weighted (reweighted) density, the raw one beside it.

    Args:
        cv_values: ``(F, k)`` CV values.
        log_weights: optional ``(F,)`` log importance weights.
        reference: optional list of callables ``density(x) -> p`` (one per CV, or None) drawn as
            a line, e.g. an exact marginal from quadrature.
    """
    import matplotlib.pyplot as plt

    s = _np(cv_values).astype(np.float64)
    if s.ndim == 1:
        s = s[:, None]
    k = s.shape[1]
    names = list(names) if names is not None else [f"cv{d}" for d in range(k)]
    periodic = list(periodic) if periodic is not None else [False] * k
    if len(names) != k or len(periodic) != k:
        raise ValueError(f"names and periodic need {k} entries")
    w = None
    if log_weights is not None:
        lw = _np(log_weights).astype(np.float64)
        if lw.shape != (s.shape[0],):
            raise ValueError(f"log_weights must have shape ({s.shape[0]},), got {lw.shape}")
        w = np.exp(lw - lw.max())
        w = w / w.sum()
    fig, axes = plt.subplots(1, k, figsize=(4.0 * k, 3.2), squeeze=False)
    for d in range(k):
        ax = axes[0, d]
        rng = (-math.pi, math.pi) if periodic[d] else (float(s[:, d].min()), float(s[:, d].max()))
        if show_unweighted or w is None:
            ax.hist(s[:, d], bins=bins, range=rng, density=True, histtype="step", color="0.5",
                    label="samples (raw)")
        if w is not None:
            ax.hist(s[:, d], bins=bins, range=rng, weights=w, density=True, histtype="stepfilled",
                    alpha=0.5, color="C0", label="reweighted")
        if reference is not None and reference[d] is not None:
            xs = np.linspace(*rng, 400)
            ax.plot(xs, _np(reference[d](torch.from_numpy(xs))), "k--", lw=1, label="exact")
        ax.set_xlabel(names[d])
        ax.set_ylabel("density")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
