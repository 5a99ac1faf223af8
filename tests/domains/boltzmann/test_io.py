import json
import math

import numpy as np
import pytest
import torch

from sciffusion.domains.boltzmann.io import (
    load_samples, read_weights, save_samples, write_estimates_json, write_trajectory)


def test_estimates_json_is_strict(tmp_path):
    p = write_estimates_json(tmp_path / "e.json", {"delta_f": torch.tensor(-1.7), "ci": np.array([1.0, 2.0]),
                                                   "stderr": float("nan"), "n": np.int64(3), "ok": True})
    d = json.loads(p.read_text())  # json.loads would accept NaN; check the text itself too
    assert "NaN" not in p.read_text() and d["stderr"] is None
    assert d["delta_f"] == pytest.approx(-1.7) and d["ci"] == [1.0, 2.0] and d["n"] == 3
    with pytest.raises(TypeError, match="dict"):
        write_estimates_json(tmp_path / "x.json", [1, 2])


def test_samples_round_trip(tmp_path):
    g = torch.Generator().manual_seed(0)
    pos = torch.randn(5, 4, 3, generator=g, dtype=torch.float64)
    cv = torch.randn(5, 2, generator=g, dtype=torch.float64)
    lw = torch.randn(5, generator=g, dtype=torch.float64)
    save_samples(tmp_path / "run", pos, lw, cv, ["phi", "psi"], [True, True], metadata={"T": 300.0})
    s = load_samples(tmp_path / "run")
    assert torch.equal(s["positions"], pos) and torch.equal(s["log_weights"], lw)
    assert torch.equal(s["cv_values"], cv) and s["cv_names"] == ["phi", "psi"]
    assert s["periodic"] == [True, True] and s["metadata"] == {"T": 300.0}
    with pytest.raises(ValueError, match="rows"):
        save_samples(tmp_path / "bad", pos, lw[:3])
    with pytest.raises(FileNotFoundError):
        load_samples(tmp_path / "nothing")


def test_trajectory_with_weights(tmp_path):
    md = pytest.importorskip("mdtraj")
    pytest.importorskip("openmm")
    from sciffusion.domains.boltzmann.energies import alanine_dipeptide

    _, top, pos = alanine_dipeptide("vacuum", platform="Reference")
    frames = pos[None] + 0.01 * np.random.default_rng(0).standard_normal((3, 22, 3))
    lw = np.array([0.0, math.log(2.0), math.log(3.0)])
    for suffix in (".pdb", ".dcd"):
        out = write_trajectory(frames, top, tmp_path / f"s{suffix}", log_weights=lw)
        t = md.load(out["trajectory"], top=top) if suffix == ".dcd" else md.load(out["trajectory"])
        # PDB stores 3 decimals of angstrom (5e-5 nm), DCD float32
        np.testing.assert_allclose(t.xyz, frames, atol=6e-5)
        np.testing.assert_allclose(read_weights(out["trajectory"]), lw)
        z = np.load(out["weights_npz"])
        np.testing.assert_allclose(z["weights"], [1 / 6, 2 / 6, 3 / 6])
        assert float(z["ess"]) == pytest.approx(36 / 14)  # (sum w)^2 / sum w^2 = 36/14
        rows = open(out["weights_csv"]).read().splitlines()
        assert rows[0] == "frame,log_weight,weight" and len(rows) == 4
    with pytest.raises(ValueError, match="atoms"):
        write_trajectory(frames[:, :5], top, tmp_path / "x.pdb")
    bad = frames.copy()
    bad[1, 0, 0] = np.nan
    with pytest.raises(ValueError, match="frame 1"):
        write_trajectory(bad, top, tmp_path / "x.pdb")
