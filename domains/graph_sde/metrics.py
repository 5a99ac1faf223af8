r"""Generated-graph and generated-molecule metrics, as GDSS (Jo et al. 2022) and later papers report.

Graph metrics (GraphRNN's evaluation, You et al. 2018, Sec. 4.3, as GDSS runs it in
``evaluation/stats.py``): each graph is summarised by a descriptor :math:`s(G)`, and the two
sets are compared by the (biased, V-statistic) squared MMD

.. math::

    \mathrm{MMD}^2(R, P) = \frac{1}{|R|^2}\sum_{r, r'} k(s_r, s_{r'})
      + \frac{1}{|P|^2}\sum_{p, p'} k(s_p, s_{p'}) - \frac{2}{|R||P|}\sum_{r, p} k(s_r, s_p).

Descriptors: the degree histogram (normalised to a pmf), the histogram of local clustering
coefficients in 100 bins on [0, 1] (normalised), and the per-node mean of the 15 node-orbit
counts of graphlets with up to 4 nodes (ORCA, through the ``orbit-count`` package; not a
histogram, not normalised). The spectral descriptor (normalised-Laplacian eigenvalues in 200
bins on [-1e-5, 2]) is available too.

Two kernel conventions, with the bandwidths the papers use (:math:`\sigma` = 1 degree,
0.1 clustering, 30 orbit, 1 spectral):

- ``"gaussian_emd"`` -- GraphRNN/GDSS (the tables in GDSS): degree, clustering and spectral use
  :math:`k = \exp(-W_1(s, s')^2 / 2\sigma^2)` with :math:`W_1` the earth mover's distance between
  the 1-D pmfs, ground distance :math:`|i-j|` between bins for degree and spectral and
  :math:`|i-j|/100` (the bin width) for clustering; the orbit descriptor uses the Gaussian
  kernel on the Euclidean distance, :math:`k = \exp(-\lVert s - s'\rVert^2 / 2\sigma^2)`, as GDSS
  (``KERNEL=gaussian`` for orbit in ``utils/loader.py``).
- ``"gaussian_tv"`` -- GRAN, SPECTRE, DiGress and later papers: every descriptor uses
  :math:`k = \exp(-\mathrm{TV}(s, s')^2 / 2\sigma^2)`, :math:`\mathrm{TV} = \tfrac12 \sum_i |s_i - s'_i|`
  (on the raw orbit vectors too).

For 1-D pmfs of equal mass the earth mover's distance has the closed form
:math:`W_1 = \sum_k |F_s(k) - F_{s'}(k)|\,\Delta` (difference of the cumulative sums times the
ground distance between neighbouring bins), which is what is computed here; it equals the
transport linear program that GraphRNN solves with ``pyemd``.

Empty graphs (no nodes) are dropped from the generated set before the MMD, as GDSS does.
The values are squared MMDs (what GDSS's tables print), not their square roots.
"""

from __future__ import annotations

import math
import warnings
from typing import Iterable, Sequence

import numpy as np

__all__ = [
    "KERNELS",
    "mmd",
    "mmd_degree",
    "mmd_clustering",
    "mmd_orbit",
    "mmd_spectral",
    "graph_metrics",
    "degree_histogram",
    "clustering_histogram",
    "orbit_descriptor",
    "node_orbit_counts",
    "molecule_metrics",
    "nspdk_mmd",
    "mols_to_nx",
]

_EXTRA = 'pip install "sciffusion[graphs]"'
KERNELS = ("gaussian_emd", "gaussian_tv", "gaussian")


def _nx():
    try:
        import networkx as nx
    except ImportError as e:  # pragma: no cover
        raise ImportError(f"graph_sde metrics need networkx: {_EXTRA}") from e
    return nx


# --------------------------------------------------------------------------------------------
# Kernels and the MMD
# --------------------------------------------------------------------------------------------


def _stack(samples: Sequence[np.ndarray], length: int) -> np.ndarray:
    out = np.zeros((len(samples), length), dtype=np.float64)
    for i, s in enumerate(samples):
        out[i, : len(s)] = s
    return out


def _distances(a: np.ndarray, b: np.ndarray, kind: str, scale: float) -> np.ndarray:
    """Pairwise distances between rows: ``emd`` (1-D W1 by cumulative sums), ``tv``, ``l2``."""
    if kind == "emd":
        ca, cb = np.cumsum(a, axis=1), np.cumsum(b, axis=1)
        return np.abs(ca[:, None, :] - cb[None, :, :]).sum(-1) / scale
    if kind == "tv":
        return 0.5 * np.abs(a[:, None, :] - b[None, :, :]).sum(-1)
    return np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))


def mmd(
    ref: Sequence[np.ndarray],
    pred: Sequence[np.ndarray],
    distance: str = "emd",
    sigma: float = 1.0,
    *,
    is_hist: bool = True,
    distance_scaling: float = 1.0,
) -> float:
    r"""Squared MMD (biased V-statistic) between two sets of descriptor vectors with the kernel
    :math:`k(s, s') = \exp(-d(s, s')^2 / 2\sigma^2)`.

    Args:
        ref, pred: Non-empty sequences of 1-D arrays (zero-padded to a common length).
        distance: ``"emd"`` (1-D earth mover's distance, ground distance
            ``|i - j| / distance_scaling``), ``"tv"`` (total variation) or ``"l2"``.
        sigma: Kernel bandwidth.
        is_hist: Normalise every descriptor to sum 1 first (histograms -> pmfs).
        distance_scaling: Bins per unit of ground distance for ``"emd"``.

    Returns:
        :math:`\mathrm{MMD}^2` as a float (may be a rounding error below zero for equal sets).
    """
    if distance not in ("emd", "tv", "l2"):
        raise ValueError(f"distance must be 'emd', 'tv' or 'l2', got {distance!r}")
    if not sigma > 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    if len(ref) == 0 or len(pred) == 0:
        raise ValueError(f"mmd needs two non-empty sets, got {len(ref)} and {len(pred)} descriptors")
    ref = [np.asarray(s, dtype=np.float64).ravel() for s in ref]
    pred = [np.asarray(s, dtype=np.float64).ravel() for s in pred]
    for name, group in (("ref", ref), ("pred", pred)):
        if any(not np.isfinite(s).all() for s in group):
            raise ValueError(f"{name} descriptors contain NaN or inf")
        if is_hist and any(s.sum() <= 0 for s in group):
            raise ValueError(f"{name} has an empty histogram; cannot normalise it to a pmf")
    if is_hist:
        ref = [s / s.sum() for s in ref]
        pred = [s / s.sum() for s in pred]
    length = max(max(len(s) for s in ref), max(len(s) for s in pred))
    a, b = _stack(ref, length), _stack(pred, length)

    def k(x, y):
        d = _distances(x, y, distance, distance_scaling)
        return np.exp(-(d * d) / (2.0 * sigma * sigma))

    value = float(k(a, a).mean() + k(b, b).mean() - 2.0 * k(a, b).mean())
    if not math.isfinite(value):
        raise ValueError("the MMD is not finite")
    return value


def _check_kernel(kernel: str) -> None:
    if kernel not in ("gaussian_emd", "gaussian_tv"):
        raise ValueError(f"kernel must be 'gaussian_emd' (GDSS) or 'gaussian_tv' (later papers), got {kernel!r}")


def _check_graphs(graphs, name: str, drop_empty: bool) -> list:
    nx = _nx()
    graphs = list(graphs)
    for i, g in enumerate(graphs):
        if not isinstance(g, nx.Graph):
            raise TypeError(f"{name}[{i}] must be a networkx.Graph, got {type(g).__name__}")
    if drop_empty:
        graphs = [g for g in graphs if g.number_of_nodes() > 0]
    if not graphs:
        raise ValueError(f"{name} holds no graph with at least one node")
    if any(g.number_of_nodes() == 0 for g in graphs):
        raise ValueError(f"{name} holds an empty graph (no nodes)")
    return graphs


# --------------------------------------------------------------------------------------------
# Descriptors
# --------------------------------------------------------------------------------------------


def degree_histogram(g) -> np.ndarray:
    """Counts of nodes of degree 0, 1, 2, ... (``networkx.degree_histogram``)."""
    return np.asarray(_nx().degree_histogram(g), dtype=np.float64)


def clustering_histogram(g, bins: int = 100) -> np.ndarray:
    """Histogram of the local clustering coefficients in ``bins`` equal bins on [0, 1]."""
    values = list(_nx().clustering(g).values())
    hist, _ = np.histogram(values, bins=bins, range=(0.0, 1.0))
    return hist.astype(np.float64)


def orbit_descriptor(g) -> np.ndarray:
    r"""Per-node mean of the 15 node-orbit counts of graphlets with 2-4 nodes (ORCA orbits 0-14).

    Orbit 0 is the degree; 1, 2 the end and centre of an induced 3-path; 3 a triangle; 4, 5 the
    end and inner nodes of a 4-path; 6, 7 leaf and centre of a 3-star; 8 the 4-cycle; 9, 10, 11
    the pendant, the degree-2 triangle nodes and the degree-3 node of a paw; 12, 13 the degree-2
    and degree-3 nodes of a diamond; 14 the 4-clique (Hočevar & Demšar 2014).
    """
    return node_orbit_counts(g).sum(axis=0) / g.number_of_nodes()


def node_orbit_counts(g) -> np.ndarray:
    """``(n, 15)`` int node-orbit counts of ``g`` (graphlets up to 4 nodes) from ``orbit-count``."""
    try:
        import orbit_count
    except ImportError as e:  # pragma: no cover
        raise ImportError(f"orbit counts need the orbit-count package: {_EXTRA}") from e
    nx = _nx()
    h = nx.Graph(g)
    h.remove_edges_from(list(nx.selfloop_edges(h)))
    if h.number_of_edges() == 0:  # ORCA needs at least one edge; every count is zero then
        return np.zeros((h.number_of_nodes(), 15), dtype=np.int64)
    return np.asarray(orbit_count.node_orbit_counts(h, graphlet_size=4), dtype=np.int64)


def _spectral_pmf(g) -> np.ndarray:
    nx = _nx()
    from scipy.linalg import eigvalsh

    eigs = eigvalsh(nx.normalized_laplacian_matrix(g).toarray())
    hist, _ = np.histogram(eigs, bins=200, range=(-1e-5, 2.0))
    return hist.astype(np.float64)


# --------------------------------------------------------------------------------------------
# Graph MMDs
# --------------------------------------------------------------------------------------------


def _graph_mmd(ref: Iterable, pred: Iterable, kernel: str, descriptor, sigma: float, gdss_distance: str = "emd",
               **mmd_options) -> float:
    """Squared MMD of ``descriptor(g)`` between ``ref`` and ``pred`` (empty generated graphs dropped):
    ``gdss_distance`` under ``kernel="gaussian_emd"``, total variation under ``"gaussian_tv"``."""
    _check_kernel(kernel)
    ref, pred = _check_graphs(ref, "ref", False), _check_graphs(pred, "pred", True)
    distance = gdss_distance if kernel == "gaussian_emd" else "tv"
    return mmd([descriptor(g) for g in ref], [descriptor(g) for g in pred], distance, sigma, **mmd_options)


def mmd_degree(ref: Iterable, pred: Iterable, kernel: str = "gaussian_emd", sigma: float = 1.0) -> float:
    r"""Squared MMD of degree distributions (GraphRNN/GDSS ``degree_stats``).

    Args:
        ref: Reference networkx graphs (e.g. the test set).
        pred: Generated graphs (empty ones are dropped).
        kernel: ``"gaussian_emd"`` (GDSS) or ``"gaussian_tv"``.
        sigma: Bandwidth (papers: 1).
    """
    return _graph_mmd(ref, pred, kernel, degree_histogram, sigma)


def mmd_clustering(
    ref: Iterable, pred: Iterable, kernel: str = "gaussian_emd", sigma: float = 0.1, bins: int = 100
) -> float:
    r"""Squared MMD of clustering-coefficient histograms (100 bins on [0, 1]; GDSS
    ``clustering_stats`` with ``sigma=0.1`` and EMD ground distance in units of [0, 1],
    i.e. ``distance_scaling=bins``)."""
    if not isinstance(bins, int) or bins < 1:
        raise ValueError(f"bins must be a positive int, got {bins!r}")
    return _graph_mmd(ref, pred, kernel, lambda g: clustering_histogram(g, bins), sigma,
                      distance_scaling=float(bins))


def mmd_orbit(ref: Iterable, pred: Iterable, kernel: str = "gaussian_emd", sigma: float = 30.0) -> float:
    r"""Squared MMD of mean 4-node orbit counts (GDSS ``orbit_stats_all``, ``sigma=30``).

    The descriptor is :func:`orbit_descriptor`, not normalised. ``kernel="gaussian_emd"`` names
    GDSS's convention, which for orbits is the Gaussian kernel on the Euclidean distance (the
    descriptor is not a histogram); ``"gaussian_tv"`` uses the total-variation distance.
    """
    return _graph_mmd(ref, pred, kernel, orbit_descriptor, sigma, gdss_distance="l2", is_hist=False)


def mmd_spectral(ref: Iterable, pred: Iterable, kernel: str = "gaussian_emd", sigma: float = 1.0) -> float:
    r"""Squared MMD of normalised-Laplacian spectra (200 bins on [-1e-5, 2]; GDSS
    ``spectral_stats``, SPECTRE)."""
    return _graph_mmd(ref, pred, kernel, _spectral_pmf, sigma)


_GRAPH_METRICS = {
    "degree": mmd_degree,
    "clustering": mmd_clustering,
    "orbit": mmd_orbit,
    "spectral": mmd_spectral,
}


def graph_metrics(
    ref: Iterable, pred: Iterable, kernel: str = "gaussian_emd", metrics: Sequence[str] = ("degree", "clustering", "orbit")
) -> dict:
    """The GDSS table row: squared MMDs of degree, clustering and orbit (and spectral if asked).

    Returns:
        ``{"degree": ..., "clustering": ..., "orbit": ..., "kernel": kernel, "num_ref": .., "num_pred": ..}``
        where ``num_pred`` counts the non-empty generated graphs used.
    """
    _check_kernel(kernel)
    ref = _check_graphs(ref, "ref", False)
    pred_all = list(pred)
    pred = _check_graphs(pred_all, "pred", True)
    unknown = [m for m in metrics if m not in _GRAPH_METRICS]
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; choose from {sorted(_GRAPH_METRICS)}")
    out = {m: _GRAPH_METRICS[m](ref, pred, kernel=kernel) for m in metrics}
    out.update(kernel=kernel, num_ref=len(ref), num_pred=len(pred))
    if len(pred) < len(pred_all):
        out["num_empty_dropped"] = len(pred_all) - len(pred)
    return out


# --------------------------------------------------------------------------------------------
# Molecule metrics
# --------------------------------------------------------------------------------------------


def mols_to_nx(mols: Iterable) -> list:
    """RDKit molecules as networkx graphs for NSPDK, labelled as GDSS's ``mols_to_nx``: node
    ``label`` = atom symbol, edge ``label`` = ``int(bond order)`` (aromatic 1.5 -> 1)."""
    nx = _nx()
    out = []
    for m in mols:
        g = nx.Graph()
        for a in m.GetAtoms():
            g.add_node(a.GetIdx(), label=a.GetSymbol())
        for b in m.GetBonds():
            g.add_edge(b.GetBeginAtomIdx(), b.GetEndAtomIdx(), label=int(b.GetBondTypeAsDouble()))
        out.append(g)
    return out


def nspdk_mmd(ref: Sequence, pred: Sequence) -> float:
    r"""Squared MMD under the NSPDK graph kernel (Costa & De Grave 2010), as GDSS computes it.

    Features come from the ``eden-kernel`` package (``eden.graph.vectorize`` with
    ``complexity=4, discrete=True``, i.e. radii and distances up to 3, on node and edge
    ``label`` attributes); each feature vector has unit norm and the kernel is their inner
    product, so :math:`\mathrm{MMD}^2 = \overline{K_{RR}} + \overline{K_{PP}} - 2\overline{K_{RP}}`.
    Labels are hashed with Python's ``hash``, so feature indices (not kernel values, except
    through rare hash collisions) change with ``PYTHONHASHSEED``.

    Args:
        ref, pred: networkx graphs with ``label`` on nodes and edges (see :func:`mols_to_nx`).
    """
    try:
        from eden.graph import vectorize
    except ImportError as e:
        raise ImportError(f'NSPDK needs the eden-kernel package: {_EXTRA}') from e
    ref, pred = list(ref), list(pred)
    if not ref or not pred:
        raise ValueError(f"nspdk_mmd needs two non-empty sets, got {len(ref)} and {len(pred)}")
    a = vectorize(ref, complexity=4, discrete=True)
    b = vectorize(pred, complexity=4, discrete=True)
    value = float((a @ a.T).mean() + (b @ b.T).mean() - 2.0 * (a @ b.T).mean())
    if not math.isfinite(value):
        raise ValueError("the NSPDK MMD is not finite")
    return value


def _as_mols(items) -> list:
    from .molecules import _chem, _QuietRDKit

    Chem = _chem()
    out = []
    with _QuietRDKit():
        for i, m in enumerate(items):
            if m is None:
                out.append(None)
            elif isinstance(m, str):
                out.append(Chem.MolFromSmiles(m))
            elif isinstance(m, Chem.Mol):
                out.append(m)
            else:
                raise TypeError(f"generated[{i}] must be an RDKit Mol, a SMILES string or None, got {type(m).__name__}")
    return out


def molecule_metrics(
    generated,
    train_smiles: Sequence[str],
    test_smiles: Sequence[str] | None = None,
    num_sampled: int | None = None,
    *,
    atom_types: Sequence[str] | None = None,
    fcd: bool = True,
    nspdk: bool = True,
    fcd_device: str = "cpu",
) -> dict:
    r"""Molecule-generation metrics as GDSS reports them (Jo et al. 2022, Sec. 4.2, Table 3).

    - ``validity``: molecules that RDKit sanitises *without* correction, over **all** graphs
      sampled (``num_sampled``; GDSS's "validity w/o correction").
    - ``validity_corrected``: molecules returned after the valency correction, over all graphs
      sampled (always 1 for graphs with a node; reported so the denominator is explicit).
    - ``uniqueness``: distinct canonical SMILES / molecules evaluated.
    - ``novelty``: distinct canonical SMILES not in ``train_smiles`` / distinct SMILES (MOSES
      convention, which GDSS uses).
    - ``fcd``: Fréchet ChemNet Distance (Preuer et al. 2018) to ``test_smiles`` through the
      ``fcd`` package, whose ChemNet weights ship inside the wheel (no download).
    - ``nspdk``: NSPDK squared MMD to ``test_smiles`` (:func:`nspdk_mmd`, ``eden-kernel``).

    Uniqueness, novelty, FCD and NSPDK are computed on the corrected molecules when graphs are
    given (as GDSS does), otherwise on the valid ones.

    Args:
        generated: A :class:`~sciffusion.domains.graph_sde.datasets.DenseGraphs` or a tuple
            ``(x, adj, mask)`` of sampled graphs (decoded with and without correction), or a
            list of RDKit molecules / SMILES / None (None = invalid; no corrected validity then).
        train_smiles: Training SMILES (for novelty).
        test_smiles: Test SMILES (for FCD and NSPDK); None skips both.
        num_sampled: Denominator of the validities; defaults to the number of generated items
            and may not be smaller.
        atom_types: Channels of ``x`` for graph input (default ``ATOM_TYPES``).
        fcd, nspdk: Compute FCD / NSPDK (need at least 2 / 1 molecules on each side).
        fcd_device: Device of the ChemNet forward pass.

    Returns:
        A dict with the keys above plus ``num_sampled``, ``num_valid``, ``num_evaluated`` and
        ``evaluated_on`` (``"corrected"`` or ``"valid"``).
    """
    from .datasets import DenseGraphs
    from .molecules import ATOM_TYPES, canonical_smiles, graphs_to_mols

    if atom_types is None:
        atom_types = ATOM_TYPES
    if isinstance(generated, DenseGraphs) or (isinstance(generated, tuple) and len(generated) == 3):
        x, adj, mask = (generated.x, generated.adj, generated.mask) if isinstance(generated, DenseGraphs) else generated
        raw = graphs_to_mols(x, adj, mask, atom_types=atom_types, correct=False)
        corrected = graphs_to_mols(x, adj, mask, atom_types=atom_types, correct=True)
    else:
        raw = _as_mols(list(generated))
        corrected = None
    n = len(raw)
    if n == 0:
        raise ValueError("molecule_metrics got no generated molecules")
    if num_sampled is None:
        num_sampled = n
    if not isinstance(num_sampled, int) or num_sampled < n:
        raise ValueError(f"num_sampled must be an int >= the {n} generated items, got {num_sampled!r}")
    if isinstance(train_smiles, str):
        raise TypeError("train_smiles must be a sequence of SMILES strings")
    valid = [m for m in raw if m is not None]
    out: dict = {"num_sampled": num_sampled, "num_valid": len(valid), "validity": len(valid) / num_sampled}
    if corrected is not None:
        evaluated = [m for m in corrected if m is not None]
        out["validity_corrected"] = len(evaluated) / num_sampled
        out["evaluated_on"] = "corrected"
    else:
        evaluated = valid
        out["validity_corrected"] = None
        out["evaluated_on"] = "valid"
    smiles = [s for s in (canonical_smiles(m) for m in evaluated) if s is not None]
    out["num_evaluated"] = len(smiles)
    unique = set(smiles)
    train = {s for s in (canonical_smiles(t) for t in train_smiles) if s is not None}
    out["uniqueness"] = len(unique) / len(smiles) if smiles else 0.0
    out["novelty"] = len(unique - train) / len(unique) if unique else 0.0
    if test_smiles is not None:
        test = [s for s in (canonical_smiles(t) for t in test_smiles) if s is not None]
        if fcd:
            if len(smiles) >= 2 and len(test) >= 2:
                try:
                    import fcd as fcd_pkg
                except ImportError as e:
                    raise ImportError(f"FCD needs the fcd package: {_EXTRA}") from e
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # fcd's pad-length notice
                    out["fcd"] = float(fcd_pkg.get_fcd(smiles, test, device=fcd_device))
            else:
                warnings.warn("FCD needs at least 2 molecules on each side; left out", stacklevel=2)
                out["fcd"] = None
        if nspdk:
            from .molecules import _chem

            Chem = _chem()
            if smiles and test:
                out["nspdk"] = nspdk_mmd(mols_to_nx(Chem.MolFromSmiles(s) for s in test), mols_to_nx(evaluated))
            else:
                out["nspdk"] = None
    return out
