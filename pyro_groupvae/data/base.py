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
