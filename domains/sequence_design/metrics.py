"""Naturalness and diversity of designed sequences, reported beside the reward.

* :func:`kmer_spectrum` / :func:`kmer_correlation` — Pearson correlation of k-mer frequency
  spectra (k = 3: 64 entries) between designs and data;
* :func:`motif_occurrence_correlation` — Pearson correlation, across a panel of motifs, of the
  mean occurrence counts per sequence in designs and in data;
* :func:`pairwise_hamming` — mean pairwise Hamming distance (as a fraction of L);
* the ELBO under the base model is :func:`.model.elbo`.
"""

from __future__ import annotations

from typing import Sequence

import torch

from .alphabet import _check_x

__all__ = ["kmer_spectrum", "kmer_correlation", "motif_occurrence_correlation", "pairwise_hamming", "pearson"]


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    """Pearson correlation of two vectors (NaN if either is constant)."""
    a, b = a.double() - a.double().mean(), b.double() - b.double().mean()
    den = (a.norm() * b.norm()).item()
    return float((a @ b).item() / den) if den > 0 else float("nan")


def kmer_spectrum(x: torch.Tensor, k: int = 3) -> torch.Tensor:
    """Frequencies of all ``4^k`` k-mers over every window of every sequence, ``(4^k,)`` float64."""
    x = _check_x(x)
    if not isinstance(k, int) or not 1 <= k <= x.shape[1]:
        raise ValueError(f"k must be an int in [1, L={x.shape[1]}], got {k!r}")
    win = x.unfold(1, k, 1)
    code = (win * (4 ** torch.arange(k - 1, -1, -1))).sum(-1).reshape(-1)
    c = torch.bincount(code, minlength=4 ** k).double()
    return c / c.sum()


def kmer_correlation(x: torch.Tensor, data: torch.Tensor, k: int = 3) -> float:
    """Pearson correlation of the k-mer spectra of ``x`` and ``data``."""
    return pearson(kmer_spectrum(x, k), kmer_spectrum(data, k))


def motif_occurrence_correlation(x: torch.Tensor, data: torch.Tensor, motifs: Sequence) -> float:
    """Pearson correlation across ``motifs`` (count rewards, e.g. ``HammingMotifCount`` or
    ``PWMScore(..., reduce="count")``) of the mean count per sequence in ``x`` and in ``data``."""
    if len(motifs) < 2:
        raise ValueError("motifs: need at least two motifs to correlate")
    a = torch.stack([m(x).mean() for m in motifs])
    b = torch.stack([m(data).mean() for m in motifs])
    return pearson(a, b)


def pairwise_hamming(x: torch.Tensor, max_pairs: int = 200_000, generator: torch.Generator | None = None) -> float:
    """Mean Hamming distance / L over distinct pairs (all pairs, or ``max_pairs`` random ones)."""
    x = _check_x(x)
    B, L = x.shape
    if B < 2:
        raise ValueError("pairwise_hamming needs at least two sequences")
    if B * (B - 1) // 2 <= max_pairs:
        i, j = torch.triu_indices(B, B, 1)
    else:
        i = torch.randint(B, (max_pairs,), generator=generator)
        j = (i + 1 + torch.randint(B - 1, (max_pairs,), generator=generator)) % B
    return float((x[i] != x[j]).double().mean())
