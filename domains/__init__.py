"""sciffusion domain modules."""
