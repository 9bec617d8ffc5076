"""Input checks shared by every model: clear errors instead of silent wrong answers or deep stack traces."""
from __future__ import annotations

import torch


class InputError(ValueError):
    """Raised for malformed inputs (shape, NaN, labels, groups)."""


def check_images(x, image_shape, likelihood=None, name="x"):
    """Check a batch of images ``(N, C, H, W)``: a floating tensor of the expected shape, finite,
    and binary when the likelihood is Bernoulli."""
    if not torch.is_tensor(x):
        raise InputError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not torch.is_floating_point(x):
        raise InputError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if x.dim() != 4 or tuple(x.shape[1:]) != tuple(image_shape):
        raise InputError(
            f"{name} must have shape (N, {', '.join(map(str, image_shape))}), got {tuple(x.shape)}"
        )
    if x.shape[0] == 0:
        raise InputError(f"{name} is empty (0 observations)")
    if not torch.isfinite(x).all():
        n_bad = int((~torch.isfinite(x)).flatten(1).any(1).sum())
        raise InputError(f"{name} contains NaN or infinite values (in {n_bad} of {x.shape[0]} images)")
    if likelihood == "bernoulli" and not ((x == 0) | (x == 1)).all():
        raise InputError(
            f"{name} is not binary but the likelihood is Bernoulli: binarise the data "
            "(ImageDataset.binarized()) or use likelihood='normal'"
        )
    return x


def check_group_index(group_index, n, num_groups=None, name="group_index"):
    """Check per-observation group ids: integer, length ``n``, in ``0..num_groups-1``, no empty group.

    :returns: ``(group_index, num_groups)``.
    """
    if not torch.is_tensor(group_index):
        group_index = torch.as_tensor(group_index)
    if group_index.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise InputError(f"{name} must be an integer tensor, got dtype {group_index.dtype}")
    if group_index.dim() != 1 or group_index.shape[0] != n:
        raise InputError(f"{name} must have shape ({n},) (one group id per observation), "
                         f"got {tuple(group_index.shape)}")
    group_index = group_index.long()
    if n and int(group_index.min()) < 0:
        raise InputError(f"{name} has negative group ids")
    if num_groups is None:
        num_groups = int(group_index.max()) + 1 if n else 0
    if n and int(group_index.max()) >= num_groups:
        raise InputError(f"{name} has group id {int(group_index.max())} but num_groups={num_groups}")
    counts = torch.bincount(group_index, minlength=num_groups)
    if (counts == 0).any():
        empty = torch.nonzero(counts == 0).flatten().tolist()
        raise InputError(f"empty group(s) {empty[:10]}: every group id in 0..{num_groups - 1} needs at least "
                         "one observation (renumber groups with torch.unique(..., return_inverse=True))")
    return group_index, num_groups


def check_labels(y, n, num_classes, name="y"):
    """Check class labels: integer, length ``n``, in ``0..num_classes-1``."""
    if not torch.is_tensor(y):
        y = torch.as_tensor(y)
    if y.dtype.is_floating_point or y.dtype == torch.bool:
        raise InputError(f"{name} must be integer class labels, got dtype {y.dtype}")
    if y.dim() != 1 or y.shape[0] != n:
        raise InputError(f"{name} must have shape ({n},) to match the batch, got {tuple(y.shape)}")
    if n and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise InputError(f"{name} has labels outside 0..{num_classes - 1} "
                         f"(min {int(y.min())}, max {int(y.max())})")
    return y.long()


def group_index_from_ids(group_ids, n, device=None):
    """Per-observation group ids of any integers -> ``(group_index in 0..G-1, G)``; ``None`` means every
    observation is its own group. Raises a clear error for ids of the wrong length."""
    if group_ids is None:
        return torch.arange(n, device=device), n
    group_ids = torch.as_tensor(group_ids, device=device)
    if group_ids.shape != (n,):
        raise InputError(f"group_ids must have shape ({n},), got {tuple(group_ids.shape)}")
    return relabel(group_ids)


def relabel(group_ids):
    """Map arbitrary integer group ids to ``0..G-1``; returns ``(group_index, num_groups)``."""
    uniq, inverse = torch.unique(torch.as_tensor(group_ids), return_inverse=True)
    return inverse, len(uniq)
