"""Feynman–Kac correctors on the 40-mode 2-D mixture annealed to beta = 3, with exact noised scores.

Data: 40 equally weighted isotropic Gaussians, means uniform in [-40, 40]^2 (seed 0), std
softplus(2) = 2.127 per coordinate. Target: q^3 (normalised). The exact target is computed on a
fine grid (spacing 0.05 on [-50, 50]^2): mode occupancies (mass of each mean's Voronoi cell),
within-mode spread, and exact reference samples (grid cells + uniform jitter).

Compared at equal NFE (one score evaluation per step per particle), EDM process
(sigma in [0.01, 160]), log-SNR-uniform grid, exponential integrator:
  * target-score SDE (eta = 1) and tempered-noise SDE (eta = 1/beta), each with and without FKC;
  * FKC with systematic resampling every step vs ESS-triggered (ESS < N/2);
  * particles 256..16384 at 1000 steps (five seeds from 4096 up); steps 100..3000 at 4096 particles;
  * pushing lower: more noise in the SDE (eta = beta), trapezoid weights, more particles/steps;
  * where the weight variance is made: runs started at sigma_max = 20, 40, 80 from the exact
    annealed target (Gaussian proposal + exact importance weights), skipping the high-noise phase.
Metrics: mode-occupancy TV, occupancy-weighted within-mode spread (per-coordinate RMS, exact
value printed), W1 / W2 (POT, exact OT between 2000 resampled particles and 2000 exact samples),
MMD^2 (Gaussian kernels, bandwidths 1, 4, 16). Floors: the same metrics for N exact samples.

Run:  OMP_NUM_THREADS=1 python benchmarks/feynman_kac.py [--quick]
Writes benchmarks/results/feynman_kac.json.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from sciffusion import EDM, Denoiser
from sciffusion.testing import GaussianMixture
from sciffusion.domains.feynman_kac import anneal, sample_fkc
from sciffusion.smc import resample

BETA = 3.0
K = 40
STD = float(F.softplus(torch.tensor(2.0, dtype=torch.float64)))


def mixture():
    g = torch.Generator().manual_seed(0)
    means = torch.rand(K, 2, generator=g, dtype=torch.float64) * 80 - 40
    return means


def fast_model(means, var, process):
    """Exact eps of an equal-weight isotropic mixture (all components variance ``var``):
    eps = sigma (x - alpha sum_k r_k m_k) / s^2, s^2 = alpha^2 var + sigma^2; one (n, K) matmul,
    ~50x faster than the general oracle (checked against it in ``main``)."""
    m2 = (means ** 2).sum(1)

    def model(x, t):
        t0 = torch.as_tensor(t).reshape(-1)[0].double()
        a, s = float(process.alpha(t0)), float(process.sigma(t0))
        s2 = a * a * var + s * s
        xd = x.double()
        logits = (2 * a * xd @ means.T - a * a * m2) / (2 * s2)  # -|x - a m|^2/(2 s2) up to x-only terms
        mbar = torch.softmax(logits, 1) @ means
        return (s * (xd - a * mbar) / s2).to(x.dtype)

    return model


class Exact:
    """The exact annealed target on a grid: occupancies, spreads, reference samples."""

    def __init__(self, means, h=0.05, lim=50.0):
        self.means = means.numpy()
        ax = np.arange(-lim, lim + h / 2, h)
        self.h, self.ax = h, ax
        logp = np.empty((len(ax), len(ax)))
        lab = np.empty((len(ax), len(ax)), dtype=np.int64)
        X = ax[:, None]
        for i, x0 in enumerate(ax):  # row by row: logsumexp over modes in float64
            d2 = (x0 - self.means[None, :, 0]) ** 2 + (X - self.means[None, :, 1]) ** 2  # (len, K)
            lq = -d2 / (2 * STD ** 2)
            mx = lq.max(1, keepdims=True)
            logp[i] = BETA * (mx[:, 0] + np.log(np.exp(lq - mx).sum(1)))
            lab[i] = d2.argmin(1)
        p = np.exp(logp - logp.max())
        self.p = p / p.sum()
        self.lab = lab
        self.occ = np.bincount(lab.ravel(), weights=self.p.ravel(), minlength=K)
        gx, gy = np.meshgrid(ax, ax, indexing="ij")
        d2 = (gx - self.means[lab, 0]) ** 2 + (gy - self.means[lab, 1]) ** 2
        ms = np.bincount(lab.ravel(), weights=(self.p * d2).ravel(), minlength=K) / np.maximum(self.occ, 1e-300)
        self.spread_k = np.sqrt(ms / 2)
        self.spread = float((self.occ * self.spread_k).sum())
        self.gx, self.gy = gx.ravel(), gy.ravel()

    def sample(self, n, rng):
        idx = rng.choice(self.p.size, size=n, p=self.p.ravel())
        jit = (rng.random((n, 2)) - 0.5) * self.h
        return np.stack([self.gx[idx], self.gy[idx]], 1) + jit

    def assign(self, x):
        d2 = ((x[:, None, :] - self.means[None]) ** 2).sum(-1)
        return d2.argmin(1), d2.min(1)


def mmd2(x, y, bandwidths=(1.0, 4.0, 16.0)):
    """Unbiased MMD^2 with a sum of Gaussian kernels."""
    x, y = torch.as_tensor(x), torch.as_tensor(y)
    dxx, dyy, dxy = torch.cdist(x, x) ** 2, torch.cdist(y, y) ** 2, torch.cdist(x, y) ** 2
    n, m = len(x), len(y)
    out = 0.0
    for b in bandwidths:
        kxx, kyy, kxy = (torch.exp(-d / (2 * b * b)) for d in (dxx, dyy, dxy))
        out += float((kxx.sum() - n) / (n * (n - 1)) + (kyy.sum() - m) / (m * (m - 1)) - 2 * kxy.mean())
    return out


def metrics(exact, x, w, ref, rng, n_ot=2000):
    """Weighted particles (x: (n, 2), w: (n,) summing to 1) against the exact target."""
    import ot

    lab, d2 = exact.assign(x)
    occ = np.bincount(lab, weights=w, minlength=K)
    tv = 0.5 * float(np.abs(occ - exact.occ).sum())
    ms = np.bincount(lab, weights=w * d2, minlength=K) / np.maximum(occ, 1e-300)
    spread = float((exact.occ * np.sqrt(ms / 2)).sum())
    pick = rng.choice(len(x), size=n_ot, p=w)  # equal-weight subsample for OT / MMD
    xs = x[pick]
    M = ot.dist(xs, ref, metric="euclidean")
    u = np.full(n_ot, 1.0 / n_ot)
    w1 = float(ot.emd2(u, u, M, numItermax=2_000_000))
    w2 = math.sqrt(float(ot.emd2(u, u, M ** 2, numItermax=2_000_000)))
    return {"tv": round(tv, 4), "spread": round(spread, 4), "w1": round(w1, 4), "w2": round(w2, 4),
            "mmd2": round(mmd2(xs, ref), 5)}


def exact_start(gm, process, N, seed):
    """Particles at sigma_max from the Gaussian N(0, (sigma_max^2 + data var) / beta) with their
    exact importance weights beta * log q_T - log N (q_T: the noised mixture, known in closed form),
    so that a run started at a low sigma_max is exact from its first step."""
    t_max = torch.tensor(process.t_max, dtype=torch.float64)
    v = (float(process.sigma(t_max)) ** 2 + float(gm.means.var(0, unbiased=False).mean()) + STD ** 2) / BETA
    g = torch.Generator().manual_seed(10_000 + seed)
    x = torch.randn(N, 2, generator=g, dtype=torch.float64) * math.sqrt(v)
    log_prop = -(x ** 2).sum(1) / (2 * v) - math.log(2 * math.pi * v)
    return x, BETA * gm.log_prob(x, process, t_max) - log_prop


def run_one(den, exact, ref, *, N, steps, noise, correct, threshold=1.0, weight_rule="left", seed=0, gm=None):
    den.reset_nfe()
    t0 = time.perf_counter()
    start, extra = (1, 2), {}
    if gm is not None:  # exact start at the process's sigma_max
        start, lw = exact_start(gm, den.process, N, seed)
        if correct:
            extra["log_weights"] = lw
        else:  # the uncorrected sampler starts from the same target, resampled once
            start = start[resample(lw[None], "systematic", torch.Generator().manual_seed(seed))[0]]
    with torch.no_grad():
        res = sample_fkc(anneal(den, BETA), start, num_particles=N, num_steps=steps, noise=noise,
                         correct=correct, threshold=threshold, weight_rule=weight_rule, warn_ess=None,
                         generator=torch.Generator().manual_seed(seed), dtype=torch.float64, **extra)
    secs = time.perf_counter() - t0
    x = res.x.numpy()
    w = res.weights().reshape(-1).numpy()
    row = {"noise": noise if isinstance(noise, str) else f"eta={noise:g}", "fkc": correct, "N": N,
           "steps": steps, "resample": ("every" if threshold >= 1 else f"ess<{threshold:g}N") if correct else "-",
           "weights": weight_rule if correct else "-",
           "sigma_max": round(float(den.process.sigma(torch.tensor(den.process.t_max, dtype=torch.float64))), 3),
           "start": "exact" if gm is not None else "N(0, s^2/beta)", "nfe": res.nfe, "seed": seed}
    row.update(metrics(exact, x, w, ref, np.random.default_rng(seed + 100)))
    row.update({"resampling_events": res.num_resampling_events,
                "mean_ess_frac": round(float(res.ess.mean()) / N, 3) if correct else None,
                "seconds": round(secs, 1)})
    return row


def summarise(rows):
    """Mean, sd and range over seeds of every configuration run with more than one seed."""
    groups = {}
    for r in rows:
        key = (r["noise"], r["fkc"], r["resample"], r["weights"], r["N"], r["steps"], r["sigma_max"], r["start"])
        groups.setdefault(key, []).append(r)
    unc = {(k[0],) + k[4:]: np.mean([r["tv"] for r in v]) for k, v in groups.items() if not k[1]}
    out = []
    for key, rs in groups.items():
        if len(rs) < 2:
            continue
        noise, fkc, res, wr, n, steps, smax, start = key
        tv = [r["tv"] for r in rs]
        row = {"noise": noise, "fkc": fkc, "resample": res, "weights": wr, "N": n, "steps": steps,
               "sigma_max": smax, "start": start, "seeds": len(rs),
               "tv_mean": round(float(np.mean(tv)), 4), "tv_sd": round(float(np.std(tv, ddof=1)), 4),
               "tv_min": min(tv), "tv_max": max(tv),
               "spread_mean": round(float(np.mean([r["spread"] for r in rs])), 4),
               "w1_mean": round(float(np.mean([r["w1"] for r in rs])), 3),
               "w2_mean": round(float(np.mean([r["w2"] for r in rs])), 3),
               "mmd2_mean": round(float(np.mean([r["mmd2"] for r in rs])), 5)}
        ref_key = (noise, n, steps, smax, start)
        if fkc and ref_key in unc:
            row["tv_ratio_vs_uncorrected"] = round(float(np.mean(tv)) / float(unc[ref_key]), 3)
            row["seeds_at_most_half"] = int(sum(t <= 0.5 * unc[ref_key] for t in tv))
        out.append(row)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a few configurations only (smoke test)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "feynman_kac.json")
    args = ap.parse_args()
    t_start = time.perf_counter()
    torch.set_num_threads(1)
    means = mixture()
    process = EDM(sigma_min=0.01, sigma_max=160.0)
    den = Denoiser(fast_model(means, STD ** 2, process), process, "eps")
    gm = GaussianMixture(means, torch.full((K,), STD ** 2))
    xt = torch.randn(256, 2, generator=torch.Generator().manual_seed(9), dtype=torch.float64) * 30
    for t in (0.05, 1.0, 20.0):
        err = (den.eps(xt, torch.tensor(t)) - gm.eps(xt, process, t)).abs().max()
        assert err < 1e-6, f"fast model disagrees with the oracle at t={t}: {err}"
    exact = Exact(means)
    rng = np.random.default_rng(0)
    ref = exact.sample(2000, rng)
    print(f"exact target: occupancy max {exact.occ.max():.4f} min {exact.occ.min():.4f} "
          f"(uniform would be {1 / K:.4f}); within-mode spread {exact.spread:.4f} "
          f"(isolated mode: {STD / math.sqrt(BETA):.4f})")

    floors = {}
    for n in (256, 1024, 4096, 16384):
        xs = exact.sample(n, rng)
        floors[n] = metrics(exact, xs, np.full(n, 1.0 / n), ref, rng)
        print(f"floor: {n} exact samples: {floors[n]}")

    rows = []

    def add(den=den, **kw):
        row = run_one(den, exact, ref, **kw)
        rows.append(row)
        print(" ".join(f"{k}={v}" for k, v in row.items()), flush=True)

    seeds = range(5)
    if args.quick:
        for correct in (False, True):
            add(N=1024, steps=200, noise="target_score", correct=correct)
    else:
        # 1. headline at the prototype's setting (4000 -> 4096 particles, 1000 steps), 5 seeds:
        #    target-score / tempered-noise / eta = beta SDEs, each uncorrected, FKC resampling
        #    every step (systematic), FKC resampling when ESS < N/2; and trapezoid weights
        for seed in seeds:
            for noise in ("target_score", "tempered", BETA):
                add(N=4096, steps=1000, noise=noise, correct=False, seed=seed)
                add(N=4096, steps=1000, noise=noise, correct=True, threshold=1.0, seed=seed)
                add(N=4096, steps=1000, noise=noise, correct=True, threshold=0.5, seed=seed)
            add(N=4096, steps=1000, noise=BETA, correct=True, threshold=0.5, weight_rule="trapezoid", seed=seed)
        # 2. particles at 1000 steps: one seed for the small N, five for the larger N
        for N in (256, 1024):
            add(N=N, steps=1000, noise="target_score", correct=True, threshold=1.0)
            add(N=N, steps=1000, noise=BETA, correct=True, threshold=1.0)
            add(N=N, steps=1000, noise=BETA, correct=True, threshold=0.5)
        for seed in seeds:
            for N in (8192, 16384):
                add(N=N, steps=1000, noise="target_score", correct=False, seed=seed)
                add(N=N, steps=1000, noise="target_score", correct=True, threshold=1.0, seed=seed)
            add(N=16384, steps=1000, noise="tempered", correct=False, seed=seed)
            add(N=16384, steps=1000, noise="tempered", correct=True, threshold=1.0, seed=seed)
            add(N=16384, steps=1000, noise=BETA, correct=True, threshold=1.0, seed=seed)
        # 3. steps at 4096 particles
        for steps in (100, 300, 3000):
            add(N=4096, steps=steps, noise="target_score", correct=False)
            add(N=4096, steps=steps, noise="target_score", correct=True, threshold=1.0)
            add(N=4096, steps=steps, noise=BETA, correct=True, threshold=0.5)
        # 4. where the weight variance comes from: start at a lower sigma_max from the exact
        #    annealed target (exact importance weights), skipping the high-noise phase
        for smax in (20.0, 40.0, 80.0):
            proc_s = EDM(sigma_min=0.01, sigma_max=smax)
            den_s = Denoiser(fast_model(means, STD ** 2, proc_s), proc_s, "eps")
            for seed in seeds:
                add(den=den_s, gm=gm, N=4096, steps=1000, noise="target_score", correct=False, seed=seed)
                add(den=den_s, gm=gm, N=4096, steps=1000, noise="target_score", correct=True, threshold=1.0,
                    seed=seed)

    summary = summarise(rows)
    print("\nsummary (mean over seeds; TV ratio = FKC / uncorrected of the same SDE, N, steps and start):")
    for r in summary:
        print(" ".join(f"{k}={v}" for k, v in r.items()))

    out = {"benchmark": "feynman_kac", "target": f"q^{BETA:g}, q = 40-mode 2-D mixture, std {STD:.4f}",
           "process": repr(process), "schedule": "logsnr", "integrator": "exponential",
           "exact": {"occupancy_max": float(exact.occ.max()), "occupancy_min": float(exact.occ.min()),
                     "spread": exact.spread, "grid_spacing": exact.h},
           "floors": {str(k): v for k, v in floors.items()}, "summary": summary, "rows": rows,
           "machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
           "seconds": round(time.perf_counter() - t_start, 1)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    print(f"wrote {args.out} ({out['seconds']} s)")


if __name__ == "__main__":
    main()
