"""Common container for image datasets."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass
class ImageDataset:
    """Images with integer labels, held in memory.

    :param torch.Tensor x: float32 images of shape ``(N, C, H, W)`` with values in ``[0, 1]``.
    :param torch.Tensor y: int64 labels of shape ``(N,)`` (class, identity, group, ...).
    :param str name: a short name used in reports.
    :param dict extras: per-observation side information (e.g. ``"domain"``) as tensors or numpy arrays of
        length ``N`` (sliced by :meth:`subset`), or dataset-level metadata such as lists (e.g. ``"group_names"``).
    """

    x: torch.Tensor
    y: torch.Tensor
    name: str = ""
    extras: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.x.dim() != 4:
            raise ValueError(f"ImageDataset.x must have shape (N, C, H, W), got {tuple(self.x.shape)}")
        if self.y.shape != (self.x.shape[0],):
            raise ValueError(
                f"ImageDataset.y must have shape ({self.x.shape[0]},) to match x, got {tuple(self.y.shape)}"
            )

    def __len__(self) -> int:
        return self.x.shape[0]

    @property
    def image_shape(self) -> tuple:
        return tuple(self.x.shape[1:])

    def subset(self, index) -> "ImageDataset":
        index = torch.as_tensor(index, dtype=torch.long)
        def per_row(v):
            return (torch.is_tensor(v) or isinstance(v, np.ndarray)) and v.ndim > 0 and v.shape[0] == len(self)

        extras = {k: (v[index.cpu().numpy()] if isinstance(v, np.ndarray) else v[index]) if per_row(v) else v
                  for k, v in self.extras.items()}
        return ImageDataset(self.x[index], self.y[index], self.name, extras)

    def binarized(self, threshold: float = 0.5) -> "ImageDataset":
        """Deterministically binarised copy (pixel > threshold), for a Bernoulli likelihood."""
        return ImageDataset((self.x > threshold).float(), self.y, self.name + "-bin", dict(self.extras))

    def to(self, device) -> "ImageDataset":
        extras = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in self.extras.items()}
        return ImageDataset(self.x.to(device), self.y.to(device), self.name, extras)


class LazyImages:
    """The images of a ``torch.utils.data.Dataset``, read item by item only when indexed.

    ``x[index]`` with a LongTensor ``index`` stacks ``dataset[i][0]`` (tensor or numpy array, cast to float32) for
    the rows asked for, so a batch reads just its own images. Enough of a tensor (``shape``, ``dtype``,
    ``len``, indexing) for the models' ``batch_inputs``.
    """

    def __init__(self, dataset):
        self.dataset = dataset
        first = _as_image(_item_x(dataset[0]))
        self.shape = (len(dataset),) + tuple(first.shape)
        self.dtype = first.dtype

    def __len__(self):
        return self.shape[0]

    def __getitem__(self, index):
        index = torch.as_tensor(index).reshape(-1).tolist()
        return torch.stack([_as_image(_item_x(self.dataset[i])) for i in index])


def _item_x(item):
    return item[0] if isinstance(item, (tuple, list)) else item["x"] if isinstance(item, dict) else item


def _item_y(item):
    return item[1] if isinstance(item, (tuple, list)) else item["y"] if isinstance(item, dict) else None


def _as_image(x):
    x = torch.as_tensor(np.asarray(x)) if not torch.is_tensor(x) else x
    return x.float() if x.is_floating_point() and x.dtype != torch.float32 else x


class LazyDataset:
    """A user's ``torch.utils.data.Dataset`` (items ``(x, y)`` or ``{"x": ..., "y": ...}``, ``y`` a label or
    group id) seen through the :class:`ImageDataset` interface without loading it: ``x`` is a
    :class:`LazyImages`, ``y`` the labels (from ``labels``, else the dataset's ``y``/``targets``/``labels``
    attribute, else read once from every item). Batches read their images on demand (in DataLoader workers when
    ``num_workers > 0``), so a dataset larger than memory trains. The training loop validates such data per
    batch instead of once up front.
    """

    lazy = True

    def __init__(self, dataset, labels=None, name=None):
        if len(dataset) == 0:
            raise ValueError("the dataset is empty")
        self.dataset = dataset
        self.x = LazyImages(dataset)
        if labels is None:
            for attr in ("y", "targets", "labels"):
                if getattr(dataset, attr, None) is not None:
                    labels = getattr(dataset, attr)
                    break
        if labels is None:
            labels = [_item_y(dataset[i]) for i in range(len(dataset))]
            if any(v is None for v in labels):
                raise ValueError("the dataset's items carry no label/group id: give labels=... (one per row)")
            labels = [int(v) for v in labels]
        self.y = torch.as_tensor(np.asarray(labels) if not torch.is_tensor(labels) else labels).long().reshape(-1)
        if self.y.shape != (len(dataset),):
            raise ValueError(f"labels must have shape ({len(dataset)},) (one per row), got {tuple(self.y.shape)}")
        self.name = name or type(dataset).__name__
        self.extras = {}

    def __len__(self):
        return len(self.dataset)

    @property
    def image_shape(self) -> tuple:
        return tuple(self.x.shape[1:])


def as_dataset(data, labels=None, name=None):
    """Anything a user trains on, seen as an :class:`ImageDataset`-like object (``x``, ``y``, ``extras``).

    * an :class:`ImageDataset` or an object with tensor ``x``/``y`` attributes: as is;
    * a ``torch.utils.data.TensorDataset`` ``(x, y)``: its tensors, no copy;
    * a tuple ``(x, y)`` of tensors or numpy arrays (``labels`` may give ``y``): wrapped, numpy shared;
      floating images are cast to float32;
    * any other ``torch.utils.data.Dataset``: a :class:`LazyDataset` (images read per batch).
    """
    if isinstance(data, ImageDataset) or isinstance(data, LazyDataset):
        return data
    if isinstance(data, torch.utils.data.TensorDataset):
        if len(data.tensors) < 2 and labels is None:
            raise ValueError("a TensorDataset needs (x, y) tensors, or labels=...")
        x = data.tensors[0]
        y = data.tensors[1] if labels is None else labels
        return _in_memory(x, y, name or "TensorDataset")
    if isinstance(data, (tuple, list)) and len(data) == 2 and labels is None:
        return _in_memory(data[0], data[1], name or "arrays")
    if isinstance(data, (np.ndarray,)) or torch.is_tensor(data):
        if labels is None:
            raise ValueError("images given without labels: pass (x, y) or labels=...")
        return _in_memory(data, labels, name or "arrays")
    if hasattr(data, "x") and hasattr(data, "y") and (torch.is_tensor(data.x) or getattr(data, "lazy", False)):
        return data  # in memory, or lazy with a batch-indexable x (pyro_groupvae.data.lazy.LazyImageDataset)
    if hasattr(data, "__getitem__") and hasattr(data, "__len__"):
        return LazyDataset(data, labels=labels, name=name)
    raise TypeError(f"cannot train on a {type(data).__name__}: give an ImageDataset, a torch Dataset of (x, y) "
                    "items, a TensorDataset or (x, y) arrays")


def _in_memory(x, y, name):
    x = torch.from_numpy(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else torch.as_tensor(x)
    if x.is_floating_point() and x.dtype != torch.float32:
        x = x.float()
    y = torch.as_tensor(np.asarray(y) if not torch.is_tensor(y) else y)
    if y.is_floating_point() or y.dtype == torch.bool:
        raise ValueError(f"labels must be integers, got dtype {y.dtype}")
    return ImageDataset(x, y.long(), name)
