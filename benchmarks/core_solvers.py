"""Core solvers against exact answers, and side by side with diffusers' schedulers.

Run: ``.venv/bin/python benchmarks/core_solvers.py [--quick]`` (writes
``benchmarks/results/core_solvers.json``; ``--quick`` is a smoke run, its JSON is not quoted).

Problems (VP process, beta 0.1..20, t in [1e-3, 1]; exact models from :mod:`sciffusion.testing`):

* ``gauss8`` — d = 8 Gaussian, variances log-spaced 0.03..3, random rotation. Error: closed-form
  W2 between the Gaussian fitted to the n samples and the exact marginal p_{t_min}
  (``empirical_w2_gaussian``). Floor: the same figure for n exact samples of p_{t_min}.
* ``mix2`` — the 2-D eight-Gaussian ring (``standard_mixture_2d``); ``mix16`` — a 16-D mixture of
  6 anisotropic Gaussians. Error: sliced W1 (128 directions) between the samples and n exact
  samples of p_{t_min}. Floor: sliced W1 between two independent exact samples.

Every solver registered in ``SAMPLERS`` (adaptive ones excluded: their NFE is not chosen) runs
from the same prior draw (common random numbers) on the logSNR grid; Euler–Maruyama also on the
time-uniform grid, and the better of its two grids is the baseline of the headline. For a target
NFE the step count is the largest with ``SamplerInfo.nfe(steps) <= NFE``; the NFE reported is the
denoiser's own counter. Headline: the NFE at which the error first reaches the target (log-log
interpolation between the bracketing NFEs of the ladder 5, 10, 20, 50, 100, ...), and the speed-up
NFE(EM) / NFE(solver).

Peers (diffusers ``DDIMScheduler``, ``DPMSolverMultistepScheduler`` (dpmsolver++, order 2),
``UniPCMultistepScheduler`` (bh2, order 2)), made the *same algorithm on the same grid*:

* discrete timesteps k = 0..999 map to t_k = t_min + k (1 - t_min)/999, and ``trained_betas``
  are chosen so that ``alphas_cumprod[k] = alpha(t_k)^2`` of our VP (diffusers then holds it in
  float32), so the exact model sees the same (alpha, sigma) in both;
* the grid is diffusers' own default for the scheduler (``linspace`` spacing for DPM-Solver++ and
  UniPC, ``trailing`` for DDIM, whose step rule needs 1000/N spacing), ending at k = 0 (t_min:
  ``final_sigmas_type="sigma_min"``, DDIM ``set_alpha_to_one=False``); ours runs on
  ``ts = [t_k for k in scheduler.timesteps] + [t_min]`` (checked against the scheduler's sigmas);
* options that would make diffusers a different algorithm are switched off: ``lower_order_final``
  (ours does not drop order at the end), ``clip_sample``/thresholding.

Timing (one thread, min of interleaved repeats): ``time/sample`` is the wall time with the exact model
divided by n; ``overhead`` is the wall time of the same run with a near-free model
(``0.1 * x``), i.e. the time spent outside the model call.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import torch

from sciffusion import samplers as S
from sciffusion.denoisers import Denoiser
from sciffusion.processes import VP
from sciffusion.schedules import get_schedule
from sciffusion.testing import (GaussianMixture, anisotropic_gaussian, empirical_w2_gaussian, gaussian_w2,
                                sliced_w1, standard_mixture_2d)

NFES = [5, 10, 20, 50]
LADDER = [5, 10, 20, 50, 100, 200, 500, 1000]
PEER_ALGOS = ("ddim", "dpmpp_2m", "unipc")
OUT = Path(__file__).resolve().parent / "results" / "core_solvers.json"


# ------------------------------------------------------------------------------------------------
# problems and metrics
# ------------------------------------------------------------------------------------------------

def mixture16(seed: int = 0) -> GaussianMixture:
    """6 components in 16-D: means of norm ~3, diagonal variances log-spaced 0.02..0.5 (shuffled)."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(6, 16, generator=g, dtype=torch.float64) * 0.75
    var = torch.logspace(math.log10(0.02), math.log10(0.5), 16, dtype=torch.float64)
    covs = torch.stack([var[torch.randperm(16, generator=g)] for _ in range(6)])
    return GaussianMixture(means, covs, torch.tensor([1.0, 2.0, 1.0, 3.0, 1.0, 2.0]))


def sliced_w1_fast(x, y, num_projections=128, seed=0) -> float:
    """Sliced W1 for equal sample sizes: the same directions as ``testing.sliced_w1`` and, for
    equal sizes, the same 1-D W1 (mean |sorted x - sorted y|), vectorised."""
    x, y = torch.as_tensor(x, dtype=torch.float64), torch.as_tensor(y, dtype=torch.float64)
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(num_projections, x.shape[1], generator=g, dtype=torch.float64)
    dirs = dirs / dirs.norm(dim=1, keepdim=True)
    px, py = torch.sort(x @ dirs.T, 0).values, torch.sort(y @ dirs.T, 0).values
    return float((px - py).abs().mean())


class Problem:
    def __init__(self, name, gm, process, n, seed):
        self.name, self.gm, self.process, self.n = name, gm, process, n
        self.d = gm.dim
        p = process
        self.marg = gm.marginal(p, p.t_min)
        g = torch.Generator().manual_seed(seed)
        self.x_T = p.prior_sample((n, self.d), g, dtype=torch.float32)
        self.ref = self.marg.sample(n, g)
        other = self.marg.sample(n, g)
        if name.startswith("gauss"):
            self.metric = "W2 of Gaussian fit vs exact p_tmin (closed form)"
            self.floor = empirical_w2_gaussian(other, self.marg.means[0], self.marg.covs[0])
        else:
            self.metric = "sliced W1 (128 dirs) vs exact samples of p_tmin"
            self.floor = sliced_w1_fast(other, self.ref)

    def error(self, x) -> float:
        x = x.to(torch.float64)
        if not torch.isfinite(x).all():
            return float("inf")
        if self.name.startswith("gauss"):
            return empirical_w2_gaussian(x, self.marg.means[0], self.marg.covs[0])
        return sliced_w1_fast(x, self.ref)

    def denoiser(self):
        return self.gm.denoiser(self.process, "eps")

    def affine_errors(self, name, ts):
        """Deterministic solver on Gaussian data: the exact denoiser is affine in x, so the solver is an
        affine map x_T -> A x_T + b. Pushing 0 and the basis vectors through it (float64) gives
        (a) ``error``: the W2 of the Gaussian fit of the n outputs, which is N(A m + b, A C A^T) for
        the empirical mean m and covariance C of the n prior draws -- the same number as running
        the n samples, without their cost or float32 round-off; and
        (b) ``w2_exact``: the W2 of the exact output law N(b, s^2 A A^T), free of sampling noise."""
        basis = torch.cat([torch.zeros(1, self.d), torch.eye(self.d)]).double()
        den = self.denoiser()
        t0 = time.perf_counter()
        with torch.no_grad():
            out = S.SAMPLERS[name].fn(den, basis, ts)
        sec = time.perf_counter() - t0
        if not torch.isfinite(out).all():
            return float("inf"), float("inf"), den.nfe, sec
        b, A = out[0], (out[1:] - out[0]).T
        xT = self.x_T.double()
        fit_mean, fit_cov = A @ xT.mean(0) + b, A @ torch.cov(xT.T) @ A.T
        s2 = self.process.prior_std() ** 2
        m, C = self.marg.means[0], self.marg.covs[0]
        return gaussian_w2(fit_mean, fit_cov, m, C), gaussian_w2(b, s2 * A @ A.T, m, C), den.nfe, sec


def steps_for(info, nfe):
    steps = (nfe - info.extra_nfe) // info.nfe_per_step
    return steps if steps >= 1 else None


def run_ours(problem, name, ts, model=None, seed=1, x_T=None):
    """One run of our sampler ``name`` on grid ``ts``; returns (samples, nfe, seconds)."""
    den = problem.denoiser() if model is None else Denoiser(model, problem.process, "eps")
    gen = torch.Generator().manual_seed(seed)
    x_T = problem.x_T if x_T is None else x_T
    t0 = time.perf_counter()
    with torch.no_grad():
        x = S.SAMPLERS[name].fn(den, x_T.clone(), ts, generator=gen)
    return x, den.nfe, time.perf_counter() - t0


# ------------------------------------------------------------------------------------------------
# diffusers peers
# ------------------------------------------------------------------------------------------------

def t_of_k(process, N=1000):
    return torch.linspace(process.t_min, process.t_max, N, dtype=torch.float64)


def make_scheduler(algo, process, N=1000):
    """A diffusers scheduler whose alphas_cumprod[k] = alpha(t_k)^2, configured as our algorithm."""
    import diffusers

    abar = torch.exp(2 * process.log_alpha(t_of_k(process, N)))
    betas = 1 - abar / torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
    common = dict(num_train_timesteps=N, trained_betas=betas.numpy(), prediction_type="epsilon")
    if algo == "ddim":
        return diffusers.DDIMScheduler(**common, clip_sample=False, set_alpha_to_one=False,
                                       timestep_spacing="trailing")
    if algo == "dpmpp_2m":
        return diffusers.DPMSolverMultistepScheduler(**common, algorithm_type="dpmsolver++", solver_order=2,
                                                     lower_order_final=False, euler_at_final=False,
                                                     final_sigmas_type="sigma_min", thresholding=False)
    if algo == "unipc":
        return diffusers.UniPCMultistepScheduler(**common, solver_order=2, solver_type="bh2", predict_x0=True,
                                                 lower_order_final=False, final_sigmas_type="sigma_min",
                                                 thresholding=False)
    raise ValueError(algo)


def _set(sch, nfe, custom):
    if custom is None:
        sch.set_timesteps(nfe)
    else:
        sch.set_timesteps(timesteps=custom)


def logsnr_timesteps(process, nfe, N):
    """Our logSNR grid rounded to the scheduler's integer timesteps (the final t_min is appended by
    diffusers as ``sigma_min``); None if rounding would merge two times."""
    tk = t_of_k(process, N)
    ts = get_schedule("logsnr")(process, nfe)[:-1]
    ks = torch.round((ts - process.t_min) / (tk[1] - tk[0])).long()
    if len(set(ks.tolist())) != nfe or int(ks.min()) < 1:
        return None
    return ks.tolist()


def peer_grid(algo, process, nfe, N=1000, custom=None):
    """The scheduler's grid as our float64 ts, checked against its sigmas; returns (ts, max rel diff)."""
    sch = make_scheduler(algo, process, N)
    _set(sch, nfe, custom)
    tk = t_of_k(process, N)
    ks = sch.timesteps.tolist()
    ts = torch.cat([tk[ks], tk[:1]])
    rel = 0.0
    if hasattr(sch, "sigmas") and len(sch.sigmas) == len(ts):
        ours = torch.exp(-process.lam(ts))
        rel = float(((sch.sigmas.double() - ours).abs() / ours).max())
        if rel > 1e-3:  # diffusers accumulates alphas_cumprod in float32 (observed ~1e-4)
            raise RuntimeError(f"{algo}: diffusers' sigmas differ from ours by {rel:.2e} (relative)")
    return ts, rel


def run_peer(problem, algo, nfe, model=None, N=1000, custom=None, x_T=None):
    """diffusers' scheduler loop driven by the exact eps model at t_k; returns (samples, nfe, seconds)."""
    process = problem.process
    tk = t_of_k(process, N)
    f = problem.gm.model(process, "eps") if model is None else model
    sch = make_scheduler(algo, process, N)
    _set(sch, nfe, custom)
    x = (problem.x_T if x_T is None else x_T).clone()
    calls = 0
    t0 = time.perf_counter()
    with torch.no_grad():
        for k in sch.timesteps:
            eps = f(x, tk[int(k)].expand(x.shape[0]).to(x.dtype))
            calls += 1
            x = sch.step(eps, k, x).prev_sample
    return x, calls, time.perf_counter() - t0


def free_model(x, t):
    return 0.1 * x


def best_times(fn_a, fn_b, repeats):
    """Min wall time of each of two runs, interleaved a, b, a, b, ... so that drifting load on the
    machine biases neither side."""
    fn_a(), fn_b()  # warm-up (first-call allocations and caches), not timed
    ta, tb = [], []
    for _ in range(repeats):
        ta.append(fn_a()[2])
        tb.append(fn_b()[2])
    return min(ta), min(tb)


# ------------------------------------------------------------------------------------------------
# the benchmark
# ------------------------------------------------------------------------------------------------

def nfe_to_target(points, target):
    """NFE from which on the error stays at or below ``target`` along the ladder (log-log
    interpolation between the last NFE above the target and the next one); None if the last
    point is still above. (Few-step errors can dip below the target by cancellation and rise
    again, so the first crossing would flatter a solver.)"""
    points = sorted(points)
    if not points or not points[-1][1] <= target:
        return None
    above = [i for i, (_, e) in enumerate(points) if not e <= target]
    if not above:
        return float(points[0][0])
    (n0, e0), (n1, e1) = points[above[-1]], points[above[-1] + 1]
    if not (math.isfinite(e0) and e1 > 0):
        return float(n1)
    w = (math.log(e0) - math.log(target)) / (math.log(e0) - math.log(e1))
    return float(math.exp(math.log(n0) + w * (math.log(n1) - math.log(n0))))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small smoke run (< 1 min)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    quick = args.quick
    out_path = args.out or (OUT.with_name("core_solvers_quick.json") if quick else OUT)
    t_start = time.perf_counter()
    process = VP()
    n = {"gauss8": 4000 if quick else 200000, "mix2": 1000 if quick else 10000, "mix16": 1000 if quick else 10000}
    mean, cov = anisotropic_gaussian(8, 0.03, 3.0)
    problems = [Problem("gauss8", GaussianMixture.gaussian(mean, cov), process, n["gauss8"], 0),
                Problem("mix2", standard_mixture_2d(), process, n["mix2"], 1),
                Problem("mix16", mixture16(), process, n["mix16"], 2)]
    # the fast metric agrees with the library's (same directions, equal sizes)
    a, b = problems[1].ref[:300], problems[1].marg.sample(300, torch.Generator().manual_seed(9))
    assert abs(sliced_w1_fast(a, b) - sliced_w1(a, b, 128)) < 1e-10
    targets = {"gauss8": 0.05, "mix2": 0.05, "mix16": 0.1}
    for p in problems:
        if targets[p.name] < 2 * p.floor:
            targets[p.name] = round(2 * p.floor, 3)  # quick mode: keep the target above the floor
    solvers = [k for k, v in S.SAMPLERS.items() if not v.adaptive]
    ladder = [5, 10, 20, 50, 100] if quick else LADDER
    rows = []
    curves = {}
    for p in problems:
        for name in solvers:
            info = S.SAMPLERS[name]
            grids = ["logsnr", "time_uniform"] if name == "euler_maruyama" else ["logsnr"]
            for grid in grids:
                pts = []
                for nfe in ladder:
                    steps = steps_for(info, nfe)
                    if steps is None:
                        continue
                    if nfe > max(NFES) and pts and pts[-1][1] <= targets[p.name]:
                        break  # below target: the ladder beyond 50 only serves the headline
                    ts = get_schedule(grid)(process, steps)
                    row = dict(problem=p.name, solver=name, schedule=grid, nfe_target=nfe, steps=steps)
                    try:
                        if p.name.startswith("gauss") and not info.stochastic:
                            err, row["w2_exact"], used, sec = p.affine_errors(name, ts)
                            row["method"] = "affine push-forward of the n prior draws"
                            sec = None  # d+1 rows, not a timing of n samples
                        else:
                            x, used, sec = run_ours(p, name, ts)
                            err = p.error(x)
                    except FloatingPointError:
                        used, sec, err = info.nfe(steps), None, float("inf")
                    pts.append((used, err))
                    row.update(nfe=used, error=err, seconds=sec, sec_per_sample=None if sec is None else sec / p.n)
                    rows.append(row)
                    ex = f"  exact {row['w2_exact']:.4f}" if "w2_exact" in row else ""
                    tm = "" if sec is None else f"  ({sec:.2f}s)"
                    print(f"{p.name:7s} {name:15s} {grid:12s} NFE {used:4d}  error {err:.4f}{ex}{tm}", flush=True)
                curves[(p.name, name, grid)] = pts
    headline = {}
    for p in problems:
        em = [nfe_to_target(curves[(p.name, "euler_maruyama", g)], targets[p.name])
              for g in ("logsnr", "time_uniform")]
        em_best = min((v for v in em if v is not None), default=None)
        h = {"target": targets[p.name], "floor": p.floor, "metric": p.metric,
             "euler_maruyama_nfe": em_best, "euler_maruyama_grid": (["logsnr", "time_uniform"][em.index(em_best)]
                                                                    if em_best is not None else None),
             "solvers": {}}
        for name in solvers:
            v = nfe_to_target(curves[(p.name, name, "logsnr")], targets[p.name])
            h["solvers"][name] = {"nfe_to_target": v,
                                  "speedup_vs_em": (em_best / v) if (v and em_best) else None}
        headline[p.name] = h

    # ---- peers ----
    peers = []
    available = [a for a in PEER_ALGOS if a in S.SAMPLERS]
    cfgs = [(a, "diffusers default", 1000, False) for a in available]
    if "dpmpp_2m" in available:
        cfgs.append(("dpmpp_2m", "logsnr (custom timesteps, 10000 train steps)", 10000, True))
    peer_nfes = [10] if quick else NFES
    repeats = 1 if quick else 3
    n_time = min(20000, problems[0].n)
    for p in problems:
        for algo, grid_label, N, custom_logsnr in cfgs:
            for nfe in peer_nfes:
                custom = logsnr_timesteps(process, nfe, N) if custom_logsnr else None
                if custom_logsnr and custom is None:
                    continue
                ts, rel = peer_grid(algo, process, nfe, N, custom)
                x_err = p.x_T[:100000]  # both on the same draws (gauss8: the first 100000)
                xo, no, _ = run_ours(p, algo, ts, x_T=x_err)
                xp, npeer, _ = run_peer(p, algo, nfe, N=N, custom=custom, x_T=x_err)
                row = dict(problem=p.name, algorithm=algo, grid=grid_label, nfe=nfe, nfe_ours=no, nfe_peer=npeer,
                           n=len(x_err),
                           error_ours=p.error(xo), error_peer=p.error(xp), sigma_rel_mismatch=rel,
                           max_abs_diff=float((xo.double() - xp.double()).abs().max()))
                row["error_ratio"] = row["error_ours"] / row["error_peer"]
                if p.name == "gauss8":  # timing: exact model on n_time samples; overheads with 0.1 x
                    xt_big, xt_small = p.x_T[:n_time], p.x_T[:256]
                    t_o, t_p = best_times(lambda: run_ours(p, algo, ts, x_T=xt_big),
                                          lambda: run_peer(p, algo, nfe, N=N, custom=custom, x_T=xt_big), repeats)
                    ob_o, ob_p = best_times(lambda: run_ours(p, algo, ts, model=free_model, x_T=xt_big),
                                            lambda: run_peer(p, algo, nfe, model=free_model, N=N, custom=custom,
                                                             x_T=xt_big), repeats + 2)
                    os_o, os_p = best_times(lambda: run_ours(p, algo, ts, model=free_model, x_T=xt_small),
                                            lambda: run_peer(p, algo, nfe, model=free_model, N=N, custom=custom,
                                                             x_T=xt_small), repeats + 6)
                    row.update(timing_batch=n_time, sec_per_sample_ours=t_o / n_time,
                               sec_per_sample_peer=t_p / n_time, time_ratio=t_o / t_p,
                               overhead_ours=ob_o, overhead_peer=ob_p, overhead_ratio=ob_o / ob_p,
                               overhead_small_batch_ours=os_o, overhead_small_batch_peer=os_p,
                               overhead_small_batch_ratio=os_o / os_p)
                peers.append(row)
                extra = (f"  time ratio {row['time_ratio']:.2f}  overhead {ob_o * 1e3:.1f} vs {ob_p * 1e3:.1f} ms "
                         f"(batch {n_time}), {os_o * 1e3:.1f} vs {os_p * 1e3:.1f} ms (batch 256)"
                         if "time_ratio" in row else "")
                print(f"peer {p.name:7s} {algo:9s} {grid_label[:6]:6s} NFE {nfe:3d}  error ours {row['error_ours']:.4f}"
                      f"  diffusers {row['error_peer']:.4f}  ratio {row['error_ratio']:.3f}  max|ours - peer| "
                      f"{row['max_abs_diff']:.1e}{extra}", flush=True)

    import diffusers

    result = {
        "script": "benchmarks/core_solvers.py" + (" --quick" if quick else ""),
        "config": {"process": repr(process), "n": n, "nfes": NFES, "ladder": ladder, "dtype": "float32 state, "
                   "float64 coefficients and oracle", "threads": 1, "targets": targets,
                   "solvers": solvers, "peers": available, "diffusers": diffusers.__version__,
                   "torch": torch.__version__, "python": platform.python_version()},
        "problems": {p.name: {"d": p.d, "n": p.n, "metric": p.metric, "floor": p.floor} for p in problems},
        "rows": rows, "headline": headline, "peers": peers,
        "seconds": time.perf_counter() - t_start,
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(result, indent=1, default=float))
    print_summary(result)
    print(f"wrote {out_path} in {result['seconds']:.0f} s")
    return 0


def print_summary(r):
    print("\n== error at NFE (logSNR grid; EM also time-uniform) ==")
    for pname, pr in r["problems"].items():
        print(f"-- {pname}: {pr['metric']}, n={pr['n']}, floor {pr['floor']:.4f}")
        table = {}
        for row in r["rows"]:
            if row["problem"] == pname and row["nfe_target"] in r["config"]["nfes"]:
                table.setdefault((row["solver"], row["schedule"]), {})[row["nfe_target"]] = row
        print(f"{'solver':24s}" + "".join(f"{'NFE' + str(k):>10s}" for k in r["config"]["nfes"]))
        for (s, g), cells in table.items():
            label = s if g == "logsnr" else f"{s}[{g}]"
            print(f"{label:24s}" + "".join(f"{cells[k]['error']:10.4f}" if k in cells else f"{'-':>10s}"
                                          for k in r["config"]["nfes"]))
    print("\n-- gauss8, deterministic solvers: W2 of the exact output law (no sampling floor)")
    ex = {}
    for row in r["rows"]:
        if row["problem"] == "gauss8" and "w2_exact" in row and row["nfe_target"] in r["config"]["nfes"]:
            ex.setdefault(row["solver"], {})[row["nfe_target"]] = row["w2_exact"]
    for s, cells in ex.items():
        print(f"{s:24s}" + "".join(f"{cells[k]:10.4f}" if k in cells else f"{'-':>10s}" for k in r["config"]["nfes"]))
    print("\n== headline: NFE from which the error stays below the target, speed-up over Euler–Maruyama ==")
    for pname, h in r["headline"].items():
        em = h["euler_maruyama_nfe"]
        print(f"-- {pname}: target {h['target']} (floor {h['floor']:.4f}); EM needs "
              f"{em if em is None else round(em)} NFE ({h['euler_maruyama_grid']} grid)")
        for s, v in h["solvers"].items():
            nfe = "not reached" if v["nfe_to_target"] is None else f"{v['nfe_to_target']:.1f}"
            sp = "" if v["speedup_vs_em"] is None else f"  x{v['speedup_vs_em']:.1f}"
            print(f"   {s:18s} {nfe:>12s}{sp}")
    print("\n== vs diffusers (same algorithm, same grid, same exact model) ==")
    for row in r["peers"]:
        extra = (f"  time/sample ratio {row['time_ratio']:.2f}  overhead ratio {row['overhead_ratio']:.2f} "
                 f"(batch {row['timing_batch']}), {row['overhead_small_batch_ratio']:.2f} (batch 256)"
                 if "time_ratio" in row else "")
        print(f"{row['problem']:7s} {row['algorithm']:9s} {row['grid'][:6]:6s} NFE {row['nfe']:3d}  error ours "
              f"{row['error_ours']:.4f} peer {row['error_peer']:.4f} ratio {row['error_ratio']:.3f}{extra}")

if __name__ == "__main__":
    sys.exit(main())
