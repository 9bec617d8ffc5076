"""Ground-truth benchmarks with their factors of variation, read from the files their authors publish.

The common interface (:class:`GroundTruthData`, a protocol) is what the FactorVAE / DCI / MIG code in
:mod:`pyro_groupvae.evaluation.disentanglement` uses, and what :class:`pyro_groupvae.data.dsprites.DSprites`
already offers: ``factor_names``, ``factor_sizes``, ``num_factors``, ``factor_values``, ``__len__``,
``image_shape``, ``index_to_factors(idx)``, ``factors_to_index(factors)``, ``sample_factors(n, seed)``,
``sample_observations_from_factors(factors, seed)`` (float32 ``(n, C, H, W)`` in ``[0, 1]``) and ``images(idx)``.
:class:`GroundTruthDataset` implements it once for data stored on a complete factor grid; each loader only says
how to open its files. A :class:`GroundTruthDataset` is also a torch ``Dataset`` (``ds[i] -> (image, label)``, the
label being one chosen factor), and :meth:`GroundTruthDataset.as_dataset` gives a lazy
:class:`~pyro_groupvae.data.lazy.LazyImageDataset` split for training.

=================  =============================================  ===============================================
data set           files (as published)                           factors (sizes)
=================  =============================================  ===============================================
3D Shapes          ``3dshapes.h5``: ``images`` (480000, 64, 64,   floor_hue 10, wall_hue 10, object_hue 10,
                   3) uint8, ``labels`` (480000, 6) float64       scale 8, shape 4, orientation 15
MPI3D              ``mpi3d_{toy,realistic,real}.npz``: ``images`` object_color 6, object_shape 6, object_size 2,
                   (1036800, 64, 64, 3) uint8, row-major in the   camera_height 3, background_color 3,
                   factors; no labels                             horizontal_axis 40, vertical_axis 40
                                                                  (460,800-image files: colour, shape 4 each)
SmallNORB          ``smallnorb-5x46789x9x18x6x2x96x96-training-   category 5, elevation 9, azimuth 18,
                   {dat,cat,info}.mat`` and ``...-testing-...``   lighting 6 (instance: a nuisance, sampled)
                   NORB binary matrices (``.mat`` or ``.mat.gz``)
Cars3D             ``cars/car_*_mesh.mat`` (MATLAB v5, ``im``     elevation 4, azimuth 24, object 183
                   (128, 128, 3, 24, 4) uint8) from
                   ``nips2015-analogy-data.tar.gz``; or
                   ``cars3d.npz`` (``images`` (17568, 128, 128,
                   3), disent's conversion)
dSprites           :class:`~pyro_groupvae.data.dsprites.DSprites`  color 1, shape 3, scale 6, orientation 40,
                   (rendered, or the official npz)                posX 32, posY 32
=================  =============================================  ===============================================

Choices (where the sources differ):

* SmallNORB follows disentanglement_lib: the left camera image (``dat[:, 0]``) resized to 64x64, the instance
  a nuisance drawn uniformly when observations are sampled from factors (``factors_to_index`` takes a seed);
  ``split="train"``/``"test"`` are the official files (instances 4, 6, 7, 8, 9 / 0, 1, 2, 3, 5), ``"all"`` both.
* Cars3D reads the official per-car ``.mat`` files (the order of the cars: ``cars/list.txt`` when present,
  else sorted file names; disentanglement_lib uses the directory listing order, which is not defined) and
  resizes to 64x64 as disentanglement_lib does; the npz in disent's layout is accepted too.
* MPI3D factor sizes follow the file size: the public 1,036,800-image files are 6x6x2x3x3x40x40 (the dataset's
  README); disentanglement_lib's ``[4, 4, 2, 3, 3, 40, 40]`` only fits 460,800-image files. Other sizes need
  ``factor_sizes=``.
* Train/test splits of 3D Shapes, MPI3D and Cars3D (which have none): a fixed random 90/10 partition of the grid
  (seed 20170101, as our dSprites), independent of the sampling seed.

Checksums: the published MD5s in :data:`pyro_groupvae.data.lazy.KNOWN_MD5` are checked (a mismatch warns, naming
the file); ``verify=True`` also hashes files over 2 GiB, ``verify=False`` skips.
"""
from __future__ import annotations

import functools
import gzip
import os
import zipfile
from collections import OrderedDict
from typing import Optional, Protocol, Sequence, runtime_checkable

import numpy as np
import torch

from .lazy import ArrayReader, LazyImageDataset, _Const, resize_square, verify_md5

__all__ = ["GroundTruthData", "GroundTruthDataset", "load_3dshapes", "load_mpi3d", "load_smallnorb", "load_cars3d",
           "load_ground_truth", "read_norb_matrix", "npz_member", "GROUND_TRUTH_DATASETS", "split_rows",
           "grid_permutation"]

SPLIT_SEED = 20170101


@runtime_checkable
class GroundTruthData(Protocol):
    """What the disentanglement metrics need from a ground-truth data set (``DSprites`` satisfies it)."""

    factor_names: Sequence[str]
    factor_sizes: Sequence[int]

    @property
    def num_factors(self) -> int: ...

    @property
    def factor_values(self) -> list: ...

    def __len__(self) -> int: ...

    def index_to_factors(self, idx) -> torch.Tensor: ...

    def factors_to_index(self, factors) -> torch.Tensor: ...

    def sample_factors(self, n: int, generator_or_seed=None) -> torch.Tensor: ...

    def sample_observations_from_factors(self, factors, generator_or_seed=None) -> torch.Tensor: ...

    def images(self, idx) -> torch.Tensor: ...


def as_rng(generator_or_seed) -> np.random.Generator:
    """A numpy Generator from an int seed, ``None``, a numpy Generator/RandomState or a ``torch.Generator``."""
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


def _np(a) -> np.ndarray:
    return a.detach().cpu().numpy() if torch.is_tensor(a) else np.asarray(a)


def split_rows(n: int, split: str, test_fraction: float = 0.1, seed: int = SPLIT_SEED) -> np.ndarray:
    """Rows of a fixed random train/test partition: ``"train"``, ``"test"`` or ``"all"``."""
    if split == "all":
        return np.arange(n, dtype=np.int64)
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train', 'test' or 'all' (ground-truth data have no validation split), "
                         f"got {split!r}")
    is_test = np.random.default_rng(seed).random(n) < test_fraction
    return np.nonzero(is_test if split == "test" else ~is_test)[0].astype(np.int64)


class GroundTruthDataset(torch.utils.data.Dataset):
    """Images on a complete factor grid, read lazily; implements :class:`GroundTruthData`.

    Row ``i`` of the grid has the factor indices ``np.unravel_index(i, all_factor_sizes)`` (row-major, last factor
    fastest); ``reader`` must return the images in that row order. Factors not in ``latent`` are nuisances: hidden
    from the interface and drawn uniformly by :meth:`factors_to_index`.

    :param reader: lazy reader (see :mod:`pyro_groupvae.data.lazy`) of the grid's images.
    :param all_factor_names: names of every stored factor.
    :param all_factor_values: values of every factor (a sequence of arrays; their lengths are the sizes).
    :param latent: indices of the latent factors (default: all).
    :param label_factor: latent factor (name or position) used as the label ``y`` (default: the first with more
        than one value).
    :param bool cache: keep images in memory once read.
    :param str name: short name.
    """

    def __init__(self, reader, all_factor_names, all_factor_values, latent=None, label_factor=None,
                 cache: bool = False, name: str = ""):
        self.all_factor_names = tuple(all_factor_names)
        self.all_factor_values = [np.asarray(v) for v in all_factor_values]
        self.all_factor_sizes = tuple(len(v) for v in self.all_factor_values)
        n = int(np.prod(self.all_factor_sizes))
        if len(reader) != n:
            raise ValueError(f"{name}: {len(reader)} images do not fill the factor grid "
                             f"{'x'.join(map(str, self.all_factor_sizes))} = {n}")
        self.latent_factor_indices = list(range(len(self.all_factor_sizes))) if latent is None else list(latent)
        self.factor_names = tuple(self.all_factor_names[i] for i in self.latent_factor_indices)
        self.factor_sizes = tuple(self.all_factor_sizes[i] for i in self.latent_factor_indices)
        self.name = name
        if label_factor is None:
            label_factor = next((k for k, s in enumerate(self.factor_sizes) if s > 1), 0)
        elif isinstance(label_factor, str):
            if label_factor not in self.factor_names:
                raise ValueError(f"{name}: unknown label factor {label_factor!r}; factors: {list(self.factor_names)}")
            label_factor = self.factor_names.index(label_factor)
        self.label_factor = int(label_factor)
        self.reader = reader
        self._cache = cache
        self._dataset = None

    # ------------------------------------------------------------------ interface
    @property
    def num_factors(self) -> int:
        return len(self.factor_sizes)

    @property
    def factor_values(self) -> list:
        return [self.all_factor_values[i].copy() for i in self.latent_factor_indices]

    @property
    def image_shape(self) -> tuple:
        return tuple(self.reader.image_shape)

    def __len__(self) -> int:
        return len(self.reader)

    def __repr__(self):
        return (f"{type(self).__name__}(n={len(self)}, factors={dict(zip(self.factor_names, self.factor_sizes))}, "
                f"image_shape={self.image_shape})")

    def _check_index(self, idx) -> np.ndarray:
        arr = _np(idx)
        if arr.dtype == bool:
            raise TypeError("boolean masks are not supported as indices; use np.nonzero(mask)[0]")
        arr = arr.astype(np.int64).reshape(-1)
        if arr.size and (arr.min() < 0 or arr.max() >= len(self)):
            raise IndexError(f"{self.name} indices must lie in [0, {len(self)}), got {arr.min()}..{arr.max()}")
        return arr

    def all_factors_of_index(self, idx) -> torch.Tensor:
        """Every stored factor (nuisances included) of image indices: LongTensor ``(n, len(all_factor_sizes))``."""
        arr = self._check_index(idx)
        return torch.from_numpy(np.stack(np.unravel_index(arr, self.all_factor_sizes), 1).astype(np.int64))

    def index_to_factors(self, idx) -> torch.Tensor:
        """Latent factor indices of image indices: LongTensor ``(n, num_factors)``."""
        return self.all_factors_of_index(idx)[:, self.latent_factor_indices]

    def factors_to_index(self, factors, generator_or_seed=None) -> torch.Tensor:
        """Image indices of latent factor indices ``(n, num_factors)`` (nuisance factors drawn uniformly)."""
        arr = _np(factors)
        if arr.ndim == 1:
            arr = arr[None, :]
        if arr.ndim != 2 or arr.shape[1] != self.num_factors:
            raise ValueError(f"factors must have shape (n, {self.num_factors}), got {arr.shape}")
        arr = arr.astype(np.int64)
        if arr.size and ((arr < 0).any() or (arr >= np.asarray(self.factor_sizes)).any()):
            raise ValueError(f"factor indices out of range; sizes are {self.factor_sizes}")
        full = np.zeros((len(arr), len(self.all_factor_sizes)), dtype=np.int64)
        full[:, self.latent_factor_indices] = arr
        nuisance = [k for k in range(len(self.all_factor_sizes)) if k not in self.latent_factor_indices]
        if nuisance:
            rng = as_rng(generator_or_seed)
            for k in nuisance:
                full[:, k] = rng.integers(0, self.all_factor_sizes[k], size=len(arr))
        return torch.from_numpy(np.ravel_multi_index(tuple(full.T), self.all_factor_sizes).astype(np.int64))

    def sample_factors(self, n: int, generator_or_seed=None) -> torch.Tensor:
        """``n`` latent factor combinations drawn uniformly: LongTensor ``(n, num_factors)``."""
        rng = as_rng(generator_or_seed)
        return torch.from_numpy(np.stack([rng.integers(0, s, size=int(n)) for s in self.factor_sizes], 1)
                                .astype(np.int64).reshape(int(n), self.num_factors))

    def sample_observations_from_factors(self, factors, generator_or_seed=None) -> torch.Tensor:
        """Images of the given latent factors: float32 ``(n, C, H, W)`` in ``[0, 1]``."""
        return self.images(self.factors_to_index(factors, generator_or_seed))

    def sample(self, n: int, generator_or_seed=None):
        """``(factors (n, num_factors), images (n, C, H, W))``."""
        rng = as_rng(generator_or_seed)
        f = self.sample_factors(n, rng)
        return f, self.sample_observations_from_factors(f, rng)

    def sample_observations(self, n: int, generator_or_seed=None) -> torch.Tensor:
        return self.sample(n, generator_or_seed)[1]

    def images(self, idx) -> torch.Tensor:
        """Images by grid index: float32 ``(n, C, H, W)`` in ``[0, 1]``."""
        return self.dataset.x[self._check_index(idx)]

    # ------------------------------------------------------------------ torch Dataset / training data
    @property
    def dataset(self) -> LazyImageDataset:
        """All images as a :class:`LazyImageDataset` (``y``: the label factor)."""
        if self._dataset is None:
            self._dataset = self._make_dataset(np.arange(len(self), dtype=np.int64), self.label_factor)
        return self._dataset

    def _make_dataset(self, rows, label):
        factors = self.index_to_factors(rows)
        extras = {"factors": factors, "index": torch.from_numpy(rows), "factor_names": list(self.factor_names),
                  "factor_sizes": list(self.factor_sizes)}
        shared = self._dataset._cache if self._dataset is not None else None
        return LazyImageDataset(self.reader, factors[:, label].clone(), rows=rows, name=self.name, extras=extras,
                                cache=self._cache and shared is None, _cache=shared)

    @property
    def y(self) -> torch.Tensor:
        return self.dataset.y

    @property
    def x(self):
        return self.dataset.x

    def __getitem__(self, i):
        return self.dataset[i]

    def __getitems__(self, indices):
        return self.dataset.__getitems__(indices)

    def as_dataset(self, split: str = "all", n: Optional[int] = None, seed: int = 0, label_factor=None,
                   test_fraction: float = 0.1) -> LazyImageDataset:
        """A lazy training set: the rows of ``split`` (fixed 90/10 partition, see :func:`split_rows`), optionally a
        random subset of ``n`` of them (seeded, random order).

        :return: :class:`LazyImageDataset` with ``y`` the label factor, ``extras["factors"]`` ``(n, num_factors)``,
            ``extras["index"]`` (grid indices), ``factor_names``, ``factor_sizes``.
        """
        rows = split_rows(len(self), split, test_fraction)
        if n is not None:
            n = int(n)
            if not 0 <= n <= len(rows):
                raise ValueError(f"n must be in [0, {len(rows)}] for split {split!r}, got {n}")
            rows = np.random.default_rng(seed).choice(rows, size=n, replace=False)
        label = self.label_factor
        if label_factor is not None:
            label = self.factor_names.index(label_factor) if isinstance(label_factor, str) else int(label_factor)
        self.dataset  # noqa: B018 (create the shared cache first)
        ds = self._make_dataset(rows, label)
        ds.name = f"{self.name}-{split}"
        return ds


# ---------------------------------------------------------------------------------------------- file helpers
def _need_file(path: str, what: str) -> str:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} not found: expected the file {path!r}")
    return path


def npz_member(path: str, key: str):
    """Array ``key`` of an ``.npz`` file: memory-mapped when stored uncompressed (``np.savez``, read lazily), read
    into memory when compressed (``np.savez_compressed``).

    :raises ValueError: not a zip file, truncated, no such array (naming the file and the arrays found).
    """
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise ValueError(f"{path!r} is not a readable .npz file (truncated or corrupt?): {e}") from e
    with zf:
        names = zf.namelist()
        member = key + ".npy"
        if member not in names:
            raise ValueError(f"{path!r} has no array {key!r} (found {sorted(n[:-4] for n in names)})")
        info = zf.getinfo(member)
        if info.compress_type == zipfile.ZIP_STORED:
            with open(path, "rb") as f:
                f.seek(info.header_offset)
                local = f.read(30)
                if len(local) != 30 or local[:4] != b"PK\x03\x04":
                    raise ValueError(f"{path!r}: corrupt zip entry for {key!r}")
                name_len = int.from_bytes(local[26:28], "little")
                extra_len = int.from_bytes(local[28:30], "little")
                f.seek(info.header_offset + 30 + name_len + extra_len)
                try:
                    version = np.lib.format.read_magic(f)
                    shape, fortran, dtype = (np.lib.format.read_array_header_1_0(f) if version == (1, 0)
                                             else np.lib.format.read_array_header_2_0(f))
                except ValueError as e:
                    raise ValueError(f"{path!r}: array {key!r} has a bad .npy header: {e}") from e
                offset = f.tell()
            need = offset + int(np.prod(shape)) * dtype.itemsize
            if os.path.getsize(path) < need:
                raise ValueError(f"{path!r} is truncated: array {key!r} {shape} {dtype} needs {need} bytes, "
                                 f"the file has {os.path.getsize(path)}")
            return np.memmap(path, dtype=dtype, mode="r", shape=tuple(shape), offset=offset,
                             order="F" if fortran else "C")
        try:
            with zf.open(member) as f:
                return np.lib.format.read_array(f)
        except (zipfile.BadZipFile, EOFError, OSError, ValueError) as e:
            raise ValueError(f"{path!r}: cannot read array {key!r} (truncated or corrupt?): {e}") from e


_NORB_TYPES = {0x1E3D4C55: np.uint8, 0x1E3D4C54: np.int32, 0x1E3D4C56: np.int16, 0x1E3D4C51: np.float32,
               0x1E3D4C53: np.float64}


def read_norb_matrix(path: str, mmap: bool = True) -> np.ndarray:
    """Read a NORB binary matrix (``.mat``, or gzip-compressed ``.mat.gz``).

    Format (https://cs.nyu.edu/~ylclab/data/norb-v1.0-small/): little-endian int32 magic (``0x1E3D4C55`` uint8,
    ``0x1E3D4C54`` int32, ``0x1E3D4C56`` int16, ``0x1E3D4C51`` float32, ``0x1E3D4C53`` float64), int32 ``ndim``,
    ``max(3, ndim)`` int32 dimensions, then the data in row-major order. Uncompressed files are memory-mapped.

    :raises ValueError: a wrong magic number, a bad ``ndim``, or a file shorter than its header says (the message
        names the file and what was expected).
    """
    _need_file(path, "NORB matrix")
    if path.endswith(".gz"):
        with gzip.open(path, "rb") as f:
            try:
                buf = f.read()
            except (OSError, EOFError) as e:
                raise ValueError(f"{path!r}: gzip stream is truncated or corrupt: {e}") from e
        head = buf[:24]
    else:
        buf = None
        with open(path, "rb") as f:
            head = f.read(24)
    if len(head) < 8:
        raise ValueError(f"{path!r} is too short for a NORB binary matrix header ({len(head)} bytes)")
    magic, ndim = (int(v) for v in np.frombuffer(head[:8], "<i4"))
    if magic not in _NORB_TYPES:
        raise ValueError(f"{path!r} is not a NORB binary matrix: magic number {magic & 0xFFFFFFFF:#010x}, expected "
                         "one of " + ", ".join(f"{k:#010x} ({np.dtype(v).name})" for k, v in _NORB_TYPES.items()))
    if not 1 <= ndim <= 16:
        raise ValueError(f"{path!r}: bad number of dimensions {ndim} in the NORB header")
    stored = max(3, ndim)
    header_len = 8 + 4 * stored
    if buf is not None:
        head = buf[:header_len]
    elif len(head) < header_len:
        with open(path, "rb") as f:
            head = f.read(header_len)
    if len(head) < header_len:
        raise ValueError(f"{path!r} is truncated inside its NORB header")
    dims = tuple(int(d) for d in np.frombuffer(head[8:header_len], "<i4")[:ndim])
    dtype = np.dtype(_NORB_TYPES[magic]).newbyteorder("<")
    need = header_len + int(np.prod(dims)) * dtype.itemsize
    have = len(buf) if buf is not None else os.path.getsize(path)
    if have < need:
        raise ValueError(f"{path!r} is truncated: its header says {dims} {dtype.name} ({need} bytes), the "
                         f"{'decompressed ' if buf is not None else ''}file has {have} bytes")
    if buf is not None:
        return np.frombuffer(buf, dtype=dtype, count=int(np.prod(dims)), offset=header_len).reshape(dims)
    if mmap:
        return np.memmap(path, dtype=dtype, mode="r", shape=dims, offset=header_len)
    return np.fromfile(path, dtype=dtype, count=int(np.prod(dims)), offset=header_len).reshape(dims)


def grid_permutation(codes: np.ndarray, sizes, path: str, what: str) -> Optional[np.ndarray]:
    """``row_map`` (grid index -> stored row) from per-row factor indices, or ``None`` when stored in grid order.

    :raises ValueError: the rows do not cover the grid exactly once.
    """
    n = int(np.prod(sizes))
    if len(codes) != n:
        raise ValueError(f"{path!r}: {len(codes)} {what} do not fill the factor grid "
                         f"{'x'.join(map(str, sizes))} = {n}")
    order = np.ravel_multi_index(tuple(codes.T), sizes)
    if np.array_equal(order, np.arange(n)):
        return None
    row_map = np.full(n, -1, dtype=np.int64)
    row_map[order] = np.arange(n)
    if (row_map < 0).any():
        raise ValueError(f"{path!r}: the {what} do not form a complete factor grid "
                         f"({int((row_map < 0).sum())} factor combinations missing, others repeated)")
    return row_map


# ---------------------------------------------------------------------------------------------- 3D Shapes
SHAPES3D_FACTORS = ("floor_hue", "wall_hue", "object_hue", "scale", "shape", "orientation")
SHAPES3D_SIZES = (10, 10, 10, 8, 4, 15)


def _h5py():
    try:
        import h5py
    except ImportError as e:  # pragma: no cover - h5py is an optional dependency (extra "data")
        raise ImportError("reading 3dshapes.h5 needs h5py: pip install h5py (or pip install "
                          "pyro_groupvae[data])") from e
    return h5py


class _H5Opener:
    def __init__(self, path, key):
        self.path, self.key = path, key

    def __call__(self):
        return _h5py().File(self.path, "r")[self.key]


def load_3dshapes(root, label_factor="shape", cache: bool = False, verify: Optional[bool] = None,
                  checksums: Optional[dict] = None) -> GroundTruthDataset:
    """3D Shapes (Burgess & Kim, 2018) from the official ``3dshapes.h5``, read lazily.

    The factor values are read from ``labels``; rows are indexed row-major in the factor values (the file's own
    order, checked; a file in another order is re-indexed).

    :param root: ``3dshapes.h5`` or a folder holding it.
    :raises FileNotFoundError: no such file; :raises ValueError: truncated / not HDF5 / missing datasets / labels
        that do not form a complete grid (naming the file).
    """
    h5py = _h5py()
    path = os.path.join(root, "3dshapes.h5") if os.path.isdir(root) else os.fspath(root)
    _need_file(path, "3D Shapes file 3dshapes.h5 (https://github.com/deepmind/3d-shapes)")
    verify_md5(path, verify=verify, checksums=checksums)
    try:
        with h5py.File(path, "r") as f:
            for key in ("images", "labels"):
                if key not in f:
                    raise ValueError(f"{path!r} has no dataset {key!r} (found {sorted(f.keys())}); expected "
                                     "'images' (N, 64, 64, 3) uint8 and 'labels' (N, 6) float64")
            shape, dtype = f["images"].shape, f["images"].dtype
            labels = np.asarray(f["labels"][:])
    except OSError as e:
        raise ValueError(f"{path!r} is not a readable HDF5 file (truncated or corrupt?): {e}") from e
    if len(shape) != 4 or shape[3] != 3 or dtype != np.uint8:
        raise ValueError(f"{path!r}: 'images' is {shape} {dtype}, expected (N, 64, 64, 3) uint8")
    if labels.shape != (shape[0], 6):
        raise ValueError(f"{path!r}: 'labels' has shape {labels.shape}, expected ({shape[0]}, 6)")
    values, codes = [], []
    for k in range(6):
        v, c = np.unique(np.round(labels[:, k], 6), return_inverse=True)
        values.append(v)
        codes.append(c.reshape(-1))
    sizes = tuple(len(v) for v in values)
    row_map = grid_permutation(np.stack(codes, 1), sizes, path, "labels")
    reader = ArrayReader(_H5Opener(path, "images"), shape, None, name=path, row_map=row_map)
    return GroundTruthDataset(reader, SHAPES3D_FACTORS, values, label_factor=label_factor, cache=cache,
                              name="3dshapes")


# ---------------------------------------------------------------------------------------------- MPI3D
MPI3D_FACTORS = ("object_color", "object_shape", "object_size", "camera_height", "background_color",
                 "horizontal_axis", "vertical_axis")  # names of the dataset's README
MPI3D_SIZES = {1036800: (6, 6, 2, 3, 3, 40, 40), 460800: (4, 4, 2, 3, 3, 40, 40)}


def _npz_opener(images, path: str, key: str):
    """ArrayReader opener of ``npz_member(path, key)`` (already read as ``images``): the array itself when it was
    read into memory, else a re-open of the memory map (so every worker process maps the file itself)."""
    return functools.partial(npz_member, path, key) if isinstance(images, np.memmap) else _Const(images)


def load_mpi3d(root, variant: str = "toy", factor_sizes=None, label_factor="object_shape", cache: bool = False,
               verify: Optional[bool] = None, checksums: Optional[dict] = None) -> GroundTruthDataset:
    """MPI3D (Gondal et al., 2019) from ``mpi3d_{variant}.npz`` (array ``images`` (N, 64, 64, 3) uint8, row-major
    in the 7 factors). Memory-mapped when the npz is stored uncompressed (as published), else read into memory.

    :param root: the npz, or a folder holding ``mpi3d_{variant}.npz``.
    :param str variant: ``toy``, ``realistic`` or ``real`` (selects the file name in a folder).
    :param factor_sizes: the 7 sizes, when the file is neither 1,036,800 nor 460,800 images.
    """
    path = os.path.join(root, f"mpi3d_{variant}.npz") if os.path.isdir(root) else os.fspath(root)
    _need_file(path, f"MPI3D file mpi3d_{variant}.npz (https://github.com/rr-learning/disentanglement_dataset)")
    verify_md5(path, verify=verify, checksums=checksums)
    images = npz_member(path, "images")
    if images.ndim != 4 or images.shape[3] != 3 or images.dtype != np.uint8:
        raise ValueError(f"{path!r}: 'images' is {images.shape} {images.dtype}, expected (N, 64, 64, 3) uint8")
    n = images.shape[0]
    if factor_sizes is None:
        if n not in MPI3D_SIZES:
            raise ValueError(f"{path!r} holds {n} images; the published MPI3D files hold 1,036,800 "
                             "(6x6x2x3x3x40x40) or 460,800 (4x4x2x3x3x40x40); pass factor_sizes= for other files")
        factor_sizes = MPI3D_SIZES[n]
    factor_sizes = tuple(int(s) for s in factor_sizes)
    if len(factor_sizes) != 7 or int(np.prod(factor_sizes)) != n:
        raise ValueError(f"{path!r}: factor_sizes {factor_sizes} (product {int(np.prod(factor_sizes))}) do not match "
                         f"its {n} images (7 factors expected)")
    reader = ArrayReader(_npz_opener(images, path, "images"), images.shape, None, name=path)
    values = [np.arange(s) for s in factor_sizes]
    return GroundTruthDataset(reader, MPI3D_FACTORS, values, label_factor=label_factor, cache=cache,
                              name=f"mpi3d-{variant}")


# ---------------------------------------------------------------------------------------------- SmallNORB
NORB_FACTORS = ("category", "instance", "elevation", "azimuth", "lighting")
NORB_CHUNKS = {"train": "smallnorb-5x46789x9x18x6x2x96x96-training", "test": "smallnorb-5x01235x9x18x6x2x96x96-testing"}


def _norb_file(root, chunk, kind):
    for ext in (".mat", ".mat.gz"):
        p = os.path.join(root, f"{chunk}-{kind}{ext}")
        if os.path.isfile(p):
            return p
    raise FileNotFoundError(f"SmallNORB file not found: expected {os.path.join(root, f'{chunk}-{kind}.mat')} (or "
                            ".mat.gz) from https://cs.nyu.edu/~ylclab/data/norb-v1.0-small/")


class _Concat:
    """Row-wise concatenation of array-likes, indexable by a sorted index array."""

    def __init__(self, parts):
        self.parts = parts
        self.starts = np.cumsum([0] + [len(p) for p in parts])

    def __len__(self):
        return int(self.starts[-1])

    def __getitem__(self, idx):
        idx = np.asarray(idx)
        out = []
        for k, p in enumerate(self.parts):
            sel = idx[(idx >= self.starts[k]) & (idx < self.starts[k + 1])] - self.starts[k]
            if len(sel):
                out.append(np.asarray(p[sel]))
        return np.concatenate(out)


class _NorbImages:
    def __init__(self, paths):
        self.paths = paths

    def __call__(self):
        return _Concat([read_norb_matrix(p)[:, 0] for p in self.paths])  # left camera


def load_smallnorb(root, split: str = "all", size: Optional[int] = 64, label_factor="category",
                   cache: bool = False, verify: Optional[bool] = None,
                   checksums: Optional[dict] = None) -> GroundTruthDataset:
    """SmallNORB (LeCun et al., 2004) from the official binary matrix files (``.mat`` or ``.mat.gz``).

    Latent factors ``category, elevation, azimuth, lighting`` (instance: a nuisance); images: the left camera,
    resized to ``size`` (64, as disentanglement_lib; ``None`` keeps 96x96).

    :param root: the folder holding ``smallnorb-...-{dat,cat,info}.mat``.
    :param str split: ``"train"`` (training files), ``"test"`` (testing files) or ``"all"`` (both).
    """
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"SmallNORB folder {root!r} does not exist")
    chunks = {"train": ["train"], "test": ["test"], "all": ["train", "test"]}.get(split)
    if chunks is None:
        raise ValueError(f"SmallNORB split must be 'train', 'test' or 'all', got {split!r}")
    dat_paths, feats = [], []
    for c in chunks:
        paths = {k: _norb_file(root, NORB_CHUNKS[c], k) for k in ("dat", "cat", "info")}
        for p in paths.values():
            verify_md5(p, verify=verify, checksums=checksums)
        dat = read_norb_matrix(paths["dat"])
        cat = read_norb_matrix(paths["cat"])
        info = read_norb_matrix(paths["info"])
        if dat.ndim != 4 or dat.shape[1] != 2 or dat.dtype != np.uint8:
            raise ValueError(f"{paths['dat']!r}: images are {dat.shape} {dat.dtype}, expected (N, 2, 96, 96) uint8")
        if cat.shape[0] != dat.shape[0] or info.shape[:1] != dat.shape[:1] or info.ndim != 2 or info.shape[1] != 4:
            raise ValueError(f"{paths['cat']!r} / {paths['info']!r}: shapes {cat.shape} / {info.shape} do not match "
                             f"{dat.shape[0]} images (expected ({dat.shape[0]},) and ({dat.shape[0]}, 4))")
        feats.append(np.column_stack([np.asarray(cat).reshape(-1), np.asarray(info)]).astype(np.int64))
        if not dat_paths:
            h, w = dat.shape[2:]  # image size of the first file (kept: a .mat.gz is not decompressed again here)
        dat_paths.append(paths["dat"])
    feats = np.concatenate(feats)
    feats[:, 3] //= 2  # azimuth 0, 2, ..., 34 -> 0..17
    values, codes = [], []
    for k in range(5):
        v, c = np.unique(feats[:, k], return_inverse=True)
        values.append(v)
        codes.append(c.reshape(-1))
    values[2] = 30 + 5 * values[2]  # elevation in degrees (30..70)
    values[3] = values[3] * 20  # azimuth in degrees (0..340)
    sizes = tuple(len(v) for v in values)
    row_map = grid_permutation(np.stack(codes, 1), sizes, dat_paths[0], "images (cat/info files)")
    n = len(feats)
    reader = ArrayReader(_NorbImages(dat_paths), (n, h, w), size, name=" + ".join(dat_paths), row_map=row_map)
    return GroundTruthDataset(reader, NORB_FACTORS, values, latent=[0, 2, 3, 4], label_factor=label_factor,
                              cache=cache, name=f"smallnorb-{split}")


# ---------------------------------------------------------------------------------------------- Cars3D
CARS3D_FACTORS = ("elevation", "azimuth", "object")


class _CarsReader:
    """Reader of the per-car MATLAB files (``im``: (128, 128, 3, 24 azimuths, 4 elevations)); a few decoded cars
    are kept (LRU) since one file holds all 96 views of a car."""

    dtype = np.uint8

    def __init__(self, paths, size, keep: int = 8):
        self.paths, self.size, self.keep = list(paths), size, keep
        self._lru = OrderedDict()
        s = int(size) if size is not None else min(self._car(0).shape[:2])
        self.image_shape = (3, s, s)

    def __len__(self):
        return 4 * 24 * len(self.paths)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_lru"] = OrderedDict()
        return state

    def _car(self, k):
        if k in self._lru:
            self._lru.move_to_end(k)
            return self._lru[k]
        from scipy.io import loadmat

        path = self.paths[k]
        try:
            im = loadmat(path)["im"]
        except KeyError:
            raise ValueError(f"{path!r} has no variable 'im' (expected a Cars3D car_*_mesh.mat)") from None
        except Exception as e:  # scipy raises ValueError/OSError/TypeError on damaged files
            raise ValueError(f"cannot read Cars3D file {path!r} (truncated or corrupt?): "
                             f"{type(e).__name__}: {e}") from e
        if im.ndim != 5 or im.shape[2:] != (3, 24, 4) or im.dtype != np.uint8:
            raise ValueError(f"{path!r}: 'im' is {im.shape} {im.dtype}, expected (H, W, 3, 24, 4) uint8")
        self._lru[k] = im
        if len(self._lru) > self.keep:
            self._lru.popitem(last=False)
        return im

    def read(self, rows):
        from PIL import Image

        elev, azim, car = np.unravel_index(rows, (4, 24, len(self.paths)))
        out = np.empty((len(rows),) + self.image_shape[1:] + (3,), dtype=np.uint8)
        for k in np.unique(car):
            im = self._car(int(k))
            for j in np.nonzero(car == k)[0]:
                out[j] = np.asarray(resize_square(Image.fromarray(np.ascontiguousarray(im[:, :, :, azim[j], elev[j]])),
                                                  self.size))
        return np.ascontiguousarray(out.transpose(0, 3, 1, 2))


def load_cars3d(root, size: Optional[int] = 64, label_factor="object", cache: bool = False,
                verify: Optional[bool] = None, checksums: Optional[dict] = None) -> GroundTruthDataset:
    """Cars3D (Reed et al., 2015): 183 cars x 24 azimuths x 4 elevations, factors ``(elevation, azimuth, object)``.

    :param root: the ``cars`` folder of ``nips2015-analogy-data.tar.gz`` (``car_*_mesh.mat``, optional
        ``list.txt``), a folder holding it (``data/cars`` or ``cars``), or ``cars3d.npz`` (disent's conversion:
        ``images`` (17568, 128, 128, 3), row-major in ``(elevation, azimuth, object)``).
    :param size: output size (64 as disentanglement_lib; ``None`` keeps 128).
    """
    root = os.fspath(root)
    if os.path.isfile(root) and root.endswith(".npz"):
        verify_md5(root, verify=verify, checksums=checksums)
        images = npz_member(root, "images")
        if images.ndim != 4 or images.shape[3] != 3 or images.shape[0] % 96:
            raise ValueError(f"{root!r}: 'images' is {images.shape}, expected (96 * cars, H, W, 3)")
        reader = ArrayReader(_npz_opener(images, root, "images"), images.shape, size, name=root)
        n_cars = images.shape[0] // 96
    else:
        folder = root
        for sub in ("data/cars", "cars"):
            if os.path.isdir(os.path.join(root, sub)):
                folder = os.path.join(root, sub)
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"Cars3D folder {root!r} does not exist")
        listing = os.path.join(folder, "list.txt")
        if os.path.isfile(listing):
            with open(listing) as f:
                names = [ln.strip() for ln in f if ln.strip()]
            paths = [os.path.join(folder, n if n.endswith(".mat") else n + ".mat") for n in names]
            for p in paths:
                _need_file(p, f"Cars3D file listed in {listing}")
        else:
            paths = sorted(os.path.join(folder, n) for n in os.listdir(folder)
                           if n.startswith("car_") and n.endswith("_mesh.mat"))
        if not paths:
            raise FileNotFoundError(f"no Cars3D files in {folder!r}: expected car_*_mesh.mat (the 'cars' folder of "
                                    "nips2015-analogy-data.tar.gz, http://www.scottreed.info)")
        for p in paths:
            verify_md5(p, verify=verify, checksums=checksums)
        reader = _CarsReader(paths, size)
        n_cars = len(paths)
    values = [np.arange(4), np.arange(24) * 15.0, np.arange(n_cars)]
    return GroundTruthDataset(reader, CARS3D_FACTORS, values, label_factor=label_factor, cache=cache, name="cars3d")


# ---------------------------------------------------------------------------------------------- registry
def _dsprites(root=None, **kw):
    from .dsprites import DSprites

    return DSprites.from_npz(root) if root is not None else DSprites(**kw)


#: name -> ``f(root, **kw) -> ground-truth data`` (the metrics' interface).
GROUND_TRUTH_DATASETS = {
    "3dshapes": load_3dshapes,
    "mpi3d": load_mpi3d,
    "smallnorb": load_smallnorb,
    "cars3d": load_cars3d,
    "dsprites": _dsprites,
}


def load_ground_truth(name: str, root=None, **kw):
    """A ground-truth data set for the disentanglement metrics, by name (``3dshapes``, ``mpi3d``, ``smallnorb``,
    ``cars3d``, ``dsprites``: rendered when ``root`` is None, else the official npz)."""
    if name not in GROUND_TRUTH_DATASETS:
        raise ValueError(f"unknown ground-truth dataset {name!r}; known: {', '.join(sorted(GROUND_TRUTH_DATASETS))}")
    if root is None and name != "dsprites":
        raise ValueError(f"ground-truth dataset {name!r} needs root=<its file or folder> (see docs/datasets/)")
    return GROUND_TRUTH_DATASETS[name](root, **kw) if root is not None else GROUND_TRUTH_DATASETS[name](**kw)
