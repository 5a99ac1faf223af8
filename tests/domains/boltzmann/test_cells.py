"""``cell_free_energy`` end to end against an exact answer: a four-atom chain in OpenMM (harmonic
bonds and angles, a three-fold torsion), whose Boltzmann torsion marginal is exactly
exp(-U_t(phi)/kT) (the volume element prod r^2 sin(theta) and the bond and angle energies do not
depend on phi), so Delta F between the trans and gauche basins is a 1-D quadrature."""

import math

import pytest
import torch

openmm = pytest.importorskip("openmm")

from sciffusion.domains.boltzmann.anneal import alanine_cell_options, cell_free_energy  # noqa: E402
from sciffusion.domains.boltzmann.cvs import Dihedral  # noqa: E402
from sciffusion.domains.boltzmann.energies import (TORSION_CHAIN_BONDS, torsion_chain,  # noqa: E402
                                                   torsion_chain_log_marginal)
from sciffusion.domains.boltzmann.internal import ZMatrix  # noqa: E402

torch.set_num_threads(1)
T = 300.0
K1, K3 = 3.0, 4.0  # kJ/mol: U_t = K1 (1 + cos phi) + K3 (1 + cos 3 phi); trans at pi, gauche near +-1.12


def exact_delta_f(n=200_001):
    phi = torch.linspace(-math.pi, math.pi, n, dtype=torch.float64)
    logp = torsion_chain_log_marginal(phi, T, K1, K3)
    gauche = phi.abs() < 2 * math.pi / 3
    return float(torch.logsumexp(logp[~gauche], 0) - torch.logsumexp(logp[gauche], 0))


def chain():
    return torsion_chain(T, K1, K3, platform_properties={"Threads": "1"}), ZMatrix(4, TORSION_CHAIN_BONDS)


def samples(zm, phis, generator):
    q = torch.tensor([[0.153, 0.153, 0.153, 1.95, 1.95, p] for p in phis], dtype=torch.float64)
    q[:, :5] += 0.01 * torch.randn(q[:, :5].shape, generator=generator, dtype=torch.float64)
    return zm.to_cartesian(q)


def gauche(cv):
    return cv[:, 0].abs() < 2 * math.pi / 3


def test_trans_gauche_delta_f_is_exact():
    energy, zm = chain()
    cv = Dihedral(0, 1, 2, 3, name="phi")
    g = torch.Generator().manual_seed(0)
    x = samples(zm, [3.0, -3.0, 1.2, 0.9, -1.1, 2.9], g)
    res = cell_free_energy(energy, zm, x, cv, gauche, generator=g, num_particles=300, num_temperatures=50)
    # the three minima, one cell each: trans in A, both gauche in B
    assert res.minima["x"].shape[0] == 3
    assert sorted(res.minima["basin"].tolist()) == [0, 1, 1]
    centres = res.minima["cv"][:, 0]
    assert float(centres[res.minima["basin"] == 0].abs().min()) > 3.0
    phi = torch.linspace(0.0, 2 * math.pi / 3, 20_001, dtype=torch.float64)
    g_min = float(phi[(K1 * torch.cos(phi) + K3 * torch.cos(3 * phi)).argmin()])  # the gauche minimum of U_t
    assert torch.allclose(centres[res.minima["basin"] == 1].abs(), torch.full((2,), g_min, dtype=torch.float64),
                          atol=1e-3)
    exact = exact_delta_f()
    # 4 bootstrap standard errors (the particles are independent): a 6e-5 two-sided normal tail
    assert res.stderr < 0.05
    assert abs(res.delta_f - exact) < 4 * res.stderr, (res.delta_f, res.stderr, exact)
    assert math.isfinite(res.laplace_delta_f)
    assert res.energy_calls["ais"] == sum(r.energy_calls for r in res.runs)
    # the minima reused: no minimisation, a fresh AIS with another stream
    again = cell_free_energy(energy, zm, x, cv, gauche, generator=torch.Generator().manual_seed(1),
                             minima=res.minima, num_particles=150, num_temperatures=30)
    assert again.energy_calls["minimise"] == 0
    assert abs(again.delta_f - exact) < 4 * again.stderr


def test_a_missed_basin_and_bad_input_are_named():
    energy, zm = chain()
    cv = Dihedral(0, 1, 2, 3, name="phi")
    g = torch.Generator().manual_seed(0)
    x = samples(zm, [3.0, -3.0, 2.9], g)  # trans only
    with pytest.raises(ValueError, match="needs a cell in B"):
        cell_free_energy(energy, zm, x, cv, gauche, generator=g)
    with pytest.raises(ValueError, match="restrain"):
        cell_free_energy(energy, zm, x, cv, gauche, generator=g, restrain={0: 1.0})
    with pytest.raises(TypeError, match="zmatrix"):
        cell_free_energy(energy, None, x, cv, gauche, generator=g)
    with pytest.raises(ValueError, match="minima"):
        cell_free_energy(energy, zm, x, cv, gauche, generator=g, minima={"x": x})


def test_alanine_cell_options():
    pytest.importorskip("openmmtools")
    from sciffusion.domains.boltzmann.energies import alanine_dipeptide

    energy, top, pos = alanine_dipeptide("vacuum")
    zm = ZMatrix.from_topology(top)
    opts = alanine_cell_options(zm, energy, pos)
    x = torch.as_tensor(pos, dtype=torch.float64)[None]
    assert opts["keep"](x).tolist() == [True]
    assert opts["keep"](-x).tolist() == [False]  # the mirror image: the other handedness
    q = zm.to_internal(x)
    omega = zm.torsion_index(1, 4, 6, 8)
    q[:, omega] = 0.0  # a cis amide
    assert opts["keep"](zm.to_cartesian(q)).tolist() == [False]
    st = zm.slices()[2]
    assert sorted(opts["restrain"].values()).count(math.pi / 3) == 3
    assert all(st.start <= i < st.stop for i in opts["restrain"])
    with pytest.raises(ValueError, match="alanine"):
        alanine_cell_options(ZMatrix(22, [(i, i + 1) for i in range(21)]), energy, pos)


def test_torsion_chain_energy_is_the_torsion_term_at_rest():
    """At the bonds' and angles' rest values the reduced energy is U_t(phi)/kT alone, phi measured by
    the package's dihedral (atoms 0-1-2-3) equal to the Z-matrix torsion that built it."""
    energy, zm = chain()
    phis = torch.tensor([math.pi, 2.0, 1.12, 0.3, -0.7, -2.5], dtype=torch.float64)
    q = torch.tensor([[0.153, 0.153, 0.153, 1.95, 1.95, float(p)] for p in phis], dtype=torch.float64)
    x = zm.to_cartesian(q)
    measured = Dihedral(0, 1, 2, 3)(x)
    assert torch.allclose(torch.remainder(measured - phis + math.pi, 2 * math.pi) - math.pi,
                          torch.zeros_like(phis), atol=1e-9)
    assert torch.allclose(energy(x), -torsion_chain_log_marginal(phis, T, K1, K3), atol=1e-6)  # OpenMM CPU platform: mixed precision
