"""Small helpers shared by the whole core: broadcasting, state trees, validation.

States may be a tensor or a tuple/dict of tensors (a graph is node features plus adjacency).
Every sampler touches a state only through :func:`tree_map`, and every per-sample coefficient
meets a tensor only through :func:`append_dims`, so no code writes ``[:, None, None, None]``.
"""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path
from typing import Any, Callable

import torch

State = Any  # torch.Tensor | tuple[torch.Tensor, ...] | dict[str, torch.Tensor]


def append_dims(c: torch.Tensor, ndim: int) -> torch.Tensor:
    """Append trailing singleton dimensions to ``c`` until it has ``ndim`` dimensions.

    Args:
        c: a scalar or a per-sample coefficient of shape ``(B,)``.
        ndim: the number of dimensions of the tensor ``c`` will multiply.

    Returns:
        ``c`` viewed with shape ``c.shape + (1,) * (ndim - c.ndim)``.
    """
    c = torch.as_tensor(c)
    if c.ndim > ndim:
        raise ValueError(f"coefficient has {c.ndim} dims, more than the target's {ndim}")
    return c.reshape(c.shape + (1,) * (ndim - c.ndim))


def bcast(c: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``c`` cast to ``x``'s dtype and device and shaped to broadcast against ``x``."""
    c = torch.as_tensor(c, device=x.device)
    return append_dims(c.to(x.dtype), x.ndim)


def is_leaf(x: Any) -> bool:
    return not isinstance(x, (tuple, list, dict))


def tree_map(fn: Callable[..., Any], *trees: State) -> State:
    """Apply ``fn`` leafwise across trees of identical structure (tensor, tuple, list or dict)."""
    first = trees[0]
    if isinstance(first, dict):
        return {k: tree_map(fn, *(t[k] for t in trees)) for k in first}
    if isinstance(first, (tuple, list)):
        for t in trees[1:]:
            if not isinstance(t, (tuple, list)) or len(t) != len(first):
                raise ValueError("state trees differ in structure: every component needs its pair")
        return type(first)(tree_map(fn, *parts) for parts in zip(*trees))
    return fn(*trees)


def tree_unzip(pairs: State, like: State) -> tuple[State, State]:
    """Split a tree of pairs (the result of a ``tree_map`` returning 2-tuples) into two trees
    shaped like ``like``."""
    if isinstance(like, dict):
        return {k: v[0] for k, v in pairs.items()}, {k: v[1] for k, v in pairs.items()}
    if isinstance(like, (tuple, list)):
        return type(like)(p[0] for p in pairs), type(like)(p[1] for p in pairs)
    return pairs


def tree_leaves(tree: State) -> list[torch.Tensor]:
    """The tensors of a state, in order."""
    if isinstance(tree, dict):
        return [leaf for k in tree for leaf in tree_leaves(tree[k])]
    if isinstance(tree, (tuple, list)):
        return [leaf for part in tree for leaf in tree_leaves(part)]
    return [tree]


def batch_size(x: State) -> int:
    """The leading (batch) dimension shared by every tensor of a state."""
    sizes = {leaf.shape[0] for leaf in tree_leaves(x)}
    if len(sizes) != 1:
        raise ValueError(f"state tensors disagree on the batch size: {sorted(sizes)}")
    return sizes.pop()


def tree_numel_per_sample(x: State) -> int:
    """Number of scalar dimensions per sample across the components."""
    return sum(math.prod(leaf.shape[1:]) for leaf in tree_leaves(x))


def check_finite(x: State, step: int, where: str) -> None:
    """Raise ``FloatingPointError`` naming the step at which a NaN or infinity appeared."""
    for leaf in tree_leaves(x):
        # A sum is finite iff every entry is (a NaN or inf propagates), barring overflow of the
        # sum itself, which the full check below clears: one reduction instead of a bool copy,
        # several times cheaper on large states, and this runs after every sampler step.
        if leaf.is_floating_point() and torch.isfinite(leaf.sum()):
            continue
        if not torch.isfinite(leaf).all():
            bad = (~torch.isfinite(leaf)).sum().item()
            raise FloatingPointError(
                f"{where}: {bad} non-finite value(s) (NaN or inf) appeared at step {step}; "
                "check the model output and the time grid near that step"
            )


def as_time(t: Any) -> torch.Tensor:
    """A time (float, array or tensor) as a float64 tensor."""
    return torch.as_tensor(t, dtype=torch.float64)


def choice_error(kind: str, name: Any, valid: Any) -> ValueError:
    """The error for an unknown name, listing the valid ones."""
    return ValueError(f"unknown {kind} {name!r}; expected one of: {', '.join(sorted(valid))}")


def save_atomic(obj: dict, path) -> None:
    """``torch.save(obj, path)`` through a temporary file and ``os.replace``: a crash mid-write
    leaves the previous checkpoint whole (atomic on POSIX). Used by every checkpointing loop."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _digest_bytes(*parts: bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(len(p).to_bytes(8, "little"))
        h.update(p)
    return "sha256:" + h.hexdigest()[:16]


def _canonical(value: Any, depth: int = 0) -> str:
    """A canonical text of ``value`` for hashing: equal settings give equal text."""
    if depth > 8:
        return f"<{type(value).__qualname__}>"
    if value is None or isinstance(value, (bool, int, str)):
        return repr(value)
    if isinstance(value, float):
        return float.hex(value) if math.isfinite(value) else repr(value)
    if isinstance(value, Path):
        return repr(str(value))
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu()
        # a fresh dense copy: expanded tensors (stride 0, even in size-1 dims) cannot be viewed as bytes
        flat = torch.empty(t.numel(), dtype=t.dtype).copy_(t.reshape(-1))
        body = flat.view(torch.uint8) if t.numel() and t.dtype != torch.bool else flat.to(torch.uint8)
        return f"tensor({t.dtype},{tuple(t.shape)}):" + _digest_bytes(bytes(body.numpy().tobytes()))
    if type(value).__module__ == "numpy":
        import numpy as np  # numpy ships with torch's requirements here; imported only when met

        a = np.ascontiguousarray(value)
        return f"ndarray({a.dtype},{a.shape}):" + _digest_bytes(a.tobytes())
    if isinstance(value, dict):
        items = sorted((repr(k), _canonical(v, depth + 1)) for k, v in value.items())
        return "{" + ",".join(f"{k}:{v}" for k, v in items) + "}"
    if isinstance(value, (tuple, list)):
        return type(value).__name__ + "[" + ",".join(_canonical(v, depth + 1) for v in value) + "]"
    if isinstance(value, torch.nn.Module):
        # the architecture, not the weights (which training changes): module tree and shapes
        shapes = [(k, tuple(p.shape), str(p.dtype)) for k, p in value.state_dict().items()]
        return f"module:{value!r}:{shapes!r}"
    if isinstance(value, torch.dtype):
        return str(value)
    code = getattr(value, "__code__", None)
    if code is not None:  # a function: its name, bytecode, constants and closed-over values
        cells = [c.cell_contents for c in (getattr(value, "__closure__", None) or ())]
        return (f"function:{getattr(value, '__module__', '')}.{getattr(value, '__qualname__', '')}:"
                + _digest_bytes(code.co_code, repr(code.co_consts).encode())
                + ":" + _canonical(cells, depth + 1))
    text = repr(value)
    if " at 0x" not in text:  # a repr that shows the value (processes, dataclasses, ...)
        return f"{type(value).__qualname__}:{text}"
    attrs = getattr(value, "__dict__", None)
    if attrs is not None:
        return f"{type(value).__module__}.{type(value).__qualname__}:" + _canonical(dict(attrs), depth + 1)
    return f"<{type(value).__qualname__}>"


def fingerprint(**settings: Any) -> dict[str, str]:
    """A fingerprint of everything that changes a run's result, one entry per named setting.

    Each value becomes a short stable text: numbers, strings and ``None`` as themselves (so an
    error can show both values), tensors and arrays as dtype, shape and a SHA-256 of their bytes,
    modules as their architecture (module tree, parameter names, shapes and dtypes: not the
    weights, which training changes), functions as name, bytecode and closed-over values, other
    objects as their ``repr`` or, failing a value-showing one, their attributes. Store the returned
    dict in a checkpoint and compare it on resume with :func:`check_resume`.

    Args:
        **settings: name -> value for every input that changes the result (data, model
            configuration, targets, rewards, windows, seeds, hyper-parameters).

    Returns:
        ``{name: text}``, plain strings (safe to store with ``torch.save`` or JSON).
    """
    out = {}
    for name, value in settings.items():
        text = _canonical(value)
        if isinstance(value, float) and math.isfinite(value):
            text = repr(value)
        out[name] = text if len(text) <= 64 else _digest_bytes(text.encode())
    return out


def check_resume(saved: dict | None, current: dict[str, str], *, what: str = "checkpoint") -> None:
    """Refuse to resume a run whose settings differ from the ones it was started with.

    Args:
        saved: the fingerprint stored with the run (``None`` for a file written without one).
        current: :func:`fingerprint` of this call's settings.
        what: how to name the saved run in the message (e.g. the checkpoint path).

    Raises:
        ValueError: naming every setting that differs (with both values where they are short),
            or saying the file carries no fingerprint.
    """
    if not isinstance(saved, dict):
        raise ValueError(f"{what} carries no settings fingerprint (written by an older version or "
                         "another program); delete it or choose another path to start afresh")
    names = sorted(set(saved) | set(current))
    diff = [n for n in names if saved.get(n) != current.get(n)]
    if not diff:
        return
    parts = []
    for n in diff:
        a, b = saved.get(n, "<absent>"), current.get(n, "<absent>")
        short = not a.startswith("sha256:") and not b.startswith("sha256:") and len(a) + len(b) < 60
        parts.append(f"{n} (saved {a}, now {b})" if short else n)
    raise ValueError(f"{what} was written by a run with different settings: {', '.join(parts)}; "
                     "resume with the original settings, or delete it / choose another path to start afresh")
