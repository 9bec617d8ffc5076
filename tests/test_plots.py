"""Figures (pyro_groupvae.plots): functions return Figures, never switch the backend, label what they draw;
saving is the caller's (save_figure); the package layers import one way."""
import subprocess
import sys

import matplotlib
import pytest
import torch
from matplotlib.figure import Figure

from pyro_groupvae.plots import bar_plot, histogram_plot, image_grid, line_plot, save_figure, scatter_2d


def _run(code):
    return subprocess.run([sys.executable, "-W", "error", "-c", code], capture_output=True, text=True, timeout=300)


def test_import_keeps_the_backend_and_prints_nothing():
    """A notebook's backend survives importing the package (the old plots module forced Agg), and no warning
    (e.g. tqdm's ipywidgets warning) is printed on import."""
    code = ("import matplotlib; matplotlib.use('svg'); "
            "import pyro_groupvae.plots, pyro_groupvae.infer, pyro_groupvae.experiments.report; "
            "print(matplotlib.get_backend())")
    res = _run(code)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "svg" and res.stderr == ""


def test_evaluation_does_not_import_runs_or_experiments():
    """Metrics are pure functions: no evaluation module imports runs, experiments or plots (even lazily), so there
    is no cycle evaluation -> runs -> experiments -> evaluation."""
    import ast
    from pathlib import Path

    import pyro_groupvae.evaluation as evaluation

    for path in Path(evaluation.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                module = "." * node.level + (node.module or "")
                assert not module.lstrip(".").startswith(("runs", "experiments", "plots")), (path.name, module)
                assert "pyro_groupvae.runs" not in module and "pyro_groupvae.experiments" not in module


def test_image_grid_returns_a_labelled_figure(tmp_path):
    images = torch.rand(3, 4, 1, 8, 8)
    frames = [["green", None, "red", "blue"]] * 3
    fig = image_grid(images, "a long title " * 6, row_labels=["a", "b", "c"], col_labels=list("wxyz"), frames=frames,
                     legend={"green": "input", "red": "swap", "blue": "reconstruction"}, caption="what cells are")
    assert isinstance(fig, Figure)
    assert fig.get_suptitle().startswith("a long title")
    assert len(fig.axes) == 12 and fig.axes[0].get_ylabel() == "a" and fig.axes[3].get_title() == "z"
    legend = fig.legends[0]
    assert [t.get_text() for t in legend.get_texts()] == ["input", "swap", "reconstruction"]
    assert legend.get_title().get_text() == "what cells are"
    # the title is not clipped: after layout it lies inside the figure and above every axes
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    box = fig._suptitle.get_window_extent(renderer)
    assert box.y1 <= fig.bbox.y1 + 1 and box.x0 >= -1 and box.x1 <= fig.bbox.x1 + 1
    assert box.y0 >= max(ax.get_window_extent(renderer).y1 for ax in fig.axes) - 1
    path = save_figure(fig, tmp_path / "sub" / "grid.png")
    assert path.stat().st_size > 1000
    assert not matplotlib.pyplot.fignum_exists(fig.number)  # save_figure closes it


@pytest.mark.parametrize("make", [
    lambda: line_plot({"a": ([1, 2, 3], [1, 4, 9])}, "x", "y", "title", errors={"a": [0.1] * 3}, hlines={"ref": 2}),
    lambda: scatter_2d(torch.randn(20, 2).numpy(), [0] * 10 + [1] * 10, "title", label_names=["zero", "one"]),
    lambda: bar_plot([1.0, 2.0, 3.0], "x", "y", "title", groups=[0, 0, 1], group_names=["g0", "g1"]),
    lambda: histogram_plot({"a": torch.randn(50).numpy(), "b": torch.randn(50).numpy()}, "x", "title"),
], ids=["line", "scatter", "bar", "histogram"])
def test_curves_have_axis_labels_and_a_legend(make):
    fig = make()
    ax = fig.axes[0]
    assert isinstance(fig, Figure) and ax.get_title() == "title"
    assert ax.get_xlabel() and ax.get_ylabel()
    assert ax.get_legend() is not None and len(ax.get_legend().get_texts()) >= 2
    matplotlib.pyplot.close(fig)


def test_swapping_grid_explains_its_frames():
    from pyro_groupvae.models import MLVAE
    from pyro_groupvae.plots.mlvae import SWAP_LEGEND, swapping_grid

    torch.manual_seed(0)
    model = MLVAE(hidden=16, content_dim=2, style_dim=2).eval()
    fig = swapping_grid(model, torch.rand(3, 1, 28, 28))
    colours = {s.get_edgecolor() for ax in fig.axes for s in ax.spines.values() if s.get_visible()}
    assert colours == {matplotlib.colors.to_rgba(c) for c in SWAP_LEGEND}
    assert [t.get_text() for t in fig.legends[0].get_texts()] == list(SWAP_LEGEND.values())
    matplotlib.pyplot.close(fig)
