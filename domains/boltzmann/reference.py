r"""References through OpenMM itself: plain Langevin MD and well-tempered metadynamics.

Both run on the very ``openmm.System`` an :class:`~sciffusion.domains.boltzmann.energies.OpenMMEnergy`
wraps, with a ``LangevinMiddleIntegrator`` (Zhang et al. 2019, BAOAB-type), and report the same
accounting as the samplers: one energy+force evaluation per MD step (``num_force_calls =
steps``), plus one energy evaluation per reported frame (``num_energy_calls``).

Metadynamics is OpenMM's own ``openmm.app.Metadynamics`` (well-tempered, Barducci et al. 2008)
on torsion CVs expressed as ``CustomTorsionForce("theta")`` bias variables. Two pitfalls of that
class, handled here and tested:

* ``getFreeEnergy()`` is indexed **last CV first** (its grid has shape
  ``(gridWidth_k, ..., gridWidth_1)``); :func:`run_metadynamics` transposes it to CV order
  ``F[i_phi, i_psi]``, the order of every other grid in this package.
* its grid nodes are ``linspace(min, max, gridWidth)`` *including both ends* (its docstring says
  ``min + i (max - min)/gridWidth``, but the code uses ``numpy.linspace(0, 1, gridWidth)``); for
  periodic CVs the last node duplicates the first and is dropped here.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from .cvs import ALANINE_PHI, ALANINE_PSI, CVSet, Dihedral
from .energies import _require, kT_kj_per_mol


@dataclass
class ReferenceRun:
    """What an MD or metadynamics reference run returns.

    Attributes:
        positions_nm: ``(F, N, 3)`` frames, nm.
        times_ps: ``(F,)`` simulation time of each frame.
        reduced_energies: ``(F,)`` potential energy / kT of each frame (without the metad bias).
        cv_values: ``(F, k)`` CVs of each frame (torch float64), ``cv_names`` their names.
        trajectory: an ``mdtraj.Trajectory`` of the frames (when a topology was given).
        num_force_calls: MD steps integrated (one energy+force evaluation each).
        num_energy_calls: extra energy evaluations for reporting (one per frame).
        wall_s: wall-clock seconds of the run.
        free_energy: metadynamics only -- the bias grid's free energy in kT, CV order
            ``F[i_0, i_1, ...]``, min 0; ``grid_points`` its nodes per CV.
        free_energy_openmm_raw: ``getFreeEnergy()`` as OpenMM returns it (kJ/mol, last CV first).
        fes_history: metadynamics only -- ``[(step, F), ...]`` every ``fes_every`` steps.
    """

    positions_nm: np.ndarray
    times_ps: np.ndarray
    reduced_energies: np.ndarray
    cv_values: torch.Tensor
    cv_names: list
    trajectory: Any = None
    num_force_calls: int = 0
    num_energy_calls: int = 0
    wall_s: float = 0.0
    temperature: float = 300.0
    free_energy: torch.Tensor | None = None
    grid_points: list | None = None
    free_energy_openmm_raw: np.ndarray | None = None
    fes_history: list = field(default_factory=list)
    info: dict = field(default_factory=dict)


def _copy_system(system):
    mm = _require("openmm")
    if not isinstance(system, mm.System):
        raise TypeError(f"system must be an openmm.System, got {type(system).__name__}")
    return mm.XmlSerializer.deserialize(mm.XmlSerializer.serialize(system))


def _omm_topology(topology, n_atoms):
    app = _require("openmm.app")
    if topology is None:
        top = app.Topology()
        chain = top.addChain()
        res = top.addResidue("UNK", chain)
        elem = app.Element.getBySymbol("C")
        for i in range(n_atoms):
            top.addAtom(f"X{i}", elem, res)
        return top, None
    if hasattr(topology, "to_openmm"):  # mdtraj
        return topology.to_openmm(), topology
    md = _require("mdtraj")
    return topology, md.Topology.from_openmm(topology)


def _seed(generator: torch.Generator | None) -> int:
    # OpenMM takes an int seed (0 would mean "pick one at random"); draw it from the generator
    return int(torch.randint(1, 2 ** 30, (1,), generator=generator))


def _check_positions(positions, n_atoms):
    pos = np.asarray(positions, dtype=np.float64)
    if pos.shape != (n_atoms, 3):
        raise ValueError(f"positions must have shape ({n_atoms}, 3) in nm, got {pos.shape}")
    if not np.isfinite(pos).all():
        raise ValueError("positions contain non-finite values")
    return pos


def _resolve_torsions(cvs) -> tuple[list[tuple[int, int, int, int]], list[str]]:
    named = {"phi": ALANINE_PHI, "psi": ALANINE_PSI}
    atoms, names = [], []
    if isinstance(cvs, CVSet):
        cvs = list(cvs.cvs)
    for c in cvs:
        if isinstance(c, str):
            if c not in named:
                raise ValueError(f"unknown CV name {c!r}; expected 'phi', 'psi' (alanine dipeptide), "
                                 "a 4-tuple of atom indices or a Dihedral")
            atoms.append(tuple(named[c]))
            names.append(c)
        elif isinstance(c, Dihedral):
            atoms.append(c.atoms)
            names.append(c.name)
        else:
            t = tuple(int(a) for a in c)
            if len(t) != 4:
                raise ValueError(f"a torsion CV needs 4 atom indices, got {c!r}")
            atoms.append(t)
            names.append(f"dihedral{t}")
    if not 1 <= len(atoms) <= 3:
        raise ValueError(f"openmm.app.Metadynamics takes 1 to 3 CVs, got {len(atoms)}")
    return atoms, names


def _simulate(system, positions, temperature, steps, timestep_ps, report_every, friction_per_ps,
              platform, platform_properties, topology, generator, minimize, meta=None,
              cv_atoms=(), cv_names=(), fes_every=None, progress=False):
    mm = _require("openmm")
    app = _require("openmm.app")
    unit = mm.unit
    steps, report_every = int(steps), int(report_every)
    if steps < 1 or report_every < 1:
        raise ValueError(f"steps and report_every must be >= 1, got {steps}, {report_every}")
    kT = kT_kj_per_mol(temperature)
    n_atoms = system.getNumParticles()
    pos = _check_positions(positions, n_atoms)
    integrator = mm.LangevinMiddleIntegrator(temperature * unit.kelvin, friction_per_ps / unit.picosecond,
                                             timestep_ps * unit.picoseconds)
    seed = _seed(generator)
    integrator.setRandomNumberSeed(seed)
    omm_top, md_top = _omm_topology(topology, n_atoms)
    sim = app.Simulation(omm_top, system, integrator, mm.Platform.getPlatformByName(platform),
                         dict(platform_properties or {}))
    sim.context.setPositions(pos)
    if minimize:
        sim.minimizeEnergy()
    sim.context.setVelocitiesToTemperature(temperature * unit.kelvin, seed)
    groups = None
    if meta is not None:
        groups = set(range(32)) - {meta._force.getForceGroup()}
    frames, times, energies, fes_history, cv_omm = [], [], [], [], []
    done = 0
    start = time.perf_counter()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc="metadynamics" if meta is not None else "MD", unit="step")
    while done < steps:
        n = min(report_every, steps - done)
        try:
            if meta is not None:
                meta.step(sim, n)
            else:
                sim.step(n)
        except mm.OpenMMException as err:  # e.g. "Particle coordinate is NaN"
            raise ValueError(f"the simulation exploded between steps {done} and {done + n} "
                             f"(frame {len(frames)}): {err}; lower the timestep or minimise first") from err
        done += n
        st = sim.context.getState(getPositions=True, getEnergy=True,
                                  **({"groups": groups} if groups is not None else {}))
        e = st.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
        if not math.isfinite(e):
            raise ValueError(f"the simulation exploded: non-finite energy at frame {len(frames)} "
                             f"(step {done}); lower the timestep or minimise first")
        frames.append(st.getPositions(asNumpy=True).value_in_unit(unit.nanometer))
        times.append(done * timestep_ps)
        energies.append(e / kT)
        if meta is not None:
            cv_omm.append(list(meta.getCollectiveVariables(sim)))
        if meta is not None and fes_every and done % int(fes_every) == 0:
            fes_history.append((done, _metad_fes(meta, kT)[1]))
        if bar is not None:
            bar.update(n)
    if bar is not None:
        bar.close()
    wall = time.perf_counter() - start
    positions_nm = np.asarray(frames, dtype=np.float64)
    traj = None
    if md_top is not None:
        md = _require("mdtraj")
        traj = md.Trajectory(positions_nm, md_top, time=np.asarray(times))
    if cv_atoms:
        cvset = CVSet([Dihedral(*a, name=nm) for a, nm in zip(cv_atoms, cv_names)])
        cv = cvset(torch.from_numpy(positions_nm))
    else:
        cv = torch.zeros(len(frames), 0, dtype=torch.float64)
    run = ReferenceRun(positions_nm=positions_nm, times_ps=np.asarray(times),
                       reduced_energies=np.asarray(energies), cv_values=cv, cv_names=list(cv_names),
                       trajectory=traj, num_force_calls=steps, num_energy_calls=len(frames),
                       wall_s=wall, temperature=float(temperature), fes_history=fes_history,
                       info={"seed": seed, "timestep_ps": timestep_ps, "friction_per_ps": friction_per_ps,
                             "steps": steps, "report_every": report_every, "platform": platform,
                             "minimized": bool(minimize)})
    if meta is not None:
        run.info["cv_values_openmm"] = torch.tensor(cv_omm, dtype=torch.float64)
    return run


def run_md(system, positions, temperature: float = 300.0, steps: int = 1000,
           timestep: float = 0.001, report_every: int = 100, friction: float = 1.0,
           platform: str = "CPU", platform_properties: dict | None = None, topology=None,
           cvs: Sequence = (), generator: torch.Generator | None = None, minimize: bool = False,
           progress: bool = False) -> ReferenceRun:
    r"""Plain Langevin MD (``LangevinMiddleIntegrator``) on a copy of ``system``.

    Args:
        system: ``openmm.System`` (not modified). Use one built with ``constraints="HBonds"`` for
            a 2 fs step; a flexible system needs ~0.5-1 fs.
        positions: ``(N, 3)`` starting positions in nm.
        temperature: kelvin.
        steps: MD steps (= energy+force calls).
        timestep: ps. report_every: steps between frames. friction: 1/ps.
        topology: mdtraj or OpenMM topology (for the returned ``mdtraj.Trajectory``).
        cvs: torsion CVs to record per frame: ``"phi"``/``"psi"`` (alanine dipeptide), 4-tuples
            of atom indices or :class:`~sciffusion.domains.boltzmann.cvs.Dihedral` objects.
        generator: seeds OpenMM's integrator and initial velocities.
        minimize: run ``minimizeEnergy`` first (its evaluations are not counted).
    """
    atoms, names = _resolve_torsions(cvs) if len(cvs) else ([], [])
    return _simulate(_copy_system(system), positions, temperature, steps, timestep, report_every,
                     friction, platform, platform_properties, topology, generator, minimize,
                     cv_atoms=atoms, cv_names=names, progress=progress)


def _metad_fes(meta, kT):
    """OpenMM's free-energy grid as (raw kJ/mol last-CV-first, CV-order reduced grid min 0)."""
    raw = np.asarray(meta.getFreeEnergy().value_in_unit(_require("openmm").unit.kilojoule_per_mole))
    f = np.transpose(raw, tuple(reversed(range(raw.ndim))))  # -> F[i_0, i_1, ...]
    for d, v in enumerate(meta.variables):
        if v.periodic:  # the last node duplicates the first
            f = np.take(f, np.arange(v.gridWidth - 1), axis=d)
    f = torch.from_numpy(np.ascontiguousarray(f / kT))
    return raw, f - f.min()


def run_metadynamics(system, positions, temperature: float = 300.0, steps: int = 10000,
                     cvs: Sequence = ("phi", "psi"), bias_factor: float = 6.0,
                     height: float = 1.2, width: float = 0.35, frequency: int = 500,
                     grid_width: int | Sequence[int] = 64, timestep: float = 0.001,
                     report_every: int = 100, friction: float = 1.0, platform: str = "CPU",
                     platform_properties: dict | None = None, topology=None,
                     generator: torch.Generator | None = None, minimize: bool = False,
                     fes_every: int | None = None, progress: bool = False) -> ReferenceRun:
    r"""Well-tempered metadynamics through ``openmm.app.Metadynamics`` on torsion CVs.

    Each CV is a ``CustomTorsionForce("theta")`` (one torsion) wrapped as a periodic
    ``BiasVariable`` on :math:`[-\pi, \pi]`; hills of height ``height`` (kJ/mol, OpenMM's unit;
    1.2 kJ/mol = 0.48 kT at 300 K) and width ``width`` (rad) are added every ``frequency`` steps
    with the well-tempered decay :math:`h = h_0 e^{-V/((\gamma-1)k_BT)}`, ``gamma = bias_factor``.
    The system passed in is copied (OpenMM adds its bias force to the System it is given).

    Returns:
        :class:`ReferenceRun` with ``free_energy`` (kT, CV order ``F[i_phi, i_psi]``, min 0) on
        ``grid_points`` (``grid_width - 1`` nodes per periodic CV, the duplicate end dropped),
        the raw OpenMM grid, CV time series (this package's torch dihedrals of the frames;
        OpenMM's own CV values in ``info["cv_values_openmm"]``), and ``num_force_calls = steps``.
    """
    mm = _require("openmm")
    app = _require("openmm.app")
    atoms, names = _resolve_torsions(cvs)
    if not float(bias_factor) > 1:
        raise ValueError(f"bias_factor must be > 1, got {bias_factor}")
    if not (float(height) > 0 and float(width) > 0 and int(frequency) >= 1):
        raise ValueError("height and width must be > 0 and frequency >= 1")
    widths = [int(grid_width)] * len(atoms) if np.ndim(grid_width) == 0 else [int(g) for g in grid_width]
    if len(widths) != len(atoms) or min(widths) < 3:
        raise ValueError(f"grid_width must be >= 3, one per CV, got {grid_width}")
    sys_copy = _copy_system(system)
    variables = []
    for a, gw in zip(atoms, widths):
        force = mm.CustomTorsionForce("theta")
        force.addTorsion(*a, [])
        variables.append(app.BiasVariable(force, -math.pi, math.pi, float(width), True, gridWidth=gw))
    meta = app.Metadynamics(sys_copy, variables, float(temperature) * mm.unit.kelvin, float(bias_factor),
                            float(height) * mm.unit.kilojoules_per_mole, int(frequency))
    run = _simulate(sys_copy, positions, temperature, steps, timestep, report_every, friction, platform,
                    platform_properties, topology, generator, minimize, meta=meta, cv_atoms=atoms,
                    cv_names=names, fes_every=fes_every, progress=progress)
    kT = kT_kj_per_mol(temperature)
    raw, f = _metad_fes(meta, kT)
    run.free_energy = f
    run.free_energy_openmm_raw = raw
    run.grid_points = [torch.linspace(-math.pi, math.pi, gw, dtype=torch.float64)[:-1] for gw in widths]
    run.info.update({"bias_factor": float(bias_factor), "height_kj_per_mol": float(height),
                     "width_rad": float(width), "frequency": int(frequency), "grid_width": widths,
                     "num_hills": int(steps) // int(frequency)})
    return run
