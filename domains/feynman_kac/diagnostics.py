"""Diagnostics figure for an FKC run: ESS over time and the resampling events."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402


def plot_diagnostics(result, ax=None):
    """ESS/N (mean and worst group) against the step's time, resampling events marked, and their
    cumulative count; a weight-degeneracy run shows ESS/N collapsing towards 1/N.

    Args:
        result: an :class:`~sciffusion.domains.feynman_kac.fkc.FKCResult`.
        ax: optional pair of axes to draw on.

    Returns:
        The matplotlib figure (Agg backend; never shown).
    """
    if ax is None:
        fig, ax = plt.subplots(1, 2, figsize=(9, 3.2))
    else:
        fig = ax[0].figure
    N = result.num_particles
    t = result.ts[:-1].numpy()
    ax[0].plot(t, result.ess.numpy() / N, label="mean over groups")
    ax[0].plot(t, result.min_ess.numpy() / N, lw=0.8, label="worst group")
    for s in result.resample_steps:
        ax[0].axvline(t[s], color="k", alpha=0.08, lw=0.8)
    ax[0].set_xscale("log" if t.min() > 0 and t.max() / t.min() > 100 else "linear")
    ax[0].set_ylim(0, 1.05)
    ax[0].set_xlabel("t (noise on the left, data on the right)")
    ax[0].set_ylabel("ESS / N (before resampling)")
    ax[0].invert_xaxis()
    ax[0].legend(fontsize=8)
    counts = torch.cumsum(result.num_resampled, 0).numpy() if result.num_resampled is not None else None
    if counts is not None:
        ax[1].plot(range(len(counts)), counts)
    ax[1].set_xlabel("step")
    ax[1].set_ylabel("groups resampled (cumulative)")
    ax[1].set_title(f"{result.num_resampling_events} resampling steps, NFE {result.nfe}", fontsize=9)
    fig.tight_layout()
    return fig
