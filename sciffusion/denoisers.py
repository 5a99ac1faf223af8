"""The one wrapper at the model boundary: a network's output in any parameterization, answered
as eps, x0, score, v or velocity.

With :math:`x = \\alpha x_0 + \\sigma\\varepsilon` (all coefficients at the same t):

=============  ===============================================  =====================================================
name           model predicts                                   back to :math:`(x_0, \\varepsilon)`
=============  ===============================================  =====================================================
``eps``        :math:`\\varepsilon`                              :math:`x_0 = (x - \\sigma\\varepsilon)/\\alpha`
``x0``         :math:`x_0`                                      :math:`\\varepsilon = (x - \\alpha x_0)/\\sigma`
``score``      :math:`\\nabla\\log p_t = -\\varepsilon/\\sigma`   :math:`\\varepsilon = -\\sigma s`
``v``          :math:`v = \\alpha\\varepsilon - \\sigma x_0`       :math:`x_0 = (\\alpha x - \\sigma v)/(\\alpha^2+\\sigma^2)`
``velocity``   :math:`u = \\dot\\alpha x_0 + \\dot\\sigma\\varepsilon` :math:`x_0 = (\\dot\\sigma x - \\sigma u)/(\\alpha\\dot\\sigma - \\sigma\\dot\\alpha)`
=============  ===============================================  =====================================================

``velocity`` is the probability-flow ODE's right-hand side :math:`dx/dt`, i.e. a flow-matching
model. With a constrained process (:mod:`sciffusion.constraints`) the model's raw output is
projected onto the constraint's subspace before any conversion (all five are linear in the
state and the output, so every answer then lies on the subspace). Solvers only ever call :meth:`Denoiser.x0` / :meth:`eps` / :meth:`score` /
:meth:`velocity` and never branch on the parameterization.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from .utils import batch_size, bcast, choice_error, tree_leaves, tree_map, tree_unzip

PARAMETERIZATIONS = ("eps", "x0", "score", "v", "velocity")


class Denoiser:
    """Wrap ``model(x, t) -> output`` for a process.

    Args:
        model: callable taking the state ``x`` and a time tensor of shape ``(B,)`` (in ``x``'s
            dtype). For a tuple state it returns a tuple of outputs of the same structure.
        process: a :class:`~sciffusion.processes.Process` (or ``JointProcess`` for tuple states).
        parameterization: what the model predicts: ``eps``, ``x0``, ``score``, ``v`` or
            ``velocity``; for tuple states either one name or one per component.

    Attributes:
        nfe: number of model evaluations so far (reset with :meth:`reset_nfe`).
    """

    def __init__(self, model: Callable[..., Any], process: Any, parameterization: Any = "eps"):
        if not callable(model):
            raise TypeError(f"model must be callable, got {type(model).__name__}")
        names = parameterization if isinstance(parameterization, (tuple, list, dict)) else [parameterization]
        names = names.values() if isinstance(names, dict) else names
        for name in names:
            if name not in PARAMETERIZATIONS:
                raise choice_error("parameterization", name, PARAMETERIZATIONS)
        self.model = model
        self.process = process
        self.parameterization = parameterization
        self.nfe = 0

    def reset_nfe(self) -> None:
        self.nfe = 0

    def _time(self, x: Any, t: Any) -> torch.Tensor:
        leaf = tree_leaves(x)[0]
        t = torch.as_tensor(t, device=leaf.device)
        if t.ndim == 0:
            t = t.expand(batch_size(x))
        return t.to(leaf.dtype)

    def _coeffs(self, t, derivatives: bool = True):
        p = self.process
        a, s = p.alpha(t), p.sigma(t)
        if not derivatives:
            # placeholders of the right tree structure: only ``velocity`` reads da, ds
            return a, s, a, s
        return a, s, p.d_alpha(t), p.d_sigma(t)

    def _needs_derivatives(self) -> bool:
        names = self.parameterization
        names = names.values() if isinstance(names, dict) else ([names] if isinstance(names, str) else names)
        return "velocity" in names

    def _param_tree(self, x):
        if isinstance(x, torch.Tensor) or not isinstance(self.parameterization, str):
            return self.parameterization
        return tree_map(lambda _: self.parameterization, x)

    def predict(self, x: Any, t: Any) -> tuple[Any, Any]:
        """One model call; returns ``(x0, eps)`` with the state's structure."""
        t64 = torch.as_tensor(t, dtype=torch.float64)
        out = self.model(x, self._time(x, t))
        self.nfe += 1
        if getattr(self.process, "constrained", False):
            out = self._project(out, x)
        a, s, da, ds = self._coeffs(t64, self._needs_derivatives())
        pairs = tree_map(_to_x0_eps, self._param_tree(x), x, out, a, s, da, ds)
        return tree_unzip(pairs, x)

    def _direct(self, x: Any, t: Any) -> torch.Tensor:
        """The model's own output, when it already is what was asked for (no conversion needed)."""
        out = self.model(x, self._time(x, t))
        self.nfe += 1
        _check_shape(out, x)
        return self.process.project(out) if getattr(self.process, "constrained", False) else out

    def _project(self, out, x):
        """The model output on the constraint's subspace (shapes checked first, for a clear error)."""
        tree_map(lambda xi, oi: _check_shape(oi, xi), x, out)
        return self.process.project(out)

    def x0(self, x: Any, t: Any) -> Any:
        """Posterior mean of the data :math:`\\mathbb E[x_0\\mid x_t]`."""
        if isinstance(x, torch.Tensor) and self.parameterization == "x0":
            return self._direct(x, t)
        return self.predict(x, t)[0]

    def eps(self, x: Any, t: Any) -> Any:
        """Noise prediction :math:`\\mathbb E[\\varepsilon\\mid x_t]`."""
        if isinstance(x, torch.Tensor) and self.parameterization == "eps":
            return self._direct(x, t)
        return self.predict(x, t)[1]

    def score(self, x: Any, t: Any) -> Any:
        """:math:`\\nabla_x\\log p_t(x) = -\\varepsilon/\\sigma_t`."""
        eps = self.eps(x, t)
        s = self.process.sigma(torch.as_tensor(t, dtype=torch.float64))
        return tree_map(lambda e, si: -e / bcast(si, e), eps, s)

    def v(self, x: Any, t: Any) -> Any:
        """:math:`v = \\alpha_t\\varepsilon - \\sigma_t x_0` (Salimans & Ho 2022)."""
        x0, eps = self.predict(x, t)
        a, s, _, _ = self._coeffs(torch.as_tensor(t, dtype=torch.float64), derivatives=False)
        return tree_map(lambda x0i, ei, ai, si: bcast(ai, ei) * ei - bcast(si, ei) * x0i, x0, eps, a, s)

    def velocity(self, x: Any, t: Any) -> Any:
        """PF-ODE velocity :math:`dx/dt = \\dot\\alpha_t x_0 + \\dot\\sigma_t\\varepsilon`."""
        x0, eps = self.predict(x, t)
        _, _, da, ds = self._coeffs(torch.as_tensor(t, dtype=torch.float64))
        return tree_map(lambda x0i, ei, dai, dsi: bcast(dai, ei) * x0i + bcast(dsi, ei) * ei, x0, eps, da, ds)

    def __call__(self, x: Any, t: Any) -> Any:
        """The denoiser proper, :math:`D(x, t) = \\mathbb E[x_0\\mid x_t]`."""
        return self.x0(x, t)

    def __repr__(self) -> str:
        return f"Denoiser({self.parameterization!r}, {self.process!r})"


def _check_shape(out, x):
    if not isinstance(out, torch.Tensor) or out.shape != x.shape:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"model output has shape {got}, expected the state's shape {tuple(x.shape)}")


def _to_x0_eps(kind, x, out, a, s, da, ds):
    _check_shape(out, x)
    a, s = bcast(a, x), bcast(s, x)  # (da, ds only for velocity: this runs at every model call)
    if kind == "eps":
        return (x - s * out) / a, out
    if kind == "x0":
        return out, (x - a * out) / s
    if kind == "score":
        eps = -s * out
        return (x - s * eps) / a, eps
    if kind == "v":
        n = a * a + s * s
        return (a * x - s * out) / n, (s * x + a * out) / n
    da, ds = bcast(da, x), bcast(ds, x)
    det = a * ds - s * da  # velocity; det = alpha sigma (dlog sigma - dlog alpha) > 0
    return (ds * x - s * out) / det, (a * out - da * x) / det

