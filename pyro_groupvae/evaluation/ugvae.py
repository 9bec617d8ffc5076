"""UG-VAE evaluation (paper sec. 4.2-4.3, table 1, figs. 5 and 7): what the global posterior says about a batch.

A *batch* is a group of images (a :class:`~pyro_groupvae.data.GroupBatch` may hold many). For every batch we take
the posterior of its global latent -- ``q(beta | X, Z)`` for UG-VAE, the content posterior ``q(c | X)`` for the
ML-VAE ablation trained on random batches -- and ask whether the *kind* of batch (even digits vs odd digits, MNIST
vs UCI digits, structured vs random) can be read from it:

* :func:`batch_features`: samples (the paper: "samples of the posterior beta distribution") or means of the
  global posterior of every batch.
* :func:`svm_batch_classification`: linear and RBF SVMs (scikit-learn ``SVC`` on standardised features), train and
  test accuracy. Our protocol: the SVM's training batches are drawn from the *train* split and its test batches
  from the *test* split, so no image is shared between the two (the paper does not say how it split).
* :func:`tsne` for the 2-D figures; :func:`pixel_mean_features` gives a reference that needs no model (the mean
  image of each batch), so that the accuracy of ``beta`` can be read against what raw batch statistics give.
* :func:`cluster_metrics`: how the enumerated cluster variable ``d`` aligns with the labels (purity, NMI).
"""
from __future__ import annotations

import numpy as np
import torch

from ..data.samplers import GroupBatch

__all__ = [
    "global_posterior",
    "batch_features",
    "pixel_mean_features",
    "svm_batch_classification",
    "tsne",
    "cluster_metrics",
    "concat_batches",
    "grid_variation",
]


def concat_batches(*batches):
    """One :class:`GroupBatch` holding the groups of several, in order (group ids renumbered)."""
    indices, gidx, offset = [], [], 0
    for b in batches:
        indices.append(b.indices)
        gidx.append(b.group_index + offset)
        offset += b.num_groups
    return GroupBatch(torch.cat(indices), torch.cat(gidx), offset)


@torch.no_grad()
def global_posterior(model, x, group_index, num_groups, chunk_groups=64):
    """Posterior of the global latent of every group: a Normal with batch shape ``(num_groups, dim)``.

    Works for :class:`~pyro_groupvae.models.UGVAE` (``beta``) and for models whose ``encode(x, group_ids)``
    returns their ``group_site`` per image, such as the ML-VAE (``content``). Groups are processed
    ``chunk_groups`` at a time (memory).
    """
    import pyro.distributions as dist

    device = next(model.parameters()).device
    group_index = torch.as_tensor(group_index)
    locs, scales = [], []
    for start in range(0, num_groups, chunk_groups):
        stop = min(start + chunk_groups, num_groups)
        rows = torch.nonzero((group_index >= start) & (group_index < stop)).flatten()
        gi = (group_index[rows] - start).to(device)
        xs = x[rows].to(device)
        if model.name == "ugvae":
            q = model.encode_groups(xs, gi, stop - start)[0]
            loc, scale = q.loc, q.scale
        else:
            content = model.encode(xs, gi).get(model.group_site) if model.group_site else None
            if content is None:
                raise ValueError(f"model {type(model).__name__} has no global latent")
            first = torch.zeros(stop - start, dtype=torch.long, device=device).scatter_(
                0, gi.flip(0), torch.arange(len(gi), device=device).flip(0))
            loc, scale = content.loc[first], content.scale[first]
        locs.append(loc.cpu())
        scales.append(scale.cpu())
    return dist.Normal(torch.cat(locs), torch.cat(scales))


def batch_features(model, data, batch, samples=1, seed=0):
    """Features of every group of ``batch``: ``samples`` draws of its global posterior (``0``: the mean).

    :returns: ``(features (num_groups * max(samples, 1), dim) ndarray, group id of every row)``.
    """
    q = global_posterior(model, data.x[batch.indices], batch.group_index, batch.num_groups)
    if samples <= 0:
        return q.loc.numpy(), np.arange(batch.num_groups)
    g = torch.Generator().manual_seed(seed)
    eps = torch.randn((samples,) + q.loc.shape, generator=g)
    feats = (q.loc + q.scale * eps).transpose(0, 1).reshape(-1, q.loc.shape[-1])
    return feats.numpy(), np.repeat(np.arange(batch.num_groups), samples)


def pixel_mean_features(data, batch):
    """The mean image of every group, flattened: a model-free reference for batch classification."""
    x = data.x.flatten(1)
    sums = torch.zeros(batch.num_groups, x.shape[1]).index_add_(0, batch.group_index, x[batch.indices])
    counts = torch.bincount(batch.group_index, minlength=batch.num_groups).unsqueeze(1)
    return (sums / counts).numpy()


def svm_batch_classification(train_x, train_y, test_x, test_y, kernels=("linear", "rbf"), C=1.0):
    """Train/test accuracy of SVMs on standardised features.

    :returns: ``{kernel: {"train": acc, "test": acc}}``.
    """
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    train_y, test_y = np.asarray(train_y), np.asarray(test_y)
    if len(np.unique(train_y)) < 2:
        raise ValueError("svm_batch_classification needs at least two classes in the training set")
    out = {}
    for kernel in kernels:
        clf = make_pipeline(StandardScaler(), SVC(kernel=kernel, C=C))
        clf.fit(train_x, train_y)
        out[kernel] = {"train": float((clf.predict(train_x) == train_y).mean()),
                       "test": float((clf.predict(test_x) == test_y).mean())}
    return out


def tsne(points, seed=0, perplexity=30.0):
    """2-D t-SNE embedding (scikit-learn), perplexity capped for small sets."""
    from sklearn.manifold import TSNE

    points = np.asarray(points, dtype=np.float64)
    perplexity = float(min(perplexity, max(2.0, (len(points) - 1) / 3)))
    return TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(points)


def cluster_metrics(assignments, labels, num_clusters=None):
    """Agreement of cluster assignments with labels.

    :returns: dict with ``purity`` (each cluster votes its majority label), ``nmi`` (normalised mutual
        information) and ``clusters_used``.
    """
    from sklearn.metrics import normalized_mutual_info_score

    a = np.asarray(assignments).astype(int)
    y = np.asarray(labels).astype(int)
    k = int(num_clusters or a.max() + 1)
    table = np.zeros((k, int(y.max()) + 1), dtype=int)
    np.add.at(table, (a, y), 1)
    return {"purity": float(table.max(1).sum() / len(a)), "nmi": float(normalized_mutual_info_score(y, a)),
            "clusters_used": int((table.sum(1) > 0).sum())}


def grid_variation(images):
    """How much a sampling grid changes along its rows (global latent) and its columns (local latent).

    :param images: ``(R, C, ch, H, W)`` from :func:`pyro_groupvae.plots.ugvae.sampling_grid_images`.
    :returns: ``{"global": mean |first row - last row|, "local": mean |first column - last column|}``, mean
        absolute pixel differences (0 = the latent has no visible effect).
    """
    images = torch.as_tensor(images)
    return {"global": float((images[0] - images[-1]).abs().mean()),
            "local": float((images[:, 0] - images[:, -1]).abs().mean())}
