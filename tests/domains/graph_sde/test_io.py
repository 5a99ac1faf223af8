import pytest
import torch

nx = pytest.importorskip("networkx")
Chem = pytest.importorskip("rdkit.Chem")
pytest.importorskip("torch_geometric")

from sciffusion.domains.graph_sde import io as gio  # noqa: E402
from sciffusion.domains.graph_sde.datasets import to_dense  # noqa: E402
from sciffusion.domains.graph_sde.molecules import graphs_to_mols, smiles_to_graphs  # noqa: E402


def test_to_networkx_and_pyg():
    d = to_dense([nx.path_graph(3), nx.cycle_graph(4)], max_nodes=5)
    gs = gio.to_networkx(d)
    assert [sorted(g.edges) for g in gs] == [[(0, 1), (1, 2)], [(0, 1), (0, 3), (1, 2), (2, 3)]]
    data = gio.to_pyg(d)
    assert [p.num_nodes for p in data] == [3, 4]
    assert data[0].edge_index.shape == (2, 4)  # both directions of 2 edges
    assert torch.equal(data[0].x, d.x[0, :3])
    from_nx = gio.to_pyg(gs)
    assert from_nx[1].edge_index.shape == (2, 8)
    dense_m, _, _ = smiles_to_graphs(["C=CC#N"])
    (mol_data,) = gio.to_pyg(dense_m)
    assert sorted(mol_data.edge_attr.tolist()) == [1, 1, 2, 2, 3, 3]  # bond orders as edge values


def test_smiles_and_sdf_files(tmp_path):
    dense, kept, _ = smiles_to_graphs(["CCO", "c1ccccc1", "C#N"])
    mols = graphs_to_mols(dense) + [None]
    with pytest.warns(UserWarning, match="1 invalid"):
        n = gio.write_smiles(mols, tmp_path / "out" / "s.smi")
    assert n == 3 and (tmp_path / "out" / "s.smi").read_text().split() == kept
    with pytest.warns(UserWarning, match="1 invalid"):
        assert gio.write_sdf(mols, tmp_path / "s.sdf") == 3
    back = gio.read_sdf(tmp_path / "s.sdf")
    assert [Chem.MolToSmiles(m) for m in back] == kept
    assert back[0].GetProp("_Name") == "sample_0" and back[1].GetProp("SMILES") == kept[1]
    assert not list(tmp_path.glob(".*.tmp"))


def test_nothing_half_written_on_error(tmp_path):
    target = tmp_path / "s.smi"
    target.write_text("old\n")
    with pytest.raises(TypeError):
        gio.write_smiles([Chem.MolFromSmiles("CC"), "CC"], target)

    def boom(f):
        f.write(b"partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        gio._atomic_write(target, boom)
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["s.smi"]  # the temporary file is gone


def test_graphs_pt_round_trip(tmp_path):
    d = to_dense([nx.path_graph(3), nx.star_graph(3)], max_nodes=6, max_degree=4)
    p = gio.write_graphs_pt(d, tmp_path / "g.pt")
    e = gio.read_graphs_pt(p)
    assert torch.equal(e.x, d.x) and torch.equal(e.adj, d.adj) and torch.equal(e.mask, d.mask)
    assert e.max_nodes == 6 and e.feature_names == d.feature_names
    torch.save({"x": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a graphs file"):
        gio.read_graphs_pt(tmp_path / "other.pt")
    with pytest.raises(TypeError):
        gio.write_graphs_pt([nx.path_graph(2)], tmp_path / "x.pt")
