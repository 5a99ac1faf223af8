"""GraphSDE: constraints through training and sampling, save/load, bad input, exact likelihood and
reward tilt against closed forms (Gaussian "graph" data with the exact score)."""

import json
import math

import pytest
import torch

pytest.importorskip("torch_geometric")
pytest.importorskip("networkx")

from sciffusion.domains.graph_sde import datasets  # noqa: E402
from sciffusion.domains.graph_sde.model import GraphSDE  # noqa: E402


@pytest.fixture(scope="module")
def data():
    graphs = datasets.community_small(12, seed=0)
    return datasets.to_dense(graphs, features="degree")


@pytest.fixture(scope="module")
def trained(data):
    m = GraphSDE.from_data(data, dataset="community-small", preset="tiny", max_degree=data.num_features - 1)
    return m.fit(data, steps=3, progress=False)


def _check_constrained(x, adj, mask):
    pad = ~mask
    assert torch.equal(x[pad], torch.zeros_like(x[pad]))
    edge_pad = pad[:, :, None] | pad[:, None, :]
    assert torch.equal(adj[edge_pad], torch.zeros_like(adj[edge_pad]))
    assert torch.equal(adj, adj.transpose(1, 2))
    assert torch.equal(adj.diagonal(dim1=1, dim2=2), torch.zeros_like(adj.diagonal(dim1=1, dim2=2)))


def test_training_inputs_are_constrained(data):
    """Every state the network sees in training has exactly-zero padded nodes and a symmetric,
    zero-diagonal adjacency (the core's constraints drive the perturbation)."""
    assert bool((~data.mask).any())  # the set has padded nodes
    m = GraphSDE.from_data(data, dataset="community-small", preset="tiny")
    seen = []
    hook = m.net.register_forward_pre_hook(lambda mod, args: seen.append(tuple(a.detach() for a in args[0])))
    m.fit(data, steps=2, batch_size=6, progress=False)
    hook.remove()
    assert len(seen) == 2
    for x, adj in seen:
        mask = (x.abs().sum(-1) + adj.abs().sum(-1)) > 0
        assert sorted(mask.sum(1).tolist()) != [] and int(mask.sum(1).min()) >= 12  # community-small: >= 12 nodes
        _check_constrained(x, adj, mask)
    assert all(math.isfinite(v) for v in m.losses)


@pytest.mark.parametrize("sampler", ["s4", "pc", "euler_maruyama"])
def test_sampling_keeps_constraints_and_is_seeded(trained, data, sampler):
    out = trained.sample(5, sampler=sampler, num_steps=4, generator=torch.Generator().manual_seed(1))
    _check_constrained(out.x, out.adj, out.mask)
    counts = set(data.num_nodes.tolist())
    assert set(out.num_nodes.tolist()) <= counts  # node counts from the training distribution
    again = trained.sample(5, sampler=sampler, num_steps=4, generator=torch.Generator().manual_seed(1))
    assert torch.equal(out.adj, again.adj) and torch.equal(out.x, again.x)
    graphs = trained.quantise(out)
    assert [g.number_of_nodes() for g in graphs] == out.num_nodes.tolist()


def test_save_load_round_trip(trained, tmp_path):
    path = trained.save(tmp_path / "model")
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "split.json", "weights.pt"]
    loaded = GraphSDE.load(path)
    assert loaded.config == trained.config
    a = trained.sample(3, num_steps=3, generator=torch.Generator().manual_seed(2))
    b = loaded.sample(3, num_steps=3, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a.adj, b.adj) and torch.equal(a.x, b.x)
    with pytest.raises(ValueError, match="trained on dataset 'community-small', not 'grid'"):
        GraphSDE.load(path, dataset="grid")
    with pytest.raises(ValueError, match="max_nodes=20, not 9"):
        GraphSDE.load(path, max_nodes=9)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="missing config.json, weights.pt, split.json"):
        GraphSDE.load(tmp_path / "empty")
    with pytest.raises(FileNotFoundError):
        GraphSDE.load(tmp_path / "nowhere")
    cfg = json.loads((path / "config.json").read_text())
    cfg["a_net"]["hidden"] = 12
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="does not match the architecture"):
        GraphSDE.load(path)


def test_bad_data(trained, data):
    big = datasets.to_dense(datasets.grid_graphs(1, seed=0, min_side=5, max_side=5), features="degree",
                            max_degree=data.num_features - 1)
    with pytest.raises(ValueError, match="more than the model's max_nodes=20"):
        trained.check_data(big)
    other = datasets.to_dense(datasets.community_small(4, seed=1), features="ones")
    with pytest.raises(ValueError, match="node features"):
        trained.fit(other, steps=1, progress=False)
    with pytest.raises(TypeError, match="DenseGraphs"):
        GraphSDE.from_data(data.x, dataset="x")
    with pytest.raises(ValueError, match="unknown preset"):
        GraphSDE.from_data(data, dataset="x", preset="nope")
    with pytest.raises(ValueError, match="num must be a positive int"):
        trained.sample(0)
    with pytest.raises(ValueError, match="unknown sampler"):
        trained.sample(2, sampler="nope")
    with pytest.raises(ValueError, match="num_nodes must lie in"):
        trained.sample(2, num_nodes=21, num_steps=2)
    with pytest.raises(ValueError, match="not molecules"):
        trained.sample_molecules(2, num_steps=2)
    with pytest.raises(ValueError, match="process spec"):
        GraphSDE.from_data(data, dataset="x", preset="tiny", x_process={})  # not silently the preset's


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_num_steps_is_validated_not_defaulted(trained, bad):
    """num_steps=0 (or any non-positive / non-int) raises; it used to become the default via ``or``."""
    with pytest.raises(ValueError, match="num_steps must be a positive int"):
        trained.sample(2, num_steps=bad)


def test_num_steps_none_is_the_stored_default(trained):
    """None takes the model's num_steps (tiny preset: 50): the same draw as passing 50, and 50 S4
    model calls (S4: one network evaluation per step)."""
    assert trained.config.sampler["num_steps"] == 50
    calls = []
    hook = trained.ema.register_forward_hook(lambda *a: calls.append(1))
    a = trained.sample(2, generator=torch.Generator().manual_seed(5))
    n_default = len(calls)
    b = trained.sample(2, num_steps=50, generator=torch.Generator().manual_seed(5))
    hook.remove()
    assert torch.equal(a.adj, b.adj) and torch.equal(a.x, b.x)
    assert n_default == len(calls) - n_default == 50


def test_resume_refuses_another_dataset(data, tmp_path):
    ck = tmp_path / "ck.pt"
    GraphSDE.from_data(data, dataset="community-small", preset="tiny").fit(data, steps=2, checkpoint=ck, progress=False)
    with pytest.raises(ValueError, match="data"):
        GraphSDE.from_data(data, dataset="community-small", preset="tiny").fit(data[:6], steps=4, checkpoint=ck,
                                                                             progress=False)


class GaussianOracle(torch.nn.Module):
    """Exact eps for data whose free coordinates are iid N(0, c^2): the noised marginal is
    N(0, V_t), V_t = alpha_t^2 c^2 + sigma_t^2, so eps = sigma_t x / V_t (per component)."""

    def __init__(self, process, c):
        super().__init__()
        self.process, self.c = process, c

    def forward(self, state, t, mask=None):
        t64 = t.double()
        out = []
        for xi, p in zip(state, self.process.processes):
            a, s = p.alpha(t64), p.sigma(t64)
            k = (s / (a * a * self.c ** 2 + s * s)).to(xi.dtype)
            out.append(k.reshape(-1, *([1] * (xi.ndim - 1))) * xi)
        return tuple(out)


def _gaussian_model(n_max=4, F=2, counts=(4, 3), x_process=None):
    x = torch.zeros(len(counts), n_max, F)
    mask = torch.arange(n_max) < torch.tensor(counts)[:, None]
    dense = datasets.DenseGraphs(x, torch.zeros(len(counts), n_max, n_max), mask, n_max, ())
    m = GraphSDE.from_data(dense, dataset="gauss", preset="tiny", x_process=x_process)
    return m, dense


@pytest.mark.parametrize("x_process", [None, {"name": "ve", "sigma_min": 0.1, "sigma_max": 1.0}],
                         ids=["vp-vp", "ve-vp"])
def test_log_likelihood_matches_closed_form(x_process):
    """With the exact score of iid N(0, c^2) coordinates each component's PF-ODE is
    x_t = x sqrt(V_t / V_min), V_t = alpha_t^2 c^2 + sigma_t^2 (its own process), so
    log p = sum log N(x_T; 0, s^2) + (d/2) log(V_T / V_min) over the d = nF + n(n-1)/2 free
    coordinates, s the prior std (1 for VP, sqrt(1 + sigma_max^2) for VE). Exact trace;
    2e-3 absolute covers float32 model arithmetic over 16 RK4 steps."""
    m, dense = _gaussian_model(x_process=x_process)
    c = 2.0
    m.ema = GaussianOracle(m.process, c)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 2, generator=g) * c * dense.mask[..., None]
    u = (torch.randn(2, 4, 4, generator=g) * c).triu(1)
    mm = dense.mask.float()
    adj = (u + u.transpose(1, 2)) * mm[:, :, None] * mm[:, None, :]
    res = m.log_likelihood(datasets.DenseGraphs(x, adj, dense.mask, 4, ()), num_steps=16, trace="exact",
                           exact_max_dim=100)
    t_lo, t_hi = float(m.process.t_min), float(m.process.t_max)

    def component(z, p):
        V = lambda t: float(p.alpha(t) ** 2 * c * c + p.sigma(t) ** 2)  # noqa: E731
        s2 = p.prior_std() ** 2
        xT = z * math.sqrt(V(t_hi) / V(t_lo))
        d = z.numel()
        return float(-0.5 * (xT ** 2).sum() / s2 - 0.5 * d * math.log(2 * math.pi * s2)
                     + 0.5 * d * math.log(V(t_hi) / V(t_lo)))

    px, pa = m.process.processes
    for b, n in enumerate((4, 3)):
        zx = x[b, :n].flatten().double()
        za = adj[b, :n, :n][torch.triu_indices(n, n, 1).unbind()].double()
        assert zx.numel() + za.numel() == n * 2 + n * (n - 1) // 2
        expect = component(zx, px) + component(za, pa)
        assert abs(float(res.logp[b]) - expect) < 2e-3, (float(res.logp[b]), expect)


@pytest.mark.parametrize("component", ["x", "adj"])
def test_reward_tilt_shifts_the_gaussian_mean(component):
    """Feynman–Kac tilt through feynman_kac.sample_fkc: iid N(0, 1) coordinates tilted by
    exp(beta * sum of one component's free coordinates) are N(beta, 1) exactly, the other
    component untouched. 4 groups x 1024 particles, 100 steps: self-normalised SMC has an O(1/N)
    bias (about -0.02 here) and Monte Carlo error about 0.01; tolerance 0.05. Untilted: 0."""
    m, dense = _gaussian_model(n_max=3, F=1, counts=(3,))
    m.ema = GaussianOracle(m.process, 1.0)
    beta = 0.5
    iu = torch.triu_indices(3, 3, 1)
    if component == "x":
        reward = lambda s: s[0].double().sum((1, 2))  # noqa: E731
    else:
        reward = lambda s: 0.5 * s[1].double().sum((1, 2))  # noqa: E731  (= sum over i<j of A_ij)

    def means(scale):
        graphs, res = m.sample_tilted(4, reward, scale, num_particles=1024, num_steps=100,
                                      generator=torch.Generator().manual_seed(0))
        _check_constrained(graphs.x, graphs.adj, graphs.mask)
        _check_constrained(res.x[0], res.x[1], dense.mask.expand(4096, -1))
        w = res.weights().reshape(-1).double() / res.num_groups
        x, adj = res.x
        edge = float((w[:, None] * adj[:, iu[0], iu[1]].double()).sum(0).mean())
        node = float((w[:, None] * x[:, :, 0].double()).sum(0).mean())
        return (node, edge) if component == "x" else (edge, node)

    tilted, other = means(beta)
    assert abs(tilted - beta) < 0.05, tilted
    assert abs(other) < 0.05, other
    assert all(abs(v) < 0.05 for v in means(0.0))


def test_init_is_seeded_and_leaves_the_global_rng_alone(data):
    before = torch.get_rng_state()
    a = GraphSDE.from_data(data, dataset="community-small", preset="tiny", seed=3)
    assert torch.equal(torch.get_rng_state(), before)
    b = GraphSDE.from_data(data, dataset="community-small", preset="tiny", seed=3)
    c = GraphSDE.from_data(data, dataset="community-small", preset="tiny", seed=4)
    pa, pb, pc = (torch.cat([p.flatten() for p in m.net.parameters()]) for m in (a, b, c))
    assert torch.equal(pa, pb) and not torch.equal(pa, pc)
