"""Forward processes, all described by their Gaussian marginal.

.. math:: x_t = \\alpha_t x_0 + \\sigma_t \\varepsilon,\\qquad \\lambda_t = \\log(\\alpha_t/\\sigma_t)

A subclass gives :math:`\\log\\alpha_t`, :math:`\\log\\sigma_t`, their time derivatives and the
inverse :math:`t(\\lambda)`; everything else is derived once here, in float64:

* the SDE :math:`dx = f(t) x\\,dt + g(t)\\,dW` with :math:`f = \\dot\\alpha/\\alpha` and
  :math:`g^2 = \\tfrac{d\\sigma^2}{dt} - 2 f \\sigma^2 = -2\\sigma^2\\dot\\lambda`,
* prior sampling / log-density, perturbation of data.

Time runs from data (t=0) to noise (t=T). ``t_min``/``t_max`` are the default ends of sampling
grids (finite lambda at both ends). :class:`JointProcess` pairs processes with the components of
a tuple state (graph_sde: node features and adjacency, each with its own SDE).

A process may carry a state constraint (:mod:`sciffusion.constraints`: symmetric adjacency,
node masks, zero centre of mass), attached with :meth:`Process.constrain`; its noise, prior and
projection then live on the constrained subspace. Processes compare by value (type, parameters
and constraint), so two ``VP(beta_max=20.0)`` are equal and hash alike.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .constraints import Constraint
from .utils import as_time, bcast, tree_map, tree_unzip


def _by_value(v: Any) -> Any:
    """A hashable stand-in for a parameter value that compares by value (tensors and arrays by
    dtype, shape and bytes; containers element-wise)."""
    if isinstance(v, torch.Tensor):
        v = v.detach().cpu().numpy()
    if isinstance(v, np.generic) or (isinstance(v, np.ndarray) and v.ndim == 0):
        return v.item()
    if isinstance(v, np.ndarray):
        return ("array", str(v.dtype), tuple(v.shape), v.tobytes())
    if isinstance(v, (list, tuple)):
        return tuple(_by_value(u) for u in v)
    if isinstance(v, dict):
        return tuple(sorted((k, _by_value(u)) for k, u in v.items()))
    try:
        hash(v)
    except TypeError:
        return repr(v)
    return v


class Process:
    """Base class. Subclasses implement the five ``_log*``/``_t_of_lambda`` formulas."""

    T: float = 1.0
    t_min: float = 1e-3
    t_max: float = 1.0
    name: str = "process"
    constraint: Constraint | None = None

    # --- what a subclass provides (float64 tensors in, float64 tensors out) ---
    def _log_alpha(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _log_sigma(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _d_log_alpha(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _d_log_sigma(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _t_of_lambda(self, lam: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    # --- the common questions every solver asks ---
    def log_alpha(self, t: Any) -> torch.Tensor:
        return self._log_alpha(as_time(t))

    def log_sigma(self, t: Any) -> torch.Tensor:
        return self._log_sigma(as_time(t))

    def alpha(self, t: Any) -> torch.Tensor:
        """Signal scale :math:`\\alpha_t` (float64)."""
        return self.log_alpha(t).exp()

    def sigma(self, t: Any) -> torch.Tensor:
        """Noise scale :math:`\\sigma_t` (float64)."""
        return self.log_sigma(t).exp()

    def d_alpha(self, t: Any) -> torch.Tensor:
        """:math:`d\\alpha_t/dt`."""
        t = as_time(t)
        return self._d_log_alpha(t) * self._log_alpha(t).exp()

    def d_sigma(self, t: Any) -> torch.Tensor:
        """:math:`d\\sigma_t/dt`."""
        t = as_time(t)
        return self._d_log_sigma(t) * self._log_sigma(t).exp()

    def lam(self, t: Any) -> torch.Tensor:
        """Half log-SNR :math:`\\lambda_t = \\log\\alpha_t - \\log\\sigma_t`, decreasing in t."""
        t = as_time(t)
        return self._log_alpha(t) - self._log_sigma(t)

    def d_lam(self, t: Any) -> torch.Tensor:
        """:math:`d\\lambda_t/dt` (negative)."""
        t = as_time(t)
        return self._d_log_alpha(t) - self._d_log_sigma(t)

    def t_of_lam(self, lam: Any) -> torch.Tensor:
        """Inverse of :meth:`lam`."""
        return self._t_of_lambda(as_time(lam))

    def f(self, t: Any) -> torch.Tensor:
        """Linear drift coefficient :math:`f(t) = d\\log\\alpha_t/dt`."""
        return self._d_log_alpha(as_time(t))

    def g2(self, t: Any) -> torch.Tensor:
        """Squared diffusion :math:`g(t)^2 = -2\\sigma_t^2\\,d\\lambda_t/dt`."""
        t = as_time(t)
        return -2.0 * (2.0 * self._log_sigma(t)).exp() * self.d_lam(t)

    def diffusion(self, t: Any) -> torch.Tensor:
        """:math:`g(t)`."""
        return self.g2(t).sqrt()

    def drift(self, x: torch.Tensor, t: Any) -> torch.Tensor:
        """Forward drift :math:`f(t)\\,x`."""
        return bcast(self.f(t), x) * x

    def marginal(self, x0: torch.Tensor, t: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and std of :math:`p(x_t\\mid x_0)`: ``(alpha_t x0, sigma_t)``."""
        t = as_time(t)
        return bcast(self.alpha(t), x0) * x0, bcast(self.sigma(t), x0)

    def perturb(self, x0: torch.Tensor, t: Any, generator: torch.Generator | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw :math:`x_t = \\alpha_t x_0 + \\sigma_t\\varepsilon`; returns ``(x_t, eps)``.

        With a constraint, ``x0`` is projected and ``eps`` drawn from the constraint's noise law.
        """
        if self.constraint is not None:
            x0 = self.constraint.project(x0)
            eps = self.constraint.noise(x0, generator)
        else:
            eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
        mean, std = self.marginal(x0, t)
        return mean + std * eps, eps

    def noise_like(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Standard normal noise shaped like ``x``: the :math:`dW` every sampler draws through.

        With a constraint, its noise law on the constrained subspace (:mod:`sciffusion.constraints`).
        """
        if self.constraint is not None:
            return self.constraint.noise(x, generator)
        return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` projected onto the constraint's subspace (``x`` itself when unconstrained)."""
        return x if self.constraint is None else self.constraint.project(x)

    @property
    def constrained(self) -> bool:
        """Whether a state constraint is attached."""
        return self.constraint is not None

    def constrain(self, constraint: Constraint | None) -> "Process":
        """A copy of this process with ``constraint`` attached (``None`` removes it).

        The copy is shallow and cheap, so a constraint holding per-batch tensors (node masks) can be
        attached anew for every batch; ``self`` is unchanged.
        """
        if constraint is not None and not isinstance(constraint, Constraint):
            raise TypeError(f"constraint must be a sciffusion.constraints.Constraint or None, got "
                            f"{type(constraint).__name__}")
        out = copy.copy(self)
        out.constraint = constraint
        return out

    def prior_std(self) -> float:
        """Std of the prior at ``t_max``: :math:`\\sqrt{\\alpha_T^2 + \\sigma_T^2}` (unit-variance data)."""
        t = as_time(self.t_max)
        return float(((2 * self._log_alpha(t)).exp() + (2 * self._log_sigma(t)).exp()).sqrt())

    def prior_sample(self, shape: Sequence[int], generator: torch.Generator | None = None,
                     dtype: torch.dtype = torch.float32, device: Any = None) -> torch.Tensor:
        """Samples of the prior :math:`N(0, s^2 I)`, ``s`` = :meth:`prior_std` (:math:`N(0, s^2 C)` on the
        subspace with a constraint)."""
        if self.constraint is not None:
            like = torch.empty(tuple(shape), dtype=dtype, device=device)
            return self.prior_std() * self.constraint.noise(like, generator)
        return self.prior_std() * torch.randn(tuple(shape), generator=generator, dtype=dtype,
                                              device=device)

    def prior_logp(self, x: torch.Tensor) -> torch.Tensor:
        """Log-density of the prior per sample, shape ``(B,)``, summed over non-batch dims.

        With a constraint: the density of :math:`N(0, s^2 C)` on the subspace (Lebesgue measure in
        the coordinates where :math:`C` is the identity), :math:`-\\tfrac12 x^\\top C^+ x/s^2 -
        k(\\log s + \\tfrac12\\log 2\\pi)` with ``k = constraint.dof(x)`` degrees of freedom.
        """
        s = self.prior_std()
        if self.constraint is not None:
            c = self.constraint
            k = c.dof(x).to(device=x.device, dtype=x.dtype)
            return -0.5 * c.inner(x, x) / (s * s) - k * (math.log(s) + 0.5 * math.log(2 * math.pi))
        d = x[0].numel()
        return -0.5 * (x / s).pow(2).flatten(1).sum(1) - d * (math.log(s) + 0.5 * math.log(2 * math.pi))

    # --- comparison by value ---
    def _params(self) -> tuple:
        """The parameters that define the process: public attributes, sorted, and the constraint."""
        items = tuple(sorted((k, _by_value(v)) for k, v in vars(self).items()
                             if not k.startswith("_") and k != "constraint"))
        return (type(self), items, self.constraint)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Process) and self._params() == other._params()

    def __hash__(self) -> int:
        return hash(self._params())

    def _describe(self) -> str:
        return f"{type(self).__name__}({self._extra(**{k: None for k, _ in self._params()[1]})[2:]})"

    def _extra(self, **defaults) -> str:
        """``", name=value"`` for each attribute that differs from its default (so that a repr, and
        a fingerprint built from it, shows every parameter that changes the process)."""
        return "".join(f", {k}={getattr(self, k)!r}" for k, d in defaults.items() if getattr(self, k) != d)

    def __repr__(self) -> str:
        c = "" if self.constraint is None else f".constrain({self.constraint!r})"
        return self._describe() + c


class VP(Process):
    """Variance-preserving SDE (DDPM in continuous time, Song et al. 2021, Eq. 11).

    :math:`\\beta(t) = \\beta_0 + t(\\beta_1-\\beta_0)`, :math:`\\log\\alpha_t = -\\tfrac12\\int_0^t\\beta`,
    :math:`\\sigma_t^2 = 1-\\alpha_t^2`.
    """

    name = "vp"

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, t_min: float = 1e-3):
        if not 0 < beta_min < beta_max:
            raise ValueError(f"need 0 < beta_min < beta_max, got {beta_min}, {beta_max}")
        self.beta_min, self.beta_max, self.t_min = float(beta_min), float(beta_max), float(t_min)

    def beta(self, t):
        return self.beta_min + as_time(t) * (self.beta_max - self.beta_min)

    def _log_alpha(self, t):
        # -(b0 t + (b1 - b0) t^2 / 2) / 2, written with two tensor ops (it runs several times a step)
        return t * (-0.5 * self.beta_min - 0.25 * (self.beta_max - self.beta_min) * t)

    def _log_sigma(self, t):
        return 0.5 * torch.log(-torch.expm1(2 * self._log_alpha(t)))

    def _d_log_alpha(self, t):
        return -0.5 * self.beta(t)

    def _d_log_sigma(self, t):
        # sigma^2 = 1 - alpha^2  =>  dlog sigma = -alpha^2 dlog alpha / sigma^2
        la = self._log_alpha(t)
        return -self._d_log_alpha(t) * torch.exp(2 * la) / (-torch.expm1(2 * la))

    def _t_of_log_alpha(self, la):
        # solve a t^2 + b t + la = 0 with a = (b1-b0)/4, b = b0/2, in the cancellation-free form
        a, b = 0.25 * (self.beta_max - self.beta_min), 0.5 * self.beta_min
        return 2 * (-la) / (b + torch.sqrt(b * b - 4 * a * la))

    def _t_of_lambda(self, lam):
        # alpha^2 = sigmoid(2 lambda)  =>  log alpha = -softplus(-2 lambda)/2
        return self._t_of_log_alpha(-0.5 * F.softplus(-2 * lam))

    def _describe(self):
        return f"VP(beta_min={self.beta_min}, beta_max={self.beta_max}{self._extra(t_min=1e-3)})"


class SubVP(VP):
    """Sub-VP SDE (Song et al. 2021, Eq. 29): VP's alpha with :math:`\\sigma_t = 1-\\alpha_t^2`."""

    name = "subvp"

    def _log_sigma(self, t):
        return torch.log(-torch.expm1(2 * self._log_alpha(t)))

    def _d_log_sigma(self, t):
        la = self._log_alpha(t)
        return -2 * self._d_log_alpha(t) * torch.exp(2 * la) / (-torch.expm1(2 * la))

    def _t_of_lambda(self, lam):
        # e^lam (1 - a^2) = a  =>  a = 2 e^lam / (1 + sqrt(1 + 4 e^{2 lam}))
        log_a = math.log(2.0) + lam - torch.log1p(torch.sqrt(1 + 4 * torch.exp(2 * lam)))
        return self._t_of_log_alpha(log_a)

    def _describe(self):
        return f"SubVP(beta_min={self.beta_min}, beta_max={self.beta_max}{self._extra(t_min=1e-3)})"


class VE(Process):
    """Variance-exploding SDE (Song et al. 2021, Eq. 9): :math:`\\alpha=1`,
    :math:`\\sigma_t = \\sigma_{min}(\\sigma_{max}/\\sigma_{min})^t`."""

    name = "ve"

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0, t_min: float = 0.0):
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        self.sigma_min, self.sigma_max, self.t_min = float(sigma_min), float(sigma_max), float(t_min)
        self._log_ratio = math.log(sigma_max / sigma_min)

    def _log_alpha(self, t):
        return torch.zeros_like(t)

    def _log_sigma(self, t):
        return math.log(self.sigma_min) + t * self._log_ratio

    def _d_log_alpha(self, t):
        return torch.zeros_like(t)

    def _d_log_sigma(self, t):
        return torch.full_like(t, self._log_ratio)

    def _t_of_lambda(self, lam):
        return (-lam - math.log(self.sigma_min)) / self._log_ratio

    def _describe(self):
        return f"VE(sigma_min={self.sigma_min}, sigma_max={self.sigma_max}{self._extra(t_min=0.0)})"


class EDM(Process):
    """EDM / Karras et al. (2022): :math:`\\alpha=1`, :math:`\\sigma_t = t` on
    :math:`[\\sigma_{min}, \\sigma_{max}]`, so the PF-ODE is :math:`dx/d\\sigma = -\\sigma\\nabla\\log p`."""

    name = "edm"

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0, sigma_data: float = 0.5):
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        self.sigma_data = float(sigma_data)
        self.t_min, self.t_max, self.T = float(sigma_min), float(sigma_max), float(sigma_max)

    def _log_alpha(self, t):
        return torch.zeros_like(t)

    def _log_sigma(self, t):
        return torch.log(t)

    def _d_log_alpha(self, t):
        return torch.zeros_like(t)

    def _d_log_sigma(self, t):
        return 1.0 / t

    def _t_of_lambda(self, lam):
        return torch.exp(-lam)

    def _describe(self):
        return f"EDM(sigma_min={self.t_min}, sigma_max={self.t_max}{self._extra(sigma_data=0.5)})"


class Linear(Process):
    """Linear interpolant / rectified flow / flow matching: :math:`\\alpha_t = 1-t`, :math:`\\sigma_t = t`.

    The PF-ODE velocity is :math:`\\dot x = \\mathbb E[\\varepsilon - x_0\\mid x_t]`. ``t_max`` is
    kept below 1 so that lambda stays finite at the start of a grid.
    """

    name = "linear"

    def __init__(self, t_min: float = 1e-3, t_max: float = 1.0 - 1e-3):
        if not 0 <= t_min < t_max < 1:
            raise ValueError(f"need 0 <= t_min < t_max < 1, got {t_min}, {t_max}")
        self.t_min, self.t_max = float(t_min), float(t_max)

    def _log_alpha(self, t):
        return torch.log1p(-t)

    def _log_sigma(self, t):
        return torch.log(t)

    def _d_log_alpha(self, t):
        return -1.0 / (1.0 - t)

    def _d_log_sigma(self, t):
        return 1.0 / t

    def _t_of_lambda(self, lam):
        return torch.sigmoid(-lam)

    def _describe(self):
        return f"Linear({self._extra(t_min=1e-3, t_max=1.0 - 1e-3)[2:]})"


PROCESSES = {"vp": VP, "subvp": SubVP, "ve": VE, "edm": EDM, "linear": Linear}


def get_process(name: str, **kwargs) -> Process:
    """A process by name: ``vp``, ``subvp``, ``ve``, ``edm``, ``linear``."""
    if isinstance(name, Process):
        return name
    if name not in PROCESSES:
        from .utils import choice_error
        raise choice_error("process", name, PROCESSES)
    return PROCESSES[name](**kwargs)


class JointProcess:
    """One process per component of a tuple (or dict) state; shares a common time.

    Every question of :class:`Process` is answered component-wise by an explicit method:
    coefficients come back as a tuple (dict) with one float64 tensor per component, so solvers
    apply them with :func:`~sciffusion.utils.tree_map`. All components must agree on ``t_min``,
    ``t_max``. A component may carry a state constraint (:meth:`constrain`).
    """

    def __init__(self, processes):
        if isinstance(processes, list):
            processes = tuple(processes)
        self.processes = processes
        leaves = list(processes.values()) if isinstance(processes, dict) else list(processes)
        if not isinstance(processes, (tuple, dict)) or not leaves or not all(isinstance(p, Process) for p in leaves):
            raise TypeError("JointProcess needs a non-empty tuple or dict of Process objects")
        self.t_min = max(p.t_min for p in leaves)
        self.t_max = min(p.t_max for p in leaves)
        self.T = min(p.T for p in leaves)
        self.name = "joint(" + ",".join(p.name for p in leaves) + ")"

    def _each(self, method: str, *args):
        """``method(*args)`` of every component (time-only questions)."""
        return tree_map(lambda p: getattr(p, method)(*args), self.processes)

    def _each_x(self, method: str, x, *args):
        """``method(x_k, *args)`` of every component on its part of the state."""
        return tree_map(lambda p, xi: getattr(p, method)(xi, *args), self.processes, x)

    # --- coefficients, one per component ---
    def log_alpha(self, t):
        return self._each("log_alpha", t)

    def log_sigma(self, t):
        return self._each("log_sigma", t)

    def alpha(self, t):
        return self._each("alpha", t)

    def sigma(self, t):
        return self._each("sigma", t)

    def d_alpha(self, t):
        return self._each("d_alpha", t)

    def d_sigma(self, t):
        return self._each("d_sigma", t)

    def lam(self, t):
        return self._each("lam", t)

    def d_lam(self, t):
        return self._each("d_lam", t)

    def t_of_lam(self, lam):
        """Each component's inverse of its own lambda at ``lam``."""
        return self._each("t_of_lam", lam)

    def f(self, t):
        return self._each("f", t)

    def g2(self, t):
        return self._each("g2", t)

    def diffusion(self, t):
        return self._each("diffusion", t)

    def prior_std(self):
        return self._each("prior_std")

    # --- state questions, component by component ---
    def drift(self, x, t):
        return self._each_x("drift", x, t)

    def marginal(self, x0, t):
        """Per component ``(mean, std)`` pairs (a tree of pairs shaped like the state)."""
        return self._each_x("marginal", x0, t)

    def noise_like(self, x, generator=None):
        return self._each_x("noise_like", x, generator)

    def project(self, x):
        return self._each_x("project", x)

    def prior_logp(self, x):
        """Per-component prior log-densities (a tree of ``(B,)`` tensors; sum them for the joint)."""
        return self._each_x("prior_logp", x)

    def perturb(self, x0, t, generator=None):
        pairs = tree_map(lambda p, xi: p.perturb(xi, t, generator), self.processes, x0)
        return tree_unzip(pairs, x0)

    def prior_sample(self, shapes, generator=None, dtype=torch.float32, device=None):
        return tree_map(lambda p, s: p.prior_sample(s, generator, dtype, device),
                        self.processes, shapes if not isinstance(shapes, list) else tuple(shapes))

    # --- constraints ---
    @property
    def constrained(self) -> bool:
        """Whether any component carries a state constraint."""
        leaves = self.processes.values() if isinstance(self.processes, dict) else self.processes
        return any(p.constraint is not None for p in leaves)

    @property
    def constraint(self):
        """The components' constraints (a tree shaped like the state; ``None`` where unconstrained)."""
        return tree_map(lambda p: p.constraint, self.processes)

    def constrain(self, constraints) -> "JointProcess":
        """A copy with one constraint (or ``None``) per component, shaped like the state."""
        if isinstance(constraints, list):
            constraints = tuple(constraints)
        leaves = self.processes.values() if isinstance(self.processes, dict) else self.processes
        parts = constraints.values() if isinstance(constraints, dict) else constraints
        if type(constraints) is not type(self.processes) or len(parts) != len(leaves) or (
                isinstance(constraints, dict) and set(constraints) != set(self.processes)):
            raise TypeError(f"constrain: need one constraint (or None) per component, shaped like "
                            f"{'a dict with keys ' + str(sorted(self.processes)) if isinstance(self.processes, dict) else f'a tuple of {len(leaves)}'}")
        if isinstance(self.processes, dict):
            return JointProcess({k: p.constrain(constraints[k]) for k, p in self.processes.items()})
        return JointProcess(tuple(p.constrain(c) for p, c in zip(self.processes, constraints)))

    # --- comparison by value ---
    def _key(self):
        if isinstance(self.processes, dict):
            return tuple(sorted(self.processes.items()))
        return self.processes

    def __eq__(self, other: object) -> bool:
        return isinstance(other, JointProcess) and type(self.processes) is type(other.processes) and (
            self._key() == other._key())

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self):
        return f"JointProcess({self.processes!r})"
