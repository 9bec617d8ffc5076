"""Partly labelled data for semi-supervised training: an :class:`~pyro_groupvae.data.base.ImageDataset` whose
labels ``y`` are known only where the explicit mask ``labelled`` is True."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from .base import ImageDataset

__all__ = ["PartlyLabelledDataset", "stratified_labelled_mask"]


@dataclass
class PartlyLabelledDataset(ImageDataset):
    """Images and labels with a bool mask ``labelled`` ``(N,)``: ``y[i]`` may be used only where ``labelled[i]``.

    Models that train semi-supervised (:class:`~pyro_groupvae.models.nvae.NVAE`) pass the batch's slice of the mask
    to their ``model``/``guide`` as ``labelled``.
    """

    labelled: Optional[torch.Tensor] = None

    def __post_init__(self):
        super().__post_init__()
        if self.labelled is None:
            self.labelled = torch.ones(len(self), dtype=torch.bool)
        self.labelled = torch.as_tensor(self.labelled)
        if self.labelled.dtype != torch.bool or self.labelled.shape != (len(self),):
            raise ValueError(f"labelled must be a bool mask of shape ({len(self)},), got "
                             f"{self.labelled.dtype} {tuple(self.labelled.shape)}")

    @classmethod
    def of(cls, data: ImageDataset, labelled) -> "PartlyLabelledDataset":
        """``data`` (not modified) with the mask ``labelled``."""
        return cls(data.x, data.y, data.name, dict(data.extras), labelled)

    def subset(self, index) -> "PartlyLabelledDataset":
        index = torch.as_tensor(index, dtype=torch.long)
        return PartlyLabelledDataset.of(super().subset(index), self.labelled[index])

    def binarized(self, threshold: float = 0.5) -> "PartlyLabelledDataset":
        return PartlyLabelledDataset.of(super().binarized(threshold), self.labelled)

    def to(self, device) -> "PartlyLabelledDataset":
        return PartlyLabelledDataset.of(super().to(device), self.labelled.to(device))


def stratified_labelled_mask(y, fraction, seed=0):
    """Stratified bool mask keeping ``fraction`` of each class's labels (at least one per class)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"labelled fraction must be in (0, 1], got {fraction}")
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(len(y), dtype=torch.bool)
    for c in torch.unique(y):
        rows = torch.nonzero(y == c).flatten()
        k = max(1, int(round(fraction * len(rows))))
        mask[rows[torch.randperm(len(rows), generator=g)[:k]]] = True
    return mask
