"""The one categorical draw every discrete sampler uses: float64, inverse CDF, explicit generator.

Why float64. ``torch.rand`` in float32 returns multiples of :math:`\\delta = 2^{-24}`. The usual
Gumbel-max / exponential-race draw :math:`\\arg\\max_v p_v / E_v` with :math:`E_v = -\\log U_v`
then sees exponentials on a grid of spacing about :math:`\\delta` near zero, so a token of small
per-step probability :math:`r` wins with probability

.. math:: \\mathbb E_{E\\sim\\mathrm{Exp}(1)}\\big[\\delta\\lfloor rE/\\delta\\rfloor\\big]
          = \\frac{\\delta}{e^{\\delta/r}-1}

instead of :math:`r` (0.73 r at r = 1e-7, 0.015 r at r = 1e-8). Ancestral samplers with many
steps ask exactly for such rates (``p(x0) * dalpha / (1 - alpha)``), so float32 draws lower the
effective temperature as the number of steps grows (Zheng et al. 2024, Sec. 4). In float64
uniforms lie on a :math:`2^{-53}` grid and the inverse-CDF draw below selects each token with
probability :math:`p_v \\pm 2^{-53}` (absolute), which is exact for any rate a sampler uses.

Functions:

* :func:`sample_categorical` — draw indices from (unnormalised) probabilities; float64 inverse
  CDF by default; ``method="gumbel"`` with ``dtype=torch.float32`` reproduces the common
  float32 Gumbel-max draw and exists to demonstrate its bias.
* :func:`exponential_noise` — the race noise ``-log(U)`` used by ``method="gumbel"``.
* :func:`apply_temperature`, :func:`top_p_filter` — logit / probability transforms.
"""

from __future__ import annotations

import torch

__all__ = ["sample_categorical", "exponential_noise", "apply_temperature", "top_p_filter", "uniform"]


def uniform(shape, *, generator: torch.Generator | None, dtype=torch.float64, device=None) -> torch.Tensor:
    """Uniforms on [0, 1) from ``generator`` (float64: a 2^-53 grid; float32: a 2^-24 grid)."""
    return torch.rand(shape, generator=generator, dtype=dtype, device=device)


def exponential_noise(u: torch.Tensor) -> torch.Tensor:
    """Exp(1) noise :math:`E = -\\log U` for the exponential race, in ``u``'s dtype.

    ``U = 0`` gives ``E = inf`` (that token never wins), which is the right limit.
    """
    return -torch.log(u)


def _check_probs(probs: torch.Tensor) -> None:
    if not isinstance(probs, torch.Tensor):
        raise TypeError(f"probs must be a torch.Tensor, got {type(probs).__name__}")
    if probs.ndim < 1 or probs.shape[-1] < 1:
        raise ValueError(f"probs must have a non-empty last (category) dimension, got shape {tuple(probs.shape)}")
    if not torch.isfinite(probs).all():
        raise FloatingPointError("sample_categorical: probs contain NaN or inf")
    if (probs < 0).any():
        raise ValueError("sample_categorical: probs must be non-negative")
    if (probs.sum(-1) <= 0).any():
        raise ValueError("sample_categorical: every row of probs needs positive total mass")


def sample_categorical(probs: torch.Tensor, *, generator: torch.Generator | None,
                       method: str = "cdf", dtype: torch.dtype = torch.float64,
                       validate: bool = True) -> torch.Tensor:
    """Draw one category per row of ``probs`` (unnormalised, non-negative).

    ``method="cdf"`` (default): :math:`i = \\min\\{i : C_i > U\\,C_V\\}` with
    :math:`C_i = \\sum_{j\\le i} p_j` accumulated in float64 and one float64 uniform per row —
    one random number per draw (not V), exact to :math:`2^{-53}` per token.
    ``method="gumbel"``: the exponential race :math:`\\arg\\max_v p_v / E_v`, equivalent to
    Gumbel-max :math:`\\arg\\max_v \\log p_v - \\log E_v`, with uniforms in ``dtype``.

    Args:
        probs: ``(..., V)`` non-negative weights (need not sum to one).
        generator: the ``torch.Generator`` all randomness comes from.
        method: ``"cdf"`` or ``"gumbel"``.
        dtype: floating type of the uniforms and arithmetic (float64 unless demonstrating the
            float32 bias).
        validate: check for negative / non-finite / all-zero rows (off only in hot loops whose
            inputs are known good).

    Returns:
        ``(...)`` long tensor of indices in ``[0, V)``.
    """
    if validate:
        _check_probs(probs)
    if method == "cdf":
        p = probs.to(dtype)
        c = torch.cumsum(p, dim=-1)
        u = uniform(p.shape[:-1] + (1,), generator=generator, dtype=dtype, device=p.device)
        idx = torch.searchsorted(c.contiguous(), (u * c[..., -1:]).contiguous(), right=True)
        # u * C_V can round up to C_V; the last token with positive mass is the right answer then.
        last = (p.shape[-1] - 1) - torch.argmax((p.flip(-1) > 0).to(torch.int8), dim=-1, keepdim=True)
        return torch.minimum(idx, last).squeeze(-1)
    if method == "gumbel":
        p = probs.to(dtype)
        e = exponential_noise(uniform(p.shape, generator=generator, dtype=dtype, device=p.device))
        return torch.argmax(p / e, dim=-1)
    raise ValueError(f"method must be 'cdf' or 'gumbel', got {method!r}")


def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``logits / temperature`` (temperature > 0; 1 leaves the distribution unchanged)."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return logits if temperature == 1.0 else logits / temperature


def top_p_filter(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Nucleus filtering (Holtzman et al. 2020): keep the smallest set of most likely tokens
    whose mass reaches ``top_p``, zero the rest, renormalise.

    Args:
        probs: ``(..., V)`` normalised probabilities.
        top_p: in (0, 1]; 1 keeps everything.

    Returns:
        ``(..., V)`` renormalised probabilities in ``probs``' dtype.
    """
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must lie in (0, 1], got {top_p}")
    if top_p == 1.0:
        return probs
    sorted_p, order = torch.sort(probs, dim=-1, descending=True)
    before = torch.cumsum(sorted_p, dim=-1) - sorted_p  # mass strictly above each token
    keep_sorted = before < top_p  # the most likely token is always kept
    keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
    out = torch.where(keep, probs, torch.zeros_like(probs))
    return out / out.sum(-1, keepdim=True)
