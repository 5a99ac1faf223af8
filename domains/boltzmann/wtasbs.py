r"""Well-tempered rounds of an energy-only diffusion sampler (WT-ASBS, Nam et al. 2025, Alg. 1).

Round :math:`r = 0, \dots, R-1`:

1. train the sampler (:class:`~.sampler.AdjointSampler`) on the biased target
   :math:`\mu_r \propto \exp(-(E + V_r(s(x)))/k_BT)` (the bias enters as a cheap differentiable
   potential whose gradient is recomputed at every buffer draw, so the replay buffer, whose
   samples each cost one energy+force call, stays valid when the bias changes);
2. draw ``deposit_samples`` samples of the round's sampler (no energy calls: only their CVs) and
   deposit one well-tempered hill at each,
   :math:`h = h_0 \exp(-V_r(c)/((\gamma-1)k_BT))` (Barducci et al. 2008), giving :math:`V_{r+1}`.

A final stage freezes the bias and trains on :math:`\mu_R` for ``final_iterations``; its samples
:math:`x_i` carry the importance weights back to the Boltzmann distribution,

.. math:: \log w_i = V_R(s(x_i))/k_BT  \qquad(\text{Nam et al. 2025: reweighting by the bias}),

valid when the sampler matches the biased target. Beside them the result carries the sampler's
own path weights (:meth:`~.sampler.AdjointSampler.log_weights`, exact for any network, one
extra energy call per sample when ``path_weights=True``). The effective sample size is the core's
:func:`sciffusion.smc.ess`; free energies between basins come from
:func:`~.free_energy.delta_f` on ``(cv, log_weights)``.

**Checkpoints.** With ``checkpoint=PATH`` the state after every round (sampler networks, EMA,
optimisers, replay buffer, bias grid and hills, generator state, history) is written atomically
with :func:`sciffusion.utils.save_atomic`, together with a fingerprint of the settings
(:func:`sciffusion.utils.fingerprint`). Calling :func:`run_wtasbs` again with the same path
resumes after the last completed round and reproduces the uninterrupted run bit for bit; a
changed setting is refused by name (:func:`sciffusion.utils.check_resume`).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from sciffusion import smc
from sciffusion.utils import check_resume, fingerprint, save_atomic

from .energies import energy_fingerprint
from .sampler import AdjointSampler, energy_and_forces

log = logging.getLogger(__name__)

__all__ = ["BiasPotential", "WTResult", "run_wtasbs", "sample_unbiased"]


class BiasPotential:
    r"""The bias as a potential of the coordinates, :math:`x \mapsto V(s(x))/k_BT` ``(B,)``
    (differentiable through the CVs and the bias grid).

    Args:
        cvs: ``x -> (B, k)`` collective variables (e.g. a :class:`~.cvs.CVSet`).
        bias: a :class:`~.bias.WellTemperedBias` (in kT units of its own ``kT``).
    """

    def __init__(self, cvs: Callable, bias: Any):
        self.cvs, self.bias = cvs, bias

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        s = self.cvs(x)
        if not torch.isfinite(s.detach()).all():
            i = int((~torch.isfinite(s.detach())).reshape(s.shape[0], -1).any(1).nonzero()[0])
            raise FloatingPointError(f"cvs returned a non-finite value at frame {i}")
        return self.bias(s) / self.bias.kT


@dataclass
class WTResult:
    """What :func:`run_wtasbs` returns.

    Attributes:
        x: ``(N, *event_shape)`` final-stage samples (float64).
        cv: ``(N, k)`` their CVs.
        bias_values: ``(N,)`` :math:`V(s(x))/k_BT` under the frozen bias.
        log_weights: ``(N,)`` log importance weights to the Boltzmann distribution
            (``bias_values``; ``-inf`` where ``valid`` rejects a sample).
        ess: Kish ESS of ``log_weights``.
        path_log_weights, path_ess: the sampler's path weights for the *unbiased* target and their
            ESS (``None`` unless ``path_weights=True``).
        energy_evaluations: energy+force calls in all (training and path weights).
        history: one dict per round (hills, energy calls, ESS of the round's deposit batch
            under the current bias, seconds).
        bias: the frozen bias; sampler: the trained sampler.
    """

    x: torch.Tensor
    cv: torch.Tensor
    bias_values: torch.Tensor
    log_weights: torch.Tensor
    ess: float
    energy_evaluations: int
    history: list = field(default_factory=list)
    path_log_weights: torch.Tensor | None = None
    path_ess: float | None = None
    bias: Any = None
    sampler: Any = None
    seconds: float = 0.0


def _fit_kwargs(fit_kwargs: dict | None) -> dict:
    fit_kwargs = dict(fit_kwargs or {})
    for bad in ("energy", "iterations", "generator", "potential"):
        if bad in fit_kwargs:
            raise ValueError(f"fit_kwargs must not contain {bad!r}: run_wtasbs sets it")
    return fit_kwargs


def _valid_mask(valid, x):
    if valid is None:
        return torch.ones(x.shape[0], dtype=torch.bool)
    m = torch.as_tensor(valid(x)).reshape(-1).bool()
    if m.shape[0] != x.shape[0]:
        raise ValueError(f"valid must return ({x.shape[0]},) booleans, got {tuple(m.shape)}")
    return m


def run_wtasbs(energy: Any, cvs: Callable, bias: Any, sampler: AdjointSampler, *, rounds: int,
               iterations_per_round: int, final_iterations: int, deposit_samples: int, num_samples: int,
               generator: torch.Generator, fit_kwargs: dict | None = None, valid: Callable | None = None,
               path_weights: bool = False, checkpoint: str | Path | None = None,
               progress: bool = False, on_round: Callable | None = None,
               sequential_deposit: bool = False) -> WTResult:
    r"""Run the well-tempered rounds, the frozen final stage and the reweighting (module docstring).

    Args:
        energy: the unbiased target (reduced energy :math:`E/k_BT`, ``energy_and_forces``).
        cvs: ``x -> (B, k)`` CVs the bias acts on.
        bias: a fresh :class:`~.bias.WellTemperedBias` over those CVs (filled in place).
        sampler: an :class:`~.sampler.AdjointSampler` for ``energy.event_shape`` (trained in place).
        rounds: biased rounds :math:`R` (0: no bias, the plain sampler).
        iterations_per_round: sampler iterations per round (each costs
            ``fit_kwargs["samples_per_iteration"]`` energy calls).
        final_iterations: iterations of the frozen-bias stage.
        deposit_samples: hills per round (one per sample of the round's sampler).
        num_samples: final samples returned.
        generator: all randomness.
        fit_kwargs: forwarded to :meth:`~.sampler.AdjointSampler.fit` (``samples_per_iteration``,
            ``gradient_steps``, ``batch_size``, ``buffer_size``, ...).
        valid: optional ``x -> (B,) bool`` (e.g. :meth:`~.sampler.ChiralityRestraint.mask`); other
            samples get weight zero (conditioning on the valid region, exact when the target's
            restraint is zero on it).
        path_weights: also compute the sampler's path weights for the unbiased target
            (``num_samples`` extra energy calls).
        checkpoint: path of the per-round checkpoint (resumed when it exists).
        progress: tqdm bars.
        on_round: called as ``on_round(round_index, record)`` after each checkpointed round.
        sequential_deposit: each hill of a round's batch sees the ones before it (the
            well-tempered decay acts within the batch, :meth:`~.bias.WellTemperedBias.deposit`), so
            a batch of concentrated samples cannot stack ``deposit_samples`` full-height hills.

    Returns:
        :class:`WTResult`.
    """
    for name, v in (("rounds", rounds), ("iterations_per_round", iterations_per_round),
                    ("final_iterations", final_iterations), ("deposit_samples", deposit_samples),
                    ("num_samples", num_samples)):
        if not isinstance(v, int) or isinstance(v, bool) or v < (1 if name == "num_samples" else 0):
            raise ValueError(f"{name} must be a {'positive' if name == 'num_samples' else 'non-negative'} int, "
                             f"got {v!r}")
    if rounds > 0 and (iterations_per_round < 1 or deposit_samples < 1):
        raise ValueError("with rounds > 0, iterations_per_round and deposit_samples must be >= 1")
    if not isinstance(sampler, AdjointSampler):
        raise TypeError(f"sampler must be an AdjointSampler, got {type(sampler).__name__}")
    if not isinstance(generator, torch.Generator):
        raise TypeError("generator must be a torch.Generator (randomness is explicit)")
    if not callable(cvs):
        raise TypeError("cvs must be callable x -> (B, k)")
    if getattr(bias, "frozen", False) or getattr(bias, "num_hills", 0):
        raise ValueError("bias must be fresh (no hills, not frozen): run_wtasbs deposits and freezes it")
    es = getattr(energy, "event_shape", None)
    if es is not None and tuple(es) != sampler.event_shape:
        raise ValueError(f"sampler.event_shape {sampler.event_shape} does not match energy.event_shape {tuple(es)}")
    kw = _fit_kwargs(fit_kwargs)
    potential = BiasPotential(cvs, bias)
    t_start = time.perf_counter()

    settings = fingerprint(energy=energy_fingerprint(energy), cvs=cvs, bias=repr(bias), bias_sigma=repr(bias.sigma.tolist()), bias_height=bias.height,
                           bias_gamma=bias.gamma, bias_lower=repr(bias.lower.tolist()),
                           bias_upper=repr(bias.upper.tolist()), bias_bins=repr(list(bias.bins)),
                           sampler_net=sampler.net, sampler_source=sampler.source,
                           sampler_source_mean=sampler.source_mean, sampler_source_std=sampler.source_std, sampler_steps=sampler.num_steps,
                           sampler_process=repr(sampler.process), rounds=rounds,
                           iterations_per_round=iterations_per_round, final_iterations=final_iterations,
                           deposit_samples=deposit_samples, num_samples=num_samples,
                           fit_kwargs=repr(sorted(kw.items())), path_weights=path_weights,
                           **({"sequential_deposit": True} if sequential_deposit else {}))
    path = Path(checkpoint) if checkpoint is not None else None
    start_round, history, seconds_before = 0, [], 0.0
    if path is not None and path.exists():
        state = torch.load(path, weights_only=False)
        check_resume(state.get("fingerprint"), settings, what=f"checkpoint {path}")
        sampler.load_state_dict(state["sampler"])
        bias.load_state_dict(state["bias"])
        generator.set_state(state["generator"])
        start_round, history = int(state["round"]), list(state["history"])
        seconds_before = float(state.get("seconds", 0.0))
        log.info("resumed %s after round %d", path, start_round)

    def save(round_done: int) -> None:
        if path is not None:
            save_atomic({"fingerprint": settings, "round": round_done, "sampler": sampler.state_dict(),
                         "bias": bias.state_dict(), "generator": generator.get_state(), "history": history,
                         "seconds": seconds_before + time.perf_counter() - t_start}, path)

    for r in range(start_round, rounds):
        t0 = time.perf_counter()
        sampler.fit(energy, iterations=iterations_per_round, generator=generator, potential=potential,
                    progress=progress, desc=f"WT round {r + 1}/{rounds}", **kw)
        x = sampler.sample(deposit_samples, generator)
        with torch.no_grad():
            s = cvs(x)
            v = bias(s) / bias.kT
        heights = bias.deposit(s, sequential=bool(sequential_deposit))
        rec = {"round": r + 1, "hills": bias.num_hills, "energy_evaluations": sampler.energy_evaluations,
               "mean_hill_height": float(heights.mean()), "deposit_ess": float(smc.ess(v.double())),
               "max_bias": float(bias.grid.max()) if hasattr(bias, "grid") else None,
               "seconds": round(time.perf_counter() - t0, 2)}
        history.append(rec)
        save(r + 1)
        if on_round is not None:
            on_round(r, rec)
    if rounds and path is not None and start_round < rounds:
        log.info("%d well-tempered rounds done, %d hills", rounds, bias.num_hills)

    bias.freeze()
    sampler.fit(energy, iterations=final_iterations, generator=generator, potential=potential if rounds else None,
                progress=progress, desc="WT final (frozen bias)", **kw)
    res = sampler.simulate(num_samples, generator, use_ema=True)
    x = res.x
    with torch.no_grad():
        s = cvs(x)
        v = (bias(s) / bias.kT).double() if rounds else torch.zeros(num_samples, dtype=torch.float64)
    ok = _valid_mask(valid, x)
    if not ok.any():
        raise ValueError("valid rejected every final sample (e.g. all of the wrong chirality); "
                         "strengthen the restraint or train longer")
    log_w = torch.where(ok, v, torch.full_like(v, -math.inf))
    out = WTResult(x=x, cv=s.detach().double(), bias_values=v, log_weights=log_w, ess=float(smc.ess(log_w)),
                   energy_evaluations=sampler.energy_evaluations, history=history, bias=bias, sampler=sampler)
    if path_weights:
        u, _ = energy_and_forces(energy, x)
        sampler.energy_evaluations += num_samples
        plw = sampler.log_weights(res, u)
        out.path_log_weights = torch.where(ok, plw, torch.full_like(plw, -math.inf))
        out.path_ess = float(smc.ess(out.path_log_weights))
        out.energy_evaluations = sampler.energy_evaluations
    out.seconds = seconds_before + time.perf_counter() - t_start
    return out


def sample_unbiased(energy: Any, cvs: Callable, sampler: AdjointSampler, *, iterations: int, num_samples: int,
                    generator: torch.Generator, fit_kwargs: dict | None = None, valid: Callable | None = None,
                    path_weights: bool = False, progress: bool = False) -> WTResult:
    """The same sampler without a bias (the baseline of the well-tempered rounds): uniform log-weights."""
    from .bias import WellTemperedBias

    k = int(cvs(torch.zeros((1,) + sampler.event_shape, dtype=torch.float64)).shape[-1])
    dummy = WellTemperedBias(k, lower=-1.0, upper=1.0, bins=2, sigma=1.0)
    return run_wtasbs(energy, cvs, dummy, sampler, rounds=0, iterations_per_round=0, final_iterations=iterations,
                      deposit_samples=0, num_samples=num_samples, generator=generator, fit_kwargs=fit_kwargs,
                      valid=valid, path_weights=path_weights, progress=progress)
