r"""The well-tempered collective-variable bias: Gaussian hills on a CV grid, and reweighting.

Well-tempered metadynamics (Barducci, Bussi & Parrinello 2008, PRL 100, 020603) deposits
Gaussian hills at visited CV values :math:`c_t` with a height that decays where bias has
already accumulated,

.. math:: V(s) = \sum_t h_t \exp\Big(-\sum_d \frac{\delta_d(s, c_t)^2}{2\sigma_d^2}\Big),\qquad
          h_t = h_0 \exp\Big(-\frac{V_{t-1}(c_t)}{(\gamma - 1)\,k_BT}\Big)

(:math:`\delta_d` the minimum-image difference for a periodic CV, so hills wrap across
:math:`\pm\pi`), and converges to :math:`V(s) = -(1 - 1/\gamma) F(s) + \text{const}`, so the grid's
own free-energy estimate is :math:`F(s) = -\frac{\gamma}{\gamma - 1} V(s)`. WT-ASBS
(Nam et al. 2025) uses the same bias, deposited at a round's own samples, to push an
energy-only diffusion sampler towards the biased target :math:`e^{-(E + V)/k_BT}`; samples of
that target carry importance weights :math:`w = e^{V(s(x))/k_BT}` back to the Boltzmann
distribution (:func:`log_importance_weights`).

All quantities are in the unit of ``kT`` (``kT = 1``: everything in kT).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from sciffusion import smc


def _per_dim(value, k: int, name: str, dtype=torch.float64) -> torch.Tensor:
    t = torch.as_tensor(value, dtype=dtype)
    if t.ndim == 0:
        t = t.expand(k).clone()
    if t.shape != (k,):
        raise ValueError(f"{name} must be a scalar or a sequence of {k} values (one per CV), "
                         f"got shape {tuple(t.shape)}")
    return t


def log_importance_weights(bias_values: torch.Tensor, kT: float = 1.0) -> torch.Tensor:
    r"""Log-weights :math:`\log w_i = V(s_i)/k_BT` that turn samples of the biased density
    :math:`\propto e^{-(E+V)/k_BT}` into (self-normalised) samples of :math:`e^{-E/k_BT}`.

    **Exact only for exact samples of the biased density.** For samples of a learned sampler
    with law :math:`q \ne \mu_V`, the weighted estimate of a basin probability converges to
    :math:`\int_B q\,e^{V/k_BT} / \int q\,e^{V/k_BT}`, which differs from the Boltzmann value by
    the sampler's own error along the CVs, :math:`q(s)/\mu_V(s)`; nothing in :math:`e^{V/k_BT}` sees or
    corrects it, and the bootstrap error bar (resampling the same samples) does not either. On
    the double well (benchmarks/RESULTS.md, boltzmann) samplers trained 15 iterations per
    round left too little reweighted mass in the deep well (P(x1 > 0) = 0.775 and 0.770 against
    0.844 exact) and the bias weights missed :math:`\Delta F` by up to 0.48 kT, while their path weights (:meth:`~.sampler.AdjointSampler.log_weights`, which
    include :math:`\log\mu/q` of the sampler's own paths) were within 0.06 kT. Use the path
    weights when the sampler is not known to have converged; the two agreeing is a check.

    Args:
        bias_values: :math:`V` at each sample's CVs, ``(B,)``, in the unit of ``kT``.
        kT: :math:`k_BT` in that unit.

    Returns:
        ``(B,)`` float64 log-weights (unnormalised). Raises ValueError on non-finite values.
    """
    v = torch.as_tensor(bias_values).detach().to(torch.float64)
    if v.ndim != 1:
        raise ValueError(f"bias_values must have shape (B,), got {tuple(v.shape)}")
    if not torch.isfinite(v).all():
        idx = int(torch.nonzero(~torch.isfinite(v))[0, 0])
        raise ValueError(f"bias_values has a non-finite value at sample {idx}")
    kT = float(kT)
    if not math.isfinite(kT) or kT <= 0:
        raise ValueError(f"kT must be > 0, got {kT}")
    return v / kT


def effective_sample_size(log_weights: torch.Tensor) -> float:
    r"""Kish's ESS :math:`(\sum w)^2/\sum w^2` of unnormalised log-weights (``sciffusion.smc.ess``)."""
    return float(smc.ess(torch.as_tensor(log_weights, dtype=torch.float64)))


class WellTemperedBias:
    r"""Well-tempered Gaussian hills on a grid over ``k`` collective variables.

    The bias is stored on a regular grid (``bins[d]`` nodes per CV): a periodic CV's nodes are
    ``lower + i L / bins`` (``i < bins``, the period ``L = upper - lower`` wraps), a
    non-periodic CV's nodes span ``[lower, upper]`` inclusive. Each hill is added to every node
    exactly (minimum-image distance for periodic CVs), and so is its exact gradient
    :math:`\partial V/\partial s_d` (one more grid per CV, as PLUMED stores derivatives on its
    grids). Evaluation (``mode="grid"``) is **multilinear interpolation**: ``V`` is interpolated
    from the value grid and :math:`\nabla_s V`, which torch's autograd returns, from the gradient
    grids, so the force on the CVs is continuous and within :math:`O(h^2/\sigma^2)` of the exact
    hill sum (``h`` the spacing; keep ``sigma`` >= 2 cells) rather than the piecewise-constant
    slope of the interpolated values. (First derivatives only: no double backward through the
    bias.) ``mode="hills"`` evaluates the exact hill sum instead (smooth, all derivatives, cost
    linear in the number of hills). Outside a non-periodic range the edge value is used and the
    gradient is zero.

    Args:
        cvs_or_dim: number of CVs, or a CV set with ``.periodic`` (and ``.names``), e.g.
            :class:`~sciffusion.domains.boltzmann.cvs.CVSet`; then ``periodic`` is taken from it.
        lower, upper: range of each CV (scalar or per CV). Default ``(-pi, pi)`` for periodic CVs.
        bins: grid nodes per CV (scalar or per CV).
        sigma: hill widths (scalar or per CV), in CV units.
        height: initial hill height :math:`h_0` (unit of ``kT``).
        gamma: bias factor :math:`\gamma > 1`; ``math.inf`` gives untempered metadynamics.
        kT: :math:`k_BT` (1: everything in kT).
        periodic: per-CV flags (ignored when ``cvs_or_dim`` carries them).
        mode: ``"grid"`` (interpolated) or ``"hills"`` (exact sum) for :meth:`__call__`.
    """

    def __init__(self, cvs_or_dim: Any, lower=None, upper=None, bins=100, sigma=0.3,
                 height: float = 1.0, gamma: float = 10.0, kT: float = 1.0, periodic=False,
                 mode: str = "grid"):
        if isinstance(cvs_or_dim, int):
            k, self.cvs, names = int(cvs_or_dim), None, None
        elif hasattr(cvs_or_dim, "periodic"):
            self.cvs = cvs_or_dim
            periodic = list(cvs_or_dim.periodic)
            k = len(periodic)
            names = list(getattr(cvs_or_dim, "names", [])) or None
        else:
            raise TypeError("cvs_or_dim must be an int (number of CVs) or a CV set with "
                            f".periodic, got {type(cvs_or_dim).__name__}")
        if k < 1:
            raise ValueError(f"need at least one CV, got {k}")
        self.k = k
        self.names = names or [f"cv{d}" for d in range(k)]
        self.periodic = [bool(p) for p in (periodic if isinstance(periodic, (list, tuple))
                                           else [periodic] * k)]
        if len(self.periodic) != k:
            raise ValueError(f"periodic must have {k} flags, got {len(self.periodic)}")
        if lower is None:
            if not all(self.periodic):
                raise ValueError("lower and upper are required for non-periodic CVs")
            lower = -math.pi
        if upper is None:
            if not all(self.periodic):
                raise ValueError("lower and upper are required for non-periodic CVs")
            upper = math.pi
        self.lower = _per_dim(lower, k, "lower")
        self.upper = _per_dim(upper, k, "upper")
        if not (self.upper > self.lower).all():
            raise ValueError("upper must exceed lower for every CV")
        self.bins = [int(b) for b in _per_dim(bins, k, "bins", torch.int64)]
        if min(self.bins) < 2:
            raise ValueError(f"bins must be >= 2 per CV, got {self.bins}")
        self.sigma = _per_dim(sigma, k, "sigma")
        if not (self.sigma > 0).all():
            raise ValueError("sigma must be > 0")
        self.height = float(height)
        if not math.isfinite(self.height) or self.height <= 0:
            raise ValueError(f"height must be > 0, got {height}")
        self.gamma = float(gamma)
        if not self.gamma > 1:
            raise ValueError(f"gamma (bias factor) must be > 1 (inf for plain metadynamics), got {gamma}")
        self.kT = float(kT)
        if not math.isfinite(self.kT) or self.kT <= 0:
            raise ValueError(f"kT must be > 0, got {kT}")
        if mode not in ("grid", "hills"):
            raise ValueError(f"mode must be 'grid' or 'hills', got {mode!r}")
        self.mode = mode
        self.frozen = False
        self.grid = torch.zeros(self.bins, dtype=torch.float64)
        self.grad_grid = torch.zeros([k] + self.bins, dtype=torch.float64)
        self.centers = torch.zeros(0, k, dtype=torch.float64)
        self.heights = torch.zeros(0, dtype=torch.float64)

    # -- geometry -----------------------------------------------------------------------------
    @property
    def spacing(self) -> torch.Tensor:
        """Grid spacing per CV."""
        return torch.tensor([float(self.upper[d] - self.lower[d]) / (self.bins[d] if self.periodic[d]
                             else self.bins[d] - 1) for d in range(self.k)], dtype=torch.float64)

    def grid_points(self) -> list[torch.Tensor]:
        """The grid nodes of each CV, a list of ``(bins[d],)`` tensors."""
        h = self.spacing
        return [self.lower[d] + h[d] * torch.arange(self.bins[d], dtype=torch.float64)
                for d in range(self.k)]

    def _delta(self, s: torch.Tensor, c: torch.Tensor, d: int) -> torch.Tensor:
        diff = s - c
        if self.periodic[d]:
            period = float(self.upper[d] - self.lower[d])
            diff = diff - period * torch.round(diff / period)
        return diff

    def _check_cv(self, cv_values) -> torch.Tensor:
        s = torch.as_tensor(cv_values)
        if not torch.is_floating_point(s):
            s = s.to(torch.float64)
        if s.ndim == 1 and self.k == 1:
            s = s[:, None]
        if s.ndim != 2 or s.shape[1] != self.k:
            raise ValueError(f"cv_values must have shape (B, {self.k}), got {tuple(s.shape)}")
        if not torch.isfinite(s.detach()).all():
            idx = int(torch.nonzero(~torch.isfinite(s.detach()).all(-1))[0, 0])
            raise ValueError(f"cv_values has a non-finite value at sample {idx}")
        return s

    # -- evaluation ---------------------------------------------------------------------------
    def __call__(self, cv_values: torch.Tensor) -> torch.Tensor:
        """The bias :math:`V(s)` ``(B,)`` (unit of ``kT``), differentiable w.r.t. ``cv_values``."""
        s = self._check_cv(cv_values)
        v = self._hill_sum(s) if self.mode == "hills" else self._interpolate(s)
        return v

    def reduced(self, cv_values: torch.Tensor) -> torch.Tensor:
        """:math:`V(s)/k_BT`, the term added to the reduced energy of the biased target."""
        return self(cv_values) / self.kT

    def bias_energy(self, x: torch.Tensor) -> torch.Tensor:
        r"""The reduced bias of configurations, :math:`V(s(x))/k_BT` ``(B,)``, through the CV set
        given at construction (differentiable w.r.t. ``x``): add it to the reduced energy to get
        the biased target."""
        if self.cvs is None:
            raise ValueError("this bias was built from a dimension, not a CV set; pass CV values "
                             "to reduced() instead")
        return self.reduced(self.cvs(x))

    def _hill_sum(self, s: torch.Tensor) -> torch.Tensor:
        s64 = s.to(torch.float64)
        if self.heights.numel() == 0:
            return torch.zeros(s.shape[0], dtype=torch.float64, device=s.device) + 0 * s64.sum(-1)
        sq = 0
        for d in range(self.k):
            sq = sq + (self._delta(s64[:, None, d], self.centers[None, :, d], d) / self.sigma[d]) ** 2
        return (self.heights[None] * torch.exp(-0.5 * sq)).sum(-1)

    def _interpolate(self, s: torch.Tensor) -> torch.Tensor:
        s64 = s.to(torch.float64)
        h = self.spacing
        idx0, frac = [], []
        for d in range(self.k):
            t = (s64[:, d] - float(self.lower[d])) / float(h[d])
            n = self.bins[d]
            if self.periodic[d]:
                t = torch.remainder(t, n)
                i0 = torch.floor(t.detach()).long().clamp(0, n - 1)
            else:
                t = t.clamp(0, n - 1)
                i0 = torch.floor(t.detach()).long().clamp(0, n - 2)
            idx0.append(i0)
            frac.append(t - i0.to(t.dtype))
        out = 0
        grad = torch.zeros(s.shape[0], self.k, dtype=torch.float64, device=s.device)
        for corner in range(2 ** self.k):
            w = 1
            index = []
            for d in range(self.k):
                bit = (corner >> d) & 1
                i = idx0[d] + bit
                if self.periodic[d]:
                    i = i % self.bins[d]
                index.append(i)
                w = w * (frac[d] if bit else 1 - frac[d])
            out = out + w * self.grid[tuple(index)]
            grad = grad + w.detach()[:, None] * self.grad_grid[(slice(None),) + tuple(index)].T
        if not s.requires_grad:
            return out.detach()
        for d in range(self.k):
            if not self.periodic[d]:
                inside = (s64[:, d] >= float(self.lower[d])) & (s64[:, d] <= float(self.upper[d]))
                grad[:, d] = torch.where(inside.detach(), grad[:, d], torch.zeros_like(grad[:, d]))
        # value from the value grid, gradient from the gradient grids (first order only)
        return out.detach() + ((s64 - s64.detach()) * grad).sum(-1)

    # -- deposition ---------------------------------------------------------------------------
    def hill_heights(self, cv_values: torch.Tensor) -> torch.Tensor:
        r"""The well-tempered heights :math:`h_0 e^{-V(c)/((\gamma-1)k_BT)}` the current bias
        would give hills at ``cv_values`` ``(B, k)``."""
        s = self._check_cv(cv_values).detach().to(torch.float64)
        if math.isinf(self.gamma):
            return torch.full((s.shape[0],), self.height, dtype=torch.float64)
        with torch.no_grad():
            v = self(s)
        return self.height * torch.exp(-v / ((self.gamma - 1.0) * self.kT))

    def deposit(self, cv_values: torch.Tensor, sequential: bool = False) -> torch.Tensor:
        r"""Add one hill at each row of ``cv_values`` ``(B, k)``; returns their heights ``(B,)``.

        With ``sequential=False`` (default; one WT-ASBS round deposits its batch at once) every
        height uses the bias *before* the batch; with ``sequential=True`` each hill sees the ones
        before it, as in metadynamics (Barducci et al. 2008). Raises RuntimeError once
        :meth:`freeze` was called.
        """
        if self.frozen:
            raise RuntimeError("the bias is frozen; deposit() is not allowed after freeze()")
        s = self._check_cv(cv_values).detach().to(torch.float64)
        if s.shape[0] == 0:
            return torch.zeros(0, dtype=torch.float64)
        if sequential:
            return torch.cat([self.deposit(s[i:i + 1]) for i in range(s.shape[0])])
        heights = self.hill_heights(s)
        pts = self.grid_points()
        gauss = [torch.exp(-0.5 * (self._delta(pts[d][None, :], s[:, d:d + 1], d) / self.sigma[d]) ** 2)
                 for d in range(self.k)]
        # sum_b h_b prod_d g_d[b, i_d] on the grid, by one einsum over the batch
        letters = "ijklmnopqr"[: self.k]
        expr = "b," + ",".join(f"b{c}" for c in letters) + "->" + letters
        self.grid += torch.einsum(expr, heights, *gauss)
        for d in range(self.k):
            dg = -self._delta(pts[d][None, :], s[:, d:d + 1], d) / self.sigma[d] ** 2 * gauss[d]
            self.grad_grid[d] += torch.einsum(expr, heights, *[dg if e == d else g for e, g in enumerate(gauss)])
        self.centers = torch.cat([self.centers, s])
        self.heights = torch.cat([self.heights, heights])
        return heights

    def _rebuild_grad_grid(self, centers, heights):
        pts = self.grid_points()
        letters = "ijklmnopqr"[: self.k]
        expr = "b," + ",".join(f"b{c}" for c in letters) + "->" + letters
        c = centers.to(torch.float64)
        gauss = [torch.exp(-0.5 * (self._delta(pts[d][None, :], c[:, d:d + 1], d) / self.sigma[d]) ** 2)
                 for d in range(self.k)]
        for d in range(self.k):
            dg = -self._delta(pts[d][None, :], c[:, d:d + 1], d) / self.sigma[d] ** 2 * gauss[d]
            self.grad_grid[d] += torch.einsum(expr, heights.to(torch.float64),
                                              *[dg if e == d else g for e, g in enumerate(gauss)])

    def freeze(self) -> "WellTemperedBias":
        """Stop deposition (the final stage samples a fixed biased target); returns self."""
        self.frozen = True
        return self

    # -- estimates ----------------------------------------------------------------------------
    def free_energy(self) -> tuple[list[torch.Tensor], torch.Tensor]:
        r"""The bias grid's own estimate :math:`F(s) = -\frac{\gamma}{\gamma-1}V(s)` (unit of
        ``kT``), shifted so its minimum is 0; returns ``(grid_points, F)`` with ``F`` of shape
        ``bins`` indexed in CV order ``[i_0, i_1, ...]``."""
        factor = 1.0 if math.isinf(self.gamma) else self.gamma / (self.gamma - 1.0)
        f = -factor * self.grid
        return self.grid_points(), f - f.min()

    def log_weights(self, cv_values: torch.Tensor) -> torch.Tensor:
        r""":math:`V(s)/k_BT` at samples of the biased target: their log importance weights."""
        with torch.no_grad():
            return log_importance_weights(self(cv_values), self.kT)

    @property
    def num_hills(self) -> int:
        return int(self.heights.numel())

    # -- persistence --------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"k": self.k, "names": list(self.names), "periodic": list(self.periodic),
                "lower": self.lower.clone(), "upper": self.upper.clone(), "bins": list(self.bins),
                "sigma": self.sigma.clone(), "height": self.height, "gamma": self.gamma,
                "kT": self.kT, "mode": self.mode, "frozen": self.frozen,
                "grid": self.grid.clone(), "grad_grid": self.grad_grid.clone(), "centers": self.centers.clone(),
                "heights": self.heights.clone()}

    def load_state_dict(self, state: dict) -> None:
        if int(state["k"]) != self.k or list(state["bins"]) != self.bins:
            raise ValueError(f"state has k={state['k']}, bins={state['bins']}; this bias has "
                             f"k={self.k}, bins={self.bins}")
        self.names = list(state["names"])
        self.periodic = list(state["periodic"])
        self.lower, self.upper = state["lower"].clone(), state["upper"].clone()
        self.sigma = state["sigma"].clone()
        self.height, self.gamma, self.kT = float(state["height"]), float(state["gamma"]), float(state["kT"])
        self.mode, self.frozen = state["mode"], bool(state["frozen"])
        self.grid = state["grid"].clone()
        if "grad_grid" in state:
            self.grad_grid = state["grad_grid"].clone()
        else:  # a state saved before gradient grids existed: rebuild them from the hills
            self.grad_grid = torch.zeros([self.k] + self.bins, dtype=torch.float64)
            self._rebuild_grad_grid(state["centers"], state["heights"])
        self.centers, self.heights = state["centers"].clone(), state["heights"].clone()

    @classmethod
    def from_state_dict(cls, state: dict) -> "WellTemperedBias":
        bias = cls(int(state["k"]), lower=state["lower"], upper=state["upper"], bins=state["bins"],
                   sigma=state["sigma"], height=state["height"], gamma=state["gamma"],
                   kT=state["kT"], periodic=list(state["periodic"]), mode=state["mode"])
        bias.load_state_dict(state)
        return bias

    def __repr__(self) -> str:
        return (f"WellTemperedBias(k={self.k}, names={self.names}, bins={self.bins}, "
                f"gamma={self.gamma}, hills={self.num_hills}, frozen={self.frozen})")
