r"""Rewards: black-box functions of token batches ``x (B, L) long -> (B,) float64``, higher is better.

Every reward is a :class:`Reward`: calling it validates the tokens, checks the output (shape
``(B,)``, no NaN) and counts batched calls (``calls``) and sequences scored (``evaluations``),
so decoders can report reward cost beside model cost. Rewards compose: ``2.0 * a + b - c``
is a :class:`WeightedSum`; :class:`Constrained` penalises leaving an interval of another reward;
:func:`as_reward` wraps any plain callable.

Rewards here:

* :class:`PWMScore` — position weight matrix scan with real JASPAR matrices (``pyjaspar`` ships
  the databases offline): :math:`\max_{i,\ \text{strand}} \sum_j \log_2 \frac{p_j(x_{i+j})}{b(x_{i+j})}`.
* :class:`HammingMotifCount` — windows within Hamming distance ``d`` of a motif.
* :class:`GCContent` — :math:`-\operatorname{mean}_w |\mathrm{GC}_w - \text{target}|` over sliding windows.
* :class:`UpstreamAUGCount` — occurrences of AUG (ATG) in a 5' UTR.
* :class:`RNAFoldEnergy`, :class:`StructureDistance` — ViennaRNA minimum free energy (negated,
  so stabler is higher) and minus the base-pair distance of the MFE structure to a target.
* :class:`CNNOracle` — a small CNN regressor trained on labelled sequences, then a black box.

:func:`parse_reward` builds a sum from a spec such as ``"gc:0.5,motif:MA0114,2*hamming:TGACTCA:1"``.
"""

from __future__ import annotations

import math
import warnings
from functools import lru_cache
from typing import Callable, Sequence

import torch
from torch import nn

from .alphabet import RNA, _check_x, get_alphabet

__all__ = ["Reward", "FunctionReward", "WeightedSum", "Constrained", "as_reward", "PWMScore", "jaspar_counts",
           "HammingMotifCount", "GCContent", "UpstreamAUGCount", "RNAFoldEnergy", "StructureDistance",
           "CNNOracle", "parse_reward"]


class Reward:
    """Base class: subclasses implement ``score(x) -> (B,)``; ``__call__`` checks and counts.

    Attributes:
        calls: batched calls so far.
        evaluations: sequences scored so far.
    """

    name = "reward"

    def __init__(self):
        self.calls = 0
        self.evaluations = 0

    def score(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = _check_x(x, 4, f"{self.name}: x")
        out = self.score(x)
        out = torch.as_tensor(out, dtype=torch.float64)
        if out.shape != (x.shape[0],):
            raise ValueError(f"reward {self.name!r} returned shape {tuple(out.shape)}, expected ({x.shape[0]},)")
        bad = torch.isnan(out) | (out == math.inf)  # -inf is allowed: a hard constraint (zero weight)
        if bad.any():
            raise FloatingPointError(f"reward {self.name!r} returned NaN or +inf for {int(bad.sum())} of "
                                     f"{x.shape[0]} sequences")
        self.calls += 1
        self.evaluations += x.shape[0]
        return out

    def reset_counts(self):
        """Zero ``calls`` and ``evaluations`` (and those of any components)."""
        self.calls = self.evaluations = 0
        for _, r in getattr(self, "terms", []):
            r.reset_counts()

    def __add__(self, other):
        return WeightedSum([(1.0, self), (1.0, as_reward(other))])

    def __sub__(self, other):
        return WeightedSum([(1.0, self), (-1.0, as_reward(other))])

    def __mul__(self, w):
        if not isinstance(w, (int, float)):
            return NotImplemented
        return WeightedSum([(float(w), self)])

    __rmul__ = __mul__

    def __neg__(self):
        return WeightedSum([(-1.0, self)])

    def __repr__(self):
        return f"{type(self).__name__}({self.name})"


class FunctionReward(Reward):
    """A plain callable ``fn(x (B, L) long) -> (B,)`` as a counted, checked :class:`Reward`."""

    def __init__(self, fn: Callable, name: str | None = None):
        super().__init__()
        if not callable(fn):
            raise TypeError(f"reward must be callable, got {type(fn).__name__}")
        self.fn, self.name = fn, name or getattr(fn, "__name__", "function")

    def score(self, x):
        return self.fn(x)


def as_reward(r) -> Reward:
    """``r`` if it is a :class:`Reward`, else a :class:`FunctionReward` around the callable."""
    return r if isinstance(r, Reward) else FunctionReward(r)


class WeightedSum(Reward):
    r""":math:`r(x) = \sum_k w_k\, r_k(x)`."""

    def __init__(self, terms: Sequence[tuple[float, Reward]]):
        super().__init__()
        flat = []
        for w, r in terms:
            if not math.isfinite(float(w)):
                raise ValueError(f"weights must be finite, got {w}")
            r = as_reward(r)
            if isinstance(r, WeightedSum):  # flatten so every leaf is called once per call
                flat += [(float(w) * v, q) for v, q in r.terms]
            else:
                flat.append((float(w), r))
        if not flat:
            raise ValueError("WeightedSum: need at least one term")
        self.terms = flat
        self.name = " + ".join(f"{w:g}*{r.name}" for w, r in flat)

    def score(self, x):
        return sum(w * r(x) for w, r in self.terms)


class Constrained(Reward):
    r"""A reward with a soft interval constraint on another:
    :math:`r(x) - \lambda\,[\max(0, \ell - c(x)) + \max(0, c(x) - h)]`.

    Args:
        reward: the objective.
        on: the constrained quantity :math:`c`.
        low, high: the interval :math:`[\ell, h]`.
        weight: :math:`\lambda` (large: nearly a hard constraint).
    """

    def __init__(self, reward, on, low: float = -math.inf, high: float = math.inf, weight: float = 10.0):
        super().__init__()
        if not low <= high:
            raise ValueError(f"need low <= high, got low={low}, high={high}")
        if not weight >= 0:
            raise ValueError(f"weight must be >= 0, got {weight}")
        self.reward, self.on, self.low, self.high, self.weight = as_reward(reward), as_reward(on), low, high, weight
        self.name = f"{self.reward.name} s.t. {self.on.name} in [{low}, {high}]"

    def score(self, x):
        c = self.on(x)
        viol = (self.low - c).clamp_min(0) + (c - self.high).clamp_min(0)
        return self.reward(x) - self.weight * viol


def _windows(x: torch.Tensor, w: int) -> torch.Tensor:
    if w > x.shape[1]:
        raise ValueError(f"window/motif length {w} exceeds the sequence length {x.shape[1]}")
    return x.unfold(1, w, 1)  # (B, L - w + 1, w)


# -- JASPAR position weight matrices ------------------------------------------------------------

@lru_cache(maxsize=1)
def _jaspar_db():
    try:
        from pyjaspar import jaspardb
    except ImportError as e:  # pragma: no cover
        raise ImportError('JASPAR motifs need pyjaspar: pip install "sciffusion[sequences]"') from e
    return jaspardb()


@lru_cache(maxsize=256)
def _jaspar_fetch(matrix_id: str):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = _jaspar_db().fetch_motif_by_id(matrix_id)
    if m is None:
        raise ValueError(f"unknown JASPAR matrix ID {matrix_id!r} (not in the offline JASPAR "
                         f"{_jaspar_db().release} database shipped by pyjaspar)")
    counts = torch.tensor([list(m.counts[c]) for c in "ACGT"], dtype=torch.float64)
    return counts, f"{m.matrix_id} {m.name}"


def jaspar_counts(matrix_id: str) -> tuple[torch.Tensor, str]:
    """``((4, w) counts in A, C, G, T order, "ID NAME")`` of a JASPAR matrix (``MA0114`` picks the
    latest version, ``MA0114.4`` a given one), from pyjaspar's offline database."""
    if not isinstance(matrix_id, str) or not matrix_id.strip():
        raise ValueError(f"matrix_id must be a JASPAR ID such as 'MA0114', got {matrix_id!r}")
    counts, label = _jaspar_fetch(matrix_id.strip())
    return counts.clone(), label


class PWMScore(Reward):
    r"""Best PWM match over positions and both strands (log-odds in bits).

    With counts :math:`n_{a j}` (column total :math:`N_j`), pseudocount :math:`c` and background
    :math:`b`: :math:`p_j(a) = (n_{aj} + c\,b_a)/(N_j + c)`, :math:`W_{ja} = \log_2(p_j(a)/b_a)`, and

    .. math:: r(x) = \max_{i}\ \max\Big(\sum_j W_{j, x_{i+j}},\ \sum_j W_{j, \bar x_{i+w-1-j}}\Big)

    (:math:`\bar a = 3 - a` the complement; the second term scans the reverse strand).
    ``reduce="count"`` instead counts windows (both strands) scoring at least ``threshold`` bits.

    Args:
        counts: ``(4, w)`` counts or frequencies (A, C, G, T), or a JASPAR ID string.
        background: ``(4,)`` base frequencies (default uniform).
        pseudocount: :math:`c` (total per column).
        both_strands: scan the reverse complement too.
        reduce: ``"max"`` or ``"count"``.
        threshold: bits, for ``reduce="count"``.
    """

    def __init__(self, counts, background=None, pseudocount: float = 1.0, both_strands: bool = True,
                 reduce: str = "max", threshold: float | None = None):
        super().__init__()
        if isinstance(counts, str):
            counts, self.name = jaspar_counts(counts)
        else:
            self.name = "pwm"
        counts = torch.as_tensor(counts, dtype=torch.float64)
        if counts.ndim != 2 or counts.shape[0] != 4 or counts.shape[1] < 1 or (counts < 0).any():
            raise ValueError(f"counts must be a non-negative (4, w) matrix, got shape {tuple(counts.shape)}")
        b = torch.full((4,), 0.25, dtype=torch.float64) if background is None else \
            torch.as_tensor(background, dtype=torch.float64)
        if b.shape != (4,) or (b <= 0).any():
            raise ValueError(f"background must be 4 positive frequencies, got {b.tolist()}")
        b = b / b.sum()
        if pseudocount < 0:
            raise ValueError(f"pseudocount must be >= 0, got {pseudocount}")
        if reduce not in ("max", "count"):
            raise ValueError(f"reduce must be 'max' or 'count', got {reduce!r}")
        if reduce == "count" and threshold is None:
            raise ValueError("reduce='count' needs a threshold (bits)")
        p = (counts + pseudocount * b[:, None]) / (counts.sum(0, keepdim=True) + pseudocount)
        if (p <= 0).any():
            raise ValueError("a PWM column has a zero probability: use pseudocount > 0")
        self.weights = torch.log2(p / b[:, None]).T.contiguous()  # (w, 4)
        self.both_strands, self.reduce, self.threshold = both_strands, reduce, threshold

    @property
    def length(self) -> int:
        return self.weights.shape[0]

    def scan(self, x: torch.Tensor) -> torch.Tensor:
        """Window scores ``(B, S, L - w + 1)`` with ``S = 2`` strands (forward, reverse) or 1."""
        x = _check_x(x)
        win = _windows(x, self.length)                       # (B, n, w)
        j = torch.arange(self.length)
        fwd = self.weights[j, win].sum(-1)
        if not self.both_strands:
            return fwd[:, None]
        rev = self.weights[j, (3 - win).flip(-1)].sum(-1)   # reverse complement of each window
        return torch.stack([fwd, rev], 1)

    def score(self, x):
        s = self.scan(x)
        if self.reduce == "max":
            return s.flatten(1).max(1).values
        return (s >= self.threshold).flatten(1).sum(1).double()


class HammingMotifCount(Reward):
    """Number of windows within Hamming distance ``max_mismatches`` of ``motif`` (a string or
    tokens), optionally on both strands."""

    def __init__(self, motif, max_mismatches: int = 1, both_strands: bool = False, alphabet="dna"):
        super().__init__()
        alph = get_alphabet(alphabet)
        self.motif = alph.encode(motif)[0] if isinstance(motif, str) else _check_x(
            torch.as_tensor(motif).reshape(1, -1))[0]
        if not isinstance(max_mismatches, int) or max_mismatches < 0:
            raise ValueError(f"max_mismatches must be an int >= 0, got {max_mismatches!r}")
        self.max_mismatches, self.both_strands = max_mismatches, both_strands
        self.name = f"hamming({alph.decode(self.motif[None])[0]},{max_mismatches})"

    def score(self, x):
        win = _windows(x, self.motif.numel())
        n = ((win != self.motif).sum(-1) <= self.max_mismatches).sum(1)
        if self.both_strands:
            n = n + ((win != (3 - self.motif).flip(0)).sum(-1) <= self.max_mismatches).sum(1)
        return n.double()


class GCContent(Reward):
    r""":math:`-\frac{1}{n_w}\sum_w |\mathrm{GC}_w(x) - \text{target}|` over sliding windows of
    ``window`` sites (default: the whole sequence); 0 is the best value."""

    def __init__(self, target: float = 0.5, window: int | None = None):
        super().__init__()
        if not 0.0 <= target <= 1.0:
            raise ValueError(f"GC target must lie in [0, 1], got {target}")
        if window is not None and (not isinstance(window, int) or window < 1):
            raise ValueError(f"window must be a positive int, got {window!r}")
        self.target, self.window = float(target), window
        self.name = f"gc({target:g}" + (f",w={window})" if window else ")")

    def score(self, x):
        gc = ((x == 1) | (x == 2)).double()
        w = self.window or x.shape[1]
        frac = _windows(gc, w).mean(-1)
        return -(frac - self.target).abs().mean(1)


class UpstreamAUGCount(Reward):
    """Occurrences of the start codon AUG (ATG in DNA tokens) anywhere in a 5' UTR sequence
    (uAUGs; weight it negatively to design against them)."""

    name = "uaug"

    def score(self, x):
        win = _windows(x, 3)
        return (win == torch.tensor([0, 3, 2])).all(-1).sum(1).double()


def _vienna():
    try:
        import RNA as vienna
    except ImportError as e:  # pragma: no cover - the extra is installed in CI
        raise ImportError('RNA folding rewards need ViennaRNA: pip install "sciffusion[sequences]"') from e
    return vienna


class RNAFoldEnergy(Reward):
    r""":math:`-\Delta G_{\mathrm{MFE}}(x)` in kcal/mol from ViennaRNA (``RNA.fold``): higher = stabler."""

    name = "mfe"

    def __init__(self):
        super().__init__()
        self._rna = _vienna()

    def score(self, x):
        return torch.tensor([-self._rna.fold(s)[1] for s in RNA.decode(x)], dtype=torch.float64)


def _check_dot_bracket(s: str) -> str:
    if not isinstance(s, str) or not s or set(s) - set("()."):
        raise ValueError(f"target structure must be a dot-bracket string of '(', ')', '.', got {s!r}")
    depth = 0
    for c in s:
        depth += (c == "(") - (c == ")")
        if depth < 0:
            break
    if depth != 0:
        raise ValueError(f"target structure {s!r} has unbalanced brackets")
    return s


class StructureDistance(Reward):
    r""":math:`-d_{\mathrm{bp}}(\mathrm{MFE\ structure}(x), \text{target})` (ViennaRNA base-pair distance);
    0 when the sequence folds into the target."""

    def __init__(self, target: str):
        super().__init__()
        self.target = _check_dot_bracket(target)
        self._rna = _vienna()
        self.name = f"structure({target})"

    def score(self, x):
        if x.shape[1] != len(self.target):
            raise ValueError(f"sequences have length {x.shape[1]} but the target structure has {len(self.target)}")
        return torch.tensor([-float(self._rna.bp_distance(self._rna.fold(s)[0], self.target))
                             for s in RNA.decode(x)], dtype=torch.float64)


class _CNN(nn.Module):
    def __init__(self, channels: int, kernel_size: int):
        super().__init__()
        self.conv1 = nn.Conv1d(4, channels, kernel_size, padding=kernel_size // 2)
        self.conv2 = nn.Conv1d(channels, channels, 5, padding=2)
        self.head = nn.Sequential(nn.Linear(2 * channels, channels), nn.ReLU(), nn.Linear(channels, 1))

    def forward(self, oh):  # (B, L, 4) float
        h = torch.relu(self.conv1(oh.transpose(1, 2)))
        h = torch.relu(self.conv2(h))
        return self.head(torch.cat([h.max(-1).values, h.mean(-1)], -1)).squeeze(-1)


class CNNOracle(Reward):
    """A small CNN regressor (two convolutions, max+mean pooling) trained on labelled sequences,
    then used as a black-box reward. Build with :meth:`fit`.

    Args:
        channels, kernel_size: network size (the first kernel spans a motif).
    """

    def __init__(self, channels: int = 32, kernel_size: int = 9):
        super().__init__()
        self.net = _CNN(channels, kernel_size).double()
        self.mean, self.std, self.name = 0.0, 1.0, "cnn"

    @classmethod
    def fit(cls, x: torch.Tensor, y: torch.Tensor, *, steps: int = 500, batch_size: int = 128, lr: float = 3e-3,
            weight_decay: float = 1e-4, seed: int = 0, channels: int = 32, kernel_size: int = 9) -> "CNNOracle":
        """Least-squares fit of standardised labels ``y (N,)`` on ``x (N, L)`` with Adam."""
        x = _check_x(x)
        y = torch.as_tensor(y, dtype=torch.float64)
        if y.shape != (x.shape[0],) or not torch.isfinite(y).all():
            raise ValueError(f"y must be ({x.shape[0]},) finite labels, got shape {tuple(y.shape)}")
        if not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be a positive int, got {steps!r}")
        g = torch.Generator().manual_seed(seed)
        with torch.random.fork_rng(devices=[]):  # seeded initial weights; the caller's global RNG is untouched
            torch.manual_seed(seed)
            self = cls(channels, kernel_size)
        self.mean, self.std = float(y.mean()), float(y.std().clamp_min(1e-12))
        yz = (y - self.mean) / self.std
        oh = torch.nn.functional.one_hot(x, 4).double()
        opt = torch.optim.Adam(self.net.parameters(), lr=lr, weight_decay=weight_decay)
        for _ in range(steps):
            idx = torch.randint(x.shape[0], (min(batch_size, x.shape[0]),), generator=g)
            loss = ((self.net(oh[idx]) - yz[idx]) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        self.net.eval()
        return self

    def score(self, x):
        with torch.no_grad():
            return self.net(torch.nn.functional.one_hot(x, 4).double()) * self.std + self.mean


def _term(name: str, args: list[str], alphabet) -> Reward:
    def num(a, what):
        try:
            return float(a)
        except ValueError:
            raise ValueError(f"reward {name}: {what} must be a number, got {a!r}") from None

    if name == "gc":
        return GCContent(num(args[0], "target") if args else 0.5, int(num(args[1], "window")) if len(args) > 1
                         else None)
    if name == "motif":
        if not args:
            raise ValueError("reward motif needs a JASPAR ID, e.g. motif:MA0114")
        return PWMScore(args[0])
    if name == "hamming":
        if not args:
            raise ValueError("reward hamming needs a motif, e.g. hamming:TGACTCA:1")
        return HammingMotifCount(args[0], int(num(args[1], "mismatches")) if len(args) > 1 else 1,
                                 alphabet=alphabet)
    if name == "uaug":
        return UpstreamAUGCount()
    if name == "mfe":
        return RNAFoldEnergy()
    if name == "structure":
        if not args:
            raise ValueError("reward structure needs a dot-bracket target, e.g. structure:((((....))))")
        return StructureDistance(args[0])
    raise ValueError(f"unknown reward {name!r}; expected one of: gc, motif, hamming, uaug, mfe, structure")


def parse_reward(spec: str, alphabet="dna") -> Reward:
    """A :class:`WeightedSum` from ``"[w*]name[:arg[:arg]],..."``, e.g. ``"gc:0.5,motif:MA0114"``,
    ``"2*hamming:TGACTCA:1,-1*uaug"``, ``"structure:((((....))))"``. Every term is built (and so
    validated: JASPAR IDs looked up, numbers parsed) before anything runs."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"reward spec must be a non-empty string such as 'gc:0.5,motif:MA0114', got {spec!r}")
    terms = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            raise ValueError(f"reward spec {spec!r} has an empty term")
        w = 1.0
        if "*" in part:
            ws, part = part.split("*", 1)
            try:
                w = float(ws)
            except ValueError:
                raise ValueError(f"reward weight must be a number, got {ws!r} in {spec!r}") from None
        name, *args = part.split(":")
        terms.append((w, _term(name.strip().lower(), args, alphabet)))
    return WeightedSum(terms)

