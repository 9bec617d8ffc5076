"""dSprites, rendered on demand (or loaded from the official npz).

The dSprites grid (Matthey et al., 2017) has six factors with sizes ``[1, 3, 6, 40, 32, 32]``:
``color`` (white), ``shape`` (0 square, 1 ellipse, 2 heart), ``scale`` (``linspace(0.5, 1, 6)``),
``orientation`` (``linspace(0, 2*pi, 40)``), ``posX`` and ``posY`` (``linspace(0, 1, 32)``), giving
737,280 binary 64x64 images. Image ``i`` has the factor indices of ``np.unravel_index(i, factor_sizes)``
(row-major, ``posY`` fastest), as in ``dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz``.

The official files cannot be downloaded here, so :class:`DSprites` re-renders the grid with a renderer
calibrated against 320 real frames (``/work/shared/reference/dsprites-traversals.gif``, from the public
deepmind/dsprites-dataset repository). If you have the official npz, :meth:`DSprites.from_npz` uses it instead.

Rendering model (fitted to the reference frames)
------------------------------------------------
Coordinates are in pixels, ``x`` to the right (columns), ``y`` down (rows); pixel ``(row i, col j)`` has its
centre at ``(j + 0.5, i + 0.5)``.

* **Rasterisation**: a pixel is on iff its *centre* lies inside the shape (OpenGL-style point sampling, no
  anti-aliasing). This beat "supersample + threshold": on the 64 square frames, point sampling with side 19.2
  reproduces 62/64 frames exactly (mean IoU 0.9997), while 16x16 supersampling of a side-20 square
  thresholded at coverage 0.9 (the best threshold model) reproduced 54/64 (mean IoU 0.9983).
* **Position**: the sprite centre is at ``(16 + 32 * posX, 16 + 32 * posY)``; ``posX`` moves the sprite along
  the columns, ``posY`` along the rows, ``(0, 0)`` is the top-left. Consecutive positions are ``32/31`` pixel
  apart, so the rasterisation changes with the sub-pixel phase (a heart at max scale covers 219 to 232 pixels
  depending on position in the reference frames; the renderer reproduces this).
* **Orientation**: a positive angle turns the sprite counter-clockwise *as seen on screen* (e.g. the heart's
  point moves from the bottom towards the right). Local sprite coordinates of an image point ``(x, y)``
  relative to the centre are ``u = (x cos t - y sin t) / scale``, ``v = (x sin t + y cos t) / scale``.
* **Square**: ``max(|u|, |v|) <= 9.6`` (side 19.2 px = 0.3 of the canvas at scale 1).
* **Ellipse**: ``(u / 12.75)**2 + (v / 7.25)**2 <= 1`` (long axis horizontal at orientation 0; an inscribed
  32-gon, as a vector renderer might draw it, fits no better).
* **Heart**: the classic parametric heart ``X = 16 sin^3 s``, ``Y = 13 cos s - 5 cos 2s - 2 cos 3s - cos 4s``,
  scaled by ``0.6`` horizontally (width 19.2 px) and ``0.662`` vertically, upright (point down) at
  orientation 0, its bounding box centred ``0.245`` px above the rotation centre. The outline was read off by
  mapping every heart pixel of the 168 heart frames back to sprite coordinates (all rotations and sub-pixel
  phases together give a sub-pixel sampling of the outline): its sides are concave near the point, unlike a
  heart built from a square and two half-discs, and this curve with fitted x/y scales and offset
  misclassifies 44 of the 184,188 sampled pixel centres. Inside test: for ``|X| <= 16`` let
  ``c = cos(arcsin((|X|/16)^(1/3)))``; the point is inside iff ``|Y - A| <= B`` with
  ``A = -5 cos 2s - cos 4s`` and ``B = c (19 - 8 c^2)`` (upper and lower branches of the curve).

Numbers measured on the reference frames (``area`` in pixels, extents as inclusive pixel indices)
--------------------------------------------------------------------------------------------------
* Square, orientation 0, ``pos = (0, 0)``: areas by scale ``100, 144, 196, 256, 324, 400`` (sides
  10..20 px; the README's "18x18 = 324" square is scale 0.9; at max scale it is 20x20 = 400, rows/cols 6..25).
  Rotated at max scale: 364..372 (a 45 degree diamond covers 368, rows/cols 3..28).
* Ellipse, orientation 0: areas by scale ``76, 104, 144, 184, 228, 288``; at max scale rows 9..22,
  cols 3..28 (14 x 26 px); rotated 286..296.
* Heart, orientation 0: areas by scale ``58, 84, 108, 140, 182, 222``; at max scale rows 7..23,
  cols 6..25 (17 x 20 px); rotated 219..228; over all positions 219..232.
* All frames: sprites within pixels 3..57 on both axes (min 3: rotated square/ellipse at position 0;
  max 57: heart at position 1). The GIF shows rotations only at position 0 and non-heart shapes only at
  position 0, so this is not a bound on the whole grid: by symmetry a max-scale ellipse at ``posX = 1`` reaches
  column 60 (it reaches column 3 at ``posX = 0``). Over the whole rendered grid the extents are
  2..61 (square; a rotated corner at some sub-pixel phases), 3..60 (ellipse) and 5..58 (heart).

Renderer vs. reference
----------------------
* The 320 frames with factors read off the GIF's traversal order (see ``tests/test_dsprites.py``): mean IoU
  0.9987, min IoU 0.9828, 270/320 frames pixel-identical; per shape (mean IoU / identical frames): square
  0.9997 / 62 of 64, ellipse 0.9968 / 42 of 64, heart 0.9991 / 166 of 192. The test asserts mean IoU >= 0.995,
  min IoU >= 0.97 and >= 240 identical frames.
* Orientation 0, position 0, areas by scale: square ``100 .. 400`` (identical), ellipse
  ``76, 104, 144, 184, 232, 288`` (reference 228 at scale 0.9), heart ``58, 84, 108, 142, 182, 222``
  (reference 140 at scale 0.8); extents at max scale identical to the reference numbers above.
* Max scale, all 40 orientations at position 0: square 364..400 (400 only when axis-aligned), ellipse
  286..296, heart 220..229 pixels (reference: 364..372, 286..296, 219..228). Orientation 0 at all 32 x 32
  positions: square 361..400 (19 or 20 columns/rows depending on the sub-pixel phase), ellipse 286..296,
  heart 217..233 (reference, along the border positions: heart 219..232).

Caching
-------
Because positions step by ``32/31`` pixel, every image is the sprite sampled on a lattice with spacing
``1/31`` pixel: a ``32 x 32`` window at one of ``31 x 31`` sub-pixel phases, pasted at an integer offset. The
in-memory cache keeps, per ``(shape, scale, orientation)``, the centred sprite at all ``31 x 31`` phases
(bit-packed, 123 KB; all 720 sprites 89 MB), so positions become shifts. A sprite is tabulated once it has
been asked for ``cache_after`` times (rendering one table costs about as much as rendering ~1000 windows
directly); :meth:`DSprites.build_cache` tabulates all of them. With ``cache_dir`` the full set can be stored
bit-packed on disk (``np.packbits``, 377 MB, memory-mapped) by :meth:`DSprites.write_cache`.
"""
from __future__ import annotations

import json
import os
import zipfile
from typing import Optional

import numpy as np
import torch

from .base import ImageDataset

__all__ = ["DSprites", "load_dsprites", "DSPRITES_NPZ_NAME"]

DSPRITES_NPZ_NAME = "dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz"

FACTOR_NAMES = ("color", "shape", "scale", "orientation", "posX", "posY")
FACTOR_SIZES = (1, 3, 6, 40, 32, 32)
SHAPE_NAMES = ("square", "ellipse", "heart")
IMAGE_SIZE = 64
NUM_IMAGES = int(np.prod(FACTOR_SIZES))

SCALES = np.linspace(0.5, 1.0, 6)
ORIENTATIONS = np.linspace(0.0, 2 * np.pi, 40)
POSITIONS = np.linspace(0.0, 1.0, 32)
_COS = np.cos(ORIENTATIONS)
_SIN = np.sin(ORIENTATIONS)

# --- calibrated geometry (pixels at scale 1) -------------------------------------------------------
SQUARE_HALF_SIDE = 9.6
ELLIPSE_SEMI_AXES = (12.75, 7.25)
HEART_SCALE_X = 0.6
HEART_SCALE_Y = 0.662
HEART_OFFSET_Y = 0.245
# centre of the classic heart's vertical range (Y from -17 to 11.92325241), in its own units
_HEART_Y_CENTRE = (11.923252410839797 - 17.0) / 2.0

# --- lattice ------------------------------------------------------------------------------------------
# sprite centre = 16 + 32 k / 31 = 16 + base + phase / 31 with base = k + k // 31, phase = k % 31.
_LATTICE = 31
_WINDOW = 32
_NUM_PHASES = 31
_NUM_SPRITES = FACTOR_SIZES[1] * FACTOR_SIZES[2] * FACTOR_SIZES[3]
_RENDER_VERSION = "dsprites-render-v1"


def _inside(shape: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Point-in-shape test in local sprite coordinates (pixels at scale 1, ``v`` pointing down).

    :param int shape: 0 square, 1 ellipse, 2 heart.
    :param np.ndarray u: horizontal local coordinates.
    :param np.ndarray v: vertical local coordinates (same shape as ``u``).
    :return: boolean array, True inside.
    """
    if shape == 0:
        return np.maximum(np.abs(u), np.abs(v)) <= SQUARE_HALF_SIDE
    if shape == 1:
        a, b = ELLIPSE_SEMI_AXES
        return (u / a) ** 2 + (v / b) ** 2 <= 1.0
    if shape == 2:
        x = np.abs(u) / HEART_SCALE_X
        y = _HEART_Y_CENTRE - (v - HEART_OFFSET_Y) / HEART_SCALE_Y  # classic heart units, y up
        s = np.cbrt(np.minimum(x, 16.0) / 16.0)
        s2 = s * s
        c1 = np.sqrt(1.0 - s2)
        c2 = 1.0 - 2.0 * s2
        a = -5.0 * c2 - (2.0 * c2 * c2 - 1.0)
        b = c1 * (19.0 - 8.0 * c1 * c1)
        return (x <= 16.0) & (np.abs(y - a) <= b)
    raise ValueError(f"unknown shape index {shape}")


# largest distance of a shape point from the rotation centre at scale 1 (square corner, ellipse tip,
# heart lobe), used to skip window pixels that cannot be inside
_MAX_RADIUS = (SQUARE_HALF_SIDE * np.sqrt(2.0), max(ELLIPSE_SEMI_AXES), 11.26)


def _lattice_coords(phase: np.ndarray, lo: int = 0, hi: int = _WINDOW) -> np.ndarray:
    """Sprite-relative pixel-centre coordinates of window pixels ``lo..hi-1`` for the given sub-pixel phases.

    Window pixel ``b`` at phase ``p`` sits at ``b - 16 + 0.5 - p / 31`` pixels from the sprite centre, i.e. on the
    lattice ``(m + 0.5) / 31`` with integer ``m = 31 (b - 16) + 15 - p``; computing it from ``m`` makes every
    code path produce bit-identical coordinates.

    :param np.ndarray phase: integer phases in ``[0, 31)``, any shape ``S``.
    :return: float64 array of shape ``S + (hi - lo,)``.
    """
    b = np.arange(lo, hi)
    m = _LATTICE * (b - _WINDOW // 2) + 15 - np.asarray(phase)[..., None]
    return (m + 0.5) / _LATTICE


def _crop(shape: int, scale_idx: int):
    """Window index range ``[lo, hi)`` that can contain pixels of this sprite (1 px margin)."""
    r = _MAX_RADIUS[shape] * SCALES[scale_idx]
    lo = max(0, int(np.floor(_WINDOW // 2 - r - 0.5)) - 1)
    hi = min(_WINDOW, int(np.ceil(_WINDOW // 2 + r + 0.5)) + 2)
    return lo, hi


def _pack_rows(mask: np.ndarray) -> np.ndarray:
    """Pack the last axis (32 booleans, column 0 first) into uint32 rows with column 0 in bit 31."""
    return np.packbits(mask, axis=-1).view(">u4")[..., 0].astype(np.uint32)


def _render_windows(shape: np.ndarray, scale_idx: np.ndarray, orient_idx: np.ndarray, phase_x: np.ndarray,
                    phase_y: np.ndarray, chunk: int = 2048) -> np.ndarray:
    """Render sprite windows directly (vectorised over the batch).

    :param np.ndarray shape: shape index per window, ``(n,)``.
    :param np.ndarray scale_idx: scale index per window.
    :param np.ndarray orient_idx: orientation index per window.
    :param np.ndarray phase_x: horizontal sub-pixel phase in ``[0, 31)``.
    :param np.ndarray phase_y: vertical sub-pixel phase in ``[0, 31)``.
    :param int chunk: windows evaluated at once (bounds the float64 temporaries to ~16 MB each).
    :return: uint32 ``(n, 32)``: window rows, column 0 in bit 31.
    """
    n = len(shape)
    out = np.zeros((n, _WINDOW), dtype=np.uint32)
    group = shape * FACTOR_SIZES[2] + scale_idx
    for g in np.unique(group):
        s, k = divmod(int(g), FACTOR_SIZES[2])
        lo, hi = _crop(s, k)
        for start in range(0, n, chunk):
            sel = start + np.nonzero(group[start:start + chunk] == g)[0]
            if len(sel):
                out[sel] = _render_group(s, k, lo, hi, orient_idx[sel], phase_x[sel], phase_y[sel])
    return out


def _render_group(s: int, k: int, lo: int, hi: int, orient_idx: np.ndarray, phase_x: np.ndarray,
                  phase_y: np.ndarray) -> np.ndarray:
    """Windows of one (shape, scale) group, only window pixels ``lo..hi-1`` evaluated; see
    :func:`_render_windows`."""
    x = _lattice_coords(phase_x, lo, hi)[:, None, :]
    y = _lattice_coords(phase_y, lo, hi)[:, :, None]
    c = _COS[orient_idx][:, None, None]
    si = _SIN[orient_idx][:, None, None]
    sc = SCALES[k]
    u = (x * c - y * si) / sc
    v = (x * si + y * c) / sc
    win = np.zeros((len(orient_idx), _WINDOW, _WINDOW), dtype=bool)
    win[:, lo:hi, lo:hi] = _inside(s, u, v)
    return _pack_rows(win)


def _render_table(shape: int, scale_idx: int, orient_idx: int) -> np.ndarray:
    """All ``31 x 31`` sub-pixel phases of one sprite: uint32 ``(31, 31, 32)`` indexed
    ``[phase_y, phase_x, row]`` (column 0 in bit 31). Uses exactly the arithmetic of :func:`_render_windows`."""
    ph = np.arange(_NUM_PHASES)
    lo, hi = _crop(shape, scale_idx)
    x = _lattice_coords(ph, lo, hi)[None, :, None, :]  # (1, px, 1, b)
    y = _lattice_coords(ph, lo, hi)[:, None, :, None]  # (py, 1, a, 1)
    c, si, sc = _COS[orient_idx], _SIN[orient_idx], SCALES[scale_idx]
    u = (x * c - y * si) / sc
    v = (x * si + y * c) / sc
    win = np.zeros((_NUM_PHASES, _NUM_PHASES, _WINDOW, _WINDOW), dtype=bool)
    win[:, :, lo:hi, lo:hi] = _inside(shape, u, v)
    return _pack_rows(win)


def _paste_rows(rows32: np.ndarray, base_y: np.ndarray, base_x: np.ndarray) -> np.ndarray:
    """Place ``(n, 32)`` uint32 window rows at integer offsets; returns the images bit-packed, ``(n, 512)``
    uint8 in ``np.packbits`` order (row-major, first pixel in the most significant bit)."""
    n = len(rows32)
    img = np.zeros((n, IMAGE_SIZE), dtype=np.uint64)
    shift = (_WINDOW - base_x).astype(np.uint64)[:, None]
    img[np.arange(n)[:, None], base_y[:, None] + np.arange(_WINDOW)] = rows32.astype(np.uint64) << shift
    return img.astype(">u8").view(np.uint8).reshape(n, IMAGE_SIZE * IMAGE_SIZE // 8)


def _as_rng(generator_or_seed) -> np.random.Generator:
    if isinstance(generator_or_seed, np.random.Generator):
        return generator_or_seed
    if isinstance(generator_or_seed, np.random.RandomState):
        return np.random.default_rng(generator_or_seed.randint(2**31 - 1))
    if isinstance(generator_or_seed, torch.Generator):
        return np.random.default_rng(int(torch.randint(2**31 - 1, (1,), generator=generator_or_seed)))
    if generator_or_seed is None or isinstance(generator_or_seed, (int, np.integer)):
        return np.random.default_rng(generator_or_seed)
    raise TypeError(f"expected an int seed, numpy Generator/RandomState or torch.Generator, "
                    f"got {type(generator_or_seed).__name__}")


def _as_index_array(idx) -> np.ndarray:
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


def _as_factor_array(factors) -> np.ndarray:
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
        self.cache_after = int(cache_after)
        self._tables = None  # lazily allocated (720, 31, 31, 32) uint32
        self._built = np.zeros(_NUM_SPRITES, dtype=bool)
        self._requests = np.zeros(_NUM_SPRITES, dtype=np.int64)
        self._packed = None  # (N, 512) uint8 full set (memmap or array), row order = dSprites index
        self._row_of_index = None  # optional permutation for npz files stored in another order
        self.source = "rendered"
        if cache_dir is not None:
            path = self._cache_path(cache_dir)
            if self._cache_valid(cache_dir):
                self._packed = np.load(path, mmap_mode="r")
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
        return f"DSprites(source={self.source!r}, n={NUM_IMAGES}, sprites_cached={int(self._built.sum())})"

    def index_to_factors(self, idx) -> torch.Tensor:
        """Factor indices of image indices.

        :param idx: int, sequence, numpy array or tensor of image indices in ``[0, 737280)``.
        :return: LongTensor ``(n, 6)``.
        """
        arr = _as_index_array(idx)
        return torch.from_numpy(np.stack(np.unravel_index(arr, FACTOR_SIZES), axis=1).astype(np.int64))

    def factors_to_index(self, factors) -> torch.Tensor:
        """Image indices of factor indices (row-major, ``posY`` fastest).

        :param factors: array-like ``(n, 6)`` (or ``(6,)``) of factor indices.
        :return: LongTensor ``(n,)``.
        """
        arr = _as_factor_array(factors)
        return torch.from_numpy(np.ravel_multi_index(tuple(arr.T), FACTOR_SIZES).astype(np.int64))

    def sample_factors(self, n: int, generator_or_seed=None) -> torch.Tensor:
        """Sample ``n`` factor combinations uniformly (each factor independently).

        :param int n: number of samples.
        :param generator_or_seed: int seed, ``np.random.Generator``/``RandomState`` or ``torch.Generator``.
        :return: LongTensor ``(n, 6)``.
        """
        rng = _as_rng(generator_or_seed)
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

    # ------------------------------------------------------------------ images
    def images(self, idx) -> torch.Tensor:
        """Images by index.

        :param idx: int, sequence, numpy array or tensor of indices in ``[0, 737280)``.
        :return: float32 tensor ``(n, 1, 64, 64)`` with values in ``{0, 1}``.
        """
        return self._unpack(self.packed_images(idx))

    def images_from_factors(self, factors) -> torch.Tensor:
        """Images by factor indices.

        :param factors: array-like ``(n, 6)`` of factor indices.
        :return: float32 tensor ``(n, 1, 64, 64)`` with values in ``{0, 1}``.
        """
        arr = _as_factor_array(factors)
        idx = np.ravel_multi_index(tuple(arr.T), FACTOR_SIZES).astype(np.int64)
        return self._unpack(self.packed_images(idx))

    def packed_images(self, idx, chunk: int = 65536) -> np.ndarray:
        """Images by index, bit-packed as by ``np.packbits(img.reshape(n, 4096), axis=1)``.

        :param idx: indices in ``[0, 737280)``.
        :param int chunk: images processed per step.
        :return: uint8 array ``(n, 512)``.
        """
        idx = _as_index_array(idx)
        out = np.empty((len(idx), IMAGE_SIZE * IMAGE_SIZE // 8), dtype=np.uint8)
        for start in range(0, len(idx), chunk):
            sl = slice(start, start + chunk)
            out[sl] = self._from_packed(idx[sl]) if self._packed is not None else self._render(idx[sl])
        return out

    @staticmethod
    def _unpack(packed: np.ndarray) -> torch.Tensor:
        imgs = np.unpackbits(packed, axis=1, count=IMAGE_SIZE * IMAGE_SIZE)
        return torch.from_numpy(imgs).float().view(-1, 1, IMAGE_SIZE, IMAGE_SIZE)

    def _from_packed(self, idx: np.ndarray) -> np.ndarray:
        rows = idx if self._row_of_index is None else self._row_of_index[idx]
        order = np.argsort(rows, kind="stable")  # sorted reads are kinder to memory maps
        out = np.empty((len(idx), IMAGE_SIZE * IMAGE_SIZE // 8), dtype=np.uint8)
        out[order] = np.asarray(self._packed[rows[order]])
        return out

    def _render(self, idx: np.ndarray, build: bool = False) -> np.ndarray:
        """Render images by index (bit-packed): sprite windows pasted at integer offsets."""
        _, shape, scale, orient, kx, ky = np.unravel_index(idx, FACTOR_SIZES)
        sprite = np.ravel_multi_index((shape, scale, orient), FACTOR_SIZES[1:4])
        phase_x, base_x = kx % _NUM_PHASES, kx + kx // _NUM_PHASES
        phase_y, base_y = ky % _NUM_PHASES, ky + ky // _NUM_PHASES
        rows = np.empty((len(idx), _WINDOW), dtype=np.uint32)

        use_table = np.zeros(len(idx), dtype=bool)
        if self.cache_after >= 0 or build:
            uniq, counts = np.unique(sprite, return_counts=True)
            self._requests[uniq] += counts
            todo = ~self._built[uniq]
            if not build:
                todo &= self._requests[uniq] >= self.cache_after
            for key in uniq[todo]:
                self._build_sprite(int(key))
            use_table = self._built[sprite]
        if use_table.any():
            sel = np.nonzero(use_table)[0]
            rows[sel] = self._tables[sprite[sel], phase_y[sel], phase_x[sel]]
        if not use_table.all():
            sel = np.nonzero(~use_table)[0]
            rows[sel] = _render_windows(shape[sel], scale[sel], orient[sel], phase_x[sel], phase_y[sel])
        return _paste_rows(rows, base_y, base_x)

    # ------------------------------------------------------------------ caches
    def _build_sprite(self, key: int) -> None:
        if self._tables is None:
            # np.zeros maps lazily: only tabulated sprites take memory (123 KB each, 89 MB for all 720)
            self._tables = np.zeros((_NUM_SPRITES, _NUM_PHASES, _NUM_PHASES, _WINDOW), dtype=np.uint32)
        shape, scale, orient = np.unravel_index(key, FACTOR_SIZES[1:4])
        self._tables[key] = _render_table(int(shape), int(scale), int(orient))
        self._built[key] = True

    def build_cache(self) -> "DSprites":
        """Tabulate all 720 ``(shape, scale, orientation)`` sprites at all sub-pixel phases (89 MB, ~20 s)."""
        for key in np.nonzero(~self._built)[0]:
            self._build_sprite(int(key))
        return self

    def clear_cache(self) -> None:
        """Drop the in-memory sprite tables."""
        self._tables = None
        self._built[:] = False
        self._requests[:] = 0

    @property
    def cache_nbytes(self) -> int:
        """Bytes held by tabulated sprites."""
        return int(self._built.sum()) * _NUM_PHASES * _NUM_PHASES * _WINDOW * 4

    @staticmethod
    def _cache_path(cache_dir: str) -> str:
        return os.path.join(cache_dir, "dsprites_rendered_packbits.npy")

    @staticmethod
    def _meta_path(cache_dir: str) -> str:
        return os.path.join(cache_dir, "dsprites_rendered_packbits.json")

    @classmethod
    def _cache_valid(cls, cache_dir: str) -> bool:
        path, meta = cls._cache_path(cache_dir), cls._meta_path(cache_dir)
        if not (os.path.exists(path) and os.path.exists(meta)):
            return False
        try:
            with open(meta) as f:
                info = json.load(f)
            arr = np.load(path, mmap_mode="r")
        except (OSError, ValueError):
            return False
        return (info.get("version") == _RENDER_VERSION and info.get("complete", False)
                and arr.shape == (NUM_IMAGES, IMAGE_SIZE * IMAGE_SIZE // 8) and arr.dtype == np.uint8)

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
        os.makedirs(cache_dir, exist_ok=True)
        path, meta = self._cache_path(cache_dir), self._meta_path(cache_dir)
        if os.path.exists(meta):
            os.remove(meta)
        packed = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8,
                                           shape=(NUM_IMAGES, IMAGE_SIZE * IMAGE_SIZE // 8))
        for start in range(0, NUM_IMAGES, chunk):
            idx = np.arange(start, min(start + chunk, NUM_IMAGES))
            packed[start:start + len(idx)] = (self._from_packed(idx) if self._packed is not None
                                              else self._render(idx, build=True))
        packed.flush()
        del packed
        with open(meta, "w") as f:
            json.dump({"version": _RENDER_VERSION, "complete": True, "num_images": NUM_IMAGES,
                       "source": self.source}, f)
        self.cache_dir = cache_dir
        self._packed = np.load(path, mmap_mode="r")
        self._row_of_index = None
        self.clear_cache()
        self.source = "cache_dir"
        return path

    # ------------------------------------------------------------------ official npz
    @classmethod
    def from_npz(cls, path: str, chunk: int = 16384) -> "DSprites":
        """Load the official ``dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz``.

        The images are streamed out of the archive and kept bit-packed in memory (377 MB), never as the
        3 GB uint8 array. ``latents_classes`` is checked against the row-major index order (a file in another
        order is re-indexed).

        :param str path: the npz file, or a folder that contains it.
        :param int chunk: images decoded per step.
        :raises FileNotFoundError: if the file does not exist.
        :raises ValueError: if the file is not a readable dSprites npz (corrupt, truncated or wrong arrays).
        """
        if os.path.isdir(path):
            path = os.path.join(path, DSPRITES_NPZ_NAME)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"dSprites npz not found at {path!r}; download {DSPRITES_NPZ_NAME} from "
                "https://github.com/deepmind/dsprites-dataset or use DSprites() to render the grid")
        self = cls(cache_after=-1)
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
        order = np.ravel_multi_index(tuple(classes.astype(np.int64).T), FACTOR_SIZES)
        if not np.array_equal(order, np.arange(NUM_IMAGES)):
            row_of_index = np.empty(NUM_IMAGES, dtype=np.int64)
            row_of_index[order] = np.arange(NUM_IMAGES)
            self._row_of_index = row_of_index
        self._packed = packed
        self.source = "npz"
        return self


def _split_mask(split: str) -> Optional[np.ndarray]:
    """Fixed 90/10 train/test partition of the grid (independent of the sampling seed)."""
    if split == "all":
        return None
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
    is_test = np.random.default_rng(20170101).random(NUM_IMAGES) < 0.1
    return is_test if split == "test" else ~is_test


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
    mask = _split_mask(split)
    pool = np.arange(NUM_IMAGES) if mask is None else np.nonzero(mask)[0]
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
