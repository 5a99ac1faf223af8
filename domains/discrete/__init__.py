"""discrete domain (in progress)."""
