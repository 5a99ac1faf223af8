import pytest

nx = pytest.importorskip("networkx")
Chem = pytest.importorskip("rdkit.Chem")
pytest.importorskip("matplotlib")

from sciffusion.domains.graph_sde.datasets import community_small, to_dense  # noqa: E402
from sciffusion.domains.graph_sde.plots import draw_molecules, plot_graphs  # noqa: E402


def test_plot_graphs_grid():
    from matplotlib.figure import Figure

    gs = community_small(5, seed=0)
    fig = plot_graphs(gs, ncols=3, title="community-small")
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 6  # 2 rows x 3 columns, last panel empty
    assert fig.axes[0].get_title() == f"n={gs[0].number_of_nodes()}, m={gs[0].number_of_edges()}"
    fig2 = plot_graphs(to_dense(gs[:2]), layout="circular", titles=["a", "b"])
    assert [ax.get_title() for ax in fig2.axes] == ["a", "b"]
    with pytest.raises(ValueError, match="no graphs"):
        plot_graphs([])
    with pytest.raises(ValueError, match="layout"):
        plot_graphs(gs, layout="random")


def test_draw_molecules():
    from PIL import Image

    mols = [Chem.MolFromSmiles("CCO"), None, Chem.MolFromSmiles("c1ccccc1")]
    img = draw_molecules(mols, mols_per_row=2, sub_img_size=(120, 100))
    assert isinstance(img, Image.Image) and img.size == (240, 200)
    with pytest.raises(ValueError, match="legends"):
        draw_molecules(mols, legends=["a"])
