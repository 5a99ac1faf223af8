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

import inspect
import json
import math
import logging
import time
from pathlib import Path

from sciffusion.cli import (CLIError, finite_float, nonnegative_float, nonnegative_int, positive_float,
                            positive_int)

log = logging.getLogger(__name__)

_TRUE_OU = [[-0.5, -1.0], [1.0, -0.5]]
_TRUE_LV = {"alpha": 1.0, "beta": 0.4, "gamma": 0.4, "delta": 0.1}
REFERENCE_CHOICES = ("brownian", "linear", "ou", "lotka-volterra", "repressilator", "potential")
_DIMS = {"lotka-volterra": 2, "repressilator": 3}


def _reference_class(name: str):
    from .references import REFERENCES

    return REFERENCES[name]


def _param_names(name: str) -> dict:
    """Parameters ``--params`` may set for reference ``name`` -> their defaults."""
    if name in ("brownian", "linear", "ou"):
        return {}
    sig = inspect.signature(_reference_class(name).__init__)
    skip = {"self", "sigma", "dim", "fixed", "seed"}
    return {k: p.default for k, p in sig.parameters.items() if k not in skip}


def _parse_params(items, reference: str) -> dict:
    """``name=value`` pairs checked against the reference's parameters (a misspelling is named)."""
    allowed = _param_names(reference)
    out = {}
    for it in items or []:
        if "=" not in it:
            raise CLIError(f"--params entries look like name=value, got {it!r}")
        k, v = (u.strip() for u in it.split("=", 1))
        if k not in allowed:
            hint = f"; {reference} takes {', '.join(allowed)}" if allowed else f"; {reference} takes none"
            raise CLIError(f"--params: unknown parameter {k!r}{hint}")
        try:
            val = float(v)
        except ValueError:
            raise CLIError(f"--params {k}: expected a number, got {v!r}") from None
        if not math.isfinite(val):
            raise CLIError(f"--params {k}: expected a finite number, got {v!r}")
        default = allowed[k]
        if isinstance(default, int) and not isinstance(default, bool):
            if val != int(val):
                raise CLIError(f"--params {k}: expected an integer, got {v!r}")
            val = int(val)
        out[k] = val
    return out


def _check_times(times, flag: str) -> None:
    if any(b <= a for a, b in zip(times[:-1], times[1:])):
        raise CLIError(f"{flag} must be strictly increasing, got {' '.join(f'{t:g}' for t in times)}")


def _check_out_file(path: Path, flag: str = "--out") -> None:
    if path.exists() and path.is_dir():
        raise CLIError(f"{flag} {path} is a folder; give a file name")
    if not path.parent.exists():
        raise CLIError(f"{flag} {path}: the folder {path.parent} does not exist")


def _check_out_dir(path: Path, flag: str = "--out") -> None:
    if path.exists() and not path.is_dir():
        raise CLIError(f"{flag} {path} exists and is not a folder")


def _cmd_simulate(args) -> int:
    import torch

    from .data import write_csv
    from .references import get_reference

    params = _parse_params(args.params, args.reference)
    dim = len(args.x0)
    need = _DIMS.get(args.reference)
    if need is not None and dim != need:
        raise CLIError(f"--x0: {args.reference} needs {need} coordinates, got {dim}")
    if args.columns and len(args.columns) != dim:
        raise CLIError(f"--columns: {len(args.columns)} names for {dim} coordinates")
    if args.A and args.reference not in ("linear", "ou"):
        raise CLIError("--A applies to --reference linear only")
    if args.reference in ("linear", "ou") and args.A and len(args.A) != dim * dim:
        raise CLIError(f"--A: {len(args.A)} entries for a {dim}x{dim} matrix (give {dim * dim}, row-major)")
    _check_times(args.times, "--times")
    out = Path(args.out)
    _check_out_file(out)
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
    write_csv(out, xs, args.times, columns=args.columns)
    print(f"wrote {out}: {len(args.times)} snapshots of {args.n} points from {ref} (time in the units of the "
          f"rates' inverse)")
    return 0


def _load(args):
    from .data import from_anndata, read_csv

    path = Path(args.data)
    if not path.is_file():
        raise CLIError(f"--data {path}: no such file")
    if path.suffix == ".h5ad":
        import anndata

        return from_anndata(anndata.read_h5ad(path), time_key=args.time_key, embedding=args.embedding,
                            n_components=args.n_components)
    return read_csv(path, time_col=args.time_col, columns=args.columns)


def _validate_fit(args):
    """Every check that needs no fitting: data readable, held-out and predicted times usable,
    parameters known; returns ``(train snapshots, held-out {t: x}, reference)``."""
    from .references import get_reference

    out = Path(args.out)
    _check_out_dir(out)
    if args.bootstrap == 1:
        raise CLIError("--bootstrap: give 0 (none) or at least 2 replicates")
    params = _parse_params(args.params, args.reference)
    snaps = _load(args)
    times = snaps.times.tolist()
    held = [float(t) for t in args.held_out or []]
    for h in held:
        if not any(abs(t - h) <= 1e-9 for t in times):
            raise CLIError(f"--held-out {h:g} is not a snapshot time of the data ({' '.join(f'{t:g}' for t in times)})")
    keep = [k for k, t in enumerate(times) if all(abs(t - h) > 1e-9 for h in held)]
    if len(keep) < 2:
        raise CLIError(f"--held-out leaves {len(keep)} snapshot(s) to train on; a bridge needs at least 2")
    lo, hi = times[keep[0]], times[keep[-1]]
    for h in held:
        if not lo < h < hi:
            raise CLIError(f"--held-out {h:g} lies outside the training times [{lo:g}, {hi:g}]: a held-out time "
                           "is scored on the bridges between training snapshots, so it must lie strictly inside")
    for t in args.predict_times or []:
        if t < lo:
            raise CLIError(f"--predict-times {t:g} is before the first training snapshot ({lo:g}); bridges "
                           "predict inside the observed range and forward from its end only")
    test = {h: snaps.at(h) for h in held}
    train = snaps.subset(keep) if held else snaps
    if args.columns is not None and len(args.columns) != train.dim:
        raise CLIError(f"--columns: {len(args.columns)} names for {train.dim} coordinates")
    ref = get_reference(args.reference, train.dim, args.sigma, **params)
    return train, test, ref


def _cmd_fit(args) -> int:
    import torch

    train, test, ref = _validate_fit(args)
    from .bridge import bootstrap, fit_bridge
    from .data import to_anndata, write_csv
    from .plots import plot_snapshots, plot_trajectories, plot_vector_field

    out = Path(args.out)
    snaps = train
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
        names = list(res.reference.params()) if len(res.reference.params()) == bs["estimate"].numel() else None
        report["bootstrap"] = {"level": 0.9, "method": f"{bs['method']} interval, parametric bootstrap, "
                                                     "converged replicates only",
                               "parameters": names, "estimate": bs["estimate"].tolist(),
                               "lower": bs["lower"].tolist(), "upper": bs["upper"].tolist(),
                               "replicates": bs["num_boot"], "failed_replicates": bs["num_failed"],
                               "failures": bs["failures"]}
    held = sorted(test)
    times = sorted(set([float(t) for t in args.predict_times or []] + held))
    predicted = {}
    out.mkdir(parents=True, exist_ok=True)
    files = ["params.json", "trajectories.csv"]
    if times:
        preds = res.predict(times, generator=g)
        predicted = dict(zip(times, preds))
        write_csv(out / "predicted.csv", list(predicted.values()), list(predicted.keys()), columns=args.columns)
        files.append("predicted.csv")
        if args.anndata:
            to_anndata(list(predicted.values()), list(predicted.keys())).write_h5ad(out / "predicted.h5ad")
            files.append("predicted.h5ad")
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
    rows.to_csv(out / "trajectories.csv.tmp", index=False)
    (out / "trajectories.csv.tmp").replace(out / "trajectories.csv")
    labels = args.columns
    figs = {"snapshots.png": plot_snapshots(snaps, predicted, held_out=test, labels=labels,
                                            title=f"{res.reference.name} bridge: observed and predicted"),
            "trajectories.png": plot_trajectories(res.ts, res.paths, snaps, labels=labels,
                                                  title=f"{res.reference.name} bridge trajectories")}
    if snaps.dim >= 2:
        figs["vector_field.png"] = plot_vector_field(res.reference.drift, snaps, labels=labels,
                                                     title=f"fitted {res.reference.name} drift")
    import matplotlib.pyplot as plt

    for name, fig in figs.items():
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        files.append(name)
    report["files"] = files  # relative to the folder of params.json
    # strict JSON for other tools: the first iteration's parameter change is infinite -> null
    text = json.dumps(_finite(report), indent=2, default=float, allow_nan=False)
    (out / "params.json.tmp").write_text(text)
    (out / "params.json.tmp").replace(out / "params.json")
    print(json.dumps(_finite({"params": report["params"], "converged": res.converged,
                              **({"bootstrap": {k: report["bootstrap"][k] for k in
                                                ("parameters", "lower", "upper", "failed_replicates")}}
                                 if "bootstrap" in report else {}),
                              **({"held_out_sliced_w1": report["held_out_sliced_w1"]} if test else {})}),
                     indent=2, default=float))
    print(f"outputs in {out}")
    return 0


def register_cli(subparsers) -> None:
    """Add the ``bridges`` command group (``fit``, ``simulate``)."""
    p = subparsers.add_parser("bridges", help="Schrödinger bridges with iterative reference refinement",
                              description="Schrödinger bridges with iterative reference refinement "
                                          "(time in the data's own units throughout)")
    sub = p.add_subparsers(dest="bridges_command", required=True, metavar="COMMAND")

    f = sub.add_parser("fit", help="infer trajectories and reference parameters from snapshots")
    f.add_argument("--data", required=True, help="CSV (time column + coordinates) or AnnData .h5ad")
    f.add_argument("--reference", default="brownian", choices=REFERENCE_CHOICES, help="reference SDE family")
    f.add_argument("--sigma", type=positive_float, default=0.1,
                   help="reference noise level (fixed), coordinate units per sqrt(time)")
    f.add_argument("--params", nargs="*", metavar="NAME=VALUE",
                   help="initial parameters, e.g. alpha=1 beta=0.4 (names per reference)")
    f.add_argument("--iterations", type=positive_int, default=6, help="most coupling/refit passes")
    f.add_argument("--refit", choices=["pairs", "paths"], default="pairs",
                   help="maximum likelihood on coupled pairs or on bridge increments")
    f.add_argument("--max-step", type=positive_float, default=0.05, help="bridge grid step (time units)")
    f.add_argument("--time-col", default="time", help="CSV column with the observation time")
    f.add_argument("--columns", nargs="*", help="coordinate columns (default: all other numeric ones)")
    f.add_argument("--time-key", default="time", help="AnnData .obs time column")
    f.add_argument("--embedding", default="X_pca", help="AnnData .obsm key (or X)")
    f.add_argument("--n-components", type=positive_int, help="keep the first components of the embedding")
    f.add_argument("--held-out", nargs="*", type=finite_float, metavar="T",
                   help="snapshot times (inside the range) to leave out and score")
    f.add_argument("--predict-times", nargs="*", type=finite_float, metavar="T",
                   help="times to predict populations at (>= the first snapshot)")
    f.add_argument("--bootstrap", type=nonnegative_int, default=0,
                   help="bootstrap replicates for 90%% intervals (0: none; else >= 2)")
    f.add_argument("--num-trajectories", type=positive_int, default=200, help="rows of trajectories.csv")
    f.add_argument("--anndata", action="store_true", help="also write predicted.h5ad")
    f.add_argument("--seed", type=int, default=0, help="seed of all randomness")
    f.add_argument("--out", default="bridges-out", help="output folder")
    f.add_argument("--no-progress", action="store_true", help="no progress bar")
    f.set_defaults(func=_cmd_fit)

    s = sub.add_parser("simulate", help="snapshots of a reference SDE (demo / ground truth data)")
    s.add_argument("--reference", default="lotka-volterra", choices=REFERENCE_CHOICES, help="SDE family")
    s.add_argument("--params", nargs="*", metavar="NAME=VALUE", help="parameters, e.g. alpha=1 beta=0.4")
    s.add_argument("--A", nargs="*", type=finite_float, help="linear drift matrix, row-major")
    s.add_argument("--sigma", type=positive_float, default=0.1, help="noise level")
    s.add_argument("--x0", nargs="+", type=finite_float, required=True, help="mean starting point")
    s.add_argument("--x0-std", type=nonnegative_float, default=0.03, help="spread of the starting points")
    s.add_argument("--times", nargs="+", type=finite_float, required=True, help="snapshot times, increasing")
    s.add_argument("--n", type=positive_int, default=300, help="individuals per snapshot")
    s.add_argument("--columns", nargs="*", help="coordinate column names")
    s.add_argument("--sim-step", type=positive_float, default=1e-3, help="Euler-Maruyama step (time units)")
    s.add_argument("--seed", type=int, default=0, help="random seed")
    s.add_argument("--out", default="snapshots.csv", help="CSV file to write")
    s.set_defaults(func=_cmd_simulate)


def tour(out_dir: Path, quick: bool) -> dict:
    """Rotating OU (and, full mode, Lotka–Volterra): refined vs vanilla SB on held-out times."""
    import torch

    from sciffusion.testing import w1_exact

    from .bridge import fit_bridge
    from .data import as_snapshots
    from .plots import plot_snapshots, plot_trajectories, plot_vector_field
    from .references import Brownian, Linear, LotkaVolterra

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
            res = fit_bridge(train, ref, iterations=iters, generator=g, max_step=0.1)
            preds = res.predict(held, generator=g)
            ratios = [w1_exact(p, Q[:, int(t)]) / w1_exact(P[:, int(t)], Q[:, int(t)]) for p, t in zip(preds, held)]
            err = round(float((res.reference.vector() - truth.vector()).norm() / truth.vector().norm()), 4) \
                if label == "refined" else None
            rows.append({"system": name, "method": label, "param_rel_err": err,
                         "max_W1_over_floor": round(max(ratios), 3),
                         "mean_W1_over_floor": round(sum(ratios) / len(ratios), 3)})
            if label == "refined":
                tag = name.split()[0].lower().replace("-", "_")
                import matplotlib.pyplot as plt

                labels = ["x1", "x2"] if tag == "rotating" else ["prey", "predator"]
                truth_at = {1.0: Q[:, 1], 5.0: Q[:, 5]}
                for fname, fig in [(f"{tag}_snapshots.png",
                                    plot_snapshots(train, dict(zip(held, preds)), held_out=truth_at, labels=labels,
                                                   title=f"{name}: observed (dots), predicted (x)")),
                                   (f"{tag}_trajectories.png",
                                    plot_trajectories(res.ts, res.paths, train, labels=labels,
                                                      title=f"{name} bridge trajectories")),
                                   (f"{tag}_vector_field.png",
                                    plot_vector_field(res.reference.drift, train, labels=labels,
                                                      title=f"{name}: fitted drift"))]:
                    fig.savefig(out_dir / fname, dpi=100)
                    plt.close(fig)
                    figures.append(fname)
    return {"section": "schrodinger_bridge",
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
