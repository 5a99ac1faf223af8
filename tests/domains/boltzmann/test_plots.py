import math

import matplotlib
import pytest
import torch

matplotlib.use("Agg")  # tests pick the backend; the library never does

from sciffusion.domains.boltzmann.bias import WellTemperedBias  # noqa: E402
from sciffusion.domains.boltzmann.plots import plot_cv_histograms, plot_fes, plot_ramachandran  # noqa: E402


def test_plots_return_figures():
    import matplotlib.pyplot as plt

    g = torch.Generator().manual_seed(0)
    s = (torch.rand(500, 2, generator=g, dtype=torch.float64) * 2 - 1) * math.pi
    fig = plot_ramachandran(s, torch.zeros(500), bins=20)
    assert isinstance(fig, matplotlib.figure.Figure)
    # axes orientation: x is the first CV (phi), y the second (psi); the image is F transposed
    b = WellTemperedBias(2, bins=[30, 20], sigma=0.3, height=1.0, gamma=5.0, periodic=True)
    b.deposit(torch.tensor([[1.0, -2.0]]))
    pts, f = b.free_energy()
    fig2 = plot_fes(pts, f, basins=["B: 0 < phi < 2"])
    mesh = fig2.axes[0].collections[0]
    assert mesh.get_array().shape == (20, 30)  # rows = psi, columns = phi
    fig3 = plot_cv_histograms(s, torch.zeros(500), names=["phi", "psi"], periodic=[True, True],
                              reference=[lambda x: torch.full_like(x, 1 / (2 * math.pi)), None])
    assert len(fig3.axes) == 2
    with pytest.raises(ValueError, match="2-D"):
        plot_fes(pts, f[0])
    for fg in (fig, fig2, fig3):
        plt.close(fg)
