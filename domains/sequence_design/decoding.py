r"""Reward-guided decoding of masked diffusion: SVDD and its baselines (Li et al. 2024).

All decoders take a masked-diffusion model ``x_t (B, L) -> logits (B, L, V)`` (time-free, as in
:mod:`sciffusion.domains.discrete`), its :class:`~sciffusion.domains.discrete.MaskedProcess`, and a
black-box reward ``r(x0 (B, L)) -> (B,)`` (:mod:`.rewards`), and return a :class:`DesignResult`
that reports **model cost** (batched calls ``nfe`` and sequences evaluated ``model_evals``) and
**reward cost** (``reward_calls``, ``reward_evals``) separately. Every transition is the one
step of ``discrete`` (:func:`~sciffusion.domains.discrete.ancestral_step`).

**SVDD** (Li et al. 2024, Alg. 1). On the uniform time grid :math:`1 = t_0 > \dots > t_K = 0`, at
each step draw :math:`M` candidates :math:`x_s^{(m)} \sim p(x_s \mid x_t)` from the base model's
ancestral transition, score them with a value :math:`v(x_s^{(m)})` and keep one with

.. math:: P(m) \propto \exp\big(v(x_s^{(m)})/\alpha\big)

(Alg. 1, line 5; the soft-optimal policy of Eq. (5)), or a uniformly chosen maximiser when
:math:`\alpha = 0` (the argmax limit, exactly what :math:`\alpha \to 0` converges to, ties included).

* **SVDD-PM** (posterior mean), no training: by default (``value_samples = S = 64``) the value is
  the Monte Carlo estimate :math:`v(x_s) = \frac1S\sum_j r(x_0^{(j)})`,
  :math:`x_0^{(j)} \sim \prod_i p_\theta(x_0^i \mid x_s)` at the masked sites, of
  :math:`\mathbb{E}[r(x_0) \mid x_s]`; with ``value_samples=0`` it is :math:`r(\hat x_0(x_s))`,
  :math:`\hat x_0` the argmax prediction (the SVDD reference code's choice, one reward call per
  candidate). Both use the one model output already computed for the candidate: S draws cost S
  reward evaluations and no model call. On the planted-motif benchmark the S-draw value is clearly
  better at equal model cost (``benchmarks/RESULTS.md``, sequence_design): the argmax prediction of
  a mostly masked state scores a motif only once it is nearly written, the average sees partial
  motifs. Use ``value_samples=0`` when a reward evaluation costs more than about S model
  evaluations (ViennaRNA folding, for one). The model output at the chosen candidate is the next
  step's transition (the model is time-free), so a step costs one evaluation per changed candidate
  and ``nfe`` per design stays about :math:`M K`.
* **SVDD-MC**: :math:`v = V_\theta(x_s)`, a small network regressed on
  :math:`(x_t, r(x_0))` pairs from base-model rollouts :math:`x_0 \sim p_\theta`,
  :math:`x_t \sim q_t(\cdot \mid x_0)` (Sec. 4.2; :func:`fit_value_network`), which estimates
  :math:`\mathbb{E}[r(x_0) \mid x_t]`; at fully unmasked candidates the reward itself is used.
  The model is then evaluated only at the selected candidate.

``num_candidates=1`` is the base ancestral sampler, draw for draw (tested bit-identical).
:func:`sample_svdd_first_hitting` runs SVDD-PM on the first-hitting schedule instead (one site per
step through :func:`~sciffusion.domains.discrete.first_hitting_step`; ``M = 1`` is
``sample_first_hitting`` draw for draw).

**Baselines.** :func:`sample_best_of_n`: ``n`` base samples per design, keep the highest
reward (match ``n`` to SVDD's ``model_evals``). :func:`sample_smc`: sequential Monte Carlo
towards the tilted law :math:`p_\theta(x_0)\,e^{\lambda r(x_0)}/Z` through
:func:`sciffusion.domains.feynman_kac.sample_fkc_masked` with the reward-tilt potential
:math:`\phi(x_t) = \lambda\, r(\hat x_0(x_t))` (twisted SMC; ESS-triggered resampling within
groups by the core SMC); one particle per group is returned, drawn by its final weight.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from sciffusion.categorical import sample_categorical
from sciffusion.domains.discrete import MaskedProcess, ancestral_step, model_probs, sample_ancestral

from .rewards import as_reward

__all__ = ["DesignResult", "sample_svdd", "sample_svdd_first_hitting", "sample_best_of_n", "sample_smc", "sample_base",
           "select_candidates", "denoised", "posterior_value", "ValueNetwork", "fit_value_network", "METHODS", "design"]


@dataclass
class DesignResult:
    """What a decoder returns.

    Attributes:
        x: ``(B, L)`` long designed sequences.
        reward: ``(B,)`` float64 reward of each design (from the decoder's own evaluations).
        method: the decoder's name.
        nfe: batched model calls.
        model_evals: sequences evaluated by the model (sum of batch sizes over calls).
        reward_calls: batched reward calls.
        reward_evals: sequences scored by the reward.
        extra: method-specific diagnostics (value-network calls, ESS, resampling steps, ...).
    """

    x: torch.Tensor
    reward: torch.Tensor
    method: str
    nfe: int
    model_evals: int
    reward_calls: int
    reward_evals: int
    extra: dict = field(default_factory=dict)

    @property
    def model_evals_per_design(self) -> float:
        return self.model_evals / self.x.shape[0]

    @property
    def reward_evals_per_design(self) -> float:
        return self.reward_evals / self.x.shape[0]

    def summary(self) -> dict:
        """Numbers for tables and JSON."""
        return {"method": self.method, "num": int(self.x.shape[0]), "mean_reward": float(self.reward.mean()),
                "median_reward": float(self.reward.median()), "nfe": self.nfe,
                "model_evals_per_design": self.model_evals_per_design,
                "reward_evals_per_design": self.reward_evals_per_design}


class _Counted:
    """Counts a model's batched calls and evaluated rows; checks the output shape."""

    def __init__(self, model, V):
        self.model, self.V, self.calls, self.rows = model, V, 0, 0
        self.max_len = getattr(model, "max_len", None)

    def __call__(self, x):
        out = self.model(x)
        if out.shape != x.shape + (self.V,):
            raise ValueError(f"model output has shape {tuple(out.shape)}, expected {tuple(x.shape) + (self.V,)}")
        self.calls += 1
        self.rows += x.shape[0]
        return out


def denoised(x: torch.Tensor, probs: torch.Tensor, mask_id: int) -> torch.Tensor:
    r""":math:`\hat x_0`: masked sites set to :math:`\arg\max_v p(x_0^i = v \mid x_t)`, clean sites kept.
    Shapes: ``x (B, L)``, ``probs (B, L, V)`` -> ``(B, L)``."""
    return torch.where(x == mask_id, probs.argmax(-1), x)


VALUE_SAMPLES = 64
"""Default ``value_samples`` of the SVDD-PM decoders (:func:`posterior_value`). Measured on the planted-motif
benchmark (``benchmarks/sequence_design.py --parts values``): S = 4 is no better than the argmax value, 16 and 64
are clearly better, 256 better again but for 4x the reward cost of 64; 64 is that compromise."""


def posterior_value(reward, x: torch.Tensor, probs: torch.Tensor, mask_id: int, num_samples: int = 0,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    r"""SVDD-PM's value of partly masked states, without training.

    ``num_samples == 0``: :math:`v(x_s) = r(\hat x_0(x_s))`, the reward of the argmax prediction
    (:func:`denoised`). ``num_samples = S >= 1``: the Monte Carlo estimate

    .. math:: v(x_s) = \frac1S \sum_{j=1}^{S} r\big(x_0^{(j)}\big), \qquad
              x_0^{(j)} \sim \prod_{i:\,x_s^i = \mathrm{mask}} p_\theta(x_0^i \mid x_s)

    of :math:`\mathbb{E}[r(x_0) \mid x_s]` under the model's factorised prediction (clean sites
    kept). It costs ``S`` reward evaluations per masked state and no model call. Fully unmasked
    states are scored once, by the reward itself.

    Shapes: ``x (B, L)``, ``probs (B, L, V)`` -> ``(B,)`` float64.
    """
    if num_samples == 0:
        return reward(denoised(x, probs, mask_id))
    masked = (x == mask_id).any(1)
    v = torch.empty(x.shape[0], dtype=torch.float64)
    if (~masked).any():
        v[~masked] = reward(x[~masked])
    if masked.any():
        xm = x[masked].repeat_interleave(num_samples, 0)
        draws = sample_categorical(probs[masked].repeat_interleave(num_samples, 0), generator=generator,
                                   validate=False)
        v[masked] = reward(torch.where(xm == mask_id, draws, xm)).view(-1, num_samples).mean(1)
    return v


def select_candidates(values: torch.Tensor, alpha: float, generator: torch.Generator | None = None) -> torch.Tensor:
    r"""One candidate per row: :math:`P(m) \propto \exp(v_m/\alpha)` (SVDD Alg. 1, line 5), or uniform
    over the maximisers when ``alpha == 0`` (the :math:`\alpha \to 0` limit, ties included).

    Both draw one float64 uniform per row through the same inverse CDF, so a small enough
    ``alpha`` (every gap to the maximum above ``745 * alpha``: ``exp`` underflows) selects exactly
    what ``alpha = 0`` selects from the same seed.

    Args:
        values: ``(B, M)`` float values (``-inf`` allowed, not for a whole row; no NaN / ``+inf``).
        alpha: temperature >= 0.

    Returns:
        ``(B,)`` long indices in ``[0, M)``.
    """
    v = torch.as_tensor(values, dtype=torch.float64)
    if v.ndim != 2:
        raise ValueError(f"values must be (B, M), got shape {tuple(v.shape)}")
    if not (isinstance(alpha, (int, float)) and alpha >= 0 and math.isfinite(alpha)):
        raise ValueError(f"alpha must be a finite number >= 0, got {alpha!r}")
    if torch.isnan(v).any() or (v == math.inf).any():
        raise FloatingPointError("candidate values contain NaN or +inf")
    vmax = v.max(1, keepdim=True).values
    if (vmax == -math.inf).any():
        raise FloatingPointError("every candidate of a row has value -inf")
    p = (v == vmax).double() if alpha == 0 else torch.softmax((v - vmax) / alpha, 1)
    return sample_categorical(p, generator=generator, validate=False)


def _grid(num_steps):
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}")
    return torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64)


def _start(model, process, shape, x):
    from sciffusion.domains.discrete import check_tokens

    if not isinstance(process, MaskedProcess):
        raise TypeError(f"process must be a MaskedProcess, got {type(process).__name__}")
    if x is None:
        if shape is None or len(shape) != 2 or shape[0] < 1 or shape[1] < 1:
            raise ValueError(f"shape must be (num_designs, length) with both >= 1, got {shape}")
        x = process.prior(tuple(shape))
    else:
        x = x.clone()
    return check_tokens(x, process.vocab_size, "x", allow=process.mask_id,
                        max_len=getattr(model, "max_len", None))


def _check_selection(num_candidates, alpha):
    """The SVDD decoders' shared arguments: ``M`` a positive int, ``alpha`` a finite number >= 0."""
    if isinstance(num_candidates, bool) or not isinstance(num_candidates, int) or num_candidates < 1:
        raise ValueError(f"num_candidates must be a positive int, got {num_candidates!r}")
    if isinstance(alpha, bool) or not (isinstance(alpha, (int, float)) and alpha >= 0 and math.isfinite(alpha)):
        raise ValueError(f"alpha must be a finite number >= 0, got {alpha!r}")


def _check_value_samples(value_samples):
    if isinstance(value_samples, bool) or not isinstance(value_samples, int) or value_samples < 0:
        raise ValueError(f"value_samples must be an int >= 0, got {value_samples!r}")


def _probs(model, x, temperature, top_p):
    return model_probs(model(x), temperature, top_p)


@torch.no_grad()
def sample_svdd(model, process: MaskedProcess, reward, shape=None, num_steps: int = 64, *,
                num_candidates: int = 8, alpha: float = 0.0, value: str | Callable = "pm",
                value_samples: int = VALUE_SAMPLES, generator: torch.Generator | None = None,
                x: torch.Tensor | None = None,
                temperature: float = 1.0, top_p: float = 1.0, progress: bool = False) -> DesignResult:
    r"""Soft value-based decoding (SVDD, Li et al. 2024, Alg. 1); see the module docstring.

    Args:
        model: masked-diffusion model ``x_t -> logits (B, L, V)``.
        process: its :class:`MaskedProcess`.
        reward: ``x0 (B, L) -> (B,)`` (a :class:`~.rewards.Reward` or any callable).
        shape: ``(num_designs, L)`` (or give ``x``, a partly masked start).
        num_steps: steps of the uniform time grid.
        num_candidates: ``M`` candidates per step and design.
        alpha: selection temperature; 0 = argmax.
        value: ``"pm"`` (reward of the denoised prediction) or a callable value ``x_t -> (B,)``
            such as a :class:`ValueNetwork` (SVDD-MC).
        value_samples: for ``value="pm"``: 0 scores the argmax prediction, ``S >= 1`` averages the
            reward over ``S`` draws of the prediction (:func:`posterior_value`).
        generator: the randomness (transition draws, then one selection uniform per design).
        temperature, top_p: applied to the base model's :math:`p(x_0 \mid x_t)`.

    Returns:
        :class:`DesignResult` (``extra["value_calls"]``: sequences scored by a value network).

    Shapes: ``x (B, L)``; candidates are ``(B*M, L)``, design-major.
    """
    _check_selection(num_candidates, alpha)
    if value != "pm" and not callable(value):
        raise ValueError(f"value must be 'pm' or a callable x_t -> (B,), got {value!r}")
    _check_value_samples(value_samples)
    reward = as_reward(reward)
    c0, e0 = reward.calls, reward.evaluations
    x = _start(model, process, shape, x)
    B, L, V, m, M = *x.shape, process.vocab_size, process.mask_id, num_candidates
    f = _Counted(model, V)
    ts = _grid(num_steps)
    al = process.alpha(ts).tolist()
    probs = torch.zeros(B, L, V, dtype=torch.float64)
    start = (x == m).any(1)
    if start.any():
        probs[start] = _probs(f, x[start], temperature, top_p)
    rows = torch.arange(B)
    v_sel = torch.full((B,), math.nan, dtype=torch.float64)
    value_calls = 0
    for k in tqdm(range(num_steps), disable=not progress, desc=f"svdd (M={M})", leave=False):
        last = k == num_steps - 1
        xc, pc = x.repeat_interleave(M, 0), probs.repeat_interleave(M, 0)
        xs = ancestral_step(xc, pc, al[k], al[k + 1], m, generator=generator)
        need = (xs != xc).any(1) & (xs == m).any(1)  # changed and still masked: new p(x0 | x_s) needed
        clean = ~(xs == m).any(1)
        if value == "pm":
            pn = pc.clone()
            if need.any():
                pn[need] = _probs(f, xs[need], temperature, top_p)
            if M > 1 or last:
                v = posterior_value(reward, xs, pn, m, value_samples, generator).view(B, M)
        elif M > 1 or last:
            v = torch.empty(B * M, dtype=torch.float64)
            if clean.any():
                v[clean] = reward(xs[clean])
            if (~clean).any():
                v[~clean] = torch.as_tensor(value(xs[~clean]), dtype=torch.float64).reshape(-1)
                value_calls += int((~clean).sum())
            v = v.view(B, M)
        idx = select_candidates(v, alpha, generator) if M > 1 else torch.zeros(B, dtype=torch.long)
        pick = rows * M + idx
        x = xs[pick]
        if value == "pm":
            probs = pn[pick]
        else:
            probs = pc[pick]
            nd = need[pick]
            if nd.any():
                probs[nd] = _probs(f, x[nd], temperature, top_p)
        if M > 1 or last:
            v_sel = v[rows, idx]
    if (x == m).any():  # a partly masked start on a grid that does not end at alpha = 1
        raise RuntimeError("decoding ended with masked sites; the schedule must reach alpha = 1 at t = 0")
    name = "svdd-pm" if value == "pm" else "svdd-mc"
    return DesignResult(x, v_sel, name, f.calls, f.rows, reward.calls - c0, reward.evaluations - e0,
                        {"num_candidates": M, "alpha": alpha, "num_steps": num_steps, "value_calls": value_calls})


@torch.no_grad()
def sample_svdd_first_hitting(model, process: MaskedProcess, reward, shape=None, *, num_candidates: int = 8,
                              alpha: float = 0.0, value_samples: int = VALUE_SAMPLES,
                              generator: torch.Generator | None = None,
                              x: torch.Tensor | None = None, temperature: float = 1.0, top_p: float = 1.0,
                              progress: bool = False) -> DesignResult:
    r"""SVDD-PM on the first-hitting schedule: one site unmasked per step (Zheng et al. 2024, Alg. 1).

    Each step draws ``M`` candidates per design with
    :func:`~sciffusion.domains.discrete.first_hitting_step` (a uniformly chosen masked site set to
    :math:`x^i \sim p(x_0^i \mid x_t)`), scores each by :func:`posterior_value` (``value_samples``
    as in :func:`sample_svdd`; the reward itself once a candidate is fully unmasked) and keeps one
    by :func:`select_candidates`. ``L`` steps for an all-mask start; ``M`` model evaluations per
    design and step, except at the last. With ``num_candidates=1`` this is
    :func:`~sciffusion.domains.discrete.sample_first_hitting` draw for draw.
    """
    from sciffusion.domains.discrete import first_hitting_step

    _check_selection(num_candidates, alpha)
    _check_value_samples(value_samples)
    reward = as_reward(reward)
    c0, e0 = reward.calls, reward.evaluations
    x = _start(model, process, shape, x)
    B, L, V, m, M = *x.shape, process.vocab_size, process.mask_id, num_candidates
    f = _Counted(model, V)
    logits = torch.zeros(B, L, V, dtype=torch.float64)
    n_masked = (x == m).sum(1)
    if (n_masked > 0).any():
        logits[n_masked > 0] = f(x[n_masked > 0]).double()
    v_sel = torch.full((B,), math.nan, dtype=torch.float64)
    if (n_masked == 0).any():
        v_sel[n_masked == 0] = reward(x[n_masked == 0])
    num_steps = int(n_masked.max())
    for _ in tqdm(range(num_steps), disable=not progress, desc=f"svdd-fh (M={M})", leave=False):
        rows = (n_masked > 0).nonzero().squeeze(1)
        xs, _ = first_hitting_step(x[rows].repeat_interleave(M, 0), logits[rows].repeat_interleave(M, 0), m,
                                   generator=generator, temperature=temperature, top_p=top_p)
        need = (xs == m).any(1)
        ln = torch.zeros(xs.shape + (V,), dtype=torch.float64)
        if need.any():
            ln[need] = f(xs[need]).double()
        score = torch.ones_like(need) if M > 1 else ~need
        v = torch.full((xs.shape[0],), math.nan, dtype=torch.float64)
        if score.any():
            ls, ms = ln[score], need[score]
            ps = torch.zeros_like(ls)
            if ms.any():
                ps[ms] = model_probs(ls[ms], temperature, top_p)
            v[score] = posterior_value(reward, xs[score], ps, m, value_samples, generator)
        n = rows.shape[0]
        idx = select_candidates(v.view(n, M), alpha, generator) if M > 1 else torch.zeros(n, dtype=torch.long)
        pick = torch.arange(n) * M + idx
        x[rows], logits[rows] = xs[pick], ln[pick]
        done = ~need[pick] if M == 1 else torch.ones(n, dtype=torch.bool)
        v_sel[rows[done]] = v[pick][done]
        n_masked[rows] -= 1
    return DesignResult(x, v_sel, "svdd-fh", f.calls, f.rows, reward.calls - c0, reward.evaluations - e0,
                        {"num_candidates": M, "alpha": alpha, "num_steps": num_steps})


def sample_base(model, process: MaskedProcess, reward, shape, num_steps: int = 64, *,
                generator: torch.Generator | None = None, **kwargs) -> DesignResult:
    """Unguided base samples (the cached ancestral sampler), scored once by the reward."""
    return sample_best_of_n(model, process, reward, shape, num_steps, n=1, generator=generator, **kwargs)


@torch.no_grad()
def sample_best_of_n(model, process: MaskedProcess, reward, shape, num_steps: int = 64, *, n: int,
                     generator: torch.Generator | None = None, temperature: float = 1.0, top_p: float = 1.0,
                     batch_size: int = 4096, progress: bool = False) -> DesignResult:
    """Best-of-N: ``n`` base samples (cached ancestral sampler) per design; keep the highest reward.

    Shapes: ``shape = (B, L)``; ``B * n`` samples are drawn (in chunks of ``batch_size``).
    """
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    if not isinstance(process, MaskedProcess):
        raise TypeError(f"process must be a MaskedProcess, got {type(process).__name__}")
    if shape is None or len(shape) != 2 or shape[0] < 1 or shape[1] < 1:
        raise ValueError(f"shape must be (num_designs, length) with both >= 1, got {shape}")
    reward = as_reward(reward)
    c0, e0 = reward.calls, reward.evaluations
    B, L = shape
    f = _Counted(model, process.vocab_size)
    xs, rs = [], []
    total = B * n
    for i in tqdm(range(0, total, batch_size), disable=not progress, desc=f"best-of-{n}", leave=False):
        out = sample_ancestral(f, process, (min(batch_size, total - i), L), num_steps, generator=generator,
                               temperature=temperature, top_p=top_p)
        xs.append(out.x)
        rs.append(reward(out.x))
    x, r = torch.cat(xs).view(B, n, L), torch.cat(rs).view(B, n)
    best = r.argmax(1)
    rows = torch.arange(B)
    return DesignResult(x[rows, best], r[rows, best], "base" if n == 1 else "best-of-n", f.calls, f.rows,
                        reward.calls - c0, reward.evaluations - e0, {"n": n, "num_steps": num_steps})


@torch.no_grad()
def sample_smc(model, process: MaskedProcess, reward, shape, num_steps: int = 64, *, num_particles: int,
               lam: float = 1.0, threshold: float = 0.5, scheme: str = "systematic",
               generator: torch.Generator | None = None, progress: bool = False) -> DesignResult:
    r"""SMC reward tilting towards :math:`p_\theta(x_0)\,e^{\lambda r(x_0)}/Z` (module docstring).

    Runs :func:`~sciffusion.domains.feynman_kac.sample_fkc_masked` (one model, exponent 1, base
    unmasking rate: its own weights are then identically 1) with the potential
    :math:`\phi(x_t) = \lambda\,r(\hat x_0(x_t))`, resampling a group when its ESS drops below
    ``threshold * num_particles``; returns one particle per group drawn by its final weight.
    ``extra`` holds ``log_z`` (``(B,)``, estimates of :math:`\log Z`), ``ess`` and
    ``resample_steps``; ``extra["particles"]`` / ``extra["log_w"]`` the whole weighted population.

    Args:
        shape: ``(B, L)``: ``B`` groups, each yielding one design.
        num_particles: ``N`` per group.
        lam: :math:`\lambda` (inverse temperature of the tilt).
    """
    from sciffusion.domains.feynman_kac import sample_fkc_masked

    if not (isinstance(lam, (int, float)) and math.isfinite(lam)):
        raise ValueError(f"lam must be a finite number, got {lam!r}")
    if not isinstance(process, MaskedProcess):
        raise TypeError(f"process must be a MaskedProcess, got {type(process).__name__}")
    reward = as_reward(reward)
    c0, e0 = reward.calls, reward.evaluations
    f = _Counted(model, process.vocab_size)
    m = process.mask_id
    last = {}

    def phi(x, logp):
        xh = x if logp is None else torch.where(x == m, logp.argmax(-1), x)
        r = reward(xh)
        last["r"] = r
        return lam * r

    res = sample_fkc_masked([f], [1.0], process, shape, num_particles=num_particles, num_steps=num_steps,
                            rate="base", threshold=threshold, scheme=scheme, potential=phi, warn_ess=None,
                            generator=generator, progress=progress)
    G, N = res.log_w.shape
    pick = sample_categorical(torch.softmax(res.log_w, -1), generator=generator, validate=False)
    flat = torch.arange(G) * N + pick
    return DesignResult(res.x[flat], last["r"][flat], "smc", f.calls, f.rows, reward.calls - c0,
                        reward.evaluations - e0,
                        {"num_particles": N, "lam": lam, "num_steps": num_steps, "log_z": res.log_z,
                         "ess": res.ess, "resample_steps": res.resample_steps, "particles": res.x,
                         "particle_reward": last["r"], "log_w": res.log_w})


class ValueNetwork(nn.Module):
    r"""A small dilated CNN :math:`V_\theta(x_t) \approx \mathbb{E}[r(x_0) \mid x_t]` on partly masked
    tokens (ids ``0..V``, ``V`` = mask), for SVDD-MC. Call it on ``(B, L)`` tokens -> ``(B,)`` float64.

    Attributes:
        training_model_evals, training_reward_evals: the cost of the rollouts it was fitted on.
    """

    def __init__(self, vocab_size: int = 4, channels: int = 64, depth: int = 4):
        super().__init__()
        self.vocab_size = vocab_size
        self.embed = nn.Embedding(vocab_size + 1, channels)
        self.convs = nn.ModuleList(nn.Conv1d(channels, channels, 3, dilation=2 ** k, padding=2 ** k)
                                   for k in range(depth))
        self.head = nn.Sequential(nn.Linear(2 * channels, channels), nn.GELU(), nn.Linear(channels, 1))
        self.mean, self.std = 0.0, 1.0
        self.training_model_evals = self.training_reward_evals = 0

    def net(self, x):
        h = self.embed(x).transpose(1, 2)
        for conv in self.convs:
            h = h + torch.nn.functional.gelu(conv(h))
        return self.head(torch.cat([h.max(-1).values, h.mean(-1)], -1)).squeeze(-1)

    def forward(self, x):
        with torch.no_grad():
            return (self.net(x) * self.std + self.mean).double()


def fit_value_network(model, process: MaskedProcess, reward, length: int, *, num_rollouts: int = 2048,
                      num_steps: int = 64, train_steps: int = 500, batch_size: int = 256, lr: float = 2e-3,
                      generator: torch.Generator | None = None, seed: int = 0, **net_kwargs) -> ValueNetwork:
    r"""SVDD-MC's value network (Li et al. 2024, Sec. 4.2): regress :math:`r(x_0)` on :math:`x_t`.

    Draws ``num_rollouts`` base samples :math:`x_0 \sim p_\theta` (cached ancestral sampler),
    scores them once, and fits :math:`V_\theta` by least squares on fresh pairs
    :math:`(x_t, r(x_0))`, :math:`x_t \sim q_t(\cdot\mid x_0)`, :math:`t \sim \mathrm{U}(0, 1]`, each
    minibatch; the minimiser is :math:`\mathbb{E}_{p_\theta}[r(x_0) \mid x_t]`.
    """
    reward = as_reward(reward)
    f = _Counted(model, process.vocab_size)
    with torch.no_grad():
        x0 = sample_ancestral(f, process, (num_rollouts, length), num_steps, generator=generator).x
    r = reward(x0)
    with torch.random.fork_rng(devices=[]):  # seeded initial weights; the caller's global RNG is untouched
        torch.manual_seed(seed)
        vn = ValueNetwork(process.vocab_size, **net_kwargs)
    vn.mean, vn.std = float(r.mean()), float(r.std().clamp_min(1e-12))
    rz = ((r - vn.mean) / vn.std).float()
    opt = torch.optim.Adam(vn.parameters(), lr=lr)
    with torch.enable_grad():  # callers may decode under no_grad
        for _ in range(train_steps):
            idx = torch.randint(num_rollouts, (min(batch_size, num_rollouts),), generator=generator)
            t = torch.rand(idx.shape[0], generator=generator, dtype=torch.float64)
            xt = process.perturb(x0[idx], 1.0 - t, generator)
            loss = ((vn.net(xt) - rz[idx]) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    vn.eval()
    vn.training_model_evals, vn.training_reward_evals = f.rows, num_rollouts
    return vn


METHODS = ("svdd-pm", "svdd-fh", "svdd-mc", "best-of-n", "smc", "base")


def design(method: str, model, process, reward, shape, num_steps: int = 64, *, generator=None, **kwargs):
    """Dispatch by name: ``svdd-pm`` / ``svdd-fh`` (SVDD-PM on the first-hitting schedule, one site
    per step: ``num_steps`` is not used) / ``svdd-mc`` (``value=`` a :class:`ValueNetwork` required) /
    ``best-of-n`` (``n=``) / ``smc`` (``num_particles=``, ``lam=``) / ``base``."""
    if method == "svdd-fh":
        return sample_svdd_first_hitting(model, process, reward, shape, generator=generator, **kwargs)
    if method == "svdd-pm":
        return sample_svdd(model, process, reward, shape, num_steps, generator=generator, value="pm", **kwargs)
    if method == "svdd-mc":
        if not callable(kwargs.get("value")):
            raise ValueError("svdd-mc needs value=<a fitted ValueNetwork> (fit_value_network)")
        return sample_svdd(model, process, reward, shape, num_steps, generator=generator, **kwargs)
    if method == "best-of-n":
        return sample_best_of_n(model, process, reward, shape, num_steps, generator=generator, **kwargs)
    if method == "smc":
        return sample_smc(model, process, reward, shape, num_steps, generator=generator, **kwargs)
    if method == "base":
        return sample_base(model, process, reward, shape, num_steps, generator=generator, **kwargs)
    raise ValueError(f"unknown method {method!r}; expected one of: {', '.join(METHODS)}")

