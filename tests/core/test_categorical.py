"""Tests for sciffusion.categorical: the float64 draw, and the float32 truncation it avoids."""

import functools
import math

import pytest
import torch

from sciffusion.categorical import (apply_temperature, exponential_noise, sample_categorical, top_p_filter,
                                    uniform)

DELTA32 = 2.0 ** -24


def test_uniform_grids():
    """float32 uniforms are multiples of 2^-24 (the cause of the bias); float64 ones are multiples of
    2^-53 and essentially never on the 2^-24 grid. Exact integer checks, no tolerance."""
    g = torch.Generator().manual_seed(0)
    u32 = uniform(10 ** 6, generator=g, dtype=torch.float32).double()
    assert torch.all((u32 * 2 ** 24) == torch.floor(u32 * 2 ** 24))
    u64 = uniform(10 ** 6, generator=g)
    assert torch.all((u64 * 2 ** 53) == torch.floor(u64 * 2 ** 53))
    assert ((u64 * 2 ** 24) != torch.floor(u64 * 2 ** 24)).double().mean() > 0.999


@functools.lru_cache(maxsize=1)
def _float32_race_noise():
    """Every value the float32 race noise -log(u) can take (u = k 2^-24), sorted."""
    k = torch.arange(1, 2 ** 24, dtype=torch.float64)  # u = 0 gives E = inf: that side never wins
    e = exponential_noise((k * DELTA32).float()).double()  # the sampler's own noise map, in float32
    return e, torch.sort(e)[0]


def _race_selection_prob_float32(r: float) -> float:
    """Exact probability that the float32 exponential race picks a token of probability r against
    one of 1 - r, by enumerating all 2^24 float32 uniforms for both noises (no Monte Carlo)."""
    e, e_sorted = _float32_race_noise()
    # rare token wins iff r / E_r > (1 - r) / E_s  <=>  E_r < r * E_s / (1 - r); float32 arithmetic as in the draw
    thresh = (torch.tensor(r, dtype=torch.float32) / torch.tensor(1 - r, dtype=torch.float32)).double() * e
    wins = torch.searchsorted(e_sorted, thresh)  # count of E_r strictly below the threshold
    return float(wins.sum() / (2.0 ** 24) ** 2)


@pytest.mark.parametrize("r, expected_ratio", [(1e-7, 0.73), (1e-8, 0.015)])
def test_float32_race_suppresses_rare_tokens(r, expected_ratio):
    """Figure: the float32 Gumbel/exponential race selects a token of probability r with probability
    delta/(exp(delta/r) - 1), delta = 2^-24: 0.73 r at r = 1e-7 and 0.015 r at 1e-8 (issue 3).
    Computed exactly over the 2^24 grid; tolerance 5% relative covers the float32 rounding of
    -log(u) and of the threshold, which the closed form ignores."""
    p = _race_selection_prob_float32(r)
    formula = DELTA32 / math.expm1(DELTA32 / r)
    assert p / r == pytest.approx(formula / r, rel=0.05)
    assert p / r == pytest.approx(expected_ratio, abs=0.01 if r == 1e-7 else 0.003)


def test_float64_cdf_selects_rare_tokens_at_their_rate():
    """Figure: with the float64 inverse-CDF draw a token of probability r occupies an interval of
    width r of [0, 1), so it is chosen w.p. r +- 2^-53. Checked two ways: (1) the draw is a
    deterministic function of one float64 uniform, so the uniforms that pick the rare token are
    exactly those in [C_{i-1}, C_i): verify on forced uniforms at the interval edges; (2) Monte
    Carlo at r = 1e-3 (rate within 5 standard errors)."""
    r = 1e-8
    probs = torch.tensor([[0.25, r, 0.75 - r]], dtype=torch.float64)
    c = torch.cumsum(probs, -1)[0]
    # the draw is idx = searchsorted(C, u * C_V, right=True): probe uniforms either side of the rare interval
    for u, want in [(0.25 - 1e-12, 0), (0.25 + 1e-12, 1), (float(c[1]) - 1e-12, 1), (float(c[1]) + 1e-12, 2)]:
        idx = torch.searchsorted(c, torch.tensor([u], dtype=torch.float64) * c[-1], right=True)
        assert int(idx) == want
    g = torch.Generator().manual_seed(1)
    rr = 1e-3
    n = 2_000_000
    p = torch.tensor([rr, 1 - rr], dtype=torch.float64).expand(n, 2)
    hits = int((sample_categorical(p, generator=g) == 0).sum())
    assert abs(hits - n * rr) < 5 * math.sqrt(n * rr)
    # the float64 race noise has grid 2^-53: relative suppression delta/r/2 ~ 5.6e-10 at r = 1e-7
    d64 = 2.0 ** -53
    assert (d64 / math.expm1(d64 / 1e-7)) / 1e-7 > 1 - 1e-9


def test_sample_categorical_matches_distribution_both_methods():
    """Figure: frequencies of 2e5 draws from a 5-way distribution, chi-square with 4 dof below
    the 99.99% quantile (23.5) for cdf and float64 gumbel; unnormalised input accepted."""
    g = torch.Generator().manual_seed(2)
    p = torch.tensor([0.1, 0.2, 0.3, 0.0, 0.4], dtype=torch.float64)
    n = 200_000
    for method in ("cdf", "gumbel"):
        x = sample_categorical(3.0 * p.expand(n, 5), generator=g, method=method)
        counts = torch.bincount(x, minlength=5).double()
        assert counts[3] == 0  # zero-probability category never drawn
        nz = p > 0
        chi2 = float(((counts[nz] - n * p[nz]) ** 2 / (n * p[nz])).sum())
        assert chi2 < 23.5


def test_seeded_reproducible():
    p = torch.softmax(torch.randn(7, 11, generator=torch.Generator().manual_seed(0)), -1)
    a = sample_categorical(p, generator=torch.Generator().manual_seed(5))
    b = sample_categorical(p, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and a.shape == (7,)


def test_last_positive_token_when_rounding_hits_the_end():
    """u * C_V rounding up to C_V must not select a zero-probability trailing token."""
    p = torch.tensor([[0.5, 0.5, 0.0]], dtype=torch.float64).expand(10000, 3)
    x = sample_categorical(p, generator=torch.Generator().manual_seed(0))
    assert int(x.max()) <= 1


def test_bad_input():
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="non-negative"):
        sample_categorical(torch.tensor([[0.5, -0.1]]), generator=g)
    with pytest.raises(FloatingPointError, match="NaN"):
        sample_categorical(torch.tensor([[0.5, float("nan")]]), generator=g)
    with pytest.raises(ValueError, match="positive total"):
        sample_categorical(torch.zeros(2, 3), generator=g)
    with pytest.raises(ValueError, match="method"):
        sample_categorical(torch.ones(2, 3), generator=g, method="foo")
    with pytest.raises(TypeError):
        sample_categorical([0.5, 0.5], generator=g)
    with pytest.raises(ValueError, match="temperature"):
        apply_temperature(torch.zeros(3), 0.0)
    with pytest.raises(ValueError, match="top_p"):
        top_p_filter(torch.ones(3) / 3, 1.5)


def test_top_p_and_temperature():
    """Figure: top-p keeps the smallest prefix of sorted tokens reaching mass p (exact masks), and
    temperature T divides logits (softmax(l/T) checked to 1e-15)."""
    p = torch.tensor([[0.05, 0.5, 0.3, 0.15]], dtype=torch.float64)
    out = top_p_filter(p, 0.8)  # 0.5 + 0.3 reaches 0.8
    assert torch.allclose(out, torch.tensor([[0.0, 0.625, 0.375, 0.0]], dtype=torch.float64), atol=1e-15)
    assert torch.equal(top_p_filter(p, 1.0), p)
    out = top_p_filter(p, 0.1)  # only the argmax survives
    assert torch.equal(out, torch.tensor([[0.0, 1.0, 0.0, 0.0]], dtype=torch.float64))
    logits = p.log()
    sharp = torch.softmax(apply_temperature(logits, 0.5), -1)
    assert torch.allclose(sharp, p ** 2 / (p ** 2).sum(), atol=1e-15)
