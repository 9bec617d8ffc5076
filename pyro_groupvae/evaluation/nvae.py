r"""N-VAE evaluation: KL cost per latent dimension (paper figs. 5 and 10), classification by ``q(y|x)``, and the
data-augmentation experiment (fig. 9).

Augmentation (sec. IV-C). A classifier is trained on the training split where, in every minibatch, each original
image is replaced with probability ``p`` by a generated image *of the same class* (so class balance is kept),
drawn from a class-conditional generative model with latents ``z ~ N(0, sigma^2 I)``; its error is measured on the
original test split. Choices the paper leaves open, and ours: ``sigma`` is a standard deviation; generated images
are the decoder's mean (pixel noise of the Normal likelihood is not added); the classifier is a small MLP
(784-256 ReLU-10) trained by Adam (1e-3, batches of 64) for a few epochs, so that 3 seeds x all settings run in a
couple of minutes on one CPU core. The seed fixes the classifier's initialisation, the data order, the replacement
masks and the latent draws.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from ..validation import check_labels


@torch.no_grad()
def kl_per_dimension(model, x, y, batch_size=500):
    r"""Mean ``KL(q(z_d|x) || N(0, 1))`` per latent dimension of an :class:`~pyro_groupvae.models.nvae.NVAE`.

    :param x: images ``(N, C, H, W)``; :param y: their true labels ``(N,)``.
    :returns: dict of tensors: ``z_s`` ``(shared_dim,)``; ``z_cy`` ``(class_dim,)`` (the block of the true class);
        ``z_c_other`` ``(class_dim,)`` (mean over the other ``L-1`` blocks); ``block_by_class`` ``(L, L)``: row = true
        class, column = block, entry = mean KL of the block summed over its dimensions (fig. 10); and the scalars
        ``mean_z_s``, ``mean_z_cy``, ``mean_z_c_other`` (per dimension).
    """
    L = model.num_classes
    y = check_labels(y, x.shape[0], L)
    dev = model.device
    sums_s = torch.zeros(model.shared_dim)
    block_sum = torch.zeros(L, L, model.class_dim)  # [true class, block, dim]
    counts = torch.zeros(L)
    for start in range(0, x.shape[0], batch_size):
        xb, yb = x[start:start + batch_size].to(dev), y[start:start + batch_size]
        post = model.encode(xb)
        z_c, z_s = post["z_c"], post["z_s"]
        kl = lambda q: 0.5 * (q.variance + q.mean.pow(2) - 1 - q.variance.log())  # noqa: E731
        kc, ks = kl(z_c).cpu(), kl(z_s).cpu()  # (n, L, Dc), (n, Ds)
        sums_s += ks.sum(0)
        block_sum.index_add_(0, yb, kc)
        counts += torch.bincount(yb, minlength=L).float()
    n = x.shape[0]
    per_class = block_sum / counts.clamp_min(1)[:, None, None]  # (L, L, Dc)
    present = counts > 0
    eye = torch.eye(L, dtype=torch.bool)
    true_blocks = block_sum[eye]  # (L, Dc): sum over images of class j of block j
    z_cy = true_blocks.sum(0) / n
    other = (block_sum.sum(1) - true_blocks).sum(0) / (n * (L - 1))
    out = {"z_s": sums_s / n, "z_cy": z_cy, "z_c_other": other,
           "block_by_class": torch.where(present[:, None], per_class.sum(-1), torch.full((L, L), float("nan")))}
    out["mean_z_s"] = float(out["z_s"].mean()) if model.shared_dim else float("nan")
    out["mean_z_cy"] = float(z_cy.mean())
    out["mean_z_c_other"] = float(other.mean())
    return out


@torch.no_grad()
def classification_accuracy(model, x, y, batch_size=500):
    """Accuracy of ``argmax q(y|x)`` (``model.classify``) on ``(x, y)``."""
    y = check_labels(y, x.shape[0], model.num_classes)
    pred = torch.cat([model.classify(x[i:i + batch_size].to(model.device)).argmax(-1).cpu()
                      for i in range(0, x.shape[0], batch_size)])
    return float((pred == y).float().mean())


def train_augmented_classifier(train_x, train_y, test_x, test_y, generator=None, p=0.0, sigma=1.0, seed=0,
                               epochs=5, batch_size=64, hidden=256, lr=1e-3, num_classes=None):
    """Train the small MLP classifier with generated replacements and return its test error.

    :param generator: a model with ``generate(y, sigma, generator)`` (N-VAE, CVAE) or ``None`` (no augmentation).
    :param float p: probability of replacing each original image by a generated one.
    :param float sigma: standard deviation of the latent draws.
    """
    num_classes = num_classes or int(max(train_y.max(), test_y.max())) + 1
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    d = math.prod(train_x.shape[1:])
    net = nn.Sequential(nn.Flatten(), nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    n = train_x.shape[0]
    for _ in range(epochs):
        perm = torch.randperm(n, generator=g)
        for i in range(0, n, batch_size):
            idx = perm[i:i + batch_size]
            xb, yb = train_x[idx], train_y[idx]
            if generator is not None and p > 0:
                swap = torch.rand(len(idx), generator=g) < p
                if swap.any():
                    xb = xb.clone()
                    xb[swap] = generator.generate(yb[swap], sigma, generator=g).cpu().to(xb.dtype)
            opt.zero_grad()
            nn.functional.cross_entropy(net(xb), yb).backward()
            opt.step()
    with torch.no_grad():
        return float((net(test_x).argmax(-1) != test_y).float().mean())


def augmentation_experiment(generators, train, test, probs=(0.4, 1.0), sigmas=(1.0, 1.4, 2.0), seeds=(0, 1, 2),
                            epochs=5, progress=True, **classifier_kw):
    """The fig. 9 experiment.

    :param dict generators: name -> generative model with ``generate`` (e.g. ``{"N-VAE": nvae, "CVAE": cvae}``).
    :param train: training :class:`~pyro_groupvae.data.ImageDataset`; :param test: test split.
    :returns: dict with ``baseline`` ``{"mean", "std", "errors"}`` (no augmentation) and ``settings``: a list of
        ``{"model", "p", "sigma", "mean", "std", "errors"}`` (test errors over the seeds).
    """
    tx, ty, sx, sy = train.x.cpu(), train.y.cpu(), test.x.cpu(), test.y.cpu()
    jobs = [(None, None, 0.0, 1.0)] + [(name, m, p, s) for name, m in generators.items() for p in probs
                                       for s in sigmas]
    bar = tqdm(total=len(jobs) * len(seeds), disable=not progress, desc="augmentation")
    out = {"settings": [], "seeds": list(seeds), "epochs": epochs}
    for name, model, p, sigma in jobs:
        errs = []
        for seed in seeds:
            errs.append(train_augmented_classifier(tx, ty, sx, sy, model, p, sigma, seed, epochs, **classifier_kw))
            bar.update(1)
        row = {"mean": float(np.mean(errs)), "std": float(np.std(errs)), "errors": errs}
        if name is None:
            out["baseline"] = row
        else:
            out["settings"].append({"model": name, "p": p, "sigma": sigma, **row})
    bar.close()
    return out


def sigma_trend(result, model, p):
    """Slope of the mean test error against sigma for one model and replacement probability (negative: the
    error falls as sigma grows, the paper's claim for N-VAE)."""
    rows = sorted((r["sigma"], r["mean"]) for r in result["settings"] if r["model"] == model and r["p"] == p)
    if len(rows) < 2:
        return float("nan")
    s, e = np.array(rows).T
    return float(np.polyfit(s, e, 1)[0])
