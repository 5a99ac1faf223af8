"""sciffusion: scientific and discrete diffusion whose samplers are checked against exact answers.

The core (this package) holds what every domain shares: forward processes, the one denoiser
wrapper, time grids, samplers, likelihood, losses, SMC, training and small networks. Domains
live in ``sciffusion.domains``.
"""

import importlib

__version__ = "0.1.0"

# Names load on first use (PEP 562), so that ``import sciffusion`` (and the ``sciffusion --help``
# command line) does not pay for torch until something needs it.
_SUBMODULES = ("categorical", "constraints", "denoisers", "likelihood", "losses", "nn", "processes", "samplers",
               "schedules", "smc", "testing", "training", "utils")
_NAMES = {"Denoiser": "denoisers", "log_likelihood": "likelihood", "EDM": "processes", "VE": "processes",
          "VP": "processes", "JointProcess": "processes", "Linear": "processes", "SubVP": "processes",
          "get_process": "processes", "SAMPLERS": "samplers", "get_sampler": "samplers", "sample": "samplers",
          "get_schedule": "schedules", "fit": "training"}


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    if name in _NAMES:
        value = getattr(importlib.import_module(f".{_NAMES[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'sciffusion' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_SUBMODULES) | set(_NAMES))


__all__ = ["Denoiser", "log_likelihood", "categorical", "likelihood", "VP", "SubVP", "VE", "EDM", "Linear", "JointProcess", "get_process", "SAMPLERS",
           "get_sampler", "sample", "get_schedule", "fit", "denoisers", "losses", "nn", "processes",
           "samplers", "schedules", "smc", "testing", "training", "utils", "constraints"]
