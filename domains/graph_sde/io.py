"""Graph and molecule outputs: networkx, PyG ``Data``, SMILES and SDF files (written atomically)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable

__all__: list[str] = []


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
