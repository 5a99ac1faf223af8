import math

import numpy as np
import pytest

nx = pytest.importorskip("networkx")
pytest.importorskip("orbit_count")

from sciffusion.domains.graph_sde.metrics import (  # noqa: E402
    graph_metrics,
    mmd,
    mmd_clustering,
    mmd_degree,
    mmd_orbit,
    mmd_spectral,
    node_orbit_counts,
    orbit_descriptor,
)

PAW = nx.Graph([(0, 1), (1, 2), (0, 2), (0, 3)])  # triangle 0-1-2 with pendant 3 at node 0


def test_orbit_counts_match_hand_counts():
    # ORCA orbits 0..14; hand counts of induced graphlets (see orbit_descriptor's docstring)
    c4 = node_orbit_counts(nx.cycle_graph(4))
    # each node: degree 2; end of 2 induced 3-paths, centre of 1; in the one 4-cycle
    assert (c4 == [2, 2, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0]).all()
    star = node_orbit_counts(nx.star_graph(3))
    assert star[0].tolist() == [3, 0, 3, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]  # centre: C(3,2) paths, claw centre
    assert (star[1:] == [1, 2, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0]).all()  # leaves: ends of 2 paths, claw leaf
    paw = node_orbit_counts(PAW)
    assert paw[0].tolist() == [3, 0, 2, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0]  # 3-path centre twice (1-0-3, 2-0-3)
    assert paw[1].tolist() == [2, 1, 0, 1, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0]
    assert paw[2].tolist() == paw[1].tolist()
    assert paw[3].tolist() == [1, 2, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0]  # pendant: ends 3-0-1, 3-0-2
    assert (node_orbit_counts(nx.empty_graph(3)) == 0).all()
    assert np.allclose(orbit_descriptor(nx.star_graph(3)), [1.5, 1.5, 0.75, 0, 0, 0, 0.75, 0.25] + [0] * 7)


def test_zero_for_identical_sets():
    gs = [nx.cycle_graph(5), nx.star_graph(4), PAW, nx.path_graph(6)]
    for kernel in ("gaussian_emd", "gaussian_tv"):
        res = graph_metrics(gs, list(gs), kernel=kernel, metrics=("degree", "clustering", "orbit", "spectral"))
        for key in ("degree", "clustering", "orbit", "spectral"):
            # the three kernel means are computed by the same arithmetic: only summation-order rounding
            assert abs(res[key]) < 1e-12, (kernel, key, res[key])
        assert res["kernel"] == kernel and res["num_ref"] == 4 and res["num_pred"] == 4


def test_degree_mmd_by_hand():
    # ref {P3}: degree pmf (0, 2/3, 1/3); pred {triangle}: (0, 0, 1)
    # EMD = sum |CDF differences| = |0-0| + |2/3 - 0| = 2/3 ; TV = (2/3 + 2/3)/2 = 2/3
    k = math.exp(-((2 / 3) ** 2) / 2)
    assert mmd_degree([nx.path_graph(3)], [nx.complete_graph(3)]) == pytest.approx(2 - 2 * k, rel=1e-12)
    # ref {P3, star K1,3}; star pmf (0, 3/4, 0, 1/4). pred {triangle}.
    # EMD(P3, star): CDFs (0, 2/3, 1, 1) vs (0, 3/4, 3/4, 1) -> 1/12 + 1/4 = 1/3
    # EMD(star, tri): CDFs (0, 3/4, 3/4, 1) vs (0, 0, 1, 1) -> 3/4 + 1/4 = 1
    # TV(P3, star) = (1/12 + 1/3 + 1/4)/2 = 1/3 ; TV(star, tri) = (3/4 + 1 + 1/4)/2 = 1
    g = lambda d: math.exp(-d * d / 2)  # noqa: E731
    ref = [nx.path_graph(3), nx.star_graph(3)]
    expected = (2 + 2 * g(1 / 3)) / 4 + 1 - 2 * (g(2 / 3) + g(1)) / 2
    assert mmd_degree(ref, [nx.complete_graph(3)]) == pytest.approx(expected, rel=1e-12)
    # TV happens to give the same distances here; a case where they differ:
    # P3 (0, 2/3, 1/3) vs P2 (0, 1): EMD = 1/3 ... CDFs (0, 2/3, 1) vs (0, 1, 1) -> 1/3; TV = 1/3
    # star (0, 3/4, 0, 1/4) vs P2 (0, 1): EMD = 1/4 * 2 = 1/2 ; TV = 1/4
    assert mmd_degree([nx.star_graph(3)], [nx.path_graph(2)]) == pytest.approx(2 - 2 * g(1 / 2), rel=1e-12)
    assert mmd_degree([nx.star_graph(3)], [nx.path_graph(2)], kernel="gaussian_tv") == pytest.approx(
        2 - 2 * g(1 / 4), rel=1e-12
    )


def test_clustering_mmd_by_hand():
    # P3: all clustering 0 -> bin 0; triangle: all 1 -> bin 99 (the last bin holds 1.0).
    # EMD with ground distance |i-j|/100 = 0.99; TV = 1; sigma = 0.1
    emd_k = math.exp(-(0.99**2) / (2 * 0.01))
    tv_k = math.exp(-1 / (2 * 0.01))
    assert mmd_clustering([nx.path_graph(3)], [nx.complete_graph(3)]) == pytest.approx(2 - 2 * emd_k, rel=1e-12)
    assert mmd_clustering([nx.path_graph(3)], [nx.complete_graph(3)], kernel="gaussian_tv") == pytest.approx(
        2 - 2 * tv_k, rel=1e-12
    )
    # paw: clustering (1/3, 1, 1, 0) -> bins 33, 99, 99, 0, pmf 1/4, 1/2 at 99, 1/4 at 0
    # vs triangle (all in bin 99): CDF diff = 1/4 on bins 0..32, 1/2 on bins 33..98 -> EMD = (33/4 + 66/2)/100
    d = (33 / 4 + 66 / 2) / 100
    assert mmd_clustering([PAW], [nx.complete_graph(3)]) == pytest.approx(2 - 2 * math.exp(-d * d / 0.02), rel=1e-12)


def test_orbit_mmd_by_hand():
    c4 = np.array([2, 2, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0], float)
    star = np.array([1.5, 1.5, 0.75, 0, 0, 0, 0.75, 0.25, 0, 0, 0, 0, 0, 0, 0])
    d2 = ((c4 - star) ** 2).sum()
    tv = 0.5 * np.abs(c4 - star).sum()
    assert mmd_orbit([nx.cycle_graph(4)], [nx.star_graph(3)]) == pytest.approx(2 - 2 * math.exp(-d2 / 1800), rel=1e-12)
    assert mmd_orbit([nx.cycle_graph(4)], [nx.star_graph(3)], kernel="gaussian_tv") == pytest.approx(
        2 - 2 * math.exp(-(tv**2) / 1800), rel=1e-12
    )


def test_spectral_runs_and_differs():
    assert mmd_spectral([nx.cycle_graph(6)], [nx.star_graph(5)]) > 0.01


def test_generic_mmd_and_errors():
    # two ref points at l2 distance 3, one pred point at distance 0 and 3, sigma 1
    a, b = [np.array([0.0]), np.array([3.0])], [np.array([0.0])]
    g3 = math.exp(-4.5)
    assert mmd(a, b, "l2", 1.0, is_hist=False) == pytest.approx((2 + 2 * g3) / 4 + 1 - (1 + g3), rel=1e-12)
    with pytest.raises(ValueError, match="kernel"):
        mmd_degree([PAW], [PAW], kernel="rbf")
    with pytest.raises(ValueError, match="no graph"):
        mmd_degree([PAW], [nx.empty_graph(0)])
    with pytest.raises(ValueError, match="no graph"):
        mmd_degree([], [PAW])
    with pytest.raises(TypeError, match="networkx"):
        mmd_degree([PAW], [np.eye(3)])
    with pytest.raises(ValueError, match="NaN"):
        mmd([np.array([math.nan])], [np.array([1.0])], "l2", is_hist=False)
    res = graph_metrics([PAW], [PAW, nx.empty_graph(0)])
    assert res["num_pred"] == 1 and res["num_empty_dropped"] == 1


def test_emd_closed_form_matches_transport():
    # the cumulative-sum W1 against scipy's 1-D Wasserstein distance on random pmfs
    from scipy.stats import wasserstein_distance

    rng = np.random.default_rng(0)
    for length, scale in ((7, 1.0), (100, 100.0)):
        p, q = rng.random(length), rng.random(length)
        p[rng.random(length) < 0.3] = 0
        w = wasserstein_distance(np.arange(length), np.arange(length), p + 1e-300, q) / scale
        got = mmd([p], [q], "emd", 0.5, distance_scaling=scale)
        assert got == pytest.approx(2 - 2 * math.exp(-w * w / 0.5), rel=1e-9)  # scipy sorts and sums in float64


def test_molecule_metrics_counts():
    pytest.importorskip("rdkit")
    from sciffusion.domains.graph_sde.metrics import molecule_metrics

    # 5 graphs sampled, 4 came back: 3 valid ("CCO" twice, "CCN"), 1 invalid (valence 5 carbon)
    res = molecule_metrics(["CCO", None, "CCO", "CCN", "C(C)(C)(C)(C)C"][:4] + ["C(C)(C)(C)(C)C"], ["OCC"],
                           num_sampled=6, fcd=False, nspdk=False)
    assert res["validity"] == pytest.approx(3 / 6) and res["num_valid"] == 3
    assert res["uniqueness"] == pytest.approx(2 / 3)  # {CCO, CCN} of 3 valid
    assert res["novelty"] == pytest.approx(1 / 2)  # CCN is new, CCO is OCC of the training set
    assert res["validity_corrected"] is None and res["evaluated_on"] == "valid"
    with pytest.raises(ValueError, match="num_sampled"):
        molecule_metrics(["CCO", "CCN"], ["CCO"], num_sampled=1)


def test_molecule_metrics_from_graphs():
    import torch

    pytest.importorskip("rdkit")
    from sciffusion.domains.graph_sde.metrics import molecule_metrics

    x = torch.zeros(2, 3, 4)
    x[:, :, 0] = 1
    adj = torch.zeros(2, 3, 3)
    adj[0, 0, 1] = adj[0, 1, 0] = adj[0, 1, 2] = adj[0, 2, 1] = 1.0  # propane
    adj[1, 0, 1] = adj[1, 1, 0] = 3.0
    adj[1, 1, 2] = adj[1, 2, 1] = 2.0  # C#C=C: invalid until corrected to C=C=C
    res = molecule_metrics((x, adj, torch.ones(2, 3, dtype=torch.bool)), ["CCC"], fcd=False, nspdk=False)
    assert res["validity"] == 0.5 and res["validity_corrected"] == 1.0 and res["evaluated_on"] == "corrected"
    assert res["uniqueness"] == 1.0 and res["novelty"] == 0.5


def test_nspdk_hand_cases():
    pytest.importorskip("eden")
    from sciffusion.domains.graph_sde.metrics import nspdk_mmd

    def atom(label):
        g = nx.Graph()
        g.add_node(0, label=label)
        return g

    # NSPDK feature vectors have unit norm, and single atoms of different elements share no
    # feature: K(C, C) = 1, K(C, O) = 0. {C} vs {C, O}: 1 + (1 + 0 + 0 + 1)/4 - 2 (1 + 0)/2 = 0.5
    assert nspdk_mmd([atom("C")], [atom("C")]) == pytest.approx(0.0, abs=1e-12)
    assert nspdk_mmd([atom("C")], [atom("O")]) == pytest.approx(2.0, rel=1e-12)
    assert nspdk_mmd([atom("C")], [atom("C"), atom("O")]) == pytest.approx(0.5, rel=1e-12)
    ethanol = nx.Graph()
    ethanol.add_nodes_from([(0, {"label": "C"}), (1, {"label": "C"}), (2, {"label": "O"})])
    ethanol.add_edges_from([(0, 1, {"label": 1}), (1, 2, {"label": 1})])
    assert nspdk_mmd([ethanol, atom("N")], [ethanol, atom("N")]) == pytest.approx(0.0, abs=1e-12)
    # two bonds that share a carbon environment: a kernel strictly between 0 and 1
    cc, oc = nx.Graph(), nx.Graph()
    cc.add_nodes_from([(0, {"label": "C"}), (1, {"label": "C"})])
    oc.add_nodes_from([(0, {"label": "O"}), (1, {"label": "C"})])
    cc.add_edge(0, 1, label=1)
    oc.add_edge(0, 1, label=1)
    assert 0 < nspdk_mmd([cc], [oc]) < 2


def test_fcd_zero_for_identical_sets():
    pytest.importorskip("fcd")
    from sciffusion.domains.graph_sde.metrics import molecule_metrics

    smiles = ["CCO", "CCN", "c1ccccc1", "CC(=O)O", "OCCO", "C#N", "CCCC", "CN(C)C"]
    same = molecule_metrics(smiles, smiles, test_smiles=smiles)
    # identical activations: the Frechet distance is 0 up to the matrix square root's error
    assert abs(same["fcd"]) < 1e-3 and same["novelty"] == 0.0
    assert same["nspdk"] == pytest.approx(0.0, abs=1e-12)
    other = molecule_metrics(["FC(F)(F)F", "O=C=O", "N#N", "ClC(Cl)Cl"], smiles, test_smiles=smiles)
    assert other["fcd"] > 1.0 and other["nspdk"] > 0.1
