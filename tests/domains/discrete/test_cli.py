"""``sciffusion discrete train|sample`` end to end at tiny size, and the tour hook's presence."""

import pytest

from sciffusion.cli import main
from sciffusion.domains.discrete import cli as dcli


@pytest.mark.parametrize("process, sampler", [("masked", "first_hitting"), ("masked", "ancestral"),
                                              ("uniform", "uniform"), ("absorbing_uniform", "absorbing_uniform")])
def test_train_then_sample(tmp_path, process, sampler):
    text = tmp_path / "corpus.txt"
    text.write_text("abba cabbage " * 40)
    model = tmp_path / "m.pt"
    rc = main(["discrete", "train", "--data", str(text), "--out", str(model), "--process", process,
               "--arch", "cnn", "--width", "16", "--depth", "2", "--seq-len", "12", "--steps", "5",
               "--batch-size", "8", "--no-progress"])
    assert rc == 0 and model.exists()
    out = tmp_path / "s.txt"
    rc = main(["discrete", "sample", "--model", str(model), "--out", str(out), "--num", "3",
               "--sampler", sampler, "--steps", "4", "--no-progress"])
    lines = out.read_text().splitlines()
    assert rc == 0 and len(lines) == 3 and all(len(s) == 12 and set(s) <= set("abc eg") for s in lines)


def test_tour_and_register_exist():
    assert callable(dcli.tour) and callable(dcli.register_cli)
