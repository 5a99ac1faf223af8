r"""Past one machine: training and sampling across processes and GPUs with ``torch.distributed``.

sciffusion scales on the engine PyTorch users already run: processes started by ``torchrun``
(NCCL on GPUs, gloo on CPUs), joined into one process group by :func:`init`. Nothing here is a
scheme of our own; this module only decides *what each rank does* so that results are
reproducible and, where the algorithm allows it, independent of the number of ranks ``R``.

**Training.** :func:`sciffusion.training.fit` calls :func:`fit_hook` first. With one process
(no process group, or a group of size 1) the hook is ``None`` and ``fit`` runs exactly as it
always has (tested bit for bit). With ``R > 1`` ranks:

* every rank first all-gathers a fingerprint of its settings (data, model architecture,
  hyper-parameters, ``steps``, checkpointing) and all raise the same ``ValueError`` naming the
  settings that differ; every later check is then a function of agreed inputs, so it passes or
  fails on every rank alike (no rank is left waiting in a collective);
* every rank passes the same ``data`` (the full tensor data set, or the same callable; a rank
  given other rows, or none, fails the agreement above); tensor data is split into ``R``
  disjoint shards by a permutation seeded from ``seed`` (rank ``r`` holds rows ``perm[r::R]``);
  each rank draws its
  minibatches of ``batch_size`` rows (per rank: the global batch is ``R * batch_size``) from its
  shard with its own generator, seeded from ``(seed, r)`` (:func:`derive_seed`). Data given as
  a callable ``(batch_size, generator)`` is called with the rank's generator;
* the model is wrapped in :class:`~torch.nn.parallel.DistributedDataParallel`, which broadcasts
  rank 0's parameters at the start and averages gradients in the backward pass, so one step on
  ``R`` ranks of ``B`` rows each is one step on the ``R B`` concatenated rows:

  .. math:: \nabla_\theta \frac{1}{R}\sum_{r=1}^{R}\frac{1}{B}\sum_{b=1}^{B}\ell(\theta; x_{r,b})
            = \nabla_\theta \frac{1}{RB}\sum_{r,b}\ell(\theta; x_{r,b})

  (tested to round-off in float64). Clipping, the Adam step and the EMA then act on identical
  gradients on every rank; the logged loss is the mean over ranks (an all-reduce, which also
  makes a NaN on one rank stop every rank);
* checkpoints are written once, by rank 0, atomically, holding every rank's generator state;
  every rank resumes from the same file (a file visible to some ranks only is an error on all)
  and a resumed run finishes bit-identical to an uninterrupted one. A checkpoint records the
  world size and refuses a resume at another one (the data shards would differ).

**Sampling.** :func:`sample_sharded` splits ``num_samples`` into chunks of ``chunk_size``;
chunk ``c`` is drawn with a generator seeded from ``(seed, c)`` alone, and ranks take contiguous
blocks of chunks. Sample ``i``'s noise therefore depends only on ``(seed, i)`` (and the chunk
size), and ``R`` ranks return exactly the sample set one process returns. Any sampler fits:
``fn(n, generator) -> state`` wraps :func:`sciffusion.samplers.sample`, a discrete sampler, or
anything else. :func:`fkc_sharded` does the same for Feynman–Kac SMC with whole groups of
particles per chunk (resampling acts within a group, so it never crosses ranks). Results are
gathered to rank 0 (``gather="rank0"``), to every rank (``"all"``), kept per rank (``None``),
and/or written per rank to ``out/samples_rank{r}.pt``.

**Launch.** One node, two processes::

    torchrun --nproc-per-node 2 my_script.py          # calls distributed.init(), fit, sample_sharded
    torchrun --nproc-per-node 2 -m sciffusion.distributed --out run/   # the self-check below

A cluster: the same command on every node with ``--nnodes N --node-rank k
--rdzv-backend c10d --rdzv-endpoint HOST:29500`` (or ``--master-addr/--master-port``).
``python -m sciffusion.distributed`` trains a small denoiser on an exact Gaussian with ``fit``,
samples it sharded, and has rank 0 write ``summary.json`` (throughput, the sample set's error
against the exact law): a check that a launch works, and the worker of
``benchmarks/scale_out.py``.

Failures: settings that differ across ranks, a world size that does not divide the number of
SMC chunks, a rank whose data shard (or sample block) would be empty raise ``ValueError`` on
every rank. An exception raised inside one rank's sampler is gathered and re-raised on every
rank. An exception inside one rank's ``loss_fn`` cannot be (the others wait in the gradient
all-reduce): ``torchrun`` then stops the job, and the group's ``timeout`` (:func:`init`) bounds
the wait otherwise. ``loss_fn`` must call the model it is given (the DDP wrapper): parameters that
differ across ranks at a checkpoint or at the end raise ``RuntimeError``. To train on one rank
alone inside a group, call ``fit`` within :func:`local_only`.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import hashlib
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist

from .utils import fingerprint, save_atomic, tree_leaves

log = logging.getLogger(__name__)

__all__ = ["init", "shutdown", "rank", "world_size", "is_main", "barrier", "derive_seed",
           "chunk_generator", "check_same", "shard_indices", "sample_sharded", "fkc_sharded", "combine_fkc",
           "fit_hook", "local_only"]

# stream tags for derive_seed: training ranks, the data permutation, sampling chunks
_FIT, _DATA, _CHUNK = 1, 2, 3
_GATHER = ("rank0", "all", None)


# --------------------------------------------------------------------------------------------
# the process group


def _active() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    """Number of processes in the default group (1 without one)."""
    return dist.get_world_size() if _active() else 1


def rank() -> int:
    """This process's rank in the default group (0 without one)."""
    return dist.get_rank() if _active() else 0


def is_main() -> bool:
    """True on rank 0 (and on a single process)."""
    return rank() == 0


def barrier() -> None:
    """Wait for every rank (nothing on a single process)."""
    if world_size() > 1:
        dist.barrier()


def init(backend: str | None = None, *, timeout: float = 600.0) -> tuple[int, int]:
    """Join the process group that ``torchrun`` describes in the environment.

    ``torchrun`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
    ``MASTER_PORT``; without ``WORLD_SIZE`` (or with ``WORLD_SIZE=1``) this is a single process
    and nothing is initialised. Calling it again is harmless.

    Args:
        backend: ``"nccl"`` or ``"gloo"``; default NCCL when CUDA is available, else gloo. With
            NCCL the process's CUDA device is set to ``LOCAL_RANK``.
        timeout: seconds a collective may wait for the other ranks before failing.

    Returns:
        ``(rank, world_size)``.
    """
    if _active():
        return rank(), world_size()
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return 0, 1
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise ValueError(f"WORLD_SIZE={size} but {', '.join(missing)} not set: launch with torchrun "
                         "(or set RANK, MASTER_ADDR and MASTER_PORT as torchrun does)")
    if not dist.is_available():
        raise RuntimeError("this torch build has no torch.distributed")
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend not in ("nccl", "gloo"):
        raise ValueError(f"backend must be 'nccl' or 'gloo', got {backend!r}")
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=float(timeout)))
    log.info("rank %d of %d joined (%s)", rank(), world_size(), backend)
    return rank(), world_size()


def shutdown() -> None:
    """Wait for every rank, then leave the process group (nothing on a single process).

    The barrier matters: a rank that tears down its gloo connections while another still uses
    them can abort the job at exit.
    """
    if _active():
        if world_size() > 1:
            dist.barrier()
        dist.destroy_process_group()


def _all_gather(obj: Any) -> list:
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def _map_tensors(fn: Callable, obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, dict):
        return {k: _map_tensors(fn, v) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return type(obj)(_map_tensors(fn, v) for v in obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.replace(obj, **{f.name: _map_tensors(fn, getattr(obj, f.name))
                                           for f in dataclasses.fields(obj) if f.init})
    return obj


# --------------------------------------------------------------------------------------------
# seeds and agreement


def derive_seed(seed: int, *keys: int) -> int:
    """A 63-bit seed for the stream ``(seed, *keys)``, independent of every other key tuple.

    Mixed by NumPy's ``SeedSequence`` (a hash designed for this), so neighbouring keys give
    unrelated streams and no two tuples collide in practice.
    """
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    words = np.random.SeedSequence([int(seed), *(int(k) for k in keys)]).generate_state(2, np.uint32)
    return (int(words[0]) << 31) ^ int(words[1])


def chunk_generator(seed: int, chunk: int, device=None) -> torch.Generator:
    """The generator of sampling chunk ``chunk`` (:func:`sample_sharded`, :func:`fkc_sharded`)."""
    g = torch.Generator(device=device) if device is not None else torch.Generator()
    return g.manual_seed(derive_seed(seed, _CHUNK, chunk))


def check_same(what: str, **settings: Any) -> dict[str, str]:
    """All-gather a fingerprint of ``settings`` and raise on every rank if ranks disagree.

    Args:
        what: the call being checked (named in the error).
        **settings: name -> value (:func:`sciffusion.utils.fingerprint`).

    Returns:
        This rank's fingerprint.

    Raises:
        ValueError: on every rank, naming each setting that differs and its value per rank.
    """
    mine = fingerprint(**settings)
    if world_size() == 1:
        return mine
    every = _all_gather(mine)
    names = sorted(set().union(*every))
    diff = [n for n in names if len({fp.get(n) for fp in every}) > 1]
    if diff:
        parts = []
        for n in diff:
            vals = [fp.get(n, "<absent>") for fp in every]
            parts.append(f"{n} (" + ", ".join(f"rank {r}: {v}" for r, v in enumerate(vals)) + ")")
        raise ValueError(f"{what}: settings differ across ranks: {'; '.join(parts)}; every rank must "
                         "be called with the same settings")
    return mine


def _run_on_all(work: Callable[[], Any], what: str) -> Any:
    """Run rank-local ``work``; if it raised on any rank, raise on every rank (no rank hangs)."""
    err = None
    try:
        out = work()
    except Exception as e:  # noqa: BLE001 (re-raised below, on this rank and the others)
        out, err = None, e
    if world_size() == 1:
        if err is not None:
            raise err
        return out
    msgs = _all_gather(None if err is None else f"{type(err).__name__}: {err}")
    if err is not None:
        raise err
    bad = [(r, m) for r, m in enumerate(msgs) if m is not None]
    if bad:
        raise RuntimeError(f"{what} failed on " + "; ".join(f"rank {r}: {m}" for r, m in bad))
    return out


def _gather(local: Any, gather: str | None, combine: Callable[[list], Any]) -> Any:
    if world_size() == 1 or gather is None:
        return local
    local = _map_tensors(lambda t: t.detach().cpu(), local)
    if gather == "all":
        return combine(_all_gather(local))
    parts = [None] * world_size() if is_main() else None
    dist.gather_object(local, parts, dst=0)
    return combine(parts) if is_main() else None


# --------------------------------------------------------------------------------------------
# independent samples


def _chunks(n: int, size: int) -> list[tuple[int, int]]:
    return [(a, min(a + size, n)) for a in range(0, n, size)]


def _block(num: int, size: int, r: int) -> tuple[int, int]:
    """Rank ``r``'s contiguous block of ``num`` items split as evenly as possible over ``size``."""
    return r * num // size, (r + 1) * num // size


def _concat(parts: list, sizes: list[int]) -> Any:
    """Concatenate per-chunk results along the batch: tensors (and trees of them) whose first
    dimension is the chunk's batch; dataclass fields likewise, ints summed (counts such as
    ``nfe``), anything else taken from the first chunk when all chunks agree."""
    first = parts[0]
    if len(parts) == 1:
        return first
    if isinstance(first, torch.Tensor):
        if first.ndim == 0 or any(p.shape[0] != s for p, s in zip(parts, sizes)):
            raise ValueError("sampler output: a tensor whose first dimension is not the batch")
        return torch.cat(parts)
    if isinstance(first, dict):
        return {k: _concat([p[k] for p in parts], sizes) for k in first}
    if isinstance(first, (tuple, list)):
        return type(first)(_concat([p[i] for p in parts], sizes) for i in range(len(first)))
    if dataclasses.is_dataclass(first) and not isinstance(first, type):
        new = {}
        for f in dataclasses.fields(first):
            vals = [getattr(p, f.name) for p in parts]
            v0 = vals[0]
            if isinstance(v0, torch.Tensor) and v0.ndim and all(v.shape[0] == s for v, s in zip(vals, sizes)):
                new[f.name] = torch.cat(vals)
            elif isinstance(v0, int) and not isinstance(v0, bool):
                new[f.name] = sum(vals)
            elif v0 is None and all(v is None for v in vals):
                new[f.name] = None
            elif all(_same(v, v0) for v in vals):
                new[f.name] = v0
            else:
                raise ValueError(f"sampler output: field {f.name!r} differs across chunks and is not "
                                 "per-sample; pass combine= to merge it")
        return dataclasses.replace(first, **new)
    raise TypeError(f"sampler output must be a tensor, a tuple/dict of tensors or a dataclass, "
                    f"got {type(first).__name__}")


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.shape == b.shape and bool((a == b).all())
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001 (incomparable values are not the same)
        return False


def _leading(x: Any) -> int | None:
    if isinstance(x, torch.Tensor):
        return x.shape[0] if x.ndim else None
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        x = [getattr(x, f.name) for f in dataclasses.fields(x)]
    sizes = {leaf.shape[0] for leaf in tree_leaves(x) if isinstance(leaf, torch.Tensor) and leaf.ndim}
    return sizes.pop() if len(sizes) == 1 else None


def _check_count(name: str, value: Any) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def sample_sharded(fn: Callable[[int, torch.Generator], Any], num_samples: int, *, seed: int,
                   chunk_size: int = 1024, gather: str | None = "rank0", out: str | os.PathLike | None = None,
                   device=None, combine: Callable[[list], Any] | None = None,
                   settings: dict | None = None) -> Any:
    r"""Draw ``num_samples`` independent samples over all ranks; the same set whatever the world size.

    Samples are cut into chunks :math:`c = 0, \dots, C-1` of ``chunk_size`` rows
    (:math:`C = \lceil n / \text{chunk\_size}\rceil`, the last one shorter); chunk ``c`` is
    ``fn(len_c, chunk_generator(seed, c))`` and rank ``r`` of ``R`` draws chunks
    :math:`\lfloor rC/R\rfloor, \dots, \lfloor (r+1)C/R\rfloor - 1`. Sample ``i`` lies in chunk
    :math:`\lfloor i/\text{chunk\_size}\rfloor`, whose randomness depends on ``(seed, c)`` only, so
    the gathered set is the same tensor on any number of ranks (``chunk_size`` fixed).

    Args:
        fn: ``(n, generator) -> state`` drawing ``n`` samples with all randomness from ``generator``,
            e.g. ``lambda n, g: sample(den, (n, d), generator=g)`` or a discrete sampler.
            It returns a tensor, a tuple/dict of tensors, or a dataclass (such as a discrete
            sampler's result) whose per-sample tensor fields are concatenated and int fields
            (counts) summed.
        num_samples: total over all ranks.
        seed: the run's seed (non-negative).
        chunk_size: rows per chunk (memory per call); part of the result's definition.
        gather: ``"rank0"`` (rank 0 returns the whole set, other ranks ``None``), ``"all"``
            (every rank returns it) or ``None`` (every rank returns its own block).
        out: a folder; each rank also writes its block to ``out/samples_rank{r:05d}.pt``
            (``{"samples", "rows": (start, stop), "rank", "world_size", "seed", "chunk_size"}``),
            atomically.
        device: device of the chunk generators (that of the sampler's noise).
        combine: merges a list of blocks in order (default: concatenate along the batch).
        settings: anything else that changes the result and ``fn`` closes over (sampler name,
            steps, a model's identity), by name; compared across ranks with the other settings.

    Returns:
        The samples (see ``gather``).

    Raises:
        ValueError: on every rank, for settings that differ across ranks or fewer chunks than
            ranks (some rank would draw nothing).
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable (n, generator) -> samples, got {type(fn).__name__}")
    if gather not in _GATHER:
        raise ValueError(f"gather must be 'rank0', 'all' or None, got {gather!r}")
    check_same("sample_sharded", num_samples=num_samples, seed=seed, chunk_size=chunk_size,
               gather=gather, out=None if out is None else str(out), settings=settings or {})
    n = _check_count("num_samples", num_samples)
    size = _check_count("chunk_size", chunk_size)
    derive_seed(seed)
    chunks = _chunks(n, size)
    R, r = world_size(), rank()
    if len(chunks) < R:
        raise ValueError(f"num_samples={n} in chunks of chunk_size={size} gives {len(chunks)} chunk(s) for "
                         f"{R} ranks: rank {len(chunks)} and above would draw nothing; lower chunk_size "
                         "or use fewer ranks")
    lo, hi = _block(len(chunks), R, r)
    merge = combine or (lambda ps: _concat(ps, [_leading(p) for p in ps]))

    def work():
        parts = []
        for c in range(lo, hi):
            a, b = chunks[c]
            s = fn(b - a, chunk_generator(seed, c, device))
            if _leading(s) != b - a:
                raise ValueError(f"fn(n={b - a}, generator) returned a batch of {_leading(s)}, not {b - a}")
            parts.append(s)
        return merge(parts)

    local = _run_on_all(work, "sample_sharded")
    if out is not None:
        save_atomic({"samples": local, "rows": (chunks[lo][0], chunks[hi - 1][1]), "rank": r,
                     "world_size": R, "seed": seed, "chunk_size": size}, Path(out) / f"samples_rank{r:05d}.pt")
    return _gather(local, gather, merge)


# --------------------------------------------------------------------------------------------
# SMC (Feynman-Kac correctors) with whole groups per rank


def combine_fkc(parts: list) -> Any:
    r"""Merge Feynman–Kac results of disjoint blocks of groups (in order) into one.

    Particles, log-weights and log Z are concatenated by group; the per-step diagnostics that
    are means over groups (``ess``, ``lineages``) become group-count-weighted means, ``min_ess``
    the minimum, ``num_resampled`` and ``nfe`` (batched evaluations made) sums,
    ``resample_steps`` the union. Other fields come from the first block. Works on any result
    with these fields (``sciffusion.domains.feynman_kac.FKCResult``); the core imports no domain.
    """
    if len(parts) == 1:
        return parts[0]
    G = [p.log_w.shape[0] for p in parts]
    N = parts[0].log_w.shape[1]
    w = torch.tensor(G, dtype=torch.float64) / sum(G)
    for p in parts[1:]:
        if not torch.equal(p.ts, parts[0].ts) or p.log_w.shape[1] != N:
            raise ValueError("combine_fkc: blocks ran on different time grids or particle counts")

    def wmean(name):
        vals = [getattr(p, name) for p in parts]
        if any(v is None for v in vals):
            return None
        return sum(wi * v.double() for wi, v in zip(w, vals))

    new = dict(x=_concat([p.x for p in parts], [g * N for g in G]),
               log_w=torch.cat([p.log_w for p in parts]), log_z=torch.cat([p.log_z for p in parts]),
               ess=wmean("ess"), min_ess=torch.stack([p.min_ess for p in parts]).amin(0),
               resample_steps=sorted(set().union(*(p.resample_steps for p in parts))),
               nfe=sum(p.nfe for p in parts), lineages=wmean("lineages"))
    if all(p.num_resampled is not None for p in parts):
        new["num_resampled"] = sum(p.num_resampled for p in parts)
    return dataclasses.replace(parts[0], **new)


def _group_shape(shape: Any, g: int) -> Any:
    """``shape`` (a tuple of ints, or a tuple of such for a joint state) with ``g`` groups."""
    if all(isinstance(s, (int, np.integer)) for s in shape):
        return (g, *tuple(shape)[1:])
    return type(shape)(_group_shape(s, g) for s in shape)


def _num_groups_of_shape(shape: Any) -> int:
    if all(isinstance(s, (int, np.integer)) for s in shape):
        if not len(shape):
            raise ValueError("x_or_shape: an empty shape; expected (num_groups, ...)")
        return int(shape[0])
    firsts = {_num_groups_of_shape(s) for s in shape}
    if len(firsts) != 1:
        raise ValueError(f"x_or_shape: component shapes disagree on the number of groups: {sorted(firsts)}")
    return firsts.pop()


def fkc_sharded(sample_fkc: Callable, target: Any, x_or_shape: Any, *, num_particles: int, seed: int,
                groups_per_chunk: int = 1, gather: str | None = "rank0", log_weights: torch.Tensor | None = None,
                device=None, **options: Any) -> Any:
    r"""Feynman–Kac SMC over all ranks, whole groups per rank (resampling never crosses ranks).

    The ``G`` groups of ``num_particles`` particles are cut into chunks of ``groups_per_chunk``
    groups; chunk ``c`` runs ``sample_fkc(target, <its groups>, generator=chunk_generator(seed, c))``
    and rank ``r`` of ``R`` runs chunks :math:`rC/R, \dots, (r+1)C/R - 1` (``R`` must divide
    :math:`C`, so every rank holds as many groups). SMC resamples within a group, so a chunk's
    result depends on ``(seed, c)`` alone and the merged result (:func:`combine_fkc`) is the same on
    any number of ranks: particles, weights and log Z bit for bit, mean diagnostics to round-off.

    Args:
        sample_fkc: the sampler, ``sciffusion.domains.feynman_kac.sample_fkc`` (passed in: the
            core imports no domain).
        target: its target.
        x_or_shape: ``(G, ...)`` (one group per row, a tuple of shapes for a joint state), or a
            starting state of batch ``G * num_particles`` (group-major).
        num_particles: particles per group.
        seed: the run's seed.
        groups_per_chunk: groups per ``sample_fkc`` call (batching); part of the result's definition.
        gather: as in :func:`sample_sharded`.
        log_weights: optional starting log-weights ``(G, N)`` or ``(G*N,)``, split with the groups.
        device: device of the chunk generators.
        **options: forwarded to ``sample_fkc`` (``num_steps``, ``noise``, ``threshold``, ...; not
            ``generator`` or ``checkpoint``, which are per chunk).

    Returns:
        The merged result on the ranks ``gather`` names (``None`` elsewhere).

    Raises:
        ValueError: on every rank, when settings differ across ranks or ``R`` does not divide the
            number of chunks.
    """
    for bad in ("generator", "checkpoint"):
        if bad in options:
            raise TypeError(f"fkc_sharded: {bad}= is not accepted (each chunk gets its own, from seed)")
    if gather not in _GATHER:
        raise ValueError(f"gather must be 'rank0', 'all' or None, got {gather!r}")
    is_state = bool(tree_leaves(x_or_shape)) and all(isinstance(v, torch.Tensor) for v in tree_leaves(x_or_shape))
    check_same("fkc_sharded", x_or_shape=x_or_shape, num_particles=num_particles, seed=seed,
               groups_per_chunk=groups_per_chunk, gather=gather, log_weights=log_weights, options=options)
    N = _check_count("num_particles", num_particles)
    k = _check_count("groups_per_chunk", groups_per_chunk)
    derive_seed(seed)
    if is_state:
        B = {leaf.shape[0] for leaf in tree_leaves(x_or_shape)}
        if len(B) != 1 or B.copy().pop() % N:
            raise ValueError(f"x_or_shape: a starting state needs one batch size, a multiple of "
                             f"num_particles={N}; got {sorted(B)}")
        G = B.pop() // N
    else:
        G = _num_groups_of_shape(x_or_shape)
    R, r = world_size(), rank()
    if G % k:
        raise ValueError(f"groups_per_chunk={k} does not divide the number of groups G={G}")
    C = G // k
    if C % R:
        raise ValueError(f"world size {R} does not divide the number of SMC chunks {C} (G={G} groups, "
                         f"groups_per_chunk={k}): groups must be whole and equal per rank; use a multiple of "
                         f"{R} chunks or another world size")
    lw = None
    if log_weights is not None:
        lw = torch.as_tensor(log_weights, dtype=torch.float64)
        if lw.numel() != G * N:
            raise ValueError(f"log_weights must have G*N = {G * N} entries, got shape {tuple(lw.shape)}")
        lw = lw.reshape(G, N)

    def work():
        parts = []
        for c in range(*_block(C, R, r)):
            g0, g1 = c * k, (c + 1) * k
            if is_state:
                xs = _map_tensors(lambda t: t[g0 * N:g1 * N], x_or_shape)
            else:
                xs = _group_shape(x_or_shape, k)
            parts.append(sample_fkc(target, xs, num_particles=N, generator=chunk_generator(seed, c, device),
                                    log_weights=None if lw is None else lw[g0:g1], **options))
        return combine_fkc(parts)

    local = _run_on_all(work, "fkc_sharded")
    return _gather(local, gather, combine_fkc)


# --------------------------------------------------------------------------------------------
# training (the hook sciffusion.training.fit calls)


def _param_digest(state: dict) -> str:
    h = hashlib.sha256()
    for v in state.values():
        t = v.detach().cpu().contiguous()
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() and t.dtype != torch.bool
                 else t.numpy().tobytes())
    return h.hexdigest()[:16]


def shard_indices(n: int, rank: int, world_size: int, seed: int) -> torch.Tensor:
    r"""Rows of rank ``rank``'s training shard: ``sorted(perm[rank::world_size])`` for a permutation
    ``perm`` of ``range(n)`` seeded from ``seed`` alone, so the shards of one run are disjoint, cover
    every row once, and are the same on every launch."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(derive_seed(seed, _DATA)))
    return perm[rank::world_size].sort().values


class FitGroup:
    """What :func:`sciffusion.training.fit` does differently on ``R > 1`` ranks (module docstring).

    Built by :func:`fit_hook`; ``fit`` calls each method at one point of its loop.
    """

    def __init__(self, model, data, batch_size: int, seed: int):
        self.R, self.rank = world_size(), rank()
        self.base_seed = seed
        self.n = None
        if not callable(data):
            first = data[0] if isinstance(data, (tuple, list)) else data
            self.n = int(first.shape[0]) if isinstance(first, torch.Tensor) and first.ndim else 0
            if self.n < self.R:
                raise ValueError(f"data: {self.n} row(s) cannot give each of {self.R} ranks a shard (rank "
                                 f"{self.n} and above would have an empty shard); give at least {self.R} rows "
                                 "or use fewer ranks")
        self.ddp = None
        if isinstance(model, torch.nn.Module):
            dev = next((p.device for p in model.parameters()), torch.device("cpu"))
            self.ddp = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[dev] if dev.type == "cuda" else None)

    def shard(self, data, batch_size: int):
        """This rank's disjoint shard of ``data`` (rows ``perm[rank::R]`` of a seeded permutation) and
        the per-rank batch size (capped by the smallest shard, so every rank draws as many rows)."""
        if callable(data):
            return data, batch_size
        idx = shard_indices(self.n, self.rank, self.R, self.base_seed)
        rows = type(data)(d[idx.to(d.device)] for d in data) if isinstance(data, (tuple, list)) else data[idx.to(data.device)]
        return rows, min(batch_size, self.n // self.R)

    def seed(self, seed: int) -> int:
        """The rank's training-generator seed (batch order on its shard, the loss's noise)."""
        return derive_seed(seed, _FIT, self.rank)

    def stamp(self, stamp: dict) -> dict:
        return {**stamp, "world_size": str(self.R)}

    def mean(self, loss: torch.Tensor) -> torch.Tensor:
        """The loss averaged over ranks (detached): the loss of the global batch."""
        t = loss.detach().reshape(1).clone()
        dist.all_reduce(t)
        return (t / self.R)[0]

    def exists(self, path: Path) -> bool:
        seen = _all_gather(path.exists())
        if len(set(seen)) > 1:
            raise ValueError(f"checkpoint {path} exists on rank(s) {[r for r, s in enumerate(seen) if s]} "
                             f"but not on {[r for r, s in enumerate(seen) if not s]}: put it on a filesystem "
                             "every rank sees")
        return seen[0]

    def generator_state(self, state: dict) -> torch.Tensor:
        gens = state["generator"]
        if not isinstance(gens, (list, tuple)) or len(gens) != self.R:
            raise ValueError(f"checkpoint holds no generator state per rank for {self.R} ranks")
        return gens[self.rank]

    def save(self, state: dict, path: Path) -> None:
        """Rank 0 writes (atomically) the state with every rank's generator; all ranks wait for it."""
        self.check_sync(state.get("model"), "before a checkpoint")
        gens = _all_gather(state["generator"])
        if self.rank == 0:
            save_atomic({**state, "generator": gens, "world_size": self.R}, path)
        dist.barrier()

    def check_sync(self, model, when: str = "at the end") -> None:
        """All ranks must hold the same parameters; if not, ``loss_fn`` bypassed the DDP wrapper."""
        if model is None:
            return
        digests = _all_gather(_param_digest(model.state_dict() if isinstance(model, torch.nn.Module) else model))
        if len(set(digests)) > 1:
            raise RuntimeError(f"fit: model parameters differ across ranks {when}: loss_fn must call the model "
                               "it is passed (the DDP wrapper), not the original module")


_LOCAL = [0]  # depth of local_only() blocks


@contextlib.contextmanager
def local_only():
    """Within this block ``fit`` trains on this process alone even inside a process group (e.g. a
    fit on rank 0 only, which would otherwise wait for the other ranks)."""
    _LOCAL[0] += 1
    try:
        yield
    finally:
        _LOCAL[0] -= 1


def fit_hook(*, model, data, batch_size: int, seed: int, **settings) -> FitGroup | None:
    """Called first by :func:`sciffusion.training.fit`: ``None`` on one process or inside
    :func:`local_only` (fit unchanged), else the :class:`FitGroup` after every rank agreed on the
    settings (:func:`check_same`).

    A process started by ``torchrun`` with ``WORLD_SIZE > 1`` that has not yet joined its group
    joins it here (:func:`init`).
    """
    if _LOCAL[0]:
        return None
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not _active():
        init()
    if world_size() == 1:
        return None
    check_same("fit", model=model, data=data, batch_size=batch_size, seed=seed, **settings)
    return FitGroup(model, data, batch_size, seed)


# --------------------------------------------------------------------------------------------
# python -m sciffusion.distributed: a launch self-check and the scale_out benchmark's worker


def _selfcheck(args) -> dict:
    from .losses import dsm_loss
    from .nn import MLP
    from .processes import VP
    from .samplers import sample
    from .testing import GaussianMixture, empirical_w2_gaussian
    from .training import fit

    torch.set_num_threads(args.threads)
    d = args.dim
    mean = torch.linspace(-1.0, 1.0, d, dtype=torch.float64)
    cov = torch.diag(torch.linspace(0.5, 1.5, d, dtype=torch.float64))
    law = GaussianMixture.gaussian(mean, cov)
    data = law.sample(args.data, torch.Generator().manual_seed(0)).float()
    with torch.random.fork_rng(devices=[]):  # same initial weights on every rank, caller's RNG untouched
        torch.manual_seed(0)
        model = MLP(d, hidden=args.hidden, depth=2)
    proc = VP()
    loss = lambda m, x, g: dsm_loss(m, x, proc, generator=g)  # noqa: E731
    barrier()
    t0 = time.perf_counter()
    res = fit(model, loss, data, steps=args.steps, batch_size=args.batch_size, lr=2e-3, seed=args.seed,
              ema_decay=args.ema_decay, progress=False, settings={"process": proc})
    barrier()
    t_fit = time.perf_counter() - t0
    exact = law.denoiser(proc)
    from .denoisers import Denoiser

    den = Denoiser(res.ema, proc, "eps")

    def draw(n, g, which=den):
        with torch.no_grad():
            return sample(which, (n, d), sampler="dpmpp_2m", num_steps=args.sample_steps, generator=g)

    barrier()
    t0 = time.perf_counter()
    xs = sample_sharded(draw, args.samples, seed=args.seed, chunk_size=args.chunk_size)
    barrier()
    t_sample = time.perf_counter() - t0
    ref = sample_sharded(lambda n, g: draw(n, g, exact), args.samples, seed=args.seed, chunk_size=args.chunk_size,
                         settings={"which": "exact"})
    if not is_main():
        return {}
    emp_w2 = empirical_w2_gaussian(xs.double(), mean, cov)
    ref_w2 = empirical_w2_gaussian(ref.double(), mean, cov)  # the floor at this sample size
    return {"world_size": world_size(), "backend": dist.get_backend() if _active() else "none",
            "threads_per_rank": args.threads, "fit_steps": args.steps, "batch_size_per_rank": args.batch_size,
            "global_batch": args.batch_size * world_size(), "fit_seconds": t_fit,
            "fit_rows_per_s": args.steps * args.batch_size * world_size() / t_fit,
            "fit_steps_per_s": args.steps / t_fit, "samples": args.samples, "sample_steps": args.sample_steps,
            "sample_seconds": t_sample, "samples_per_s": args.samples / t_sample,
            "final_loss": res.losses[-1] if res.losses else None,
            "w2_trained_vs_exact_law": emp_w2, "w2_exact_model_vs_exact_law": ref_w2}


def main(argv: list[str] | None = None) -> int:
    """``[torchrun ...] python -m sciffusion.distributed``: train, sample sharded, write summary.json."""
    p = argparse.ArgumentParser(prog="python -m sciffusion.distributed",
                                description="train a small denoiser on an exact Gaussian with fit and sample it "
                                            "sharded; rank 0 writes summary.json (launch with torchrun)")
    p.add_argument("--out", type=Path, default=Path("distributed-check"), help="folder for summary.json")
    p.add_argument("--dim", type=int, default=8)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--data", type=int, default=8192, help="training rows (sharded over ranks)")
    p.add_argument("--steps", type=int, default=500, help="fit steps")
    p.add_argument("--batch-size", type=int, default=256, help="rows per rank per step")
    p.add_argument("--ema-decay", type=float, default=0.99)
    p.add_argument("--samples", type=int, default=4096)
    p.add_argument("--sample-steps", type=int, default=20)
    p.add_argument("--chunk-size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    p.add_argument("--backend", choices=["gloo", "nccl"], default=None)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    init(args.backend)
    try:
        summary = _selfcheck(args)
        if is_main():
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
            sys.stdout.write(json.dumps(summary) + "\n")
    finally:
        shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
