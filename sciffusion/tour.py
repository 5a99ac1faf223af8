"""The core section of ``sciffusion tour``: learn a 2-D Gaussian mixture, sample it with several
solvers, and report the error against the exact mixture and the NFE.

Domain sections are plugged in through the ``sciffusion.domains`` entry-point group: each
entry point is a module with a ``tour(out_dir, quick) -> dict`` function (and optionally
``register_cli(subparsers)``); ``sciffusion tour`` adds each section's wall-clock and CPU
seconds. The core never imports a domain by name.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from .losses import dsm_loss
from .nn import MLP
from .processes import VP
from .samplers import sample
from .testing import sliced_w1, standard_mixture_2d
from .training import fit


def core_tour(out: Path, quick: bool = False, progress: bool = True) -> dict:
    """Train an MLP on the tour mixture with DSM, sample with several solvers, and measure each
    against the exact mixture: sliced W1 to exact samples (with the two-sample floor) and the mean
    exact log-density of the samples (the data's own value is the target; blurred samples fall
    below it). The exact-score model is sampled alongside to separate solver from model error."""
    gm = standard_mixture_2d()
    g = torch.Generator().manual_seed(0)
    data = gm.sample(20000, g).float()
    process = VP()
    model = MLP(2, hidden=128, depth=3)
    steps = 1500 if quick else 2500
    res = fit(model, lambda m, x, gen: dsm_loss(m, x, process, generator=gen), data, steps=steps,
              batch_size=512, lr=3e-3, ema_decay=0.995, seed=0, progress=progress, desc="core: fit")
    from .denoisers import Denoiser

    den = Denoiser(res.ema, process, "eps")
    exact = gm.denoiser(process, "eps")
    n = 2000
    ref = gm.sample(n, torch.Generator().manual_seed(1))
    floor = sliced_w1(gm.sample(n, torch.Generator().manual_seed(2)), ref)
    rows = []
    samples, nfes = {}, {}
    for name, steps_ in [("euler_maruyama", 200), ("euler", 50), ("heun", 10), ("ddim", 20),
                         ("dpmpp_2m", 10), ("unipc", 10)]:
        for label, d in (("learned", den), ("exact", exact)):
            d.reset_nfe()
            with torch.no_grad():
                x = sample(d, (n, 2), sampler=name, num_steps=steps_, generator=torch.Generator().manual_seed(3))
            if label == "learned":
                samples[name] = x
                nfes[name] = d.nfe
            rows.append({"solver": name, "model": label, "nfe": d.nfe,
                         "sliced_w1": round(sliced_w1(x.double(), ref), 4),
                         "mean_exact_logp": round(float(gm.log_prob(x.double()).mean()), 3)})
    _plot(out / "core_samples.png", ref, samples, nfes)
    return {"section": "core", "train_steps": steps,
            "final_loss": round(sum(res.losses[-100:]) / 100, 4), "sampling_floor_sliced_w1": round(floor, 4),
            "data_mean_exact_logp": round(float(gm.log_prob(ref).mean()), 3),
            "rows": rows, "figures": ["core_samples.png"]}


def _plot(path: Path, ref, samples: dict, nfe: dict) -> None:
    """Exact mixture beside each solver's samples from the learned model (headless-safe: pyplot
    picks a non-interactive backend by itself when there is no display)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(samples) + 1, figsize=(3 * (len(samples) + 1), 3.3), sharex=True, sharey=True)
    axes[0].scatter(ref[:, 0], ref[:, 1], s=1, c="k")
    axes[0].set_title(f"exact mixture ({len(ref)} draws)", fontsize=9)
    for ax, (name, x) in zip(axes[1:], samples.items()):
        ax.scatter(x[:, 0], x[:, 1], s=1, c="C0")
        ax.set_title(f"{name}: {len(x)} samples\n{nfe[name]} model calls (NFE)", fontsize=9)
    for ax in axes:
        ax.set_xlabel("x1")
    axes[0].set_ylabel("x2")
    fig.suptitle("learned 2-D Gaussian mixture (DSM-trained MLP, VP)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _strict(obj):
    """JSON-safe copy: non-finite floats -> None, tensors/arrays -> lists, paths -> str."""
    if isinstance(obj, dict):
        return {str(k): _strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_strict(v) for v in obj]
    if hasattr(obj, "tolist"):
        return _strict(obj.tolist())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, (str, int, bool)) or obj is None:
        return obj
    return str(obj)


def write_summary(out: Path, sections: list[dict]) -> Path:
    """``out/summary.json``: strict JSON (no NaN or Infinity), figure paths relative to the file."""
    path = out / "summary.json"
    fixed = []
    for sec in sections:
        sec = dict(sec)
        folder = sec.get("folder", ".")
        if "figures" in sec:
            sec["figures"] = [str(Path(folder) / f) if folder != "." else str(f) for f in sec["figures"]]
        fixed.append(sec)
    path.write_text(json.dumps(_strict(fixed), indent=2, allow_nan=False))
    return path
