"""examples/core_train_and_sample.py: resumes only when asked and only the same run; bad CSVs
fail before any output is made, with a message that names the problem."""

from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "core_train_and_sample.py"



def _csv(path, seed, n=1100):
    pts = np.random.default_rng(seed).normal(size=(n, 2))
    np.savetxt(path, pts, delimiter=",", header="x,y", comments="")
    return path


def test_stale_resume_is_refused_and_same_run_resumes(script, tmp_path, capsys):
    """The bug: --data other.csv into the same --out resumed the old checkpoint, trained 0 steps and
    reported the old model. Now a plain rerun starts afresh, and --resume with other data is refused
    with the setting named."""
    out = tmp_path / "run"
    a, b = _csv(tmp_path / "a.csv", 0), _csv(tmp_path / "b.csv", 1)
    assert script.main(["--data", str(a), "--out", str(out), "--steps", "4", "--nfe", "2"]) == 0
    assert (out / "samples.csv").exists() and (out / "samples.png").exists()
    with pytest.raises(SystemExit) as e:
        script.main(["--data", str(b), "--out", str(out), "--steps", "4", "--nfe", "2", "--resume"])
    assert e.value.code == 2
    assert "different settings: data" in capsys.readouterr().err
    # the same data resumes and trains on from step 4
    assert script.main(["--data", str(a), "--out", str(out), "--steps", "6", "--nfe", "2", "--resume"]) == 0
    import torch

    assert torch.load(out / "checkpoint.pt", weights_only=False)["step"] == 6
    # without --resume, new data start afresh (step count from zero)
    assert script.main(["--data", str(b), "--out", str(out), "--steps", "3", "--nfe", "2"]) == 0
    assert torch.load(out / "checkpoint.pt", weights_only=False)["step"] == 3


@pytest.mark.parametrize("text, message", [
    ("", "the file is empty"),
    ("x,y\n", "only a header row"),
    ("x,y\n1,2\nabc,3\n", "row 2 is not numeric"),
    ("1,2\n3,4\n", "usable rows"),
])
def test_bad_csv_fails_before_any_output(script, tmp_path, capsys, text, message):
    data = tmp_path / "bad.csv"
    data.write_text(text)
    out = tmp_path / "never"
    with pytest.raises(SystemExit) as e:
        script.main(["--data", str(data), "--out", str(out), "--steps", "1"])
    assert e.value.code == 2 and message in capsys.readouterr().err
    assert not out.exists()


def test_argument_errors(script, tmp_path, capsys):
    for argv, msg in [(["--steps", "-1"], "--steps must be >= 0"), (["--nfe", "0"], "--nfe must be >= 1"),
                      (["--resume", "--out", str(tmp_path / "x")], "no checkpoint")]:
        with pytest.raises(SystemExit) as e:
            script.main(argv)
        assert e.value.code == 2 and msg in capsys.readouterr().err
