"""Coverage of the bridges bootstrap intervals, and recovery of the repressilator's Hill exponent.

Part 1 (coverage). Simulate ``--datasets`` independent Lotka-Volterra snapshot data sets with
known parameters (the README's example: alpha=1, beta=0.4, gamma=0.4, delta=0.1, sigma=0.1,
x0 = (5, 4) +- 0.03, snapshots at t = 0, 2, 4 of ``--n`` individuals each), fit each with
``fit_bridge`` (6 passes) and form nominal 90% bootstrap intervals from ``--boot`` replicates
(``bootstrap``, converged replicates only). Coverage = fraction of data sets whose interval holds
the true value, per parameter; its binomial standard error is printed beside it
(sqrt(0.9 * 0.1 / datasets) = 0.067 at 20 data sets). Three intervals from the same replicates,
all on the log scale (``bootstrap_interval``): normal-theory with a Student quantile
(``bootstrap``'s default), percentile and basic. ``--merge`` recomputes all three from the stored
replicates of earlier runs.

Part 2 (repressilator). Euler-Maruyama paths with n = 3.3, k = 1.17 on the observation grid,
fitted by autograd maximum likelihood from a start 20-40% off; estimates, standard errors
(inverse observed information) and z-scores are printed.

CPU budget: one core (run with OMP_NUM_THREADS=1); at the defaults (n=150 per snapshot, 20
replicates, grid step 0.1) a data set takes 1-2 minutes on a shared core, so 20 data sets take
30-40 minutes. Writes ``benchmarks/results/bridges_coverage.json`` after every data set.

    OMP_NUM_THREADS=1 python benchmarks/bridges_coverage.py --datasets 20 --boot 20 --n 150 --max-step 0.1
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from sciffusion.domains.schrodinger_bridge import (LotkaVolterra, Repressilator, as_snapshots, bootstrap,
                                                   bootstrap_interval, fit_bridge, make_grid)
from sciffusion.domains.schrodinger_bridge.bridge import INTERVAL_METHODS

F64 = torch.float64
TRUE = {"alpha": 1.0, "beta": 0.4, "gamma": 0.4, "delta": 0.1}
OUT = Path(__file__).parent / "results" / "bridges_coverage.json"


def simulate(n: int, seed: int):
    truth = LotkaVolterra(**TRUE, sigma=0.1)
    g = torch.Generator().manual_seed(seed)
    times = [0.0, 2.0, 4.0]
    x0 = torch.tensor([5.0, 4.0], dtype=F64) + 0.03 * torch.randn(len(times) * n, 2, generator=g, dtype=F64)
    paths = truth.simulate(x0, times, generator=g, max_step=1e-3)
    return as_snapshots([paths[k * n:(k + 1) * n, k] for k in range(len(times))], times)


def repressilator_recovery(seed: int = 11) -> dict:
    truth = Repressilator(0.2, 5.0, 1.0, hill=3.3, k=1.17, sigma=0.1)
    g = torch.Generator().manual_seed(seed)
    x0 = torch.tensor([1.0, 2.0, 3.0], dtype=F64) + 0.3 * torch.rand(200, 3, generator=g, dtype=F64)
    ts = make_grid(0.0, 3.0, 0.01)
    paths = truth.simulate(x0, ts, generator=g, max_step=0.01)
    fit = Repressilator(0.3, 4.0, 0.7, hill=2.0, k=0.8, sigma=0.1).refit(paths, ts)
    se = fit.standard_errors(paths, ts)
    return {"truth": truth.params(), "estimate": fit.params(),
            "standard_error": dict(zip(fit.names, se.tolist())),
            "z": dict(zip(fit.names, ((fit.theta - truth.theta) / se).tolist())),
            "setup": "200 paths, t in [0, 3], Euler-Maruyama at h = 0.01 observed at every step"}


def _coverage(rows: list, level: float) -> dict:
    """Coverage per interval method and parameter, recomputed from each data set's replicates."""
    names = list(TRUE)
    truth = torch.tensor([TRUE[k] for k in names], dtype=F64)
    logs = torch.ones(len(names), dtype=torch.bool)  # every LV rate is positive: log scale
    out = {}
    for method in INTERVAL_METHODS:
        hits = []
        for r in rows:
            lo, hi = bootstrap_interval(torch.tensor(r["estimate"], dtype=F64), torch.tensor(r["replicates"], dtype=F64),
                                        level=level, method=method, log_scale=logs)
            hits.append(((lo <= truth) & (truth <= hi)).to(F64))
        out[method] = dict(zip(names, torch.stack(hits).mean(0).tolist()))
    return out


def _summarise(report: dict) -> None:
    names = list(TRUE)
    rows = report["datasets"]
    m = len(rows)
    for method, cov in _coverage(rows, report["level"]).items():
        report[f"coverage_{method}"] = cov
    report["coverage_se"] = math.sqrt(report["level"] * (1 - report["level"]) / m)
    report["failed_replicates"] = sum(r["num_failed"] for r in rows)
    print(f"coverage over {m} data sets of nominal {report['level']:.0%} intervals "
          f"(binomial s.e. {report['coverage_se']:.3f}):")
    for method in INTERVAL_METHODS:
        print(f"  {method:<10} (log scale): {json.dumps(report[f'coverage_{method}'])}")
    print(f"failed or unconverged replicates: {report['failed_replicates']} of {m * report['boot']}")
    truth = torch.tensor([TRUE[k] for k in names], dtype=F64)
    est = torch.tensor([r["estimate"] for r in rows], dtype=F64)
    boot_sd = torch.stack([torch.tensor(r["replicates"], dtype=F64).std(0) for r in rows]).mean(0)
    report["estimate_sd_rel"] = dict(zip(names, (est.std(0) / truth).tolist()))
    report["bootstrap_sd_rel"] = dict(zip(names, (boot_sd / truth).tolist()))
    report["estimate_bias_rel"] = dict(zip(names, ((est - truth) / truth).mean(0).tolist()))
    fmt = lambda d: ", ".join(f"{k} {v:.4f}" for k, v in d.items())  # noqa: E731
    print(f"spread of the {m} estimates (sd / truth):  {fmt(report['estimate_sd_rel'])}")
    print(f"mean bootstrap sd / truth:               {fmt(report['bootstrap_sd_rel'])}")
    print(f"mean relative error of the estimates:    {fmt(report['estimate_bias_rel'])}")


def merge(parts, out: Path) -> None:
    reports = [json.loads(Path(p).read_text()) for p in parts]
    merged = dict(reports[0])
    merged["datasets"] = sorted((r for rep in reports for r in rep["datasets"]), key=lambda r: r["dataset"])
    merged["parts"] = [str(p) for p in parts]
    merged["seconds"] = sum(rep.get("seconds", 0.0) for rep in reports)
    merged["command"] = reports[0]["command"] + " (run in parts with --start, combined with --merge)"
    _summarise(merged)
    out.write_text(json.dumps(merged, indent=2, allow_nan=False))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", type=int, default=20)
    ap.add_argument("--boot", type=int, default=20)
    ap.add_argument("--n", type=int, default=150, help="individuals per snapshot")
    ap.add_argument("--level", type=float, default=0.9)
    ap.add_argument("--max-step", type=float, default=0.1, help="bridge / LNA grid step")
    ap.add_argument("--start", type=int, default=0, help="index of the first data set (to split a run in parts)")
    ap.add_argument("--out", type=Path, default=OUT, help="JSON to write")
    ap.add_argument("--merge", type=Path, nargs="+", help="combine part JSONs into --out and print the coverage")
    ap.add_argument("--resample", choices=("snapshots", "model"), default="snapshots",
                    help="nonparametric (resample snapshots) or parametric (simulate the fitted reference) bootstrap")
    args = ap.parse_args()
    if args.merge:
        merge(args.merge, args.out)
        return
    t_start = time.perf_counter()
    report = {"command": f"OMP_NUM_THREADS=1 python benchmarks/bridges_coverage.py --datasets {args.datasets} "
                         f"--boot {args.boot} --n {args.n} --max-step {args.max_step} --resample {args.resample}",
              "resample": args.resample,
              "level": args.level, "truth": TRUE, "n": args.n, "boot": args.boot, "max_step": args.max_step,
              "repressilator": repressilator_recovery(), "datasets": []}
    print("repressilator (n=3.3, k=1.17):", json.dumps(report["repressilator"]["estimate"]),
          "z:", json.dumps({k: round(v, 2) for k, v in report["repressilator"]["z"].items()}), flush=True)
    names = list(TRUE)
    truth = torch.tensor([TRUE[k] for k in names], dtype=F64)
    for i in range(args.start, args.start + args.datasets):
        t0 = time.perf_counter()
        snaps = simulate(args.n, seed=1000 + i)
        g = torch.Generator().manual_seed(i)
        res = fit_bridge(snaps, LotkaVolterra(sigma=0.1), iterations=6, generator=g, max_step=args.max_step)
        bs = bootstrap(snaps, res, num_boot=args.boot, level=args.level, generator=g, method="basic",
                       resample=args.resample)  # the method only shapes lower/upper; _coverage redoes all three
        est, lo, hi = bs["estimate"], bs["lower"], bs["upper"]
        # the percentile interval from the same replicates (positive rates: log scale = any monotone scale)
        q = torch.tensor([(1 - args.level) / 2, (1 + args.level) / 2], dtype=F64)
        p_lo, p_hi = torch.quantile(bs["samples"], q, dim=0)
        row = {"dataset": i, "converged": res.converged, "estimate": est.tolist(), "basic_lower": lo.tolist(),
               "basic_upper": hi.tolist(), "percentile_lower": p_lo.tolist(), "percentile_upper": p_hi.tolist(),
               "replicates": bs["samples"].tolist(), "num_failed": bs["num_failed"],
               "covered": ((p_lo <= truth) & (truth <= p_hi)).tolist(),
               "covered_basic": ((lo <= truth) & (truth <= hi)).tolist(),
               "seconds": round(time.perf_counter() - t0, 1)}
        report["datasets"].append(row)
        m = len(report["datasets"])
        cov = {k: sum(r["covered"][j] for r in report["datasets"]) / m for j, k in enumerate(names)}
        cov_b = {k: sum(r["covered_basic"][j] for r in report["datasets"]) / m for j, k in enumerate(names)}
        report["coverage_percentile"], report["coverage_basic"] = cov, cov_b
        report["coverage_se"] = math.sqrt(args.level * (1 - args.level) / m)
        report["failed_replicates"] = sum(r["num_failed"] for r in report["datasets"])
        report["seconds"] = round(time.perf_counter() - t_start, 1)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2, allow_nan=False))
        print(f"data set {i}: covered {row['covered']} basic {row['covered_basic']} failed {bs['num_failed']} "
              f"({row['seconds']} s)", flush=True)
    _summarise(report)
    args.out.write_text(json.dumps(report, indent=2, allow_nan=False))
    print(f"{report['seconds']} s in all")


if __name__ == "__main__":
    main()
