"""Token and text files in; samples out as text or integer arrays.

* :class:`CharTokenizer` — characters <-> ids over a fixed alphabet (built from a text if not given).
* :func:`load_text` — a text file cut into windows of ``seq_len`` characters, ``(N, L)``.
* :func:`load_tokens` / :func:`save_tokens` — ``.npy`` integer arrays or whitespace-separated
  integers, one sequence per line (``.txt``/``.tok``).
* :func:`save_text` — decoded samples, one per line.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

__all__ = ["CharTokenizer", "load_text", "load_tokens", "save_tokens", "save_text"]


class CharTokenizer:
    """Character-level tokenizer.

    Args:
        alphabet: the symbols, id = position. Duplicates are an error.
    """

    def __init__(self, alphabet: str):
        if not alphabet:
            raise ValueError("alphabet must be a non-empty string")
        if len(set(alphabet)) != len(alphabet):
            raise ValueError("alphabet has repeated characters")
        self.alphabet = alphabet
        self.index = {c: i for i, c in enumerate(alphabet)}

    @classmethod
    def from_text(cls, text: str) -> "CharTokenizer":
        return cls("".join(sorted(set(text))))

    @property
    def vocab_size(self) -> int:
        return len(self.alphabet)

    def encode(self, text: str) -> torch.Tensor:
        bad = sorted(set(text) - set(self.index))
        if bad:
            raise ValueError(f"characters outside the alphabet: {bad[:10]!r}")
        return torch.tensor([self.index[c] for c in text], dtype=torch.long)

    def decode(self, ids) -> str:
        ids = torch.as_tensor(ids).tolist()
        if any(i < 0 or i >= self.vocab_size for i in ids):
            raise ValueError(f"token ids must lie in [0, {self.vocab_size})")
        return "".join(self.alphabet[i] for i in ids)


def load_text(path: str | os.PathLike, seq_len: int, tokenizer: CharTokenizer | None = None,
              stride: int | None = None):
    """Windows of ``seq_len`` characters from a text file (newlines become spaces).

    Returns:
        ``(tokens (N, seq_len) long, tokenizer)``.
    """
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    text = path.read_text().replace("\n", " ")
    if not text.strip():
        raise ValueError(f"{path}: the corpus is empty (expected text to train on)")
    tokenizer = tokenizer or CharTokenizer.from_text(text)
    ids = tokenizer.encode(text)
    stride = stride or seq_len
    if ids.numel() < seq_len:
        raise ValueError(f"{path}: {ids.numel()} characters, fewer than seq_len = {seq_len}")
    return ids.unfold(0, seq_len, stride).contiguous(), tokenizer


def load_tokens(path: str | os.PathLike) -> torch.Tensor:
    """Integer sequences from ``.npy`` (2-D array) or text (one sequence per line, equal lengths)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    if path.suffix == ".npy":
        try:
            arr = np.load(path)
        except (ValueError, OSError) as err:
            raise ValueError(f"{path}: not a readable .npy array ({err})") from None
    else:
        rows = [line.split() for line in path.read_text().splitlines() if line.strip()]
        if not rows:
            raise ValueError(f"{path}: no sequences")
        if len({len(r) for r in rows}) != 1:
            raise ValueError(f"{path}: sequences of different lengths; pad or cut them first")
        try:
            arr = np.array(rows, dtype=np.int64)
        except ValueError:
            raise ValueError(f"{path}: expected whitespace-separated integers, one sequence per line") from None
    if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{path}: expected a 2-D integer array, got shape {arr.shape} dtype {arr.dtype}")
    if arr.size == 0:
        raise ValueError(f"{path}: no sequences")
    if (arr < 0).any():
        raise ValueError(f"{path}: token ids must be >= 0")
    return torch.from_numpy(arr.astype(np.int64))


def save_tokens(path: str | os.PathLike, x: torch.Tensor) -> Path:
    """``.npy`` or whitespace-separated integers, one sequence per line."""
    path = Path(path)
    arr = x.detach().cpu().numpy().astype(np.int64)
    tmp = path.with_name(path.name + ".tmp")
    if path.suffix == ".npy":
        with open(tmp, "wb") as fh:
            np.save(fh, arr)
    else:
        tmp.write_text("\n".join(" ".join(map(str, r)) for r in arr) + "\n")
    os.replace(tmp, path)  # whole or not at all
    return path


def save_text(path: str | os.PathLike, x: torch.Tensor, tokenizer: CharTokenizer) -> Path:
    """Decoded samples, one per line."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(tokenizer.decode(r) for r in x) + "\n")
    os.replace(tmp, path)  # whole or not at all
    return path
