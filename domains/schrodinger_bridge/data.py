"""Snapshot data: unpaired populations observed at a few times, with validation and file formats.

Nobody is tracked: snapshot ``k`` is a cloud of ``n_k`` points in ``R^d`` observed at physical time
``t_k`` (bridges use their own time axis, not the diffusion convention of the core). Counts may
differ between times and times may be irregular. Everything is stored in float64.

Inputs: numpy arrays or torch tensors (:func:`as_snapshots`), a CSV file with a time column and
coordinate columns (:func:`read_csv`), or an AnnData object with the time in ``.obs[time_key]`` and
the coordinates in ``.obsm[embedding]`` (:func:`from_anndata`). Outputs: :func:`write_csv`,
:func:`to_anndata`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

__all__ = ["Snapshots", "as_snapshots", "read_csv", "write_csv", "from_anndata", "to_anndata"]


def _as64(x, name: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        t = x.detach().to("cpu", torch.float64)
    else:
        try:
            t = torch.as_tensor(np.asarray(x, dtype=np.float64))
        except (TypeError, ValueError) as err:
            raise TypeError(f"{name} must be an array of numbers, got {type(x).__name__}") from err
    return t


@dataclass(frozen=True)
class Snapshots:
    """Populations at increasing times.

    Attributes:
        times: float64 tensor ``(K,)``, strictly increasing.
        xs: list of ``K`` float64 tensors, ``xs[k]`` of shape ``(n_k, d)``.

    Build it with :func:`as_snapshots`, which validates; the constructor trusts its inputs.
    """

    times: torch.Tensor
    xs: list

    @property
    def dim(self) -> int:
        return int(self.xs[0].shape[1])

    @property
    def counts(self) -> list[int]:
        return [int(x.shape[0]) for x in self.xs]

    def __len__(self) -> int:
        return len(self.xs)

    def subset(self, idx: Sequence[int]) -> "Snapshots":
        """The snapshots at positions ``idx`` (e.g. the even ones for training)."""
        idx = list(idx)
        return as_snapshots([self.xs[i] for i in idx], self.times[idx])

    def at(self, t: float) -> torch.Tensor:
        """The population observed at time ``t`` (exact match required)."""
        hit = torch.nonzero(torch.isclose(self.times, torch.tensor(float(t), dtype=torch.float64)))
        if hit.numel() == 0:
            raise ValueError(f"t={t} is not one of the snapshot times {self.times.tolist()}")
        return self.xs[int(hit[0])]


def as_snapshots(xs, times, *, min_snapshots: int = 2) -> Snapshots:
    """Validate populations and their times.

    Args:
        xs: sequence of ``K`` arrays/tensors, each ``(n_k, d)`` (a 1-D array is read as ``d = 1``).
        times: ``K`` observation times, strictly increasing, finite.
        min_snapshots: fewest snapshots accepted (a bridge needs two).

    Returns:
        :class:`Snapshots` in float64.

    Raises:
        ValueError: fewer than ``min_snapshots`` snapshots, unsorted or duplicate times, a
            count/time mismatch, an empty snapshot, NaN/inf values, or unequal dimensions.
    """
    if isinstance(xs, (torch.Tensor, np.ndarray)) and np.ndim(xs) == 2:
        raise ValueError("xs: expected a list of (n_k, d) snapshots, got a single 2-D array; "
                         "wrap it in a list or pass several snapshots")
    if not isinstance(xs, (list, tuple)) and not (isinstance(xs, (torch.Tensor, np.ndarray))
                                                   and np.ndim(xs) == 3):
        raise TypeError(f"xs must be a list of (n_k, d) arrays, got {type(xs).__name__}")
    times = _as64(times, "times").reshape(-1)
    arrays = []
    for k, x in enumerate(xs):
        x = _as64(x, f"xs[{k}]")
        if x.ndim == 1:
            x = x[:, None]
        if x.ndim != 2:
            raise ValueError(f"xs[{k}] must have shape (n, d), got {tuple(x.shape)}")
        if x.shape[0] == 0:
            raise ValueError(f"xs[{k}] (t={times[k].item() if k < len(times) else '?'}) is empty")
        bad = ~torch.isfinite(x)
        if bad.any():
            rows = torch.nonzero(bad.any(1)).reshape(-1)[:5].tolist()
            raise ValueError(f"xs[{k}] contains NaN or inf (rows {rows}...); drop or impute them first")
        arrays.append(x)
    if len(arrays) != len(times):
        raise ValueError(f"got {len(arrays)} snapshots but {len(times)} times")
    if len(arrays) < min_snapshots:
        raise ValueError(f"need at least {min_snapshots} snapshots at distinct times, got {len(arrays)}"
                         " (a single snapshot carries no information about dynamics)")
    if not torch.isfinite(times).all():
        raise ValueError(f"times must be finite, got {times.tolist()}")
    diffs = times[1:] - times[:-1]
    if (diffs == 0).any():
        dup = times[1:][diffs == 0].tolist()
        raise ValueError(f"times contain duplicates {dup}: merge the populations observed at one time")
    if (diffs < 0).any():
        raise ValueError(f"times must be sorted increasingly, got {times.tolist()}")
    dims = {x.shape[1] for x in arrays}
    if len(dims) != 1:
        raise ValueError(f"all snapshots need the same dimension, got {[x.shape[1] for x in arrays]}")
    return Snapshots(times, arrays)


def _group(t: np.ndarray, X: np.ndarray) -> Snapshots:
    if t.shape[0] != X.shape[0]:
        raise ValueError(f"{t.shape[0]} time values for {X.shape[0]} rows")
    if not np.isfinite(t).all():
        raise ValueError("the time column contains NaN or inf")
    uniq = np.unique(t)
    return as_snapshots([X[t == u] for u in uniq], uniq)


def read_csv(path: str | os.PathLike, *, time_col: str = "time", columns: Sequence[str] | None = None
             ) -> Snapshots:
    """Read snapshots from a CSV file with one row per observed individual.

    Args:
        path: file with a header row.
        time_col: the column holding the observation time; rows are grouped by its distinct values.
        columns: coordinate columns (default: every other numeric column).

    Returns:
        :class:`Snapshots` sorted by time.
    """
    import pandas as pd

    try:
        df = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        raise ValueError(f"{path}: the file is empty (expected a header row with a {time_col!r} column, "
                         "then one row per observed individual)") from None
    if time_col not in df.columns:
        raise ValueError(f"{path}: time_col={time_col!r} not in the CSV columns {list(df.columns)}")
    if len(df) == 0:
        raise ValueError(f"{path}: only a header row, no data rows")
    t = pd.to_numeric(df[time_col], errors="coerce")
    bad = t.isna() & df[time_col].notna()
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise ValueError(f"{path}: the time column {time_col!r} must hold numbers; data row {i + 1} has "
                         f"{df[time_col].iloc[i]!r}")
    if columns is None:
        columns = [c for c in df.columns if c != time_col and pd.api.types.is_numeric_dtype(df[c])]
    missing = [c for c in columns if c not in df.columns]
    if missing or not columns:
        raise ValueError(f"{path}: coordinate columns {missing or list(columns)} not found among numeric "
                         f"columns of {list(df.columns)}")
    for c in columns:
        if not pd.api.types.is_numeric_dtype(df[c]):
            raise ValueError(f"{path}: column {c!r} must hold numbers")
    return _group(t.to_numpy(np.float64), df[list(columns)].to_numpy(np.float64))


def write_csv(path: str | os.PathLike, xs, times, *, time_col: str = "time",
              columns: Sequence[str] | None = None, extra: dict | None = None) -> None:
    """Write populations (observed or predicted) as a long CSV: one row per point.

    Args:
        xs: list of ``(n_k, d)`` arrays; times: ``K`` times; columns: names of the coordinates
        (default ``x0..x{d-1}``); extra: optional ``{name: list of K per-point arrays}``.
    """
    import pandas as pd

    frames = []
    for k, (x, t) in enumerate(zip(xs, np.asarray(times, dtype=np.float64).reshape(-1))):
        x = np.asarray(_as64(x, "xs"))
        names = list(columns) if columns is not None else [f"x{i}" for i in range(x.shape[1])]
        f = pd.DataFrame(x, columns=names)
        f.insert(0, time_col, float(t))
        for key, vals in (extra or {}).items():
            f[key] = np.asarray(vals[k])
        frames.append(f)
    tmp = f"{os.fspath(path)}.tmp"  # written whole, then moved: a failure leaves no half file
    pd.concat(frames, ignore_index=True).to_csv(tmp, index=False)
    os.replace(tmp, path)


def from_anndata(adata, *, time_key: str = "time", embedding: str = "X_pca",
                 n_components: int | None = None) -> Snapshots:
    """Snapshots from an AnnData object (single-cell data).

    Args:
        adata: ``anndata.AnnData``; each cell is one observation.
        time_key: column of ``adata.obs`` with the (numeric) collection time.
        embedding: key of ``adata.obsm`` with the coordinates (e.g. ``"X_pca"``), or ``"X"``.
        n_components: keep only the first components of the embedding.

    Returns:
        :class:`Snapshots`.
    """
    if time_key not in adata.obs:
        raise ValueError(f"time_key={time_key!r} not in adata.obs (columns {list(adata.obs.columns)})")
    if embedding == "X":
        X = adata.X.toarray() if hasattr(adata.X, "toarray") else np.asarray(adata.X)
    elif embedding in adata.obsm:
        X = np.asarray(adata.obsm[embedding])
    else:
        raise ValueError(f"embedding={embedding!r} not in adata.obsm (keys {list(adata.obsm.keys())})")
    X = np.asarray(X, dtype=np.float64)
    if n_components is not None:
        X = X[:, :n_components]
    try:
        t = np.asarray(adata.obs[time_key], dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"adata.obs[{time_key!r}] must be numeric times") from err
    return _group(t, X)


def to_anndata(xs, times, *, time_key: str = "time", embedding: str = "X_bridge"):
    """Populations as an AnnData object: coordinates in ``.obsm[embedding]`` and ``.X``, time in ``.obs``."""
    import anndata
    import pandas as pd

    times = np.asarray(times, dtype=np.float64).reshape(-1)
    X = np.concatenate([np.asarray(_as64(x, "xs")) for x in xs])
    t = np.concatenate([np.full(len(x), tt) for x, tt in zip(xs, times)])
    obs = pd.DataFrame({time_key: t}, index=[f"c{i}" for i in range(len(t))])
    ad = anndata.AnnData(X=X.astype(np.float32), obs=obs)
    ad.obsm[embedding] = X
    return ad



