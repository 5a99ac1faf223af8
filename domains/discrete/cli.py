"""``sciffusion discrete train|sample`` and the discrete section of ``sciffusion tour``.

Every argument is checked before any work and before anything is written: the corpus (empty,
too short), the model file (``sample --model`` must be a file written by ``discrete train``),
sizes and probabilities. Likelihoods and KLs are in nats (per token), as in the tour.
"""

from __future__ import annotations

import time
from pathlib import Path

from sciffusion.cli import CLIError, nonnegative_int, positive_float, positive_int, unit_interval

SAMPLER_CHOICES = ("first_hitting", "ancestral", "remdm", "uniform", "absorbing_uniform")
_SAMPLERS_FOR = {"masked": ("first_hitting", "ancestral", "remdm"), "uniform": ("uniform",),
                 "absorbing_uniform": ("absorbing_uniform",)}


def _check_out_file(path: Path, flag: str = "--out") -> None:
    if path.is_dir():
        raise CLIError(f"{flag} {path} is a folder; give a file name")
    if not path.parent.exists():
        raise CLIError(f"{flag} {path}: the folder {path.parent} does not exist")


def _train(args) -> int:
    import torch

    from .io import load_text, load_tokens
    from .losses import evaluate_likelihood
    from .train import save_model, train

    path = Path(args.data)
    out = Path(args.out)
    _check_out_file(out)
    ck = Path(args.checkpoint) if args.checkpoint else None
    if args.resume and ck is None:
        raise CLIError("--resume needs --checkpoint PATH (the checkpoint to continue)")
    if ck is not None:
        _check_out_file(ck, "--checkpoint")
        if ck.exists() and not args.resume:
            raise CLIError(f"--checkpoint {ck} exists: pass --resume to continue it, or remove it to start afresh")
        if args.resume and not ck.exists():
            raise CLIError(f"--resume: no checkpoint at {ck}")
    alphabet = None
    if path.suffix in (".npy", ".tok"):
        data = load_tokens(path)
        vocab = args.vocab_size or int(data.max()) + 1
        if int(data.max()) >= vocab:
            raise CLIError(f"--vocab-size {vocab}: the data hold token id {int(data.max())}")
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
                           ema_decay=args.ema_decay, seed=args.seed, checkpoint=ck,
                           progress=not args.no_progress)
    save_model(out, res.ema, cfg, alphabet)
    msg = f"saved {out} after {res.step} steps; final loss {res.losses[-1]:.4f}" if res.losses else \
        f"saved {out}"
    if n_val:
        ev = evaluate_likelihood(res.ema, proc, val, num_samples=4, generator=torch.Generator().manual_seed(0))
        msg += f"; held-out NELBO {ev['nats_per_token']:.4f} nats/token"
    print(msg)
    return 0


def _sample(args) -> int:
    import torch

    from . import samplers as S
    from .io import CharTokenizer, save_text, save_tokens
    from .train import load_model

    out_path = Path(args.out)
    _check_out_file(out_path)
    model, proc, cfg, alphabet = load_model(args.model)
    L = args.length or cfg["max_len"]
    if L > cfg["max_len"]:
        raise CLIError(f"--length {L} exceeds the model's maximum length {cfg['max_len']}")
    allowed = _SAMPLERS_FOR[proc.kind]
    name = args.sampler or allowed[0]
    if name not in allowed:
        raise CLIError(f"--sampler {name} does not apply to a {proc.kind} model; choose {', '.join(allowed)}")
    text_out = not (out_path.suffix in (".npy", ".tok") or alphabet is None)
    g = torch.Generator().manual_seed(args.seed)
    shape = (args.num, L)
    fn = S.get_discrete_sampler(name)
    kw = {"temperature": args.temperature, "top_p": args.top_p, "progress": not args.no_progress}
    t0 = time.perf_counter()
    with torch.no_grad():
        out = fn(model, proc, shape, generator=g, **kw) if name == "first_hitting" else \
            fn(model, proc, shape, args.steps, generator=g, **kw)
    sec = time.perf_counter() - t0
    if text_out:
        save_text(out_path, out.x, CharTokenizer(alphabet))
    else:
        save_tokens(out_path, out.x)
    print(f"wrote {args.num} samples to {out_path} with {name}: nfe {out.nfe}, {sec:.2f} s")
    return 0


def register_cli(subparsers) -> None:
    """Add ``discrete train`` and ``discrete sample``."""
    p = subparsers.add_parser("discrete", help="masked / uniform discrete diffusion over token sequences")
    sub = p.add_subparsers(dest="discrete_command", required=True, metavar="COMMAND")
    t = sub.add_parser("train", help="train a denoiser on a text file or token file (.npy / .tok)")
    t.add_argument("--data", required=True, help="text file (.txt: characters) or token array (.npy/.tok)")
    t.add_argument("--out", required=True, help="model file to write")
    t.add_argument("--process", default="masked", choices=("masked", "uniform", "absorbing_uniform"),
                   help="forward process")
    t.add_argument("--schedule", default="loglinear", choices=("loglinear", "cosine", "geometric"),
                   help="noise schedule")
    t.add_argument("--arch", default="transformer", choices=("transformer", "cnn"), help="network")
    t.add_argument("--width", type=positive_int, default=128, help="model width (channels / d_model)")
    t.add_argument("--depth", type=positive_int, default=3, help="number of layers / blocks")
    t.add_argument("--seq-len", type=positive_int, default=64, help="window length for text input (characters)")
    t.add_argument("--vocab-size", type=positive_int, default=None, help="for token files (default: max id + 1)")
    t.add_argument("--steps", type=nonnegative_int, default=2000, help="training steps in total")
    t.add_argument("--batch-size", type=positive_int, default=64, help="sequences per step")
    t.add_argument("--lr", type=positive_float, default=1e-3, help="Adam learning rate")
    t.add_argument("--ema-decay", type=unit_interval, default=0.995, help="EMA decay, in (0, 1)")
    t.add_argument("--seed", type=int, default=0, help="seed of initialisation, data order and noise")
    t.add_argument("--checkpoint", default=None, help="resumable training checkpoint file")
    t.add_argument("--resume", action="store_true",
                   help="continue --checkpoint (refused if it was written for other data or settings)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.set_defaults(func=_train)
    s = sub.add_parser("sample", help="sample sequences from a trained model file")
    s.add_argument("--model", required=True, help="model file written by discrete train")
    s.add_argument("--out", required=True, help=".txt (text if the model has an alphabet), .npy or .tok")
    s.add_argument("--num", type=positive_int, default=16, help="number of sequences")
    s.add_argument("--length", type=positive_int, default=None, help="sequence length (default: the model's)")
    s.add_argument("--sampler", default=None, choices=SAMPLER_CHOICES,
                   help="default: first_hitting (masked), uniform, absorbing_uniform")
    s.add_argument("--steps", type=positive_int, default=128,
                   help="time steps (first-hitting uses one per token)")
    s.add_argument("--temperature", type=positive_float, default=1.0, help="softmax temperature")
    s.add_argument("--top-p", type=unit_interval, default=1.0, help="nucleus mass, in (0, 1]")
    s.add_argument("--seed", type=int, default=0, help="random seed")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    s.set_defaults(func=_sample)


def tour(out_dir: Path, quick: bool) -> dict:
    """Discrete section: exactness on the enumerable oracle, then a tiny model on synthetic text."""
    import matplotlib.pyplot as plt
    import torch

    from .losses import evaluate_likelihood
    from .oracle import MarkovChainOracle
    from .processes import MaskedProcess
    from .samplers import sample_ancestral, sample_first_hitting
    from .sources import SecondOrderMarkovSource
    from .train import train

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    # 1. exactness on the oracle chain (K = 4, L = 6)
    oracle = MarkovChainOracle.random(4, 6, seed=0)
    pr = MaskedProcess(4)
    m = oracle.masked_model(pr)
    n = 20_000 if quick else 100_000
    floor = oracle.kl_from_samples(oracle.sample(n, torch.Generator().manual_seed(1)))[3]  # exact E[KL] of n exact draws
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
    fig, ax = plt.subplots(1, 1, figsize=(5.5, 3.4))
    nfe = {r["sampler"]: r["nfe"] for r in rows if r["part"] == "oracle"}
    ax.bar([f"{k}\n{nfe[k]} NFE" for k in kl_ladder], list(kl_ladder.values()), color="C0", label="sampler")
    ax.axhline(floor, color="k", ls="--", label=f"floor: E[KL] of {n} exact draws")
    ax.set_yscale("log")
    ax.set_ylabel("KL(samples || exact) (nats)")
    ax.set_title(f"masked diffusion, {n} sequences of the 4^6 chain oracle", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_dir / "discrete_oracle_kl.png", dpi=100)
    plt.close(fig)
    return {"section": "discrete", "rows": rows,
            "train_steps": steps, "entropy_nats_per_token": round(h, 4),
            "heldout_nelbo_nats_per_token": round(ev["nats_per_token"], 4),
            "sample_first_hitting": texts["first_hitting"][0], "figures": ["discrete_oracle_kl.png"]}
