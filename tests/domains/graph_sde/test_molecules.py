import pytest
import torch

Chem = pytest.importorskip("rdkit.Chem")
pytest.importorskip("torch_geometric")

from sciffusion.domains.graph_sde.molecules import (  # noqa: E402
    ATOM_TYPES,
    canonical_smiles,
    correct_mol,
    graphs_to_mols,
    load_smiles,
    nci_molecules,
    quantize_bonds,
    smiles_to_graphs,
)

# nci_molecules() with the defaults: molecules of RDKit's first_5K.smi with <= 9 heavy atoms
# of C, N, O, F, neutral, one fragment (counted once with RDKit 2026.09).
NCI_DEFAULT_COUNT = 419


@pytest.fixture(scope="module")
def nci():
    return nci_molecules()


def test_encoding_of_known_molecules():
    with _no_warning():
        dense, kept, skipped = smiles_to_graphs(["C=CC#N", "c1ccncc1", "OC(F)=O"])
    assert skipped == {}
    assert dense.x.shape == (3, 9, 4) and dense.adj.shape == (3, 9, 9)
    assert dense.mask.sum(-1).tolist() == [4, 6, 4]
    # acrylonitrile C=C-C#N: bond orders 2, 1, 3 as edge values; atom one-hots C, C, C, N
    a = dense.adj[0]
    assert (a[0, 1], a[1, 2], a[2, 3]) == (2.0, 1.0, 3.0) and torch.equal(a, a.T) and a.diagonal().abs().sum() == 0
    assert dense.x[0, :4].argmax(-1).tolist() == [0, 0, 0, 1]
    # pyridine kekulised: three double and three single bonds, bond-order sum 9
    assert sorted(dense.adj[1][torch.triu(dense.adj[1] > 0, 1)].tolist()) == [1, 1, 1, 2, 2, 2]
    assert kept == [canonical_smiles(s) for s in ["C=CC#N", "c1ccncc1", "OC(F)=O"]]
    assert dense.feature_names == ATOM_TYPES


class _no_warning:
    def __enter__(self):
        import warnings

        self._cm = warnings.catch_warnings()
        self._cm.__enter__()
        warnings.simplefilter("error")

    def __exit__(self, *exc):
        self._cm.__exit__(*exc)
        return False


def test_bad_smiles_skipped_and_counted():
    smiles = ["CCO", "not a smiles", "C1CC", "CCS", "CCCCCCCCCC", "[NH4+]", "CC.O", "", "OO"]
    with pytest.warns(UserWarning, match="kept 2 of 9"):
        dense, kept, skipped = smiles_to_graphs(smiles, max_atoms=9)
    assert kept == ["CCO", "OO"]
    assert skipped == {"invalid_smiles": 3, "atom_type": 1, "too_large": 1, "charged": 1, "fragments": 1}
    assert len(dense) == 2
    with pytest.raises(ValueError, match="none of the 2 SMILES"), pytest.warns(UserWarning):
        smiles_to_graphs(["CCS", "xx"])
    with pytest.raises(TypeError):
        smiles_to_graphs("CCO")


def test_round_trip_nci(nci):
    dense, kept, skipped = nci
    assert len(kept) == NCI_DEFAULT_COUNT
    assert sum(skipped.values()) + len(kept) == 4999  # the file has 4999 lines
    assert dense.max_nodes == 9 and int(dense.mask.sum(-1).max()) <= 9
    mols = graphs_to_mols(dense.x, dense.adj, dense.mask)
    assert [canonical_smiles(m) for m in mols] == kept  # the encoding loses nothing
    assert all(a.GetSymbol() in ATOM_TYPES for m in mols for a in m.GetAtoms())


def test_bond_thresholds():
    adj = torch.tensor([-0.3, 0.49, 0.5, 1.49, 1.5, 2.49, 2.5, 7.0])
    assert quantize_bonds(adj).tolist() == [0, 0, 1, 1, 2, 2, 3, 3]


def test_decoding_validity_without_correction():
    x = torch.zeros(2, 3, 4)
    x[:, :, 0] = 1  # all carbon
    adj = torch.zeros(2, 3, 3)
    adj[0, 0, 1] = adj[0, 1, 0] = 1.2  # C-C ethane + isolated C: valid (two fragments)
    adj[1, 0, 1] = adj[1, 1, 0] = 2.7  # C#C
    adj[1, 1, 2] = adj[1, 2, 1] = 2.2  # =C: carbon 1 has valence 5 -> invalid
    mols = graphs_to_mols(x, adj, torch.ones(2, 3, dtype=torch.bool))
    assert Chem.MolToSmiles(mols[0]) == "C.CC" and mols[1] is None
    fixed = graphs_to_mols(x, adj, torch.ones(2, 3, dtype=torch.bool), correct=True)
    # correction lowers the highest-order bond at the over-valent atom: C#C=C -> C=C=C
    assert Chem.MolToSmiles(fixed[0]) == "CC" and Chem.MolToSmiles(fixed[1]) == "C=C=C"
    none = graphs_to_mols(x, adj, torch.zeros(2, 3, dtype=torch.bool))
    assert none == [None, None]
    with pytest.raises(ValueError, match="channels"):
        graphs_to_mols(x[..., :3], adj, None)
    with pytest.raises(ValueError, match="NaN"):
        graphs_to_mols(x, adj * float("nan"), None)


def test_correction_always_sanitises_random_graphs():
    g = torch.Generator().manual_seed(0)
    b, n = 300, 9
    x = torch.randn(b, n, 4, generator=g)
    a = torch.rand(b, n, n, generator=g, dtype=torch.float64) * 4 - 0.5
    a = (a + a.transpose(1, 2)) / 2
    mask = torch.rand(b, n, generator=g) < 0.8
    mask[:, 0] = True
    mols = graphs_to_mols(x, a, mask, correct=True)
    for m in mols:
        assert m is not None
        smi = Chem.MolToSmiles(m)
        assert "." not in smi  # largest fragment kept
        again = Chem.MolFromSmiles(smi)  # re-parse and sanitise from scratch
        assert again is not None and again.GetNumAtoms() == m.GetNumAtoms()
        for atom in again.GetAtoms():
            assert atom.GetFormalCharge() == 0


def test_correct_mol_keeps_valid_molecules():
    for smi in ["CC(=O)O", "C#N", "FC(F)(F)F", "c1ccccc1O"]:
        mol = Chem.MolFromSmiles(smi)
        Chem.Kekulize(mol, clearAromaticFlags=True)
        assert Chem.MolToSmiles(correct_mol(mol)) == canonical_smiles(smi)


def test_load_smiles(tmp_path):
    (tmp_path / "a.smi").write_text("smiles\nCCO 1\n\n# comment\nc1ccccc1\tbenzene\n")
    assert load_smiles(tmp_path / "a.smi") == ["CCO", "c1ccccc1"]
    (tmp_path / "b.csv").write_text("id,SMILES,qed\n0,CCO,0.4\n1,CCN,0.5\n")
    assert load_smiles(tmp_path / "b.csv") == ["CCO", "CCN"]
    (tmp_path / "c.csv").write_text("id,mol\n0,CCO\n")
    with pytest.raises(ValueError, match="no SMILES column"):
        load_smiles(tmp_path / "c.csv")
    assert load_smiles(tmp_path / "c.csv", column="mol") == ["CCO"]
    with pytest.raises(ValueError, match="column 'x'"):
        load_smiles(tmp_path / "c.csv", column="x")
    with pytest.raises(FileNotFoundError):
        load_smiles(tmp_path / "missing.smi")
    (tmp_path / "e.txt").write_text("\n")
    with pytest.raises(ValueError, match="no SMILES"):
        load_smiles(tmp_path / "e.txt")


def test_only_rdkit_and_encoding_errors_are_caught(monkeypatch):
    """RDKit's sanitisation errors and the encoding's ValueError become skip counts / None; any
    other exception (a programming error) propagates instead of being counted as bad data."""
    from sciffusion.domains.graph_sde import molecules

    # a dative bond (order 1.0 for GetBondTypeAsDouble) is not a single bond: skipped, by name
    with pytest.warns(UserWarning, match="bond_type: 1"):
        _, kept, skipped = smiles_to_graphs(["CCO", "CN->O"])
    assert kept == ["CCO"] and skipped == {"bond_type": 1}
    unsanitised = Chem.MolFromSmiles("c1cccc1", sanitize=False)  # five aromatic carbons: no Kekulé form
    with pytest.raises(Chem.rdchem.KekulizeException):
        molecules.mol_to_graph(unsanitised)

    real = molecules.mol_to_graph

    def kekulize_fails(mol, atom_types):
        return real(unsanitised if mol.GetNumAtoms() == 2 else mol, atom_types)

    monkeypatch.setattr(molecules, "mol_to_graph", kekulize_fails)
    with pytest.warns(UserWarning, match="kekulize: 1"):
        _, kept, skipped = smiles_to_graphs(["CCO", "CC"])
    assert kept == ["CCO"] and skipped == {"kekulize": 1}

    def bug(mol, atom_types):
        raise RuntimeError("a bug, not bad data")

    monkeypatch.setattr(molecules, "mol_to_graph", bug)
    with pytest.raises(RuntimeError, match="a bug"):
        smiles_to_graphs(["CCO"])
    monkeypatch.undo()

    # decoding: a valence error is an invalid molecule (None), a bug in sanitisation propagates
    x = torch.zeros(1, 2, 4)
    x[..., 2] = 1  # two oxygens
    adj = torch.tensor([[[0.0, 3.0], [3.0, 0.0]]])  # O#O: valence 3 > 2
    assert graphs_to_mols(x, adj) == [None]

    def broken_sanitize(mol):
        raise RuntimeError("broken sanitiser")

    monkeypatch.setattr(Chem, "SanitizeMol", broken_sanitize)
    with pytest.raises(RuntimeError, match="broken sanitiser"):
        graphs_to_mols(x, adj * 0)
    monkeypatch.undo()

    assert canonical_smiles("not a smiles") is None and canonical_smiles("OCC") == "CCO"
    with pytest.raises(TypeError, match="mol_or_smiles"):
        canonical_smiles(3)
