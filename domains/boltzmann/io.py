r"""Files in the field's formats: mdtraj trajectories with their weights, sample sets, JSON.

* :func:`write_trajectory` -- PDB / DCD (anything mdtraj saves) of samples, with the
  importance weights beside it as ``<stem>.weights.npz`` and ``<stem>.weights.csv``
  (``frame,log_weight,weight``), since PDB and DCD have no field for them.
* :func:`save_samples` / :func:`load_samples` -- one ``samples.npz`` per run directory holding
  positions (or any state), log-weights, CV values, CV names and periodicity: what
  ``sciffusion molecules free-energy --samples DIR`` reads.
* :func:`write_estimates_json` -- strict JSON (``allow_nan=False``): non-finite floats are
  written as ``null``, tensors and arrays as lists; written atomically.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from sciffusion import smc

from .energies import _require


def _np(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _weights_table(log_weights: np.ndarray):
    lw = np.asarray(log_weights, dtype=np.float64)
    if lw.ndim != 1:
        raise ValueError(f"log_weights must have shape (F,), got {lw.shape}")
    if np.isnan(lw).any() or (lw == np.inf).any():
        raise ValueError(f"log_weights has NaN or +inf at frame {int(np.nonzero(np.isnan(lw) | (lw == np.inf))[0][0])}")
    w = smc.normalize(torch.from_numpy(lw)).numpy()
    return lw, w, float(smc.ess(torch.from_numpy(lw)))


def write_trajectory(positions_nm, topology, path, log_weights=None) -> dict:
    r"""Write samples as an mdtraj trajectory (format from the suffix: ``.pdb``, ``.dcd``, ...).

    Args:
        positions_nm: ``(F, N, 3)`` positions in nm (tensor or array).
        topology: ``mdtraj.Topology`` (e.g. from :func:`~sciffusion.domains.boltzmann.energies.alanine_dipeptide`).
        path: output file; its folder is created.
        log_weights: optional ``(F,)`` log importance weights, written beside the trajectory as
            ``<stem>.weights.npz`` (``log_weights``, normalised ``weights``, ``ess``) and
            ``<stem>.weights.csv``.

    Returns:
        ``{"trajectory": path, "weights_npz": ..., "weights_csv": ...}`` (the latter two when
        weights were given).
    """
    md = _require("mdtraj")
    pos = _np(positions_nm).astype(np.float64)
    if pos.ndim == 2:
        pos = pos[None]
    if pos.ndim != 3 or pos.shape[-1] != 3:
        raise ValueError(f"positions_nm must have shape (F, N, 3), got {pos.shape}")
    if pos.shape[1] != topology.n_atoms:
        raise ValueError(f"positions have {pos.shape[1]} atoms but the topology has {topology.n_atoms}")
    if not np.isfinite(pos).all():
        frame = int(np.nonzero(~np.isfinite(pos).reshape(pos.shape[0], -1).all(-1))[0][0])
        raise ValueError(f"positions_nm has non-finite coordinates at frame {frame}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    md.Trajectory(pos, topology).save(str(path))
    out = {"trajectory": str(path)}
    if log_weights is not None:
        lw, w, n_eff = _weights_table(_np(log_weights))
        if lw.shape[0] != pos.shape[0]:
            raise ValueError(f"log_weights has {lw.shape[0]} entries for {pos.shape[0]} frames")
        stem = path.with_suffix("")
        npz, csv = Path(f"{stem}.weights.npz"), Path(f"{stem}.weights.csv")
        np.savez(npz, log_weights=lw, weights=w, ess=n_eff)
        with open(csv, "w") as fh:
            fh.write("frame,log_weight,weight\n")
            for i, (a, b) in enumerate(zip(lw, w)):
                fh.write(f"{i},{a!r},{b!r}\n")
        out.update(weights_npz=str(npz), weights_csv=str(csv))
    return out


def read_weights(path) -> np.ndarray:
    """The log-weights written beside a trajectory (give the trajectory or the .npz path)."""
    path = Path(path)
    npz = path if path.name.endswith(".weights.npz") else Path(f"{path.with_suffix('')}.weights.npz")
    if not npz.exists():
        raise FileNotFoundError(f"no weights file {npz}")
    return np.load(npz)["log_weights"]


def save_samples(directory, positions=None, log_weights=None, cv_values=None,
                 cv_names: Sequence[str] | None = None, periodic: Sequence[bool] | None = None,
                 kT: float = 1.0, metadata: dict | None = None) -> Path:
    """Save a sample set as ``DIRECTORY/samples.npz`` (atomically) and return its path.

    Args:
        positions: ``(F, ...)`` samples (nm for molecules), optional.
        log_weights: ``(F,)`` log importance weights to the Boltzmann distribution (zeros if None).
        cv_values: ``(F, k)`` CV values; ``cv_names``, ``periodic``: their names and flags.
        kT: the energy unit of the weights' temperature (1: reduced).
        metadata: JSON-serialisable extras (system, temperature, sampler settings).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, Any] = {}
    n = None
    for key, val in (("positions", positions), ("cv_values", cv_values), ("log_weights", log_weights)):
        if val is not None:
            arrays[key] = _np(val).astype(np.float64)
            if n is not None and arrays[key].shape[0] != n:
                raise ValueError(f"{key} has {arrays[key].shape[0]} rows, expected {n}")
            n = arrays[key].shape[0]
    if n is None:
        raise ValueError("nothing to save: give positions and/or cv_values")
    if "log_weights" not in arrays:
        arrays["log_weights"] = np.zeros(n)
    _weights_table(arrays["log_weights"])  # validates
    if "cv_values" in arrays:
        cv = arrays["cv_values"]
        if cv.ndim == 1:
            cv = arrays["cv_values"] = cv[:, None]
        k = cv.shape[1]
        names = list(cv_names) if cv_names is not None else [f"cv{d}" for d in range(k)]
        per = list(periodic) if periodic is not None else [False] * k
        if len(names) != k or len(per) != k:
            raise ValueError(f"cv_names and periodic need {k} entries each")
        arrays["cv_names"] = np.asarray(names, dtype=str)
        arrays["periodic"] = np.asarray(per, dtype=bool)
    arrays["kT"] = np.float64(kT)
    arrays["metadata"] = np.asarray(json.dumps(_jsonable(metadata or {}), allow_nan=False))
    path = directory / "samples.npz"
    tmp = directory / "samples.tmp.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, path)
    return path


def load_samples(directory_or_file) -> dict:
    """Read what :func:`save_samples` wrote: a dict of tensors (float64), names and metadata."""
    p = Path(directory_or_file)
    if p.is_dir():
        p = p / "samples.npz"
    if not p.exists():
        raise FileNotFoundError(f"no samples file at {p} (expected DIR/samples.npz from save_samples)")
    with np.load(p, allow_pickle=False) as z:
        out: dict[str, Any] = {}
        for key in ("positions", "cv_values", "log_weights"):
            if key in z:
                out[key] = torch.from_numpy(z[key].copy())
        if "cv_names" in z:
            out["cv_names"] = [str(s) for s in z["cv_names"]]
            out["periodic"] = [bool(b) for b in z["periodic"]]
        out["kT"] = float(z["kT"])
        out["metadata"] = json.loads(str(z["metadata"]))
    return out


def _jsonable(obj):
    if isinstance(obj, torch.Tensor):
        obj = obj.detach().cpu().numpy()
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        return v if math.isfinite(v) else None
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if obj is None or isinstance(obj, (str, int, bool)):
        return obj
    raise TypeError(f"cannot write {type(obj).__name__} as JSON")


def write_estimates_json(path, estimates: dict) -> Path:
    """Write estimates as strict JSON (non-finite numbers become ``null``), atomically."""
    if not isinstance(estimates, dict):
        raise TypeError(f"estimates must be a dict, got {type(estimates).__name__}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(_jsonable(estimates), indent=2, allow_nan=False, sort_keys=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text + "\n")
    os.replace(tmp, path)
    return path
