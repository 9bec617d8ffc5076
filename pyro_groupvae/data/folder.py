"""Images stored as one sub-folder per group (e.g. one folder per face identity), read lazily.

Pixel modes (a folder may mix them; every image is converted to the requested ``channels``):

* 8-bit ``L``, ``RGB``, ``P`` (palette), ``1`` (bilevel), ``CMYK``, ``YCbCr``: Pillow's conversion to ``RGB`` or
  ``L`` (ITU-R 601-2 luma).
* 16-bit grey-scale (``I;16``, ``I;16B``, ``I;16L``; and ``I`` with values in ``0..65535``, as older Pillow opens
  16-bit PNGs): scaled to 8 bits by ``round(v / 257)`` (65535 -> 255). Pillow's own ``convert("L")`` clips every
  value above 255 to white, which turned a 16-bit PNG 99.7 % white; we never use it for these modes.
* With transparency (``RGBA``, ``LA``, ``PA``, ``P`` with a transparent colour): alpha-composited over black
  (a transparent pixel reads as black, as it would with premultiplied alpha). Chosen over dropping alpha, which
  shows whatever colour the transparent pixels happen to store.
* Refused, with the file named: 32-bit float (``F``), ``I`` with values outside ``0..65535``, and any other mode.
"""
from __future__ import annotations

import os
from typing import Optional

import numpy as np
import torch

from .base import ImageDataset
from .lazy import LazyImageDataset, resize_square

__all__ = ["IMAGE_EXTENSIONS", "load_image_folder", "ImageFileReader", "read_image", "list_group_folder"]

#: file extensions recognised as images (compared case-insensitively).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")

_8BIT_MODES = {"1", "L", "P", "RGB", "RGBX", "CMYK", "YCbCr"}
_16BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N"}
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}


def _is_image_file(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def _convert(img, channels: int, path: str):
    """Convert a loaded PIL image of any supported mode to ``RGB`` (channels 3) or ``L`` (channels 1)."""
    from PIL import Image

    mode = img.mode
    if mode in _16BIT_MODES or mode == "I":
        a = np.asarray(img)
        if mode == "I" and a.size and (a.min() < 0 or a.max() > 65535):
            raise ValueError(f"cannot read image {path!r}: 32-bit integer pixels with values {a.min()}..{a.max()}, "
                             "outside the 16-bit range 0..65535; save it as an 8- or 16-bit image")
        img = Image.fromarray(np.round(a.astype(np.float64) / 257.0).astype(np.uint8), "L")
    elif mode in _ALPHA_MODES or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        img = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba)
    elif mode not in _8BIT_MODES:
        raise ValueError(f"cannot read image {path!r}: pixel mode {mode!r} is not supported (expected 8-bit "
                         "grey/RGB/palette, 16-bit grey, or with alpha); convert it to 8-bit RGB or grey-scale")
    return img.convert("RGB" if channels == 3 else "L")


def read_image(path: str, size: Optional[int], channels: int, crop: Optional[int] = None) -> np.ndarray:
    """Read one image file: converted (see the module docstring), centre-cropped to a square (``crop x crop``
    when ``crop`` is given, else the largest centred square) and resized to ``size x size`` (bilinear).
    Returns uint8 ``(H, W, channels)``.

    :raises ValueError: unreadable, truncated or unsupported image (the message names the file).
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.load()
            img = _convert(img, channels, path)
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise ValueError(f"cannot read image {path!r}: {type(e).__name__}: {e}") from e
    arr = np.asarray(resize_square(img, size, crop), dtype=np.uint8)
    return arr[:, :, None] if arr.ndim == 2 else arr


def check_header(path: str) -> None:
    """Raise a one-line ``ValueError`` if ``path`` is not a readable image (parses the header only)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.size  # noqa: B018 (parsing the header is the check)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"cannot read image {path!r}: {type(e).__name__}: {e}") from e


class ImageFileReader:
    """Reader (see :mod:`pyro_groupvae.data.lazy`) of image files: one file per row, read with :func:`read_image`.

    :param paths: file paths, one per row.
    :param int size: output height and width.
    :param int channels: 3 (RGB) or 1 (grey-scale).
    :param int crop: centre crop (pixels) before resizing; default: the largest centred square.
    """

    dtype = np.uint8

    def __init__(self, paths, size: int, channels: int, crop: Optional[int] = None):
        self.paths = np.asarray(paths)
        self.size, self.channels, self.crop = int(size), int(channels), crop
        self.image_shape = (self.channels, self.size, self.size)

    def __len__(self):
        return len(self.paths)

    def read(self, rows: np.ndarray) -> np.ndarray:
        out = np.empty((len(rows), self.size, self.size, self.channels), dtype=np.uint8)
        for k, r in enumerate(rows):
            out[k] = read_image(str(self.paths[r]), self.size, self.channels, self.crop)
        return np.ascontiguousarray(out.transpose(0, 3, 1, 2))


def check_size_channels(size, channels):
    """Validate image ``channels`` (1 or 3) and ``size`` (positive); return ``size`` as an int."""
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (grey-scale) or 3 (RGB), got {channels}")
    size = int(size)
    if size < 1:
        raise ValueError(f"size must be a positive integer, got {size}")
    return size


def list_group_folder(root, min_images: int = 1):
    """``(group names, paths, labels)`` of ``root/<group>/<image>`` (sorted; hidden entries and non-images skipped).

    :param int min_images: groups with fewer images are an error when ``min_images == 1`` (an empty group
        folder), and skipped otherwise.
    :raises FileNotFoundError: ``root`` missing; :raises ValueError: no sub-folders, an empty group folder.
    """
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"image folder {root!r} does not exist or is not a directory")
    with os.scandir(root) as it:
        groups = sorted(e.name for e in it if not e.name.startswith(".") and e.is_dir())
    if not groups:
        raise ValueError(
            f"image folder {root!r} has no sub-folders; expected one sub-folder per group, e.g. "
            f"{os.path.join(root, 'group_a', 'img0.png')}"
        )
    names, paths, labels = [], [], []
    for g in groups:
        gdir = os.path.join(root, g)
        with os.scandir(gdir) as it:
            files = sorted(e.name for e in it if _is_image_file(e.name) and e.is_file())
        if not files and min_images <= 1:
            raise ValueError(
                f"group folder {gdir!r} (group {g!r}) holds no image files with extension "
                f"{'/'.join(IMAGE_EXTENSIONS)}"
            )
        if len(files) < max(min_images, 1):
            continue
        paths.extend(os.path.join(gdir, f) for f in files)
        labels.extend([len(names)] * len(files))
        names.append(g)
    if not names:
        raise ValueError(f"no group folder in {root!r} holds at least {min_images} images")
    return names, paths, labels


def load_image_folder(root, size: int = 64, channels: int = 3, lazy: bool = True, cache: bool = False,
                      verify_headers: bool = True):
    """Images of ``root/<group>/<image>``; the group (sub-folder) is the label.

    Sub-folders are sorted by name and numbered 0, 1, ...; hidden entries (starting with ``.``) and files
    whose extension is not png/jpg/jpeg/bmp (any case) are ignored. Each image is converted to RGB
    (``channels=3``) or grey-scale (``channels=1``) as described in the module docstring, centre-cropped to a
    square and resized to ``size x size`` (bilinear).

    A folder has no built-in train/test split: keep held-out groups or images in a separate folder.

    :param root: the folder holding one sub-folder per group.
    :param int size: output height and width.
    :param int channels: 3 (RGB) or 1 (grey-scale).
    :param bool lazy: read images on access (:class:`~pyro_groupvae.data.lazy.LazyImageDataset`, default); with
        ``False`` read them all now into an in-memory :class:`ImageDataset`.
    :param bool cache: (lazy) keep images in memory once read.
    :param bool verify_headers: (lazy) open every file's header now, so that an unreadable file is reported at
        load time rather than mid-epoch (one header read per file, see docs/datasets/folder.md; a truncated body
        is still only found when the image is read, with the file named).
    :return: ``y`` = group index, ``extras["group_names"]`` (list of sub-folder names, indexed by ``y``) and
        ``extras["paths"]`` (array of file paths, one per row, sliced by ``subset``); images
        ``(N, channels, size, size)`` in ``[0, 1]``. Name: the base name of ``root``.
    :raises FileNotFoundError: ``root`` does not exist or is not a folder.
    :raises ValueError: no sub-folders, a sub-folder without images (named), an unreadable image (named),
        a bad ``size`` or ``channels``.
    """
    size = check_size_channels(size, channels)
    groups, paths, labels = list_group_folder(root)
    name = os.path.basename(os.path.normpath(os.fspath(root))) or "folder"
    extras = {"group_names": list(groups), "paths": np.array(paths)}
    reader = ImageFileReader(paths, size, channels)
    y = torch.tensor(labels, dtype=torch.long)
    if not lazy:
        x = torch.from_numpy(reader.read(np.arange(len(paths)))).float().div_(255.0)
        return ImageDataset(x, y, name, extras)
    if verify_headers:
        for p in paths:
            check_header(p)
    return LazyImageDataset(reader, y, name=name, extras=extras, cache=cache)
