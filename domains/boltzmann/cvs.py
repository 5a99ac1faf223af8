r"""Collective variables as differentiable torch functions of Cartesian coordinates.

A CV maps configurations ``x`` of shape ``(B, n_atoms, 3)`` to values ``(B,)``; a
:class:`CVSet` stacks several into ``(B, k)`` and carries their names and periodicity, which the
bias (:class:`~sciffusion.domains.boltzmann.bias.WellTemperedBias`) and the free-energy tools
read. Everything is written in torch, so :math:`\nabla_x V(s(x))` comes from autograd.

Dihedral convention: the IUPAC/IUPAP one used by mdtraj (``compute_dihedrals``) and OpenMM
(``PeriodicTorsionForce``): for atoms i-j-k-l with :math:`b_1 = x_j - x_i`, :math:`b_2 = x_k -
x_j`, :math:`b_3 = x_l - x_k`,

.. math:: \phi = \operatorname{atan2}\big(\lVert b_2\rVert\, b_1\cdot(b_2\times b_3),\;
          (b_1\times b_2)\cdot(b_2\times b_3)\big) \in (-\pi, \pi],

(Blondel & Karplus 1996), positive for a clockwise rotation of the far bond seen along j->k.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch


def _check_positions(x: torch.Tensor, need: int, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        x = torch.as_tensor(x, dtype=torch.float64)
    if x.ndim != 3 or x.shape[-1] != 3:
        raise ValueError(f"{name}: positions must have shape (B, n_atoms, 3), got {tuple(x.shape)}")
    if x.shape[1] <= need:
        raise ValueError(f"{name}: atom index {need} out of range for {x.shape[1]} atoms")
    return x


class CV:
    r"""Any callable ``fn(x) -> (B,)`` as a named collective variable.

    Args:
        fn: maps positions ``(B, n_atoms, 3)`` (or any batched state) to ``(B,)``.
        name: label used in CV sets, plots and JSON.
        periodic: whether the value is an angle with period ``2 pi`` on ``(-pi, pi]``.
    """

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], name: str = "cv",
                 periodic: bool = False):
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {type(fn).__name__}")
        self.fn, self.name, self.periodic = fn, str(name), bool(periodic)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        s = self.fn(x)
        if not isinstance(s, torch.Tensor):
            s = torch.as_tensor(s)
        if s.ndim != 1 or (hasattr(x, "shape") and s.shape[0] != x.shape[0]):
            raise ValueError(f"CV {self.name!r} must return shape (B,), got {tuple(s.shape)}")
        bad = torch.isnan(s.detach())
        if bad.any():
            idx = int(torch.nonzero(bad)[0, 0])
            raise ValueError(f"CV {self.name!r} returned NaN at sample {idx} (degenerate geometry, "
                             "e.g. coincident atoms, or a non-finite configuration)")
        return s

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, periodic={self.periodic})"


def dihedral_angle(x: torch.Tensor, i: int, j: int, k: int, l: int) -> torch.Tensor:
    r"""The dihedral of atoms i-j-k-l in radians on ``(-pi, pi]`` (mdtraj's sign), ``(B,)``."""
    b1 = x[:, j] - x[:, i]
    b2 = x[:, k] - x[:, j]
    b3 = x[:, l] - x[:, k]
    n1 = torch.cross(b1, b2, dim=-1)
    n2 = torch.cross(b2, b3, dim=-1)
    y = b2.norm(dim=-1) * (b1 * n2).sum(-1)
    xx = (n1 * n2).sum(-1)
    return torch.atan2(y, xx)


class Dihedral(CV):
    """The dihedral angle of atoms (i, j, k, l), periodic, radians in ``(-pi, pi]``."""

    def __init__(self, i: int, j: int, k: int, l: int, name: str | None = None):
        self.atoms = tuple(int(a) for a in (i, j, k, l))
        if len(set(self.atoms)) != 4 or min(self.atoms) < 0:
            raise ValueError(f"a dihedral needs four distinct non-negative atom indices, got {self.atoms}")
        super().__init__(self._fn, name or f"dihedral{self.atoms}", periodic=True)

    def _fn(self, x):
        x = _check_positions(x, max(self.atoms), self.name)
        return dihedral_angle(x, *self.atoms)


class Distance(CV):
    """The distance between atoms i and j (in the coordinates' unit, nm for OpenMM)."""

    def __init__(self, i: int, j: int, name: str | None = None):
        self.atoms = (int(i), int(j))
        if self.atoms[0] == self.atoms[1] or min(self.atoms) < 0:
            raise ValueError(f"a distance needs two distinct non-negative atom indices, got {self.atoms}")
        super().__init__(self._fn, name or f"distance{self.atoms}", periodic=False)

    def _fn(self, x):
        x = _check_positions(x, max(self.atoms), self.name)
        return (x[:, self.atoms[0]] - x[:, self.atoms[1]]).norm(dim=-1)


class Coordination(CV):
    r"""The coordination number of group A with group B (PLUMED's ``COORDINATION``):

    .. math:: C = \sum_{a\in A}\sum_{b\in B,\,b\ne a} \frac{1 - (r_{ab}/r_0)^n}{1 - (r_{ab}/r_0)^m}

    a smooth count of pairs closer than :math:`r_0` (``n = 6``, ``m = 12`` by default). At
    :math:`r = r_0` the removable singularity is replaced by its limit :math:`n/m`.
    """

    def __init__(self, group_a: Sequence[int], group_b: Sequence[int], r0: float, n: int = 6,
                 m: int = 12, name: str = "coordination"):
        self.group_a = torch.as_tensor(list(group_a), dtype=torch.long)
        self.group_b = torch.as_tensor(list(group_b), dtype=torch.long)
        if self.group_a.numel() == 0 or self.group_b.numel() == 0:
            raise ValueError("group_a and group_b must be non-empty")
        if float(r0) <= 0:
            raise ValueError(f"r0 must be > 0, got {r0}")
        if not (int(m) > int(n) > 0):
            raise ValueError(f"need m > n > 0, got n={n}, m={m}")
        self.r0, self.n, self.m = float(r0), int(n), int(m)
        super().__init__(self._fn, name, periodic=False)

    def _fn(self, x):
        need = int(max(self.group_a.max(), self.group_b.max()))
        x = _check_positions(x, need, self.name)
        d = (x[:, self.group_a, None, :] - x[:, None, self.group_b, :]).norm(dim=-1) / self.r0
        same = self.group_a[:, None] == self.group_b[None, :]
        near = (d - 1).abs() < 1e-6
        d_safe = torch.where(near, torch.full_like(d, 0.5), d)
        sw = (1 - d_safe ** self.n) / (1 - d_safe ** self.m)
        sw = torch.where(near, torch.full_like(d, self.n / self.m), sw)
        sw = torch.where(same[None], torch.zeros_like(sw), sw)
        return sw.sum((-1, -2))


class CVSet:
    """Several CVs evaluated together: ``cvs(x) -> (B, k)``, with ``.names`` and ``.periodic``."""

    def __init__(self, cvs: Sequence[CV]):
        cvs = list(cvs)
        if not cvs:
            raise ValueError("a CVSet needs at least one CV")
        for c in cvs:
            if not isinstance(c, CV):
                raise TypeError(f"every element must be a CV, got {type(c).__name__}")
        names = [c.name for c in cvs]
        if len(set(names)) != len(names):
            raise ValueError(f"CV names must be unique, got {names}")
        self.cvs = cvs

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.cvs]

    @property
    def periodic(self) -> list[bool]:
        return [c.periodic for c in self.cvs]

    def __len__(self) -> int:
        return len(self.cvs)

    def __getitem__(self, key):
        if isinstance(key, str):
            return self.cvs[self.names.index(key)]
        return self.cvs[key]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([c(x) for c in self.cvs], -1)

    def __repr__(self) -> str:
        return f"CVSet({self.names})"


#: 0-based atom indices of alanine dipeptide in openmmtools' topology (ACE-ALA-NME; verified
#: against the atom names C(ACE)=4, N=6, CA=8, C=14, N(NME)=16 and against mdtraj).
ALANINE_PHI = (4, 6, 8, 14)
ALANINE_PSI = (6, 8, 14, 16)


def phi_psi_alanine() -> CVSet:
    """The Ramachandran CVs of alanine dipeptide: phi = atoms (4, 6, 8, 14), psi = (6, 8, 14, 16)."""
    return CVSet([Dihedral(*ALANINE_PHI, name="phi"), Dihedral(*ALANINE_PSI, name="psi")])
