"""The ``sciffusion bridges`` commands and the tour section."""

import json

import pytest

from sciffusion.cli import main


def test_simulate_then_fit_lotka_volterra(tmp_path, capsys):
    # End to end through the CLI on a small Lotka-Volterra data set (n = 120 per time): the fitted
    # parameters within 15% of the truth each (small-n figure; the benchmark measures n = 1000).
    data = tmp_path / "snapshots.csv"
    assert main(["bridges", "simulate", "--reference", "lotka-volterra", "--params", "alpha=1", "beta=0.4",
                 "gamma=0.4", "delta=0.1", "--sigma", "0.1", "--x0", "5", "4", "--x0-std", "0.03",
                 "--times", "0", "1", "2", "3", "4", "--n", "120", "--sim-step", "5e-3",
                 "--columns", "prey", "predator", "--out", str(data)]) == 0
    out = tmp_path / "fit"
    assert main(["bridges", "fit", "--data", str(data), "--reference", "lotka-volterra", "--sigma", "0.1",
                 "--iterations", "3", "--max-step", "0.1", "--held-out", "1", "3", "--predict-times", "5",
                 "--columns", "prey", "predator", "--anndata", "--no-progress", "--out", str(out)]) == 0
    report = json.loads((out / "params.json").read_text())
    truth = {"alpha": 1.0, "beta": 0.4, "gamma": 0.4, "delta": 0.1}
    for k, v in truth.items():
        assert abs(report["params"][k] - v) <= 0.15 * v, report["params"]
    assert set(report["held_out_sliced_w1"]) == {"1.0", "3.0"}
    for name in ["predicted.csv", "predicted.h5ad", "trajectories.csv", "snapshots.png",
                 "trajectories.png", "vector_field.png"]:
        assert (out / name).exists(), name
    import pandas as pd

    pred = pd.read_csv(out / "predicted.csv")
    assert sorted(pred["time"].unique()) == [1.0, 3.0, 5.0]
    assert list(pred.columns) == ["time", "prey", "predator"]


def test_fit_reports_bad_data(tmp_path, capsys):
    bad = tmp_path / "one.csv"
    bad.write_text("time,x,y\n0,1,2\n0,2,3\n")
    assert main(["bridges", "fit", "--data", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "at least 2 snapshots" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.fixture
def snapshots_csv(tmp_path):
    path = tmp_path / "s.csv"
    assert main(["bridges", "simulate", "--reference", "lotka-volterra", "--x0", "5", "4", "--times", "0", "1", "2",
                 "3", "--n", "20", "--sim-step", "0.01", "--out", str(path)]) == 0
    return path


def _one_line_error(capsys, *needles):
    err = capsys.readouterr().err.strip()
    assert err.startswith("sciffusion: error: ") and len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    for n in needles:
        assert n in err, err


@pytest.mark.parametrize("content, needle", [
    ("", "the file is empty"),
    ("time,x,y\n", "only a header row"),
    ("time,x,y\n0,1,2\nabc,2,3\n1,3,3\n", "data row 2 has 'abc'"),
])
def test_fit_csv_errors_are_one_line_and_leave_nothing(tmp_path, capsys, content, needle):
    """Issue 12: empty and header-only CSVs and text in the time column gave pandas tracebacks."""
    data = tmp_path / "bad.csv"
    data.write_text(content)
    out = tmp_path / "o"
    assert main(["bridges", "fit", "--data", str(data), "--out", str(out)]) == 2
    _one_line_error(capsys, needle)
    assert not out.exists()


@pytest.mark.parametrize("extra, needles", [
    (["--held-out", "0"], ["--held-out 0", "strictly inside"]),
    (["--held-out", "1.5"], ["not a snapshot time"]),
    (["--reference", "lotka-volterra", "--params", "alpah=1"], ["unknown parameter 'alpah'", "alpha, beta"]),
    (["--predict-times", "-1"], ["before the first training snapshot"]),
    (["--bootstrap", "1"], ["--bootstrap"]),
    (["--max-step", "0"], ["--max-step", "> 0"]),
    (["--reference", "lotka"], ["invalid choice"]),
])
def test_fit_argument_errors_before_any_work(snapshots_csv, tmp_path, capsys, extra, needles):
    out = tmp_path / "o"
    assert _rc(["bridges", "fit", "--data", str(snapshots_csv), "--out", str(out), *extra]) == 2
    _one_line_error(capsys, *needles)
    assert not out.exists()


def _rc(argv):
    """Exit status of the CLI, whether argparse exits (bad value) or main returns (bad content)."""
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


@pytest.mark.parametrize("extra, needles", [
    (["--times", "0", "2", "1"], ["strictly increasing"]),
    (["--times", "0", "1", "--sim-step", "0"], ["--sim-step", "> 0"]),
    (["--times", "0", "1", "--n", "-3"], ["--n", ">= 1"]),
    (["--times", "0", "1", "--params", "alpah=1"], ["unknown parameter 'alpah'"]),
    (["--times", "0", "1", "--x0", "1", "2", "3"], ["needs 2 coordinates"]),
])
def test_simulate_argument_errors(tmp_path, capsys, extra, needles):
    out = tmp_path / "s.csv"
    argv = ["bridges", "simulate", "--reference", "lotka-volterra", "--x0", "5", "4", "--out", str(out), *extra]
    assert _rc(argv) == 2
    _one_line_error(capsys, *needles)
    assert not out.exists()


def test_fit_reads_anndata(tmp_path):
    # AnnData input (time in .obs, embedding in .obsm): vanilla SB on two Gaussian clouds; the prediction
    # at t = 0.5 of a Brownian bridge between N(0, I) and N(2, I) has mean 1 (+- 4 SE of 300 points).
    import torch

    from sciffusion.domains.schrodinger_bridge import to_anndata

    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(300, 2, generator=g, dtype=torch.float64),
          2 + torch.randn(300, 2, generator=g, dtype=torch.float64)]
    path = tmp_path / "cells.h5ad"
    to_anndata(xs, [0.0, 1.0], embedding="X_pca").write_h5ad(path)
    out = tmp_path / "o"
    assert main(["bridges", "fit", "--data", str(path), "--embedding", "X_pca", "--reference", "brownian",
                 "--sigma", "1.0", "--iterations", "1", "--predict-times", "0.5", "--no-progress",
                 "--out", str(out)]) == 0
    import pandas as pd

    pred = pd.read_csv(out / "predicted.csv")
    m = pred[["x0", "x1"]].to_numpy().mean(0)
    assert abs(m - 1.0).max() < 4 * (1.0 / 300) ** 0.5
