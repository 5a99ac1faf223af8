r"""Internal coordinates (Z-matrix) for molecular Boltzmann sampling: bonds, angles and torsions
from the bond graph, NeRF placement in torch (differentiable, batched), the exact volume element,
and the Boltzmann density over standardized internal coordinates.

**Z-matrix.** Atoms are placed in a breadth-first order of the bond graph (heavy atoms and large
subtrees first). Atom :math:`p` of the order (:math:`p \ge 3`) is placed from three earlier atoms
:math:`(j, k, l)` by its bond :math:`r_p = |x_p - x_j|`, angle :math:`\theta_p = \angle(x_p, x_j, x_k)`
and torsion :math:`\varphi_p = \mathrm{dihedral}(x_p, x_j, x_k, x_l)` (mdtraj's sign), where ``j`` is
its bonded parent, ``k`` a placed neighbour of ``j`` and ``l`` either the first placed child of ``j``
(a *sibling*: an improper-like, stiff torsion, as for the second and third H of a methyl or CB/HA
of a stereocentre, Noé et al. 2019, Boltzmann generators, SI) or a placed neighbour of ``k`` (a chain
torsion: phi, psi, methyl rotors). The first three atoms fix the frame: atom 0 at the origin,
atom 1 on the z axis at distance :math:`r_1`, atom 2 in the xz plane (:math:`r_2, \theta_2`).
The coordinate vector is :math:`q = (r_1..r_{N-1}, \theta_2..\theta_{N-1}, \varphi_3..\varphi_{N-1})`,
:math:`3N - 6` numbers.

**NeRF** (Parsons et al. 2005, "Practical conversion from torsion space to Cartesian space",
Eq. 1-3): with :math:`\hat{bc} = (x_j - x_k)/|x_j - x_k|`, :math:`\hat n = (x_k - x_l)\times\hat{bc}` normalised and
:math:`\hat m = \hat n \times \hat{bc}`,

.. math:: x_p = x_j + r(-\cos\theta\,\hat{bc} + \sin\theta\cos\varphi\,\hat m + \sin\theta\sin\varphi\,\hat n).

**Volume element.** In spherical coordinates about :math:`x_j` with polar axis :math:`x_k - x_j`, the
placement of one atom is :math:`d^3x_p = r_p^2\sin\theta_p\,dr_p\,d\theta_p\,d\varphi_p`; the map is
block-triangular (each atom depends only on earlier ones), so with the six rigid-body degrees of
freedom (translation :math:`t`, ZYZ Euler angles :math:`(\alpha, \beta, \gamma)`) the full Jacobian is

.. math:: d^{3N}x = \sin\beta\; r_1^2\; r_2^2 \sin\theta_2 \prod_{p \ge 3} r_p^2 \sin\theta_p
          \; d^3t\, d\alpha\, d\beta\, d\gamma\, dq

(tested against ``torch.autograd.functional.jacobian``). The rigid-body factor integrates to the
constant :math:`8\pi^2 V`, so the Boltzmann density over internal coordinates is

.. math:: p(q) \propto e^{-U(x(q))}\,|J(q)|,\qquad \log|J(q)| = \sum_{p\ge1} 2\log r_p + \sum_{p\ge2}\log\sin\theta_p .

**Standardization and periodic torsions** (:class:`InternalCoordinateEnergy`). The sampler works
on :math:`z = (q - q_0)/s`, :math:`q_0` the internal coordinates of a minimised structure and
:math:`s` per coordinate from the diagonal of the energy's Hessian there,
:math:`s_i = \min(1/\sqrt{\partial^2 U/\partial q_i^2},\ s^{max}_{type})` (energy and forces only, no
data), so stiff bonds and angles are :math:`O(1)` in :math:`z`. With ``whiten=True`` the map is the
full Laplace whitening :math:`q = q_0 + D V\Lambda_c^{-1/2} z` (:math:`D = \mathrm{diag}(s)`,
:math:`V\Lambda V^T` the Hessian of :math:`\tilde U` in the diagonal units, eigenvalues clamped below
at ``min_eigenvalue``), so the sampler's base law :math:`N(0, I)` is the harmonic approximation of the
target, couplings between bonds, angles and torsions included; either map is linear with a
constant Jacobian, which cancels in self-normalised weights. Torsions live on the circle; the
sampler draws them on :math:`\mathbb R` (:math:`x(q)` is :math:`2\pi`-periodic in each), and the
target on :math:`\mathbb R^{3N-6}` is made normalisable by a known Gaussian factor
:math:`c(\varphi) = \exp(-(\varphi - \varphi_0)^2/(2\sigma_c^2))` per torsion:

.. math:: \tilde U(z) = U(x(q)) - \log|J(q)| + \sum_t \frac{(\varphi_t - \varphi_{0,t})^2}{2\sigma_c^2}.

Wrapping a sample of :math:`e^{-\tilde U}` onto the circle gives density :math:`\propto e^{-U}|J|\prod_t W_t(\varphi_t)`
with the periodised factor :math:`W(\varphi) = \sum_{k\in\mathbb Z} c(\varphi + 2\pi k)`, so the importance
weights of samples of :math:`e^{-\tilde U}` for the Boltzmann distribution carry the extra known term
:math:`-\sum_t\log W_t(\varphi_t)` (:meth:`InternalCoordinateEnergy.log_wrap_weight`). Samples with a bond
:math:`\le 0` or an angle outside :math:`(0, \pi)` lie outside the chart (they are mirror copies of
valid geometries) and get weight zero (:meth:`InternalCoordinateEnergy.in_domain`): conditioning
on the chart, exact.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any, Callable, Sequence

import torch

from .cvs import dihedral_angle
from .energies import Energy

__all__ = ["ZMatrix", "nerf_place", "InternalCoordinateEnergy", "InternalCV", "euler_zyz"]


def nerf_place(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, r: torch.Tensor, theta: torch.Tensor,
               phi: torch.Tensor) -> torch.Tensor:
    r"""The point :math:`d` with :math:`|d - c| = r`, :math:`\angle(d, c, b) = \theta` and
    :math:`\mathrm{dihedral}(d, c, b, a) = \varphi` (NeRF, Parsons et al. 2005, Eq. 1-3; module docstring).

    Shapes: ``a, b, c``: ``(B, 3)``; ``r, theta, phi``: ``(B,)``; returns ``(B, 3)``.
    """
    bc = c - b
    bc = bc / bc.norm(dim=-1, keepdim=True)
    n = torch.cross(b - a, bc, dim=-1)
    n = n / n.norm(dim=-1, keepdim=True)
    m = torch.cross(n, bc, dim=-1)
    st = torch.sin(theta)
    d = (-r * torch.cos(theta))[:, None] * bc + (r * st * torch.cos(phi))[:, None] * m \
        + (r * st * torch.sin(phi))[:, None] * n
    return c + d


def _angle(a, b, c):
    """Angle a-b-c in radians, ``(B,)``."""
    u, v = a - b, c - b
    cos = (u * v).sum(-1) / (u.norm(dim=-1) * v.norm(dim=-1))
    return torch.acos(cos.clamp(-1.0, 1.0))


def euler_zyz(alpha: torch.Tensor, beta: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    r"""Rotation matrices :math:`R_z(\alpha)R_y(\beta)R_z(\gamma)` ``(B, 3, 3)`` (Haar measure
    :math:`\sin\beta\,d\alpha\,d\beta\,d\gamma`)."""
    def rz(t):
        c, s, o, z = torch.cos(t), torch.sin(t), torch.ones_like(t), torch.zeros_like(t)
        return torch.stack([torch.stack([c, -s, z], -1), torch.stack([s, c, z], -1), torch.stack([z, z, o], -1)], -2)

    def ry(t):
        c, s, o, z = torch.cos(t), torch.sin(t), torch.ones_like(t), torch.zeros_like(t)
        return torch.stack([torch.stack([c, z, s], -1), torch.stack([z, o, z], -1), torch.stack([-s, z, c], -1)], -2)

    return rz(alpha) @ ry(beta) @ rz(gamma)


class ZMatrix:
    r"""A Z-matrix built from a molecule's bond graph (module docstring for the rules).

    Args:
        n_atoms: number of atoms.
        bonds: ``(a, b)`` atom pairs; the graph must be connected.
        heavy: optional per-atom booleans (heavy atoms are placed first among siblings).
        root: the first atom (default: the heavy atom with most heavy neighbours, lowest index).

    Attributes:
        order: ``(N,)`` placement order (atom indices).
        rows: for order positions ``p >= 3``, ``(i, j, k, l)`` atom indices: atom ``i`` is placed
            from ``j`` (bond), ``k`` (angle) and ``l`` (torsion ``i-j-k-l``). ``rows[0..2]`` hold the
            first three atoms (``-1`` where undefined).
        sibling: ``(N-3,)`` booleans, True where the torsion's ``l`` is a sibling (stiff, improper-like).
    """

    def __init__(self, n_atoms: int, bonds: Sequence[tuple[int, int]], heavy: Sequence[bool] | None = None,
                 root: int | None = None):
        if not isinstance(n_atoms, int) or n_atoms < 3:
            raise ValueError(f"n_atoms must be an int >= 3 (a Z-matrix needs three atoms for its frame), got {n_atoms!r}")
        self.n_atoms = n_atoms
        nbr: list[list[int]] = [[] for _ in range(n_atoms)]
        for pair in bonds:
            a, b = (int(v) for v in pair)
            if not (0 <= a < n_atoms and 0 <= b < n_atoms) or a == b:
                raise ValueError(f"bonds: pair {pair!r} is not two distinct atoms in [0, {n_atoms})")
            if b not in nbr[a]:
                nbr[a].append(b), nbr[b].append(a)
        heavy = [True] * n_atoms if heavy is None else [bool(h) for h in heavy]
        if len(heavy) != n_atoms:
            raise ValueError(f"heavy must have n_atoms = {n_atoms} entries, got {len(heavy)}")
        if root is None:
            root = max(range(n_atoms), key=lambda a: (heavy[a], sum(heavy[b] for b in nbr[a]), len(nbr[a]), -a))
        if not 0 <= int(root) < n_atoms:
            raise ValueError(f"root must be an atom index in [0, {n_atoms}), got {root!r}")
        root = int(root)
        # subtree sizes of the BFS tree, to place large branches first
        parent = {root: -1}
        bfs, dq = [], deque([root])
        while dq:
            a = dq.popleft()
            bfs.append(a)
            for b in sorted(nbr[a]):
                if b not in parent:
                    parent[b] = a
                    dq.append(b)
        if len(bfs) != n_atoms:
            missing = sorted(set(range(n_atoms)) - set(bfs))
            raise ValueError(f"bonds: the bond graph is not connected (atoms {missing[:10]} not reachable from {root})")
        size = {a: 1 for a in bfs}
        for a in reversed(bfs[1:]):
            size[parent[a]] += size[a]
        children = {a: sorted((b for b in nbr[a] if parent.get(b) == a),
                              key=lambda b: (not heavy[b], -size[b], b)) for a in bfs}
        order, dq = [root], deque([root])
        while dq:
            a = dq.popleft()
            for b in children[a]:
                order.append(b)
                dq.append(b)
        self.order = order
        self.parent = parent
        self.neighbours = nbr
        pos = {a: p for p, a in enumerate(order)}
        rows = [(order[0], -1, -1, -1)]
        rows.append((order[1], parent[order[1]], -1, -1))
        j2 = parent[order[2]]
        k2 = order[1] if j2 == order[0] else order[0]
        rows.append((order[2], j2, k2, -1))
        sibling = []
        for p in range(3, n_atoms):
            i = order[p]
            j = parent[i]
            placed = lambda a: pos[a] < p  # noqa: E731
            k = parent[j] if parent[j] >= 0 else min((b for b in nbr[j] if placed(b) and b != i), key=pos.get)
            sibs = [b for b in children[j] if placed(b) and b != k]
            # the root's children count the root's other placed neighbours as siblings
            if parent[j] < 0:
                sibs = [b for b in nbr[j] if placed(b) and b not in (i, k)]
            if sibs:
                l, sib = min(sibs, key=pos.get), True
            else:
                cands = [b for b in nbr[k] if placed(b) and b not in (i, j)]
                if not cands:  # k is a terminal placed atom: any placed atom off the j-k line
                    cands = [b for b in order[:p] if b not in (i, j, k)]
                l, sib = min(cands, key=lambda b: (not heavy[b], pos[b])), False
            rows.append((i, j, k, l))
            sibling.append(sib)
        self.rows = rows
        self.sibling = torch.tensor(sibling, dtype=torch.bool)
        self._pos = pos

    @classmethod
    def from_topology(cls, topology, root: int | None = None) -> "ZMatrix":
        """From an ``mdtraj.Topology`` (its bonds and elements; hydrogens placed after heavy atoms)."""
        bonds = [(b[0].index, b[1].index) for b in topology.bonds]
        heavy = [a.element is None or a.element.symbol != "H" for a in topology.atoms]
        return cls(topology.n_atoms, bonds, heavy=heavy, root=root)

    # --- sizes and names ----------------------------------------------------------------------
    @property
    def n_dof(self) -> int:
        """:math:`3N - 6`."""
        return 3 * self.n_atoms - 6

    def slices(self) -> tuple[slice, slice, slice]:
        """Where bonds, angles and torsions sit in ``q``."""
        n = self.n_atoms
        return slice(0, n - 1), slice(n - 1, 2 * n - 3), slice(2 * n - 3, 3 * n - 6)

    def torsion_index(self, i: int, j: int, k: int, l: int) -> int | None:
        """Position in ``q`` of the torsion i-j-k-l (either direction), or ``None`` if it is not a coordinate."""
        t = self.slices()[2].start
        for p, row in enumerate(self.rows[3:]):
            if row in ((i, j, k, l), (l, k, j, i)):
                return t + p
        return None

    def dof_names(self) -> list[str]:
        """Human-readable names of the coordinates (``r(i-j)``, ``theta(i-j-k)``, ``phi(i-j-k-l)``)."""
        r = [f"r({i}-{j})" for i, j, _, _ in self.rows[1:]]
        a = [f"theta({i}-{j}-{k})" for i, j, k, _ in self.rows[2:]]
        t = [f"phi({i}-{j}-{k}-{l})" for i, j, k, l in self.rows[3:]]
        return r + a + t

    # --- conversions --------------------------------------------------------------------------
    def _check_x(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or not torch.is_floating_point(x):
            raise TypeError("x must be a floating-point tensor of positions")
        if x.ndim != 3 or tuple(x.shape[1:]) != (self.n_atoms, 3):
            raise ValueError(f"x must have shape (B, {self.n_atoms}, 3), got {tuple(x.shape)}")
        return x

    def _check_q(self, q: torch.Tensor) -> torch.Tensor:
        if not isinstance(q, torch.Tensor) or not torch.is_floating_point(q):
            raise TypeError("q must be a floating-point tensor of internal coordinates")
        if q.ndim != 2 or q.shape[1] != self.n_dof:
            raise ValueError(f"q must have shape (B, {self.n_dof}) (3N - 6 internal coordinates), got {tuple(q.shape)}")
        return q

    def to_internal(self, x: torch.Tensor) -> torch.Tensor:
        """Internal coordinates ``(B, 3N-6)`` of Cartesian positions ``(B, N, 3)`` (torsions in (-pi, pi])."""
        x = self._check_x(x)
        r = torch.stack([(x[:, i] - x[:, j]).norm(dim=-1) for i, j, _, _ in self.rows[1:]], 1)
        th = torch.stack([_angle(x[:, i], x[:, j], x[:, k]) for i, j, k, _ in self.rows[2:]], 1)
        ph = torch.stack([dihedral_angle(x, i, j, k, l) for i, j, k, l in self.rows[3:]], 1) \
            if self.n_atoms > 3 else x.new_zeros(x.shape[0], 0)
        return torch.cat([r, th, ph], 1)

    def to_cartesian(self, q: torch.Tensor) -> torch.Tensor:
        """Positions ``(B, N, 3)`` in the standard frame (atom ``order[0]`` at the origin, ``order[1]``
        on +z, ``order[2]`` in the xz plane with x > 0), differentiable in ``q``."""
        q = self._check_q(q)
        sb, sa, st = self.slices()
        r, th, ph = q[:, sb], q[:, sa], q[:, st]
        B, n = q.shape[0], self.n_atoms
        pts: list[torch.Tensor | None] = [None] * n
        zero = q.new_zeros(B)
        o = self.order
        pts[o[0]] = q.new_zeros(B, 3)
        # atom order[1] sits on +z from its parent (the root)
        pts[o[1]] = torch.stack([zero, zero, r[:, 0]], -1)
        i2, j2, k2, _ = self.rows[2]
        # order[2]: bond r from j2, angle theta with k2, in the xz plane (x > 0)
        axis = (pts[k2] - pts[j2]) / (pts[k2] - pts[j2]).norm(dim=-1, keepdim=True)
        perp = torch.stack([torch.ones_like(zero), zero, zero], -1)
        pts[i2] = pts[j2] + r[:, 1, None] * (torch.cos(th[:, 0])[:, None] * axis + torch.sin(th[:, 0])[:, None] * perp)
        for p in range(3, n):
            i, j, k, l = self.rows[p]
            pts[i] = nerf_place(pts[l], pts[k], pts[j], r[:, p - 1], th[:, p - 2], ph[:, p - 3])
        return torch.stack(pts, 1)

    def log_det_jacobian(self, q: torch.Tensor) -> torch.Tensor:
        r""":math:`\log|J(q)| = \sum_p 2\log r_p + \sum_p \log|\sin\theta_p|` ``(B,)`` (module docstring)."""
        q = self._check_q(q)
        sb, sa, _ = self.slices()
        return 2.0 * q[:, sb].abs().log().sum(1) + torch.sin(q[:, sa]).abs().log().sum(1)

    def in_domain(self, q: torch.Tensor) -> torch.Tensor:
        """``(B,)`` True where every bond is > 0 and every angle in (0, pi) (the chart)."""
        q = self._check_q(q)
        sb, sa, _ = self.slices()
        return (q[:, sb] > 0).all(1) & (q[:, sa] > 0).all(1) & (q[:, sa] < math.pi).all(1)


class InternalCV:
    """CVs of Cartesian positions evaluated on internal coordinates: ``z -> cvs(x(z))`` ``(B, k)``,
    keeping ``names`` and ``periodic`` (the bias on phi/psi is unchanged by the change of chart)."""

    def __init__(self, energy: "InternalCoordinateEnergy", cvs: Callable):
        self.energy, self.cvs = energy, cvs
        self.names = list(getattr(cvs, "names", []))
        self.periodic = list(getattr(cvs, "periodic", []))

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        return self.cvs(self.energy.to_cartesian(z))

    def __repr__(self) -> str:
        return f"InternalCV({self.cvs!r})"


class InternalCoordinateEnergy(Energy):
    r"""The Boltzmann density of a Cartesian :class:`~.energies.Energy` over standardized internal
    coordinates: :math:`\tilde U(z)` of the module docstring, reduced units, event shape ``(3N-6,)``.

    Args:
        energy: the Cartesian energy (``event_shape = (N, 3)``; e.g. :class:`~.energies.OpenMMEnergy`).
        zmatrix: a :class:`ZMatrix` of the molecule.
        reference: ``(N, 3)`` a (minimised) structure: :math:`q_0`; see :meth:`minimise`.
        scales: ``(3N-6,)`` standardization :math:`s` (default :meth:`hessian_scales` at ``reference``).
        max_scale: caps of :math:`s` for (bonds, angles, torsions) in (nm or the energy's length unit, rad, rad).
        torsion_prior_std: :math:`\sigma_c` (rad) of the confining factor on the unwrapped torsions;
            ``None`` for none (:math:`\tilde U = U - \log|J|`, normalisable only on a bounded region
            of the torsions, e.g. a basin cell of :func:`~.anneal.annealed_importance_sampling`).
        fd_step: finite-difference steps for (bonds, angles, torsions) in the Hessian diagonal.
        whiten: use the full Hessian (module docstring; ``2 (3N-6)`` more energy+force calls).
        scale_overrides: ``{coordinate index: scale}`` replacing the Hessian's diagonal scale, e.g.
            1 rad for the torsions that are CVs (phi, psi), so that the base law already reaches
            across their basins (their curvature at the minimum says nothing about the other basins).
            With ``whiten`` such a coordinate is left out of the Hessian (unit variance, no coupling).
        min_eigenvalue: clamp of the Hessian's eigenvalues in the diagonal units (softer
            directions get standard deviation ``min_eigenvalue ** -0.5`` in those units).

    Attributes:
        transform: ``(3N-6, 3N-6)`` the linear map :math:`M`, :math:`q = q_0 + M z`.
        setup_calls: Cartesian energy calls spent on the standardization.

    Every evaluation of :math:`\tilde U` or its gradient costs one call of the Cartesian energy
    (forces through the chain rule, :math:`\nabla_z\tilde U = s\odot J_{x}(q)^T\nabla_x U - \dots`, by autograd).
    """

    def __init__(self, energy: Energy, zmatrix: ZMatrix, reference: Any, *, scales: Any = None,
                 max_scale: Sequence[float] = (0.05, 0.5, 1.0), torsion_prior_std: float = math.pi,
                 fd_step: Sequence[float] = (1e-4, 1e-3, 1e-3), whiten: bool = False,
                 scale_overrides: dict | None = None,
                 min_eigenvalue: float = 0.25, check_finite: bool = True):
        super().__init__(check_finite=check_finite)
        if not hasattr(energy, "energy_and_forces"):
            raise TypeError(f"energy must be an Energy with energy_and_forces, got {type(energy).__name__}")
        if not isinstance(zmatrix, ZMatrix):
            raise TypeError(f"zmatrix must be a ZMatrix, got {type(zmatrix).__name__}")
        if tuple(getattr(energy, "event_shape", ())) != (zmatrix.n_atoms, 3):
            raise ValueError(f"energy.event_shape {tuple(getattr(energy, 'event_shape', ()))} does not match the "
                             f"Z-matrix's ({zmatrix.n_atoms}, 3)")
        if torsion_prior_std is not None and not torsion_prior_std > 0:
            raise ValueError(f"torsion_prior_std must be > 0 (rad) or None, got {torsion_prior_std}")
        if len(max_scale) != 3 or not all(m > 0 for m in max_scale):
            raise ValueError(f"max_scale must be three positive numbers (bonds, angles, torsions), got {max_scale!r}")
        self.cartesian_energy = energy
        self.zmatrix = zmatrix
        self.kT = 1.0
        self.temperature = getattr(energy, "temperature", None)
        self.event_shape = (zmatrix.n_dof,)
        ref = torch.as_tensor(reference, dtype=torch.float64)
        if tuple(ref.shape) != (zmatrix.n_atoms, 3) or not torch.isfinite(ref).all():
            raise ValueError(f"reference must be a finite ({zmatrix.n_atoms}, 3) structure, got {tuple(ref.shape)}")
        self.q0 = zmatrix.to_internal(ref[None])[0]
        calls_before = getattr(energy, "num_calls", 0)
        self.torsion_prior_std = None if torsion_prior_std is None else float(torsion_prior_std)
        self.max_scale = tuple(float(m) for m in max_scale)
        if scales is None:
            scales = self.hessian_scales(energy, zmatrix, self.q0, max_scale=self.max_scale, fd_step=fd_step)
        s = torch.as_tensor(scales, dtype=torch.float64).reshape(-1).clone()
        for i, v in dict(scale_overrides or {}).items():
            if not (isinstance(i, int) and 0 <= i < zmatrix.n_dof) or not v > 0:
                raise ValueError(f"scale_overrides: need {{index in [0, {zmatrix.n_dof}): scale > 0}}, got {i!r}: {v!r}")
            s[i] = float(v)
        if s.shape[0] != zmatrix.n_dof or not (torch.isfinite(s).all() and (s > 0).all()):
            raise ValueError(f"scales must be {zmatrix.n_dof} positive finite numbers, got shape {tuple(s.shape)}")
        self.scales = s
        self.whiten = bool(whiten)
        self.transform = torch.diag(s)
        if self.whiten:
            if not min_eigenvalue > 0:
                raise ValueError(f"min_eigenvalue must be > 0, got {min_eigenvalue}")
            h = self.hessian(1e-3)
            # an overridden coordinate keeps its own scale, uncoupled; the rest is whitened among itself
            rest = torch.tensor([i not in dict(scale_overrides or {}) for i in range(zmatrix.n_dof)])
            idx = rest.nonzero()[:, 0]
            lam, vec = torch.linalg.eigh(h[idx][:, idx])
            w = torch.eye(zmatrix.n_dof, dtype=torch.float64)
            w[idx[:, None], idx[None, :]] = vec * lam.clamp_min(float(min_eigenvalue)).rsqrt()
            self.transform = torch.diag(s) @ w
        self.setup_calls = int(getattr(energy, "num_calls", 0) - calls_before)

    # --- standardization ----------------------------------------------------------------------
    @staticmethod
    def hessian_scales(energy: Energy, zmatrix: ZMatrix, q0: torch.Tensor, *, max_scale=(0.05, 0.5, 1.0),
                       fd_step=(1e-4, 1e-3, 1e-3)) -> torch.Tensor:
        r""":math:`s_i = \min(1/\sqrt{\partial^2 U/\partial q_i^2}, s^{max})` at :math:`q_0`, the diagonal by
        central differences of the exact gradient :math:`\partial U/\partial q` (``2 (3N-6)`` energy+force
        calls); a non-positive curvature gets :math:`s^{max}`."""
        n = zmatrix.n_dof
        sb, sa, st = zmatrix.slices()
        h = torch.empty(n, dtype=torch.float64)
        mx = torch.empty(n, dtype=torch.float64)
        for sl, step, m in zip((sb, sa, st), fd_step, max_scale):
            h[sl], mx[sl] = float(step), float(m)
        eye = torch.eye(n, dtype=torch.float64)
        qs = torch.cat([q0 + h[:, None] * eye, q0 - h[:, None] * eye], 0).requires_grad_(True)
        with torch.enable_grad():
            u = energy(zmatrix.to_cartesian(qs))
            (g,) = torch.autograd.grad(u.sum(), qs)
        idx = torch.arange(n)
        curv = (g[idx, idx] - g[n + idx, idx]) / (2 * h)
        s = torch.where(curv > 0, curv.clamp_min(1e-300).rsqrt(), mx)
        return torch.minimum(s, mx)

    def hessian(self, step: float = 1e-3) -> torch.Tensor:
        r"""``(3N-6, 3N-6)`` Hessian of :math:`\tilde U` at :math:`z = 0` in the current units, by central
        differences of the exact gradient (symmetrised; ``2 (3N-6)`` energy+force calls)."""
        n = self.zmatrix.n_dof
        eye = torch.eye(n, dtype=torch.float64)
        _, f = self._reduced_energy_and_forces(torch.cat([step * eye, -step * eye]))
        h = -(f[:n] - f[n:]) / (2 * step)
        return 0.5 * (h + h.T)

    @staticmethod
    def minimise(energy: Energy, zmatrix: ZMatrix, x: Any, *, max_iter: int = 500,
                 torsion_kick: float = 0.05) -> torch.Tensor:
        """A local minimum of ``energy`` from ``x`` ``(N, 3)`` by L-BFGS over internal coordinates
        (energy and forces only); returns ``(N, 3)`` float64 in the Z-matrix's standard frame.

        Every torsion is first shifted by ``torsion_kick`` rad: a built structure often has a
        rotor (a methyl) exactly eclipsed, a stationary point L-BFGS would not leave."""
        x = torch.as_tensor(x, dtype=torch.float64)
        q = zmatrix.to_internal(x[None]).detach().clone()
        q[:, zmatrix.slices()[2]] += float(torsion_kick)
        q.requires_grad_(True)
        opt = torch.optim.LBFGS([q], lr=1.0, max_iter=int(max_iter), line_search_fn="strong_wolfe",
                                tolerance_grad=1e-6, tolerance_change=1e-12)

        def closure():
            opt.zero_grad()
            u = energy(zmatrix.to_cartesian(q)).sum()
            u.backward()
            return u

        opt.step(closure)
        return zmatrix.to_cartesian(q.detach())[0]

    # --- maps ---------------------------------------------------------------------------------
    def to_internal_q(self, z: torch.Tensor) -> torch.Tensor:
        """:math:`q = q_0 + M z` ``(B, 3N-6)`` (torsions unwrapped)."""
        return self.q0.to(z.dtype) + z @ self.transform.to(z.dtype).T

    @property
    def log_abs_det_transform(self) -> float:
        r""":math:`\log|\det M|`: :math:`dq = |\det M|\,dz`, so normalising constants of :math:`e^{-\tilde U}`
        from charts with different :math:`q_0, M` compare after adding it."""
        return float(torch.linalg.slogdet(self.transform)[1])

    def from_cartesian(self, x: torch.Tensor) -> torch.Tensor:
        """:math:`z` of Cartesian positions (torsions wrapped to the branch nearest :math:`\\varphi_0`)."""
        q = self.zmatrix.to_internal(torch.as_tensor(x, dtype=torch.float64))
        st = self.zmatrix.slices()[2]
        d = q[:, st] - self.q0[st]
        q[:, st] = self.q0[st] + torch.remainder(d + math.pi, 2 * math.pi) - math.pi
        return torch.linalg.solve(self.transform, (q - self.q0).T).T

    def to_cartesian(self, z: torch.Tensor) -> torch.Tensor:
        """Positions ``(B, N, 3)`` of standardized coordinates ``(B, 3N-6)`` (float64)."""
        return self.zmatrix.to_cartesian(self.to_internal_q(torch.as_tensor(z).to(torch.float64)))

    def in_domain(self, z: torch.Tensor) -> torch.Tensor:
        """``(B,)`` True inside the chart (bonds > 0, angles in (0, pi))."""
        return self.zmatrix.in_domain(self.to_internal_q(z.to(torch.float64)))

    def log_wrap_weight(self, z: torch.Tensor) -> torch.Tensor:
        r""":math:`-\sum_t \log W_t(\varphi_t)` ``(B,)``: the known term that turns importance weights for
        :math:`e^{-\tilde U}` on :math:`\mathbb R^{3N-6}` into weights for the Boltzmann distribution on the
        torus of torsions (module docstring), with :math:`W(\varphi) = \sum_k c(\varphi + 2\pi k)`
        summed over :math:`|k| \le K`, :math:`K = \lceil 8\sigma_c/2\pi\rceil + 1` (the next term is below
        :math:`e^{-32}` of the largest)."""
        if self.torsion_prior_std is None:
            raise ValueError("log_wrap_weight: this energy has no torsion confinement (torsion_prior_std=None), "
                             "so there is no periodisation to divide out")
        q = self.to_internal_q(z.to(torch.float64))
        st = self.zmatrix.slices()[2]
        d = torch.remainder(q[:, st] - self.q0[st] + math.pi, 2 * math.pi) - math.pi
        K = math.ceil(8 * self.torsion_prior_std / (2 * math.pi)) + 1
        k = torch.arange(-K, K + 1, dtype=torch.float64) * 2 * math.pi
        logc = -(d[..., None] + k) ** 2 / (2 * self.torsion_prior_std ** 2)
        return -torch.logsumexp(logc, -1).sum(1)

    def cv(self, cvs: Callable) -> InternalCV:
        """``cvs`` of the Cartesian positions as a function of ``z`` (e.g. phi/psi for the bias)."""
        return InternalCV(self, cvs)

    # --- energy -------------------------------------------------------------------------------
    def _reduced_energy(self, z: torch.Tensor) -> torch.Tensor:
        z = z.to(torch.float64)
        q = self.to_internal_q(z)
        st = self.zmatrix.slices()[2]
        u = self.cartesian_energy(self.zmatrix.to_cartesian(q))
        u = u - self.zmatrix.log_det_jacobian(q)
        if self.torsion_prior_std is None:
            return u
        return u + ((q[:, st] - self.q0[st]) ** 2).sum(1) / (2 * self.torsion_prior_std ** 2)

    def _reduced_energy_and_forces(self, z: torch.Tensor):
        with torch.enable_grad():
            zr = z.detach().to(torch.float64).requires_grad_(True)
            u = self._reduced_energy(zr)
            (g,) = torch.autograd.grad(u.sum(), zr)
        return u.detach(), (-g).to(z.dtype)
