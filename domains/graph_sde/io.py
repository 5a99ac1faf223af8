"""Graph and molecule outputs: networkx graphs, PyG ``Data``, SMILES and SDF files, tensors.

Every file is written atomically: into a temporary file beside the target, then renamed over
it (``os.replace``), so an error mid-write leaves nothing half-written and the previous file,
if any, intact. SMILES and SDF go through RDKit. Needs ``pip install "sciffusion[graphs]"``.
"""

from __future__ import annotations

import io as _io
import os
import tempfile
import warnings
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch

from .datasets import DenseGraphs, from_dense

__all__ = [
    "to_networkx",
    "to_pyg",
    "write_smiles",
    "write_sdf",
    "read_sdf",
    "write_graphs_pt",
    "read_graphs_pt",
]

_EXTRA = 'pip install "sciffusion[graphs]"'
_PT_FORMAT = "sciffusion.graph_sde.DenseGraphs/1"


def _atomic_write(path, write: Callable) -> Path:
    """Call ``write(f)`` on a temporary binary file beside ``path``, then rename it over ``path``.

    On any error the temporary file is removed and ``path`` is left as it was (nothing
    half-written); ``os.replace`` is atomic on POSIX.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def _unpack(graphs, adj=None, mask=None):
    if isinstance(graphs, DenseGraphs):
        return graphs.x, graphs.adj, graphs.mask
    return graphs, adj, mask


def to_networkx(x, adj=None, mask=None, threshold: float = 0.5, *, remove_isolated: bool = False) -> list:
    """Dense graphs (a :class:`DenseGraphs` or ``x, adj, mask``) as networkx graphs: edges where
    ``adj >= threshold``, padded nodes dropped (see :func:`~.datasets.from_dense`)."""
    x, adj, mask = _unpack(x, adj, mask)
    if adj is None:
        raise ValueError("to_networkx needs adj (or a DenseGraphs)")
    return from_dense(x, adj, mask, threshold, remove_isolated=remove_isolated)


def to_pyg(graphs, adj=None, mask=None, threshold: float = 0.5) -> list:
    """Graphs as a list of PyG ``Data``.

    Args:
        graphs: A :class:`DenseGraphs`, dense ``x`` with ``adj`` and ``mask``, or a list of
            networkx graphs (converted by ``torch_geometric.utils.from_networkx``).
        threshold: Edge threshold on dense adjacencies; the kept values (bond orders for
            molecules) become ``edge_attr``.

    Returns:
        ``Data(x, edge_index, edge_attr, num_nodes)`` per graph (padded nodes dropped).
    """
    try:
        from torch_geometric.data import Data
        from torch_geometric.utils import from_networkx
    except ImportError as e:  # pragma: no cover
        raise ImportError(f"to_pyg needs torch-geometric: {_EXTRA}") from e
    if isinstance(graphs, (list, tuple)) and adj is None:
        return [from_networkx(g) for g in graphs]
    x, adj, mask = _unpack(graphs, adj, mask)
    x, adj = torch.as_tensor(x), torch.as_tensor(adj)
    if adj.dim() != 3 or x.dim() != 3 or x.shape[:2] != adj.shape[:2]:
        raise ValueError(f"need x (B, N, F) and adj (B, N, N), got {tuple(x.shape)} and {tuple(adj.shape)}")
    if mask is None:
        mask = torch.ones(x.shape[:2], dtype=torch.bool)
    mask = torch.as_tensor(mask).bool()
    if not torch.isfinite(adj).all() or not torch.isfinite(x).all():
        raise ValueError("x or adj contains NaN or inf")
    out = []
    for k in range(x.shape[0]):
        real = mask[k]
        a = adj[k][real][:, real]
        a = torch.triu(a, diagonal=1)
        a = a + a.T  # read the upper triangle, as from_dense does
        keep = a >= threshold
        keep.fill_diagonal_(False)
        edge_index = keep.nonzero().T.contiguous()
        out.append(Data(x=x[k][real], edge_index=edge_index, edge_attr=a[keep], num_nodes=int(real.sum())))
    return out


def _mols(mols: Iterable, what: str) -> tuple[list, int]:
    try:
        from rdkit import Chem
    except ImportError as e:  # pragma: no cover
        raise ImportError(f"{what} needs RDKit: {_EXTRA}") from e
    kept, skipped = [], 0
    for i, m in enumerate(mols):
        if m is None:
            skipped += 1
        elif isinstance(m, Chem.Mol):
            kept.append(m)
        else:
            raise TypeError(f"mols[{i}] must be an RDKit Mol or None, got {type(m).__name__}")
    if skipped:
        warnings.warn(f"{what}: {skipped} invalid (None) molecules left out", stacklevel=3)
    return kept, skipped


def write_smiles(mols: Iterable, path) -> int:
    """Write canonical SMILES, one per line, atomically; None entries (invalid) are left out
    with a warning. Returns the number of lines written."""
    from rdkit import Chem

    kept, _ = _mols(mols, "write_smiles")
    text = "".join(Chem.MolToSmiles(m) + "\n" for m in kept)
    _atomic_write(path, lambda f: f.write(text.encode()))
    return len(kept)


def write_sdf(mols: Iterable, path, *, names: Sequence[str] | None = None) -> int:
    """Write molecules to an SDF file through ``Chem.SDWriter``, atomically, with 2-D
    coordinates for molecules without a conformer and the SMILES as a property; None entries
    (invalid) are left out with a warning. Returns the number of records."""
    from rdkit import Chem
    from rdkit.Chem import rdDepictor

    kept, _ = _mols(mols, "write_sdf")
    if names is not None and len(names) != len(kept):
        raise ValueError(f"names has {len(names)} entries for {len(kept)} molecules")
    buf = _io.StringIO()
    writer = Chem.SDWriter(buf)
    for i, m in enumerate(kept):
        m = Chem.Mol(m)
        if m.GetNumConformers() == 0:
            rdDepictor.Compute2DCoords(m)
        m.SetProp("_Name", names[i] if names is not None else f"sample_{i}")
        m.SetProp("SMILES", Chem.MolToSmiles(m))
        writer.write(m)
    writer.close()
    text = buf.getvalue()
    _atomic_write(path, lambda f: f.write(text.encode()))
    return len(kept)


def read_sdf(path) -> list:
    """Molecules of an SDF file (None for records RDKit cannot sanitise)."""
    from rdkit import Chem

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no SDF file at {path}")
    return list(Chem.SDMolSupplier(str(path)))


def write_graphs_pt(graphs: DenseGraphs, path) -> Path:
    """Save a :class:`DenseGraphs` batch with ``torch.save``, atomically."""
    if not isinstance(graphs, DenseGraphs):
        raise TypeError(f"write_graphs_pt expects a DenseGraphs, got {type(graphs).__name__}")
    obj = {
        "format": _PT_FORMAT,
        "x": graphs.x.detach().cpu(),
        "adj": graphs.adj.detach().cpu(),
        "mask": graphs.mask.detach().cpu(),
        "max_nodes": int(graphs.max_nodes),
        "feature_names": list(graphs.feature_names),
    }
    return _atomic_write(path, lambda f: torch.save(obj, f))


def read_graphs_pt(path) -> DenseGraphs:
    """Load a batch written by :func:`write_graphs_pt` (``weights_only`` loading)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no graphs file at {path}")
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(obj, dict) or obj.get("format") != _PT_FORMAT:
        raise ValueError(f"{path} is not a graphs file written by write_graphs_pt")
    return DenseGraphs(obj["x"], obj["adj"], obj["mask"], obj["max_nodes"], tuple(obj["feature_names"]))
