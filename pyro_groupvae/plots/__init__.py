"""Figures: every function returns a :class:`matplotlib.figure.Figure` and never changes the matplotlib backend;
:func:`save_figure` writes one to a PNG (the CLI and the run reports use it)."""
from .grids import bar_plot, histogram_plot, image_grid, line_plot, save_figure, scatter_2d

__all__ = ["save_figure", "image_grid", "line_plot", "scatter_2d", "bar_plot", "histogram_plot"]
