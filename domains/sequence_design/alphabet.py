"""Nucleotide alphabets, tokenisation, one-hot encoding and FASTA input/output.

Tokens are the long ids ``0..3`` of :class:`Alphabet` (``DNA = "ACGT"``, ``RNA = "ACGU"``), so the
complement of token ``a`` is ``3 - a`` in both alphabets. FASTA is read and written through
Biopython's ``SeqIO`` (``pip install "sciffusion[sequences]"``); writes are atomic (a temporary
file renamed into place), so a failed write leaves nothing half-written.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import torch

__all__ = ["Alphabet", "DNA", "RNA", "get_alphabet", "encode", "decode", "one_hot", "reverse_complement",
           "read_fasta", "write_fasta"]


@dataclass(frozen=True)
class Alphabet:
    """A nucleotide alphabet: ``letters[i]`` is token ``i``; ``complement`` maps token ``a`` to ``3 - a``."""

    name: str
    letters: str

    @property
    def size(self) -> int:
        return len(self.letters)

    def encode(self, seqs: str | Sequence[str], names: Sequence[str] | None = None) -> torch.Tensor:
        """``(B, L)`` long tokens from equal-length strings (case-insensitive; DNA ``T`` and RNA ``U``
        are *not* interchanged: a ``U`` in DNA is an error).

        Raises:
            ValueError: a character outside the alphabet (naming the record and 1-based position),
                an empty sequence, or unequal lengths.
        """
        if isinstance(seqs, str):
            seqs = [seqs]
        seqs = list(seqs)
        names = list(names) if names is not None else [f"#{i}" for i in range(len(seqs))]
        if not seqs:
            raise ValueError("seqs: need at least one sequence")
        lut = {c: i for i, c in enumerate(self.letters)}
        rows = []
        for name, s in zip(names, seqs):
            if not isinstance(s, str):
                raise TypeError(f"sequence {name}: expected a string, got {type(s).__name__}")
            if len(s) == 0:
                raise ValueError(f"sequence {name} is empty")
            row = []
            for pos, c in enumerate(s.upper()):
                if c not in lut:
                    raise ValueError(f"sequence {name}: character {s[pos]!r} at position {pos + 1} is not in the "
                                     f"{self.name} alphabet {self.letters}")
                row.append(lut[c])
            rows.append(row)
        lengths = {len(r) for r in rows}
        if len(lengths) > 1:
            raise ValueError(f"sequences have different lengths {sorted(lengths)}; the models need one length "
                             "(trim or pad the records first)")
        return torch.tensor(rows, dtype=torch.long)

    def decode(self, x: torch.Tensor) -> list[str]:
        """Strings from ``(B, L)`` tokens in ``[0, 4)``."""
        x = _check_x(x, self.size)
        return ["".join(self.letters[i] for i in row) for row in x.tolist()]


DNA = Alphabet("DNA", "ACGT")
RNA = Alphabet("RNA", "ACGU")
ALPHABETS = {"dna": DNA, "rna": RNA}


def get_alphabet(alphabet: str | Alphabet) -> Alphabet:
    """``"dna"`` / ``"rna"`` (case-insensitive) or an :class:`Alphabet`."""
    if isinstance(alphabet, Alphabet):
        return alphabet
    if not isinstance(alphabet, str) or alphabet.lower() not in ALPHABETS:
        raise ValueError(f"alphabet must be 'dna' or 'rna', got {alphabet!r}")
    return ALPHABETS[alphabet.lower()]


def _check_x(x, V: int = 4, name: str = "x") -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.dtype.is_floating_point or x.dtype == torch.bool:
        raise TypeError(f"{name} must be a long tensor of token ids (B, L)")
    if x.ndim != 2 or x.shape[1] < 1:
        raise ValueError(f"{name} must have shape (batch, length >= 1), got {tuple(x.shape)}")
    if ((x < 0) | (x >= V)).any():
        raise ValueError(f"{name}: token ids must lie in [0, {V}), got {int(x.min())}..{int(x.max())}")
    return x.long()


def encode(seqs, alphabet: str | Alphabet = "dna") -> torch.Tensor:
    """:meth:`Alphabet.encode` by alphabet name."""
    return get_alphabet(alphabet).encode(seqs)


def decode(x: torch.Tensor, alphabet: str | Alphabet = "dna") -> list[str]:
    """:meth:`Alphabet.decode` by alphabet name."""
    return get_alphabet(alphabet).decode(x)


def one_hot(x: torch.Tensor, V: int = 4, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``(B, L)`` tokens -> ``(B, L, V)`` one-hot."""
    x = _check_x(x, V)
    return torch.nn.functional.one_hot(x, V).to(dtype)


def reverse_complement(x: torch.Tensor) -> torch.Tensor:
    """Reverse complement of ``(B, L)`` nucleotide tokens (``a -> 3 - a``, reversed)."""
    return (3 - _check_x(x)).flip(1)


def _seqio():
    try:
        from Bio import SeqIO
    except ImportError as e:  # pragma: no cover - the extra is installed in CI
        raise ImportError('FASTA input/output needs Biopython: pip install "sciffusion[sequences]"') from e
    return SeqIO


def read_fasta(path: str | os.PathLike, alphabet: str | Alphabet = "dna", *,
               max_len: int | None = None) -> tuple[torch.Tensor, list[str]]:
    """Read equal-length records: ``((B, L) tokens, record ids)``.

    Raises:
        ValueError: no records, an empty record, a character outside the alphabet (record id and
            1-based position named), unequal lengths, or a length above ``max_len``.
    """
    alph = get_alphabet(alphabet)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"FASTA file {str(path)!r} does not exist")
    with open(path) as fh:  # our handle, closed here (SeqIO leaves a path's handle to the collector)
        recs = list(_seqio().parse(fh, "fasta"))
    if not recs:
        raise ValueError(f"{path}: no FASTA records found")
    names, seqs = [r.id or f"#{i}" for i, r in enumerate(recs)], [str(r.seq) for r in recs]
    for n, s in zip(names, seqs):
        if len(s) == 0:
            raise ValueError(f"{path}: record {n!r} is empty")
    x = alph.encode(seqs, names=[repr(n) for n in names])
    if max_len is not None and x.shape[1] > max_len:
        raise ValueError(f"{path}: sequences of length {x.shape[1]} exceed the model's maximum length {max_len}")
    return x, names


def write_fasta(path: str | os.PathLike, x: torch.Tensor | Iterable[str], alphabet: str | Alphabet = "dna", *,
                names: Sequence[str] | None = None, descriptions: Sequence[str] | None = None) -> Path:
    """Write tokens (or strings) as FASTA, atomically (temporary file, then ``os.replace``)."""
    alph = get_alphabet(alphabet)
    seqs = alph.decode(x) if isinstance(x, torch.Tensor) else [str(s) for s in x]
    names = list(names) if names is not None else [f"seq{i}" for i in range(len(seqs))]
    if not isinstance(x, torch.Tensor):
        for n, s in zip(names, seqs):  # validate every string before anything is written
            alph.encode([s], names=[repr(n)])
    descriptions = list(descriptions) if descriptions is not None else [""] * len(seqs)
    if len(names) != len(seqs) or len(descriptions) != len(seqs):
        raise ValueError(f"names/descriptions: need one per sequence ({len(seqs)})")
    from Bio.Seq import Seq
    from Bio.SeqRecord import SeqRecord

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    recs = [SeqRecord(Seq(s), id=n, description=d) for s, n, d in zip(seqs, names, descriptions)]
    try:
        with open(tmp, "w") as fh:
            _seqio().write(recs, fh, "fasta")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path
