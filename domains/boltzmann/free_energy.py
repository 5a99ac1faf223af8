r"""Free energies from weighted samples: surfaces along CVs, basin differences, MBAR.

Samples :math:`x_i` with log-weights :math:`\log w_i` (importance weights to the Boltzmann
distribution, e.g. :math:`V(s_i)/k_BT` for samples of a biased target, zero for unbiased MD)
estimate basin probabilities by self-normalised importance sampling,

.. math:: \hat P_X = \frac{\sum_i w_i \mathbf 1[s_i \in X]}{\sum_i w_i},\qquad
          \Delta F(A \to B) = F_B - F_A = -k_BT \ln\frac{\hat P_B}{\hat P_A},

with error bars by (block) bootstrap over samples. When samples come from several biased
states (rounds with different frozen biases), :func:`mbar_delta_f` combines them with MBAR
(Shirts & Chodera 2008, J. Chem. Phys. 129, 124105, Eq. 11) through pymbar.

Basins are written as text, ``Basin.parse("B: 0 < phi < 2")``; see :class:`Basin`.
"""

from __future__ import annotations

import ast
import builtins
import contextlib
import io
import math
import operator
import re
import warnings
from dataclasses import dataclass, field
from typing import Sequence

import torch

from sciffusion import smc

_TWO_PI = 2 * math.pi


# ------------------------------------------------------------------------------------------
# basins
# ------------------------------------------------------------------------------------------

_BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
           ast.Div: operator.truediv}


def _number(text: str) -> float:
    """A number written as a float or an arithmetic expression of floats and ``pi``."""
    try:
        tree = ast.parse(text.strip(), mode="eval").body
    except SyntaxError as err:
        raise ValueError(f"cannot read {text!r} as a number") from err

    def ev(node):
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return float(node.value)
        if isinstance(node, ast.Name) and node.id == "pi":
            return math.pi
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            v = ev(node.operand)
            return -v if isinstance(node.op, ast.USub) else v
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            return _BINOPS[type(node.op)](ev(node.left), ev(node.right))
        raise ValueError(f"cannot read {text!r} as a number (allowed: floats, pi, + - * /)")

    return ev(tree)


@dataclass
class _Interval:
    cv: str
    lo: float = -math.inf
    hi: float = math.inf


_CMP = re.compile(r"^\s*(?:(?P<lo>[^<>=]+?)\s*<=?\s*)?(?P<cv>[A-Za-z_][A-Za-z_0-9]*)"
                  r"\s*(?:<=?\s*(?P<hi>[^<>=]+?))?\s*$")
_GT = re.compile(r"^\s*(?P<cv>[A-Za-z_][A-Za-z_0-9]*)\s*>=?\s*(?P<lo>[^<>=]+?)\s*$")
_GT2 = re.compile(r"^\s*(?P<hi>[^<>=]+?)\s*>=?\s*(?P<cv>[A-Za-z_][A-Za-z_0-9]*)"
                  r"(?:\s*>=?\s*(?P<lo>[^<>=]+?))?\s*$")


@dataclass
class Basin:
    r"""A region of CV space, written as text.

    Grammar: ``"NAME: CLAUSE [or CLAUSE ...]"`` where a clause is comparisons joined by ``and``
    (or ``&`` / ``,``), each ``lo < cv < hi``, ``cv < hi``, ``cv > lo`` (``<=``/``>=`` read the
    same: the boundary has measure zero). Numbers may use ``pi`` (``-2*pi/3``). ``"NAME = rest"``
    or ``"NAME: rest"`` is the complement of the other basins it is resolved against.

    Periodic CVs (radians, period :math:`2\pi`): values are wrapped to :math:`(-\pi, \pi]` and a
    two-sided interval ``lo < phi < hi`` is the arc from ``lo`` anticlockwise to ``hi``, so
    ``2 < phi < -2`` is the arc through :math:`\pm\pi` (the beta region of alanine dipeptide
    straddles :math:`\phi = \pm\pi`, which is why "phi > 0" is the wrong definition of
    :math:`C_{7ax}`/B and ``"B: 0 < phi < 2", "A = rest"`` the right one).
    """

    name: str
    clauses: list[list[_Interval]] = field(default_factory=list)
    rest: bool = False
    text: str = ""

    @classmethod
    def parse(cls, text: str) -> "Basin":
        if isinstance(text, Basin):
            return text
        if not isinstance(text, str):
            raise TypeError(f"a basin is a string like 'B: 0 < phi < 2', got {type(text).__name__}")
        m = re.match(r"^\s*([A-Za-z_][A-Za-z_0-9]*)\s*[:=]\s*(.+?)\s*$", text)
        if not m:
            raise ValueError(f"cannot parse basin {text!r}; expected 'NAME: 0 < phi < 2' or 'NAME = rest'")
        name, body = m.group(1), m.group(2)
        if body.strip().lower() == "rest":
            return cls(name, [], True, text)
        clauses = []
        for clause in re.split(r"\s+or\s+|\|", body):
            terms = []
            for term in re.split(r"\s+and\s+|&|,", clause):
                if not term.strip():
                    continue
                terms.append(cls._parse_term(term, text))
            if not terms:
                raise ValueError(f"empty clause in basin {text!r}")
            clauses.append(terms)
        return cls(name, clauses, False, text)

    @staticmethod
    def _parse_term(term: str, text: str) -> _Interval:
        for pattern in (_CMP, _GT, _GT2):
            m = pattern.match(term)
            if m and (m.groupdict().get("lo") or m.groupdict().get("hi")):
                lo = _number(m.group("lo")) if m.groupdict().get("lo") else -math.inf
                hi = _number(m.group("hi")) if m.groupdict().get("hi") else math.inf
                return _Interval(m.group("cv"), lo, hi)
        raise ValueError(f"cannot parse {term.strip()!r} in basin {text!r}; expected e.g. "
                         "'0 < phi < 2', 'phi > 1' or 'x1 < 0'")

    @property
    def cv_names(self) -> set[str]:
        return {iv.cv for clause in self.clauses for iv in clause}

    def mask(self, cv_values: torch.Tensor, names: Sequence[str], periodic: Sequence[bool] | None = None,
             others: Sequence["Basin"] = ()) -> torch.Tensor:
        """Boolean ``(B,)``: which samples lie in the basin (``others``: for a ``rest`` basin)."""
        s, names, periodic = _check_cvs(cv_values, names, periodic)
        if self.rest:
            concrete = [b for b in others if not b.rest]
            if not concrete:
                raise ValueError(f"basin {self.name!r} is 'rest' but there is no other basin to "
                                 "complement")
            inside = torch.zeros(s.shape[0], dtype=torch.bool)
            for b in concrete:
                inside |= b.mask(s, names, periodic)
            return ~inside
        out = torch.zeros(s.shape[0], dtype=torch.bool)
        for clause in self.clauses:
            m = torch.ones(s.shape[0], dtype=torch.bool)
            for iv in clause:
                if iv.cv not in names:
                    raise ValueError(f"basin {self.name!r} uses CV {iv.cv!r}, but the CVs are {list(names)}")
                d = names.index(iv.cv)
                m &= _in_interval(s[:, d], iv.lo, iv.hi, periodic[d])
            out |= m
        return out


def _wrap(v: torch.Tensor) -> torch.Tensor:
    """Wrap angles to (-pi, pi]."""
    return math.pi - torch.remainder(math.pi - v, _TWO_PI)


def _in_interval(v: torch.Tensor, lo: float, hi: float, periodic: bool) -> torch.Tensor:
    if not periodic:
        return (v > lo) & (v < hi)
    v = _wrap(v)
    if math.isinf(lo) or math.isinf(hi):
        return (v > lo) & (v < hi)
    width = (hi - lo) % _TWO_PI
    return torch.remainder(v - lo, _TWO_PI) < width


def resolve_basins(*specs) -> list[Basin]:
    """Parse basin strings (or Basins); at most one may be ``rest``."""
    basins = [Basin.parse(s) for s in specs]
    if sum(b.rest for b in basins) > 1:
        raise ValueError("at most one basin may be 'rest'")
    names = [b.name for b in basins]
    if len(set(names)) != len(names):
        raise ValueError(f"basin names must differ, got {names}")
    return basins


def _check_cvs(cv_values, names, periodic):
    s = torch.as_tensor(cv_values).detach().to(torch.float64)
    if s.ndim == 1:
        s = s[:, None]
    if s.ndim != 2:
        raise ValueError(f"cv_values must have shape (N, k), got {tuple(s.shape)}")
    k = s.shape[1]
    names = [f"cv{d}" for d in range(k)] if names is None else list(names)
    if len(names) != k:
        raise ValueError(f"names has {len(names)} entries for {k} CVs")
    periodic = [False] * k if periodic is None else [bool(p) for p in periodic]
    if len(periodic) != k:
        raise ValueError(f"periodic has {len(periodic)} flags for {k} CVs")
    if not torch.isfinite(s).all():
        idx = int(torch.nonzero(~torch.isfinite(s).all(-1))[0, 0])
        raise ValueError(f"cv_values has a non-finite value at sample {idx}")
    return s, names, periodic


def _check_log_weights(log_weights, n):
    if log_weights is None:
        return torch.zeros(n, dtype=torch.float64)
    lw = torch.as_tensor(log_weights).detach().to(torch.float64)
    if lw.shape != (n,):
        raise ValueError(f"log_weights must have shape ({n},), got {tuple(lw.shape)}")
    if torch.isnan(lw).any() or (lw == math.inf).any():
        idx = int(torch.nonzero(torch.isnan(lw) | (lw == math.inf))[0, 0])
        raise ValueError(f"log_weights has NaN or +inf at sample {idx}")
    return lw


# ------------------------------------------------------------------------------------------
# surfaces and differences
# ------------------------------------------------------------------------------------------

def free_energy_surface(cv_values: torch.Tensor, log_weights: torch.Tensor | None = None,
                        bins=50, kT: float = 1.0, range=None, periodic: Sequence[bool] | None = None):
    r"""The reweighted free-energy surface :math:`F(s) = -k_BT\ln \hat p(s) + c` on a histogram.

    :math:`\hat p` is the weighted histogram density (weights :math:`w_i \propto e^{\log w_i}`,
    divided by the bin volume), shifted so :math:`\min F = 0`; empty bins are ``+inf``.

    Args:
        cv_values: ``(N, k)`` (or ``(N,)``) CV values.
        log_weights: ``(N,)`` or ``None`` (unweighted).
        bins: bins per CV (int or per CV).
        kT: :math:`k_BT`; ``F`` is returned in its unit.
        range: ``[(lo, hi), ...]`` per CV; default ``(-pi, pi)`` for periodic CVs and the data's
            range otherwise.
        periodic: per-CV flags (periodic values are wrapped to ``(-pi, pi]`` first).

    Returns:
        ``(edges, F)``: a list of ``k`` bin-edge tensors and ``F`` of shape ``bins`` indexed in CV
        order ``[i_0, i_1, ...]`` (so for (phi, psi), ``F[i_phi, i_psi]``).
    """
    s, _, periodic = _check_cvs(cv_values, None, periodic)
    n, k = s.shape
    lw = _check_log_weights(log_weights, n)
    if float(kT) <= 0:
        raise ValueError(f"kT must be > 0, got {kT}")
    for d in builtins.range(k):
        if periodic[d]:
            s[:, d] = _wrap(s[:, d])
    bins_l = [int(bins)] * k if isinstance(bins, int) else [int(b) for b in bins]
    if len(bins_l) != k or min(bins_l) < 1:
        raise ValueError(f"bins must be a positive int or {k} of them, got {bins}")
    if range is None:
        range = [(-math.pi, math.pi) if periodic[d] else (float(s[:, d].min()), float(s[:, d].max()))
                 for d in builtins.range(k)]
    if len(range) != k:
        raise ValueError(f"range must have {k} (lo, hi) pairs")
    flat_range = [float(v) for pair in range for v in pair]
    w = smc.normalize(lw)
    hist, edges = torch.histogramdd(s, bins=bins_l, range=flat_range, weight=w)
    vol = 1.0
    for e in edges:
        vol = vol * (e[1] - e[0])
    with torch.no_grad():
        f = -float(kT) * torch.log(hist / vol)
    f = f - f[torch.isfinite(f)].min() if torch.isfinite(f).any() else f
    return list(edges), f



def _basin_probs(masks_a, masks_b, lw):
    lse = torch.logsumexp
    la = lse(torch.where(masks_a, lw, torch.full_like(lw, -math.inf)), -1)
    lb = lse(torch.where(masks_b, lw, torch.full_like(lw, -math.inf)), -1)
    return la, lb


def delta_f(cv_values: torch.Tensor, log_weights: torch.Tensor | None, basin_a, basin_b,
            kT: float = 1.0, n_bootstrap: int = 200, generator: torch.Generator | None = None,
            names: Sequence[str] | None = None, periodic: Sequence[bool] | None = None,
            block_size: int = 1) -> dict:
    r""":math:`\Delta F(A\to B) = -k_BT\ln(\hat P_B/\hat P_A)` with a bootstrap error bar.

    Bootstrap: ``n_bootstrap`` resamples of the samples with replacement (in contiguous blocks
    of ``block_size`` for correlated time series such as MD, the moving-block bootstrap of
    Künsch 1989; ``block_size=1`` for independent samples); ``stderr`` is their standard
    deviation and ``ci`` their 2.5 / 97.5 % percentiles. Resamples that miss a basin are dropped
    and counted in ``n_bootstrap_dropped``.

    Args:
        cv_values: ``(N, k)`` CV values (``(N,)`` for one CV).
        log_weights: ``(N,)`` log importance weights, or ``None``.
        basin_a, basin_b: :class:`Basin` or text (``"A = rest"`` for the complement of the other).
        kT: :math:`k_BT`; the result is in its unit (``kT = 1``: in kT).
        names, periodic: the CV names used by the basins and their periodicity.
        generator: randomness of the bootstrap (default: a generator seeded with 0, so the error
            bar of the same samples is the same on every call).

    Returns:
        ``dict(delta_f, stderr, ci, ess, n_a, n_b, p_a, p_b, n_bootstrap_dropped)``; ``n_a`` and
        ``n_b`` count the samples in each basin. Raises ValueError naming a basin no sample
        visits (or that carries zero weight).
    """
    s, names, periodic = _check_cvs(cv_values, names, periodic)
    n = s.shape[0]
    lw = _check_log_weights(log_weights, n)
    a, b = resolve_basins(basin_a, basin_b)
    ma = a.mask(s, names, periodic, others=[b])
    mb = b.mask(s, names, periodic, others=[a])
    for basin, m in ((a, ma), (b, mb)):
        if not m.any():
            raise ValueError(f"no sample visits basin {basin.name!r} ({basin.text!r}): its free "
                             f"energy is undefined; sample longer or with a bias along {sorted(basin.cv_names) or names}")
        if not torch.isfinite(lw[m]).any():
            raise ValueError(f"every sample in basin {basin.name!r} has zero weight")
    kT = float(kT)
    if not kT > 0:
        raise ValueError(f"kT must be > 0, got {kT}")
    lse_all = torch.logsumexp(lw, 0)
    la, lb = _basin_probs(ma, mb, lw)
    est = -kT * float(lb - la)
    out = {"delta_f": est, "ess": float(smc.ess(lw)), "n_a": int(ma.sum()), "n_b": int(mb.sum()),
           "p_a": float(torch.exp(la - lse_all)), "p_b": float(torch.exp(lb - lse_all)),
           "basin_a": a.text or a.name, "basin_b": b.text or b.name, "kT": kT}
    n_bootstrap = int(n_bootstrap)
    if n_bootstrap > 0:
        block_size = int(block_size)
        if block_size < 1 or block_size > n:
            raise ValueError(f"block_size must be in [1, {n}], got {block_size}")
        n_blocks = math.ceil(n / block_size)
        if generator is None:  # reproducible error bars by default (no global RNG)
            generator = torch.Generator().manual_seed(0)
        starts = torch.randint(0, n - block_size + 1, (n_bootstrap, n_blocks), generator=generator)
        idx = (starts[..., None] + torch.arange(block_size)).reshape(n_bootstrap, -1)[:, :n]
        la_b, lb_b = _basin_probs(ma[idx], mb[idx], lw[idx])
        vals = -kT * (lb_b - la_b)
        ok = torch.isfinite(vals)
        vals = vals[ok]
        out["n_bootstrap_dropped"] = int((~ok).sum())
        if vals.numel() >= 2:
            out["stderr"] = float(vals.std())
            q = torch.quantile(vals, torch.tensor([0.025, 0.975], dtype=torch.float64))
            out["ci"] = [float(q[0]), float(q[1])]
        else:
            out["stderr"], out["ci"] = math.nan, [math.nan, math.nan]
    else:
        out["stderr"], out["ci"], out["n_bootstrap_dropped"] = math.nan, [math.nan, math.nan], 0
    return out


def delta_f_from_grid(grid_points: Sequence[torch.Tensor], free_energy: torch.Tensor, basin_a,
                      basin_b, names: Sequence[str], periodic: Sequence[bool] | None = None,
                      kT: float = 1.0) -> dict:
    r""":math:`\Delta F(A\to B) = -k_BT\ln\frac{\sum_{g\in B} e^{-F_g}}{\sum_{g\in A} e^{-F_g}}` from a
    free-energy grid (reduced, CV order ``F[i_0, i_1, ...]``): the metadynamics grid or the
    bias's own :meth:`~sciffusion.domains.boltzmann.bias.WellTemperedBias.free_energy`.

    Each node stands for an equal cell (a regular grid; periodic grids without a duplicated end
    node). Returns ``dict(delta_f, p_a, p_b)`` in the unit of ``kT``.
    """
    f = torch.as_tensor(free_energy, dtype=torch.float64)
    if f.ndim != len(grid_points) or tuple(f.shape) != tuple(len(g) for g in grid_points):
        raise ValueError(f"free_energy of shape {tuple(f.shape)} does not match grid_points of "
                         f"lengths {[len(g) for g in grid_points]} (CV order expected)")
    mesh = torch.meshgrid(*[torch.as_tensor(g, dtype=torch.float64) for g in grid_points], indexing="ij")
    pts = torch.stack([m.reshape(-1) for m in mesh], -1)
    logp = -f.reshape(-1)
    a, b = resolve_basins(basin_a, basin_b)
    ma = a.mask(pts, names, periodic, others=[b])
    mb = b.mask(pts, names, periodic, others=[a])
    for basin, m in ((a, ma), (b, mb)):
        if not m.any() or not torch.isfinite(logp[m]).any():
            raise ValueError(f"basin {basin.name!r} ({basin.text!r}) holds no grid node with finite F")
    la, lb = _basin_probs(ma, mb, logp)
    lse = torch.logsumexp(logp, 0)
    return {"delta_f": -float(kT) * float(lb - la), "p_a": float(torch.exp(la - lse)),
            "p_b": float(torch.exp(lb - lse))}


# ------------------------------------------------------------------------------------------
# MBAR
# ------------------------------------------------------------------------------------------

def _pymbar():
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import pymbar
    except ImportError as err:  # pragma: no cover
        raise ImportError('pymbar is needed for MBAR; install it with pip install "sciffusion[molecules]"') from err
    return pymbar


def mbar_delta_f(cv_values: torch.Tensor, reduced_bias: torch.Tensor, n_per_state: Sequence[int],
                 basin_a, basin_b, kT: float = 1.0, names: Sequence[str] | None = None,
                 periodic: Sequence[bool] | None = None) -> dict:
    r""":math:`\Delta F(A\to B)` from samples of ``K`` biased states by MBAR (pymbar).

    State ``k`` has reduced potential :math:`u_k(x) = u_0(x) + b_k(s(x))` with a known reduced
    bias :math:`b_k = V_k/k_BT` (e.g. round ``k`` of WT-ASBS with its frozen bias, or umbrella
    windows); the unbiased :math:`u_0` is common to all states and cancels from every MBAR
    weight (Shirts & Chodera 2008, Eq. 11), so only the biases are needed. The basins enter as
    two extra, unsampled states :math:`u_X = u_0 + (0 \text{ inside } X, +\infty \text{ outside})`,
    whose free energies relative to the unbiased state are :math:`-\ln P_X`; pymbar's
    ``compute_perturbed_free_energies`` gives their difference with its asymptotic covariance.

    Args:
        cv_values: ``(N, k)`` CV values, samples ordered by state.
        reduced_bias: ``(K, N)`` :math:`b_k(s_n)` for every state ``k`` and every sample ``n``.
        n_per_state: ``(K,)`` samples drawn from each state (sum ``N``).
        basin_a, basin_b, kT, names, periodic: as in :func:`delta_f`.

    Returns:
        ``dict(delta_f, stderr, n_a, n_b, f_k, log_weights, ess)``: ``f_k`` the states' reduced
        free energies relative to the first, ``log_weights`` ``(N,)`` MBAR log-weights of the
        samples for the unbiased state (usable with :func:`delta_f` and
        :func:`free_energy_surface`).
    """
    pymbar = _pymbar()
    import numpy as np

    s, names, periodic = _check_cvs(cv_values, names, periodic)
    n = s.shape[0]
    b_kn = torch.as_tensor(reduced_bias, dtype=torch.float64).detach()
    if b_kn.ndim != 2 or b_kn.shape[1] != n:
        raise ValueError(f"reduced_bias must have shape (K, {n}), got {tuple(b_kn.shape)}")
    if not torch.isfinite(b_kn).all():
        raise ValueError("reduced_bias has non-finite entries")
    n_k = np.asarray(list(n_per_state), dtype=np.int64)
    if n_k.shape != (b_kn.shape[0],) or (n_k < 0).any() or n_k.sum() != n:
        raise ValueError(f"n_per_state must be {b_kn.shape[0]} non-negative counts summing to {n}, got {list(n_k)}")
    a, b = resolve_basins(basin_a, basin_b)
    ma = a.mask(s, names, periodic, others=[b])
    mb = b.mask(s, names, periodic, others=[a])
    for basin, m in ((a, ma), (b, mb)):
        if not m.any():
            raise ValueError(f"no sample visits basin {basin.name!r} ({basin.text!r})")
    u_kn = b_kn.numpy()
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mbar = pymbar.MBAR(u_kn, n_k)
        big = 1e8  # "+inf outside the basin": exp(-1e8) is exactly 0 in double precision
        u_ln = np.stack([np.zeros(n), np.where(ma.numpy(), 0.0, big), np.where(mb.numpy(), 0.0, big)])
        res = mbar.compute_perturbed_free_energies(u_ln, compute_uncertainty=True)
        # log-weights of each sample for the unbiased state: -log sum_k N_k exp(f_k - b_k(x_n))
        f_k = mbar.f_k
        log_denom = torch.logsumexp(torch.as_tensor(np.log(np.maximum(n_k, 1e-300))[:, None] + f_k[:, None] - u_kn), 0)
    lw = -log_denom
    kT = float(kT)
    return {"delta_f": kT * float(res["Delta_f"][1, 2]), "stderr": kT * float(res["dDelta_f"][1, 2]),
            "n_a": int(ma.sum()), "n_b": int(mb.sum()), "f_k": [float(v) for v in f_k],
            "log_weights": lw, "ess": float(smc.ess(lw)), "basin_a": a.text or a.name,
            "basin_b": b.text or b.name, "kT": kT}
