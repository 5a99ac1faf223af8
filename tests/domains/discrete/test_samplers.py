"""Samplers against the exact oracle (first-order chain, K = 4, L = 6, 4096 sequences)."""

import pytest
import torch

from sciffusion.domains.discrete import (AbsorbingUniformProcess, MarkovChainOracle, MaskedProcess,
                                         UniformProcess, ancestral_step, first_hitting_step, sample_absorbing_uniform,
                                         sample_ancestral, sample_first_hitting, sample_remdm, sample_uniform)
from sciffusion.domains.discrete.oracle import chi2_sf

K, L = 4, 6


@pytest.fixture(scope="module")
def oracle():
    return MarkovChainOracle.random(K, L, seed=0)


N = 30_000  # draws for the step ladders (the oracle's forward-backward per step dominates the cost)


@pytest.fixture(scope="module")
def floor(oracle):
    """Monte Carlo floor: plug-in KL of 2e5 exact draws (the KL an exact sampler shows)."""
    return oracle.kl_from_samples(oracle.sample(200_000, torch.Generator().manual_seed(99)))[0]


@pytest.fixture(scope="module")
def floor_n(oracle):
    """The same floor for N = 3e4 draws (about 0.036 nats; seed-to-seed spread ~3%)."""
    return oracle.kl_from_samples(oracle.sample(N, torch.Generator().manual_seed(98)))[0]


def test_first_hitting_is_exact(oracle, floor):
    """Figures: 2e5 first-hitting samples with the oracle have plug-in KL within 15% of the floor of
    exact draws (the floor's own spread at n = 2e5 is a few %), a chi-square p-value > 1e-4 (4095
    dof), and exactly L model calls per sequence."""
    pr = MaskedProcess(K)
    out = sample_first_hitting(oracle.masked_model(pr), pr, (200_000, L), generator=torch.Generator().manual_seed(0))
    kl, chi2, dof, _ = oracle.kl_from_samples(out.x)
    assert kl < 1.15 * floor
    assert chi2_sf(chi2, dof) > 1e-4
    assert out.nfe == L and torch.all(out.nfe_per_sequence == L)


def test_first_hitting_times_closed_form():
    """Figure: the first unmasking time from all-masked (n = L) has CDF P(t_1 <= s) = (1-alpha_s)^L
    -> with the log-linear schedule s^L; the mean of t_1 is L/(L+1) (2e4 draws, 5 standard errors)."""
    pr = MaskedProcess(3)

    def model(x):
        return torch.zeros(*x.shape, 3)
    out = sample_first_hitting(model, pr, (20_000, 5), generator=torch.Generator().manual_seed(1), return_times=True)
    t1 = out.times[:, 0]
    sd = (5 / (7 * 36)) ** 0.5  # Var of Beta(5, 1) = 5 / ((6^2) 7)
    assert abs(float(t1.mean()) - 5 / 6) < 5 * sd / 20_000 ** 0.5
    assert torch.all(out.times[:, 1:] <= out.times[:, :-1])


def test_ancestral_approaches_exact_and_cache_is_free(oracle, floor_n):
    """Figures: ancestral KL falls monotonically with steps (1, 4, 16, 64 on 3e4 draws) to within
    25% of the floor at 64 steps; cached and uncached runs give bit-identical samples from the same seed (the model is
    time-free, so skipping a call for an unchanged sequence changes nothing); cached NFE per sequence
    never exceeds min(steps, L)."""
    pr = MaskedProcess(K)
    m = oracle.masked_model(pr)
    kls = []
    for steps in (1, 4, 16, 64):
        out = sample_ancestral(m, pr, (N, L), steps, generator=torch.Generator().manual_seed(steps))
        assert int(out.nfe_per_sequence.max()) <= min(steps, L)
        kls.append(oracle.kl_from_samples(out.x)[0])
    assert kls[0] > kls[1] > kls[2] > kls[3]
    assert kls[0] > 20 * floor_n and kls[3] < 1.25 * floor_n
    for steps in (3, 6, 50):
        a = sample_ancestral(m, pr, (500, L), steps, generator=torch.Generator().manual_seed(7), cache=True)
        b = sample_ancestral(m, pr, (500, L), steps, generator=torch.Generator().manual_seed(7), cache=False)
        assert torch.equal(a.x, b.x)
        assert int(a.nfe_per_sequence.max()) <= min(steps, L)
        assert a.nfe <= b.nfe == steps
        one = sample_ancestral(m, pr, (1, L), steps, generator=torch.Generator().manual_seed(8))
        assert one.nfe <= min(steps, L)


def test_remdm(oracle, floor):
    """Figures: ReMDM with eta = 0 is the (uncached) ancestral sampler, bit for bit; one ReMDM step
    with the true x0 keeps the forward marginal P(masked at s) = 1 - alpha_s (2e5 sites, 5 sd);
    with eta = 0.05 at 64 steps (3e4 draws) the KL is below the ancestral KL at 4 steps."""
    pr = MaskedProcess(K)
    m = oracle.masked_model(pr)
    a = sample_remdm(m, pr, (300, L), 10, eta=0.0, generator=torch.Generator().manual_seed(3))
    b = sample_ancestral(m, pr, (300, L), 10, cache=False, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a.x, b.x)
    # marginal preservation of one step t -> s with the exact x0 (model = one-hot of x0)
    n, t, s = 200_000, 0.7, 0.6
    x0 = torch.zeros(n, 1, dtype=torch.long)
    xt = pr.perturb(x0, t, torch.Generator().manual_seed(4))
    onehot = torch.full((1, 1, K), -float("inf"))
    onehot[..., 0] = 0.0

    def truth(x):
        return onehot.expand(x.shape[0], x.shape[1], K)
    # run remdm for the single step [t, s] by starting from x_t on a 10-step grid at its step 3 -> 4
    from sciffusion.domains.discrete import samplers as S
    grid = S._grid
    S._grid = lambda k: torch.tensor([t, s], dtype=torch.float64)
    try:
        out = sample_remdm(truth, pr, x=xt, num_steps=1, eta=0.5, generator=torch.Generator().manual_seed(5))
    finally:
        S._grid = grid
    frac = float((out.x == pr.mask_id).double().mean())
    assert abs(frac - (1 - float(pr.alpha(s)))) < 5 * (0.25 / n) ** 0.5
    assert ((xt != pr.mask_id) & (out.x == pr.mask_id)).sum() > 1000  # clean sites were remasked
    r = sample_remdm(m, pr, (N, L), 64, eta=0.05, generator=torch.Generator().manual_seed(6))
    an = sample_ancestral(m, pr, (N, L), 4, generator=torch.Generator().manual_seed(6))
    assert oracle.kl_from_samples(r.x)[0] < oracle.kl_from_samples(an.x)[0]
    assert r.nfe == 64


def test_uniform_sampler_and_corrector(oracle):
    """Figures: the uniform predictor with the oracle's leave-one-out posterior: KL falls with steps
    (2, 8, 16 on 3e4 draws: about 0.8, 0.10, 0.055); a model giving the denoiser (converted exactly) yields the same samples
    to the bit as the loo model; two Gibbs corrector steps per step lower the KL at 8 steps."""
    pr = UniformProcess(K)
    m = oracle.uniform_model(pr, "loo")
    kls = [oracle.kl_from_samples(sample_uniform(m, pr, (N, L), n, generator=torch.Generator().manual_seed(n)).x)[0]
           for n in (2, 8, 16)]
    assert kls[0] > kls[1] > kls[2]
    a = sample_uniform(m, pr, (2000, L), 8, generator=torch.Generator().manual_seed(1))
    b = sample_uniform(oracle.uniform_model(pr, "denoiser"), pr, (2000, L), 8, generator=torch.Generator().manual_seed(1))
    assert (a.x != b.x).double().mean() < 1e-3  # identical up to 1e-16 differences at CDF edges
    c = sample_uniform(m, pr, (N, L), 8, corrector_steps=2, generator=torch.Generator().manual_seed(8))
    assert oracle.kl_from_samples(c.x)[0] < kls[1]
    assert c.nfe == 8 + 7 * 2  # no corrector after the last step (s = 0)


def test_absorbing_uniform_sampler(oracle, floor_n):
    """Figures: KL falls with steps (1, 4, 16 on 3e4 draws: about 1.7, 0.19, 0.053) and is within
    2x the floor at 16 steps; clean sites never change (carry-over unmasking)."""
    pr = AbsorbingUniformProcess(K)
    m = oracle.absorbing_uniform_model(pr)
    kls = []
    for n in (1, 4, 16):
        out = sample_absorbing_uniform(m, pr, (N, L), n, generator=torch.Generator().manual_seed(n))
        kls.append(oracle.kl_from_samples(out.x)[0])
    assert kls[0] > kls[1] > kls[2]
    assert kls[2] < 2 * floor_n
    seen = []

    def spy(x, z, t):
        seen.append((x.clone(), z.clone()))
        return m(x, z, t)
    sample_absorbing_uniform(spy, pr, (500, L), 16, generator=torch.Generator().manual_seed(2))
    for (x1, z1), (x2, _) in zip(seen[:-1], seen[1:]):
        clean = x1 != z1
        assert torch.equal(x1[clean], x2[clean])


@pytest.mark.slow  # ~1e9 draws of a 2049-way categorical: the effect needs per-step rates below 2^-24
def test_float32_draws_lower_entropy_as_steps_grow():
    """Figure: ancestral sampling of independent sites with p = 1/2 on one token and 1/2 spread over
    2048 tail tokens (each 2.4e-4). With N steps the per-step rate of a tail token is about
    2.4e-4/(N t); at N = 16384 it falls below 2^-24 for most t, so the float32 Gumbel draw
    suppresses the tail (0.015 r at r = 1e-8) and the entropy estimate -mean log p(x) falls from
    about H = 4.16 nats to well below; the float64 draw keeps it at H at both step counts.
    n = 96 sites: sd of -log p(x) is 3.47, so the estimate's sd is 0.35; thresholds at ~3 sd."""
    Vt = 2048
    V = Vt + 1
    p = torch.full((V,), 0.5 / Vt, dtype=torch.float64)
    p[0] = 0.5
    logp = p.log()
    H = float(-(p * logp).sum())
    pr = MaskedProcess(V)

    def model(x):
        return logp.expand(x.shape[0], x.shape[1], V)
    est = {}
    for steps in (32, 16384):
        for method, dtype in (("gumbel", torch.float32), ("cdf", torch.float64)):
            out = sample_ancestral(model, pr, (96, 1), steps, method=method, dtype=dtype,
                                   generator=torch.Generator().manual_seed(0))
            est[(steps, method)] = float(-logp[out.x].mean())
    assert abs(est[(32, "cdf")] - H) < 1.1 and abs(est[(16384, "cdf")] - H) < 1.1
    assert abs(est[(32, "gumbel")] - H) < 1.1
    assert est[(16384, "gumbel")] < H - 1.2


def test_temperature_and_top_p_in_samplers(oracle):
    """Figure: temperature 0.3 and top-p 0.5 both lower the entropy estimate -mean log p(x) of
    first-hitting samples below the exact entropy (5e3 draws; effects are > 1 nat)."""
    pr = MaskedProcess(K)
    m = oracle.masked_model(pr)
    H = oracle.entropy()
    for kw in ({"temperature": 0.3}, {"top_p": 0.5}):
        out = sample_first_hitting(m, pr, (5000, L), generator=torch.Generator().manual_seed(0), **kw)
        assert float(-oracle.log_prob(out.x).mean()) < H - 1.0


def test_sampler_bad_input(oracle):
    pr = MaskedProcess(K)
    m = oracle.masked_model(pr)
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="maximum length"):
        sample_first_hitting(m, pr, (2, L + 1), generator=g)
    with pytest.raises(ValueError, match="shape"):
        sample_ancestral(m, pr, (2, 0), 4, generator=g)
    with pytest.raises(ValueError, match="num_steps"):
        sample_ancestral(m, pr, (2, L), 0, generator=g)
    with pytest.raises(TypeError, match="MaskedProcess"):
        sample_ancestral(m, UniformProcess(K), (2, L), 4, generator=g)
    with pytest.raises(ValueError, match="model output"):
        sample_ancestral(lambda x: torch.zeros(x.shape[0], x.shape[1], K + 1), pr, (2, L), 4, generator=g)
    with pytest.raises(FloatingPointError):
        sample_ancestral(lambda x: torch.full((x.shape[0], x.shape[1], K), float("nan")), pr, (2, L), 4, generator=g)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        sample_ancestral(m, pr, x=torch.tensor([[0, 9, 4, 4, 4, 4]]), num_steps=4, generator=g)
    with pytest.raises(ValueError, match="strategy"):
        sample_remdm(m, pr, (2, L), 4, strategy="x", generator=g)


def test_ancestral_step_law_and_bad_input():
    """Figures: one step t -> s (alpha 0.2 -> 0.6) from one masked site with p(x0) = (.1, .2, .3, .4):
    the frequencies of the V + 1 outcomes in 2e5 draws match (alpha_s - alpha_t)/(1 - alpha_t) p
    and (1 - alpha_s)/(1 - alpha_t) to 5 binomial standard errors; clean sites never change; the
    (B, L, V) and (n, V) forms of probs draw the same tokens from one seed."""
    V, n = 4, 200_000
    p = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    x = torch.tensor([[2, V]]).repeat(n, 1)
    full = p.expand(n, 2, V).clone()
    out = ancestral_step(x, full, 0.2, 0.6, V, generator=torch.Generator().manual_seed(0))
    assert (out[:, 0] == 2).all()
    freq = torch.bincount(out[:, 1], minlength=V + 1).double() / n
    expect = torch.cat([p * 0.4 / 0.8, torch.tensor([0.4 / 0.8], dtype=torch.float64)])
    assert ((freq - expect).abs() <= 5 * (expect * (1 - expect) / n).sqrt()).all()
    same = ancestral_step(x, full[:, 1], 0.2, 0.6, V, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, same)
    with pytest.raises(ValueError, match="alpha_t"):
        ancestral_step(x, full, 0.7, 0.6, V)
    with pytest.raises(ValueError, match="num_masked"):
        ancestral_step(x, full[:3, 1], 0.2, 0.6, V)


def test_first_hitting_step_unmasks_one_uniform_site():
    """Figures: each call unmasks exactly one site, chosen uniformly among the masked ones (3 masked
    sites: each chosen with frequency 1/3 within 5 binomial standard errors in 3e4 rows), the token
    drawn from that site's logits (a one-hot logit row: always that token)."""
    V, n = 4, 30_000
    x = torch.tensor([[V, 1, V, V]]).repeat(n, 1)
    logits = torch.full((n, 4, V), -float("inf"))
    logits[:, :, 3] = 0.0
    out, pos = first_hitting_step(x, logits, V, generator=torch.Generator().manual_seed(0))
    assert ((out != x).sum(1) == 1).all() and (out[torch.arange(n), pos] == 3).all()
    freq = torch.bincount(pos, minlength=4).double() / n
    assert freq[1] == 0 and ((freq[[0, 2, 3]] - 1 / 3).abs() < 5 * (2 / 9 / n) ** 0.5).all()
    with pytest.raises(ValueError, match="at least one masked"):
        first_hitting_step(torch.tensor([[0, 1]]), torch.zeros(1, 2, V), V)
