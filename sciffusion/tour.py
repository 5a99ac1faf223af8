"""The core section of ``sciffusion tour``: learn a 2-D Gaussian mixture, sample it with several
solvers, and report the error against the exact mixture and the NFE.

Domain sections are plugged in through the ``sciffusion.domains`` entry-point group: each
entry point is a module with a ``tour(out_dir, quick) -> dict`` function (and optionally
``register_cli(subparsers)``). The core never imports a domain by name.
"""

from __future__ import annotations

import json
import time
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
    t0 = time.perf_counter()
    gm = standard_mixture_2d()
    g = torch.Generator().manual_seed(0)
    data = gm.sample(20000, g).float()
    process = VP()
    model = MLP(2, hidden=128, depth=3)
    steps = 1500 if quick else 6000
    res = fit(model, lambda m, x, gen: dsm_loss(m, x, process, generator=gen), data, steps=steps,
              batch_size=512, lr=3e-3, ema_decay=0.995, seed=0, progress=progress, desc="core: fit")
    from .denoisers import Denoiser

    den = Denoiser(res.ema, process, "eps")
    exact = gm.denoiser(process, "eps")
    n = 2000
    ref = gm.sample(n, torch.Generator().manual_seed(1))
    floor = sliced_w1(gm.sample(n, torch.Generator().manual_seed(2)), ref)
    rows = []
    samples = {}
    for name, steps_ in [("euler_maruyama", 200), ("euler", 50), ("heun", 10), ("ddim", 20),
                         ("dpmpp_2m", 10), ("unipc", 10)]:
        for label, d in (("learned", den), ("exact", exact)):
            d.reset_nfe()
            with torch.no_grad():
                x = sample(d, (n, 2), sampler=name, num_steps=steps_, generator=torch.Generator().manual_seed(3))
            if label == "learned":
                samples[name] = x
            rows.append({"solver": name, "model": label, "nfe": d.nfe,
                         "sliced_w1": round(sliced_w1(x.double(), ref), 4),
                         "mean_exact_logp": round(float(gm.log_prob(x.double()).mean()), 3)})
    _plot(out / "core_samples.png", ref, samples)
    return {"section": "core", "seconds": round(time.perf_counter() - t0, 1), "train_steps": steps,
            "final_loss": round(sum(res.losses[-100:]) / 100, 4), "sampling_floor_sliced_w1": round(floor, 4),
            "data_mean_exact_logp": round(float(gm.log_prob(ref).mean()), 3),
            "rows": rows, "figures": ["core_samples.png"]}


def _plot(path: Path, ref, samples: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(samples) + 1, figsize=(3 * (len(samples) + 1), 3), sharex=True, sharey=True)
    axes[0].scatter(ref[:, 0], ref[:, 1], s=1, c="k")
    axes[0].set_title("exact mixture")
    for ax, (name, x) in zip(axes[1:], samples.items()):
        ax.scatter(x[:, 0], x[:, 1], s=1)
        ax.set_title(name)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_summary(out: Path, sections: list[dict]) -> Path:
    path = out / "summary.json"
    path.write_text(json.dumps(sections, indent=2, default=str))
    return path
