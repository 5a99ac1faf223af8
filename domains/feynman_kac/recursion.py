r"""The exact infinite-particle limit of :func:`~.fkc.sample_fkc` on 1-D Gaussian experts.

With Gaussian experts :math:`q^k = N(m_k, v_k)` every data prediction is affine in :math:`x`, so the
library's move (any integrator) is an affine map :math:`x' = c_1 x + c_0 + s z` of the state and the
normal draw, and each node's log-weight increment is a quadratic in :math:`x`. The weighted law of
the particles, :math:`\pi_{i+1}(x') = \int \pi_i(x)\,e^{\Delta\log w_i(x)}\,N(x'; c_1x+c_0, s^2)\,dx`
(resampling does not change it as :math:`N\to\infty`), then stays an unnormalised Gaussian and is
propagated in closed form. The maps are read off the sampler's own step functions (evaluated at
:math:`x, z \in \{0, 1\}`), so this is the sampler's bias with no Monte Carlo error: the order
study of ``benchmarks/feynman_kac.py`` and the tests use it.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from sciffusion.schedules import check_ts, get_schedule
from sciffusion.testing import GaussianMixture

from .fkc import INTEGRATORS, Target, _move, _node_increment, noise_level


class _Quad:
    r"""The exponent :math:`-\tfrac12(P_{xx}x^2 + 2P_{xy}xy + P_{yy}y^2) + b_x x + b_y y + c`."""

    def __init__(self, pxx=0.0, pxy=0.0, pyy=0.0, bx=0.0, by=0.0, c=0.0):
        self.pxx, self.pxy, self.pyy, self.bx, self.by, self.c = pxx, pxy, pyy, bx, by, c

    def __add__(self, o):
        return _Quad(self.pxx + o.pxx, self.pxy + o.pxy, self.pyy + o.pyy, self.bx + o.bx, self.by + o.by,
                     self.c + o.c)

    def integrate_x(self, step):
        r""":math:`\int e^{(\cdot)}dx` as a function of y (returned in the x slot)."""
        if not self.pxx > 0:
            raise ValueError(f"step {step}: the weighted law is not integrable (its weights grow faster than "
                             "the particle density decays); the infinite-particle limit does not exist")
        return _Quad(pxx=self.pyy - self.pxy ** 2 / self.pxx, bx=self.by - self.pxy * self.bx / self.pxx,
                     c=self.c + 0.5 * self.bx ** 2 / self.pxx + 0.5 * math.log(2 * math.pi / self.pxx))


def _quadratic(f) -> _Quad:
    """The quadratic :math:`f(x)` read off at x = -1, 0, 1."""
    xs = torch.tensor([[-1.0], [0.0], [1.0]], dtype=torch.float64)
    fm, f0, fp = (float(v) for v in f(xs))
    return _Quad(pxx=-(fp + fm - 2 * f0), bx=0.5 * (fp - fm), c=f0)


def gaussian_recursion(means: Sequence[float], variances: Sequence[float], exponents: Sequence[float],
                       process, *, num_steps: int = 200, schedule: str = "logsnr", ts=None,
                       noise: float | str = "auto", integrator: str = "heun",
                       weight_rule: str | None = None) -> dict:
    r"""Mean, variance and :math:`\log Z` of the infinite-particle law that :func:`~.fkc.sample_fkc` returns
    for the target :math:`\prod_k N(m_k, v_k)_t^{a_k}`, with the same grid, noise and scheme arguments.

    Args:
        means, variances: the 1-D Gaussian experts' data means and variances.
        exponents: :math:`a_k` (sum > 0).
        process: the forward process.
        num_steps, schedule, ts, noise, integrator, weight_rule: as in :func:`~.fkc.sample_fkc`.

    Returns:
        ``{"mean", "var", "log_z", "exact_mean", "exact_var", "exact_log_z"}``; the exact values are
        those of the normalised target at ``ts[-1]`` (a Gaussian).

    Raises:
        ValueError: when a step's weighted law is not integrable (weights that grow like
            :math:`e^{cx^2}` faster than the density decays: infinite weight variance).
    """
    experts = [GaussianMixture.gaussian(torch.tensor([float(m)], dtype=torch.float64),
                                        torch.tensor([[float(v)]], dtype=torch.float64)) for m, v in zip(means, variances)]
    target = Target([e.denoiser(process) for e in experts], exponents)
    if integrator not in INTEGRATORS:
        raise ValueError(f"integrator must be one of {INTEGRATORS}, got {integrator!r}")
    weight_rule = weight_rule or ("trapezoid" if integrator == "heun" else "left")
    eta, A = noise_level(noise, target), target.total
    ts = check_ts(get_schedule(schedule)(process, num_steps) if ts is None else ts, process)
    n = len(ts) - 1

    def inc(i):
        def f(x):
            eps = [e.eps(x, ts[i]) for e in target.experts]
            return _node_increment(target, x, eps, None, None, None, ts, i, weight_rule)
        return _quadratic(f)

    s2 = process.prior_std() ** 2
    law = _Quad(pxx=A / s2, c=0.5 * ((1 - A) * math.log(2 * math.pi * s2) - math.log(A))
                - 0.5 * math.log(2 * math.pi * s2 / A))  # N(0, s^2/A) times the prior's log Z
    basis_x = torch.tensor([[0.0], [1.0], [0.0]], dtype=torch.float64)
    basis_z = torch.tensor([[0.0], [0.0], [1.0]], dtype=torch.float64)
    for i in range(n):
        law = law + inc(i)
        with torch.no_grad():
            preds = [e.predict(basis_x, ts[i]) for e in target.experts]
            out = _move(target, basis_x, [pr[0] for pr in preds], [pr[1] for pr in preds], None, None, i,
                        ts[i], ts[i + 1], eta, integrator, basis_z)[:, 0].tolist()
        c0, c1, s = out[0], out[1] - out[0], out[2] - out[0]
        v = s * s
        if v > 0:
            kern = _Quad(pxx=c1 * c1 / v, pxy=-c1 / v, pyy=1 / v, bx=-c1 * c0 / v, by=c0 / v,
                         c=-c0 * c0 / (2 * v) - 0.5 * math.log(2 * math.pi * v))
            law = (law + kern).integrate_x(i)
        else:  # a deterministic step: the law is pushed through x' = c1 x + c0
            law = _Quad(pxx=law.pxx / c1 ** 2, bx=law.bx / c1 + law.pxx * c0 / c1 ** 2,
                        c=law.c - law.bx * c0 / c1 - 0.5 * law.pxx * c0 ** 2 / c1 ** 2 - math.log(abs(c1)))
    if weight_rule == "trapezoid":
        law = law + inc(n)
    if not law.pxx > 0:
        raise ValueError("the final weighted law is not integrable")
    var = 1.0 / law.pxx
    log_z = law.c + 0.5 * law.bx ** 2 / law.pxx + 0.5 * math.log(2 * math.pi / law.pxx)
    # the exact target at ts[-1]: prod_k N(alpha m_k, alpha^2 v_k + sigma^2)^a_k
    a, sg = float(process.alpha(ts[-1])), float(process.sigma(ts[-1]))
    prec = sum(ak / (a * a * float(vk) + sg * sg) for ak, vk in zip(exponents, variances))
    lin = sum(ak * a * float(mk) / (a * a * float(vk) + sg * sg) for ak, mk, vk in zip(exponents, means, variances))
    const = sum(-0.5 * ak * ((a * float(mk)) ** 2 / (a * a * float(vk) + sg * sg)
                             + math.log(2 * math.pi * (a * a * float(vk) + sg * sg)))
                for ak, mk, vk in zip(exponents, means, variances))
    exact_log_z = const + 0.5 * lin ** 2 / prec + 0.5 * math.log(2 * math.pi / prec)
    return {"mean": law.bx * var, "var": var, "log_z": log_z, "exact_mean": lin / prec, "exact_var": 1 / prec,
            "exact_log_z": exact_log_z}


__all__ = ["gaussian_recursion"]
