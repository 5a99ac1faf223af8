"""examples/scale_out.py on one process (its 2-process machinery is tested in
tests/core/test_distributed.py): every output is written with the asked sizes, a rerun with more
steps resumes the checkpoint, and bad sizes are refused naming the option."""

import json
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "scale_out.py"
SMALL = ["--steps", "4", "--samples", "40", "--groups", "2", "--particles", "4", "--sequences", "30"]



def test_runs_writes_and_resumes(script, tmp_path):
    """Outputs have the asked sizes; a second run with --steps 6 resumes from step 4 (the first 4
    losses kept, 2 added); the exact model's token set, fixed by the seed, is unchanged."""
    out = tmp_path / "run"
    assert script.main(["--out", str(out), *SMALL]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["world_size"] == 1 and s["fit_step"] == 4 and s["smc_groups"] == 2
    assert torch.load(out / "samples.pt").shape == (40, 2)
    fkc = torch.load(out / "fkc.pt")
    assert fkc["x"].shape == (8, 2) and fkc["log_w"].shape == (2, 4)
    tokens = torch.load(out / "tokens.pt")
    assert tokens.shape == (30, 8) and (tokens < 3).all()
    assert sorted(p.name for p in (out / "samples").iterdir()) == ["samples_rank00000.pt"]
    before = torch.load(out / "fit.pt", weights_only=False)
    assert script.main(["--out", str(out), *SMALL[:1], "6", *SMALL[2:]]) == 0
    after = torch.load(out / "fit.pt", weights_only=False)
    assert after["step"] == 6 and after["losses"][:4] == before["losses"] and len(after["losses"]) == 6
    assert torch.equal(torch.load(out / "tokens.pt"), tokens)  # the exact model's sets do not change


def test_bad_sizes_exit_with_the_option_named(script, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        script.main(["--out", str(tmp_path), "--groups", "0"])
    assert e.value.code == 2 and "--groups must be >= 1" in capsys.readouterr().err
