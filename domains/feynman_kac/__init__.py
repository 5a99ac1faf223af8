"""Feynman–Kac correctors (Skreta et al. 2025): exact SMC sampling of annealed, product, guided and
reward-tilted targets built from pretrained diffusion models (see :mod:`.fkc`), and annealing /
products of masked discrete diffusion models (:mod:`.masked`, on ``sciffusion.domains.discrete``)."""

from .masked import MaskedFKCResult, sample_fkc_masked
from .fkc import (FKCResult, Target, anneal, combined_eps, guidance, log_weight_increment, noise_level,
                  product, sample_fkc)
from .recursion import gaussian_recursion

__all__ = ["FKCResult", "Target", "anneal", "combined_eps", "guidance", "log_weight_increment",
           "noise_level", "product", "sample_fkc", "sample_fkc_masked", "MaskedFKCResult", "gaussian_recursion"]
