"""The command line: ``sciffusion tour`` writes its table, figures and JSON; errors are clear."""

import json

import pytest

from sciffusion import cli


def test_core_tour_quick_writes_summary_and_figure(tmp_path, capsys):
    sections = cli.tour(tmp_path, quick=True, only=["core"], progress=False)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary[0]["section"] == "core" and sections[0]["rows"]
    assert (tmp_path / "core_samples.png").stat().st_size > 1000
    rows = {(r["solver"], r["model"]): r for r in summary[0]["rows"]}
    floor = summary[0]["sampling_floor_sliced_w1"]
    # With the exact model, Heun at 10 steps (20 NFE) is a converged PF-ODE solve: its sliced W1 to
    # the exact mixture sits near the two-sample floor (2000 vs 2000 points); 3x floor leaves room
    # for the t_min = 1e-3 truncation and Monte Carlo noise but not for a wrong sampler.
    assert rows[("heun", "exact")]["sliced_w1"] < 3 * floor + 0.02
    assert rows[("heun", "exact")]["nfe"] == 20
    # the learned model is trained for a short while only; it must still land near the mixture
    assert rows[("heun", "learned")]["sliced_w1"] < 0.25
    assert "core" in capsys.readouterr().out


def test_cli_rejects_unknown_command():
    with pytest.raises(SystemExit):
        cli.main(["no-such-command"])
