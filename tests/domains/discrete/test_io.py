"""Text and token files: round trips and errors."""

import numpy as np
import pytest
import torch

from sciffusion.domains.discrete.io import CharTokenizer, load_text, load_tokens, save_text, save_tokens


def test_text_round_trip(tmp_path):
    p = tmp_path / "a.txt"
    p.write_text("hello world\nthe end")
    x, tok = load_text(p, 5)
    assert x.shape == (3, 5)
    assert tok.decode(x[0]) == "hello"
    out = save_text(tmp_path / "s.txt", x, tok)
    assert out.read_text().splitlines() == ["hello", " worl", "d the"]
    with pytest.raises(ValueError, match="outside the alphabet"):
        tok.encode("xyz!")
    with pytest.raises(ValueError, match="fewer than"):
        load_text(p, 100)
    with pytest.raises(ValueError, match="repeated"):
        CharTokenizer("aab")


@pytest.mark.parametrize("suffix", [".npy", ".tok"])
def test_tokens_round_trip(tmp_path, suffix):
    x = torch.randint(50, (4, 9), generator=torch.Generator().manual_seed(0))
    path = save_tokens(tmp_path / f"x{suffix}", x)
    assert torch.equal(load_tokens(path), x)


def test_tokens_errors(tmp_path):
    p = tmp_path / "r.tok"
    p.write_text("1 2 3\n4 5\n")
    with pytest.raises(ValueError, match="different lengths"):
        load_tokens(p)
    q = tmp_path / "f.npy"
    np.save(q, np.zeros((2, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="integer"):
        load_tokens(q)
