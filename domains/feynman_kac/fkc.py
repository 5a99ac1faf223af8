r"""Feynman–Kac correctors (FKC) for continuous diffusion: annealing, products, guidance, reward tilts.

Skreta et al. (2025), "Feynman-Kac Correctors in Diffusion: Annealing, Guidance, and Product of
Experts". The derivation below is redone in the core's terms (time runs from data t=0 to noise
t=T; :math:`x_t = \alpha_t x_0 + \sigma_t\varepsilon`, :math:`\lambda_t = \log(\alpha_t/\sigma_t)`,
:math:`f = d\log\alpha_t/dt`, :math:`g^2 = -2\sigma_t^2\dot\lambda_t`).

**Target.** Experts :math:`q^k_t` (the noised marginals a pretrained denoiser has learned, all on
one process) with exponents :math:`a_k`, optionally tilted by a reward:

.. math:: p_t(x) \propto \tilde p_t(x) = \prod_k q^k_t(x)^{a_k}\,e^{\phi_t(x)},
          \qquad \phi_t = \beta_t\,r(x),\qquad A = \sum_k a_k > 0.

Annealing is one expert with :math:`a=\beta`; a product of experts :math:`a_k = 1`;
classifier-free guidance the geometric average :math:`a = (1-w, w)` of the unconditional and
conditional models. :math:`S = \sum_k a_k s_k` is the target score (:math:`s_k = \nabla\log q^k_t
= -\varepsilon_k/\sigma_t`) and :math:`\bar\varepsilon = \sum_k a_k\varepsilon_k = -\sigma_t S`.

**SDE family (paper Sec. 3, Props. 3.1–3.3).** In reverse time :math:`\tau = T - t` take

.. math:: dX = \Big[-f X + g^2\big(\tfrac{1+\eta}{2} S + \tfrac{\eta}{2}\nabla\phi\big)\Big]d\tau
          + \sqrt{\eta}\,g\,dW,\qquad \eta \ge 0 .

:math:`\eta = 1` is the *target-score* SDE (the reverse SDE with the target score);
:math:`\eta = 1/A` the *tempered-noise* SDE (for annealing: drift :math:`\tfrac{1+\beta}{2}g^2 s`,
noise :math:`g/\sqrt\beta`); :math:`\eta = 0` a weighted probability-flow ODE.

**Weights (Feynman–Kac).** Weighting a path by :math:`\exp\int G\,d\tau` makes the weighted law
follow :math:`\tilde p_\tau` when
:math:`G = \partial_\tau\log\tilde p + \nabla\cdot u + u\cdot\nabla\log\tilde p
- \tfrac{\eta g^2}{2}(\Delta\log\tilde p + \|\nabla\log\tilde p\|^2)`. Substituting each expert's
Fokker–Planck equation :math:`\partial_t\log q = -d f - f x\cdot s + \tfrac{g^2}{2}(\nabla\cdot s
+ \|s\|^2)` the divergences :math:`\nabla\cdot s_k` cancel *exactly because* the drift carries
:math:`\tfrac{1+\eta}{2}a_k s_k` (and :math:`\Delta\phi` cancels because it carries
:math:`\tfrac\eta2\nabla\phi`), leaving

.. math:: G = (A-1)\,d\,f + \tfrac{g^2}{2}\Big(\|S\|^2 - \sum_k a_k\|s_k\|^2\Big)
          + \partial_\tau\phi + \nabla\phi\cdot\big(-f x + \tfrac{g^2}{2}S\big),

which needs no divergence of a learned score and **does not depend on** :math:`\eta`. Over one step
:math:`t_i \to t_{i+1}` (noise to data, :math:`\Delta\lambda > 0`) the increment evaluated at a node
:math:`x` (time :math:`t_e`) is

.. math:: \Delta\log w = \Delta\lambda\Big(\|\bar\varepsilon\|^2 - \sum_k a_k\|\varepsilon_k\|^2\Big)
          - (A-1)\,d\,\Delta\log\alpha + (\beta_{i+1}-\beta_i)\,r(x)
          + \beta_e\nabla r\cdot\big(x\,\Delta\log\alpha - \sigma_e\bar\varepsilon\,\Delta\lambda\big),

and the default (``integrator="heun"``) takes the mean of its values at both ends of the step
(trapezoid in :math:`\lambda`).

**Why second order (issue 14).** The weights correct the *continuous* :math:`\eta`-SDE; whatever the
discrete move leaves out is not corrected. The first-order scheme (left-point weights, the
exponential move with :math:`\bar x_0` frozen over the step) has a bias :math:`O(h)`: on
:math:`N(0,1)\times N(0,1)` (exact variance 0.5, VP, 200 log-SNR steps) its infinite-particle law
has variance 0.456 at :math:`\eta = 1` and 0.420 at :math:`\eta = 3` (exact Gaussian recursion,
``benchmarks/feynman_kac.py``), and trapezoid weights alone change nothing, because the move's
own weak error is first order. For the Feynman–Kac semigroup :math:`e^{h(\mathcal L + G)}` a
one-step error :math:`O(h^3)` needs both a weak-order-2 move *and* a second-order quadrature of
:math:`\int G\,d\tau` along it: expanding :math:`\mathbb E[f(X_h)(1 + \tfrac h2(G(X_0)+G(X_h)) + \tfrac{h^2}{8}
(G(X_0)+G(X_h))^2)]` reproduces :math:`f + h(\mathcal L+G)f + \tfrac{h^2}{2}(\mathcal L+G)^2 f`
exactly when :math:`\mathbb E f(X_h)` is right to :math:`O(h^3)`. The Heun move below (exponential
stochastic Heun: predictor, data prediction at the predicted point, corrector with the same
noise) is weak order 2 for this additive-noise SDE, and the trapezoid rule is the quadrature;
measured: bias 0.0013 (:math:`\eta=1`) and 0.0077 (:math:`\eta=3`) at 200 steps on the example above,
slopes near 2 in the step size (``benchmarks/RESULTS.md``). Cost: two model evaluations per step
(plus one at the end), against one for the first-order scheme; at equal NFE the second-order
scheme is still far more accurate (0.4960 at 100 steps vs 0.456 at 200, same example).

In eps-form every term stays O(1) at every noise level. The x-independent term only enters the
normalising-constant estimate.

**Start.** With :math:`q^k_T \approx N(0, s^2)` (the process prior), :math:`p_T = N(0, s^2/A)`;
particles start there and :math:`\log Z` starts at :math:`\log\int N(0,s^2)^A`.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from tqdm.auto import tqdm

from sciffusion.samplers import ei_weights
from sciffusion.schedules import check_ts, get_schedule
from sciffusion.smc import SMCState, ess, gather, maybe_resample, normalize, resample
from sciffusion.utils import (batch_size, bcast, check_finite, check_resume, fingerprint, save_atomic,
                              tree_leaves, tree_map, tree_numel_per_sample)

NOISE_PRESETS = ("auto", "target_score", "tempered")
INTEGRATORS = ("heun", "exponential", "euler_maruyama")
WEIGHT_RULES = ("left", "trapezoid")


def _sum_per_sample(tree) -> torch.Tensor:
    r""":math:`\sum` of every non-batch entry of every leaf, float64 ``(B,)``."""
    return sum(leaf.double().flatten(1).sum(1) for leaf in tree_leaves(tree))


@dataclass
class Target:
    r"""The target :math:`p_t \propto \prod_k (q^k_t)^{a_k}\,e^{\beta_t r(x)}`.

    Build it with :func:`anneal`, :func:`product`, :func:`guidance` (or directly), and tilt it
    with :meth:`tilt`.

    Attributes:
        experts: denoisers (:class:`~sciffusion.denoisers.Denoiser`) on one process, of any
            parameterization.
        exponents: one real exponent per expert; their sum :math:`A` must be positive, otherwise
            :math:`\prod_k (q^k)^{a_k}` has no finite normaliser (it does not decay at infinity).
        reward: optional differentiable ``r(x) -> (B,)``.
        reward_scale: the final tilt :math:`\beta_{t_{min}}`.
        reward_schedule: optional ``t (float64 tensor) -> beta_t``; by default :math:`\beta_t`
            rises with the signal fraction :math:`\alpha_t^2/(\alpha_t^2+\sigma_t^2)` from 0 at
            the first grid time to ``reward_scale`` at the last.
    """

    experts: Sequence[Any]
    exponents: Sequence[float]
    reward: Callable | None = None
    reward_scale: float = 0.0
    reward_schedule: Callable | None = None

    def __post_init__(self):
        self.experts = tuple(self.experts)
        if not self.experts:
            raise ValueError("experts: need at least one denoiser")
        for k, e in enumerate(self.experts):
            if not (hasattr(e, "predict") and hasattr(e, "process")):
                raise TypeError(f"experts[{k}] must be a sciffusion Denoiser (got {type(e).__name__})")
        try:
            self.exponents = tuple(float(a) for a in self.exponents)
        except (TypeError, ValueError):
            raise TypeError(f"exponents must be real numbers, got {self.exponents!r}") from None
        if len(self.exponents) != len(self.experts):
            raise ValueError(f"exponents: need one per expert ({len(self.experts)}), got {len(self.exponents)}")
        if not all(math.isfinite(a) for a in self.exponents):
            raise ValueError(f"exponents must be finite, got {self.exponents}")
        if not self.total > 0:
            raise ValueError(f"exponents sum to {self.total:g}; the target prod_k q_k^a_k is improper "
                             "(not normalisable) unless sum_k a_k > 0")
        if len({e.process for e in self.experts}) > 1:  # processes compare by value
            names = sorted({repr(e.process) for e in self.experts})
            raise ValueError(f"experts must share one process, got {names}")
        if self.reward is not None and not callable(self.reward):
            raise TypeError("reward must be callable r(x) -> (B,)")
        if not math.isfinite(float(self.reward_scale)):
            raise ValueError(f"reward_scale must be finite, got {self.reward_scale}")

    @property
    def process(self):
        return self.experts[0].process

    @property
    def total(self) -> float:
        r""":math:`A = \sum_k a_k`."""
        return float(sum(self.exponents))

    def tilt(self, reward: Callable, scale: float, schedule: Callable | None = None) -> "Target":
        r"""A copy tilted by :math:`e^{\beta_t r(x)}` with :math:`\beta_{t_{min}} = ` ``scale``."""
        return Target(self.experts, self.exponents, reward, float(scale), schedule)


def anneal(denoiser, beta: float) -> Target:
    r""":math:`p_t \propto q_t^{\beta}` (inverse temperature ``beta`` > 0)."""
    if not float(beta) > 0:
        raise ValueError(f"beta must be positive (q^beta is improper otherwise), got {beta}")
    return Target((denoiser,), (float(beta),))


def product(*denoisers) -> Target:
    r"""Product of experts :math:`p_t \propto \prod_k q^k_t`."""
    return Target(denoisers, (1.0,) * len(denoisers))


def guidance(unconditional, conditional, w: float) -> Target:
    r"""Classifier-free guidance as a geometric average: :math:`p_t \propto q_t^{1-w}\,q_t(\cdot\mid c)^{w}`."""
    return Target((unconditional, conditional), (1.0 - float(w), float(w)))


def noise_level(noise: float | str, target: Target) -> float:
    r""":math:`\eta` from a preset or a number >= 0.

    Presets: ``target_score`` (1), ``tempered`` (:math:`1/A`) and ``auto`` (the default of
    :func:`sample_fkc` and the CLI): :math:`\eta = \min(\max(A, 1), 3)`, chosen per kind of target.

    * :math:`A \le 1` (guidance :math:`a = (1-w, w)` has :math:`A = 1`; a single model): the
      target-score SDE. Its stationary spread already matches the target (for a constant Gaussian
      :math:`q` the :math:`\eta`-SDE's stationary variance is :math:`\eta/((1+\eta)A-1)` of the data's,
      equal to :math:`1/A` for every :math:`\eta` when :math:`A = 1`), so more noise buys no lower
      weight variance, while the discretisation error grows with it: the drift
      :math:`\tfrac{1+\eta}2 g^2 S` and the injected variance :math:`\eta g^2 h` both scale the terms the
      step leaves out. This is why guidance at :math:`\eta = 3` was biased (issue 12: left-mode
      mass 0.0628 against 0.0795 at 200 first-order steps).
    * :math:`A > 1` (annealing :math:`\beta > 1`, products): the :math:`\eta = 1` SDE under-disperses
      (:math:`1/(2A-1)` against :math:`1/A`), so the weights must stretch a too-narrow cloud;
      :math:`\eta = A` brings the stationary variance to :math:`A^2/(A^2+A-1)` of the target's (0.8 at
      :math:`A = 2`) with weight variance markedly lower (``benchmarks/feynman_kac.py``), capped at 3
      because the bias grows with :math:`\eta`.

    With the default second-order scheme every choice is within Monte Carlo error at the default
    200 steps on the tested targets (``tests/domains/feynman_kac``, ``benchmarks/RESULTS.md``).
    """
    if isinstance(noise, str):
        if noise == "auto":
            return min(max(target.total, 1.0), 3.0)
        if noise == "target_score":
            return 1.0
        if noise == "tempered":
            return 1.0 / target.total
        raise ValueError(f"noise must be a number >= 0 or one of {NOISE_PRESETS}, got {noise!r}")
    eta = float(noise)
    if not (math.isfinite(eta) and eta >= 0):
        raise ValueError(f"noise (eta) must be a finite number >= 0, got {noise!r}")
    return eta


def combined_eps(target: Target, eps_list: Sequence[Any]) -> Any:
    r""":math:`\bar\varepsilon = \sum_k a_k\varepsilon_k`, the target's noise prediction (:math:`= -\sigma_t S`)."""
    out = tree_map(lambda e: target.exponents[0] * e.double(), eps_list[0])
    for a, e in zip(target.exponents[1:], eps_list[1:]):
        out = tree_map(lambda o, ei: o + a * ei.double(), out, e)
    return out


def log_weight_increment(target: Target, x: Any, eps_list: Sequence[Any], t, t_next,
                         reward_terms: tuple | None = None, t_eval=None) -> torch.Tensor:
    r"""FKC log-weight increment over one step :math:`t \to t_{next}` (module docstring, :math:`\Delta\log w`).

    Args:
        target: the :class:`Target`.
        x: particles at ``t`` (tensor or tuple/dict state).
        eps_list: each expert's :math:`\varepsilon_k(x, t)`.
        t, t_next: the step's times (float64 scalars), ``t_next < t``.
        reward_terms: ``(r, grad_r, beta_eval, beta_next - beta_t)`` for a tilted target, else
            ``None`` (``beta_eval`` is :math:`\beta` at the evaluation time).
        t_eval: the time at which ``x`` and ``eps_list`` were evaluated (default ``t``; the
            trapezoid rule also evaluates at ``t_next``).

    Returns:
        float64 ``(B,)``; it does not depend on the SDE's noise level :math:`\eta`.

    Shapes:
        x, eps_k: ``(B, ...)`` -> ``(B,)``.
    """
    p = target.process
    t, t_next = torch.as_tensor(t, dtype=torch.float64), torch.as_tensor(t_next, dtype=torch.float64)
    d_lam = tree_map(lambda a, b: b - a, p.lam(t), p.lam(t_next))
    d_log_alpha = tree_map(lambda a, b: b - a, p.log_alpha(t), p.log_alpha(t_next))
    eps_bar = combined_eps(target, eps_list)
    quad = tree_map(lambda e, dl: dl * e.pow(2), eps_bar, d_lam)
    inc = _sum_per_sample(quad)
    for a, e in zip(target.exponents, eps_list):
        inc = inc - a * _sum_per_sample(tree_map(lambda ei, dl: dl * ei.double().pow(2), e, d_lam))
    # (A - 1) d dlog(alpha): x-independent, enters only log Z
    dims = [math.prod(leaf.shape[1:]) for leaf in tree_leaves(x)]
    const = sum(n * float(dla) for n, dla in zip(dims, tree_leaves(d_log_alpha)))
    inc = inc - (target.total - 1.0) * const
    if reward_terms is not None:
        r, grad_r, beta_t, d_beta = reward_terms
        sig = p.sigma(t if t_eval is None else torch.as_tensor(t_eval, dtype=torch.float64))
        flow = tree_map(lambda xi, ei, dla, dl, s: xi.double() * dla - s * ei * dl, x, eps_bar,
                        d_log_alpha, d_lam, sig)
        inc = inc + d_beta * r.double() + beta_t * _sum_per_sample(
            tree_map(lambda gi, fi: gi.double() * fi, grad_r, flow))
    return inc


def _reward_and_grad(reward: Callable, x: Any) -> tuple[torch.Tensor, Any]:
    r"""``r(x)`` and :math:`\nabla_x r` by autograd (the reward must be differentiable)."""
    with torch.enable_grad():
        xg = tree_map(lambda v: v.detach().double().requires_grad_(True), x)
        r = reward(xg)
        if not isinstance(r, torch.Tensor) or r.shape != (batch_size(x),):
            raise ValueError(f"reward must return a tensor of shape ({batch_size(x)},), got "
                             f"{tuple(r.shape) if isinstance(r, torch.Tensor) else type(r).__name__}")
        grads = torch.autograd.grad(r.sum(), tree_leaves(xg), allow_unused=True)
    grads = [torch.zeros_like(v) if gr is None else gr for v, gr in zip(tree_leaves(xg), grads)]
    it = iter(grads)
    return r.detach(), tree_map(lambda _: next(it), xg)


def _reward_schedule(target: Target, ts: torch.Tensor):
    r""":math:`\beta_t` on the grid: the user's schedule, or the signal fraction rescaled to [0, scale]."""
    if target.reward is None:
        return None
    if target.reward_schedule is not None:
        return torch.stack([torch.as_tensor(target.reward_schedule(t), dtype=torch.float64) for t in ts])
    lam = target.process.lam(ts)
    lam = tree_leaves(lam)[0] if not isinstance(lam, torch.Tensor) else lam
    frac = torch.sigmoid(2 * lam)
    return target.reward_scale * (frac - frac[0]) / (frac[-1] - frac[0])


def _check_finite_tree(tree, what: str, step: int, t: float) -> None:
    for leaf in tree_leaves(tree):
        if not torch.isfinite(leaf).all():
            raise FloatingPointError(f"FKC: {what} is NaN or infinite at step {step} (t={t:.4g}); the "
                                     "log-weights would be NaN; check the model, the reward and the grid")


def _in_window(window, t: float) -> bool:
    return window is None or (window[0] <= t <= window[1])


def _check_window(window, name: str):
    if window is None:
        return None
    if len(window) != 2 or not float(window[0]) <= float(window[1]):
        raise ValueError(f"{name} must be a pair (t_lo, t_hi) with t_lo <= t_hi, got {window!r}")
    return float(window[0]), float(window[1])


@dataclass
class FKCResult:
    r"""Weighted particles and diagnostics returned by :func:`sample_fkc`.

    Attributes:
        x: particles at the last grid time, flat state ``(G*N, ...)`` (group-major).
        log_w: ``(G, N)`` log-weights carried since the last resampling (float64).
        log_z: ``(G,)`` estimate of :math:`\log\int\tilde p_{t_{min}}` (the target's normaliser).
        ts: the time grid.
        ess: ``(num_steps,)`` mean ESS over groups after each reweighting, before resampling.
        min_ess: ``(num_steps,)`` the smallest group's ESS at the same points.
        resample_steps: steps at which any group resampled.
        num_resampled: ``(num_steps,)`` how many groups resampled at each step.
        nfe: model evaluations (all experts).
        eta: the SDE noise level used.
        lineages: ``(num_steps,)`` surviving lineages after each step: how many distinct starting
            particles the current particles descend from (mean over groups). Per-step ESS can stay
            near N while repeated resampling collapses the genealogy; this shows the collapse
            (N without resampling; non-increasing).
    """

    x: Any
    log_w: torch.Tensor
    log_z: torch.Tensor
    ts: torch.Tensor
    ess: torch.Tensor
    min_ess: torch.Tensor
    resample_steps: list = field(default_factory=list)
    num_resampled: torch.Tensor | None = None
    nfe: int = 0
    eta: float = 1.0
    lineages: torch.Tensor | None = None

    @property
    def num_groups(self) -> int:
        return self.log_w.shape[0]

    @property
    def num_particles(self) -> int:
        return self.log_w.shape[1]

    @property
    def num_resampling_events(self) -> int:
        """Number of steps at which at least one group resampled."""
        return len(self.resample_steps)

    def weights(self) -> torch.Tensor:
        """Normalised weights ``(G, N)``."""
        return normalize(self.log_w)

    def expectation(self, fn: Callable) -> torch.Tensor:
        r"""Self-normalised estimate :math:`\sum_i w_i f(x_i)` per group, shape ``(G, ...)``."""
        vals = fn(self.x)
        vals = vals.reshape(self.num_groups, self.num_particles, *vals.shape[1:]).double()
        w = self.weights()
        return (w.reshape(*w.shape, *([1] * (vals.ndim - 2))) * vals).sum(1)

    def samples(self, generator: torch.Generator | None = None) -> Any:
        """One particle per group drawn from its final weights: ``(G, ...)``."""
        pick = torch.multinomial(self.weights(), 1, generator=generator)  # (G, 1)
        flat = pick[:, 0] + self.num_particles * torch.arange(self.num_groups)
        return tree_map(lambda v: v[flat.to(v.device)], self.x)

    def resampled(self, scheme: str = "systematic", generator: torch.Generator | None = None) -> Any:
        """All ``G*N`` particles after one final resampling (equal weights)."""
        return gather(self.x, resample(self.log_w, scheme, generator))

    def plot_diagnostics(self):
        """Figure: ESS/N against time with the resampling events, and cumulative event count."""
        from .diagnostics import plot_diagnostics

        return plot_diagnostics(self)


def sample_fkc(target: Target, x_or_shape: Any, *, num_particles: int, num_steps: int = 200,
               schedule: str = "logsnr", ts: Any = None, noise: float | str = "auto",
               integrator: str = "heun", weight_rule: str | None = None, correct: bool = True, threshold: float = 0.5,
               scheme: str = "systematic", resample_window: tuple | None = None,
               correction_window: tuple | None = None, warn_ess: float | None = 0.01,
               log_weights: torch.Tensor | None = None, checkpoint: Any = None, checkpoint_every: int = 100,
               generator: torch.Generator | None = None, callback: Callable | None = None,
               progress: bool = False, dtype=torch.float32, device=None) -> FKCResult:
    r"""Feynman–Kac corrected SMC sampling of a :class:`Target` (paper Alg. 1).

    Every step :math:`t_i \to t_{i+1}`: evaluate each expert at :math:`x_i`; multiply the weights
    by :math:`e^{\Delta\log w}` (module docstring; with the default trapezoid rule the node
    :math:`x_i` closes the previous interval and opens the next); resample the groups whose ESS fell
    below ``threshold * N`` (reweight -> resample -> move, so that children of one parent spread
    apart in the move); move every particle with the :math:`\eta`-SDE. With
    :math:`\bar\varepsilon = (A x - \alpha\bar x_0)/\sigma`, :math:`\bar x_0 = \sum_k a_k \hat x_0^k`,
    the SDE is linear in x up to :math:`\bar x_0`, and its linear part is integrated exactly
    (:math:`\kappa = (1+\eta)A`, :math:`h = \lambda_{i+1}-\lambda_i`, :func:`_ei_step`):

    .. math:: x_{i+1} = \tfrac{\alpha_{i+1}}{\alpha_i}e^{-\kappa h}x_i
              + (1+\eta)\,\alpha_{i+1}\int_0^h e^{-\kappa(h-u)}\bar x_0(u)\,du
              + \sigma_{i+1}\sqrt{2\eta\,\tfrac{e^{(2-2\kappa)h}-1}{2-2\kappa}}\,z .

    ``exponential`` freezes :math:`\bar x_0(u) = \bar x_0(x_i)` (one expert, :math:`\eta = 1`: the
    first-order SDE-DPM-Solver++ step). ``heun`` (default) first takes that step to a predictor
    :math:`\tilde x_{i+1}`, evaluates :math:`\bar x_0(\tilde x_{i+1}, t_{i+1})`, and integrates the line through
    the two data predictions exactly (weights of :func:`sciffusion.samplers.ei_weights`), with the
    same :math:`z`: weak order 2 (module docstring). The reward drift is folded into each
    :math:`\bar x_0` as :math:`\tfrac{\eta}{1+\eta}\tfrac{\sigma^2}{\alpha}\beta\nabla r` at its node.
    Treating the whole :math:`A`-fold score stiffness exactly matters for annealing (:math:`A=\beta`):
    an eps-form step is unstable near :math:`(1+\eta)A\,h \approx 2`. ``euler_maruyama`` is the
    plain Euler–Maruyama step of the same SDE.

    **Exact at the default settings** means: at the default 200 log-SNR steps the scheme's bias
    is below the Monte Carlo error of thousands of particles; the tests check the error within
    4 standard errors (from independent groups) on exact annealed, product, guided and masked
    targets, and ``benchmarks/RESULTS.md`` gives the step-count convergence. It costs 2 NFE per
    step (``nfe = (2 * num_steps + 1) * len(experts)``).

    Args:
        target: what to sample.
        x_or_shape: a shape ``(G, ...)`` (``G`` = number of samples, one group of ``num_particles``
            each), or a starting state of batch ``G * num_particles`` (group-major) at ``ts[0]``.
            Starting from a shape draws :math:`N(0, s^2/A)`, the target at the prior.
        num_particles: particles per group ``N`` (>= 1).
        num_steps, schedule, ts: the time grid (as in :func:`sciffusion.samplers.sample`).
        noise: the SDE's :math:`\eta`: ``"auto"`` (default: :math:`\min(\max(A,1),3)`, per kind of
            target; see :func:`noise_level` for why), ``"target_score"`` (1), ``"tempered"``
            (:math:`1/A`) or a number. The weights are the same for every :math:`\eta`, but their
            variance is not: for :math:`A > 1` the target-score and especially the tempered SDE
            under-disperse (for a constant Gaussian :math:`q` their stationary variances are
            :math:`1/(2A-1)` and :math:`1/A^2` of the data's, against :math:`1/A` for the target), so the
            weights must stretch a too-narrow cloud and become heavy-tailed; :math:`\eta > 1` moves
            the SDE towards Langevin dynamics on :math:`p_t` (variance :math:`\eta/((1+\eta)A-1) \to 1/A`).
            The discretisation error grows with :math:`\eta`, which is why ``auto`` caps it.
        integrator: ``heun`` (default, second order, 2 NFE per step), ``exponential`` (the
            first-order scheme earlier versions used by default, 1 NFE per step) or
            ``euler_maruyama``.
        weight_rule: ``trapezoid`` (the mean of both ends; reuses the next step's evaluation, one
            extra NFE at the end) or ``left`` (:math:`G` at the start of each step). ``None``
            (default): ``trapezoid`` for ``heun``, ``left`` otherwise (the earlier behaviour).
        correct: ``False`` runs the same SDE with no weights and no resampling (the uncorrected
            sampler, for comparison at equal NFE).
        threshold: resample a group when its ESS < ``threshold * N`` (1.0: every step; 0: never).
        scheme: resampling scheme of :func:`sciffusion.smc.resample`.
        resample_window: ``(t_lo, t_hi)``; resampling only at times inside it (weights are carried
            and stay exact outside it).
        correction_window: ``(t_lo, t_hi)``; weights are accumulated only inside it. Anything
            short of the full grid leaves the target uncorrected outside the window (biased; for
            ablations).
        warn_ess: warn once (``RuntimeWarning``) if some group's ESS fell below ``warn_ess * N``.
        log_weights: optional starting log-weights ``(G, N)`` or ``(G*N,)``: the importance weights
            :math:`\log \tilde p_{T}(x) - \log \pi(x)` of a starting state drawn from a proposal
            :math:`\pi`, when the experts' noised density at ``ts[0]`` is known (e.g. exact mixtures)
            and :math:`N(0, s^2/A)` is not exact there. They enter ``log_z`` as well.
        generator: the only source of randomness.
        callback: ``callback(i, t_next, x, state)`` after every step.
        checkpoint: optional file path. The run state (particles, weights, log Z, diagnostics, the
            generator's state, the step) is written there atomically every ``checkpoint_every`` steps
            and at the end; a call whose checkpoint file exists resumes from it and finishes exactly
            as the uninterrupted run would (same particles, bit for bit). Needs ``generator``; the
            file records a fingerprint of everything that changes the result (grid, particles, experts,
            exponents, reward and its scale and schedule, noise, integrator, weights, threshold,
            resampling scheme and window, correction window, starting log-weights and state) and
            refuses a resume with different ones, naming the setting
            (:func:`sciffusion.utils.check_resume`).
        checkpoint_every: steps between checkpoints (>= 1).

    Returns:
        :class:`FKCResult`.

    Shapes:
        x: ``(G*N, ...)``; log_w: ``(G, N)``.
    """
    if not isinstance(target, Target):
        raise TypeError(f"target must be a Target (use anneal/product/guidance), got {type(target).__name__}")
    if not isinstance(num_particles, int) or isinstance(num_particles, bool) or num_particles < 1:
        raise ValueError(f"num_particles must be a positive int, got {num_particles!r}")
    if integrator not in INTEGRATORS:
        raise ValueError(f"integrator must be one of {INTEGRATORS}, got {integrator!r}")
    if weight_rule is None:
        weight_rule = "trapezoid" if integrator == "heun" else "left"
    if weight_rule not in WEIGHT_RULES:
        raise ValueError(f"weight_rule must be one of {WEIGHT_RULES} or None, got {weight_rule!r}")
    if warn_ess is not None and not 0 <= warn_ess <= 1:
        raise ValueError(f"warn_ess must lie in [0, 1] (a fraction of N), got {warn_ess}")
    resample_window = _check_window(resample_window, "resample_window")
    correction_window = _check_window(correction_window, "correction_window")
    eta = noise_level(noise, target)
    p = target.process
    A = target.total
    N = num_particles
    if ts is None:
        if hasattr(p, "processes") and schedule in ("logsnr", "logsnr_uniform", "karras"):
            schedule = "time_uniform"  # a joint process has one lambda per component
        ts = get_schedule(schedule)(p, num_steps)
    ts = check_ts(ts, p)
    x = _initial_state(p, x_or_shape, N, A, generator, dtype, device)
    B = batch_size(x)
    if B % N:
        raise ValueError(f"the starting state has batch {B}, not a multiple of num_particles={N}")
    G = B // N
    state = SMCState.init(G, N, device=tree_leaves(x)[0].device)
    if log_weights is not None:
        lw = torch.as_tensor(log_weights, dtype=torch.float64, device=state.log_w.device)
        if lw.numel() != G * N:
            raise ValueError(f"log_weights must have G*N = {G * N} entries ((G, N) or (G*N,)), "
                             f"got shape {tuple(lw.shape)}")
        if torch.isnan(lw).any() or (lw == float("inf")).any() or \
                not torch.isfinite(lw.reshape(G, N)).any(1).all():
            raise ValueError("log_weights must be finite or -inf (zero weight), with a finite "
                             "entry in every group; got NaN, +inf or an all -inf group")
        state.reweight(lw.reshape(G, N))
    if _is_shape(x_or_shape):
        state.log_z = state.log_z + _log_z_prior(p, x, A)
    betas = _reward_schedule(target, ts)
    nfe0 = [e.nfe for e in target.experts]
    ess_hist, min_hist, n_res, lineages = [], [], [], []
    root = torch.arange(B, device=state.log_w.device)  # each particle's starting ancestor
    start, nfe_before = 0, 0
    settings = None
    if checkpoint is not None:
        if generator is None:
            raise ValueError("checkpoint needs an explicit generator, so that a resumed run continues "
                             "the same random stream")
        if not isinstance(checkpoint_every, int) or checkpoint_every < 1:
            raise ValueError(f"checkpoint_every must be a positive int, got {checkpoint_every!r}")
        settings = fingerprint(
            ts=ts, num_particles=N, groups=G, experts=list(target.experts), exponents=list(target.exponents),
            reward=target.reward, reward_scale=float(target.reward_scale), reward_schedule=target.reward_schedule,
            eta=eta, integrator=integrator, weight_rule=weight_rule, correct=correct, threshold=float(threshold),
            scheme=scheme, resample_window=resample_window, correction_window=correction_window,
            log_weights=None if log_weights is None else torch.as_tensor(log_weights, dtype=torch.float64),
            start=x_or_shape if _is_shape(x_or_shape) else x, dtype=dtype)
        if Path(checkpoint).exists():
            ck = torch.load(checkpoint, weights_only=False)
            check_resume(ck.get("settings") if isinstance(ck, dict) else None, settings,
                         what=f"checkpoint {checkpoint}")
            x, state, root, generator_state = ck["x"], ck["state"], ck["root"], ck["generator"]
            ess_hist, min_hist, n_res, lineages = ck["ess"], ck["min_ess"], ck["num_resampled"], ck["lineages"]
            start, nfe_before = ck["step"], ck["nfe"]
            generator.set_state(generator_state)

    def save(step):
        save_atomic({"settings": settings, "x": x, "state": state, "root": root, "generator": generator.get_state(),
                     "ess": ess_hist, "min_ess": min_hist, "num_resampled": n_res, "lineages": lineages,
                     "step": step, "nfe": nfe_before + sum(e.nfe - n0 for e, n0 in zip(target.experts, nfe0))},
                    checkpoint)

    for i in tqdm(range(start, len(ts) - 1), desc="fkc", disable=not progress, leave=False,
                  initial=start, total=len(ts) - 1):
        t, tn = ts[i], ts[i + 1]
        with torch.no_grad():
            preds = [e.predict(x, t) for e in target.experts]
        x0_list, eps_list = [pr[0] for pr in preds], [pr[1] for pr in preds]
        for k, e in enumerate(preds):
            _check_finite_tree(e, f"expert {k}'s output", i, float(t))
        r = grad_r = None
        if betas is not None:
            r, grad_r = _reward_and_grad(target.reward, x)
            _check_finite_tree((r, grad_r), "the reward or its gradient", i, float(t))
        if correct and _in_window(correction_window, float(t)):
            inc = _node_increment(target, x, eps_list, r, grad_r, betas, ts, i, weight_rule)
            _check_finite_tree(inc, "the log-weight increment", i, float(t))
            state.reweight(inc)
        e = ess(state.log_w)
        ess_hist.append(float(e.mean()))
        min_hist.append(float(e.min()))
        resampled = torch.zeros(G, dtype=torch.bool)
        if correct and _in_window(resample_window, float(t)):
            # the step's model outputs travel with their particles: no second evaluation
            carried = (x, x0_list, eps_list, root) if grad_r is None else (x, x0_list, eps_list, root, grad_r)
            carried, state, resampled = maybe_resample(carried, state, step=i, threshold=threshold,
                                                       scheme=scheme, generator=generator)
            x, x0_list, eps_list, root = carried[:4]
            grad_r = carried[4] if grad_r is not None else None
        n_res.append(int(resampled.sum()))
        # lineages change only when a group resampled: no sort on the other steps
        lineages.append(root.unique().numel() / G if resampled.any() or not lineages else lineages[-1])
        z = p.noise_like(x, generator) if eta > 0 else tree_map(torch.zeros_like, x)
        x = _move(target, x, x0_list, eps_list, grad_r, betas, i, t, tn, eta, integrator, z)
        check_finite(x, i, "fkc")
        if callback is not None:
            callback(i, tn, x, state)
        if checkpoint is not None and ((i + 1) % checkpoint_every == 0 or i + 1 == len(ts) - 1):
            save(i + 1)
    n = len(ts) - 1
    if correct and weight_rule == "trapezoid" and _in_window(correction_window, float(ts[n - 1])):
        # close the last interval at t_min: one more evaluation of every expert
        with torch.no_grad():
            eps_list = [e.eps(x, ts[n]) for e in target.experts]
        _check_finite_tree(eps_list, "an expert's output", n, float(ts[n]))
        r = grad_r = None
        if betas is not None:
            r, grad_r = _reward_and_grad(target.reward, x)
        state.reweight(_node_increment(target, x, eps_list, r, grad_r, betas, ts, n, weight_rule))
    nfe = nfe_before + sum(e.nfe - n0 for e, n0 in zip(target.experts, nfe0))
    min_ess = torch.tensor(min_hist, dtype=torch.float64)
    if correct and warn_ess is not None and len(min_hist) and float(min_ess.min()) < warn_ess * N:
        j = int(min_ess.argmin())
        warnings.warn(f"FKC weight degeneracy: a group's ESS fell to {float(min_ess[j]):.1f} of {N} "
                      f"particles at step {j} (t={float(ts[j]):.4g}); use more particles, more steps, "
                      "or resample more often (higher threshold)", RuntimeWarning, stacklevel=2)
    return FKCResult(x=x, log_w=state.log_w, log_z=state.log_normalizer(), ts=ts,
                     ess=torch.tensor(ess_hist, dtype=torch.float64), min_ess=min_ess,
                     resample_steps=list(state.resample_steps),
                     num_resampled=torch.tensor(n_res), nfe=nfe, eta=eta,
                     lineages=torch.tensor(lineages, dtype=torch.float64))


def _node_increment(target, x, eps_list, r, grad_r, betas, ts, i, rule):
    r""":math:`\Delta\log w` contributed by the evaluation at node ``i`` (time ``ts[i]``).

    ``left``: the whole interval :math:`[t_i, t_{i+1}]`. ``trapezoid``: half of each neighbouring
    interval, so every interval gets the mean of its two end values (second order in the step
    for the weight integral; the last node costs one extra model evaluation)."""
    n = len(ts) - 1

    def piece(a, b, w):
        rt = None if r is None else (r, grad_r, float(betas[i]), float(betas[b] - betas[a]))
        return w * log_weight_increment(target, x, eps_list, ts[a], ts[b], rt, t_eval=ts[i])

    if rule == "left":
        return piece(i, i + 1, 1.0)
    inc = 0.0
    if i < n:
        inc = inc + piece(i, i + 1, 0.5)
    if i > 0:
        inc = inc + piece(i - 1, i, 0.5)
    return inc


def _is_shape(obj) -> bool:
    return isinstance(obj, (tuple, list)) and len(obj) > 0 and all(isinstance(v, int) for v in obj)


def _initial_state(p, x_or_shape, N, A, generator, dtype, device):
    """Particles from :math:`N(0, s^2/A)` (shape given) or the given state (checked)."""
    if _is_shape(x_or_shape):
        shape = tuple(x_or_shape)
        if shape[0] < 1:
            raise ValueError(f"x_or_shape: need at least one group, got shape {shape}")
        if hasattr(p, "processes"):
            raise TypeError("for a JointProcess pass the starting tuple state itself")
        return p.prior_sample((shape[0] * N,) + shape[1:], generator, dtype, device) / math.sqrt(A)
    if isinstance(x_or_shape, (torch.Tensor, tuple, list, dict)):
        for leaf in tree_leaves(x_or_shape):
            if not isinstance(leaf, torch.Tensor) or not leaf.is_floating_point():
                raise TypeError("the starting state must be floating-point tensors")
        return x_or_shape
    raise TypeError(f"x_or_shape must be a shape tuple or a state, got {type(x_or_shape).__name__}")


def _log_z_prior(p, x, A) -> float:
    r""":math:`\log\int N(x;0,s^2)^A dx = \tfrac d2[(1-A)\log(2\pi s^2) - \log A]` (start of log Z)."""
    s2 = p.prior_std() ** 2
    d = tree_numel_per_sample(x)
    return 0.5 * d * ((1.0 - A) * math.log(2 * math.pi * s2) - math.log(A))


def _phi(k: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """:math:`(e^{kh}-1)/k`, continuous at :math:`k = 0` (where it is :math:`h`)."""
    small = k.abs() < 1e-12
    return torch.where(small, h, torch.expm1(k * h) / torch.where(small, torch.ones_like(k), k))


def _move(target, x, x0_list, eps_list, grad_r, betas, i, t, tn, eta, integrator, z):
    """One move ``t -> tn`` of every particle with the given standard normal draw ``z`` (see
    :func:`sample_fkc`); ``heun`` evaluates every expert once more, at the predicted point."""
    p, A = target.process, target.total
    beta_i = 0.0 if betas is None else float(betas[i])
    if integrator == "euler_maruyama":
        return _em_step(p, x, combined_eps(target, eps_list), grad_r, beta_i, t, tn, eta, z)
    m0 = _fold_reward(p, combined_eps(target, x0_list), grad_r, beta_i, t, eta, A)
    x_pred = _ei_step(p, x, t, tn, [m0], A, eta, z)
    if integrator == "exponential":
        return x_pred
    check_finite(x_pred, i, "fkc (predictor)")
    with torch.no_grad():
        x0_pred = [e.x0(x_pred, tn) for e in target.experts]
    _check_finite_tree(x0_pred, "an expert's output at the predictor", i, float(tn))
    m1 = combined_eps(target, x0_pred)
    if betas is not None:
        _, g_pred = _reward_and_grad(target.reward, x_pred)
        _check_finite_tree(g_pred, "the reward gradient at the predictor", i, float(tn))
        m1 = _fold_reward(p, m1, g_pred, float(betas[i + 1]), tn, eta, A)
    return _ei_step(p, x, t, tn, [m0, m1], A, eta, z)


def _fold_reward(p, x0_bar, grad_r, beta, t, eta, A):
    r""":math:`\bar x_0 + \tfrac{\eta}{1+\eta}\tfrac{\sigma_t^2}{\alpha_t}\beta\nabla r`: the reward drift
    :math:`\tfrac\eta2 g^2\beta\nabla r` written as a shift of the frozen data prediction."""
    if grad_r is None:
        return x0_bar
    k = eta / (1.0 + eta)
    return tree_map(lambda m, gr, s, a: m + k * (s * s / a) * beta * gr.double(), x0_bar, grad_r,
                    p.sigma(t), p.alpha(t))


def _ei_step(p, x, t, tn, x0_nodes, A, eta, z):
    r"""The exponential-integrator step of the :math:`\eta`-SDE (the SDE-DPM-Solver++ step generalised to
    the target's :math:`A` and the noise level :math:`\eta`), :math:`\kappa = (1+\eta)A`, :math:`h = \lambda_{t_n}-\lambda_t`:

    .. math:: x' = \tfrac{\alpha'}{\alpha}e^{-\kappa h}x + (1+\eta)\,\alpha'\sum_j w_j\,\bar x_0^{(j)}
              + \sigma'\sqrt{2\eta\,\tfrac{e^{(2-2\kappa)h}-1}{2-2\kappa}}\,z,

    where :math:`\sum_j w_j P(r_j h) = \int_0^h e^{-\kappa(h-u)}P(u)du` for the polynomial through the
    nodes (``x0_nodes`` at :math:`r = 0`, or at :math:`r = 0, 1`: :func:`sciffusion.samplers.ei_weights`).
    One node: :math:`(1+\eta)w_0 = (1-e^{-\kappa h})/A`; for :math:`\eta = A = 1` this is the core's
    first-order SDE-DPM-Solver++ step (DDPM's posterior)."""
    kappa = (1.0 + eta) * A
    nodes = [0.0, 1.0][:len(x0_nodes)]

    def one(xi, zi, la, ls, lan, lsn, *ms):
        la, ls, lan, lsn = float(la), float(ls), float(lan), float(lsn)
        h = (lan - lsn) - (la - ls)
        w = ei_weights(nodes, h, -kappa)
        out = xi * math.exp(lan - la - kappa * h)
        for wj, m in zip(w, ms):
            out = out + float((1.0 + eta) * math.exp(lan) * wj) * m.to(xi.dtype)
        if eta > 0:
            v = float(_phi(torch.tensor(2.0 - 2.0 * kappa, dtype=torch.float64), torch.tensor(h, dtype=torch.float64)))
            out = out + math.exp(lsn) * math.sqrt(max(2.0 * eta * v, 0.0)) * zi
        return out

    return tree_map(one, x, z, p.log_alpha(t), p.log_sigma(t), p.log_alpha(tn), p.log_sigma(tn), *x0_nodes)


def _em_step(p, x, eps_bar, grad_r, beta, t, tn, eta, z):
    r"""One Euler–Maruyama step of the :math:`\eta`-SDE (drift :math:`c\,g^2 S + \tfrac\eta2 g^2\beta\nabla r`,
    :math:`c = \tfrac{1+\eta}{2}`)."""
    c = 0.5 * (1.0 + eta)
    sig = p.sigma(t)
    if grad_r is None:
        e_d = tree_map(lambda e: c * e, eps_bar)
    else:
        e_d = tree_map(lambda e, gr, s: c * e - 0.5 * eta * s * beta * gr.double(), eps_bar, grad_r, sig)
    dt = tn - t
    return tree_map(lambda xi, ei, zi, f, g2, s: xi + (bcast(f, xi) * xi + bcast(g2 / s, xi) * ei.to(xi.dtype))
                    * dt.to(xi.dtype) + bcast((eta * g2 * -dt).sqrt(), xi) * zi,
                    x, e_d, z, p.f(t), p.g2(t), sig)


__all__ = ["Target", "anneal", "product", "guidance", "noise_level", "combined_eps",
           "log_weight_increment", "sample_fkc", "FKCResult"]
