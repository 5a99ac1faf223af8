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


def _rc(argv):
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


def _err(capsys, *needles):
    err = capsys.readouterr().err.strip()
    assert err.startswith("sciffusion: error: ") and len(err.splitlines()) == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in err, err


TINY = ["--arch", "cnn", "--width", "8", "--depth", "1", "--seq-len", "8", "--batch-size", "4", "--no-progress"]


def test_empty_corpus_and_bad_arguments_are_one_line_errors(tmp_path, capsys):
    """Issue 12: an empty corpus said 'alphabet must be a non-empty string'."""
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    out = tmp_path / "m.pt"
    assert _rc(["discrete", "train", "--data", str(empty), "--out", str(out), "--steps", "1", *TINY]) == 2
    _err(capsys, "the corpus is empty")
    assert not out.exists()
    for argv, needle in [(["--steps", "-1"], "--steps"), (["--lr", "0"], "--lr"), (["--ema-decay", "2"], "--ema-decay")]:
        assert _rc(["discrete", "train", "--data", str(empty), "--out", str(out), *TINY, *argv]) == 2
        _err(capsys, needle)


def test_non_model_file_as_model(tmp_path, capsys):
    """Issue 12: a text file given as --model died in the unpickler."""
    bogus = tmp_path / "notes.txt"
    bogus.write_text("not a model")
    out = tmp_path / "s.txt"
    assert _rc(["discrete", "sample", "--model", str(bogus), "--out", str(out), "--no-progress"]) == 2
    _err(capsys, "is not a discrete model file")
    assert not out.exists()
    import torch

    ck = tmp_path / "ck.pt"
    torch.save({"model": {}, "step": 3}, ck)  # a training checkpoint, not a model
    assert _rc(["discrete", "sample", "--model", str(ck), "--out", str(out), "--no-progress"]) == 2
    _err(capsys, "training checkpoint")


def test_resume_only_when_asked_and_only_the_same_run(tmp_path, capsys):
    """A checkpoint is continued only with --resume, and refused when the corpus changed."""
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("abba cabbage " * 20)
    b.write_text("cabbage abba " * 20)
    ck, out = tmp_path / "ck.pt", tmp_path / "m.pt"
    assert main(["discrete", "train", "--data", str(a), "--out", str(out), "--steps", "2", "--checkpoint", str(ck),
                 *TINY]) == 0
    assert _rc(["discrete", "train", "--data", str(a), "--out", str(out), "--steps", "3", "--checkpoint", str(ck),
                *TINY]) == 2
    _err(capsys, "pass --resume")
    assert _rc(["discrete", "train", "--data", str(b), "--out", str(out), "--steps", "3", "--checkpoint", str(ck),
                "--resume", *TINY]) == 2
    _err(capsys, "different settings: data")
    assert main(["discrete", "train", "--data", str(a), "--out", str(out), "--steps", "3", "--checkpoint", str(ck),
                 "--resume", *TINY]) == 0
    assert "after 3 steps" in capsys.readouterr().out
