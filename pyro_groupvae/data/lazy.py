"""Lazy image datasets: images are read from their files when a row is asked for, never all at once.

:class:`LazyImageDataset` is a :class:`torch.utils.data.Dataset` (``ds[i] -> (x, label)``, ``len(ds)``, usable by a
``DataLoader`` with workers) that also offers what the consumers of the in-memory
:class:`~pyro_groupvae.data.base.ImageDataset` use: ``.y`` (int64 labels, for the group samplers), ``.image_shape``,
``.name``, ``.extras``, ``.subset``, ``.binarized``, ``.to`` and ``.x``, a read-only tensor-like view whose indexing
(``ds.x[batch.indices]``, ``ds.x[:16]``, ``ds.x[3]``) reads those rows and returns a float32 tensor in ``[0, 1]``.
``ds.x`` is *not* a tensor: code that needs every image at once calls :meth:`LazyImageDataset.materialize`.

A *reader* does the file access; it is any object with ``__len__``, ``image_shape`` ``(C, H, W)``, ``dtype``
(``np.uint8``: values 0..255, or ``np.float32``: values in ``[0, 1]``) and ``read(rows) -> ndarray (n, C, H, W)``
for a sorted, duplicate-free int64 array of rows (:class:`ArrayReader`: arrays, memory maps, HDF5;
:class:`DatasetReader`: a user's ``torch.utils.data.Dataset``, wrapped by :func:`from_torch_dataset`, which is what
``fit`` does with one). Readers that hold open file handles (HDF5, memory maps) reopen them in a new process, so a
dataset can be pickled to ``DataLoader`` workers.

Optional in-memory cache (``cache=True``): rows are kept, in the reader's dtype, the first time they are read, so
later epochs touch no file. The cache is per process: with ``num_workers > 0`` each worker fills its own copy (use
``persistent_workers=True`` so that it survives between epochs), and it costs ``N * C * H * W`` bytes for uint8
readers when full (CelebA at 64x64: 2.5 GB).

Checksums: :func:`verify_md5` compares a file with a published MD5 and *warns* (naming the file) on a mismatch;
:data:`KNOWN_MD5` lists the values we could check against public sources (each with its source).
"""
from __future__ import annotations

import hashlib
import os
import threading
import warnings
from typing import Optional

import numpy as np
import torch

from ..errors import InputError

__all__ = ["LazyImageDataset", "LazyImages", "ArrayReader", "ConcatReader", "DatasetReader",
           "from_torch_dataset", "concat_datasets", "verify_md5",
           "KNOWN_MD5", "ChecksumWarning", "resize_square"]


# --------------------------------------------------------------------------------------------------- checksums
class ChecksumWarning(UserWarning):
    """A dataset file does not have the checksum its authors (or a reference loader) publish."""


#: MD5 of official dataset files, by file name. Only values we could read in public sources are listed:
#: CelebA: torchvision ``datasets/celeba.py`` (``file_list``); 3D Shapes, MPI3D, SmallNORB (the ``.mat.gz``
#: downloads): disent ``dataset/data/_groundtruth__*.py`` (``uri_hash['full']``, an MD5 of the whole file).
#: Not listed (no public value found): the unpacked SmallNORB ``.mat`` files, the Cars3D ``car_*_mesh.mat`` files,
#: the dSprites ``.npz``, MS-Celeb-1M. Add ``{name: md5}`` here (or pass ``checksums=`` to a loader) to check them.
KNOWN_MD5 = {
    "list_attr_celeba.txt": "75e246fa4810816ffd6ee81facbd244c",
    "identity_CelebA.txt": "32bd1bd63d3c78cd57e08160ec5ed1e2",
    "list_eval_partition.txt": "d32c9cbf5e040fd4025c592c306e6668",
    "img_align_celeba.zip": "00d2c5bc6d35e252742224ab0c1e8fcb",
    "3dshapes.h5": "099a2078d58cec4daad0702c55d06868",
    "mpi3d_toy.npz": "55889cb7c7dfc655d6e0277beee88868",
    "mpi3d_realistic.npz": "59a6225b88b635365f70c91b3e52f70f",
    "mpi3d_real.npz": "0f33f609918fb5c97996692f91129802",
    "smallnorb-5x46789x9x18x6x2x96x96-training-dat.mat.gz": "66054832f9accfe74a0f4c36a75bc0a2",
    "smallnorb-5x46789x9x18x6x2x96x96-training-cat.mat.gz": "23c8b86101fbf0904a000b43d3ed2fd9",
    "smallnorb-5x46789x9x18x6x2x96x96-training-info.mat.gz": "51dee1210a742582ff607dfd94e332e3",
    "smallnorb-5x01235x9x18x6x2x96x96-testing-dat.mat.gz": "e4ad715691ed5a3a5f138751a4ceb071",
    "smallnorb-5x01235x9x18x6x2x96x96-testing-cat.mat.gz": "5aa791cd7e6016cf957ce9bdb93b8603",
    "smallnorb-5x01235x9x18x6x2x96x96-testing-info.mat.gz": "a9454f3864d7fd4bb3ea7fc3eb84924e",
}

#: files larger than this are hashed only with ``verify=True`` (hashing MPI3D's 12 GB takes about a minute)
VERIFY_MAX_BYTES = 2 << 30
_VERIFIED = {}  # (path, size, mtime_ns) -> md5, so that train/val/test loads hash a file once per process


def _md5(path: str, chunk: int = 1 << 22) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def verify_md5(path, expected: Optional[str] = None, verify: Optional[bool] = None,
               checksums: Optional[dict] = None) -> Optional[bool]:
    """Compare a file's MD5 with the published value; warn (:class:`ChecksumWarning`, naming the file) on mismatch.

    :param path: the file.
    :param str expected: the MD5; default: ``checksums`` or :data:`KNOWN_MD5` by the file's base name.
    :param verify: ``True`` always hash, ``False`` never, ``None`` (default) hash files up to 2 GiB.
    :param dict checksums: extra ``{file name: md5}`` taking precedence over :data:`KNOWN_MD5`.
    :return: ``True`` (match), ``False`` (mismatch, warned) or ``None`` (not checked: no known value or skipped).
    """
    path = os.fspath(path)
    name = os.path.basename(path)
    if expected is None:
        expected = (checksums or {}).get(name) or KNOWN_MD5.get(name)
    if expected is None or verify is False:
        return None
    st = os.stat(path)
    if verify is None and st.st_size > VERIFY_MAX_BYTES:
        return None
    key = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
    if key not in _VERIFIED:
        _VERIFIED[key] = _md5(path)
    if _VERIFIED[key] != expected.lower():
        warnings.warn(f"{path}: MD5 {_VERIFIED[key]} differs from the published {expected} for {name}; the file may "
                      "be corrupt, truncated or a different version", ChecksumWarning, stacklevel=3)
        return False
    return True


# --------------------------------------------------------------------------------------------------- helpers
def resize_square(img, size: Optional[int], crop: Optional[int] = None):
    """Centre-crop a PIL image to a square (``crop x crop`` when ``crop`` is given, else the largest centred
    square) and resize it to ``size x size`` (bilinear; ``None``: keep)."""
    from PIL import Image

    w, h = img.size
    s = min(w, h) if crop is None else min(int(crop), w, h)
    if (s, s) != (w, h):
        left, top = (w - s) // 2, (h - s) // 2
        img = img.crop((left, top, left + s, top + s))
    if size is not None and img.size != (size, size):
        resample = getattr(Image, "Resampling", Image).BILINEAR
        img = img.resize((size, size), resample=resample, reducing_gap=None)
    return img


def _read_unique(rows: np.ndarray, read_sorted_unique) -> np.ndarray:
    """``read_sorted_unique`` called once on the sorted, de-duplicated ``rows``, its result gathered back to
    the order (and duplicates) of ``rows``."""
    uniq, inverse = np.unique(rows, return_inverse=True)
    return read_sorted_unique(uniq)[inverse]


def _as_rows(index, n: int):
    """Normalise an index (int, slice, sequence, bool mask, numpy array, tensor) to ``(int64 rows, single)``."""
    if isinstance(index, (int, np.integer)):
        i = int(index)
        if i < -n or i >= n:
            raise IndexError(f"index {i} is out of range for {n} images")
        return np.array([i % n], dtype=np.int64), True
    if isinstance(index, slice):
        return np.arange(n, dtype=np.int64)[index], False
    if torch.is_tensor(index):
        if index.dim() == 0:
            return _as_rows(int(index), n)
        index = index.detach().cpu().numpy()
    arr = np.asarray(index)
    if arr.dtype == bool:
        if arr.shape != (n,):
            raise IndexError(f"boolean mask of shape {arr.shape} does not match {n} images")
        return np.nonzero(arr)[0].astype(np.int64), False
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64), False
    if not np.issubdtype(arr.dtype, np.integer):
        raise IndexError(f"images can be indexed by integers, slices or boolean masks, got dtype {arr.dtype}")
    arr = arr.astype(np.int64).reshape(-1)
    if arr.min() < -n or arr.max() >= n:
        raise IndexError(f"index out of range for {n} images (got {int(arr.min())}..{int(arr.max())})")
    return arr % n, False


class _Const:
    """:class:`ArrayReader` opener of an array already in memory (picklable, unlike a lambda)."""

    def __init__(self, value):
        self.value = value

    def __call__(self):
        return self.value


class ArrayReader:
    """Reader over an array-like of images stored ``(N, H, W[, C])`` (numpy array, memory map, HDF5 dataset).

    :param opener: ``f() -> array-like`` (called again in every process, so HDF5 files are reopened in workers).
    :param tuple stored_shape: ``(N, H, W)`` or ``(N, H, W, C)`` as stored.
    :param int size: output size (centre-crop + bilinear resize), ``None`` to keep.
    :param str name: the file, for error messages.
    """

    dtype = np.uint8

    def __init__(self, opener, stored_shape, size: Optional[int] = None, name: str = "", row_map=None):
        self._opener = opener
        self._array = None
        self._pid = None
        self.name = name
        self.stored_shape = tuple(int(s) for s in stored_shape)
        self.size = size
        self.row_map = row_map  # optional int64 array: logical row -> stored row
        h, w = self.stored_shape[1:3]
        c = self.stored_shape[3] if len(self.stored_shape) == 4 else 1
        s = (min(h, w) if size is None else int(size))
        self.image_shape = (c, s, s) if (size is not None or h != w) else (c, h, w)
        self._lock = threading.Lock()

    def __len__(self):
        return self.stored_shape[0] if self.row_map is None else len(self.row_map)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_array"], state["_pid"], state["_lock"] = None, None, None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def array(self):
        if self._array is None or self._pid != os.getpid():
            self._array, self._pid = self._opener(), os.getpid()
        return self._array

    def read(self, rows: np.ndarray) -> np.ndarray:
        stored = rows if self.row_map is None else self.row_map[rows]

        def read_sorted_unique(uniq):
            try:
                with self._lock:
                    return np.asarray(self.array()[uniq])  # HDF5 needs increasing, unique indices
            except (OSError, ValueError, KeyError) as e:
                raise OSError(f"cannot read images {int(uniq[0])}..{int(uniq[-1])} from {self.name}: "
                              f"{type(e).__name__}: {e} (the file may be truncated or corrupt)") from e

        out = _read_unique(stored, read_sorted_unique)
        if out.ndim == 3:
            out = out[..., None]
        if out.dtype != np.uint8:
            raise ValueError(f"{self.name}: expected uint8 images, found {out.dtype}")
        if tuple(out.shape[1:3]) != self.image_shape[1:]:
            from PIL import Image

            out = np.stack([np.asarray(resize_square(Image.fromarray(im if im.shape[-1] != 1 else im[..., 0]),
                                                     self.image_shape[1])).reshape(self.image_shape[1:] + (-1,))
                            for im in out])
        return np.ascontiguousarray(out.transpose(0, 3, 1, 2))


class ConcatReader:
    """Readers of the same image shape and dtype, one after the other (row ``i`` of the second reader is row
    ``len(first) + i``)."""

    def __init__(self, readers):
        self.readers = list(readers)
        shapes = {tuple(r.image_shape) for r in self.readers}
        dtypes = {np.dtype(r.dtype) for r in self.readers}
        if len(shapes) != 1 or len(dtypes) != 1:
            raise ValueError(f"cannot concatenate images of shapes {sorted(shapes)} and dtypes "
                             f"{sorted(map(str, dtypes))}; load every part with the same size and channels")
        self.image_shape, self.dtype = shapes.pop(), dtypes.pop().type
        self.starts = np.cumsum([0] + [len(r) for r in self.readers])

    def __len__(self):
        return int(self.starts[-1])

    def read(self, rows):
        out = np.empty((len(rows),) + tuple(self.image_shape), dtype=self.dtype)
        part = np.searchsorted(self.starts, rows, side="right") - 1
        for k in np.unique(part):
            sel = np.nonzero(part == k)[0]
            out[sel] = self.readers[k].read(rows[sel] - self.starts[k])
        return out


class DatasetReader:
    """Reader over a user's ``torch.utils.data.Dataset`` whose items are ``(x, y)``, ``{"x": ..., "y": ...}`` or an
    image alone: ``read`` stacks the images of the rows asked for (float32, so no rescaling), so a batch reads
    just its own items. Images must be floating point in ``[0, 1]``; uint8 or integer items are refused with a hint.
    """

    dtype = np.float32

    def __init__(self, dataset):
        if len(dataset) == 0:
            raise InputError("the dataset is empty")
        self.dataset = dataset
        self.image_shape = tuple(self._image(0).shape)

    def __len__(self):
        return len(self.dataset)

    def _image(self, i):
        x = _item_x(self.dataset[int(i)])
        x = x if torch.is_tensor(x) else torch.as_tensor(np.asarray(x))
        if not x.is_floating_point():
            hint = "convert 0..255 pixels with x.float() / 255" if x.dtype == torch.uint8 else \
                "convert with x.float() (images are floating point in [0, 1])"
            raise InputError(f"the dataset's images must be floating point, got dtype {x.dtype} (item {int(i)}): "
                             f"{hint} in its __getitem__")
        return x.detach().cpu().float().numpy()

    def read(self, rows):
        if not len(rows):
            return np.zeros((0,) + self.image_shape, np.float32)
        return np.stack([self._image(i) for i in rows])


def _item_x(item):
    return item[0] if isinstance(item, (tuple, list)) else item["x"] if isinstance(item, dict) else item


def _item_y(item):
    return item[1] if isinstance(item, (tuple, list)) else item["y"] if isinstance(item, dict) else None


def from_torch_dataset(dataset, labels=None, name=None) -> "LazyImageDataset":
    """A user's ``torch.utils.data.Dataset`` (items ``(x, y)`` or ``{"x": ..., "y": ...}``, ``y`` a label or group
    id) as a :class:`LazyImageDataset` that reads its images per batch (in DataLoader workers when
    ``num_workers > 0``), so a dataset larger than memory trains. The labels come from ``labels``, else the
    dataset's ``y`` / ``targets`` / ``labels`` attribute, else are read once from every item.
    """
    reader = DatasetReader(dataset)
    if labels is None:
        for attr in ("y", "targets", "labels"):
            if getattr(dataset, attr, None) is not None:
                labels = getattr(dataset, attr)
                break
    if labels is None:
        labels = [_item_y(dataset[i]) for i in range(len(dataset))]
        if any(v is None for v in labels):
            raise InputError("the dataset's items carry no label/group id: give labels=... (one per row)")
        labels = [v.item() if torch.is_tensor(v) or isinstance(v, np.ndarray) else v for v in labels]
    y = torch.as_tensor(np.asarray(labels) if not torch.is_tensor(labels) else labels)
    if y.is_floating_point() or y.dtype == torch.bool:
        raise InputError(f"labels must be integers, got dtype {y.dtype}")
    y = y.long().reshape(-1)
    if y.shape != (len(dataset),):
        raise InputError(f"labels must have shape ({len(dataset)},) (one per row), got {tuple(y.shape)}")
    return LazyImageDataset(reader, y, name=name or type(dataset).__name__)


def concat_datasets(datasets, name: str = "", cache: bool = False) -> "LazyImageDataset":
    """Lazy datasets one after the other, as one :class:`LazyImageDataset` whose label is the *domain* (the
    position of the part), with ``extras["domain"]`` (for UG-VAE's 50/50 domain batches), ``extras["part_label"]``
    (each part's own label) and ``extras["domain_names"]``.

    :param datasets: :class:`LazyImageDataset` s (read with the same image shape).
    """
    datasets = list(datasets)
    for d in datasets:
        if not isinstance(d, LazyImageDataset):
            raise TypeError(f"concat_datasets takes LazyImageDataset parts, got {type(d).__name__}")
    readers = [_RowsReader(d) for d in datasets]
    domain = torch.cat([torch.full((len(d),), k, dtype=torch.long) for k, d in enumerate(datasets)])
    extras = {"domain": domain, "part_label": torch.cat([d.y.cpu() for d in datasets]),
              "domain_names": [d.name for d in datasets], "group_names": [d.name for d in datasets]}
    return LazyImageDataset(ConcatReader(readers), domain, name=name or "+".join(d.name for d in datasets),
                            extras=extras, cache=cache)


class _RowsReader:
    """The rows of a :class:`LazyImageDataset` (its subset and threshold applied) as a reader."""

    def __init__(self, ds):
        self.ds = ds
        self.image_shape = ds.image_shape
        self.dtype = np.float32 if ds._threshold is not None else ds.reader.dtype

    def __len__(self):
        return len(self.ds)

    def read(self, rows):
        if self.ds._threshold is not None:
            return self.ds._read(rows, device="cpu").numpy()
        return self.ds.reader.read(self.ds.rows[rows]) if len(rows) else np.zeros((0,) + self.image_shape, self.dtype)


class _Cache:
    """Rows already read, in the reader's dtype (lazily allocated: untouched pages cost no memory)."""

    def __init__(self, n, shape, dtype):
        self.data = None
        self.filled = np.zeros(n, dtype=bool)
        self.shape, self.dtype = (n,) + tuple(shape), dtype

    def __getstate__(self):  # a worker starts with an empty cache of its own
        return {"data": None, "filled": np.zeros_like(self.filled), "shape": self.shape, "dtype": self.dtype}

    def get(self, rows, read):
        if self.data is None:
            self.data = np.zeros(self.shape, dtype=self.dtype)
        todo = np.unique(rows[~self.filled[rows]])
        if len(todo):
            self.data[todo] = read(todo)
            self.filled[todo] = True
        return self.data[rows]

    @property
    def nbytes(self):
        return int(self.filled.sum()) * int(np.prod(self.shape[1:])) * np.dtype(self.dtype).itemsize


# --------------------------------------------------------------------------------------------------- the view
class LazyImages:
    """Read-only, tensor-like view of a :class:`LazyImageDataset`'s images.

    ``view[index]`` reads the rows and returns float32 ``(n, C, H, W)`` (``(C, H, W)`` for an integer index) on the
    dataset's device. ``shape``, ``dtype``, ``device``, ``dim()``, ``size()``, ``len()`` work as for a tensor;
    anything else needs the images in memory: ``view.materialize()``.
    """

    def __init__(self, ds: "LazyImageDataset"):
        self._ds = ds

    @property
    def shape(self):
        return torch.Size((len(self._ds),) + tuple(self._ds.image_shape))

    dtype = torch.float32

    @property
    def device(self):
        return torch.device(self._ds.device or "cpu")

    def dim(self):
        return 4

    ndim = property(dim)

    def size(self, d=None):
        return self.shape if d is None else self.shape[d]

    def __len__(self):
        return len(self._ds)

    def __getitem__(self, index):
        if isinstance(index, tuple):
            first, rest = index[0], index[1:]
            return self[first][(slice(None),) + rest if not isinstance(first, (int, np.integer)) else rest]
        rows, single = _as_rows(index, len(self._ds))
        x = self._ds._read(rows)
        return x[0] if single else x

    def materialize(self) -> torch.Tensor:
        """All images as one float32 tensor (reads every file)."""
        return self[:]

    def to(self, device):
        return self._ds.to(device).x

    def __repr__(self):
        return f"LazyImages(shape={tuple(self.shape)}, dtype=float32, source={self._ds.name!r})"


# --------------------------------------------------------------------------------------------------- the dataset
class LazyImageDataset(torch.utils.data.Dataset):
    """Images read on access, with integer labels: a torch ``Dataset`` and a drop-in for ``ImageDataset``.

    :param reader: see the module docstring.
    :param y: int64 labels, one per row of ``rows`` (group, identity, class, factor value...).
    :param rows: reader rows of this dataset (default: all, in order).
    :param str name: short name used in reports.
    :param dict extras: per-row side information (tensors or arrays of length ``len(rows)``, sliced by
        :meth:`subset`) or dataset-level metadata (lists, dicts).
    :param bool cache: keep rows in memory once read (see the module docstring).
    """

    lazy = True

    def __init__(self, reader, y, rows=None, name: str = "", extras: Optional[dict] = None, cache: bool = False,
                 _cache=None, _threshold=None, _device=None):
        self.reader = reader
        self.rows = np.arange(len(reader), dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
        self.y = torch.as_tensor(y, dtype=torch.long)
        if self.y.shape != (len(self.rows),):
            raise ValueError(f"labels must have shape ({len(self.rows)},), got {tuple(self.y.shape)}")
        self.name = name
        self.extras = dict(extras or {})
        self._cache = _cache if _cache is not None else (
            _Cache(len(reader), reader.image_shape, reader.dtype) if cache else None)
        self._threshold = _threshold
        self.device = _device

    # --- torch Dataset protocol
    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i):
        """``(image float32 (C, H, W) in [0, 1], label int)`` (on the CPU: a DataLoader moves batches)."""
        rows, _ = _as_rows(i, len(self))
        return self._read(rows, device="cpu")[0], int(self.y[rows[0]])

    def __getitems__(self, indices):
        """Batched fetch used by ``DataLoader`` (one sorted read instead of one per image)."""
        rows, _ = _as_rows(list(indices), len(self))
        x = self._read(rows, device="cpu")
        return [(x[k], int(self.y[r])) for k, r in enumerate(rows)]

    # --- ImageDataset compatibility
    @property
    def x(self) -> LazyImages:
        return LazyImages(self)

    @property
    def image_shape(self) -> tuple:
        return tuple(self.reader.image_shape)

    def _read(self, rows: np.ndarray, device=None) -> torch.Tensor:
        def read_sorted_unique(uniq):
            if self._cache is not None:
                return self._cache.get(uniq, self.reader.read)
            return self.reader.read(uniq) if len(uniq) else np.zeros((0,) + self.image_shape, self.reader.dtype)

        arr = _read_unique(self.rows[rows], read_sorted_unique)
        x = torch.from_numpy(arr)
        x = x.float().div_(255.0) if arr.dtype == np.uint8 else x.float()
        if self._threshold is not None:
            x = (x > self._threshold).float()
        device = device or self.device
        return x.to(device) if device is not None and str(device) != "cpu" else x

    def _replace(self, **kw):
        args = dict(reader=self.reader, y=self.y, rows=self.rows, name=self.name, extras=self.extras,
                    _cache=self._cache, _threshold=self._threshold, _device=self.device)
        args.update(kw)
        return LazyImageDataset(**args)

    def subset(self, index) -> "LazyImageDataset":
        """Rows ``index`` (any index :class:`LazyImages` accepts); per-row extras are sliced, the cache is shared."""
        rows, _ = _as_rows(index, len(self))
        n = len(self)

        def per_row(v):
            return (torch.is_tensor(v) or isinstance(v, np.ndarray)) and v.ndim > 0 and v.shape[0] == n

        extras = {k: (v[rows] if isinstance(v, np.ndarray) else v[torch.from_numpy(rows).to(v.device)])
                  if per_row(v) else v for k, v in self.extras.items()}
        return self._replace(rows=self.rows[rows], y=self.y[torch.from_numpy(rows).to(self.y.device)],
                             extras=extras)

    def binarized(self, threshold: float = 0.5) -> "LazyImageDataset":
        """Pixels thresholded at ``threshold`` when read (for a Bernoulli likelihood)."""
        return self._replace(_threshold=float(threshold), name=self.name + "-bin")

    def to(self, device) -> "LazyImageDataset":
        """Images read later are moved to ``device``; labels and tensor extras move now."""
        extras = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in self.extras.items()}
        return self._replace(y=self.y.to(device), extras=extras, _device=torch.device(device))

    def materialize(self):
        """The whole dataset in memory as an :class:`~pyro_groupvae.data.base.ImageDataset` (reads every file)."""
        from .base import ImageDataset

        return ImageDataset(self.x[:], self.y, self.name, dict(self.extras))

    @property
    def cache_nbytes(self) -> int:
        return 0 if self._cache is None else self._cache.nbytes

    def __repr__(self):
        return (f"LazyImageDataset(name={self.name!r}, n={len(self)}, image_shape={self.image_shape}, "
                f"cache={'on' if self._cache is not None else 'off'})")
