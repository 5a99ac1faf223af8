"""sciffusion: scientific and discrete diffusion whose samplers are checked against exact answers.

The core (this package) holds what every domain shares: forward processes, the one denoiser
wrapper, time grids, samplers, likelihood, losses, SMC, training and small networks. Domains
live in ``sciffusion.domains``.
"""

from . import categorical, denoisers, likelihood, losses, nn, processes, samplers, schedules, smc, testing, training, utils
from .denoisers import Denoiser
from .likelihood import log_likelihood
from .processes import EDM, VE, VP, JointProcess, Linear, SubVP, get_process
from .samplers import SAMPLERS, get_sampler, sample
from .schedules import get_schedule
from .training import fit

__version__ = "0.1.0"

__all__ = ["Denoiser", "log_likelihood", "categorical", "likelihood", "VP", "SubVP", "VE", "EDM", "Linear", "JointProcess", "get_process", "SAMPLERS",
           "get_sampler", "sample", "get_schedule", "fit", "denoisers", "losses", "nn", "processes",
           "samplers", "schedules", "smc", "testing", "training", "utils"]
