"""Forward processes: marginals of perturb against q_t, emissions, bad input."""

import pytest
import torch

from sciffusion.domains.discrete import AbsorbingUniformProcess, MaskedProcess, UniformProcess, check_tokens


def test_marginals_match_q_t():
    """Figure: per-site frequencies of 2e5 perturbed tokens equal q_t(b | x0) within 5 binomial
    standard errors (sd <= sqrt(0.25/2e5) = 1.1e-3) for all three processes at t = 0.3."""
    g = torch.Generator().manual_seed(0)
    n, t, V = 200_000, 0.3, 5
    x0 = torch.full((n, 1), 2, dtype=torch.long)
    tol = 5 * (0.25 / n) ** 0.5
    mp = MaskedProcess(V)
    xt = mp.perturb(x0, t, g)
    assert abs(float((xt == 2).double().mean()) - 0.7) < tol
    assert abs(float((xt == V).double().mean()) - 0.3) < tol
    up = UniformProcess(V)
    freq = torch.bincount(up.perturb(x0, t, g)[:, 0], minlength=V).double() / n
    want = up.emission(torch.arange(V)[None], t)[0, :, 2]  # q_t(b | 2) for every b
    assert torch.allclose(freq, want, atol=tol)
    ap = AbsorbingUniformProcess(V)
    xt, z = ap.perturb(x0, t, g)
    freq = torch.bincount(xt[:, 0], minlength=V).double() / n
    assert torch.allclose(freq, want, atol=tol)  # marginally over z: uniform diffusion


def test_emission_uniform_is_a_kernel():
    """q_t(b|v) rows sum to one over b (1e-15)."""
    up = UniformProcess(4)
    e = up.emission(torch.arange(4)[None], torch.tensor([0.4], dtype=torch.float64))[0]  # (b, v)
    assert torch.allclose(e.sum(0), torch.ones(4, dtype=torch.float64), atol=1e-15)


def test_bad_input():
    with pytest.raises(ValueError, match="collides"):
        MaskedProcess(10, mask_id=3)
    mp = MaskedProcess(10)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        mp.perturb(torch.tensor([[1, 10]]), 0.5)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        mp.perturb(torch.tensor([[-1, 2]]), 0.5)
    with pytest.raises(ValueError, match="empty"):
        mp.perturb(torch.zeros(3, 0, dtype=torch.long), 0.5)
    with pytest.raises(TypeError, match="integer"):
        mp.perturb(torch.zeros(3, 2), 0.5)
    with pytest.raises(ValueError, match="maximum length"):
        check_tokens(torch.zeros(1, 9, dtype=torch.long), 4, max_len=8)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        mp.perturb(torch.zeros(1, 2, dtype=torch.long), 1.5)
    with pytest.raises(ValueError, match="vocab_size"):
        UniformProcess(1)
