"""Figures (PNG)."""
from .grids import bar_plot, histogram_plot, image_grid, line_plot, scatter_2d

__all__ = ["image_grid", "line_plot", "scatter_2d", "bar_plot", "histogram_plot"]
