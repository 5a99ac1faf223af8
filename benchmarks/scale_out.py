"""Scale-out throughput of ``fit`` and of sharded sampling at 1 and 2 processes (torchrun, gloo, CPU).

Each configuration launches ``torchrun --standalone --nproc-per-node P -m sciffusion.distributed``
(the package's own launch self-check, :mod:`sciffusion.distributed`): ``fit`` of an MLP denoiser
(8-d exact Gaussian data, DSM loss) for ``--steps`` steps of ``--batch-size`` rows *per rank*
(weak scaling: the global batch grows with P), then ``--samples`` DPM-Solver++(2M) samples drawn
with ``sample_sharded`` (strong scaling: the same total split over the ranks). Rank 0 times both
between barriers and reports rows/s and samples/s; this script quotes the 2-process / 1-process
ratios of the best of ``--repeats`` runs per configuration, with 1 and 2 processes alternated so
that a change in the machine's load hits both.

CPU budget: one torch thread per rank (OMP_NUM_THREADS=1); about 3 minutes at the defaults on the
2-core machine this was written on, which ~8 engineers share: the ratio is bounded by 2 there and
by whatever the others run at the same time (the load average is recorded). No GPU was available
in the session that wrote this, so no NCCL/GPU figure exists; on a GPU node the same command with
``--backend nccl`` applies.

    OMP_NUM_THREADS=1 python benchmarks/scale_out.py            # writes benchmarks/results/scale_out.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def launch(nproc: int, args, out: Path) -> dict:
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--standalone", f"--nproc-per-node={nproc}", "-m", "sciffusion.distributed",
           "--out", str(out), "--steps", str(args.steps), "--batch-size", str(args.batch_size),
           "--samples", str(args.samples), "--sample-steps", str(args.sample_steps),
           "--chunk-size", str(args.chunk_size), "--data", str(args.data)]
    if args.backend:
        cmd += ["--backend", args.backend]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, timeout=args.timeout, env={**os.environ, "OMP_NUM_THREADS": "1"},
                   stdout=subprocess.DEVNULL)
    summary = json.loads((out / "summary.json").read_text())
    summary["launch_wall_seconds"] = time.perf_counter() - t0
    return summary


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=256, help="rows per rank per fit step")
    p.add_argument("--data", type=int, default=8192)
    p.add_argument("--samples", type=int, default=16384)
    p.add_argument("--sample-steps", type=int, default=40)
    p.add_argument("--chunk-size", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--backend", choices=["gloo", "nccl"], default=None)
    p.add_argument("--timeout", type=float, default=600)
    p.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run)")
    p.add_argument("--out", type=Path, default=HERE / "results" / "scale_out.json")
    args = p.parse_args()
    if args.quick:
        args.steps, args.samples, args.sample_steps, args.repeats = 20, 2048, 10, 1
    runs = {1: [], 2: []}
    load = {"before": os.getloadavg()}
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(args.repeats):
            for nproc in (1, 2):
                s = launch(nproc, args, Path(tmp) / f"p{nproc}_{k}")
                runs[nproc].append(s)
                print(f"P={nproc} run {k}: fit {s['fit_rows_per_s']:.0f} rows/s, "
                      f"sampling {s['samples_per_s']:.0f} samples/s, W2 {s['w2_trained_vs_exact_law']:.3f}",
                      flush=True)
    load["after"] = os.getloadavg()
    best = {n: {"fit_rows_per_s": max(r["fit_rows_per_s"] for r in rs),
                "samples_per_s": max(r["samples_per_s"] for r in rs)} for n, rs in runs.items()}
    result = {
        "command": "OMP_NUM_THREADS=1 python benchmarks/scale_out.py" + (" --quick" if args.quick else ""),
        "settings": {k: v for k, v in vars(args).items() if k not in ("out",)},
        "machine": {"cpu_count": os.cpu_count(), "loadavg_1_5_15": load,
                    "note": "2 CPU cores shared with ~8 other engineers; 1 torch thread per rank"},
        "gpu": "not available in this session: no NCCL/GPU run was possible",
        "best": best,
        "ratio_fit_rows_per_s_2_over_1": best[2]["fit_rows_per_s"] / best[1]["fit_rows_per_s"],
        "ratio_samples_per_s_2_over_1": best[2]["samples_per_s"] / best[1]["samples_per_s"],
        "runs": {str(n): rs for n, rs in runs.items()},
    }
    result["settings"]["out"] = str(args.out.relative_to(HERE.parent)) if args.out.is_relative_to(HERE.parent) else str(args.out)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str))
    print(f"fit throughput ratio (2 procs / 1, weak scaling, {args.batch_size} rows per rank): "
          f"{result['ratio_fit_rows_per_s_2_over_1']:.2f}")
    print(f"sampling throughput ratio (2 procs / 1, {args.samples} samples split over the ranks): "
          f"{result['ratio_samples_per_s_2_over_1']:.2f}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
