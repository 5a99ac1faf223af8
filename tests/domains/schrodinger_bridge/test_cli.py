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


def test_fit_reports_bad_data(tmp_path):
    bad = tmp_path / "one.csv"
    bad.write_text("time,x,y\n0,1,2\n0,2,3\n")
    with pytest.raises(ValueError, match="at least 2 snapshots"):
        main(["bridges", "fit", "--data", str(bad), "--out", str(tmp_path / "o")])


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
