"""Train a GDSS molecule generator on your own SMILES file and write the sampled molecules as SDF.

    python examples/generate_molecules.py --smiles my_molecules.smi --out generated.sdf
    python examples/generate_molecules.py --smiles zinc.csv --column smiles --max-atoms 38 --out zinc.sdf
    python examples/generate_molecules.py --out nci.sdf        # the built-in NCI set (RDKit's sample)

The SMILES file is ``.smi``/``.txt`` (first token per line) or ``.csv`` (a SMILES column). Molecules
RDKit cannot read, with atoms other than C, N, O, F, with charges, or larger than --max-atoms are
skipped and counted (never a crash mid-file). 10% are held out. Writes the SDF (valid molecules:
validity without correction decides, unless --correct), the model folder ``<out>.model/``
(config, weights, split; reload it with ``GraphSDE.load``) and prints validity, uniqueness,
novelty and FCD against the held-out molecules. ``--quick`` trains a tiny model for a smoke test.
"""

import argparse
import sys
import time
import warnings
from pathlib import Path

import torch

from sciffusion.domains.graph_sde import GraphSDE, datasets, io, metrics, molecules


def parse(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smiles", type=Path, default=None, help="SMILES file (.smi, .txt, .csv); default: built-in NCI set")
    ap.add_argument("--column", default=None, help="SMILES column of a CSV file")
    ap.add_argument("--out", type=Path, required=True, help="SDF file to write")
    ap.add_argument("--num", type=int, default=200, help="molecules to sample")
    ap.add_argument("--steps", type=int, default=2000, help="training steps")
    ap.add_argument("--sample-steps", type=int, default=400, help="S4 steps (one model call each)")
    ap.add_argument("--max-atoms", type=int, default=9, help="largest molecule kept (heavy atoms)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--correct", action="store_true", help="write valency-corrected molecules (all graphs)")
    ap.add_argument("--quick", action="store_true", help="tiny model and few steps (smoke test)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    for name in ("num", "steps", "sample_steps", "max_atoms", "batch_size"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(args, name)}")
    if args.out.suffix.lower() != ".sdf":
        ap.error(f"--out must be an .sdf file, got {args.out.name!r}")
    if not args.out.parent.exists():
        ap.error(f"--out: folder {args.out.parent} does not exist")
    if args.smiles is not None:
        if args.smiles.suffix.lower() not in (".smi", ".txt", ".csv"):
            ap.error(f"--smiles must be a .smi, .txt or .csv file, got {args.smiles.name!r}")
        if not args.smiles.is_file():
            ap.error(f"--smiles {args.smiles}: no such file")
    elif args.column is not None:
        ap.error("--column needs --smiles")
    return ap, args


def main(argv=None) -> int:
    ap, args = parse(argv)
    t0 = time.perf_counter()
    try:
        if args.smiles is None:
            dense, kept, skipped = molecules.nci_molecules(max_atoms=args.max_atoms)
            name = "nci"
        else:
            raw = molecules.load_smiles(args.smiles, column=args.column)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                dense, kept, skipped = molecules.smiles_to_graphs(raw, molecules.ATOM_TYPES, max_atoms=args.max_atoms)
            name = args.smiles.name
    except ValueError as err:  # an empty file, a missing column, nothing usable
        ap.error(str(err))
    print(f"{len(kept)} molecules kept; skipped: {skipped or 'none'}")
    if len(kept) < 10:
        ap.error(f"only {len(kept)} usable molecules (need at least 10 to train and hold out 10%)")
    train_idx, test_idx, split = datasets.split(list(range(len(kept))), test_fraction=0.1, seed=args.seed)
    train = dense[torch.tensor(train_idx)]
    preset = "tiny" if args.quick else "molecules"
    steps = min(args.steps, 30) if args.quick else args.steps
    model = GraphSDE.from_data(train, dataset=name, preset=preset, kind="molecules", features="atoms",
                               atom_types=list(molecules.ATOM_TYPES), split=split, seed=args.seed,
                               source={"dataset": str(args.smiles) if args.smiles else "molecules",
                                       "max_atoms": args.max_atoms, "column": args.column, "seed": 0})
    model.fit(train, steps=steps, batch_size=args.batch_size, seed=args.seed, progress=not args.quick)
    model.save(args.out.with_suffix(".model"))
    gen = torch.Generator().manual_seed(args.seed)
    sampled = model.sample(args.num, sampler="s4", num_steps=min(args.sample_steps, 20) if args.quick else args.sample_steps,
                           snr=0.2, scale_eps=0.7, generator=gen)
    mols = model.to_molecules(sampled, correct=args.correct)
    written = io.write_sdf([m for m in mols if m is not None], args.out)
    res = metrics.molecule_metrics(sampled, [kept[i] for i in train_idx], test_smiles=[kept[i] for i in test_idx],
                                   atom_types=molecules.ATOM_TYPES, fcd=len(test_idx) >= 2, nspdk=False)
    print(f"trained {steps} steps, sampled {args.num} graphs in {time.perf_counter() - t0:.0f} s")
    print("  ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in res.items()
                    if k in ("validity", "validity_corrected", "uniqueness", "novelty", "fcd")))
    print(f"wrote {written} molecules to {args.out} and the model to {args.out.with_suffix('.model')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
