"""Train a diffusion model on your own 2-D (or d-D) data, sample it fast, and score held-out data.

    python examples/core_train_and_sample.py --data points.csv --out runs/moons
    python examples/core_train_and_sample.py            # two moons generated in code
    python examples/core_train_and_sample.py --steps 6000 --resume   # train the same run on

The CSV holds one point per row, numbers only (a header row is skipped if present). Writes
samples.csv, samples.png and checkpoint.pt to --out and prints the held-out negative
log-likelihood in nats and bits per dimension, computed exactly through the PF-ODE.

A rerun starts afresh unless --resume is given; --resume continues the checkpoint only if it was
written for the same data, model and training settings (it refuses and names the setting that
differs otherwise). Works headless: matplotlib chooses a non-interactive backend by itself when
no display is available.
"""

import argparse
import logging
import math
import sys
from pathlib import Path

import numpy as np
import torch

import sciffusion as sf
from sciffusion.likelihood import log_likelihood
from sciffusion.losses import dsm_loss
from sciffusion.nn import MLP

HELD_OUT = 1000


def two_moons(n: int, generator: torch.Generator) -> torch.Tensor:
    u = torch.rand(n, generator=generator) * math.pi
    upper = torch.rand(n, generator=generator) < 0.5
    x = torch.where(upper, torch.cos(u), 1 - torch.cos(u))
    y = torch.where(upper, torch.sin(u), 0.5 - torch.sin(u))
    return torch.stack([x, y], 1) + 0.05 * torch.randn(n, 2, generator=generator)


def read_points(path: Path) -> torch.Tensor:
    """Rows of numbers from a CSV (one optional header row); errors name the file and the problem."""
    if not path.is_file():
        raise ValueError(f"--data {path}: no such file")
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    if not lines:
        raise ValueError(f"--data {path}: the file is empty (expected one point per row, e.g. '0.1,2.3')")

    def numbers(line):
        try:
            return [float(v) for v in line.split(",")]
        except ValueError:
            return None

    if numbers(lines[0]) is None:  # a header row
        lines = lines[1:]
    if not lines:
        raise ValueError(f"--data {path}: only a header row, no data rows")
    rows = []
    for i, line in enumerate(lines):
        vals = numbers(line)
        if vals is None:
            raise ValueError(f"--data {path}: row {i + 1} is not numeric: {line[:60]!r}")
        rows.append(vals)
    if len({len(r) for r in rows}) != 1:
        raise ValueError(f"--data {path}: rows have different numbers of columns")
    data = torch.tensor(rows, dtype=torch.float32)
    bad = ~torch.isfinite(data).all(1)
    if bad.any():
        logging.warning("--data %s: dropped %d row(s) with NaN or infinite values", path, int(bad.sum()))
        data = data[~bad]
    if data.shape[0] < HELD_OUT + 2:
        raise ValueError(f"--data {path}: {data.shape[0]} usable rows; need more than {HELD_OUT + 1} "
                         f"({HELD_OUT} are held out for the likelihood)")
    return data


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--data", type=Path, help="CSV of points, one per row (default: two moons made in code)")
    ap.add_argument("--out", type=Path, default=Path("runs/core_example"), help="output folder")
    ap.add_argument("--steps", type=int, default=3000, help="training steps in total")
    ap.add_argument("--sampler", default="dpmpp_2m", choices=sorted(sf.SAMPLERS), help="sampler")
    ap.add_argument("--nfe", type=int, default=10, help="sampler steps")
    ap.add_argument("--resume", action="store_true", help="continue the checkpoint in --out")
    args = ap.parse_args(argv)
    if args.steps < 0:
        ap.error(f"--steps must be >= 0, got {args.steps}")
    if args.nfe < 1:
        ap.error(f"--nfe must be >= 1, got {args.nfe}")
    if args.out.exists() and not args.out.is_dir():
        ap.error(f"--out {args.out} exists and is not a folder")
    if args.resume and not (args.out / "checkpoint.pt").exists():
        ap.error(f"--resume: no checkpoint at {args.out / 'checkpoint.pt'}")
    return ap, args


def main(argv=None) -> int:
    ap, args = parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    g = torch.Generator().manual_seed(0)
    try:
        data = read_points(args.data) if args.data else two_moons(12000, g)
    except ValueError as err:
        ap.error(str(err))
    mean, std = data.mean(0), data.std(0)
    if not (std > 0).all():
        ap.error(f"--data {args.data}: a column is constant; nothing to learn in it")
    z = (data - mean) / std  # unit-scale data suits the VP prior
    perm = torch.randperm(len(z), generator=g)
    train, held_out = z[perm[HELD_OUT:]], z[perm[:HELD_OUT]]

    process = sf.VP()
    model = MLP(z.shape[1], hidden=128, depth=3)
    ck = args.out / "checkpoint.pt"
    args.out.mkdir(parents=True, exist_ok=True)
    if ck.exists() and not args.resume:
        ck.unlink()  # a rerun starts afresh: resuming is asked for with --resume
    try:
        res = sf.fit(model, lambda m, x, gen: dsm_loss(m, x, process, generator=gen), train, steps=args.steps,
                     batch_size=512, lr=3e-3, ema_decay=0.995, checkpoint=ck,
                     settings={"process": process})
    except ValueError as err:  # a checkpoint written for other data or settings
        ap.error(f"--resume: {err}")
    den = sf.Denoiser(res.ema, process, "eps")
    with torch.no_grad():
        x = sf.sample(den, (2000, z.shape[1]), sampler=args.sampler, num_steps=args.nfe, generator=g)
    nfe = den.nfe
    samples = x * std + mean
    np.savetxt(args.out / "samples.csv", samples.numpy(), delimiter=",")
    ll = log_likelihood(den, held_out[:200].double(), num_steps=32)
    # the data were standardised: log p(x) = log p(z) - sum log std
    nll = -(ll.logp.mean() - torch.log(std.double()).sum())
    print(f"held-out NLL {float(nll):.3f} nats = {float(nll) / z.shape[1] / math.log(2):.3f} bits/dim "
          f"({args.sampler}, {nfe} model calls for 2000 samples)")
    fig = plot(data, samples, args.sampler, nfe, res.step)
    fig.savefig(args.out / "samples.png", dpi=100)
    print(f"wrote {args.out}/samples.csv and samples.png")
    return 0


def plot(data, samples, sampler: str, nfe: int, steps: int):
    """Data beside samples on shared axes (first two coordinates); returns the figure."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(8, 4), sharex=True, sharey=True)
    ax[0].scatter(*data[:2000, :2].T, s=1, c="k")
    ax[0].set_title(f"data ({min(2000, len(data))} of {len(data)} points)")
    ax[1].scatter(*samples[:, :2].T, s=1, c="C0")
    ax[1].set_title(f"2000 samples: {sampler}, {nfe} model calls\n(model trained {steps} steps)")
    for a in ax:
        a.set_xlabel("x1 (data units)")
    ax[0].set_ylabel("x2 (data units)")
    fig.tight_layout()
    return fig


if __name__ == "__main__":
    sys.exit(main())
