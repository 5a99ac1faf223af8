"""Time grids ``ts``: 1-D float64 tensors decreasing from ``t_max`` (noise) to ``t_min`` (data).

* ``time_uniform`` — uniform in t.
* ``quadratic`` — uniform in :math:`\\sqrt t` (denser near the data, as in DDIM's quadratic grid).
* ``logsnr_uniform`` — uniform in :math:`\\lambda` (DPM-Solver's recommended grid).
* ``karras`` — uniform in :math:`\\tilde\\sigma^{1/\\rho}` with :math:`\\tilde\\sigma = e^{-\\lambda}`
  (Karras et al. 2022, Eq. 5), mapped back through :math:`t(\\lambda)` so it serves every process.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .utils import choice_error, tree_leaves


def _ends(process, t_max, t_min):
    t_max = float(process.t_max if t_max is None else t_max)
    t_min = float(process.t_min if t_min is None else t_min)
    if not t_max > t_min:
        raise ValueError(f"t_max ({t_max}) must exceed t_min ({t_min})")
    return t_max, t_min


def _single(process, name):
    if hasattr(process, "processes"):
        raise ValueError(f"the {name} grid is defined by one process's lambda(t); a JointProcess has one "
                         "lambda per component: use time_uniform or quadratic, or build the grid from one "
                         "component, e.g. logsnr_uniform(joint.processes[0], n)")


def _check_steps(num_steps):
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive int, got {num_steps!r}")


def time_uniform(process, num_steps: int, t_max: float | None = None, t_min: float | None = None):
    """``num_steps + 1`` times uniform in t from ``t_max`` down to ``t_min``."""
    _check_steps(num_steps)
    hi, lo = _ends(process, t_max, t_min)
    return torch.linspace(hi, lo, num_steps + 1, dtype=torch.float64)


def quadratic(process, num_steps: int, t_max: float | None = None, t_min: float | None = None):
    """Uniform in :math:`\\sqrt{t - t_{min}}` (denser near the data)."""
    _check_steps(num_steps)
    hi, lo = _ends(process, t_max, t_min)
    u = torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64)
    return lo + (hi - lo) * u * u


def logsnr_uniform(process, num_steps: int, t_max: float | None = None, t_min: float | None = None):
    """Uniform in :math:`\\lambda_t` (Lu et al. 2022, Sec. 3.3)."""
    _check_steps(num_steps)
    _single(process, "logsnr")
    hi, lo = _ends(process, t_max, t_min)
    lams = torch.linspace(float(process.lam(hi)), float(process.lam(lo)), num_steps + 1, dtype=torch.float64)
    ts = process.t_of_lam(lams)
    ts[0], ts[-1] = hi, lo  # exact ends despite round-off in t(lambda(t))
    return ts


def karras(process, num_steps: int, t_max: float | None = None, t_min: float | None = None, rho: float = 7.0):
    """Karras et al. (2022) Eq. 5 in :math:`\\tilde\\sigma = e^{-\\lambda}`: uniform in :math:`\\tilde\\sigma^{1/\\rho}`."""
    _check_steps(num_steps)
    _single(process, "karras")
    if rho <= 0:
        raise ValueError(f"rho must be positive, got {rho}")
    hi, lo = _ends(process, t_max, t_min)
    s_hi, s_lo = float(torch.exp(-process.lam(hi))), float(torch.exp(-process.lam(lo)))
    u = torch.linspace(0.0, 1.0, num_steps + 1, dtype=torch.float64)
    s = (s_hi ** (1 / rho) + u * (s_lo ** (1 / rho) - s_hi ** (1 / rho))) ** rho
    ts = process.t_of_lam(-torch.log(s))
    ts[0], ts[-1] = hi, lo
    return ts


SCHEDULES = {"time_uniform": time_uniform, "uniform": time_uniform, "quadratic": quadratic,
             "logsnr": logsnr_uniform, "logsnr_uniform": logsnr_uniform, "karras": karras}


def get_schedule(name: str):
    """A grid function by name (``time_uniform``, ``quadratic``, ``logsnr``, ``karras``)."""
    if name not in SCHEDULES:
        raise choice_error("schedule", name, SCHEDULES)
    return SCHEDULES[name]


def check_ts(ts: Any, process=None) -> torch.Tensor:
    """Validate a time grid: 1-D, at least 2 points, finite, strictly decreasing, inside [0, T].

    Returns the grid as a float64 tensor; raises ``ValueError`` saying what is wrong.
    """
    ts = torch.as_tensor(ts, dtype=torch.float64)
    if ts.ndim != 1 or ts.numel() < 2:
        raise ValueError(f"ts must be a 1-D grid of at least 2 times, got shape {tuple(ts.shape)}")
    v = ts.tolist()  # checked as Python floats: no tensor op per check (this runs on every sampler call)
    if not all(math.isfinite(a) for a in v):
        raise ValueError("ts contains NaN or infinite times")
    i = next((i for i in range(len(v) - 1) if not v[i + 1] < v[i]), None)
    if i is not None:
        raise ValueError(f"ts must decrease strictly from noise (t_max) to data (t_min); "
                         f"ts[{i}]={v[i]:.6g} <= ts[{i + 1}]={v[i + 1]:.6g}")
    if process is not None:
        lo, hi = 0.0, float(process.T)
        if v[-1] < lo or v[0] > hi * (1 + 1e-12):
            raise ValueError(f"ts must lie in [{lo}, {hi}] for {process!r}; got [{v[-1]:.6g}, {v[0]:.6g}]")
        if not all(torch.isfinite(lam).all() for lam in tree_leaves(process.lam(ts))):
            raise ValueError(f"lambda(t) is infinite on this grid for {process!r}: keep ts inside "
                             f"[{process.t_min}, {process.t_max}] (alpha or sigma vanishes at the ends)")
    return ts
