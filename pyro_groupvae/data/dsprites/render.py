"""The dSprites renderer: every image of the grid drawn from its factors, point-sampled, no anti-aliasing.

The official files are not bundled with the package, so :class:`~pyro_groupvae.data.dsprites.DSprites` re-renders
the grid with this renderer, calibrated against 320 real frames (the traversal GIF of the public
deepmind/dsprites-dataset repository); the calibration measurements are in docs/results.md ("dSprites renderer").

Rendering model. Coordinates are in pixels, ``x`` to the right (columns), ``y`` down (rows); pixel
``(row i, col j)`` has its centre at ``(j + 0.5, i + 0.5)``.

* **Rasterisation**: a pixel is on iff its *centre* lies inside the shape (point sampling).
* **Position**: the sprite centre is at ``(16 + 32 * posX, 16 + 32 * posY)``; ``(0, 0)`` is the top-left.
  Consecutive positions are ``32/31`` pixel apart, so the rasterisation changes with the sub-pixel phase.
* **Orientation**: a positive angle turns the sprite counter-clockwise as seen on screen. Local sprite
  coordinates of an image point ``(x, y)`` relative to the centre are ``u = (x cos t - y sin t) / scale``,
  ``v = (x sin t + y cos t) / scale``.
* **Square**: ``max(|u|, |v|) <= 9.6`` (side 19.2 px = 0.3 of the canvas at scale 1).
* **Ellipse**: ``(u / 12.75)**2 + (v / 7.25)**2 <= 1`` (long axis horizontal at orientation 0).
* **Heart**: the classic parametric heart ``X = 16 sin^3 s``, ``Y = 13 cos s - 5 cos 2s - 2 cos 3s - cos 4s``,
  scaled by ``0.6`` horizontally and ``0.662`` vertically, upright (point down) at orientation 0, its bounding
  box centred ``0.245`` px above the rotation centre. Inside test: for ``|X| <= 16`` let
  ``c = cos(arcsin((|X|/16)^(1/3)))``; the point is inside iff ``|Y - A| <= B`` with ``A = -5 cos 2s - cos 4s`` and
  ``B = c (19 - 8 c^2)``.

Lattice: because positions step by ``32/31`` pixel, every image is the sprite sampled on a lattice with spacing
``1/31`` pixel: a ``32 x 32`` window at one of ``31 x 31`` sub-pixel phases, pasted at an integer offset
(:func:`paste_rows`). Windows are bit-packed rows (uint32, column 0 in bit 31).
"""
from __future__ import annotations

import numpy as np

from .factors import FACTOR_SIZES, IMAGE_SIZE, ORIENTATIONS, SCALES

__all__ = ["WINDOW", "NUM_PHASES", "NUM_SPRITES", "RENDER_VERSION", "inside", "lattice_coords", "render_windows",
           "render_table", "paste_rows", "pack_rows"]

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
LATTICE = 31
WINDOW = 32
NUM_PHASES = 31
NUM_SPRITES = FACTOR_SIZES[1] * FACTOR_SIZES[2] * FACTOR_SIZES[3]
RENDER_VERSION = "dsprites-render-v1"


def inside(shape: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
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


def lattice_coords(phase: np.ndarray, lo: int = 0, hi: int = WINDOW) -> np.ndarray:
    """Sprite-relative pixel-centre coordinates of window pixels ``lo..hi-1`` for the given sub-pixel phases.

    Window pixel ``b`` at phase ``p`` sits at ``b - 16 + 0.5 - p / 31`` pixels from the sprite centre, i.e. on the
    lattice ``(m + 0.5) / 31`` with integer ``m = 31 (b - 16) + 15 - p``; computing it from ``m`` makes every
    code path produce bit-identical coordinates.

    :param np.ndarray phase: integer phases in ``[0, 31)``, any shape ``S``.
    :return: float64 array of shape ``S + (hi - lo,)``.
    """
    b = np.arange(lo, hi)
    m = LATTICE * (b - WINDOW // 2) + 15 - np.asarray(phase)[..., None]
    return (m + 0.5) / LATTICE


def crop(shape: int, scale_idx: int):
    """Window index range ``[lo, hi)`` that can contain pixels of this sprite (1 px margin)."""
    r = _MAX_RADIUS[shape] * SCALES[scale_idx]
    lo = max(0, int(np.floor(WINDOW // 2 - r - 0.5)) - 1)
    hi = min(WINDOW, int(np.ceil(WINDOW // 2 + r + 0.5)) + 2)
    return lo, hi


def pack_rows(mask: np.ndarray) -> np.ndarray:
    """Pack the last axis (32 booleans, column 0 first) into uint32 rows with column 0 in bit 31."""
    return np.packbits(mask, axis=-1).view(">u4")[..., 0].astype(np.uint32)


def render_windows(shape: np.ndarray, scale_idx: np.ndarray, orient_idx: np.ndarray, phase_x: np.ndarray,
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
    out = np.zeros((n, WINDOW), dtype=np.uint32)
    group = shape * FACTOR_SIZES[2] + scale_idx
    for g in np.unique(group):
        s, k = divmod(int(g), FACTOR_SIZES[2])
        lo, hi = crop(s, k)
        for start in range(0, n, chunk):
            sel = start + np.nonzero(group[start:start + chunk] == g)[0]
            if len(sel):
                out[sel] = _render_group(s, k, lo, hi, orient_idx[sel], phase_x[sel], phase_y[sel])
    return out


def _render_group(s: int, k: int, lo: int, hi: int, orient_idx: np.ndarray, phase_x: np.ndarray,
                  phase_y: np.ndarray) -> np.ndarray:
    """Windows of one (shape, scale) group, only window pixels ``lo..hi-1`` evaluated; see
    :func:`render_windows`."""
    x = lattice_coords(phase_x, lo, hi)[:, None, :]
    y = lattice_coords(phase_y, lo, hi)[:, :, None]
    c = _COS[orient_idx][:, None, None]
    si = _SIN[orient_idx][:, None, None]
    sc = SCALES[k]
    u = (x * c - y * si) / sc
    v = (x * si + y * c) / sc
    win = np.zeros((len(orient_idx), WINDOW, WINDOW), dtype=bool)
    win[:, lo:hi, lo:hi] = inside(s, u, v)
    return pack_rows(win)


def render_table(shape: int, scale_idx: int, orient_idx: int) -> np.ndarray:
    """All ``31 x 31`` sub-pixel phases of one sprite: uint32 ``(31, 31, 32)`` indexed
    ``[phase_y, phase_x, row]`` (column 0 in bit 31). Uses exactly the arithmetic of :func:`render_windows`."""
    ph = np.arange(NUM_PHASES)
    lo, hi = crop(shape, scale_idx)
    x = lattice_coords(ph, lo, hi)[None, :, None, :]  # (1, px, 1, b)
    y = lattice_coords(ph, lo, hi)[:, None, :, None]  # (py, 1, a, 1)
    c, si, sc = _COS[orient_idx], _SIN[orient_idx], SCALES[scale_idx]
    u = (x * c - y * si) / sc
    v = (x * si + y * c) / sc
    win = np.zeros((NUM_PHASES, NUM_PHASES, WINDOW, WINDOW), dtype=bool)
    win[:, :, lo:hi, lo:hi] = inside(shape, u, v)
    return pack_rows(win)


def paste_rows(rows32: np.ndarray, base_y: np.ndarray, base_x: np.ndarray) -> np.ndarray:
    """Place ``(n, 32)`` uint32 window rows at integer offsets; returns the images bit-packed, ``(n, 512)``
    uint8 in ``np.packbits`` order (row-major, first pixel in the most significant bit)."""
    n = len(rows32)
    img = np.zeros((n, IMAGE_SIZE), dtype=np.uint64)
    shift = (WINDOW - base_x).astype(np.uint64)[:, None]
    img[np.arange(n)[:, None], base_y[:, None] + np.arange(WINDOW)] = rows32.astype(np.uint64) << shift
    return img.astype(">u8").view(np.uint8).reshape(n, IMAGE_SIZE * IMAGE_SIZE // 8)
