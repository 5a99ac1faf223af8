"""Discrete diffusion over token sequences: masked, uniform and absorbing-uniform processes,
exact oracles, first-hitting / cached ancestral / ReMDM / predictor–corrector samplers, ELBOs.

Conventions
-----------
Tokens are long tensors ``x0`` of shape ``(B, L)`` with values in ``[0, V)``. Time runs from data
(t = 0) to noise (t = 1); :math:`\\alpha_t` is the probability that a site is still clean.

Model interface (what samplers, losses and other domains call)
--------------------------------------------------------------
* **Masked diffusion** (:class:`MaskedProcess`, mask id ``process.mask_id``, default ``V``)::

      logits = model(x_t)          # x_t: (B, L) long, mask id at masked sites
                                   # logits: (B, L, V) = log p(x0^i | x_t) up to a per-site constant

  Time-free: the exact denoiser of masked diffusion does not depend on t (Zheng et al. 2024).
  At clean sites the model may output anything; samplers keep clean tokens. An optional
  attribute ``model.max_len`` is checked against sequence lengths.
* **Uniform diffusion** (:class:`UniformProcess`)::

      logits = model(x_t, t)       # t: (B,) float; logits of p(x0^i | x_t^{-i}) (leave-one-out)

  or of the denoiser p(x0^i | x_t) if ``model.output == "denoiser"``.
* **Absorbing-uniform** (:class:`AbsorbingUniformProcess`): ``logits = model(x_t, z, t)``.

The exact oracle :class:`MarkovChainOracle` (a first-order Markov chain, posteriors by
forward–backward) provides such models: ``oracle.masked_model(process)``,
``oracle.uniform_model(process, "loo"|"denoiser")``, ``oracle.absorbing_uniform_model(process)``,
plus ``log_prob``, ``sample``, ``enumerate`` and ``posteriors(emission)``.

Example::

    import torch
    from sciffusion.domains.discrete import MarkovChainOracle, MaskedProcess, sample_first_hitting
    oracle = MarkovChainOracle.random(vocab_size=4, length=6, seed=0)
    process = MaskedProcess(vocab_size=4)
    out = sample_first_hitting(oracle.masked_model(process), process, (1000, 6),
                               generator=torch.Generator().manual_seed(0))
    out.x, out.nfe          # exact samples of the chain; 6 model calls
"""

from .oracle import MarkovChainOracle, forward_backward
from .posteriors import (concrete_score_from_loo, denoiser_from_loo, gibbs_conditional, loo_from_concrete_score,
                         loo_from_denoiser, uniform_bridge)
from .processes import AbsorbingUniformProcess, MaskedProcess, UniformProcess, check_tokens, get_discrete_process
from .samplers import (SAMPLERS, DiscreteSample, ancestral_step, first_hitting_step, gibbs_corrector,
                       get_discrete_sampler, model_probs, sample_absorbing_uniform, sample_ancestral, sample_first_hitting,
                       sample_remdm, sample_uniform)
from .schedules import Cosine, DiscreteSchedule, Geometric, LogLinear, get_discrete_schedule

__all__ = ["MarkovChainOracle", "forward_backward", "MaskedProcess", "UniformProcess", "AbsorbingUniformProcess",
           "check_tokens", "get_discrete_process", "denoiser_from_loo", "loo_from_denoiser",
           "concrete_score_from_loo", "loo_from_concrete_score", "uniform_bridge", "gibbs_conditional",
           "SAMPLERS", "DiscreteSample", "ancestral_step", "first_hitting_step", "get_discrete_sampler", "model_probs",
           "sample_ancestral",
           "sample_first_hitting", "sample_remdm", "gibbs_corrector", "sample_uniform", "sample_absorbing_uniform",
           "DiscreteSchedule", "LogLinear", "Cosine", "Geometric", "get_discrete_schedule"]
