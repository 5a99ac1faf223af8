"""Small time-conditioned networks shared by the domains.

* :class:`FourierTimeEmbedding` — random Fourier features of the time, ``[sin(2 pi w t), cos(2 pi w t)]``.
* :class:`MLP` — ``(x, t) -> output`` for vectors, time fed by a Fourier embedding to every block.
* :class:`TransformerEncoder` — ``(tokens or vectors, t) -> per-position output`` with the time
  embedding added to every position (used by the discrete and sequence domains).
"""

from __future__ import annotations

import math

import torch
from torch import nn


class FourierTimeEmbedding(nn.Module):
    """Gaussian Fourier features of a scalar time (Tancik et al. 2020).

    .. math:: e(t) = [\\sin(2\\pi w t), \\cos(2\\pi w t)],\\quad w \\sim N(0, s^2)

    Args:
        dim: output dimension (even).
        scale: std ``s`` of the frequencies, in units of 1/time.

    Shapes:
        t: ``(B,)`` or scalar -> ``(B, dim)``.
    """

    def __init__(self, dim: int = 64, scale: float = 16.0, seed: int = 0):
        super().__init__()
        if dim % 2:
            raise ValueError(f"dim must be even, got {dim}")
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("w", torch.randn(dim // 2, generator=g) * scale)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=self.w.dtype, device=self.w.device).reshape(-1, 1)
        arg = 2 * math.pi * t * self.w
        return torch.cat([arg.sin(), arg.cos()], dim=-1)


class MLP(nn.Module):
    """A time-conditioned MLP ``(x, t) -> y`` with residual SiLU blocks.

    Args:
        dim: input dimension (and output dimension unless ``out_dim`` is given).
        hidden: width of the hidden layers.
        depth: number of residual blocks.
        time_dim: size of the Fourier time embedding.
        time_scale: frequency scale of the embedding; times are divided by ``t_scale`` first
            so processes on [0, 80] (EDM) and [0, 1] share the same embedding.
        out_dim: output dimension.

    Shapes:
        x: ``(B, dim)``; t: ``(B,)`` or scalar -> ``(B, out_dim)``.
    """

    def __init__(self, dim: int, hidden: int = 128, depth: int = 3, time_dim: int = 32,
                 time_scale: float = 4.0, t_scale: float = 1.0, out_dim: int | None = None):
        super().__init__()
        if dim < 1 or hidden < 1 or depth < 1:
            raise ValueError(f"dim, hidden and depth must be positive, got {dim}, {hidden}, {depth}")
        self.t_scale = float(t_scale)
        self.embed = FourierTimeEmbedding(time_dim, time_scale)
        self.inp = nn.Linear(dim + time_dim, hidden)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.SiLU(), nn.Linear(hidden + time_dim, hidden)) for _ in range(depth)
        )
        self.out = nn.Sequential(nn.SiLU(), nn.Linear(hidden, out_dim or dim))
        self.dim = dim

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.dim:
            raise ValueError(f"MLP: input of shape {tuple(x.shape)}, expected (batch, {self.dim}): "
                             f"this network was built for {self.dim}-dimensional data")
        t = torch.as_tensor(t, device=x.device, dtype=x.dtype).expand(x.shape[0]) / self.t_scale
        e = self.embed(t).to(x.dtype)
        h = self.inp(torch.cat([x, e], -1))
        for block in self.blocks:
            h = h + block(torch.cat([h, e], -1))
        return self.out(h)


class TransformerEncoder(nn.Module):
    """A small time-conditioned transformer encoder over a sequence.

    Inputs are token ids (``vocab_size`` given) or vectors (``in_dim`` given). The time
    embedding is added to every position; ``time_conditioned=False`` drops it (masked diffusion
    needs no time input, Zheng et al. 2024).

    Shapes:
        x: ``(B, L)`` long or ``(B, L, in_dim)``; t: ``(B,)`` -> ``(B, L, out_dim)``.
    """

    def __init__(self, out_dim: int, *, vocab_size: int | None = None, in_dim: int | None = None,
                 max_len: int = 512, d_model: int = 128, nhead: int = 4, num_layers: int = 3,
                 dim_feedforward: int | None = None, dropout: float = 0.0,
                 time_conditioned: bool = True):
        super().__init__()
        if (vocab_size is None) == (in_dim is None):
            raise ValueError("give exactly one of vocab_size (token input) or in_dim (vector input)")
        self.max_len = max_len
        self.inp = nn.Embedding(vocab_size, d_model) if vocab_size else nn.Linear(in_dim, d_model)
        self.pos = nn.Parameter(torch.randn(max_len, d_model) * 0.02)
        self.time = (nn.Sequential(FourierTimeEmbedding(d_model, 4.0), nn.Linear(d_model, d_model))
                     if time_conditioned else None)
        layer = nn.TransformerEncoderLayer(d_model, nhead, dim_feedforward or 4 * d_model, dropout,
                                           batch_first=True, norm_first=True, activation="gelu")
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        self.out = nn.Linear(d_model, out_dim)

    def forward(self, x: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        L = x.shape[1]
        if L > self.max_len:
            raise ValueError(f"sequence length {L} exceeds the model's max_len {self.max_len}")
        h = self.inp(x) + self.pos[:L]
        if self.time is not None:
            if t is None:
                raise ValueError("this encoder is time-conditioned: pass t")
            t = torch.as_tensor(t, device=h.device, dtype=h.dtype).expand(x.shape[0])
            h = h + self.time(t)[:, None, :]
        return self.out(self.norm(self.encoder(h)))
