"""CLI and tour section of boltzmann (filled in as the domain lands)."""
