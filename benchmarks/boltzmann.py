"""Boltzmann sampling benchmark: the well-tempered adjoint sampler (WT-ASBS) against the same
sampler without bias and against exact answers / OpenMM metadynamics.

Parts (``--part``):

* ``analytic``: 2-D double well (kT = 1; exact P(x1 > 0) and Delta F by quadrature) and
  Müller–Brown (kT = 20; exact basin probabilities by 2-D quadrature), ``--seeds`` seeds each,
  unbiased vs well-tempered, each with the bias weights exp(V/kT) (WT-ASBS) and the sampler's
  exact path weights; energy+force calls, wall-clock and ESS per run.
* ``alanine-metad`` / ``alanine-sampler``: alanine dipeptide in vacuum (openmmtools, amber ff96, 300 K; phi = atoms
  4,6,8,14, psi = 6,8,14,16; basin B = 0 < phi < 2 rad, A = the rest): well-tempered
  metadynamics through OpenMM (the reference, run here), then the sampler with and without the
  bias. CPU budget (stated): metadynamics ``--metad-steps`` steps of 2 fs (HBonds constraints),
  the samplers ``--alanine-iterations`` iterations of 128 energy+force calls each.
* ``alanine-internal``: the same sampler on standardized internal coordinates
  (:class:`~sciffusion.domains.boltzmann.internal.InternalCoordinateEnergy`: Z-matrix, Hessian
  whitening at the L-BFGS minimum, phi/psi at ``--internal-cv-scale`` rad, torsion periodisation
  term in the weights), ``--internal-runs unbiased,well-tempered``; same CPU budget unit.
  ``--refine-steps 50,200`` adds resample-move rows (:func:`~sciffusion.domains.boltzmann.refine.resample_move`:
  resampling by the path weights, then MALA on the frozen biased target, or on the unbiased one
  without a bias), one row per cumulative step count, energy calls including the refinement;
  ``--save-samples PREFIX`` writes each run's samples for the next part.
* ``alanine-basins``: Delta F from the basins a saved run's samples reach (``--basins-samples``):
  distinct minima, one cell per minimum, each cell's mass by annealed importance sampling from its
  Laplace approximation (:func:`~sciffusion.domains.boltzmann.anneal.annealed_importance_sampling`),
  ``--basins-seeds`` independent repeats.

Run (shared 2-core CPU; background):
    OMP_NUM_THREADS=1 nohup python benchmarks/boltzmann.py --part analytic > bench_boltzmann_analytic.log &
    OMP_NUM_THREADS=1 nohup python benchmarks/boltzmann.py --part alanine-metad > bench_boltzmann_metad.log &
    OMP_NUM_THREADS=1 nohup python benchmarks/boltzmann.py --part alanine-sampler > bench_boltzmann_sampler.log &
    OMP_NUM_THREADS=1 nohup python benchmarks/boltzmann.py --part alanine-internal --internal-sequential \
        --internal-rounds 16 --internal-height 0.25 --tag _wt_h0.25 > bench_boltzmann_internal.log &

Writes ``benchmarks/results/boltzmann_<part>.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import torch

from sciffusion.domains.boltzmann.cli import build_system, run_sample
from sciffusion.domains.boltzmann.free_energy import delta_f, delta_f_from_grid

RESULTS = Path(__file__).resolve().parent / "results"


def _df_row(label, res, lw, ess, cv, names, basin_a, basin_b, seed, periodic=None, extra=None):
    try:
        d = delta_f(cv, lw, basin_a, basin_b, n_bootstrap=200, generator=torch.Generator().manual_seed(seed),
                    names=names, periodic=periodic)
        df, se, pb = float(d["delta_f"]), float(d["stderr"]), float(d["p_b"])
    except ValueError as err:  # a basin no sample visits: the estimate does not exist
        df, se, pb = float("nan"), float("nan"), float("nan")
        extra = dict(extra or {}, note=str(err)[:120])
    row = {"run": label, "delta_f": round(df, 3), "stderr": round(se, 3), "p_b": round(pb, 4), "ess": round(ess, 1),
           "energy_calls": res.energy_evaluations, "wall_s": round(res.seconds, 1)}
    row.update(extra or {})
    return row


def double_well(seeds):
    spec = build_system("double-well", ["x1"])
    exact_p = spec.energy.exact_probability(0.0)
    exact = {"p_b": exact_p, "delta_f": spec.energy.exact_delta_f(0.0)}
    rows = []
    rk = spec.run_kwargs
    total = rk["rounds"] * rk["iterations_per_round"] + rk["final_iterations"]
    for seed in seeds:
        for label, kw in (("unbiased", dict(rounds=0, final_iterations=total)), ("well-tempered", {})):
            res = run_sample(spec, out=None, seed=seed, **kw)
            for wname, lw, ess in (("bias weights", res.log_weights, res.ess),
                                   ("path weights", res.path_log_weights, res.path_ess)):
                row = _df_row(f"{label}, {wname}", res, lw, ess, res.cv, ["x1"], "A = rest", "B: 0 < x1 < 10", seed,
                              extra={"seed": seed, "raw_p_b": round(float((res.cv[:, 0] > 0).double().mean()), 4)})
                rows.append(row)
                print("double-well", row, flush=True)
    return {"exact": exact, "rows": rows}


def mueller_brown(seeds):
    spec = build_system("mueller-brown", ["x", "y"])
    energy = spec.energy
    exact = energy.exact_basin_probabilities()
    out_exact = {"p": [round(float(p), 4) for p in exact],
                 "delta_f_0_to_1": round(-math.log(float(exact[1] / exact[0])), 3),
                 "delta_f_0_to_2": round(-math.log(float(exact[2] / exact[0])), 3)}
    print("mueller-brown exact", out_exact, flush=True)
    rows = []
    rk = spec.run_kwargs
    total = rk["rounds"] * rk["iterations_per_round"] + rk["final_iterations"]
    for seed in seeds:
        for label, kw in (("unbiased", dict(rounds=0, final_iterations=total)), ("well-tempered", {})):
            res = run_sample(spec, out=None, seed=seed, **kw)
            idx = energy.basin_index(res.x)
            for wname, lw, ess in (("bias weights", res.log_weights, res.ess),
                                   ("path weights", res.path_log_weights, res.path_ess)):
                w = torch.softmax(lw, 0)
                p = [float(w[idx == k].sum()) for k in range(3)]
                # bootstrap of the basin free energies (samples are independent)
                g = torch.Generator().manual_seed(seed)
                boots = []
                for _ in range(200):
                    j = torch.randint(len(w), (len(w),), generator=g)
                    wb = torch.softmax(lw[j], 0)
                    pb = [float(wb[idx[j] == k].sum()) for k in range(3)]
                    if min(pb) > 0:
                        boots.append([-math.log(pb[1] / pb[0]), -math.log(pb[2] / pb[0])])
                bt = torch.tensor(boots) if boots else torch.full((1, 2), float("nan"))
                dfs = [(-math.log(p[k] / p[0]) if p[k] > 0 and p[0] > 0 else float("nan")) for k in (1, 2)]
                row = {"run": f"{label}, {wname}", "seed": seed, "p": [round(v, 4) for v in p],
                       "delta_f_0_to_1": round(dfs[0], 3), "stderr_0_to_1": round(float(bt[:, 0].std()), 3),
                       "delta_f_0_to_2": round(dfs[1], 3), "stderr_0_to_2": round(float(bt[:, 1].std()), 3),
                       "raw_p": [round(float((idx == k).double().mean()), 4) for k in range(3)],
                       "ess": round(ess, 1), "energy_calls": res.energy_evaluations, "wall_s": round(res.seconds, 1)}
                rows.append(row)
                print("mueller-brown", row, flush=True)
    return {"exact": out_exact, "rows": rows}


BASIN_A, BASIN_B = "A = rest", "B: 0 < phi < 2"


def alanine_metad(args):
    """The OpenMM well-tempered metadynamics reference (2 fs, HBonds), Delta F from its grid."""
    from sciffusion.domains.boltzmann.energies import alanine_dipeptide
    from sciffusion.domains.boltzmann.reference import run_metadynamics

    out = {"budget": {"metad_steps": args.metad_steps, "metad_timestep_ps": 0.002, "solvent": args.solvent}}
    basin_a, basin_b = BASIN_A, BASIN_B
    # --- the metadynamics reference (OpenMM), 2 fs with HBonds constraints
    e_md, top, pos = alanine_dipeptide(args.solvent, constraints="HBonds")
    t0 = time.perf_counter()
    fes_every = max(args.metad_steps // 40, 500)
    ref = run_metadynamics(e_md.system, pos, 300.0, steps=args.metad_steps, timestep=0.002, bias_factor=6.0,
                           height=1.2, width=0.35, frequency=500, report_every=1000, fes_every=fes_every,
                           generator=torch.Generator().manual_seed(0))
    wall = time.perf_counter() - t0
    d_final = delta_f_from_grid(ref.grid_points, ref.free_energy, basin_a, basin_b, names=["phi", "psi"],
                                periodic=[True, True])["delta_f"]
    hist = []
    for step, f in ref.fes_history:
        hist.append((int(step), float(delta_f_from_grid(ref.grid_points, f, basin_a, basin_b, names=["phi", "psi"],
                                                        periodic=[True, True])["delta_f"])))
    tail = [d for s, d in hist if s >= 0.75 * args.metad_steps]
    spread = float(torch.tensor(tail).std()) if len(tail) > 1 else float("nan")

    def steps_within(tol):
        for i, (s, d) in enumerate(hist):
            if all(abs(d2 - d_final) < tol for _, d2 in hist[i:]):
                return s
        return None

    out["metadynamics"] = {"delta_f": round(float(d_final), 3), "stderr_last_quarter": round(spread, 3),
                           "energy_force_calls": ref.num_force_calls, "wall_s": round(wall, 1),
                           "steps_to_stay_within_0.5kT_of_final": steps_within(0.5),
                           "steps_to_stay_within_0.3kT_of_final": steps_within(0.3),
                           "history": hist}
    print("alanine metadynamics", {k: v for k, v in out["metadynamics"].items() if k != "history"}, flush=True)
    return out


def alanine_sampler(args):
    """The sampler with and without the bias, Delta F with bootstrap error bars."""
    basin_a, basin_b = BASIN_A, BASIN_B
    out = {"budget": {"sampler_iterations": args.alanine_iterations, "samples_per_iteration": 128}}
    spec = build_system("alanine-dipeptide-vacuum", ["phi", "psi"])
    if args.alanine_sigma_max is not None:  # the base process's reach, nm (default: the system's 0.03)
        from sciffusion.processes import VE

        proc = VE(1e-3, args.alanine_sigma_max)
        c = getattr(spec.sampler_kwargs["process"], "constraint", None)
        spec.sampler_kwargs["process"] = proc.constrain(c) if c is not None else proc
        out["budget"]["sigma_max_nm"] = args.alanine_sigma_max
    n_it = args.alanine_iterations
    rounds = 8
    per_round = max(1, (n_it // 2) // rounds)
    final = n_it - rounds * per_round
    rows = []
    for label, kw in (("unbiased", dict(rounds=0, final_iterations=n_it)),
                      ("well-tempered", dict(rounds=rounds, iterations_per_round=per_round, final_iterations=final))):
        t0 = time.perf_counter()
        try:
            res = run_sample(spec, out=None, seed=0, num_samples=2000, **kw)
        except (FloatingPointError, ValueError) as err:
            rows.append({"run": label, "failed": str(err)[:200], "wall_s": round(time.perf_counter() - t0, 1)})
            print("alanine", rows[-1], flush=True)
            continue
        u = spec.energy.energy(res.x) if hasattr(spec.energy, "energy") else None
        extra = {"mean_reduced_energy": round(float(u.mean()), 1) if u is not None else None,
                 "valid_chirality": int(torch.isfinite(res.log_weights).sum()),
                 "final_hist_phi_in_B": round(float(((res.cv[:, 0] > 0) & (res.cv[:, 0] < 2)).double().mean()), 4)}
        for wname, lw, ess in (("bias weights", res.log_weights, res.ess),
                               ("path weights", res.path_log_weights, res.path_ess)):
            row = _df_row(f"{label}, {wname}", res, lw, ess, res.cv, ["phi", "psi"], basin_a, basin_b, 0,
                          periodic=[True, True], extra=extra)
            rows.append(row)
            print("alanine", row, flush=True)
    out["sampler"] = rows
    return out


def alanine_internal(args):
    """The adjoint sampler on standardized internal coordinates (Z-matrix, whitened by the Hessian at
    the minimised structure), with and without the well-tempered phi/psi bias; weights carry the
    torsion periodisation term (``InternalCoordinateEnergy.log_wrap_weight``)."""
    import math as _m

    from sciffusion import smc
    from sciffusion.domains.boltzmann.bias import WellTemperedBias
    from sciffusion.domains.boltzmann.cvs import phi_psi_alanine
    from sciffusion.domains.boltzmann.energies import alanine_dipeptide
    from sciffusion.domains.boltzmann.internal import InternalCoordinateEnergy, ZMatrix
    from sciffusion.domains.boltzmann.sampler import AdjointSampler, ChiralityRestraint
    from sciffusion.domains.boltzmann.wtasbs import run_wtasbs, sample_unbiased
    from sciffusion.processes import VE

    n_it, rounds = args.alanine_iterations, args.internal_rounds
    per_round = max(1, (n_it // 2) // rounds)
    final = n_it - rounds * per_round
    fit = dict(samples_per_iteration=128, gradient_steps=20, batch_size=256, buffer_size=args.internal_buffer)
    out = {"budget": {"sampler_iterations": n_it, "rounds": rounds, "iterations_per_round": per_round,
                      "final_iterations": final, **fit, "num_samples": args.internal_samples,
                      "sigma_max": args.internal_sigma_max, "num_steps": args.internal_steps,
                      "hill_height_kT": args.internal_height, "whiten": not args.no_whiten,
                      "cv_torsion_scale_rad": args.internal_cv_scale, "lr": args.internal_lr,
                      "sequential_deposit": args.internal_sequential, "solvent": args.solvent}}
    rows = []
    runs = [r for r in args.internal_runs.split(",") if r]
    for label in runs:
        # one OpenMM thread: the CPU platform's threaded force sums are not bit-reproducible
        energy, top, pos = alanine_dipeptide(args.solvent, platform_properties={"Threads": "1"})
        t0 = time.perf_counter()
        zm = ZMatrix.from_topology(top)
        x_min = InternalCoordinateEnergy.minimise(energy, zm, pos)
        soft = {zm.torsion_index(4, 6, 8, 14): args.internal_cv_scale, zm.torsion_index(6, 8, 14, 16): args.internal_cv_scale} \
            if args.internal_cv_scale > 0 else None
        ice = InternalCoordinateEnergy(energy, zm, x_min, whiten=not args.no_whiten, scale_overrides=soft)
        setup_calls = energy.num_calls
        cvs = ice.cv(phi_psi_alanine())
        chir = ChiralityRestraint.from_reference(energy, (8, 6, 14, 10), x_min)

        def valid(z):
            return ice.in_domain(z) & chir.mask(ice.to_cartesian(z))

        sampler = AdjointSampler((zm.n_dof,), process=VE(sigma_min=0.01, sigma_max=args.internal_sigma_max),
                                 num_steps=args.internal_steps, hidden=256, depth=3, lr=args.internal_lr,
                                 max_adjoint_norm=100.0, seed=0)
        g = torch.Generator().manual_seed(0)
        if label == "unbiased":
            res = sample_unbiased(ice, cvs, sampler, iterations=n_it, num_samples=args.internal_samples, generator=g,
                                  fit_kwargs=fit, valid=valid, path_weights=True)
            grid_df = None
        else:
            bias = WellTemperedBias(cvs, bins=72, sigma=0.35, height=args.internal_height, gamma=8.0)
            res = run_wtasbs(ice, cvs, bias, sampler, rounds=rounds, iterations_per_round=per_round,
                             final_iterations=final, deposit_samples=128, num_samples=args.internal_samples,
                             generator=g, fit_kwargs=fit, valid=valid, path_weights=True,
                             sequential_deposit=args.internal_sequential)
            pts, fgrid = bias.free_energy()
            grid_df = round(float(delta_f_from_grid(pts, fgrid, BASIN_A, BASIN_B, names=["phi", "psi"],
                                                    periodic=[True, True])["delta_f"]), 3)
        wall = time.perf_counter() - t0
        wrap = ice.log_wrap_weight(res.x)
        u = ice(res.x)
        u_cart = energy(ice.to_cartesian(res.x))
        extra = {"mean_reduced_energy": round(float(u_cart.mean()), 2),
                 "min_reduced_energy": round(float(energy(x_min[None])[0]), 2),
                 "minimum_phi_psi": [round(float(v), 3) for v in phi_psi_alanine()(x_min[None])[0]],
                 "mean_U_internal": round(float(u.mean()), 2), "valid": int(valid(res.x).sum()),
                 "raw_fraction_in_B": round(float(((res.cv[:, 0] > 0) & (res.cv[:, 0] < 2)).double().mean()), 4),
                 "bias_grid_delta_f": grid_df, "setup_energy_calls": setup_calls,
                 "total_energy_calls": energy.num_calls}
        res.seconds = wall
        res.energy_evaluations = res.energy_evaluations + setup_calls
        for wname, lw in (("bias weights", res.log_weights + wrap), ("path weights", res.path_log_weights + wrap)):
            lw = torch.where(torch.isfinite(lw), lw, torch.full_like(lw, -_m.inf))
            row = _df_row(f"{label}, {wname}", res, lw, float(smc.ess(lw)), res.cv, ["phi", "psi"], BASIN_A, BASIN_B,
                          0, periodic=[True, True], extra=extra)
            rows.append(row)
            print("alanine internal", row, flush=True)
        if args.save_samples:  # the run's samples, for a later stage (e.g. --part alanine-basins)
            torch.save({"z": res.x, "cv": res.cv, "u_cartesian": u_cart, "x_min": x_min, "run": label,
                        "solvent": args.solvent,
                        "path_log_weights": res.path_log_weights, "energy_calls": res.energy_evaluations},
                       f"{args.save_samples}_{label}.pt")
        if args.refine_steps:
            rows += _refine_rows(args, label, res, ice, cvs, None if label == "unbiased" else bias, valid, extra)
        out.setdefault("history", {})[label] = [h for h in sampler.history[:: max(1, len(sampler.history) // 40)]]
    out["sampler"] = rows
    return out


def _refine_rows(args, label, res, ice, cvs, bias, valid, extra):
    """Resample-move refinement of a run's final samples (``--refine-steps``): resample by the
    path weights *for the target that is moved on* and run MALA there, reporting after each of
    the cumulative step counts given. With the frozen bias that target is exp(-(U~ + V)), whose
    log-weights are the path log-weights for U~ minus V (the path weights are exact for U~, the
    unbiased density on R^60); the moved particles then carry exp(V) back to U~, and the torsion
    wrap term (``log_wrap_weight``) at their new positions back to the Boltzmann distribution.
    Without a bias the target is U~ itself and the moved particles' weights are the wrap term only."""
    from sciffusion import smc
    from sciffusion.domains.boltzmann.refine import mala, resample_move

    totals = sorted({int(k) for k in args.refine_steps.split(",") if k})
    lw0 = res.path_log_weights - (res.bias_values if bias is not None else 0.0)
    lw0 = torch.where(torch.isfinite(lw0), lw0, torch.full_like(lw0, -math.inf))
    ess0 = float(smc.ess(lw0))
    g = torch.Generator().manual_seed(1)
    rows, done, calls, seconds, ref = [], 0, 0, 0.0, None
    base_calls, base_wall = res.energy_evaluations, res.seconds
    for total in totals:
        t0 = time.perf_counter()
        if ref is None:
            ref = resample_move(ice, res.x, lw0, num_steps=total, bias=bias, valid=valid, generator=g,
                                adapt_fraction=min(0.5, 25 / total))
            ancestors, h = ref.ancestors, ref.step_size
        else:  # continue the same chains with the frozen step size
            ref = mala(ice, ref.x, num_steps=total - done, bias=bias, valid=valid, generator=g, step_size=h)
        seconds += time.perf_counter() - t0
        calls += ref.energy_calls
        done = total
        lw = ref.log_weights + ice.log_wrap_weight(ref.x)
        with torch.no_grad():
            cv = cvs(ref.x).double()
            u_cart = ice.cartesian_energy(ice.to_cartesian(ref.x))
        ice.cartesian_energy.num_calls -= ref.x.shape[0]  # a diagnostic, not part of the method's cost
        res.seconds, res.energy_evaluations = base_wall + seconds, base_calls + calls
        row_extra = {"refine_steps": total, "refine_step_size": round(h, 5),
                     "refine_acceptance": round(ref.acceptance_rate, 4),
                     "refine_energy_calls": calls, "refine_wall_s": round(seconds, 1),
                     "resampling_ess": round(ess0, 1), "distinct_ancestors": int(ancestors.unique().numel()),
                     "distinct_ancestors_in_B": int(ancestors[((res.cv[ancestors, 0] > 0) & (res.cv[ancestors, 0] < 2))]
                                                    .unique().numel()),
                     "mean_reduced_energy": round(float(u_cart.mean()), 2),
                     "raw_fraction_in_B": round(float(((cv[:, 0] > 0) & (cv[:, 0] < 2)).double().mean()), 4),
                     "bias_grid_delta_f": extra["bias_grid_delta_f"]}
        row = _df_row(f"{label}, resample-move {total} MALA steps", res, lw, float(smc.ess(lw)), cv, ["phi", "psi"],
                      BASIN_A, BASIN_B, 0, periodic=[True, True], extra=row_extra)
        rows.append(row)
        print("alanine internal", row, flush=True)
    return rows


def alanine_basins(args):
    """Free energies from the basins a sampler found: its samples (``--basins-samples``, written by
    ``--part alanine-internal --save-samples``) go through
    :func:`~sciffusion.domains.boltzmann.anneal.cell_free_energy`: one minimisation per occupied
    30-degree (phi, psi) bin, one cell per distinct minimum (the nearest minimum of its own basin in
    (phi, psi)) with a chart whitened there, each cell's Boltzmann mass by annealed importance
    sampling from that chart's Laplace approximation (exact in expectation). The cells keep
    alanine's handedness and trans amides, and one rotamer of each methyl
    (:func:`~sciffusion.domains.boltzmann.anneal.alanine_cell_options`: the three rotamers are
    equivalent by the permutation of their hydrogens, a factor common to every cell that cancels in
    Delta F). ``--basins-seeds`` repeats the AIS on the same minima with independent streams."""
    from sciffusion.domains.boltzmann.anneal import alanine_cell_options, cell_free_energy
    from sciffusion.domains.boltzmann.cvs import phi_psi_alanine
    from sciffusion.domains.boltzmann.energies import alanine_dipeptide
    from sciffusion.domains.boltzmann.internal import InternalCoordinateEnergy, ZMatrix

    data = torch.load(args.basins_samples)
    solvent = data.get("solvent", "vacuum")  # samples saved before the option existed are vacuum ones
    energy, top, pos = alanine_dipeptide(solvent, platform_properties={"Threads": "1"})
    zm = ZMatrix.from_topology(top)
    pp = phi_psi_alanine()
    x_min0 = data["x_min"]
    # the sampler's chart, rebuilt exactly as the sampler built it (one OpenMM thread: deterministic);
    # its set-up calls were counted in the sampler's energy calls and are not counted again here
    soft = {zm.torsion_index(4, 6, 8, 14): 1.0, zm.torsion_index(6, 8, 14, 16): 1.0}
    ice0 = InternalCoordinateEnergy(energy, zm, x_min0, whiten=True, scale_overrides=soft)
    xs = ice0.to_cartesian(data["z"])
    with torch.no_grad():
        u_check = energy(xs)
    if not torch.allclose(u_check, data["u_cartesian"], atol=1e-6):
        raise RuntimeError("the rebuilt chart does not reproduce the saved samples' energies")
    energy.num_calls = 0
    t0 = time.perf_counter()
    opts = alanine_cell_options(zm, energy, x_min0)

    def in_b(cv):
        return (cv[:, 0] > 0) & (cv[:, 0] < 2)

    out = {"settings": {"samples": args.basins_samples, "sampler_run": data["run"], "solvent": solvent,
                        "particles": args.basins_particles, "temperatures": args.basins_temperatures,
                        "mala_steps": 1, "seeds": args.basins_seeds, "reference_calls": args.reference_calls}}
    rows, minima, minimise_calls = [], None, 0
    for seed in range(args.basins_seeds):
        t1 = time.perf_counter()
        try:
            res = cell_free_energy(energy, zm, xs, pp, in_b, generator=torch.Generator().manual_seed(seed),
                                   minima=minima, num_particles=args.basins_particles,
                                   num_temperatures=args.basins_temperatures, **opts)
        except ValueError as err:  # every minimum in one basin: the estimate does not exist, say so
            if minima is None and "needs a cell" in str(err):
                out["note"] = str(err)
                print(out["note"], flush=True)
                return out
            raise
        if minima is None:
            minima, minimise_calls = res.minima, res.energy_calls["minimise"]
            out["settings"].update(minimisation_starts=minima["starts"], minimisation_calls=minimise_calls,
                                   minimisation_wall_s=round(time.perf_counter() - t1, 1))
            out["minima"] = [{"phi": round(float(c[0]), 3), "psi": round(float(c[1]), 3), "u": round(float(u), 3),
                              "basin": "B" if int(b) else "A"}
                             for c, u, b in zip(minima["cv"], minima["energies"], minima["basin"])]
            out["laplace_delta_f"] = round(res.laplace_delta_f, 3)
            print("minima", out["minima"], flush=True)
        total = data["energy_calls"] + minimise_calls + res.energy_calls["charts"] + res.energy_calls["ais"]
        row = {"seed": seed, "delta_f": round(res.delta_f, 3), "stderr": round(res.stderr, 3),
               "p_b": round(res.p_b, 5), "ais_energy_calls": res.energy_calls["ais"],
               "chart_energy_calls": res.energy_calls["charts"], "total_energy_calls": total,
               "calls_over_reference": round(total / args.reference_calls, 3),
               "wall_s": round(time.perf_counter() - t1, 1),
               "cells": [{"log_z": round(r.log_normalizer, 3), "stderr": round(r.stderr, 3), "ess": round(r.ess, 1),
                          "inside": round(r.inside, 3), "acceptance": round(float(r.acceptance[:-1].mean()), 3)}
                         for r in res.runs]}
        rows.append(row)
        print("alanine basins", row, flush=True)
    dfs = torch.tensor([r["delta_f"] for r in rows])
    out["summary"] = {"mean_delta_f": round(float(dfs.mean()), 3),
                      "std_over_seeds": round(float(dfs.std()), 3) if len(rows) > 1 else None,
                      "sampler_energy_calls": data["energy_calls"], "minimise_calls": minimise_calls,
                      "wall_s_after_sampler": round(time.perf_counter() - t0, 1)}
    out["runs"] = rows
    print("alanine basins summary", out["summary"], "laplace", out["laplace_delta_f"], flush=True)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", choices=("analytic", "alanine-metad", "alanine-sampler", "alanine-internal",
                                      "alanine-basins"),
                   default="analytic")
    p.add_argument("--internal-runs", default="unbiased,well-tempered", help="alanine-internal: runs, comma-separated")
    p.add_argument("--internal-rounds", type=int, default=10)
    p.add_argument("--internal-buffer", type=int, default=4096)
    p.add_argument("--internal-samples", type=int, default=4000)
    p.add_argument("--internal-sigma-max", type=float, default=1.0, help="base noise reach, standardized units")
    p.add_argument("--internal-steps", type=int, default=50)
    p.add_argument("--internal-lr", type=float, default=1e-3)
    p.add_argument("--internal-height", type=float, default=0.2, help="hill height h0 in kT")
    p.add_argument("--no-whiten", action="store_true", help="diagonal Hessian scales only")
    p.add_argument("--internal-sequential", action="store_true", help="well-tempered decay within each round's hills")
    p.add_argument("--internal-cv-scale", type=float, default=1.0,
                   help="scale (rad) of the phi/psi coordinates instead of the Hessian's (0: Hessian)")
    p.add_argument("--refine-steps", default="", help="alanine-internal: resample-move refinement of each run's "
                   "samples, cumulative MALA step counts reported, comma-separated (e.g. 100,400; empty: none)")
    p.add_argument("--save-samples", default="", help="alanine-internal: save each run's samples to PREFIX_<run>.pt")
    p.add_argument("--basins-samples", default="", help="alanine-basins: a sampler's saved samples (.pt)")
    p.add_argument("--basins-particles", type=int, default=500)
    p.add_argument("--basins-temperatures", type=int, default=200)
    p.add_argument("--basins-seeds", type=int, default=3)
    p.add_argument("--reference-calls", type=int, default=2_000_000,
                   help="alanine-basins: the metadynamics reference's energy calls, for the ratio printed")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--metad-steps", type=int, default=1_500_000, help="2 fs steps (1.5e6 = 3 ns)")
    p.add_argument("--alanine-iterations", type=int, default=400)
    p.add_argument("--alanine-sigma-max", type=float, default=None, help="nm; default the system's 0.03")
    p.add_argument("--solvent", choices=("vacuum", "implicit"), default="vacuum",
                   help="alanine parts: vacuum or OBC1 implicit solvent (alanine-basins reads it from the samples)")
    p.add_argument("--tag", default="", help="suffix of the JSON file name")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    meta = {"command": "python benchmarks/boltzmann.py " + " ".join(sys.argv[1:] if argv is None else argv),
            "machine": platform.processor() or platform.machine(), "torch": torch.__version__,
            "threads": torch.get_num_threads()}
    if args.part == "analytic":
        seeds = list(range(args.seeds))
        result = {"double_well": double_well(seeds), "mueller_brown": mueller_brown(seeds)}
    elif args.part == "alanine-metad":
        result = {f"alanine_{args.solvent}": alanine_metad(args)}
    elif args.part == "alanine-basins":
        basins = alanine_basins(args)
        result = {f"alanine_{basins['settings']['solvent']}": basins}
    elif args.part == "alanine-internal":
        result = {f"alanine_{args.solvent}": alanine_internal(args)}
    else:
        result = {"alanine_vacuum": alanine_sampler(args)}
    result["meta"] = dict(meta, wall_s=round(time.perf_counter() - t0, 1))
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"boltzmann_{args.part}{args.tag}.json"
    path.write_text(json.dumps(result, indent=1, default=float))
    print(f"wrote {path} ({result['meta']['wall_s']} s)")


if __name__ == "__main__":
    main()
