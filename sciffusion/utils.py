"""Small helpers shared by the whole core: broadcasting, state trees, validation.

States may be a tensor or a tuple/dict of tensors (a graph is node features plus adjacency).
Every sampler touches a state only through :func:`tree_map`, and every per-sample coefficient
meets a tensor only through :func:`append_dims`, so no code writes ``[:, None, None, None]``.
"""

from __future__ import annotations

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
