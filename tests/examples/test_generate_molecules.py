"""examples/generate_molecules.py: trains on a user's SMILES file (bad lines skipped and counted),
writes an SDF RDKit reads back and a model folder; bad arguments fail before any output."""

from pathlib import Path

import pytest

pytest.importorskip("rdkit")
pytest.importorskip("torch_geometric")

SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "generate_molecules.py"
SMILES = "CCO\nCCN\nCC(=O)O\nc1ccccc1\nCC(C)O\nOCCO\nCCOC\nCC#N\nC1CCCC1\nCC(=O)N\nNCCO\nCOC(=O)C\nnot_smiles\n"



def test_trains_and_writes_sdf(script, tmp_path, capsys):
    from sciffusion.domains.graph_sde import GraphSDE, io

    smi = tmp_path / "mols.smi"
    smi.write_text(SMILES)
    out = tmp_path / "gen.sdf"
    assert script.main(["--smiles", str(smi), "--out", str(out), "--num", "6", "--quick", "--correct"]) == 0
    text = capsys.readouterr().out
    assert "12 molecules kept; skipped: {'invalid_smiles': 1}" in text
    assert len(io.read_sdf(out)) == 6  # corrected: every sampled graph is a molecule
    model = GraphSDE.load(out.with_suffix(".model"), dataset="mols.smi")
    assert model.config.kind == "molecules" and len(model.split["test"]) == 1


@pytest.mark.parametrize("argv, message", [
    (["--out", "{d}/g.png"], "--out must be an .sdf file"),
    (["--smiles", "{d}/none.smi", "--out", "{d}/g.sdf"], "no such file"),
    (["--smiles", "{d}/x.pdb", "--out", "{d}/g.sdf"], "--smiles must be"),
    (["--out", "{d}/g.sdf", "--num", "0"], "--num must be a positive integer"),
])
def test_bad_arguments(script, tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as e:
        script.main([a.replace("{d}", str(tmp_path)) for a in argv])
    assert e.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "g.sdf").exists() and not (tmp_path / "g.model").exists()
