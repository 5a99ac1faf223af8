import json
import math

import pytest
import torch

nx = pytest.importorskip("networkx")
pytest.importorskip("torch_geometric")

from sciffusion.domains.graph_sde.datasets import (  # noqa: E402
    DenseGraphs,
    apply_split,
    community_small,
    from_dense,
    grid_graphs,
    planar_graphs,
    read_split,
    sbm_graphs,
    split,
    to_dense,
    write_split,
)


def same(g, h):
    """Equal node sets and edge sets (attributes ignored)."""
    return set(g.nodes) == set(h.nodes) and {frozenset(e) for e in g.edges} == {frozenset(e) for e in h.edges}


def test_community_small_structure():
    gs = community_small(100, seed=0)
    assert len(gs) == 100
    sizes = {g.number_of_nodes() for g in gs}
    assert sizes <= {12, 14, 16, 18, 20} and len(sizes) == 5  # two communities of floor(M/2), M in 12..20
    for g in gs:
        c = g.number_of_nodes() // 2
        comm = nx.get_node_attributes(g, "community")
        cross = [(u, v) for u, v in g.edges if comm[u] != comm[v]]
        assert len(cross) >= 1  # GDSS adds one bridge when none was drawn
        assert all((u < c) == (comm[u] == 0) for u in g)
        # GDSS's fixed community seeds: community 0 is G(c, 0.7) with networkx seed 0
        inner = g.subgraph(range(c))
        assert same(inner, nx.gnp_random_graph(c, 0.7, seed=0))


def test_community_small_seeded():
    a, b, c = community_small(10, seed=3), community_small(10, seed=3), community_small(10, seed=4)
    assert all(same(x, y) for x, y in zip(a, b))
    assert not all(same(x, y) for x, y in zip(a, c))
    r = community_small(5, seed=0, resample_communities=True)
    assert len(r) == 5


def test_bridge_rate_matches_formula():
    # expected bridges per graph = c^2 * 2 p_inter / c = 0.1 c, plus one when none drawn:
    # E = 0.1 c + (1 - 0.1/c)^(c^2). Average over c = 6..10 equally likely sizes M=12..20.
    gs = community_small(2000, seed=1)
    bridges = []
    expected = []
    for g in gs:
        c = g.number_of_nodes() // 2
        comm = nx.get_node_attributes(g, "community")
        bridges.append(sum(comm[u] != comm[v] for u, v in g.edges))
        expected.append(0.1 * c + (1 - 0.1 / c) ** (c * c))
    mean, mean_exp = sum(bridges) / len(bridges), sum(expected) / len(expected)
    # std of the bridge count is about 1, so the mean of 2000 has std ~0.022; 5 sigma
    assert abs(mean - mean_exp) < 0.12


def test_grid_planar_sbm():
    gs = grid_graphs(5, seed=0)
    for g in gs:
        assert 100 <= g.number_of_nodes() <= 361
        degs = sorted(d for _, d in g.degree())
        assert degs[:4] == [2, 2, 2, 2] and max(degs) == 4
    ps = planar_graphs(3, seed=0, num_nodes=64)
    for g in ps:
        assert g.number_of_nodes() == 64 and nx.check_planarity(g)[0]
        # triangulation of n points with h hull points has 3n - 3 - h edges
        assert g.number_of_edges() <= 3 * 64 - 6
    ss = sbm_graphs(3, seed=0)
    for g in ss:
        blocks = set(nx.get_node_attributes(g, "block").values())
        assert 2 <= len(blocks) <= 5 and 40 <= g.number_of_nodes() <= 200


def test_grid_edge_count_exact():
    for g in grid_graphs(4, seed=2):
        degs = [d for _, d in g.degree()]
        # m x n grid: m(n-1) + n(m-1) edges; corners have degree 2
        assert degs.count(2) == 4
        n = g.number_of_nodes()
        sides = [(m, n // m) for m in range(10, 20) if n % m == 0 and 10 <= n // m <= 19]
        assert any(g.number_of_edges() == m * (k - 1) + k * (m - 1) for m, k in sides)


def test_to_dense_round_trip_and_padding():
    g1 = nx.path_graph(3)
    g2 = nx.cycle_graph(4)
    d = to_dense([g1, g2], max_nodes=5, max_degree=3)
    assert isinstance(d, DenseGraphs)
    assert d.x.shape == (2, 5, 4) and d.adj.shape == (2, 5, 5) and d.mask.shape == (2, 5)
    assert d.mask.tolist() == [[True] * 3 + [False] * 2, [True] * 4 + [False]]
    expected = torch.zeros(5, 5)
    expected[0, 1] = expected[1, 0] = expected[1, 2] = expected[2, 1] = 1
    assert torch.equal(d.adj[0], expected)
    # one-hot degree: path 1,2,1 ; cycle 2,2,2,2 ; padded rows zero
    assert d.x[0].argmax(-1)[:3].tolist() == [1, 2, 1]
    assert d.x[1, :4].argmax(-1).tolist() == [2, 2, 2, 2]
    assert d.x[0, 3:].abs().sum() == 0 and d.x[1, 4].abs().sum() == 0
    assert d.feature_names == ("deg=0", "deg=1", "deg=2", "deg=3")
    back = from_dense(d.x, d.adj, d.mask)
    assert same(back[0], g1) and same(back[1], g2)
    ones = to_dense([g1], features="ones")
    assert ones.x.shape == (1, 3, 1) and ones.x.sum() == 3


def test_to_dense_edge_values_and_atoms():
    g = nx.Graph()
    g.add_node(0, atom="C")
    g.add_node(1, atom="O")
    g.add_edge(0, 1, weight=2.0)
    d = to_dense([g], max_nodes=3, features="atoms", atom_types=("C", "N", "O"))
    assert d.adj[0, 0, 1] == 2.0 and d.adj[0, 1, 0] == 2.0 and d.adj[0].diagonal().abs().sum() == 0
    assert d.x[0, :2].tolist() == [[1, 0, 0], [0, 0, 1]]
    g.nodes[1]["atom"] = "S"
    with pytest.raises(ValueError, match="atom_types"):
        to_dense([g], features="atoms", atom_types=("C", "N", "O"))


def test_to_dense_errors():
    with pytest.raises(ValueError, match="empty"):
        to_dense([])
    with pytest.raises(ValueError, match="max_nodes=3"):
        to_dense([nx.path_graph(4)], max_nodes=3)
    with pytest.raises(ValueError, match="max_degree"):
        to_dense([nx.star_graph(4)], max_degree=2)
    with pytest.raises(ValueError, match="features"):
        to_dense([nx.path_graph(2)], features="pagerank")
    with pytest.raises(TypeError, match="networkx"):
        to_dense([[0, 1]])


def test_from_dense_threshold_and_isolates():
    adj = torch.tensor([[[0.0, 0.6, 0.49, 0.0], [0.6, 0.0, 0.0, 0.0], [0.49, 0.0, 0.0, 0.9], [0.0, 0.0, 0.9, 0.0]]])
    mask = torch.tensor([[True, True, True, False]])
    (g,) = from_dense(None, adj, mask)
    assert sorted(g.edges) == [(0, 1)] and g.number_of_nodes() == 3  # 0.49 < 0.5; node 3 padded
    (h,) = from_dense(None, adj, mask, remove_isolated=True)
    assert h.number_of_nodes() == 2
    with pytest.raises(ValueError, match="NaN"):
        from_dense(None, adj * math.nan, mask)


def test_split_and_files(tmp_path):
    items = list(range(10))
    tr, te, idx = split(items, test_fraction=0.2, seed=0)
    assert len(te) == 2 and len(tr) == 8 and sorted(tr + te) == items
    tr2, te2, _ = split(items, test_fraction=0.2, seed=0)
    assert (tr, te) == (tr2, te2)
    assert split(items, seed=1)[1] != te or split(items, seed=2)[1] != te
    p = write_split(idx, tmp_path / "model" / "split.json")
    back = read_split(p)
    assert back == json.loads(json.dumps(idx))
    assert apply_split(items, back) == (tr, te)
    with pytest.raises(ValueError, match="num_items|items"):
        apply_split(items[:5], back)
    (tmp_path / "bad.json").write_text('{"train": [0, 0], "test": [], "num_items": 2}')
    with pytest.raises(ValueError, match="partition"):
        read_split(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="test_fraction"):
        split(items, test_fraction=1.0)
    with pytest.raises(ValueError, match="at least 2"):
        split([1])


def test_erdos_renyi_baseline_matches_density():
    from sciffusion.domains.graph_sde.datasets import erdos_renyi_baseline

    ref = community_small(50, seed=0)
    p = sum(g.number_of_edges() for g in ref) / sum(g.number_of_nodes() * (g.number_of_nodes() - 1) / 2 for g in ref)
    er = erdos_renyi_baseline(ref, num_graphs=400, seed=0)
    assert {g.number_of_nodes() for g in er} <= {g.number_of_nodes() for g in ref}
    assert er[0].graph["p"] == pytest.approx(p, rel=1e-12)
    pairs = sum(g.number_of_nodes() * (g.number_of_nodes() - 1) / 2 for g in er)
    dens = sum(g.number_of_edges() for g in er) / pairs
    # about 400 * 100 pairs: binomial std of the pooled density ~ sqrt(p(1-p)/40000) ~ 0.0025; 5 sigma
    assert abs(dens - p) < 0.0125
    with pytest.raises(ValueError, match="empty"):
        erdos_renyi_baseline([])
