"""Decoders against exact answers on the enumerable Markov-chain oracle of ``discrete``."""

import math

import pytest
import torch

from sciffusion.domains.discrete import MarkovChainOracle, MaskedProcess, sample_ancestral
from sciffusion.domains.sequence_design import (HammingMotifCount, as_reward, design, fit_value_network,
                                                sample_best_of_n, sample_smc, sample_svdd, select_candidates)
from sciffusion.domains.sequence_design.decoding import VALUE_SAMPLES

K, L = 4, 6


@pytest.fixture(scope="module")
def setup():
    oracle = MarkovChainOracle.random(K, L, seed=0)
    pr = MaskedProcess(K)
    return oracle, pr, oracle.masked_model(pr)


def count_zeros(x):
    return (x == 0).sum(1).double()


class CountingModel:
    """Independent counts of batched calls and rows (checked against the decoders' reports)."""

    def __init__(self, model):
        self.model, self.calls, self.rows, self.max_len = model, 0, 0, model.max_len

    def __call__(self, x):
        self.calls += 1
        self.rows += x.shape[0]
        return self.model(x)


def test_determinism_from_a_seed(setup):
    _, pr, m = setup
    for kw in ({"num_candidates": 4, "alpha": 0.5}, {"num_candidates": 3, "alpha": 0.0}):
        a = sample_svdd(m, pr, count_zeros, (50, L), 8, generator=torch.Generator().manual_seed(1), **kw)
        b = sample_svdd(m, pr, count_zeros, (50, L), 8, generator=torch.Generator().manual_seed(1), **kw)
        assert torch.equal(a.x, b.x) and torch.equal(a.reward, b.reward) and a.model_evals == b.model_evals
    s1 = sample_smc(m, pr, count_zeros, (10, L), 8, num_particles=8, generator=torch.Generator().manual_seed(2))
    s2 = sample_smc(m, pr, count_zeros, (10, L), 8, num_particles=8, generator=torch.Generator().manual_seed(2))
    assert torch.equal(s1.x, s2.x) and torch.equal(s1.extra["log_w"], s2.extra["log_w"])


def test_one_candidate_is_the_base_sampler_bit_for_bit(setup):
    """M = 1: SVDD draws exactly what the cached ancestral sampler draws from the same seed
    (same tokens, same model calls), for two grids and a temperature."""
    _, pr, m = setup
    for steps, kw in ((8, {}), (30, {"temperature": 0.8})):
        a = sample_svdd(m, pr, count_zeros, (400, L), steps, num_candidates=1,
                        generator=torch.Generator().manual_seed(3), **kw)
        b = sample_ancestral(m, pr, (400, L), steps, generator=torch.Generator().manual_seed(3), **kw)
        assert torch.equal(a.x, b.x)
        assert a.nfe == b.nfe and a.model_evals == int(b.nfe_per_sequence.sum())
        assert torch.equal(a.reward, count_zeros(a.x)) and a.reward_evals == 400  # only the final step scored


def test_alpha_to_zero_equals_argmax_selection(setup):
    """alpha = 1e-6 (gaps of reward >= 1 underflow exp) selects exactly what alpha = 0 (uniform over
    the maximisers) selects, from the same seed; the argmax designs dominate soft ones on reward."""
    _, pr, m = setup
    a0 = sample_svdd(m, pr, count_zeros, (300, L), 10, num_candidates=4, alpha=0.0,
                     generator=torch.Generator().manual_seed(4))
    a1 = sample_svdd(m, pr, count_zeros, (300, L), 10, num_candidates=4, alpha=1e-6,
                     generator=torch.Generator().manual_seed(4))
    assert torch.equal(a0.x, a1.x)
    soft = sample_svdd(m, pr, count_zeros, (300, L), 10, num_candidates=4, alpha=5.0,
                       generator=torch.Generator().manual_seed(4))
    assert float(a0.reward.mean()) > float(soft.reward.mean())


def test_soft_selection_law():
    """Figures: select_candidates draws m with probability exp(v_m/alpha)/sum (alpha = 0.7) and
    uniformly among tied maximisers (alpha = 0), within 5 binomial standard errors in 1e5 rows."""
    n = 100_000
    v = torch.tensor([0.0, 1.0, -0.5, 1.0], dtype=torch.float64)
    for alpha, p in ((0.7, torch.softmax(v / 0.7, 0)), (0.0, torch.tensor([0, 0.5, 0, 0.5], dtype=torch.float64))):
        idx = select_candidates(v.expand(n, 4), alpha, torch.Generator().manual_seed(0))
        f = torch.bincount(idx, minlength=4).double() / n
        assert ((f - p).abs() <= 5 * (p * (1 - p) / n).sqrt() + 1e-12).all()
    with pytest.raises(ValueError, match="alpha"):
        select_candidates(v[None], -1.0)
    with pytest.raises(FloatingPointError, match="NaN"):
        select_candidates(torch.tensor([[0.0, math.nan]]), 1.0)
    with pytest.raises(FloatingPointError, match="-inf"):
        select_candidates(torch.tensor([[-math.inf, -math.inf]]), 1.0)


def test_model_and_reward_counts_are_exact(setup):
    """Counts reported by each decoder equal independent counters; reward evaluations have closed
    forms: SVDD-PM with argmax values K*B*M, with S value draws B*M*(S + 1) on a 2-step grid of
    40 sites (a candidate is complete after the first step with probability 2^-40), best-of-N B*N,
    SMC (K + 1)*B*N (one potential per step and the end)."""
    _, pr, m = setup
    B, steps, M = 20, 7, 3
    cm, r = CountingModel(m), as_reward(count_zeros)
    out = sample_svdd(cm, pr, r, (B, L), steps, num_candidates=M, value_samples=0,
                      generator=torch.Generator().manual_seed(5))
    assert (out.nfe, out.model_evals) == (cm.calls, cm.rows)
    assert out.reward_evals == steps * B * M == r.evaluations and out.reward_calls == steps == r.calls
    flat = lambda x: torch.zeros(x.shape + (K,))  # noqa: E731  uniform p(x0 | x_t) over K tokens
    r, S = as_reward(count_zeros), 5
    out = sample_svdd(flat, pr, r, (B, 40), 2, num_candidates=M, value_samples=S,
                      generator=torch.Generator().manual_seed(5))
    assert out.reward_evals == B * M * (S + 1) == r.evaluations and out.reward_calls == r.calls
    cm, r = CountingModel(m), as_reward(count_zeros)
    out = sample_best_of_n(cm, pr, r, (B, L), steps, n=5, generator=torch.Generator().manual_seed(5))
    assert (out.nfe, out.model_evals) == (cm.calls, cm.rows) and out.reward_evals == B * 5
    cm, r = CountingModel(m), as_reward(count_zeros)
    out = sample_smc(cm, pr, r, (B, L), steps, num_particles=4, generator=torch.Generator().manual_seed(5))
    assert (out.nfe, out.model_evals) == (cm.calls, cm.rows) == (steps, steps * B * 4)
    assert out.reward_evals == (steps + 1) * B * 4


def test_best_of_n_keeps_the_best_of_its_draws(setup):
    """With n draws per design, the kept reward is the max over exactly the draws the base
    sampler makes from the same seed."""
    _, pr, m = setup
    out = sample_best_of_n(m, pr, count_zeros, (30, L), 8, n=4, generator=torch.Generator().manual_seed(6))
    base = sample_ancestral(m, pr, (120, L), 8, generator=torch.Generator().manual_seed(6))
    assert torch.equal(out.reward, count_zeros(base.x).view(30, 4).max(1).values)


def test_smc_tilt_reaches_the_exact_tilted_law():
    """Figures: on a K=4, L=4 chain with i.i.d. sites (the masked transition is then exact for any
    grid, so the target is exactly p(x) exp(lam r(x)) / Z), with r = number of adjacent pairs (a, a+1)
    (couples the sites) and lam = 1: over G = 200 independent groups of N = 64 particles,
    mean(Z-hat) is within 4 standard errors of the exact Z = 2.338 (Z-hat is unbiased; the
    standard error is from the spread over groups), and the weighted E[r] (bias O(1/N)) within 4
    standard errors of the exact tilted mean 1.122 (base mean 0.600)."""
    pi = torch.tensor([0.4, 0.3, 0.2, 0.1], dtype=torch.float64)
    o = MarkovChainOracle(pi, pi.expand(4, 4).clone(), 4)
    pr = MaskedProcess(4)

    def r(x):
        return ((x[:, 1:] - x[:, :-1]) == 1).sum(1).double()

    xs, p = o.enumerate()
    Z = float((p * torch.exp(r(xs))).sum())
    Er = float((p * torch.exp(r(xs)) * r(xs)).sum()) / Z
    G, N = 200, 64
    out = sample_smc(o.masked_model(pr), pr, r, (G, 4), 20, num_particles=N, lam=1.0,
                     generator=torch.Generator().manual_seed(0))
    zh = out.extra["log_z"].exp()
    assert abs(float(zh.mean()) - Z) < 4 * float(zh.std()) / G ** 0.5
    per = (torch.softmax(out.extra["log_w"], -1) * out.extra["particle_reward"].view(G, N)).sum(1)
    assert abs(float(per.mean()) - Er) < 4 * float(per.std()) / G ** 0.5
    assert len(out.extra["resample_steps"]) > 0  # ESS-triggered resampling happened


def test_svdd_pm_and_mc_raise_the_reward(setup):
    """Figures: the oracle's mean count of token 0 is about 1.0 per 6-mer; SVDD-PM with M = 8 (argmax)
    and SVDD-MC with a value network fitted on 1024 rollouts both exceed the base mean by > 0.5
    (200 designs; the standard error of a mean is ~0.07)."""
    oracle, pr, m = setup
    base = sample_ancestral(m, pr, (200, L), 12, generator=torch.Generator().manual_seed(7))
    b = float(count_zeros(base.x).mean())
    pm = sample_svdd(m, pr, count_zeros, (200, L), 12, num_candidates=8, generator=torch.Generator().manual_seed(7))
    vn = fit_value_network(m, pr, count_zeros, L, num_rollouts=1024, num_steps=12, train_steps=150,
                           generator=torch.Generator().manual_seed(8), channels=16, depth=2)
    mc = design("svdd-mc", m, pr, count_zeros, (200, L), 12, num_candidates=8, value=vn,
                generator=torch.Generator().manual_seed(7))
    assert float(pm.reward.mean()) > b + 0.5 and float(mc.reward.mean()) > b + 0.5
    assert mc.extra["value_calls"] > 0 and vn.training_reward_evals == 1024
    assert torch.equal(pm.reward, count_zeros(pm.x)) and torch.equal(mc.reward, count_zeros(mc.x))


def test_bad_input(setup):
    _, pr, m = setup
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="maximum length"):
        sample_svdd(m, pr, count_zeros, (2, L + 1), 4, generator=g)
    with pytest.raises(ValueError, match="num_candidates"):
        sample_svdd(m, pr, count_zeros, (2, L), 4, num_candidates=0, generator=g)
    with pytest.raises(ValueError, match="value must be"):
        sample_svdd(m, pr, count_zeros, (2, L), 4, value="mc", generator=g)
    with pytest.raises(FloatingPointError, match="NaN"):
        sample_svdd(m, pr, lambda x: torch.full((x.shape[0],), math.nan), (2, L), 4, generator=g)
    with pytest.raises(ValueError, match="expected"):
        sample_svdd(m, pr, lambda x: torch.zeros(x.shape[0], 2), (2, L), 4, generator=g)
    with pytest.raises(ValueError, match="n must be"):
        sample_best_of_n(m, pr, count_zeros, (2, L), 4, n=0, generator=g)
    with pytest.raises(ValueError, match="unknown method"):
        design("dps", m, pr, count_zeros, (2, L))
    with pytest.raises(ValueError, match="svdd-mc needs"):
        design("svdd-mc", m, pr, count_zeros, (2, L))
    with pytest.raises(ValueError, match="window/motif length 8 exceeds"):
        sample_svdd(m, pr, HammingMotifCount("ACGTACGT"), (2, L), 4, generator=g)


def test_first_hitting_svdd(setup):
    """M = 1 draws exactly what sample_first_hitting draws from the same seed (the shared
    first_hitting_step); with M = 4 the model is evaluated on every still-masked candidate
    (independent counter) and the reward rises above the base mean by > 0.5 (300 designs)."""
    from sciffusion.domains.discrete import sample_first_hitting
    from sciffusion.domains.sequence_design import sample_svdd_first_hitting

    _, pr, m = setup
    a = sample_svdd_first_hitting(m, pr, count_zeros, (300, L), num_candidates=1,
                                  generator=torch.Generator().manual_seed(9))
    b = sample_first_hitting(m, pr, (300, L), generator=torch.Generator().manual_seed(9))
    assert torch.equal(a.x, b.x) and a.nfe == b.nfe and torch.equal(a.reward, count_zeros(a.x))
    cm = CountingModel(m)
    c = sample_svdd_first_hitting(cm, pr, count_zeros, (300, L), num_candidates=4,
                                  generator=torch.Generator().manual_seed(9))
    assert (c.nfe, c.model_evals) == (cm.calls, cm.rows) == (L, 300 + 300 * 4 * (L - 1))
    # every masked candidate is valued by VALUE_SAMPLES draws, the complete ones at the last step once
    assert c.reward_evals == 300 * 4 * ((L - 1) * VALUE_SAMPLES + 1) and torch.equal(c.reward, count_zeros(c.x))
    d = sample_svdd_first_hitting(m, pr, count_zeros, (300, L), num_candidates=4, value_samples=0,
                                  generator=torch.Generator().manual_seed(9))
    assert d.reward_evals == 300 * 4 * L and d.reward_calls == L
    assert float(c.reward.mean()) > float(count_zeros(b.x).mean()) + 0.5


@pytest.mark.parametrize("kw, match", [({"num_candidates": 0}, "num_candidates must be a positive int, got 0"),
                                       ({"num_candidates": 2.0}, "num_candidates must be a positive int"),
                                       ({"num_candidates": True}, "num_candidates must be a positive int"),
                                       ({"alpha": -0.1}, "alpha must be a finite number >= 0, got -0.1"),
                                       ({"alpha": math.inf}, "alpha must be a finite number >= 0, got inf"),
                                       ({"alpha": "0"}, "alpha must be a finite number >= 0")])
def test_svdd_decoders_share_their_argument_checks(setup, kw, match):
    """sample_svdd and sample_svdd_first_hitting validate M and alpha through one helper: the same
    message for the same bad value, before any model or reward call."""
    from sciffusion.domains.sequence_design import sample_svdd_first_hitting

    _, pr, m = setup
    cm, calls = CountingModel(m), []

    def r(x):
        calls.append(x.shape[0])
        return count_zeros(x)

    for f in (lambda: sample_svdd(cm, pr, r, (2, L), 4, **kw),
              lambda: sample_svdd_first_hitting(cm, pr, r, (2, L), **kw)):
        with pytest.raises(ValueError, match=match):
            f()
    assert cm.calls == 0 and calls == []


def test_posterior_value_is_the_expected_reward_under_the_prediction(setup):
    """For the linear reward count_zeros, E[r(x0) | x_s] under the factorised prediction is
    (clean zeros) + sum over masked sites of p(x0^i = 0); the S-draw average must match it within
    5 Monte Carlo standard errors (per-site Bernoulli variances summed, / S). S = 0 is r(argmax)."""
    from sciffusion.domains.sequence_design import posterior_value
    from sciffusion.domains.discrete import model_probs

    _, pr, m = setup
    g = torch.Generator().manual_seed(3)
    x = pr.perturb(torch.randint(K, (6, L), generator=g), torch.full((6,), 0.6, dtype=torch.float64), g)
    x[0] = pr.mask_id  # one all-masked state
    x[1] = x[1].clamp_max(K - 1)  # one complete state
    p = model_probs(m(x), 1.0, 1.0)
    masked = x == pr.mask_id
    p0 = torch.where(masked, p[..., 0], 0.0)
    exact = count_zeros(x) + p0.sum(1)
    S = 20000
    v = posterior_value(count_zeros, x, p, pr.mask_id, S, g)
    se = (p0 * (1 - p0)).sum(1).div(S).sqrt()
    assert v[1] == count_zeros(x[1:2])[0]  # complete: the reward itself
    assert ((v - exact).abs() <= 5 * se + 1e-12).all()
    argmax = torch.where(masked, p.argmax(-1), x)
    assert torch.equal(posterior_value(count_zeros, x, p, pr.mask_id, 0), count_zeros(argmax))
