"""Denoising score matching with the usual weightings (Vincent 2011; Song et al. 2021, Eq. 7).

The model's output is converted once through :class:`~sciffusion.denoisers.Denoiser` to a noise
prediction :math:`\\hat\\varepsilon`, and every weighting is expressed on the eps error:

.. math:: \\mathcal L = \\mathbb E_{t, x_0, \\varepsilon}\\big[w(t)\\,\\|\\hat\\varepsilon(x_t, t) - \\varepsilon\\|^2\\big]

========================  ========================================  =========================================
``weighting``             :math:`w(t)` on the eps error              equivalent to
========================  ========================================  =========================================
``eps``                   1                                          Ho et al. (2020) simple loss
``x0``                    :math:`\\sigma_t^2/\\alpha_t^2`              MSE on :math:`\\hat x_0`
``v``                     :math:`(\\alpha_t^2+\\sigma_t^2)^2/\\alpha_t^2`         MSE on :math:`v` (Salimans & Ho 2022)
``score``                 :math:`1/\\sigma_t^2`                       MSE on the score
``likelihood``            :math:`g(t)^2/\\sigma_t^2`                  likelihood weighting (Song et al. 2021b)
``min_snr``               :math:`\\min(\\mathrm{SNR}, \\gamma)/\\mathrm{SNR}`  Min-SNR-:math:`\\gamma` (Hang et al. 2023)
``edm``                   :math:`(\\sigma^2+\\sigma_d^2)/\\sigma_d^2`   EDM's :math:`\\lambda(\\sigma)` (Karras et al. 2022), alpha=1
========================  ========================================  =========================================

Times are drawn uniformly on ``[t_min, t_max]`` (default: the process's own ends).
"""

from __future__ import annotations

from typing import Any

import torch

from .denoisers import Denoiser
from .utils import batch_size, bcast, choice_error, tree_leaves, tree_map

WEIGHTINGS = ("eps", "x0", "v", "score", "likelihood", "min_snr", "edm")


def eps_weight(process, t: torch.Tensor, weighting: str, gamma: float = 5.0) -> torch.Tensor:
    """:math:`w(t)` of the table above, float64, shape of ``t``."""
    a, s = process.alpha(t), process.sigma(t)
    snr = (a / s) ** 2
    if weighting == "eps":
        return torch.ones_like(t, dtype=torch.float64)
    if weighting == "x0":
        return 1 / snr
    if weighting == "v":
        # v - v_hat = alpha (eps - eps_hat) - sigma (x0 - x0_hat) = (alpha^2 + sigma^2)/alpha (eps - eps_hat)
        return (a * a + s * s) ** 2 / (a * a)
    if weighting == "score":
        return 1 / (s * s)
    if weighting == "likelihood":
        return process.g2(t) / (s * s)
    if weighting == "min_snr":
        return torch.clamp(snr, max=gamma) / snr
    if weighting == "edm":
        sd = getattr(process, "sigma_data", 0.5)
        return (s * s + sd * sd) / (sd * sd)
    raise choice_error("weighting", weighting, WEIGHTINGS)


def dsm_loss(model, x0: Any, process, *, parameterization: Any = "eps",
             weighting: str = "eps", generator: torch.Generator | None = None,
             t_min: float | None = None, t_max: float | None = None, gamma: float = 5.0,
             normalize: bool = True, per_component: bool = False) -> Any:
    r"""Denoising score-matching loss for a batch of data ``x0`` (tensor or tuple/dict state).

    .. math:: \mathcal L = \frac{1}{B}\sum_b \frac{w(t_b)}{\bar w}\,\|\hat\varepsilon(x_{t_b}, t_b) - \varepsilon_b\|^2,
              \qquad x_{t_b} = \alpha_{t_b}x_{0,b} + \sigma_{t_b}\varepsilon_b

    (:math:`\bar w` the mean weight over the drawn times when ``normalize``). A tuple/dict state
    with a :class:`~sciffusion.processes.JointProcess` (GDSS's node features and adjacency) shares
    one time per sample across components; each component gets its own process's weight and
    its own normalisation, and the loss is the sum over components (each component's network
    receives the gradient of its own term). With a constrained process
    (:mod:`sciffusion.constraints`) ``perturb`` draws the constraint's noise, the denoiser
    projects the model output, and the squared error runs over the constrained entries only
    (masked entries are zero in both).

    Args:
        model: ``(x_t, t) -> output`` in ``parameterization``.
        x0: ``(B, ...)`` clean data, or a tuple/dict of such tensors.
        process: the forward process (a JointProcess for a tuple/dict state).
        weighting: a name in :data:`WEIGHTINGS`.
        normalize: divide by the mean weight over the drawn times (keeps the loss scale ~1 for
            weightings that span orders of magnitude; the gradient direction is unchanged in
            expectation up to that constant).
        per_component: for a tuple/dict state, return the per-component losses (a tree of
            scalars shaped like the state) instead of their sum.

    Returns:
        Scalar loss (or, with ``per_component``, one scalar per component).
    """
    if weighting not in WEIGHTINGS:
        raise choice_error("weighting", weighting, WEIGHTINGS)
    lo = float(process.t_min if t_min is None else t_min)
    hi = float(process.t_max if t_max is None else t_max)
    if isinstance(x0, torch.Tensor):
        B = x0.shape[0]
        t = lo + (hi - lo) * torch.rand(B, generator=generator, dtype=torch.float64)
        xt, eps = process.perturb(x0, t, generator)
        eps_hat = Denoiser(model, process, parameterization).eps(xt, t)  # per-sample times
        w = eps_weight(process, t, weighting, gamma)
        err = (eps_hat - eps).pow(2).flatten(1).sum(1)
        loss = bcast(w, err) * err
        if normalize:
            loss = loss / w.mean().to(loss.dtype)
        return loss.mean()
    if not hasattr(process, "processes"):
        raise TypeError(f"dsm_loss: a {type(x0).__name__} state needs a JointProcess, got {process!r}")
    B = batch_size(x0)
    t = lo + (hi - lo) * torch.rand(B, generator=generator, dtype=torch.float64)
    xt, eps = process.perturb(x0, t, generator)
    eps_hat = Denoiser(model, process, parameterization).eps(xt, t)

    def term(p, e_hat, e):
        w = eps_weight(p, t, weighting, gamma)
        err = (e_hat - e).pow(2).flatten(1).sum(1)
        loss = bcast(w, err) * err
        if normalize:
            loss = loss / w.mean().to(loss.dtype)
        return loss.mean()

    losses = tree_map(term, process.processes, eps_hat, eps)
    return losses if per_component else sum(tree_leaves(losses))
