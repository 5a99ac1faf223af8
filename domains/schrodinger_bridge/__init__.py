"""schrodinger_bridge domain (in progress)."""
