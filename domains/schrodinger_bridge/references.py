"""Reference SDEs ``dX = f_theta(X) dt + sigma dW`` with transitions, bridges and refits.

Every reference answers the same three questions (Shen, Berlinghieri, Broderick, Sec. 3):

* :meth:`Reference.log_transition` — ``log p(x1 | x0; t1 - t0)`` for all pairs, the cost of the
  entropic OT between adjacent snapshots;
* :meth:`Reference.sample_bridge` — paths of the reference conditioned on both end points;
* :meth:`Reference.refit` — maximum likelihood of ``theta`` from paths on a fine grid.

All three are written once, in terms of a per-step affine-Gaussian description of the
reference on a time grid ``ts``:

.. math:: X_{k+1} \\mid X_k \\sim N(\\Phi_k X_k + m_k,\\; Q_k).

* Linear references (:class:`Brownian`, :class:`Linear`: ``f(x) = A x + c``) give it exactly:
  :math:`\\Phi = e^{Ah}`, :math:`m = \\int_0^h e^{As} c\\,ds`,
  :math:`Q = \\sigma^2\\int_0^h e^{As} e^{A^\\top s} ds` (Van Loan's block exponential), so
  their transitions and bridges are exact for any grid.
* Nonlinear references (:class:`LotkaVolterra`, :class:`Repressilator`,
  :class:`GradientPotential`) use the **linear-noise approximation** around the deterministic
  path :math:`\\eta` started at the bridge's left end: :math:`X = \\eta + R` with
  :math:`dR = J(\\eta) R\\,dt + \\sigma dW`; per step :math:`\\Phi_k = e^{h J(\\bar\\eta_k)}`
  (Jacobian at the RK4 step's midpoint, exponential by
  4th-order Taylor), :math:`m_k = \\eta_{k+1} - \\Phi_k\\eta_k`,
  :math:`Q_k = \\sigma^2 h\\, e^{hJ/2} e^{hJ^\\top/2}` (midpoint rule). Transitions are then
  Gaussian with the LNA mean and covariance; bridges are the exact bridges of the linearised
  process. Both are accurate when the noise is small against the drift's curvature scale, and
  they are approximations, not exact, in general.

Bridges are sampled sequentially by Gaussian conditioning (Kalman form): with the backward maps
:math:`X_S = F_{k} X_{k} + g_{k} + N(0, G_{k})`,

.. math:: X_{k+1} \\mid X_k, X_S \\sim N\\big(\\mu + K(x_S - F_{k+1}\\mu - g_{k+1}),\\; Q_k - K F_{k+1} Q_k\\big),
   \\quad \\mu = \\Phi_k X_k + m_k,\\; K = Q_k F_{k+1}^\\top (F_{k+1} Q_k F_{k+1}^\\top + G_{k+1})^{-1}.

Two refits are offered. :meth:`Reference.refit_pairs` maximises the (exact or LNA) transition
likelihood of the coupled snapshot pairs, averaged over the coupling, by L-BFGS.
:meth:`Reference.refit` maximises the Euler likelihood of the bridge path increments,
:math:`\\sum_k \\|\\Delta x_k - f_\\theta(x_k) h_k\\|^2 / (\\sigma^2 h_k)`: weighted least squares
for families linear in ``theta`` (Brownian has nothing to fit, Linear, Lotka–Volterra,
Repressilator), Adam for the potential network. ``sigma`` is a fixed hyperparameter: the
quadratic variation of bridges sampled with ``sigma`` returns ``sigma``, so it cannot be refitted
from them.
"""

from __future__ import annotations

import copy
import math

import torch

__all__ = ["Reference", "Brownian", "Linear", "LotkaVolterra", "Repressilator", "GradientPotential",
           "make_grid", "REFERENCES", "get_reference"]

_F64 = torch.float64


def make_grid(t0: float, t1: float, max_step: float, extra=()) -> torch.Tensor:
    """Time grid from ``t0`` to ``t1`` with steps at most ``max_step``, containing ``extra`` times.

    Returns:
        float64 tensor ``(S+1,)``, increasing, first ``t0``, last ``t1``.
    """
    if not t1 > t0:
        raise ValueError(f"need t1 > t0, got {t0}, {t1}")
    if not max_step > 0:
        raise ValueError(f"max_step must be positive, got {max_step}")
    n = max(1, math.ceil((t1 - t0) / max_step - 1e-9))
    ts = torch.linspace(t0, t1, n + 1, dtype=_F64)
    inside = [float(t) for t in extra if t0 < float(t) < t1]
    if inside:
        ts = torch.unique(torch.cat([ts, torch.tensor(inside, dtype=_F64)]))
        ts = ts[torch.cat([torch.tensor([True]), ts[1:] - ts[:-1] > 1e-10])]
    return ts


def _expm_taylor(M: torch.Tensor) -> torch.Tensor:
    """``exp(M)`` by its 4th-order Taylor polynomial: for ``||hJ|| <= 0.5`` the error is below
    3e-4 relative, far under the LNA's own error, and it is 10x cheaper than ``matrix_exp``
    inside the autograd of the pair refit."""
    eye = torch.eye(M.shape[-1], dtype=M.dtype).expand_as(M)
    M2 = M @ M
    return eye + M + M2 / 2 + (M2 @ M) / 6 + (M2 @ M2) / 24


def _sym(M: torch.Tensor) -> torch.Tensor:
    return 0.5 * (M + M.transpose(-1, -2))


class Reference:
    """Base class: ``dX = f(X) dt + sigma dW`` with isotropic ``sigma`` (physical time).

    Subclasses define :meth:`drift` and either :meth:`_steps` exactly (linear families) or rely on
    the linear-noise approximation here; families linear in their parameters define
    :meth:`features` and :meth:`_set_theta` so that :meth:`refit` is least squares.

    Args:
        sigma: diffusion coefficient (positive float).
    """

    name = "reference"
    exact = False  # whether transitions and bridges are exact (linear families)
    names: tuple = ()  # parameter names in vector() order (empty: unnamed, all free, unconstrained)
    positive: tuple = ()  # names constrained to be > 0: refits work on their logarithm
    fixed: frozenset = frozenset()  # names held at their value by every refit

    def __init__(self, sigma: float):
        sigma = float(sigma)
        if not (sigma > 0 and math.isfinite(sigma)):
            raise ValueError(f"sigma must be a positive finite number, got {sigma}")
        self.sigma = sigma

    # --- the model -------------------------------------------------------------------------
    def drift(self, x: torch.Tensor) -> torch.Tensor:
        """``f(x)``; shapes ``(n, d) -> (n, d)``."""
        raise NotImplementedError

    def jacobian(self, x: torch.Tensor) -> torch.Tensor:
        """``df/dx`` at each row; ``(n, d) -> (n, d, d)`` (autograd unless overridden)."""
        f = lambda z: self.drift(z[None])[0]  # noqa: E731
        return torch.func.vmap(torch.func.jacrev(f))(x)

    def params(self) -> dict:
        """Named parameters (floats or nested lists) for reports."""
        return {}

    def vector(self) -> torch.Tensor:
        """All fitted parameters flattened (float64), for convergence checks and bootstrap."""
        return torch.zeros(0, dtype=_F64)

    def check_dim(self, d: int) -> None:
        """Raise if the reference cannot act on ``d``-dimensional states."""

    def linear_in_free_params(self) -> bool:
        """Whether the drift is linear in the fitted parameters (then :meth:`refit` is least squares
        through :meth:`features`); otherwise refits maximise the likelihood by autograd."""
        return True

    # --- parameters in their domain: unconstrained coordinates for the optimisers -------------
    def free_vector(self) -> torch.Tensor:
        """The fitted parameters in unconstrained coordinates: ``log theta_i`` for the positive
        ones, ``theta_i`` for the others; fixed ones left out. An optimiser moving freely in these
        coordinates can never leave the parameters' domain (a rate turning negative used to make
        the ODE diverge inside the line search)."""
        theta = self.vector().detach()
        if not self.names:
            return theta.clone()
        parts = []
        for i, nm in enumerate(self.names):
            if nm in self.fixed:
                continue
            parts.append(theta[i].clamp_min(1e-8).log() if nm in self.positive else theta[i])
        return torch.stack(parts) if parts else theta[:0].clone()

    def set_free_vector(self, u: torch.Tensor) -> None:
        """Inverse of :meth:`free_vector` (differentiable in ``u``)."""
        if not self.names:
            self._set_theta(u)
            return
        theta = self.vector().detach()
        vals, j = [], 0
        for i, nm in enumerate(self.names):
            if nm in self.fixed:
                vals.append(theta[i])
                continue
            vals.append(u[j].exp() if nm in self.positive else u[j])
            j += 1
        self._set_theta(torch.stack(vals))

    def _set_fixed(self, fixed) -> None:
        fixed = frozenset(fixed or ())
        unknown = sorted(fixed - set(self.names))
        if unknown:
            raise ValueError(f"fixed: unknown parameter(s) {unknown} for {self.name}; "
                             f"expected some of {list(self.names)}")
        self.fixed = fixed

    # --- affine-Gaussian steps ---------------------------------------------------------------
    def _ode_step(self, x, h):
        k1 = self.drift(x)
        k2 = self.drift(x + 0.5 * h * k1)
        k3 = self.drift(x + 0.5 * h * k2)
        k4 = self.drift(x + h * k3)
        return x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)

    def _steps(self, x0: torch.Tensor, ts: torch.Tensor):
        """Per-step ``(Phi, m, Q)`` of shapes ``(n|1, S, d, d)``, ``(n|1, S, d)``, ``(n|1, S, d, d)``.

        Linear-noise approximation around the ODE path from ``x0`` (see module docstring).
        """
        n, d = x0.shape
        eta, Phis, ms, Qs = x0, [], [], []
        eye = torch.eye(d, dtype=_F64)
        for h in (ts[1:] - ts[:-1]).tolist():
            nxt = self._ode_step(eta, h)
            J = self.jacobian(0.5 * (eta + nxt))
            if not torch.isfinite(nxt).all() or not torch.isfinite(J).all():
                raise FloatingPointError(f"{self.name}: the reference ODE diverged (params {self.params()})")
            Phi = _expm_taylor(h * J)
            half = _expm_taylor(0.5 * h * J)
            Q = self.sigma ** 2 * h * _sym(half @ half.transpose(-1, -2)) + 1e-12 * h * eye
            ms.append(nxt - (Phi @ eta[..., None])[..., 0])
            Phis.append(Phi)
            Qs.append(Q)
            eta = nxt
        return torch.stack(Phis, 1), torch.stack(ms, 1), torch.stack(Qs, 1)

    def transition(self, x0: torch.Tensor, t0: float, t1: float, max_step: float = 0.05):
        """Gaussian transition ``X_{t1} | X_{t0} = x0 ~ N(mean, cov)`` (exact or LNA).

        Returns:
            mean ``(n, d)`` and cov ``(n|1, d, d)``.
        """
        # exact families need no inner grid: one step of the exact affine-Gaussian map
        ts = torch.tensor([t0, t1], dtype=_F64) if self.exact else make_grid(t0, t1, max_step)
        Phi, m, Q = self._steps(x0, ts)
        A = torch.eye(x0.shape[1], dtype=_F64).expand_as(Phi[:, 0]).clone()
        b = torch.zeros_like(m[:, 0])
        C = torch.zeros_like(Q[:, 0])
        for k in range(Phi.shape[1]):
            A = Phi[:, k] @ A
            b = (Phi[:, k] @ b[..., None])[..., 0] + m[:, k]
            C = _sym(Phi[:, k] @ C @ Phi[:, k].transpose(-1, -2) + Q[:, k])
        mean = (A @ x0[..., None])[..., 0] + b if A.shape[0] == x0.shape[0] else x0 @ A[0].T + b
        return mean, C

    def log_transition(self, x0: torch.Tensor, x1: torch.Tensor, t0: float, t1: float,
                       max_step: float = 0.05) -> torch.Tensor:
        """``log p(x1_j | x0_i)`` for every pair; ``(n0, d), (n1, d) -> (n0, n1)``."""
        mean, cov = self.transition(x0, t0, t1, max_step)
        L = torch.linalg.cholesky(cov)
        diff = x1[None, :, :] - mean[:, None, :]  # (n0, n1, d)
        z = torch.linalg.solve_triangular(L, diff.transpose(-1, -2), upper=False)  # (n0|1, d, n1)
        quad = z.pow(2).sum(-2)
        logdet = 2 * torch.diagonal(L, dim1=-2, dim2=-1).log().sum(-1)
        d = x0.shape[1]
        return -0.5 * quad - 0.5 * logdet[:, None] - 0.5 * d * math.log(2 * math.pi)

    def sample_bridge(self, x0: torch.Tensor, x1: torch.Tensor, ts: torch.Tensor, *,
                      generator: torch.Generator | None = None, return_means: bool = False):
        """Paths of the reference pinned at ``x0`` (time ``ts[0]``) and ``x1`` (time ``ts[-1]``).

        Args:
            x0, x1: ``(n, d)`` end points (row i of each forms one bridge).
            ts: ``(S+1,)`` increasing grid.
            return_means: also return ``E[X_{k+1} | X_k, X_S]`` for k < S (bridge-matching targets).

        Returns:
            paths ``(n, S+1, d)`` (and the conditional means ``(n, S, d)``).
        """
        n, d = x0.shape
        Phi, m, Q = self._steps(x0, ts)
        S = Phi.shape[1]
        Fs, gs, Gs = self._backward(Phi, m, Q)
        x = x0
        paths, means = [x0], []
        for k in range(S - 1):
            mu = (Phi[:, k] @ x[..., None])[..., 0] + m[:, k]
            F, g, G = Fs[:, k + 1], gs[:, k + 1], Gs[:, k + 1]
            QF = Q[:, k] @ F.transpose(-1, -2)
            Sinn = _sym(F @ QF + G)
            K = torch.linalg.solve(Sinn, QF.transpose(-1, -2)).transpose(-1, -2)
            resid = x1 - (F @ mu[..., None])[..., 0] - g
            mean = mu + (K @ resid[..., None])[..., 0]
            cov = _sym(Q[:, k] - K @ QF.transpose(-1, -2))
            noise = torch.randn(n, d, 1, generator=generator, dtype=_F64)
            L = torch.linalg.cholesky(cov + 1e-14 * torch.eye(d, dtype=_F64))
            x = mean + (L @ noise)[..., 0]
            paths.append(x)
            means.append(mean)
        paths.append(x1)
        means.append(x1)
        out = torch.stack(paths, 1).detach()
        if not torch.isfinite(out).all():
            raise FloatingPointError(f"{self.name}: bridge sampling produced NaN/inf")
        return (out, torch.stack(means, 1).detach()) if return_means else out

    def bridge_marginals(self, x0: torch.Tensor, x1: torch.Tensor, ts: torch.Tensor):
        """Mean and covariance of the bridge at every grid time (Gaussian conditioning).

        Returns:
            means ``(n, S+1, d)``, covs ``(n, S+1, d, d)`` (zero covariance at both ends).
        """
        n, d = x0.shape
        Phi, m, Q = self._steps(x0, ts)
        S = Phi.shape[1]
        Fs, gs, Gs = self._backward(Phi, m, Q)
        A = torch.eye(d, dtype=_F64).expand(Phi.shape[0], d, d)
        b = torch.zeros(Phi.shape[0], d, dtype=_F64)
        C = torch.zeros(Phi.shape[0], d, d, dtype=_F64)
        means, covs = [x0], [torch.zeros(n, d, d, dtype=_F64)]
        for k in range(S - 1):
            A = Phi[:, k] @ A
            b = (Phi[:, k] @ b[..., None])[..., 0] + m[:, k]
            C = _sym(Phi[:, k] @ C @ Phi[:, k].transpose(-1, -2) + Q[:, k])
            mu = (A @ x0[..., None])[..., 0] + b  # prior marginal from x0
            F, g, G = Fs[:, k + 1], gs[:, k + 1], Gs[:, k + 1]
            CF = C @ F.transpose(-1, -2)
            K = torch.linalg.solve(_sym(F @ CF + G), CF.transpose(-1, -2)).transpose(-1, -2)
            means.append(mu + (K @ (x1 - (F @ mu[..., None])[..., 0] - g)[..., None])[..., 0])
            covs.append(_sym(C - K @ CF.transpose(-1, -2)).expand(n, d, d))
        means.append(x1)
        covs.append(torch.zeros(n, d, d, dtype=_F64))
        return torch.stack(means, 1), torch.stack(covs, 1)

    @staticmethod
    def _backward(Phi, m, Q):
        """Maps ``X_S = F_k X_k + g_k + N(0, G_k)`` for k = 0..S (``F_S = I``, ``G_S = 0``)."""
        B, S, d, _ = Phi.shape
        F = torch.eye(d, dtype=_F64).expand(B, d, d).clone()
        g = torch.zeros(B, d, dtype=_F64)
        G = torch.zeros(B, d, d, dtype=_F64)
        Fs, gs, Gs = [F], [g], [G]
        for k in range(S - 1, -1, -1):
            G = _sym(F @ Q[:, k] @ F.transpose(-1, -2) + G)
            g = (F @ m[:, k][..., None])[..., 0] + g
            F = F @ Phi[:, k]
            Fs.append(F)
            gs.append(g)
            Gs.append(G)
        return torch.stack(Fs[::-1], 1), torch.stack(gs[::-1], 1), torch.stack(Gs[::-1], 1)

    # --- simulation ---------------------------------------------------------------------------
    def simulate(self, x0: torch.Tensor, ts, *, generator: torch.Generator | None = None,
                 max_step: float = 1e-3) -> torch.Tensor:
        """Euler–Maruyama paths from ``x0`` recorded at ``ts`` (fine inner steps of ``max_step``).

        Returns:
            ``(n, len(ts), d)``.
        """
        ts = torch.as_tensor(ts, dtype=_F64).reshape(-1)
        x = torch.as_tensor(x0, dtype=_F64).clone()
        out = [x]
        for a, b in zip(ts[:-1].tolist(), ts[1:].tolist()):
            n_sub = max(1, math.ceil((b - a) / max_step - 1e-9))
            h = (b - a) / n_sub
            for _ in range(n_sub):
                x = x + self.drift(x) * h + self.sigma * math.sqrt(h) * torch.randn(
                    x.shape, generator=generator, dtype=_F64)
            if not torch.isfinite(x).all():
                raise FloatingPointError(f"{self.name}: simulation diverged before t={b}")
            out.append(x)
        return torch.stack(out, 1)

    # --- maximum likelihood refit -------------------------------------------------------------
    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``(n, d) -> (n, d, p)`` with ``f(x) = features(x) @ theta`` (linear families)."""
        raise NotImplementedError

    def _set_theta(self, theta: torch.Tensor) -> None:
        raise NotImplementedError

    def refit(self, paths: torch.Tensor, ts: torch.Tensor, *, previous: "Reference | None" = None,
              **kwargs) -> "Reference":
        """Maximum (Euler) likelihood of the drift parameters from paths; returns a new reference.

        .. math:: \\hat\\theta = \\arg\\min_\\theta \\sum_{i,k} h_k^{-1}\\,\\|\\Delta x^i_k - r^i_k - h_k F(x^i_k)\\theta\\|^2
           = \\Big(\\sum h_k F^\\top F\\Big)^{-1} \\sum F^\\top (\\Delta x - r).

        The plain Euler likelihood (``r = 0``) is biased by ``O(h)``:
        :math:`E[\\Delta x\\mid x] = h f + \\tfrac{h^2}{2} J f + O(h^2\\sigma^2 \\nabla^2 f)`, which
        for the rotating OU with ``h = 0.05`` shifts ``A`` by ``h A^2 / 2`` (2.8 % relative).
        With ``previous`` (the reference that generated the paths) the second-order Itô–Taylor term
        :math:`r = \\tfrac{h^2}{2} J_{\\rm prev} f_{\\rm prev}` is removed, leaving ``O(h^2)``
        (the Laplacian term vanishes for linear and Lotka–Volterra drifts; it is neglected otherwise).

        Args:
            paths: ``(n, S+1, d)`` on grid ``ts`` ``(S+1,)`` (may hold several gaps concatenated).
            previous: the reference that generated the paths (for the correction), or ``None``.
        """
        _check_paths(paths, ts)
        h = (ts[1:] - ts[:-1])
        keep = h > 1e-12
        x = paths[:, :-1][:, keep].reshape(-1, paths.shape[-1])
        dx = (paths[:, 1:] - paths[:, :-1])[:, keep].reshape(-1, paths.shape[-1])
        hw = h[keep].repeat(paths.shape[0])
        if previous is not None:
            corr = (previous.jacobian(x) @ previous.drift(x)[..., None])[..., 0]
            dx = dx - 0.5 * hw[:, None] ** 2 * corr
        if not self.linear_in_free_params():
            return self._refit_autograd(x, dx, hw)
        F = self.features(x)  # (N, d, p)
        lhs = torch.einsum("n,ndp,ndq->pq", hw, F, F)
        rhs = torch.einsum("ndp,nd->p", F, dx)
        theta = torch.linalg.lstsq(lhs, rhs[:, None]).solution[:, 0]
        new = copy.deepcopy(self)
        new._set_theta(theta)
        return new

    def euler_nll(self, x: torch.Tensor, dx: torch.Tensor, hw: torch.Tensor) -> torch.Tensor:
        r"""Negative Euler log-likelihood of increments ``dx`` from ``x`` over steps ``hw`` (no constant):
        :math:`\sum_n \|\Delta x_n - h_n f_\theta(x_n)\|^2 / (2\sigma^2 h_n)`."""
        r = dx - hw[:, None] * self.drift(x)
        return (r.pow(2).sum(-1) / hw).sum() / (2 * self.sigma ** 2)

    def _refit_autograd(self, x, dx, hw, max_iter: int = 100) -> "Reference":
        """Euler maximum likelihood by L-BFGS in the unconstrained coordinates (any drift that is
        differentiable in its parameters, e.g. the repressilator's Hill exponent and threshold)."""
        new = copy.deepcopy(self)
        u = new.free_vector().requires_grad_(True)
        scale = float(x.shape[0])
        opt = torch.optim.LBFGS([u], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe",
                                tolerance_grad=1e-9, tolerance_change=1e-14)

        def closure():
            opt.zero_grad()
            new.set_free_vector(u)
            nll = new.euler_nll(x, dx, hw) / scale
            nll.backward()
            return nll

        opt.step(closure)
        if not torch.isfinite(u.detach()).all():
            raise FloatingPointError(f"{self.name}: Euler-likelihood refit diverged")
        new.set_free_vector(u.detach())
        new._set_theta(new.vector().detach())
        return new

    def standard_errors(self, paths: torch.Tensor, ts: torch.Tensor) -> torch.Tensor:
        """Asymptotic standard errors of the Euler MLE: square roots of the diagonal of the inverse
        observed information (autograd Hessian of :meth:`euler_nll` in ``theta``), fixed
        parameters 0. Valid at a maximum of the likelihood of these paths.

        Returns:
            ``(p,)`` float64 over :meth:`vector`.
        """
        _check_paths(paths, ts)
        h = ts[1:] - ts[:-1]
        keep = h > 1e-12
        x = paths[:, :-1][:, keep].reshape(-1, paths.shape[-1])
        dx = (paths[:, 1:] - paths[:, :-1])[:, keep].reshape(-1, paths.shape[-1])
        hw = h[keep].repeat(paths.shape[0])
        work = copy.deepcopy(self)
        theta0 = work.vector().detach()
        free = [i for i, nm in enumerate(self.names) if nm not in self.fixed] if self.names \
            else list(range(theta0.numel()))

        def nll(v):
            th = theta0.clone()
            th[free] = v
            work._set_theta(th)
            return work.euler_nll(x, dx, hw)

        H = torch.autograd.functional.hessian(nll, theta0[free].clone())
        se = torch.zeros_like(theta0)
        se[free] = torch.linalg.inv(H).diagonal().clamp_min(0).sqrt()
        return se

    def refit_pairs(self, pairs, *, max_step: float = 0.05, max_iter: int = 20, **kwargs) -> "Reference":
        """Maximum likelihood of ``theta`` from coupled pairs under the (exact or LNA) transition.

        .. math:: \\hat\\theta = \\arg\\max_\\theta \\sum_{k} \\sum_{ij} \\pi^k_{ij}\\log p_\\theta(x^{k+1}_j \\mid x^k_i;\\, t_{k+1} - t_k)

        The transition is differentiated through the Van Loan exponential (linear) or the RK4 /
        LNA recursion (nonlinear) and maximised with L-BFGS from the current ``theta``. Unlike the
        bridge-increment refit this is not an EM step: it does not wait for the bridges to carry
        the information between the ends, and converges in a few outer iterations.

        Args:
            pairs: list of ``(x0, x1, t0, t1, plan)``: snapshots ``(n0, d)``, ``(n1, d)`` at times
                ``t0 < t1`` and their coupling ``(n0, n1)`` (the expectation over the plan is exact,
                no pairs are drawn).
        """
        new = copy.deepcopy(self)
        theta = new.free_vector().requires_grad_(True)  # unconstrained: log of positive rates
        start = theta.detach().clone()
        total = len(pairs)
        best = [math.inf, theta.detach().clone()]
        # Sufficient statistics of each row's coupled partners (independent of theta):
        # sum_j pi_ij log N(x1_j; mu_i, S_i) needs only a_i, s_i = sum_j pi_ij x1_j, M_i = sum_j pi_ij x1_j x1_j^T.
        # Gaps of equal length share one batched transition (the references are time-homogeneous),
        # which cuts the number of small autograd ops by the number of gaps.
        groups: dict = {}
        for x0, x1, t0, t1, plan in pairs:
            key = round(float(t1) - float(t0), 12)
            groups.setdefault(key, []).append((x0, plan.sum(1), plan @ x1,
                                               torch.einsum("ij,jd,je->ide", plan, x1, x1)))
        stats = [(torch.cat([g[0] for g in grp]), 0.0, dt, torch.cat([g[1] for g in grp]),
                  torch.cat([g[2] for g in grp]), torch.cat([g[3] for g in grp]))
                 for dt, grp in groups.items()]

        def closure():
            opt.zero_grad()
            new.set_free_vector(theta)
            nll = 0.0
            for x0, t0, t1, a, s1, M in stats:
                mean, cov = new.transition(x0, t0, t1, max_step)
                P = torch.linalg.inv(cov)
                ms = mean[:, :, None] * s1[:, None, :]
                E = M - ms - ms.transpose(-1, -2) + a[:, None, None] * mean[:, :, None] * mean[:, None, :]
                logdet = torch.logdet(cov).expand(x0.shape[0])
                nll = nll + 0.5 * ((P * E).sum((-1, -2)) + a * logdet).sum()
            nll = nll / total
            if torch.isfinite(nll.detach()) and float(nll.detach()) < best[0]:
                best[0], best[1] = float(nll.detach()), theta.detach().clone()
            nll.backward()
            return nll

        errors = []
        for lr in (1.0, 0.1):  # a failed line search is retried once, from the best point, with short steps
            opt = torch.optim.LBFGS([theta], lr=lr, max_iter=max_iter, line_search_fn="strong_wolfe",
                                    tolerance_grad=1e-10, tolerance_change=1e-12)
            try:
                opt.step(closure)
                break
            except (FloatingPointError, torch.linalg.LinAlgError, RuntimeError) as err:
                errors.append(f"{type(err).__name__}: {err}")
                with torch.no_grad():
                    theta.copy_(best[1])
        if not math.isfinite(best[0]):
            raise FloatingPointError(f"{self.name}: pair-likelihood refit found no finite likelihood")
        new.set_free_vector(best[1])
        new._set_theta(new.vector().detach())
        # ok: the optimiser finished without an error; a refit that failed and never moved from its
        # start must not be read as converged (its parameter change is 0)
        new.refit_info = {"ok": len(errors) < 2, "moved": not torch.equal(best[1], start),
                          "nll": best[0], "errors": errors}
        return new

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={_fmt(v)}" for k, v in self.params().items())
        return f"{type(self).__name__}(sigma={self.sigma:g}{', ' if inner else ''}{inner})"


def _fmt(v):
    if isinstance(v, list):
        return "[" + ", ".join(_fmt(u) for u in v) + "]"
    return f"{v:.4g}"


def _check_paths(paths, ts):
    if paths.ndim != 3 or ts.ndim != 1 or paths.shape[1] != ts.shape[0]:
        raise ValueError(f"paths must be (n, S+1, d) on ts (S+1,), got {tuple(paths.shape)}, {tuple(ts.shape)}")
    if not torch.isfinite(paths).all():
        raise ValueError("paths contain NaN/inf")


class Linear(Reference):
    """Linear / Ornstein–Uhlenbeck reference ``dX = (A X + c) dt + sigma dW``, exact.

    Args:
        A: ``(d, d)`` drift matrix; c: ``(d,)`` offset (default 0); sigma: diffusion.
    """

    name = "linear"
    exact = True

    def __init__(self, A, c=None, sigma: float = 1.0):
        super().__init__(sigma)
        self.A = torch.as_tensor(A, dtype=_F64).clone()
        if self.A.ndim != 2 or self.A.shape[0] != self.A.shape[1]:
            raise ValueError(f"A must be square (d, d), got {tuple(self.A.shape)}")
        d = self.A.shape[0]
        self.c = torch.zeros(d, dtype=_F64) if c is None else torch.as_tensor(c, dtype=_F64).clone()
        if self.c.shape != (d,):
            raise ValueError(f"c must have shape ({d},), got {tuple(self.c.shape)}")

    def check_dim(self, d):
        if d != self.A.shape[0]:
            raise ValueError(f"{self.name}: A is {tuple(self.A.shape)} but the data have d={d}")

    def drift(self, x):
        return x @ self.A.T + self.c

    def jacobian(self, x):
        return self.A.expand(x.shape[0], *self.A.shape)

    def _steps(self, x0, ts):
        d = self.A.shape[0]
        h = (ts[1:] - ts[:-1])[:, None, None]
        # Van Loan: expm([[A, s^2 I], [0, -A^T]] h) = [[e^{Ah}, Q e^{-A^T h}], [0, e^{-A^T h}]].
        top = torch.cat([self.A, self.sigma ** 2 * torch.eye(d, dtype=_F64)], 1)
        bot = torch.cat([torch.zeros(d, d, dtype=_F64), -self.A.T], 1)
        E = torch.linalg.matrix_exp(torch.cat([top, bot], 0) * h)
        Phi = E[:, :d, :d]
        Q = _sym(E[:, :d, d:] @ Phi.transpose(-1, -2))
        # expm([[A, c], [0, 0]] h) has int_0^h e^{As} c ds in its last column.
        aug = torch.zeros(d + 1, d + 1, dtype=_F64)
        aug[:d, :d], aug[:d, d] = self.A, self.c
        m = torch.linalg.matrix_exp(aug * h)[:, :d, d]
        return Phi[None], m[None], Q[None]

    def features(self, x):
        n, d = x.shape
        eye = torch.eye(d, dtype=_F64)
        # f_i = sum_j A_ij x_j + c_i; theta = [vec(A) row-major, c].
        FA = torch.einsum("ik,nj->nikj", eye, x).reshape(n, d, d * d)
        return torch.cat([FA, eye.expand(n, d, d)], -1)

    def _set_theta(self, theta):
        d = self.A.shape[0]
        self.A = theta[: d * d].reshape(d, d).clone()
        self.c = theta[d * d:].clone()

    def params(self):
        return {"A": self.A.tolist(), "c": self.c.tolist()}

    def vector(self):
        return torch.cat([self.A.reshape(-1), self.c])


class Brownian(Linear):
    """Brownian reference ``dX = sigma dW`` (exact); nothing to refit, so SB with it is vanilla SB.

    Args:
        sigma: diffusion; dim: state dimension (inferred from the data when ``None``).
    """

    name = "brownian"

    def __init__(self, sigma: float = 1.0, dim: int | None = None):
        Reference.__init__(self, sigma)
        self.dim = dim
        self._resize(dim or 1)

    def _resize(self, d):
        self.A = torch.zeros(d, d, dtype=_F64)
        self.c = torch.zeros(d, dtype=_F64)

    def check_dim(self, d):
        if self.dim is not None and self.dim != d:
            raise ValueError(f"brownian: dim={self.dim} but the data have d={d}")
        if self.A.shape[0] != d:
            self._resize(d)

    def _steps(self, x0, ts):
        self.check_dim(x0.shape[1])
        return super()._steps(x0, ts)

    def refit(self, paths, ts, **kwargs):
        _check_paths(paths, ts)
        return copy.deepcopy(self)

    def refit_pairs(self, pairs, **kwargs):
        return copy.deepcopy(self)

    def params(self):
        return {}

    def vector(self):
        return torch.zeros(0, dtype=_F64)


class LotkaVolterra(Reference):
    """Predator–prey reference, linear noise approximation for transitions and bridges.

    .. math:: dx = (\\alpha x - \\beta x y)\\,dt + \\sigma dW_1,\\qquad dy = (\\delta x y - \\gamma y)\\,dt + \\sigma dW_2

    Args:
        alpha, beta, gamma, delta: rates (``theta = (alpha, beta, gamma, delta)``); sigma: noise.
    """

    name = "lotka-volterra"
    names = ("alpha", "beta", "gamma", "delta")
    positive = names  # all four rates are positive; refits work on their logarithms

    def __init__(self, alpha=1.0, beta=1.0, gamma=1.0, delta=1.0, sigma: float = 0.1):
        super().__init__(sigma)
        self.theta = torch.tensor([alpha, beta, gamma, delta], dtype=_F64)

    def check_dim(self, d):
        if d != 2:
            raise ValueError(f"lotka-volterra needs d=2 (prey, predator), got d={d}")

    def drift(self, x):
        a, b, g, dl = self.theta
        X, Y = x[..., 0], x[..., 1]
        return torch.stack([a * X - b * X * Y, dl * X * Y - g * Y], -1)

    def jacobian(self, x):
        a, b, g, dl = self.theta
        X, Y = x[..., 0], x[..., 1]
        row0 = torch.stack([a - b * Y, -b * X], -1)
        row1 = torch.stack([dl * Y, dl * X - g], -1)
        return torch.stack([row0, row1], -2)

    def features(self, x):
        X, Y = x[:, 0], x[:, 1]
        z = torch.zeros_like(X)
        return torch.stack([torch.stack([X, -X * Y, z, z], -1), torch.stack([z, z, -Y, X * Y], -1)], 1)

    def _set_theta(self, theta):
        self.theta = theta.clone()

    def params(self):
        return dict(zip(self.names, self.theta.tolist()))

    def vector(self):
        return self.theta.clone()


class Repressilator(Reference):
    r"""Three-gene repressilator (Elowitz & Leibler 2000, protein-only form), LNA bridges.

    .. math:: dx_i = \Big(a_0 + \frac{\beta}{1 + (x_{i-1}/k)^{n}} - \gamma x_i\Big) dt + \sigma dW_i,
       \quad i = 1,2,3 \text{ cyclically},

    ``theta = (a0, beta, gamma, hill, k)`` (``hill`` is the Hill exponent ``n``, ``k`` the
    repression threshold), all positive, so refits work on their logarithms; ``x_{i-1}`` is
    clipped just above 0 so noise cannot make the power undefined. The drift is not linear in
    ``(hill, k)``: refits maximise the likelihood by autograd (L-BFGS), unless both are held fixed
    (``fixed=("hill", "k")``), when the Euler refit is the closed-form least squares in
    ``(a0, beta, gamma)``.

    Args:
        a0, beta, gamma: basal rate, maximal repressed production, degradation.
        hill, k: Hill exponent and threshold (initial values, or the values held with ``fixed``).
        sigma: noise; fixed: names of parameters the refits keep.
    """

    name = "repressilator"
    names = ("a0", "beta", "gamma", "hill", "k")
    positive = names

    def __init__(self, a0=0.2, beta=5.0, gamma=1.0, hill: float = 3.0, k: float = 1.0,
                 sigma: float = 0.1, fixed=()):
        super().__init__(sigma)
        if not (hill > 0 and k > 0):
            raise ValueError(f"hill and k must be positive, got hill={hill}, k={k}")
        self.theta = torch.tensor([a0, beta, gamma, hill, k], dtype=_F64)
        self._set_fixed(fixed)

    def check_dim(self, d):
        if d != 3:
            raise ValueError(f"repressilator needs d=3 (three genes), got d={d}")

    def linear_in_free_params(self):
        return {"hill", "k"} <= set(self.fixed)

    def _repress(self, x):
        hill, k = self.theta[3], self.theta[4]
        prev = torch.roll(x, 1, dims=-1).clamp_min(1e-12)
        return 1.0 / (1.0 + torch.exp(hill * torch.log(prev / k)))

    def drift(self, x):
        a0, b, g = self.theta[0], self.theta[1], self.theta[2]
        return a0 + b * self._repress(x) - g * x

    def features(self, x):
        # (a0, beta, gamma) with hill and k fixed: the fast least-squares path
        return torch.stack([torch.ones_like(x), self._repress(x), -x], -1)

    def _set_theta(self, theta):
        if theta.numel() == 3:  # the least-squares refit of (a0, beta, gamma)
            theta = torch.cat([theta, self.theta[3:].detach()])
        self.theta = theta.clone()

    @property
    def hill(self) -> float:
        return float(self.theta[3])

    def params(self):
        return dict(zip(self.names, self.theta.tolist()))

    def vector(self):
        return self.theta.clone()


class GradientPotential(Reference):
    """Gradient-flow reference ``dX = -grad U_phi(X) dt + sigma dW`` with ``U_phi`` a small MLP.

    The refit minimises the Euler negative log-likelihood of the path increments with Adam
    (the potential is not linear in ``phi``); transitions and bridges use the LNA with the
    Hessian of ``U`` from autograd.

    Args:
        dim: state dimension; hidden, depth: MLP size; sigma: noise; seed: initialisation;
        fit_steps, lr: Adam settings for each refit.
    """

    name = "potential"

    def __init__(self, dim: int, sigma: float = 0.1, hidden: int = 32, depth: int = 2, seed: int = 0,
                 fit_steps: int = 300, lr: float = 1e-2):
        super().__init__(sigma)
        from sciffusion.nn import MLP

        # MLP layers draw from torch's global generator at construction: seed it, then restore it.
        state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        self.net = MLP(dim, hidden=hidden, depth=depth, time_dim=8, out_dim=1).double()
        torch.random.set_rng_state(state)
        self.dim, self.fit_steps, self.lr = dim, fit_steps, lr

    def check_dim(self, d):
        if d != self.dim:
            raise ValueError(f"potential: built for dim={self.dim}, data have d={d}")

    def potential(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x, torch.zeros(x.shape[0], dtype=_F64))[:, 0]

    def drift(self, x):
        U1 = lambda z: self.net(z[None], torch.zeros(1, dtype=_F64))[0, 0]  # noqa: E731
        return -torch.func.vmap(torch.func.grad(U1))(x)

    def refit(self, paths, ts, *, generator: torch.Generator | None = None, **kwargs):
        _check_paths(paths, ts)
        new = copy.deepcopy(self)
        h = (ts[1:] - ts[:-1])
        keep = h > 1e-12
        x = paths[:, :-1][:, keep].reshape(-1, paths.shape[-1])
        vel = ((paths[:, 1:] - paths[:, :-1])[:, keep] / h[keep][None, :, None]).reshape(-1, paths.shape[-1])
        w = h[keep].repeat(paths.shape[0])
        opt = torch.optim.Adam(new.net.parameters(), lr=self.lr)
        gen = generator or torch.Generator().manual_seed(0)
        for _ in range(self.fit_steps):
            idx = torch.randint(x.shape[0], (min(1024, x.shape[0]),), generator=gen)
            xb = x[idx].requires_grad_(True)
            U = new.potential(xb).sum()
            f = -torch.autograd.grad(U, xb, create_graph=True)[0]
            loss = (w[idx, None] * (vel[idx] - f) ** 2).sum() / w[idx].sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
        return new

    def params(self):
        return {"num_parameters": float(sum(p.numel() for p in self.net.parameters()))}

    def vector(self):
        return torch.cat([p.detach().reshape(-1) for p in self.net.parameters()])


REFERENCES = {"brownian": Brownian, "linear": Linear, "ou": Linear, "lotka-volterra": LotkaVolterra,
              "repressilator": Repressilator, "potential": GradientPotential}


def get_reference(name: str, dim: int, sigma: float, **kwargs) -> Reference:
    """Build a reference by name with default initial parameters for ``dim``-dimensional data."""
    key = name.lower().replace("_", "-")
    if key not in REFERENCES:
        raise ValueError(f"reference={name!r} unknown; choose one of {sorted(REFERENCES)}")
    if key == "brownian":
        return Brownian(sigma, dim)
    if key in ("linear", "ou"):
        return Linear(kwargs.pop("A", torch.zeros(dim, dim)), kwargs.pop("c", None), sigma)
    if key == "potential":
        return GradientPotential(dim, sigma, **kwargs)
    ref = REFERENCES[key](sigma=sigma, **kwargs)
    ref.check_dim(dim)
    return ref
