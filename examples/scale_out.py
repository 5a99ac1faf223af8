"""Training, sampling, SMC and discrete decoding across processes: the script to copy for torchrun.

    torchrun --nproc-per-node 2 examples/scale_out.py --out run/      # one machine, 2 processes
    python examples/scale_out.py --out run/                            # the same on one process
    # a cluster, on every node:
    torchrun --nnodes 4 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 \\
        examples/scale_out.py --out /shared/run/

What each rank does (``sciffusion.distributed``):

1. ``fit`` of a small eps-network on 2-d Gaussian data under DistributedDataParallel (``--batch-size``
   rows per rank from disjoint shards; the checkpoint ``out/fit.pt`` is written by rank 0 and
   resumed by every rank when the run is restarted with more ``--steps``);
2. ``--samples`` probability-flow samples of the trained model, sharded by chunk
   (``sample_sharded``; the set is the same on any number of processes), gathered to rank 0 and
   also written per rank to ``out/samples/``;
3. Feynman–Kac SMC of the exact Gaussian annealed to ``beta=2``, ``--groups`` groups of
   ``--particles`` particles, whole groups per rank (``fkc_sharded``);
4. masked-diffusion ancestral decoding of a toy factorised model, sharded like 2.

Rank 0 writes ``samples.pt``, ``fkc.pt``, ``tokens.pt`` and ``summary.json`` (the trained
model's sample mean and covariance against the data's, the SMC estimate of the annealed
variance against its exact value, the token frequencies against the model's).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import torch

from sciffusion import distributed
from sciffusion.denoisers import Denoiser
from sciffusion.losses import dsm_loss
from sciffusion.nn import MLP
from sciffusion.processes import VP
from sciffusion.samplers import sample
from sciffusion.testing import GaussianMixture
from sciffusion.training import fit

MEAN = torch.tensor([1.0, -1.0], dtype=torch.float64)
COV = torch.tensor([[1.0, 0.4], [0.4, 0.6]], dtype=torch.float64)
TOKEN_PROBS = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="output folder (shared by all ranks)")
    p.add_argument("--steps", type=int, default=1000, help="fit steps (a rerun with more resumes)")
    p.add_argument("--batch-size", type=int, default=128, help="rows per rank per step")
    p.add_argument("--samples", type=int, default=2048)
    p.add_argument("--groups", type=int, default=8, help="SMC groups (a multiple of the world size)")
    p.add_argument("--particles", type=int, default=64)
    p.add_argument("--sequences", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backend", choices=["gloo", "nccl"], default=None)
    args = p.parse_args(argv)
    for name in ("steps", "batch_size", "samples", "groups", "particles", "sequences"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    return args


def run(args) -> dict:
    from sciffusion.domains.discrete import MaskedProcess, sample_ancestral
    from sciffusion.domains.feynman_kac import anneal, sample_fkc

    out = args.out
    law = GaussianMixture.gaussian(MEAN, COV)
    proc = VP()

    # 1. training: DDP under torchrun, unchanged on one process
    data = law.sample(4096, torch.Generator().manual_seed(args.seed))
    torch.manual_seed(args.seed)
    net = MLP(2, hidden=64, depth=2).double()
    res = fit(net, lambda m, x, g: dsm_loss(m, x, proc, generator=g), data, steps=args.steps,
              batch_size=args.batch_size, lr=2e-3, ema_decay=0.99, seed=args.seed, progress=False,
              checkpoint=out / "fit.pt", settings={"process": proc})
    den = Denoiser(res.ema, proc, "eps")

    # 2. independent samples, the same set on any number of ranks
    def draw(n, g):
        with torch.no_grad():
            return sample(den, (n, 2), sampler="heun", num_steps=30, generator=g, dtype=torch.float64)

    xs = distributed.sample_sharded(draw, args.samples, seed=args.seed, chunk_size=256, out=out / "samples",
                                    settings={"sampler": "heun", "num_steps": 30})

    # 3. SMC: whole groups per rank
    target = anneal(law.denoiser(proc), 2.0)
    smc = distributed.fkc_sharded(sample_fkc, target, (args.groups, 2), num_particles=args.particles,
                                  seed=args.seed, num_steps=100, dtype=torch.float64, warn_ess=None)

    # 4. discrete decoding, sharded like 2.
    logits = TOKEN_PROBS.log()
    tokens = distributed.sample_sharded(
        lambda n, g: sample_ancestral(lambda x: logits.expand(*x.shape, 3), MaskedProcess(3), (n, 8),
                                      num_steps=8, generator=g), args.sequences, seed=args.seed, chunk_size=128)
    if not distributed.is_main():
        return {}
    torch.save(xs, out / "samples.pt")
    torch.save({"x": smc.x, "log_w": smc.log_w, "log_z": smc.log_z}, out / "fkc.pt")
    torch.save(tokens.x, out / "tokens.pt")
    # annealed Gaussian N(m, C)^2 is N(m, C/2): the SMC's weighted covariance against C/2
    w = smc.weights().reshape(-1, 1) / args.groups
    m = (w * smc.x).sum(0)
    smc_cov = ((smc.x - m).T * w.T) @ (smc.x - m)
    freq = torch.bincount(tokens.x.reshape(-1), minlength=3).double() / tokens.x.numel()
    summary = {
        "world_size": distributed.world_size(), "fit_step": res.step, "final_loss": res.losses[-1] if res.losses else None,
        "sample_mean": xs.mean(0).tolist(), "data_mean": MEAN.tolist(),
        "sample_cov": torch.cov(xs.T).tolist(), "data_cov": COV.tolist(),
        "smc_cov": smc_cov.tolist(), "exact_annealed_cov": (COV / 2).tolist(),
        "smc_groups": smc.num_groups, "smc_resampling_events": smc.num_resampling_events,
        "token_freq": freq.tolist(), "model_token_probs": TOKEN_PROBS.tolist(),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    logging.basicConfig(level=logging.WARNING)
    distributed.init(args.backend)
    try:
        args.out.mkdir(parents=True, exist_ok=True)
        summary = run(args)
        if summary:
            print(json.dumps(summary))
    finally:
        distributed.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
