"""Diagnostics figure for an FKC run: ESS over time, surviving lineages and the resampling events.

The figure is returned, never shown, and no backend is chosen here: in Jupyter it renders inline,
and a headless script saves it with ``fig.savefig`` (pyplot picks a non-interactive backend by
itself when there is no display).
"""

from __future__ import annotations

import torch


def plot_diagnostics(result, ax=None):
    """ESS/N (mean and worst group) against the step's time with the resampling events marked; the
    surviving lineages (distinct starting ancestors of the current particles, over N); and the
    cumulative count of resampled groups. Weight degeneracy shows as ESS/N collapsing towards 1/N;
    path degeneracy as the lineages collapsing while the per-step ESS stays high.

    Args:
        result: an :class:`~sciffusion.domains.feynman_kac.fkc.FKCResult`.
        ax: optional three axes to draw on.

    Returns:
        The matplotlib figure (never shown).
    """
    import matplotlib.pyplot as plt

    if ax is None:
        fig, ax = plt.subplots(1, 3, figsize=(12, 3.2))
    else:
        fig = ax[0].figure
    N = result.num_particles
    t = result.ts[:-1].numpy()
    log_t = t.min() > 0 and t.max() / t.min() > 100
    ax[0].plot(t[:len(result.ess)], result.ess.numpy() / N, label="mean over groups")
    ax[0].plot(t[:len(result.min_ess)], result.min_ess.numpy() / N, lw=0.8, label="worst group")
    for s in result.resample_steps:
        ax[0].axvline(t[s], color="k", alpha=0.08, lw=0.8)
    ax[0].set_ylim(0, 1.05)
    ax[0].set_ylabel("ESS / N (before resampling)")
    ax[0].legend(fontsize=8)
    if result.lineages is not None and len(result.lineages):
        ax[1].plot(t[:len(result.lineages)], result.lineages.numpy() / N)
    ax[1].set_yscale("log")
    ax[1].set_ylabel("surviving lineages / N")
    ax[0].set_title(f"{N} particles x {result.num_groups} group(s), {len(t)} steps", fontsize=9)
    ax[1].set_title("distinct starting ancestors", fontsize=9)
    for a in ax[:2]:
        a.set_xscale("log" if log_t else "linear")
        a.set_xlabel("t (noise on the left, data on the right)")
        a.invert_xaxis()
    counts = torch.cumsum(result.num_resampled, 0).numpy() if result.num_resampled is not None else None
    if counts is not None:
        ax[2].plot(range(len(counts)), counts)
    ax[2].set_xlabel("step")
    ax[2].set_ylabel("groups resampled (cumulative)")
    ax[2].set_title(f"{result.num_resampling_events} resampling steps, NFE {result.nfe}", fontsize=9)
    fig.tight_layout()
    return fig
