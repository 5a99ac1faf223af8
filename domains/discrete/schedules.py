"""Noise schedules for discrete diffusion: :math:`\\alpha_t`, its derivative and its inverse.

:math:`\\alpha_t` is the probability that a token is still clean at time ``t`` (data at t=0,
noise at t=1): masked diffusion keeps a token with probability :math:`\\alpha_t` and masks it
otherwise; uniform diffusion keeps it or redraws it uniformly. Every schedule is decreasing
with :math:`\\alpha_0 = 1` and :math:`\\alpha_1 = 0` (up to ``eps`` for the geometric one), and
answers ``alpha(t)``, ``d_alpha(t)`` and ``t_of_alpha(a)`` in float64.

The continuous-time masked ELBO weight is :math:`-\\alpha'_t / (1 - \\alpha_t)`
(Sahoo et al. 2024, Eq. 10; Shi et al. 2024, Eq. 5), which is :math:`1/t` for the log-linear schedule.
"""

from __future__ import annotations

import math

import torch

from sciffusion.utils import as_time, choice_error

__all__ = ["DiscreteSchedule", "LogLinear", "Cosine", "Geometric", "get_discrete_schedule", "SCHEDULES"]


class DiscreteSchedule:
    """Base class: subclasses define ``alpha``, ``d_alpha`` and ``t_of_alpha`` (float64)."""

    name = "base"

    def alpha(self, t) -> torch.Tensor:
        raise NotImplementedError

    def d_alpha(self, t) -> torch.Tensor:
        raise NotImplementedError

    def t_of_alpha(self, a) -> torch.Tensor:
        raise NotImplementedError

    def elbo_weight(self, t) -> torch.Tensor:
        """:math:`-\\alpha'_t / (1 - \\alpha_t)`, the rate at which a clean token gets masked."""
        t = as_time(t)
        return -self.d_alpha(t) / (1.0 - self.alpha(t))

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class LogLinear(DiscreteSchedule):
    """:math:`\\alpha_t = 1 - t` (total noise :math:`-\\log(1-t)`; Lou et al. 2024, Sahoo et al. 2024)."""

    name = "loglinear"

    def alpha(self, t):
        return 1.0 - as_time(t)

    def d_alpha(self, t):
        return -torch.ones_like(as_time(t))

    def t_of_alpha(self, a):
        return 1.0 - as_time(a)

    def elbo_weight(self, t):
        return 1.0 / as_time(t)


class Cosine(DiscreteSchedule):
    """:math:`\\alpha_t = \\cos(\\pi t / 2)` (Shi et al. 2024, Table 4)."""

    name = "cosine"

    def alpha(self, t):
        return torch.cos(0.5 * math.pi * as_time(t))

    def d_alpha(self, t):
        return -0.5 * math.pi * torch.sin(0.5 * math.pi * as_time(t))

    def t_of_alpha(self, a):
        return torch.arccos(as_time(a).clamp(0.0, 1.0)) * (2.0 / math.pi)


class Geometric(DiscreteSchedule):
    """:math:`\\alpha_t = \\exp(-\\bar\\sigma_t)`, :math:`\\bar\\sigma_t = \\sigma_{\\min}^{1-t}\\sigma_{\\max}^{t}`
    (Lou et al. 2024, SEDD). :math:`\\alpha_0 = e^{-\\sigma_{\\min}}`, :math:`\\alpha_1 = e^{-\\sigma_{\\max}}`.
    """

    name = "geometric"

    def __init__(self, sigma_min: float = 1e-4, sigma_max: float = 20.0):
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)
        self.log_ratio = math.log(sigma_max / sigma_min)

    def _sigma(self, t):
        return self.sigma_min * torch.exp(as_time(t) * self.log_ratio)

    def alpha(self, t):
        return torch.exp(-self._sigma(t))

    def d_alpha(self, t):
        s = self._sigma(t)
        return -torch.exp(-s) * s * self.log_ratio

    def t_of_alpha(self, a):
        s = -torch.log(as_time(a))
        return torch.log(s / self.sigma_min) / self.log_ratio

    def elbo_weight(self, t):
        s = self._sigma(t)
        return s * self.log_ratio / torch.expm1(s)  # -a'/(1-a) with a = e^{-s}, stable for small s

    def __repr__(self):
        return f"Geometric(sigma_min={self.sigma_min}, sigma_max={self.sigma_max})"


SCHEDULES = {"loglinear": LogLinear, "cosine": Cosine, "geometric": Geometric}


def get_discrete_schedule(schedule) -> DiscreteSchedule:
    """A schedule from its name (``loglinear``, ``cosine``, ``geometric``) or an instance."""
    if isinstance(schedule, DiscreteSchedule):
        return schedule
    if schedule not in SCHEDULES:
        raise choice_error("discrete schedule", schedule, SCHEDULES)
    return SCHEDULES[schedule]()
