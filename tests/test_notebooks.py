"""Every notebook in notebooks/ runs top to bottom (at the small size it is written for), and every
cell that draws a figure shows it.

Notebooks are what users open first; a notebook that no longer runs is a broken promise, so
each one is executed here with a real kernel and any cell error fails the test. No matplotlib
backend is forced: the kernel's own (inline) backend is used, as in Jupyter, so a library or
notebook that picks a non-interactive backend (``matplotlib.use("Agg")``), or a cell whose figure
never reaches its output, fails here: every cell that draws (``plt.``, ``plot_...(``, ``fig``)
must have an ``image/png`` output.
"""

import re
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
DRAWS = re.compile(r"\bplt\.|\bplot_\w*\(|\bfig\b")


def _draws(source: str) -> bool:
    code = "\n".join(line.split("#", 1)[0] for line in source.splitlines())
    return bool(DRAWS.search(code))


def _has_image(cell) -> bool:
    return any("image/png" in (o.get("data") or {}) for o in cell.get("outputs", []))


def test_drawing_cells_are_recognised():
    """The check itself: drawing cells are found, others are not (so the image test can fail)."""
    assert _draws("fig, ax = plt.subplots()\nax.plot(x)")
    assert _draws("plot_snapshots(train, pred);")
    assert _draws("fkc.plot_diagnostics()")
    assert not _draws("from x.plots import plot_snapshots, plot_trajectories\nprint(1)")
    assert not _draws("x = 1  # plt.show() in a comment")
    assert not _has_image({"outputs": [{"output_type": "execute_result", "data": {"text/plain": "<Figure>"}}]})


@pytest.mark.skipif(not NOTEBOOKS, reason="no notebooks yet")
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's inline backend, as in Jupyter
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    code = [c for c in nb.cells if c.cell_type == "code"]
    errors = [o for c in code for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, f"{path.name}: {errors[0].get('ename')}: {errors[0].get('evalue')}"
    assert any(c.get("outputs") for c in code), "notebook produced no output"
    blank = [i for i, c in enumerate(code) if _draws(c.source) and not _has_image(c)]
    assert not blank, (f"{path.name}: code cell(s) {blank} draw a figure but show no image; first: "
                       f"{code[blank[0]].source[:120]!r}")
