"""The command line: ``sciffusion tour`` writes its table, figures and JSON; errors are clear."""

import json
from pathlib import Path

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
    printed = capsys.readouterr().out
    assert "core" in printed and "sections in" in printed  # the closing line with wall-clock and CPU time
    assert sections[0]["cpu_seconds"] > 0 and sections[0]["seconds"] > 0


def test_cli_rejects_unknown_command():
    with pytest.raises(SystemExit):
        cli.main(["no-such-command"])


def test_help_imports_no_domain_and_no_torch():
    """``sciffusion --help`` loads no domain plugin and not torch (it used to import every domain)."""
    import subprocess
    import sys

    code = ("import sys; from sciffusion.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit as e:\n    assert e.code == 0\n"
            "heavy = [m for m in sys.modules if m == 'torch' or m.startswith('sciffusion.domains.')]\n"
            "print('HEAVY', heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "HEAVY []" in out, out
    for cmd in ("tour", "discrete", "fkc", "bridges"):
        assert cmd in out
    assert "``" not in out  # reST markup from a docstring is not help text


def test_version_and_one_line_errors(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.startswith("sciffusion ")
    with pytest.raises(SystemExit) as e:
        cli.main(["no-such-command"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("sciffusion: error:") and len(err.strip().splitlines()) == 1


def test_tour_only_rejects_unknown_sections_and_accepts_command_names(tmp_path, capsys):
    """Issue 12: an unknown --only name ran nothing and said nothing; command names were refused."""
    assert cli.main(["tour", "--only", "core", "nope", "--out", str(tmp_path / "t")]) == 2
    err = capsys.readouterr().err
    assert "unknown section(s) nope" in err and "fkc" in err and "bridges" in err
    assert not (tmp_path / "t").exists()  # refused before any output
    names = cli.section_names()
    assert names["fkc"] == "feynman_kac" and names["bridges"] == "schrodinger_bridge"
    assert names["discrete"] == "discrete" and names["core"] == "core"


def test_summary_is_strict_json_with_relative_paths(tmp_path):
    """summary.json: NaN/inf become null (strict JSON parsers reject NaN), figures are relative to it."""
    from sciffusion.tour import write_summary

    sections = [{"section": "core", "folder": ".", "x": float("nan"), "figures": ["a.png"]},
                {"section": "fkc", "folder": "feynman_kac", "rows": [{"v": float("inf")}], "figures": ["b.png"]}]
    path = write_summary(tmp_path, sections)
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    data = json.loads(text)
    assert data[0]["x"] is None and data[1]["rows"][0]["v"] is None
    assert data[0]["figures"] == ["a.png"] and data[1]["figures"] == ["feynman_kac/b.png"]


def test_failed_command_removes_the_output_it_created(tmp_path, capsys):
    """An --out path that did not exist before a failing run is gone after it; one that existed stays."""
    import argparse

    made = tmp_path / "new"

    def failing(args):
        Path(args.out).mkdir()
        (Path(args.out) / "half.csv").write_text("x")
        raise ValueError("boom")

    parser = cli.build_parser("tour")
    args = parser.parse_args(["tour"])
    args.out, args.func = made, failing
    import unittest.mock as um

    with um.patch.object(cli, "build_parser", return_value=argparse.Namespace(parse_args=lambda argv: args)):
        assert cli.main(["tour"]) == 2
    assert not made.exists()
    assert capsys.readouterr().err.strip() == "sciffusion: error: boom"
    kept = tmp_path / "kept"
    kept.mkdir()
    args.out = kept
    with um.patch.object(cli, "build_parser", return_value=argparse.Namespace(parse_args=lambda argv: args)):
        assert cli.main(["tour"]) == 2
    assert kept.exists()


@pytest.mark.parametrize("argv, needle", [
    (["fkc", "anneal", "--particles", "-3"], "--particles"),
    (["fkc", "anneal", "--steps", "0"], "--steps"),
    (["fkc", "anneal", "--noise", "abc"], "--noise"),
    (["fkc", "cfg", "--threshold", "2"], "--threshold"),
    (["fkc", "product", "--process", "vq"], "invalid choice"),
    (["fkc", "anneal", "--beta", "0"], "--beta"),
])
def test_fkc_arguments_are_checked_before_any_work(argv, needle, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main([*argv, "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and err.startswith("sciffusion: error:") and needle in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_threads_option_sets_torch_threads_and_default_leaves_them():
    """--threads N sets torch's intra-op threads; without it torch's own default stands (two threads
    were faster on an idle 2-core machine; one is the advice for a busy one, README)."""
    import torch

    before = torch.get_num_threads()
    try:
        cli._set_threads(None)
        assert torch.get_num_threads() == before
        cli._set_threads(1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    with pytest.raises(SystemExit) as e:
        cli.main(["--threads", "0", "tour"])
    assert e.value.code == 2
