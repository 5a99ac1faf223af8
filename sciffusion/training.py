"""A small training loop: EMA, gradient clipping, seeded data order, progress, resumable checkpoints.

``fit`` owns one ``torch.Generator`` for everything random in training (batch order and the
noise the loss draws). Its state is saved in every checkpoint together with the model, the EMA
copy, the optimizer and the loss history, so a run resumed from a checkpoint continues exactly
as the uninterrupted run would have (tested bit for bit).
"""

from __future__ import annotations

import copy
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm.auto import tqdm

from . import distributed as _distributed
from .utils import check_resume, fingerprint, save_atomic

log = logging.getLogger(__name__)

LossFn = Callable[[torch.nn.Module, Any, torch.Generator], torch.Tensor]


@dataclass
class FitResult:
    """What ``fit`` returns.

    Attributes:
        model: the trained model (last iterate).
        ema: the exponential moving average of the parameters (use it for sampling).
        losses: training loss per step.
        step: number of optimisation steps taken in total (across resumes).
    """

    model: torch.nn.Module
    ema: torch.nn.Module
    losses: list[float] = field(default_factory=list)
    step: int = 0


class _Batches:
    """Seeded epochs of shuffled minibatches from a tensor or a tuple of tensors."""

    def __init__(self, data, batch_size: int):
        self.data = data if isinstance(data, (tuple, list)) else (data,)
        self.n = self.data[0].shape[0]
        if any(d.shape[0] != self.n for d in self.data):
            raise ValueError("data: every tensor needs the same number of rows")
        if self.n == 0:
            raise ValueError("data: no rows to train on")
        self.batch_size = min(batch_size, self.n)
        self.single = not isinstance(data, (tuple, list))

    def draw(self, generator: torch.Generator):
        idx = torch.randint(self.n, (self.batch_size,), generator=generator)
        out = tuple(d[idx] for d in self.data)
        return out[0] if self.single else out


def capped_ema_decay(steps: int, decay: float = 0.999) -> float:
    r"""An EMA decay for a run of ``steps`` steps: :math:`\max(0, \min(d, 1 - 10/\text{steps}))`.

    The EMA of :func:`fit` starts at the random initialisation and keeps a share :math:`d^{\,\text{steps}}`
    of it (0.999^1500 = 22%); capping :math:`d` at :math:`1 - 10/\text{steps}` bounds that share by
    :math:`e^{-10}`, and leaves ``decay`` unchanged for runs of ``10 / (1 - decay)`` steps and more.
    """
    return max(0.0, min(decay, 1.0 - 10.0 / max(steps, 1)))


def fit(
    model: torch.nn.Module,
    loss_fn: LossFn,
    data: Any,
    *,
    steps: int,
    batch_size: int = 256,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    ema_decay: float = 0.999,
    grad_clip: float | None = 1.0,
    seed: int = 0,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 500,
    progress: bool = True,
    desc: str = "fit",
    settings: dict | None = None,
    log_every: int = 50,
) -> FitResult:
    """Train ``model`` by minimising ``loss_fn`` with Adam.

    Each step draws a minibatch (uniformly with replacement from ``data``, or by calling
    ``data(batch_size, generator)``), evaluates ``loss_fn(model, batch, generator)``, clips the
    gradient norm to ``grad_clip`` and updates the EMA copy
    :math:`\\bar\\theta \\leftarrow d\\,\\bar\\theta + (1-d)\\,\\theta`.

    Args:
        model: the network.
        loss_fn: ``(model, batch, generator) -> scalar loss``; draws its noise from ``generator``.
        data: a tensor, a tuple of tensors with a common first dimension, or a callable
            ``(batch_size, generator) -> batch`` for data generated on the fly.
        steps: total number of optimisation steps (including those already done in a checkpoint).
        batch_size: minibatch size.
        lr, weight_decay: Adam(W) settings.
        ema_decay: EMA decay ``d``.
        grad_clip: max gradient norm, or ``None``.
        seed: seeds the generator that orders the data and feeds the loss's noise.
        checkpoint: path; if it exists, training resumes from it; it is (re)written atomically
            every ``checkpoint_every`` steps and at the end. The checkpoint stores a fingerprint
            (:func:`sciffusion.utils.fingerprint`) of the data, the model's architecture,
            ``batch_size``, ``lr``, ``weight_decay``, ``ema_decay``, ``grad_clip``, ``seed`` and
            ``settings``; a resume whose fingerprint differs raises ValueError naming the setting
            (``steps`` may grow: resuming with more steps trains on).
        progress: show a tqdm bar.
        settings: anything else that changes the result and that ``loss_fn`` closes over (the
            forward process, a weighting, a target), by name; it joins the fingerprint.
        log_every: the losses are read back from the device (one transfer for the steps since
            the last read), checked for NaN/inf and shown on the progress bar every ``log_every``
            steps, before every checkpoint and at the end; in between, no step waits on the
            device. Every step's loss still ends up in ``FitResult.losses``. A non-finite loss
            raises FloatingPointError naming its step at the next read (up to ``log_every - 1``
            steps later); the checkpoint file then holds the last checkpoint written before it.

    Under ``torchrun`` with more than one process, ``fit`` trains with DistributedDataParallel
    (:mod:`sciffusion.distributed`): ``batch_size`` rows per rank from disjoint seeded shards,
    gradients averaged, the logged loss averaged over ranks, checkpoints written by rank 0;
    ``loss_fn`` receives the DDP-wrapped model. With one process nothing changes.

    Returns:
        :class:`FitResult`.
    """
    hook = _distributed.fit_hook(model=model, data=data, batch_size=batch_size, seed=seed, steps=steps, lr=lr,
                                 weight_decay=weight_decay, ema_decay=ema_decay, grad_clip=grad_clip,
                                 checkpointing=checkpoint is not None, checkpoint_every=checkpoint_every,
                                 log_every=log_every, settings=settings or {})  # None on one process
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if steps < 0 or batch_size < 1:
        raise ValueError(f"steps must be >= 0 and batch_size >= 1, got {steps} and {batch_size}")
    if not 0.0 <= ema_decay < 1.0:
        raise ValueError(f"ema_decay must lie in [0, 1), got {ema_decay}")
    if isinstance(log_every, bool) or not isinstance(log_every, int) or log_every < 1:
        raise ValueError(f"log_every must be a positive int, got {log_every!r}")
    if not callable(data):
        for i, d in enumerate(data if isinstance(data, (tuple, list)) else (data,)):
            if isinstance(d, torch.Tensor) and d.is_floating_point() and not torch.isfinite(d).all():
                bad = (~torch.isfinite(d)).sum().item()
                raise ValueError(f"data: tensor {i} holds {bad} NaN or infinite value(s); "
                                 "drop or impute them before training")
    rows, per_rank = (data, batch_size) if hook is None else hook.shard(data, batch_size)
    draw = data if callable(data) else _Batches(rows, per_rank).draw
    stamp = fingerprint(data=data, model=model, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                        ema_decay=ema_decay, grad_clip=grad_clip, seed=seed, settings=settings or {})
    stamp = stamp if hook is None else hook.stamp(stamp)
    generator = torch.Generator().manual_seed(seed if hook is None else hook.seed(seed))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    ema = copy.deepcopy(model).requires_grad_(False)
    losses: list[float] = []
    start = 0
    path = Path(checkpoint) if checkpoint is not None else None
    resume = path is not None and (path.exists() if hook is None else hook.exists(path))
    if resume:
        state = torch.load(path, weights_only=False)
        check_resume(state.get("fingerprint"), stamp, what=f"checkpoint {path}")
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"] if hook is None else hook.generator_state(state))
        losses = list(state["losses"])
        start = int(state["step"])
        log.info("resumed %s from step %d", path, start)

    def save(step: int) -> None:
        if path is not None:
            (save_atomic if hook is None else hook.save)({"model": model.state_dict(), "ema": ema.state_dict(),
                          "optimizer": opt.state_dict(), "generator": generator.get_state(),
                          "losses": losses, "step": step, "fingerprint": stamp}, path)

    pending: list[torch.Tensor] = []  # detached losses of the steps not yet read back
    saved = [start if resume else None]  # step of the checkpoint on disk

    def read_back(next_step: int) -> None:
        # one device->host transfer for the losses of steps next_step - len(pending) .. next_step - 1
        if not pending:
            return
        vals = torch.stack(pending).tolist()
        pending.clear()
        first = next_step - len(vals)
        for k, v in enumerate(vals):
            if not math.isfinite(v):
                losses.extend(vals[:k])
                kept = "no checkpoint was written" if saved[0] is None else \
                    f"the checkpoint keeps step {saved[0]}"
                raise FloatingPointError(f"fit: loss became {v} at step {first + k}; {kept}; "
                                         "lower lr or clip")
        losses.extend(vals)

    model.train()
    bar = tqdm(range(start, steps), desc=desc, disable=not progress, initial=start, total=steps)
    for step in bar:
        batch = draw(batch_size, generator) if callable(data) else draw(generator)
        loss = loss_fn(model if hook is None else hook.ddp, batch, generator)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), model.parameters()):
                pe.lerp_(pm, 1.0 - ema_decay)
            for be, bm in zip(ema.buffers(), model.buffers()):
                be.copy_(bm)
        pending.append(loss.detach() if hook is None else hook.mean(loss))  # the global batch's loss
        if step % log_every == 0:
            read_back(step + 1)
            if progress:
                bar.set_postfix(loss=f"{losses[-1]:.4f}")
        if path is not None and (step + 1) % checkpoint_every == 0:
            read_back(step + 1)
            save(step + 1)
            saved[0] = step + 1
    read_back(max(steps, start))
    save(max(steps, start))
    if hook is not None:
        hook.check_sync(model)
    model.eval()
    ema.eval()
    return FitResult(model=model, ema=ema, losses=losses, step=max(steps, start))
