"""Boltzmann sampling of molecules from energies alone, with a well-tempered collective-variable
bias, reweighting and free energies (Nam et al. 2025, WT-ASBS). Install with
``pip install "sciffusion[molecules]"``."""
