"""Graph and molecule generation with a joint system of SDEs over node features and adjacency
(GDSS, Jo et al. 2022). Install with ``pip install "sciffusion[graphs]"``."""
