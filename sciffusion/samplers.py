"""Samplers: plain functions ``sample_<name>(denoiser, x, ts, *, generator=None, callback=None, ...)``.

Every sampler integrates from ``ts[0]`` (noise) to ``ts[-1]`` (data) and is written only in
terms of the process's :math:`\\alpha_t, \\sigma_t, \\lambda_t = \\log(\\alpha_t/\\sigma_t), f(t), g(t)^2`
and the denoiser's x0 / eps / score / velocity, so one implementation serves VP, sub-VP, VE,
EDM and Linear. Each is registered with its order and model evaluations per step as data
(:data:`SAMPLERS`), which the order tests read. ``callback(i, t, x)`` is called after every step.
A NaN or infinity in the state stops a sampler with the step at which it appeared.

=================  =====  ========  ==========  =============================================
name               order  NFE/step  stochastic  method
=================  =====  ========  ==========  =============================================
euler_maruyama     1      1         yes         reverse SDE, Euler–Maruyama (weak order)
pc                 1      2         yes         EM predictor + Langevin corrector (snr rule)
s4                 1      1         yes         GDSS Alg. 2: Langevin + Strang split, one score
euler              1      1         no          PF-ODE, Euler in t
heun               2      2         no          PF-ODE, Heun in t (Karras Alg. 1)
dopri5             5      adaptive  no          PF-ODE, torchdiffeq Dormand–Prince
ddim               1      1         no          DDIM (``eta>0``: stochastic, weak order 1)
dpm_solver_1       1      1         no          DPM-Solver-1 (= DDIM), eps prediction
dpm_solver_2       2      2         no          DPM-Solver-2 singlestep, r1 = 1/2
dpm_solver_3       3      3         no          DPM-Solver-3 singlestep, r1 = 1/3, r2 = 2/3
dpmpp_2m           2      1         no          DPM-Solver++(2M), x0 prediction, multistep
dpmpp_2m_sde       1      1         yes         SDE-DPM-Solver++(2M) (weak order)
dpmpp_3m           3      1 (+2)    no          DPM-Solver++ 3rd-order multistep, derived here
unipc              3      1         no          UniPC, predictor order 2 (default) + UniC
unipc_1            2      1         no          UniP-1 + UniC-1
unipc_2            3      1         no          UniP-2 + UniC-2
unipc_3            3      1         no          UniP-3 + UniC-3 (warm-up step limits it to 3)
deis_1             1      1         no          DEIS, Adams–Bashforth 1 in rho = sigma/alpha (= DDIM)
deis_2             2      1         no          DEIS, Adams–Bashforth 2 in rho
deis_3             3      1 (+2)    no          DEIS, Adams–Bashforth 3 in rho, third-order start
=================  =====  ========  ==========  =============================================

(The table is checked against :data:`SAMPLERS` by the tests; "(+2)" is ``extra_nfe``.) NFE rule:
every fixed-grid sampler makes exactly ``num_steps * nfe_per_step + extra_nfe`` model calls
(``num_steps = len(ts) - 1``, :meth:`SamplerInfo.nfe`); ``extra_nfe`` is 0 except for deis_3 and
dpmpp_3m (2: their first step is a third-order singlestep, since a first-order first step
would cap a multistep method at global order 2). Multistep methods never evaluate the model at
the last time; dpmpp_2m, unipc and deis_2 warm up with lower orders, whose start-up error
still fits their declared order. ``dopri5`` reports its count in ``denoiser.nfe``. Measured
orders: ``benchmarks/solver_orders.py``.

**Exponential integrators.** With :math:`h = \\lambda_t - \\lambda_s > 0` (a step towards the data)
the probability-flow ODE has the exact variation-of-constants forms (Lu et al. 2022, Eq. 3.4;
Lu et al. 2022b, Sec. 3), obtained by integrating the linear part exactly,

.. math:: x_t = \\frac{\\alpha_t}{\\alpha_s} x_s - \\sigma_t\\int_0^h e^{(h-u)}\\,\\hat\\varepsilon(\\lambda_s+u)\\,du
          = \\frac{\\sigma_t}{\\sigma_s} x_s + \\alpha_t\\int_0^h e^{-(h-u)}\\,\\hat x_0(\\lambda_s+u)\\,du,

and the reverse SDE :math:`dx = [f x - g^2\\nabla\\log p]dt + g\\,d\\bar W` with
:math:`\\nabla\\log p = -(x-\\alpha\\hat x_0)/\\sigma^2` and :math:`g^2 = -2\\sigma^2\\dot\\lambda` is linear in x with
coefficient :math:`d\\log\\alpha/d\\lambda - 2` per unit lambda, so

.. math:: x_t = \\frac{\\sigma_t}{\\sigma_s}e^{-h}x_s + 2\\alpha_t\\int_0^h e^{-2(h-u)}\\hat x_0\\,du
          + \\sigma_t\\sqrt{-\\mathrm{expm1}(-2h)}\\,z.

Replacing the prediction by the polynomial :math:`P` through nodes :math:`u_j = r_j h` leaves
integrals of :math:`e^{c(h-u)}u^k`. With :math:`\\varphi_{k+1}(z) = \\int_0^1 e^{(1-\\theta)z}\\theta^k/k!\\,d\\theta`
(so :math:`\\varphi_1(z) = \\mathrm{expm1}(z)/z` and, integrating by parts,
:math:`\\varphi_{k+1}(z) = (\\varphi_k(z) - 1/k!)/z`), the substitution :math:`u = h\\theta` gives

.. math:: \\int_0^h e^{c(h-u)}(u/h)^k\\,du = k!\\,h\\,\\varphi_{k+1}(ch),

and the weights :math:`w_j` with :math:`\\int_0^h e^{c(h-u)}P(u)du = \\sum_j w_j P(r_j h)` for every
polynomial of degree below the number of nodes solve the Vandermonde system
:math:`\\sum_j w_j r_j^k = k!\\,h\\,\\varphi_{k+1}(ch)` (:func:`ei_weights`). :func:`phi` evaluates
:math:`\\varphi_k` in float64 by its Taylor series :math:`\\sum_j z^j/(j+k)!` for :math:`|z|<1` (where the
recursion would cancel) and by the expm1 recursion otherwise.

**Tuple states.** With a :class:`~sciffusion.processes.JointProcess` (one process per component
of a tuple/dict state, e.g. graph node features and adjacency) the exponential integrators solve
the state component by component (:func:`_componentwise`): every update above is linear in the
state, and component k's update reads only its own :math:`\\alpha_k, \\sigma_k, \\lambda_k` on the
shared time grid and its own prediction, so each component is integrated with its own lambda
steps :math:`h_k` exactly as its tensor state would be. The model is called once per node for the
whole state (the NFE rule is unchanged). Intermediate points of singlestep methods
(dpm_solver_2/3, the third-order start) need one time for all components: the first component's
lambda sets it and each component uses its own fraction of its step (:func:`_inner_nodes`, which
says why the order is kept). A tensor state with one process is the one-component case and runs
the same arithmetic. Grids for a JointProcess: ``time_uniform``/``quadratic``, or a grid built
from one component (``logsnr_uniform(joint.processes[0], n)``).

**State constraints.** When the process (or a component of a JointProcess) carries a
constraint (:mod:`sciffusion.constraints`: symmetric adjacency, node masks, zero centre of mass),
every sampler projects its starting state, draws all noise through ``process.noise_like`` (the
constraint's noise law) and projects the state after every step; the denoiser has already
projected the model's output. Each update is linear in state, predictions and noise, so the
whole path stays on the subspace and the formulas above hold with the constraint's noise
covariance. Unconstrained processes take none of these branches (bit-identical results).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from .schedules import check_ts, get_schedule
from .utils import bcast, check_finite, choice_error, tree_leaves, tree_map, tree_unzip

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SamplerInfo:
    """Metadata a sampler declares (read by the tests and the benchmarks).

    Attributes:
        fn: the sampler function.
        order: global order of convergence (pathwise for ODE solvers, weak for SDE ones) with
            its default options.
        nfe_per_step: model evaluations per step with the default options; a run over ``ts``
            makes exactly ``(len(ts) - 1) * nfe_per_step + extra_nfe`` calls (not for adaptive
            solvers, whose ``denoiser.nfe`` gives the count).
        stochastic: whether it injects noise (then ``order`` is a weak order).
        adaptive: whether the step size is chosen by the solver (``ts`` only says where to report).
        extra_nfe: model calls of a starting procedure, once per run (deis_3: 2).
    """

    fn: Callable
    order: int
    nfe_per_step: int
    stochastic: bool
    adaptive: bool = False
    extra_nfe: int = 0

    def nfe(self, num_steps: int) -> int:
        """Model calls of a run with ``num_steps`` steps (default options; not for adaptive solvers)."""
        return num_steps * self.nfe_per_step + self.extra_nfe


SAMPLERS: dict[str, SamplerInfo] = {}


def register(name: str, *, order: int, nfe_per_step: int, stochastic: bool = False,
             adaptive: bool = False, extra_nfe: int = 0):
    """Decorator recording a sampler in :data:`SAMPLERS` (its metadata lives there only).

    Every sampler takes tensor states and tuple/dict states with a JointProcess."""

    def deco(fn):
        SAMPLERS[name] = SamplerInfo(fn, order, nfe_per_step, stochastic, adaptive, extra_nfe)
        return fn

    return deco


def get_sampler(name: str) -> Callable:
    """The sampler function registered under ``name`` (see :data:`SAMPLERS`)."""
    if name not in SAMPLERS:
        raise choice_error("sampler", name, SAMPLERS)
    return SAMPLERS[name].fn


def _steps(ts: torch.Tensor, progress: bool, desc: str):
    return tqdm(range(len(ts) - 1), desc=desc, disable=not progress, leave=False)


def _noise(process, x, generator):
    return process.noise_like(x, generator)


def _start(p, x):
    """The starting state on the constraint's subspace (unchanged, the same object, without one)."""
    return p.project(x) if getattr(p, "constrained", False) else x


def _done(p, x, i, t, name, callback):
    """End of step ``i``: the state projected onto the constraint's subspace (with one: an exact
    no-op for symmetry and masks, it removes round-off drift of a centre of mass), checked for
    NaN/inf and handed to the callback."""
    if getattr(p, "constrained", False):
        x = p.project(x)
    check_finite(x, i, name)
    if callback is not None:
        callback(i, t, x)
    return x


def _check_state(x, p, name):
    """A tensor state needs one process and a tuple/dict state a JointProcess (one process per
    component, same structure); every component must be a floating-point tensor."""
    if hasattr(p, "processes") == isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: a tensor state needs a single process and a tuple/dict state a "
                        f"JointProcess; got a {type(x).__name__} state with {p!r}")
    for leaf in tree_leaves(x):
        if not isinstance(leaf, torch.Tensor) or not leaf.is_floating_point():
            got = leaf.dtype if isinstance(leaf, torch.Tensor) else type(leaf).__name__
            raise TypeError(f"x must be a floating-point tensor (or a tuple/dict of them), got {got}")


def _check_order(order, valid, name):
    if order not in valid:
        raise ValueError(f"{name}: order must be one of {sorted(valid)}, got {order!r}")


# ----------------------------------------------------------------------------------------------
# Exponential-integrator weights (derivation in the module docstring)
# ----------------------------------------------------------------------------------------------

def phi(k: int, z: float) -> float:
    """:math:`\\varphi_k(z) = \\int_0^1 e^{(1-\\theta)z}\\theta^{k-1}/(k-1)!\\,d\\theta` in float64, ``k >= 1``.

    :math:`\\varphi_1(z) = \\mathrm{expm1}(z)/z`, :math:`\\varphi_{k+1}(z) = (\\varphi_k(z) - 1/k!)/z`.
    For :math:`|z| < 1` the series :math:`\\sum_{j\\ge0} z^j/(j+k)!` is used instead: the recursion
    subtracts nearly equal numbers there (relative error ~ eps/|z|^k); the series is truncated
    after 25 terms, below :math:`1/25!` relative.
    """
    if k < 1:
        raise ValueError(f"phi: k must be >= 1, got {k}")
    z = float(z)
    if abs(z) < 1.0:
        term, out = 1.0 / math.factorial(k), 0.0
        for j in range(25):
            out += term
            term *= z / (j + k + 1)
        return out
    out = math.expm1(z) / z
    for j in range(1, k):
        out = (out - 1.0 / math.factorial(j)) / z
    return out


def ei_weights(r: Sequence[float], h: float, c: float) -> torch.Tensor:
    """Weights of exponential quadrature on ``[0, h]`` with nodes ``r_j * h``.

    Returns ``w`` (float64 numpy array, one per node) with
    :math:`\\int_0^h e^{c(h-u)}P(u)\\,du = \\sum_j w_j P(r_j h)` exactly for every polynomial
    :math:`P` of degree ``< len(r)``: the Lagrange basis integrated in closed form through the
    moments :math:`\\int_0^h e^{c(h-u)}(u/h)^k du = k!\\,h\\,\\varphi_{k+1}(ch)`.
    """
    r = np.asarray([float(v) for v in r], dtype=np.float64)
    h = float(h)
    n = r.size
    if len(set(r.tolist())) != n:
        raise ValueError(f"ei_weights: nodes must be distinct, got {r.tolist()}")
    mom = np.array([math.factorial(k) * h * phi(k + 1, c * h) for k in range(n)])
    vander = r[None, :] ** np.arange(n)[:, None]  # [k, j] = r_j^k
    return np.linalg.solve(vander, mom)


@dataclass(frozen=True)
class _Node:
    """A time with one process's log-coefficients as Python floats (float64): computed once per
    grid point, so the per-step arithmetic is scalar and does not call the process again. Not a
    tuple, so that a tree of nodes (one per component of a tuple/dict state) has nodes as leaves."""

    t: torch.Tensor  # 0-d float64, passed to the model
    la: float  # log alpha_t
    ls: float  # log sigma_t

    @property
    def lam(self) -> float:
        return self.la - self.ls


def _components(p):
    """The process of each state component: a JointProcess's ``processes`` (a tuple or dict shaped
    like the state), or the process itself for a tensor state."""
    return getattr(p, "processes", p)


def _grid_nodes(p, ts) -> list:
    """One node per grid time: a :class:`_Node`, or for a JointProcess a tree of them shaped like
    the state (each component with its own alpha, sigma, lambda)."""

    def one(q):
        la, ls = q.log_alpha(ts).tolist(), q.log_sigma(ts).tolist()
        return [_Node(ts[i], la[i], ls[i]) for i in range(len(ts))]

    procs = _components(p)
    per = tree_map(one, procs)
    return [tree_map(lambda q, n: n[i], procs, per) for i in range(len(ts))]


def _node_at_t(p, t: torch.Tensor) -> _Node:
    return _Node(t, float(p.log_alpha(t)), float(p.log_sigma(t)))


def _node_at_lam(p, lam: float) -> _Node:
    return _node_at_t(p, p.t_of_lam(torch.tensor(lam, dtype=torch.float64)))


def _time(nodes) -> torch.Tensor:
    """The model time of a node tree (one time shared by all components)."""
    return tree_leaves(nodes)[0].t


def _frac(n, s, t):
    """Where node ``n`` sits in the step ``s -> t``, :math:`(\\lambda_n - \\lambda_s)/h`, per component."""
    return tree_map(lambda nk, sk, tk: (nk.lam - sk.lam) / (tk.lam - sk.lam), n, s, t)


def _inner_nodes(p, s, t, num: float, den: float = 1.0):
    """The intermediate point of a singlestep method in the step ``s -> t``, at the fraction
    ``r = num / den`` of the step in lambda.

    One process: the node at :math:`\\lambda_s + \\text{num}\\,h/\\text{den}` and the fraction ``r``
    itself. JointProcess: the model is called at one time for all components, but their lambdas
    differ, so no time sits at the fraction ``r`` of every component's step. The first component's
    lambda sets the time, :math:`\\tau = t_1(\\lambda_{1,s} + r h_1)` (a one-component joint state
    is solved as its tensor state, up to round-off in the recomputed fraction), and every component
    uses its own fraction :math:`r_k = (\\lambda_k(\\tau) - \\lambda_{k,s})/h_k` in its weights, so
    each component's update integrates its own interpolant in its own lambda exactly. Since every
    lambda is strictly monotone in t, the :math:`r_k` lie in (0, 1) and keep the order of the nodes
    (distinct, as :func:`ei_weights` needs). For smooth schedules :math:`r_k = r + O(h)`, and where
    a method's order needs a particular fraction (DPM-Solver-3's :math:`r_2 = 2/3`: the quadratic
    term's mismatch is proportional to :math:`h^3(r_2/2 - 1/3)`), an :math:`O(h)` offset costs only
    :math:`O(h^4)` locally: the order is kept (tested on a VP x VE tuple state, where the test fails
    if every component is given r instead of its own fraction).

    Returns:
        ``(nodes, r)``: a node and a float for one process, trees shaped like the state for a
        JointProcess.
    """
    procs = _components(p)
    q0, s0, t0 = (tree_leaves(v)[0] for v in (procs, s, t))
    mid = _node_at_lam(q0, s0.lam + num * (t0.lam - s0.lam) / den)
    if procs is p:
        return mid, num / den

    def each(q, sk, tk):
        n = _node_at_t(q, mid.t)
        return n, (n.lam - sk.lam) / (tk.lam - sk.lam)

    return tree_unzip(tree_map(each, procs, s, t), procs)


def _componentwise(update, x, s, t, nodes, preds):
    """``update(x_k, s_k, t_k, nodes_k, preds_k)``, a one-process step, applied to each component.

    Every exponential-integrator update is linear in the state, and a component's update reads
    only its own lambda grid and its own prediction, so a tuple/dict state is solved component by
    component with the same scalar-coefficient machinery (for a tensor state this is one call).

    Args:
        update: the one-component step, e.g. :func:`_x0_update`.
        x, s, t: the state and the step's node trees.
        nodes: a list, one entry per interpolation node: a float (the same for every component,
            e.g. the node 0 at ``s``) or a tree of per-component values (fractions or nodes).
        preds: a list of prediction trees (x0, eps, or noise), shaped like the state.
    """
    n = len(nodes)
    nodes = [tree_map(lambda _, v=v: v, x) if isinstance(v, float) else v for v in nodes]
    return tree_map(lambda xk, sk, tk, *rest: update(xk, sk, tk, list(rest[:n]), list(rest[n:])),
                    x, s, t, *nodes, *preds)


def _combine(x, scale: float, terms):
    """``scale * x + sum_j c_j * v_j`` with float64 scalar coefficients."""
    out = x * scale
    for c, v in terms:
        out = out.add(v, alpha=float(c))  # fused multiply-add: one op, no temporary per term
    return out


def _eps_update(x, s: _Node, t: _Node, r, eps):
    """Noise-prediction exponential step s -> t with the eps interpolant through nodes ``r``."""
    w = ei_weights(r, t.lam - s.lam, 1.0)
    sig = math.exp(t.ls)
    return _combine(x, math.exp(t.la - s.la), [(-sig * wj, e) for wj, e in zip(w, eps)])


def _x0_update(x, s: _Node, t: _Node, r, x0s):
    """Data-prediction exponential step s -> t with the x0 interpolant through nodes ``r``."""
    w = ei_weights(r, t.lam - s.lam, -1.0)
    a = math.exp(t.la)
    return _combine(x, math.exp(t.ls - s.ls), [(a * wj, m) for wj, m in zip(w, x0s)])


def _start3(p, x, s, t, predict, update):
    """First step of a third-order multistep method, singlestep with nodes 0, 1/3, 2/3 of h.

    Same structure as DPM-Solver-3 (see :func:`sample_dpm_solver_3` for why r2 = 2/3): local
    error O(h^4), 3 model calls. ``s``, ``t`` are node trees, ``update`` a one-component step
    (applied by :func:`_componentwise`; intermediate points: :func:`_inner_nodes`). Returns the
    new state and the two predictions worth keeping as history, ``(nodes, prediction)`` at r2
    (error O(h^3)) and at 0.
    """
    s1, r1 = _inner_nodes(p, s, t, 1.0, 3.0)
    s2, r2 = _inner_nodes(p, s, t, 2.0, 3.0)
    v0 = predict(x, _time(s))
    v1 = predict(_componentwise(update, x, s, s1, [0.0], [v0]), _time(s1))
    v2 = predict(_componentwise(update, x, s, s2, [0.0, tree_map(lambda a, b: a / b, r1, r2)], [v0, v1]),
                 _time(s2))
    return _componentwise(update, x, s, t, [0.0, r2], [v0, v2]), [(s2, v2), (s, v0)]


# ----------------------------------------------------------------------------------------------
# SDE samplers
# ----------------------------------------------------------------------------------------------

def _em_step(denoiser, x, t, dt, generator):
    """One Euler–Maruyama step of the reverse SDE from ``t`` by ``dt < 0`` (any state tree)."""
    p = denoiser.process
    score = denoiser.score(x, t)
    f, g2 = p.f(t), p.g2(t)
    z = _noise(p, x, generator)
    return tree_map(lambda xi, si, fi, gi, zi: xi + (bcast(fi, xi) * xi - bcast(gi, xi) * si) * dt
                    + bcast((gi * -dt).sqrt(), xi) * zi, x, score, f, g2, z)


@register("euler_maruyama", order=1, nfe_per_step=1, stochastic=True)
def sample_euler_maruyama(denoiser, x, ts, *, generator=None, callback=None, progress=False):
    """Euler–Maruyama on the reverse SDE (Song et al. 2021, Eq. 6).

    .. math:: x_{i+1} = x_i + [f(t_i)x_i - g(t_i)^2\\nabla\\log p_{t_i}(x_i)]\\,\\Delta t
              + g(t_i)\\sqrt{|\\Delta t|}\\,z,\\qquad \\Delta t = t_{i+1}-t_i < 0
    """
    ts = check_ts(ts, denoiser.process)
    x = _start(denoiser.process, x)
    for i in _steps(ts, progress, "euler_maruyama"):
        x = _em_step(denoiser, x, ts[i], ts[i + 1] - ts[i], generator)
        x = _done(denoiser.process, x, i, ts[i + 1], "euler_maruyama", callback)
    return x


@register("pc", order=1, nfe_per_step=2, stochastic=True)
def sample_pc(denoiser, x, ts, *, snr: Any = 0.16, n_corrector: int = 1, scale_eps: float = 1.0,
              generator=None, callback=None, progress=False):
    r"""Predictor–corrector sampling (Song et al. 2021, Alg. 2/3 with the corrector of Alg. 4/5):
    an Euler–Maruyama predictor step t_i -> t_{i+1}, then ``n_corrector`` Langevin steps at
    :math:`t_{i+1}`.

    .. math:: x \leftarrow x + \epsilon\,s + \sqrt{2\epsilon}\,z,\qquad
              \epsilon = 2 a_i\,(r\,\|z\|/\|s\|)^2,\qquad s = \nabla\log p_{t_{i+1}}(x)

    with ``r = snr``, and :math:`\|z\|, \|s\|` the per-sample norms (over all non-batch dimensions)
    averaged over the batch, separately for each component of a tuple state (each component
    its own step size). The step is deliberately not per sample: with a state-dependent step
    :math:`\epsilon(x)` Langevin dynamics has stationary density :math:`\propto p/\epsilon(x) = p\,\|s\|^2`
    (zero at the mode), an O(1) bias that the tests see in low dimension. Alg. 5's
    :math:`a_i = 1 - \beta_i` is written as the squared signal ratio across the step,
    :math:`a_i = \alpha_{t_i}^2/\alpha_{t_{i+1}}^2` (1 for VE/EDM, as in Alg. 4).

    GDSS (Jo et al. 2022) samples with this predictor and corrector and scales the Langevin noise
    by ``scale_eps`` (:math:`\sqrt{2\epsilon}\,c\,z`; GDSS's configs use :math:`c < 1` on some data
    sets). Only ``scale_eps = 1`` (the default) leaves :math:`p_t` invariant: :math:`c < 1` samples a
    sharpened :math:`p_t^{1/c^2}` in the corrector, a deliberate bias towards the modes.

    Args:
        snr: the signal-to-noise ratio ``r`` (a float, or one per component of a tuple state).
        n_corrector: Langevin steps per time step (``nfe_per_step = 1 + n_corrector``).
        scale_eps: factor ``c`` on the Langevin noise (positive; 1 = exact Langevin).
    """
    if not isinstance(n_corrector, int) or n_corrector < 0:
        raise ValueError(f"n_corrector must be a non-negative int, got {n_corrector!r}")
    snrs = _check_snr(snr, x)
    scale_eps = _check_scale_eps(scale_eps)
    p = denoiser.process
    ts = check_ts(ts, p)
    x = _start(p, x)
    for i in _steps(ts, progress, "pc"):
        t = ts[i + 1]
        x = _em_step(denoiser, x, ts[i], t - ts[i], generator)
        a = tree_map(lambda l0, l1: torch.exp(2 * (l0 - l1)), p.log_alpha(ts[i]), p.log_alpha(t))
        for _ in range(n_corrector):
            score = denoiser.score(x, t)
            z = _noise(p, x, generator)
            x = tree_map(partial(_langevin, scale_eps=scale_eps), x, score, z, a, snrs)
        x = _done(denoiser.process, x, i, t, "pc", callback)
    return x


def _check_snr(snr, x):
    snrs = tree_map(lambda _: snr, x) if isinstance(snr, (int, float)) else snr
    for r in tree_leaves(snrs):
        if not isinstance(r, (int, float)) or isinstance(r, bool) or not math.isfinite(r) or r <= 0:
            raise ValueError(f"snr must be positive (one float or one per state component), got {snr!r}")
    return snrs


def _check_scale_eps(scale_eps):
    if isinstance(scale_eps, bool) or not isinstance(scale_eps, (int, float)) or not (
            math.isfinite(scale_eps) and scale_eps > 0):
        raise ValueError(f"scale_eps must be a positive finite float, got {scale_eps!r}")
    return float(scale_eps)


def _langevin(x, s, z, a, snr, scale_eps=1.0):
    # per-sample norms over the non-batch dims, averaged over the batch (Song et al.'s code);
    # a per-sample step eps(x) would make the stationary law p/eps(x) = p ||s(x)||^2, not p.
    norm = lambda v: v.flatten(1).norm(dim=1).mean()  # noqa: E731
    eps = 2 * a.to(x.dtype) * (snr * norm(z) / norm(s).clamp_min(torch.finfo(x.dtype).tiny)) ** 2
    if scale_eps != 1.0:
        z = z * scale_eps
    return x + eps * s + (2 * eps).sqrt() * z


@register("s4", order=1, nfe_per_step=1, stochastic=True)
def sample_s4(denoiser, x, ts, *, snr: Any = 0.05, scale_eps: float = 1.0, generator=None, callback=None,
              progress=False):
    r"""S4 solver (Jo et al. 2022, GDSS, Alg. 2): one score evaluation per step, reused for a
    Langevin correction and a Strang-split reverse-diffusion step.

    Step :math:`s = t_i \to t = t_{i+1}`, :math:`m = (s + t)/2`, with :math:`\hat s = \nabla\log p_s(x)`
    evaluated once at the state entering the step:

    1. correction (Langevin at :math:`s`, the step size rule of :func:`sample_pc` with
       :math:`a_i = \alpha_s^2/\alpha_t^2`): :math:`x \leftarrow x + \epsilon\hat s + \sqrt{2\epsilon}\,c\,z_0`;
    2. prediction, the reverse SDE :math:`dx = [f x - g^2\nabla\log p]dt + g\,d\bar W` split into its
       linear part :math:`\mathcal A: dx = f x\,dt + g\,d\bar W` and the score drift
       :math:`\mathcal B: dx = -g(s)^2\hat s\,dt` (frozen score), composed as
       :math:`\mathcal A_{s\to m}\,\mathcal B_{s\to t}\,\mathcal A_{m\to t}` (Strang).
       :math:`\mathcal A` is solved exactly: from :math:`u` to :math:`v < u`,

       .. math:: x \leftarrow \frac{\alpha_v}{\alpha_u}x
                 + \sigma_v\sqrt{\mathrm{expm1}(2(\lambda_v - \lambda_u))}\,z,

       since :math:`d(\sigma^2/\alpha^2)/dt = g^2/\alpha^2`, so the noise variance
       :math:`\int_v^u(\alpha_v/\alpha_r)^2 g_r^2\,dr = \alpha_v^2(\sigma_u^2/\alpha_u^2 - \sigma_v^2/\alpha_v^2)`
       (VE: :math:`\sigma_u^2 - \sigma_v^2`, as GDSS's VE transition; GDSS's VP transition uses the
       forward kernel's :math:`1 - \alpha_u^2/\alpha_v^2`, equal to first order). :math:`\mathcal B`:
       :math:`x \leftarrow x + g(s)^2\hat s\,(s - t)`.

    The stale score (taken before the correction) keeps the method first order (weak); it costs
    one model call per step against two for :func:`sample_pc`. Three noise draws per step, each
    through the process's ``noise_like`` (constraint-aware); tensor or tuple states, each
    component with its own coefficients and Langevin step.

    The Langevin step does not shrink with the time step, and the predictor then applies the
    score taken before it, so its error grows with ``snr`` and does not vanish with more steps:
    the default 0.05 is GDSS's community-small setting (on the exact 2-D mixture of the tests,
    logSNR grid, 2000 samples, sliced W1 against a floor of 0.031: snr 0.16 gave 0.060 / 0.038 /
    0.033 over three seeds at 512 steps, snr 0.08 stayed at 0.025-0.031 from 64 to 1024 steps).

    Args:
        snr: Langevin signal-to-noise ratio (a float, or one per component of a tuple state).
        scale_eps: factor on the Langevin noise (GDSS's ``scale_eps``; 1 = exact Langevin).
    """
    snrs = _check_snr(snr, x)
    scale_eps = _check_scale_eps(scale_eps)
    p = denoiser.process
    ts = check_ts(ts, p)
    x = _start(p, x)
    mids = 0.5 * (ts[:-1] + ts[1:])
    # float64 coefficients on the grid and the midpoints, as Python floats per component
    # (numpy arrays, so that they are leaves of the state tree, and their entries Python floats)
    arr = lambda v: v.numpy()  # noqa: E731
    la, ls = tree_map(arr, p.log_alpha(ts)), tree_map(arr, p.log_sigma(ts))
    la_m, ls_m = tree_map(arr, p.log_alpha(mids)), tree_map(arr, p.log_sigma(mids))
    g2 = tree_map(arr, p.g2(ts))

    def linear(xk, la_u, ls_u, la_v, ls_v, zk):
        # exact step u -> v (v earlier) of dx = f x dt + g dW in reverse time
        h = (la_v - ls_v) - (la_u - ls_u)
        return _combine(xk, math.exp(la_v - la_u), [(math.exp(ls_v) * math.sqrt(math.expm1(2 * h)), zk)])

    for i in _steps(ts, progress, "s4"):
        s_t, t_t = ts[i], ts[i + 1]
        dt = float(s_t - t_t)
        score = denoiser.score(x, s_t)
        z = _noise(p, x, generator)
        a = tree_map(lambda l_: torch.tensor(math.exp(2 * (l_[i] - l_[i + 1])), dtype=torch.float64), la)
        x = tree_map(partial(_langevin, scale_eps=scale_eps), x, score, z, a, snrs)
        z = _noise(p, x, generator)
        x = tree_map(lambda xk, a_, s_, am, sm, zk: linear(xk, a_[i], s_[i], am[i], sm[i], zk), x, la, ls, la_m, ls_m, z)
        x = tree_map(lambda xk, sk, gk: xk.add(sk, alpha=float(gk[i]) * dt), x, score, g2)
        z = _noise(p, x, generator)
        x = tree_map(lambda xk, am, sm, a_, s_, zk: linear(xk, am[i], sm[i], a_[i + 1], s_[i + 1], zk),
                     x, la_m, ls_m, la, ls, z)
        x = _done(p, x, i, t_t, "s4", callback)
    return x


# ----------------------------------------------------------------------------------------------
# Probability-flow ODE samplers in t
# ----------------------------------------------------------------------------------------------

@register("euler", order=1, nfe_per_step=1)
def sample_euler(denoiser, x, ts, *, generator=None, callback=None, progress=False):
    """Euler on the probability-flow ODE :math:`dx/dt = \\dot\\alpha_t \\hat x_0 + \\dot\\sigma_t\\hat\\varepsilon`
    (Song et al. 2021, Eq. 13)."""
    ts = check_ts(ts, denoiser.process)
    x = _start(denoiser.process, x)
    for i in _steps(ts, progress, "euler"):
        dt = ts[i + 1] - ts[i]
        v = denoiser.velocity(x, ts[i])
        x = tree_map(lambda xi, vi: xi + vi * dt.to(xi.dtype), x, v)
        x = _done(denoiser.process, x, i, ts[i + 1], "euler", callback)
    return x


@register("heun", order=2, nfe_per_step=2)
def sample_heun(denoiser, x, ts, *, generator=None, callback=None, progress=False):
    """Heun's method (explicit trapezoid) on the probability-flow ODE (Karras et al. 2022, Alg. 1).

    .. math:: \\tilde x = x_i + \\Delta t\\,v(x_i, t_i),\\quad
              x_{i+1} = x_i + \\tfrac{\\Delta t}{2}[v(x_i, t_i) + v(\\tilde x, t_{i+1})]
    """
    ts = check_ts(ts, denoiser.process)
    x = _start(denoiser.process, x)
    for i in _steps(ts, progress, "heun"):
        dt = ts[i + 1] - ts[i]
        v1 = denoiser.velocity(x, ts[i])
        x_pred = tree_map(lambda xi, vi: xi + vi * dt.to(xi.dtype), x, v1)
        v2 = denoiser.velocity(x_pred, ts[i + 1])
        x = tree_map(lambda xi, a, b: xi + 0.5 * (a + b) * dt.to(xi.dtype), x, v1, v2)
        x = _done(denoiser.process, x, i, ts[i + 1], "heun", callback)
    return x


@register("dopri5", order=5, nfe_per_step=6, adaptive=True)
def sample_dopri5(denoiser, x, ts, *, rtol: float = 1e-5, atol: float = 1e-5, generator=None,
                  callback=None, progress=False):
    """Adaptive Dormand–Prince 5(4) on the probability-flow ODE through ``torchdiffeq.odeint``.

    The step size is chosen by the error controller (``rtol``, ``atol``); ``ts`` only says where
    the state is reported (``callback`` is called at each ``ts[i+1]``). The number of model
    calls is read from ``denoiser.nfe`` (also logged at DEBUG level). Tensor or tuple states.

    Raises:
        ImportError: torchdiffeq is missing (``pip install "sciffusion[ode]"``).
        FloatingPointError: the velocity became NaN/inf (names the model evaluation and time).
    """
    try:
        from torchdiffeq import odeint
    except ImportError as err:  # pragma: no cover - exercised with a patched import in the tests
        raise ImportError('sampler "dopri5" needs torchdiffeq: pip install "sciffusion[ode]"') from err
    if not (rtol > 0 and atol > 0):
        raise ValueError(f"rtol and atol must be positive, got rtol={rtol}, atol={atol}")
    if isinstance(x, dict):
        raise TypeError("dopri5 supports tensor or tuple states (torchdiffeq does not take dicts)")
    ts = check_ts(ts, denoiser.process)
    x = _start(denoiser.process, x)
    is_tuple = isinstance(x, (tuple, list))
    n0 = denoiser.nfe

    def rhs(t, y):
        v = denoiser.velocity(tuple(y) if is_tuple else y, t)
        for leaf in tree_leaves(v):
            if not torch.isfinite(leaf).all():
                raise FloatingPointError(f"dopri5: non-finite velocity (NaN or inf) at model evaluation "
                                         f"{denoiser.nfe - n0}, t={float(t):.6g}")
        return tuple(v) if is_tuple else v

    # step_t makes steps land on the grid: without it dopri5 steps past t_min and interpolates
    # back, evaluating the model where alpha or sigma may vanish (t < 0 for VP).
    out = odeint(rhs, tuple(x) if is_tuple else x, ts, rtol=rtol, atol=atol, method="dopri5",
                 options={"step_t": ts})
    for i in range(len(ts) - 1):
        state = type(x)(o[i + 1] for o in out) if is_tuple else out[i + 1]
        state = _done(denoiser.process, state, i, ts[i + 1], "dopri5", callback)
    logger.debug("dopri5: %d model evaluations", denoiser.nfe - n0)
    return state


# ----------------------------------------------------------------------------------------------
# Exponential integrators
# ----------------------------------------------------------------------------------------------

@register("ddim", order=1, nfe_per_step=1)
def sample_ddim(denoiser, x, ts, *, eta: float = 0.0, generator=None, callback=None, progress=False):
    """DDIM (Song et al. 2021a, Eq. 12) in :math:`(\\alpha, \\sigma, \\lambda)` form.

    .. math:: x_{i+1} = \\alpha_{i+1}\\hat x_0 + \\sqrt{\\sigma_{i+1}^2 - c^2}\\,\\hat\\varepsilon + c\\,z,
              \\qquad c^2 = -\\eta^2\\sigma_{i+1}^2\\,\\mathrm{expm1}(2(\\lambda_i - \\lambda_{i+1}))

    ``eta=0`` is deterministic (first-order exponential integrator of the PF-ODE); ``eta=1`` is
    ancestral DDPM sampling (weak order 1).
    """
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    p = denoiser.process
    ts = check_ts(ts, p)
    x = _start(p, x)
    # coefficients for the whole grid at once (float64); a tensor state gets them as Python floats,
    # so a deterministic step is two scalar multiply-adds with no per-step coefficient tensors
    a_all, s_all, lam_all = p.alpha(ts), p.sigma(ts), p.lam(ts)
    fast = isinstance(x, torch.Tensor)
    if fast:
        a_f, s_f, lam_f = a_all.tolist(), s_all.tolist(), lam_all.tolist()
    for i in _steps(ts, progress, "ddim"):
        t, tn = ts[i], ts[i + 1]
        if fast:
            # the same update with x0 = (x - sigma eps)/alpha substituted: one model output, two
            # scalar multiply-adds: x' = (a'/a) x + (sqrt(s'^2 - c^2) - a' s/a) eps + c z
            eps = denoiser.eps(x, t)
            c2 = -(eta ** 2) * s_f[i + 1] ** 2 * math.expm1(2 * (lam_f[i] - lam_f[i + 1]))
            ratio = a_f[i + 1] / a_f[i]
            x = x * ratio + eps * (math.sqrt(s_f[i + 1] ** 2 - c2) - ratio * s_f[i])
            if eta > 0:
                x = x + math.sqrt(c2) * _noise(p, x, generator)
        else:
            x0, eps = denoiser.predict(x, t)
            a_n = tree_map(lambda a: a[i + 1], a_all)
            s_n = tree_map(lambda s_: s_[i + 1], s_all)
            c2 = tree_map(lambda sn, lam: -(eta ** 2) * sn * sn * torch.expm1(2 * (lam[i] - lam[i + 1])),
                          s_n, lam_all)
            z = _noise(p, x, generator) if eta > 0 else tree_map(torch.zeros_like, x)
            x = tree_map(lambda x0i, ei, zi, ai, si, ci: bcast(ai, x0i) * x0i
                         + bcast((si * si - ci).sqrt(), ei) * ei + bcast(ci.sqrt(), zi) * zi,
                         x0, eps, z, a_n, s_n, c2)
        x = _done(denoiser.process, x, i, tn, "ddim", callback)
    return x


def _dpm_singlestep(denoiser, x, ts, order, r1, r2, name, callback, progress):
    if not 0 < r1 < 1 or (order == 3 and not r1 < r2 < 1):
        raise ValueError(f"{name}: need 0 < r1 < r2 < 1, got r1={r1}, r2={r2}")
    p = denoiser.process
    _check_state(x, p, name)
    ts = check_ts(ts, p)
    x = _start(p, x)
    nodes = _grid_nodes(p, ts)
    for i in _steps(ts, progress, name):
        s, t = nodes[i], nodes[i + 1]
        e0 = denoiser.eps(x, ts[i])
        if order == 1:
            r, es = [0.0], [e0]
        else:
            # intermediate points, one time for all components of a tuple state: _inner_nodes
            s1, f1 = _inner_nodes(p, s, t, r1)
            e1 = denoiser.eps(_componentwise(_eps_update, x, s, s1, [0.0], [e0]), _time(s1))
            if order == 2:
                r, es = [0.0, f1], [e0, e1]
            else:
                s2, f2 = _inner_nodes(p, s, t, r2)
                u2 = _componentwise(_eps_update, x, s, s2, [0.0, tree_map(lambda a, b: a / b, f1, f2)], [e0, e1])
                r, es = [0.0, f2], [e0, denoiser.eps(u2, _time(s2))]
        x = _componentwise(_eps_update, x, s, t, r, es)
        x = _done(denoiser.process, x, i, ts[i + 1], name, callback)
    return x


@register("dpm_solver_1", order=1, nfe_per_step=1)
def sample_dpm_solver_1(denoiser, x, ts, *, generator=None, callback=None, progress=False):
    """DPM-Solver-1 (Lu et al. 2022, Eq. 3.7; identical to deterministic DDIM).

    .. math:: x_t = \\frac{\\alpha_t}{\\alpha_s}x_s - \\sigma_t\\,\\mathrm{expm1}(h)\\,\\hat\\varepsilon(x_s, s)
    """
    return _dpm_singlestep(denoiser, x, ts, 1, 0.5, 1.0, "dpm_solver_1", callback, progress)


@register("dpm_solver_2", order=2, nfe_per_step=2)
def sample_dpm_solver_2(denoiser, x, ts, *, r1: float = 0.5, generator=None, callback=None, progress=False):
    """DPM-Solver-2 singlestep (Lu et al. 2022, Alg. 1), noise prediction.

    An intermediate point :math:`s_1 = t(\\lambda_s + r_1 h)` is reached with DPM-Solver-1, then
    the eps interpolant through :math:`(0, \\hat\\varepsilon_s)` and :math:`(r_1h, \\hat\\varepsilon_{s_1})` is
    integrated exactly (:func:`ei_weights`, ``c=+1``):

    .. math:: x_t = \\frac{\\alpha_t}{\\alpha_s}x_s - \\sigma_t\\Big[h\\varphi_1(h)\\hat\\varepsilon_s
              + \\frac{h\\varphi_2(h)}{r_1}(\\hat\\varepsilon_{s_1}-\\hat\\varepsilon_s)\\Big]

    Alg. 1 uses :math:`h\\varphi_1(h)/(2r_1)` for the second weight, equal to it up to :math:`O(h^2)`;
    both have local error :math:`O(h^3)` for any :math:`r_1\\in(0,1)`.
    """
    return _dpm_singlestep(denoiser, x, ts, 2, r1, 1.0, "dpm_solver_2", callback, progress)


@register("dpm_solver_3", order=3, nfe_per_step=3)
def sample_dpm_solver_3(denoiser, x, ts, *, r1: float = 1 / 3, r2: float = 2 / 3, generator=None,
                        callback=None, progress=False):
    """DPM-Solver-3 singlestep (Lu et al. 2022, Alg. 2), noise prediction.

    :math:`u_1` at :math:`r_1h` by DPM-Solver-1; :math:`u_2` at :math:`r_2h` integrating the line through
    :math:`(0, \\hat\\varepsilon_s), (r_1h, \\hat\\varepsilon(u_1))` exactly; the step integrates the line
    through :math:`(0, \\hat\\varepsilon_s), (r_2h, \\hat\\varepsilon(u_2))` exactly:

    .. math:: x_t = \\frac{\\alpha_t}{\\alpha_s}x_s - \\sigma_t\\Big[h\\varphi_1(h)\\hat\\varepsilon_s
              + \\frac{h\\varphi_2(h)}{r_2}(\\hat\\varepsilon(u_2)-\\hat\\varepsilon_s)\\Big].

    Why :math:`r_2 = 2/3`: the last formula must also integrate the quadratic term of
    :math:`\\hat\\varepsilon` to leading order. As :math:`h\\to0` the weight on the node :math:`r_2` tends
    to :math:`h/(2r_2)`, and :math:`\\frac{h}{2r_2}(r_2h)^2 = \\int_0^h u^2du = h^3/3` forces
    :math:`r_2 = 2/3`; the remaining mismatch is :math:`O(h^4)`. The node :math:`u_1` enters only through
    :math:`u_2` with weight :math:`O(h)`, so its :math:`O(h^2)` error costs :math:`O(h^4)` locally: order 3.
    """
    return _dpm_singlestep(denoiser, x, ts, 3, r1, r2, "dpm_solver_3", callback, progress)


@register("dpmpp_2m", order=2, nfe_per_step=1)
def sample_dpmpp_2m(denoiser, x, ts, *, variant: str = "alg2", generator=None, callback=None, progress=False):
    """DPM-Solver++(2M) (Lu et al. 2022b, Alg. 2), data prediction, multistep.

    With :math:`h_i = \\lambda_{i+1}-\\lambda_i`, :math:`r_i = h_{i-1}/h_i` and the x0 predictions
    :math:`D_i`, Alg. 2 (``variant="alg2"``, the default, the published algorithm) is

    .. math:: x_{i+1} = \\frac{\\sigma_{i+1}}{\\sigma_i}x_i - \\alpha_{i+1}\\,\\mathrm{expm1}(-h_i)
              \\Big[\\big(1 + \\tfrac{1}{2r_i}\\big)D_i - \\tfrac{1}{2r_i}D_{i-1}\\Big]

    ``variant="integral"`` integrates the line through :math:`(\\lambda_{i-1}, D_{i-1}), (\\lambda_i, D_i)`
    exactly against the kernel (``c=-1``):

    .. math:: x_{i+1} = \\frac{\\sigma_{i+1}}{\\sigma_i}x_i + \\alpha_{i+1}\\Big[h_i\\varphi_1(-h_i)D_i
              + h_i^2\\varphi_2(-h_i)\\frac{D_i - D_{i-1}}{h_{i-1}}\\Big]

    Alg. 2 is that with :math:`h\\varphi_2(-h)` replaced by :math:`h\\varphi_1(-h)/2`, equal up to
    :math:`O(h^2)`: both are order 2 (tested), but on the exact Gaussian benchmark Alg. 2 has the
    smaller error constant (``benchmarks/RESULTS.md``), which is why it is the default.
    The first step is DPM-Solver++(1) (DDIM).
    """
    if variant not in ("alg2", "integral"):
        raise choice_error("dpmpp_2m variant", variant, ("alg2", "integral"))
    p = denoiser.process
    _check_state(x, p, "dpmpp_2m")
    ts = check_ts(ts, p)
    x = _start(p, x)
    nodes = _grid_nodes(p, ts)
    prev = None  # (nodes, x0) of the previous grid point
    for i in _steps(ts, progress, "dpmpp_2m"):
        s, t = nodes[i], nodes[i + 1]
        m = denoiser.x0(x, ts[i])
        if prev is None:
            x = _componentwise(_x0_update, x, s, t, [0.0], [m])
        elif variant == "integral":
            x = _componentwise(_x0_update, x, s, t, [0.0, _frac(prev[0], s, t)], [m, prev[1]])
        else:
            x = _componentwise(_dpmpp_2m_alg2, x, s, t, [s, prev[0]], [m, prev[1]])
        prev = (s, m)
        x = _done(denoiser.process, x, i, ts[i + 1], "dpmpp_2m", callback)
    return x


def _dpmpp_2m_alg2(x, s: _Node, t: _Node, nodes, x0s):
    """One component's Alg. 2 step s -> t from the x0 at ``nodes = [s, previous grid node]``."""
    h = t.lam - s.lam
    half_inv_r = 0.5 * h / (s.lam - nodes[1].lam)
    d = _combine(x0s[0], 1.0 + half_inv_r, [(-half_inv_r, x0s[1])])
    return _combine(x, math.exp(t.ls - s.ls), [(-math.exp(t.la) * math.expm1(-h), d)])


@register("dpmpp_2m_sde", order=1, nfe_per_step=1, stochastic=True)
def sample_dpmpp_2m_sde(denoiser, x, ts, *, generator=None, callback=None, progress=False):
    """SDE-DPM-Solver++(2M) (Lu et al. 2022b, appendix), data prediction, stochastic.

    The reverse SDE's linear part is integrated exactly in lambda (module docstring) and the
    line through the last two x0 predictions against the kernel :math:`2e^{-2(h-u)}` (``c=-2``):

    .. math:: x_{i+1} = \\frac{\\sigma_{i+1}}{\\sigma_i}e^{-h_i}x_i
              + 2\\alpha_{i+1}\\Big[h_i\\varphi_1(-2h_i)\\hat x_0^{(i)}
              + h_i^2\\varphi_2(-2h_i)\\frac{\\hat x_0^{(i)}-\\hat x_0^{(i-1)}}{h_{i-1}}\\Big]
              + \\sigma_{i+1}\\sqrt{-\\mathrm{expm1}(-2h_i)}\\,z

    (:math:`2h\\varphi_1(-2h) = 1 - e^{-2h}`: the first step is DDPM's posterior, DDIM with eta=1).
    The noise makes the path rough, so the multistep correction does not lift the weak order
    above 1; it reduces the error constant.
    """
    p = denoiser.process
    _check_state(x, p, "dpmpp_2m_sde")
    ts = check_ts(ts, p)
    x = _start(p, x)
    nodes = _grid_nodes(p, ts)
    prev = None  # (nodes, x0) of the previous grid point
    for i in _steps(ts, progress, "dpmpp_2m_sde"):
        s, t = nodes[i], nodes[i + 1]
        m = denoiser.x0(x, ts[i])
        r, ms = ([0.0], [m]) if prev is None else ([0.0, _frac(prev[0], s, t)], [m, prev[1]])
        z = _noise(p, x, generator)
        x = _componentwise(_sde_x0_update, x, s, t, r, ms + [z])
        prev = (s, m)
        x = _done(denoiser.process, x, i, ts[i + 1], "dpmpp_2m_sde", callback)
    return x


def _sde_x0_update(x, s: _Node, t: _Node, r, preds):
    """One component's SDE-DPM-Solver++ step s -> t: ``preds`` are the x0 at the nodes ``r``, then
    the standard normal draw ``z``."""
    h = t.lam - s.lam
    w = ei_weights(r, h, -2.0)
    a, sig = math.exp(t.la), math.exp(t.ls)
    return _combine(x, math.exp(t.ls - s.ls - h), [(2 * a * wj, mj) for wj, mj in zip(w, preds)]
                    + [(sig * math.sqrt(-math.expm1(-2 * h)), preds[-1])])


@register("dpmpp_3m", order=3, nfe_per_step=1, extra_nfe=2)
def sample_dpmpp_3m(denoiser, x, ts, *, generator=None, callback=None, progress=False):
    """Third-order multistep DPM-Solver++ in data prediction, derived here (not Lu et al.'s 3M).

    Step i integrates the quadratic through the last three predictions exactly (``c=-1``):

    .. math:: x_{i+1} = \\frac{\\sigma_{i+1}}{\\sigma_i}x_i + \\alpha_{i+1}\\sum_{j=0}^{2} w_j\\,\\hat x_0^{(i-j)},
              \\qquad
              \\sum_j w_j r_j^k = k!\\,h_i\\,\\varphi_{k+1}(-h_i),\\ r_j = (\\lambda_{i-j}-\\lambda_i)/h_i,

    local error :math:`O(h^4)`. Start-up is what makes it third order: a first-order first step
    (local :math:`O(h^2)`) would cap the global order at 2 however accurate the later steps
    (the usual 3M update measures order 2 on exact tests). So the first step is a third-order
    singlestep (:func:`_start3`, 2 extra calls: NFE = ``num_steps + 2``) whose :math:`r_2 = 2/3` node
    (error :math:`O(h^3)`) is the third point of the second step. The order test proves 3.
    """
    p = denoiser.process
    _check_state(x, p, "dpmpp_3m")
    ts = check_ts(ts, p)
    x = _start(p, x)
    nodes = _grid_nodes(p, ts)
    hist: list = []  # (nodes, x0), newest first
    for i in _steps(ts, progress, "dpmpp_3m"):
        s, t = nodes[i], nodes[i + 1]
        if i == 0:
            x, hist = _start3(p, x, s, t, denoiser.x0, _x0_update)
        else:
            hist = ([(s, denoiser.x0(x, ts[i]))] + hist)[:3]
            x = _componentwise(_x0_update, x, s, t, [_frac(n, s, t) for n, _ in hist], [m for _, m in hist])
        x = _done(denoiser.process, x, i, ts[i + 1], "dpmpp_3m", callback)
    return x


# --- UniPC ------------------------------------------------------------------------------------

def _unipc_update(x, s: _Node, t: _Node, nodes, x0s, variant):
    """UniP / UniC step s -> t of one component (Zhao et al. 2023, Sec. 3, data-prediction form).

    ``x0s[k]`` is the x0 prediction at ``nodes[k]``, ``nodes[0] = s`` (``m0 = x0s[0]``); with
    :math:`r_k = (\\lambda_k-\\lambda_s)/h` for the others,
    :math:`D_k = (\\hat x_0^{(k)} - m_0)/r_k` and :math:`\\hat h = -h`:

    .. math:: x_t = \\frac{\\sigma_t}{\\sigma_s}x_s - \\alpha_t\\,\\mathrm{expm1}(\\hat h)\\,m_0
              - \\alpha_t B(\\hat h)\\sum_k a_k D_k,\\qquad
              \\sum_k a_k r_k^{n-1} = \\frac{n!\\,\\hat h\\,\\varphi_{n+1}(\\hat h)}{B(\\hat h)},\\ n = 1..K,

    the conditions that match the Taylor terms :math:`h^{n+1}\\varphi_{n+1}(-h)\\,x_0^{(n)}` of the exact
    integral (so for :math:`K \\ge 2` the result is the exact integral of the interpolant and
    :math:`B` cancels). For :math:`K=1` the paper takes :math:`a_1 = 1/2`, the :math:`h\\to0` limit of the
    solution (as Zhao et al.'s implementation does), which keeps the order and is where
    ``B(h) = h`` (``bh1``) and ``expm1(h)`` (``bh2``) differ.
    """
    h = t.lam - s.lam
    hh = -h
    B = hh if variant == "bh1" else math.expm1(hh)
    a_t = math.exp(t.la)
    m0 = x0s[0]
    terms = [(-a_t * math.expm1(hh), m0)]
    if len(nodes) > 1:
        r = np.array([(n.lam - s.lam) / h for n in nodes[1:]])
        K = len(r)
        if K == 1:
            a = np.array([0.5])
        else:
            R = r[None, :] ** np.arange(K)[:, None]
            b = np.array([math.factorial(n) * hh * phi(n + 1, hh) / B for n in range(1, K + 1)])
            a = np.linalg.solve(R, b)
        for ak, rk, mk in zip(a, r, x0s[1:]):
            terms.append((-a_t * B * ak / rk, mk - m0))
    return _combine(x, math.exp(t.ls - s.ls), terms)


@register("unipc", order=3, nfe_per_step=1)
def sample_unipc(denoiser, x, ts, *, order: int = 2, variant: str = "bh2", generator=None, callback=None,
                 progress=False):
    """UniPC (Zhao et al. 2023), data prediction, with UniC after every step but the last.

    Step i: the model is called once at the predicted :math:`\\tilde x_i`; UniC re-does the step
    :math:`t_{i-1}\\to t_i` from the corrected :math:`x_{i-1}` with the interpolant through the
    predictor's nodes plus :math:`(\\lambda_i, \\hat x_0(\\tilde x_i))` (one order higher), then UniP-k
    (:math:`k = \\min(\\text{order}, i+1)` previous predictions, an Adams–Bashforth-type interpolant)
    predicts :math:`\\tilde x_{i+1}`. The corrector costs no model call: the history keeps
    :math:`\\hat x_0(\\tilde x_i)`. Coefficients: :func:`_unipc_update`.

    Accuracy: UniP-k + UniC is order k+1, but the first step (UniP-1 + UniC-1, local
    :math:`O(h^3)`) caps the global order at 3, so ``order=3`` measures 3 (as ``order=2``).

    Args:
        order: the predictor order k in 1..3.
        variant: ``"bh1"`` (:math:`B(h) = h`) or ``"bh2"`` (:math:`B(h) = \\mathrm{expm1}(h)`).
    """
    _check_order(order, (1, 2, 3), "unipc")
    if variant not in ("bh1", "bh2"):
        raise ValueError(f"unipc: variant must be 'bh1' or 'bh2', got {variant!r}")
    p = denoiser.process
    _check_state(x, p, "unipc")
    ts = check_ts(ts, p)
    x = _start(p, x)
    nodes = _grid_nodes(p, ts)
    update = partial(_unipc_update, variant=variant)
    hist: list = []  # (nodes, x0) newest last, the nodes of the last predictor
    x_prev = None
    for i in _steps(ts, progress, "unipc"):
        s = nodes[i]
        m = denoiser.x0(x, ts[i])
        if i > 0:  # UniC on the previous step, with the new prediction as the extra node
            corr = hist[::-1] + [(s, m)]
            x = _componentwise(update, x_prev, nodes[i - 1], s, [n for n, _ in corr], [v for _, v in corr])
        hist = (hist + [(s, m)])[-order:]
        x_prev = x
        x = _componentwise(update, x, s, nodes[i + 1], [n for n, _ in hist[::-1]], [v for _, v in hist[::-1]])
        x = _done(denoiser.process, x, i, ts[i + 1], "unipc", callback)
    return x


@register("unipc_1", order=2, nfe_per_step=1)
def sample_unipc_1(denoiser, x, ts, *, variant: str = "bh2", generator=None, callback=None, progress=False):
    """UniPC with predictor order 1 (UniP-1 + UniC-1, order 2); see :func:`sample_unipc`."""
    return sample_unipc(denoiser, x, ts, order=1, variant=variant, callback=callback, progress=progress)


@register("unipc_2", order=3, nfe_per_step=1)
def sample_unipc_2(denoiser, x, ts, *, variant: str = "bh2", generator=None, callback=None, progress=False):
    """UniPC with predictor order 2 (UniP-2 + UniC-2, order 3); see :func:`sample_unipc`."""
    return sample_unipc(denoiser, x, ts, order=2, variant=variant, callback=callback, progress=progress)


@register("unipc_3", order=3, nfe_per_step=1)
def sample_unipc_3(denoiser, x, ts, *, variant: str = "bh2", generator=None, callback=None, progress=False):
    """UniPC with predictor order 3 (order 3: capped by the first step); see :func:`sample_unipc`."""
    return sample_unipc(denoiser, x, ts, order=3, variant=variant, callback=callback, progress=progress)


# --- DEIS -------------------------------------------------------------------------------------

_GL_NODES, _GL_WEIGHTS = np.polynomial.legendre.leggauss(3)
_GL_NODES, _GL_WEIGHTS = 0.5 * (_GL_NODES + 1), 0.5 * _GL_WEIGHTS  # mapped from [-1, 1] to [0, 1]


def _lagrange_integrals(v: Sequence[float]) -> torch.Tensor:
    """:math:`\\int_0^1 L_j(\\theta)d\\theta` for the Lagrange basis on nodes ``v`` (at most 3 of them).

    Three-point Gauss–Legendre on [0, 1] integrates polynomials of degree <= 5 exactly, and
    :math:`L_j` has degree <= 2, so this is exact (up to float64 round-off), not an approximation.
    """
    v = np.asarray(v, dtype=np.float64)
    out = []
    for j in range(len(v)):
        L = np.ones_like(_GL_NODES)
        for m in range(len(v)):
            if m != j:
                L = L * (_GL_NODES - v[m]) / (v[j] - v[m])
        out.append(float((_GL_WEIGHTS * L).sum()))
    return np.array(out)


def _deis_update(x, s: _Node, t: _Node, nodes, eps):
    """One component's rho-AB step s -> t through the eps predictions at ``nodes`` (:func:`_deis_doc`)."""
    rho_s, rho_t = math.exp(-s.lam), math.exp(-t.lam)
    d = rho_t - rho_s
    w = d * _lagrange_integrals([(math.exp(-n.lam) - rho_s) / d for n in nodes])
    a_t = math.exp(t.la)
    return _combine(x, math.exp(t.la - s.la), [(a_t * wj, ej) for wj, ej in zip(w, eps)])


def _deis(denoiser, x, ts, order, name, callback, progress):
    p = denoiser.process
    _check_state(x, p, name)
    ts = check_ts(ts, p)
    x = _start(p, x)
    nodes = _grid_nodes(p, ts)
    hist: list = []  # (nodes, eps), newest first
    for i in _steps(ts, progress, name):
        s, t = nodes[i], nodes[i + 1]
        if order == 3 and i == 0:
            # An AB1 first step (local O(h^2)) would cap the global order at 2: start with a
            # third-order singlestep (2 extra calls) whose r2 node serves as history.
            x, hist = _start3(p, x, s, t, denoiser.eps, _eps_update)
        else:
            hist = ([(s, denoiser.eps(x, ts[i]))] + hist)[:order]
            x = _componentwise(_deis_update, x, s, t, [n for n, _ in hist], [e for _, e in hist])
        x = _done(denoiser.process, x, i, ts[i + 1], name, callback)
    return x


def _deis_doc(k):
    return f"""DEIS with Adams–Bashforth order {k} in :math:`\\rho = \\sigma/\\alpha = e^{{-\\lambda}}`
    (Zhang & Chen 2023, :math:`\\rho`AB-DEIS: the eps-parameterised PF-ODE in the scaled variables).

    With :math:`\\bar x = x/\\alpha` the probability-flow ODE is exactly
    :math:`d\\bar x/d\\rho = \\hat\\varepsilon`, since
    :math:`d\\bar x/dt = g^2\\hat\\varepsilon/(2\\sigma\\alpha) = -\\rho\\dot\\lambda\\hat\\varepsilon` and
    :math:`d\\rho/dt = -\\rho\\dot\\lambda`. So the exponential integrator reduces to integrating
    the polynomial through the last {k} eps predictions :math:`(\\rho_{{i-j}}, \\hat\\varepsilon_{{i-j}})`
    over :math:`[\\rho_i, \\rho_{{i+1}}]`:

    .. math:: x_{{i+1}} = \\frac{{\\alpha_{{i+1}}}}{{\\alpha_i}}x_i
              + \\alpha_{{i+1}}\\sum_j C_{{ij}}\\hat\\varepsilon_{{i-j}},
              \\qquad
              C_{{ij}} = \\int_{{\\rho_i}}^{{\\rho_{{i+1}}}} L_j(\\rho)\\,d\\rho

    (:func:`_lagrange_integrals`, exact). Order 1 is DDIM. Warm-up: order 2 takes an AB1 first
    step (local :math:`O(h^2)`, enough for global order 2); order 3 takes DPM-Solver-3 as its first
    step (local :math:`O(h^4)`, 2 extra model calls: NFE = ``num_steps + 2``) and uses its
    :math:`r_2` node as the third point of the second step."""


def sample_deis_1(denoiser, x, ts, *, generator=None, callback=None, progress=False):
    return _deis(denoiser, x, ts, 1, "deis_1", callback, progress)


def sample_deis_2(denoiser, x, ts, *, generator=None, callback=None, progress=False):
    return _deis(denoiser, x, ts, 2, "deis_2", callback, progress)


def sample_deis_3(denoiser, x, ts, *, generator=None, callback=None, progress=False):
    return _deis(denoiser, x, ts, 3, "deis_3", callback, progress)


for _k, _fn in ((1, sample_deis_1), (2, sample_deis_2), (3, sample_deis_3)):
    _fn.__doc__ = _deis_doc(_k)
    register(f"deis_{_k}", order=_k, nfe_per_step=1, extra_nfe=2 if _k == 3 else 0)(_fn)


# ----------------------------------------------------------------------------------------------
# Front door
# ----------------------------------------------------------------------------------------------

def sample(denoiser, x_or_shape: Any, *, sampler: str = "dpmpp_2m", num_steps: int = 20,
           schedule: str | None = None, ts: Any = None, generator: torch.Generator | None = None,
           callback: Callable | None = None, progress: bool = False, dtype=torch.float32,
           device=None, **options) -> Any:
    """Draw samples: prior noise (or a given ``x``) integrated to the data end of the grid.

    Args:
        denoiser: a :class:`~sciffusion.denoisers.Denoiser`.
        x_or_shape: the starting state at ``ts[0]``, or a shape (tuple of shapes for a tuple
            state) to draw from the process's prior.
        sampler: a name in :data:`SAMPLERS`.
        num_steps: steps of the grid when ``ts`` is not given (NFE = steps x nfe_per_step).
        schedule: grid name for :func:`~sciffusion.schedules.get_schedule`; default ``logsnr``
            for one process and ``time_uniform`` for a JointProcess (one lambda per component).
        ts: an explicit decreasing time grid (overrides ``num_steps``/``schedule``).
        generator: the only source of randomness (prior and sampler noise).
        options: forwarded to the sampler (e.g. ``eta`` for DDIM, ``order`` for UniPC).

    Returns:
        The state at ``ts[-1]``.
    """
    fn = get_sampler(sampler)
    p = denoiser.process
    if ts is None:
        if schedule is None:
            schedule = "time_uniform" if hasattr(p, "processes") else "logsnr"
        ts = get_schedule(schedule)(p, num_steps)
    ts = check_ts(ts, p)
    leaves = tree_leaves(x_or_shape)
    if leaves and all(isinstance(leaf, torch.Tensor) for leaf in leaves):  # a state, not shapes
        x = x_or_shape
        for leaf in leaves:
            if not leaf.is_floating_point():
                raise TypeError(f"x must be a floating-point tensor, got {leaf.dtype}")
    elif hasattr(p, "processes"):  # JointProcess: one shape per component
        x = p.prior_sample(x_or_shape, generator, dtype, device)
    else:
        x = p.prior_sample(tuple(x_or_shape), generator, dtype, device)
    return fn(denoiser, x, ts, generator=generator, callback=callback, progress=progress, **options)

