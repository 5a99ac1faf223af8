r"""Graph datasets for GDSS-style generation: generated synthetic sets, dense batches, splits.

Nothing is downloaded: every set here is generated from a seed. Graphs are ``networkx.Graph``
objects with nodes ``0..n-1``; dense batches are built through torch-geometric
(:class:`torch_geometric.data.Data`, :func:`torch_geometric.utils.to_dense_batch`,
:func:`torch_geometric.utils.to_dense_adj`), never by hand-written padding.

Sets and the sizes the papers use:

- :func:`community_small` -- GDSS / GraphRNN / EDP-GNN: 100 graphs, two communities, 12-20
  nodes (Jo et al. 2022, Sec. 4.1; You et al. 2018).
- :func:`grid_graphs` -- GraphRNN / GDSS: 100 2-D grids, 100-400 nodes.
- :func:`planar_graphs` -- SPECTRE (Martinkus et al. 2022): 200 planar graphs of 64 nodes.
- :func:`sbm_graphs` -- SPECTRE: 200 stochastic-block-model graphs, 2-5 blocks of 20-40 nodes,
  p_intra = 0.3, p_inter = 0.05.

Optional packages (networkx, torch-geometric, scipy) come with ``pip install "sciffusion[graphs]"``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

__all__ = [
    "DenseGraphs",
    "community_small",
    "grid_graphs",
    "planar_graphs",
    "sbm_graphs",
    "to_dense",
    "from_dense",
    "split",
    "write_split",
    "read_split",
    "degree_features",
    "erdos_renyi_baseline",
    "apply_split",
]

_EXTRA = 'pip install "sciffusion[graphs]"'


def _nx():
    try:
        import networkx as nx
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(f"graph_sde needs networkx: {_EXTRA}") from e
    return nx


def _pyg_utils():
    try:
        import torch_geometric.data as pyg_data
        import torch_geometric.utils as pyg_utils
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(f"graph_sde needs torch-geometric: {_EXTRA}") from e
    return pyg_data, pyg_utils


def _generator(seed: int) -> torch.Generator:
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    return torch.Generator().manual_seed(seed)


def _randint(gen: torch.Generator, low: int, high: int) -> int:
    """An int uniform on ``[low, high]`` (both ends included)."""
    return int(torch.randint(low, high + 1, (1,), generator=gen).item())


def _int_seed(gen: torch.Generator) -> int:
    """A seed for a networkx/scipy generator, drawn from ``gen`` (keeps one source of randomness)."""
    return int(torch.randint(0, 2**31 - 1, (1,), generator=gen).item())


def _check_count(num_graphs: int) -> None:
    if not isinstance(num_graphs, int) or isinstance(num_graphs, bool) or num_graphs < 1:
        raise ValueError(f"num_graphs must be a positive int, got {num_graphs!r}")


# --------------------------------------------------------------------------------------------
# Synthetic sets
# --------------------------------------------------------------------------------------------


def community_small(
    num_graphs: int = 100,
    seed: int = 0,
    *,
    min_nodes: int = 12,
    max_nodes: int = 20,
    p_intra: float = 0.7,
    p_inter: float = 0.05,
    resample_communities: bool = False,
) -> list:
    r"""Community-small as GDSS builds it (Jo et al. 2022, Sec. 4.1; generator of Niu et al. 2020).

    For each graph a size parameter :math:`M` is drawn uniformly from ``min_nodes..max_nodes``;
    the graph has two communities of :math:`c = \lfloor M/2 \rfloor` nodes each (so the node
    count is even, 12-20), each an Erdős–Rényi graph :math:`G(c, p_\text{intra}=0.7)`. Every
    cross pair of nodes is bridged independently with probability

    .. math::  p_\text{bridge} = \frac{2\,p_\text{inter}}{(K-1)\,c}, \qquad K = 2,

    i.e. about :math:`0.1\,c` bridges in expectation, and when no bridge was drawn the first
    nodes of the two communities are joined, so every graph has at least one inter-community
    edge. Bridges are drawn between the connected components of the union, as GDSS does.

    GDSS (``data/data_generators.py``, ``n_community``) draws community ``i`` with the *fixed*
    networkx seed ``i``, so the two communities of a given size are the same graphs in every
    sample and only the bridges and the size vary. That is the default here, to reproduce
    the GDSS set's statistics; ``resample_communities=True`` draws fresh communities for each
    graph instead (the GraphRNN variant).

    Args:
        num_graphs: Number of graphs (GDSS: 100, split 80/20).
        seed: Seed of the size and bridge draws (and of the communities when resampled).
        min_nodes, max_nodes: Range of the size parameter :math:`M`.
        p_intra: Edge probability inside a community.
        p_inter: The inter-community parameter of the formula above.
        resample_communities: Draw new communities per graph instead of GDSS's fixed seeds.

    Returns:
        A list of ``networkx.Graph`` with nodes ``0..n-1``; node attribute ``community``
        (0 or 1).
    """
    nx = _nx()
    _check_count(num_graphs)
    if not (2 <= min_nodes <= max_nodes):
        raise ValueError(f"need 2 <= min_nodes <= max_nodes, got {min_nodes}, {max_nodes}")
    for name, p in (("p_intra", p_intra), ("p_inter", p_inter)):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"{name} must lie in [0, 1], got {p}")
    gen = _generator(seed)
    graphs = []
    for _ in range(num_graphs):
        m = _randint(gen, min_nodes, max_nodes)
        c = m // 2
        seeds = [_int_seed(gen), _int_seed(gen)] if resample_communities else [0, 1]
        parts = [nx.gnp_random_graph(c, p_intra, seed=s) for s in seeds]
        g = nx.disjoint_union_all(parts)
        for v in g.nodes:
            g.nodes[v]["community"] = int(v >= c)
        p_bridge = p_inter * 2.0 / ((2 - 1) * c)
        comps = [sorted(cc) for cc in nx.connected_components(g)]
        comps.sort(key=lambda cc: cc[0])
        for i in range(len(comps)):
            for j in range(i + 1, len(comps)):
                u = torch.rand(len(comps[i]), len(comps[j]), generator=gen, dtype=torch.float64)
                pairs = (u < p_bridge).nonzero().tolist()
                for a, b in pairs:
                    g.add_edge(comps[i][a], comps[j][b])
                if not pairs:
                    g.add_edge(comps[i][0], comps[j][0])
        graphs.append(g)
    return graphs


def grid_graphs(num_graphs: int = 100, seed: int = 0, *, min_side: int = 10, max_side: int = 19) -> list:
    r"""2-D grid graphs as GraphRNN and GDSS build them: side lengths :math:`m, n` drawn
    independently and uniformly from ``10..19`` (100-361 nodes), 100 graphs, nodes relabelled
    ``0..mn-1`` in row-major order (You et al. 2018; Jo et al. 2022, Sec. 4.1).

    Args:
        num_graphs: Number of graphs (papers: 100).
        seed: Seed of the side draws.
        min_side, max_side: Range of each side length.

    Returns:
        A list of ``networkx.Graph``.
    """
    nx = _nx()
    _check_count(num_graphs)
    if not (1 <= min_side <= max_side):
        raise ValueError(f"need 1 <= min_side <= max_side, got {min_side}, {max_side}")
    gen = _generator(seed)
    out = []
    for _ in range(num_graphs):
        m, n = _randint(gen, min_side, max_side), _randint(gen, min_side, max_side)
        out.append(nx.convert_node_labels_to_integers(nx.grid_2d_graph(m, n), ordering="sorted"))
    return out


def planar_graphs(num_graphs: int = 200, seed: int = 0, *, num_nodes: int = 64) -> list:
    r"""Planar graphs as SPECTRE builds them (Martinkus et al. 2022, Sec. 5): ``num_nodes``
    points uniform in the unit square, edges of their Delaunay triangulation (planar by
    construction). The papers use 200 graphs of 64 nodes (split 128/32/40).

    Args:
        num_graphs: Number of graphs.
        seed: Seed of the point draws.
        num_nodes: Nodes per graph (at least 3).

    Returns:
        A list of ``networkx.Graph``; node attribute ``pos`` holds the point.
    """
    nx = _nx()
    try:
        from scipy.spatial import Delaunay
    except ImportError as e:  # pragma: no cover
        raise ImportError(f"planar_graphs needs scipy: {_EXTRA}") from e
    _check_count(num_graphs)
    if num_nodes < 3:
        raise ValueError(f"num_nodes must be at least 3, got {num_nodes}")
    gen = _generator(seed)
    out = []
    for _ in range(num_graphs):
        pts = torch.rand(num_nodes, 2, generator=gen, dtype=torch.float64).numpy()
        tri = Delaunay(pts)
        g = nx.Graph()
        for i in range(num_nodes):
            g.add_node(i, pos=(float(pts[i, 0]), float(pts[i, 1])))
        for simplex in tri.simplices:
            a, b, c = (int(s) for s in simplex)
            g.add_edges_from([(a, b), (b, c), (a, c)])
        out.append(g)
    return out


def sbm_graphs(
    num_graphs: int = 200,
    seed: int = 0,
    *,
    min_blocks: int = 2,
    max_blocks: int = 5,
    min_block_size: int = 20,
    max_block_size: int = 40,
    p_intra: float = 0.3,
    p_inter: float = 0.05,
) -> list:
    r"""Stochastic-block-model graphs as SPECTRE builds them (Martinkus et al. 2022, Sec. 5):
    a number of blocks uniform on ``2..5``, each of a size uniform on ``20..40``, edges with
    probability 0.3 inside a block and 0.05 across; 200 graphs (44-200 nodes).

    Args:
        num_graphs: Number of graphs.
        seed: Seed of all draws.
        min_blocks, max_blocks, min_block_size, max_block_size: Ranges of the block draws.
        p_intra, p_inter: Edge probabilities inside and across blocks.

    Returns:
        A list of ``networkx.Graph``; node attribute ``block``.
    """
    nx = _nx()
    _check_count(num_graphs)
    if not (1 <= min_blocks <= max_blocks) or not (1 <= min_block_size <= max_block_size):
        raise ValueError("need 1 <= min_blocks <= max_blocks and 1 <= min_block_size <= max_block_size")
    gen = _generator(seed)
    out = []
    for _ in range(num_graphs):
        k = _randint(gen, min_blocks, max_blocks)
        sizes = [_randint(gen, min_block_size, max_block_size) for _ in range(k)]
        probs = [[p_intra if i == j else p_inter for j in range(k)] for i in range(k)]
        g = nx.stochastic_block_model(sizes, probs, seed=_int_seed(gen))
        h = nx.Graph()
        for v, data in g.nodes(data=True):
            h.add_node(int(v), block=int(data["block"]))
        h.add_edges_from(g.edges())
        out.append(h)
    return out


def erdos_renyi_baseline(reference: Sequence, num_graphs: int | None = None, seed: int = 0) -> list:
    r"""Erdős–Rényi graphs matched to a reference set: the baseline of the GDSS benchmark.

    Each graph's node count is drawn from the empirical node-count distribution of
    ``reference``; every pair is an edge with the pooled density of the reference,

    .. math::  p = \frac{\sum_G |E_G|}{\sum_G \binom{n_G}{2}},

    so the expected edge count per graph matches the reference on average.

    Args:
        reference: networkx graphs (e.g. the training set).
        num_graphs: How many to draw (default: as many as the reference).
        seed: Seed of the node-count and edge draws.

    Returns:
        A list of ``networkx.Graph``; ``p`` is stored in each graph's ``graph["p"]``.
    """
    nx = _nx()
    reference = list(reference)
    if not reference:
        raise ValueError("erdos_renyi_baseline got an empty reference set")
    if num_graphs is None:
        num_graphs = len(reference)
    _check_count(num_graphs)
    sizes = [g.number_of_nodes() for g in reference]
    pairs = sum(n * (n - 1) // 2 for n in sizes)
    if pairs == 0:
        raise ValueError("the reference graphs have no node pairs; density undefined")
    p = sum(g.number_of_edges() for g in reference) / pairs
    gen = _generator(seed)
    out = []
    for _ in range(num_graphs):
        n = sizes[_randint(gen, 0, len(sizes) - 1)]
        u = torch.rand(n, n, generator=gen, dtype=torch.float64)
        g = nx.Graph(p=p)
        g.add_nodes_from(range(n))
        g.add_edges_from(torch.triu(u < p, diagonal=1).nonzero().tolist())
        out.append(g)
    return out


# --------------------------------------------------------------------------------------------
# Dense batches
# --------------------------------------------------------------------------------------------


@dataclass
class DenseGraphs:
    r"""A padded batch of graphs, the state GDSS diffuses.

    Attributes:
        x: ``(B, N, F)`` float node features; rows of padded nodes are zero.
        adj: ``(B, N, N)`` float symmetric adjacency with zero diagonal and zero padded rows and
            columns; the edge value is 1 for plain graphs and the bond order (1, 2, 3) for
            molecules.
        mask: ``(B, N)`` bool, True for real nodes. Real nodes come first in every row.
        max_nodes: ``N``.
        feature_names: ``F`` names of the feature channels (e.g. ``"deg=3"``, ``"C"``).
    """

    x: torch.Tensor
    adj: torch.Tensor
    mask: torch.Tensor
    max_nodes: int
    feature_names: tuple = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.x.dim() != 3 or self.adj.dim() != 3 or self.mask.dim() != 2:
            raise ValueError(
                f"DenseGraphs expects x (B, N, F), adj (B, N, N), mask (B, N); got "
                f"{tuple(self.x.shape)}, {tuple(self.adj.shape)}, {tuple(self.mask.shape)}"
            )
        b, n = self.mask.shape
        if self.x.shape[:2] != (b, n) or self.adj.shape != (b, n, n) or n != self.max_nodes:
            raise ValueError(
                f"inconsistent DenseGraphs shapes: x {tuple(self.x.shape)}, adj {tuple(self.adj.shape)}, "
                f"mask {tuple(self.mask.shape)}, max_nodes {self.max_nodes}"
            )
        if self.mask.dtype != torch.bool:
            raise TypeError(f"mask must be a bool tensor, got {self.mask.dtype}")
        self.feature_names = tuple(self.feature_names)
        if self.feature_names and len(self.feature_names) != self.x.shape[-1]:
            raise ValueError(f"{len(self.feature_names)} feature_names for {self.x.shape[-1]} feature channels")

    def __len__(self) -> int:
        return self.mask.shape[0]

    @property
    def num_features(self) -> int:
        return self.x.shape[-1]

    @property
    def num_nodes(self) -> torch.Tensor:
        """``(B,)`` long: real nodes per graph."""
        return self.mask.sum(-1)

    def __getitem__(self, index) -> "DenseGraphs":
        if isinstance(index, int):
            index = slice(index, index + 1) if index != -1 else slice(-1, None)
        return DenseGraphs(self.x[index], self.adj[index], self.mask[index], self.max_nodes, self.feature_names)

    def to(self, *args, **kwargs) -> "DenseGraphs":
        """Move or cast ``x`` and ``adj`` (the mask stays bool)."""
        x = self.x.to(*args, **kwargs)
        return DenseGraphs(x, self.adj.to(*args, **kwargs), self.mask.to(x.device), self.max_nodes, self.feature_names)


def degree_features(degrees: torch.Tensor, max_degree: int) -> torch.Tensor:
    r"""One-hot node degrees, ``(..., max_degree + 1)`` float: GDSS's ``init='deg'`` features.

    GDSS's community-small config sets ``max_feat_num: 10``, i.e. degrees 0..9 and
    ``max_degree=9`` here.
    """
    if int(degrees.max()) > max_degree:
        raise ValueError(
            f"a node has degree {int(degrees.max())} > max_degree={max_degree}; raise max_degree"
        )
    return torch.nn.functional.one_hot(degrees.long(), max_degree + 1).to(torch.float32)


def _graph_to_data(g, features: str, max_degree: int | None, atom_types: Sequence[str] | None, weight: str):
    """One networkx graph as a PyG ``Data`` with ``x`` and edge values in ``edge_attr``."""
    pyg_data, pyg_utils = _pyg_utils()
    nodes = list(g.nodes)
    index = {v: i for i, v in enumerate(nodes)}
    n = len(nodes)
    src, dst, val = [], [], []
    for u, v, data in g.edges(data=True):
        if u == v:
            continue  # self-loops are not part of the adjacency (zero diagonal)
        w = float(data.get(weight, 1.0))
        if not math.isfinite(w):
            raise ValueError(f"edge ({u}, {v}) has a non-finite {weight!r} value {w}")
        src.append(index[u])
        dst.append(index[v])
        val.append(w)
    edge_index = torch.tensor([src, dst], dtype=torch.long).reshape(2, -1)
    edge_attr = torch.tensor(val, dtype=torch.float32)
    edge_index, edge_attr = pyg_utils.to_undirected(edge_index, edge_attr, num_nodes=n, reduce="max")
    if features == "ones":
        x = torch.ones(n, 1)
    elif features == "degree":
        deg = pyg_utils.degree(edge_index[0], num_nodes=n, dtype=torch.long)
        x = degree_features(deg, max_degree) if n else torch.zeros(0, max_degree + 1)
    else:  # atoms
        lookup = {a: i for i, a in enumerate(atom_types)}
        rows = []
        for v in nodes:
            sym = g.nodes[v].get("atom")
            if sym not in lookup:
                raise ValueError(f"node {v} has atom {sym!r}, not one of atom_types={tuple(atom_types)}")
            rows.append(lookup[sym])
        x = torch.nn.functional.one_hot(torch.tensor(rows, dtype=torch.long), len(atom_types)).float()
    return pyg_data.Data(x=x, edge_index=edge_index, edge_attr=edge_attr, num_nodes=n)


def to_dense(
    graphs: Sequence,
    max_nodes: int | None = None,
    features: str = "degree",
    max_degree: int | None = None,
    *,
    atom_types: Sequence[str] | None = None,
    weight: str = "weight",
) -> DenseGraphs:
    r"""Pad a list of networkx graphs into a :class:`DenseGraphs` batch through torch-geometric.

    Each graph becomes a PyG ``Data`` (undirected ``edge_index``, edge values in ``edge_attr``);
    the list is collated with ``Batch.from_data_list`` and padded with
    ``to_dense_batch`` (node features, mask) and ``to_dense_adj`` (adjacency).

    Node features:

    - ``"degree"`` (default): one-hot degree, ``F = max_degree + 1``. This is GDSS's choice for
      community-small (``init: deg``, ``max_feat_num: 10``, i.e. ``max_degree=9``). When
      ``max_degree`` is None it is the largest degree in ``graphs``; pass the training set's
      value when encoding a test set so the channels agree. ``community_small(100, seed=0)``
      has one graph with a node of degree 10, so it needs ``max_degree=10`` (11 channels).
    - ``"ones"``: a single constant channel.
    - ``"atoms"``: one-hot of the node attribute ``atom`` over ``atom_types`` (molecules).

    Args:
        graphs: networkx graphs (node order kept; self-loops dropped).
        max_nodes: ``N``; defaults to the largest graph. A larger graph raises ValueError.
        features: ``"degree" | "ones" | "atoms"``.
        max_degree: Largest degree represented by the ``"degree"`` features.
        atom_types: Atom symbols for ``"atoms"``.
        weight: Edge attribute read as the edge value (default 1 when absent); bond order for
            molecules.

    Returns:
        DenseGraphs with ``x`` (B, N, F), ``adj`` (B, N, N), ``mask`` (B, N).

    Raises:
        ValueError: Empty dataset, a graph larger than ``max_nodes``, a degree above
            ``max_degree``, an unknown atom, or an unknown ``features``.
    """
    nx = _nx()
    pyg_data, pyg_utils = _pyg_utils()
    graphs = list(graphs)
    if not graphs:
        raise ValueError("to_dense got an empty dataset (no graphs)")
    for i, g in enumerate(graphs):
        if not isinstance(g, nx.Graph) or g.is_directed():
            raise TypeError(f"graphs[{i}] must be an undirected networkx.Graph, got {type(g).__name__}")
    if features not in ("degree", "ones", "atoms"):
        raise ValueError(f"features must be 'degree', 'ones' or 'atoms', got {features!r}")
    sizes = [g.number_of_nodes() for g in graphs]
    if min(sizes) == 0:
        raise ValueError(f"graphs[{sizes.index(0)}] has no nodes")
    largest = max(sizes)
    if max_nodes is None:
        max_nodes = largest
    if not isinstance(max_nodes, int) or max_nodes < 1:
        raise ValueError(f"max_nodes must be a positive int, got {max_nodes!r}")
    if largest > max_nodes:
        i = sizes.index(largest)
        raise ValueError(f"graphs[{i}] has {largest} nodes, more than max_nodes={max_nodes}")
    if features == "degree":
        # degrees without self-loops (networkx counts a self-loop twice; the diagonal is zero)
        top = max(max((sum(1 for w in g.neighbors(v) if w != v) for v in g), default=0) for g in graphs)
        if max_degree is None:
            max_degree = top
        if not isinstance(max_degree, int) or max_degree < 0:
            raise ValueError(f"max_degree must be a non-negative int, got {max_degree!r}")
        names = tuple(f"deg={d}" for d in range(max_degree + 1))
    elif features == "ones":
        names = ("one",)
    else:
        if not atom_types:
            raise ValueError("features='atoms' needs atom_types (a sequence of atom symbols)")
        atom_types = tuple(atom_types)
        names = atom_types
    data = [_graph_to_data(g, features, max_degree, atom_types, weight) for g in graphs]
    batch = pyg_data.Batch.from_data_list(data)
    x, mask = pyg_utils.to_dense_batch(batch.x, batch.batch, max_num_nodes=max_nodes, batch_size=len(graphs))
    adj = pyg_utils.to_dense_adj(
        batch.edge_index, batch.batch, edge_attr=batch.edge_attr, max_num_nodes=max_nodes, batch_size=len(graphs)
    )
    return DenseGraphs(x=x.float(), adj=adj.float(), mask=mask, max_nodes=max_nodes, feature_names=names)


def from_dense(x, adj=None, mask=None, threshold: float = 0.5, *, remove_isolated: bool = False) -> list:
    r"""Quantise dense adjacencies back to networkx graphs (GDSS ``quantize`` + ``adjs_to_graphs``).

    An edge :math:`\{i, j\}`, :math:`i < j`, both real nodes, is kept when
    :math:`A_{ij} \ge \text{threshold}` (GDSS: :math:`A < 0.5 \mapsto 0`, else 1). Only the
    upper triangle is read, so an asymmetric input gives an undirected graph without
    guessing; the diagonal is ignored. Padded nodes are dropped and real nodes relabelled
    ``0..n-1`` in order; node features, when given, are stored as the node attribute ``x``.

    GDSS removes isolated nodes from sampled graphs before evaluation; ``remove_isolated=True``
    does that (the default keeps them, so node counts follow the mask).

    Args:
        x: ``(B, N, F)`` node features or None.
        adj: ``(B, N, N)`` adjacency (continuous values allowed).
        mask: ``(B, N)`` bool node mask; None means all nodes are real. A :class:`DenseGraphs`
            may be passed as ``x`` alone.
        threshold: Edge threshold.
        remove_isolated: Drop nodes without edges.

    Returns:
        A list of ``B`` networkx graphs.
    """
    nx = _nx()
    if isinstance(x, DenseGraphs):
        x, adj, mask = x.x, x.adj, x.mask
    if adj is None:
        raise ValueError("from_dense needs adj (or a DenseGraphs as its first argument)")
    adj = torch.as_tensor(adj)
    if adj.dim() != 3 or adj.shape[-1] != adj.shape[-2]:
        raise ValueError(f"adj must have shape (B, N, N), got {tuple(adj.shape)}")
    b, n, _ = adj.shape
    if not torch.isfinite(adj).all():
        raise ValueError("adj contains NaN or inf")
    if mask is None:
        mask = torch.ones(b, n, dtype=torch.bool)
    mask = torch.as_tensor(mask)
    if mask.shape != (b, n):
        raise ValueError(f"mask must have shape {(b, n)}, got {tuple(mask.shape)}")
    mask = mask.bool()
    if x is not None:
        x = torch.as_tensor(x)
        if x.dim() != 3 or x.shape[:2] != (b, n):
            raise ValueError(f"x must have shape ({b}, {n}, F), got {tuple(x.shape)}")
    edges = torch.triu(adj.detach().cpu() >= threshold, diagonal=1)
    mask_c = mask.detach().cpu()
    edges &= mask_c[:, :, None] & mask_c[:, None, :]
    out = []
    for k in range(b):
        real = mask_c[k].nonzero().flatten().tolist()
        relabel = {v: i for i, v in enumerate(real)}
        g = nx.Graph()
        for v in real:
            if x is not None:
                g.add_node(relabel[v], x=x[k, v].detach().cpu())
            else:
                g.add_node(relabel[v])
        for i, j in edges[k].nonzero().tolist():
            g.add_edge(relabel[i], relabel[j])
        if remove_isolated:
            g.remove_nodes_from(list(nx.isolates(g)))
            g = nx.convert_node_labels_to_integers(g)
        out.append(g)
    return out


# --------------------------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------------------------


def split(items: Sequence, test_fraction: float = 0.2, seed: int = 0):
    r"""Shuffle ``items`` with a seeded ``torch.randperm`` and cut off a test set.

    The test set has :math:`\max(1, \lfloor f\,n \rfloor)` items (GDSS: ``int(0.2 * 100) = 20``
    of community-small; GDSS takes the first 20 unshuffled, here the cut is after a seeded
    shuffle). Both parts keep the shuffled order.

    Args:
        items: Any sequence (graphs, SMILES, ...), at least 2 items.
        test_fraction: Fraction in (0, 1).
        seed: Seed of the shuffle.

    Returns:
        ``(train, test, indices)`` where ``indices`` is a JSON-ready dict with ``train`` and
        ``test`` index lists, ``seed``, ``test_fraction`` and ``num_items``.
    """
    items = list(items)
    n = len(items)
    if n < 2:
        raise ValueError(f"split needs at least 2 items, got {n}")
    if not (isinstance(test_fraction, (int, float)) and 0.0 < test_fraction < 1.0):
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction!r}")
    perm = torch.randperm(n, generator=_generator(seed)).tolist()
    n_test = min(n - 1, max(1, int(test_fraction * n)))
    test_idx, train_idx = perm[:n_test], perm[n_test:]
    indices = {
        "train": train_idx,
        "test": test_idx,
        "seed": seed,
        "test_fraction": float(test_fraction),
        "num_items": n,
    }
    return [items[i] for i in train_idx], [items[i] for i in test_idx], indices


def write_split(indices: dict, path) -> Path:
    """Write a split's index dict (from :func:`split`) as JSON, atomically."""
    from .io import _atomic_write

    _validate_split(indices, str(path))
    text = json.dumps(indices, indent=1)
    return _atomic_write(path, lambda f: f.write(text.encode()))


def read_split(path) -> dict:
    """Read and validate a split written by :func:`write_split`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no split file at {path}")
    try:
        indices = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not a JSON split file: {e}") from e
    _validate_split(indices, str(path))
    return indices


def apply_split(items: Sequence, indices: dict):
    """``(train, test)`` of ``items`` by a stored split; the item count must match."""
    items = list(items)
    _validate_split(indices, "indices")
    if len(items) != indices["num_items"]:
        raise ValueError(f"the split is for {indices['num_items']} items, got {len(items)}")
    return [items[i] for i in indices["train"]], [items[i] for i in indices["test"]]


def _validate_split(indices: Any, where: str) -> None:
    if not isinstance(indices, dict) or not {"train", "test", "num_items"} <= set(indices):
        raise ValueError(f"{where}: a split needs keys 'train', 'test', 'num_items'")
    n = indices["num_items"]
    allidx = list(indices["train"]) + list(indices["test"])
    if not all(isinstance(i, int) for i in allidx) or sorted(allidx) != list(range(n)):
        raise ValueError(f"{where}: train and test indices must partition range({n})")
