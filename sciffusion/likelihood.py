"""Exact log-likelihood through the probability-flow ODE.

Along the probability-flow ODE :math:`\\dot x = v(x, t) = \\dot\\alpha_t\\hat x_0 + \\dot\\sigma_t\\hat\\varepsilon`
the density obeys the instantaneous change of variables (Chen et al. 2018, Thm. 1):

.. math:: \\frac{d}{dt}\\log p_t(x_t) = -\\nabla\\cdot v(x_t, t)

so integrating the pair :math:`(x_t, \\Delta_t)` with :math:`\\dot\\Delta = \\nabla\\cdot v` forward from
:math:`t_{min}` (the data point) to :math:`t_{max}` gives (Song et al. 2021, Eq. 39 / App. D.2)

.. math:: \\log p_{t_{min}}(x) = \\log p_{t_{max}}(x_{t_{max}}) + \\int_{t_{min}}^{t_{max}}\\nabla\\cdot v(x_t, t)\\,dt.

Two approximations sit in this number, and the docstring of :func:`log_likelihood` says how to
control each: ``log p_{t_max}`` is replaced by the process's prior :meth:`Process.prior_logp`
(pass ``prior_logp=`` for another one), and the density returned is that of :math:`x_{t_{min}}`,
the slightly noised data, not of :math:`x_0` itself (the grid cannot start at :math:`t=0` where
:math:`\\lambda` is infinite).

The divergence is computed exactly (one vector-Jacobian product per dimension, autograd) or by
Hutchinson's estimator :math:`\\nabla\\cdot v \\approx z^\\top (\\partial v/\\partial x) z` with
:math:`\\mathbb E[zz^\\top] = I` (Rademacher or Gaussian :math:`z`, drawn once per solve as in
FFJORD, Grathwohl et al. 2019, so that the integrand is a smooth function of t). Since the
trajectory :math:`x_t` does not depend on :math:`z`, the Hutchinson result is an unbiased estimate
of the exact-trace result *of the same discretisation*.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from .denoisers import Denoiser
from .schedules import get_schedule
from .utils import choice_error

METHODS = ("rk4", "heun", "dopri5")
TRACES = ("auto", "exact", "hutchinson")
NOISES = ("rademacher", "gaussian")


@dataclass
class LikelihoodResult:
    """What :func:`log_likelihood` returns (all float64, per sample).

    Attributes:
        logp: :math:`\\log p_{t_{min}}(x)` in nats, ``(B,)``.
        bpd: bits per dimension :math:`-\\log p/(d\\ln 2)` (plus the dequantisation offset when
            ``bin_width`` was given), ``(B,)``.
        prior_logp: :math:`\\log p_{t_{max}}(x_{t_{max}})` under the prior used, ``(B,)``.
        delta_logp: :math:`\\int\\nabla\\cdot v\\,dt`, ``(B,)``.
        x_T: the ODE's end point at ``t_max``, shaped like ``x``.
        nfe: model evaluations spent (each with ``d`` or ``num_probes`` backward passes).
    """

    logp: torch.Tensor
    bpd: torch.Tensor
    prior_logp: torch.Tensor
    delta_logp: torch.Tensor
    x_T: torch.Tensor
    nfe: int


def bits_per_dim(logp: torch.Tensor, dim: int, bin_width: float | None = None) -> torch.Tensor:
    """Bits per dimension of a log-density in nats.

    .. math:: \\mathrm{bpd} = -\\frac{\\log p(x) + d\\log\\Delta}{d\\ln 2}

    For data quantised into bins of width :math:`\\Delta` (in the units the model sees) and
    uniformly dequantised, :math:`x = \\Delta(k + u)`, the probability of the bin is
    :math:`P(k) \\approx p(x)\\Delta^d`, and by Jensen
    :math:`-\\log P(k) \\le \\mathbb E_u[-\\log p(\\Delta(k+u))] - d\\log\\Delta`, so the value is an upper
    bound on the discrete bits/dim (Theis et al. 2016). 8-bit data scaled to [0, 1]:
    ``bin_width=1/256`` (offset +8 bits); scaled to [-1, 1]: ``bin_width=2/256`` (offset +7 bits).
    ``bin_width=None`` gives the continuous density's bits/dim (no offset).

    Args:
        logp: log-density in nats, any shape.
        dim: number of dimensions ``d`` per sample: an int, or a tensor broadcastable against
            ``logp`` (per-sample degrees of freedom of a constrained state).
        bin_width: quantisation bin width :math:`\\Delta`, or ``None``.
    """
    if isinstance(dim, torch.Tensor) and not isinstance(dim, bool):
        if dim.numel() == 0 or not bool((dim >= 1).all()):
            raise ValueError(f"dim must be positive, got {dim}")
        dim = dim.to(torch.float64)
    elif not isinstance(dim, int) or dim < 1:
        raise ValueError(f"dim must be a positive int, got {dim!r}")
    offset = 0.0
    if bin_width is not None:
        if not bin_width > 0:
            raise ValueError(f"bin_width must be positive, got {bin_width}")
        offset = dim * math.log(bin_width)
    return -(torch.as_tensor(logp, dtype=torch.float64) + offset) / (dim * math.log(2.0))


def _probes(shape, num_probes, noise, generator, device):
    """``(K, B, ...)`` probe vectors with E[z z^T] = I (float64)."""
    full = (num_probes,) + tuple(shape)
    if noise == "gaussian":
        return torch.randn(full, generator=generator, dtype=torch.float64, device=device)
    return torch.randint(0, 2, full, generator=generator, device=device).to(torch.float64) * 2 - 1


def _make_rhs(denoiser: Denoiser, probes, model_dtype, project=None) -> Callable:
    """``rhs(t, x) -> (v, div v)`` in float64; ``probes=None`` for the exact trace. With ``project``
    (the orthogonal projection P of a constrained process) the exact trace is the trace on the
    subspace, :math:`\\mathrm{tr}(PJP) = \\sum_i (Pe_i)^\\top J (Pe_i)`."""

    def rhs(t, x):
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            v = denoiser.velocity(xg.to(model_dtype), t).to(torch.float64)
            if probes is None and project is not None:
                D = x[0].numel()
                div = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
                eye = torch.zeros((D,) + tuple(x.shape[1:]), dtype=torch.float64, device=x.device)
                eye.view(D, D).copy_(torch.eye(D, dtype=torch.float64, device=x.device))
                for i in range(D):
                    u = project(eye[i].expand(x.shape).contiguous())
                    if not bool(u.any()):
                        continue  # a direction wholly outside the subspace (a diagonal entry)
                    (g,) = torch.autograd.grad((v * u).sum(), xg, retain_graph=True, allow_unused=True)
                    if g is not None:
                        div = div + (g * u).flatten(1).sum(1)
            elif probes is None:
                vf = v.flatten(1)
                d = vf.shape[1]
                div = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
                for i in range(d):
                    (g,) = torch.autograd.grad(vf[:, i].sum(), xg, retain_graph=i < d - 1, allow_unused=True)
                    if g is not None:
                        div = div + g.flatten(1)[:, i]
            else:
                K = probes.shape[0]
                div = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
                for k in range(K):
                    (g,) = torch.autograd.grad((v * probes[k]).sum(), xg, retain_graph=k < K - 1,
                                               allow_unused=True)
                    if g is not None:
                        div = div + (g * probes[k]).flatten(1).sum(1)
                div = div / K
        return v.detach(), div.detach()

    return rhs


def _check_differentiable(denoiser: Denoiser, x, t, model_dtype) -> None:
    """One direct model call on a single row: its raw output must carry a gradient w.r.t. x.

    (The velocity alone cannot tell: the parameterization's conversion is linear in x, so a
    detached model would still give a differentiable, wrong, velocity.)
    """
    with torch.enable_grad():
        xg = x[:1].detach().to(model_dtype).requires_grad_(True)
        out = denoiser.model(xg, torch.full((1,), float(t), dtype=model_dtype, device=x.device))
    if not (isinstance(out, torch.Tensor) and out.requires_grad):
        raise ValueError("log_likelihood needs a model differentiable in x (autograd through the model); "
                         "its output carries no gradient")


def _check(v, div, step, t):
    if not (torch.isfinite(v).all() and torch.isfinite(div).all()):
        raise FloatingPointError(f"log_likelihood: NaN or inf in the velocity or its divergence at step {step} "
                                 f"(t={float(t):.6g}); check the model and the ends of the time grid")


def _fixed_step(rhs, x, ts, method):
    """RK4 or Heun on (x, Delta) over the increasing grid ``ts`` (float64)."""
    delta = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
    for i in range(len(ts) - 1):
        t, h = ts[i], ts[i + 1] - ts[i]
        v1, d1 = rhs(t, x)
        _check(v1, d1, i, t)
        if method == "heun":
            v2, d2 = rhs(ts[i + 1], x + h * v1)
            x, delta = x + 0.5 * h * (v1 + v2), delta + 0.5 * h * (d1 + d2)
        else:  # classical RK4
            v2, d2 = rhs(t + h / 2, x + (h / 2) * v1)
            v3, d3 = rhs(t + h / 2, x + (h / 2) * v2)
            v4, d4 = rhs(ts[i + 1], x + h * v3)
            x = x + (h / 6) * (v1 + 2 * v2 + 2 * v3 + v4)
            delta = delta + (h / 6) * (d1 + 2 * d2 + 2 * d3 + d4)
        if not (torch.isfinite(x).all() and torch.isfinite(delta).all()):
            raise FloatingPointError(f"log_likelihood: NaN or inf in the state at step {i} (t={float(t):.6g})")
    return x, delta


def _dopri5(rhs, x, t_lo, t_hi, rtol, atol):
    try:
        from torchdiffeq import odeint
    except ImportError as e:  # optional dependency
        raise ImportError("method='dopri5' needs torchdiffeq: pip install torchdiffeq") from e

    def f(t, state):
        v, div = rhs(t, state[0])
        _check(v, div, "(adaptive)", t)
        return v, div

    delta0 = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
    tt = torch.tensor([t_lo, t_hi], dtype=torch.float64, device=x.device)
    xs, ds = odeint(f, (x, delta0), tt, rtol=rtol, atol=atol, method="dopri5")
    return xs[-1], ds[-1]


def log_likelihood(denoiser: Denoiser, x: torch.Tensor, *, method: str = "rk4", num_steps: int = 64,
                   schedule: str = "logsnr", trace: str = "auto", exact_max_dim: int = 64,
                   num_probes: int = 1, noise: str = "rademacher", generator: torch.Generator | None = None,
                   t_min: float | None = None, t_max: float | None = None,
                   prior_logp: Callable[[torch.Tensor], torch.Tensor] | None = None,
                   bin_width: float | None = None, rtol: float = 1e-6, atol: float = 1e-8,
                   model_dtype: torch.dtype | None = None) -> LikelihoodResult:
    """Log-likelihood of ``x`` under the model's probability-flow ODE, in nats and bits/dim.

    .. math:: \\log p_{t_{min}}(x) = \\log \\pi(x_{t_{max}}) + \\int_{t_{min}}^{t_{max}}\\nabla\\cdot v(x_t, t)\\,dt,
              \\qquad \\dot x_t = v(x_t, t),\\ x_{t_{min}} = x

    (Song et al. 2021, App. D.2, Eq. 39; Chen et al. 2018, Eq. 4). The pair
    :math:`(x_t, \\Delta_t)` is integrated forward in time, in float64, with classical RK4 or
    Heun on the ``schedule`` grid (reversed, so it runs data -> noise; the default logSNR grid
    puts the small steps near :math:`t_{min}` where :math:`\\dot\\sigma_t` is largest), or with
    adaptive Dormand–Prince (``dopri5``, torchdiffeq) at tolerances ``rtol``/``atol``.

    What the number means, and its two known gaps:

    * it is the density of :math:`x` *at* :math:`t_{min}` (the data noised to
      :math:`\\sigma_{t_{min}}`). For data with a density this differs from :math:`\\log p_0(x)` by
      :math:`O(\\sigma_{t_{min}}^2)`; test it against the exact :math:`\\log p_{t_{min}}`.
    * :math:`\\pi` is the process's prior :math:`N(0, s^2 I)` (:meth:`Process.prior_logp`)
      unless ``prior_logp`` is given; the error is :math:`\\log p_{t_{max}}(x_T) - \\log\\pi(x_T)`
      (for VP with :math:`\\beta_{max}=20`, :math:`\\alpha_{t_{max}}\\approx 6.6\\cdot10^{-3}`, tiny).

    With a constrained process (:mod:`sciffusion.constraints`) ``x`` is projected onto the
    subspace, the divergence is the trace on it (exact: :math:`\\mathrm{tr}(PJP)` over the projected
    unit vectors; Hutchinson: projected probes, :math:`\\mathbb E[zz^\\top] = P`), the prior is the
    constrained one and ``bpd`` divides by the per-sample ``dof``: ``logp`` is the density on the
    subspace in the coordinates of the constraint's noise law (edge variables :math:`u_{ij}, i<j`
    of an adjacency; orthonormal coordinates for a zero centre of mass). This needs ``project`` to
    be the orthogonal projection, as it is for the built-in constraints.

    Args:
        denoiser: a :class:`~sciffusion.denoisers.Denoiser` (any parameterization) whose model is
            differentiable in ``x`` and treats batch rows independently (no batch norm).
        x: ``(B, ...)`` points (tensor state). Integration runs in float64; the model is called
            in ``model_dtype`` (default: the dtype of the model's parameters when it is an
            ``nn.Module``, else ``x``'s dtype).
        method: ``rk4`` (4 NFE/step), ``heun`` (2 NFE/step) or ``dopri5`` (adaptive).
        num_steps: steps of the fixed-step grid.
        schedule: grid name (see :func:`~sciffusion.schedules.get_schedule`).
        trace: ``exact`` (d backward passes per evaluation), ``hutchinson`` (``num_probes``
            backward passes) or ``auto`` (exact when :math:`d \\le` ``exact_max_dim``).
        num_probes: Hutchinson probes per sample, averaged.
        noise: ``rademacher`` (lower variance) or ``gaussian`` probes.
        generator: source of the Hutchinson probes.
        t_min, t_max: integration interval (default: the process's ends).
        prior_logp: ``x_T -> (B,)`` log-density at ``t_max`` (default ``process.prior_logp``).
        bin_width: quantisation bin width for the dequantisation offset of ``bpd``
            (see :func:`bits_per_dim`); ``None`` for none.
        rtol, atol: dopri5 tolerances.

    Returns:
        :class:`LikelihoodResult` with ``logp`` (nats) and ``bpd`` per sample.

    Shapes:
        x: ``(B, *dims)`` -> logp, bpd: ``(B,)``, with :math:`d = \\prod` dims.
    """
    if not isinstance(denoiser, Denoiser):
        raise TypeError(f"denoiser must be a sciffusion Denoiser, got {type(denoiser).__name__}")
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a tensor of shape (B, ...) (tuple states are not supported), "
                        f"got {type(x).__name__}")
    if not x.is_floating_point() or x.ndim < 2 or x.shape[0] == 0:
        raise ValueError(f"x must be a floating-point tensor of shape (B, ...) with B >= 1, got "
                         f"{x.dtype} of shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError("x contains NaN or inf")
    if method not in METHODS:
        raise choice_error("method", method, METHODS)
    if trace not in TRACES:
        raise choice_error("trace", trace, TRACES)
    if noise not in NOISES:
        raise choice_error("noise", noise, NOISES)
    if not isinstance(num_probes, int) or num_probes < 1:
        raise ValueError(f"num_probes must be a positive int, got {num_probes!r}")
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive int, got {num_steps!r}")
    p = denoiser.process
    lo = float(p.t_min if t_min is None else t_min)
    hi = float(p.t_max if t_max is None else t_max)
    if not 0.0 <= lo < hi <= float(p.T) * (1 + 1e-12):
        raise ValueError(f"need 0 <= t_min < t_max <= T={p.T}, got t_min={lo}, t_max={hi}")
    if not (torch.isfinite(p.lam(lo)) and torch.isfinite(p.lam(hi))):
        raise ValueError(f"lambda(t) is infinite at t_min={lo} or t_max={hi} for {p!r} (alpha or sigma vanishes "
                         f"there); integrate over [{p.t_min}, {p.t_max}] or another interval inside (0, T)")
    d = x[0].numel()
    use_exact = trace == "exact" or (trace == "auto" and d <= exact_max_dim)
    x64 = x.detach().to(torch.float64)
    project = p.project if getattr(p, "constrained", False) else None
    if project is not None:
        x64 = project(x64)
        dof = p.constraint.dof(x64).to(device=x.device)
    probes = None if use_exact else _probes(x.shape, num_probes, noise, generator, x.device)
    if probes is not None and project is not None:
        probes = torch.stack([project(z) for z in probes])  # E[z z^T] = P: the trace on the subspace
    if model_dtype is None:
        params = list(denoiser.model.parameters()) if isinstance(denoiser.model, torch.nn.Module) else []
        model_dtype = params[0].dtype if params else x.dtype
    rhs = _make_rhs(denoiser, probes, model_dtype, project)
    _check_differentiable(denoiser, x64, lo, model_dtype)
    nfe0 = denoiser.nfe
    if method == "dopri5":
        x_T, delta = _dopri5(rhs, x64, lo, hi, rtol, atol)
    else:
        ts = get_schedule(schedule)(p, num_steps, t_max=hi, t_min=lo).flip(0)
        x_T, delta = _fixed_step(rhs, x64, ts, method)
    prior = (prior_logp or p.prior_logp)(x_T)
    prior = torch.as_tensor(prior, dtype=torch.float64).reshape(-1)
    if prior.shape[0] != x.shape[0] or not torch.isfinite(prior).all():
        raise ValueError(f"prior_logp must return {x.shape[0]} finite values, got shape {tuple(prior.shape)}")
    logp = prior + delta
    return LikelihoodResult(logp=logp, bpd=bits_per_dim(logp, d if project is None else dof, bin_width),
                            prior_logp=prior,
                            delta_logp=delta, x_T=x_T.to(x.dtype), nfe=denoiser.nfe - nfe0)


__all__ = ["log_likelihood", "bits_per_dim", "LikelihoodResult", "METHODS", "TRACES"]
