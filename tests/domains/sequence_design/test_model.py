"""Base model (``discrete`` training path), model files, ELBO, and the naturalness metrics."""

import pytest
import torch

from sciffusion.domains.discrete import MarkovChainOracle, MaskedProcess
from sciffusion.domains.sequence_design import (DNA, HammingMotifCount, elbo, kmer_correlation, kmer_spectrum,
                                                load_base_model, motif_occurrence_correlation, pairwise_hamming,
                                                sample_svdd, save_base_model, train_base_model)


def test_train_save_load_and_design(tmp_path):
    """A tiny CNN base model trains through discrete.train, survives a save/load round trip
    (identical logits), and drives SVDD; sequences longer than the model are refused."""
    x = torch.randint(4, (64, 12), generator=torch.Generator().manual_seed(0))
    model, proc, cfg = train_base_model(x, arch_kwargs={"channels": 8, "depth": 2}, steps=5, batch_size=16)
    p = save_base_model(tmp_path / "m.pt", model, cfg, "rna")
    m2, proc2, cfg2, alph = load_base_model(p)
    assert alph.letters == "ACGU" and cfg2["max_len"] == 12
    xt = proc.perturb(x[:4], 0.5, torch.Generator().manual_seed(1))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), m2.state_dict().values()))
    with torch.no_grad():  # float32 convolutions may sum in another order: round-off only
        assert torch.allclose(model(xt), m2(xt), rtol=0, atol=1e-5)
    out = sample_svdd(m2, proc2, HammingMotifCount("ACG", 0), (3, 12), 6, num_candidates=2,
                      generator=torch.Generator().manual_seed(0))
    assert out.x.shape == (3, 12)
    with pytest.raises(ValueError, match="maximum length 12"):
        sample_svdd(m2, proc2, HammingMotifCount("ACG", 0), (3, 13), 6, generator=torch.Generator())
    with pytest.raises(FileNotFoundError):
        load_base_model(tmp_path / "none.pt")


def test_ema_decay_default_is_one_minus_ten_over_steps():
    """The default EMA decay is min(0.999, 1 - 10 / steps): 20 steps give exactly the weights of
    discrete.train with ema_decay = 0.5 (same seed, same data order: bit-identical), so the returned
    copy keeps 0.5^20 ~ 1e-6 of the initialisation, not 0.999^20 = 98%."""
    from sciffusion.domains.discrete.train import train

    x = torch.randint(4, (64, 12), generator=torch.Generator().manual_seed(0))
    kw = {"arch_kwargs": {"channels": 8, "depth": 2}, "steps": 20, "batch_size": 16, "lr": 2e-3, "seed": 0}
    model, _, _ = train_base_model(x, **kw)
    ref, _, _ = train(x, vocab_size=4, process="masked", schedule="loglinear", arch="cnn", ema_decay=0.5,
                      progress=False, **kw)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), ref.ema.state_dict().values()))
    slow, _, _ = train_base_model(x, ema_decay=0.999, **kw)
    assert not all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), slow.state_dict().values()))
    for bad in (1.0, -0.1, "0.9"):
        with pytest.raises(ValueError, match="ema_decay must be a number in"):
            train_base_model(x, ema_decay=bad, **kw)


def test_elbo_is_exact_for_one_site_and_unbiased_for_the_exact_chain():
    """Figures: with the exact oracle, the ELBO of a length-1 sequence equals log p(x) exactly
    (one site: NELBO = -log p(x0 | all-mask)); for L = 6 its expectation is log p(x) (with exact
    conditionals the masked ELBO is the any-order autoregressive chain rule, tight for every order),
    so over 200 sequences mean(ELBO - log p) is within 4 standard errors (from the spread) of 0."""
    pr = MaskedProcess(4)
    o1 = MarkovChainOracle.random(4, 1, seed=0)
    x1 = torch.arange(4)[:, None]
    e1 = elbo(o1.masked_model(pr), pr, x1, num_samples=3, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(e1, o1.log_prob(x1), atol=1e-12)
    o = MarkovChainOracle.random(4, 6, seed=0)
    x = o.sample(200, torch.Generator().manual_seed(1))
    e = elbo(o.masked_model(pr), pr, x, num_samples=16, generator=torch.Generator().manual_seed(2))
    d = e - o.log_prob(x)
    assert abs(float(d.mean())) < 4 * float(d.std()) / 200 ** 0.5


def test_metrics_hand_values():
    x = DNA.encode(["AAAA", "AAAC"])
    s = kmer_spectrum(x, 3)  # windows AAA, AAA, AAA, AAC
    assert s[0] == 0.75 and s[1] == 0.25 and float(s.sum()) == 1.0
    assert pairwise_hamming(x) == 0.25
    assert pairwise_hamming(DNA.encode(["AAAA", "CCCC", "AAAA"])) == pytest.approx(2 / 3)
    assert kmer_correlation(x, x) == pytest.approx(1.0)
    y = DNA.encode(["ACGTACGT", "ACGTTTTT"])
    motifs = [HammingMotifCount("ACGT", 0), HammingMotifCount("TTTT", 0), HammingMotifCount("GGGG", 0)]
    # mean counts in y: (1.5, 1, 0); in y itself the correlation is 1
    assert motif_occurrence_correlation(y, y, motifs) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="two sequences"):
        pairwise_hamming(x[:1])
    with pytest.raises(ValueError, match="k must be"):
        kmer_spectrum(x, 5)
