"""CLI and tour section of sequence_design (filled in as the domain lands)."""
