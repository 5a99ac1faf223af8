"""Figures of sampled graphs (networkx drawing) and molecule grids (RDKit drawing).

Functions return a ``matplotlib.figure.Figure`` (built without pyplot, so no backend is chosen
or changed) or a PIL image; they never show or save. Needs ``pip install "sciffusion[graphs]"``.
"""

from __future__ import annotations

import math
from typing import Sequence

from .datasets import DenseGraphs, from_dense

__all__ = ["plot_graphs", "draw_molecules"]

_EXTRA = 'pip install "sciffusion[graphs]"'


def plot_graphs(
    graphs,
    ncols: int = 4,
    title: str | None = None,
    *,
    node_size: float = 30.0,
    layout: str = "spring",
    seed: int = 0,
    panel_size: float = 2.2,
    titles: Sequence[str] | None = None,
):
    """A grid of graph drawings, one panel per graph.

    Args:
        graphs: networkx graphs, or a :class:`DenseGraphs` (quantised at 0.5).
        ncols: Panels per row.
        title: Figure title.
        node_size: Marker size of nodes.
        layout: ``"spring"`` (seeded Fruchterman–Reingold), ``"kamada_kawai"`` or ``"circular"``.
        seed: Seed of the spring layout (a layout choice, no sampling).
        panel_size: Inches per panel.
        titles: Optional panel titles (default: node and edge counts).

    Returns:
        ``matplotlib.figure.Figure``.
    """
    try:
        import networkx as nx
        from matplotlib.figure import Figure
    except ImportError as e:  # pragma: no cover
        raise ImportError(f"plot_graphs needs networkx and matplotlib: {_EXTRA}") from e
    if isinstance(graphs, DenseGraphs):
        graphs = from_dense(graphs)
    graphs = list(graphs)
    if not graphs:
        raise ValueError("plot_graphs got no graphs")
    if not isinstance(ncols, int) or ncols < 1:
        raise ValueError(f"ncols must be a positive int, got {ncols!r}")
    if titles is not None and len(titles) != len(graphs):
        raise ValueError(f"titles has {len(titles)} entries for {len(graphs)} graphs")
    layouts = {
        "spring": lambda g: nx.spring_layout(g, seed=seed),
        "kamada_kawai": lambda g: nx.kamada_kawai_layout(g) if g.number_of_nodes() > 1 else {v: (0, 0) for v in g},
        "circular": nx.circular_layout,
    }
    if layout not in layouts:
        raise ValueError(f"layout must be one of {sorted(layouts)}, got {layout!r}")
    ncols = min(ncols, len(graphs))
    nrows = math.ceil(len(graphs) / ncols)
    fig = Figure(figsize=(panel_size * ncols, panel_size * nrows + (0.4 if title else 0.0)))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if k >= len(graphs):
            continue
        g = graphs[k]
        if g.number_of_nodes():
            nx.draw_networkx(
                g, pos=layouts[layout](g), ax=ax, node_size=node_size, with_labels=False, width=0.6,
                node_color="#3b75af", edge_color="#555555",
            )
            ax.set_axis_off()
        ax.set_title(titles[k] if titles else f"n={g.number_of_nodes()}, m={g.number_of_edges()}", fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def draw_molecules(
    mols: Sequence,
    legends: Sequence[str] | None = None,
    mols_per_row: int = 4,
    sub_img_size: tuple[int, int] = (200, 200),
):
    """A grid image of molecules through ``rdkit.Chem.Draw.MolsToGridImage``.

    None entries (invalid samples) are drawn as empty panels with the legend ``invalid``.

    Returns:
        A ``PIL.Image.Image``.
    """
    try:
        from rdkit import Chem
        from rdkit.Chem import Draw
    except ImportError as e:  # pragma: no cover
        raise ImportError(f"draw_molecules needs RDKit: {_EXTRA}") from e
    mols = list(mols)
    if not mols:
        raise ValueError("draw_molecules got no molecules")
    if legends is not None and len(legends) != len(mols):
        raise ValueError(f"legends has {len(legends)} entries for {len(mols)} molecules")
    if legends is None:
        legends = [Chem.MolToSmiles(m) if m is not None else "invalid" for m in mols]
    else:
        legends = [str(s) for s in legends]
    drawn = [m if m is not None else Chem.Mol() for m in mols]
    return Draw.MolsToGridImage(
        drawn, molsPerRow=mols_per_row, subImgSize=tuple(sub_img_size), legends=legends, returnPNG=False
    )
