r"""State constraints: the linear subspace a state component lives on, and its noise law.

State constraints
-----------------
Some states are not free vectors: an adjacency matrix is symmetric with a zero diagonal, padded
nodes of a batch of graphs of different sizes must stay exactly zero, and a molecule's
coordinates have zero centre of mass. Each of these is a linear subspace :math:`V` of the
component's array space. A :class:`Constraint` says three things about :math:`V`:

* ``project(x)`` — a linear idempotent map onto :math:`V` (applied to model outputs and updates);
* ``noise(like, generator)`` — a draw of the noise law :math:`N(0, C)` on :math:`V`, shaped like
  ``like`` (:math:`C` has range :math:`V`);
* ``inner(u, v)`` and ``dof(x)`` — the per-sample inner product :math:`u^\top C^{+} v` of that noise
  law and :math:`\dim V`, so that densities on :math:`V` (the prior's ``prior_logp``) use the
  right number of degrees of freedom.

**Attaching one.** A constraint belongs to the process of the component it constrains:

.. code-block:: python

    from sciffusion import VP, VE, JointProcess
    from sciffusion.constraints import NodeMask, SymmetricAdjacency, ZeroCenterOfMass

    mask = num_nodes[:, None] > torch.arange(N)           # (B, N) bool, True = real node
    proc = JointProcess((VP().constrain(NodeMask(mask)),   # node features X (B, N, F)
                         VE().constrain(SymmetricAdjacency(mask))))  # adjacency A (B, N, N)
    # or, from an unconstrained joint process, per batch:
    proc = base.constrain((NodeMask(mask), SymmetricAdjacency(mask)))
    particles = VP().constrain(ZeroCenterOfMass(mask))     # positions (B, n, 3), masked or not

``constrain`` returns a *copy* of the process (the original stays unconstrained), so a
constraint holding per-batch tensors (a node mask) is cheap to rebuild for every batch: make
the constrained process, wrap the model with it (``Denoiser(model, proc, ...)``) and call any
sampler, ``dsm_loss`` or ``perturb``. A mask's batch size must equal the state's.

**What honours it.** With a constrained process (tensor state, or any component of a
:class:`~sciffusion.processes.JointProcess`):

* ``Process.noise_like``, ``perturb``, ``prior_sample`` draw the constraint's noise law; ``perturb``
  projects ``x0`` first; ``prior_logp`` is the density of :math:`N(0, s^2 C)` on :math:`V` with
  ``dof`` degrees of freedom; ``Process.project`` applies the projection.
* :class:`~sciffusion.denoisers.Denoiser` projects the model's raw output before converting it,
  so every x0 / eps / score / velocity it returns lies in :math:`V` (a network that is not exactly
  symmetric or leaks into padded nodes is corrected at the boundary, and ``dsm_loss`` trains the
  projected output).
* every sampler projects its starting state, draws its noise through ``noise_like`` and projects
  the state after every step (exact no-op on :math:`V` for symmetry and masks; it removes the
  round-off drift of the centre of mass).
* :func:`~sciffusion.likelihood.log_likelihood` (tensor states) integrates the divergence on the
  subspace and uses the constrained prior (density in the noise law's coordinates).
* an unconstrained process (``constraint is None``, the default) takes none of these branches:
  its results are bit-identical to those of a process that never heard of constraints (tested).

**The noise law (an explicit choice).** Every update of every sampler is linear in the state, the
predictions and the noise, so the whole diffusion lives on :math:`V` when all three do, and the
formulas stay valid for any noise covariance :math:`C` on :math:`V`: with
:math:`x_t = \alpha_t x_0 + \sigma_t\varepsilon`, :math:`\varepsilon\sim N(0, C)`, the eps-prediction gives
the *preconditioned* score :math:`-\mathbb E[\varepsilon\mid x_t]/\sigma_t = C\nabla\log p_t`, which is
exactly the drift the reverse SDE and Langevin dynamics with noise :math:`N(0, C)` need. What
matters is that perturbation, loss, samplers and prior use the same :math:`C`; here they all use
the constraint's ``noise``:

* :class:`SymmetricAdjacency`: GDSS's law (Jo et al. 2022, ``gen_noise(sym=True)``): the strict
  upper triangle is iid :math:`N(0, 1)` and mirrored, the diagonal is 0. Every edge variable is
  then a standard one-dimensional diffusion (off-diagonal variance 1, not the 1/2 of the
  orthogonal projection of iid noise), so a VP prior has unit-variance edges as GDSS's does.
  In edge coordinates :math:`u_{ij}, i<j`, :math:`C` is the identity: ``inner`` is
  :math:`\sum_{i<j}u_{ij}v_{ij} = \tfrac12\sum_{ij}u_{ij}v_{ij}`, ``dof`` :math:`= n(n-1)/2` per edge
  channel, with :math:`n` the real nodes of the sample.
* :class:`NodeMask`: iid :math:`N(0,1)` on real nodes, 0 on padded ones (``dof`` = real nodes x
  features).
* :class:`ZeroCenterOfMass`: the orthogonal projection of iid noise (real nodes only), i.e. the
  isotropic Gaussian on the subspace (Hoogeboom et al. 2022, EDM for molecules), ``inner`` the
  plain dot product, ``dof`` :math:`= (n-1)d`.

A new constraint subclasses :class:`Constraint` and implements the four methods; nothing else in
the core changes. Constraints compare by value (type and ``node_mask``), which makes a
constrained process compare and hash by value too; a subclass with other parameters extends
``_key``. ``sciffusion.likelihood.log_likelihood`` takes constrained tensor states: it takes the
divergence on the subspace (which needs ``project`` to be the orthogonal projection, as it is for
the three built-in constraints) and returns the density in the noise law's coordinates.
"""

from __future__ import annotations

import math
from typing import Any

import torch

__all__ = ["Constraint", "SymmetricAdjacency", "NodeMask", "ZeroCenterOfMass"]


def _check_mask(mask: Any, name: str) -> torch.Tensor | None:
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"{name}: node_mask must be a (B, N) bool tensor, got {type(mask).__name__}")
    if mask.ndim != 2:
        raise ValueError(f"{name}: node_mask must have shape (B, N), got {tuple(mask.shape)}")
    if mask.dtype != torch.bool:
        if mask.is_floating_point() and not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError(f"{name}: node_mask must be boolean (or 0/1), got other values")
        mask = mask != 0
    return mask


class Constraint:
    """A linear subspace :math:`V` of one state component, with the noise law used on it.

    Subclasses implement :meth:`project`, :meth:`noise`, :meth:`inner` and :meth:`dof` (module
    docstring). All act per sample: the leading dimension of every tensor is the batch.
    """

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """A linear idempotent map onto :math:`V` (identity on :math:`V`)."""
        raise NotImplementedError

    def noise(self, like: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """A draw of :math:`N(0, C)` on :math:`V`, with ``like``'s shape, dtype and device."""
        raise NotImplementedError

    def inner(self, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Per-sample :math:`u^\\top C^+ v` for ``u, v`` in :math:`V`, shape ``(B,)``."""
        raise NotImplementedError

    def dof(self, x: torch.Tensor) -> torch.Tensor:
        """Per-sample :math:`\\dim V` for states shaped like ``x``, float64 ``(B,)``."""
        raise NotImplementedError

    # --- comparison by value (a constraint is part of a process's identity) ---
    def _key(self) -> tuple:
        mask = getattr(self, "node_mask", None)
        m = None if mask is None else (tuple(mask.shape), mask.cpu().numpy().tobytes())
        return (type(self).__qualname__, m)

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self._key() == other._key()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        mask = getattr(self, "node_mask", None)
        inside = "" if mask is None else f"node_mask={tuple(mask.shape)}"
        return f"{type(self).__name__}({inside})"

    # --- helpers for masked subclasses ---
    def _mask_for(self, x: torch.Tensor, node_dim: int) -> torch.Tensor | None:
        """The node mask as x's dtype, checked against x's batch and node dimensions."""
        mask = getattr(self, "node_mask", None)
        if mask is None:
            return None
        B, N = mask.shape
        if x.ndim < 2 or x.shape[0] != B or x.shape[node_dim] != N:
            raise ValueError(f"{type(self).__name__}: node_mask has shape {(B, N)}, which does not fit a "
                             f"state of shape {tuple(x.shape)} (batch first, {N} nodes on dim {node_dim})")
        return mask.to(device=x.device, dtype=x.dtype)

    def _num_nodes(self, x: torch.Tensor, node_dim: int) -> torch.Tensor:
        mask = getattr(self, "node_mask", None)
        if mask is None:
            return torch.full((x.shape[0],), float(x.shape[node_dim]), dtype=torch.float64)
        self._mask_for(x, node_dim)
        return mask.sum(1).to(torch.float64).cpu()


class SymmetricAdjacency(Constraint):
    """Symmetric matrices with zero diagonal over the last two dimensions, ``(B, ..., N, N)``
    (extra dimensions between are edge channels); with ``node_mask`` also zero rows and columns
    of padded nodes.

    projection :math:`P(A) = M\\odot\\tfrac12(A + A^\\top)`, :math:`M_{ij} = m_i m_j [i\\ne j]`; noise:
    GDSS's mirrored upper triangle of iid :math:`N(0,1)` (module docstring), masked.

    Args:
        node_mask: optional ``(B, N)`` bool, True for real nodes.
    """

    def __init__(self, node_mask: torch.Tensor | None = None):
        self.node_mask = _check_mask(node_mask, "SymmetricAdjacency")

    def _edge_mask(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim < 3 or x.shape[-1] != x.shape[-2]:
            raise ValueError(f"SymmetricAdjacency needs states of shape (B, ..., N, N), got {tuple(x.shape)}")
        N = x.shape[-1]
        off = 1.0 - torch.eye(N, dtype=x.dtype, device=x.device)
        m = self._mask_for(x, x.ndim - 1)
        if m is None:
            return off
        shape = (x.shape[0],) + (1,) * (x.ndim - 3)
        return off * m.reshape(shape + (N, 1)) * m.reshape(shape + (1, N))

    def project(self, x):
        return (x + x.transpose(-1, -2)) * 0.5 * self._edge_mask(x)

    def noise(self, like, generator=None):
        z = torch.randn(like.shape, generator=generator, dtype=like.dtype, device=like.device)
        u = z.triu(1)
        return (u + u.transpose(-1, -2)) * self._edge_mask(like)

    def inner(self, u, v):
        return 0.5 * (u * v).flatten(1).sum(1)

    def dof(self, x):
        self._edge_mask(x)
        n = self._num_nodes(x, x.ndim - 1)
        return n * (n - 1) / 2 * math.prod(x.shape[1:-2])


class NodeMask(Constraint):
    """Node-wise states ``(B, N, ...)`` whose padded nodes are exactly zero.

    projection :math:`P(x)_i = m_i x_i`; noise iid :math:`N(0,1)` on real nodes.

    Args:
        node_mask: ``(B, N)`` bool, True for real nodes.
    """

    def __init__(self, node_mask: torch.Tensor):
        if node_mask is None:
            raise TypeError("NodeMask: node_mask is required (a (B, N) bool tensor)")
        self.node_mask = _check_mask(node_mask, "NodeMask")

    def _m(self, x):
        m = self._mask_for(x, 1)
        return m.reshape(m.shape + (1,) * (x.ndim - 2))

    def project(self, x):
        return x * self._m(x)

    def noise(self, like, generator=None):
        z = torch.randn(like.shape, generator=generator, dtype=like.dtype, device=like.device)
        return z * self._m(like)

    def inner(self, u, v):
        return (u * v).flatten(1).sum(1)

    def dof(self, x):
        return self._num_nodes(x, 1) * math.prod(x.shape[2:])


class ZeroCenterOfMass(Constraint):
    """Particle positions ``(B, n, d)`` with zero centre of mass over the real particles (and,
    with ``node_mask``, zero padded particles).

    projection :math:`P(x)_i = m_i\\,(x_i - \\bar x)`, :math:`\\bar x = \\sum_j m_j x_j / \\sum_j m_j` (the
    orthogonal projection); noise :math:`P z`, :math:`z` iid :math:`N(0,1)`: the isotropic Gaussian on
    the subspace, ``dof`` :math:`= (n-1)d`.

    Args:
        node_mask: optional ``(B, n)`` bool, True for real particles (at least one per sample).
    """

    def __init__(self, node_mask: torch.Tensor | None = None):
        self.node_mask = _check_mask(node_mask, "ZeroCenterOfMass")
        if self.node_mask is not None and not bool(self.node_mask.any(1).all()):
            raise ValueError("ZeroCenterOfMass: every sample needs at least one real particle in node_mask")

    def project(self, x):
        if x.ndim != 3:
            raise ValueError(f"ZeroCenterOfMass needs states of shape (B, n, d), got {tuple(x.shape)}")
        m = self._mask_for(x, 1)
        if m is None:
            return x - x.mean(1, keepdim=True)
        m = m[:, :, None]
        com = (x * m).sum(1, keepdim=True) / m.sum(1, keepdim=True)
        return (x - com) * m

    def noise(self, like, generator=None):
        return self.project(torch.randn(like.shape, generator=generator, dtype=like.dtype, device=like.device))

    def inner(self, u, v):
        return (u * v).flatten(1).sum(1)

    def dof(self, x):
        if x.ndim != 3:
            raise ValueError(f"ZeroCenterOfMass needs states of shape (B, n, d), got {tuple(x.shape)}")
        return (self._num_nodes(x, 1) - 1) * x.shape[2]
