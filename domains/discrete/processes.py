"""Forward processes over token sequences ``x0`` of shape ``(B, L)`` with values in ``[0, V)``.

Each process answers the same questions, so the oracle, the losses and the conversions are
written once:

* ``perturb(x0, t, generator)`` — a draw of :math:`x_t \\sim q_t(\\cdot \\mid x_0)`, sites independent;
* ``prior(shape, generator)`` — a draw at t = 1;
* ``emission(xt, t)`` — the per-site likelihood :math:`q_t(x_t^i \\mid x_0^i = v)` as ``(B, L, V)``
  float64, the only thing the exact forward–backward oracle needs;
* ``transition(b, t, s)`` / ``kernel`` — the per-site forward kernel between times.

Processes:

* :class:`MaskedProcess` — absorbing: :math:`x_t^i = x_0^i` w.p. :math:`\\alpha_t`, else the mask
  id (Austin et al. 2021; Sahoo et al. 2024; Shi et al. 2024).
* :class:`UniformProcess` — :math:`q_t(b \\mid v) = \\alpha_t\\,[b=v] + (1-\\alpha_t)/V`
  (Austin et al. 2021; Schiff et al. 2024).
* :class:`AbsorbingUniformProcess` — the same marginals as uniform diffusion written as an
  absorbing process: each site carries a noise token :math:`z^i \\sim \\mathrm{U}\\{0..V-1\\}` drawn
  once and kept as conditioning; a corrupted site shows :math:`z^i`, so "masked" means
  :math:`x_t^i = z^i`. A site that leaves :math:`z^i` stays (carry-over unmasking); a site whose
  clean value equals :math:`z^i` looks masked forever (natural remasking).
"""

from __future__ import annotations

import torch

from .schedules import DiscreteSchedule, get_discrete_schedule
from sciffusion.utils import as_time

__all__ = ["MaskedProcess", "UniformProcess", "AbsorbingUniformProcess", "check_tokens", "get_discrete_process"]


def check_tokens(x: torch.Tensor, vocab_size: int, name: str = "x0", *, allow: int | None = None,
                 max_len: int | None = None) -> torch.Tensor:
    """Validate a token batch: a long tensor ``(B, L)`` with values in ``[0, vocab_size)``
    (or equal to ``allow``, the mask id), ``L >= 1`` and ``L <= max_len``."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of token ids, got {type(x).__name__}")
    if x.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise TypeError(f"{name} must hold integer token ids, got dtype {x.dtype}")
    if x.ndim != 2:
        raise ValueError(f"{name} must have shape (batch, length), got {tuple(x.shape)}")
    if x.shape[1] == 0:
        raise ValueError(f"{name}: empty sequences (length 0) cannot be modelled")
    if max_len is not None and x.shape[1] > max_len:
        raise ValueError(f"{name}: length {x.shape[1]} exceeds the model's maximum length {max_len}")
    bad = (x < 0) | (x >= vocab_size)
    if allow is not None:
        bad &= x != allow
    if bad.any():
        v = x[bad][0].item()
        raise ValueError(f"{name}: token id {v} outside the vocabulary [0, {vocab_size})"
                         + (f" (mask id {allow} allowed)" if allow is not None else ""))
    return x.long()


def _t_batch(t, batch: int) -> torch.Tensor:
    t = as_time(t)
    if t.ndim == 0:
        t = t.expand(batch)
    if t.shape != (batch,):
        raise ValueError(f"t must be a scalar or have shape ({batch},), got {tuple(t.shape)}")
    if ((t < 0) | (t > 1)).any():
        raise ValueError("t must lie in [0, 1]")
    return t


class _Base:
    kind = "base"

    def __init__(self, vocab_size: int, schedule: str | DiscreteSchedule = "loglinear"):
        if not isinstance(vocab_size, int) or vocab_size < 2:
            raise ValueError(f"vocab_size must be an integer >= 2, got {vocab_size!r}")
        self.vocab_size = vocab_size
        self.schedule = get_discrete_schedule(schedule)

    def alpha(self, t) -> torch.Tensor:
        return self.schedule.alpha(t)

    def d_alpha(self, t) -> torch.Tensor:
        return self.schedule.d_alpha(t)

    def _keep(self, x0, t, generator):
        t = _t_batch(t, x0.shape[0])
        u = torch.rand(x0.shape, generator=generator, dtype=torch.float64, device=x0.device)
        return u < self.alpha(t).to(x0.device)[:, None]

    def __repr__(self):
        return f"{type(self).__name__}(vocab_size={self.vocab_size}, schedule={self.schedule!r})"


class MaskedProcess(_Base):
    """Masked (absorbing-state) diffusion.

    .. math:: q_t(x_t^i \\mid x_0^i) = \\alpha_t\\,[x_t^i = x_0^i] + (1-\\alpha_t)\\,[x_t^i = m]

    Args:
        vocab_size: ``V``, the number of data tokens.
        schedule: name or :class:`DiscreteSchedule`.
        mask_id: the mask token; default ``V`` (one extra id). Must not be a data token.
    """

    kind = "masked"

    def __init__(self, vocab_size: int, schedule="loglinear", mask_id: int | None = None):
        super().__init__(vocab_size, schedule)
        self.mask_id = vocab_size if mask_id is None else int(mask_id)
        if 0 <= self.mask_id < vocab_size:
            raise ValueError(f"mask_id {self.mask_id} collides with a data token in [0, {vocab_size}); "
                             f"use mask_id >= vocab_size (default {vocab_size})")

    @property
    def num_states(self) -> int:
        """Token ids a model must embed: ``V + 1`` with the default mask id."""
        return max(self.vocab_size, self.mask_id) + 1

    def perturb(self, x0, t, generator=None) -> torch.Tensor:
        """:math:`x_t`: each site kept w.p. :math:`\\alpha_t`, else masked. Shapes: ``(B, L) -> (B, L)``."""
        x0 = check_tokens(x0, self.vocab_size)
        return torch.where(self._keep(x0, t, generator), x0, torch.full_like(x0, self.mask_id))

    def prior(self, shape, generator=None) -> torch.Tensor:
        """All masks, ``(B, L)``."""
        return torch.full(tuple(shape), self.mask_id, dtype=torch.long)

    def emission(self, xt, t) -> torch.Tensor:
        """:math:`q_t(x_t^i \\mid x_0^i=v)` up to a per-site constant: 1 for every v at a masked site,
        :math:`[v = x_t^i]` at a clean one. Shapes: ``(B, L) -> (B, L, V)`` float64."""
        xt = check_tokens(xt, self.vocab_size, "xt", allow=self.mask_id)
        masked = (xt == self.mask_id)[..., None]
        onehot = torch.nn.functional.one_hot(xt.clamp(max=self.vocab_size - 1), self.vocab_size).double()
        return torch.where(masked, torch.ones_like(onehot), onehot)


class UniformProcess(_Base):
    """Uniform diffusion.

    .. math:: q_t(b \\mid v) = \\alpha_t\\,[b = v] + \\frac{1-\\alpha_t}{V},\\qquad
              q_{t\\mid s}(b \\mid a) = \\frac{\\alpha_t}{\\alpha_s}[b=a] + \\Big(1-\\frac{\\alpha_t}{\\alpha_s}\\Big)\\frac1V
    """

    kind = "uniform"

    @property
    def num_states(self) -> int:
        return self.vocab_size

    def perturb(self, x0, t, generator=None) -> torch.Tensor:
        """Keep each site w.p. :math:`\\alpha_t`, else redraw it uniformly. ``(B, L) -> (B, L)``."""
        x0 = check_tokens(x0, self.vocab_size)
        keep = self._keep(x0, t, generator)
        noise = torch.randint(self.vocab_size, x0.shape, generator=generator, device=x0.device)
        return torch.where(keep, x0, noise)

    def prior(self, shape, generator=None) -> torch.Tensor:
        return torch.randint(self.vocab_size, tuple(shape), generator=generator)

    def kernel_coeffs(self, t, s=None):
        """``(a, c)`` with :math:`q(b \\mid a') = a\\,[b=a'] + c`: ``a = alpha_t/alpha_s``, ``c = (1-a)/V``."""
        a = self.alpha(t) if s is None else self.alpha(t) / self.alpha(s)
        return a, (1.0 - a) / self.vocab_size

    def emission(self, xt, t) -> torch.Tensor:
        """:math:`q_t(x_t^i \\mid v) = \\alpha_t[v = x_t^i] + (1-\\alpha_t)/V`, ``(B, L, V)`` float64."""
        xt = check_tokens(xt, self.vocab_size, "xt")
        a, c = self.kernel_coeffs(_t_batch(t, xt.shape[0]))
        onehot = torch.nn.functional.one_hot(xt, self.vocab_size).double()
        return a[:, None, None] * onehot + c[:, None, None]


class AbsorbingUniformProcess(_Base):
    """Uniform diffusion in absorbing form: a per-site noise token ``z`` (conditioning) and
    :math:`x_t^i = x_0^i` w.p. :math:`\\alpha_t`, else :math:`z^i`.

    Marginally over ``z`` this is uniform diffusion; given ``z`` it is masked diffusion whose
    mask symbol at site i is :math:`z^i`:

    .. math:: q_t(x_t^i \\mid x_0^i=v, z^i) = \\alpha_t[x_t^i=v] + (1-\\alpha_t)[x_t^i=z^i].
    """

    kind = "absorbing_uniform"

    @property
    def num_states(self) -> int:
        return self.vocab_size

    def noise(self, shape, generator=None) -> torch.Tensor:
        """The per-site noise tokens ``z``, uniform on the vocabulary, ``(B, L)``."""
        return torch.randint(self.vocab_size, tuple(shape), generator=generator)

    def perturb(self, x0, t, generator=None, z=None):
        """``(xt, z)``: ``z`` drawn if not given. ``(B, L) -> ((B, L), (B, L))``."""
        x0 = check_tokens(x0, self.vocab_size)
        z = self.noise(x0.shape, generator) if z is None else check_tokens(z, self.vocab_size, "z")
        return torch.where(self._keep(x0, t, generator), x0, z), z

    def prior(self, shape, generator=None, z=None):
        z = self.noise(shape, generator) if z is None else z
        return z.clone(), z

    def emission(self, xt, t, z) -> torch.Tensor:
        """:math:`q_t(x_t^i \\mid v, z^i)`, ``(B, L, V)`` float64."""
        xt = check_tokens(xt, self.vocab_size, "xt")
        z = check_tokens(z, self.vocab_size, "z")
        a = self.alpha(_t_batch(t, xt.shape[0]))[:, None, None]
        ox = torch.nn.functional.one_hot(xt, self.vocab_size).double()
        masked = (xt == z).double()[..., None]
        return a * ox + (1.0 - a) * masked


def get_discrete_process(kind: str, vocab_size: int, schedule="loglinear"):
    """``masked``, ``uniform`` or ``absorbing_uniform`` by name."""
    table = {"masked": MaskedProcess, "uniform": UniformProcess, "absorbing_uniform": AbsorbingUniformProcess}
    if kind not in table:
        raise ValueError(f"unknown process {kind!r}; expected one of: {', '.join(table)}")
    return table[kind](vocab_size, schedule)
