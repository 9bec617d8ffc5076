"""Figures as PNG files: image grids (swapping, interpolation, traversals, samples) and curves."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402


def _save(fig, path, dpi=80):
    """Write a figure as PNG (creating the folder) and close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def _to_numpy_image(img):
    img = img.detach().cpu().float().clamp(0, 1).numpy() if torch.is_tensor(img) else np.asarray(img)
    if img.ndim == 3:
        img = img.transpose(1, 2, 0)
        if img.shape[-1] == 1:
            img = img[..., 0]
    return img


def image_grid(images, path, title=None, row_labels=None, col_labels=None, frames=None, cell_inches=0.9):
    """Save a grid of images as a PNG.

    :param images: tensor ``(R, C, channels, H, W)`` with values in ``[0, 1]``.
    :param path: output file.
    :param title: figure title.
    :param row_labels: labels of the rows (left).
    :param col_labels: labels of the columns (top).
    :param frames: optional ``(R, C)`` array of colour names (or None) drawn around cells, e.g. to mark inputs
        (green), reconstructions (blue) and swaps (red) as in the ML-VAE paper.
    :returns: the path.
    """
    images = torch.as_tensor(images) if not torch.is_tensor(images) else images
    rows, cols = images.shape[:2]
    fig, axes = plt.subplots(rows, cols, figsize=(cols * cell_inches, rows * cell_inches + (0.4 if title else 0)),
                             squeeze=False)
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
        fig.suptitle(title, fontsize=9)
    fig.tight_layout(pad=0.2)
    return _save(fig, path)


def line_plot(curves, path, xlabel, ylabel, title=None, logx=False, errors=None, hlines=None):
    """Save a line plot.

    :param curves: dict ``label -> (xs, ys)``.
    :param errors: optional dict ``label -> standard deviations`` (drawn as bands).
    :param hlines: optional dict ``label -> y`` drawn as dashed horizontal lines.
    """
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for label, (xs, ys) in curves.items():
        ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, ms=3, label=label)
        if errors and label in errors:
            e = np.asarray(errors[label])
            ax.fill_between(xs, np.asarray(ys) - e, np.asarray(ys) + e, alpha=0.2)
    for label, y in (hlines or {}).items():
        ax.axhline(y, ls="--", lw=1, color="gray")
        ax.annotate(label, (ax.get_xlim()[0], y), fontsize=7, va="bottom")
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def scatter_2d(points, labels, path, title=None, label_names=None):
    """Save a 2-D scatter (e.g. a t-SNE embedding) coloured by integer labels."""
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
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def bar_plot(values, path, xlabel, ylabel, title=None, groups=None):
    """Save a bar plot of ``values`` (1-D); ``groups`` optional per-bar integer colour groups."""
    values = np.asarray(values)
    fig, ax = plt.subplots(figsize=(max(4, len(values) * 0.15), 3))
    colors = None
    if groups is not None:
        cmap = plt.get_cmap("tab10")
        colors = [cmap(int(g) % 10) for g in groups]
    ax.bar(np.arange(len(values)), values, color=colors)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def histogram_plot(samples, path, xlabel, title=None, bins=30):
    """Save overlaid normalised histograms.

    :param samples: dict ``label -> 1-D array of values``.
    """
    fig, ax = plt.subplots(figsize=(4.5, 3))
    for label, v in samples.items():
        ax.hist(np.asarray(v), bins=bins, alpha=0.5, density=True, label=label)
    ax.set_xlabel(xlabel)
    if title:
        ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)
