"""Small denoiser networks for discrete diffusion, with the call signatures the samplers expect.

* :class:`TransformerDenoiser` — :class:`sciffusion.nn.TransformerEncoder` over token ids.
* :class:`DilatedCNNDenoiser` — residual 1-D convolutions with dilations 1, 2, 4, ... (receptive
  field ``1 + 2 * (2^depth - 1)`` with kernel 3), time added per block.

Both take ``process`` and expose ``forward`` as

* masked: ``model(x_t) -> (B, L, V)`` logits of :math:`p(x_0\\mid x_t)` — no time input (Zheng et al. 2024);
  input ids ``0..V`` (the mask id is ``V``);
* uniform: ``model(x_t, t)`` -> denoiser logits (``model.output == "denoiser"``; samplers and
  losses convert exactly to the leave-one-out posterior the plug-in bridge needs — a network
  that sees :math:`x_t^i` cannot output :math:`p(x_0^i\\mid x_t^{-i})` directly);
* absorbing-uniform: ``model(x_t, z, t)``; a site is fed as ``x_t^i`` when clean and as
  ``V + z^i`` when masked (:math:`x_t^i = z^i`), which carries all of :math:`(x_t, z)` in 2V ids.
"""

from __future__ import annotations

import torch
from torch import nn

from sciffusion.nn import FourierTimeEmbedding, TransformerEncoder

from .processes import check_tokens

__all__ = ["TransformerDenoiser", "DilatedCNNDenoiser", "build_model"]


class _Wrapper(nn.Module):
    """Shared input handling: the id layout per process and the checks at the boundary."""

    def __init__(self, process, max_len: int):
        super().__init__()
        if max_len < 1:
            raise ValueError(f"max_len must be >= 1, got {max_len}")
        self.kind, self.vocab_size, self.max_len = process.kind, process.vocab_size, int(max_len)
        V = process.vocab_size
        if self.kind == "masked":
            if process.mask_id != V:
                raise ValueError(f"the networks use mask_id = vocab_size = {V}, got {process.mask_id}")
            self.num_inputs, self.time_conditioned = V + 1, False
        elif self.kind == "uniform":
            self.num_inputs, self.time_conditioned, self.output = V, True, "denoiser"
        elif self.kind == "absorbing_uniform":
            self.num_inputs, self.time_conditioned = 2 * V, True
        else:
            raise ValueError(f"unknown process kind {self.kind!r}")

    def _ids(self, x, z):
        V = self.vocab_size
        allow = V if self.kind == "masked" else None
        x = check_tokens(x, V, "x_t", allow=allow, max_len=self.max_len)
        if self.kind == "absorbing_uniform":
            z = check_tokens(z, V, "z", max_len=self.max_len)
            return torch.where(x == z, V + z, x)
        return x

    def forward(self, x, *args):
        if self.kind == "masked":
            if args:
                raise TypeError("a masked-diffusion model takes x_t only: it is time-free (model(x_t))")
            return self.body(self._ids(x, None), None)
        if self.kind == "uniform":
            (t,) = args
            return self.body(self._ids(x, None), t)
        z, t = args
        return self.body(self._ids(x, z), t)


class TransformerDenoiser(_Wrapper):
    """Transformer denoiser (pre-norm encoder, learned positions, optional time embedding).

    Args:
        process: the forward process (fixes the input ids and whether time is an input).
        max_len: longest sequence accepted.
        d_model, nhead, num_layers: transformer size.
    """

    def __init__(self, process, max_len: int, d_model: int = 128, nhead: int = 4, num_layers: int = 3):
        super().__init__(process, max_len)
        self.net = TransformerEncoder(self.vocab_size, vocab_size=self.num_inputs, max_len=self.max_len,
                                      d_model=d_model, nhead=nhead, num_layers=num_layers,
                                      time_conditioned=self.time_conditioned)

    def body(self, ids, t):
        return self.net(ids, t)


class DilatedCNNDenoiser(_Wrapper):
    """Residual dilated 1-D CNN denoiser.

    Block: :math:`h \\leftarrow h + W_2\\,\\mathrm{GELU}(\\mathrm{Conv}_{d}(\\mathrm{LN}(h) + e(t)))` with
    dilation :math:`d = 2^{k \\bmod c}`, ``c = cycle``.
    """

    def __init__(self, process, max_len: int, channels: int = 128, depth: int = 6, cycle: int = 4,
                 kernel_size: int = 3):
        super().__init__(process, max_len)
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        self.embed = nn.Embedding(self.num_inputs, channels)
        self.time = (nn.Sequential(FourierTimeEmbedding(channels, 4.0), nn.Linear(channels, channels))
                     if self.time_conditioned else None)
        self.norms = nn.ModuleList(nn.LayerNorm(channels) for _ in range(depth))
        self.convs = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel_size, dilation=2 ** (k % cycle),
                      padding=(kernel_size // 2) * 2 ** (k % cycle)) for k in range(depth))
        self.mix = nn.ModuleList(nn.Linear(channels, channels) for _ in range(depth))
        self.out = nn.Sequential(nn.LayerNorm(channels), nn.Linear(channels, self.vocab_size))

    def body(self, ids, t):
        h = self.embed(ids)
        e = 0.0
        if self.time is not None:
            t = torch.as_tensor(t, dtype=h.dtype, device=h.device).expand(ids.shape[0])
            e = self.time(t)[:, None, :]
        for norm, conv, mix in zip(self.norms, self.convs, self.mix):
            u = conv((norm(h) + e).transpose(1, 2)).transpose(1, 2)
            h = h + mix(torch.nn.functional.gelu(u))
        return self.out(h)


ARCHS = {"transformer": TransformerDenoiser, "cnn": DilatedCNNDenoiser}


def build_model(arch: str, process, max_len: int, **kwargs) -> nn.Module:
    """``transformer`` or ``cnn`` for ``process``; ``kwargs`` go to the constructor."""
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; expected one of: {', '.join(ARCHS)}")
    return ARCHS[arch](process, max_len, **kwargs)
