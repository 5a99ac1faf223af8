"""Samplers for discrete diffusion. Every categorical is drawn by
:func:`sciffusion.categorical.sample_categorical` (float64 inverse CDF, explicit generator).

Model interfaces (see the package docstring):

* masked diffusion: ``model(x_t) -> logits (B, L, V)`` of :math:`p(x_0 \\mid x_t)`, ``x_t`` holding
  ``process.mask_id`` at masked sites. Time-free (Zheng et al. 2024, Prop. 1), which is what
  makes caching and first-hitting sampling possible.
* uniform diffusion: ``model(x_t, t) -> logits`` of the leave-one-out posterior
  :math:`p(x_0^i \\mid x_t^{-i})` (``model.output == "loo"``, default) or of the denoiser
  (``"denoiser"``; converted exactly, :func:`~.posteriors.loo_from_denoiser`).
* absorbing-uniform: ``model(x_t, z, t) -> logits`` of :math:`p(x_0 \\mid x_t, z)`.

Each sampler returns a :class:`DiscreteSample` with the tokens and the number of batched
model calls (``nfe``) and calls per sequence (``nfe_per_sequence``). Time runs from 1 (noise)
to 0 (data) on a uniform grid of ``num_steps`` steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from sciffusion.categorical import apply_temperature, sample_categorical, top_p_filter
from sciffusion.utils import choice_error

from .posteriors import gibbs_conditional, loo_from_denoiser, uniform_bridge
from .processes import AbsorbingUniformProcess, MaskedProcess, UniformProcess, check_tokens

__all__ = ["DiscreteSample", "ancestral_step", "first_hitting_step", "sample_ancestral", "sample_first_hitting",
           "sample_remdm", "sample_uniform", "sample_absorbing_uniform", "gibbs_corrector", "SAMPLERS", "get_discrete_sampler", "model_probs"]


@dataclass
class DiscreteSample:
    """What a discrete sampler returns.

    Attributes:
        x: ``(B, L)`` long tokens.
        nfe: batched model calls made.
        nfe_per_sequence: ``(B,)`` model calls each sequence took part in.
        z: the noise tokens (absorbing-uniform only).
    """

    x: torch.Tensor
    nfe: int
    nfe_per_sequence: torch.Tensor
    z: torch.Tensor | None = None


def model_probs(logits: torch.Tensor, temperature: float = 1.0, top_p: float = 1.0) -> torch.Tensor:
    """Float64 probabilities from logits with temperature and nucleus (top-p) filtering."""
    if not torch.isfinite(logits).any(-1).all():
        raise FloatingPointError("model returned a row with no finite logit (NaN or all -inf)")
    if torch.isnan(logits).any():
        raise FloatingPointError("model returned NaN logits")
    p = torch.softmax(apply_temperature(logits.double(), temperature), -1)
    return top_p_filter(p, top_p)


def _shape(shape, x, prior):
    if x is not None:
        return x.clone()
    if len(shape) != 2 or shape[1] < 1 or shape[0] < 1:
        raise ValueError(f"shape must be (batch, length) with both >= 1, got {tuple(shape)}")
    return prior(shape)


def _masked_start(model, process, shape, x):
    """The validated starting tokens of a masked sampler: ``x`` (copied) or the all-mask prior."""
    x = _shape(shape, x, process.prior)
    return check_tokens(x, process.vocab_size, "x", allow=process.mask_id,
                        max_len=getattr(model, "max_len", None))


def _grid(num_steps):
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}")
    return torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64)


def _check_process(process, cls):
    if not isinstance(process, cls):
        raise TypeError(f"process must be a {cls.__name__}, got {type(process).__name__}")


def _call(model, x, V, *args):
    logits = model(x, *args)
    if logits.shape != x.shape + (V,):
        raise ValueError(f"model output has shape {tuple(logits.shape)}, expected {tuple(x.shape) + (V,)}")
    return logits


def ancestral_step(x: torch.Tensor, probs: torch.Tensor, alpha_t: float, alpha_s: float, mask_id: int, *,
                   generator: torch.Generator | None = None, method: str = "cdf",
                   dtype: torch.dtype = torch.float64) -> torch.Tensor:
    r"""One ancestral transition of masked diffusion from t to s < t, for a batch
    (Sahoo et al. 2024, Eq. 7; Shi et al. 2024, Alg. 2).

    Every masked site draws independently from the (V+1)-way categorical

    .. math:: p(x_s^i = v) = \frac{\alpha_s - \alpha_t}{1 - \alpha_t}\,p(x_0^i = v \mid x_t),\qquad
              p(x_s^i = m) = \frac{1 - \alpha_s}{1 - \alpha_t};

    clean sites stay. This is the one implementation of the step: :func:`sample_ancestral` and the
    value-guided decoders of ``sequence_design`` call it.

    Args:
        x: ``(B, L)`` long tokens, ``mask_id`` at masked sites (not modified).
        probs: :math:`p(x_0 \mid x_t)` in float64, either ``(B, L, V)`` or ``(n, V)``: the rows at
            the ``n`` masked sites of ``x`` in row-major order (``probs[x == mask_id]``).
        alpha_t, alpha_s: keep-probabilities at t and s, :math:`\alpha_t \le \alpha_s`, :math:`\alpha_t < 1`.
        mask_id: the mask token.
        generator: the randomness.
        method, dtype: passed to :func:`sample_categorical`.

    Returns:
        ``(B, L)`` long :math:`x_s` (a new tensor).
    """
    a_t, a_s = float(alpha_t), float(alpha_s)
    if not 0.0 <= a_t <= a_s <= 1.0 or a_t == 1.0:
        raise ValueError(f"need 0 <= alpha_t <= alpha_s <= 1 and alpha_t < 1, got alpha_t={a_t}, alpha_s={a_s}")
    masked = x == mask_id
    pm = probs[masked] if probs.dim() == 3 else probs
    if pm.dim() != 2 or pm.shape[0] != int(masked.sum()):
        raise ValueError(f"probs must be (B, L, V) or (num_masked, V) = ({int(masked.sum())}, V), "
                         f"got {tuple(probs.shape)}")
    out = x.clone()
    if pm.shape[0] == 0:
        return out
    V = pm.shape[-1]
    q = torch.cat([pm * ((a_s - a_t) / (1.0 - a_t)),
                   torch.full((pm.shape[0], 1), (1.0 - a_s) / (1.0 - a_t), dtype=torch.float64, device=x.device)], -1)
    draw = sample_categorical(q, generator=generator, method=method, dtype=dtype, validate=False)
    out[masked] = torch.where(draw == V, torch.full_like(draw, mask_id), draw)
    return out


def first_hitting_step(x: torch.Tensor, logits: torch.Tensor, mask_id: int, *,
                       generator: torch.Generator | None = None, temperature: float = 1.0,
                       top_p: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The first-hitting unmasking of one site per sequence (Zheng et al. 2024, Alg. 1).

    A site :math:`i` is chosen uniformly among the masked sites of each row and set to
    :math:`x^i \sim p(x_0^i \mid x_t)` (with temperature / top-p); every other site stays. The time
    of the jump (needed only by time-conditioned models) is drawn by :func:`sample_first_hitting`.
    This is the one implementation of the step, shared by :func:`sample_first_hitting` and the
    decoders of ``sequence_design``.

    Args:
        x: ``(B, L)`` long tokens with at least one ``mask_id`` per row (not modified).
        logits: ``(B, L, V)`` model output at ``x``; only the chosen site's row is used.
        mask_id: the mask token.
        generator: the randomness (site first, then token).

    Returns:
        ``(x_new, pos)``: ``(B, L)`` tokens and the ``(B,)`` unmasked positions.
    """
    masked = x == mask_id
    if not masked.any(1).all():
        raise ValueError("first_hitting_step: every row of x needs at least one masked site")
    if logits.shape[:2] != x.shape:
        raise ValueError(f"logits must be (B, L, V) with (B, L) = {tuple(x.shape)}, got {tuple(logits.shape)}")
    pos = sample_categorical(masked.double(), generator=generator, validate=False)
    rows = torch.arange(x.shape[0], device=x.device)
    tok = sample_categorical(model_probs(logits[rows, pos], temperature, top_p), generator=generator,
                             validate=False)
    out = x.clone()
    out[rows, pos] = tok
    return out, pos


def sample_ancestral(model, process: MaskedProcess, shape=None, num_steps: int = 128, *,
                     generator: torch.Generator | None = None, x: torch.Tensor | None = None,
                     cache: bool = True, temperature: float = 1.0, top_p: float = 1.0,
                     method: str = "cdf", dtype: torch.dtype = torch.float64,
                     progress: bool = False) -> DiscreteSample:
    """Ancestral sampling of masked diffusion (Sahoo et al. 2024, Eq. 7; Shi et al. 2024, Alg. 2).

    From t to s < t every masked site draws from the (V+1)-way categorical

    .. math:: p(x_s^i = v) = \\frac{\\alpha_s - \\alpha_t}{1 - \\alpha_t}\\,p(x_0^i = v \\mid x_t),\\qquad
              p(x_s^i = m) = \\frac{1 - \\alpha_s}{1 - \\alpha_t};

    clean sites stay. With ``cache=True`` a sequence's logits are recomputed only after one of its
    tokens changed (the model is time-free), so ``nfe_per_sequence <= min(num_steps, L)``.

    Args:
        model: ``x_t (B, L) -> logits (B, L, V)``.
        process: a :class:`MaskedProcess`.
        shape: ``(B, L)`` (or give ``x``, a partially masked start).
        num_steps: steps of the uniform time grid.
        generator: the randomness.
        cache: skip model calls for unchanged sequences.
        temperature, top_p: applied to :math:`p(x_0 \\mid x_t)`.
        method, dtype: passed to :func:`sample_categorical` (``"gumbel"``/float32 only to
            demonstrate the float32 bias).
    """
    _check_process(process, MaskedProcess)
    x = _masked_start(model, process, shape, x)
    B, L, V, m = *x.shape, process.vocab_size, process.mask_id
    dev = x.device
    ts = _grid(num_steps)
    al = process.alpha(ts).tolist()
    # p(x0 | x_t) kept only where it is needed: at masked sites, as rows of a (num_masked, V) table
    slot = torch.full((B, L), -1, dtype=torch.long, device=dev)
    table = torch.zeros(0, V, dtype=torch.float64, device=dev)
    dirty = torch.ones(B, dtype=torch.bool, device=dev)
    per_seq = torch.zeros(B, dtype=torch.long, device=dev)
    nfe = 0
    for k in tqdm(range(num_steps), disable=not progress, desc="ancestral", leave=False):
        masked = x == m
        if not masked.any():
            break
        need = masked.any(1) & (dirty if cache else torch.ones_like(dirty))
        if need.any():
            rows = need.nonzero().squeeze(1)
            logits = _call(model, x[rows], V)
            sel = masked[rows]
            fresh = model_probs(logits[sel], temperature, top_p)        # (n, V) at masked sites only
            keep = masked & ~need[:, None]                               # cached rows stay as they are
            old = table[slot[keep]]
            slot = torch.full((B, L), -1, dtype=torch.long, device=dev)
            slot[keep] = torch.arange(old.shape[0], device=dev)
            new_mask = torch.zeros_like(masked)
            new_mask[rows] = sel
            slot[new_mask] = old.shape[0] + torch.arange(fresh.shape[0], device=dev)
            table = torch.cat([old, fresh])
            nfe += 1
            per_seq[rows] += 1
            dirty[rows] = False
        x_new = ancestral_step(x, table[slot[masked]], al[k], al[k + 1], m, generator=generator, method=method,
                               dtype=dtype)
        dirty |= (x_new != x).any(1)
        x = x_new
    return DiscreteSample(x, nfe, per_seq)


def sample_first_hitting(model, process: MaskedProcess, shape=None, *, generator: torch.Generator | None = None,
                         x: torch.Tensor | None = None, temperature: float = 1.0, top_p: float = 1.0,
                         return_times: bool = False, progress: bool = False) -> DiscreteSample:
    """The first-hitting sampler (Zheng et al. 2024, Alg. 1 / Prop. 3), batched.

    With ``n`` masked sites at time t, each one's unmasking time has conditional CDF
    :math:`(1-\\alpha_s)/(1-\\alpha_t)` on ``s < t``, so the next unmasking time (the first of
    ``n``) solves in closed form

    .. math:: 1 - \\alpha_{s} = (1 - \\alpha_t)\\,u^{1/n},\\quad u \\sim \\mathrm{U}(0,1);

    one uniformly chosen masked site is then unmasked with :math:`x_0^i \\sim p(x_0^i \\mid x_t)`.
    Exactly one model call per token (``nfe_per_sequence`` = number of masked sites), and exact
    whenever the model is. The times only matter for time-conditioned models and are returned
    with ``return_times=True`` (as ``sample.times``, ``(B, n)``, decreasing).
    """
    _check_process(process, MaskedProcess)
    x = _masked_start(model, process, shape, x)
    B, L, V, m = *x.shape, process.vocab_size, process.mask_id
    sched = process.schedule
    dev = x.device
    t = torch.ones(B, dtype=torch.float64, device=dev)
    times, per_seq, nfe = [], torch.zeros(B, dtype=torch.long, device=dev), 0
    n_masked = (x == m).sum(1)
    for _ in tqdm(range(int(n_masked.max())), disable=not progress, desc="first-hitting", leave=False):
        rows = (n_masked > 0).nonzero().squeeze(1)
        if return_times:
            u = torch.rand(rows.shape[0], generator=generator, dtype=torch.float64, device=dev)
            a_t = sched.alpha(t[rows])
            t[rows] = sched.t_of_alpha(1.0 - (1.0 - a_t) * u ** (1.0 / n_masked[rows].double()))
            times.append(t.clone())
        xr = x[rows]
        x[rows], _ = first_hitting_step(xr, _call(model, xr, V), m, generator=generator, temperature=temperature,
                                        top_p=top_p)
        n_masked[rows] -= 1
        per_seq[rows] += 1
        nfe += 1
    out = DiscreteSample(x, nfe, per_seq)
    if return_times:
        out.times = torch.stack(times, 1) if times else torch.zeros(B, 0, dtype=torch.float64)
    return out


def sample_remdm(model, process: MaskedProcess, shape=None, num_steps: int = 128, *,
                 generator: torch.Generator | None = None, x: torch.Tensor | None = None,
                 eta: float = 0.02, strategy: str = "cap", temperature: float = 1.0, top_p: float = 1.0,
                 progress: bool = False) -> DiscreteSample:
    """ReMDM: masked diffusion with remasking (Wang et al. 2025, Eq. 6 and Sec. 4.1).

    A clean site is remasked with probability :math:`\\sigma_t`; a masked site unmasks to
    :math:`v` w.p. :math:`\\frac{\\alpha_s - (1-\\sigma_t)\\alpha_t}{1-\\alpha_t} p(x_0^i=v\\mid x_t)`,
    which keeps the forward marginals for any
    :math:`0 \\le \\sigma_t \\le \\sigma_t^{\\max} = \\min\\{1, (1-\\alpha_s)/\\alpha_t\\}`.
    ``strategy="cap"``: :math:`\\sigma_t = \\min(\\eta, \\sigma_t^{\\max})`; ``"rescale"``:
    :math:`\\sigma_t = \\eta\\,\\sigma_t^{\\max}`. ``eta=0`` is the ancestral sampler. One model call
    per step (tokens change back and forth, so no caching).
    """
    _check_process(process, MaskedProcess)
    if strategy not in ("cap", "rescale"):
        raise ValueError(f"strategy must be 'cap' or 'rescale', got {strategy!r}")
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must lie in [0, 1], got {eta}")
    x = _masked_start(model, process, shape, x)
    B, L, V, m = *x.shape, process.vocab_size, process.mask_id
    ts = _grid(num_steps)
    al = process.alpha(ts)
    nfe = 0
    for k in tqdm(range(num_steps), disable=not progress, desc="remdm", leave=False):
        a_t, a_s = al[k], al[k + 1]
        s_max = torch.clamp((1.0 - a_s) / a_t, max=1.0) if a_t > 0 else torch.tensor(1.0, dtype=torch.float64)
        sigma = torch.minimum(s_max, torch.tensor(eta, dtype=torch.float64)) if strategy == "cap" else eta * s_max
        masked = x == m
        p = model_probs(_call(model, x, V), temperature, top_p)
        nfe += 1
        if masked.any():
            pm = p[masked]
            if a_t < 1:
                r_unmask = (a_s - (1.0 - sigma) * a_t) / (1.0 - a_t)
                r_stay = (1.0 - a_s - sigma * a_t) / (1.0 - a_t)
            else:
                r_unmask, r_stay = torch.tensor(0.0, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64)
            q = torch.cat([pm * r_unmask, r_stay.clamp_min(0).expand(pm.shape[0], 1)], -1)
            d = sample_categorical(q, generator=generator, validate=False)
            new_m = torch.where(d == V, torch.full_like(d, m), d)
        clean = ~masked
        if clean.any() and sigma > 0:
            q = torch.stack([torch.full((int(clean.sum()),), 1.0 - float(sigma), dtype=torch.float64),
                             torch.full((int(clean.sum()),), float(sigma), dtype=torch.float64)], -1)
            remask = sample_categorical(q, generator=generator, validate=False) == 1
            xc = x[clean]
            x[clean] = torch.where(remask, torch.full_like(xc, m), xc)
        if masked.any():
            x[masked] = new_m
    return DiscreteSample(x, nfe, torch.full((B,), nfe, dtype=torch.long))


def _uniform_loo(model, process, x, t, output, temperature=1.0, top_p=1.0):
    """Leave-one-out posterior probabilities from a uniform-diffusion model at scalar time t."""
    tb = torch.as_tensor(t, dtype=torch.float64).expand(x.shape[0])
    p = torch.softmax(_call(model, x, process.vocab_size, tb).double(), -1)
    if output == "denoiser":
        p = loo_from_denoiser(p, x, process.alpha(tb))
    if temperature != 1.0:
        p = torch.softmax(apply_temperature(p.clamp_min(1e-300).log(), temperature), -1)
    return top_p_filter(p, top_p)


def gibbs_corrector(model, process: UniformProcess, x: torch.Tensor, t, num_steps: int = 1, *,
                    generator: torch.Generator | None = None, output: str | None = None,
                    temperature: float = 1.0, top_p: float = 1.0) -> torch.Tensor:
    """Random-scan Gibbs steps on :math:`p_t` (the informed corrector, Zhao et al. 2024).

    Each step picks one site per sequence uniformly at random and redraws it from

    .. math:: p_t(x^i = b \\mid x^{-i}) = \\alpha_t\\,p_\\theta(x_0^i = b \\mid x^{-i}) + (1-\\alpha_t)/V,

    which leaves :math:`p_t` invariant when the leave-one-out posterior is exact. One model call
    per step. Shapes: ``x (B, L) -> (B, L)``.
    """
    _check_process(process, UniformProcess)
    output = output or getattr(model, "output", "loo")
    x = check_tokens(x, process.vocab_size, "x").clone()
    B, L = x.shape
    a = process.alpha(torch.as_tensor(t, dtype=torch.float64).expand(B))
    rows = torch.arange(B)
    for _ in range(num_steps):
        loo = _uniform_loo(model, process, x, t, output, temperature, top_p)
        site = torch.randint(L, (B,), generator=generator)
        cond = gibbs_conditional(loo[rows, site][:, None], a)[:, 0]
        x[rows, site] = sample_categorical(cond, generator=generator, validate=False)
    return x


def sample_uniform(model, process: UniformProcess, shape=None, num_steps: int = 128, *,
                   generator: torch.Generator | None = None, x: torch.Tensor | None = None,
                   output: str | None = None, corrector_steps: int = 0, temperature: float = 1.0,
                   top_p: float = 1.0, progress: bool = False) -> DiscreteSample:
    """Uniform diffusion with the plug-in bridge and an optional Gibbs (informed) corrector.

    Predictor, every site in parallel (:func:`~.posteriors.uniform_bridge`):

    .. math:: p(x_s^i = b \\mid x_t) \\propto q_{t\\mid s}(x_t^i \\mid b)
              \\sum_v q_s(b\\mid v)\\, p_\\theta(x_0^i = v \\mid x_t^{-i}),

    the exact single-site reverse transition when the leave-one-out posterior is exact. A
    model that outputs the denoiser is converted exactly first (``loo ∝ D / q_t(x_t^i|·)``).
    Corrector (after each predictor step with s > 0, ``corrector_steps`` times): one site per
    sequence, chosen uniformly, is redrawn from :math:`p_s(x^i \\mid x^{-i}) = \\alpha_s\\ell(b) +
    (1-\\alpha_s)/V` — a random-scan Gibbs step that leaves :math:`p_s` invariant (Zhao et al. 2024).
    Temperature / top-p act on the leave-one-out posterior. NFE = steps * (1 + corrector_steps).
    """
    _check_process(process, UniformProcess)
    output = output or getattr(model, "output", "loo")
    if output not in ("loo", "denoiser"):
        raise ValueError(f"output must be 'loo' or 'denoiser', got {output!r}")
    if corrector_steps < 0:
        raise ValueError(f"corrector_steps must be >= 0, got {corrector_steps}")
    x = _shape(shape, x, lambda s: process.prior(s, generator))
    x = check_tokens(x, process.vocab_size, "x", max_len=getattr(model, "max_len", None))
    B, L, V = *x.shape, process.vocab_size
    ts = _grid(num_steps)
    nfe = 0

    for k in tqdm(range(num_steps), disable=not progress, desc="uniform", leave=False):
        t, s = ts[k], ts[k + 1]
        loo = _uniform_loo(model, process, x, t, output, temperature, top_p)
        nfe += 1
        B_ = x.shape[0]
        q = uniform_bridge(loo, x, process.alpha(t.expand(B_)), process.alpha(s.expand(B_)))
        x = sample_categorical(q, generator=generator, validate=False)
        if s > 0 and corrector_steps:
            x = gibbs_corrector(model, process, x, s, corrector_steps, generator=generator, output=output,
                                temperature=temperature, top_p=top_p)
            nfe += corrector_steps
    return DiscreteSample(x, nfe, torch.full((B,), nfe, dtype=torch.long))


def sample_absorbing_uniform(model, process: AbsorbingUniformProcess, shape=None, num_steps: int = 128, *,
                             generator: torch.Generator | None = None, z: torch.Tensor | None = None,
                             temperature: float = 1.0, top_p: float = 1.0, progress: bool = False) -> DiscreteSample:
    """Ancestral sampling of the absorbing-uniform reformulation.

    Start at :math:`x_1 = z`. A site is masked when :math:`x_t^i = z^i`; from t to s it becomes
    :math:`v \\ne z^i` w.p. :math:`r\\,p(x_0^i = v \\mid x_t, z)` with
    :math:`r = (\\alpha_s-\\alpha_t)/(1-\\alpha_t)`, and stays :math:`z^i` otherwise (which covers
    :math:`x_0^i = z^i`: natural remasking). Clean sites never change (carry-over unmasking).
    At the last step (r = 1) every masked site is drawn from the full posterior.
    """
    _check_process(process, AbsorbingUniformProcess)
    if z is None:
        if shape is None or len(shape) != 2 or min(shape) < 1:
            raise ValueError(f"shape must be (batch, length) with both >= 1, got {shape}")
        z = process.noise(shape, generator)
    z = check_tokens(z, process.vocab_size, "z", max_len=getattr(model, "max_len", None))
    x = z.clone()
    B, L, V = *x.shape, process.vocab_size
    ts = _grid(num_steps)
    al = process.alpha(ts)
    nfe = 0
    for k in tqdm(range(num_steps), disable=not progress, desc="absorbing-uniform", leave=False):
        masked = x == z
        if not masked.any():
            break
        p = model_probs(_call(model, x, V, z, ts[k].expand(B)), temperature, top_p)
        nfe += 1
        r = (al[k + 1] - al[k]) / (1.0 - al[k])
        pm = p[masked] * r
        pm.scatter_add_(-1, z[masked][:, None], (1.0 - r).expand(pm.shape[0], 1).clone())
        x[masked] = sample_categorical(pm, generator=generator, validate=False)
    return DiscreteSample(x, nfe, torch.full((B,), nfe, dtype=torch.long), z=z)


SAMPLERS = {"ancestral": sample_ancestral, "first_hitting": sample_first_hitting, "remdm": sample_remdm,
            "uniform": sample_uniform, "absorbing_uniform": sample_absorbing_uniform}


def get_discrete_sampler(name: str):
    """A discrete sampler by name (see :data:`SAMPLERS`)."""
    if name not in SAMPLERS:
        raise choice_error("discrete sampler", name, SAMPLERS)
    return SAMPLERS[name]
