"""Boltzmann sampling of molecules from energies alone, with a well-tempered collective-variable
bias, reweighting and free energies (Nam et al. 2025, WT-ASBS). Install with
``pip install "sciffusion[molecules]"`` (OpenMM, openmmtools, mdtraj and pymbar are imported only
where they are needed).

* energies: :class:`Energy` (reduced energies E/kT and forces of a batch), analytic potentials
  (:class:`DoubleWell2D`, :class:`MuellerBrown`, :class:`GaussianMixtureEnergy`,
  :class:`LennardJones`) and :class:`OpenMMEnergy` / :func:`alanine_dipeptide`;
* the bias: :class:`WellTemperedBias` (Gaussian hills on a CV grid, well-tempered decay);
* the sampler: :class:`AdjointSampler` (Adjoint Sampling, Havens et al. 2025; ASBS, Liu et al.
  2025) trained by adjoint matching on a replay buffer, with exact path weights;
  :class:`IDEMSampler` (iDEM, Akhound-Sadegh et al. 2024) for cheap analytic energies;
* CVs (:class:`Dihedral`, :class:`CVSet`, :func:`phi_psi_alanine`, ...), free energies
  (:class:`Basin`, :func:`delta_f`, :func:`mbar_delta_f`) and OpenMM references
  (:func:`run_md`, :func:`run_metadynamics`);
* the well-tempered loop: :func:`run_wtasbs` (rounds, frozen final stage, weights, checkpoints);
* internal coordinates: :class:`ZMatrix` (NeRF, exact volume element) and
  :class:`InternalCoordinateEnergy` (the Boltzmann density over standardized bonds, angles and
  periodic torsions, for the sampler);
* refinement: :func:`resample_move` (systematic resampling of weighted samples, then MALA moves
  on the frozen biased or unbiased target, :func:`mala`);
* basin free energies: :func:`distinct_minima` (minima reached from a sampler's samples),
  :func:`nearest_centre_cells` and :func:`annealed_importance_sampling` of each cell from its
  Laplace approximation, combined by :func:`basin_delta_f`; :func:`cell_free_energy` runs the
  whole estimate from a sampler's samples.
"""

from .cvs import CV, Coordination, CVSet, Dihedral, Distance, dihedral_angle, phi_psi_alanine
from .free_energy import Basin, delta_f, delta_f_from_grid, free_energy_surface, mbar_delta_f
from .bias import WellTemperedBias, effective_sample_size, log_importance_weights
from .energies import (DoubleWell2D, Energy, GaussianMixtureEnergy, LennardJones, ManyWell, MuellerBrown,
                       OpenMMEnergy, TorchEnergy, alanine_dipeptide, torsion_chain, torsion_chain_log_marginal)
from .idem import IDEMSampler, dem_score
from .internal import InternalCoordinateEnergy, InternalCV, ZMatrix
from .sampler import AdjointSampler, ChiralityRestraint, ReplayBuffer, SampleResult, energy_and_forces
from .reference import ReferenceRun, run_md, run_metadynamics
from .refine import RefineResult, mala, resample_move
from .anneal import (AISResult, CellFreeEnergy, alanine_cell_options, annealed_importance_sampling, basin_delta_f,
                     cell_free_energy, distinct_minima, nearest_centre_cells)
from .wtasbs import BiasPotential, WTResult, run_wtasbs, sample_unbiased

__all__ = ["CV", "Coordination", "CVSet", "Dihedral", "Distance", "dihedral_angle", "phi_psi_alanine", "Basin",
           "delta_f", "delta_f_from_grid", "free_energy_surface", "mbar_delta_f", "ReferenceRun", "run_md",
           "run_metadynamics", "Energy", "TorchEnergy", "DoubleWell2D", "MuellerBrown", "GaussianMixtureEnergy", "ManyWell",
           "LennardJones", "OpenMMEnergy", "alanine_dipeptide", "torsion_chain",
           "torsion_chain_log_marginal", "WellTemperedBias", "log_importance_weights",
           "effective_sample_size", "AdjointSampler", "ChiralityRestraint", "ReplayBuffer", "SampleResult",
           "energy_and_forces", "IDEMSampler", "dem_score", "BiasPotential", "WTResult", "run_wtasbs", "sample_unbiased",
           "ZMatrix", "InternalCoordinateEnergy", "InternalCV", "RefineResult", "mala", "resample_move",
           "AISResult", "annealed_importance_sampling", "basin_delta_f", "distinct_minima", "nearest_centre_cells",
           "CellFreeEnergy", "cell_free_energy", "alanine_cell_options"]
