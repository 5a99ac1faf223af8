"""DNA/RNA design with soft value-based decoding (SVDD, Li et al. 2024) over a masked discrete
diffusion model. Install with ``pip install "sciffusion[sequences]"``."""
