"""Reader of the official dSprites file ``dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz``
(https://github.com/deepmind/dsprites-dataset)."""
from __future__ import annotations

import os
import zipfile

import numpy as np

from ..groundtruth import grid_permutation
from .factors import DSPRITES_NPZ_NAME, FACTOR_SIZES, IMAGE_SIZE, NUM_IMAGES

__all__ = ["read_npz"]


def read_npz(path: str, chunk: int = 16384):
    """Read the official npz into bit-packed images.

    The images are streamed out of the archive and kept bit-packed (377 MB), never as the 3 GB uint8 array.
    ``latents_classes`` is checked against the row-major index order (every factor combination exactly once).

    :param str path: the npz file, or a folder that contains it.
    :param int chunk: images decoded per step.
    :returns: ``(packed (737280, 512) uint8, row_of_index)``; ``row_of_index`` is ``None`` when the file is in the
        row-major index order, else the row of every dSprites index.
    :raises FileNotFoundError: if the file does not exist.
    :raises ValueError: if the file is not a readable dSprites npz (corrupt, truncated or wrong arrays, or
        ``latents_classes`` not covering the factor grid).
    """
    if os.path.isdir(path):
        path = os.path.join(path, DSPRITES_NPZ_NAME)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"dSprites npz not found at {path!r}; download {DSPRITES_NPZ_NAME} from "
            "https://github.com/deepmind/dsprites-dataset or use DSprites() to render the grid")
    try:
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())
            for key in ("imgs.npy", "latents_classes.npy"):
                if key not in names:
                    raise ValueError(f"{path!r} has no array {key[:-4]!r} (found {sorted(names)})")
            with zf.open("latents_classes.npy") as f:
                classes = np.lib.format.read_array(f)
            with zf.open("imgs.npy") as f:
                version = np.lib.format.read_magic(f)
                shape, fortran, dtype = (np.lib.format.read_array_header_1_0(f) if version == (1, 0)
                                         else np.lib.format.read_array_header_2_0(f))
                if tuple(shape) != (NUM_IMAGES, IMAGE_SIZE, IMAGE_SIZE) or fortran:
                    raise ValueError(f"imgs has shape {shape} (fortran={fortran}), expected "
                                     f"({NUM_IMAGES}, {IMAGE_SIZE}, {IMAGE_SIZE})")
                per = IMAGE_SIZE * IMAGE_SIZE * dtype.itemsize
                packed = np.empty((NUM_IMAGES, IMAGE_SIZE * IMAGE_SIZE // 8), dtype=np.uint8)
                for start in range(0, NUM_IMAGES, chunk):
                    m = min(chunk, NUM_IMAGES - start)
                    buf = f.read(m * per)
                    if len(buf) != m * per:
                        raise ValueError(f"imgs in {path!r} is truncated")
                    block = np.frombuffer(buf, dtype=dtype).reshape(m, -1)
                    packed[start:start + m] = np.packbits(block != 0, axis=1)
    except (zipfile.BadZipFile, EOFError, OSError) as e:
        raise ValueError(f"{path!r} is not a readable dSprites npz file: {e}") from e
    classes = np.asarray(classes)
    if classes.shape != (NUM_IMAGES, len(FACTOR_SIZES)):
        raise ValueError(f"latents_classes has shape {classes.shape}, expected ({NUM_IMAGES}, 6)")
    return packed, grid_permutation(classes.astype(np.int64), FACTOR_SIZES, path, "latents_classes")
