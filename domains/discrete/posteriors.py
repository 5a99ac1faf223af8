"""Exact conversions between the three prediction types of uniform diffusion.

For a site i with current token :math:`a = x_t^i`, per-site kernel :math:`q_t(b \\mid v) =
\\alpha[b=v] + (1-\\alpha)/V` and leave-one-out posterior :math:`\\ell(v) = p(x_0^i = v \\mid x_t^{-i})`:

* denoiser: :math:`D(v) = p(x_0^i = v \\mid x_t) \\propto \\ell(v)\\, q_t(a \\mid v)`;
* concrete score: :math:`s(b) = \\dfrac{p_t(x_t^{i \\leftarrow b})}{p_t(x_t)}
  = \\dfrac{\\sum_v \\ell(v) q_t(b\\mid v)}{\\sum_v \\ell(v) q_t(a\\mid v)}
  = \\dfrac{\\alpha\\ell(b) + (1-\\alpha)/V}{\\alpha\\ell(a) + (1-\\alpha)/V}` (Meng et al. 2022; Lou et al. 2024);
* back: :math:`\\ell(v) \\propto D(v)/q_t(a\\mid v)`, and from :math:`\\sum_b s(b) = 1/c` with
  :math:`c = \\alpha\\ell(a) + (1-\\alpha)/V`: :math:`\\ell(b) = (s(b)/\\sum s - (1-\\alpha)/V)/\\alpha`.

All inputs and outputs are probabilities (not logits), ``(B, L, V)`` float64, ``alpha`` of shape
``(B,)``. The leave-one-out form is what the plug-in bridge needs (see
:func:`uniform_bridge`): the denoiser already contains the evidence of :math:`x_t^i`, and
plugging it where the leave-one-out posterior belongs counts that evidence twice.
"""

from __future__ import annotations

import torch

__all__ = ["denoiser_from_loo", "loo_from_denoiser", "concrete_score_from_loo", "loo_from_concrete_score",
           "uniform_bridge", "gibbs_conditional"]


def _site_like(xt, alpha, V):
    """:math:`q_t(x_t^i \\mid v)` as ``(B, L, V)``."""
    a = alpha.double()[:, None, None]
    return a * torch.nn.functional.one_hot(xt, V).double() + (1.0 - a) / V


def denoiser_from_loo(loo, xt, alpha):
    """:math:`D \\propto \\ell\\cdot q_t(x_t^i\\mid\\cdot)`."""
    d = loo * _site_like(xt, alpha, loo.shape[-1])
    return d / d.sum(-1, keepdim=True)


def loo_from_denoiser(den, xt, alpha):
    """:math:`\\ell \\propto D / q_t(x_t^i\\mid\\cdot)` (needs :math:`\\alpha < 1`... any alpha with ``(1-alpha)/V > 0``)."""
    if (alpha >= 1).any():
        raise ValueError("loo_from_denoiser: alpha must be < 1 (at alpha = 1 the denoiser is a one-hot)")
    ell = den / _site_like(xt, alpha, den.shape[-1])
    return ell / ell.sum(-1, keepdim=True)


def concrete_score_from_loo(loo, xt, alpha):
    """:math:`s(b) = (\\alpha\\ell(b) + (1-\\alpha)/V) / (\\alpha\\ell(a) + (1-\\alpha)/V)`, with ``s(a) = 1``."""
    V = loo.shape[-1]
    a = alpha.double()[:, None, None]
    num = a * loo + (1.0 - a) / V
    return num / num.gather(-1, xt[..., None])


def loo_from_concrete_score(score, xt, alpha):
    """Inverse of :func:`concrete_score_from_loo` (``alpha > 0``)."""
    if (alpha <= 0).any():
        raise ValueError("loo_from_concrete_score: alpha must be > 0 (at alpha = 0 the score carries no information)")
    V = score.shape[-1]
    a = alpha.double()[:, None, None]
    return (score / score.sum(-1, keepdim=True) - (1.0 - a) / V) / a


def uniform_bridge(post, xt, alpha_t, alpha_s):
    """Reverse transition of one site, :math:`p(x_s^i = b \\mid x_t)`, from a leave-one-out posterior.

    .. math:: p(x_s^i=b \\mid x_t) \\propto q_{t\\mid s}(x_t^i \\mid b)\\sum_v q_s(b \\mid v)\\,\\ell(v)

    exact when :math:`\\ell(v) = p(x_0^i=v \\mid x_t^{-i})`, because :math:`x_t^{-i}` and the noise
    of site i are independent given :math:`x_0^i`. Passing the denoiser as ``post`` counts the
    evidence of :math:`x_t^i` twice (tested: it does not match the exact reverse transition).

    Shapes: post ``(B, L, V)``, xt ``(B, L)``, alphas ``(B,)`` -> ``(B, L, V)``.
    """
    V = post.shape[-1]
    a_s = alpha_s.double()[:, None, None]
    r = (alpha_t / alpha_s).double()[:, None, None]
    prior_s = a_s * post + (1.0 - a_s) / V                                     # sum_v q_s(b|v) l(v)
    like = r * torch.nn.functional.one_hot(xt, V).double() + (1.0 - r) / V   # q_{t|s}(x_t^i | b)
    out = prior_s * like
    return out / out.sum(-1, keepdim=True)


def gibbs_conditional(loo, alpha):
    """:math:`p_t(x_t^i = b \\mid x_t^{-i}) = \\alpha\\ell(b) + (1-\\alpha)/V` — the Gibbs (informed
    corrector) update of one site, which leaves :math:`p_t` invariant (Zhao et al. 2024)."""
    V = loo.shape[-1]
    a = alpha.double()[:, None, None]
    return a * loo + (1.0 - a) / V
