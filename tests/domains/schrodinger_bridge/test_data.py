"""Snapshot validation and file formats (domains/schrodinger_bridge/data.py)."""

import numpy as np
import pytest
import torch

from sciffusion.domains.schrodinger_bridge.data import (as_snapshots, from_anndata, read_csv,
                                                        to_anndata, write_csv)


def _pops(seed=0, counts=(5, 7, 6), d=2):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(n, d)) for n in counts]


def test_accepts_numpy_torch_unequal_counts_irregular_times():
    xs = _pops()
    s = as_snapshots([xs[0], torch.tensor(xs[1]), xs[2]], [0.0, 0.5, 2.0])
    assert s.counts == [5, 7, 6] and s.dim == 2 and s.times.dtype == torch.float64
    assert torch.equal(s.at(0.5), torch.tensor(xs[1]))


@pytest.mark.parametrize("xs,times,match", [
    (_pops(counts=(5,)), [0.0], "at least 2"),
    (_pops(), [0.0, 2.0, 1.0], "sorted"),
    (_pops(), [0.0, 1.0, 1.0], "duplicates"),
    (_pops(), [0.0, 1.0], "3 snapshots but 2 times"),
    ([np.ones((3, 2)), np.ones((3, 3))], [0.0, 1.0], "same dimension"),
    ([np.ones((3, 2)), np.array([[1.0, np.nan], [0.0, 0.0]])], [0.0, 1.0], "NaN"),
    ([np.ones((3, 2)), np.ones((0, 2))], [0.0, 1.0], "empty"),
    ([np.ones((3, 2)), np.ones((3, 2))], [0.0, float("inf")], "finite"),
])
def test_bad_input_raises_clear_errors(xs, times, match):
    with pytest.raises(ValueError, match=match):
        as_snapshots(xs, times)


def test_single_array_is_rejected_with_hint():
    with pytest.raises(ValueError, match="single 2-D array"):
        as_snapshots(np.ones((4, 2)), [0.0])


def test_csv_roundtrip_groups_and_sorts_by_time(tmp_path):
    xs = _pops()
    path = tmp_path / "s.csv"
    write_csv(path, [xs[2], xs[0], xs[1]], [2.0, 0.0, 0.5], columns=["a", "b"])
    s = read_csv(path)  # rows are grouped by time and sorted
    assert s.times.tolist() == [0.0, 0.5, 2.0]
    for got, want in zip(s.xs, xs):
        np.testing.assert_allclose(got.numpy(), want)
    with pytest.raises(ValueError, match="time_col"):
        read_csv(path, time_col="day")
    with pytest.raises(ValueError, match="not found"):
        read_csv(path, columns=["a", "zz"])


def test_csv_with_nan_row_is_reported(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("time,x,y\n0,1,2\n0,1,2\n1,nan,2\n1,0,0\n")
    with pytest.raises(ValueError, match="NaN"):
        read_csv(path)


def test_anndata_roundtrip_and_errors():
    xs = _pops(counts=(4, 6))
    ad = to_anndata(xs, [0.0, 3.0], embedding="X_pca")
    s = from_anndata(ad, time_key="time", embedding="X_pca")
    assert s.times.tolist() == [0.0, 3.0]
    np.testing.assert_allclose(s.xs[1].numpy(), xs[1])
    assert from_anndata(ad, embedding="X_pca", n_components=1).dim == 1
    with pytest.raises(ValueError, match="time_key"):
        from_anndata(ad, time_key="day")
    with pytest.raises(ValueError, match="embedding"):
        from_anndata(ad, embedding="X_umap")
