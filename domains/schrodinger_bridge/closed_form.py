"""The Schrödinger bridge between two Gaussians under a Brownian reference, in closed form.

Reference ``dX = sigma dW`` on ``[0, T]``, marginals ``N(m0, S0)`` at 0 and ``N(m1, S1)`` at ``T``.

**Static part.** The optimal coupling has density :math:`a(x)\\,b(y)\\,e^{-\\|x-y\\|^2/(2\\varepsilon)}`
with :math:`\\varepsilon = \\sigma^2 T`, so it is Gaussian and its precision's off-diagonal block is
:math:`-I/\\varepsilon` (``a, b`` only touch the diagonal blocks). With cross-covariance ``C`` and
:math:`K = C S_1^{-1}` the block inverse gives
:math:`(S_0 - K S_1 K^\\top)^{-1} K = I/\\varepsilon`, i.e. :math:`\\varepsilon K + K S_1 K^\\top = S_0`.
Writing :math:`K = S_0^{1/2} M S_0^{-1/2}`, :math:`M` symmetric, this becomes
:math:`M^2 + \\varepsilon M = S_0^{1/2} S_1 S_0^{1/2}` (multiply by :math:`S_0^{-1/2}` on the left
and :math:`S_0^{1/2} S_1 \\ldots` on the right: :math:`K S_1 K^\\top = S_0^{1/2} M S_0^{-1/2} S_1 S_0^{-1/2} M S_0^{1/2}`),
a matrix quadratic whose positive root :math:`M = (D - \\varepsilon I)/2` gives (as in Janati et
al. 2020 and Bunne et al. 2023; :func:`static_residual` checks the root numerically)

.. math:: C = \\tfrac12\\big(S_0^{1/2} D\\, S_0^{-1/2} - \\varepsilon I\\big),\\qquad
   D = \\big(4 S_0^{1/2} S_1 S_0^{1/2} + \\varepsilon^2 I\\big)^{1/2}.

**Dynamic part.** Given the end points the bridge is a Brownian bridge, so with ``s = t / T``

.. math:: X_t = (1-s) X_0 + s X_1 + \\sigma\\sqrt{t(T-t)/T}\\,Z,

    m_t = (1-s) m_0 + s m_1,\\qquad
    \\Sigma_t = (1-s)^2 S_0 + s^2 S_1 + s(1-s)(C + C^\\top) + \\sigma^2 \\tfrac{t(T-t)}{T} I.
"""

from __future__ import annotations

import torch

__all__ = ["gaussian_sb_coupling", "gaussian_sb_marginal", "static_residual", "gaussian_kl"]

_F64 = torch.float64


def _sqrtm(A: torch.Tensor) -> torch.Tensor:
    w, V = torch.linalg.eigh(0.5 * (A + A.T))
    return (V * w.clamp_min(0).sqrt()) @ V.T


def _check_cov(S, name):
    S = torch.as_tensor(S, dtype=_F64)
    if S.ndim != 2 or S.shape[0] != S.shape[1]:
        raise ValueError(f"{name} must be a square covariance, got shape {tuple(S.shape)}")
    if torch.linalg.eigvalsh(0.5 * (S + S.T)).min() <= 0:
        raise ValueError(f"{name} must be symmetric positive definite")
    return S


def gaussian_sb_coupling(S0, S1, sigma: float, T: float = 1.0) -> torch.Tensor:
    """Cross-covariance ``C = Cov(X_0, X_T)`` of the static Schrödinger bridge (module docstring).

    Shapes:
        S0, S1: ``(d, d)`` -> ``(d, d)``.
    """
    S0, S1 = _check_cov(S0, "S0"), _check_cov(S1, "S1")
    if not (sigma > 0 and T > 0):
        raise ValueError(f"sigma and T must be positive, got {sigma}, {T}")
    eps = sigma ** 2 * T
    d = S0.shape[0]
    r0 = _sqrtm(S0)
    D = _sqrtm(4 * r0 @ S1 @ r0 + eps ** 2 * torch.eye(d, dtype=_F64))
    return 0.5 * (r0 @ D @ torch.linalg.inv(r0) - eps * torch.eye(d, dtype=_F64))


def static_residual(S0, S1, C, sigma: float, T: float = 1.0) -> float:
    """Max-abs residual of :math:`\\varepsilon K + K S_1 K^\\top - S_0` with :math:`K = C S_1^{-1}`."""
    S0, S1, C = (torch.as_tensor(v, dtype=_F64) for v in (S0, S1, C))
    K = C @ torch.linalg.inv(S1)
    return float((sigma ** 2 * T * K + K @ S1 @ K.T - S0).abs().max())


def gaussian_sb_marginal(m0, S0, m1, S1, sigma: float, t: float, T: float = 1.0):
    """Mean and covariance of the Schrödinger bridge at time ``t`` in ``[0, T]``.

    Returns:
        ``(mean (d,), cov (d, d))`` float64.
    """
    if not 0 <= t <= T:
        raise ValueError(f"t must lie in [0, T={T}], got {t}")
    m0, m1 = torch.as_tensor(m0, dtype=_F64), torch.as_tensor(m1, dtype=_F64)
    S0, S1 = _check_cov(S0, "S0"), _check_cov(S1, "S1")
    C = gaussian_sb_coupling(S0, S1, sigma, T)
    s = t / T
    d = S0.shape[0]
    mean = (1 - s) * m0 + s * m1
    cov = ((1 - s) ** 2 * S0 + s ** 2 * S1 + s * (1 - s) * (C + C.T)
           + sigma ** 2 * t * (T - t) / T * torch.eye(d, dtype=_F64))
    return mean, 0.5 * (cov + cov.T)


def gaussian_kl(m_p, S_p, m_q, S_q) -> float:
    """:math:`\\mathrm{KL}(N(m_p, S_p)\\,\\|\\,N(m_q, S_q))` in nats."""
    m_p, S_p, m_q, S_q = (torch.as_tensor(v, dtype=_F64) for v in (m_p, S_p, m_q, S_q))
    d = m_p.shape[0]
    Sq_inv = torch.linalg.inv(S_q)
    diff = m_q - m_p
    kl = 0.5 * (torch.trace(Sq_inv @ S_p) + diff @ Sq_inv @ diff - d
                + torch.logdet(S_q) - torch.logdet(S_p))
    return float(kl)
