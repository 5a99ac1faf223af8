"""Discrete diffusion benchmark: quality on synthetic text with a known entropy, and sampler overhead.

Part 1 (``--part text``, CPU): a 27-symbol second-order Markov source (a-z and space; entropy known
exactly, :class:`~sciffusion.domains.discrete.sources.SecondOrderMarkovSource`). A small
dilated CNN is trained for each process (masked, uniform, absorbing-uniform) with the same budget;
reported per process: held-out NELBO (bits/token) and its gap to the exact entropy of a window;
per sampler (first-hitting; ancestral / predictor at L and 4L steps): the exact NLL of the samples
under the true source (nats/token, the source's own is the entropy), the unigram entropy of the
samples against the data's (diversity), NFE and seconds.

Part 2 (``--part overhead``): the sampler's own cost at scale, L = 1024, V = 50257, with a fixed
model that returns precomputed logits (zero compute), first-hitting against cached ancestral with
L steps (``--uncached`` adds the uncached one; slow on CPU), one sequence, timed in one process;
ratios printed.

    python benchmarks/discrete.py                      # both parts, writes benchmarks/results/discrete.json
    python benchmarks/discrete.py --part overhead --overhead-length 256 --uncached
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from sciffusion.domains.discrete import (MaskedProcess, sample_absorbing_uniform, sample_ancestral,
                                         sample_first_hitting, sample_uniform)
from sciffusion.domains.discrete.losses import evaluate_likelihood
from sciffusion.domains.discrete.sources import SecondOrderMarkovSource
from sciffusion.domains.discrete.train import train

RESULTS = Path(__file__).parent / "results" / "discrete.json"


def _unigram_entropy(x: torch.Tensor, V: int) -> float:
    p = torch.bincount(x.flatten(), minlength=V).double()
    p = p[p > 0] / p.sum()
    return float(-(p * p.log()).sum())


def text_part(train_steps: int, L: int, num_samples: int, seed: int = 0,
              kinds=("masked", "uniform", "absorbing_uniform")) -> dict:
    src = SecondOrderMarkovSource(27, seed=0)
    data = src.sample(50_000, L, torch.Generator().manual_seed(seed))
    test = src.sample(512, L, torch.Generator().manual_seed(seed + 1))
    h_tok = src.entropy(L) / L
    out = {"L": L, "train_steps": train_steps, "entropy_nats_per_token": h_tok,
           "entropy_bits_per_token": h_tok / math.log(2), "entropy_rate_nats": src.entropy_rate(),
           "data_unigram_entropy": _unigram_entropy(data, 27), "processes": {}}
    for kind in kinds:
        t0 = time.perf_counter()
        # the dilated CNN: its local receptive field suits a second-order source, and it learned far
        # faster per CPU second than the 2-layer transformer did in a first run of this script
        res, proc, _ = train(data, vocab_size=27, process=kind, arch="cnn",
                             arch_kwargs={"channels": 96, "depth": 5}, steps=train_steps,
                             batch_size=128, lr=3e-3, ema_decay=0.99, seed=seed, progress=False)
        train_s = time.perf_counter() - t0
        model = res.ema
        ev = evaluate_likelihood(model, proc, test, num_samples=8, generator=torch.Generator().manual_seed(seed))
        rec = {"train_steps": train_steps, "train_seconds": train_s, "final_train_loss": sum(res.losses[-50:]) / 50,
               "heldout_nelbo_bits_per_token": ev["bits_per_token"],
               "heldout_nelbo_stderr_bits": ev["stderr_nats_per_token"] / math.log(2),
               "elbo_gap_bits_per_token": ev["bits_per_token"] - h_tok / math.log(2), "samplers": {}}
        if kind == "masked":
            runs = [("first_hitting", None), (f"ancestral-{L}", L), (f"ancestral-{4 * L}", 4 * L)]
        else:
            runs = [(f"{kind}-{L}", L), (f"{kind}-{4 * L}", 4 * L)]
        for label, steps in runs:
            g = torch.Generator().manual_seed(seed + 7)
            t0 = time.perf_counter()
            with torch.no_grad():
                if label == "first_hitting":
                    s = sample_first_hitting(model, proc, (num_samples, L), generator=g)
                elif kind == "masked":
                    s = sample_ancestral(model, proc, (num_samples, L), steps, generator=g)
                elif kind == "uniform":
                    s = sample_uniform(model, proc, (num_samples, L), steps, generator=g)
                else:
                    s = sample_absorbing_uniform(model, proc, (num_samples, L), steps, generator=g)
            sec = time.perf_counter() - t0
            nll = -src.log_prob(s.x) / L
            rec["samplers"][label] = {"true_nll_nats_per_token": float(nll.mean()),
                                      "true_nll_stderr": float(nll.std() / math.sqrt(num_samples)),
                                      "unigram_entropy": _unigram_entropy(s.x, 27), "nfe": s.nfe,
                                      "nfe_per_sequence_max": int(s.nfe_per_sequence.max()), "seconds": sec,
                                      "example": src.decode(s.x[:1])[0]}
            print(f"{kind:18s} {label:24s} nll/token {float(nll.mean()):.3f} (source {h_tok:.3f}) "
                  f"nfe {s.nfe:5d} {sec:7.2f} s", flush=True)
        print(f"{kind:18s} held-out NELBO {ev['bits_per_token']:.3f} bits/token, entropy "
              f"{h_tok / math.log(2):.3f}, gap {rec['elbo_gap_bits_per_token']:.3f} (train {train_s:.0f} s)", flush=True)
        out["processes"][kind] = rec
    return out


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def overhead_part(L: int = 1024, V: int = 50257, steps: int = 1024, device: str = "cpu", repeats: int = 1,
                  uncached: bool = False) -> dict:
    dev = torch.device(device)
    proc = MaskedProcess(V)
    gen = torch.Generator(device=dev).manual_seed(0)
    logits = torch.randn(1, L, V, generator=gen, device=dev, dtype=torch.float32) * 3.0

    def model(x):  # fixed logits: the model costs nothing, the sampler's own work is timed
        return logits.expand(x.shape[0], -1, -1)

    def run(name):
        g = torch.Generator(device=dev).manual_seed(1)
        x = torch.full((1, L), proc.mask_id, dtype=torch.long, device=dev)
        _sync(dev)
        t0 = time.perf_counter()
        with torch.no_grad():
            if name == "first_hitting":
                s = sample_first_hitting(model, proc, x=x, generator=g)
            else:
                s = sample_ancestral(model, proc, x=x, num_steps=steps, generator=g, cache=(name == "ancestral_cached"))
        _sync(dev)
        return time.perf_counter() - t0, s

    # warm-up (allocator, kernels) on a short run of each
    run("first_hitting")
    res = {"L": L, "V": V, "steps": steps, "device": str(dev),
           "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
           "threads": torch.get_num_threads()}
    names = ("first_hitting", "ancestral_cached") + (("ancestral_uncached",) if uncached else ())
    for name in names:
        times = []
        for _ in range(repeats):
            sec, s = run(name)
            times.append(sec)
        res[name] = {"seconds": min(times), "nfe": s.nfe, "all_unmasked": bool((s.x != proc.mask_id).all())}
        print(f"overhead {name:20s} {min(times):8.3f} s  nfe {s.nfe}", flush=True)
    res["ratio_ancestral_cached_over_first_hitting"] = res["ancestral_cached"]["seconds"] / res["first_hitting"]["seconds"]
    print(f"overhead ratio ancestral({steps} steps, cached)/first-hitting = "
          f"{res['ratio_ancestral_cached_over_first_hitting']:.1f}x ({res['device_name']})", flush=True)
    if uncached:
        res["ratio_ancestral_uncached_over_first_hitting"] = (res["ancestral_uncached"]["seconds"]
                                                              / res["first_hitting"]["seconds"])
        print(f"overhead ratio ancestral({steps} steps, uncached)/first-hitting = "
              f"{res['ratio_ancestral_uncached_over_first_hitting']:.1f}x", flush=True)
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=("all", "text", "overhead"), default="all")
    ap.add_argument("--train-steps", type=int, default=1000)
    ap.add_argument("--length", type=int, default=32)
    ap.add_argument("--num-samples", type=int, default=256)
    ap.add_argument("--processes", default="masked,uniform,absorbing_uniform",
                    help="comma-separated; a subset replaces only those processes' text results")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--uncached", action="store_true", help="also time ancestral without caching (slow on CPU)")
    ap.add_argument("--overhead-length", type=int, default=1024)
    ap.add_argument("--overhead-vocab", type=int, default=50257)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    new = {}
    if args.part in ("all", "text"):
        kinds = tuple(k for k in args.processes.split(",") if k)
        new["text"] = text_part(args.train_steps, args.length, args.num_samples, kinds=kinds)
        cmd = (f"OMP_NUM_THREADS=1 python benchmarks/discrete.py --part text "
               f"--train-steps {args.train_steps} --length {args.length} --processes {args.processes}")
        for rec in new["text"]["processes"].values():
            rec["command"] = cmd
        new["text"]["command"] = cmd
    if args.part in ("all", "overhead"):
        L, V = args.overhead_length, args.overhead_vocab
        key = f"overhead_{torch.device(args.device).type}_L{L}_V{V}"
        new[key] = overhead_part(L=L, V=V, steps=L, device=args.device, repeats=args.repeats, uncached=args.uncached)
        new[key]["command"] = (f"OMP_NUM_THREADS=1 python benchmarks/discrete.py --part overhead --device {args.device} "
                               f"--overhead-length {L} --overhead-vocab {V}" + (" --uncached" if args.uncached else ""))
    # re-read just before writing so that parts run in separate processes keep each other's keys
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    if "text" in new and "text" in results:  # keep the processes this run did not train
        new["text"]["processes"] = {**results["text"].get("processes", {}), **new["text"]["processes"]}
    results.update(new)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
