"""``sciffusion fkc ...`` and the feynman_kac section of ``sciffusion tour``.

Both run on 1-D Gaussian mixtures with exact noised scores (``sciffusion.testing``), so every
printed number is compared with the exact target computed by quadrature:

* ``sciffusion fkc anneal --beta 3``: q^beta for q = 0.5 N(-2, 0.3^2) + 0.5 N(2, 1);
* ``sciffusion fkc product``: q1 q2 with a second mixture;
* ``sciffusion fkc cfg --w 2``: q^(1-w) q(.|c)^w with a re-weighted "conditional" mixture.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from sciffusion.cli import finite_float, nonnegative_float, positive_float, positive_int, unit_interval
from sciffusion.processes import get_process
from sciffusion.testing import GaussianMixture

from .fkc import Target, anneal, guidance, product, sample_fkc

_GRID = torch.linspace(-12.0, 12.0, 24001, dtype=torch.float64)


def _mixtures():
    q = GaussianMixture(torch.tensor([[-2.0], [2.0]]), torch.tensor([0.09, 1.0]))
    q2 = GaussianMixture(torch.tensor([[-1.5], [1.5]]), torch.tensor([0.25, 0.49]))
    qc = GaussianMixture(torch.tensor([[-2.0], [2.0]]), torch.tensor([0.09, 1.0]), torch.tensor([0.2, 0.8]))
    return q, q2, qc


def build(kind: str, process, *, beta: float = 3.0, w: float = 2.0) -> tuple[Target, list, list]:
    """The demo target and the mixtures/exponents that define its exact density."""
    q, q2, qc = _mixtures()
    if kind == "anneal":
        return anneal(q.denoiser(process), beta), [q], [beta]
    if kind == "product":
        return product(q.denoiser(process), q2.denoiser(process)), [q, q2], [1.0, 1.0]
    if kind == "cfg":
        return guidance(q.denoiser(process), qc.denoiser(process), w), [q, qc], [1 - w, w]
    raise ValueError(f"kind must be anneal, product or cfg, got {kind!r}")


def exact_stats(mixtures, exponents, process, t) -> dict:
    """Left mass and mean of the normalised target by quadrature on a 1e-3 grid."""
    logp = sum(a * m.log_prob(_GRID[:, None], process, t) for m, a in zip(mixtures, exponents))
    p = torch.softmax(logp, 0)
    return {"left_mass": float(p[_GRID < 0].sum()), "mean": float((p * _GRID).sum())}


def estimate(result) -> dict:
    """Weighted left mass and mean pooled over groups."""
    x = result.x[:, 0].double()
    w = (result.weights() / result.num_groups).reshape(-1)
    return {"left_mass": float((w * (x < 0)).sum()), "mean": float((w * x).sum())}


def compare(kind: str, *, process: str = "vp", beta: float = 3.0, w: float = 2.0, particles: int = 4096,
            steps: int = 200, noise="auto", threshold: float = 0.5, seed: int = 0) -> tuple[list, object]:
    """Exact vs FKC vs the uncorrected SDE (same steps, same NFE); returns rows and the FKC result."""
    proc = get_process(process)
    target, mixtures, exps = build(kind, proc, beta=beta, w=w)
    exact = exact_stats(mixtures, exps, proc, proc.t_min)
    rows = [{"target": kind, "sampler": "exact (quadrature)", **{k: round(v, 4) for k, v in exact.items()}}]
    fkc_result = None
    for correct in (True, False):
        res = sample_fkc(target, (1, 1), num_particles=particles, num_steps=steps, noise=noise,
                         threshold=threshold, correct=correct, warn_ess=None, dtype=torch.float64,
                         generator=torch.Generator().manual_seed(seed))
        est = estimate(res)
        rows.append({"target": kind, "sampler": "FKC" if correct else "uncorrected",
                     **{k: round(v, 4) for k, v in est.items()}, "nfe": res.nfe,
                     "resampling_events": res.num_resampling_events})
        if correct:
            fkc_result = res
    return rows, fkc_result


def _plot_tour(path: Path, results: dict) -> None:
    import matplotlib.pyplot as plt  # no backend chosen: pyplot picks a non-interactive one headless

    fig, axes = plt.subplots(1, len(results), figsize=(3.6 * len(results), 3.2))
    for ax, (kind, (res, mixtures, exps, proc)) in zip(axes, results.items()):
        logp = sum(a * m.log_prob(_GRID[:, None], proc, proc.t_min) for m, a in zip(mixtures, exps))
        dens = torch.softmax(logp, 0) / float(_GRID[1] - _GRID[0])
        x = res.x[:, 0].double().numpy()
        ax.hist(x, bins=120, range=(-5, 6), weights=res.weights().reshape(-1).numpy(), density=True,
                alpha=0.5, label="FKC (weighted)")
        ax.plot(_GRID.numpy(), dens.numpy(), "k", lw=1, label="exact")
        ax.set_xlim(-5, 6)
        ax.set_title(kind, fontsize=9)
    axes[0].legend(fontsize=7)
    first = next(iter(results.values()))[0]
    from .diagnostics import plot_diagnostics

    fig2 = plot_diagnostics(first)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    fig2.savefig(path.with_name("fkc_diagnostics.png"), dpi=100)
    plt.close(fig)
    plt.close(fig2)


def tour(out_dir: Path, quick: bool) -> dict:
    """Annealing (beta=3), product and CFG (w=2) on 1-D mixtures: exact vs FKC vs uncorrected."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    particles, steps = (2048, 100) if quick else (8192, 400)
    rows, results = [], {}
    for kind in ("anneal", "product", "cfg"):
        proc = get_process("vp")
        r, res = compare(kind, particles=particles, steps=steps)  # noise="auto": eta per kind of target
        rows += r
        _, mixtures, exps = build(kind, proc)
        results[kind] = (res, mixtures, exps, proc)
    _plot_tour(out_dir / "fkc_targets.png", results)
    return {"section": "feynman_kac", "particles": particles,
            "steps": steps, "rows": rows, "figures": ["fkc_targets.png", "fkc_diagnostics.png"]}


def _cmd(args) -> int:
    kind = args.fkc_command
    if args.out is not None and args.out.exists() and not args.out.is_dir():
        raise ValueError(f"--out {args.out} exists and is not a folder")
    noise = args.noise
    rows, res = compare(kind, process=args.process, beta=getattr(args, "beta", 3.0), w=getattr(args, "w", 2.0),
                        particles=args.particles, steps=args.steps, noise=noise, threshold=args.threshold,
                        seed=args.seed)
    for r in rows:
        print("  ".join(f"{k}={v}" for k, v in r.items()))
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        fig = res.plot_diagnostics()
        fig.savefig(args.out / f"fkc_{kind}_diagnostics.png", dpi=100)
        (args.out / f"fkc_{kind}.json").write_text(json.dumps(rows, indent=1))
        print(f"wrote {args.out}")
    return 0


def _noise(text: str):
    """``--noise``: auto, target_score, tempered or a number >= 0 (checked before any work)."""
    import argparse

    if text in ("auto", "target_score", "tempered"):
        return text
    try:
        return nonnegative_float(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected auto, target_score, tempered or a number >= 0, got {text!r}")


def register_cli(subparsers) -> None:
    """``sciffusion fkc {anneal,product,cfg}``: FKC on exact 1-D mixtures, compared with the exact target."""
    p = subparsers.add_parser("fkc", help="Feynman-Kac correctors: annealing, products, guidance (exact demo)")
    sub = p.add_subparsers(dest="fkc_command", required=True)
    for name, help_ in (("anneal", "q^beta"), ("product", "q1 * q2"), ("cfg", "q^(1-w) q(.|c)^w")):
        s = sub.add_parser(name, help=help_)
        if name == "anneal":
            s.add_argument("--beta", type=positive_float, default=3.0, help="inverse temperature (> 0)")
        if name == "cfg":
            s.add_argument("--w", type=finite_float, default=2.0, help="guidance weight")
        s.add_argument("--process", default="vp", choices=("vp", "subvp", "ve", "edm", "linear"),
                       help="forward process")
        s.add_argument("--particles", type=positive_int, default=4096, help="number of particles")
        s.add_argument("--steps", type=positive_int, default=200, help="sampler steps")
        s.add_argument("--noise", default="auto", type=_noise, help="SDE noise level: auto (default: eta = min(max(A, 1), 3) for "
                       "exponents summing to A, i.e. 1 for cfg, 2 for product, beta for anneal up to 3; the "
                       "setting whose bias at 200 steps is within Monte Carlo error), target_score (eta=1), "
                       "tempered (eta=1/A) "
                       "or a number eta >= 0; larger eta keeps particles nearer the target (lower weight variance)")
        s.add_argument("--threshold", type=unit_interval, default=0.5,
                       help="resample when ESS < threshold * N, in (0, 1]")
        s.add_argument("--seed", type=int, default=0, help="random seed")
        s.add_argument("--out", type=Path, default=None, help="folder for the diagnostics figure and JSON")
        s.set_defaults(func=_cmd)


__all__ = ["tour", "register_cli", "compare", "build", "exact_stats", "estimate"]
