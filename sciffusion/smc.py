"""Sequential Monte Carlo: log-weights, ESS, resampling, and the normalising-constant estimate.

Particles are stored flat as a state of batch ``G * N`` (``G`` independent groups of ``N``
particles, one group per requested sample) with log-weights of shape ``(G, N)``. Resampling acts
within each group. Weights are *carried* across steps that do not resample; on a resampling
step the group's running estimate of :math:`\\log Z` gains
:math:`\\log\\frac1N\\sum_i w_i` and the weights are reset to uniform, which keeps

.. math:: \\hat Z = \\prod_{\\text{resampling steps}} \\Big(\\frac1N\\sum_i w_i\\Big)\\cdot
          \\frac1N\\sum_i w_i^{\\text{final}}

unbiased (Del Moral 2004; Doucet & Johansen 2009, Sec. 3.5). All weight arithmetic is float64.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from .utils import choice_error, tree_map


def _check_log_w(log_w: torch.Tensor, where: str) -> torch.Tensor:
    log_w = torch.as_tensor(log_w, dtype=torch.float64)
    if torch.isnan(log_w).any() or (log_w == float("inf")).any():
        raise FloatingPointError(f"{where}: log-weights contain NaN or +inf; "
                                 "the potential or energy produced a non-finite value")
    if log_w.shape[-1] == 0:
        raise ValueError(f"{where}: zero particles; need at least one per group")
    if (log_w == float("-inf")).all(dim=-1).any():
        raise FloatingPointError(f"{where}: every particle of a group has zero weight (log-weight -inf)")
    return log_w


def normalize(log_w: torch.Tensor) -> torch.Tensor:
    """Normalised weights :math:`w_i / \\sum_j w_j` along the last dimension (float64)."""
    log_w = _check_log_w(log_w, "normalize")
    return torch.softmax(log_w, dim=-1)


def ess(log_w: torch.Tensor) -> torch.Tensor:
    """Effective sample size :math:`(\\sum w)^2/\\sum w^2` along the last dimension."""
    log_w = _check_log_w(log_w, "ess")
    return torch.exp(2 * torch.logsumexp(log_w, -1) - torch.logsumexp(2 * log_w, -1))


def _uniform(shape, generator, device):
    return torch.rand(shape, generator=generator, dtype=torch.float64, device=device)


def _inverse_cdf(w: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """For sorted points ``u`` in [0,1) (..., M), the indices i with cdf[i-1] <= u < cdf[i]."""
    cdf = torch.cumsum(w, -1)
    cdf[..., -1] = 1.0  # guard round-off so every u finds a slot
    return torch.searchsorted(cdf, u, right=True).clamp_max(w.shape[-1] - 1)


def resample_multinomial(w: torch.Tensor, generator=None) -> torch.Tensor:
    """N i.i.d. draws from Categorical(w)."""
    return _inverse_cdf(w, torch.sort(_uniform(w.shape, generator, w.device), -1).values)


def resample_stratified(w: torch.Tensor, generator=None) -> torch.Tensor:
    """One uniform in each stratum :math:`[i/N, (i+1)/N)`."""
    N = w.shape[-1]
    u = (torch.arange(N, dtype=torch.float64, device=w.device) + _uniform(w.shape, generator, w.device)) / N
    return _inverse_cdf(w, u)


def resample_systematic(w: torch.Tensor, generator=None) -> torch.Tensor:
    """One shared uniform: points :math:`(i + U)/N`."""
    N = w.shape[-1]
    u0 = _uniform(w.shape[:-1] + (1,), generator, w.device)
    return _inverse_cdf(w, (torch.arange(N, dtype=torch.float64, device=w.device) + u0) / N)


def resample_residual(w: torch.Tensor, generator=None) -> torch.Tensor:
    """Keep :math:`\\lfloor N w_i\\rfloor` copies of each, draw the rest multinomially from the residuals."""
    N = w.shape[-1]
    flat = w.reshape(-1, N)
    out = torch.empty_like(flat, dtype=torch.long)
    for row in range(flat.shape[0]):
        counts = torch.floor(N * flat[row]).long()
        kept = torch.repeat_interleave(torch.arange(N, device=w.device), counts)
        rest = N - kept.numel()
        if rest > 0:
            resid = N * flat[row] - counts
            extra = torch.multinomial(resid / resid.sum(), rest, replacement=True, generator=generator)
            kept = torch.cat([kept, extra])
        out[row] = kept
    return out.reshape(w.shape)


RESAMPLERS: dict[str, Callable] = {"multinomial": resample_multinomial, "stratified": resample_stratified,
                                    "systematic": resample_systematic, "residual": resample_residual}


def resample(log_w: torch.Tensor, scheme: str = "systematic", generator=None) -> torch.Tensor:
    """Ancestor indices (within each group) drawn from the normalised weights.

    Args:
        log_w: ``(..., N)`` log-weights.
        scheme: ``multinomial``, ``stratified``, ``systematic`` or ``residual``; all are unbiased:
            each particle's expected number of copies is :math:`N w_i`.

    Returns:
        ``(..., N)`` long indices in ``[0, N)``.
    """
    if scheme not in RESAMPLERS:
        raise choice_error("resampling scheme", scheme, RESAMPLERS)
    return RESAMPLERS[scheme](normalize(log_w), generator)


@dataclass
class SMCState:
    """Log-weights of ``G`` groups of ``N`` particles and the diagnostics users look at.

    Attributes:
        log_w: ``(G, N)`` unnormalised log-weights carried since the last resampling.
        log_z: ``(G,)`` running estimate of :math:`\\log Z` from the resampling steps so far.
        ess_history: ESS (mean over groups) recorded at every :func:`maybe_resample` call.
        resample_steps: the step indices at which any group resampled.
    """

    log_w: torch.Tensor
    log_z: torch.Tensor
    ess_history: list = field(default_factory=list)
    resample_steps: list = field(default_factory=list)

    @classmethod
    def init(cls, num_groups: int, num_particles: int, device=None) -> "SMCState":
        if num_groups < 1 or num_particles < 1:
            raise ValueError(f"need at least one group and one particle, got num_groups={num_groups}, "
                             f"num_particles={num_particles}")
        z = torch.zeros(num_groups, num_particles, dtype=torch.float64, device=device)
        return cls(log_w=z, log_z=torch.zeros(num_groups, dtype=torch.float64, device=device))

    @property
    def num_particles(self) -> int:
        return self.log_w.shape[1]

    def reweight(self, log_w_increment: torch.Tensor) -> "SMCState":
        """Multiply the weights by :math:`\\exp(\\Delta)`; ``log_w_increment`` is ``(G*N,)`` or ``(G, N)``."""
        inc = torch.as_tensor(log_w_increment, dtype=torch.float64, device=self.log_w.device)
        inc = inc.reshape(self.log_w.shape)
        if torch.isnan(inc).any() or (inc == float("inf")).any():
            bad = int((torch.isnan(inc) | (inc == float("inf"))).sum())
            raise FloatingPointError(f"reweight: {bad} log-weight increment(s) are NaN or +inf")
        self.log_w = self.log_w + inc
        return self

    def log_normalizer(self) -> torch.Tensor:
        """:math:`\\log\\hat Z` per group, including the weights not yet resampled."""
        N = self.num_particles
        return self.log_z + torch.logsumexp(self.log_w, -1) - math.log(N)

    def weights(self) -> torch.Tensor:
        """Normalised weights ``(G, N)``."""
        return normalize(self.log_w)


def gather(x: Any, idx: torch.Tensor) -> Any:
    """Select particles of a flat ``(G*N, ...)`` state by within-group ancestor indices ``(G, N)``."""
    G, N = idx.shape
    flat = (idx + N * torch.arange(G, device=idx.device)[:, None]).reshape(-1)
    return tree_map(lambda v: v[flat.to(v.device)], x)


def maybe_resample(x: Any, state: SMCState, *, step: int = 0, threshold: float = 0.5,
                   scheme: str = "systematic", generator=None, warn_ess: float | None = None):
    """Resample the groups whose ESS fell below ``threshold * N``.

    ``threshold=1.0`` resamples every step (ESS <= N always); ``threshold=0`` never.
    Groups that resample add :math:`\\log\\frac1N\\sum w` to ``log_z`` and reset to uniform
    weights; the others carry their weights on.

    Returns:
        ``(x, state, resampled)`` with ``resampled`` a ``(G,)`` bool mask.
    """
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must lie in [0, 1] (a fraction of N), got {threshold}")
    G, N = state.log_w.shape
    e = ess(state.log_w)
    state.ess_history.append(float(e.mean()))
    if warn_ess is not None and float(e.min()) < warn_ess * N:
        warnings.warn(f"SMC weight degeneracy at step {step}: ESS fell to {float(e.min()):.1f} of "
                      f"{N} particles; use more particles or more steps", RuntimeWarning, stacklevel=2)
    do = e <= threshold * N + 1e-9 if threshold >= 1.0 else e < threshold * N
    if not do.any():
        return x, state, do
    idx = torch.arange(N, device=state.log_w.device).expand(G, N).clone()
    idx[do] = resample(state.log_w[do], scheme, generator)
    N_log = math.log(N)
    state.log_z = torch.where(do, state.log_z + torch.logsumexp(state.log_w, -1) - N_log, state.log_z)
    state.log_w = torch.where(do[:, None], torch.zeros_like(state.log_w), state.log_w)
    state.resample_steps.append(step)
    return gather(x, idx), state, do
