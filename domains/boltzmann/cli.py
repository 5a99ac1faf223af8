r"""``sciffusion molecules ...`` and the boltzmann section of ``sciffusion tour``.

* ``sciffusion molecules sample --system double-well|mueller-brown|alanine-dipeptide-vacuum|
  alanine-dipeptide-implicit --cv phi,psi --out DIR``: well-tempered rounds of the adjoint sampler
  (:func:`~.wtasbs.run_wtasbs`; ``--rounds 0`` for the unbiased sampler), checkpointed every
  round into ``DIR/checkpoint.pt`` and resumed when run again with the same settings; writes
  ``DIR/samples.pt`` (samples, CVs, log-weights), ``DIR/run.json`` and, for molecules, a weighted
  PDB/DCD trajectory.
* ``sciffusion molecules free-energy --samples DIR --basin "B: 0 < phi < 2" [--basin "A: ..."]``:
  :math:`\Delta F(A\to B)` with bootstrap error bars from the weighted samples (one basin given: A
  is the rest); ``--estimator cells`` instead minimises the samples and integrates one cell per
  minimum by annealed importance sampling (:func:`~.anneal.cell_free_energy`; molecules).
* ``sciffusion molecules metad --system ... --cv ... --out DIR``: the OpenMM well-tempered
  metadynamics reference (:func:`~.reference.run_metadynamics`).

Every argument is validated before any work is done and before anything is written.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

SYSTEMS = ("double-well", "mueller-brown", "alanine-dipeptide-vacuum", "alanine-dipeptide-implicit")
_CVS = {"double-well": ("x1", "x2"), "mueller-brown": ("x", "y"),
        "alanine-dipeptide-vacuum": ("phi", "psi"), "alanine-dipeptide-implicit": ("phi", "psi")}


class CoordinateCV:
    """CVs that are coordinates of a 2-D potential: ``x -> x[:, index]`` ``(B, k)`` (not periodic)."""

    def __init__(self, indices, names):
        self.indices, self.names = list(indices), list(names)
        self.periodic = [False] * len(self.indices)

    def __call__(self, x):
        return x[:, self.indices]

    def __repr__(self):
        return f"CoordinateCV({self.names})"


@dataclass
class SystemSpec:
    """A ready-made system: its energy, CVs, bias grid and sampler settings (stated choices)."""

    name: str
    energy: Any
    cvs: Callable
    cv_names: list
    bias_kwargs: dict
    sampler_kwargs: dict
    fit_kwargs: dict
    run_kwargs: dict
    valid: Callable | None = None
    topology: Any = None
    default_basin: str = ""
    extras: dict = field(default_factory=dict)


def parse_cv_names(system: str, cv: str) -> list[str]:
    """Validate ``--cv`` against the system's CVs."""
    if system not in SYSTEMS:
        raise ValueError(f"--system must be one of {', '.join(SYSTEMS)}, got {system!r}")
    names = [c.strip() for c in str(cv).split(",") if c.strip()]
    allowed = _CVS[system]
    if not names or len(set(names)) != len(names) or any(n not in allowed for n in names):
        raise ValueError(f"--cv for {system} must be a comma-separated subset of {','.join(allowed)}, got {cv!r}")
    return names


def build_system(system: str, cv_names: list[str], *, quick: bool = False) -> SystemSpec:
    """Energy, CVs and the stated settings for one of :data:`SYSTEMS`.

    Settings (chosen here, not tuned per run): double well, kT = 1, bias on ``x1`` in [-3.5, 3.5],
    hills sigma 0.3, h0 0.02 kT per hill (200 hills a round), gamma 6; Müller–Brown at kT = 20 on
    (x, y) in the box of its basins, sigma 0.1, gamma 6; alanine dipeptide (amber ff96 via
    openmmtools, 300 K) on (phi, psi), periodic, sigma 0.35 rad, gamma 8, centre of mass removed
    through the core constraint and the CA stereocentre restrained.
    """
    from . import energies as en
    from .bias import WellTemperedBias  # noqa: F401  (fail early when the domain is incomplete)

    fit = dict(samples_per_iteration=256, gradient_steps=20, batch_size=256, buffer_size=10000)
    if system == "double-well":
        idx = [_CVS[system].index(n) for n in cv_names]
        return SystemSpec(system, en.DoubleWell2D(kT=1.0), CoordinateCV(idx, cv_names), cv_names,
                          dict(lower=-3.5, upper=3.5, bins=141, sigma=0.3, height=0.02, gamma=6.0),
                          dict(sigma_max=3.0, num_steps=50, hidden=64, depth=2, lr=2e-3, max_adjoint_norm=10.0),
                          dict(fit, buffer_size=2048),  # ~8 iterations of samples: the buffer follows the bias
                          dict(rounds=6, iterations_per_round=15, final_iterations=40, deposit_samples=200,
                               num_samples=4000), default_basin="B: 0 < x1 < 10")
    if system == "mueller-brown":
        idx = [_CVS[system].index(n) for n in cv_names]
        lo = [(-2.0, -1.0)[i] for i in idx]
        hi = [(1.5, 2.5)[i] for i in idx]
        return SystemSpec(system, en.MuellerBrown(kT=20.0), CoordinateCV(idx, cv_names), cv_names,
                          dict(lower=lo, upper=hi, bins=141, sigma=0.1, height=0.02, gamma=6.0),
                          dict(sigma_max=1.2, num_steps=60, hidden=128, depth=3, lr=1e-3, max_adjoint_norm=10.0),
                          fit, dict(rounds=8, iterations_per_round=20, final_iterations=60, deposit_samples=200,
                                    num_samples=4000))
    from sciffusion.processes import VE

    from .cvs import phi_psi_alanine
    from .sampler import ChiralityRestraint

    solvent = system.rsplit("-", 1)[1]
    energy, top, pos = en.alanine_dipeptide(solvent=solvent, check_units=False)  # random early samples have no bonds
    cvset = phi_psi_alanine()
    keep = [["phi", "psi"].index(n) for n in cv_names]
    cvs = cvset if keep == [0, 1] else _SubsetCV(cvset, keep, cv_names)
    restrained = ChiralityRestraint.from_reference(energy, (8, 6, 14, 10), torch.as_tensor(pos), k=50.0,
                                                   v0=1e-3)
    proc = VE(sigma_min=1e-3, sigma_max=0.03)  # nm; a Dirac source at the native structure
    from sciffusion.constraints import ZeroCenterOfMass

    proc = proc.constrain(ZeroCenterOfMass())
    return SystemSpec(system, restrained, cvs, cv_names,
                      dict(lower=-math.pi, upper=math.pi, bins=72, sigma=0.35, height=0.05, gamma=8.0),
                      dict(process=proc, source_mean=torch.as_tensor(pos, dtype=torch.float32), num_steps=100,
                           hidden=256, depth=3, lr=5e-4, max_adjoint_norm=1000.0),
                      dict(fit, samples_per_iteration=128), dict(rounds=8, iterations_per_round=40,
                                                                 final_iterations=80, deposit_samples=128,
                                                                 num_samples=2000),
                      valid=restrained.mask, topology=top, default_basin="B: 0 < phi < 2",
                      extras={"positions_nm": pos})


class _SubsetCV:
    def __init__(self, cvset, keep, names):
        self.cvset, self.keep, self.names = cvset, keep, names
        self.periodic = [list(cvset.periodic)[i] for i in keep]

    def __call__(self, x):
        return self.cvset(x)[:, self.keep]

    def __repr__(self):
        return f"_SubsetCV({self.names})"


def run_sample(spec: SystemSpec, *, out: Path | None, seed: int = 0, rounds: int | None = None,
               iterations_per_round: int | None = None, final_iterations: int | None = None,
               num_samples: int | None = None, path_weights: bool = True, progress: bool = False):
    """Build the sampler and bias of ``spec`` and run the rounds (checkpoint in ``out``)."""
    from .bias import WellTemperedBias
    from .sampler import AdjointSampler
    from .wtasbs import run_wtasbs

    rk = dict(spec.run_kwargs)
    for k, v in (("rounds", rounds), ("iterations_per_round", iterations_per_round),
                 ("final_iterations", final_iterations), ("num_samples", num_samples)):
        if v is not None:
            rk[k] = v
    bias = WellTemperedBias(len(spec.cv_names), periodic=list(getattr(spec.cvs, "periodic", [False])),
                            **spec.bias_kwargs)
    sampler = AdjointSampler(tuple(spec.energy.event_shape), seed=seed, **spec.sampler_kwargs)
    ckpt = None if out is None else Path(out) / "checkpoint.pt"
    return run_wtasbs(spec.energy, spec.cvs, bias, sampler, generator=torch.Generator().manual_seed(seed),
                      fit_kwargs=spec.fit_kwargs, valid=spec.valid, path_weights=path_weights, checkpoint=ckpt,
                      progress=progress, **rk)


def save_samples(out: Path, spec: SystemSpec, result, settings: dict) -> dict:
    """Write ``samples.pt``, ``run.json`` and (molecules) a PDB/DCD trajectory of the samples."""
    out.mkdir(parents=True, exist_ok=True)
    payload = {"system": spec.name, "cv_names": spec.cv_names, "periodic": list(getattr(spec.cvs, "periodic", [])),
               "x": result.x, "cv": result.cv, "log_weights": result.log_weights,
               "path_log_weights": result.path_log_weights, "bias": result.bias.state_dict()}
    torch.save(payload, out / "samples.pt")
    summary = {"system": spec.name, "cv": spec.cv_names, "num_samples": int(result.x.shape[0]),
               "ess_bias_weights": round(result.ess, 1),
               "ess_path_weights": None if result.path_ess is None else round(result.path_ess, 1),
               "energy_evaluations": result.energy_evaluations, "seconds": round(result.seconds, 1),
               "rounds": result.history, "settings": settings}
    (out / "run.json").write_text(json.dumps(summary, indent=1, default=str))
    if spec.topology is not None:
        from .io import write_trajectory
        from .plots import plot_ramachandran

        write_trajectory(result.x, spec.topology, out / "samples.dcd", log_weights=result.log_weights)
        write_trajectory(result.x[:1], spec.topology, out / "topology.pdb")
        if spec.cv_names == ["phi", "psi"]:
            ok = torch.isfinite(result.log_weights)
            fig = plot_ramachandran(result.cv[ok], result.log_weights[ok])
            fig = getattr(fig, "figure", fig)
            fig.savefig(out / "ramachandran.png", dpi=100)
            import matplotlib.pyplot as plt

            plt.close(fig)
    return summary


def free_energy_from_samples(samples: dict, basins: list[str], *, weights: str = "bias", n_bootstrap: int = 200,
                             seed: int = 0) -> dict:
    r""":math:`\Delta F(A\to B)` from a ``samples.pt`` payload through :func:`~.free_energy.delta_f`
    (bootstrap error bar), with the bias grid's own estimate
    (:func:`~.free_energy.delta_f_from_grid` on :meth:`~.bias.WellTemperedBias.free_energy`) beside it.

    Args:
        samples: what ``molecules sample`` saved.
        basins: ``["B: ..."]`` (A is the rest) or ``["A: ...", "B: ..."]``.
        weights: ``"bias"`` (:math:`e^{V/k_BT}`, WT-ASBS) or ``"path"`` (the sampler's exact path weights).
    """
    from .bias import WellTemperedBias
    from .free_energy import delta_f, delta_f_from_grid

    if weights not in ("bias", "path"):
        raise ValueError(f"weights must be 'bias' or 'path', got {weights!r}")
    if not 1 <= len(basins) <= 2:
        raise ValueError("basins: give one basin (B; A = the rest) or two (A then B)")
    lw = samples["log_weights"] if weights == "bias" else samples["path_log_weights"]
    if lw is None:
        raise ValueError("these samples carry no path weights (run sample with path weights)")
    a, b = (basins[0], basins[1]) if len(basins) == 2 else ("A = rest", basins[0])
    names, periodic = samples["cv_names"], samples["periodic"]
    out = delta_f(samples["cv"], lw, a, b, n_bootstrap=n_bootstrap, generator=torch.Generator().manual_seed(seed),
                  names=names, periodic=periodic)
    out = {k: (v.tolist() if isinstance(v, torch.Tensor) else v) for k, v in out.items()}
    out["weights"] = weights
    bias = WellTemperedBias.from_state_dict(samples["bias"])
    if bias.num_hills:
        pts, f = bias.free_energy()
        out["bias_grid_delta_f"] = float(delta_f_from_grid(pts, f, a, b, names=names, periodic=periodic)["delta_f"])
    return out


def cells_free_energy_from_samples(samples: dict, basin: str, *, particles: int = 500, temperatures: int = 200,
                                   seed: int = 0, progress: bool = False) -> dict:
    r""":math:`\Delta F(A\to B)` from the basins that saved alanine-dipeptide samples reach
    (:func:`~.anneal.cell_free_energy`: minima, one cell each, AIS per cell), the samples' weights
    unused: only the minima they lead to matter. B is ``basin``, A the rest.

    Args:
        samples: what ``molecules sample`` saved (an alanine-dipeptide system).
        basin: the B basin, e.g. ``"B: 0 < phi < 2"``, on the saved CVs.
        particles, temperatures: AIS particles per cell and temperatures.
    """
    from .anneal import alanine_cell_options, cell_free_energy
    from .energies import alanine_dipeptide
    from .free_energy import Basin
    from .internal import ZMatrix

    system = samples.get("system", "")
    if not str(system).startswith("alanine-dipeptide-"):
        raise ValueError(f"--estimator cells needs molecule samples (an alanine-dipeptide system), got {system!r}: "
                         "it minimises and integrates in internal coordinates")
    b = Basin.parse(basin)
    names, periodic = samples["cv_names"], samples["periodic"]
    energy, top, pos = alanine_dipeptide(system.rsplit("-", 1)[1], platform_properties={"Threads": "1"})
    spec_cvs = build_system(system, names).cvs
    zm = ZMatrix.from_topology(top)

    def in_b(cv):
        return b.mask(cv, names, periodic)

    x = torch.as_tensor(samples["x"], dtype=torch.float64)
    ok = torch.isfinite(x.flatten(1)).all(1)
    if "log_weights" in samples and samples["log_weights"] is not None:  # wrong-handed samples carry weight 0
        ok &= torch.isfinite(torch.as_tensor(samples["log_weights"]))
    if not bool(ok.any()):
        raise ValueError("--samples: no finite sample of the right handedness to start minimisations from")
    res = cell_free_energy(energy, zm, x[ok], spec_cvs, in_b, generator=torch.Generator().manual_seed(seed),
                           num_particles=particles, num_temperatures=temperatures, progress=progress,
                           **alanine_cell_options(zm, energy, pos))
    return {"estimator": "cells", "basin_B": basin, "delta_f": res.delta_f, "stderr": res.stderr, "p_b": res.p_b,
            "laplace_delta_f": res.laplace_delta_f, "energy_calls": res.energy_calls,
            "minimisation_starts": res.minima["starts"],
            "minima": [{**{n: float(v) for n, v in zip(names, c)}, "u_kT": float(u), "basin": "B" if int(lb) else "A"}
                       for c, u, lb in zip(res.minima["cv"], res.minima["energies"], res.minima["basin"])],
            "cells": [{"log_z": r.log_normalizer, "stderr": r.stderr, "ess": r.ess, "inside": r.inside}
                      for r in res.runs]}


# ------------------------------------------------------------------------------------------
# argument handling
# ------------------------------------------------------------------------------------------
def _positive(name):
    def conv(v):
        try:
            i = int(v)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be an integer, got {v!r}") from None
        if i < 0 or (i == 0 and name not in ("--rounds",)):
            raise argparse.ArgumentTypeError(f"{name} must be {'>= 0' if name == '--rounds' else '> 0'}, got {v}")
        return i
    return conv


def _positive_float(name):
    def conv(v):
        try:
            f = float(v)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number, got {v!r}") from None
        if not (f > 0 and math.isfinite(f)):
            raise argparse.ArgumentTypeError(f"{name} must be > 0, got {v}")
        return f
    return conv


def _check_out(out: Path, flag: str = "--out") -> None:
    if out.exists() and not out.is_dir():
        raise ValueError(f"{flag} {out} exists and is not a directory")


def _cmd_sample(args) -> int:
    names = parse_cv_names(args.system, args.cv)
    _check_out(args.out)
    spec = build_system(args.system, names)
    if args.source == "gaussian":  # ASBS: a Gaussian source around the same centre, corrector matching
        spec.sampler_kwargs.update(source="gaussian", source_std=args.source_std)
    settings = {k: getattr(args, k) for k in ("system", "cv", "seed", "rounds", "iterations", "final_iterations",
                                              "samples", "source", "source_std")}
    res = run_sample(spec, out=args.out, seed=args.seed, rounds=args.rounds, iterations_per_round=args.iterations,
                     final_iterations=args.final_iterations, num_samples=args.samples,
                     progress=not args.no_progress)
    summary = save_samples(args.out, spec, res, settings)
    print(f"{spec.name}: {summary['num_samples']} samples, ESS {summary['ess_bias_weights']} (bias weights), "
          f"{summary['ess_path_weights']} (path weights), {summary['energy_evaluations']} energy calls, "
          f"{summary['seconds']} s; wrote {args.out}")
    return 0


def _cmd_free_energy(args) -> int:
    path = args.samples / "samples.pt" if args.samples.is_dir() else args.samples
    if not path.exists():
        raise ValueError(f"--samples: no samples.pt at {path}")
    if not 1 <= len(args.basin) <= 2:
        raise ValueError("--basin: give one basin (B; A = the rest) or two (A then B)")
    from .free_energy import Basin

    for b in args.basin:
        Basin.parse(b)  # raises ValueError naming the bad basin text
    if args.out is not None and args.out.is_dir():
        raise ValueError(f"--out {args.out} is a directory; give a JSON file path")
    if args.estimator == "cells" and len(args.basin) != 1:
        raise ValueError("--estimator cells: give one basin (B; A is the rest): the cells partition the space")
    samples = torch.load(path, weights_only=False)
    if args.estimator == "cells":
        out = cells_free_energy_from_samples(samples, args.basin[0], particles=args.particles,
                                             temperatures=args.temperatures, seed=args.seed,
                                             progress=not args.no_progress)
    else:
        out = free_energy_from_samples(samples, args.basin, weights=args.weights, n_bootstrap=args.bootstrap,
                                       seed=args.seed)
    print(json.dumps(out, indent=1, default=float))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=1, default=float))
    return 0


def _cmd_metad(args) -> int:
    names = parse_cv_names(args.system, args.cv)
    if not args.system.startswith("alanine"):
        raise ValueError("--system: metad runs OpenMM metadynamics, so it needs an alanine-dipeptide system")
    if not args.bias_factor > 1:
        raise ValueError(f"--bias-factor must be > 1, got {args.bias_factor}")
    _check_out(args.out)
    from .energies import alanine_dipeptide
    from .free_energy import delta_f_from_grid
    from .reference import run_metadynamics

    energy, top, pos = alanine_dipeptide(solvent=args.system.rsplit("-", 1)[1], constraints="HBonds")
    res = run_metadynamics(energy.system, pos, 300.0, steps=args.steps, cvs=names, timestep=0.002,
                           bias_factor=args.bias_factor, topology=top, generator=torch.Generator().manual_seed(args.seed),
                           progress=not args.no_progress)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.save({"grid_points": res.grid_points, "free_energy": res.free_energy, "cv_values": res.cv_values,
                "cv_names": res.cv_names}, args.out / "metad.pt")
    summary = {"system": args.system, "cv": names, "steps": args.steps, "timestep_ps": 0.002,
               "energy_force_calls": res.num_force_calls, "wall_s": round(res.wall_s, 1)}
    if names == ["phi", "psi"] or names == ["phi"]:
        d = delta_f_from_grid(res.grid_points, res.free_energy, "A = rest", "B: 0 < phi < 2", names=names,
                              periodic=[True] * len(names))
        summary["delta_f_A_to_B"] = round(float(d["delta_f"]), 3)
    (args.out / "metad.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary))
    return 0


def register_cli(subparsers) -> None:
    """``sciffusion molecules {sample,free-energy,metad}``."""
    p = subparsers.add_parser("molecules", help="Boltzmann sampling from energies, CV bias, free energies")
    sub = p.add_subparsers(dest="molecules_command", required=True)
    s = sub.add_parser("sample", help="well-tempered adjoint sampler (checkpointed, resumable)")
    s.add_argument("--system", required=True, choices=SYSTEMS)
    s.add_argument("--cv", required=True, help="comma-separated CVs, e.g. phi,psi or x1")
    s.add_argument("--out", type=Path, required=True, help="folder for samples, checkpoint and JSON")
    s.add_argument("--rounds", type=_positive("--rounds"), default=None, help="biased rounds (0: no bias)")
    s.add_argument("--iterations", type=_positive("--iterations"), default=None, help="iterations per round")
    s.add_argument("--final-iterations", type=_positive("--final-iterations"), default=None)
    s.add_argument("--samples", type=_positive("--samples"), default=None, help="final samples")
    s.add_argument("--source", choices=("dirac", "gaussian"), default="dirac",
                   help="dirac: Adjoint Sampling; gaussian: ASBS with corrector matching")
    s.add_argument("--source-std", type=_positive_float("--source-std"), default=1.0,
                   help="std of the Gaussian source (ASBS), in the system's length unit")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=_guard(_cmd_sample))
    f = sub.add_parser("free-energy", help="Delta F between basins from weighted samples")
    f.add_argument("--samples", type=Path, required=True, help="a folder written by `molecules sample`")
    f.add_argument("--basin", action="append", required=True, help='e.g. "B: 0 < phi < 2" (repeat for A)')
    f.add_argument("--weights", choices=("bias", "path"), default="bias")
    f.add_argument("--estimator", choices=("reweight", "cells"), default="reweight",
                   help="reweight: the weighted samples' histogram; cells: minimise the samples, one cell per "
                        "minimum, each cell's mass by annealed importance sampling (molecules)")
    f.add_argument("--particles", type=_positive("--particles"), default=500, help="cells: AIS particles per cell")
    f.add_argument("--temperatures", type=_positive("--temperatures"), default=200, help="cells: AIS temperatures")
    f.add_argument("--no-progress", action="store_true")
    f.add_argument("--bootstrap", type=_positive("--bootstrap"), default=200)
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--out", type=Path, default=None, help="JSON file for the estimate")
    f.set_defaults(func=_guard(_cmd_free_energy))
    m = sub.add_parser("metad", help="OpenMM well-tempered metadynamics reference")
    m.add_argument("--system", required=True, choices=SYSTEMS)
    m.add_argument("--cv", default="phi,psi")
    m.add_argument("--steps", type=_positive("--steps"), default=500000, help="2 fs steps (HBonds constraints)")
    m.add_argument("--bias-factor", type=float, default=6.0)
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--no-progress", action="store_true")
    m.add_argument("--out", type=Path, required=True)
    m.set_defaults(func=_guard(_cmd_metad))


def _guard(fn):
    def run(args):
        try:
            return fn(args)
        except ValueError as err:
            raise SystemExit(f"sciffusion molecules: error: {err}") from None
    return run


# ------------------------------------------------------------------------------------------
# tour
# ------------------------------------------------------------------------------------------
def tour(out_dir: Path, quick: bool) -> dict:
    """Double well (kT = 1): unbiased vs well-tempered adjoint sampler, reweighted, against quadrature;
    the basin-cell estimator on the OpenMM torsion chain against its quadrature."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    spec = build_system("double-well", ["x1"])
    exact = spec.energy.exact_probability(0.0)
    rows = [{"sampler": "exact (quadrature)", "P(x1>0)": round(exact, 4),
             "dF(A->B) kT": round(-math.log(exact / (1 - exact)), 3), "ESS": "", "energy_calls": ""}]
    scale = dict(rounds=4, iterations_per_round=10, final_iterations=20) if quick else {}
    results = {}
    for label, rounds in (("unbiased", 0), ("well-tempered", None)):
        kw = dict(scale)
        if rounds == 0:
            kw = dict(rounds=0, final_iterations=(kw.get("rounds", 6) * kw.get("iterations_per_round", 15)
                                                  + kw.get("final_iterations", 40)))
        res = run_sample(spec, out=None, **kw)
        results[label] = res
        B = (res.cv[:, 0] > 0).double()
        for wname, lw, ess in (("bias weights", res.log_weights, res.ess),
                               ("path weights", res.path_log_weights, res.path_ess)):
            w = torch.softmax(lw, 0)
            p = float((w * B).sum())
            df = -math.log(p / (1 - p)) if 0 < p < 1 else float("inf" if p == 0 else "-inf")
            rows.append({"sampler": f"{label}, {wname}", "P(x1>0)": round(p, 4), "dF(A->B) kT": round(df, 3),
                         "ESS": round(ess, 1), "energy_calls": res.energy_evaluations})
    _plot_tour(out_dir / "boltzmann_double_well.png", spec, results)
    return {"section": "boltzmann", "system": "double well, kT=1",
            "rows": rows, "figures": ["boltzmann_double_well.png"], "torsion_chain_cells": _tour_cells(quick)}


def _tour_cells(quick: bool) -> dict:
    """The basin-cell estimator (:func:`~.anneal.cell_free_energy`) on the OpenMM four-atom torsion
    chain, trans (A) against gauche (B), beside its exact 1-D quadrature."""
    from .anneal import cell_free_energy
    from .cvs import Dihedral
    from .energies import TORSION_CHAIN_BONDS, torsion_chain, torsion_chain_log_marginal
    from .internal import ZMatrix

    energy, zm = torsion_chain(platform_properties={"Threads": "1"}), ZMatrix(4, TORSION_CHAIN_BONDS)
    phi = torch.linspace(-math.pi, math.pi, 200_001, dtype=torch.float64)
    logp, gauche = torsion_chain_log_marginal(phi), phi.abs() < 2 * math.pi / 3
    exact = float(torch.logsumexp(logp[~gauche], 0) - torch.logsumexp(logp[gauche], 0))
    q = torch.tensor([[0.153, 0.153, 0.153, 1.95, 1.95, p] for p in (3.0, 1.0, -1.0)], dtype=torch.float64)
    res = cell_free_energy(energy, zm, zm.to_cartesian(q), Dihedral(0, 1, 2, 3), lambda c: c[:, 0].abs() < 2.0944,
                           generator=torch.Generator().manual_seed(0), num_particles=150 if quick else 300,
                           num_temperatures=30 if quick else 50)
    return {"exact dF(trans->gauche) kT": round(exact, 3), "cells dF kT": round(res.delta_f, 3),
            "stderr": round(res.stderr, 3), "Laplace dF kT": round(res.laplace_delta_f, 3),
            "energy_calls": sum(res.energy_calls.values())}


def _plot_tour(path: Path, spec, results) -> None:
    import matplotlib.pyplot as plt  # no backend chosen: pyplot picks a non-interactive one headless

    grid = torch.linspace(-3, 3, 400, dtype=torch.float64)
    dens = spec.energy.exact_x1_density(grid)
    fig, axes = plt.subplots(1, len(results), figsize=(4 * len(results), 3.2), sharey=True)
    for ax, (label, res) in zip(axes, results.items()):
        x1 = res.cv[:, 0].numpy()
        ax.hist(x1, bins=80, range=(-3, 3), density=True, alpha=0.35, label="raw samples")
        ax.hist(x1, bins=80, range=(-3, 3), density=True, histtype="step",
                weights=torch.softmax(res.path_log_weights, 0).numpy(), label="path-reweighted")
        ax.plot(grid, dens, "k", lw=1, label="exact")
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("x1")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


__all__ = ["tour", "register_cli", "build_system", "run_sample", "save_samples", "free_energy_from_samples",
           "parse_cv_names", "SYSTEMS", "CoordinateCV"]
