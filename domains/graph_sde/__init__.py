"""Graph and molecule generation with a joint system of SDEs over node features and adjacency
(GDSS, Jo et al. 2022). Install with ``pip install "sciffusion[graphs]"``.

* :mod:`.datasets` — community-small, grid, planar, SBM; dense batches through torch-geometric; splits.
* :mod:`.molecules` — SMILES <-> dense molecular graphs (RDKit), valency correction, the built-in NCI set.
* :mod:`.nets` — GDSS's score networks (dense GCN for X, graph multi-head attention over adjacency
  powers for A), with a time input.
* :mod:`.model` — :class:`GraphSDE`: training (core DSM loss under the graph constraints), sampling
  with any core sampler (S4, PC, Euler–Maruyama, ...), exact PF-ODE log-likelihood, reward-tilted
  sampling through ``feynman_kac``, save / load.
* :mod:`.metrics` — MMD of degree / clustering / orbit counts; validity, uniqueness, novelty, FCD, NSPDK.
* :mod:`.io`, :mod:`.plots` — networkx / PyG / SMILES / SDF outputs; graph and molecule figures.
"""

from . import datasets, io, metrics, molecules, plots
from .datasets import (DenseGraphs, community_small, from_dense, grid_graphs, planar_graphs, read_split,
                       sbm_graphs, split, to_dense, write_split)
from .io import read_graphs_pt, read_sdf, to_networkx, to_pyg, write_graphs_pt, write_sdf, write_smiles
from .metrics import graph_metrics, molecule_metrics
from .model import PRESETS, GraphSDE, GraphSDEConfig
from .molecules import ATOM_TYPES, graphs_to_mols, load_smiles, nci_molecules, smiles_to_graphs
from .nets import GraphScoreModel, ScoreNetworkA, ScoreNetworkX
from .plots import draw_molecules, plot_graphs

__all__ = [
    "datasets", "io", "metrics", "molecules", "plots",
    "DenseGraphs", "community_small", "grid_graphs", "planar_graphs", "sbm_graphs", "to_dense", "from_dense",
    "split", "write_split", "read_split",
    "to_networkx", "to_pyg", "write_smiles", "write_sdf", "read_sdf", "write_graphs_pt", "read_graphs_pt",
    "graph_metrics", "molecule_metrics",
    "ATOM_TYPES", "smiles_to_graphs", "graphs_to_mols", "load_smiles", "nci_molecules",
    "GraphScoreModel", "ScoreNetworkX", "ScoreNetworkA",
    "GraphSDE", "GraphSDEConfig", "PRESETS",
    "plot_graphs", "draw_molecules",
]
