r"""iDEM: iterated denoising energy matching (Akhound-Sadegh et al. 2024), the simple energy-only
sampler for cheap analytic energies.

For a VE process :math:`x_t = x_0 + \sigma_t\varepsilon` and a target :math:`\mu \propto e^{-U}`, the
noised score is an expectation over the *clean* point (Akhound-Sadegh et al. 2024, denoising energy matching),

.. math:: \nabla\log p_t(x) = \frac{\mathbb E_{x_0\sim N(x, \sigma_t^2 I)}\big[-\nabla U(x_0)\,e^{-U(x_0)}\big]}
                                   {\mathbb E_{x_0\sim N(x, \sigma_t^2 I)}\big[e^{-U(x_0)}\big]}
          \approx S_K(x, t) = \sum_{k=1}^K \mathrm{softmax}_k\big(-U(x + \sigma_t\varepsilon_k)\big)\,
                                \big(-\nabla U(x + \sigma_t\varepsilon_k)\big)

(their Monte-Carlo estimator, K samples, **K energy+force calls per training point**). The network is
trained to regress this estimate at points :math:`x_t = x_0 + \sigma_t\varepsilon` with :math:`x_0` from
a buffer (the inner loop of Alg. 1); the buffer is refilled by sampling the reverse SDE with the
current network (the outer loop). Sampling is the core's: the network is an eps-prediction
model wrapped by :class:`~sciffusion.denoisers.Denoiser` and integrated by any core sampler
(``euler_maruyama`` by default), so the regression target is :math:`-\sigma_t S_K`. As in the paper
the estimate is norm-clipped (``max_score_norm``), which keeps the early, far-off buffer from
dominating. The estimator is biased for finite K (a ratio estimate); iDEM is therefore the cheap
baseline here, and the adjoint samplers (:mod:`.sampler`) the main ones.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Sequence

import torch
from tqdm.auto import tqdm

from sciffusion.denoisers import Denoiser
from sciffusion.nn import MLP
from sciffusion.processes import VE
from sciffusion.samplers import sample as core_sample

from .sampler import ReplayBuffer, energy_and_forces

__all__ = ["IDEMSampler", "dem_score"]


def dem_score(energy: Any, xt: torch.Tensor, sigma: torch.Tensor, num_mc: int, generator: torch.Generator,
              project=None) -> torch.Tensor:
    r"""The Monte-Carlo noised score :math:`S_K(x_t, t)` (Akhound-Sadegh et al. 2024, the DEM estimator in Alg. 1).

    Args:
        energy: reduced energy (``energy_and_forces`` or differentiable callable).
        xt: ``(B, *event)`` noised points; sigma: ``(B,)`` their noise levels.
        num_mc: K.
        project: optional projection of the noise (a constrained process's ``project``).

    Returns:
        ``(B, *event)`` float64.
    """
    B = xt.shape[0]
    shape = (num_mc, B) + tuple(xt.shape[1:])
    eps = torch.randn(shape, generator=generator, dtype=torch.float64)
    if project is not None:
        eps = project(eps.reshape((-1,) + tuple(xt.shape[1:]))).reshape(shape)
    s = sigma.double().reshape((1, B) + (1,) * (xt.ndim - 1))
    x0 = (xt.double()[None] + s * eps).reshape((-1,) + tuple(xt.shape[1:]))
    u, f = energy_and_forces(energy, x0)
    w = torch.softmax(-u.reshape(num_mc, B), 0)
    return (w.reshape((num_mc, B) + (1,) * (xt.ndim - 1)) * f.reshape(shape)).sum(0)


class IDEMSampler:
    r"""iDEM on a core VE process (module docstring).

    Args:
        event_shape: shape of one configuration.
        process: a core VE process (default ``VE(0.01, sigma_max)``), optionally constrained.
        sigma_max: its largest noise when ``process`` is not given (cover the target's spread).
        num_mc: K, Monte-Carlo samples per score estimate.
        num_steps: reverse-SDE steps when sampling.
        max_score_norm: per-sample clip of :math:`\|S_K\|` (Akhound-Sadegh et al. clip it too).
        hidden, depth, lr, ema_decay, seed: the eps-network (core MLP) and its training.
    """

    def __init__(self, event_shape: Sequence[int], *, process: Any = None, sigma_max: float = 3.0,
                 num_mc: int = 100, num_steps: int = 100, max_score_norm: float | None = 100.0,
                 hidden: int = 128, depth: int = 3, lr: float = 1e-3, ema_decay: float = 0.99, seed: int = 0):
        self.event_shape = tuple(int(s) for s in event_shape)
        if not self.event_shape or any(s < 1 for s in self.event_shape):
            raise ValueError(f"event_shape must be a non-empty shape of positive sizes, got {event_shape!r}")
        for name, v in (("num_mc", num_mc), ("num_steps", num_steps)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if max_score_norm is not None and not max_score_norm > 0:
            raise ValueError(f"max_score_norm must be > 0 or None, got {max_score_norm}")
        self.process = process if process is not None else VE(0.01, float(sigma_max))
        self.num_mc, self.num_steps, self.max_score_norm = num_mc, num_steps, max_score_norm
        self.dim = math.prod(self.event_shape)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.net = MLP(self.dim, hidden=hidden, depth=depth, t_scale=self.process.T)
        self.ema = copy.deepcopy(self.net).requires_grad_(False)
        self.ema_decay = ema_decay
        self.opt = torch.optim.Adam(self.net.parameters(), lr=lr)
        self.buffer: ReplayBuffer | None = None
        self.energy_evaluations = 0
        self.history: list[dict] = []

    def _model(self, net):
        es = self.event_shape

        def model(x, t):
            return net(x.reshape(x.shape[0], -1), t).reshape((x.shape[0],) + es)
        return model

    def denoiser(self, use_ema: bool = True) -> Denoiser:
        """The trained network as a core eps-denoiser (for any core sampler)."""
        return Denoiser(self._model(self.ema if use_ema else self.net), self.process, "eps")

    @torch.no_grad()
    def sample(self, num_samples: int, generator: torch.Generator, *, use_ema: bool = True,
               sampler: str = "euler_maruyama") -> torch.Tensor:
        """``(N, *event_shape)`` float64 samples by the core's reverse-SDE sampler."""
        if not isinstance(generator, torch.Generator):
            raise TypeError("generator must be a torch.Generator (randomness is explicit)")
        x = core_sample(self.denoiser(use_ema), (num_samples,) + self.event_shape, sampler=sampler,
                        num_steps=self.num_steps, schedule="time_uniform", generator=generator)
        if not torch.isfinite(x).all():
            raise FloatingPointError("iDEM sample: non-finite samples; lower lr or max_score_norm")
        return x.double()

    def fit(self, energy: Any, *, iterations: int, generator: torch.Generator, samples_per_iteration: int = 256,
            inner_steps: int = 20, batch_size: int = 128, buffer_size: int = 10000,
            progress: bool = False) -> "IDEMSampler":
        """Alg. 1: refill the buffer from the current sampler, then ``inner_steps`` regressions
        on :math:`S_K` (each costs ``batch_size * num_mc`` energy calls)."""
        for name, v in (("iterations", iterations), ("samples_per_iteration", samples_per_iteration),
                        ("inner_steps", inner_steps), ("batch_size", batch_size), ("buffer_size", buffer_size)):
            if not isinstance(v, int) or v < (0 if name == "iterations" else 1):
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if not isinstance(generator, torch.Generator):
            raise TypeError("generator must be a torch.Generator (randomness is explicit)")
        if self.buffer is None:
            self.buffer = ReplayBuffer(buffer_size)
        project = self.process.project if getattr(self.process, "constraint", None) is not None else None
        model = self._model(self.net)
        for _ in tqdm(range(iterations), desc="iDEM", disable=not progress):
            self.buffer.add(x=self.sample(samples_per_iteration, generator, use_ema=False).float())
            losses = []
            for _ in range(inner_steps):
                x0 = self.buffer.draw(batch_size, generator)["x"]
                t = self.process.t_min + (self.process.T - self.process.t_min) * torch.rand(
                    batch_size, generator=generator, dtype=torch.float64)
                xt, _ = self.process.perturb(x0.double(), t, generator)
                sig = self.process.sigma(t)
                score = dem_score(energy, xt, sig, self.num_mc, generator, project)
                self.energy_evaluations += batch_size * self.num_mc
                if self.max_score_norm is not None:
                    n = score.reshape(batch_size, -1).norm(dim=1).clamp_min(1e-12)
                    score = score * (self.max_score_norm / n).clamp_max(1.0).reshape((-1,) + (1,) * len(self.event_shape))
                target = (-sig.reshape((-1,) + (1,) * len(self.event_shape)) * score).float()
                pred = model(xt.float(), t.float())
                if project is not None:
                    pred = project(pred)
                loss = (pred - target).pow(2).reshape(batch_size, -1).sum(1).mean()
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"iDEM loss became {loss.item()}; lower lr or max_score_norm")
                self.opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self.net.parameters(), 1.0)
                self.opt.step()
                with torch.no_grad():
                    for pe, pm in zip(self.ema.parameters(), self.net.parameters()):
                        pe.lerp_(pm, 1.0 - self.ema_decay)
                losses.append(loss.item())
            self.history.append({"loss": sum(losses) / len(losses), "energy_evaluations": self.energy_evaluations})
        return self
