"""``sciffusion graphs train / sample / evaluate`` at tiny size, and argument errors before any output."""

import argparse
import json

import pytest
import torch

pytest.importorskip("torch_geometric")
pytest.importorskip("rdkit")

import networkx as nx  # noqa: E402

from sciffusion.domains.graph_sde import datasets, io, metrics  # noqa: E402
from sciffusion.domains.graph_sde.cli import register_cli  # noqa: E402
from sciffusion.domains.graph_sde.model import GraphSDE  # noqa: E402


def run(*argv):
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    register_cli(sub)
    args = parser.parse_args(["graphs", *map(str, argv)])
    return args.func(args)


def test_graph_round_trip(tmp_path, capsys):
    model_dir = tmp_path / "m"
    run("train", "--dataset", "community-small", "--num-graphs", 10, "--out", model_dir, "--steps", 2,
        "--preset", "tiny", "--no-progress")
    model = GraphSDE.load(model_dir, dataset="community-small")
    assert model.config.steps == 2 and model.split["num_items"] == 10 and len(model.split["test"]) == 2
    assert (model_dir / "train_checkpoint.pt").is_file()
    out = tmp_path / "s.pt"
    run("sample", "--model", model_dir, "--num", 4, "--out", out, "--steps", 3, "--no-progress")
    dense = io.read_graphs_pt(out)
    assert dense.x.shape == (4, model.config.max_nodes, model.config.num_features)
    assert torch.equal(dense.adj, dense.adj.transpose(1, 2))
    capsys.readouterr()
    run("evaluate", "--model", model_dir, "--samples", out, "--out", tmp_path / "metrics.json")
    res = json.loads((tmp_path / "metrics.json").read_text())
    assert res["num_ref"] == 2 and res["kernel"] == "gaussian_emd"
    # the command's figures are graph_metrics of the rebuilt held-out graphs against the quantised samples
    train_g, test_g = datasets.apply_split(datasets.community_small(10, seed=0), model.split)
    expected = metrics.graph_metrics(test_g, model.quantise(dense, remove_isolated=True))
    assert [res[k] for k in MMDS] == [expected[k] for k in MMDS]
    # the held-out graphs scored against themselves: exactly 0 (identical descriptor arrays, so the
    # three kernel means of the V-statistic are equal floats and cancel exactly)
    enc = dict(max_nodes=model.config.max_nodes, features="degree", max_degree=model.config.max_degree)
    same = _evaluate_graphs(model_dir, tmp_path, "same", datasets.to_dense(test_g, **enc))
    assert [same[k] for k in MMDS] == [0.0, 0.0, 0.0]
    # a clearly different set (paths: degrees <= 2, no triangles) is farther from the held-out
    # graphs on every metric than the training graphs (same community distribution) are
    paths = _evaluate_graphs(model_dir, tmp_path, "paths",
                             datasets.to_dense([nx.path_graph(12), nx.path_graph(15)], **enc))
    floor = metrics.graph_metrics(test_g, train_g)
    assert all(paths[k] > floor[k] > 0 for k in MMDS), (paths, floor)
    # a second train into the same folder is refused; the model is untouched
    with pytest.raises(ValueError, match="already holds a model"):
        run("train", "--dataset", "community-small", "--out", model_dir, "--steps", 1, "--preset", "tiny")
    with pytest.raises(ValueError, match="plain graphs"):
        run("sample", "--model", model_dir, "--num", 2, "--out", tmp_path / "s.sdf")
    assert not (tmp_path / "s.sdf").exists()


MMDS = ("degree", "clustering", "orbit")


def _evaluate_graphs(model_dir, tmp_path, name, dense):
    pt = tmp_path / f"{name}.pt"
    io.write_graphs_pt(dense, pt)
    run("evaluate", "--model", model_dir, "--samples", pt, "--out", tmp_path / f"{name}.json")
    return json.loads((tmp_path / f"{name}.json").read_text())


def test_molecule_round_trip(tmp_path):
    smi = tmp_path / "mols.smi"
    smi.write_text("CCO\nc1ccccc1\nCC(=O)O\nnot_a_smiles\nCCN\nCCCC\nOCC=O\nCC#N\nC1CC1\nCOC\n")
    model_dir = tmp_path / "mm"
    with pytest.warns(UserWarning, match="skipped invalid_smiles: 1"):
        run("train", "--dataset", smi, "--out", model_dir, "--steps", 2, "--preset", "tiny", "--no-progress")
    model = GraphSDE.load(model_dir)
    assert model.config.kind == "molecules" and model.config.atom_types == ["C", "N", "O", "F"]
    assert model.split["num_items"] == 9  # the invalid SMILES was skipped and counted, not a crash
    out = tmp_path / "mm.sdf"
    run("sample", "--model", model_dir, "--num", 5, "--out", out, "--steps", 3, "--correct", "--no-progress")
    assert len(io.read_sdf(out)) == 5  # with the valency correction every sampled graph is a molecule
    pt = tmp_path / "mm.pt"
    run("sample", "--model", model_dir, "--num", 5, "--out", pt, "--steps", 3, "--no-progress")
    run("evaluate", "--model", model_dir, "--samples", pt, "--no-fcd", "--out", tmp_path / "m.json")
    res = json.loads((tmp_path / "m.json").read_text())
    assert res["num_sampled"] == 5 and 0 <= res["validity"] <= 1 and res["validity_corrected"] == 1.0


@pytest.mark.parametrize("argv, message", [
    (["train", "--dataset", "nope", "--out", "{d}/x"], "--dataset must be one of"),
    (["train", "--dataset", "{d}/missing.smi", "--out", "{d}/x"], "no SMILES file"),
    (["train", "--dataset", "community-small", "--out", "{d}/x", "--steps", "-1"], "--steps"),
    (["train", "--dataset", "community-small", "--out", "{d}/x", "--test-fraction", "1.5"], "--test-fraction"),
    (["train", "--dataset", "community-small", "--out", "{d}/x", "--preset", "huge"], "--preset"),
    (["train", "--dataset", "community-small", "--out", "{d}/x", "--preset", ""], "--preset"),  # not the default
    (["train", "--dataset", "community-small", "--out", "{d}/x", "--lr", "0"], "--lr"),
    (["train", "--dataset", "community-small", "--out", "{d}/x", "--ema-decay", "1"], "--ema-decay"),
    (["sample", "--model", "{d}/x", "--num", "0", "--out", "{d}/x/s.pt"], "--num"),
    (["sample", "--model", "{d}/x", "--out", "{d}/x/s.png"], "--out must end in"),
    (["sample", "--model", "{d}/x", "--out", "{d}/x/s.pt", "--sampler", "magic"], "--sampler"),
    (["evaluate", "--model", "{d}/x", "--samples", "{d}/none.pt"], "no file"),
])
def test_bad_arguments_fail_before_any_output(tmp_path, argv, message):
    argv = [a.replace("{d}", str(tmp_path)) for a in argv]
    with pytest.raises(ValueError, match=message):
        run(*argv)
    assert not (tmp_path / "x").exists()


def test_sample_from_a_missing_model(tmp_path):
    with pytest.raises(FileNotFoundError):
        run("sample", "--model", tmp_path / "nomodel", "--out", tmp_path / "s.pt")
    assert not (tmp_path / "s.pt").exists()
