"""The dSprites grid (Matthey et al., 2017): factor names and sizes, factor values, index <-> factor conversion.

Six factors with sizes ``[1, 3, 6, 40, 32, 32]``: ``color`` (white), ``shape`` (0 square, 1 ellipse, 2 heart),
``scale`` (``linspace(0.5, 1, 6)``), ``orientation`` (``linspace(0, 2*pi, 40)``), ``posX`` and ``posY``
(``linspace(0, 1, 32)``), 737,280 binary 64x64 images. Image ``i`` has the factor indices of
``np.unravel_index(i, FACTOR_SIZES)`` (row-major, ``posY`` fastest), as in the official
``dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz``.
"""
from __future__ import annotations

import numpy as np
import torch

from ..groundtruth import as_rng  # noqa: F401  (re-exported: the dSprites modules draw through it)

__all__ = ["DSPRITES_NPZ_NAME", "FACTOR_NAMES", "FACTOR_SIZES", "SHAPE_NAMES", "IMAGE_SIZE", "NUM_IMAGES", "SCALES",
           "ORIENTATIONS", "POSITIONS", "PACKED_BYTES", "as_rng", "as_index_array", "as_factor_array"]

DSPRITES_NPZ_NAME = "dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz"

FACTOR_NAMES = ("color", "shape", "scale", "orientation", "posX", "posY")
FACTOR_SIZES = (1, 3, 6, 40, 32, 32)
SHAPE_NAMES = ("square", "ellipse", "heart")
IMAGE_SIZE = 64
NUM_IMAGES = int(np.prod(FACTOR_SIZES))
#: bytes of one bit-packed image (``np.packbits`` of its 4096 pixels)
PACKED_BYTES = IMAGE_SIZE * IMAGE_SIZE // 8

SCALES = np.linspace(0.5, 1.0, 6)
ORIENTATIONS = np.linspace(0.0, 2 * np.pi, 40)
POSITIONS = np.linspace(0.0, 1.0, 32)


def as_index_array(idx) -> np.ndarray:
    """Image indices as a flat int64 array, checked to lie in ``[0, NUM_IMAGES)``."""
    if torch.is_tensor(idx):
        idx = idx.detach().cpu().numpy()
    arr = np.asarray(idx)
    if arr.dtype == bool:
        raise TypeError("boolean masks are not supported as indices; use np.nonzero(mask)[0]")
    arr = arr.astype(np.int64).reshape(-1)
    if arr.size and (arr.min() < 0 or arr.max() >= NUM_IMAGES):
        raise IndexError(f"dSprites indices must lie in [0, {NUM_IMAGES}), got range "
                         f"[{arr.min()}, {arr.max()}]")
    return arr


def as_factor_array(factors) -> np.ndarray:
    """Factor indices as an int64 ``(n, 6)`` array, checked against :data:`FACTOR_SIZES`."""
    if torch.is_tensor(factors):
        factors = factors.detach().cpu().numpy()
    arr = np.asarray(factors)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] != len(FACTOR_SIZES):
        raise ValueError(f"factors must have shape (n, {len(FACTOR_SIZES)}), got {arr.shape}")
    arr = arr.astype(np.int64)
    sizes = np.asarray(FACTOR_SIZES)
    if arr.size and ((arr < 0).any() or (arr >= sizes).any()):
        raise ValueError(f"factor indices out of range; sizes are {FACTOR_SIZES}")
    return arr
