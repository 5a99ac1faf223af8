r"""Training losses and likelihood bounds for discrete diffusion.

All ELBO losses return a per-sequence Monte Carlo estimate of the continuous-time negative
ELBO :math:`-\log p_\theta(x_0) \le \mathcal L(x_0)` in nats, ``(B,)``, from one draw of
:math:`t` and :math:`x_t` per sequence; with the exact model each equals :math:`-\log p(x_0)` in
expectation (the reverse process then reproduces the forward path measure; tested on the oracle).

* :func:`masked_elbo` (Sahoo et al. 2024, Eq. 10; Shi et al. 2024, Eq. 5):

  .. math:: \mathcal L = \int_0^1 \frac{-\alpha'_t}{1-\alpha_t}\,
            \mathbb E_{x_t}\Big[\sum_{i:\,x_t^i=m} -\log p_\theta(x_0^i \mid x_t)\Big]\,dt

* :func:`uniform_elbo` — denoising score entropy with the forward rate :math:`\beta_t/V`,
  :math:`\beta_t = -\alpha'_t/\alpha_t` (Lou et al. 2024, Eq. 9 / Thm 3.6), summed over every
  site and every :math:`b \ne x_t^i` in closed form:

  .. math:: \mathcal L = \int_0^1 \frac{\beta_t}{V}\,\mathbb E_{x_t}\sum_i\sum_{b\ne x_t^i}
            \big[\hat s_b - r_b\log\hat s_b + r_b(\log r_b - 1)\big]dt + \mathrm{KL}(q_1 \| \mathrm U)

  with :math:`r_b = q_t(b\mid x_0^i)/q_t(x_t^i\mid x_0^i)` and :math:`\hat s` the model's
  concrete score built from its leave-one-out posterior (:func:`~.posteriors.concrete_score_from_loo`).
* :func:`absorbing_uniform_elbo` — the masked ELBO of the absorbing reformulation (derived
  here from the per-step KLs as the step goes to zero; :math:`w_t = -\alpha'_t/(1-\alpha_t)`,
  :math:`\hat p = p_\theta(\cdot\mid x_t, z)`):

  .. math:: \mathcal L = \int_0^1 w_t\,\mathbb E\sum_{i:\,x_t^i = z^i}
            \begin{cases} -\log\hat p(x_0^i) - \hat p(z^i) & x_0^i \ne z^i \\
                           1 - \hat p(z^i) & x_0^i = z^i\end{cases}dt

* :func:`masked_elbo_count` — the same masked NELBO, estimated over the number of masked sites
  instead of over :math:`t`. With :math:`u = 1-\alpha_t` the integral above is
  :math:`\int_0^1 u^{-1}\,\mathbb E_{m\sim\mathrm{Bern}(u)^L}[\sum_{i\in m} \ell_i]\,du`; conditioning on
  :math:`k = |m|` and using :math:`\binom Lk\int_0^1 u^{k-1}(1-u)^{L-k}du = 1/k` gives (schedule-free)

  .. math:: \mathcal L = L\,\mathbb E_{k\sim\mathcal U\{1..L\}}\,\mathbb E_{m:\,|m|=k}
            \Big[\frac1k\sum_{i\in m} -\log p_\theta(x_0^i \mid x_m)\Big]

  — the any-order autoregressive form (Hoogeboom et al. 2022, ARDM; Ou et al. 2024, RADD). The
  random weight :math:`\alpha'/(1-\alpha)\cdot|m|` of the time form (variance :math:`\propto(1-u)/u`, huge
  as :math:`t \to 0`) becomes the constant :math:`L`; it is the default masked training loss.
* :func:`cross_entropy_loss` — unweighted cross-entropy on masked sites (not a bound; MaskGIT-style).

:func:`make_loss` adapts these to :func:`sciffusion.training.fit` (mean per token);
:func:`evaluate_likelihood` reports held-out NELBO in nats per sequence and bits per token.
"""

from __future__ import annotations

import math

import torch

from .posteriors import concrete_score_from_loo
from .processes import AbsorbingUniformProcess, MaskedProcess, UniformProcess, check_tokens

__all__ = ["masked_elbo", "masked_elbo_count", "uniform_elbo", "absorbing_uniform_elbo", "cross_entropy_loss",
           "make_loss",
           "evaluate_likelihood", "sample_times"]


def sample_times(n: int, generator: torch.Generator | None, stratified: bool = True) -> torch.Tensor:
    """``n`` times in (0, 1]: stratified (one per bin, low variance) or i.i.d.; float64."""
    u = torch.rand(n, generator=generator, dtype=torch.float64)
    if stratified:
        # one time per bin, bins in random order (rows may be repeats of one sequence)
        u = (u + torch.randperm(n, generator=generator).double()) / n
    return 1.0 - u  # in (0, 1]: t = 0 has no masked site and an infinite weight


def _logp(logits, x0):
    return torch.log_softmax(logits.double(), -1).gather(-1, x0[..., None]).squeeze(-1)


def masked_elbo(model, process: MaskedProcess, x0: torch.Tensor, generator=None, t=None) -> torch.Tensor:
    """One-sample masked NELBO per sequence, ``(B,)`` nats. ``t`` (``(B,)``) defaults to stratified times."""
    x0 = check_tokens(x0, process.vocab_size)
    t = sample_times(x0.shape[0], generator) if t is None else t
    xt = process.perturb(x0, t, generator)
    nll = -_logp(model(xt), x0)
    masked = xt == process.mask_id
    return process.schedule.elbo_weight(t) * torch.where(masked, nll, torch.zeros_like(nll)).sum(-1)


def masked_elbo_count(model, process: MaskedProcess, x0: torch.Tensor, generator=None, k=None) -> torch.Tensor:
    """One-sample masked NELBO per sequence, ``(B,)`` nats, drawn over the mask count (see module doc).

    ``k`` (``(B,)`` long in ``1..L``) defaults to stratified counts: one per bin of ``1..L``, so a
    batch covers all mask levels evenly; the ``k`` masked sites are a uniformly random subset.
    Unbiased for the same NELBO as :func:`masked_elbo`, for every schedule.
    """
    x0 = check_tokens(x0, process.vocab_size)
    B, L = x0.shape
    if k is None:
        # stratified u in (0, 1] -> k = ceil(u L) in 1..L, each count equally likely
        k = torch.ceil(sample_times(B, generator) * L).long().clamp(1, L)
    k = torch.as_tensor(k, dtype=torch.long, device=x0.device)
    if k.shape != (B,) or bool((k < 1).any()) or bool((k > L).any()):
        raise ValueError(f"k must be a (B,) = ({B},) tensor of counts in 1..{L}")
    # a uniform random k-subset: the k smallest of L i.i.d. uniforms
    rank = torch.rand(B, L, generator=generator, dtype=torch.float64).argsort(-1).argsort(-1)
    masked = rank.to(x0.device) < k[:, None]
    xt = torch.where(masked, torch.full_like(x0, process.mask_id), x0)
    nll = -_logp(model(xt), x0)
    return (L / k.double()) * torch.where(masked, nll, torch.zeros_like(nll)).sum(-1)


def cross_entropy_loss(model, process: MaskedProcess, x0, generator=None, t=None) -> torch.Tensor:
    """Mean cross-entropy over masked sites per sequence (no ELBO weight), ``(B,)``."""
    x0 = check_tokens(x0, process.vocab_size)
    t = sample_times(x0.shape[0], generator) if t is None else t
    xt = process.perturb(x0, t, generator)
    masked = (xt == process.mask_id).double()
    nll = -_logp(model(xt), x0)
    return (nll * masked).sum(-1) / masked.sum(-1).clamp_min(1.0)


def uniform_elbo(model, process: UniformProcess, x0, generator=None, t=None, output: str | None = None) -> torch.Tensor:
    """One-sample uniform-diffusion NELBO (score entropy) per sequence, ``(B,)`` nats.

    ``model(x_t, t)`` gives logits of the leave-one-out posterior (or of the denoiser if
    ``output``/``model.output`` is ``"denoiser"``, converted exactly).
    """
    from .posteriors import loo_from_denoiser

    x0 = check_tokens(x0, process.vocab_size)
    B, L = x0.shape
    V = process.vocab_size
    t = sample_times(B, generator) if t is None else t
    a = process.alpha(t)
    beta = -process.d_alpha(t) / a
    xt = process.perturb(x0, t, generator)
    post = torch.softmax(model(xt, t).double(), -1)
    if (output or getattr(model, "output", "loo")) == "denoiser":
        post = loo_from_denoiser(post, xt, a)
    s_hat = concrete_score_from_loo(post, xt, a)                      # (B, L, V), 1 at b = x_t^i
    a3 = a[:, None, None]
    q0 = a3 * torch.nn.functional.one_hot(x0, V).double() + (1 - a3) / V  # q_t(b | x0^i) over b
    r = q0 / q0.gather(-1, xt[..., None])
    term = s_hat - r * s_hat.log() + r * (r.log() - 1.0)             # zero at b = x_t^i (s = r = 1)
    loss = (beta / V) * term.sum((-1, -2))
    a1 = float(process.alpha(1.0))
    if a1 > 0:  # KL(q_1(.|x0^i) || uniform), identical for every site
        hi = a1 + (1 - a1) / V
        lo = (1 - a1) / V
        loss = loss + L * (hi * math.log(hi * V) + (V - 1) * lo * math.log(lo * V))
    return loss


def absorbing_uniform_elbo(model, process: AbsorbingUniformProcess, x0, generator=None, t=None) -> torch.Tensor:
    """One-sample absorbing-uniform NELBO per sequence, ``(B,)`` nats; ``model(x_t, z, t)``."""
    x0 = check_tokens(x0, process.vocab_size)
    t = sample_times(x0.shape[0], generator) if t is None else t
    xt, z = process.perturb(x0, t, generator)
    p = torch.softmax(model(xt, z, t).double(), -1)
    p_x0 = p.gather(-1, x0[..., None]).squeeze(-1)
    p_z = p.gather(-1, z[..., None]).squeeze(-1)
    masked = xt == z
    same = x0 == z
    per_site = torch.where(same, 1.0 - p_z, -p_x0.clamp_min(1e-300).log() - p_z)
    return process.schedule.elbo_weight(t) * torch.where(masked, per_site, torch.zeros_like(per_site)).sum(-1)


_ELBOS = {"masked": masked_elbo, "uniform": uniform_elbo, "absorbing_uniform": absorbing_uniform_elbo}


def make_loss(process, kind: str = "elbo"):
    """A ``loss_fn(model, x0, generator)`` for :func:`sciffusion.training.fit`: mean NELBO per token
    (``kind="elbo"``; masked: :func:`masked_elbo_count`) or, for masked diffusion, the unweighted
    cross-entropy (``"cross_entropy"``)."""
    if kind == "cross_entropy":
        if not isinstance(process, MaskedProcess):
            raise ValueError("cross_entropy loss is defined for MaskedProcess only")
        return lambda model, x0, generator: cross_entropy_loss(model, process, x0, generator).mean()
    if kind != "elbo":
        raise ValueError(f"kind must be 'elbo' or 'cross_entropy', got {kind!r}")
    # masked: the count form of the same NELBO (constant weight, far lower variance than the time form)
    fn = masked_elbo_count if process.kind == "masked" else _ELBOS[process.kind]
    return lambda model, x0, generator: fn(model, process, x0, generator).mean() / x0.shape[1]


@torch.no_grad()
def evaluate_likelihood(model, process, x0: torch.Tensor, *, num_samples: int = 16, generator=None,
                        batch_size: int = 512) -> dict:
    """Held-out NELBO: ``num_samples`` stratified time draws per sequence.

    Returns:
        dict with ``nats_per_sequence``, ``nats_per_token``, ``bits_per_token`` (upper bounds on
        the model's NLL) and ``stderr_nats_per_token`` (Monte Carlo standard error).
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    x0 = check_tokens(x0, process.vocab_size)
    fn = _ELBOS[process.kind]
    N, L = x0.shape
    rep = x0.repeat_interleave(num_samples, 0)
    vals = []
    for i in range(0, rep.shape[0], batch_size):
        chunk = rep[i:i + batch_size]
        vals.append(fn(model, process, chunk, generator))
    v = torch.cat(vals).view(N, num_samples).mean(1)
    per_seq = float(v.mean())
    se = float(v.std() / math.sqrt(N)) if N > 1 else float("nan")
    return {"nats_per_sequence": per_seq, "nats_per_token": per_seq / L, "bits_per_token": per_seq / L / math.log(2),
            "stderr_nats_per_token": se / L}
