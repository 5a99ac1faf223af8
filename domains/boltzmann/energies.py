r"""Energies in kT, one interface for analytic torch potentials and any OpenMM ``System``.

Every energy answers the same two questions for a batch of configurations ``x`` of shape
``(B, *event_shape)``:

* ``energy(x)``: the *reduced* energy :math:`u(x) = E(x)/k_BT`, shape ``(B,)``,
  float64, so the Boltzmann density is :math:`p(x) \propto e^{-u(x)}`;
* ``energy.energy_and_forces(x)``: ``(u, f)`` with :math:`f = -\nabla_x u` (reduced, per unit
  length of ``x``), shape like ``x``.

``num_calls`` counts configurations evaluated (one terminal sample = one call), so samplers, MD
and metadynamics are compared on the same energy+force budget. Non-finite energies raise
``ValueError`` naming the first bad frame (``check_finite=False`` turns that off).

Units are stripped once, at this boundary: OpenMM positions are nm, its energies kJ/mol and its
forces kJ/mol/nm; they are divided by :math:`k_BT = R T` (kJ/mol) here, and nothing downstream
sees a ``openmm.unit`` quantity.

The analytic potentials are dimensionless (``temperature`` is ``None``; ``kT`` is in the
potential's own energy unit):

* :class:`DoubleWell2D` -- :math:`E = x_1^4 - 6x_1^2 - \tfrac12 x_1 + \tfrac12 x_2^2`, ``kT = 1``;
  :math:`P(x_1>0) = 0.8443` and :math:`\Delta F(x_1<0 \to x_1>0) = -1.690\,kT` by quadrature.
* :class:`MuellerBrown` -- the Müller--Brown potential (Müller & Brown 1979) with its three
  minima, at ``kT = 20`` by default (barrier from the deepest basin about 5.3 kT, the shallowest
  basin 3.3 kT above the deepest: all three populated, crossings rare).
* :class:`GaussianMixtureEnergy` and :class:`ManyWell` (the many-well of Midgley et al. 2023,
  FAB: ``n_pairs`` independent copies of the double well, :math:`2^{n}` modes).
* :class:`LennardJones` -- a Lennard-Jones cluster with the harmonic centre-of-mass restraint
  used by Köhler et al. 2020 and DEM/iDEM (Akhound-Sadegh et al. 2024).
"""

from __future__ import annotations

import logging
import math
from typing import Any, Callable, Sequence

import numpy as np
import torch

logger = logging.getLogger(__name__)

#: Molar gas constant in kJ/(mol K) (CODATA 2018, exact), so kT = R T in kJ/mol.
MOLAR_GAS_CONSTANT_KJ = 0.00831446261815324

_EXTRA_HINT = 'pip install "sciffusion[molecules]"'


def _require(module: str):
    """Import an optional dependency of the ``molecules`` extra, naming the extra if missing."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as err:  # pragma: no cover - exercised only without the extra
        raise ImportError(f"{module} is needed here; install it with {_EXTRA_HINT}") from err


def kT_kj_per_mol(temperature: float) -> float:
    """:math:`k_BT = R T` in kJ/mol for a temperature in kelvin (ValueError if not > 0)."""
    temperature = float(temperature)
    if not math.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"temperature must be a finite number of kelvin > 0, got {temperature}")
    return MOLAR_GAS_CONSTANT_KJ * temperature


def _check_frames_finite(u: torch.Tensor, what: str = "energy") -> None:
    bad = ~torch.isfinite(u)
    if bad.any():
        idx = int(torch.nonzero(bad)[0, 0])
        raise ValueError(f"non-finite {what} {float(u[idx])} at frame {idx} "
                         f"({int(bad.sum())} of {u.shape[0]} frames non-finite); "
                         "the configuration is likely overlapping or exploded")


class Energy:
    r"""The interface every energy implements: reduced energies and forces of a batch.

    Attributes:
        event_shape: the shape of one configuration, e.g. ``(2,)`` or ``(n_atoms, 3)``.
        kT: :math:`k_BT` in the energy's own unit (kJ/mol for OpenMM).
        temperature: kelvin, or ``None`` for dimensionless analytic potentials.
        num_calls: configurations evaluated so far (energy or energy+forces, one per frame).
        check_finite: raise ``ValueError`` naming the frame on a non-finite energy.

    Subclasses implement :meth:`_reduced_energy_and_forces` (and, when differentiable in torch,
    :meth:`_reduced_energy`).
    """

    event_shape: tuple[int, ...] = ()
    kT: float = 1.0
    temperature: float | None = None

    def __init__(self, check_finite: bool = True):
        self.num_calls = 0
        self.check_finite = bool(check_finite)

    # -- validation ---------------------------------------------------------------------------
    def _as_batch(self, x: Any) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            x = torch.as_tensor(np.asarray(x), dtype=torch.float64)
        if not torch.is_floating_point(x):
            raise TypeError(f"x must be a floating-point tensor, got dtype {x.dtype}")
        es = tuple(self.event_shape)
        if x.ndim != len(es) + 1 or tuple(x.shape[1:]) != es:
            raise ValueError(f"x must have shape (B, {', '.join(map(str, es))}) "
                             f"(batch, *event_shape={es}), got {tuple(x.shape)}")
        return x

    # -- public API ---------------------------------------------------------------------------
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Reduced energies :math:`u = E/k_BT` of a batch, shape ``(B,)``, float64."""
        x = self._as_batch(x)
        u = self._reduced_energy(x)
        self.num_calls += x.shape[0]
        if self.check_finite:
            _check_frames_finite(u.detach())
        return u

    def energy_and_forces(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        r"""Reduced energies ``(B,)`` (float64) and reduced forces :math:`-\nabla_x u` (like ``x``)."""
        x = self._as_batch(x)
        u, f = self._reduced_energy_and_forces(x)
        self.num_calls += x.shape[0]
        if self.check_finite:
            _check_frames_finite(u)
            bad = ~torch.isfinite(f.reshape(f.shape[0], -1)).all(-1)
            if bad.any():
                idx = int(torch.nonzero(bad)[0, 0])
                raise ValueError(f"non-finite force at frame {idx}")
        return u, f

    def forces(self, x: torch.Tensor) -> torch.Tensor:
        r"""Reduced forces :math:`-\nabla_x u`, shape like ``x``."""
        return self.energy_and_forces(x)[1]

    def reset_counter(self) -> int:
        """Set ``num_calls`` to zero and return the count it had."""
        n, self.num_calls = self.num_calls, 0
        return n

    # -- to implement -------------------------------------------------------------------------
    def _reduced_energy(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _reduced_energy_and_forces(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError


# attributes that do not change an energy's values (counters, execution and checking options)
_NOT_PART_OF_THE_ENERGY = {"num_calls", "executor", "num_workers", "check_finite", "check_units",
                           "platform", "platform_properties"}


def energy_fingerprint(energy: Any, depth: int = 0) -> dict:
    """What defines an energy's values, for checkpoint fingerprints: its type and public
    attributes (tensors as they are, an OpenMM ``System`` as its serialised XML, a wrapped energy
    such as a restraint recursively), without counters or execution options, so a resumed run
    refuses a checkpoint written for another potential or other parameters."""
    if hasattr(energy, "__code__") or not hasattr(energy, "__dict__"):
        return {"callable": energy}  # a plain function: fingerprinted by its code and closure
    out = {"type": type(energy).__qualname__}
    for k, v in sorted(vars(energy).items()):
        if k.startswith("_") or k in _NOT_PART_OF_THE_ENERGY:
            continue
        if type(v).__module__.startswith("openmm") and type(v).__name__ == "System":
            v = _require("openmm").XmlSerializer.serialize(v)
        elif depth < 4 and hasattr(v, "energy_and_forces") and hasattr(v, "__dict__"):
            v = energy_fingerprint(v, depth + 1)
        out[k] = v
    return out


class TorchEnergy(Energy):
    r"""An analytic potential written in torch: differentiable, forces by autograd.

    Subclasses implement :meth:`potential` (the raw energy :math:`E(x)` in its own unit, float64,
    shape ``(B,)``). Calling the energy keeps the autograd graph, so a sampler may differentiate
    :math:`u` directly; :meth:`energy_and_forces` returns detached tensors.
    """

    def __init__(self, event_shape: Sequence[int], kT: float = 1.0, check_finite: bool = True):
        super().__init__(check_finite=check_finite)
        kT = float(kT)
        if not math.isfinite(kT) or kT <= 0:
            raise ValueError(f"kT must be a finite number > 0, got {kT}")
        self.kT = kT
        self.temperature = None
        self.event_shape = tuple(int(s) for s in event_shape)

    def potential(self, x: torch.Tensor) -> torch.Tensor:
        """The energy :math:`E(x)` in the potential's own unit (not divided by kT)."""
        raise NotImplementedError

    def _reduced_energy(self, x):
        return self.potential(x.to(torch.float64)) / self.kT

    def _reduced_energy_and_forces(self, x):
        with torch.enable_grad():
            xg = x.detach().to(torch.float64).requires_grad_(True)
            u = self.potential(xg) / self.kT
            (g,) = torch.autograd.grad(u.sum(), xg)
        return u.detach(), (-g).to(x.dtype)


# ------------------------------------------------------------------------------------------
# quadrature helpers (exact references for the 2-D potentials)
# ------------------------------------------------------------------------------------------

def quadrature_grid_2d(energy: Energy, lower: Sequence[float], upper: Sequence[float],
                       n: int = 801) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""The normalised Boltzmann probabilities of a 2-D energy on an ``n x n`` grid.

    The cell masses :math:`p_{ij} = e^{-u(x_{ij})} / \sum_{kl} e^{-u(x_{kl})}` (midpoint rule on
    the box ``[lower, upper]``; its error is :math:`O(h^2)` for a smooth density and the box must
    hold all but a negligible mass). Does not count towards ``energy.num_calls``.

    Returns:
        ``(x1, x2, p)``: cell centres ``(n,)`` each and probabilities ``(n, n)`` indexed
        ``[i1, i2]``, float64.
    """
    if tuple(energy.event_shape) != (2,):
        raise ValueError(f"quadrature_grid_2d needs a 2-D energy, got event_shape {energy.event_shape}")
    n = int(n)
    if n < 3:
        raise ValueError(f"n must be >= 3, got {n}")
    edges = [torch.linspace(float(lo), float(hi), n + 1, dtype=torch.float64)
             for lo, hi in zip(lower, upper)]
    c1, c2 = [(e[1:] + e[:-1]) / 2 for e in edges]
    g1, g2 = torch.meshgrid(c1, c2, indexing="ij")
    pts = torch.stack([g1.reshape(-1), g2.reshape(-1)], -1)
    calls = energy.num_calls
    with torch.no_grad():
        u = energy(pts)
    energy.num_calls = calls
    log_p = -u - torch.logsumexp(-u, 0)
    return c1, c2, log_p.exp().reshape(n, n)


def quadrature_probability(energy: Energy, region: Callable[[torch.Tensor], torch.Tensor],
                           lower: Sequence[float], upper: Sequence[float], n: int = 801) -> float:
    r""":math:`P(x \in \text{region})` under :math:`e^{-u}` for a 2-D energy, by the midpoint rule.

    Args:
        region: maps points ``(M, 2)`` to a boolean mask ``(M,)``.
    """
    c1, c2, p = quadrature_grid_2d(energy, lower, upper, n)
    g1, g2 = torch.meshgrid(c1, c2, indexing="ij")
    mask = region(torch.stack([g1.reshape(-1), g2.reshape(-1)], -1)).reshape(p.shape)
    return float(p[mask.bool()].sum())


# ------------------------------------------------------------------------------------------
# analytic potentials
# ------------------------------------------------------------------------------------------

def _double_well_1d(x1: torch.Tensor) -> torch.Tensor:
    return x1 ** 4 - 6 * x1 ** 2 - 0.5 * x1


class DoubleWell2D(TorchEnergy):
    r"""The 2-D double well :math:`E(x) = x_1^4 - 6x_1^2 - \tfrac12 x_1 + \tfrac12 x_2^2`.

    Wells near :math:`x_1 \approx \pm 1.7` (the right one deeper by about 1.7); :math:`x_2` is an
    independent standard normal at ``kT = 1``. The density factorises, so exact marginals of
    :math:`x_1` come from 1-D quadrature (:meth:`exact_probability`): at ``kT = 1``,
    :math:`P(x_1>0) = 0.8443` and :math:`\Delta F(x_1<0 \to x_1>0) = -\ln\frac{P_B}{P_A} = -1.690`.

    Args:
        kT: temperature in the potential's unit (1 in the issue and in the FAB many-well).
    """

    def __init__(self, kT: float = 1.0, check_finite: bool = True):
        super().__init__((2,), kT=kT, check_finite=check_finite)

    def potential(self, x):
        return _double_well_1d(x[:, 0]) + 0.5 * x[:, 1] ** 2

    def _x1_quadrature(self, n: int = 400_001, lim: float = 6.0):
        # Simpson on [-lim, lim]: exp(-E/kT) is < 1e-200 beyond |x1| = 6 for kT <= 3.
        x = torch.linspace(-lim, lim, n, dtype=torch.float64)
        logq = -_double_well_1d(x) / self.kT
        w = torch.ones(n, dtype=torch.float64)
        w[1:-1:2], w[2:-1:2] = 4.0, 2.0
        return x, logq + torch.log(w)

    def exact_probability(self, lower: float = 0.0, upper: float = math.inf) -> float:
        r""":math:`P(\text{lower} < x_1 < \text{upper})` by Simpson quadrature (relative error
        below 1e-12: 400 001 nodes on a density that is smooth and vanishing at the ends)."""
        x, logw = self._x1_quadrature()
        inside = (x > lower) & (x < upper)
        if not inside.any():
            return 0.0
        return float(torch.exp(torch.logsumexp(logw[inside], 0) - torch.logsumexp(logw, 0)))

    def exact_delta_f(self, threshold: float = 0.0) -> float:
        r""":math:`\Delta F(A \to B) = -\ln(P_B/P_A)` in kT, with :math:`A = \{x_1 < t\}`,
        :math:`B = \{x_1 > t\}`."""
        p_b = self.exact_probability(threshold, math.inf)
        return -math.log(p_b / (1.0 - p_b))

    def exact_x1_density(self, x1: torch.Tensor) -> torch.Tensor:
        """The normalised marginal density of :math:`x_1` at the given points."""
        x, logw = self._x1_quadrature()
        h = float(x[1] - x[0])
        log_z = torch.logsumexp(logw, 0) + math.log(h / 3.0)
        x1 = torch.as_tensor(x1, dtype=torch.float64)
        return torch.exp(-_double_well_1d(x1) / self.kT - log_z)


class MuellerBrown(TorchEnergy):
    r"""The Müller--Brown potential (Müller & Brown 1979, Theor. Chim. Acta 53, 75):

    .. math:: E(x, y) = \sum_{k=1}^{4} A_k \exp\big(a_k (x - x^0_k)^2 + b_k (x - x^0_k)(y - y^0_k)
              + c_k (y - y^0_k)^2\big)

    with :math:`A = (-200, -100, -170, 15)`, :math:`a = (-1, -1, -6.5, 0.7)`,
    :math:`b = (0, 0, 11, 0.6)`, :math:`c = (-10, -10, -6.5, 0.7)`, :math:`x^0 = (1, 0, -0.5, -1)`,
    :math:`y^0 = (0, 0.5, 1.5, 1)`. Minima (E): ``(-0.558, 1.442)`` (-146.7), ``(0.623, 0.028)``
    (-108.2), ``(-0.050, 0.467)`` (-80.8).

    Temperature scaling (stated): the raw potential spans ~150 units, so at ``kT = 1`` only the
    deepest well would carry mass. The default ``kT = 20`` puts the lowest saddle ~5.3 kT above
    the deepest minimum and the shallowest basin 3.3 kT above it, so all three basins carry
    mass and crossings are rare: a sensible test of mode coverage. :meth:`basin_index` assigns a
    point to the nearest minimum (Voronoi cells of the minima, an exactly defined partition) and
    :meth:`exact_basin_probabilities` integrates them by 2-D quadrature.
    """

    A = (-200.0, -100.0, -170.0, 15.0)
    a = (-1.0, -1.0, -6.5, 0.7)
    b = (0.0, 0.0, 11.0, 0.6)
    c = (-10.0, -10.0, -6.5, 0.7)
    x0 = (1.0, 0.0, -0.5, -1.0)
    y0 = (0.0, 0.5, 1.5, 1.0)
    #: the three minima (deepest first), to 3 decimals
    minima = ((-0.558, 1.442), (0.623, 0.028), (-0.050, 0.467))
    #: (lower, upper) of a box holding all but ~1e-8 of the mass at kT <= 20 (the density has a
    #: slow tail along the diagonal towards the lower left, where term 3 decays slowest)
    box = ((-3.5, -2.5), (2.0, 3.5))

    def __init__(self, kT: float = 20.0, check_finite: bool = True):
        super().__init__((2,), kT=kT, check_finite=check_finite)

    def potential(self, x):
        px, py = x[:, 0:1], x[:, 1:2]
        t = lambda v: torch.tensor(v, dtype=x.dtype, device=x.device)  # noqa: E731
        dx, dy = px - t(self.x0), py - t(self.y0)
        arg = t(self.a) * dx ** 2 + t(self.b) * dx * dy + t(self.c) * dy ** 2
        return (t(self.A) * torch.exp(arg)).sum(-1)

    def basin_index(self, x: torch.Tensor) -> torch.Tensor:
        """Index (0, 1, 2) of the nearest minimum of each point ``(M, 2)``, as ``(M,)`` long."""
        m = torch.tensor(self.minima, dtype=torch.float64)
        return torch.cdist(torch.as_tensor(x, dtype=torch.float64), m).argmin(-1)

    def exact_basin_probabilities(self, n: int = 1201) -> torch.Tensor:
        r"""The probabilities of the three basins by 2-D midpoint quadrature on :attr:`box`
        (``n = 1201``: cells of 0.005, against well widths ~0.1 at kT = 20)."""
        c1, c2, p = quadrature_grid_2d(self, self.box[0], self.box[1], n)
        g1, g2 = torch.meshgrid(c1, c2, indexing="ij")
        idx = self.basin_index(torch.stack([g1.reshape(-1), g2.reshape(-1)], -1)).reshape(p.shape)
        return torch.stack([p[idx == k].sum() for k in range(3)])


class GaussianMixtureEnergy(TorchEnergy):
    r"""A Gaussian mixture as an energy: :math:`u(x) = -\log\sum_k \pi_k\,\mathcal N(x;\mu_k,\sigma_k^2 I)`.

    Isotropic components (``stds`` a scalar or one per component). ``kT = 1`` so
    :math:`e^{-u}` is the normalised mixture; :meth:`sample` draws exact samples and
    :meth:`component_probabilities` gives the exact mode masses.

    Args:
        means: ``(K, d)`` component means.
        stds: scalar or ``(K,)`` standard deviations.
        weights: ``(K,)`` mixture weights (normalised here); uniform by default.
    """

    def __init__(self, means, stds=1.0, weights=None, check_finite: bool = True):
        means = torch.as_tensor(means, dtype=torch.float64)
        if means.ndim != 2:
            raise ValueError(f"means must have shape (K, d), got {tuple(means.shape)}")
        k = means.shape[0]
        stds = torch.as_tensor(stds, dtype=torch.float64).expand(k).clone()
        if (stds <= 0).any():
            raise ValueError("stds must be > 0")
        weights = torch.ones(k, dtype=torch.float64) if weights is None else \
            torch.as_tensor(weights, dtype=torch.float64)
        if weights.shape != (k,) or (weights < 0).any() or weights.sum() <= 0:
            raise ValueError(f"weights must be {k} non-negative numbers with a positive sum")
        super().__init__((means.shape[1],), kT=1.0, check_finite=check_finite)
        self.means, self.stds, self.weights = means, stds, weights / weights.sum()

    def potential(self, x):
        d = x.shape[-1]
        mu, s = self.means.to(x), self.stds.to(x)
        sq = ((x[:, None, :] - mu[None]) ** 2).sum(-1) / s ** 2
        logn = -0.5 * sq - d * torch.log(s) - 0.5 * d * math.log(2 * math.pi)
        return -torch.logsumexp(logn + torch.log(self.weights.to(x)), -1)

    def component_probabilities(self) -> torch.Tensor:
        """The exact mode masses (the normalised weights)."""
        return self.weights.clone()

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` exact samples, float64 ``(n, d)``."""
        comp = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        eps = torch.randn(n, self.event_shape[0], generator=generator, dtype=torch.float64)
        return self.means[comp] + self.stds[comp, None] * eps


class ManyWell(TorchEnergy):
    r"""The many-well potential (Midgley et al. 2023, FAB): ``n_pairs`` independent
    copies of :class:`DoubleWell2D` on coordinates ``(x_{2i}, x_{2i+1})``, ``dim = 2 n_pairs``,
    :math:`2^{n}` modes. Exact marginals are those of the double well, per pair."""

    def __init__(self, n_pairs: int = 16, kT: float = 1.0, check_finite: bool = True):
        if int(n_pairs) < 1:
            raise ValueError(f"n_pairs must be >= 1, got {n_pairs}")
        super().__init__((2 * int(n_pairs),), kT=kT, check_finite=check_finite)
        self.n_pairs = int(n_pairs)

    def potential(self, x):
        x1, x2 = x[:, 0::2], x[:, 1::2]
        return (_double_well_1d(x1) + 0.5 * x2 ** 2).sum(-1)

    def exact_probability(self, lower: float = 0.0, upper: float = math.inf) -> float:
        r""":math:`P(\text{lower} < x_{2i} < \text{upper})` for any one pair ``i``."""
        return DoubleWell2D(kT=self.kT).exact_probability(lower, upper)


class LennardJones(TorchEnergy):
    r"""A Lennard-Jones cluster of ``n_particles`` in ``dim`` dimensions with a centre-of-mass
    restraint, as in Köhler et al. 2020 and DEM/iDEM (LJ-13, LJ-55):

    .. math:: E(x) = \varepsilon\sum_{i<j}\Big[\Big(\frac{r_m}{r_{ij}}\Big)^{12}
              - 2\Big(\frac{r_m}{r_{ij}}\Big)^{6}\Big] + \frac{k}{2}\sum_i \lVert x_i - \bar x\rVert^2

    (the 12-6 potential written with its minimum :math:`-\varepsilon` at :math:`r_m`, i.e.
    :math:`4\varepsilon[(\sigma/r)^{12} - (\sigma/r)^6]` with :math:`r_m = 2^{1/6}\sigma`). The
    harmonic term (default ``k = 1``, i.e. :math:`\tfrac12\sum_i\lVert x_i-\bar x\rVert^2`, the
    oscillator term of DEM's LJ-13) keeps the cluster from evaporating; it is translation
    invariant, so samplers should also remove the centre of mass (zero-COM state constraint).
    ``r_min_clip`` clips distances from below so that overlapping particles give a large but
    finite energy (as DEM does); ``0`` disables it.

    Args:
        n_particles: number of particles (>= 2).
        dim: spatial dimension (3 for clusters, 2 for toys).
        epsilon, r_m: well depth and position of the pair minimum.
        k_com: strength of the centre-of-mass restraint (0 disables it).
        kT: temperature in units of epsilon.
    """

    def __init__(self, n_particles: int, dim: int = 3, epsilon: float = 1.0, r_m: float = 1.0,
                 k_com: float = 1.0, kT: float = 1.0, r_min_clip: float = 0.0,
                 check_finite: bool = True):
        if int(n_particles) < 2:
            raise ValueError(f"n_particles must be >= 2, got {n_particles}")
        if int(dim) < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        super().__init__((int(n_particles), int(dim)), kT=kT, check_finite=check_finite)
        self.n_particles, self.dim = int(n_particles), int(dim)
        self.epsilon, self.r_m, self.k_com = float(epsilon), float(r_m), float(k_com)
        self.r_min_clip = float(r_min_clip)
        self._iu = torch.triu_indices(self.n_particles, self.n_particles, 1)

    def potential(self, x):
        i, j = self._iu
        r = (x[:, i, :] - x[:, j, :]).norm(dim=-1)
        if self.r_min_clip > 0:
            r = r.clamp_min(self.r_min_clip)
        s6 = (self.r_m / r) ** 6
        e_lj = self.epsilon * (s6 ** 2 - 2 * s6).sum(-1)
        com = x.mean(1, keepdim=True)
        return e_lj + 0.5 * self.k_com * ((x - com) ** 2).sum((-1, -2))


# ------------------------------------------------------------------------------------------
# OpenMM
# ------------------------------------------------------------------------------------------

_WORKER_CONTEXTS: dict[str, Any] = {}  # one Context per (system, platform) in each worker process


def _make_context(system_xml_or_system, platform_name: str, properties: dict | None):
    mm = _require("openmm")
    system = (mm.XmlSerializer.deserialize(system_xml_or_system)
              if isinstance(system_xml_or_system, str) else system_xml_or_system)
    integrator = mm.VerletIntegrator(0.001)  # never stepped: the Context only evaluates
    platform = mm.Platform.getPlatformByName(platform_name)
    ctx = mm.Context(system, integrator, platform, dict(properties or {}))
    return ctx, integrator


def _evaluate_frames(ctx, positions: np.ndarray, want_forces: bool):
    """Energies (kJ/mol) and forces (kJ/mol/nm) of frames ``(B, N, 3)`` nm in one Context."""
    mm = _require("openmm")
    unit = mm.unit
    n = positions.shape[0]
    e = np.empty(n, dtype=np.float64)
    f = np.empty(positions.shape, dtype=np.float64) if want_forces else None
    kj = unit.kilojoule_per_mole
    for b in range(n):
        try:
            ctx.setPositions(positions[b])
            st = ctx.getState(getEnergy=True, getForces=want_forces)
        except Exception as err:  # OpenMM raises on some NaN coordinates
            e[b] = np.nan
            if f is not None:
                f[b] = np.nan
            logger.debug("OpenMM failed on frame %d: %s", b, err)
            continue
        e[b] = st.getPotentialEnergy().value_in_unit(kj)
        if want_forces:
            f[b] = st.getForces(asNumpy=True).value_in_unit(kj / unit.nanometer)
    return e, f


def _worker_evaluate(key: str, system_xml: str, platform_name: str, properties: dict | None,
                     positions: np.ndarray, want_forces: bool):
    """Runs in an executor worker: builds its own Context once per system, then reuses it."""
    entry = _WORKER_CONTEXTS.get(key)
    if entry is None:
        entry = _make_context(system_xml, platform_name, properties)
        _WORKER_CONTEXTS[key] = entry
    return _evaluate_frames(entry[0], positions, want_forces)


class OpenMMEnergy(Energy):
    r"""Any ``openmm.System`` as a batched energy in kT: :math:`u = E/(RT)`, positions in nm.

    One ``Context`` is built once and reused for every frame (setting positions is cheap, building
    a Context is not). With an ``executor`` (any ``concurrent.futures.Executor``: a
    ``ProcessPoolExecutor`` here, a Dask ``distributed.Client.get_executor()`` or a Ray executor
    on a cluster, unchanged) the batch is split into ``num_workers`` contiguous chunks; each worker
    deserialises the System once (``openmm.XmlSerializer``) and keeps its own Context for later
    calls, so results are identical to the serial path frame by frame.

    Calling the energy on a tensor that requires grad returns a ``u`` that torch can
    differentiate: the backward pass uses the OpenMM forces (one energy+force evaluation per
    frame). Periodic systems use the System's default box vectors.

    Args:
        system: an ``openmm.System``.
        temperature: kelvin (> 0); :math:`k_BT = R T` in kJ/mol.
        platform: OpenMM platform name ("CPU", "Reference", "CUDA", "OpenCL").
        platform_properties: e.g. ``{"Threads": "1"}`` for the CPU platform.
        executor: optional ``concurrent.futures.Executor`` for fan-out.
        num_workers: chunks per batch when an executor is given (default: the executor's
            ``_max_workers`` if it has one, else 4).
        check_units: on the first frame of each batch, raise if the median nearest-neighbour
            distance exceeds 0.5 nm (atoms are ~0.1-0.3 nm apart in a molecule: coordinates this
            spread out are almost surely in angstrom, a factor 10 too large).
        check_finite: raise ``ValueError`` naming the frame on a non-finite energy or force.
    """

    def __init__(self, system, temperature: float, platform: str = "CPU",
                 platform_properties: dict | None = None, executor=None,
                 num_workers: int | None = None, check_units: bool = True,
                 check_finite: bool = True):
        mm = _require("openmm")
        if not isinstance(system, mm.System):
            raise TypeError(f"system must be an openmm.System, got {type(system).__name__}")
        super().__init__(check_finite=check_finite)
        self.temperature = float(temperature)
        self.kT = kT_kj_per_mol(self.temperature)
        self.system = system
        self.n_atoms = system.getNumParticles()
        if self.n_atoms < 1:
            raise ValueError("system has no particles")
        self.event_shape = (self.n_atoms, 3)
        self.platform = str(platform)
        self.platform_properties = dict(platform_properties or {})
        self.executor = executor
        if num_workers is None:
            num_workers = getattr(executor, "_max_workers", None) or 4
        if int(num_workers) < 1:
            raise ValueError(f"num_workers must be >= 1, got {num_workers}")
        self.num_workers = int(num_workers)
        self.check_units = bool(check_units)
        self._ctx = None
        self._xml: str | None = None
        self._key: str | None = None

    # Context handling -------------------------------------------------------------------------
    @property
    def context(self):
        """The in-process ``openmm.Context`` (built on first use, then reused)."""
        if self._ctx is None:
            self._ctx = _make_context(self.system, self.platform, self.platform_properties)
        return self._ctx[0]

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_ctx"] = None
        state["executor"] = None
        return state

    def _system_key(self):
        if self._xml is None:
            import hashlib

            mm = _require("openmm")
            self._xml = mm.XmlSerializer.serialize(self.system)
            self._key = hashlib.sha1((self._xml + self.platform + repr(sorted(
                self.platform_properties.items()))).encode()).hexdigest()
        return self._key, self._xml

    # evaluation -------------------------------------------------------------------------------
    def _check_units(self, pos: np.ndarray) -> None:
        if not self.check_units or self.n_atoms < 2:
            return
        p = pos[0][: 2000]
        if not np.isfinite(p).all():
            return  # the finiteness check names the frame
        d = np.sqrt(((p[:, None, :] - p[None, :, :]) ** 2).sum(-1))
        np.fill_diagonal(d, np.inf)
        med = float(np.median(d.min(1)))
        if med > 0.5:
            raise ValueError(
                f"positions look like angstrom, not nm: the median nearest-neighbour distance "
                f"of frame 0 is {med:.3g}, but bonded atoms are 0.1-0.2 nm apart; divide by 10 "
                "(or pass check_units=False for a sparse system)")

    def _numpy_positions(self, x: torch.Tensor) -> np.ndarray:
        pos = x.detach().to("cpu", torch.float64).numpy()
        self._check_units(pos)
        return np.ascontiguousarray(pos)

    def evaluate(self, positions_nm: np.ndarray, want_forces: bool = True):
        """Raw OpenMM energies (kJ/mol, ``(B,)``) and forces (kJ/mol/nm) of frames in nm; no
        reduction, no counting, no finiteness check."""
        pos = np.ascontiguousarray(np.asarray(positions_nm, dtype=np.float64))
        if self.executor is None or pos.shape[0] <= 1:
            return _evaluate_frames(self.context, pos, want_forces)
        key, xml = self._system_key()
        chunks = [c for c in np.array_split(pos, min(self.num_workers, pos.shape[0])) if len(c)]
        futures = [self.executor.submit(_worker_evaluate, key, xml, self.platform,
                                        self.platform_properties, c, want_forces) for c in chunks]
        parts = [fut.result() for fut in futures]
        e = np.concatenate([p[0] for p in parts])
        f = np.concatenate([p[1] for p in parts]) if want_forces else None
        return e, f

    def _reduced_energy_and_forces(self, x):
        e, f = self.evaluate(self._numpy_positions(x), want_forces=True)
        u = torch.from_numpy(e / self.kT)
        forces = torch.from_numpy(f / self.kT).to(device=x.device, dtype=x.dtype)
        return u.to(x.device), forces

    def _reduced_energy(self, x):
        if x.requires_grad and torch.is_grad_enabled():
            return _OpenMMEnergyFunction.apply(x, self)
        e, _ = self.evaluate(self._numpy_positions(x), want_forces=False)
        return torch.from_numpy(e / self.kT).to(x.device)


class _OpenMMEnergyFunction(torch.autograd.Function):
    """``u(x)`` with ``du/dx = -f`` from OpenMM's forces (one energy+force call per frame)."""

    @staticmethod
    def forward(ctx, x, energy: OpenMMEnergy):
        e, f = energy.evaluate(energy._numpy_positions(x), want_forces=True)
        grad = torch.from_numpy(-f / energy.kT).to(device=x.device, dtype=x.dtype)
        ctx.save_for_backward(grad)
        return torch.from_numpy(e / energy.kT).to(x.device)

    @staticmethod
    def backward(ctx, grad_u):
        (grad,) = ctx.saved_tensors
        return grad * grad_u.to(grad.dtype).reshape((-1,) + (1,) * (grad.ndim - 1)), None


def _mdtraj_topology(omm_topology):
    md = _require("mdtraj")
    return md.Topology.from_openmm(omm_topology)


def alanine_dipeptide(solvent: str = "vacuum", temperature: float = 300.0,
                      constraints: str | None = None, **energy_kwargs):
    r"""Alanine dipeptide (ACE-ALA-NME, 22 atoms) from ``openmmtools.testsystems``.

    The force field, checked in openmmtools' own ``data/alanine-dipeptide-gbsa/setup.leap.in``:
    AMBER ff96 (``leaprc.ff96``, parm96), mbondi2 radii; ``"implicit"`` adds OBC1 GBSA
    (``AlanineDipeptideImplicit``), ``"vacuum"`` has no solvent (``AlanineDipeptideVacuum``); no
    cutoff. ``constraints=None`` (the default here, unlike openmmtools' ``HBonds``) keeps every
    bond flexible, so the energy is the full potential over Cartesian coordinates, which an
    energy-only sampler needs; pass ``"HBonds"`` for MD with a 2 fs step.

    phi = atoms (4, 6, 8, 14) = C(ACE)-N-CA-C, psi = (6, 8, 14, 16) = N-CA-C-N(NME), 0-based.

    Returns:
        ``(energy, topology, positions_nm)``: an :class:`OpenMMEnergy`, an ``mdtraj.Topology``
        and the test system's starting positions, ``(22, 3)`` float64 nm.
    """
    tsys = _require("openmmtools.testsystems")
    app = _require("openmm.app")
    names = {"vacuum": "AlanineDipeptideVacuum", "implicit": "AlanineDipeptideImplicit"}
    if solvent not in names:
        raise ValueError(f"solvent must be one of {sorted(names)}, got {solvent!r}")
    cons = _constraints(app, constraints)
    ts = getattr(tsys, names[solvent])(constraints=cons)
    pos = np.asarray(ts.positions.value_in_unit(_require("openmm").unit.nanometer), dtype=np.float64)
    energy = OpenMMEnergy(ts.system, temperature, **energy_kwargs)
    return energy, _mdtraj_topology(ts.topology), pos


def _constraints(app, constraints):
    valid = {None: None, "None": None, "HBonds": app.HBonds, "AllBonds": app.AllBonds,
             "HAngles": app.HAngles}
    if constraints not in valid:
        raise ValueError(f"constraints must be one of None, 'HBonds', 'AllBonds', 'HAngles', "
                         f"got {constraints!r}")
    return valid[constraints]


def from_pdb(pdb_path, forcefield: Sequence[str] = ("amber14-all.xml",), temperature: float = 300.0,
             constraints: str | None = None, nonbonded_cutoff_nm: float | None = None,
             add_hydrogens: bool = False, **energy_kwargs):
    r"""A user's PDB with an OpenMM force field as an :class:`OpenMMEnergy`.

    ``forcefield`` files are those ``openmm.app.ForceField`` knows (e.g. ``"amber14-all.xml"``,
    ``"implicit/obc2.xml"`` for implicit solvent). Without a periodic box and cutoff the
    nonbonded method is ``NoCutoff``; with ``nonbonded_cutoff_nm`` and a box in the PDB it is
    ``PME``. ``add_hydrogens`` runs ``Modeller.addHydrogens`` (pH 7) first.

    Returns:
        ``(energy, topology (mdtraj), positions_nm)``.
    """
    mm = _require("openmm")
    app = _require("openmm.app")
    pdb = app.PDBFile(str(pdb_path))
    ff = app.ForceField(*forcefield)
    top, positions = pdb.topology, pdb.positions
    if add_hydrogens:
        modeller = app.Modeller(top, positions)
        modeller.addHydrogens(ff)
        top, positions = modeller.topology, modeller.positions
    kwargs: dict[str, Any] = {"constraints": _constraints(app, constraints)}
    if nonbonded_cutoff_nm is None:
        kwargs["nonbondedMethod"] = app.NoCutoff
    else:
        kwargs["nonbondedMethod"] = app.PME if top.getPeriodicBoxVectors() is not None else app.CutoffNonPeriodic
        kwargs["nonbondedCutoff"] = float(nonbonded_cutoff_nm) * mm.unit.nanometer
    system = ff.createSystem(top, **kwargs)
    pos = np.asarray(mm.unit.Quantity(positions).value_in_unit(mm.unit.nanometer), dtype=np.float64)
    return OpenMMEnergy(system, temperature, **energy_kwargs), _mdtraj_topology(top), pos


TORSION_CHAIN_BONDS = ((0, 1), (1, 2), (2, 3))


def torsion_chain(temperature: float = 300.0, k1: float = 3.0, k3: float = 4.0, **energy_kwargs) -> OpenMMEnergy:
    r"""Four atoms 0-1-2-3 in OpenMM with an exactly known torsion distribution.

    Harmonic bonds (0.153 nm, :math:`2\times10^5` kJ/mol/nm\ :sup:`2`), harmonic angles (1.95 rad,
    400 kJ/mol/rad\ :sup:`2`) and the torsion :math:`U_t(\phi) = k_1(1+\cos\phi) + k_3(1+\cos 3\phi)`
    (kJ/mol; trans at :math:`\pi`, gauche near :math:`\pm 1.12` for the defaults), no nonbonded
    terms. In internal coordinates the Cartesian volume element is
    :math:`\prod r^2\sin\theta` times the rigid-body factor, and neither it nor the bond and angle
    energies depend on :math:`\phi`, so the Boltzmann marginal of :math:`\phi` (atoms 0-1-2-3) is
    **exactly** :math:`\propto e^{-U_t(\phi)/k_BT}` (:func:`torsion_chain_log_marginal`): basin
    free energies are 1-D quadratures. Bonds: :data:`TORSION_CHAIN_BONDS`.
    """
    mm = _require("openmm")
    s = mm.System()
    for _ in range(4):
        s.addParticle(12.0)
    bonds, angles, torsion = mm.HarmonicBondForce(), mm.HarmonicAngleForce(), mm.PeriodicTorsionForce()
    for i, j in TORSION_CHAIN_BONDS:
        bonds.addBond(i, j, 0.153, 2.0e5)
    for i in range(2):
        angles.addAngle(i, i + 1, i + 2, 1.95, 400.0)
    torsion.addTorsion(0, 1, 2, 3, 1, 0.0, float(k1))
    torsion.addTorsion(0, 1, 2, 3, 3, 0.0, float(k3))
    for f in (bonds, angles, torsion):
        s.addForce(f)
    return OpenMMEnergy(s, temperature, **energy_kwargs)


def torsion_chain_log_marginal(phi: torch.Tensor, temperature: float = 300.0, k1: float = 3.0,
                               k3: float = 4.0) -> torch.Tensor:
    r"""Unnormalised :math:`\log p(\phi) = -U_t(\phi)/k_BT` of :func:`torsion_chain` (exact)."""
    phi = torch.as_tensor(phi, dtype=torch.float64)
    return -(k1 * (1 + torch.cos(phi)) + k3 * (1 + torch.cos(3 * phi))) / kT_kj_per_mol(temperature)
