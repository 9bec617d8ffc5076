"""Quantitative evaluation of disentanglement by classification (ML-VAE paper fig. 6c, supplement sec. 3).

The content features should predict the class and the style features should not. Following the supplement,
the classifier's train and test sets are both drawn from the *test* images: content is accumulated over groups of
``K`` images of a class to build the classifier's training features, and over groups of ``k <= K`` images at test
(``k = 1``: no grouping information). The classifier is two linear layers of 256 units (tanh, softmax), trained
with cross-entropy by Adam (1e-3); the test cross-entropy in bits is the reported upper bound on the conditional
entropy ``H(class | features)``. Everything is repeated over ``trials`` random draws of the images.

Choices the paper leaves open, and ours: content training features are one *sample* per image from its group's
posterior (with the posterior mean, a group of ``K`` images would give ``K`` identical points); content test
features are posterior *means*; the remaining test images of a class (after the ``K`` training ones) are cut into
groups of ``k`` (a remainder smaller than ``k`` is dropped).

Style probes are trained and tested on the same kind of feature, the per-image posterior *means* (a style
posterior is per image, so means lose nothing to grouping), with three probes: the supplement's classifier
(non-linear, ``style_accuracy``), a linear softmax classifier (``style_linear_accuracy``) and 5-nearest
neighbours (``style_knn_accuracy``). A probe trained on posterior *samples* and tested on means measures mostly
the width of the style posterior, not the class information in it (with a style KL weight of 10 the posterior is
wider than the spread of its means); that number is kept as ``style_sample_probe_accuracy`` for comparison only.
The same sample-trained probe tested on one posterior *sample* per test image (``style_draws_accuracy``, samples
with samples) measures the class information in a single draw of the style, the value the decoder is given; it
is reported beside the means probes, not instead of them: a means probe on standardised features also finds class
information that the model leaves far below its posterior noise (e.g. in collapsed dimensions).
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from tqdm import tqdm


@torch.enable_grad()
def train_classifier(features, labels, num_classes, steps=500, lr=1e-3, hidden=256, seed=0):
    """The supplement's classifier (Linear-256-tanh-Linear-softmax), trained full-batch with Adam; ``hidden=None``:
    a linear softmax classifier (multinomial logistic regression)."""
    g = torch.Generator().manual_seed(seed)
    if hidden:
        net = nn.Sequential(nn.Linear(features.shape[1], hidden), nn.Tanh(), nn.Linear(hidden, num_classes))
    else:
        net = nn.Linear(features.shape[1], num_classes)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (1.0 / math.sqrt(p.shape[-1])) if p.dim() == 2 else 0 * p)
    mean, std = features.mean(0), features.std(0).clamp_min(1e-6)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(net((features - mean) / std), labels)
        loss.backward()
        opt.step()
    return lambda f: net((f - mean) / std)


def knn_classifier(features, labels, num_classes, k=5):
    """``k``-nearest-neighbour vote on standardised features; returns a function giving class scores."""
    mean, std = features.mean(0), features.std(0).clamp_min(1e-6)
    ref = (features - mean) / std

    def predict(f):
        idx = torch.cdist((f - mean) / std, ref).topk(k, largest=False).indices
        return nn.functional.one_hot(labels[idx], num_classes).sum(1).float()

    return predict


def _groups_of(index_per_class, k):
    """Cut each class's rows into groups of k; returns (rows, group ids)."""
    rows, gids, next_id = [], [], 0
    for idx in index_per_class:
        n = (len(idx) // k) * k
        if n == 0:
            continue
        rows.append(idx[:n])
        gids.append(torch.arange(n) // k + next_id)
        next_id += n // k
    return torch.cat(rows), torch.cat(gids)


@torch.no_grad()
def accumulation_classification(model, x, y, ks=tuple(range(1, 11)), K=None, trials=5, seed=0,
                                classifier_steps=500, progress=False):
    """Classification accuracy and conditional entropy from content and style features.

    :param model: a model with ``encode(x, group_ids) -> (content, style)`` (ML-VAE or VAE baseline).
    :param x: evaluation images (the test split).
    :param y: their class labels.
    :param ks: group sizes used at test time.
    :param int K: group size for the classifier's training features (default ``max(ks)``).
    :param int trials: repetitions with different random images.
    :returns: dict with ``k``, ``content_accuracy``/``content_entropy_bits`` (lists over k, mean over trials),
        their ``*_std``; the style probes on posterior means (style does not depend on k): ``style_accuracy`` /
        ``style_entropy_bits`` (non-linear), ``style_linear_accuracy`` / ``style_linear_entropy_bits``,
        ``style_knn_accuracy``; ``style_draws_accuracy`` (trained and tested on one posterior sample per image),
        and ``style_sample_probe_accuracy`` (trained on samples, tested on means; comparison only); per trial
        values under ``trials``.
    """
    ks = list(ks)
    K = K or max(ks)
    y = torch.as_tensor(y).long().cpu()
    classes = torch.unique(y)
    num_classes = int(classes.max()) + 1
    device = next(model.parameters()).device
    x = x.to(device)
    per_trial = []
    for t in tqdm(range(trials), disable=not progress, desc="classification trials"):
        g = torch.Generator().manual_seed(seed + t)
        train_rows, test_rows = [], []
        for c in classes:
            idx = torch.nonzero(y == c).flatten()
            idx = idx[torch.randperm(len(idx), generator=g)]
            if len(idx) < K + max(ks):
                raise ValueError(f"class {int(c)} has {len(idx)} images; need K + max(k) = {K + max(ks)}")
            train_rows.append(idx[:K])
            test_rows.append(idx[K:])
        rows, gids = _groups_of(train_rows, K)
        torch.manual_seed(seed + t)
        post = model.encode(x[rows], gids.to(device))
        content, style = post["content"], post["style"]
        f_train_c = content.sample().cpu()
        f_train_s = style.mean.cpu()  # style probes: means for training and test
        clf_c = train_classifier(f_train_c, y[rows], num_classes, classifier_steps, seed=seed + t)
        clf_s = train_classifier(f_train_s, y[rows], num_classes, classifier_steps, seed=seed + t)
        clf_s_lin = train_classifier(f_train_s, y[rows], num_classes, classifier_steps, lr=1e-2, hidden=None,
                                     seed=seed + t)  # convex: a larger step trains it to convergence
        clf_s_knn = knn_classifier(f_train_s, y[rows], num_classes)
        clf_s_sample = train_classifier(style.sample().cpu(), y[rows], num_classes, classifier_steps, seed=seed + t)
        result = {"content_accuracy": [], "content_entropy_bits": []}
        for k in ks:
            trows, tg = _groups_of(test_rows, k)
            post_test = model.encode(x[trows], tg.to(device))
            c_test, s_test = post_test["content"], post_test["style"]
            logits = clf_c(c_test.mean.cpu())
            result["content_accuracy"].append((logits.argmax(1) == y[trows]).float().mean().item())
            result["content_entropy_bits"].append(
                nn.functional.cross_entropy(logits, y[trows]).item() / math.log(2))
            if k == ks[0]:
                f_test_s = s_test.mean.cpu()
                for name, clf in (("style", clf_s), ("style_linear", clf_s_lin)):
                    logits_s = clf(f_test_s)
                    result[name + "_accuracy"] = (logits_s.argmax(1) == y[trows]).float().mean().item()
                    result[name + "_entropy_bits"] = (nn.functional.cross_entropy(logits_s, y[trows]).item()
                                                      / math.log(2))
                for name, clf in (("style_knn", clf_s_knn), ("style_sample_probe", clf_s_sample)):
                    result[name + "_accuracy"] = (clf(f_test_s).argmax(1) == y[trows]).float().mean().item()
                draws = clf_s_sample(s_test.sample().cpu())
                result["style_draws_accuracy"] = (draws.argmax(1) == y[trows]).float().mean().item()
        per_trial.append(result)
    out = {"k": ks, "K": K, "trials": per_trial}
    for key in ("content_accuracy", "content_entropy_bits"):
        arr = np.array([r[key] for r in per_trial])
        out[key], out[key + "_std"] = arr.mean(0).tolist(), arr.std(0).tolist()
    for key in ("style_accuracy", "style_entropy_bits", "style_linear_accuracy", "style_linear_entropy_bits",
                "style_knn_accuracy", "style_sample_probe_accuracy", "style_draws_accuracy"):
        arr = np.array([r[key] for r in per_trial])
        out[key], out[key + "_std"] = float(arr.mean()), float(arr.std())
    return out
