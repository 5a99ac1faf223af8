"""SMC against exact answers: unbiased resampling, ESS, and normalising constants of a Gaussian
annealing path whose every intermediate target, normaliser and mean is known in closed form."""

import math

import pytest
import torch
from scipy.stats import chi2

from sciffusion.smc import RESAMPLERS, SMCState, ess, gather, maybe_resample, normalize, resample

W = torch.tensor([0.31, 0.02, 0.17, 0.005, 0.205, 0.11, 0.09, 0.09], dtype=torch.float64)


@pytest.mark.parametrize("scheme", sorted(RESAMPLERS))
def test_resampling_is_unbiased(scheme):
    """Expected copies of particle i = N w_i, checked with a Hotelling chi-square test.

    R = 4000 independent resamplings of N = 8 fixed weights (as 4000 groups). Statistic
    T^2 = R d^T S^+ d with d = mean counts - N w and S the sample covariance of the counts; under
    unbiasedness T^2 ~ chi^2 with rank(S) dof (asymptotically in R). We reject
    at the 1e-4 upper quantile, so a correct scheme fails with probability ~1e-4; a scheme biased
    by 0.02 copies on any particle is caught (SE of a mean count is <= 0.008 here).
    """
    R, N = 4000, len(W)
    idx = resample(W.log().expand(R, N), scheme, torch.Generator().manual_seed(0))
    assert idx.shape == (R, N) and idx.dtype == torch.long and idx.min() >= 0 and idx.max() < N
    counts = torch.nn.functional.one_hot(idx, N).sum(1).to(torch.float64)  # (R, N)
    assert (counts.sum(1) == N).all()
    # the last count is N minus the others: test the first N-1. Low-variance schemes can make some
    # combinations of counts deterministic (zero-variance directions of S): there the mean must
    # hit N w exactly; on the rest T^2 ~ chi^2(rank).
    d = (counts.mean(0) - N * W)[:-1]
    evals, evecs = torch.linalg.eigh(torch.cov(counts[:, :-1].T))
    live = evals > 1e-8 * evals.max()
    proj = evecs.T @ d
    t2 = float(R * (proj[live] ** 2 / evals[live]).sum())
    assert (proj[~live].abs() < 1e-9).all()
    assert t2 < chi2.ppf(1 - 1e-4, int(live.sum())), (t2, int(live.sum()))
    if scheme in ("systematic", "residual"):
        # low-variance schemes keep at least floor(N w_i) copies
        assert (counts >= torch.floor(N * W)).all()
    if scheme == "systematic":
        assert (counts <= torch.ceil(N * W)).all()


def test_low_variance_schemes_beat_multinomial():
    """Per-particle count variance: multinomial's sample variance matches N w(1-w) (10%: the SE of a
    sample variance over R = 4000 draws is ~2-5% here); the others are no larger than N w(1-w)
    (same 10% slack)."""
    R, N = 4000, len(W)
    var = {}
    for scheme in RESAMPLERS:
        idx = resample(W.log().expand(R, N), scheme, torch.Generator().manual_seed(1))
        var[scheme] = torch.nn.functional.one_hot(idx, N).sum(1).to(torch.float64).var(0)
    torch.testing.assert_close(var["multinomial"], N * W * (1 - W), rtol=0.1, atol=0.01)
    for scheme in ("stratified", "systematic", "residual"):
        assert (var[scheme] <= N * W * (1 - W) * 1.1).all(), scheme


def test_ess_formula():
    log_w = torch.randn(3, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    w = log_w.exp()
    torch.testing.assert_close(ess(log_w), w.sum(-1) ** 2 / (w ** 2).sum(-1))
    torch.testing.assert_close(ess(log_w + 1000.0), ess(log_w))  # scale invariant, no overflow
    assert ess(torch.zeros(7)).item() == pytest.approx(7.0)
    one_hot = torch.full((5,), -float("inf"), dtype=torch.float64)
    one_hot[2] = 0.0
    assert ess(one_hot).item() == pytest.approx(1.0)
    torch.testing.assert_close(normalize(log_w), w / w.sum(-1, keepdim=True))


# ---- a Gaussian annealing path: gamma_b(x) = N(x;0,1)^(1-b) * exp(-(x-mu)^2 / (2 s^2))^b ----------
MU, S2 = 2.0, 0.25


def _abc(b):
    return (1 - b) + b / S2, b * MU / S2, b * MU * MU / S2


def _log_gamma(x, b):
    """log gamma_b = -a x^2/2 + b' x - c/2 (the N(0,1) factor unnormalised)."""
    a, bb, c = _abc(b)
    return -0.5 * a * x * x + bb * x - 0.5 * c


def _log_z(b):
    a, bb, c = _abc(b)
    return 0.5 * math.log(2 * math.pi / a) + bb * bb / (2 * a) - 0.5 * c


def _run_smc(threshold, G, N, K, seed, scheme="systematic"):
    """Annealed SMC: reweight by gamma_k/gamma_{k-1}, maybe resample, then an exact pi_k-invariant
    AR(1) move x' = m + rho (x - m) + sqrt(1 - rho^2) sd z."""
    g = torch.Generator().manual_seed(seed)
    betas = torch.linspace(0, 1, K + 1, dtype=torch.float64)
    x = torch.randn(G * N, dtype=torch.float64, generator=g)  # exact draws from pi_0 = N(0, 1)
    state = SMCState.init(G, N)
    for k in range(1, K + 1):
        state.reweight(_log_gamma(x, betas[k]) - _log_gamma(x, betas[k - 1]))
        x, state, _ = maybe_resample(x, state, step=k, threshold=threshold, scheme=scheme, generator=g)
        a, bb, _ = _abc(float(betas[k]))
        m, sd, rho = bb / a, a ** -0.5, 0.5
        x = m + rho * (x - m) + math.sqrt(1 - rho * rho) * sd * torch.randn(x.shape, dtype=torch.float64,
                                                                             generator=g)
    w = state.weights()
    mean = (w * x.reshape(G, N)).sum(1)
    return state, mean


def test_ess_triggered_resampling_agrees_with_every_step():
    """Exact answers: log Z_1/Z_0 and E_pi1[x] = mu for the Gaussian path.

    G = 300 independent SMC runs of N = 64 particles, K = 8 steps, for threshold 0.5 (weights
    carried across the non-resampling steps) and 1.0 (resample every step). Figures:
    (a) E[Z_hat / Z] = 1 (unbiasedness of the normaliser estimate) for each, within 4 SE;
    (b) the weighted mean of x equals mu within 4 SE + 1/N (self-normalised bias is O(1/N));
    (c) the two schemes' estimates agree within 4 combined SE.
    (d) the threshold-0.5 run really skipped resampling on some steps and resampled on others.
    """
    G, N, K = 300, 64, 8
    exact = _log_z(1.0) - _log_z(0.0)
    out = {}
    for thr in (0.5, 1.0):
        state, mean = _run_smc(thr, G, N, K, seed=int(thr * 10))
        ratio = (state.log_normalizer() - exact).exp()
        se_r, se_m = ratio.std() / math.sqrt(G), mean.std() / math.sqrt(G)
        assert abs(ratio.mean() - 1) < 4 * se_r, (thr, ratio.mean(), se_r)
        assert abs(mean.mean() - MU) < 4 * se_m + 1 / N, (thr, mean.mean())
        out[thr] = (ratio, mean, state)
    (r5, m5, s5), (r1, m1, s1) = out[0.5], out[1.0]
    assert abs(r5.mean() - r1.mean()) < 4 * math.sqrt(r5.var() / G + r1.var() / G)
    assert abs(m5.mean() - m1.mean()) < 4 * math.sqrt(m5.var() / G + m1.var() / G)
    assert 0 < len(s5.resample_steps) < K
    assert s1.resample_steps == list(range(1, K + 1))
    assert len(s5.ess_history) == K


@pytest.mark.parametrize("scheme", sorted(RESAMPLERS))
def test_log_z_unbiased_every_scheme(scheme):
    """E[Z_hat] = Z for every scheme (threshold 1.0, G = 200 runs of N = 32; 4 SE)."""
    state, _ = _run_smc(1.0, 200, 32, 5, seed=3, scheme=scheme)
    ratio = (state.log_normalizer() - (_log_z(1.0) - _log_z(0.0))).exp()
    assert abs(ratio.mean() - 1) < 4 * ratio.std() / math.sqrt(200)


def test_maybe_resample_bookkeeping():
    """log_z gains log mean w on resampling groups only; their weights reset; gather maps indices
    within groups; threshold 0 never resamples."""
    G, N = 2, 4
    x = torch.arange(G * N, dtype=torch.float64)
    state = SMCState.init(G, N)
    inc = torch.tensor([[0.0, 0.0, 0.0, 0.0], [5.0, -5.0, -5.0, -5.0]], dtype=torch.float64)
    state.reweight(inc)
    before = torch.logsumexp(state.log_w, -1) - math.log(N)
    x2, state, did = maybe_resample(x, state, threshold=0.5, generator=torch.Generator().manual_seed(0))
    assert did.tolist() == [False, True]
    torch.testing.assert_close(state.log_z, torch.stack([torch.tensor(0.0, dtype=torch.float64), before[1]]))
    assert (state.log_w[1] == 0).all() and torch.equal(state.log_w[0], inc[0])
    assert torch.equal(x2[:4], x[:4]) and ((x2[4:] >= 4) & (x2[4:] < 8)).all()
    # log_normalizer is invariant under resampling (it moves mass from log_w into log_z)
    torch.testing.assert_close(state.log_normalizer(), before)
    idx = torch.tensor([[3, 3, 0, 1], [0, 0, 0, 2]])
    assert gather(x, idx).tolist() == [3, 3, 0, 1, 4, 4, 4, 6]
    tup = gather((x, x * 2), idx)
    assert tup[1].tolist() == [6, 6, 0, 2, 8, 8, 8, 12]
    s0 = SMCState.init(1, 4).reweight(torch.tensor([9.0, -9, -9, -9]))
    _, s0, did = maybe_resample(x[:4], s0, threshold=0.0)
    assert not did.any() and s0.resample_steps == []


def test_warns_on_degeneracy():
    state = SMCState.init(1, 10).reweight(torch.tensor([0.0] + [-50.0] * 9))
    with pytest.warns(RuntimeWarning, match="ESS fell"):
        maybe_resample(torch.zeros(10), state, step=3, warn_ess=0.2)


def test_errors():
    with pytest.raises(FloatingPointError, match="NaN"):
        ess(torch.tensor([0.0, float("nan")]))
    with pytest.raises(FloatingPointError, match="NaN"):
        resample(torch.tensor([0.0, float("inf")]))
    with pytest.raises(FloatingPointError, match="zero weight"):
        normalize(torch.full((3,), -float("inf")))
    with pytest.raises(FloatingPointError, match="NaN"):
        SMCState.init(1, 2).reweight(torch.tensor([0.0, float("nan")]))
    with pytest.raises(ValueError, match="zero particles"):
        ess(torch.zeros(2, 0))
    with pytest.raises(ValueError, match="num_particles=0"):
        SMCState.init(1, 0)
    with pytest.raises(ValueError, match="multinomial, residual, stratified, systematic"):
        resample(torch.zeros(3), "bootstrap")
    with pytest.raises(ValueError, match="threshold"):
        maybe_resample(torch.zeros(2), SMCState.init(1, 2), threshold=1.5)
