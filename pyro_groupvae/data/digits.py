"""UCI hand-written digits (scikit-learn's bundled ``load_digits``) and the two-domain MNIST + UCI set."""
from __future__ import annotations

import functools
from typing import Tuple

import numpy as np
import torch
import torch.nn.functional as F

from .base import ImageDataset
from .mnist import check_split, load_bundled_mnist, stratified_split_indices

__all__ = ["load_uci_digits", "load_two_domain"]

_UCI_SPLIT_SEED = 19980701


@functools.lru_cache(maxsize=1)
def _uci_arrays() -> Tuple[np.ndarray, np.ndarray]:
    """(images float32 (1797, 8, 8) in [0, 1], labels int64 (1797,)), read once per process."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (np.asarray(bunch.images, dtype=np.float32) / 16.0).clip(0.0, 1.0)
    y = np.asarray(bunch.target, dtype=np.int64)
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


@functools.lru_cache(maxsize=1)
def _uci_split():
    _, y = _uci_arrays()
    return stratified_split_indices(y, (0.7, 0.1, 0.2), seed=_UCI_SPLIT_SEED)


def load_uci_digits(split: str = "train", size: int = 28) -> ImageDataset:
    """The 1,797 UCI 8x8 digits of :func:`sklearn.datasets.load_digits`, upsampled to ``size x size``.

    Pixel values 0..16 are scaled to ``[0, 1]`` and resized with
    ``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)``, then clamped to ``[0, 1]``.
    The split is deterministic and stratified per digit: ``round(0.7 n)`` train, ``round(0.1 n)`` val and
    the rest test for each class of ``n`` images (1,258 / 179 / 360 in total); ``"all"`` gives all 1,797.

    :param str split: ``"train"``, ``"val"``, ``"test"`` or ``"all"``.
    :param int size: output height and width (``8`` keeps the original resolution).
    :return: :class:`ImageDataset` ``(N, 1, size, size)``, name ``"uci-digits"``.
    """
    check_split(split)
    size = int(size)
    if size < 1:
        raise ValueError(f"size must be a positive integer, got {size}")
    X, y = _uci_arrays()
    idx = _uci_split()[split].numpy()
    x = torch.from_numpy(X[idx].copy()).unsqueeze(1)
    if size != 8:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    x = x.clamp_(0.0, 1.0).contiguous()
    return ImageDataset(x, torch.from_numpy(y[idx].copy()), "uci-digits", {})


def load_two_domain(split: str = "train", binarize: bool = False) -> ImageDataset:
    """Two domains of hand-written digits: bundled MNIST followed by UCI digits (both 28x28), same split.

    :param str split: ``"train"``, ``"val"``, ``"test"`` or ``"all"``.
    :param bool binarize: threshold pixels at 0.5.
    :return: :class:`ImageDataset` ``(N, 1, 28, 28)`` with ``y`` = digit label and ``extras["domain"]`` an int64
        tensor, 0 for MNIST rows and 1 for UCI rows; name ``"mnist+uci"``.
    """
    check_split(split)
    a = load_bundled_mnist(split)
    b = load_uci_digits(split, size=28)
    domain = torch.cat([torch.zeros(len(a), dtype=torch.long), torch.ones(len(b), dtype=torch.long)])
    ds = ImageDataset(torch.cat([a.x, b.x]), torch.cat([a.y, b.y]), "mnist+uci", {"domain": domain})
    return ds.binarized() if binarize else ds
