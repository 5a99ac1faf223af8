"""Alphabets, tokens, one-hot and FASTA input/output (Biopython SeqIO)."""

import pytest
import torch

from sciffusion.domains.sequence_design import DNA, RNA, decode, encode, one_hot, read_fasta, reverse_complement, \
    write_fasta


def test_encode_decode_roundtrip_and_case():
    x = DNA.encode(["ACGT", "ttga"])
    assert x.tolist() == [[0, 1, 2, 3], [3, 3, 2, 0]]
    assert DNA.decode(x) == ["ACGT", "TTGA"] and RNA.decode(x) == ["ACGU", "UUGA"]
    assert torch.equal(encode("ACGU", "rna"), RNA.encode(["ACGU"])) and decode(x, "dna")[0] == "ACGT"


def test_bad_characters_name_record_and_position():
    with pytest.raises(ValueError, match=r"sequence #1: character 'N' at position 3 is not in the DNA"):
        DNA.encode(["ACGT", "ACNT"])
    with pytest.raises(ValueError, match="'U' at position 2"):
        DNA.encode(["AUGC"])
    with pytest.raises(ValueError, match="different lengths"):
        DNA.encode(["ACG", "ACGT"])
    with pytest.raises(ValueError, match="empty"):
        DNA.encode([""])
    with pytest.raises(ValueError, match="alphabet must be"):
        encode("ACGT", "protein")


def test_one_hot_and_reverse_complement():
    x = DNA.encode(["AACG"])
    oh = one_hot(x)
    assert oh.shape == (1, 4, 4) and oh.dtype == torch.float64 and torch.equal(oh.argmax(-1), x)
    assert DNA.decode(reverse_complement(x)) == ["CGTT"]
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        one_hot(torch.tensor([[0, 4]]))


def test_fasta_roundtrip_and_errors(tmp_path):
    x = DNA.encode(["ACGTAC", "GGGTTT"])
    p = write_fasta(tmp_path / "a.fa", x, names=["r1", "r2"])
    y, names = read_fasta(p)
    assert torch.equal(x, y) and names == ["r1", "r2"]
    (tmp_path / "bad.fa").write_text(">ok\nACGT\n>bad1\nACXT\n")
    with pytest.raises(ValueError, match=r"'bad1'.*'X' at position 3"):
        read_fasta(tmp_path / "bad.fa")
    (tmp_path / "empty.fa").write_text(">ok\nACGT\n>nothing\n\n>ok2\nACGT\n")
    with pytest.raises(ValueError, match="record 'nothing' is empty"):
        read_fasta(tmp_path / "empty.fa")
    (tmp_path / "none.fa").write_text("")
    with pytest.raises(ValueError, match="no FASTA records"):
        read_fasta(tmp_path / "none.fa")
    with pytest.raises(ValueError, match="maximum length 4"):
        read_fasta(p, max_len=4)
    with pytest.raises(FileNotFoundError):
        read_fasta(tmp_path / "missing.fa")


def test_fasta_write_is_atomic_and_validated(tmp_path):
    out = tmp_path / "o.fa"
    with pytest.raises(ValueError, match="'s1'.*'Z' at position 2"):
        write_fasta(out, ["ACGT", "AZGT"], names=["s0", "s1"])
    assert not out.exists() and not list(tmp_path.iterdir())  # nothing written half-way
    write_fasta(out, ["ACGU"], "rna")
    assert out.read_text().splitlines()[1] == "ACGU"
