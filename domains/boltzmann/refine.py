r"""Resample-move refinement of weighted samples: one systematic resampling, then
Metropolis-adjusted Langevin (MALA) moves that leave the target invariant.

**Target.** The reduced energy :math:`u(x)` of an :class:`~.energies.Energy` plus an optional
frozen CV bias :math:`v(x) = V(s(x))/k_BT` (a :class:`~.bias.WellTemperedBias`), i.e.
:math:`\pi(x) \propto e^{-\Pi(x)}`, :math:`\Pi = u + v`, restricted to ``valid(x)`` when given.

**MALA** (Roberts & Tweedie 1996; Besag 1994). With the force :math:`F = -\nabla\Pi` and step
:math:`h`, the proposal and its log-density are

.. math:: x' = x + h F(x) + \sqrt{2h}\,\xi,\ \xi \sim \mathcal N(0, I),\qquad
          \log q(x' \mid x) = -\frac{\lVert x' - x - hF(x)\rVert^2}{4h} + \text{const},

accepted with probability

.. math:: \alpha = \min\Big(1,\ \exp\big(\Pi(x) - \Pi(x') + \log q(x \mid x') - \log q(x' \mid x)\big)\Big).

A proposal outside ``valid`` is rejected without an energy call (:math:`\pi = 0` there). The
acceptance uses :math:`\Pi` itself, so the kernel is exactly :math:`\pi`-invariant whatever the
force's accuracy (the bias grid's force comes from interpolated gradient grids, not from the
derivative of the interpolated value: that only lowers the acceptance).

**Why resample-move is exact** (Gilks & Berzuini 2001; Chopin 2002). Weighted particles
:math:`(x_i, w_i)` with :math:`\sum_i w_i f(x_i)/\sum_i w_i \to \pi(f)` (importance weights
:math:`w = \pi/q` of any proposal :math:`q`, e.g. an adjoint sampler's path weights) are resampled
into equally weighted ones (:func:`sciffusion.smc.resample`, systematic: each particle's expected
number of copies is :math:`N w_i/\sum_j w_j`) and each is then moved by a :math:`\pi`-invariant kernel
:math:`K`: if :math:`x \sim \pi` then :math:`x' \sim K(x, \cdot)` is again :math:`\sim\pi`, so the moved
population still targets :math:`\pi`, while the moves replace the duplicated copies by distinct
points and relax the sampler's local errors. The estimates are *consistent* as
:math:`N \to \infty`, not unbiased for finite :math:`N`; the moves cannot restore mass that the
weighted particles lack (a basin with no weighted particle stays empty: MALA does not cross
barriers of many kT in a few hundred steps). With a bias, the moved particles target
:math:`e^{-(u+v)}` and carry the log-weights :math:`v(x)` back to :math:`e^{-u}`
(:func:`~.bias.log_importance_weights`), now exact because their law is the biased target.

**Step size.** ``step_size=None`` adapts :math:`h` during the first ``adapt_fraction`` of the
steps to a population acceptance near 0.574 (the optimal MALA rate, Roberts & Rosenthal 1998),
:math:`\log h \leftarrow \log h + (\bar\alpha - 0.574)`, then freezes it. During adaptation
:math:`h` depends on the population's last acceptance (adaptive SMC, Fearnhead & Taylor 2013);
every step after it uses one fixed :math:`h`, so those steps are exactly :math:`\pi`-invariant.

Cost: one energy+force call per particle to start, one per valid proposal per step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
from tqdm.auto import tqdm

from sciffusion import smc

from .bias import log_importance_weights
from .sampler import energy_and_forces
from .wtasbs import BiasPotential, _valid_mask

__all__ = ["RefineResult", "mala", "mala_step", "resample_move"]

TARGET_ACCEPTANCE = 0.574


@dataclass
class RefineResult:
    """What :func:`mala` and :func:`resample_move` return.

    Attributes:
        x: ``(N, *event_shape)`` the moved particles (float64).
        log_weights: ``(N,)`` log-weights for :math:`e^{-u}`: :math:`v(x)` with a bias, zeros without.
        energies: ``(N,)`` reduced energies :math:`u(x)` (without the bias).
        bias_values: ``(N,)`` :math:`v(x) = V(s(x))/k_BT` (zeros without a bias).
        acceptance: ``(num_steps,)`` the population's acceptance rate at each step.
        acceptance_rate: mean acceptance over the steps with the frozen step size.
        step_size: the (final, frozen) :math:`h`.
        energy_calls: energy+force calls made here (configurations evaluated).
        ancestors: ``(N,)`` resampled indices into the input (identity for :func:`mala`).
    """

    x: torch.Tensor
    log_weights: torch.Tensor
    energies: torch.Tensor
    bias_values: torch.Tensor
    acceptance: torch.Tensor
    acceptance_rate: float
    step_size: float
    energy_calls: int
    ancestors: torch.Tensor


def _check_x(energy: Any, x: Any) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or not torch.is_floating_point(x):
        raise TypeError(f"x must be a floating-point tensor, got {type(x).__name__}")
    es = tuple(getattr(energy, "event_shape", x.shape[1:]))
    if x.ndim != len(es) + 1 or tuple(x.shape[1:]) != es or x.shape[0] < 1:
        raise ValueError(f"x must have shape (N, {', '.join(map(str, es))}) with N >= 1 "
                         f"(particles, *energy.event_shape), got {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        i = int((~torch.isfinite(x)).flatten(1).any(1).nonzero()[0])
        raise ValueError(f"x has a non-finite value at particle {i}")
    return x.detach().to(torch.float64).clone()  # moved in place below; never the caller's tensor


def _evaluate(energy, potential, x):
    """:math:`u`, :math:`v` and the force :math:`-\\nabla(u + v)` of a batch."""
    u, f = energy_and_forces(energy, x)
    if potential is None:
        return u, torch.zeros_like(u), f
    v, fv = energy_and_forces(potential, x)  # the bias as a differentiable potential; non-finite frames reported
    return u, v, f + fv


def mala_step(x: torch.Tensor, state: dict, h: float, evaluate: Callable, generator: torch.Generator,
              valid: Callable | None = None) -> tuple[torch.Tensor, int]:
    r"""One MALA step of every particle on :math:`e^{-\Pi}` (module docstring), in place.

    Args:
        x: ``(N, *event_shape)`` particles, replaced where the proposal is accepted.
        state: per-particle tensors of ``x``: ``"pot"`` :math:`\Pi` ``(N,)``, ``"force"``
            :math:`-\nabla\Pi` (x's shape) and any others the caller keeps (e.g. the energy
            without the bias); accepted particles' entries are replaced in place.
        h: the step size.
        evaluate: ``y -> dict`` with the same keys as ``state`` for a batch of proposals.
        generator: all randomness.
        valid: optional ``x -> (N,) bool`` support (a proposal outside it is rejected uncomputed).

    Returns:
        ``(accepted, calls)``: ``(N,)`` booleans and the number of proposals evaluated.
    """
    n = x.shape[0]
    f = state["force"]
    y = x + h * f + math.sqrt(2 * h) * torch.randn(x.shape, generator=generator, dtype=x.dtype)
    ok = _valid_mask(valid, y)
    accept = torch.zeros(n, dtype=torch.bool)
    m = int(ok.sum())
    if m == 0:
        return accept, 0
    new = evaluate(y[ok])
    xo, fo, fy = x[ok], f[ok], new["force"]
    log_q_fwd = -(y[ok] - xo - h * fo).reshape(m, -1).pow(2).sum(1) / (4 * h)
    log_q_rev = -(xo - y[ok] - h * fy).reshape(m, -1).pow(2).sum(1) / (4 * h)
    log_alpha = state["pot"][ok] - new["pot"] + log_q_rev - log_q_fwd
    a = torch.log(torch.rand(m, generator=generator, dtype=torch.float64)) < log_alpha
    idx = ok.nonzero()[:, 0][a]
    accept[idx] = True
    x[idx] = y[idx]
    for key, val in new.items():
        state[key][idx] = val[a]
    return accept, m


def mala(energy: Any, x: torch.Tensor, *, num_steps: int, generator: torch.Generator, bias: Any = None,
         cvs: Callable | None = None, step_size: float | None = None, adapt_fraction: float = 0.25,
         valid: Callable | None = None, progress: bool = False) -> RefineResult:
    r"""``num_steps`` MALA steps of every particle on :math:`e^{-(u + v)}` (module docstring).

    Args:
        energy: the target, an :class:`~.energies.Energy` (reduced energies and forces) or a
            differentiable callable ``x -> u``.
        x: ``(N, *event_shape)`` starting particles.
        num_steps: MALA steps (>= 1).
        generator: all randomness.
        bias: optional frozen :class:`~.bias.WellTemperedBias` (not modified here).
        cvs: ``x -> (N, k)`` the CVs the bias acts on (default ``bias.cvs``).
        step_size: :math:`h` (> 0), or ``None`` to adapt it (module docstring).
        adapt_fraction: fraction of the steps that adapt :math:`h` when ``step_size`` is ``None``.
        valid: optional ``x -> (N,) bool`` support of the target (e.g. the chart and chirality).
        progress: a tqdm bar.

    Returns:
        :class:`RefineResult` (``ancestors`` the identity).
    """
    x = _check_x(energy, x)
    if not isinstance(num_steps, int) or isinstance(num_steps, bool) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive int, got {num_steps!r}")
    if step_size is not None and not (isinstance(step_size, (int, float)) and math.isfinite(step_size)
                                      and step_size > 0):
        raise ValueError(f"step_size must be a finite number > 0 or None (adapted), got {step_size!r}")
    if not 0 <= adapt_fraction < 1:
        raise ValueError(f"adapt_fraction must be in [0, 1), got {adapt_fraction!r}")
    if not isinstance(generator, torch.Generator):
        raise TypeError("generator must be a torch.Generator (randomness is explicit)")
    potential = None
    if bias is not None:
        cvs = cvs if cvs is not None else getattr(bias, "cvs", None)
        if cvs is None:
            raise ValueError("bias was built from a dimension, not a CV set: pass cvs (x -> (N, k))")
        potential = BiasPotential(cvs, bias)
    n = x.shape[0]
    ok = _valid_mask(valid, x)
    if not ok.all():
        raise ValueError(f"x: particle {int((~ok).nonzero()[0])} is outside valid (the target's support)")
    u, v, f = _evaluate(energy, potential, x)
    calls = n
    adapt = step_size is None
    n_adapt = int(adapt_fraction * num_steps) if adapt else 0
    if adapt:  # h ~ d / E|F|^2 is 1/lambda on a Gaussian of precision lambda; d^(-1/3): MALA's scaling
        d = x[0].numel()
        h = float(d ** (2.0 / 3.0) / (f.flatten(1).pow(2).sum(1).mean() + 1e-12))
    else:
        h = float(step_size)
    state = {"pot": u + v, "force": f, "u": u, "v": v}

    def evaluate(y):
        uy, vy, fy = _evaluate(energy, potential, y)
        return {"pot": uy + vy, "force": fy, "u": uy, "v": vy}

    acc = torch.zeros(num_steps, dtype=torch.float64)
    for k in tqdm(range(num_steps), desc="MALA", disable=not progress):
        accept, c = mala_step(x, state, h, evaluate, generator, valid)
        calls += c
        acc[k] = accept.double().mean()
        if k < n_adapt:
            h *= math.exp(float(acc[k]) - TARGET_ACCEPTANCE)
    u, v = state["u"], state["v"]
    log_w = log_importance_weights(v, 1.0) if potential is not None else torch.zeros(n, dtype=torch.float64)
    return RefineResult(x=x, log_weights=log_w, energies=u, bias_values=v, acceptance=acc,
                        acceptance_rate=float(acc[n_adapt:].mean()), step_size=h, energy_calls=calls,
                        ancestors=torch.arange(n))


def resample_move(energy: Any, x: torch.Tensor, log_weights: torch.Tensor, *, num_steps: int,
                  generator: torch.Generator, bias: Any = None, cvs: Callable | None = None,
                  step_size: float | None = None, adapt_fraction: float = 0.25, valid: Callable | None = None,
                  progress: bool = False) -> RefineResult:
    r"""Resample weighted particles once (systematic) and move them by :func:`mala` on
    :math:`e^{-(u + v)}` (module docstring: why this is exact, consistent in :math:`N`).

    Args:
        energy: the target's reduced energy :math:`u` (an :class:`~.energies.Energy`).
        x: ``(N, *event_shape)`` particles.
        log_weights: ``(N,)`` their log importance weights **for the target that is moved on**,
            :math:`e^{-(u+v)}` with a bias (e.g. path weights for :math:`e^{-u}` minus :math:`v`),
            :math:`e^{-u}` without; ``-inf`` for a particle outside the support.
        num_steps, generator, bias, cvs, step_size, adapt_fraction, valid, progress: as in :func:`mala`.

    Returns:
        :class:`RefineResult` with ``log_weights`` for :math:`e^{-u}` (:math:`v(x)`, or zeros without
        a bias) and ``ancestors`` the resampled indices.

    Shapes:
        ``x``: ``(N, *event_shape)``; ``log_weights``: ``(N,)``.
    """
    x = _check_x(energy, x)
    lw = torch.as_tensor(log_weights)
    if lw.shape != (x.shape[0],):
        raise ValueError(f"log_weights must have shape ({x.shape[0]},) (one per particle of x), "
                         f"got {tuple(lw.shape)}")
    lw = lw.detach().to(torch.float64)
    if torch.isnan(lw).any() or (lw == math.inf).any():
        i = int((torch.isnan(lw) | (lw == math.inf)).nonzero()[0])
        raise ValueError(f"log_weights has NaN or +inf at particle {i}")
    if (lw == -math.inf).all():
        raise ValueError("log_weights: every particle has zero weight (all -inf)")
    ancestors = smc.resample(lw, "systematic", generator)
    res = mala(energy, x[ancestors], num_steps=num_steps, generator=generator, bias=bias, cvs=cvs,
               step_size=step_size, adapt_fraction=adapt_fraction, valid=valid, progress=progress)
    res.ancestors = ancestors
    return res
