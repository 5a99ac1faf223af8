"""``sciffusion graphs ...`` and the graph_sde section of ``sciffusion tour``.

* ``sciffusion graphs train --dataset community-small|grid|planar|sbm|molecules|PATH.smi|PATH.csv --out DIR``
  trains a GDSS model and writes the folder ``DIR`` (``config.json``, ``weights.pt``,
  ``split.json``); a checkpoint ``DIR/train_checkpoint.pt`` lets the same command resume.
* ``sciffusion graphs sample --model DIR --num 100 --out samples.sdf|.smi|.pt`` samples graphs
  (``.pt``: the continuous dense states, any model) or molecules (``.sdf``/``.smi``, molecule models).
* ``sciffusion graphs evaluate --model DIR --samples samples.pt|.smi|.sdf`` scores samples against
  the model's held-out split: MMDs for graphs, validity / uniqueness / novelty / FCD for molecules.

Every argument is checked before any work is done and before any output is created.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
import warnings
from pathlib import Path

import torch

log = logging.getLogger(__name__)

SYNTHETIC = ("community-small", "grid", "planar", "sbm")
DATASETS = SYNTHETIC + ("molecules",)
SMILES_SUFFIXES = (".smi", ".txt", ".csv")
SAMPLE_SUFFIXES = (".pt", ".smi", ".sdf")
PRESET_OF = {"community-small": "community-small", "grid": "community-small", "planar": "community-small",
             "sbm": "community-small", "molecules": "molecules"}


# ------------------------------------------------------------------------------------------------
# datasets
# ------------------------------------------------------------------------------------------------

def check_dataset(name: str) -> str:
    """``name`` if it is a built-in dataset or an existing SMILES file, else ValueError."""
    if name in DATASETS:
        return name
    path = Path(name)
    if path.suffix.lower() not in SMILES_SUFFIXES:
        raise ValueError(f"--dataset must be one of {', '.join(DATASETS)} or a SMILES file "
                         f"({', '.join(SMILES_SUFFIXES)}), got {name!r}")
    if not path.is_file():
        raise ValueError(f"--dataset: no SMILES file at {path}")
    return name


def load_source(source: dict):
    """Rebuild a dataset from its description (``config.source``).

    Returns:
        ``(kind, items, extra)``: ``("graphs", list of networkx graphs, {})`` or
        ``("molecules", kept SMILES, {"dense": DenseGraphs of all kept, "skipped": counts})``.
    """
    from . import datasets, molecules

    name = source["dataset"]
    n, seed = source.get("num_graphs"), source.get("seed", 0)
    if name in SYNTHETIC:
        make = {"community-small": datasets.community_small, "grid": datasets.grid_graphs,
                "planar": datasets.planar_graphs, "sbm": datasets.sbm_graphs}[name]
        graphs = make(n, seed=seed) if n else make(seed=seed)
        return "graphs", graphs, {}
    max_atoms = source.get("max_atoms", 9)
    if name == "molecules":
        dense, kept, skipped = molecules.nci_molecules(max_atoms=max_atoms)
    else:
        smiles = molecules.load_smiles(name, column=source.get("column"))
        dense, kept, skipped = molecules.smiles_to_graphs(smiles, molecules.ATOM_TYPES, max_atoms=max_atoms)
    if n:
        kept, dense = kept[:n], dense[:n]
    if len(kept) < 2:
        raise ValueError(f"{name}: {len(kept)} usable molecule(s) after filtering (skipped: {skipped}); need >= 2")
    return "molecules", kept, {"dense": dense, "skipped": skipped}


def build_split(source: dict, test_fraction: float, split_seed: int):
    """``(kind, train DenseGraphs, train items, test items, split indices, encoding kwargs)``."""
    from . import datasets, molecules

    kind, items, extra = load_source(source)
    train_items, test_items, idx = datasets.split(items, test_fraction=test_fraction, seed=split_seed)
    if kind == "graphs":
        max_degree = max(d for g in items for _, d in g.degree())
        n_max = max(g.number_of_nodes() for g in items)
        train = datasets.to_dense(train_items, max_nodes=n_max, features="degree", max_degree=max_degree)
        enc = {"features": "degree", "max_degree": max_degree}
    else:
        train = extra["dense"][torch.tensor(idx["train"])]
        enc = {"features": "atoms", "atom_types": list(molecules.ATOM_TYPES)}
    return kind, train, train_items, test_items, idx, enc


def reference_split(model):
    """The held-out (and training) items of a saved model, rebuilt from its source and split."""
    from . import datasets

    src = model.config.source
    if not src:
        raise ValueError("the model records no dataset source; pass the reference set explicitly")
    with warnings.catch_warnings():  # the skipped-SMILES summary was reported when the model was trained
        warnings.simplefilter("ignore", UserWarning)
        kind, items, _ = load_source(src)
    if not model.split:
        raise ValueError("the model folder has an empty split.json")
    train, test = datasets.apply_split(items, model.split)
    return kind, train, test


# ------------------------------------------------------------------------------------------------
# commands
# ------------------------------------------------------------------------------------------------

def _positive_int(name, v):
    if not isinstance(v, int) or v < 1:
        raise ValueError(f"{name} must be a positive integer, got {v!r}")


def _train(args) -> int:
    from .model import PRESETS, GraphSDE

    # --- validate everything before any work ---
    dataset = check_dataset(args.dataset)
    if args.steps < 0:
        raise ValueError(f"--steps must be >= 0, got {args.steps}")
    _positive_int("--batch-size", args.batch_size) if args.batch_size is not None else None
    if args.lr is not None and not args.lr > 0:
        raise ValueError(f"--lr must be positive, got {args.lr}")
    if args.ema_decay is not None and not 0 <= args.ema_decay < 1:
        raise ValueError(f"--ema-decay must lie in [0, 1), got {args.ema_decay}")
    if not 0 < args.test_fraction < 1:
        raise ValueError(f"--test-fraction must lie in (0, 1), got {args.test_fraction}")
    if args.num_graphs is not None:
        _positive_int("--num-graphs", args.num_graphs)
    _positive_int("--max-atoms", args.max_atoms)
    preset = PRESET_OF.get(dataset, "molecules") if args.preset is None else args.preset
    if preset not in PRESETS:
        raise ValueError(f"--preset must be one of {', '.join(sorted(PRESETS))}, got {preset!r}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a folder")
    if (out / "config.json").exists() and not args.overwrite:
        raise ValueError(f"--out {out} already holds a model; pass --overwrite or choose another folder")
    source = {"dataset": dataset, "num_graphs": args.num_graphs, "seed": args.data_seed,
              "max_atoms": args.max_atoms, "column": args.column}
    # --- work ---
    t0 = time.perf_counter()
    kind, train, train_items, test_items, idx, enc = build_split(source, args.test_fraction, args.split_seed)
    model = GraphSDE.from_data(train, dataset=Path(dataset).name, preset=preset, kind=kind, split=idx,
                               source=source, seed=args.seed, **enc)
    out.mkdir(parents=True, exist_ok=True)
    ema = args.ema_decay
    if ema is None:
        from sciffusion.training import capped_ema_decay

        ema = capped_ema_decay(args.steps, model.config.train["ema_decay"])
    model.fit(train, steps=args.steps, batch_size=args.batch_size, lr=args.lr, ema_decay=ema, seed=args.seed,
              checkpoint=out / "train_checkpoint.pt", progress=not args.no_progress)
    model.save(out)
    print(f"trained on {len(train_items)} {kind} ({len(test_items)} held out) for {model.config.steps} steps "
          f"in {time.perf_counter() - t0:.0f} s; final loss {sum(model.losses[-50:]) / max(1, len(model.losses[-50:])):.3f}")
    print(f"wrote {out}")
    return 0


def _sample(args) -> int:
    from sciffusion.samplers import SAMPLERS

    from . import io
    from .model import GraphSDE

    _positive_int("--num", args.num)
    if args.steps is not None:
        _positive_int("--steps", args.steps)
    out = Path(args.out)
    if out.suffix.lower() not in SAMPLE_SUFFIXES:
        raise ValueError(f"--out must end in {', '.join(SAMPLE_SUFFIXES)}, got {out.name!r}")
    if args.sampler is not None and args.sampler not in SAMPLERS:
        raise ValueError(f"--sampler must be one of {', '.join(sorted(SAMPLERS))}, got {args.sampler!r}")
    if not out.parent.exists():
        raise ValueError(f"--out: folder {out.parent} does not exist")
    model = GraphSDE.load(args.model)
    if out.suffix.lower() in (".sdf", ".smi") and model.config.kind != "molecules":
        raise ValueError(f"{args.model} generates plain graphs; write them as .pt, not {out.suffix}")
    gen = torch.Generator().manual_seed(args.seed)
    t0 = time.perf_counter()
    dense = model.sample(args.num, sampler=args.sampler, num_steps=args.steps, generator=gen,
                         progress=not args.no_progress)
    if out.suffix.lower() == ".pt":
        io.write_graphs_pt(dense, out)
        print(f"wrote {args.num} sampled graph states to {out} in {time.perf_counter() - t0:.0f} s")
        return 0
    mols = model.to_molecules(dense, correct=args.correct)
    n_valid = sum(m is not None for m in mols)
    written = (io.write_sdf if out.suffix.lower() == ".sdf" else io.write_smiles)(mols, out)
    print(f"sampled {args.num} graphs: {n_valid} valid molecules{' after correction' if args.correct else ''}; "
          f"wrote {written} to {out}")
    return 0


def _evaluate(args) -> int:
    from . import io, metrics
    from .model import GraphSDE

    samples = Path(args.samples)
    if samples.suffix.lower() not in SAMPLE_SUFFIXES:
        raise ValueError(f"--samples must end in {', '.join(SAMPLE_SUFFIXES)}, got {samples.name!r}")
    if not samples.is_file():
        raise ValueError(f"--samples: no file at {samples}")
    if args.kernel not in metrics.KERNELS:
        raise ValueError(f"--kernel must be one of {', '.join(metrics.KERNELS)}, got {args.kernel!r}")
    if args.out is not None and Path(args.out).suffix.lower() != ".json":
        raise ValueError(f"--out must be a .json file, got {args.out!r}")
    model = GraphSDE.load(args.model)
    kind, train, test = reference_split(model)
    if kind == "graphs":
        if samples.suffix.lower() != ".pt":
            raise ValueError("a plain-graph model is evaluated on a .pt file of sampled states")
        dense = io.read_graphs_pt(samples)
        model.check_data(dense, "--samples")
        pred = model.quantise(dense, remove_isolated=True)
        res = metrics.graph_metrics(test, pred, kernel=args.kernel)
    else:
        if samples.suffix.lower() == ".pt":
            gen = io.read_graphs_pt(samples)
            model.check_data(gen, "--samples")
        elif samples.suffix.lower() == ".sdf":
            gen = io.read_sdf(samples)
        else:
            from .molecules import load_smiles

            gen = load_smiles(samples)
        res = metrics.molecule_metrics(gen, train, test_smiles=test, atom_types=model.config.atom_types,
                                       fcd=not args.no_fcd, nspdk=not args.no_fcd)
    res = {k: v for k, v in res.items() if isinstance(v, (int, float, str, type(None)))}
    text = json.dumps(res, indent=1)
    print(text)
    if args.out is not None:
        Path(args.out).write_text(text)
    return 0


def register_cli(subparsers) -> None:
    """``sciffusion graphs {train,sample,evaluate}``."""
    p = subparsers.add_parser("graphs", help="GDSS graph and molecule generation (train, sample, evaluate)")
    sub = p.add_subparsers(dest="graphs_command", required=True)
    t = sub.add_parser("train", help="train a GDSS model on a dataset")
    t.add_argument("--dataset", required=True, help=f"{', '.join(DATASETS)} or a SMILES file (.smi/.txt/.csv)")
    t.add_argument("--out", required=True, help="model folder to write")
    t.add_argument("--steps", type=int, default=2000, help="optimisation steps")
    t.add_argument("--preset", default=None, help="settings preset (default: by dataset; 'tiny' for a quick run)")
    t.add_argument("--batch-size", type=int, default=None)
    t.add_argument("--lr", type=float, default=None)
    t.add_argument("--ema-decay", type=float, default=None,
                   help="EMA decay (default: the preset's, GDSS's 0.999, capped at 1 - 10/steps so that the "
                        "random init keeps a share below e^-10 of the EMA weights)")
    t.add_argument("--test-fraction", type=float, default=0.2, help="held-out fraction of the split")
    t.add_argument("--num-graphs", type=int, default=None, help="size of a synthetic set / cap on molecules")
    t.add_argument("--max-atoms", type=int, default=9, help="largest molecule kept (heavy atoms)")
    t.add_argument("--column", default=None, help="SMILES column of a CSV file")
    t.add_argument("--data-seed", type=int, default=0, help="seed of a synthetic dataset")
    t.add_argument("--split-seed", type=int, default=0)
    t.add_argument("--seed", type=int, default=0, help="initialisation and training seed")
    t.add_argument("--overwrite", action="store_true", help="replace a model already in --out")
    t.add_argument("--no-progress", action="store_true")
    t.set_defaults(func=_train)
    s = sub.add_parser("sample", help="sample graphs or molecules from a trained model")
    s.add_argument("--model", required=True)
    s.add_argument("--num", type=int, default=100)
    s.add_argument("--out", required=True, help="samples.pt (dense states), samples.sdf or samples.smi (molecules)")
    s.add_argument("--sampler", default=None, help="core sampler name (default: the model's, e.g. pc or s4)")
    s.add_argument("--steps", type=int, default=None, help="grid steps (default: the model's)")
    s.add_argument("--correct", action="store_true", help="apply the valency correction to molecules")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=_sample)
    e = sub.add_parser("evaluate", help="score samples against the model's held-out split")
    e.add_argument("--model", required=True)
    e.add_argument("--samples", required=True, help=".pt from `graphs sample`, or .smi/.sdf for molecules")
    e.add_argument("--kernel", default="gaussian_emd", help="MMD kernel: gaussian_emd (GDSS) or gaussian_tv")
    e.add_argument("--no-fcd", action="store_true", help="skip FCD and NSPDK (molecules)")
    e.add_argument("--out", default=None, help="also write the metrics to this .json file")
    e.set_defaults(func=_evaluate)


# ------------------------------------------------------------------------------------------------
# tour
# ------------------------------------------------------------------------------------------------

def tour(out_dir: Path, quick: bool) -> dict:
    """community-small end to end at small size: train, sample with S4 / PC / Euler–Maruyama at
    equal NFE, MMDs against the held-out graphs beside an Erdős–Rényi baseline; a figure."""
    from . import datasets, metrics, plots
    from .model import GraphSDE

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    steps, nfe, num = (150, 40, 20) if quick else (800, 200, 100)
    graphs = datasets.community_small(100, seed=0)
    train_g, test_g, idx = datasets.split(graphs, test_fraction=0.2, seed=0)
    max_deg = max(d for g in graphs for _, d in g.degree())
    train = datasets.to_dense(train_g, max_nodes=20, features="degree", max_degree=max_deg)
    preset = "tiny" if quick else "community-small"
    a_net = None if quick else {"num_layers": 3, "hidden": 16, "attn_dim": 16, "c_hid": 6, "c_final": 4}
    model = GraphSDE.from_data(train, dataset="community-small", preset=preset, max_degree=max_deg, a_net=a_net,
                               split=idx, seed=0)
    model.fit(train, steps=steps, batch_size=80, ema_decay=0.99, progress=False)
    rows = []
    figs = {}
    for name, opts in (("s4", dict(num_steps=nfe, snr=0.05, scale_eps=0.7)),
                       ("pc", dict(num_steps=nfe // 2, snr=0.05, scale_eps=0.7)),
                       ("euler_maruyama", dict(num_steps=nfe))):
        dense = model.sample(num, sampler=name, generator=torch.Generator().manual_seed(1), **opts)
        pred = model.quantise(dense, remove_isolated=True)
        m = metrics.graph_metrics(test_g, pred)
        rows.append({"model": name, "nfe": nfe, **{k: round(m[k], 4) for k in ("degree", "clustering", "orbit")}})
        figs[name] = pred
    import networkx as nx

    pairs = sum(g.number_of_nodes() * (g.number_of_nodes() - 1) / 2 for g in train_g)
    p = sum(g.number_of_edges() for g in train_g) / pairs
    er = [nx.gnp_random_graph(train_g[k % len(train_g)].number_of_nodes(), p, seed=k) for k in range(num)]
    m = metrics.graph_metrics(test_g, er)
    rows.append({"model": "erdos_renyi", "nfe": 0, **{k: round(m[k], 4) for k in ("degree", "clustering", "orbit")}})
    m = metrics.graph_metrics(test_g, train_g)
    rows.append({"model": "train set (floor)", "nfe": 0, **{k: round(m[k], 4) for k in ("degree", "clustering", "orbit")}})
    fig = plots.plot_graphs(figs["s4"][:8], ncols=4, title=f"community-small, S4 samples ({steps} training steps)")
    fig.savefig(out_dir / "graph_sde_samples.png", dpi=80)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return {"section": "graph_sde", "train_steps": steps,
            "kernel": "gaussian_emd", "num_test": len(test_g), "num_samples": num, "rows": rows,
            "figures": ["graph_sde_samples.png"]}


__all__ = ["register_cli", "tour", "check_dataset", "load_source", "build_split", "reference_split"]
