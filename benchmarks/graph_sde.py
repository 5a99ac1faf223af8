"""GDSS on this CPU: community-small MMDs against an Erdős–Rényi baseline and the training-set floor,
S4 vs PC vs Euler–Maruyama at equal NFE, and the built-in molecule set (validity, uniqueness,
novelty, FCD) with a QED-tilted Feynman–Kac run beside the untilted one.

community-small (``--part community``): 100 graphs from ``datasets.community_small(seed=0)``,
split 80/20 (seed 0), one-hot degree features over the whole set's degrees. Per seed: GDSS's
community-small processes (VP beta 0.1->1 for X and A), lr 1e-2, EMA 0.999 (GDSS's value; over
1500 steps the EMA weights used for sampling still hold 0.999^1500 = 22% of the random init, which
this run's numbers carry), batch 80 (the whole training set), a CPU-sized adjacency network (3 attention layers of width 16, channels 2/6/4;
GDSS's is 5 layers of 32, channels 2/8/4, about 2.8x slower per step here) and a fixed number of
steps (the CPU budget: wall time printed). Then 100 graphs with each sampler at the same NFE
(S4: NFE steps; PC: NFE/2 steps with one Langevin corrector; Euler–Maruyama: NFE steps; snr 0.05,
scale_eps 0.7 for S4 and PC as GDSS's config), isolated nodes removed as GDSS's evaluation does,
and MMD^2 of degree / clustering / orbit against the 20 test graphs (Gaussian-EMD as GDSS reports,
Gaussian-TV as later papers). Baselines in the same run: Erdős–Rényi graphs with the training
set's edge density and node-count distribution (100 graphs), and the 80 training graphs
themselves (the floor a perfect model would reach against these 20 test graphs).

molecules (``--part molecules``): ``molecules.nci_molecules(max_atoms=9)`` (RDKit's NCI sample,
C/N/O/F, at most 9 heavy atoms), split 90/10; GDSS's QM9 settings (VE sigma 0.1->1 for X and A,
bond orders as edge values) with batch 128 (GDSS: 1024), EMA decay 0.99 (GDSS: 0.999 over about
35k steps; over a 1500-step budget 0.999 would leave 0.999^1500 = 22% of the random init in the
EMA weights) and a fixed step budget; 500 molecules
with S4 (snr 0.2, scale_eps 0.7); validity without correction (denominator: all sampled graphs),
validity after correction, uniqueness, novelty, FCD and NSPDK against the held-out molecules. Then
the QED tilt: Feynman–Kac SMC (``sample_fkc`` through ``GraphSDE.sample_tilted``) on the target
p(G) exp(beta QED(G)), beta = --qed-scale, beside the untilted run with the same groups, particles,
steps and seed (scale 0). QED of the quantised (corrected) graph is piecewise constant in the
state, so the tilt is switched on at the last grid time only (see ``qed_tilt``).

Run:  OMP_NUM_THREADS=1 python benchmarks/graph_sde.py --part community
      OMP_NUM_THREADS=1 python benchmarks/graph_sde.py --part molecules
Writes benchmarks/results/graph_sde.json (each part updates its own key).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time
from pathlib import Path

import torch

from sciffusion.domains.graph_sde import datasets, metrics
from sciffusion.domains.graph_sde.model import GraphSDE
from sciffusion.domains.graph_sde.nets import node_mask_from_state

OUT = Path(__file__).parent / "results" / "graph_sde.json"
CPU_A_NET = {"num_layers": 3, "hidden": 16, "attn_dim": 16, "c_init": 2, "c_hid": 6, "c_final": 4,
             "num_linears": 2, "num_heads": 4}
METRICS = ("degree", "clustering", "orbit")
KERNELS = ("gaussian_emd", "gaussian_tv")


def _update(key: str, value: dict) -> None:
    OUT.parent.mkdir(parents=True, exist_ok=True)
    data = json.loads(OUT.read_text()) if OUT.exists() else {}
    data[key] = value
    data["platform"] = {"python": platform.python_version(), "torch": torch.__version__,
                        "threads": torch.get_num_threads()}
    OUT.write_text(json.dumps(data, indent=1))


def _mmds(ref, pred) -> dict:
    return {k: {m: round(float(v), 5) for m, v in metrics.graph_metrics(ref, pred, kernel=k).items() if m in METRICS}
            for k in KERNELS}


def erdos_renyi(train, num, seed):
    """ER graphs G(n, p): n from the training node counts, p the training edge density."""
    import networkx as nx

    pairs = sum(g.number_of_nodes() * (g.number_of_nodes() - 1) / 2 for g in train)
    p = sum(g.number_of_edges() for g in train) / pairs
    gen = torch.Generator().manual_seed(seed)
    sizes = [train[i].number_of_nodes() for i in torch.randint(len(train), (num,), generator=gen).tolist()]
    out = [nx.gnp_random_graph(n, p, seed=seed * 100003 + k) for k, n in enumerate(sizes)]
    for g in out:
        g.remove_nodes_from(list(nx.isolates(g)))
    return out, p


def _summary(rows: list[dict]) -> dict:
    """mean and population std over seeds of every metric."""
    out = {}
    for k in KERNELS:
        out[k] = {}
        for m in METRICS:
            vals = [r[k][m] for r in rows]
            out[k][m] = {"mean": round(statistics.fmean(vals), 5),
                         "std": round(statistics.pstdev(vals), 5) if len(vals) > 1 else 0.0}
    return out


def community(args) -> dict:
    graphs = datasets.community_small(100, seed=0)
    train_g, test_g, idx = datasets.split(graphs, test_fraction=0.2, seed=0)
    max_deg = max(d for g in graphs for _, d in g.degree())
    train = datasets.to_dense(train_g, features="degree", max_degree=max_deg)
    er, density = erdos_renyi(train_g, args.num_samples, seed=0)
    key = "community_small" if args.ema == 0.999 else f"community_small_ema{args.ema}"
    res = {"num_train": len(train_g), "num_test": len(test_g), "num_samples": args.num_samples, "ema_decay": args.ema,
           "steps": args.steps, "nfe": args.nfe, "edge_density": round(density, 4), "a_net": CPU_A_NET,
           "er_baseline": _mmds(test_g, er), "train_floor": _mmds(test_g, train_g), "seeds": []}
    print("ER baseline", res["er_baseline"])
    print("train floor", res["train_floor"])
    samplers = {"s4": dict(num_steps=args.nfe, snr=0.05, scale_eps=0.7),
                "pc": dict(num_steps=args.nfe // 2, snr=0.05, scale_eps=0.7),
                "euler_maruyama": dict(num_steps=args.nfe)}
    for seed in range(args.seeds):
        t0 = time.perf_counter()
        model = GraphSDE.from_data(train, dataset="community-small", preset="community-small",
                                   max_degree=max_deg, a_net=CPU_A_NET, split=idx, seed=seed,
                                   train={"ema_decay": args.ema})
        model.fit(train, steps=args.steps, batch_size=80, seed=seed, progress=False)
        train_s = time.perf_counter() - t0
        row = {"seed": seed, "train_seconds": round(train_s, 1),
               "final_loss": round(statistics.fmean(model.losses[-100:]), 3), "samplers": {}}
        for name, opts in samplers.items():
            t1 = time.perf_counter()
            gen = torch.Generator().manual_seed(1000 + seed)
            dense = model.sample(args.num_samples, sampler=name, generator=gen, **opts)
            pred = datasets.from_dense(dense.x, dense.adj, dense.mask, threshold=0.5, remove_isolated=True)
            row["samplers"][name] = {**_mmds(test_g, pred), "seconds": round(time.perf_counter() - t1, 1),
                                     "mean_edges": round(statistics.fmean(g.number_of_edges() for g in pred), 2)}
            print(f"seed {seed} {name}: {row['samplers'][name]}", flush=True)
        print(f"seed {seed}: trained {args.steps} steps in {train_s:.0f} s, final loss {row['final_loss']}", flush=True)
        res["seeds"].append(row)
        _update(key, res)
    res["summary"] = {name: _summary([r["samplers"][name] for r in res["seeds"]]) for name in samplers}
    for name, s in res["summary"].items():
        print(f"{name} mean (std) over {args.seeds} seeds:", json.dumps(s))
    _update(key, res)
    return res


def molecules_part(args) -> dict:
    from sciffusion.domains.graph_sde import molecules

    t0 = time.perf_counter()
    dense_all, smiles, skipped = molecules.nci_molecules(max_atoms=9)
    n = len(smiles)
    train_s, test_s, idx = datasets.split(list(range(n)), test_fraction=0.1, seed=0)
    train = dense_all[torch.tensor(train_s)]
    train_smiles = [smiles[i] for i in train_s]
    test_smiles = [smiles[i] for i in test_s]
    atoms = list(molecules.ATOM_TYPES)
    model = GraphSDE.from_data(train, dataset="nci", preset="molecules", kind="molecules", features="atoms",
                               atom_types=atoms, split=idx, seed=0, train={"ema_decay": args.mol_ema})
    model.fit(train, steps=args.mol_steps, batch_size=min(args.mol_batch, len(train)), seed=0, progress=False)
    train_s_ = time.perf_counter() - t0
    print(f"molecules: {n} kept ({skipped} skipped), trained {args.mol_steps} steps in {train_s_:.0f} s", flush=True)
    gen = torch.Generator().manual_seed(1)
    dense = model.sample(args.mol_samples, sampler="s4", num_steps=args.mol_nfe, snr=0.2, scale_eps=0.7,
                         generator=gen)
    m_all = metrics.molecule_metrics(dense, train_smiles, test_smiles=test_smiles, atom_types=atoms)
    res = {"num_molecules": n, "skipped": skipped, "num_train": len(train_s), "num_test": len(test_s),
           "steps": args.mol_steps, "batch_size": args.mol_batch, "ema_decay": args.mol_ema, "train_seconds": round(train_s_, 1), "num_samples": args.mol_samples,
           "nfe": args.mol_nfe, "sampler": "s4", "metrics": _jsonable(m_all)}
    print("molecule metrics", res["metrics"], flush=True)
    _update("molecules", res)
    res["qed_tilt"] = qed_tilt(model, args, train_smiles)
    _update("molecules", res)
    return res


def qed_tilt(model, args, train_smiles) -> dict:
    from rdkit.Chem import QED

    from sciffusion.domains.graph_sde import molecules

    atoms = list(model.config.atom_types)

    def qed_of(x, adj, mask) -> torch.Tensor:
        mols = molecules.graphs_to_mols(x.detach().float(), adj.detach().float(), mask, atoms, correct=True)
        return torch.tensor([QED.qed(m) if m is not None else 0.0 for m in mols], dtype=torch.float64)

    out = {"scale": args.qed_scale, "num_groups": args.fkc_groups, "num_particles": args.fkc_particles,
           "num_steps": args.fkc_steps}
    for label, scale in (("untilted", 0.0), ("tilted", args.qed_scale)):
        gen = torch.Generator().manual_seed(7)
        sizes = model.draw_num_nodes(args.fkc_groups, torch.Generator().manual_seed(3))

        last = {"on": args.fkc_steps == 1}

        def on_step(i, t_next, x, state):
            # FKC evaluates the reward once per step at the step's start; only the last step's value
            # enters the weights (beta_t = 0 before it), so QED is computed for that step alone
            last["on"] = i + 1 >= args.fkc_steps - 1

        def reward(state):
            x, adj = state
            zero = 0.0 * (x.sum((1, 2)) + adj.sum((1, 2)))  # keeps autograd's graph; zero gradient
            if not last["on"]:
                return zero.double()
            mask = node_mask_from_state(x, adj)  # padded nodes are exactly zero in every state
            # QED of the quantised graph is piecewise constant in the state: zero gradient almost
            # everywhere, so the tilt acts through the weights alone
            return qed_of(x, adj, mask) + zero

        t0 = time.perf_counter()
        t_end = float(model.process.t_min)
        # QED of the quantised graph is piecewise constant: FKC's continuous-time weights would
        # integrate it along the noisy path, so the tilt is switched on at the last grid time
        # only (beta_t = 0 before): the weights are then exp(beta r(x)) of the state one step
        # before the data end, i.e. importance resampling of that state, exact for its tilt.
        graphs, fk = model.sample_tilted(args.fkc_groups, reward, scale, num_particles=args.fkc_particles,
                                         num_steps=args.fkc_steps, num_nodes=sizes, generator=gen,
                                         reward_schedule=lambda t: scale if float(t) <= t_end + 1e-12 else 0.0,
                                         callback=on_step)
        m = metrics.molecule_metrics(graphs, train_smiles, atom_types=atoms, fcd=False, nspdk=False)
        q = [QED.qed(mm) for mm in model.to_molecules(graphs, correct=False) if mm is not None]
        qc = [QED.qed(mm) for mm in model.to_molecules(graphs, correct=True) if mm is not None]
        out[label] = {**_jsonable(m), "mean_qed_valid": round(statistics.fmean(q), 4) if q else None,
                      "mean_qed_corrected": round(statistics.fmean(qc), 4) if qc else None,
                      "num_valid": len(q), "seconds": round(time.perf_counter() - t0, 1),
                      "resampling_events": int(getattr(fk, "num_resampling_events", -1))}
        print(f"QED {label} (scale {scale}):", out[label], flush=True)
    return out


def _jsonable(d):
    return {k: (round(v, 4) if isinstance(v, float) and math.isfinite(v) else v) for k, v in d.items()
            if isinstance(v, (int, float, str, type(None)))}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--part", choices=["community", "molecules", "all"], default="all")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--nfe", type=int, default=400)
    ap.add_argument("--ema", type=float, default=0.999, help="EMA decay of the community runs (GDSS: 0.999)")
    ap.add_argument("--num-samples", type=int, default=100)
    ap.add_argument("--mol-steps", type=int, default=1500)
    ap.add_argument("--mol-nfe", type=int, default=400)
    ap.add_argument("--mol-batch", type=int, default=128)
    ap.add_argument("--mol-ema", type=float, default=0.99,
                    help="EMA decay (GDSS: 0.999 over ~35k steps; 0.999^2000 would leave 14%% of the init)")
    ap.add_argument("--mol-samples", type=int, default=500)
    ap.add_argument("--qed-scale", type=float, default=10.0)
    ap.add_argument("--fkc-groups", type=int, default=64)
    ap.add_argument("--fkc-particles", type=int, default=8)
    ap.add_argument("--fkc-steps", type=int, default=200)
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.part in ("community", "all"):
        community(args)
    if args.part in ("molecules", "all"):
        molecules_part(args)


if __name__ == "__main__":
    main()
