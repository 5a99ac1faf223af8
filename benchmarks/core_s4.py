"""S4 (GDSS Alg. 2) against PC and Euler–Maruyama at equal NFE, on an exact constrained graph state.

The state is GDSS's (X, A): node features X (B, 4, 2) under VP with a node mask and a masked
symmetric adjacency A (B, 4, 4) under VE (``sciffusion.constraints``), the batch split into
4-node and 3-node graphs, Gaussian data on each subspace (``sciffusion.testing.SubspaceGaussian``)
and the exact eps. Every run starts from the exact noised law at t_max (``perturb``) and is scored
by the closed-form W2 between the fitted Gaussian of each component's coordinates at t_min and
the exact one, averaged over the two graph sizes and the two components; the Monte Carlo floor
is the same W2 for exact samples of the same size. S4 makes 1 model call per step, PC 2 (one
corrector), Euler–Maruyama 1: at equal NFE, S4 and EM take NFE steps and PC NFE/2.

Two grids: time-uniform (GDSS's ``linspace(T, eps, N)``) and quadratic (dense near the data).
CPU budget: about 10 minutes on one core (n = 3000 per graph size, NFE 50..400, 2 seeds, 2 grids).
Run: ``OMP_NUM_THREADS=1 python benchmarks/core_s4.py`` -> prints a table and writes
``benchmarks/results/core_s4.json``.
"""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path

import numpy as np
import torch

from sciffusion import VE, VP, Denoiser, JointProcess
from sciffusion.constraints import NodeMask, SymmetricAdjacency
from sciffusion.samplers import get_sampler
from sciffusion.schedules import quadratic, time_uniform
from sciffusion.testing import SubspaceGaussian, anisotropic_gaussian, empirical_w2_gaussian, mask_basis, symmetric_basis

N, F, n = 4, 2, 3000
NFES = [50, 100, 200, 400]
SEEDS = [0, 1]
RUNS = [("s4", {}, 1), ("pc", {}, 2), ("euler_maruyama", {}, 1)]


def _oracles():
    xs, adjs = [], []
    for k, nodes in enumerate([range(4), range(3)]):
        B = mask_basis(N, F, nodes)
        m, c = anisotropic_gaussian(d=B.shape[1], lo=0.1, hi=2.0, seed=10 + k)
        xs.append(SubspaceGaussian(B, m, c, (N, F)))
        B = symmetric_basis(N, nodes)
        m, c = anisotropic_gaussian(d=B.shape[1], lo=0.1, hi=2.0, seed=k)
        adjs.append(SubspaceGaussian(B, m, c, (N, N)))
    return xs, adjs


def _grouped(oracles, groups, process):
    models = [o.model(process) for o in oracles]

    def f(x, t):
        out = torch.zeros_like(x)
        for mdl, rows in zip(models, groups):
            if x[rows].shape[0]:
                out[rows] = mdl(x[rows], t[rows])
        return out

    return f


def main():
    t0 = time.perf_counter()
    mask = torch.ones(2 * n, N, dtype=torch.bool)
    mask[n:, 3] = False
    groups = [slice(0, n), slice(n, 2 * n)]
    xs, adjs = _oracles()
    p = JointProcess((VP(), VE())).constrain((NodeMask(mask), SymmetricAdjacency(mask)))
    mx, ma = _grouped(xs, groups, p.processes[0]), _grouped(adjs, groups, p.processes[1])
    den = Denoiser(lambda x, t: (mx(x[0], t), ma(x[1], t)), p, "eps")

    def score(out, ts):
        w = []
        for comp, oracles in ((0, xs), (1, adjs)):
            for o, rows in zip(oracles, groups):
                tgt = o.marginal_coords(p.processes[comp], ts[-1])
                w.append(empirical_w2_gaussian(o.coords(out[comp][rows]), tgt.means[0], tgt.covs[0]))
        return w  # X 4-node, X 3-node, A 4-node, A 3-node

    floor = []
    for s in range(5):
        g = torch.Generator().manual_seed(100 + s)
        tgts = [o.marginal_coords(p.processes[0], VP().t_min) for o in xs] + \
            [o.marginal_coords(p.processes[1], VP().t_min) for o in adjs]
        w = [empirical_w2_gaussian(q.sample(n, g), q.means[0], q.covs[0]) for q in tgts]
        floor.append(float(np.mean(w)))
    rows = []
    for grid, (name, opts, per_step), nfe in itertools.product((time_uniform, quadratic), RUNS, NFES):
        ts = grid(VP(), nfe // per_step)
        ws, parts = [], []
        for seed in SEEDS:
            g = torch.Generator().manual_seed(seed)
            x0 = (torch.cat([o.sample(n, g) for o in xs]), torch.cat([o.sample(n, g) for o in adjs]))
            x_T, _ = p.perturb(x0, ts[0], g)
            den.reset_nfe()
            out = get_sampler(name)(den, x_T, ts, generator=g, **opts)
            assert den.nfe == nfe, (name, nfe, den.nfe)
            w = score(out, ts)
            ws.append(float(np.mean(w)))
            parts.append(w)
        rows.append({"grid": grid.__name__, "sampler": name, "nfe": nfe, "steps": nfe // per_step,
                     "w2_mean": float(np.mean(ws)), "w2_seeds": ws,
                     "w2_x_mean": float(np.mean([w[:2] for w in parts])),
                     "w2_adj_mean": float(np.mean([w[2:] for w in parts]))})
        print(f"{grid.__name__:12s} {name:15s} NFE {nfe:4d} steps {nfe // per_step:4d}  W2 {np.mean(ws):.4f}  "
              f"(seeds {', '.join(f'{v:.4f}' for v in ws)}; X {rows[-1]['w2_x_mean']:.4f}, "
              f"A {rows[-1]['w2_adj_mean']:.4f})", flush=True)
    res = {"config": {"state": "X (B,4,2) VP + NodeMask, A (B,4,4) VE + SymmetricAdjacency(mask)",
                      "n_per_graph_size": n, "grids": ["time_uniform (GDSS's)", "quadratic"], "seeds": SEEDS,
                      "nfes": NFES,
                      "metric": "closed-form W2 of fitted Gaussian in noise-law coordinates, mean over "
                                "2 components x 2 graph sizes"},
           "floor_w2_mean": float(np.mean(floor)), "floor_w2_draws": floor, "rows": rows,
           "seconds": round(time.perf_counter() - t0, 1)}
    print(f"Monte Carlo floor (exact samples, 5 draws): {np.mean(floor):.4f} "
          f"(range {min(floor):.4f}-{max(floor):.4f}); {res['seconds']} s")
    out = Path(__file__).parent / "results" / "core_s4.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
