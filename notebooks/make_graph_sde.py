"""Write notebooks/graph_sde.ipynb (run: python notebooks/make_graph_sde.py). Unexecuted cells;
the test suite executes the notebook (tiny sizes, < 60 s on one core)."""

from pathlib import Path

import nbformat as nbf

cells = [
    nbf.v4.new_markdown_cell(r"""# Graphs and molecules from a system of SDEs (GDSS)

GDSS (Jo et al. 2022) diffuses a graph as the pair $G = (X, A)$ — node features and a weighted
adjacency — with one forward SDE per component,

$$dX_t = f_{1,t}(X_t)\,dt + g_{1,t}\,dW_1,\qquad dA_t = f_{2,t}(A_t)\,dt + g_{2,t}\,dW_2,$$

and reverses the *system* with two partial scores $\nabla_X\log p_t(X, A)$ and
$\nabla_A\log p_t(X, A)$, each a network that reads both components (a dense GCN for $X$; graph
multi-head attention over $[A, A^2, \dots]$ for $A$).

In sciffusion this is the core's `JointProcess`, `dsm_loss` and samplers (S4 = GDSS Alg. 2, PC,
Euler–Maruyama, any ODE solver) with the core's graph **constraints**: `SymmetricAdjacency`
(symmetric noise, zero diagonal) and `NodeMask` (padded nodes exactly zero), attached per batch.
Sizes here are tiny so the notebook runs in seconds; `benchmarks/graph_sde.py` has the real runs."""),
    nbf.v4.new_code_cell("""import torch, networkx as nx, matplotlib
import matplotlib.pyplot as plt
from sciffusion.domains.graph_sde import GraphSDE, datasets, metrics, plots

graphs = datasets.community_small(40, seed=0)              # two communities, 12-20 nodes (GDSS's recipe)
train_g, test_g, split = datasets.split(graphs, test_fraction=0.25, seed=0)
max_deg = max(d for g in graphs for _, d in g.degree())
train = datasets.to_dense(train_g, max_nodes=20, features="degree", max_degree=max_deg)
print(train.x.shape, train.adj.shape, "real nodes per graph:", train.num_nodes[:8].tolist())
plots.plot_graphs(train_g[:4], ncols=4, title="training graphs")"""),
    nbf.v4.new_markdown_cell("""## Train

`preset="tiny"` keeps GDSS's community-small processes (VP, $\\beta$ 0.1 → 1 for both $X$ and $A$)
with very small networks. Every state the network sees in training lies on the constrained
subspace: the perturbation draws symmetric noise for $A$ and none on padded nodes."""),
    nbf.v4.new_code_cell("""model = GraphSDE.from_data(train, dataset="community-small", preset="tiny", max_degree=max_deg, split=split)
model.fit(train, steps=150, batch_size=30, progress=False)
fig, ax = plt.subplots(figsize=(5, 2.5))
ax.plot(model.losses); ax.set_xlabel("step"); ax.set_ylabel("DSM loss"); ax.set_yscale("log"); fig"""),
    nbf.v4.new_markdown_cell("""## Sample with three core samplers at equal NFE

Node counts are drawn from the training distribution and the masks built from them. S4 spends
one score evaluation per step (Langevin correction + Strang-split reverse step); PC two
(predictor + corrector), so PC gets half the steps."""),
    nbf.v4.new_code_cell("""nfe = 40
er_p = sum(g.number_of_edges() for g in train_g) / sum(g.number_of_nodes() * (g.number_of_nodes() - 1) / 2 for g in train_g)
er = [nx.gnp_random_graph(g.number_of_nodes(), er_p, seed=k) for k, g in enumerate(train_g[:20])]
rows = {"Erdos-Renyi": metrics.graph_metrics(test_g, er), "training set": metrics.graph_metrics(test_g, train_g)}
samples = {}
for name, opts in {"s4": dict(num_steps=nfe, snr=0.05, scale_eps=0.7), "pc": dict(num_steps=nfe // 2, snr=0.05, scale_eps=0.7),
                   "euler_maruyama": dict(num_steps=nfe)}.items():
    dense = model.sample(20, sampler=name, generator=torch.Generator().manual_seed(1), **opts)
    pad = ~dense.mask
    assert torch.equal(dense.adj, dense.adj.transpose(1, 2)) and dense.x[pad].abs().max() == 0
    samples[name] = model.quantise(dense, remove_isolated=True)
    rows[name] = metrics.graph_metrics(test_g, samples[name])
for k, r in rows.items():
    print(f"{k:>15}: " + "  ".join(f"{m} {r[m]:.3f}" for m in ("degree", "clustering", "orbit")))"""),
    nbf.v4.new_code_cell("""plots.plot_graphs(samples["s4"][:4], ncols=4, title="S4 samples (tiny model, 150 steps)")"""),
    nbf.v4.new_markdown_cell("A model this small, trained for seconds, is not expected to beat the baselines on every "
                             "metric; `benchmarks/graph_sde.py` (quoted in `benchmarks/RESULTS.md`) trains the "
                             "community-small networks for real and compares them with Erdős–Rényi and the "
                             "training-set floor over three seeds."),
    nbf.v4.new_markdown_cell(r"""## Exact log-likelihood of a graph

Beyond GDSS: the probability-flow ODE of the joint system gives the log-density of a graph's
continuous state, over its free coordinates (the $nF$ features of the real nodes and the
$n(n-1)/2$ entries $A_{ij}$, $i<j$), through the core's `log_likelihood` (Hutchinson trace here;
`trace="exact"` for small graphs). Held-out community graphs should score higher than
Erdős–Rényi graphs of the same sizes."""),
    nbf.v4.new_code_cell("""test = datasets.to_dense(test_g[:4], max_nodes=20, features="degree", max_degree=max_deg)
er_same = [nx.gnp_random_graph(g.number_of_nodes(), er_p, seed=100 + k) for k, g in enumerate(test_g[:4])]
er_dense = datasets.to_dense(er_same, max_nodes=20, features="degree", max_degree=max_deg)
for label, d in (("held-out community", test), ("Erdos-Renyi", er_dense)):
    r = model.log_likelihood(d, num_steps=4, trace="hutchinson", generator=torch.Generator().manual_seed(0))
    print(f"{label:>20}: log p per graph (nats) {[round(v, 1) for v in r.logp.tolist()]}")"""),
    nbf.v4.new_markdown_cell(r"""## Molecules, and steering them toward higher QED

Molecules are graphs with one-hot atom types (C, N, O, F) and bond orders as edge values
(GDSS's QM9 encoding, hydrogens implicit, kekulised). Invalid SMILES are skipped and counted.
Validity *without* correction counts the sampled graphs RDKit sanitises as they are.

The reward tilt $p(G)\,e^{\beta\,\mathrm{QED}(G)}$ runs through `feynman_kac.sample_fkc`
(`GraphSDE.sample_tilted`). QED of the quantised graph is piecewise constant, so the tilt is
switched on at the last grid time (the weights are then $e^{\beta\,\mathrm{QED}}$ of the nearly
final state: importance resampling within each group)."""),
    nbf.v4.new_code_cell("""from rdkit.Chem import QED
from sciffusion.domains.graph_sde import molecules
smiles = ["CCO", "CCN", "CC(=O)O", "c1ccccc1", "CC(C)O", "OCCO", "CCOC", "CC#N", "C1CCCC1", "CC(=O)N",
          "NCCO", "COC(=O)C", "CCCCO", "c1ccncc1", "C1CCOC1", "CC(N)=O", "OC(=O)CO", "FC(F)F", "CCF", "not_a_smiles"]
mols_data, kept, skipped = molecules.smiles_to_graphs(smiles, max_atoms=9)
print(len(kept), "kept; skipped:", skipped)
mmodel = GraphSDE.from_data(mols_data, dataset="toy", preset="tiny", kind="molecules", features="atoms",
                            atom_types=list(molecules.ATOM_TYPES))
mmodel.fit(mols_data, steps=120, batch_size=19, progress=False)
gen = mmodel.sample(16, sampler="s4", num_steps=40, snr=0.2, scale_eps=0.7, generator=torch.Generator().manual_seed(0))
m = metrics.molecule_metrics(gen, kept, fcd=False, nspdk=False)
print({k: m[k] for k in ("validity", "validity_corrected", "uniqueness", "novelty")})
plots.draw_molecules(mmodel.to_molecules(gen, correct=True)[:8], mols_per_row=4)"""),
    nbf.v4.new_code_cell("""from sciffusion.domains.graph_sde.nets import node_mask_from_state

def qed_reward(state):
    x, adj = state
    mols = molecules.graphs_to_mols(x.detach().float(), adj.detach().float(), node_mask_from_state(x, adj), correct=True)
    q = torch.tensor([QED.qed(mol) if mol is not None else 0.0 for mol in mols], dtype=torch.float64)
    return q + 0.0 * x.sum((1, 2))          # piecewise constant: zero gradient (keeps autograd's graph)

t_end = float(mmodel.process.t_min)
sizes = mmodel.draw_num_nodes(8, torch.Generator().manual_seed(3))
for scale in (0.0, 10.0):
    g, res = mmodel.sample_tilted(8, qed_reward, scale, num_particles=6, num_steps=20, num_nodes=sizes,
                                  reward_schedule=lambda t: scale if float(t) <= t_end + 1e-12 else 0.0,
                                  generator=torch.Generator().manual_seed(7))
    q = [QED.qed(mol) for mol in mmodel.to_molecules(g, correct=True)]
    print(f"beta = {scale:>4}: mean QED (corrected) {sum(q) / len(q):.3f}")"""),
]

nb = nbf.v4.new_notebook()
nb["cells"] = cells
nb["metadata"]["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
nbf.write(nb, Path(__file__).with_name("graph_sde.ipynb"))
