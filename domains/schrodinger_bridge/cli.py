"""``sciffusion bridges ...`` commands and the tour section of the schrodinger_bridge domain.

Commands::

    sciffusion bridges simulate --reference lotka-volterra --params alpha=1 beta=0.4 gamma=0.4 delta=0.1 \\
        --sigma 0.1 --x0 5 4 --x0-std 0.03 --times 0 2 4 6 8 --n 300 --out snapshots.csv
    sciffusion bridges fit --data snapshots.csv --reference lotka-volterra --sigma 0.1 \\
        --predict-times 1 3 5 7 --bootstrap 10 --out bridges-out

``fit`` reads CSV (``--time-col``, ``--columns``) or AnnData ``.h5ad`` (``--time-key``,
``--embedding``) and writes ``params.json`` (parameters, bootstrap intervals, iteration history),
``predicted.csv`` (+ ``predicted.h5ad`` with ``--anndata``), ``trajectories.csv`` and figures.
"""

from __future__ import annotations

import json
import math
import logging
import time
from pathlib import Path

import torch

log = logging.getLogger(__name__)

_TRUE_OU = [[-0.5, -1.0], [1.0, -0.5]]
_TRUE_LV = {"alpha": 1.0, "beta": 0.4, "gamma": 0.4, "delta": 0.1}


def _parse_params(items) -> dict:
    out = {}
    for it in items or []:
        if "=" not in it:
            raise ValueError(f"--params entries look like name=value, got {it!r}")
        k, v = it.split("=", 1)
        out[k.strip()] = float(v)
    return out


def _cmd_simulate(args) -> int:
    from .data import write_csv
    from .references import get_reference

    params = _parse_params(args.params)
    dim = len(args.x0)
    if args.reference in ("linear", "ou"):
        A = torch.tensor(args.A, dtype=torch.float64).reshape(dim, dim) if args.A else torch.zeros(dim, dim)
        ref = get_reference(args.reference, dim, args.sigma, A=A)
    else:
        ref = get_reference(args.reference, dim, args.sigma, **params)
    g = torch.Generator().manual_seed(args.seed)
    K = len(args.times)
    # snapshots are destructive: every time gets its own individuals, simulated in one batch
    x0 = torch.tensor(args.x0, dtype=torch.float64) + args.x0_std * torch.randn(
        K * args.n, dim, generator=g, dtype=torch.float64)
    paths = ref.simulate(x0, args.times, generator=g, max_step=args.sim_step)
    xs = [paths[k * args.n:(k + 1) * args.n, k] for k in range(K)]
    write_csv(args.out, xs, args.times, columns=args.columns)
    print(f"wrote {args.out}: {len(args.times)} snapshots of {args.n} points from {ref}")
    return 0


def _load(args):
    from .data import from_anndata, read_csv

    path = Path(args.data)
    if not path.exists():
        raise FileNotFoundError(f"--data {path} does not exist")
    if path.suffix == ".h5ad":
        import anndata

        return from_anndata(anndata.read_h5ad(path), time_key=args.time_key, embedding=args.embedding,
                            n_components=args.n_components)
    return read_csv(path, time_col=args.time_col, columns=args.columns)


def _cmd_fit(args) -> int:
    from .bridge import bootstrap, fit_bridge
    from .data import to_anndata, write_csv
    from .plots import plot_snapshots, plot_trajectories, plot_vector_field
    from .references import get_reference

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    snaps = _load(args)
    held = [float(t) for t in args.held_out or []]
    if held:
        keep = [k for k, t in enumerate(snaps.times.tolist()) if all(abs(t - h) > 1e-9 for h in held)]
        test = {t: snaps.at(t) for t in held}
        snaps = snaps.subset(keep)
    else:
        test = {}
    ref = get_reference(args.reference, snaps.dim, args.sigma, **_parse_params(args.params))
    g = torch.Generator().manual_seed(args.seed)
    t0 = time.perf_counter()
    res = fit_bridge(snaps, ref, iterations=args.iterations, max_step=args.max_step, refit=args.refit,
                     generator=g, progress=not args.no_progress)
    report = {"reference": res.reference.name, "params": res.reference.params(),
              "sigma": res.reference.sigma, "converged": res.converged,
              "history": [{k: v for k, v in h.items()} for h in res.history],
              "seconds": round(time.perf_counter() - t0, 2)}
    if args.bootstrap:
        bs = bootstrap(snaps, res, num_boot=args.bootstrap, generator=g)
        report["bootstrap"] = {"level": 0.9, "estimate": bs["estimate"].tolist(),
                               "lower": bs["lower"].tolist(), "upper": bs["upper"].tolist()}
    times = sorted(set([float(t) for t in args.predict_times or []] + held))
    predicted = {}
    if times:
        inside = [t for t in times if t >= float(snaps.times[0])]
        preds = res.predict(inside, generator=g)
        predicted = dict(zip(inside, preds))
        write_csv(out / "predicted.csv", list(predicted.values()), list(predicted.keys()),
                  columns=args.columns)
        if args.anndata:
            to_anndata(list(predicted.values()), list(predicted.keys())).write_h5ad(out / "predicted.h5ad")
    if test:
        from sciffusion.testing import sliced_w1

        report["held_out_sliced_w1"] = {str(t): sliced_w1(predicted[t], x) for t, x in test.items()}
    # trajectories: long format, one row per (path, time)
    n_keep = min(args.num_trajectories, res.paths.shape[0])
    P = res.paths[:n_keep]
    import pandas as pd

    rows = pd.DataFrame(P.reshape(-1, P.shape[-1]).numpy(),
                        columns=args.columns or [f"x{i}" for i in range(P.shape[-1])])
    rows.insert(0, "time", res.ts.repeat(n_keep).numpy())
    rows.insert(0, "path", torch.arange(n_keep).repeat_interleave(res.ts.shape[0]).numpy())
    rows.to_csv(out / "trajectories.csv", index=False)
    figs = {"snapshots.png": plot_snapshots(snaps, predicted),
            "trajectories.png": plot_trajectories(res.ts, res.paths, snaps)}
    if snaps.dim >= 2:
        figs["vector_field.png"] = plot_vector_field(res.reference.drift, snaps,
                                                     title=f"fitted {res.reference.name} drift")
    for name, fig in figs.items():
        fig.savefig(out / name, dpi=110)
    # strict JSON for other tools: the first iteration's parameter change is infinite -> null
    (out / "params.json").write_text(json.dumps(_finite(report), indent=2, default=float, allow_nan=False))
    print(json.dumps({"params": report["params"], "converged": res.converged,
                      **({"bootstrap": report["bootstrap"]} if "bootstrap" in report else {}),
                      **({"held_out_sliced_w1": report["held_out_sliced_w1"]} if test else {})},
                     indent=2, default=float))
    print(f"outputs in {out}")
    return 0


def register_cli(subparsers) -> None:
    """Add the ``bridges`` command group (``fit``, ``simulate``)."""
    p = subparsers.add_parser("bridges", help="Schrödinger bridges with iterative reference refinement")
    sub = p.add_subparsers(dest="bridges_command", required=True)

    f = sub.add_parser("fit", help="infer trajectories and reference parameters from snapshots")
    f.add_argument("--data", required=True, help="CSV (time column + coordinates) or .h5ad")
    f.add_argument("--reference", default="brownian",
                   help="brownian | linear | lotka-volterra | repressilator | potential")
    f.add_argument("--sigma", type=float, default=0.1, help="reference noise level (fixed)")
    f.add_argument("--params", nargs="*", help="initial parameters name=value")
    f.add_argument("--iterations", type=int, default=6)
    f.add_argument("--refit", choices=["pairs", "paths"], default="pairs")
    f.add_argument("--max-step", type=float, default=0.05)
    f.add_argument("--time-col", default="time")
    f.add_argument("--columns", nargs="*", help="coordinate columns (default: all numeric)")
    f.add_argument("--time-key", default="time", help="AnnData .obs time column")
    f.add_argument("--embedding", default="X_pca", help="AnnData .obsm key (or X)")
    f.add_argument("--n-components", type=int)
    f.add_argument("--held-out", nargs="*", type=float, help="snapshot times to leave out and score")
    f.add_argument("--predict-times", nargs="*", type=float)
    f.add_argument("--bootstrap", type=int, default=0, help="bootstrap replicates (0: none)")
    f.add_argument("--num-trajectories", type=int, default=200)
    f.add_argument("--anndata", action="store_true", help="also write predicted.h5ad")
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--out", default="bridges-out")
    f.add_argument("--no-progress", action="store_true")
    f.set_defaults(func=_cmd_fit)

    s = sub.add_parser("simulate", help="snapshots of a reference SDE (demo / ground truth data)")
    s.add_argument("--reference", default="lotka-volterra")
    s.add_argument("--params", nargs="*")
    s.add_argument("--A", nargs="*", type=float, help="linear drift matrix, row-major")
    s.add_argument("--sigma", type=float, default=0.1)
    s.add_argument("--x0", nargs="+", type=float, required=True)
    s.add_argument("--x0-std", type=float, default=0.03)
    s.add_argument("--times", nargs="+", type=float, required=True)
    s.add_argument("--n", type=int, default=300)
    s.add_argument("--columns", nargs="*")
    s.add_argument("--sim-step", type=float, default=1e-3)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", default="snapshots.csv")
    s.set_defaults(func=_cmd_simulate)


def tour(out_dir: Path, quick: bool) -> dict:
    """Rotating OU (and, full mode, Lotka–Volterra): refined vs vanilla SB on held-out times."""
    from sciffusion.testing import w1_exact

    from .bridge import fit_bridge
    from .data import as_snapshots
    from .plots import plot_snapshots, plot_trajectories, plot_vector_field
    from .references import Brownian, Linear, LotkaVolterra

    t_start = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    rows, figures = [], []
    cases = [("rotating OU", Linear(torch.tensor(_TRUE_OU), sigma=0.2), (2.0, 0.0), 0.2,
              Linear(torch.zeros(2, 2), sigma=0.2))]
    if not quick:
        cases.append(("Lotka-Volterra", LotkaVolterra(**_TRUE_LV, sigma=0.1), (5.0, 4.0), 0.03,
                      LotkaVolterra(sigma=0.1)))
    n = 150 if quick else 400
    times = torch.arange(9, dtype=torch.float64)
    for name, truth, m0, s0, family in cases:
        def draw():
            x0 = torch.tensor(m0, dtype=torch.float64) + s0 * torch.randn(n, 2, generator=g, dtype=torch.float64)
            return truth.simulate(x0, times, generator=g, max_step=0.01)
        P, Q = draw(), draw()
        train = as_snapshots([P[:, k] for k in range(0, 9, 2)], times[::2])
        held = [1.0, 3.0, 5.0, 7.0]
        for label, ref, iters in [("refined", family, 3 if quick else 5), ("vanilla SB", Brownian(truth.sigma), 1)]:
            res = fit_bridge(train, ref, iterations=iters, generator=g, max_step=0.1 if quick else 0.05)
            preds = res.predict(held, generator=g)
            ratios = [w1_exact(p, Q[:, int(t)]) / w1_exact(P[:, int(t)], Q[:, int(t)]) for p, t in zip(preds, held)]
            err = float((res.reference.vector() - truth.vector()).norm() / truth.vector().norm()) \
                if label == "refined" else float("nan")
            rows.append({"system": name, "method": label, "param_rel_err": round(err, 4),
                         "max_W1_over_floor": round(max(ratios), 3),
                         "mean_W1_over_floor": round(sum(ratios) / len(ratios), 3)})
            if label == "refined":
                tag = name.split()[0].lower().replace("-", "_")
                for fname, fig in [(f"{tag}_snapshots.png", plot_snapshots(train, dict(zip(held, preds)))),
                                   (f"{tag}_trajectories.png", plot_trajectories(res.ts, res.paths, train)),
                                   (f"{tag}_vector_field.png", plot_vector_field(res.reference.drift, train))]:
                    fig.savefig(out_dir / fname, dpi=100)
                    figures.append(fname)
    import matplotlib.pyplot as plt

    plt.close("all")
    return {"section": "schrodinger_bridge", "seconds": round(time.perf_counter() - t_start, 1),
            "rows": rows, "figures": figures,
            "note": "W1 to a fresh true sample at held-out odd times / two-sample floor (1 = perfect)"}


def _finite(obj):
    """``obj`` with non-finite floats replaced by ``None`` (JSON has no NaN or Infinity)."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if hasattr(obj, "tolist"):  # numpy / torch scalars and arrays
        return _finite(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
