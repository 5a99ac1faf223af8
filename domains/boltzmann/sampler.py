r"""Energy-only diffusion samplers: Adjoint Sampling (Dirac source) and the Adjoint Schrödinger
Bridge Sampler (Gaussian source, corrector matching), trained by adjoint matching on a replay
buffer.

**The controlled SDE.** Time is the core's diffusion time :math:`\tau`, run from the *source* end
:math:`\tau = T` down to the *target* end :math:`\tau = \tau_{min}` (DESIGN.md: noise at T, data at 0).
The base process is the zero-drift process of a core :class:`~sciffusion.processes.VE`
(:math:`\alpha \equiv 1`), whose squared diffusion is :math:`g^2(\tau) = d\sigma_\tau^2/d\tau`; the
variance it accumulates from the source down to :math:`\tau` is

.. math:: \nu(\tau) = \sigma_T^2 - \sigma_\tau^2,\qquad \nu_1 := \nu(\tau_{min}).

With sampler time :math:`s = T - \tau` this is the controlled SDE of Havens et al. (2025),
:math:`dX_s = \sigma(s)\,u(X_s, s)\,ds + \sigma(s)\,dW_s` with :math:`\sigma(s) = g(T - s)`, a geometric
schedule (large noise first, fine noise near the target). The network predicts the *adjoint*
:math:`a_\theta(x, \tau)`, and the control is :math:`u = -\sigma\,a_\theta`. One step of the sampler on a
grid :math:`\tau_0 = T > \dots > \tau_K = \tau_{min}` (variance increment :math:`\Delta\nu_k`) is

.. math:: X_{k+1} = X_k - \Delta\nu_k\, a_\theta(X_k, \tau_k) + \sqrt{\Delta\nu_k}\,\xi_k .

**Adjoint Sampling** (Havens et al. 2025, Alg. 1, "reciprocal adjoint matching"): with
the source :math:`X_T = 0` the base process is memoryless, the terminal cost for a target
:math:`\mu \propto e^{-U}` (``U = E/kT``, the energy's reduced output) is
:math:`\Phi(x) = U(x) + \log p^{base}_1(x)`, :math:`p^{base}_1 = N(0, \nu_1 I)`, and

.. math:: \mathcal L(\theta) = \mathbb E_{X_1\sim\text{buffer},\ \tau\sim U,\ X_\tau\sim \text{bridge}(0\to X_1)}
          \big\| a_\theta(X_\tau, \tau) - \nabla\Phi(X_1) \big\|^2,\qquad
          \nabla\Phi(x) = \nabla U(x) - x/\nu_1 .

(The paper's regression of :math:`u` on :math:`-\sigma\nabla\Phi` is this one weighted by
:math:`\sigma^2`; both have the same minimiser, :math:`\mathbb E[\nabla\Phi(X_1)\mid X_\tau]`.) The bridge is
:math:`X_\tau \mid X_0, X_1 \sim N\big(X_0 + \tfrac{\nu(\tau)}{\nu_1}(X_1 - X_0),\ \tfrac{\nu(\tau)(\nu_1-\nu(\tau))}{\nu_1}\big)`.
Every terminal sample costs **one energy+force call**, made once when it enters the buffer.

**ASBS** (Liu et al. 2025, Alg. 1: adjoint matching alternating with corrector matching): for a Gaussian source :math:`X_T\sim N(0, s_0^2 I)` the
base is no longer memoryless and :math:`\log p^{base}_1` is replaced by a learned *corrector*
:math:`h_\phi \approx \nabla\log\hat\varphi_1`, fitted by corrector matching on pairs
:math:`(X_0, X_1)` of the current sampler,

.. math:: \min_\phi\ \mathbb E\,\big\| h_\phi(X_1) - \nabla_{x_1}\log p^{base}(X_1\mid X_0) \big\|^2,
          \qquad \nabla_{x_1}\log p^{base}(x_1\mid x_0) = -(x_1 - x_0)/\nu_1,

alternating with adjoint matching on the terminal adjoint :math:`\nabla U(X_1) + h_\phi(X_1)`. With a
Dirac source :math:`h = -x/\nu_1` exactly and ASBS reduces to Adjoint Sampling. The corrector starts
from the exact corrector of the uncontrolled base, :math:`-x/(s_0^2 + \nu_1)`, and learns a residual.

**Importance weights** (path weights, exact for the discretised chain). The discrete-time
Radon–Nikodym derivative of the base chain w.r.t. the controlled chain is
:math:`\prod_k \exp(\sqrt{\Delta\nu_k}\,a_k\cdot\xi_k - \tfrac12\Delta\nu_k |a_k|^2)`, and the base chain's
terminal law is exactly :math:`N(0, (s_0^2 + \nu_1) I)`, so

.. math:: \log w = -U(X_1) - \log p^{base}_1(X_1) + \sum_k \big(\sqrt{\Delta\nu_k}\,a_k\cdot\xi_k - \tfrac12\Delta\nu_k |a_k|^2\big)

are self-normalised importance weights of the samples for :math:`e^{-U}` whatever the quality of the
network (high variance when it is poor; their ESS is the honest diagnostic).

**State constraints.** A process constrained through the core (``VE().constrain(ZeroCenterOfMass())``
for particle systems) is honoured everywhere: source, step noise and bridge noise are drawn by
``process.noise_like``; drifts, targets and states are projected by ``process.project``.

**Network choice.** The adjoint network is the core's time-conditioned residual
:class:`~sciffusion.nn.MLP` on the flattened coordinates (Cartesian, centre of mass removed for
particles). It is *not* rotation-equivariant: rotational symmetry is learned from data, which is
adequate for 2-D potentials and small molecules but is the first thing to replace (an EGNN, or
internal coordinates) for larger systems. Mirror images of peptides are handled by
:class:`ChiralityRestraint`. For molecules, the same sampler runs on standardized internal
coordinates through :class:`~.internal.InternalCoordinateEnergy` (event shape ``(3N-6,)``: the MLP
then sees bonds, angles and torsions, rigid-body motion removed by construction; its
:meth:`~.internal.InternalCoordinateEnergy.log_wrap_weight` is added to the path weights).
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from tqdm.auto import tqdm

from sciffusion.nn import MLP
from sciffusion.processes import VE
from sciffusion.schedules import time_uniform

log = logging.getLogger(__name__)

__all__ = ["AdjointSampler", "ReplayBuffer", "ChiralityRestraint", "energy_and_forces", "potential_grad", "SampleResult"]


# --------------------------------------------------------------------------------------------
# energies
# --------------------------------------------------------------------------------------------
def energy_and_forces(energy: Any, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Reduced energy :math:`U = E/kT` ``(B,)`` and forces :math:`-\nabla U` (x's shape), float64.

    ``energy`` is an object with ``energy_and_forces(x)`` (every :class:`~.energies.Energy`), or a
    plain differentiable callable ``x -> U`` (forces by autograd). Non-finite values raise a
    :class:`FloatingPointError` naming the first offending frame.
    """
    x = x.detach().to(torch.float64)
    if hasattr(energy, "energy_and_forces"):
        u, f = energy.energy_and_forces(x)
    elif callable(energy):
        with torch.enable_grad():
            xr = x.clone().requires_grad_(True)
            u = energy(xr)
            (grad,) = torch.autograd.grad(u.sum(), xr)
        f = -grad
    else:
        raise TypeError(f"energy must have energy_and_forces(x) or be callable, got {type(energy).__name__}")
    u = torch.as_tensor(u, dtype=torch.float64).detach().reshape(-1)
    f = torch.as_tensor(f, dtype=torch.float64).detach().reshape(x.shape)
    if u.shape[0] != x.shape[0]:
        raise ValueError(f"energy returned {u.shape[0]} energies for {x.shape[0]} configurations")
    bad = ~torch.isfinite(u) | ~torch.isfinite(f).flatten(1).all(1)
    if bad.any():
        i = int(bad.nonzero()[0])
        raise FloatingPointError(f"energy: non-finite energy or force at frame {i} of the batch "
                                 f"({int(bad.sum())} frame(s) in all); the sampler produced a configuration "
                                 "the potential cannot evaluate (lower max_adjoint_norm or the noise scale)")
    return u, f


def potential_grad(potential: Callable, x: torch.Tensor, event_shape=None) -> torch.Tensor:
    """:math:`\\nabla V(x)` of a differentiable ``potential`` ``x -> (B,)``, in float64, non-finite values reported."""
    with torch.enable_grad():
        xr = x.detach().to(torch.float64).requires_grad_(True)
        v = potential(xr)
        if v.shape != (x.shape[0],):
            raise ValueError(f"potential must return shape ({x.shape[0]},), got {tuple(v.shape)}")
        (g,) = torch.autograd.grad(v.sum(), xr, allow_unused=True)
    if g is None:
        return torch.zeros_like(x, dtype=torch.float64)
    if not torch.isfinite(g).all():
        i = int((~torch.isfinite(g)).flatten(1).any(1).nonzero()[0])
        raise FloatingPointError(f"potential: non-finite gradient at frame {i} (a CV or the bias returned NaN/inf)")
    return g


class ChiralityRestraint:
    r"""A flat-bottom restraint that keeps a stereocentre's handedness (a Cartesian sampler of an
    energy that is invariant under reflection otherwise samples both enantiomers, whose
    dihedrals have the opposite sign).

    With the signed volume :math:`v = (x_b - x_a)\cdot\big((x_c - x_a)\times(x_d - x_a)\big)` of the centre
    ``a`` and three neighbours, the restraint adds (in kT)

    .. math:: R(x) = k\,\max(0,\ -\mathrm{sign}\cdot v / v_0)^2,

    zero on the correct side, so the restrained target *restricted to the correct enantiomer* is
    the unrestrained Boltzmann distribution: samples on the wrong side are given weight zero by
    :meth:`mask` (conditioning, exact), never reflected.

    Args:
        energy: the wrapped energy (``energy_and_forces``).
        atoms: ``(a, b, c, d)`` indices, e.g. alanine dipeptide's CA with N, C, CB.
        sign: +1 or -1, the sign of ``v`` in the reference (native) structure.
        k: strength in kT.
        v0: volume scale (nm^3 for OpenMM energies).
    """

    def __init__(self, energy: Any, atoms: Sequence[int], sign: float, *, k: float = 100.0, v0: float = 1e-3):
        if len(atoms) != 4:
            raise ValueError(f"atoms must be 4 indices (centre, then three neighbours), got {atoms!r}")
        if sign not in (1, -1, 1.0, -1.0):
            raise ValueError(f"sign must be +1 or -1, got {sign!r}")
        if not k > 0 or not v0 > 0:
            raise ValueError(f"k and v0 must be positive, got {k}, {v0}")
        self.energy, self.atoms, self.sign, self.k, self.v0 = energy, tuple(int(a) for a in atoms), float(sign), k, v0
        self.event_shape = getattr(energy, "event_shape", None)

    @classmethod
    def from_reference(cls, energy: Any, atoms: Sequence[int], positions: torch.Tensor, **kw) -> "ChiralityRestraint":
        """The restraint whose sign is that of ``positions`` ``(n, 3)`` (the native structure)."""
        v = cls._volume_of(torch.as_tensor(positions, dtype=torch.float64)[None], tuple(atoms))
        return cls(energy, atoms, 1.0 if float(v) > 0 else -1.0, **kw)

    @staticmethod
    def _volume_of(x: torch.Tensor, atoms) -> torch.Tensor:
        a, b, c, d = (x[:, i] for i in atoms)
        return ((b - a) * torch.cross(c - a, d - a, dim=-1)).sum(-1)

    def volume(self, x: torch.Tensor) -> torch.Tensor:
        """Signed volume ``(B,)``."""
        return self._volume_of(x, self.atoms)

    def mask(self, x: torch.Tensor) -> torch.Tensor:
        """``(B,)`` bool: True where the handedness is correct."""
        return self.sign * self.volume(x) > 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.energy_and_forces(x)[0]

    def energy_and_forces(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        u, f = energy_and_forces(self.energy, x)
        with torch.enable_grad():
            xr = x.detach().to(torch.float64).requires_grad_(True)
            r = self.k * torch.relu(-self.sign * self.volume(xr) / self.v0) ** 2
            (g,) = torch.autograd.grad(r.sum(), xr)
        return u + r.detach(), f - g


# --------------------------------------------------------------------------------------------
# replay buffer
# --------------------------------------------------------------------------------------------
class ReplayBuffer:
    """A first-in first-out buffer of terminal samples with their source points and energy
    gradients (Havens et al. 2025, Sec. 4: every sample is evaluated once and reused for many
    gradient steps).

    Args:
        capacity: maximum number of samples kept (the oldest are dropped).
    """

    def __init__(self, capacity: int):
        if not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"capacity must be a positive int, got {capacity!r}")
        self.capacity = capacity
        self.data: dict[str, torch.Tensor] = {}

    def __len__(self) -> int:
        return 0 if not self.data else next(iter(self.data.values())).shape[0]

    def add(self, **tensors: torch.Tensor) -> None:
        for k, v in tensors.items():
            old = self.data.get(k)
            new = v.detach() if old is None else torch.cat([old, v.detach()])
            self.data[k] = new[-self.capacity:]

    def draw(self, n: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        if not len(self):
            raise RuntimeError("the replay buffer is empty")
        idx = torch.randint(len(self), (n,), generator=generator)
        return {k: v[idx] for k, v in self.data.items()}

    def state_dict(self) -> dict:
        return {"capacity": self.capacity, "data": dict(self.data)}

    def load_state_dict(self, state: dict) -> None:
        self.capacity = int(state["capacity"])
        self.data = dict(state["data"])


@dataclass
class SampleResult:
    """Samples of an :class:`AdjointSampler` with their diagnostics.

    Attributes:
        x: ``(N, *event_shape)`` float64 terminal samples.
        x_source: ``(N, *event_shape)`` their source points.
        girsanov: ``(N,)`` float64 :math:`\\sum_k (\\sqrt{\\Delta\\nu_k} a_k\\cdot\\xi_k - \\tfrac12\\Delta\\nu_k|a_k|^2)`;
            add ``-U(x) - log p_base(x)`` for the path log-weights (:meth:`AdjointSampler.log_weights`).
    """

    x: torch.Tensor
    x_source: torch.Tensor
    girsanov: torch.Tensor
    extras: dict = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# the sampler
# --------------------------------------------------------------------------------------------
def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1)


class AdjointSampler:
    r"""Adjoint Sampling (``source="dirac"``) or ASBS (``source="gaussian"``) for an unnormalised
    density :math:`e^{-U}` given by an energy (module docstring for the equations).

    Args:
        event_shape: shape of one configuration, e.g. ``(2,)`` or ``(22, 3)``.
        process: the base process: a core process with :math:`\alpha\equiv 1` (default
            ``VE(sigma_min=0.01, sigma_max=sigma_max)``), optionally constrained
            (``VE(...).constrain(ZeroCenterOfMass())``). Its ``sigma_max`` sets the reach of the
            base terminal law :math:`N(0, \nu_1 I)`: choose it near the spread of the target.
        sigma_max: the default process's largest noise (ignored when ``process`` is given).
        source: ``"dirac"`` (Adjoint Sampling, source at 0) or ``"gaussian"`` (ASBS).
        source_std: std :math:`s_0` of the Gaussian source.
        source_mean: where the source sits (default the origin), shape ``event_shape``: e.g. a
            molecule's native structure, so that the base terminal law
            :math:`N(m, (s_0^2 + \nu_1) I)` already has bonded geometry and ``sigma_max`` can be
            a fraction of a nanometre. Every formula above holds with :math:`x - m` for :math:`x`.
        num_steps: Euler–Maruyama steps per simulation.
        hidden, depth: width and residual depth of the adjoint MLP (and the corrector MLP).
        max_adjoint_norm: per-sample clip of :math:`\|\nabla U\|` (Havens et al. clip the energy
            gradient; huge forces of a bad early sample would otherwise dominate the regression).
        lr: Adam learning rate; ``ema_decay``: EMA of the adjoint network used by :meth:`sample`.
        seed: initialises the networks.
    """

    def __init__(self, event_shape: Sequence[int], *, process: Any = None, sigma_max: float = 3.0,
                 source: str = "dirac", source_std: float = 1.0, source_mean: Any = None,
                 num_steps: int = 100, hidden: int = 128,
                 depth: int = 3, max_adjoint_norm: float | None = 100.0, lr: float = 1e-3,
                 ema_decay: float = 0.99, seed: int = 0):
        self.event_shape = tuple(int(s) for s in event_shape)
        if not self.event_shape or any(s < 1 for s in self.event_shape):
            raise ValueError(f"event_shape must be a non-empty shape of positive sizes, got {event_shape!r}")
        if source not in ("dirac", "gaussian"):
            raise ValueError(f"source must be 'dirac' (Adjoint Sampling) or 'gaussian' (ASBS), got {source!r}")
        if not source_std > 0:
            raise ValueError(f"source_std must be > 0, got {source_std}")
        if not isinstance(num_steps, int) or num_steps < 1:
            raise ValueError(f"num_steps must be a positive int, got {num_steps!r}")
        if max_adjoint_norm is not None and not max_adjoint_norm > 0:
            raise ValueError(f"max_adjoint_norm must be > 0 or None, got {max_adjoint_norm}")
        if not 0 <= ema_decay < 1:
            raise ValueError(f"ema_decay must lie in [0, 1), got {ema_decay}")
        self.process = process if process is not None else VE(sigma_min=0.01, sigma_max=float(sigma_max))
        probe = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64) * self.process.T
        if not torch.allclose(self.process.f(probe), torch.zeros(3, dtype=torch.float64)):
            raise ValueError(f"process must have zero drift (alpha = 1, e.g. VE); got {self.process!r}")
        self.source, self.source_std, self.num_steps = source, float(source_std), num_steps
        self.max_adjoint_norm = max_adjoint_norm
        self.dim = math.prod(self.event_shape)
        m = torch.zeros(self.event_shape) if source_mean is None else torch.as_tensor(source_mean).float()
        if tuple(m.shape) != self.event_shape or not torch.isfinite(m).all():
            raise ValueError(f"source_mean must be a finite tensor of shape {self.event_shape}, got {tuple(m.shape)}")
        self.source_mean = self._project(m[None])[0]
        with torch.random.fork_rng(devices=[]):  # nn.Linear init draws globally: seed it, leave the global state alone
            torch.manual_seed(seed)
            self.net = MLP(self.dim, hidden=hidden, depth=depth, t_scale=self.process.T)
            self.corrector = MLP(self.dim, hidden=hidden, depth=depth) if source == "gaussian" else None
        self.ema = copy.deepcopy(self.net).requires_grad_(False)
        self.ema_decay = ema_decay
        self.opt = torch.optim.Adam(self.net.parameters(), lr=lr)
        self.opt_corr = torch.optim.Adam(self.corrector.parameters(), lr=lr) if self.corrector else None
        self.ts = time_uniform(self.process, num_steps, t_max=self.process.T, t_min=self.process.t_min)
        s2 = self.process.sigma(self.ts) ** 2
        self.nu = s2[0] - s2                     # accumulated variance, 0 at the source
        self.nu1 = float(self.nu[-1])
        self.energy_evaluations = 0              # terminal samples evaluated (one energy+force call each)
        self.iterations = 0
        self.history: list[dict] = []

    # --- helpers -----------------------------------------------------------------------------
    def _project(self, x: torch.Tensor) -> torch.Tensor:
        return self.process.project(x) if getattr(self.process, "constraint", None) is not None else x

    def _noise(self, like: torch.Tensor, generator) -> torch.Tensor:
        return self.process.noise_like(like, generator)

    def _nu_of(self, t: torch.Tensor) -> torch.Tensor:
        return self.process.sigma(self.process.T) ** 2 - self.process.sigma(t) ** 2

    def _adjoint(self, net, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self._project(net(_flat(x), t).reshape(x.shape))

    def base_terminal_var(self) -> float:
        """Variance per coordinate of the uncontrolled terminal law, :math:`s_0^2 + \\nu_1` (0 for Dirac)."""
        return self.nu1 + (self.source_std ** 2 if self.source == "gaussian" else 0.0)

    def _corrector(self, x1: torch.Tensor, net=None) -> torch.Tensor:
        """:math:`h(x_1)`: exact :math:`-x/\\nu_1` for a Dirac source, learned residual on
        :math:`-x/(s_0^2+\\nu_1)` for a Gaussian one."""
        base = -(x1 - self.source_mean.to(x1.dtype)) / self.base_terminal_var()
        if self.corrector is None:
            return base
        net = self.corrector if net is None else net
        zero = torch.zeros(x1.shape[0], dtype=x1.dtype)
        return self._project(base + net(_flat(x1), zero).reshape(x1.shape))

    def _source(self, n: int, generator, dtype) -> torch.Tensor:
        z = self.source_mean.to(dtype).expand((n,) + self.event_shape).clone()
        if self.source == "dirac":
            return z
        return z + self.source_std * self._noise(z, generator)

    # --- simulation --------------------------------------------------------------------------
    @torch.no_grad()
    def simulate(self, num_samples: int, generator: torch.Generator, *, use_ema: bool = False,
                 dtype=torch.float32, batch_size: int = 4096) -> SampleResult:
        r"""Integrate the controlled SDE from the source to the target end (module docstring).

        Args:
            num_samples: number of paths.
            generator: the only source of randomness.
            use_ema: use the EMA network (as :meth:`sample` does).

        Returns:
            :class:`SampleResult` with float64 samples and the Girsanov sums.
        """
        if not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples must be a positive int, got {num_samples!r}")
        if not isinstance(generator, torch.Generator):
            raise TypeError("generator must be a torch.Generator (randomness is explicit)")
        net = self.ema if use_ema else self.net
        xs, x0s, gs = [], [], []
        for start in range(0, num_samples, batch_size):
            n = min(batch_size, num_samples - start)
            x = self._project(self._source(n, generator, dtype))
            x0 = x.clone()
            gir = torch.zeros(n, dtype=torch.float64)
            for k in range(self.num_steps):
                dnu = float(self.nu[k + 1] - self.nu[k])
                t = torch.full((n,), float(self.ts[k]), dtype=dtype)
                a = self._adjoint(net, x, t)
                xi = self._noise(x, generator)
                gir += (math.sqrt(dnu) * _flat(a * xi).sum(1) - 0.5 * dnu * _flat(a * a).sum(1)).double()
                x = self._project(x - dnu * a + math.sqrt(dnu) * xi)
            if not torch.isfinite(x).all():
                raise FloatingPointError("simulate: non-finite state at the end of the SDE; lower lr, "
                                         "max_adjoint_norm or sigma_max")
            xs.append(x.double()), x0s.append(x0.double()), gs.append(gir)
        return SampleResult(torch.cat(xs), torch.cat(x0s), torch.cat(gs))

    def sample(self, num_samples: int, generator: torch.Generator, **kw) -> torch.Tensor:
        """``(N, *event_shape)`` float64 samples from the EMA network."""
        return self.simulate(num_samples, generator, use_ema=True, **kw).x

    def log_base_terminal(self, x: torch.Tensor) -> torch.Tensor:
        r""":math:`\log p^{base}_1(x)` up to a constant, :math:`-|x - m|^2 / (2(s_0^2 + \nu_1))`."""
        return -0.5 * _flat(x.double() - self.source_mean.double()).pow(2).sum(1) / self.base_terminal_var()

    def log_weights(self, result: SampleResult, u: torch.Tensor) -> torch.Tensor:
        r"""Path log-weights :math:`-U(x) - \log p^{base}_1(x) + \text{Girsanov}` of samples for
        :math:`e^{-U}` (up to one constant), given their reduced energies ``u`` ``(N,)``."""
        return -u.double() - self.log_base_terminal(result.x) + result.girsanov

    # --- training ----------------------------------------------------------------------------
    def _adjoint_target(self, x1: torch.Tensor, grad_u: torch.Tensor, potential=None) -> torch.Tensor:
        """Terminal adjoint :math:`\\nabla U + \\nabla V + h(x_1)` (Havens et al. 2025 / Liu et al. 2025, Alg. 1)."""
        if potential is not None:
            grad_u = grad_u + potential_grad(potential, x1, self.event_shape).to(grad_u.dtype)
        with torch.no_grad():
            return self._project(grad_u + self._corrector(x1))

    def _bridge(self, x0, x1, t, generator):
        nu = self._nu_of(t).to(x1.dtype)
        nu = nu.reshape((-1,) + (1,) * (x1.ndim - 1))
        mean = x0 + nu / self.nu1 * (x1 - x0)
        std = (nu * (self.nu1 - nu) / self.nu1).clamp_min(0).sqrt()
        return mean + std * self._noise(x1, generator)

    def _step(self, loss: torch.Tensor, opt, params, clip: float = 1.0) -> None:
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, clip)
        opt.step()

    def fit(self, energy: Any, *, iterations: int, generator: torch.Generator, samples_per_iteration: int = 256,
            gradient_steps: int = 20, batch_size: int = 256, buffer_size: int = 10000,
            corrector_every: int = 10, corrector_steps: int = 50, potential: Callable | None = None,
            progress: bool = False, desc: str = "adjoint sampler") -> "AdjointSampler":
        r"""Train by adjoint matching with a replay buffer (Havens et al. 2025, Alg. 1; Liu et al.
        2025, Alg. 1 for the corrector stages).

        Each iteration simulates ``samples_per_iteration`` paths with the current control,
        evaluates energy and forces once per terminal sample, adds them to the buffer and takes
        ``gradient_steps`` Adam steps on the loss, each on ``batch_size`` buffer samples with fresh
        times and bridge points. For ASBS, every ``corrector_every`` iterations the corrector takes
        ``corrector_steps`` steps on fresh pairs of the current sampler (the pairs cost no energy).
        Calling ``fit`` again continues (buffer, optimiser, EMA and counters are kept), which is
        what the well-tempered rounds do with a changed target.

        The regression's fixed point is taken over the *buffer's* distribution of terminal
        samples, so a buffer much older than the current target (samples of earlier
        well-tempered rounds) holds the sampler near its old law: keep ``buffer_size`` to a few
        iterations' worth when the target changes (measured on the double well: with 39
        iterations' worth the bias-weighted P(x1 > 0) was 0.95, with 8 iterations' worth 0.78-0.88,
        against 0.844; the path weights are exact either way).

        Args:
            energy: the target (``energy_and_forces`` or a differentiable callable), reduced units.
            potential: an optional cheap differentiable term ``x -> V(x)`` ``(B,)`` (in kT) added to
                the target, :math:`e^{-(U + V)}`; its gradient is recomputed at every draw from the
                buffer, so buffered samples stay valid when ``V`` changes between calls (the
                well-tempered bias of :mod:`.wtasbs`). Only ``U`` costs energy calls.
            iterations: outer iterations (each adds ``samples_per_iteration`` energy calls).
            generator: all randomness.

        Returns:
            ``self``.
        """
        for name, v in (("iterations", iterations), ("samples_per_iteration", samples_per_iteration),
                        ("gradient_steps", gradient_steps), ("batch_size", batch_size),
                        ("buffer_size", buffer_size), ("corrector_every", corrector_every),
                        ("corrector_steps", corrector_steps)):
            if not isinstance(v, int) or v < (0 if name == "iterations" else 1):
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if not isinstance(generator, torch.Generator):
            raise TypeError("generator must be a torch.Generator (randomness is explicit)")
        buf = getattr(self, "buffer", None)
        if buf is None or buf.capacity != buffer_size:
            self.buffer = buf if buf is not None else ReplayBuffer(buffer_size)
            self.buffer.capacity = buffer_size
        self.net.train()
        bar = tqdm(range(iterations), desc=desc, disable=not progress)
        for _ in bar:
            res = self.simulate(samples_per_iteration, generator)
            x1 = res.x.to(torch.float32)
            u, f = energy_and_forces(energy, res.x.reshape((-1,) + self.event_shape))
            self.energy_evaluations += x1.shape[0]
            grad_u = -f
            if self.max_adjoint_norm is not None:
                norm = _flat(grad_u).norm(dim=1).clamp_min(1e-12)
                scale = (self.max_adjoint_norm / norm).clamp_max(1.0)
                grad_u = grad_u * scale.reshape((-1,) + (1,) * len(self.event_shape))
            self.buffer.add(x0=res.x_source.float(), x1=x1, grad_u=self._project(grad_u.float()))
            losses = []
            for _ in range(gradient_steps):
                b = self.buffer.draw(batch_size, generator)
                target = self._adjoint_target(b["x1"], b["grad_u"], potential)
                t = self.process.t_min + (self.process.T - self.process.t_min) * torch.rand(
                    batch_size, generator=generator, dtype=torch.float64)
                xt = self._bridge(b["x0"], b["x1"], t, generator)
                pred = self._adjoint(self.net, xt, t.float())
                loss = _flat(pred - target).pow(2).sum(1).mean()
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"adjoint matching loss became {loss.item()} at iteration "
                                             f"{self.iterations}; lower lr or max_adjoint_norm")
                self._step(loss, self.opt, self.net.parameters())
                with torch.no_grad():
                    for pe, pm in zip(self.ema.parameters(), self.net.parameters()):
                        pe.lerp_(pm, 1.0 - self.ema_decay)
                losses.append(loss.item())
            self.iterations += 1
            rec = {"iteration": self.iterations, "loss": sum(losses) / len(losses),
                   "mean_energy": float(u.mean()), "energy_evaluations": self.energy_evaluations}
            if self.corrector is not None and self.iterations % corrector_every == 0:
                rec["corrector_loss"] = self._fit_corrector(corrector_steps, samples_per_iteration, batch_size,
                                                            generator)
            self.history.append(rec)
            if progress:
                bar.set_postfix(loss=f"{rec['loss']:.3g}", energy=f"{rec['mean_energy']:.3g}")
        self.net.eval()
        return self

    def _fit_corrector(self, steps: int, n: int, batch_size: int, generator) -> float:
        """Corrector matching (Liu et al. 2025, Alg. 1) on fresh pairs of the current sampler."""
        res = self.simulate(max(n, batch_size), generator)
        x0, x1 = res.x_source.float(), res.x.float()
        target = self._project(-(x1 - x0) / self.nu1)
        loss_v = float("nan")
        for _ in range(steps):
            idx = torch.randint(x1.shape[0], (batch_size,), generator=generator)
            loss = _flat(self._corrector(x1[idx]) - target[idx]).pow(2).sum(1).mean()
            self._step(loss, self.opt_corr, self.corrector.parameters())
            loss_v = loss.item()
        return loss_v

    # --- checkpointing -----------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Everything needed to continue training bit for bit (networks, EMA, optimisers, buffer,
        counters); save with :func:`sciffusion.utils.save_atomic`."""
        buf = getattr(self, "buffer", None)
        return {"net": self.net.state_dict(), "ema": self.ema.state_dict(), "opt": self.opt.state_dict(),
                "corrector": self.corrector.state_dict() if self.corrector else None,
                "opt_corr": self.opt_corr.state_dict() if self.opt_corr else None,
                "buffer": buf.state_dict() if buf is not None else None,
                "energy_evaluations": self.energy_evaluations, "iterations": self.iterations,
                "history": list(self.history)}

    def load_state_dict(self, state: dict) -> None:
        self.net.load_state_dict(state["net"])
        self.ema.load_state_dict(state["ema"])
        self.opt.load_state_dict(state["opt"])
        if self.corrector is not None:
            self.corrector.load_state_dict(state["corrector"])
            self.opt_corr.load_state_dict(state["opt_corr"])
        if state["buffer"] is not None:
            self.buffer = ReplayBuffer(state["buffer"]["capacity"])
            self.buffer.load_state_dict(state["buffer"])
        self.energy_evaluations = int(state["energy_evaluations"])
        self.iterations = int(state["iterations"])
        self.history = list(state["history"])
