"""Feynman–Kac correctors (Skreta et al. 2025): exact SMC sampling of annealed, product, guided and
reward-tilted targets built from pretrained diffusion models (see :mod:`.fkc`)."""

from .fkc import (FKCResult, Target, anneal, combined_eps, guidance, log_weight_increment, noise_level,
                  product, sample_fkc)

__all__ = ["FKCResult", "Target", "anneal", "combined_eps", "guidance", "log_weight_increment",
           "noise_level", "product", "sample_fkc"]
