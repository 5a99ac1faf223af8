import math
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pytest
import torch

from sciffusion.domains.boltzmann.energies import (
    DoubleWell2D, Energy, GaussianMixtureEnergy, LennardJones, ManyWell, MuellerBrown, OpenMMEnergy,
    alanine_dipeptide, kT_kj_per_mol, quadrature_probability)


def _fd_forces(energy, x, h=1e-6):
    """Central finite-difference reduced forces -du/dx, float64 (error O(h^2) ~ 1e-10 relative)."""
    flat = x.reshape(x.shape[0], -1)
    f = torch.zeros_like(flat)
    for j in range(flat.shape[1]):
        e = torch.zeros_like(flat)
        e[:, j] = h
        up = energy((flat + e).reshape(x.shape))
        dn = energy((flat - e).reshape(x.shape))
        f[:, j] = -(up - dn) / (2 * h)
    return f.reshape(x.shape)


def test_double_well_exact_figures():
    dw = DoubleWell2D()
    # The quadrature figure P(x1 > 0) = 0.844; Simpson on 400k nodes is ~1e-12 accurate.
    p = dw.exact_probability(0.0)
    assert abs(p - 0.8443071) < 1e-6
    # Delta F(x1<0 -> x1>0) = -ln(p/(1-p)) = -1.6906 kT
    assert abs(dw.exact_delta_f() - (-1.6906308)) < 1e-6
    # an independent 2-D midpoint quadrature agrees (its O(h^2) error with h=0.004 is ~1e-6)
    p2 = quadrature_probability(dw, lambda z: z[:, 0] > 0, (-4, -8), (4, 8), 2001)
    assert abs(p2 - p) < 1e-5
    # the marginal density integrates to 1 (trapezoid on a fine grid)
    x = torch.linspace(-5, 5, 20001, dtype=torch.float64)
    assert abs(torch.trapezoid(dw.exact_x1_density(x), x).item() - 1) < 1e-8


@pytest.mark.parametrize("energy", [
    DoubleWell2D(), MuellerBrown(), ManyWell(3),
    GaussianMixtureEnergy(torch.tensor([[0.0, 0.0], [3.0, 1.0]]), stds=[0.5, 1.0], weights=[1, 2]),
    LennardJones(4, 3)])
def test_forces_are_minus_gradient(energy):
    g = torch.Generator().manual_seed(0)
    x = torch.randn((5,) + energy.event_shape, generator=g, dtype=torch.float64) * 0.7
    if isinstance(energy, LennardJones):  # a jittered tetrahedron-ish cluster, no overlaps
        base = torch.tensor([[0, 0, 0], [1.1, 0, 0], [0, 1.1, 0], [0, 0, 1.1]], dtype=torch.float64)
        x = base + 0.05 * x
    u, f = energy.energy_and_forces(x)
    assert u.dtype == torch.float64 and u.shape == (5,)
    torch.testing.assert_close(u, energy(x))
    # central differences, h = 1e-6: truncation ~h^2 u''' ~ 1e-11, rounding ~eps |u|/h ~ 1e-9
    torch.testing.assert_close(f, _fd_forces(energy, x), rtol=1e-5, atol=1e-6)


def test_num_calls_counts_configurations():
    dw = DoubleWell2D()
    dw(torch.zeros(7, 2))
    dw.energy_and_forces(torch.zeros(3, 2))
    assert dw.num_calls == 10
    assert dw.reset_counter() == 10 and dw.num_calls == 0


def test_mueller_brown_minima_and_basins():
    mb = MuellerBrown()
    e = mb.potential(torch.tensor(mb.minima, dtype=torch.float64))
    # the published minimum energies (Mueller & Brown 1979), to the 3 decimals of the minima
    torch.testing.assert_close(e, torch.tensor([-146.70, -108.17, -80.77], dtype=torch.float64),
                               atol=0.05, rtol=0)
    _, f = mb.energy_and_forces(torch.tensor(mb.minima, dtype=torch.float64))
    assert (f.abs() * mb.kT < 0.5).all()  # stationary, up to the 3-decimal rounding of the minima
    p = mb.exact_basin_probabilities(601)
    p_fine = mb.exact_basin_probabilities(1201)
    assert abs(p.sum().item() - 1) < 1e-12
    torch.testing.assert_close(p, p_fine, atol=1e-5, rtol=0)  # quadrature converged
    assert (p > 0.05).all()  # at kT = 20 all three basins carry mass
    assert p[0] > p[1] > p[2]


def test_gaussian_mixture_is_normalised_density():
    gm = GaussianMixtureEnergy(torch.tensor([[0.0, 0.0], [3.0, 1.0]]), stds=[0.5, 1.0], weights=[1, 3])
    p = quadrature_probability(gm, lambda z: torch.ones(z.shape[0], dtype=torch.bool),
                               (-6, -6), (9, 8), 801)
    assert abs(p - 1) < 1e-12
    # exact density normalisation: the midpoint sum of e^{-u} times the cell area is 1 (h^2 error)
    x = torch.linspace(-6, 9, 601, dtype=torch.float64)
    y = torch.linspace(-6, 8, 601, dtype=torch.float64)
    gx, gy = torch.meshgrid(x, y, indexing="ij")
    dens = torch.exp(-gm(torch.stack([gx.reshape(-1), gy.reshape(-1)], -1)))
    z = torch.trapezoid(torch.trapezoid(dens.reshape(601, 601), y, dim=1), x)
    assert abs(z.item() - 1) < 1e-6
    torch.testing.assert_close(gm.component_probabilities(), torch.tensor([0.25, 0.75], dtype=torch.float64))


def test_many_well_factorises():
    mw = ManyWell(2)
    x = torch.tensor([[1.0, 0.5, -1.2, 0.3]], dtype=torch.float64)
    dw = DoubleWell2D()
    torch.testing.assert_close(mw(x), dw(x[:, :2]) + dw(x[:, 2:]))
    assert mw.exact_probability() == pytest.approx(dw.exact_probability(), abs=1e-14)


def test_lennard_jones_closed_forms():
    lj = LennardJones(3, 3, k_com=0.0)
    # equilateral triangle of side r_m: three pair minima, E = -3 epsilon exactly
    x = torch.tensor([[[0, 0, 0], [1, 0, 0], [0.5, math.sqrt(3) / 2, 0]]], dtype=torch.float64)
    assert lj.potential(x).item() == pytest.approx(-3.0, abs=1e-12)
    _, f = lj.energy_and_forces(x)
    assert f.abs().max() < 1e-10
    # the COM restraint: 0.5 k sum |x_i - xbar|^2
    lj2 = LennardJones(2, 3, k_com=2.0)
    x2 = torch.tensor([[[0, 0, 0], [1, 0, 0]]], dtype=torch.float64)
    assert lj2.potential(x2).item() == pytest.approx(-1.0 + 0.5 * 2.0 * 0.5, abs=1e-12)
    # translation invariance
    assert lj2(x2 + 3.0).item() == pytest.approx(lj2(x2).item(), abs=1e-12)


def test_bad_input():
    dw = DoubleWell2D()
    with pytest.raises(ValueError, match=r"shape \(B, 2\)"):
        dw(torch.zeros(3, 3))
    with pytest.raises(ValueError, match="frame 1"):
        dw(torch.tensor([[0.0, 0.0], [float("nan"), 0.0]]))
    with pytest.raises(ValueError, match="kT"):
        DoubleWell2D(kT=0)
    with pytest.raises(ValueError, match="temperature"):
        kT_kj_per_mol(-1.0)
    lj = LennardJones(2, 3)
    with pytest.raises(ValueError, match="frame 0"):
        lj(torch.zeros(1, 2, 3))  # overlapping particles: inf energy
    assert isinstance(dw, Energy)


# ------------------------------------------------------------------ OpenMM
openmm = pytest.importorskip("openmm")


@pytest.fixture(scope="module")
def ala():
    return alanine_dipeptide("vacuum", 300.0, platform="Reference")


def _frames(pos, n, scale=0.01, seed=0):
    rng = np.random.default_rng(seed)
    return pos[None] + scale * rng.standard_normal((n,) + pos.shape)


def test_openmm_energy_matches_context(ala):
    energy, top, pos = ala
    assert top.n_atoms == 22 and energy.event_shape == (22, 3)
    assert energy.kT == pytest.approx(0.00831446261815324 * 300.0)
    frames = _frames(pos, 3)
    u = energy(torch.from_numpy(frames))
    ctx = openmm.Context(energy.system, openmm.VerletIntegrator(0.001),
                         openmm.Platform.getPlatformByName("Reference"))
    for b in range(3):
        ctx.setPositions(frames[b] * openmm.unit.nanometer)
        e = ctx.getState(getEnergy=True).getPotentialEnergy().value_in_unit(openmm.unit.kilojoule_per_mole)
        assert u[b].item() == pytest.approx(e / energy.kT, rel=1e-12)
    assert energy.num_calls == 3


def test_openmm_forces_are_minus_gradient_and_autograd(ala):
    energy, _, pos = ala
    x = torch.from_numpy(_frames(pos, 1, seed=1))
    u, f = energy.energy_and_forces(x)
    # central differences with h = 1e-5 nm: truncation error ~h^2 |u'''| ~ 1e-4 (reduced), and
    # OpenMM's Reference platform is double precision, so rounding is negligible
    fd = _fd_forces(energy, x, h=1e-5)
    torch.testing.assert_close(f, fd, rtol=1e-4, atol=2e-2)
    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(energy(xg).sum(), xg)
    torch.testing.assert_close(g, -f)


def test_openmm_units_and_finiteness(ala):
    energy, _, pos = ala
    with pytest.raises(ValueError, match="angstrom"):
        energy(torch.from_numpy(pos[None] * 10.0))
    bad = _frames(pos, 3)
    bad[2, 5] = bad[2, 4]  # two atoms on top of each other: the Coulomb energy blows up
    with pytest.raises(ValueError, match="frame 2"):
        energy(torch.from_numpy(bad))
    with pytest.raises(ValueError, match=r"shape \(B, 22, 3\)"):
        energy(torch.zeros(2, 21, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="temperature"):
        OpenMMEnergy(energy.system, 0.0)
    with pytest.raises(ValueError, match="solvent"):
        alanine_dipeptide("water")


def test_openmm_executor_equals_serial(ala):
    energy, _, pos = ala
    frames = torch.from_numpy(_frames(pos, 5, seed=2))
    u_serial, f_serial = energy.energy_and_forces(frames)
    with ProcessPoolExecutor(max_workers=2) as ex:
        par = OpenMMEnergy(energy.system, 300.0, platform="Reference", executor=ex)
        u_par, f_par = par.energy_and_forces(frames)
        u_par2 = par(frames)  # second call reuses the workers' Contexts
    assert torch.equal(u_serial, u_par) and torch.equal(f_serial, f_par)
    assert torch.equal(u_serial, u_par2)
    assert par.num_calls == 10


def test_implicit_solvent_differs_from_vacuum(ala):
    energy_v, _, pos = ala
    energy_i, _, pos_i = alanine_dipeptide("implicit", 300.0, platform="Reference")
    np.testing.assert_allclose(pos, pos_i)
    x = torch.from_numpy(pos[None])
    # the OBC1 GB term is a large negative solvation energy for a polar peptide
    assert (energy_i(x) - energy_v(x)).item() < -10


def test_from_pdb_units_and_energy():
    import os

    import mdtraj as md
    import openmmtools
    from openmm import app

    from sciffusion.domains.boltzmann.energies import from_pdb

    path = os.path.join(os.path.dirname(openmmtools.__file__), "data/alanine-dipeptide-gbsa/alanine-dipeptide.pdb")
    energy, top, pos = from_pdb(path, temperature=310.0, platform="Reference")
    # the PDB is in angstrom; mdtraj reads it in nm, as do we
    np.testing.assert_allclose(pos, md.load(path).xyz[0], atol=1e-6)
    assert top.n_atoms == 22 and energy.kT == pytest.approx(0.00831446261815324 * 310.0)
    ff = app.ForceField("amber14-all.xml")
    pdb = app.PDBFile(path)
    system = ff.createSystem(pdb.topology, nonbondedMethod=app.NoCutoff, constraints=None)
    ctx = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    ctx.setPositions(pdb.positions)
    e = ctx.getState(getEnergy=True).getPotentialEnergy().value_in_unit(openmm.unit.kilojoule_per_mole)
    assert energy(torch.from_numpy(pos[None])).item() == pytest.approx(e / energy.kT, rel=1e-9)


def test_lj13_icosahedral_global_minimum():
    """Relaxing an icosahedron reaches the LJ-13 global minimum -44.326801 epsilon (Wales & Doye
    1997, Cambridge Cluster Database; the 12-6 potential written with its minimum at r_m)."""
    phi = (1 + 5 ** 0.5) / 2
    v = []
    for s1 in (1, -1):
        for s2 in (1, -1):
            v += [(0, s1, s2 * phi), (s1, s2 * phi, 0), (s2 * phi, 0, s1)]
    v = torch.tensor(v, dtype=torch.float64)
    v = v / v.norm(dim=-1, keepdim=True)
    x = torch.cat([torch.zeros(1, 3, dtype=torch.float64), 0.96 * v])[None].requires_grad_(True)
    lj = LennardJones(13, 3, k_com=0.0)
    opt = torch.optim.LBFGS([x], max_iter=500, tolerance_grad=1e-12, tolerance_change=1e-15,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        e = lj.potential(x).sum()
        e.backward()
        return e

    opt.step(closure)
    # the database quotes 6 decimals
    assert lj.potential(x.detach()).item() == pytest.approx(-44.326801, abs=2e-6)
    assert lj.forces(x.detach()).abs().max() < 1e-6
