"""``sciffusion molecules ...``: a tiny double-well run end to end, resume, and argument checks
that fail before any work or output."""

import json
import math

import pytest
import torch

from sciffusion.cli import main

SMALL = ["--rounds", "2", "--iterations", "3", "--final-iterations", "2", "--samples", "300", "--no-progress"]


def test_sample_then_free_energy(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["molecules", "sample", "--system", "double-well", "--cv", "x1", "--out", str(out), *SMALL]) == 0
    for name in ("samples.pt", "run.json", "checkpoint.pt"):
        assert (out / name).exists(), name
    run = json.loads((out / "run.json").read_text())
    assert run["energy_evaluations"] == (2 * 3 + 2) * 256 + 300  # training + one call per final sample
    assert [r["hills"] for r in run["rounds"]] == [200, 400]
    first = torch.load(out / "samples.pt", weights_only=False)
    # the same command again resumes after round 2 and reproduces the samples exactly
    assert main(["molecules", "sample", "--system", "double-well", "--cv", "x1", "--out", str(out), *SMALL]) == 0
    again = torch.load(out / "samples.pt", weights_only=False)
    assert torch.equal(first["x"], again["x"])
    capsys.readouterr()
    est = tmp_path / "df.json"
    assert main(["molecules", "free-energy", "--samples", str(out), "--basin", "B: 0 < x1 < 10",
                 "--weights", "path", "--bootstrap", "20", "--out", str(est)]) == 0
    res = json.loads(est.read_text())
    w = torch.softmax(first["path_log_weights"], 0)
    p_b = float((w * (first["cv"][:, 0] > 0)).sum())
    assert res["p_b"] == pytest.approx(p_b, rel=1e-6)  # the CLI's estimate is the weighted fraction
    assert "bias_grid_delta_f" in res and res["stderr"] > 0


def test_asbs_source(tmp_path):
    out = tmp_path / "asbs"
    assert main(["molecules", "sample", "--system", "double-well", "--cv", "x1", "--out", str(out), "--source",
                 "gaussian", "--source-std", "0.5", *SMALL]) == 0
    ck = torch.load(out / "checkpoint.pt", weights_only=False)
    assert ck["sampler"]["corrector"] is not None  # ASBS: the checkpoint carries the corrector network


def test_mismatched_resume_names_the_setting(tmp_path):
    out = tmp_path / "run"
    main(["molecules", "sample", "--system", "double-well", "--cv", "x1", "--out", str(out), *SMALL])
    changed = [a if a != "3" else "4" for a in SMALL]
    with pytest.raises(SystemExit, match="iterations_per_round"):
        main(["molecules", "sample", "--system", "double-well", "--cv", "x1", "--out", str(out), *changed])


@pytest.mark.parametrize("argv, match", [
    (["--system", "double-well", "--cv", "phi"], "--cv"),
    (["--system", "double-well", "--cv", "x1,x1"], "--cv"),
    (["--system", "mueller-brown", "--cv", ""], "--cv"),
])
def test_sample_validates_before_any_output(tmp_path, argv, match):
    out = tmp_path / "never"
    with pytest.raises(SystemExit, match=match):
        main(["molecules", "sample", *argv, "--out", str(out), *SMALL])
    assert not out.exists()


def test_argparse_rejects_bad_numbers_and_systems(tmp_path, capsys):
    out = tmp_path / "never"
    for bad in (["--system", "argon"], ["--system", "double-well", "--rounds", "-1"],
                ["--system", "double-well", "--samples", "0"], ["--system", "double-well", "--source", "uniform"],
                ["--system", "double-well", "--source-std", "0"]):
        with pytest.raises(SystemExit):
            main(["molecules", "sample", "--cv", "x1", "--out", str(out), *bad])
    assert not out.exists()


def test_free_energy_validates(tmp_path):
    with pytest.raises(SystemExit, match="no samples.pt"):
        main(["molecules", "free-energy", "--samples", str(tmp_path), "--basin", "B: 0 < x1 < 1"])
    torch.save({}, tmp_path / "samples.pt")
    with pytest.raises(SystemExit, match="cannot parse basin"):
        main(["molecules", "free-energy", "--samples", str(tmp_path), "--basin", "0 < x1"])
    with pytest.raises(SystemExit, match="metad"):
        main(["molecules", "metad", "--system", "double-well", "--cv", "x1", "--out", str(tmp_path / "m")])


def test_metad_writes_its_estimate(tmp_path):
    pytest.importorskip("openmm")
    pytest.importorskip("openmmtools")
    out = tmp_path / "metad"
    assert main(["molecules", "metad", "--system", "alanine-dipeptide-vacuum", "--cv", "phi,psi", "--steps", "600",
                 "--out", str(out), "--no-progress"]) == 0
    summary = json.loads((out / "metad.json").read_text())
    assert summary["energy_force_calls"] == 600 and math.isfinite(summary["delta_f_A_to_B"])
    saved = torch.load(out / "metad.pt", weights_only=False)
    assert saved["free_energy"].shape == (63, 63)  # grid_width 64 per periodic CV, duplicate end dropped
    with pytest.raises(SystemExit, match="bias-factor"):
        main(["molecules", "metad", "--system", "alanine-dipeptide-vacuum", "--bias-factor", "1", "--out", str(out)])


def test_alanine_sample_writes_trajectory_and_weights(tmp_path):
    pytest.importorskip("openmmtools")
    pytest.importorskip("mdtraj")
    out = tmp_path / "ala"
    assert main(["molecules", "sample", "--system", "alanine-dipeptide-vacuum", "--cv", "phi,psi", "--out", str(out),
                 "--rounds", "1", "--iterations", "1", "--final-iterations", "1", "--samples", "40",
                 "--no-progress"]) == 0
    for name in ("samples.dcd", "topology.pdb", "samples.weights.npz", "ramachandran.png", "checkpoint.pt"):
        assert (out / name).exists(), name
    run = json.loads((out / "run.json").read_text())
    assert run["energy_evaluations"] == 2 * 128 + 40  # 128 samples per iteration for alanine, + the path weights
    s = torch.load(out / "samples.pt", weights_only=False)
    from sciffusion.domains.boltzmann.cli import build_system

    spec = build_system("alanine-dipeptide-vacuum", ["phi", "psi"])
    # wrong-handed samples (CA stereocentre) carry weight zero, the others a finite weight
    assert torch.equal(torch.isfinite(s["log_weights"]), spec.valid(s["x"]))
    assert s["x"].mean(1).abs().max() < 1e-4  # centre of mass removed by the core constraint


def test_free_energy_by_cells(tmp_path, capsys):
    """``--estimator cells`` on two alanine structures, one per basin: the plumbing (minima, one cell
    each, the JSON); the estimator's exactness is tested in test_cells.py."""
    pytest.importorskip("openmmtools")
    from sciffusion.domains.boltzmann.energies import alanine_dipeptide
    from sciffusion.domains.boltzmann.internal import ZMatrix

    _, top, pos = alanine_dipeptide("vacuum")
    zm = ZMatrix.from_topology(top)
    q = zm.to_internal(torch.as_tensor(pos, dtype=torch.float64)[None]).repeat(2, 1)
    q[1, zm.torsion_index(4, 6, 8, 14)], q[1, zm.torsion_index(6, 8, 14, 16)] = 1.1, -1.1  # into B (C7ax)
    x = zm.to_cartesian(q)
    torch.save({"system": "alanine-dipeptide-vacuum", "cv_names": ["phi", "psi"], "periodic": [True, True], "x": x,
                "log_weights": torch.zeros(2, dtype=torch.float64)}, tmp_path / "samples.pt")
    est = tmp_path / "cells.json"
    assert main(["molecules", "free-energy", "--samples", str(tmp_path), "--basin", "B: 0 < phi < 2",
                 "--estimator", "cells", "--particles", "24", "--temperatures", "4", "--no-progress",
                 "--out", str(est)]) == 0
    res = json.loads(est.read_text())
    assert sorted(m["basin"] for m in res["minima"]) == ["A", "B"]
    assert all((0 < m["phi"] < 2) == (m["basin"] == "B") for m in res["minima"])
    assert len(res["cells"]) == 2 and math.isfinite(res["delta_f"]) and math.isfinite(res["stderr"])
    assert res["minimisation_starts"] == 2 and res["energy_calls"]["ais"] > 0
    with pytest.raises(SystemExit, match="one basin"):
        main(["molecules", "free-energy", "--samples", str(tmp_path), "--basin", "A: phi < 0", "--basin",
              "B: 0 < phi < 2", "--estimator", "cells"])
    torch.save({"system": "double-well", "cv_names": ["x1"], "periodic": [False], "x": torch.zeros(3, 2)},
               tmp_path / "samples.pt")
    with pytest.raises(SystemExit, match="alanine-dipeptide"):
        main(["molecules", "free-energy", "--samples", str(tmp_path), "--basin", "B: 0 < x1 < 1",
              "--estimator", "cells"])
