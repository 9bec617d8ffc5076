"""The dSprites data set: :class:`DSprites` (the whole grid, rendered on demand, from a cache or from the official
npz; the ground-truth-data interface of :mod:`pyro_groupvae.evaluation.disentanglement`) and
:func:`load_dsprites` (a seeded subset of a fixed 90/10 train/test partition as an
:class:`~pyro_groupvae.data.base.ImageDataset`)."""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from ..base import ImageDataset
from ..groundtruth import split_rows
from .cache import SpriteTables, open_packed_cache, packed_cache_valid, unpack_images, write_packed_cache
from .factors import (FACTOR_NAMES, FACTOR_SIZES, IMAGE_SIZE, NUM_IMAGES, ORIENTATIONS, PACKED_BYTES, POSITIONS,
                      SCALES, SHAPE_NAMES, as_factor_array, as_index_array, as_rng)
from .npz import read_npz
from .render import NUM_PHASES, WINDOW, paste_rows, render_windows

__all__ = ["DSprites", "load_dsprites"]


class DSprites:
    """The dSprites ground-truth data set (737,280 images of 64x64), rendered on demand.

    Implements the ground-truth-data interface used by :mod:`pyro_groupvae.evaluation.disentanglement`
    (``num_factors``, ``factor_sizes``, ``sample_factors``, ``sample_observations_from_factors``).

    :param str cache_dir: optional folder for the full bit-packed image set (``np.packbits``, 377 MB,
        memory-mapped). If it already holds a set written by :meth:`write_cache` with this renderer, images
        are read from it; otherwise nothing is written unless you call :meth:`write_cache` (or pass
        ``build_cache_dir=True``).
    :param bool build_cache_dir: render the full set into ``cache_dir`` now if it is not there yet (about a
        minute).
    :param int cache_after: tabulate a ``(shape, scale, orientation)`` sprite at all sub-pixel phases once it
        has been requested this many times (0: at first use; a negative value disables the sprite cache).
    """

    factor_names = FACTOR_NAMES
    factor_sizes = FACTOR_SIZES
    shape_names = SHAPE_NAMES
    image_shape = (1, IMAGE_SIZE, IMAGE_SIZE)

    def __init__(self, cache_dir: Optional[str] = None, build_cache_dir: bool = False, cache_after: int = 256):
        self.cache_dir = cache_dir
        self.sprites = SpriteTables(cache_after)
        self._packed = None  # (N, 512) uint8 full set (memmap or array), row order = dSprites index
        self._row_of_index = None  # optional permutation for npz files stored in another order
        self.source = "rendered"
        if cache_dir is not None:
            if packed_cache_valid(cache_dir):
                self._packed = open_packed_cache(cache_dir)
                self.source = "cache_dir"
            elif build_cache_dir:
                self.write_cache(cache_dir)

    # ------------------------------------------------------------------ ground-truth-data interface
    @property
    def num_factors(self) -> int:
        return len(FACTOR_SIZES)

    @property
    def factor_values(self) -> list:
        """Factor values as in the official ``latents_values`` (shape values are 1, 2, 3)."""
        return [np.array([1.0]), np.array([1.0, 2.0, 3.0]), SCALES.copy(), ORIENTATIONS.copy(),
                POSITIONS.copy(), POSITIONS.copy()]

    def __len__(self) -> int:
        return NUM_IMAGES

    def __repr__(self) -> str:
        return f"DSprites(source={self.source!r}, n={NUM_IMAGES}, sprites_cached={int(self.sprites.built.sum())})"

    def index_to_factors(self, idx) -> torch.Tensor:
        """Factor indices of image indices.

        :param idx: int, sequence, numpy array or tensor of image indices in ``[0, 737280)``.
        :return: LongTensor ``(n, 6)``.
        """
        arr = as_index_array(idx)
        return torch.from_numpy(np.stack(np.unravel_index(arr, FACTOR_SIZES), axis=1).astype(np.int64))

    def factors_to_index(self, factors) -> torch.Tensor:
        """Image indices of factor indices (row-major, ``posY`` fastest).

        :param factors: array-like ``(n, 6)`` (or ``(6,)``) of factor indices.
        :return: LongTensor ``(n,)``.
        """
        arr = as_factor_array(factors)
        return torch.from_numpy(np.ravel_multi_index(tuple(arr.T), FACTOR_SIZES).astype(np.int64))

    def sample_factors(self, n: int, generator_or_seed=None) -> torch.Tensor:
        """Sample ``n`` factor combinations uniformly (each factor independently).

        :param int n: number of samples.
        :param generator_or_seed: int seed, ``np.random.Generator``/``RandomState`` or ``torch.Generator``.
        :return: LongTensor ``(n, 6)``.
        """
        rng = as_rng(generator_or_seed)
        cols = [rng.integers(0, size, size=int(n)) for size in FACTOR_SIZES]
        return torch.from_numpy(np.stack(cols, axis=1).astype(np.int64))

    def sample_observations_from_factors(self, factors, generator_or_seed=None) -> torch.Tensor:
        """Images of the given factors (dSprites is deterministic, the generator is ignored).

        :param factors: array-like ``(n, 6)`` of factor indices.
        :return: float32 tensor ``(n, 1, 64, 64)`` in ``{0, 1}``.
        """
        return self.images_from_factors(factors)

    def sample(self, n: int, generator_or_seed=None):
        """Sample factors and their images.

        :param int n: number of samples.
        :param generator_or_seed: int seed or generator (see :meth:`sample_factors`).
        :return: ``(factors LongTensor (n, 6), images float32 (n, 1, 64, 64))``.
        """
        factors = self.sample_factors(n, generator_or_seed)
        return factors, self.images_from_factors(factors)

    def sample_observations(self, n: int, generator_or_seed=None) -> torch.Tensor:
        """Images of ``n`` uniformly sampled factor combinations."""
        return self.sample(n, generator_or_seed)[1]

    @property
    def cache_after(self) -> int:
        return self.sprites.cache_after

    @property
    def _built(self) -> np.ndarray:
        """Which sprites are tabulated (bool per sprite)."""
        return self.sprites.built

    # ------------------------------------------------------------------ images
    def images(self, idx) -> torch.Tensor:
        """Images by index.

        :param idx: int, sequence, numpy array or tensor of indices in ``[0, 737280)``.
        :return: float32 tensor ``(n, 1, 64, 64)`` with values in ``{0, 1}``.
        """
        return unpack_images(self.packed_images(idx))

    def images_from_factors(self, factors) -> torch.Tensor:
        """Images by factor indices.

        :param factors: array-like ``(n, 6)`` of factor indices.
        :return: float32 tensor ``(n, 1, 64, 64)`` with values in ``{0, 1}``.
        """
        arr = as_factor_array(factors)
        idx = np.ravel_multi_index(tuple(arr.T), FACTOR_SIZES).astype(np.int64)
        return unpack_images(self.packed_images(idx))

    def packed_images(self, idx, chunk: int = 65536) -> np.ndarray:
        """Images by index, bit-packed as by ``np.packbits(img.reshape(n, 4096), axis=1)``.

        :param idx: indices in ``[0, 737280)``.
        :param int chunk: images processed per step.
        :return: uint8 array ``(n, 512)``.
        """
        idx = as_index_array(idx)
        out = np.empty((len(idx), PACKED_BYTES), dtype=np.uint8)
        for start in range(0, len(idx), chunk):
            sl = slice(start, start + chunk)
            out[sl] = self._from_packed(idx[sl]) if self._packed is not None else self._render(idx[sl])
        return out

    def _from_packed(self, idx: np.ndarray) -> np.ndarray:
        rows = idx if self._row_of_index is None else self._row_of_index[idx]
        order = np.argsort(rows, kind="stable")  # sorted reads are kinder to memory maps
        out = np.empty((len(idx), PACKED_BYTES), dtype=np.uint8)
        out[order] = np.asarray(self._packed[rows[order]])
        return out

    def _render(self, idx: np.ndarray, build: bool = False) -> np.ndarray:
        """Render images by index (bit-packed): sprite windows pasted at integer offsets."""
        _, shape, scale, orient, kx, ky = np.unravel_index(idx, FACTOR_SIZES)
        sprite = np.ravel_multi_index((shape, scale, orient), FACTOR_SIZES[1:4])
        phase_x, base_x = kx % NUM_PHASES, kx + kx // NUM_PHASES
        phase_y, base_y = ky % NUM_PHASES, ky + ky // NUM_PHASES
        rows = np.empty((len(idx), WINDOW), dtype=np.uint32)
        use_table = self.sprites.request(sprite, build)
        if use_table.any():
            sel = np.nonzero(use_table)[0]
            rows[sel] = self.sprites.rows(sprite[sel], phase_y[sel], phase_x[sel])
        if not use_table.all():
            sel = np.nonzero(~use_table)[0]
            rows[sel] = render_windows(shape[sel], scale[sel], orient[sel], phase_x[sel], phase_y[sel])
        return paste_rows(rows, base_y, base_x)

    # ------------------------------------------------------------------ caches
    def build_cache(self) -> "DSprites":
        """Tabulate all 720 ``(shape, scale, orientation)`` sprites at all sub-pixel phases (89 MB, ~20 s)."""
        self.sprites.build_all()
        return self

    def clear_cache(self) -> None:
        """Drop the in-memory sprite tables."""
        self.sprites.clear()

    @property
    def cache_nbytes(self) -> int:
        """Bytes held by tabulated sprites."""
        return self.sprites.nbytes

    def write_cache(self, cache_dir: Optional[str] = None, chunk: int = 65536) -> str:
        """Render the full set into ``cache_dir`` as a bit-packed, memory-mapped ``.npy`` (377 MB, about a
        minute), then read images from it.

        :param str cache_dir: target folder (defaults to the one given at construction).
        :param int chunk: images rendered per step.
        :return: the path of the written file.
        """
        cache_dir = cache_dir or self.cache_dir
        if cache_dir is None:
            raise ValueError("write_cache needs a cache_dir")
        path = write_packed_cache(cache_dir, lambda idx: (self._from_packed(idx) if self._packed is not None
                                                          else self._render(idx, build=True)), self.source, chunk)
        self.cache_dir = cache_dir
        self._packed = open_packed_cache(cache_dir)
        self._row_of_index = None
        self.clear_cache()
        self.source = "cache_dir"
        return path

    # ------------------------------------------------------------------ official npz
    @classmethod
    def from_npz(cls, path: str, chunk: int = 16384) -> "DSprites":
        """Load the official ``dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz`` (see
        :func:`~pyro_groupvae.data.dsprites.npz.read_npz`; kept bit-packed in memory, 377 MB).

        :param str path: the npz file, or a folder that contains it.
        :raises FileNotFoundError: if the file does not exist.
        :raises ValueError: if the file is not a readable dSprites npz.
        """
        packed, row_of_index = read_npz(path, chunk)
        self = cls(cache_after=-1)
        self._packed, self._row_of_index = packed, row_of_index
        self.source = "npz"
        return self


def load_dsprites(split: str = "train", n: Optional[int] = None, seed: int = 0, root: Optional[str] = None,
                  dataset: Optional[DSprites] = None) -> ImageDataset:
    """A random subset of dSprites as an in-memory :class:`~pyro_groupvae.data.base.ImageDataset`.

    :param str split: ``"train"`` (90% of the grid), ``"test"`` (the other 10%, a fixed partition) or ``"all"``.
    :param int n: number of images (default 20000; at most the size of the split).
    :param int seed: seed of the subset draw.
    :param str root: folder (or file) with the official npz; if given, images come from it instead of the
        renderer (a missing file raises ``FileNotFoundError``).
    :param DSprites dataset: an existing :class:`DSprites` to draw from (overrides ``root``).
    :return: ``ImageDataset`` with ``x`` float32 ``(n, 1, 64, 64)`` in ``{0, 1}``, ``y`` the shape index,
        ``extras["factors"]`` LongTensor ``(n, 6)``, ``extras["index"]`` the dSprites indices, and metadata
        ``factor_names``, ``factor_sizes``, ``shape_names``.
    """
    if dataset is None:
        dataset = DSprites.from_npz(root) if root is not None else DSprites()
    pool = split_rows(NUM_IMAGES, split)  # the fixed 90/10 partition of the other ground-truth sets
    n = 20000 if n is None else int(n)
    if n > len(pool) or n < 0:
        raise ValueError(f"n must be in [0, {len(pool)}] for split {split!r}, got {n}")
    rng = np.random.default_rng(seed)
    idx = rng.choice(pool, size=n, replace=False)  # random order
    x = dataset.images(idx)
    factors = dataset.index_to_factors(idx)
    extras = {
        "factors": factors,
        "index": torch.from_numpy(idx.astype(np.int64)),
        "factor_names": list(FACTOR_NAMES),
        "factor_sizes": list(FACTOR_SIZES),
        "shape_names": list(SHAPE_NAMES),
    }
    return ImageDataset(x, factors[:, 1].clone(), f"dsprites-{split}", extras)
