"""``sciffusion discrete train|sample`` and the discrete section of ``sciffusion tour``."""

from __future__ import annotations

import time
from pathlib import Path

import torch

SAMPLER_CHOICES = ("first_hitting", "ancestral", "remdm", "uniform", "absorbing_uniform")


def _train(args) -> int:
    from .io import load_text, load_tokens
    from .losses import evaluate_likelihood
    from .train import save_model, train

    path = Path(args.data)
    alphabet = None
    if path.suffix in (".npy", ".tok"):
        data = load_tokens(path)
        vocab = args.vocab_size or int(data.max()) + 1
    else:
        data, tok = load_text(path, args.seq_len)
        alphabet, vocab = tok.alphabet, tok.vocab_size
    kw = {"d_model": args.width, "num_layers": args.depth} if args.arch == "transformer" else \
        {"channels": args.width, "depth": args.depth}
    n_val = max(1, data.shape[0] // 20) if data.shape[0] > 1 else 0
    perm = torch.randperm(data.shape[0], generator=torch.Generator().manual_seed(args.seed))
    val, tr = data[perm[:n_val]], data[perm[n_val:]] if n_val else data
    res, proc, cfg = train(tr, vocab_size=vocab, process=args.process, schedule=args.schedule, arch=args.arch,
                           arch_kwargs=kw, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                           ema_decay=args.ema_decay, seed=args.seed, checkpoint=args.checkpoint,
                           progress=not args.no_progress)
    save_model(args.out, res.ema, cfg, alphabet)
    msg = f"saved {args.out} after {res.step} steps; final loss {res.losses[-1]:.4f}" if res.losses else \
        f"saved {args.out}"
    if n_val:
        ev = evaluate_likelihood(res.ema, proc, val, num_samples=4, generator=torch.Generator().manual_seed(0))
        msg += f"; held-out NELBO {ev['bits_per_token']:.4f} bits/token"
    print(msg)
    return 0


def _sample(args) -> int:
    from . import samplers as S
    from .io import CharTokenizer, save_text, save_tokens
    from .train import load_model

    model, proc, cfg, alphabet = load_model(args.model)
    g = torch.Generator().manual_seed(args.seed)
    L = args.length or cfg["max_len"]
    shape = (args.num, L)
    name = args.sampler or {"masked": "first_hitting", "uniform": "uniform",
                            "absorbing_uniform": "absorbing_uniform"}[proc.kind]
    fn = S.get_discrete_sampler(name)
    kw = {"generator": g, "temperature": args.temperature, "top_p": args.top_p, "progress": not args.no_progress}
    t0 = time.perf_counter()
    with torch.no_grad():
        out = fn(model, proc, shape, generator=kw.pop("generator"), **kw) if name == "first_hitting" else \
            fn(model, proc, shape, args.steps, generator=kw.pop("generator"), **kw)
    sec = time.perf_counter() - t0
    out_path = Path(args.out)
    if out_path.suffix in (".npy", ".tok") or alphabet is None:
        save_tokens(out_path, out.x)
    else:
        save_text(out_path, out.x, CharTokenizer(alphabet))
    print(f"wrote {args.num} samples to {out_path} with {name}: nfe {out.nfe}, {sec:.2f} s")
    return 0


def register_cli(subparsers) -> None:
    """Add ``discrete train`` and ``discrete sample``."""
    p = subparsers.add_parser("discrete", help="masked / uniform discrete diffusion over token sequences")
    sub = p.add_subparsers(dest="discrete_command", required=True)
    t = sub.add_parser("train", help="train a denoiser on a text file or token file (.npy / .tok)")
    t.add_argument("--data", required=True, help="text file (.txt: characters) or token array (.npy/.tok)")
    t.add_argument("--out", required=True, help="model file to write")
    t.add_argument("--process", default="masked", choices=("masked", "uniform", "absorbing_uniform"))
    t.add_argument("--schedule", default="loglinear", choices=("loglinear", "cosine", "geometric"))
    t.add_argument("--arch", default="transformer", choices=("transformer", "cnn"))
    t.add_argument("--width", type=int, default=128)
    t.add_argument("--depth", type=int, default=3)
    t.add_argument("--seq-len", type=int, default=64, help="window length for text input")
    t.add_argument("--vocab-size", type=int, default=None, help="for token files (default: max id + 1)")
    t.add_argument("--steps", type=int, default=2000)
    t.add_argument("--batch-size", type=int, default=64)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--ema-decay", type=float, default=0.995)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--checkpoint", default=None, help="resumable training checkpoint (resumes if present)")
    t.add_argument("--no-progress", action="store_true")
    t.set_defaults(func=_train)
    s = sub.add_parser("sample", help="sample sequences from a trained model file")
    s.add_argument("--model", required=True)
    s.add_argument("--out", required=True, help=".txt (text if the model has an alphabet), .npy or .tok")
    s.add_argument("--num", type=int, default=16)
    s.add_argument("--length", type=int, default=None)
    s.add_argument("--sampler", default=None, choices=SAMPLER_CHOICES)
    s.add_argument("--steps", type=int, default=128, help="time steps (first-hitting uses one per token)")
    s.add_argument("--temperature", type=float, default=1.0)
    s.add_argument("--top-p", type=float, default=1.0)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=_sample)


def tour(out_dir: Path, quick: bool) -> dict:
    """Discrete section: exactness on the enumerable oracle, then a tiny model on synthetic text."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .losses import evaluate_likelihood
    from .oracle import MarkovChainOracle
    from .processes import MaskedProcess
    from .samplers import sample_ancestral, sample_first_hitting
    from .sources import SecondOrderMarkovSource
    from .train import train

    t_start = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    # 1. exactness on the oracle chain (K = 4, L = 6)
    oracle = MarkovChainOracle.random(4, 6, seed=0)
    pr = MaskedProcess(4)
    m = oracle.masked_model(pr)
    n = 20_000 if quick else 100_000
    floor = oracle.kl_from_samples(oracle.sample(n, torch.Generator().manual_seed(1)))[0]
    kl_ladder = {}
    for name, steps in [("first_hitting", None), ("ancestral", 2), ("ancestral", 8), ("ancestral", 32)]:
        g = torch.Generator().manual_seed(2)
        t0 = time.perf_counter()
        out = sample_first_hitting(m, pr, (n, 6), generator=g) if steps is None else \
            sample_ancestral(m, pr, (n, 6), steps, generator=g)
        kl = oracle.kl_from_samples(out.x)[0]
        label = name if steps is None else f"{name}-{steps}"
        kl_ladder[label] = kl
        rows.append({"part": "oracle", "sampler": label, "nfe": out.nfe, "kl_nats": round(kl, 4),
                     "kl_floor": round(floor, 4), "true_nll_per_token": "",
                     "seconds": round(time.perf_counter() - t0, 2)})
    # 2. a tiny masked model on the 27-symbol second-order source
    src = SecondOrderMarkovSource()
    L = 32
    data = src.sample(20_000, L, torch.Generator().manual_seed(0))
    test = src.sample(256, L, torch.Generator().manual_seed(1))
    steps = 150 if quick else 1500
    res, proc, _ = train(data, vocab_size=27, process="masked", arch="cnn",
                         arch_kwargs={"channels": 64, "depth": 4}, steps=steps, batch_size=64, lr=3e-3,
                         ema_decay=0.98, seed=0, progress=False)
    ev = evaluate_likelihood(res.ema, proc, test, num_samples=2, generator=torch.Generator().manual_seed(0))
    h = src.entropy(L) / L
    texts = {}
    with torch.no_grad():
        for label, kw in [("first_hitting", None), (f"ancestral-{L}", L)]:
            g = torch.Generator().manual_seed(3)
            t0 = time.perf_counter()
            out = sample_first_hitting(res.ema, proc, (64, L), generator=g) if kw is None else \
                sample_ancestral(res.ema, proc, (64, L), kw, generator=g)
            nll = float(-src.log_prob(out.x).mean()) / L
            texts[label] = src.decode(out.x[:4])
            rows.append({"part": "text", "sampler": label, "nfe": out.nfe, "kl_nats": "", "kl_floor": "",
                         "true_nll_per_token": round(nll, 3),
                         "seconds": round(time.perf_counter() - t0, 2)})
    fig, ax = plt.subplots(1, 1, figsize=(5, 3))
    ax.bar(list(kl_ladder), list(kl_ladder.values()), color="C0")
    ax.axhline(floor, color="k", ls="--", label="Monte Carlo floor")
    ax.set_yscale("log")
    ax.set_ylabel("KL(samples || exact) [nats]")
    ax.set_title("masked diffusion on the exact chain oracle")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "discrete_oracle_kl.png", dpi=100)
    plt.close(fig)
    return {"section": "discrete", "seconds": round(time.perf_counter() - t_start, 1), "rows": rows,
            "train_steps": steps, "entropy_nats_per_token": round(h, 4),
            "heldout_nelbo_nats_per_token": round(ev["nats_per_token"], 4),
            "sample_first_hitting": texts["first_hitting"][0], "figures": ["discrete_oracle_kl.png"]}
