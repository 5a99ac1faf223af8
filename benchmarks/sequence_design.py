"""Reward-guided DNA/RNA design: SVDD against best-of-N and SMC at matched model cost.

Part ``motif`` (the headline). Data: an order-2 Markov background over ACGT (transition rows
softmax(1.5 N(0,1)), seed 0), L = 64, 4000 training sequences, with the 8-mer motif TGACTCAG
planted (overwriting 8 sites at a uniform position) in 30% of them. Base model: the ``discrete``
dilated-CNN masked denoiser (48 channels, depth 4, ``--train-steps`` steps, EMA decay ``--ema-decay`` 0.998)
trained with the ``discrete`` ELBO loss; its fit is reported as the ELBO of training and held-out data beside
that of its own samples, and the motif rate of its samples beside the data's.
Reward: windows within Hamming distance 1 of the motif (forward strand). Decoders on a 64-step
uniform grid, 64 designs each, at matched model cost (sequences evaluated by the model per design,
measured, not assumed):
  * SVDD-PM, argmax selection (alpha = 0), M = 2, 4, 8, 16 candidates, with its default value (``--value-samples``
    64 draws of the denoised prediction per candidate) and, same seed, the argmax value (``svdd-pm-argmax``);
  * best-of-N with N chosen so its measured model evaluations match SVDD-PM's at each M;
  * SMC reward tilting (feynman_kac masked FKC + core SMC, lambda = 2, ESS < N/2 resampling),
    N particles matched the same way (it evaluates every particle at every step: ~64 N per design);
  * SVDD-MC (value network regressed on 1024 base rollouts; its training cost is reported apart);
  * the unguided base sampler.
Beside the reward: ELBO under the base model (nats per sequence, 8 draws), 3-mer spectrum
correlation with the training data, pairwise Hamming diversity. Three decoding seeds.

Part ``hidden`` (optional, ``--parts hidden``): hidden ground truth. 6000 order-2 Markov 64-mers with
sites drawn from the JASPAR frequency matrices of HNF4A (MA0114) and CEBPA (MA0102), each in 30%;
activity = a + b + 2ab - 4|GC - 0.5| with a, b the PWM scores above 6 bits / 6, labels with noise
sd 0.1. Two CNN oracles are fitted on disjoint halves: one guides the decoders, the other and the
ground truth judge them (the gap shows reward hacking). SVDD-PM (M = 4, 8), best-of-N and SMC at
matched model evaluations, 64 designs, three seeds; median and 90th percentile on all three.

Part ``rna`` (optional, ``--parts rna``): base model (48 channels, ``--rna-train-steps`` steps) on 3000 50-nt
sequences from an order-2 Markov background over ACGU; reward = minus the ViennaRNA base-pair distance of the
MFE structure to a fixed 50-nt two-hairpin target; SVDD-PM vs best-of-N vs SMC at matched model evaluations
(NFE), and best-of-N again at matched reward evaluations (N = SVDD-PM's reward evaluations per design; SMC's
particles cost N * steps model and N * (steps + 1) reward evaluations, so one SMC run matches SVDD-PM on both).

Part ``steps`` (optional, ``--parts steps``, the cached motif model): candidates per step against steps at one
model cost: SVDD-PM with (M, K) = (16, 64), (32, 32), (64, 16), each against best-of-N matched to its measured
model evaluations on the same K-step grid and on the 64-step grid; three seeds.

Part ``steps_low`` (optional, ``--parts steps_low``, the cached motif model): the same question at the main table's
low costs (about 80, 160, 320 model evaluations per design), and part ``steps``' ~950 again: SVDD-PM on
K = 64, 32, 16, 8, 4, 2 steps (not 2 at ~950) with M set so its measured cost is near each target, best-of-N
with base samples on K = 64, ..., 2, 1 steps and N = cost / (one sample's measured cost); each side's best grid
is its figure; ELBO, 3-mer correlation, diversity beside; three seeds, 64 designs. Writes
benchmarks/results/sequence_design_steps_low.json.

CPU budget: one thread (OMP_NUM_THREADS=1). Measured on the shared 2-core machine at load ~10: base-model
training 3000 steps ~16-18 min wall per model (motif, rna), then decoding ~10-20 min wall for ``motif``,
~30 min for ``rna`` (its reward-matched best-of-N draws 200-400 base samples per design), ~15 min for
``steps`` and ~12 min for ``steps_low`` (744 s at load ~2-5). ``--quick`` is a smoke run (tiny sizes, not
quoted). ``--cache DIR`` keeps the trained base models (and their training checkpoints) for reruns.

Part ``values`` (optional, ``--parts values``, the cached motif model): SVDD-PM's value draws per candidate,
``value_samples`` S = 0 (argmax), 4, 16, 64, 256 at (M, K) = (8, 64) and (22, 16); three seeds.

Run:  OMP_NUM_THREADS=1 python benchmarks/sequence_design.py [--parts motif,rna,steps,steps_low,hidden,values] [--quick]
      [--cache DIR]
Writes benchmarks/results/sequence_design.json and .png when ``motif`` is among the parts, else
benchmarks/results/sequence_design_<parts>.json (and .png).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from sciffusion.domains.discrete import MaskedProcess
from sciffusion.domains.sequence_design import (DNA, HammingMotifCount, StructureDistance, elbo,
                                                fit_value_network, kmer_correlation, pairwise_hamming,
                                                sample_best_of_n, sample_smc, sample_svdd, train_base_model)
from sciffusion.domains.sequence_design.decoding import VALUE_SAMPLES

MOTIF = "TGACTCAG"
RNA_TARGET = "((((((((....))))))))..........((((((((....))))))))"  # 50 nt, two hairpins


def order2_markov(n, L, seed, scale=1.5, sample_seed=None):
    """``n`` sequences of an order-2 Markov chain over 4 letters (random rows, seeded by ``seed``; the
    sequences are drawn from that generator too, or from ``sample_seed`` for fresh draws of the same chain)."""
    g = torch.Generator().manual_seed(seed)
    T = torch.softmax(scale * torch.randn(16, 4, generator=g, dtype=torch.float64), -1)
    if sample_seed is not None:
        g = torch.Generator().manual_seed(sample_seed)
    x = torch.empty(n, L, dtype=torch.long)
    x[:, :2] = torch.randint(4, (n, 2), generator=g)
    for i in range(2, L):
        x[:, i] = torch.multinomial(T[4 * x[:, i - 2] + x[:, i - 1]], 1, generator=g).squeeze(1)
    return x


def planted(n, L, frac, seed, sample_seed=None):
    """The planted-motif data; ``sample_seed``: fresh sequences from the same chain (held-out data)."""
    x = order2_markov(n, L, seed, sample_seed=sample_seed)
    g = torch.Generator().manual_seed((seed if sample_seed is None else sample_seed) + 1)
    motif = DNA.encode(MOTIF)[0]
    rows = (torch.rand(n, generator=g) < frac).nonzero().squeeze(1)
    pos = torch.randint(L - len(MOTIF) + 1, (rows.numel(),), generator=g)
    for r, p in zip(rows.tolist(), pos.tolist()):
        x[r, p:p + len(MOTIF)] = motif
    return x


def base_model(data, cache, name, steps, width, ema_decay=None):
    """Train the base model, or load it from ``cache`` (a rerun with the same settings reuses it).
    ``ema_decay=None``: ``train_base_model``'s default, min(0.999, 1 - 10 / steps)."""
    from sciffusion.domains.sequence_design import load_base_model, save_base_model

    d = min(0.999, 1.0 - 10.0 / steps) if ema_decay is None else ema_decay
    path = None if cache is None else Path(cache) / f"{name}_w{width}_s{steps}_n{data.shape[0]}_ema{d:.5f}.pt"
    if path is not None and path.exists():
        model, proc, cfg, _ = load_base_model(path)
        return model, proc, {**cfg, "ema_decay": d, "steps": steps}, 0.0
    t0 = time.perf_counter()
    # a checkpoint beside the cached model: an interrupted run resumes, a longer one trains on
    ckpt = None if path is None else Path(cache) / f"{name}_w{width}_n{data.shape[0]}_ema{d:.5f}.ckpt"
    model, proc, cfg = train_base_model(data, arch="cnn", arch_kwargs={"channels": width, "depth": 4}, steps=steps,
                                        batch_size=128, lr=2e-3, ema_decay=d, seed=0, checkpoint=ckpt,
                                        progress=path is not None)
    if path is not None:
        save_base_model(path, model, cfg)
    return model, proc, {**cfg, "ema_decay": d, "steps": steps}, time.perf_counter() - t0


def naturalness(res, model, proc, data, eval_seed):
    g = torch.Generator().manual_seed(eval_seed)
    return {"elbo_nats": float(elbo(model, proc, res.x, num_samples=8, generator=g).mean()),
            "kmer3_corr": kmer_correlation(res.x, data, 3), "diversity": pairwise_hamming(res.x)}


def data_fit(model, proc, reward, data, heldout, L, steps, num=512):
    """How well the base model fits: ELBO of training and held-out data against that of its own samples,
    and the motif rate of its samples (``num`` each, seed 4242)."""
    g = torch.Generator().manual_seed(4242)
    base = sample_best_of_n(model, proc, reward, (num, L), steps, n=1, generator=g)
    e = lambda z: float(elbo(model, proc, z, num_samples=8, generator=g).mean())  # noqa: E731
    return {"elbo_train": e(data[:num]), "elbo_heldout": e(heldout[:num]), "elbo_samples": e(base.x),
            "base_reward": float(base.reward.mean()), "heldout_reward": float(reward(heldout[:num]).mean())}


def row(res, model, proc, data, eval_seed, **extra):
    out = {**res.summary(), **naturalness(res, model, proc, data, eval_seed), **extra}
    out["reward_calls"] = res.reward_calls
    out.pop("num", None)
    return out


def run_methods(model, proc, reward, data, L, steps, num, Ms, seeds, lam, value_net=None, match_reward=False,
                value_samples=VALUE_SAMPLES, argmax_rows=False, log=print):
    """Every method at each M, matched to SVDD-PM's measured model evaluations per design (rows with
    ``matched="nfe"``); with ``match_reward``, best-of-N once more with N = SVDD-PM's measured reward
    evaluations per design (``matched="reward"``). SMC needs no second run: it scores every particle
    at every step and at the end, so its N particles cost N * steps model and N * (steps + 1) reward
    evaluations per design, and SVDD-PM's ~M * steps of each match both with the same N (with
    ``value_samples=0``; S value draws multiply SVDD-PM's reward evaluations by about S). SVDD-PM runs with
    ``value_samples``; ``argmax_rows`` adds SVDD-PM with the argmax value (``value_samples=0``, method
    ``svdd-pm-argmax``, same seed) beside it."""
    rows = []
    for seed in seeds:
        g = lambda k: torch.Generator().manual_seed(1000 * seed + k)  # noqa: E731
        base = sample_best_of_n(model, proc, reward, (num, L), steps, n=1, generator=g(0))
        per_sample = base.model_evals_per_design
        rows.append(row(base, model, proc, data, seed, seed=seed, M=1, matched="-"))
        log(f"seed {seed} base: reward {rows[-1]['mean_reward']:.3f}, evals/design {per_sample:.1f}")
        for M in Ms:
            first = len(rows)
            sv = sample_svdd(model, proc, reward, (num, L), steps, num_candidates=M, alpha=0.0,
                             value_samples=value_samples, generator=g(M))
            rows.append(row(sv, model, proc, data, seed, seed=seed, M=M, matched="-", value_samples=value_samples))
            if argmax_rows:
                sva = sample_svdd(model, proc, reward, (num, L), steps, num_candidates=M, alpha=0.0, value_samples=0,
                                  generator=g(M))
                rows.append(row(sva, model, proc, data, seed, seed=seed, M=M, matched="-", value_samples=0))
                rows[-1]["method"] = "svdd-pm-argmax"
            n = max(1, round(sv.model_evals_per_design / per_sample))
            bon = sample_best_of_n(model, proc, reward, (num, L), steps, n=n, generator=g(100 + M))
            rows.append(row(bon, model, proc, data, seed, seed=seed, M=M, matched="nfe"))
            N = max(2, round(sv.model_evals_per_design / steps))
            smc = sample_smc(model, proc, reward, (num, L), steps, num_particles=N, lam=lam, generator=g(200 + M))
            rows.append(row(smc, model, proc, data, seed, seed=seed, M=M, matched="nfe",
                            resampling_steps=len(smc.extra["resample_steps"])))
            if value_net is not None:
                mc = sample_svdd(model, proc, reward, (num, L), steps, num_candidates=M, value=value_net,
                                 generator=g(300 + M))
                rows.append(row(mc, model, proc, data, seed, seed=seed, M=M, matched="-",
                                value_training_model_evals=value_net.training_model_evals,
                                value_training_reward_evals=value_net.training_reward_evals))
            if match_reward:
                n = max(1, round(sv.reward_evals_per_design))
                bon = sample_best_of_n(model, proc, reward, (num, L), steps, n=n, generator=g(400 + M))
                rows.append(row(bon, model, proc, data, seed, seed=seed, M=M, matched="reward"))
            log(f"seed {seed} M={M}: " + "; ".join(
                f"{r['method']}{'' if r['matched'] != 'reward' else ' (reward-matched)'} {r['mean_reward']:.3f} @ "
                f"{r['model_evals_per_design']:.0f} model / {r['reward_evals_per_design']:.0f} reward evals"
                for r in rows[first:]))
    return rows


def aggregate(rows):
    """Mean over seeds per (method, M, what it was matched on)."""
    keys = sorted({(r["method"], r["M"], r["matched"]) for r in rows})
    out = []
    for method, M, matched in keys:
        rs = [r for r in rows if (r["method"], r["M"], r["matched"]) == (method, M, matched)]
        agg = {"method": method, "M": M, "matched": matched, "seeds": len(rs)}
        for f in ("mean_reward", "model_evals_per_design", "reward_evals_per_design", "elbo_nats", "kmer3_corr",
                  "diversity"):
            v = torch.tensor([r[f] for r in rs], dtype=torch.float64)
            agg[f] = float(v.mean())
            agg[f + "_sd"] = float(v.std()) if len(rs) > 1 else 0.0
        out.append(agg)
    return out


def hidden_activity(x, pa, pb):
    """Ground truth: PWM hits of HNF4A (a) and CEBPA (b) above 6 bits, their cooperativity, a GC penalty."""
    a = (pa(x) - 6.0).clamp_min(0) / 6.0
    b = (pb(x) - 6.0).clamp_min(0) / 6.0
    gc = ((x == 1) | (x == 2)).double().mean(1)
    return a + b + 2.0 * a * b - 4.0 * (gc - 0.5).abs()


def plant_pfm(x, matrix_id, frac, g):
    from sciffusion.domains.sequence_design import jaspar_counts

    counts, _ = jaspar_counts(matrix_id)
    freq = (counts / counts.sum(0, keepdim=True)).T
    w = freq.shape[0]
    for r in (torch.rand(x.shape[0], generator=g) < frac).nonzero().squeeze(1).tolist():
        p = int(torch.randint(x.shape[1] - w + 1, (1,), generator=g))
        x[r, p:p + w] = torch.multinomial(freq, 1, generator=g).squeeze(1)
    return x


def hidden_part(args, q, out, aggs):
    """Guide with one CNN oracle, evaluate with another (disjoint halves) and with the ground truth."""
    from sciffusion.domains.sequence_design import CNNOracle, PWMScore

    t0 = time.perf_counter()
    L, n = 64, (600 if q else 6000)
    g = torch.Generator().manual_seed(21)
    x = order2_markov(n, L, seed=11)
    x = plant_pfm(x, "MA0114", 0.3, g)
    x = plant_pfm(x, "MA0102", 0.3, g)
    pa, pb = PWMScore("MA0114"), PWMScore("MA0102")
    truth = lambda z: hidden_activity(z, pa, pb)  # noqa: E731
    y = truth(x) + 0.1 * torch.randn(n, generator=g, dtype=torch.float64)
    half = n // 2
    guide = CNNOracle.fit(x[:half], y[:half], steps=60 if q else 800, seed=0, channels=32)
    judge = CNNOracle.fit(x[half:], y[half:], steps=60 if q else 800, seed=1, channels=32)
    hold = order2_markov(1000, L, seed=12)
    r_g = torch.corrcoef(torch.stack([guide(hold), truth(hold)]))[0, 1]
    r_j = torch.corrcoef(torch.stack([judge(hold), truth(hold)]))[0, 1]
    model, proc, cfg, t_train = base_model(x, args.cache, "hidden", 100 if q else args.train_steps, 32 if q else 48,
                                           None if q else args.ema_decay)
    print(f"[hidden] data activity median {float(y.median()):.3f}; oracle/truth Pearson on 1000 background "
          f"sequences: guide {float(r_g):.3f}, judge {float(r_j):.3f}; base model trained in {t_train:.0f} s")
    steps, num = (16, 8) if q else (64, 64)
    rows = []
    for seed in ((0,) if q else (0, 1, 2)):
        gen = lambda k: torch.Generator().manual_seed(5000 + 1000 * seed + k)  # noqa: E731
        base = sample_best_of_n(model, proc, guide, (num, L), steps, n=1, generator=gen(0))
        res = [("base", 1, base)]
        for M in ((4,) if q else (4, 8)):
            sv = sample_svdd(model, proc, guide, (num, L), steps, num_candidates=M, value_samples=args.value_samples,
                             generator=gen(M))
            nb = max(1, round(sv.model_evals_per_design / base.model_evals_per_design))
            bon = sample_best_of_n(model, proc, guide, (num, L), steps, n=nb, generator=gen(100 + M))
            N = max(2, round(sv.model_evals_per_design / steps))
            lam = 2.0 / float(y.std())
            smc = sample_smc(model, proc, guide, (num, L), steps, num_particles=N, lam=lam, generator=gen(200 + M))
            sva = sample_svdd(model, proc, guide, (num, L), steps, num_candidates=M, value_samples=0, generator=gen(M))
            res += [("svdd-pm", M, sv), ("svdd-pm-argmax", M, sva), ("best-of-n", M, bon), ("smc", M, smc)]
        for method, M, r in res:
            row = {"method": method, "M": M, "seed": seed, "model_evals_per_design": r.model_evals_per_design,
                   "reward_evals_per_design": r.reward_evals_per_design}
            for name, f in (("guide", guide), ("judge", judge), ("truth", truth)):
                v = f(r.x)
                row[f"{name}_median"] = float(v.median())
                row[f"{name}_top10"] = float(torch.quantile(v, 0.9))
            rows.append(row)
            print(f"[hidden] seed {seed} {method:14s} M={M}: evals {row['model_evals_per_design']:.0f}; median "
                  f"guide {row['guide_median']:.3f} judge {row['judge_median']:.3f} truth {row['truth_median']:.3f}")
    keys = sorted({(r["method"], r["M"]) for r in rows})
    agg = []
    print("[hidden] method M evals/design | median guide judge truth | top-10% guide judge truth (mean over seeds)")
    for method, M in keys:
        rs = [r for r in rows if r["method"] == method and r["M"] == M]
        a = {"method": method, "M": M, "seeds": len(rs)}
        for k in rs[0]:
            if k not in ("method", "M", "seed"):
                a[k] = sum(r[k] for r in rs) / len(rs)
        agg.append(a)
        print(f"[hidden] {method:14s} {M:2d} {a['model_evals_per_design']:7.1f} | {a['guide_median']:.3f} "
              f"{a['judge_median']:.3f} {a['truth_median']:.3f} | {a['guide_top10']:.3f} {a['judge_top10']:.3f} "
              f"{a['truth_top10']:.3f}")
    out["hidden"] = {"guide_truth_pearson": float(r_g), "judge_truth_pearson": float(r_j),
                     "data_median_activity": float(y.median()), "rows": rows, "aggregate": agg,
                     "seconds": time.perf_counter() - t0}


def _motif_setup(args, q):
    """The planted-motif task of the step-allocation parts: L, data, reward, cached base model,
    process, its config and the number of designs."""
    L = 64
    data = planted(400 if q else 4000, L, 0.3, seed=0)
    reward = HammingMotifCount(MOTIF, 1)
    model, proc, cfg, _ = base_model(data, args.cache, "motif", 100 if q else args.train_steps, 32 if q else 48,
                                     None if q else args.ema_decay)
    return L, data, reward, model, proc, cfg, (8 if q else 64)


def steps_part(args, q, out):
    """Candidates per step against steps, at one model cost: SVDD-PM with (M, K) = (16, 64), (32, 32),
    (64, 16) on the motif task (the cached motif base model), each against best-of-N matched to its
    measured model evaluations with base samples on the same K-step grid and on the 64-step grid."""
    t0 = time.perf_counter()
    L, data, reward, model, proc, cfg, num = _motif_setup(args, q)
    configs = ((4, 16), (8, 8)) if q else ((16, 64), (32, 32), (64, 16))
    rows = []
    for seed in ((0,) if q else (0, 1, 2)):
        g = lambda k: torch.Generator().manual_seed(7000 + 1000 * seed + k)  # noqa: E731
        per_sample = {}
        for M, K in configs:
            # the argmax value (value_samples=0), as quoted in RESULTS.md (made before the S-draw default)
            sv = sample_svdd(model, proc, reward, (num, L), K, num_candidates=M, value_samples=0, generator=g(M))
            rows.append({"method": "svdd-pm", "M": M, "K": K, "seed": seed, **sv.summary()})
            for Kb in sorted({K, 64 if not q else 16}):
                if Kb not in per_sample:
                    per_sample[Kb] = sample_best_of_n(model, proc, reward, (num, L), Kb, n=1,
                                                      generator=g(10 + Kb)).model_evals_per_design
                n = max(1, round(sv.model_evals_per_design / per_sample[Kb]))
                bon = sample_best_of_n(model, proc, reward, (num, L), Kb, n=n, generator=g(100 + M + Kb))
                rows.append({"method": "best-of-n", "M": M, "K": Kb, "seed": seed, "n": n, **bon.summary()})
            print(f"[steps] seed {seed} M={M} K={K}: " + "; ".join(
                f"{r['method']} (K={r['K']}) {r['mean_reward']:.3f} @ {r['model_evals_per_design']:.0f} evals"
                for r in rows if r["seed"] == seed and r["M"] == M), flush=True)
    agg = []
    for M, K in configs:
        for method, Kb in [("svdd-pm", K)] + [("best-of-n", k) for k in sorted({K, 64 if not q else 16})]:
            rs = [r for r in rows if (r["method"], r["M"], r["K"]) == (method, M, Kb)]
            v = torch.tensor([r["mean_reward"] for r in rs], dtype=torch.float64)
            agg.append({"method": method, "M": M, "K": Kb, "seeds": len(rs), "mean_reward": float(v.mean()),
                        "mean_reward_sd": float(v.std()) if len(rs) > 1 else 0.0,
                        "model_evals_per_design": sum(r["model_evals_per_design"] for r in rs) / len(rs)})
            a = agg[-1]
            print(f"[steps] SVDD-PM M={M} K={K} budget: {method:9s} on a {Kb:2d}-step grid "
                  f"{a['mean_reward']:.3f}({a['mean_reward_sd']:.3f}) @ {a['model_evals_per_design']:.1f} evals")
    out["steps"] = {"rows": rows, "aggregate": agg, "config": cfg, "seconds": time.perf_counter() - t0}


def steps_low_part(args, q, out):
    """Step allocation at the main table's low model costs (about 80, 160 and 320 evaluations per design,
    and ~950 as in :func:`steps_part`, where best-of-N was tried only on 16 and 64 steps):
    for each cost, SVDD-PM over (M, K) allocations whose measured cost is near it (a K-step grid on
    L = 64 sites has about e(K) = K (1 - (1 - 1/K)^64) steps that unmask a site, 40.6 at K = 64, 27.8 at 32,
    15.7 at 16; SVDD-PM evaluates its M candidates at each of them but the last, where the candidates are
    complete and scored by the reward itself, so M is about (cost - 1) / (e(K) - 1)), and best-of-N with
    base samples on each K-step grid (K = 1 included: one step from the all-mask state, sites drawn
    independently), N = round(cost / measured evaluations of one base sample on that grid). ELBO, 3-mer
    correlation and diversity beside each. Each side's best
    setting is its figure; the ratio is SVDD-PM's best over best-of-N's best, over all grids and over
    K >= 16 (where both stay within ~3 nats of the 64-step base samples' ELBO), and per grid."""
    t0 = time.perf_counter()
    L, data, reward, model, proc, cfg, num = _motif_setup(args, q)
    if q:
        plan = {16: ((2, 8), (4, 4)), 32: ((4, 8), (8, 4))}
        grids = (4, 8)
    else:
        plan = {80: ((2, 64), (3, 32), (5, 16), (11, 8), (26, 4), (79, 2)),
                160: ((4, 64), (6, 32), (11, 16), (23, 8), (53, 4), (159, 2)),
                320: ((8, 64), (12, 32), (22, 16), (46, 8), (106, 4), (319, 2)),
                # part steps' ~950 again, best-of-N now on every grid (no K = 2 for SVDD-PM: 949 candidates)
                950: ((22, 64), (34, 32), (64, 16), (136, 8), (316, 4))}
        grids = (1, 2, 4, 8, 16, 32, 64)
    rows = []
    for seed in ((0,) if q else (0, 1, 2)):
        g = lambda k: torch.Generator().manual_seed(9000 + 100000 * seed + k)  # noqa: E731
        per_sample = {Kb: sample_best_of_n(model, proc, reward, (num, L), Kb, n=1, generator=g(Kb))
                      .model_evals_per_design for Kb in grids}
        for cost, allocs in plan.items():
            first = len(rows)
            for M, K in allocs:
                sv = sample_svdd(model, proc, reward, (num, L), K, num_candidates=M, value_samples=args.value_samples,
                                 generator=g(1000 * M + K))
                rows.append({"method": "svdd-pm", "cost": cost, "M": M, "K": K, "seed": seed, **sv.summary(),
                             **naturalness(sv, model, proc, data, seed)})
            for Kb in grids:
                n = max(1, round(cost / per_sample[Kb]))
                bon = sample_best_of_n(model, proc, reward, (num, L), Kb, n=n, generator=g(50000 + 100 * cost + Kb))
                rows.append({"method": "best-of-n", "cost": cost, "M": n, "K": Kb, "seed": seed, **bon.summary(),
                             **naturalness(bon, model, proc, data, seed)})
            print(f"[steps_low] seed {seed} cost {cost}: " + "; ".join(
                f"{'SVDD' if r['method'] == 'svdd-pm' else 'BoN'} (M={r['M']}, K={r['K']}) {r['mean_reward']:.3f} "
                f"@ {r['model_evals_per_design']:.0f}" for r in rows[first:]), flush=True)
    agg, heads = [], {}

    def ratio(s, b):
        return s["mean_reward"] / b["mean_reward"] if b["mean_reward"] > 0 else float("inf")

    for cost in plan:
        best, same_k = {}, {}
        for method in ("svdd-pm", "best-of-n"):
            # grouped by grid K; best-of-N's N is rounded per seed (it can differ), so M is the mean over seeds
            for K in sorted({r["K"] for r in rows if r["cost"] == cost and r["method"] == method}, reverse=True):
                rs = [r for r in rows if (r["method"], r["cost"], r["K"]) == (method, cost, K)]
                v = torch.tensor([r["mean_reward"] for r in rs], dtype=torch.float64)
                a = {"method": method, "cost": cost, "M": sum(r["M"] for r in rs) / len(rs), "K": K,
                     "seeds": len(rs), "mean_reward": float(v.mean()),
                     "mean_reward_sd": float(v.std()) if len(rs) > 1 else 0.0,
                     "model_evals_per_design": sum(r["model_evals_per_design"] for r in rs) / len(rs)}
                for f in ("elbo_nats", "kmer3_corr", "diversity", "reward_evals_per_design"):
                    a[f] = sum(r[f] for r in rs) / len(rs)
                agg.append(a)
                same_k.setdefault(K, {})[method] = a
                for key, ok in ((method, True), (method + "_k16", K >= (8 if q else 16))):
                    if ok and (key not in best or a["mean_reward"] > best[key]["mean_reward"]):
                        best[key] = a
                label = f"({'M' if method == 'svdd-pm' else 'N'}={a['M']:.4g}, K={K})"
                print(f"[steps_low] cost {cost}: {method:9s} {label:15s} {a['mean_reward']:.3f}"
                      f"({a['mean_reward_sd']:.3f}) @ {a['model_evals_per_design']:.1f} evals; ELBO "
                      f"{a['elbo_nats']:.2f}, 3-mer corr {a['kmer3_corr']:.3f}, diversity {a['diversity']:.3f}")
        per_k = {K: ratio(d["svdd-pm"], d["best-of-n"]) for K, d in sorted(same_k.items(), reverse=True)
                 if len(d) == 2}
        print(f"[steps_low] cost {cost}: SVDD-PM / best-of-N on the same K-step grid: "
              + ", ".join(f"K={K} {x:.2f}" for K, x in per_k.items()))
        heads[cost] = {"per_grid_ratio": per_k}
        for suffix, what in (("", "any grid"), ("_k16", f"grids K >= {8 if q else 16}")):
            s, b = best["svdd-pm" + suffix], best["best-of-n" + suffix]
            heads[cost]["best" + suffix] = {
                "svdd": {k: s[k] for k in ("M", "K", "mean_reward", "model_evals_per_design", "elbo_nats")},
                "bon": {k: b[k] for k in ("M", "K", "mean_reward", "model_evals_per_design", "elbo_nats")},
                "ratio": ratio(s, b)}
            print(f"[steps_low] cost {cost}, best over {what}: SVDD-PM (M={s['M']:.4g}, K={s['K']}) "
                  f"{s['mean_reward']:.3f} @ {s['model_evals_per_design']:.1f} evals; best-of-N (N={b['M']:.4g}, "
                  f"K={b['K']}) {b['mean_reward']:.3f} @ {b['model_evals_per_design']:.1f} evals; "
                  f"ratio {ratio(s, b):.2f}")
    out["steps_low"] = {"value_samples": args.value_samples, "plan": {str(c): a for c, a in plan.items()},
                        "grids": grids, "rows": rows,
                        "aggregate": agg, "headline": {str(c): h for c, h in heads.items()}, "config": cfg,
                        "seconds": time.perf_counter() - t0}


def values_part(args, q, out):
    """How many value draws: SVDD-PM with ``value_samples`` S in 0 (argmax), 4, 16, 64, 256 at (M, K) = (8, 64)
    and (22, 16) (model costs ~300-330 per design), the cached motif model, 64 designs, three seeds; mean reward,
    model and reward evaluations per design, wall seconds."""
    t0 = time.perf_counter()
    L, data, reward, model, proc, cfg, num = _motif_setup(args, q)
    configs = ((4, 8),) if q else ((8, 64), (22, 16))
    Ss = (0, 4, 16) if q else (0, 4, 16, 64, 256)
    rows = []
    for seed in ((0,) if q else (0, 1, 2)):
        for M, K in configs:
            for S in Ss:
                t = time.perf_counter()
                g = torch.Generator().manual_seed(20000 + 1000 * seed + M)  # same draws for every S up to the values
                sv = sample_svdd(model, proc, reward, (num, L), K, num_candidates=M, value_samples=S, generator=g)
                rows.append({"M": M, "K": K, "S": S, "seed": seed, **sv.summary(),
                             "seconds": time.perf_counter() - t})
                r = rows[-1]
                print(f"[values] seed {seed} M={M} K={K} S={S}: reward {r['mean_reward']:.3f} @ "
                      f"{r['model_evals_per_design']:.1f} model / {r['reward_evals_per_design']:.0f} reward evals "
                      f"({r['seconds']:.0f} s)", flush=True)
    agg = []
    for M, K in configs:
        for S in Ss:
            rs = [r for r in rows if (r["M"], r["K"], r["S"]) == (M, K, S)]
            v = torch.tensor([r["mean_reward"] for r in rs], dtype=torch.float64)
            a = {"M": M, "K": K, "S": S, "seeds": len(rs), "mean_reward": float(v.mean()),
                 "mean_reward_sd": float(v.std()) if len(rs) > 1 else 0.0}
            for f in ("model_evals_per_design", "reward_evals_per_design", "seconds"):
                a[f] = sum(r[f] for r in rs) / len(rs)
            agg.append(a)
            print(f"[values] M={M} K={K} S={S}: {a['mean_reward']:.3f}({a['mean_reward_sd']:.3f}) @ "
                  f"{a['model_evals_per_design']:.1f} model / {a['reward_evals_per_design']:.0f} reward evals, "
                  f"{a['seconds']:.0f} s per run")
    out["values"] = {"rows": rows, "aggregate": agg, "config": cfg, "seconds": time.perf_counter() - t0}


# same in every panel
COLORS = {"svdd-pm": "C0", "svdd-pm-argmax": "C5", "svdd-mc": "C1", "best-of-n": "C2", "smc": "C3", "base": "C4"}


def figure(parts, path):
    import matplotlib

    matplotlib.use("Agg")  # a script, not library code
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(parts), figsize=(5.5 * len(parts), 4), squeeze=False)
    for ax, (name, agg) in zip(axes[0], parts.items()):
        for method in COLORS:
            for matched, style in (("nfe", "-o"), ("-", "-o"), ("reward", ":s")):
                pts = sorted((a["model_evals_per_design"], a["mean_reward"], a["mean_reward_sd"]) for a in agg
                             if a["method"] == method and a.get("matched", "nfe") == matched)
                if pts:
                    xs, ys, es = zip(*pts)
                    label = method + (" (matched on reward evals)" if matched == "reward" else "")
                    ax.errorbar(xs, ys, yerr=es, fmt=style, capsize=3, label=label, color=COLORS[method])
        ax.set_xscale("log")
        ax.set_xlabel("model evaluations per design (NFE)")
        ax.set_ylabel("mean reward")
        ax.set_title(name)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--parts", default="motif")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--cache", default=None, help="folder to keep trained base models in (reused by reruns)")
    ap.add_argument("--train-steps", type=int, default=3000, help="base-model training steps (motif part)")
    ap.add_argument("--rna-train-steps", type=int, default=3000, help="base-model training steps (rna part)")
    ap.add_argument("--value-samples", type=int, default=VALUE_SAMPLES,
                    help="SVDD-PM value draws per candidate (motif, steps_low, hidden parts; 0 = argmax value)")
    ap.add_argument("--tag", default="", help="suffix of the JSON/PNG file names")
    ap.add_argument("--ema-decay", type=float, default=0.998,
                    help="base-model EMA decay (motif and rna parts; fixed, so a checkpoint can train on)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    q = args.quick
    t_all = time.perf_counter()
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    if not parts or set(parts) - {"motif", "hidden", "rna", "steps", "steps_low", "values"}:
        raise SystemExit(f"--parts: a comma-separated subset of motif,hidden,rna,steps,steps_low,values, "
                         f"got {args.parts!r}")
    out = {"config": {"quick": q, "parts": parts, "python": platform.python_version(), "torch": torch.__version__}}
    aggs = {}
    steps = 16 if q else 64
    num = 8 if q else 64
    Ms = (2, 4) if q else (2, 4, 8, 16)
    seeds = (0,) if q else (0, 1, 2)
    proc = MaskedProcess(4)
    if "motif" in parts:
        t0 = time.perf_counter()
        L = 64
        data = planted(400 if q else 4000, L, 0.3, seed=0)
        reward = HammingMotifCount(MOTIF, 1)
        r_data = reward(data)
        model, proc, cfg, t_train = base_model(data, args.cache, "motif", 100 if q else args.train_steps,
                                               32 if q else 48, None if q else args.ema_decay)
        print(f"[motif] base model: {cfg['steps']} steps, EMA {cfg['ema_decay']:.5f}, trained in {t_train:.0f} s "
              f"(0 = loaded from the cache); data mean reward {float(r_data.mean()):.3f}")
        fit_stats = data_fit(model, proc, reward, data, planted(512, L, 0.3, seed=0, sample_seed=99), L, steps)
        print(f"[motif] ELBO nats/seq: training data {fit_stats['elbo_train']:.2f}, held-out data "
              f"{fit_stats['elbo_heldout']:.2f}; base samples: mean reward {fit_stats['base_reward']:.3f} "
              f"(data {float(r_data.mean()):.3f}), ELBO {fit_stats['elbo_samples']:.2f}")
        vn = fit_value_network(model, proc, reward, L, num_rollouts=256 if q else 1024, num_steps=steps,
                               train_steps=50 if q else 400, batch_size=128,
                               generator=torch.Generator().manual_seed(7), channels=32, depth=3)
        rows = run_methods(model, proc, reward, data, L, steps, num, Ms, seeds, lam=2.0, value_net=vn,
                           value_samples=args.value_samples, argmax_rows=True)
        agg = aggregate(rows)
        aggs["planted motif (L=64)"] = agg
        heads = {}
        for M in Ms:
            s = next(a for a in agg if a["method"] == "svdd-pm" and a["M"] == M)
            b = next(a for a in agg if a["method"] == "best-of-n" and a["M"] == M and a["matched"] == "nfe")
            heads[M] = {"svdd_pm": s["mean_reward"], "best_of_n": b["mean_reward"],
                        "ratio": s["mean_reward"] / b["mean_reward"] if b["mean_reward"] > 0 else float("inf"),
                        "svdd_evals": s["model_evals_per_design"], "bon_evals": b["model_evals_per_design"]}
            print(f"[motif] M={M}: SVDD-PM {s['mean_reward']:.3f} @ {s['model_evals_per_design']:.0f} evals vs "
                  f"best-of-N {b['mean_reward']:.3f} @ {b['model_evals_per_design']:.0f} evals: "
                  f"ratio {heads[M]['ratio']:.2f}")
        out["motif"] = {"data_mean_reward": float(r_data.mean()), "train_seconds": t_train, "config": cfg,
                        "base_fit": fit_stats,
                        "value_net_training_model_evals": vn.training_model_evals,
                        "value_net_training_reward_evals": vn.training_reward_evals,
                        "rows": rows, "aggregate": agg, "headline": heads,
                        "seconds": time.perf_counter() - t0}
        print("[motif] method M matched-on evals/design reward(sd) elbo kmer3 diversity reward_evals/design")
        for a in agg:
            print(f"[motif] {a['method']:14s} {a['M']:2d} {a['matched']:6s} {a['model_evals_per_design']:8.1f} "
                  f"{a['mean_reward']:.3f}({a['mean_reward_sd']:.3f}) {a['elbo_nats']:8.2f} {a['kmer3_corr']:.3f} "
                  f"{a['diversity']:.3f} {a['reward_evals_per_design']:8.1f}")
        write(out, aggs, q, args.tag)
    if "hidden" in parts:
        hidden_part(args, q, out, aggs)
        write(out, aggs, q, args.tag)
    if "steps" in parts:
        steps_part(args, q, out)
        write(out, aggs, q, args.tag)
    if "steps_low" in parts:
        steps_low_part(args, q, out)
        write(out, aggs, q, args.tag)
    if "values" in parts:
        values_part(args, q, out)
        write(out, aggs, q, args.tag)
    if "rna" in parts:
        t0 = time.perf_counter()
        L = len(RNA_TARGET)
        data = order2_markov(300 if q else 3000, L, seed=5)
        reward = StructureDistance(RNA_TARGET)
        r_data = reward(data[:500])
        model, proc, cfg, t_train = base_model(data, args.cache, "rna", 100 if q else args.rna_train_steps,
                                               32 if q else 48, None if q else args.ema_decay)
        print(f"[rna] base model: {cfg['steps']} steps, EMA {cfg['ema_decay']:.5f}, trained in {t_train:.0f} s "
              f"(0 = loaded from the cache); data mean reward {float(r_data.mean()):.2f}")
        # the argmax value (value_samples=0), as quoted in RESULTS.md: S draws per candidate would cost
        # S ViennaRNA folds (~1 ms each here) per candidate, and a reward-matched best-of-N S times more
        rows = run_methods(model, proc, reward, data, L, 16 if q else 50, 8 if q else 32, (2, 4) if q else (4, 8),
                           (0,) if q else (0, 1, 2), lam=1.0, match_reward=True, value_samples=0)
        agg = aggregate(rows)
        aggs["RNA structure (L=50)"] = agg
        heads = {}
        for M in sorted({a["M"] for a in agg if a["method"] == "svdd-pm"}):
            pick = lambda method, matched: next(a for a in agg if (a["method"], a["M"], a["matched"]) ==  # noqa: E731
                                                (method, M, matched))
            sv = pick("svdd-pm", "-")
            heads[M] = {"svdd_pm": sv["mean_reward"]}
            for method, matched in (("best-of-n", "nfe"), ("smc", "nfe"), ("best-of-n", "reward")):
                a = pick(method, matched)
                heads[M][f"{method}@{matched}"] = a["mean_reward"]
                print(f"[rna] M={M}: SVDD-PM {sv['mean_reward']:.3f} @ {sv['model_evals_per_design']:.0f} model / "
                      f"{sv['reward_evals_per_design']:.0f} reward evals vs {method} matched on {matched} evals "
                      f"{a['mean_reward']:.3f} @ {a['model_evals_per_design']:.0f} model / "
                      f"{a['reward_evals_per_design']:.0f} reward evals: SVDD-PM minus it "
                      f"{sv['mean_reward'] - a['mean_reward']:+.3f}")
        out["rna"] = {"target": RNA_TARGET, "data_mean_reward": float(r_data.mean()), "config": cfg, "rows": rows,
                      "aggregate": agg, "headline": heads, "seconds": time.perf_counter() - t0}
        print("[rna] method M matched-on evals/design reward(sd) elbo kmer3 diversity reward_evals/design")
        for a in agg:
            print(f"[rna] {a['method']:9s} {a['M']:2d} {a['matched']:6s} {a['model_evals_per_design']:8.1f} "
                  f"{a['mean_reward']:.3f}({a['mean_reward_sd']:.3f}) {a['elbo_nats']:8.2f} {a['kmer3_corr']:.3f} "
                  f"{a['diversity']:.3f} {a['reward_evals_per_design']:8.1f}")
    out["seconds"] = time.perf_counter() - t_all
    write(out, aggs, q, args.tag)


def write(out, aggs, quick, tag=""):
    """Write the JSON and the figure (after each part, so a finished part is kept). Runs without the
    ``motif`` part write ``sequence_design_<parts>.json``, so they never overwrite the headline."""
    res_dir = Path(__file__).resolve().parent / "results"
    res_dir.mkdir(exist_ok=True)
    parts = out["config"]["parts"]
    name = "sequence_design" if "motif" in parts else "sequence_design_" + "_".join(parts)
    name += tag + ("_quick" if quick else "")
    (res_dir / f"{name}.json").write_text(json.dumps(out, indent=1, default=str))
    if aggs:
        figure(aggs, res_dir / f"{name}.png")
    print(f"wrote {res_dir / (name + '.json')}")


if __name__ == "__main__":
    main()
