"""Synthetic "text" with a known entropy: a second-order Markov source over 27 symbols (a-z and space).

:math:`p(x) = \\pi(x^1, x^2)\\prod_{i>2} T(x^{i-2}, x^{i-1}, x^i)` with :math:`\\pi` the stationary
distribution of the pair chain, so every window is stationary and

.. math:: H(x^{1:L}) = H(\\pi) + (L-2)\\,h,\\qquad h = \\sum_{a,b}\\pi(a,b)\\,H(T(a,b,\\cdot))

(``h`` is the entropy rate). Rows of ``T`` are softmax of ``scale * N(0, 1)`` logits, seeded:
scale 3 gives about 1.3 nats per symbol, peaked like letters after a digram.
"""

from __future__ import annotations

import string

import torch

from sciffusion.categorical import sample_categorical

__all__ = ["SecondOrderMarkovSource", "ALPHABET"]

ALPHABET = string.ascii_lowercase + " "


class SecondOrderMarkovSource:
    """Second-order Markov chain over ``K`` symbols with exact log-probabilities and entropy.

    Args:
        vocab_size: ``K`` (27 for letters and space).
        scale: logit scale of the transition rows (larger: lower entropy).
        seed: seeds the transition table.
    """

    def __init__(self, vocab_size: int = 27, scale: float = 3.0, seed: int = 0):
        if vocab_size < 2:
            raise ValueError(f"vocab_size must be >= 2, got {vocab_size}")
        g = torch.Generator().manual_seed(seed)
        K = vocab_size
        self.vocab_size = K
        self.trans = torch.softmax(scale * torch.randn(K, K, K, generator=g, dtype=torch.float64), -1)
        # stationary law of the pair (a, b) -> (b, c): power iteration in float64
        pi = torch.full((K, K), 1.0 / K ** 2, dtype=torch.float64)
        for _ in range(2000):
            new = torch.einsum("ab,abc->bc", pi, self.trans)
            if (new - pi).abs().max() < 1e-15:
                pi = new
                break
            pi = new
        self.pair = pi / pi.sum()

    def entropy_rate(self) -> float:
        """``h`` in nats per symbol."""
        row_h = -(self.trans * self.trans.log()).sum(-1)
        return float((self.pair * row_h).sum())

    def entropy(self, length: int) -> float:
        """Exact entropy of a stationary window of ``length`` symbols, in nats."""
        h_pair = float(-(self.pair * self.pair.clamp_min(1e-300).log()).sum())
        return h_pair + (length - 2) * self.entropy_rate()

    def sample(self, n: int, length: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` stationary windows, ``(n, length)`` long."""
        if length < 2:
            raise ValueError(f"length must be >= 2, got {length}")
        K = self.vocab_size
        first = sample_categorical(self.pair.flatten().expand(n, -1), generator=generator)
        x = torch.empty(n, length, dtype=torch.long)
        x[:, 0], x[:, 1] = first // K, first % K
        for i in range(2, length):
            x[:, i] = sample_categorical(self.trans[x[:, i - 2], x[:, i - 1]], generator=generator)
        return x

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Exact :math:`\\log p(x)`, ``(B, L) -> (B,)``."""
        from .processes import check_tokens

        x = check_tokens(x, self.vocab_size)
        lp = self.pair.clamp_min(1e-300).log()[x[:, 0], x[:, 1]]
        if x.shape[1] > 2:
            lp = lp + self.trans.log()[x[:, :-2], x[:, 1:-1], x[:, 2:]].sum(-1)
        return lp

    def decode(self, x: torch.Tensor) -> list[str]:
        """Token rows as strings over :data:`ALPHABET` (27 symbols only)."""
        if self.vocab_size != len(ALPHABET):
            raise ValueError("decode needs vocab_size 27 (a-z and space)")
        return ["".join(ALPHABET[i] for i in row.tolist()) for row in x]
