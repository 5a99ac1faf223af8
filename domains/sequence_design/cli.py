"""``sciffusion sequences train|design`` and the sequence_design section of ``sciffusion tour``.

* ``sciffusion sequences train --fasta data.fa --out model/`` — a masked-diffusion base model
  (``discrete`` dilated CNN or transformer) on equal-length DNA/RNA records; writes
  ``model/model.pt`` and prints the held-out ELBO.
* ``sciffusion sequences design --model model/ --reward gc:0.5,motif:MA0114 --method svdd-pm
  --num 64 --out designs.fasta`` — reward-guided designs as FASTA, each record's description
  holding its reward; prints model and reward cost. ``--method`` is one of ``svdd-pm`` (SVDD-PM on
  the ``--steps`` grid), ``svdd-fh`` (SVDD-PM on the first-hitting schedule, one site per step),
  ``svdd-mc``, ``best-of-n``, ``smc``, ``base``.

Every argument (FASTA contents, reward spec including JASPAR IDs, method options, the model
file) is validated before any training, decoding or output.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from sciffusion.cli import CLIError, nonnegative_float, nonnegative_int, positive_float, positive_int

from .alphabet import DNA, get_alphabet, read_fasta, write_fasta
from .decoding import METHODS, VALUE_SAMPLES, design, fit_value_network
from .model import elbo, load_base_model, save_base_model, train_base_model
from .rewards import HammingMotifCount, parse_reward


def _model_file(path: Path) -> Path:
    return path / "model.pt" if path.suffix != ".pt" else path


def _train(args) -> int:
    x, names = read_fasta(args.fasta, args.alphabet)
    if x.shape[0] < 2:
        raise CLIError(f"--fasta: need at least 2 records to train, got {x.shape[0]}")
    kw = {"channels": args.width, "depth": args.depth} if args.arch == "cnn" else \
        {"d_model": args.width, "num_layers": args.depth}
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(args.seed))
    n_val = max(1, x.shape[0] // 20)
    val, tr = x[perm[:n_val]], x[perm[n_val:]]
    model, proc, cfg = train_base_model(tr, arch=args.arch, arch_kwargs=kw, steps=args.steps,
                                        batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                                        progress=not args.no_progress)
    path = save_base_model(_model_file(args.out), model, cfg, args.alphabet)
    e = elbo(model, proc, val, num_samples=4, generator=torch.Generator().manual_seed(0))
    print(f"saved {path} ({x.shape[0]} records of length {x.shape[1]}); held-out ELBO "
          f"{float(e.mean()):.2f} nats/sequence ({float(e.mean()) / x.shape[1]:.3f} nats/site)")
    return 0


def _design(args) -> int:
    path = _model_file(args.model)
    model, proc, cfg, alph = load_base_model(path)
    reward = parse_reward(args.reward, alph)
    L = args.length or cfg["max_len"]
    if L > cfg["max_len"]:
        raise CLIError(f"--length {L} exceeds the model's maximum length {cfg['max_len']}")
    if args.out.suffix not in (".fa", ".fasta", ".fna"):
        raise CLIError(f"--out must be a FASTA file (.fa/.fasta/.fna), got {args.out}")
    g = torch.Generator().manual_seed(args.seed)
    kw = {}
    if args.method in ("svdd-pm", "svdd-fh", "svdd-mc"):
        kw = {"num_candidates": args.candidates, "alpha": args.alpha}
        if args.method != "svdd-mc":
            kw["value_samples"] = args.value_samples
    elif args.method == "best-of-n":
        kw = {"n": args.candidates}
    elif args.method == "smc":
        kw = {"num_particles": args.candidates, "lam": args.lam}
    t0 = time.perf_counter()
    with torch.no_grad():
        if args.method == "svdd-mc":
            kw["value"] = fit_value_network(model, proc, reward, L, num_rollouts=args.rollouts,
                                            num_steps=args.steps, generator=g)
        out = design(args.method, model, proc, reward, (args.num, L), args.steps, generator=g, **kw)
    sec = time.perf_counter() - t0
    write_fasta(args.out, out.x, alph, names=[f"design{i}" for i in range(args.num)],
                descriptions=[f"reward={float(r):.6g} method={args.method}" for r in out.reward])
    summary = out.summary()
    print(f"wrote {args.num} designs to {args.out} with {args.method}: mean reward {summary['mean_reward']:.4g}, "
          f"model evals/design {summary['model_evals_per_design']:.1f}, reward evals/design "
          f"{summary['reward_evals_per_design']:.1f}, {sec:.1f} s")
    return 0


def register_cli(subparsers) -> None:
    """Add ``sequences train`` and ``sequences design``."""
    p = subparsers.add_parser("sequences", help="DNA/RNA design with soft value-based decoding (SVDD)")
    sub = p.add_subparsers(dest="sequences_command", required=True)
    t = sub.add_parser("train", help="train a masked-diffusion base model on a FASTA file")
    t.add_argument("--fasta", required=True, type=Path, help="equal-length DNA or RNA records")
    t.add_argument("--out", required=True, type=Path, help="model folder (model.pt inside) or a .pt file")
    t.add_argument("--alphabet", default="dna", choices=("dna", "rna"))
    t.add_argument("--arch", default="cnn", choices=("cnn", "transformer"))
    t.add_argument("--width", type=positive_int, default=64, help="channels (cnn) or d_model (transformer)")
    t.add_argument("--depth", type=positive_int, default=4)
    t.add_argument("--steps", type=positive_int, default=2000)
    t.add_argument("--batch-size", type=positive_int, default=128)
    t.add_argument("--lr", type=positive_float, default=2e-3)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--no-progress", action="store_true")
    t.set_defaults(func=_train)
    d = sub.add_parser("design", help="reward-guided designs from a trained base model, written as FASTA")
    d.add_argument("--model", required=True, type=Path, help="model folder or .pt file from `sequences train`")
    d.add_argument("--reward", required=True,
                   help="comma-separated [w*]name[:args]: gc:TARGET[:WINDOW], motif:JASPAR_ID, "
                        "hamming:MOTIF[:MISMATCHES], uaug, mfe, structure:DOT_BRACKET")
    d.add_argument("--method", default="svdd-pm", choices=METHODS)
    d.add_argument("--num", type=positive_int, default=64, help="number of designs")
    d.add_argument("--out", required=True, type=Path, help="FASTA file to write")
    d.add_argument("--steps", type=positive_int, default=64,
                   help="decoding steps (svdd-fh takes one step per site and ignores it)")
    d.add_argument("--candidates", type=positive_int, default=8,
                   help="M for svdd-pm/svdd-fh/svdd-mc, N for best-of-n, particles per design for smc")
    d.add_argument("--alpha", type=nonnegative_float, default=0.0, help="SVDD selection temperature (0 = argmax)")
    d.add_argument("--value-samples", type=nonnegative_int, default=VALUE_SAMPLES,
                   help="svdd-pm/svdd-fh: draws of the denoised prediction averaged per candidate value "
                        "(0 = the argmax prediction, one reward call per candidate)")
    d.add_argument("--lam", type=positive_float, default=1.0, help="SMC tilt strength (target p * exp(lam * r))")
    d.add_argument("--rollouts", type=positive_int, default=1024, help="svdd-mc: base rollouts for the value net")
    d.add_argument("--length", type=positive_int, default=None, help="design length (default: the model's)")
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(func=_design)


def tour(out_dir: Path, quick: bool) -> dict:
    """A planted-motif toy: train a tiny base model, then SVDD-PM vs best-of-N at matched model cost."""
    from .decoding import sample_best_of_n, sample_svdd
    from .metrics import kmer_correlation, pairwise_hamming

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    L, n, steps = 32, (600 if quick else 2000), (300 if quick else 1500)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(4, (n, L), generator=g)
    motif = DNA.encode("TGACTCA")[0]
    rows = (torch.rand(n, generator=g) < 0.3).nonzero().squeeze(1)
    for r in rows.tolist():
        p = int(torch.randint(L - 7, (1,), generator=g))
        x[r, p:p + 7] = motif
    reward = HammingMotifCount("TGACTCA", 1)
    model, proc, cfg = train_base_model(x, arch_kwargs={"channels": 32, "depth": 3}, steps=steps, batch_size=64)
    with torch.no_grad():
        sv = sample_svdd(model, proc, reward, (32, L), 32, num_candidates=4, generator=torch.Generator().manual_seed(1))
        base = sample_best_of_n(model, proc, reward, (32, L), 32, n=1, generator=torch.Generator().manual_seed(2))
        nb = max(1, round(sv.model_evals_per_design / base.model_evals_per_design))
        bon = sample_best_of_n(model, proc, reward, (32, L), 32, n=nb, generator=torch.Generator().manual_seed(2))
    res = []
    for r in (base, sv, bon):
        s = r.summary()
        s.update(kmer3_corr=round(kmer_correlation(r.x, x), 3), diversity=round(pairwise_hamming(r.x), 3))
        res.append({k: (round(v, 3) if isinstance(v, float) else v) for k, v in s.items()})
    write_fasta(out_dir / "svdd_designs.fasta", sv.x, get_alphabet("dna"))
    (out_dir / "sequence_design.json").write_text(json.dumps(res, indent=1))
    return {"section": "sequence_design", "rows": res,
            "files": ["svdd_designs.fasta", "sequence_design.json"]}


__all__ = ["register_cli", "tour"]
