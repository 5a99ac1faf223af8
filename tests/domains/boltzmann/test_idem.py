"""iDEM: the Monte-Carlo noised score against the closed form for a Gaussian target, and a short
training run."""

import pytest
import torch

from sciffusion.domains.boltzmann.idem import IDEMSampler, dem_score

S = 1.5


def gauss(x):
    return 0.5 * (x ** 2).sum(-1) / S ** 2


def test_dem_score_matches_the_noised_gaussian_score():
    g = torch.Generator().manual_seed(0)
    xt = torch.randn(6, 2, generator=g, dtype=torch.float64)
    sig = torch.tensor([0.1, 0.3, 0.7, 1.0, 2.0, 3.0], dtype=torch.float64)
    s = dem_score(gauss, xt, sig, 50000, g)
    exact = -xt / (S ** 2 + sig[:, None] ** 2)  # N(0, S^2) convolved with N(0, sigma^2)
    # a ratio estimate from 50000 draws: its relative error is ~1e-2 at worst (sigma = 3 >> S)
    assert torch.allclose(s, exact, atol=0.02), (s, exact)


def test_idem_learns_a_gaussian():
    smp = IDEMSampler((2,), sigma_max=3.0, num_mc=32, num_steps=40, hidden=64, depth=2, lr=2e-3)
    g = torch.Generator().manual_seed(0)
    smp.fit(gauss, iterations=10, generator=g, samples_per_iteration=128, inner_steps=20, batch_size=64)
    assert smp.energy_evaluations == 10 * 20 * 64 * 32
    x = smp.sample(3000, g)
    # a 10-iteration iDEM: 15% on the std (MC error of the std alone is 1.3%)
    assert torch.allclose(x.std(0), torch.full((2,), S, dtype=torch.float64), rtol=0.15), x.std(0)


def test_bad_input():
    with pytest.raises(ValueError, match="num_mc"):
        IDEMSampler((2,), num_mc=0)
    with pytest.raises(TypeError, match="generator"):
        IDEMSampler((2,), num_steps=4, hidden=8, depth=1).sample(4, None)
