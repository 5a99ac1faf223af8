"""examples/free_energy_pipeline.py: a tiny double-well run writes its estimates next to the exact
answer; bad arguments fail before any output."""

import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "free_energy_pipeline.py"



def test_double_well_pipeline(script, tmp_path):
    out = tmp_path / "dw"
    assert script.main(["--out", str(out), "--rounds", "2", "--iterations", "3", "--final-iterations", "3",
                        "--samples", "400", "--bootstrap", "20"]) == 0
    est = json.loads((out / "estimates.json").read_text())
    assert est["exact"]["p_b"] == pytest.approx(0.8443, abs=1e-4)
    assert set(est) == {"bias", "path", "exact"}
    for name in ("checkpoint.pt", "samples.pt", "run.json", "cv_histogram.png"):
        assert (out / name).exists(), name


@pytest.mark.parametrize("argv, match", [
    (["--basin", "B: 0 < phi < 2"], "not among --cv"),
    (["--cv", "phi"], "--cv"),
    (["--basin", "nonsense"], "basin"),
    (["--samples", "0"], "--samples"),
])
def test_bad_arguments_fail_before_output(script, tmp_path, capsys, argv, match):
    out = tmp_path / "never"
    with pytest.raises(SystemExit):
        script.main(["--out", str(out), *argv])
    assert match in capsys.readouterr().err
    assert not out.exists()
