"""Images stored as one sub-folder per group (e.g. one folder per face identity)."""
from __future__ import annotations

import os

import numpy as np
import torch

from .base import ImageDataset

__all__ = ["IMAGE_EXTENSIONS", "load_image_folder"]

#: file extensions recognised as images (compared case-insensitively).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")


def _is_image_file(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def _load_one(path: str, size: int, mode: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.load()
            img = img.convert(mode)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"cannot read image {path!r}: {type(e).__name__}: {e}") from e
    w, h = img.size
    if w != h:  # centre-crop to a square
        s = min(w, h)
        left, top = (w - s) // 2, (h - s) // 2
        img = img.crop((left, top, left + s, top + s))
    if img.size != (size, size):
        resample = getattr(Image, "Resampling", Image).BILINEAR
        img = img.resize((size, size), resample=resample, reducing_gap=None)
    arr = np.asarray(img, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return arr


def load_image_folder(root, size: int = 64, channels: int = 3) -> ImageDataset:
    """Load ``root/<group>/<image>`` into memory; the group (sub-folder) is the label.

    Sub-folders are sorted by name and numbered 0, 1, ...; hidden entries (starting with ``.``) and files
    whose extension is not png/jpg/jpeg/bmp (any case) are ignored. Each image is converted to RGB
    (``channels=3``) or grey-scale ``L`` (``channels=1``), centre-cropped to a square and resized to
    ``size x size`` (bilinear).

    A folder has no built-in train/test split: keep held-out groups or images in a separate folder.

    :param root: the folder holding one sub-folder per group.
    :param int size: output height and width.
    :param int channels: 3 (RGB) or 1 (grey-scale).
    :return: :class:`ImageDataset` ``(N, channels, size, size)`` in ``[0, 1]``, ``y`` = group index,
        ``extras["group_names"]`` (list of sub-folder names, indexed by ``y``) and ``extras["paths"]`` (array of
        file paths, one per row, sliced by ``subset``). Name: the base name of ``root``.
    :raises FileNotFoundError: ``root`` does not exist or is not a folder.
    :raises ValueError: no sub-folders, a sub-folder without images (named), an unreadable image (named),
        a bad ``size`` or ``channels``.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (grey-scale) or 3 (RGB), got {channels}")
    size = int(size)
    if size < 1:
        raise ValueError(f"size must be a positive integer, got {size}")
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"image folder {root!r} does not exist or is not a directory")
    groups = sorted(
        d for d in os.listdir(root) if not d.startswith(".") and os.path.isdir(os.path.join(root, d))
    )
    if not groups:
        raise ValueError(
            f"image folder {root!r} has no sub-folders; expected one sub-folder per group, e.g. "
            f"{os.path.join(root, 'group_a', 'img0.png')}"
        )
    mode = "RGB" if channels == 3 else "L"
    paths, labels = [], []
    for gi, g in enumerate(groups):
        gdir = os.path.join(root, g)
        files = sorted(f for f in os.listdir(gdir) if _is_image_file(f) and os.path.isfile(os.path.join(gdir, f)))
        if not files:
            raise ValueError(
                f"group folder {gdir!r} (group {g!r}) holds no image files with extension "
                f"{'/'.join(IMAGE_EXTENSIONS)}"
            )
        paths.extend(os.path.join(gdir, f) for f in files)
        labels.extend([gi] * len(files))
    arrays = np.stack([_load_one(p, size, mode) for p in paths])  # (N, H, W, C) uint8
    x = torch.from_numpy(arrays).permute(0, 3, 1, 2).float().div_(255.0).contiguous()
    y = torch.tensor(labels, dtype=torch.long)
    name = os.path.basename(os.path.normpath(root)) or "folder"
    return ImageDataset(x, y, name, {"group_names": list(groups), "paths": np.array(paths)})
