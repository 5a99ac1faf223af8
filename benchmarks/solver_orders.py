"""Measured convergence orders of every deterministic sampler on the exact Gaussian flow.

For each process (VP, EDM, Linear) and each deterministic fixed-grid sampler in ``SAMPLERS``:
d = 4 Gaussian data (variances 0.03..3, float64), 16 points drawn from the exact marginal at
ts[0], logSNR-uniform grid from lambda = -1 to t_min, RMS pathwise error against the exact
probability-flow map at NFE 80, 160, 320, and the fitted slope of log error vs log NFE. The
same setup as ``tests/core/test_samplers.py::test_pathwise_order`` (which asserts |slope -
order| < 0.3); ``--full-range`` also starts at t_max (lambda ~ -5), where the near-identity flow
at the noise end hides start-up errors and some slopes read high (pre-asymptotic).

Run: ``OMP_NUM_THREADS=1 python benchmarks/solver_orders.py`` -> prints a table and writes
``benchmarks/results/solver_orders.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from sciffusion.denoisers import Denoiser
from sciffusion.processes import EDM, VP, Linear
from sciffusion.samplers import SAMPLERS
from sciffusion.schedules import logsnr_uniform
from sciffusion.testing import GaussianMixture, anisotropic_gaussian, gaussian_flow_map

NFES = [80, 160, 320]


def measure(process, name, lam0):
    info = SAMPLERS[name]
    mean, cov = anisotropic_gaussian(d=4)
    gm = GaussianMixture.gaussian(mean, cov)
    den = Denoiser(gm.model(process, "eps"), process, "eps")
    t_max = None if lam0 is None else float(process.t_of_lam(torch.tensor(lam0, dtype=torch.float64)))
    nfes, errs = [], []
    for nfe in NFES:
        n = max(1, (nfe - info.extra_nfe) // info.nfe_per_step)
        ts = logsnr_uniform(process, n, t_max=t_max)
        x_T = gm.marginal(process, ts[0]).sample(16, torch.Generator().manual_seed(1))
        exact = gaussian_flow_map(x_T, mean, cov, process, ts[0], ts[-1])
        den.reset_nfe()
        out = info.fn(den, x_T, ts)
        nfes.append(den.nfe)
        errs.append(float((out - exact).pow(2).sum(1).mean().sqrt()))
    slope = -float(np.polyfit(np.log(nfes), np.log(errs), 1)[0])
    return {"sampler": name, "declared_order": info.order, "slope": round(slope, 3), "nfe": nfes,
            "rms_error": [float(f"{e:.3e}") for e in errs]}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--full-range", action="store_true", help="also measure from t_max (lambda ~ -5)")
    args = ap.parse_args()
    t0 = time.perf_counter()
    names = [k for k, v in SAMPLERS.items() if not v.stochastic and not v.adaptive]
    starts = {"lambda=-1": -1.0} | ({"t_max": None} if args.full_range else {})
    rows = []
    for label, lam0 in starts.items():
        for process in (VP(), EDM(), Linear()):
            for name in names:
                row = measure(process, name, lam0) | {"process": process.name, "start": label}
                rows.append(row)
    table = {}
    for r in rows:
        table.setdefault((r["start"], r["sampler"]), {})[r["process"]] = r["slope"]
    print(f"{'start':10s} {'sampler':14s} {'order':>5s} {'vp':>6s} {'edm':>6s} {'linear':>6s}")
    for (start, name), s in table.items():
        print(f"{start:10s} {name:14s} {SAMPLERS[name].order:5d} {s['vp']:6.2f} {s['edm']:6.2f} {s['linear']:6.2f}")
    out = Path(__file__).parent / "results" / "solver_orders.json"
    out.write_text(json.dumps({"nfe": NFES, "rows": rows, "seconds": round(time.perf_counter() - t0, 1)}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
