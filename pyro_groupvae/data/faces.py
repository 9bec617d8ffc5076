"""Face identity folders (MS-Celeb-1M style: ``root/<identity>/<image>``), read lazily, with identity-disjoint
splits.

The ML-VAE paper (Bouchacourt et al. 2018, sec. 4) trains on the face-aligned MS-Celeb-1M grouped by identity
and "randomly separate[s] the dataset in disjoint sets of identities as the training, validation and testing
datasets" (48,880 / 25,000 / 25,000 of 98,880 identities), so that test groups are unseen people. This loader
does the same with a fixed seeded permutation of the (sorted) identity folders: by default 25,000/98,880 of the
identities for validation and as many for test.

MS-Celeb-1M itself was distributed as TSV files of base64 images (``FaceImageCroppedWithAlignment.tsv``); unpack
them into one folder per identity (the usual ``<MID>/<n>-FaceId-0.jpg`` layout) to use this loader.
"""
from __future__ import annotations

import os

import numpy as np
import torch

from .folder import ImageFileReader, check_header, check_size_channels, list_group_folder
from .lazy import LazyImageDataset

__all__ = ["load_face_identities", "identity_split"]

#: the ML-VAE paper's validation and test shares of the identities (25,000 of 98,880 each)
PAPER_HELD_OUT = 25000 / 98880


def identity_split(num_identities: int, split: str, val_fraction: float = PAPER_HELD_OUT,
                   test_fraction: float = PAPER_HELD_OUT, seed: int = 0) -> np.ndarray:
    """Identity indices (sorted) of ``split`` in a seeded random partition into train / val / test / all."""
    if split == "all":
        return np.arange(num_identities)
    if split not in ("train", "val", "test"):
        raise ValueError(f"split must be 'train', 'val', 'test' or 'all', got {split!r}")
    if not (0 <= val_fraction and 0 <= test_fraction and val_fraction + test_fraction < 1):
        raise ValueError(f"val_fraction + test_fraction must be below 1, got {val_fraction} + {test_fraction}")
    perm = np.random.default_rng(seed).permutation(num_identities)
    n_val, n_test = int(round(val_fraction * num_identities)), int(round(test_fraction * num_identities))
    parts = {"val": perm[:n_val], "test": perm[n_val:n_val + n_test], "train": perm[n_val + n_test:]}
    return np.sort(parts[split])


def load_face_identities(root, split: str = "train", size: int = 64, channels: int = 3, min_images: int = 2,
                         val_fraction: float = PAPER_HELD_OUT, test_fraction: float = PAPER_HELD_OUT, seed: int = 0,
                         cache: bool = False, verify_headers: bool = False) -> LazyImageDataset:
    """Face images in one folder per identity, read lazily, split by identity.

    :param root: folder with one sub-folder per identity.
    :param str split: ``"train"``, ``"val"``, ``"test"`` (disjoint identities) or ``"all"``.
    :param int size: output size (centre square crop, bilinear resize); :param int channels: 3 or 1.
    :param int min_images: identities with fewer images are skipped (a group needs 2 images to share content).
    :param float val_fraction: share of identities held out for validation; :param float test_fraction: for test.
    :param int seed: seed of the identity partition.
    :param bool cache: keep images in memory once read.
    :param bool verify_headers: open every file's header now (off by default: millions of files).
    :return: :class:`~pyro_groupvae.data.lazy.LazyImageDataset`; ``y``: identity renumbered ``0..G-1`` inside the
        split; ``extras["group_names"]`` (identity folder names, by ``y``), ``extras["paths"]``.
    """
    size = check_size_channels(size, channels)
    names, paths, labels = list_group_folder(root, min_images=max(int(min_images), 1))
    chosen = identity_split(len(names), split, val_fraction, test_fraction, seed)
    if len(chosen) == 0:
        raise ValueError(f"split {split!r} of {root!r} has no identity ({len(names)} identities with at least "
                         f"{min_images} images)")
    labels = np.asarray(labels)
    new = np.full(len(names), -1, dtype=np.int64)
    new[chosen] = np.arange(len(chosen))
    keep = new[labels] >= 0
    paths = np.asarray(paths)[keep]
    if verify_headers:
        for p in paths:
            check_header(str(p))
    y = torch.from_numpy(new[labels[keep]])
    base = os.path.basename(os.path.normpath(os.fspath(root))) or "faces"
    extras = {"group_names": [names[i] for i in chosen], "paths": paths}
    return LazyImageDataset(ImageFileReader(paths, size, channels), y, name=f"{base}-{split}", extras=extras,
                            cache=cache)
