"""feynman_kac domain (in progress)."""
