"""A free-energy pipeline: sample a Boltzmann distribution from its energy with the well-tempered
adjoint sampler, reweight, and estimate Delta F between two basins with error bars.

    python examples/free_energy_pipeline.py --out runs/dw                      # 2-D double well (exact answer known)
    python examples/free_energy_pipeline.py --system mueller-brown --cv x,y --basin "B: x > 0.2" --out runs/mb
    python examples/free_energy_pipeline.py --system alanine-dipeptide-vacuum --cv phi,psi \\
        --basin "B: 0 < phi < 2" --out runs/ala      # OpenMM; slow on a CPU (see benchmarks/RESULTS.md)

Writes to --out: checkpoint.pt (every round; a rerun with the same settings resumes, a changed
setting is refused by name), samples.pt, run.json, estimates.json (Delta F with the bias weights
exp(V/kT), with the sampler's exact path weights, and the bias grid's own estimate; for molecules
also the basin-cell estimate, ``cells``: the samples' minima, each cell's mass by annealed
importance sampling) and cv_histogram.png. For the double well the exact answer (quadrature) is printed beside them.
"""

import argparse
import json
import math
import sys
from pathlib import Path

import torch

from sciffusion.domains.boltzmann.cli import (SYSTEMS, build_system, cells_free_energy_from_samples,
                                              free_energy_from_samples, parse_cv_names, run_sample, save_samples)
from sciffusion.domains.boltzmann.free_energy import Basin


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--system", choices=SYSTEMS, default="double-well")
    p.add_argument("--cv", default="x1", help="comma-separated CVs of the system")
    p.add_argument("--basin", default="B: 0 < x1 < 10", help='basin B (A is the rest), e.g. "B: 0 < phi < 2"')
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--rounds", type=int, default=None, help="well-tempered rounds (default: the system's)")
    p.add_argument("--iterations", type=int, default=None, help="sampler iterations per round")
    p.add_argument("--final-iterations", type=int, default=None, help="iterations of the frozen-bias stage")
    p.add_argument("--samples", type=int, default=None, help="final samples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bootstrap", type=int, default=200)
    args = p.parse_args(argv)
    # everything is checked before any work or output
    try:
        names = parse_cv_names(args.system, args.cv)
        basin = Basin.parse(args.basin)
        unknown = sorted(set(basin.cv_names) - set(names))
        if unknown:
            raise ValueError(f"--basin uses {unknown}, which are not among --cv {names}")
        if args.rounds is not None and args.rounds < 0:
            raise ValueError(f"--rounds must be >= 0, got {args.rounds}")
        for flag, v in (("--iterations", args.iterations), ("--final-iterations", args.final_iterations),
                        ("--samples", args.samples)):
            if v is not None and v < 1:
                raise ValueError(f"{flag} must be >= 1, got {v}")
        if args.bootstrap < 1:
            raise ValueError(f"--bootstrap must be >= 1, got {args.bootstrap}")
        if args.out.exists() and not args.out.is_dir():
            raise ValueError(f"--out {args.out} exists and is not a directory")
    except ValueError as err:
        p.error(str(err))
    spec = build_system(args.system, names)
    res = run_sample(spec, out=args.out, seed=args.seed, rounds=args.rounds, iterations_per_round=args.iterations,
                     final_iterations=args.final_iterations, num_samples=args.samples, progress=True)
    save_samples(args.out, spec, res, vars(args) | {"out": str(args.out)})
    samples = torch.load(args.out / "samples.pt", weights_only=False)
    estimates = {}
    for weights in ("bias", "path"):
        try:
            estimates[weights] = free_energy_from_samples(samples, [args.basin], weights=weights,
                                                          n_bootstrap=args.bootstrap, seed=args.seed)
        except ValueError as err:  # e.g. a basin that no sample visits
            estimates[weights] = {"error": str(err)}
    if args.system.startswith("alanine-dipeptide"):  # the basins the samples reach, each cell integrated by AIS
        try:
            estimates["cells"] = cells_free_energy_from_samples(samples, args.basin, seed=args.seed, progress=True)
        except ValueError as err:  # e.g. every minimum in one basin
            estimates["cells"] = {"error": str(err)}
    if args.system == "double-well" and names == ["x1"] and args.basin == "B: 0 < x1 < 10":
        estimates["exact"] = {"delta_f": spec.energy.exact_delta_f(0.0), "p_b": spec.energy.exact_probability(0.0)}
    (args.out / "estimates.json").write_text(json.dumps(estimates, indent=1, default=float))
    for k, v in estimates.items():
        if "delta_f" in v:
            extra = f" +- {v['stderr']:.3f}" if "stderr" in v else ""
            print(f"{k:6s} Delta F(A->B) = {v['delta_f']:.3f}{extra} kT"
                  + (f"  (ESS {v['ess']:.0f}; bias grid {v.get('bias_grid_delta_f', float('nan')):.3f})"
                     if "ess" in v else ""))
        else:
            print(f"{k:6s} {v}")
    _plot(args.out / "cv_histogram.png", samples, names)
    print(f"wrote {args.out}")
    return 0


def _plot(path, samples, names):
    import matplotlib.pyplot as plt

    cv = samples["cv"][:, 0].numpy()
    fig, ax = plt.subplots(figsize=(4.5, 3))
    rng = (-math.pi, math.pi) if samples["periodic"][0] else (float(cv.min()), float(cv.max()))
    ax.hist(cv, bins=80, range=rng, density=True, alpha=0.3, label="raw (biased)")
    for key, label in (("log_weights", "bias weights"), ("path_log_weights", "path weights")):
        if samples[key] is not None:
            ax.hist(cv, bins=80, range=rng, density=True, histtype="step",
                    weights=torch.softmax(samples[key], 0).numpy(), label=label)
    ax.set_xlabel(names[0])
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
