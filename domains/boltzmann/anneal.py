r"""Annealed importance sampling (AIS) of a Boltzmann density restricted to a basin cell, from a
Gaussian base, for normalising constants and free-energy differences between basins.

**Path** (Neal 2001, "Annealed importance sampling"). With the base
:math:`\pi_0 = \mathcal N(0, \sigma^2 I)` on the energy's event space (the Laplace approximation of
a basin when the energy is an :class:`~.internal.InternalCoordinateEnergy` whitened at that basin's
minimum) and the unnormalised target :math:`\gamma_1(x) = e^{-u(x)}\,\mathbf 1_C(x)` on a cell
:math:`C` (``valid``), the intermediate densities are

.. math:: \gamma_\beta(x) = \pi_0(x)^{1-\beta}\,\gamma_1(x)^{\beta}
          = \mathbf 1_C(x)\,\exp\big(-(1-\beta)\,b(x) - \beta\,u(x)\big),\qquad
          b(x) = -\log\pi_0(x) = \frac{\lVert x\rVert^2}{2\sigma^2} + \frac d2\log(2\pi\sigma^2),

for :math:`0 = \beta_0 < \beta_1 < \dots < \beta_T = 1`. Each particle is drawn from :math:`\pi_0`,
then for :math:`k = 1..T` it is reweighted and moved,

.. math:: \log w \mathrel{+}= (\beta_k - \beta_{k-1})\,\big(b(x) - u(x)\big),\qquad
          x \leftarrow K_{\beta_k}(x, \cdot),

with :math:`K_\beta` ``mala_steps`` MALA steps (:func:`~.refine.mala_step`) that leave
:math:`\gamma_\beta` invariant (none after the last reweighting). Then
:math:`\mathbb E[w] = Z_1/Z_0 = Z_1 = \int_C e^{-u}\,dx` **exactly**, whatever the schedule or the
moves' mixing (those only set the variance), and :math:`\sum_i w_i f(x_i)/\sum_i w_i \to \pi_1(f)`.
A particle drawn outside :math:`C` has weight zero from :math:`\beta_1` on and is never moved.

**Step sizes.** The kernel must not depend on the other particles for the particles to stay
independent (and the bootstrap over them valid), so the MALA step of every temperature comes
from a *pilot* run of ``pilot_particles`` particles that adapts :math:`h` towards the acceptance
0.574 (:math:`\log h \mathrel{+}= \bar\alpha - 0.574` after every step); the main run uses that
schedule frozen. The pilot's energy calls are counted.

**Free energies between basins.** With cells :math:`C_k` that partition the space and basin
:math:`A = \bigcup_{k\in A} C_k` (likewise :math:`B`), :math:`\Delta F_{A\to B} = -\log(\sum_{k\in B}Z_k /
\sum_{k\in A}Z_k)` in units of kT (:func:`basin_delta_f`). Each cell may use its own chart
:math:`q = q_k + M_k z`: then ``log_offset`` :math:`= \log|\det M_k|` makes the :math:`Z_k` comparable
(:attr:`~.internal.InternalCoordinateEnergy.log_abs_det_transform`). Error bars: a bootstrap over
each run's independent particles.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from tqdm.auto import tqdm

from sciffusion import smc

from .refine import TARGET_ACCEPTANCE, mala_step
from .sampler import energy_and_forces
from .wtasbs import _valid_mask

__all__ = ["AISResult", "CellFreeEnergy", "alanine_cell_options", "annealed_importance_sampling", "basin_delta_f",
           "cell_free_energy", "distinct_minima", "nearest_centre_cells",
           "power_schedule"]


@dataclass
class AISResult:
    """What :func:`annealed_importance_sampling` returns.

    Attributes:
        x: ``(N, *event_shape)`` final particles (float64).
        log_weights: ``(N,)`` AIS log-weights for :math:`\\gamma_1` plus ``log_offset`` (``-inf``
            for a particle drawn outside the cell).
        log_normalizer: :math:`\\log\\hat Z = \\log\\frac1N\\sum_i w_i` (``log_offset`` included).
        stderr: delta-method standard error of :math:`\\log\\hat Z`, :math:`\\mathrm{sd}(w)/(\\sqrt N\\,\\bar w)`.
        ess: effective sample size of the weights (:func:`sciffusion.smc.ess`).
        energies: ``(N,)`` :math:`u` at the final particles (``nan`` outside the cell).
        betas: ``(T + 1,)`` the schedule.
        step_sizes: ``(T,)`` the MALA step of each temperature (from the pilot).
        acceptance: ``(T,)`` the main run's acceptance at each temperature (0 at the last: no moves
            after the last reweighting).
        inside: fraction of base draws inside the cell.
        energy_calls: energy+force calls (pilot included).
    """

    x: torch.Tensor
    log_weights: torch.Tensor
    log_normalizer: float
    stderr: float
    ess: float
    energies: torch.Tensor
    betas: torch.Tensor
    step_sizes: torch.Tensor
    acceptance: torch.Tensor
    inside: float
    energy_calls: int


def power_schedule(num_temperatures: int, power: float = 4.0) -> torch.Tensor:
    r""":math:`\beta_k = (k/T)^p`, :math:`k = 0..T`: dense near the base, where :math:`\gamma_\beta`
    changes fastest in :math:`\log` once :math:`b - u` is far from constant."""
    if not isinstance(num_temperatures, int) or isinstance(num_temperatures, bool) or num_temperatures < 1:
        raise ValueError(f"num_temperatures must be a positive int, got {num_temperatures!r}")
    if not power > 0:
        raise ValueError(f"power must be > 0, got {power!r}")
    return torch.linspace(0.0, 1.0, num_temperatures + 1, dtype=torch.float64) ** float(power)


def _log_mean_exp(lw: torch.Tensor) -> tuple[float, float]:
    """``log mean exp(lw)`` and its delta-method standard error."""
    n = lw.shape[0]
    m = torch.logsumexp(lw, 0) - math.log(n)
    if not torch.isfinite(m):
        return float(m), math.nan
    w = torch.exp(lw - m)  # mean 1
    return float(m), float(w.std(unbiased=True) / math.sqrt(n)) if n > 1 else math.nan


def _run(energy, x, betas, steps, mala_steps, sigma, valid, generator, adapt, progress, desc):
    """One AIS pass over ``x`` (drawn from the base); returns weights, particles, energies, steps, acceptance, calls."""
    n, d = x.shape[0], x[0].numel()
    log_w = torch.zeros(n, dtype=torch.float64)
    ok = _valid_mask(valid, x)
    log_w[~ok] = -math.inf
    xs = x[ok].clone()
    calls = int(ok.sum())
    T = betas.shape[0] - 1
    acc = torch.zeros(T, dtype=torch.float64)
    steps = steps.clone()
    u = torch.full((n,), math.nan, dtype=torch.float64)
    if xs.shape[0] == 0:
        return log_w, x, u, steps, acc, 0
    const = 0.5 * d * math.log(2 * math.pi * sigma ** 2)

    def base(z):
        return z.flatten(1).pow(2).sum(1) / (2 * sigma ** 2) + const

    us, fus = energy_and_forces(energy, xs)
    lw = torch.zeros(xs.shape[0], dtype=torch.float64)
    h = float(steps[0])
    for k in tqdm(range(1, T + 1), desc=desc, disable=not progress):
        b0, b1 = float(betas[k - 1]), float(betas[k])
        lw += (b1 - b0) * (base(xs) - us)
        if k == T or mala_steps == 0:
            continue
        if adapt:
            steps[k - 1] = h
        else:
            h = float(steps[k - 1])
        state = {"pot": b1 * us + (1 - b1) * base(xs), "force": b1 * fus - (1 - b1) * xs / sigma ** 2,
                 "u": us, "fu": fus}

        def evaluate(y, beta=b1):
            uy, fy = energy_and_forces(energy, y)
            return {"pot": beta * uy + (1 - beta) * base(y), "force": beta * fy - (1 - beta) * y / sigma ** 2,
                    "u": uy, "fu": fy}

        rate = 0.0
        for _ in range(mala_steps):
            accept, c = mala_step(xs, state, h, evaluate, generator, valid)
            calls += c
            rate += float(accept.double().mean()) / mala_steps
            if adapt:
                h *= math.exp(float(accept.double().mean()) - TARGET_ACCEPTANCE)
        us, fus = state["u"], state["fu"]
        acc[k - 1] = rate
    log_w[ok] = lw
    out = x.clone()
    out[ok] = xs
    u[ok] = us
    return log_w, out, u, steps, acc, calls


def annealed_importance_sampling(energy: Any, num_particles: int, *, generator: torch.Generator,
                                 betas: torch.Tensor | None = None, num_temperatures: int = 200,
                                 mala_steps: int = 1, base_std: float = 1.0, valid: Callable | None = None,
                                 step_sizes: torch.Tensor | None = None, pilot_particles: int = 64,
                                 log_offset: float = 0.0, progress: bool = False) -> AISResult:
    r"""AIS from :math:`\mathcal N(0, \sigma^2 I)` to :math:`e^{-u}\mathbf 1_C` (module docstring).

    Args:
        energy: the target's reduced energy :math:`u`: an :class:`~.energies.Energy` (``energy_and_forces``)
            or a differentiable callable ``x -> (N,)``; its ``event_shape`` sets the particles' shape.
        num_particles: independent particles (>= 1).
        generator: all randomness.
        betas: ``(T + 1,)`` increasing from 0 to 1 (default :func:`power_schedule` of ``num_temperatures``).
        num_temperatures: :math:`T` when ``betas`` is not given.
        mala_steps: MALA steps per temperature (>= 0; 0 is plain importance sampling when ``T = 1``).
        base_std: :math:`\sigma` of the base.
        valid: optional ``x -> (N,) bool``: the cell :math:`C` (and the chart's support).
        step_sizes: ``(T,)`` MALA steps per temperature; ``None`` runs the pilot (module docstring).
        pilot_particles: particles of the pilot run.
        log_offset: a constant added to every log-weight (e.g. :math:`\log|\det M|` of the chart).
        progress: tqdm bars.

    Returns:
        :class:`AISResult`.

    Raises:
        ValueError: bad arguments, or no base draw inside the cell.
        FloatingPointError: a non-finite energy or force (frame named).
    """
    if not isinstance(num_particles, int) or isinstance(num_particles, bool) or num_particles < 1:
        raise ValueError(f"num_particles must be a positive int, got {num_particles!r}")
    if not isinstance(generator, torch.Generator):
        raise TypeError("generator must be a torch.Generator (randomness is explicit)")
    if not isinstance(mala_steps, int) or isinstance(mala_steps, bool) or mala_steps < 0:
        raise ValueError(f"mala_steps must be an int >= 0, got {mala_steps!r}")
    if not (isinstance(base_std, (int, float)) and math.isfinite(base_std) and base_std > 0):
        raise ValueError(f"base_std must be a finite number > 0, got {base_std!r}")
    if not math.isfinite(log_offset):
        raise ValueError(f"log_offset must be finite, got {log_offset!r}")
    shape = tuple(getattr(energy, "event_shape", ()) or ())
    if not shape:
        raise ValueError("energy must have an event_shape (the shape of one configuration)")
    betas = power_schedule(num_temperatures) if betas is None else torch.as_tensor(betas, dtype=torch.float64)
    if betas.ndim != 1 or betas.shape[0] < 2 or float(betas[0]) != 0.0 or float(betas[-1]) != 1.0 \
            or not bool((betas[1:] > betas[:-1]).all()):
        raise ValueError("betas must be a 1-D increasing schedule from 0 to 1 with at least two entries")
    T = betas.shape[0] - 1
    calls = 0
    d = math.prod(shape)
    if step_sizes is None:  # pilot: adapt h per temperature, then freeze it for the main run
        if not isinstance(pilot_particles, int) or pilot_particles < 2:
            raise ValueError(f"pilot_particles must be an int >= 2, got {pilot_particles!r}")
        x = base_std * torch.randn((pilot_particles, *shape), generator=generator, dtype=torch.float64)
        h0 = torch.full((T,), base_std ** 2 * d ** (-1.0 / 3.0), dtype=torch.float64)
        _, _, _, step_sizes, _, c = _run(energy, x, betas, h0, mala_steps, base_std, valid, generator, True, progress,
                                         "AIS pilot")
        calls += c
    step_sizes = torch.as_tensor(step_sizes, dtype=torch.float64).reshape(-1)
    if step_sizes.shape[0] != T or not bool((step_sizes > 0).all()) or not bool(torch.isfinite(step_sizes).all()):
        raise ValueError(f"step_sizes must be {T} finite numbers > 0 (one per temperature)")
    x = base_std * torch.randn((num_particles, *shape), generator=generator, dtype=torch.float64)
    log_w, x, u, _, acc, c = _run(energy, x, betas, step_sizes, mala_steps, base_std, valid, generator, False,
                                  progress, "AIS")
    inside = float(torch.isfinite(log_w).double().mean())  # only draws outside the cell have weight zero
    if inside == 0:
        raise ValueError("valid: no base draw lies inside the cell (is the chart centred on it, base_std large "
                         "enough?)")
    calls += c
    log_w = log_w + float(log_offset)
    log_z, se = _log_mean_exp(log_w)
    ess = float(smc.ess(log_w))
    return AISResult(x=x, log_weights=log_w, log_normalizer=log_z, stderr=se, ess=ess, energies=u, betas=betas,
                     step_sizes=step_sizes, acceptance=acc, inside=inside, energy_calls=calls)


def basin_delta_f(runs_a: Sequence[AISResult], runs_b: Sequence[AISResult], *, n_bootstrap: int = 200,
                  generator: torch.Generator | None = None) -> dict:
    r""":math:`\Delta F_{A\to B} = -\log\big(\sum_{k\in B}\hat Z_k / \sum_{k\in A}\hat Z_k\big)` (kT) from the AIS
    runs of the cells that make up each basin, with a bootstrap standard error (each run's
    particles resampled independently).

    Returns:
        dict with ``delta_f``, ``stderr``, ``log_z_a``, ``log_z_b`` and ``p_b`` (:math:`Z_B/(Z_A + Z_B)`).
    """
    if not runs_a or not runs_b:
        raise ValueError("runs_a and runs_b must each hold at least one AISResult (a cell of the basin)")
    for r in (*runs_a, *runs_b):
        if not isinstance(r, AISResult):
            raise TypeError(f"runs must be AISResult, got {type(r).__name__}")
    if not isinstance(n_bootstrap, int) or n_bootstrap < 2:
        raise ValueError(f"n_bootstrap must be an int >= 2, got {n_bootstrap!r}")

    def log_z(runs):
        return float(torch.logsumexp(torch.tensor([r.log_normalizer for r in runs], dtype=torch.float64), 0))

    za, zb = log_z(runs_a), log_z(runs_b)
    if not (math.isfinite(za) and math.isfinite(zb)):
        raise ValueError("a basin has zero estimated mass (every particle of its cells has weight zero)")
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    boot = torch.empty(n_bootstrap, dtype=torch.float64)
    for i in range(n_bootstrap):
        def resampled(runs):
            lz = []
            for r in runs:
                n = r.log_weights.shape[0]
                idx = torch.randint(n, (n,), generator=g)
                lz.append(torch.logsumexp(r.log_weights[idx], 0) - math.log(n))
            return torch.logsumexp(torch.stack(lz), 0)
        boot[i] = resampled(runs_a) - resampled(runs_b)
    boot = boot[torch.isfinite(boot)]
    return {"delta_f": za - zb, "stderr": float(boot.std(unbiased=True)) if boot.numel() > 1 else math.nan,
            "log_z_a": za, "log_z_b": zb, "p_b": 1.0 / (1.0 + math.exp(za - zb))}


def _torus_distance(a: torch.Tensor, b: torch.Tensor, periodic: Sequence[bool]) -> torch.Tensor:
    """Euclidean distance ``(N, M)`` between CV rows, periodic columns wrapped to (-pi, pi]."""
    d = a[:, None, :] - b[None, :, :]
    per = torch.tensor(list(periodic), dtype=torch.bool)
    d[..., per] = torch.remainder(d[..., per] + math.pi, 2 * math.pi) - math.pi
    return d.norm(dim=-1)


def distinct_minima(minimise: Callable, energy: Callable, cvs: Callable, x: torch.Tensor, *, bins: int = 12,
                    tol: float = 0.3, periodic: Sequence[bool] | None = None, keep: Callable | None = None) -> dict:
    r"""Local minima reached from samples, one start per occupied CV bin, merged when closer than ``tol``.

    The samples (e.g. those of a biased sampler, whose bias pushed them into new basins) are
    binned on a ``bins``-per-CV grid over their range (:math:`(-\pi, \pi]` for periodic CVs); the
    lowest-energy sample of each occupied bin is minimised, and minima whose CVs lie within
    ``tol`` of a lower one (periodic distance) are merged into it.

    Args:
        minimise: ``x (n, 3) -> x_min (n, 3)`` a local minimiser (e.g.
            :meth:`~.internal.InternalCoordinateEnergy.minimise` with the energy bound).
        energy: ``x (B, n, 3) -> (B,)`` reduced energies.
        cvs: ``x (B, n, 3) -> (B, k)`` the CVs.
        x: ``(N, n, 3)`` samples.
        bins: bins per CV.
        tol: merge distance in CV units.
        periodic: per-CV periodicity (default all periodic: torsions).
        keep: optional ``x (B, n, 3) -> (B,) bool`` minima to keep (e.g. trans amides, correct chirality).

    Returns:
        dict with ``x`` ``(M, n, 3)``, ``energies`` ``(M,)`` and ``cv`` ``(M, k)``, lowest energy first,
        and ``starts`` (minimisations run).
    """
    x = torch.as_tensor(x, dtype=torch.float64)
    if x.ndim != 3 or x.shape[0] < 1:
        raise ValueError(f"x must be (N, n_atoms, 3) samples, got {tuple(x.shape)}")
    if not isinstance(bins, int) or bins < 1:
        raise ValueError(f"bins must be a positive int, got {bins!r}")
    if not tol > 0:
        raise ValueError(f"tol must be > 0, got {tol!r}")
    with torch.no_grad():
        c = torch.as_tensor(cvs(x), dtype=torch.float64)
        u = torch.as_tensor(energy(x), dtype=torch.float64)
    periodic = [True] * c.shape[1] if periodic is None else list(periodic)
    if len(periodic) != c.shape[1]:
        raise ValueError(f"periodic must have one entry per CV ({c.shape[1]}), got {len(periodic)}")
    lo = torch.tensor([-math.pi if p else float(c[:, j].min()) for j, p in enumerate(periodic)], dtype=torch.float64)
    hi = torch.tensor([math.pi if p else float(c[:, j].max()) + 1e-9 for j, p in enumerate(periodic)],
                      dtype=torch.float64)
    cw = torch.where(torch.tensor(periodic), torch.remainder(c + math.pi, 2 * math.pi) - math.pi, c)
    idx = ((cw - lo) / (hi - lo) * bins).long().clamp(0, bins - 1)
    key = (idx * torch.tensor([bins ** j for j in range(c.shape[1])])).sum(1)
    starts = []
    for k in key.unique():
        members = (key == k).nonzero()[:, 0]
        starts.append(int(members[u[members].argmin()]))
    found = [torch.as_tensor(minimise(x[i]), dtype=torch.float64) for i in starts]
    xm = torch.stack(found)
    with torch.no_grad():
        um = torch.as_tensor(energy(xm), dtype=torch.float64)
        cm = torch.as_tensor(cvs(xm), dtype=torch.float64)
        ok = torch.ones(len(found), dtype=torch.bool) if keep is None else torch.as_tensor(keep(xm)).bool()
    order = [int(i) for i in um.argsort() if ok[i] and torch.isfinite(um[i])]
    chosen: list[int] = []
    for i in order:
        if not chosen or float(_torus_distance(cm[i:i + 1], cm[chosen], periodic).min()) >= tol:
            chosen.append(i)
    if not chosen:
        raise ValueError("distinct_minima: no minimum passed keep")
    sel = torch.tensor(chosen)
    return {"x": xm[sel], "energies": um[sel], "cv": cm[sel], "starts": len(starts)}


def nearest_centre_cells(cv: torch.Tensor, centres: torch.Tensor, centre_basin: Sequence[int],
                         basin: torch.Tensor, periodic: Sequence[bool] | None = None) -> torch.Tensor:
    r"""Cell index ``(N,)`` of each CV row: the nearest centre *among those of the row's own basin*
    (periodic distance), so that the cells partition every basin exactly; ``-1`` where the row's
    basin has no centre.

    Args:
        cv: ``(N, k)`` CV values; centres: ``(M, k)``; centre_basin: ``(M,)`` basin label of each
        centre; basin: ``(N,)`` basin label of each row; periodic: per-CV periodicity (default all).
    """
    cv, centres = torch.as_tensor(cv, dtype=torch.float64), torch.as_tensor(centres, dtype=torch.float64)
    periodic = [True] * cv.shape[1] if periodic is None else list(periodic)
    lab = torch.as_tensor(list(centre_basin))
    if lab.shape != (centres.shape[0],):
        raise ValueError(f"centre_basin must give one basin label per centre ({centres.shape[0]}), got {tuple(lab.shape)}")
    d = _torus_distance(cv, centres, periodic)
    d = torch.where(lab[None, :] == torch.as_tensor(basin).reshape(-1, 1), d, torch.full_like(d, math.inf))
    best = d.argmin(1)
    return torch.where(torch.isfinite(d.min(1).values), best, torch.full_like(best, -1))


@dataclass
class CellFreeEnergy:
    """What :func:`cell_free_energy` returns.

    Attributes:
        delta_f: :math:`\\Delta F_{A\\to B}` in kT.
        stderr: its bootstrap standard error (:func:`basin_delta_f`).
        p_b: :math:`Z_B / (Z_A + Z_B)`.
        minima: :func:`distinct_minima`'s dict plus ``basin`` ``(M,)`` (1 in B, 0 in A).
        runs: one :class:`AISResult` per minimum's cell, in the order of ``minima``.
        laplace_delta_f: the same :math:`\\Delta F` from the cells' Laplace approximations alone.
        energy_calls: Cartesian energy(+force) calls by stage: ``minimise``, ``charts`` (Hessians and
            the energy at each minimum), ``ais`` (pilots included).
    """

    delta_f: float
    stderr: float
    p_b: float
    minima: dict
    runs: list
    laplace_delta_f: float
    energy_calls: dict


def cell_free_energy(energy: Any, zmatrix: Any, x: torch.Tensor, cvs: Callable, basin: Callable, *,
                     generator: torch.Generator, keep: Callable | None = None, restrain: dict | None = None,
                     bins: int = 12, tol: float = 0.3, minima: dict | None = None, num_particles: int = 500,
                     num_temperatures: int = 200, n_bootstrap: int = 200, progress: bool = False) -> CellFreeEnergy:
    r""":math:`\Delta F_{A\to B}` from the basins that samples reach, each cell's mass by AIS.

    1. :func:`distinct_minima`: the lowest sample of every occupied CV bin is minimised
       (:meth:`~.internal.InternalCoordinateEnergy.minimise`), duplicates merged, ``keep`` applied.
    2. Each minimum :math:`m_k` gets a chart :math:`q = q_k + M_k z` whitened by the Hessian there
       (:class:`~.internal.InternalCoordinateEnergy`, no torsion confinement) and the cell
       :math:`C_k` = the configurations whose CVs are nearer to :math:`m_k` than to any other minimum
       *of the same basin* (:func:`nearest_centre_cells`: the cells partition A and B exactly), with
       every torsion on one branch :math:`|q_t - q_{k,t}| < \pi` (each configuration counted once),
       the ``restrain`` torsions within their half-widths of :math:`m_k`'s value, and ``keep``.
    3. :math:`Z_k = \int_{C_k} e^{-u}` by :func:`annealed_importance_sampling` from the Laplace
       approximation :math:`\mathcal N(0, I)` in :math:`z` (``log_offset`` :math:`= \log|\det M_k|`),
       then :math:`\Delta F_{A\to B} = -\log(\sum_{k\in B} Z_k / \sum_{k\in A} Z_k)` (:func:`basin_delta_f`).

    The estimate is exact in expectation for the cells' union, which covers the whole
    configuration space allowed by ``keep`` and ``restrain``; a basin's mass that no minimisation
    reaches is still counted, in the cell of the nearest minimum of its basin, but sampled through
    that cell's chart (poorly, when the two are far apart: watch each run's ``ess``). The samples only
    need to *reach* every basin, not to be distributed by Boltzmann.

    ``restrain`` is for symmetric rotors, whose rotamers are copies of each other: a methyl
    restricted to :math:`\pm\pi/3` around its minimum is one of three equal copies, a factor common
    to every cell that cancels in :math:`\Delta F`.

    Args:
        energy: the Cartesian :class:`~.energies.Energy` (``event_shape = (n_atoms, 3)``, e.g. an
            :class:`~.energies.OpenMMEnergy`).
        zmatrix: :class:`~.internal.ZMatrix` of the molecule.
        x: ``(N, n_atoms, 3)`` samples (e.g. a biased sampler's).
        cvs: ``x -> (B, k)`` (or a single CV's ``(B,)``) the CVs the basins are defined on
            (``.periodic`` read when present, else all periodic).
        basin: ``cv (B, k) -> (B,)`` bool or 0/1: whether each CV row lies in B (A is the rest).
        generator: all randomness.
        keep: optional ``x (B, n, 3) -> (B,) bool``: configurations counted at all (e.g. the right
            handedness, trans amides); minima that fail it are dropped.
        restrain: optional ``{torsion index: half-width in rad}`` (:meth:`~.internal.ZMatrix.torsion_index`).
        bins, tol: :func:`distinct_minima`'s binning and merge distance.
        minima: a previous result's ``minima`` (to repeat the AIS with another generator without
            minimising again; ``x`` is then not used).
        num_particles, num_temperatures: AIS particles per cell and temperatures.
        n_bootstrap: bootstrap resamples of the error bar.
        progress: tqdm bars.

    Raises:
        ValueError: bad arguments, or every minimum in one basin (the estimate needs a cell in each;
            the message says which basin the samples missed).
    """
    from .internal import InternalCoordinateEnergy, ZMatrix

    if not isinstance(zmatrix, ZMatrix):
        raise TypeError(f"zmatrix must be a ZMatrix, got {type(zmatrix).__name__}")
    if tuple(getattr(energy, "event_shape", ())) != (zmatrix.n_atoms, 3):
        raise ValueError(f"energy.event_shape must be ({zmatrix.n_atoms}, 3) (Cartesian), got "
                         f"{tuple(getattr(energy, 'event_shape', ()))}")
    if not isinstance(generator, torch.Generator):
        raise TypeError("generator must be a torch.Generator (randomness is explicit)")
    restrain = dict(restrain or {})
    _, _, st = zmatrix.slices()
    for i, w in restrain.items():
        if not (isinstance(i, int) and st.start <= i < st.stop) or not 0 < w <= math.pi:
            raise ValueError(f"restrain: need {{torsion index in [{st.start}, {st.stop}): half-width in (0, pi]}}, "
                             f"got {i!r}: {w!r}")
    per = getattr(cvs, "periodic", None)
    periodic = [per] if isinstance(per, bool) else (list(per) if per is not None else None)
    cv_fn = cvs

    def cvs(xb):  # (B, k) also for a single CV's (B,)
        c = torch.as_tensor(cv_fn(xb), dtype=torch.float64)
        return c[:, None] if c.ndim == 1 else c

    def calls():
        return int(getattr(energy, "num_calls", 0))

    def in_b(c):
        return torch.as_tensor(basin(c)).reshape(-1).long()

    c0 = calls()
    if minima is None:
        mins = distinct_minima(lambda xi: InternalCoordinateEnergy.minimise(energy, zmatrix, xi), energy, cvs, x,
                               bins=bins, tol=tol, periodic=periodic, keep=keep)
    else:
        if not (isinstance(minima, dict) and {"x", "cv", "energies"} <= set(minima)):
            raise ValueError("minima must be a previous cell_free_energy result's .minima (keys x, cv, energies)")
        mins = {k: v for k, v in minima.items() if k != "basin"}
    labels = in_b(mins["cv"])
    mins["basin"] = labels
    if labels.unique().numel() < 2:
        missed, hit = ("B", "A") if int(labels[0]) == 0 else ("A", "B")
        raise ValueError(f"x: every minimum reached from the samples lies in basin {hit} ({mins['starts']} "
                         f"minimisations); Delta F(A->B) needs a cell in {missed} too: give samples that reach it")
    c1 = calls()
    charts = [InternalCoordinateEnergy(energy, zmatrix, mins["x"][k], whiten=True, torsion_prior_std=None)
              for k in range(mins["x"].shape[0])]
    d = zmatrix.n_dof
    laplace = torch.tensor([-float(ice(torch.zeros(1, d))[0]) + 0.5 * d * math.log(2 * math.pi)
                            + ice.log_abs_det_transform for ice in charts], dtype=torch.float64)
    c2 = calls()
    rest = list(restrain)
    half = torch.tensor([restrain[i] for i in rest], dtype=torch.float64)

    def valid_for(k):
        ice = charts[k]

        def valid(z):
            q = ice.to_internal_q(z)
            ok = ice.in_domain(z) & ((q[:, st] - ice.q0[st]).abs() < math.pi).all(1)
            if rest:
                ok &= ((q[:, rest] - ice.q0[rest]).abs() < half).all(1)
            xc = ice.to_cartesian(z)
            if keep is not None:
                ok &= torch.as_tensor(keep(xc)).bool()
            c = torch.as_tensor(cvs(xc), dtype=torch.float64)
            return ok & (nearest_centre_cells(c, mins["cv"], labels.tolist(), in_b(c), periodic) == k)
        return valid

    runs = [annealed_importance_sampling(ice, num_particles, generator=generator, num_temperatures=num_temperatures,
                                         valid=valid_for(k), log_offset=ice.log_abs_det_transform, progress=progress)
            for k, ice in enumerate(charts)]
    c3 = calls()
    a, b = labels == 0, labels == 1
    est = basin_delta_f([r for r, lb in zip(runs, labels) if lb == 0], [r for r, lb in zip(runs, labels) if lb == 1],
                        n_bootstrap=n_bootstrap, generator=generator)
    lap = float(torch.logsumexp(laplace[a], 0) - torch.logsumexp(laplace[b], 0))
    return CellFreeEnergy(delta_f=est["delta_f"], stderr=est["stderr"], p_b=est["p_b"], minima=mins, runs=runs,
                          laplace_delta_f=lap, energy_calls={"minimise": c1 - c0, "charts": c2 - c1, "ais": c3 - c2})


def alanine_cell_options(zmatrix: Any, energy: Any, reference: Any) -> dict:
    r"""``keep`` and ``restrain`` of :func:`cell_free_energy` for alanine dipeptide (ACE-ALA-NME,
    openmmtools atom order): the reference's CA handedness (improper N-CA-C-CB,
    :class:`~.sampler.ChiralityRestraint`), both amides trans (:math:`|\omega| > \pi/2`, and each cell
    within :math:`\pi/2` of its minimum's :math:`\omega`), and each of the three methyls to one rotamer
    (:math:`\pm\pi/3`)."""
    from .sampler import ChiralityRestraint

    chir = ChiralityRestraint.from_reference(energy, (8, 6, 14, 10), torch.as_tensor(reference, dtype=torch.float64))
    omegas = [zmatrix.torsion_index(1, 4, 6, 8), zmatrix.torsion_index(18, 16, 14, 8)]
    rotors = [zmatrix.torsion_index(11, 10, 8, 6), zmatrix.torsion_index(0, 1, 4, 6),
              zmatrix.torsion_index(19, 18, 16, 14)]
    if None in omegas + rotors:
        raise ValueError("zmatrix: not alanine dipeptide's bond graph (an omega or methyl torsion is missing)")

    def keep(x):
        q = zmatrix.to_internal(x)
        w = torch.remainder(q[:, omegas] + math.pi, 2 * math.pi) - math.pi
        return chir.mask(x) & (w.abs() > math.pi / 2).all(1)

    return {"keep": keep, "restrain": {**{i: math.pi / 2 for i in omegas}, **{i: math.pi / 3 for i in rotors}}}
