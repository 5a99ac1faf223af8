import math

import numpy as np
import pytest
import torch

openmm = pytest.importorskip("openmm")
md = pytest.importorskip("mdtraj")

from sciffusion.domains.boltzmann.energies import alanine_dipeptide  # noqa: E402
from sciffusion.domains.boltzmann.free_energy import delta_f_from_grid  # noqa: E402
from sciffusion.domains.boltzmann.reference import run_md, run_metadynamics  # noqa: E402

PROPS = {"Threads": "1"}


@pytest.fixture(scope="module")
def ala():
    return alanine_dipeptide("vacuum", 300.0, constraints="HBonds")


def test_run_md_mechanics_and_accounting(ala):
    energy, top, pos = ala
    r = run_md(energy.system, pos, 300.0, steps=300, timestep=0.002, report_every=50, topology=top,
               cvs=("phi", "psi"), generator=torch.Generator().manual_seed(0), platform_properties=PROPS)
    assert r.positions_nm.shape == (6, 22, 3) and r.cv_values.shape == (6, 2)
    assert r.num_force_calls == 300 and r.num_energy_calls == 6
    np.testing.assert_allclose(r.times_ps, 0.1 * np.arange(1, 7))
    assert isinstance(r.trajectory, md.Trajectory) and r.trajectory.n_frames == 6
    # recorded CVs equal mdtraj's dihedrals of the returned trajectory (float32 inside mdtraj)
    np.testing.assert_allclose(r.cv_values[:, 0].numpy(), md.compute_phi(r.trajectory)[1][:, 0], atol=1e-4)
    # reported reduced energies are the OpenMMEnergy of the frames (same System, same units)
    u = energy(torch.from_numpy(r.positions_nm)).numpy()
    np.testing.assert_allclose(r.reduced_energies, u, rtol=1e-5)
    # same generator -> same trajectory (OpenMM's CPU platform is deterministic for a seed)
    r2 = run_md(energy.system, pos, 300.0, steps=300, timestep=0.002, report_every=50,
                generator=torch.Generator().manual_seed(0), platform_properties=PROPS)
    np.testing.assert_array_equal(r.positions_nm, r2.positions_nm)


def test_metadynamics_grid_is_transposed_to_cv_order(ala):
    """One hill only (frequency = steps): OpenMM deposits it at the CVs of the last frame, so the
    whole free-energy grid has a closed form; different grid widths per CV expose the axis order
    (getFreeEnergy() is indexed last CV first)."""
    energy, top, pos = ala
    h, w, gamma = 2.0, 0.4, 5.0
    r = run_metadynamics(energy.system, pos, 300.0, steps=100, cvs=("phi", "psi"), bias_factor=gamma,
                         height=h, width=w, frequency=100, grid_width=(31, 41), timestep=0.002,
                         report_every=100, topology=top, generator=torch.Generator().manual_seed(1),
                         platform_properties=PROPS)
    assert r.free_energy_openmm_raw.shape == (41, 31)      # OpenMM: [i_psi, i_phi]
    assert tuple(r.free_energy.shape) == (30, 40)          # here: [i_phi, i_psi], end node dropped
    assert [len(g) for g in r.grid_points] == [30, 40]
    c = r.info["cv_values_openmm"][-1]                     # the hill's centre
    torch.testing.assert_close(r.cv_values[-1], c, atol=1e-10, rtol=0)
    kT = energy.kT
    def per_axis(g, c0):
        d = (g - c0 + math.pi) % (2 * math.pi) - math.pi
        return torch.exp(-0.5 * d ** 2 / w ** 2)
    v = h * per_axis(r.grid_points[0], c[0])[:, None] * per_axis(r.grid_points[1], c[1])[None, :]
    f_exact = -(gamma / (gamma - 1)) * v / kT
    f_exact = f_exact - f_exact.min()
    # OpenMM builds the hill in float64 on the same nodes: agreement to rounding
    torch.testing.assert_close(r.free_energy, f_exact, atol=1e-9, rtol=0)
    # the untransposed grid would not even have this shape; its transpose does match
    raw_cv_order = torch.from_numpy(r.free_energy_openmm_raw.T[:-1, :-1] / kT)
    torch.testing.assert_close(raw_cv_order - raw_cv_order.min(), f_exact, atol=1e-9, rtol=0)
    assert r.num_force_calls == 100 and r.info["num_hills"] == 1
    # Delta F off the grid, a periodic basin: the hill lowers F around c, so the basin holding c
    # gains weight
    res = delta_f_from_grid(r.grid_points, r.free_energy, "B: 0 < phi < 2", "A = rest",
                            names=["phi", "psi"], periodic=[True, True])
    assert 0 < res["p_a"] < 1 and res["p_a"] + res["p_b"] == pytest.approx(1, abs=1e-12)
    # the system's own copy is untouched (OpenMM adds its bias force to the System it is given)
    assert all(not isinstance(f, openmm.CustomCVForce) for f in energy.system.getForces())


def test_metadynamics_deposits_and_history(ala):
    energy, top, pos = ala
    r = run_metadynamics(energy.system, pos, 300.0, steps=400, frequency=50, height=3.0,
                         grid_width=32, timestep=0.002, report_every=100, fes_every=200,
                         generator=torch.Generator().manual_seed(2), platform_properties=PROPS)
    assert r.info["num_hills"] == 8 and [s for s, _ in r.fes_history] == [200, 400]
    assert r.free_energy.min() == 0 and r.free_energy.max() > 0
    torch.testing.assert_close(r.fes_history[-1][1], r.free_energy)


def test_bad_input(ala):
    energy, _, pos = ala
    with pytest.raises(ValueError, match=r"shape \(22, 3\)"):
        run_md(energy.system, pos[:5], steps=10)
    with pytest.raises(ValueError, match="unknown CV"):
        run_metadynamics(energy.system, pos, steps=10, cvs=("chi",))
    with pytest.raises(ValueError, match="bias_factor"):
        run_metadynamics(energy.system, pos, steps=10, bias_factor=1.0)
    with pytest.raises(ValueError, match="temperature"):
        run_md(energy.system, pos, temperature=-5, steps=10)
    with pytest.raises(ValueError, match="exploded"):
        # 50 fs steps with flexible bonds to hydrogen blow up within a few steps
        flex, _, p = alanine_dipeptide("vacuum")
        run_md(flex.system, p, steps=200, timestep=0.05, report_every=10,
               generator=torch.Generator().manual_seed(0), platform_properties=PROPS)
