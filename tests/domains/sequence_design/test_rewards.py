"""Rewards: exact values on short sequences, composition, call counting and bad input."""

import math

import pytest
import torch

from sciffusion.domains.sequence_design import (DNA, CNNOracle, Constrained, GCContent, HammingMotifCount,
                                                PWMScore, RNAFoldEnergy, StructureDistance, UpstreamAUGCount,
                                                as_reward, jaspar_counts, parse_reward)


def test_jaspar_scan_equals_hand_computed_score():
    """Figure: MA0114 (HNF4A, 9 wide) on an 11-nt sequence: the max over the 3 windows x 2 strands
    of sum_j log2(p_j(x)/0.25), p_j(a) = (n_aj + 0.25)/(N_j + 1), computed here with plain loops
    from pyjaspar's counts, equals PWMScore to 1e-12 (float64 round-off)."""
    counts, label = jaspar_counts("MA0114")
    assert label.startswith("MA0114") and counts.shape == (4, 9)
    seq = "TCAAAGTCCAG"
    comp = {"A": "T", "C": "G", "G": "C", "T": "A"}
    n = counts.tolist()

    def window_score(w):
        s = 0.0
        for j, c in enumerate(w):
            a = "ACGT".index(c)
            tot = sum(n[b][j] for b in range(4))
            s += math.log2((n[a][j] + 0.25) / (tot + 1.0) / 0.25)
        return s

    rc = "".join(comp[c] for c in reversed(seq))
    hand = max(window_score(s[i:i + 9]) for s in (seq, rc) for i in range(len(seq) - 8))
    got = PWMScore("MA0114")(DNA.encode(seq))
    assert abs(float(got) - hand) < 1e-12
    fwd_only = PWMScore(counts, both_strands=False)(DNA.encode(seq))
    assert abs(float(fwd_only) - max(window_score(seq[i:i + 9]) for i in range(3))) < 1e-12
    hits = PWMScore("MA0114", reduce="count", threshold=hand - 1e-9)(DNA.encode(seq))
    assert float(hits) >= 1


def test_unknown_jaspar_id_and_pwm_input_errors():
    with pytest.raises(ValueError, match="unknown JASPAR matrix ID 'MA9999'"):
        PWMScore("MA9999")
    with pytest.raises(ValueError, match=r"\(4, w\)"):
        PWMScore(torch.ones(3, 5))
    with pytest.raises(ValueError, match="threshold"):
        PWMScore(torch.ones(4, 5), reduce="count")
    with pytest.raises(ValueError, match="exceeds the sequence length"):
        PWMScore("MA0114")(DNA.encode("ACGT"))


def test_hamming_gc_uaug_exact_values():
    """Figures: hand counts on short sequences."""
    x = DNA.encode(["ACGTTACGAA", "TTTTTTTTTT"])
    h = HammingMotifCount("ACGA", 1)
    # row 0 windows: ACGT(1 mismatch) CGTT GTTA TTAC TACG ACGA(0) CGAA -> 2; row 1: none
    assert h(x).tolist() == [2.0, 0.0]
    assert HammingMotifCount("ACGA", 0)(x).tolist() == [1.0, 0.0]
    assert HammingMotifCount("TCGT", 0, both_strands=True)(x).tolist() == [1.0, 0.0]  # ACGA on the reverse
    gc = GCContent(0.5)(x)
    assert torch.allclose(gc, torch.tensor([-0.1, -0.5], dtype=torch.float64))  # GC 4/10 and 0/10
    w = GCContent(0.5, window=5)(DNA.encode(["GGGGGAAAAA"]))  # windows' GC: 1, .8, .6, .4, .2, 0
    assert abs(float(w) + (0.5 + 0.3 + 0.1 + 0.1 + 0.3 + 0.5) / 6) < 1e-12
    assert UpstreamAUGCount()(DNA.encode(["ATGCATGATG", "AAAAAAAAAA"])).tolist() == [3.0, 0.0]


def test_vienna_rewards():
    """Figures: GGGGAAAACCCC folds to ((((....)))) (distance 0 to it, 4 base pairs from the open
    chain); its MFE is negative (the reward -MFE is positive); a poly-A has MFE 0."""
    x = DNA.encode(["GGGGAAAACCCC", "AAAAAAAAAAAA"])
    d = StructureDistance("((((....))))")(x)
    assert d.tolist() == [0.0, -4.0]
    e = RNAFoldEnergy()(x)
    assert e[0] > 1.0 and e[1] == 0.0
    with pytest.raises(ValueError, match="unbalanced"):
        StructureDistance("((...)")
    with pytest.raises(ValueError, match="target structure has 12"):
        StructureDistance("((((....))))")(DNA.encode(["GGGAAACCC"]))


def test_composition_and_counts():
    x = DNA.encode(["ACGTACGT", "GGGGCCCC", "AAAATTTT"])
    a, b = GCContent(0.5), UpstreamAUGCount()
    s = 2.0 * a - b + 1.5 * HammingMotifCount("ACGT", 0)
    out = s(x)
    expect = 2.0 * a(x) - b(x) + 1.5 * HammingMotifCount("ACGT", 0)(x)
    assert torch.allclose(out, expect, rtol=0, atol=1e-12)
    assert s.calls == 1 and s.evaluations == 3 and a.calls == 2 and a.evaluations == 6
    s.reset_counts()
    assert s.calls == 0 and a.calls == 0
    c = Constrained(HammingMotifCount("ACGT", 0), GCContent(0.5), low=-0.1, weight=10.0)
    # row 1 (all GC): gc reward -0.5 -> violation 0.4 -> 0 - 4; row 0: 2 motifs, gc 0.5 -> no penalty
    assert torch.allclose(c(x), torch.tensor([2.0, -4.0, -4.0], dtype=torch.float64))
    p = parse_reward("gc:0.5,2*hamming:ACGT:0,-1*uaug")
    assert torch.allclose(p(x), a(x) + 2 * HammingMotifCount("ACGT", 0)(x) - b(x))
    with pytest.raises(ValueError, match="unknown reward 'foo'"):
        parse_reward("foo:1")
    with pytest.raises(ValueError, match="weight must be a number"):
        parse_reward("x*gc")
    with pytest.raises(ValueError, match="unknown JASPAR"):
        parse_reward("gc:0.5,motif:MA9999")


def test_bad_reward_output_is_reported():
    x = DNA.encode(["ACGT", "ACGA"])
    with pytest.raises(FloatingPointError, match="NaN or \\+inf for 1 of 2"):
        as_reward(lambda x: torch.tensor([0.0, math.nan]))(x)
    with pytest.raises(FloatingPointError, match="for 1 of 2"):
        as_reward(lambda x: torch.tensor([math.inf, 0.0]))(x)
    # -inf is a hard constraint (zero weight), not an error
    assert as_reward(lambda x: torch.tensor([-math.inf, 0.0]))(x)[0] == -math.inf
    with pytest.raises(ValueError, match=r"shape \(2, 1\), expected \(2,\)"):
        as_reward(lambda x: torch.zeros(2, 1))(x)
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        GCContent()(torch.tensor([[0, 5]]))
    with pytest.raises(TypeError, match="callable"):
        as_reward(3)


def test_cnn_oracle_learns_a_motif_count():
    """Figure: a CNN trained on 1500 random 30-mers labelled by their count of ACG (plus noise
    of sd 0.1) predicts held-out counts with Pearson r > 0.9 (the label is a local pattern the
    first convolution can match exactly; seen ~0.97)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(4, (2000, 30), generator=g)
    y = HammingMotifCount("ACG", 0)(x) + 0.1 * torch.randn(2000, generator=g, dtype=torch.float64)
    o = CNNOracle.fit(x[:1500], y[:1500], steps=400, seed=0, channels=16)
    pred = o(x[1500:])
    r = torch.corrcoef(torch.stack([pred, y[1500:]]))[0, 1]
    assert r > 0.9 and o.calls == 1
    with pytest.raises(ValueError, match="finite labels"):
        CNNOracle.fit(x[:10], torch.full((10,), math.nan))
