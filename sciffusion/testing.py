"""Exact oracles for tests and benchmarks.

* :class:`GaussianMixture` — data :math:`\\sum_k w_k N(m_k, C_k)`. Under any process the noised
  marginal is the mixture :math:`\\sum_k w_k N(\\alpha_t m_k, \\alpha_t^2 C_k + \\sigma_t^2 I)`, so the
  score, :math:`\\mathbb E[x_0\\mid x_t]`, :math:`\\mathbb E[\\varepsilon\\mid x_t]` and the log-density
  are closed form. :meth:`GaussianMixture.denoiser` wraps them as a model of any parameterization.
* :func:`gaussian_flow_map` — the exact probability-flow map of Gaussian data between two times.
* :func:`gaussian_w2` — closed-form 2-Wasserstein distance between Gaussians.
* :func:`w1_exact` (assignment, equal sample sizes) and :func:`sliced_w1` for samples.
* :class:`SubspaceGaussian` — Gaussian data on a constrained subspace (symmetric adjacency,
  masked nodes, zero centre of mass: :func:`symmetric_basis`, :func:`mask_basis`,
  :func:`com_basis`), with the exact eps under the constraint's noise law and the closed-form
  noised covariance.

Everything is computed in float64.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from .denoisers import Denoiser
from .utils import as_time


def _as64(x) -> torch.Tensor:
    return torch.as_tensor(x, dtype=torch.float64)


class GaussianMixture:
    """A Gaussian mixture with closed-form noised quantities.

    Args:
        means: ``(K, d)``.
        covs: ``(K, d, d)`` covariances, ``(K, d)`` diagonals, or ``(K,)`` isotropic variances.
        weights: ``(K,)`` mixture weights (normalised here); uniform if omitted.
    """

    def __init__(self, means, covs, weights=None):
        self.means = _as64(means)
        if self.means.ndim != 2:
            raise ValueError(f"means must have shape (K, d), got {tuple(self.means.shape)}")
        K, d = self.means.shape
        covs = _as64(covs)
        if covs.ndim == 1:
            covs = covs[:, None, None] * torch.eye(d, dtype=torch.float64)
        elif covs.ndim == 2:
            covs = torch.diag_embed(covs)
        if covs.shape != (K, d, d):
            raise ValueError(f"covs must be (K, d, d), (K, d) or (K,), got {tuple(covs.shape)}")
        self.covs = covs
        w = torch.full((K,), 1.0 / K, dtype=torch.float64) if weights is None else _as64(weights)
        if w.shape != (K,) or (w < 0).any() or w.sum() <= 0:
            raise ValueError("weights must be K non-negative numbers with a positive sum")
        self.weights = w / w.sum()
        self.dim = d

    @classmethod
    def gaussian(cls, mean, cov) -> "GaussianMixture":
        """A single Gaussian ``N(mean, cov)``."""
        mean = _as64(mean)
        return cls(mean[None], _as64(cov)[None])

    # --- data ---
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` exact samples, float64 ``(n, d)``."""
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        L = torch.linalg.cholesky(self.covs + 1e-300 * torch.eye(self.dim, dtype=torch.float64))
        return self.means[k] + torch.einsum("nij,nj->ni", L[k], z)

    @property
    def mean(self) -> torch.Tensor:
        return (self.weights[:, None] * self.means).sum(0)

    @property
    def cov(self) -> torch.Tensor:
        m = self.mean
        dm = self.means - m
        return (self.weights[:, None, None] * (self.covs + dm[:, :, None] * dm[:, None, :])).sum(0)

    # --- noised marginal under a process ---
    def _noised(self, process, t):
        a, s = float(process.alpha(t)), float(process.sigma(t))
        eye = torch.eye(self.dim, dtype=torch.float64)
        return a, s, a * self.means, a * a * self.covs + s * s * eye

    def marginal(self, process, t) -> "GaussianMixture":
        """The exact noised marginal :math:`p_t` as a mixture."""
        _, _, m, S = self._noised(process, t)
        return GaussianMixture(m, S, self.weights)

    def _resp(self, x, m, S):
        """Log responsibilities-style pieces: returns (log w_k N(x; m_k, S_k), S^-1 (x - m_k))."""
        L = torch.linalg.cholesky(S)  # (K, d, d)
        diff = x[:, None, :] - m[None]  # (n, K, d)
        sol = torch.cholesky_solve(diff.permute(1, 2, 0), L)  # (K, d, n)
        sol = sol.permute(2, 0, 1)  # (n, K, d)
        maha = (diff * sol).sum(-1)
        logdet = 2 * torch.log(torch.diagonal(L, dim1=-2, dim2=-1)).sum(-1)
        logn = -0.5 * (maha + logdet + self.dim * math.log(2 * math.pi))
        return torch.log(self.weights) + logn, sol

    def log_prob(self, x, process=None, t=None) -> torch.Tensor:
        """Exact :math:`\\log p_t(x)` (data density if no process is given), shape ``(n,)``."""
        x = _as64(x)
        if process is None:
            lw, _ = self._resp(x, self.means, self.covs)
        else:
            _, _, m, S = self._noised(process, t)
            lw, _ = self._resp(x, m, S)
        return torch.logsumexp(lw, dim=1)

    def score(self, x, process, t) -> torch.Tensor:
        """:math:`\\nabla\\log p_t(x) = -\\sum_k r_k(x)\\,\\Sigma_k^{-1}(x - \\alpha_t m_k)`."""
        x = _as64(x)
        _, _, m, S = self._noised(process, t)
        lw, sol = self._resp(x, m, S)
        r = torch.softmax(lw, dim=1)
        return -(r[..., None] * sol).sum(1)

    def x0(self, x, process, t) -> torch.Tensor:
        """:math:`\\mathbb E[x_0\\mid x_t] = \\sum_k r_k\\,(m_k + \\alpha_t C_k\\Sigma_k^{-1}(x - \\alpha_t m_k))`."""
        x = _as64(x)
        a, _, m, S = self._noised(process, t)
        lw, sol = self._resp(x, m, S)
        r = torch.softmax(lw, dim=1)
        post = self.means[None] + a * torch.einsum("kij,nkj->nki", self.covs, sol)
        return (r[..., None] * post).sum(1)

    def eps(self, x, process, t) -> torch.Tensor:
        """:math:`\\mathbb E[\\varepsilon\\mid x_t] = -\\sigma_t\\nabla\\log p_t(x)`."""
        return -float(process.sigma(t)) * self.score(x, process, t)

    def model(self, process, parameterization: str = "eps"):
        """The exact model ``(x, t) -> output`` in the given parameterization.

        ``t`` is a scalar or a ``(B,)`` tensor; rows with different times (as in a DSM loss) are
        answered time by time, so a batch sharing one time (a sampler) costs one evaluation.
        """

        def f(x, t0):
            x64 = _as64(x)
            a, s = float(process.alpha(t0)), float(process.sigma(t0))
            da, ds = float(process.d_alpha(t0)), float(process.d_sigma(t0))
            if parameterization == "score":
                out = self.score(x64, process, t0)
            elif parameterization == "eps":
                out = self.eps(x64, process, t0)
            else:
                x0, eps = self.x0(x64, process, t0), self.eps(x64, process, t0)
                out = {"x0": x0, "v": a * eps - s * x0, "velocity": da * x0 + ds * eps}[parameterization]
            return out.to(x.dtype)

        return _time_by_time(f)

    def denoiser(self, process, parameterization: str = "eps") -> Denoiser:
        """A :class:`~sciffusion.denoisers.Denoiser` around the exact model."""
        return Denoiser(self.model(process, parameterization), process, parameterization)


def _time_by_time(fn):
    """``fn(x, t0)`` for one scalar time, as a model ``(x, t)``: a ``(B,)`` time tensor whose
    rows differ (a DSM loss) is answered time by time; a shared time costs one call."""

    def f(x, t):
        t = as_time(t).reshape(-1)
        if t.numel() > 1 and not bool((t == t[0]).all()):
            out = torch.empty_like(x)
            for tu in torch.unique(t):
                rows = t == tu
                out[rows] = fn(x[rows], tu)
            return out
        return fn(x, t[0])

    return f


def gaussian_flow_map(x, mean, cov, process, t_from, t_to) -> torch.Tensor:
    """Exact probability-flow map for data :math:`N(m, C)` from time ``t_from`` to ``t_to``.

    In the eigenbasis :math:`C = U\\,\\mathrm{diag}(c)\\,U^\\top` the PF-ODE is linear and
    scales each deviation from the mean by the ratio of marginal standard deviations:

    .. math:: x_{t'} = \\alpha_{t'} m + U\\,\\mathrm{diag}\\Big(\\sqrt{\\tfrac{\\alpha_{t'}^2 c + \\sigma_{t'}^2}
              {\\alpha_t^2 c + \\sigma_t^2}}\\Big) U^\\top (x_t - \\alpha_t m)
    """
    x, mean, cov = _as64(x), _as64(mean), _as64(cov)
    c, U = torch.linalg.eigh(cov)
    a0, s0 = float(process.alpha(t_from)), float(process.sigma(t_from))
    a1, s1 = float(process.alpha(t_to)), float(process.sigma(t_to))
    ratio = torch.sqrt((a1 * a1 * c + s1 * s1) / (a0 * a0 * c + s0 * s0))
    z = (x - a0 * mean) @ U
    return a1 * mean + (z * ratio) @ U.T


def gaussian_w2(m1, C1, m2, C2) -> float:
    """Closed-form :math:`W_2` between :math:`N(m_1, C_1)` and :math:`N(m_2, C_2)`.

    .. math:: W_2^2 = \\|m_1-m_2\\|^2 + \\mathrm{tr}\\big(C_1 + C_2 - 2(C_2^{1/2} C_1 C_2^{1/2})^{1/2}\\big)
    """
    m1, C1, m2, C2 = (_as64(v) for v in (m1, C1, m2, C2))

    def sqrtm(A):
        w, V = torch.linalg.eigh((A + A.T) / 2)
        return (V * w.clamp_min(0).sqrt()) @ V.T

    r2 = sqrtm(C2)
    cross = sqrtm(r2 @ C1 @ r2)
    w2 = (m1 - m2).pow(2).sum() + torch.trace(C1 + C2 - 2 * cross)
    return float(w2.clamp_min(0).sqrt())


def empirical_w2_gaussian(samples, mean, cov) -> float:
    """:math:`W_2` between the Gaussian fitted to ``samples`` (mean, covariance) and ``N(mean, cov)``."""
    x = _as64(samples)
    return gaussian_w2(x.mean(0), torch.atleast_2d(torch.cov(x.T)), mean, cov)


def w1_exact(x, y) -> float:
    """Exact :math:`W_1` between two empirical measures with the same number of points (assignment)."""
    from scipy.optimize import linear_sum_assignment

    x, y = np.asarray(_as64(x)), np.asarray(_as64(y))
    if x.shape != y.shape:
        raise ValueError(f"w1_exact needs samples of equal shape, got {x.shape} and {y.shape}")
    if x.ndim == 1:
        return float(np.abs(np.sort(x) - np.sort(y)).mean())
    cost = np.sqrt(((x[:, None, :] - y[None, :, :]) ** 2).sum(-1))
    r, c = linear_sum_assignment(cost)
    return float(cost[r, c].mean())


def w1_1d(x, y) -> float:
    """Exact :math:`W_1` between two 1-D empirical measures of any sizes (quantile functions)."""
    x, y = np.sort(np.asarray(_as64(x)).ravel()), np.sort(np.asarray(_as64(y)).ravel())
    grid = np.union1d(np.linspace(0, 1, len(x) + 1), np.linspace(0, 1, len(y) + 1))
    mid = (grid[1:] + grid[:-1]) / 2
    qx = x[np.minimum((mid * len(x)).astype(int), len(x) - 1)]
    qy = y[np.minimum((mid * len(y)).astype(int), len(y) - 1)]
    return float((np.abs(qx - qy) * np.diff(grid)).sum())


def sliced_w1(x, y, num_projections: int = 256, seed: int = 0) -> float:
    """Sliced :math:`W_1`: the mean over random unit directions of the 1-D :math:`W_1` of projections."""
    x, y = _as64(x), _as64(y)
    if x.shape[1:] != y.shape[1:]:
        raise ValueError(f"sliced_w1: dimensions differ, {tuple(x.shape)} vs {tuple(y.shape)}")
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(num_projections, x.shape[1], generator=g, dtype=torch.float64)
    dirs = dirs / dirs.norm(dim=1, keepdim=True)
    px, py = (x @ dirs.T).numpy(), (y @ dirs.T).numpy()
    return float(np.mean([w1_1d(px[:, i], py[:, i]) for i in range(num_projections)]))


def standard_mixture_2d() -> GaussianMixture:
    """The tour's 2-D mixture: 8 Gaussians on a circle of radius 2, std 0.25, unequal weights."""
    ang = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
    means = 2.0 * torch.stack([ang.cos(), ang.sin()], 1)
    w = torch.tensor([1, 2, 1, 2, 1, 2, 1, 2], dtype=torch.float64)
    return GaussianMixture(means, torch.full((8,), 0.25 ** 2), w)


def anisotropic_gaussian(d: int = 8, lo: float = 0.03, hi: float = 3.0, seed: int = 0):
    """``(mean, cov)`` of a d-dim Gaussian with variances log-spaced in [lo, hi] and a random rotation."""
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    var = torch.logspace(math.log10(lo), math.log10(hi), d, dtype=torch.float64)
    mean = 0.5 * torch.randn(d, generator=g, dtype=torch.float64)
    return mean, (Q * var) @ Q.T


class SubspaceGaussian:
    r"""Gaussian data on a subspace, in the coordinates of the constraint's noise law.

    With a basis :math:`B` (``(D, k)``, full column rank) such that the constraint's noise is
    :math:`B z`, :math:`z\sim N(0, I_k)` (:func:`symmetric_basis`, :func:`mask_basis`,
    :func:`com_basis`), data :math:`x_0 = B u`, :math:`u\sim N(m, S)` give
    :math:`x_t = B(\alpha_t u + \sigma_t z)`: the coordinates :math:`u_t = B^+ x_t` diffuse as a
    standard k-dimensional Gaussian, so :math:`\mathbb E[\varepsilon\mid x_t] = B\,\mathbb E[z\mid u_t]`
    is closed form (:class:`GaussianMixture`) and the noised law is
    :math:`N(\alpha_t B m,\ B(\alpha_t^2 S + \sigma_t^2 I)B^\top)`.

    Args:
        basis: ``(D, k)`` with ``D = prod(shape)``.
        mean: ``(k,)``; cov: ``(k, k)``.
        shape: the per-sample state shape, e.g. ``(N, N)``.
    """

    def __init__(self, basis, mean, cov, shape):
        self.basis = _as64(basis)
        self.shape = tuple(shape)
        D, k = self.basis.shape
        if D != math.prod(self.shape):
            raise ValueError(f"basis has {D} rows, the state shape {self.shape} has {math.prod(self.shape)} entries")
        self.coords_gauss = GaussianMixture.gaussian(mean, cov)
        if self.coords_gauss.dim != k:
            raise ValueError(f"mean/cov have dimension {self.coords_gauss.dim}, the basis {k} columns")
        self.pinv = torch.linalg.pinv(self.basis)
        self.dim = k

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` exact data samples, float64 ``(n, *shape)``."""
        return self.embed(self.coords_gauss.sample(n, generator))

    def embed(self, u) -> torch.Tensor:
        return (_as64(u) @ self.basis.T).reshape((-1,) + self.shape)

    def coords(self, x) -> torch.Tensor:
        """:math:`B^+ x`, ``(n, k)``."""
        return _as64(x).reshape(len(x), -1) @ self.pinv.T

    def marginal_coords(self, process, t) -> GaussianMixture:
        """The law of the coordinates :math:`u_t` (a Gaussian)."""
        return self.coords_gauss.marginal(process, t)

    def marginal_cov(self, process, t) -> torch.Tensor:
        """Covariance of :math:`x_t` in the ambient space, ``(D, D)``."""
        S = self.marginal_coords(process, t).covs[0]
        return self.basis @ S @ self.basis.T

    def eps(self, x, process, t) -> torch.Tensor:
        r""":math:`\mathbb E[\varepsilon\mid x_t] = B\,\mathbb E[z\mid B^+x_t]` (one time ``t``)."""
        return self.embed(self.coords_gauss.eps(self.coords(x), process, t))

    def model(self, process):
        """The exact eps model ``(x, t) -> eps`` (rows with different times answered time by time)."""

        return _time_by_time(lambda x, t0: self.eps(x, process, t0).to(x.dtype))


def symmetric_basis(N: int, nodes=None) -> torch.Tensor:
    """``(N*N, k)`` basis of symmetric zero-diagonal matrices on the real ``nodes`` (default all):
    one column :math:`E_{ij} + E_{ji}` per pair :math:`i<j` (the mirrored-upper-triangle noise law)."""
    nodes = list(range(N)) if nodes is None else list(nodes)
    cols = []
    for a in range(len(nodes)):
        for b in range(a + 1, len(nodes)):
            e = torch.zeros(N, N, dtype=torch.float64)
            e[nodes[a], nodes[b]] = e[nodes[b], nodes[a]] = 1.0
            cols.append(e.reshape(-1))
    return torch.stack(cols, 1)


def mask_basis(N: int, F: int, nodes) -> torch.Tensor:
    """``(N*F, k)`` selection basis of node features ``(N, F)`` on the real ``nodes``."""
    eye = torch.eye(N * F, dtype=torch.float64).reshape(N, F, N * F)
    return eye[list(nodes)].reshape(-1, N * F).T


def com_basis(n: int, d: int, nodes=None) -> torch.Tensor:
    """``(n*d, (m-1)d)`` orthonormal basis of positions ``(n, d)`` with zero centre of mass over the
    ``m`` real ``nodes`` (default all) and zeros elsewhere."""
    nodes = list(range(n)) if nodes is None else list(nodes)
    m = len(nodes)
    c = torch.eye(m, dtype=torch.float64) - 1.0 / m  # centring on the real nodes
    q, _ = torch.linalg.qr(c)
    q = q[:, : m - 1]  # an orthonormal basis of the centred vectors (rank m - 1)
    full = torch.zeros(n, m - 1, dtype=torch.float64)
    full[nodes] = q
    # positions (n, d) flattened row-major: coordinate (i, a) -> i * d + a
    return torch.einsum("ik,ab->iakb", full, torch.eye(d, dtype=torch.float64)).reshape(n * d, (m - 1) * d)


__all__ = ["GaussianMixture", "gaussian_flow_map", "gaussian_w2", "empirical_w2_gaussian",
           "w1_exact", "w1_1d", "sliced_w1", "standard_mixture_2d", "anisotropic_gaussian",
           "SubspaceGaussian", "symmetric_basis", "mask_basis", "com_basis"]
