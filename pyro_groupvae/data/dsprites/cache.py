"""Caches of rendered dSprites images: bit packing, the in-memory sprite tables and the on-disk packed set.

* :class:`SpriteTables`: per ``(shape, scale, orientation)`` sprite, the centred window at all ``31 x 31``
  sub-pixel phases (bit-packed, 123 KB a sprite, 89 MB for all 720), so positions become shifts. A sprite is
  tabulated once it has been asked for ``cache_after`` times (one table costs about as much as ~1000 windows
  rendered directly).
* The full image set, bit-packed (``np.packbits``, 377 MB) in a memory-mapped ``.npy`` with a JSON stamp of the
  renderer version: :func:`packed_cache_valid`, :func:`open_packed_cache`, :func:`write_packed_cache`.
"""
from __future__ import annotations

import json
import os

import numpy as np
import torch

from .factors import FACTOR_SIZES, IMAGE_SIZE, NUM_IMAGES, PACKED_BYTES
from .render import NUM_PHASES, NUM_SPRITES, RENDER_VERSION, WINDOW, render_table

__all__ = ["SpriteTables", "unpack_images", "packed_cache_path", "packed_cache_valid", "open_packed_cache",
           "write_packed_cache"]


def unpack_images(packed: np.ndarray) -> torch.Tensor:
    """Bit-packed images ``(n, 512)`` uint8 -> float32 tensor ``(n, 1, 64, 64)`` in ``{0, 1}``."""
    imgs = np.unpackbits(packed, axis=1, count=IMAGE_SIZE * IMAGE_SIZE)
    return torch.from_numpy(imgs).float().view(-1, 1, IMAGE_SIZE, IMAGE_SIZE)


class SpriteTables:
    """Sprites tabulated at all sub-pixel phases, built on demand.

    :param int cache_after: tabulate a sprite once it has been requested this many times (0: at first use; a
        negative value disables tabulation).
    """

    def __init__(self, cache_after: int = 256):
        self.cache_after = int(cache_after)
        self.tables = None  # lazily allocated (720, 31, 31, 32) uint32
        self.built = np.zeros(NUM_SPRITES, dtype=bool)
        self.requests = np.zeros(NUM_SPRITES, dtype=np.int64)

    def request(self, sprite: np.ndarray, build: bool = False) -> np.ndarray:
        """Count requests of the sprites ``sprite`` (one key per image), tabulate those due, and return the mask of
        the images that the tables can serve (``build=True``: tabulate every requested sprite)."""
        if self.cache_after < 0 and not build:
            return np.zeros(len(sprite), dtype=bool)
        uniq, counts = np.unique(sprite, return_counts=True)
        self.requests[uniq] += counts
        todo = ~self.built[uniq]
        if not build:
            todo &= self.requests[uniq] >= self.cache_after
        for key in uniq[todo]:
            self.build(int(key))
        return self.built[sprite]

    def rows(self, sprite, phase_y, phase_x) -> np.ndarray:
        """Window rows ``(n, 32)`` of tabulated sprites at the given phases."""
        return self.tables[sprite, phase_y, phase_x]

    def build(self, key: int) -> None:
        """Tabulate sprite ``key`` (``ravel_multi_index((shape, scale, orientation), FACTOR_SIZES[1:4])``)."""
        if self.tables is None:
            # np.zeros maps lazily: only tabulated sprites take memory
            self.tables = np.zeros((NUM_SPRITES, NUM_PHASES, NUM_PHASES, WINDOW), dtype=np.uint32)
        shape, scale, orient = np.unravel_index(key, FACTOR_SIZES[1:4])
        self.tables[key] = render_table(int(shape), int(scale), int(orient))
        self.built[key] = True

    def build_all(self) -> None:
        for key in np.nonzero(~self.built)[0]:
            self.build(int(key))

    def clear(self) -> None:
        self.tables = None
        self.built[:] = False
        self.requests[:] = 0

    @property
    def nbytes(self) -> int:
        """Bytes held by tabulated sprites."""
        return int(self.built.sum()) * NUM_PHASES * NUM_PHASES * WINDOW * 4


def packed_cache_path(cache_dir: str) -> str:
    return os.path.join(cache_dir, "dsprites_rendered_packbits.npy")


def _meta_path(cache_dir: str) -> str:
    return os.path.join(cache_dir, "dsprites_rendered_packbits.json")


def packed_cache_valid(cache_dir: str) -> bool:
    """Whether ``cache_dir`` holds a complete packed set written by this renderer version."""
    path, meta = packed_cache_path(cache_dir), _meta_path(cache_dir)
    if not (os.path.exists(path) and os.path.exists(meta)):
        return False
    try:
        with open(meta) as f:
            info = json.load(f)
        arr = np.load(path, mmap_mode="r")
    except (OSError, ValueError):
        return False
    return (info.get("version") == RENDER_VERSION and info.get("complete", False)
            and arr.shape == (NUM_IMAGES, PACKED_BYTES) and arr.dtype == np.uint8)


def open_packed_cache(cache_dir: str) -> np.ndarray:
    """The packed set of ``cache_dir``, memory-mapped read-only."""
    return np.load(packed_cache_path(cache_dir), mmap_mode="r")


def write_packed_cache(cache_dir: str, packed_images, source: str, chunk: int = 65536) -> str:
    """Write all images, bit-packed, into ``cache_dir`` (the stamp is written last, so a killed write is never
    taken for a complete cache).

    :param packed_images: ``f(indices) -> (n, 512) uint8`` producing the packed images.
    :param str source: where the images come from (stored in the stamp).
    :return: the path of the ``.npy`` file.
    """
    os.makedirs(cache_dir, exist_ok=True)
    path, meta = packed_cache_path(cache_dir), _meta_path(cache_dir)
    if os.path.exists(meta):
        os.remove(meta)
    packed = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(NUM_IMAGES, PACKED_BYTES))
    for start in range(0, NUM_IMAGES, chunk):
        idx = np.arange(start, min(start + chunk, NUM_IMAGES))
        packed[start:start + len(idx)] = packed_images(idx)
    packed.flush()
    del packed
    with open(meta, "w") as f:
        json.dump({"version": RENDER_VERSION, "complete": True, "num_images": NUM_IMAGES, "source": source}, f)
    return path
