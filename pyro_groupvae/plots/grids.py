"""Generic figures: image grids (swapping, interpolation, traversals, samples), curves, scatters, bars and
histograms.

Every function returns a :class:`matplotlib.figure.Figure` made with ``pyplot`` (so it shows inline in Jupyter and
with ``plt.show()``) and leaves the backend alone; :func:`save_figure` writes one to a PNG and closes it.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.patches import Patch

__all__ = ["save_figure", "image_grid", "line_plot", "scatter_2d", "bar_plot", "histogram_plot"]


def save_figure(fig, path, dpi=80):
    """Write ``fig`` as a PNG at ``path`` (creating the folder), close it and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight", pad_inches=0.05)
    plt.close(fig)
    return path


def _to_numpy_image(img):
    img = img.detach().cpu().float().clamp(0, 1).numpy() if torch.is_tensor(img) else np.asarray(img)
    if img.ndim == 3:
        img = img.transpose(1, 2, 0)
        if img.shape[-1] == 1:
            img = img[..., 0]
    return img


def image_grid(images, title=None, row_labels=None, col_labels=None, frames=None, cell_inches=0.9,
               legend=None, caption=None, xlabel=None, ylabel=None):
    """A grid of images.

    :param images: tensor ``(R, C, channels, H, W)`` with values in ``[0, 1]``.
    :param title: figure title (wrapped to the figure's width, never clipped).
    :param row_labels: labels of the rows (left); :param col_labels: labels of the columns (top).
    :param frames: optional ``(R, C)`` nested list of colour names (or None) drawn around cells.
    :param legend: optional dict ``colour -> meaning`` explaining ``frames`` (drawn under the grid).
    :param caption: optional text under the grid.
    :param xlabel: what changes along the columns; :param ylabel: what changes down the rows.
    :returns: the :class:`~matplotlib.figure.Figure`.
    """
    images = torch.as_tensor(images) if not torch.is_tensor(images) else images
    rows, cols = images.shape[:2]
    fig, axes = plt.subplots(rows, cols, figsize=(max(cols * cell_inches, 3.5), rows * cell_inches + 0.3),
                             squeeze=False, layout="constrained")
    fig.get_layout_engine().set(w_pad=0.01, h_pad=0.01, wspace=0.02, hspace=0.02)
    for r in range(rows):
        for c in range(cols):
            ax = axes[r][c]
            img = _to_numpy_image(images[r, c])
            ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            color = None if frames is None else frames[r][c]
            for spine in ax.spines.values():
                spine.set_visible(color is not None)
                if color is not None:
                    spine.set_edgecolor(color)
                    spine.set_linewidth(2)
            if row_labels is not None and c == 0:
                ax.set_ylabel(str(row_labels[r]), fontsize=7)
            if col_labels is not None and r == 0:
                ax.set_title(str(col_labels[c]), fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9, wrap=True)
    if ylabel:
        fig.supylabel(ylabel, fontsize=8)
    bottom = "\n".join(t for t in (xlabel, caption) if t) or None
    if legend:  # the legend goes under the grid, with the x label / caption as its title
        handles = [Patch(facecolor="none", edgecolor=c, linewidth=2, label=t) for c, t in legend.items()]
        fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 3), fontsize=7,
                   frameon=False, title=bottom, title_fontsize=7)
    elif bottom:
        fig.supxlabel(bottom, fontsize=7, wrap=True)
    return fig


def line_plot(curves, xlabel, ylabel, title=None, logx=False, errors=None, hlines=None):
    """Curves with a legend.

    :param curves: dict ``label -> (xs, ys)``.
    :param errors: optional dict ``label -> standard deviations`` (drawn as bands).
    :param hlines: optional dict ``label -> y`` drawn as dashed horizontal lines (in the legend).
    """
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for label, (xs, ys) in curves.items():
        ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, ms=3, label=label)
        if errors and label in errors:
            e = np.asarray(errors[label])
            ax.fill_between(xs, np.asarray(ys) - e, np.asarray(ys) + e, alpha=0.2)
    for label, y in (hlines or {}).items():
        ax.axhline(y, ls="--", lw=1, color="gray", label=label)
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=9, wrap=True)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def scatter_2d(points, labels, title=None, label_names=None, xlabel="embedding dim 1", ylabel="embedding dim 2"):
    """A 2-D scatter (e.g. a t-SNE embedding) coloured by integer labels, with a legend of the colours."""
    points = np.asarray(points)
    labels = np.asarray(labels)
    fig, ax = plt.subplots(figsize=(4.5, 4))
    for v in np.unique(labels):
        m = labels == v
        name = label_names[int(v)] if label_names is not None else str(v)
        ax.scatter(points[m, 0], points[m, 1], s=8, label=name, alpha=0.8)
    ax.legend(fontsize=7, markerscale=2)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    if title:
        ax.set_title(title, fontsize=9, wrap=True)
    fig.tight_layout()
    return fig


def bar_plot(values, xlabel, ylabel, title=None, groups=None, group_names=None, xticks=None):
    """Bars of ``values`` (1-D).

    :param groups: optional integer colour group per bar; :param group_names: their legend labels.
    :param xticks: optional dict ``bar position -> tick label`` (default: the bar indices).
    """
    values = np.asarray(values)
    fig, ax = plt.subplots(figsize=(max(4, len(values) * 0.15), 3))
    colors = None
    if groups is not None:
        cmap = plt.get_cmap("tab10")
        colors = [cmap(int(g) % 10) for g in groups]
        if group_names is not None:
            ax.legend(handles=[Patch(color=cmap(i % 10), label=str(n)) for i, n in enumerate(group_names)],
                      fontsize=7)
    ax.bar(np.arange(len(values)), values, color=colors)
    if xticks is not None:
        ax.set_xticks(list(xticks), [str(v) for v in xticks.values()])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=9, wrap=True)
    fig.tight_layout()
    return fig


def histogram_plot(samples, xlabel, title=None, bins=30, ylabel="density"):
    """Overlaid normalised histograms.

    :param samples: dict ``label -> 1-D array of values`` (one colour each, in the legend).
    """
    fig, ax = plt.subplots(figsize=(4.5, 3))
    for label, v in samples.items():
        ax.hist(np.asarray(v), bins=bins, alpha=0.5, density=True, label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=9, wrap=True)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
