"""The base model: a masked-diffusion denoiser of nucleotide sequences, trained through the
``discrete`` training path (:func:`sciffusion.domains.discrete.train.train`) and stored with its
alphabet by :func:`~sciffusion.domains.discrete.train.save_model`.

Its likelihood is the masked-diffusion ELBO (:func:`elbo`), the naturalness score reported beside
every reward.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from sciffusion.domains.discrete.losses import masked_elbo_count
from sciffusion.training import capped_ema_decay
from sciffusion.domains.discrete.train import load_model, save_model, train

from .alphabet import Alphabet, _check_x, get_alphabet

__all__ = ["train_base_model", "save_base_model", "load_base_model", "elbo"]


def train_base_model(x: torch.Tensor, *, arch: str = "cnn", arch_kwargs: dict | None = None, steps: int = 2000,
                     batch_size: int = 128, lr: float = 2e-3, ema_decay: float | None = None, seed: int = 0,
                     progress: bool = False, checkpoint=None):
    r"""Train a masked-diffusion denoiser on ``x (N, L)`` nucleotide tokens (``discrete.train`` with
    ``process="masked"``, loglinear schedule, ELBO loss).

    Args:
        arch: ``"cnn"`` (dilated residual CNN, the default for DNA) or ``"transformer"``.
        arch_kwargs: network sizes (``channels``/``depth`` for the CNN, ``d_model``/``num_layers``
            for the transformer).
        ema_decay: decay ``d`` of the returned EMA weights. Default ``min(0.999, 1 - 10 / steps)``
            (:func:`sciffusion.training.capped_ema_decay`):
            the EMA keeps a share :math:`d^{\,\text{steps}}` of the random initialisation, which is
            0.999^1500 = 22% for a fixed 0.999 after 1500 steps; the default bounds it by
            :math:`(1 - 10/\text{steps})^{\text{steps}} < e^{-10} \approx 5\cdot 10^{-5}` and keeps
            0.999 for runs of 10000 steps and more.

    Returns:
        ``(model, process, config)``: the EMA network in eval mode.
    """
    x = _check_x(x, 4, "x")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    if ema_decay is None:
        ema_decay = capped_ema_decay(steps)
    if not (isinstance(ema_decay, (int, float)) and 0.0 <= ema_decay < 1.0):
        raise ValueError(f"ema_decay must be a number in [0, 1), got {ema_decay!r}")
    res, proc, cfg = train(x, vocab_size=4, process="masked", schedule="loglinear", arch=arch,
                           arch_kwargs=arch_kwargs, steps=steps, batch_size=batch_size, lr=lr,
                           ema_decay=float(ema_decay), seed=seed, progress=progress, checkpoint=checkpoint)
    return res.ema.eval(), proc, cfg


def save_base_model(path: str | os.PathLike, model, config: dict, alphabet: str | Alphabet = "dna") -> Path:
    """Write the model file (weights, config, alphabet letters) atomically."""
    return save_model(path, model, config, get_alphabet(alphabet).letters)


def load_base_model(path: str | os.PathLike):
    """``(model, process, config, alphabet)`` from :func:`save_base_model`'s file.

    Raises:
        ValueError: the file is not a masked nucleotide model.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file {str(path)!r} does not exist")
    model, proc, cfg, letters = load_model(path)
    if cfg.get("process") != "masked" or cfg.get("vocab_size") != 4 or letters not in ("ACGT", "ACGU"):
        raise ValueError(f"{path} is not a masked-diffusion nucleotide model (process {cfg.get('process')!r}, "
                         f"vocab {cfg.get('vocab_size')}, alphabet {letters!r})")
    return model, proc, cfg, get_alphabet("dna" if letters == "ACGT" else "rna")


@torch.no_grad()
def elbo(model, process, x: torch.Tensor, *, num_samples: int = 16, generator: torch.Generator | None = None,
         batch_size: int = 1024) -> torch.Tensor:
    r"""Per-sequence ELBO in nats, ``(B,)`` float64: minus the masked NELBO
    :math:`\mathbb{E}_k\big[\tfrac{L}{k}\sum_{i \in \text{masked}} -\log p_\theta(x_0^i \mid x_t)\big]`
    (the mask-count form, :func:`~sciffusion.domains.discrete.losses.masked_elbo_count`), averaged
    over ``num_samples`` stratified draws; a lower bound on :math:`\log p_\theta(x_0)`."""
    x = _check_x(x, 4, "x")
    if not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive int, got {num_samples!r}")
    rep = x.repeat_interleave(num_samples, 0)
    vals = torch.cat([masked_elbo_count(model, process, rep[i:i + batch_size], generator)
                      for i in range(0, rep.shape[0], batch_size)])
    return -vals.view(x.shape[0], num_samples).mean(1).double()
