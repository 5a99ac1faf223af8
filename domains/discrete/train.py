"""Training a discrete denoiser through the core :func:`sciffusion.training.fit`, and model files.

A model file (:func:`save_model`) holds the EMA weights and everything needed to rebuild the
network and its process (architecture, sizes, process kind, schedule, alphabet), so
``sciffusion discrete sample`` needs nothing else. Resumable training uses ``fit``'s own
checkpoint (``checkpoint=``), which continues bit for bit and refuses to resume a checkpoint
written for other data, another network or other settings (``fit``'s fingerprint, which here also
covers the process, schedule, loss and vocabulary).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from sciffusion.training import FitResult, fit

from .losses import make_loss
from .nets import build_model
from .processes import check_tokens, get_discrete_process

__all__ = ["train", "save_model", "load_model"]


def train(data: torch.Tensor, *, vocab_size: int, process: str = "masked", schedule: str = "loglinear",
          arch: str = "transformer", arch_kwargs: dict | None = None, loss: str = "elbo", steps: int = 1000,
          batch_size: int = 64, lr: float = 1e-3, ema_decay: float = 0.999, seed: int = 0,
          checkpoint: str | os.PathLike | None = None, checkpoint_every: int = 500,
          progress: bool = True):
    """Train a denoiser on token windows ``data (N, L)``.

    Returns:
        ``(FitResult, process, config)``; sample with ``result.ema``.
    """
    data = check_tokens(data, vocab_size, "data")
    proc = get_discrete_process(process, vocab_size, schedule)
    torch.manual_seed(seed)  # network initialisation (fit seeds the data order and loss noise itself)
    config = {"vocab_size": vocab_size, "process": process, "schedule": schedule, "arch": arch,
              "arch_kwargs": dict(arch_kwargs or {}), "max_len": int(data.shape[1])}
    model = build_model(arch, proc, data.shape[1], **config["arch_kwargs"])
    res: FitResult = fit(model, make_loss(proc, loss), data, steps=steps, batch_size=batch_size, lr=lr,
                         ema_decay=ema_decay, seed=seed, checkpoint=checkpoint,
                         checkpoint_every=checkpoint_every, progress=progress, desc=f"discrete {process}",
                         settings={"process": process, "schedule": schedule, "loss": loss,
                                   "vocab_size": vocab_size, "arch": arch, "arch_kwargs": config["arch_kwargs"]})
    return res, proc, config


def save_model(path: str | os.PathLike, model: torch.nn.Module, config: dict, alphabet: str | None = None) -> Path:
    """Write weights + config (+ alphabet for text) atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"state_dict": model.state_dict(), "config": config, "alphabet": alphabet}, tmp)
    os.replace(tmp, path)
    return path


def load_model(path: str | os.PathLike):
    """``(model, process, config, alphabet)`` from :func:`save_model`'s file (model in eval mode).

    Raises:
        ValueError: the file is missing or is not a model file written by :func:`save_model`.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such model file")
    expected = "a discrete model file written by `sciffusion discrete train` (save_model)"
    try:
        blob = torch.load(path, weights_only=False)
    except Exception as err:  # noqa: BLE001 - any unreadable file gets the same plain message
        raise ValueError(f"{path} is not {expected}: {type(err).__name__}") from None
    if not isinstance(blob, dict) or not {"state_dict", "config"} <= set(blob):
        raise ValueError(f"{path} is not {expected} (a training checkpoint? use the file given as --out)")
    cfg = blob["config"]
    proc = get_discrete_process(cfg["process"], cfg["vocab_size"], cfg["schedule"])
    model = build_model(cfg["arch"], proc, cfg["max_len"], **cfg["arch_kwargs"])
    model.load_state_dict(blob["state_dict"])
    return model.eval(), proc, cfg, blob.get("alphabet")
