"""Samplers: plain functions ``sample_<name>(denoiser, x, ts, *, generator=None, callback=None, ...)``.

Every sampler integrates from ``ts[0]`` (noise) to ``ts[-1]`` (data) and is written only in
terms of the process's :math:`\\alpha_t, \\sigma_t, \\lambda_t, f(t), g(t)` and the denoiser's
x0 / eps / score / velocity, so one implementation serves VP, sub-VP, VE, EDM and Linear.
Each is registered with its order and model evaluations per step as data
(:data:`SAMPLERS`), which the order tests read. ``callback(i, t, x)`` is called after every step.
A NaN or infinity in the state stops a sampler with the step at which it appeared.

States may be tuples/dicts of tensors with a :class:`~sciffusion.processes.JointProcess`
(each component its own SDE) in the samplers marked ``tuple_states``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from tqdm.auto import tqdm

from .schedules import check_ts, get_schedule
from .utils import bcast, check_finite, choice_error, tree_map


@dataclass(frozen=True)
class SamplerInfo:
    """Metadata a sampler declares (read by the tests and the benchmarks).

    Attributes:
        fn: the sampler function.
        order: global order of convergence (strong/pathwise for ODE solvers, weak for SDE ones).
        nfe_per_step: model evaluations per step (the first steps of multistep methods included).
        stochastic: whether it injects noise (then ``order`` is a weak order).
        tuple_states: whether tuple/dict states with a JointProcess are supported.
    """

    fn: Callable
    order: int
    nfe_per_step: int
    stochastic: bool
    tuple_states: bool = False


SAMPLERS: dict[str, SamplerInfo] = {}


def register(name: str, *, order: int, nfe_per_step: int, stochastic: bool = False,
             tuple_states: bool = False):
    """Decorator recording a sampler in :data:`SAMPLERS` and on the function itself."""

    def deco(fn):
        SAMPLERS[name] = SamplerInfo(fn, order, nfe_per_step, stochastic, tuple_states)
        fn.order, fn.nfe_per_step, fn.stochastic = order, nfe_per_step, stochastic
        return fn

    return deco


def get_sampler(name: str) -> Callable:
    """The sampler function registered under ``name`` (see :data:`SAMPLERS`)."""
    if name not in SAMPLERS:
        raise choice_error("sampler", name, SAMPLERS)
    return SAMPLERS[name].fn


def _steps(ts: torch.Tensor, progress: bool, desc: str):
    return tqdm(range(len(ts) - 1), desc=desc, disable=not progress, leave=False)


def _noise(process, x, generator):
    return process.noise_like(x, generator)


# ----------------------------------------------------------------------------------------------
# SDE samplers
# ----------------------------------------------------------------------------------------------

@register("euler_maruyama", order=1, nfe_per_step=1, stochastic=True, tuple_states=True)
def sample_euler_maruyama(denoiser, x, ts, *, generator=None, callback=None, progress=False):
    """Euler–Maruyama on the reverse SDE (Song et al. 2021, Eq. 6).

    .. math:: x_{i+1} = x_i + [f(t_i)x_i - g(t_i)^2\\nabla\\log p_{t_i}(x_i)]\\,\\Delta t
              + g(t_i)\\sqrt{|\\Delta t|}\\,z,\\qquad \\Delta t = t_{i+1}-t_i < 0
    """
    p = denoiser.process
    ts = check_ts(ts, p)
    for i in _steps(ts, progress, "euler_maruyama"):
        t, dt = ts[i], ts[i + 1] - ts[i]
        score = denoiser.score(x, t)
        f, g2 = p.f(t), p.g2(t)
        z = _noise(p, x, generator)
        x = tree_map(lambda xi, si, fi, gi, zi: xi + (bcast(fi, xi) * xi - bcast(gi, xi) * si) * dt
                     + bcast((gi * -dt).sqrt(), xi) * zi, x, score, f, g2, z)
        check_finite(x, i, "euler_maruyama")
        if callback is not None:
            callback(i, ts[i + 1], x)
    return x


# ----------------------------------------------------------------------------------------------
# Probability-flow ODE samplers
# ----------------------------------------------------------------------------------------------

@register("euler", order=1, nfe_per_step=1, tuple_states=True)
def sample_euler(denoiser, x, ts, *, generator=None, callback=None, progress=False):
    """Euler on the probability-flow ODE :math:`dx/dt = \\dot\\alpha_t x_0 + \\dot\\sigma_t\\varepsilon`."""
    ts = check_ts(ts, denoiser.process)
    for i in _steps(ts, progress, "euler"):
        dt = ts[i + 1] - ts[i]
        v = denoiser.velocity(x, ts[i])
        x = tree_map(lambda xi, vi: xi + vi * dt.to(xi.dtype), x, v)
        check_finite(x, i, "euler")
        if callback is not None:
            callback(i, ts[i + 1], x)
    return x


@register("heun", order=2, nfe_per_step=2, tuple_states=True)
def sample_heun(denoiser, x, ts, *, generator=None, callback=None, progress=False):
    """Heun's method (explicit trapezoid) on the probability-flow ODE (Karras et al. 2022, Alg. 1).

    .. math:: \\tilde x = x_i + \\Delta t\\,v(x_i, t_i),\\quad
              x_{i+1} = x_i + \\tfrac{\\Delta t}{2}[v(x_i, t_i) + v(\\tilde x, t_{i+1})]
    """
    ts = check_ts(ts, denoiser.process)
    for i in _steps(ts, progress, "heun"):
        dt = ts[i + 1] - ts[i]
        v1 = denoiser.velocity(x, ts[i])
        x_pred = tree_map(lambda xi, vi: xi + vi * dt.to(xi.dtype), x, v1)
        v2 = denoiser.velocity(x_pred, ts[i + 1])
        x = tree_map(lambda xi, a, b: xi + 0.5 * (a + b) * dt.to(xi.dtype), x, v1, v2)
        check_finite(x, i, "heun")
        if callback is not None:
            callback(i, ts[i + 1], x)
    return x


# ----------------------------------------------------------------------------------------------
# Exponential integrators
# ----------------------------------------------------------------------------------------------

@register("ddim", order=1, nfe_per_step=1, tuple_states=True)
def sample_ddim(denoiser, x, ts, *, eta: float = 0.0, generator=None, callback=None, progress=False):
    """DDIM (Song et al. 2021a, Eq. 12) in :math:`(\\alpha, \\sigma, \\lambda)` form.

    .. math:: x_{i+1} = \\alpha_{i+1}\\hat x_0 + \\sqrt{\\sigma_{i+1}^2 - c^2}\\,\\hat\\varepsilon + c\\,z,
              \\qquad c^2 = -\\eta^2\\sigma_{i+1}^2\\,\\mathrm{expm1}(2(\\lambda_i - \\lambda_{i+1}))

    ``eta=0`` is deterministic (first-order exponential integrator of the PF-ODE); ``eta=1`` is
    ancestral DDPM sampling.
    """
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    p = denoiser.process
    ts = check_ts(ts, p)
    for i in _steps(ts, progress, "ddim"):
        t, tn = ts[i], ts[i + 1]
        x0, eps = denoiser.predict(x, t)
        a_n, s_n = p.alpha(tn), p.sigma(tn)
        c2 = tree_map(lambda sn, l0, l1: -(eta ** 2) * sn * sn * torch.expm1(2 * (l0 - l1)),
                      s_n, p.lam(t), p.lam(tn))
        z = _noise(p, x, generator) if eta > 0 else tree_map(torch.zeros_like, x)
        x = tree_map(lambda x0i, ei, zi, ai, si, ci: bcast(ai, x0i) * x0i + bcast((si * si - ci).sqrt(), ei) * ei
                     + bcast(ci.sqrt(), zi) * zi, x0, eps, z, a_n, s_n, c2)
        check_finite(x, i, "ddim")
        if callback is not None:
            callback(i, tn, x)
    return x


# ----------------------------------------------------------------------------------------------
# Front door
# ----------------------------------------------------------------------------------------------

def sample(denoiser, x_or_shape: Any, *, sampler: str = "dpmpp_2m", num_steps: int = 20,
           schedule: str = "logsnr", ts: Any = None, generator: torch.Generator | None = None,
           callback: Callable | None = None, progress: bool = False, dtype=torch.float32,
           device=None, **options) -> Any:
    """Draw samples: prior noise (or a given ``x``) integrated to the data end of the grid.

    Args:
        denoiser: a :class:`~sciffusion.denoisers.Denoiser`.
        x_or_shape: the starting state at ``ts[0]``, or a shape (tuple of shapes for a tuple
            state) to draw from the process's prior.
        sampler: a name in :data:`SAMPLERS`.
        num_steps: steps of the grid when ``ts`` is not given (NFE = steps x nfe_per_step).
        schedule: grid name for :func:`~sciffusion.schedules.get_schedule`.
        ts: an explicit decreasing time grid (overrides ``num_steps``/``schedule``).
        generator: the only source of randomness (prior and sampler noise).
        options: forwarded to the sampler (e.g. ``eta`` for DDIM, ``order`` for UniPC).

    Returns:
        The state at ``ts[-1]``.
    """
    fn = get_sampler(sampler)
    info = SAMPLERS[sampler]
    p = denoiser.process
    if ts is None:
        ts = get_schedule(schedule)(p, num_steps)
    ts = check_ts(ts, p)
    if isinstance(x_or_shape, torch.Tensor) or (isinstance(x_or_shape, (tuple, list, dict))
                                                and x_or_shape and not isinstance(_first(x_or_shape), int)):
        x = x_or_shape
        if isinstance(x, torch.Tensor) and x.dtype not in (torch.float16, torch.bfloat16, torch.float32,
                                                           torch.float64):
            raise TypeError(f"x must be a floating-point tensor, got {x.dtype}")
    else:
        if isinstance(p, type(p)) and hasattr(p, "processes"):
            x = p.prior_sample(x_or_shape, generator, dtype, device)
        else:
            x = p.prior_sample(tuple(x_or_shape), generator, dtype, device)
    if not info.tuple_states and not isinstance(x, torch.Tensor):
        raise TypeError(f"sampler {sampler!r} supports tensor states only; for tuple states use one of "
                        f"{sorted(k for k, v in SAMPLERS.items() if v.tuple_states)}")
    return fn(denoiser, x, ts, generator=generator, callback=callback, progress=progress, **options)


def _first(tree):
    if isinstance(tree, dict):
        return next(iter(tree.values()))
    return tree[0]
