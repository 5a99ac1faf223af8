"""Multi-marginal Schrödinger bridges with iterative reference refinement for snapshot data.

Shen, Berlinghieri, Broderick, *Multi-marginal Schrödinger Bridges with Iterative Reference
Refinement*. From unpaired populations observed at a few times, infer trajectories and the
parameters of a mechanistic reference SDE by alternating (i) entropic OT couplings of adjacent
snapshots on the reference's transition cost, (ii) reference bridges through coupled points and
(iii) a maximum-likelihood refit of the reference. Physical time throughout (not the diffusion
convention of the core).

Quick start::

    from sciffusion.domains.schrodinger_bridge import as_snapshots, LotkaVolterra, fit_bridge
    snaps = as_snapshots([x0, x2, x4], [0.0, 2.0, 4.0])
    res = fit_bridge(snaps, LotkaVolterra(sigma=0.1), iterations=6)
    res.reference.params(); res.predict([1.0, 3.0])

Requires the ``bridges`` extra (``pip install "sciffusion[bridges]"``: POT, pandas, anndata).
"""

try:
    import ot  # noqa: F401
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError('sciffusion.domains.schrodinger_bridge needs POT: pip install "sciffusion[bridges]"') from err

from .bridge import BridgeFit, bootstrap, bootstrap_interval, couple, fit_bridge, sample_paths
from .closed_form import gaussian_kl, gaussian_sb_coupling, gaussian_sb_marginal, static_residual
from .coupling import entropic_plan, sample_chain
from .data import Snapshots, as_snapshots, from_anndata, read_csv, to_anndata, write_csv
from .drift import DriftModel, bridge_matching_data, fit_drift
from .references import (REFERENCES, Brownian, GradientPotential, Linear, LotkaVolterra, Reference,
                         Repressilator, get_reference, make_grid)

__all__ = ["BridgeFit", "bootstrap", "bootstrap_interval", "couple", "fit_bridge", "sample_paths", "gaussian_kl",
           "gaussian_sb_coupling", "gaussian_sb_marginal", "static_residual", "entropic_plan",
           "sample_chain", "Snapshots", "as_snapshots", "from_anndata", "read_csv", "to_anndata",
           "write_csv", "DriftModel", "bridge_matching_data", "fit_drift", "REFERENCES", "Brownian",
           "GradientPotential", "Linear", "LotkaVolterra", "Reference", "Repressilator",
           "get_reference", "make_grid"]
