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


def as_dataset(data, labels=None, name=None):
    """Anything a user trains on, seen as an :class:`ImageDataset`-like object (``x``, ``y``, ``extras``).

    * an :class:`ImageDataset` or an object with tensor ``x``/``y`` attributes: as is;
    * a ``torch.utils.data.TensorDataset`` ``(x, y)``: its tensors, no copy;
    * a tuple ``(x, y)`` of tensors or numpy arrays (``labels`` may give ``y``): wrapped, numpy shared;
      floating images are cast to float32;
    * any other ``torch.utils.data.Dataset``: a :class:`~pyro_groupvae.data.lazy.LazyImageDataset` reading its items
      per batch (:func:`~pyro_groupvae.data.lazy.from_torch_dataset`).
    """
    if isinstance(data, ImageDataset):
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
        from .lazy import from_torch_dataset

        return from_torch_dataset(data, labels=labels, name=name)
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
