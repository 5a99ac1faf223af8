r"""Feynman–Kac correctors for masked (absorbing-state) discrete diffusion: annealing and products.

Models are masked-diffusion denoisers of :mod:`sciffusion.domains.discrete`
(``logits = model(x_t)``, time-free, :math:`p_k(x_0^i = v \mid x_t)` at masked sites). Under the
masking process with keep-probability :math:`\alpha_t`, a partly masked ``x`` with clean set
:math:`U` and masked set :math:`M` has :math:`q^k_t(x) = \alpha_t^{|U|}(1-\alpha_t)^{|M|}p_k(x_U)`,
so the product :math:`\prod_k q^k_t(x)^{a_k}` carries the mask-count factor to the power :math:`A`.
The intermediate targets used here keep that factor to the power :math:`\kappa` (``mask_exponent``):

.. math:: \tilde p_t(x) = \big[\alpha_t^{|U|}(1-\alpha_t)^{|M|}\big]^{\kappa}\prod_k p_k(x_U)^{a_k},

which ends at :math:`\prod_k p_k(x_0)^{a_k}` for every :math:`\kappa` (annealing: one model, :math:`a = \beta`;
product: :math:`a_k = 1`) and starts at the all-mask sequence (:math:`\alpha_1 = 0`, :math:`\tilde p = 1`).
The default :math:`\kappa = 1` makes the mask-count factor the masking process's own, so with the
base unmasking rate every count term of the weights cancels (below) and a step's log-weight is
exactly :math:`\sum_{i \in N}\log Z_i`. That alone is still a transient: each revealed site adds
its :math:`\log Z_i` (negative when annealing with :math:`A > 1`), so mid-run a particle's weight mostly counts
how many sites it has revealed so far, which every particle catches up on by the end; the
look-ahead (below, default) removes it.
:math:`\kappa = A` (``mask_exponent="A"``, the earlier default) is also exact but its weights carry
count terms that cancel only by the end of the run: resampling on them (ESS 277/1024 mid-run on
the issue-14 example, 898 at the end without resampling) adds variance, and at
``threshold=0.5`` ended worse than no correction.

**Proposal.** Every masked site unmasks over :math:`t \to s` with probability :math:`\gamma` and
draws its token from the normalised geometric mixture
:math:`\pi_i(v) = \prod_k p_k(v \mid x_t)^{a_k} / Z_i`. Two unmasking rates:

* ``rate="base"`` (default): the models' own :math:`\gamma = (\alpha_s-\alpha_t)/(1-\alpha_t)`.
  For a single site the log-weights then telescope to the constant :math:`\log\sum_v\prod_k p_k(v)^{a_k}`
  along every path (zero variance; tested), so all weight variance comes from the
  dependence between sites.
* ``rate="annealed"``: the A-fold rate :math:`\gamma = 1-\big(\tfrac{1-\alpha_s}{1-\alpha_t}\big)^{A}`,
  for which the masked-count terms of the continuous-time generator cancel. Also exact, but
  the weights now also correct the timing of the jumps: higher variance (single site, A=3:
  ESS ~11% of N vs 100% for ``base``).

**Weights.** Sequential importance weights with the forward masking kernel as backward kernel
(Del Moral, Doucet & Jasra 2006), for a step :math:`x \to x'` that unmasks the set :math:`N`:

.. math:: \log w = \kappa\Big[|U'|\log\alpha_s + |M'|\log(1-\alpha_s) - |U|\log\alpha_t
          - |M|\log(1-\alpha_t)\Big] + |U|\log\tfrac{\alpha_t}{\alpha_s}
          + |N|\log\big(1 - \tfrac{\alpha_t}{\alpha_s}\big) - |N|\log\gamma
          - (|M|-|N|)\log(1-\gamma) + \sum_{i \in N}\log Z_i.

It uses only the model outputs at ``x`` (no extra evaluation). It is exact whenever a step
unmasks at most one site per sequence; with several, :math:`\prod_k p_k(x'_N \mid x_U)` is replaced by
the product of per-site marginals — the same factorisation every masked-diffusion sampler makes,
vanishing as the grid is refined. With :math:`A = 1` and one exact model every weight is 1.
In the continuous-time limit the :math:`|M|` terms cancel exactly because of the rate change,
and a jump of site i costs :math:`(A-1)\log\tfrac{\alpha}{1-\alpha} - \log A + \log Z_i`.

**Look-ahead** (``lookahead=``). The intermediate target that makes resampling free of
transients is the masked marginal of the end target,
:math:`\alpha_t^{|U|}(1-\alpha_t)^{|M|}\sum_{x_M}\prod_k p_k(x_U, x_M)^{a_k}`, i.e. :math:`\tilde p_t`
(:math:`\kappa = 1`) times :math:`V(x_U) = \sum_{x_M}\prod_k p_k(x_M \mid x_U)^{a_k}`, the mass the
masked sites will still contribute: its weights are a martingale (one site per step), so the ESS falls monotonically
to its final value and resampling acts only on what the end needs. A per-site model cannot give
:math:`V`; the sampler multiplies :math:`\tilde p_t` by a twist :math:`e^{\psi_t(x)}` (an
auxiliary / twisted particle filter: Pitt & Shephard 1999; Whiteley & Lee 2014) that is a constant
at the all-mask start and 0 at the unmasked end, so the end target, the final weights without
resampling and :math:`\hat Z` are unchanged; only what resampling sees changes. A step's weight
needs the twist at its end state, i.e. the model call at the next grid time, so it is completed
(and the group resampled) right after that call, before the next move: no extra model call.

* ``"counts"`` (default): :math:`\psi_t(x) = \sum_{i \in M} c_i + b_t(|M|)`, with
  :math:`c_i = \log Z_i` at the all-mask start (each site's expected contribution, paid in
  advance and replaced by its actual :math:`\log Z_i` when it is revealed) and :math:`b_t`, per
  group, the log-ratio that gives the weighted number of masked sites its exact law under the ideal
  target, :math:`\mathrm{Bin}(L, 1-\alpha_t)` (the masking is independent of the data), keeping the
  group's total weight. The ideal :math:`V` satisfies that constraint; without it the weights
  mostly count how far each particle has unmasked. :math:`b_t` is fitted on the group's own
  particles (as adaptive tempering fits its next temperature): consistent as :math:`N \to \infty`,
  with an :math:`O(1/N)` bias in :math:`\hat Z` when groups resample.
* ``"product"``: :math:`\psi_t(x) = \sum_{i \in M}\log Z_i(x)`, the factorised estimate of
  :math:`V`; a step's log-weight is then :math:`\sum_{i \in M'}[\log Z_i(x') - \log Z_i(x)]`. Exact
  for independent sites (every weight equal at every step; tested) but on correlated sites it
  counts each revealed token's effect once per still-masked site: an early dip in ESS.
* ``None``: no twist (the earlier behaviour): mid-run weights dominated by the count terms.

Exact recursion over all partly masked states (p^3 of a length-4 chain, 64 steps, infinite
particles, no resampling; tested): ESS/N falls monotonically to its final 0.861 with ``"counts"``,
dips to 0.700 with ``"product"`` and to 0.183 with ``None``. On the benchmarks' length-7 chain the
default then never resamples and ends below the i.i.d. TV floor, where ``None`` ended at 2x it.

**Reward tilt** (``potential=``). A log-potential :math:`\phi(x)` of the partly masked state
(e.g. :math:`\lambda\, r(\hat x_0(x))`, the reward of the denoised prediction, as in twisted
SMC / SVDD; Wu et al. 2023, Li et al. 2024) tilts the target to
:math:`\prod_k p_k(x_0)^{a_k}\,e^{\phi(x_0)}`: step k multiplies the weights by
:math:`e^{\phi(x_k) - \phi(x_{k-1})}` (evaluated on the mixed conditional the step computes anyway,
so no extra model call; :math:`\phi(x_{-1}) = 0`), and the fully unmasked end state gets the
last increment, so the increments telescope to :math:`\phi(x_0)` whatever the intermediate
potential; a good :math:`\phi` only lowers the weight variance.
"""

from __future__ import annotations

import math
import warnings
from typing import Callable, Sequence

import torch
from tqdm.auto import tqdm

from sciffusion.categorical import sample_categorical
from sciffusion.smc import SMCState, ess, maybe_resample

from .fkc import FKCResult

RATES = ("annealed", "base")
LOOKAHEADS = ("counts", "product", None)


class MaskedFKCResult(FKCResult):
    r"""Weighted token sequences from :func:`sample_fkc_masked`: an :class:`FKCResult` whose ``x``
    is ``(G*N, L)`` long tokens (group-major, fully unmasked at the end of the grid), ``ts`` the
    masking-time grid, ``log_z`` the estimate of :math:`\log\sum_x\prod_k p_k(x)^{a_k}` and
    ``nfe`` the batched model calls (all models)."""


def _check(models, exponents, process, num_particles, rate, threshold, mask_exponent="A"):
    from sciffusion.domains.discrete import MaskedProcess

    if not isinstance(process, MaskedProcess):
        raise TypeError(f"process must be a MaskedProcess, got {type(process).__name__}")
    models = list(models)
    if not models or not all(callable(m) for m in models):
        raise TypeError("models: need one or more callables x_t -> logits (B, L, V)")
    exps = [float(a) for a in exponents]
    if len(exps) != len(models):
        raise ValueError(f"exponents: need one per model ({len(models)}), got {len(exps)}")
    if not all(math.isfinite(a) for a in exps) or not sum(exps) > 0:
        raise ValueError(f"exponents {exps} make the target improper: need finite a_k with sum > 0")
    if not isinstance(num_particles, int) or num_particles < 1:
        raise ValueError(f"num_particles must be a positive int, got {num_particles!r}")
    if rate not in RATES:
        raise ValueError(f"rate must be one of {RATES}, got {rate!r}")
    if not 0 <= threshold <= 1:
        raise ValueError(f"threshold must lie in [0, 1], got {threshold}")
    if not (mask_exponent == "A" or (isinstance(mask_exponent, (int, float)) and not isinstance(mask_exponent, bool)
                                     and math.isfinite(mask_exponent) and mask_exponent > 0)):
        raise ValueError(f"mask_exponent must be a positive number or 'A' (the sum of the exponents), "
                         f"got {mask_exponent!r}")
    return models, exps


def _xlogy(n: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    r""":math:`n\log v` with :math:`0\log 0 = 0` (counts times log-probabilities at the grid ends)."""
    return torch.xlogy(n.double(), torch.as_tensor(v, dtype=torch.float64).expand_as(n.double()))


def _potential(potential, x, logp, B, k):
    phi = torch.as_tensor(potential(x, logp), dtype=torch.float64)
    if phi.shape != (B,):
        raise ValueError(f"potential must return shape ({B},), got {tuple(phi.shape)}")
    if torch.isnan(phi).any() or (phi == float("inf")).any():
        raise FloatingPointError(f"FKC (masked): the potential returned NaN or +inf at step {k}")
    return phi


def _mixed_logits(models, exps, x, masked, shape, k):
    r"""Per-site :math:`\sum_k a_k\log p_k(v\mid x)` at masked sites (0 at clean ones), float64 ``(B, L, V)``."""
    logp = 0.0
    for mdl, a in zip(models, exps):
        out = mdl(x)
        if out.shape != shape:
            raise ValueError(f"model output has shape {tuple(out.shape)}, expected {shape}")
        lp = torch.log_softmax(out.double(), -1)
        # clean sites may carry -inf / anything: only masked sites are used
        lp = torch.where(masked[..., None], lp, torch.zeros_like(lp))
        if torch.isnan(lp).any():
            raise FloatingPointError(f"FKC (masked): a model returned NaN logits at step {k}")
        logp = logp + a * lp
    log_z_site = torch.logsumexp(logp, -1)  # (B, L): log Z_i of the mixed conditional
    if not torch.isfinite(log_z_site[masked]).all():
        raise FloatingPointError(f"FKC (masked): the mixed conditional has no mass at step {k}")
    return logp, log_z_site


def _count_calibration(log_w: torch.Tensor, n_masked: torch.Tensor, G: int, L: int, alpha: float) -> torch.Tensor:
    r"""Per-particle :math:`b_g(j)`, ``j`` its number of masked sites, that gives each group's weighted
    mask count the law of the ideal intermediate target, :math:`\mathrm{Bin}(L, 1-\alpha)`, and keeps
    the group's total weight: :math:`b_g(j) = \log\mathrm{Bin}(j) - \log\sum_{\text{occupied } j'}
    \mathrm{Bin}(j') + \log W_g - \log W_{g,j}`, with :math:`W_{g,j}` the weight of the group's
    particles with ``j`` masks (classes without weight get 0). ``log_w``, ``n_masked``: ``(G*N,)``."""
    idx = n_masked + (L + 1) * torch.arange(G).repeat_interleave(log_w.numel() // G)
    cls = torch.full((G * (L + 1),), float("-inf"), dtype=torch.float64)
    mx = cls.scatter_reduce(0, idx, log_w, "amax")
    mx = torch.where(torch.isfinite(mx), mx, torch.zeros_like(mx))
    lse = (mx + torch.zeros_like(mx).scatter_add_(0, idx, torch.exp(log_w - mx[idx])).log()).reshape(G, L + 1)
    j = torch.arange(L + 1, dtype=torch.float64)
    a = torch.tensor(alpha, dtype=torch.float64)
    log_bin = (math.lgamma(L + 1) - torch.lgamma(j + 1) - torch.lgamma(L - j + 1) + torch.xlogy(j, 1 - a)
               + torch.xlogy(L - j, a))
    occupied = torch.isfinite(lse) & torch.isfinite(log_bin)
    log_bin = torch.where(occupied, log_bin.expand(G, -1), torch.full_like(lse, float("-inf")))
    total = torch.logsumexp(lse, 1, keepdim=True)
    b = torch.where(occupied, log_bin - torch.logsumexp(log_bin, 1, keepdim=True) + total - lse, torch.zeros_like(lse))
    return b.reshape(-1)[idx]


def sample_fkc_masked(models: Sequence[Callable], exponents: Sequence[float], process, shape, *,
                      num_particles: int, num_steps: int = 128, rate: str = "base", correct: bool = True,
                      threshold: float = 0.5, scheme: str = "systematic", warn_ess: float | None = 0.01,
                      mask_exponent: float | str = 1.0, lookahead: str | None = "counts",
                      potential: Callable | None = None,
                      generator: torch.Generator | None = None, callback: Callable | None = None,
                      progress: bool = False) -> MaskedFKCResult:
    r"""FKC sampling of :math:`\prod_k p_k(x)^{a_k}` from masked-diffusion models (module docstring).

    Args:
        models: masked-diffusion models ``x_t (B, L) -> logits (B, L, V)``.
        exponents: one per model, sum > 0 (annealing: ``[beta]``; product: ``[1, 1]``).
        process: the :class:`~sciffusion.domains.discrete.MaskedProcess` (its schedule gives
            :math:`\alpha_t`; the grid is uniform in t from 1 to 0).
        shape: ``(G, L)``: G groups (samples) of sequences of length L.
        num_particles: ``N`` per group.
        num_steps: grid steps; the weights are exact when no step unmasks two sites of one
            sequence, so use ``num_steps`` well above L (the bias is first order in 1/num_steps:
            final TV 0.0020 at 128 steps, 0.0010 at 256 on p^3 of a length-5 chain, by the exact
            recursion of the tests).
        rate: ``base`` (the models' own unmasking rate) or ``annealed`` (A-fold); see the module
            docstring. With ``correct=False`` and ``base`` this is plain ancestral sampling from
            the mixed conditionals (the uncorrected sampler).
        correct: apply weights and resampling (``False``: the uncorrected sampler).
        threshold, scheme: resampling when ESS < ``threshold * N`` (systematic by default).
            Default 0.5, kept because with the count look-ahead it no longer adds error: on p^3
            of the length-7 chain of benchmarks/RESULTS.md ("Masked FKC") no group's ESS falls
            below N/2 (the weights never degenerate more than the final ones), so the result is
            the plain importance-weighted one, below the i.i.d. TV floor, where the earlier
            default (no look-ahead) resampled ~40 times and ended at 2x the floor. On longer
            chains resampling costs a little against none at length 16 and 32 and helps at 64,
            where the importance weights collapse.
        warn_ess: warn once if a group's final ESS, or its ESS at a step where it resampled, fell
            below ``warn_ess * N`` (mid-run dips of weights that are not resampled do no harm).
        mask_exponent: :math:`\kappa`, the power of the mask-count factor in the intermediate
            targets (module docstring): 1 (default; with ``rate="base"`` the weights carry no
            count terms) or ``"A"`` (the sum of the exponents: the earlier default, whose
            transient count terms degrade ESS-triggered resampling; kept for comparison). The
            final target is the same.
        lookahead: the twist of the intermediate targets (module docstring, "Look-ahead"):
            ``"counts"`` (default; per-site prior masses plus a per-group calibration of the
            mask count to its exact binomial law), ``"product"`` (the factorised look-ahead
            :math:`\prod_{i\in M}Z_i(x)`) or ``None`` (the earlier, untwisted targets). All end at
            the same target, with the same final weights when no group resamples; no extra
            model call.
        potential: optional reward tilt ``phi(x, logp) -> (B,)`` float log-potential of the partly
            masked tokens ``x`` given the step's mixed log-conditional ``logp`` ``(B, L, V)``
            (``None`` at the final, fully unmasked state); see "Reward tilt" in the module docstring.
        generator: the randomness.
        callback: ``callback(k, t, x, state)`` after the reweighting at every grid time
            ``t = ts[k]``, ``k = 1..num_steps``, before resampling: ``(x, state.log_w)`` are then
            weighted particles for the intermediate target at ``t`` (``correct=True`` only).
        progress: a tqdm bar.

    Returns:
        :class:`MaskedFKCResult`.
    """
    models, exps = _check(models, exponents, process, num_particles, rate, threshold, mask_exponent)
    if len(shape) != 2 or shape[0] < 1 or shape[1] < 1:
        raise ValueError(f"shape must be (groups, length) with both >= 1, got {tuple(shape)}")
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive int, got {num_steps!r}")
    if lookahead not in LOOKAHEADS or isinstance(lookahead, bool):
        raise ValueError(f"lookahead must be one of {LOOKAHEADS}, got {lookahead!r}")
    G, L = shape
    N = num_particles
    A = float(sum(exps))
    kappa = A if mask_exponent == "A" else float(mask_exponent)
    V, m = process.vocab_size, process.mask_id
    out_shape = (G * N, L, V)
    x = process.prior((G * N, L))
    state = SMCState.init(G, N)
    ts = torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64)
    al = process.alpha(ts).clamp(0.0, 1.0)
    nfe, ess_hist, min_hist, lineages = 0, [], [], []
    worst = float("inf")  # the lowest ESS that mattered: at a resampling step or at the end
    root = torch.arange(G * N)  # each particle's starting ancestor (FKCResult.lineages)
    # psi: the log-twist of the current state (look-ahead + reward potential); pending: the move
    # increment of the previous step, completed once the model has been called at its end state
    psi = torch.zeros(G * N, dtype=torch.float64)
    pending = torch.zeros(G * N, dtype=torch.float64)

    prior = {}  # log Z_i at the all-mask start: the per-site masses before any token is known

    def twist(x, masked, logp, log_z_site, k, untwisted):
        if k == 0:
            prior["c"] = log_z_site[0].clone()
        if lookahead == "product":
            out = (log_z_site * masked).sum(1)
        elif lookahead == "counts":
            out = (prior["c"] * masked).sum(1)
        else:
            out = torch.zeros(G * N, dtype=torch.float64)
        if potential is not None:
            out = out + _potential(potential, x, logp, G * N, k)
        if lookahead == "counts" and k > 0:
            out = out + _count_calibration(untwisted + out, masked.sum(1), G, L, float(al[k]))
        return out

    def reweight(inc, k, x):
        if torch.isnan(inc).any():
            raise FloatingPointError(f"FKC (masked): NaN log-weight at step {k}")
        state.reweight(inc)
        e = ess(state.log_w)
        ess_hist.append(float(e.mean()))
        min_hist.append(float(e.min()))
        if callback is not None:
            callback(k, float(ts[k]), x, state)
        return e

    for k in tqdm(range(num_steps), disable=not progress, desc="fkc-masked", leave=False):
        a0, a1 = al[k], al[k + 1]
        masked = x == m
        logp, log_z_site = _mixed_logits(models, exps, x, masked, out_shape, k)
        nfe += len(models)
        if correct:
            psi_new = twist(x, masked, logp, log_z_site, k, state.log_w.reshape(-1) + pending - psi)
            inc, psi = pending + psi_new - psi, psi_new
            if k == 0:  # the all-mask start: a constant within each group, nothing to resample
                state.reweight(inc)
            else:
                e = reweight(inc, k, x)
                (x, root, psi, logp, log_z_site), state, did = maybe_resample(
                    (x, root, psi, logp, log_z_site), state, step=k, threshold=threshold, scheme=scheme,
                    generator=generator)
                masked = x == m
                if did.any():
                    worst = min(worst, float(e[did].min()))
                lineages.append(root.unique().numel() / G if did.any() or not lineages else lineages[-1])
        if rate == "annealed":
            gamma = -torch.expm1(A * (torch.log1p(-a1) - torch.log1p(-a0))) if a0 < 1 else torch.tensor(1.0)
        else:
            gamma = (a1 - a0) / (1 - a0)
        gamma = gamma.clamp(0.0, 1.0).to(torch.float64)
        pi = torch.softmax(logp, -1)
        u = torch.rand(x.shape, generator=generator, dtype=torch.float64)
        unmask = masked & (u < gamma)
        new = x.clone()
        if unmask.any():
            new[unmask] = sample_categorical(pi[unmask], generator=generator, validate=False)
        if correct:
            n_u, n_m = (~masked).sum(1), masked.sum(1)
            n_new = unmask.sum(1)
            pending = kappa * (_xlogy(n_u + n_new, a1) + _xlogy(n_m - n_new, 1 - a1) - _xlogy(n_u, a0)
                               - _xlogy(n_m, 1 - a0))
            pending = pending + _xlogy(n_u, a0 / a1) + _xlogy(n_new, 1 - a0 / a1) - _xlogy(n_new, gamma) \
                - _xlogy(n_m - n_new, 1 - gamma) + (log_z_site * unmask).sum(1)
        x = new
    if correct:  # the last increment, at the end state (fully unmasked when alpha reaches 1)
        masked = x == m
        last = torch.zeros(G * N, dtype=torch.float64)
        if masked.any() and lookahead == "product":  # alpha(0) < 1 left masks: their look-ahead needs the model
            logp, log_z_site = _mixed_logits(models, exps, x, masked, out_shape, num_steps)
            nfe += len(models)
            last = (log_z_site * masked).sum(1)
        elif masked.any() and lookahead == "counts":
            last = (prior["c"] * masked).sum(1)
        if potential is not None:
            last = last + _potential(potential, x, None, G * N, num_steps)
        worst = min(worst, float(reweight(pending + last - psi, num_steps, x).min()))
        lineages.append(lineages[-1] if lineages else root.unique().numel() / G)
    min_ess = torch.tensor(min_hist, dtype=torch.float64)
    if correct and warn_ess is not None and worst < warn_ess * N:
        warnings.warn(f"FKC (masked) weight degeneracy: a group's ESS fell to {worst:.1f} of "
                      f"{N} particles; use more particles or steps", RuntimeWarning, stacklevel=2)
    return MaskedFKCResult(x=x, log_w=state.log_w, log_z=state.log_normalizer(), ts=ts,
                           ess=torch.tensor(ess_hist, dtype=torch.float64), min_ess=min_ess,
                           resample_steps=list(state.resample_steps), nfe=nfe,
                           lineages=torch.tensor(lineages, dtype=torch.float64))


__all__ = ["sample_fkc_masked", "MaskedFKCResult"]
