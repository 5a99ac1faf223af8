"""Annealed importance sampling against exact answers: a correlated 5-D Gaussian's normaliser in
closed form, the 2-D double well's Delta F between x1 < 0 and x1 > 0 by quadrature (two cells),
Voronoi cells that partition each basin, exact energy-call counts and bad input."""

import math

import pytest
import torch

from sciffusion.domains.boltzmann.anneal import (annealed_importance_sampling, basin_delta_f, nearest_centre_cells,
                                                 power_schedule)
from sciffusion.domains.boltzmann.energies import DoubleWell2D, TorchEnergy

torch.set_num_threads(1)


class Gaussian(TorchEnergy):
    """u(x) = (x - m)^T P (x - m) / 2, Z = (2 pi)^(d/2) det(P)^(-1/2)."""

    def __init__(self, precision, mean):
        super().__init__((precision.shape[0],))
        self.precision, self.mean = precision, mean

    def potential(self, x):
        y = x - self.mean
        return 0.5 * ((y @ self.precision) * y).sum(-1)


class NaNEnergy(TorchEnergy):
    def __init__(self):
        super().__init__((2,))

    def potential(self, x):
        return torch.where(x[:, 0] > 1.0, torch.full_like(x[:, 0], math.nan), x.pow(2).sum(1))


def gaussian_5d():
    a = torch.randn(5, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    p = a @ a.T / 5 + 0.5 * torch.eye(5, dtype=torch.float64)
    return Gaussian(p, torch.full((5,), 0.7, dtype=torch.float64)), 2.5 * math.log(2 * math.pi) - 0.5 * float(torch.logdet(p))


@pytest.mark.parametrize("seed", [0, 1])
def test_gaussian_normaliser(seed):
    # E[w] = Z exactly; log Z-hat is within a few delta-method standard errors (5: two seeds, rare miss)
    energy, log_z = gaussian_5d()
    r = annealed_importance_sampling(energy, 2000, generator=torch.Generator().manual_seed(seed), num_temperatures=50)
    assert abs(r.log_normalizer - log_z) < 5 * r.stderr
    assert r.stderr < 0.05  # the annealing is doing work: plain importance sampling (T = 1) has ~0.16 here
    assert r.ess > 500


def test_plain_importance_sampling_is_noisier():
    energy, log_z = gaussian_5d()
    g = torch.Generator().manual_seed(3)
    one = annealed_importance_sampling(energy, 2000, generator=g, betas=torch.tensor([0.0, 1.0]), mala_steps=0,
                                       step_sizes=torch.ones(1))
    many = annealed_importance_sampling(energy, 2000, generator=g, num_temperatures=50)
    assert many.stderr < one.stderr / 2
    assert abs(one.log_normalizer - log_z) < 5 * one.stderr


def test_double_well_delta_f_two_cells():
    # E = x1^4 - 6 x1^2 - 0.5 x1 + x2^2/2 (kT = 1): Delta F(x1<0 -> x1>0) = -log(Z+/Z-) by quadrature in x1
    # (the x2 factor cancels). Tolerance: 5 bootstrap standard errors.
    energy = DoubleWell2D()
    x1 = torch.linspace(-6, 6, 200001, dtype=torch.float64)
    p = torch.exp(-(x1 ** 4 - 6 * x1 ** 2 - 0.5 * x1))
    exact = -math.log(float(torch.trapezoid(p * (x1 > 0), x1)) / float(torch.trapezoid(p * (x1 < 0), x1)))
    ra = annealed_importance_sampling(energy, 1500, generator=torch.Generator().manual_seed(1), base_std=2.0,
                                      num_temperatures=60, valid=lambda x: x[:, 0] < 0)
    rb = annealed_importance_sampling(energy, 1500, generator=torch.Generator().manual_seed(2), base_std=2.0,
                                      num_temperatures=60, valid=lambda x: x[:, 0] > 0)
    d = basin_delta_f([ra], [rb], generator=torch.Generator().manual_seed(0))
    assert abs(exact - (-1.691)) < 0.01
    assert abs(d["delta_f"] - exact) < 5 * d["stderr"]
    assert d["stderr"] < 0.1
    assert 0.35 < ra.inside < 0.65  # half the base draws fall outside each cell and get weight zero
    assert torch.isinf(ra.log_weights[~(ra.x[:, 0] < 0)]).all()


def test_energy_calls_are_exact():
    energy, _ = gaussian_5d()
    before = energy.num_calls
    r = annealed_importance_sampling(energy, 100, generator=torch.Generator().manual_seed(0), num_temperatures=10,
                                     mala_steps=2, pilot_particles=16)
    assert r.energy_calls == energy.num_calls - before
    # pilot and main run: one call per particle to start, one per proposal, no moves after the last reweighting
    assert r.energy_calls == (16 + 100) * (1 + 2 * 9)


def test_cells_partition_each_basin():
    cv = torch.rand(500, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2 * math.pi - math.pi
    centres = torch.tensor([[-2.5, 2.8], [-1.3, 1.3], [1.1, -1.1]], dtype=torch.float64)
    basin = ((cv[:, 0] > 0) & (cv[:, 0] < 2)).long()
    cell = nearest_centre_cells(cv, centres, [0, 0, 1], basin)
    assert (cell[basin == 1] == 2).all() and (cell[basin == 0] != 2).all() and (cell >= 0).all()
    # periodic: a point at phi = 3.1 is nearer the centre at phi = -2.5 (across +-pi) than the one at -1.3
    c = nearest_centre_cells(torch.tensor([[3.1, 2.8]]), centres, [0, 0, 1], torch.tensor([0]))
    assert int(c) == 0
    assert int(nearest_centre_cells(torch.tensor([[1.0, 0.0]]), centres, [0, 0, 0], torch.tensor([1]))) == -1
    with pytest.raises(ValueError, match="centre_basin"):
        nearest_centre_cells(cv, centres, [0, 1], basin)


def test_bad_input():
    energy, _ = gaussian_5d()
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="num_particles"):
        annealed_importance_sampling(energy, 0, generator=g)
    with pytest.raises(ValueError, match="betas"):
        annealed_importance_sampling(energy, 10, generator=g, betas=torch.tensor([0.0, 0.7, 0.5, 1.0]))
    with pytest.raises(ValueError, match="base_std"):
        annealed_importance_sampling(energy, 10, generator=g, base_std=-1.0)
    with pytest.raises(ValueError, match="step_sizes"):
        annealed_importance_sampling(energy, 10, generator=g, num_temperatures=3, step_sizes=torch.ones(2))
    with pytest.raises(ValueError, match="no base draw"):
        annealed_importance_sampling(energy, 10, generator=g, num_temperatures=3, step_sizes=torch.ones(3),
                                     valid=lambda x: x[:, 0] > 100)
    with pytest.raises(ValueError, match="num_temperatures"):
        power_schedule(0)
    with pytest.raises(ValueError, match="frame"):  # the Energy names the frame
        annealed_importance_sampling(NaNEnergy(), 200, generator=g, num_temperatures=3, step_sizes=torch.ones(3))
    with pytest.raises(ValueError, match="at least one"):
        basin_delta_f([], [])


def test_distinct_minima_of_the_double_well():
    # minima of x1^4 - 6 x1^2 - 0.5 x1 + x2^2/2 at x2 = 0 and the roots of 4 x1^3 - 12 x1 - 0.5 = 0 with
    # positive curvature; samples spread over both wells give exactly those two (non-periodic CVs)
    from sciffusion.domains.boltzmann.anneal import distinct_minima
    energy = DoubleWell2D()

    def minimise(x):
        y = x.reshape(1, 2).clone().requires_grad_(True)
        opt = torch.optim.LBFGS([y], max_iter=200, line_search_fn="strong_wolfe", tolerance_grad=1e-10)

        def closure():
            opt.zero_grad()
            e = energy(y).sum()
            e.backward()
            return e
        opt.step(closure)
        return y.detach().reshape(1, 2)

    x = (torch.rand(300, 1, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) - 0.5) * 5
    m = distinct_minima(minimise, lambda z: energy(z.reshape(-1, 2)), lambda z: z.reshape(-1, 2), x, bins=6,
                        tol=0.3, periodic=[False, False])
    roots = sorted(float(r.real) for r in torch.linalg.eigvals(torch.tensor(
        [[0.0, 3.0, 0.125], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=torch.float64)))  # x^3 - 3x - 1/8
    assert m["cv"].shape == (2, 2)
    assert abs(float(m["cv"][0, 0]) - roots[2]) < 1e-5 and abs(float(m["cv"][1, 0]) - roots[0]) < 1e-5  # deeper first
    assert float(m["cv"][:, 1].abs().max()) < 1e-5
