"""HFVAE metrics (Esmaeili et al., AISTATS 2019): traversals (figs. 5, 7, 11), mutual information per dimension
(fig. 6), the dSprites disentanglement scores (table 2) and the zero-shot scores (fig. 9).

Pure functions: a trained :class:`~pyro_groupvae.models.hfvae.HFVAE` and data in, numbers (or image tensors) out.
The experiments that train models (the dSprites table, the zero-shot experiment) and the run report are in
:mod:`pyro_groupvae.experiments.hfvae`.
"""
from __future__ import annotations

import time

import numpy as np
import torch

__all__ = ["traversal_images", "mutual_information", "METRIC_SETTINGS", "dsprites_scores", "ink_features",
           "prune_thresholds", "removed_mask", "reconstruction_bce", "zero_shot_scores"]


@torch.no_grad()
def traversal_images(model, x=None, values=None, dims=None):
    """Traversals from -3 to 3 (figs. 5, 7, 11).

    :param model: an :class:`~pyro_groupvae.models.hfvae.HFVAE`.
    :param x: one image ``(C, H, W)`` whose posterior means are the fixed values, or ``None``: all other
        dimensions fixed at 0 and the discrete block uniform (fig. 11).
    :param values: traversal values (default ``linspace(-3, 3, 7)``).
    :param dims: continuous dimensions to traverse (default all).
    :returns: ``(images (R, C, ch, H, W), row_labels, col_labels)``; one row per continuous dimension and, with a
        discrete block, one row per class of the first discrete variable (its one-hot code, other latents fixed).
    """
    values = torch.linspace(-3, 3, 7) if values is None else torch.as_tensor(values, dtype=torch.float32)
    dims = list(range(model.D)) if dims is None else list(dims)
    dev = model.device
    if x is None:
        base = torch.zeros(model.D, device=dev)
        probs = None if not model.V else torch.full((model.V, model.K), 1.0 / model.K, device=dev)
    else:
        post = model.encode(x.unsqueeze(0).to(dev))
        q, probs = post["z_n"], post["z_c"].probs if "z_c" in post else None
        base = q.loc[0]
        probs = None if probs is None else probs[0]
    rows, labels = [], []
    for d in dims:
        z = base.repeat(len(values), 1)
        z[:, d] = values.to(dev)
        p = None if probs is None else probs.expand(len(values), -1, -1)
        rows.append(model.decode(z, p))
        labels.append(f"z{d}")
    cols = [f"{v:.1f}" for v in values.tolist()]
    if model.V:
        k = model.K
        onehot = torch.eye(k, device=dev)
        p = probs.expand(k, -1, -1).clone()
        p[:, 0] = onehot
        imgs = model.decode(base.repeat(k, 1), p)
        pad = torch.zeros((len(values),) + imgs.shape[1:], device=dev)
        pad[:min(k, len(values))] = imgs[:len(values)]
        rows.append(pad)
        labels.append("z_c classes")  # the first len(values) classes of the first discrete variable
    return torch.stack(rows).cpu(), labels, cols


def mutual_information(model, x, batch_size=512):
    """Mutual information :math:`I(x; z_d)` per continuous dimension (fig. 6), from the posterior Gaussians of
    ``x`` via :func:`pyro_groupvae.evaluation.disentanglement.mutual_information_per_dimension`."""
    from .disentanglement import mutual_information_per_dimension

    locs, scales = [], []
    for i in range(0, x.shape[0], batch_size):
        q = model.encode(x[i:i + batch_size].to(model.device))["z_n"]
        locs.append(q.loc.cpu())
        scales.append(q.scale.cpu())
    mi = mutual_information_per_dimension(torch.cat(locs), torch.cat(scales))
    return [float(v) for v in torch.as_tensor(mi).flatten()]


#: metric sample sizes (CPU budget; the reference sizes are 10000/5000 votes and GBTs with 100 trees)
METRIC_SETTINGS = {
    "full": dict(factor_vae=dict(num_train=1000, num_eval=500, num_variance_estimate=5000, batch_size=64),
                 dci=dict(num_train=3000, num_test=1000, gbt_kwargs={"n_estimators": 20}),
                 mig=dict(num_train=10000)),
    "quick": dict(factor_vae=dict(num_train=40, num_eval=20, num_variance_estimate=500, batch_size=16),
                  dci=dict(num_train=300, num_test=100, gbt_kwargs={"n_estimators": 5}),
                  mig=dict(num_train=500)),
}


def dsprites_scores(model, quick=False, seed=0, data=None):
    """FactorVAE, DCI and MIG (:mod:`pyro_groupvae.evaluation.disentanglement`, sample sizes
    :data:`METRIC_SETTINGS`) of the representation :meth:`~pyro_groupvae.models.hfvae.HFVAE.represent` (posterior
    means of z_n + discrete probabilities), on fresh ground-truth samples of ``data`` (default: dSprites).

    :returns: dict with ``factor_vae`` (eval accuracy), ``dci_disentanglement``, ``dci_completeness``,
        ``dci_informativeness_test``, ``mig`` and ``metric_seconds`` (per metric).
    """
    from . import disentanglement as dm

    if data is None:
        from ..data.dsprites import DSprites

        data = DSprites()
    settings = METRIC_SETTINGS["quick" if quick else "full"]

    def represent(x):
        return model.represent(torch.as_tensor(x).float())

    raw, seconds = {}, {}
    for name, fn in [("factor_vae", dm.factor_vae_score), ("dci", dm.dci_score), ("mig", dm.mig_score)]:
        t0 = time.perf_counter()
        raw[name] = fn(data, represent, seed=seed, **settings[name])
        seconds[name + "_seconds"] = time.perf_counter() - t0
    return {"factor_vae": _scalar(raw["factor_vae"], "eval_accuracy"),
            "dci_disentanglement": _scalar(raw["dci"], "disentanglement"),
            "mig": _scalar(raw["mig"], "discrete_mig"),
            "dci_completeness": _scalar(raw["dci"], "completeness"),
            "dci_informativeness_test": _scalar(raw["dci"], "informativeness_test"),
            "metric_seconds": seconds}


def _scalar(res, *keys):
    """A float from a metric result (a number, or a dict with one of ``keys``)."""
    if isinstance(res, dict):
        for k in keys:
            if k in res:
                return float(res[k])
        raise KeyError(f"none of {keys} in metric result {sorted(res)}")
    return float(res)


def ink_features(x):
    """Ink area (pixels > 0.5) and ink width (columns from leftmost to rightmost ink) of images ``(N,1,H,W)``."""
    ink = x[:, 0] > 0.5
    area = ink.flatten(1).sum(1).float()
    cols = ink.any(1)
    idx = torch.arange(cols.shape[1]).expand_as(cols)
    left = torch.where(cols, idx, cols.shape[1]).min(1).values
    right = torch.where(cols, idx, -1).max(1).values
    width = (right - left + 1).clamp_min(0).float()
    return area, width


def prune_thresholds(train, q=0.2):
    """The pruning rule of :func:`removed_mask`: ``(area threshold for 7s, width threshold for 0s)`` from ``train``."""
    area, width = ink_features(train.x)
    t7 = float(torch.quantile(area[train.y == 7], 1 - q))
    t0 = float(torch.quantile(width[train.y == 0], q))
    return t7, t0


def removed_mask(data, thresholds):
    """Boolean mask of the images the zero-shot rule removes: thick 7s and narrow 0s.

    The paper (fig. 9) gives no rule; ours, on binarised images (pixel > 0.5 is "ink"): **thick 7s** are the 7s whose
    ink area (number of ink pixels) is above the ``1 - q`` quantile of the training 7s (for a fixed digit shape the
    ink area grows with stroke thickness); **narrow 0s** are the 0s whose ink width (columns between the leftmost
    and rightmost ink pixel) is below the ``q`` quantile of the training 0s. ``thresholds`` come from
    :func:`prune_thresholds` on the training split; the same thresholds select the removed test digits.
    """
    t7, t0 = thresholds
    area, width = ink_features(data.x)
    return ((data.y == 7) & (area > t7)) | ((data.y == 0) & (width < t0))


@torch.no_grad()
def reconstruction_bce(model, x):
    """Bernoulli reconstruction cross-entropy (nats per image) of ``x`` through ``model.reconstruct``."""
    rec = model.reconstruct(x.to(model.device)).clamp(1e-6, 1 - 1e-6).cpu()
    return -(x * rec.log() + (1 - x) * (1 - rec).log()).flatten(1).sum(1)


@torch.no_grad()
def zero_shot_scores(model, train, test, thresholds):
    """Scores of the zero-shot experiment (fig. 9) for a model trained on ``train`` (the pruned training split).

    For each removed group (``thick_7``: feature ink area, ``narrow_0``: ink width): reconstruction cross-entropy of
    the removed vs kept test digits of that class; the latent dimension most correlated with the feature on
    ``train``; and how often the encoder places removed test digits beyond the training range of that latent
    (above the 95% quantile of the training 7s, below the 5% quantile of the training 0s; latents sign-aligned with
    the feature).

    :returns: ``(scores, latents)``: ``scores[name]`` a dict of numbers; ``latents[name]`` with the sign-aligned
        latent of the training digits (``"train"``) and of the removed test digits (``"removed"``) (numpy), the
        ``"dim"`` and the removed test images (``"removed_x"``) for figures.
    """
    removed_test = removed_mask(test, thresholds)
    area, width = ink_features(test.x)
    tr_area, tr_width = ink_features(train.x)
    z_tr = model.represent(train.x)[:, :model.D]
    z_te = model.represent(test.x)[:, :model.D]
    scores, latents = {}, {}
    for digit, feat_tr, feat_te, name, side in [(7, tr_area, area, "thick_7", 1), (0, tr_width, width, "narrow_0", -1)]:
        m_tr = train.y == digit
        zc = z_tr[m_tr] - z_tr[m_tr].mean(0)
        fc = feat_tr[m_tr] - feat_tr[m_tr].mean()
        corr = (zc * fc[:, None]).mean(0) / (zc.std(0) * fc.std() + 1e-8)
        dim = int(corr.abs().argmax())
        sign = float(torch.sign(corr[dim]))
        removed = (test.y == digit) & removed_test
        kept = (test.y == digit) & ~removed_test
        bce_r, bce_k = reconstruction_bce(model, test.x[removed]), reconstruction_bce(model, test.x[kept])
        zr, zk = sign * z_te[removed, dim], sign * z_tr[m_tr, dim] * 1.0
        q05, q95 = torch.quantile(zk, 0.05), torch.quantile(zk, 0.95)
        kept_z = sign * z_te[kept, dim]
        scores[name] = {
            "test_removed": int(removed.sum()), "test_kept": int(kept.sum()),
            "recon_bce_removed": float(bce_r.mean()), "recon_bce_kept": float(bce_k.mean()),
            "latent_dim": dim, "corr_with_feature_train": float(corr[dim]),
            "removed_latent_mean": float(zr.mean()), "train_latent_mean": float(zk.mean()),
            "train_latent_q05": float(q05), "train_latent_q95": float(q95),
            "removed_frac_beyond_train": float((zr > q95).float().mean() if side > 0 else (zr < q05).float().mean()),
            "kept_test_frac_beyond_train": float((kept_z > q95).float().mean() if side > 0 else
                                                 (kept_z < q05).float().mean()),
            "corr_with_feature_test_removed": float(np.corrcoef(z_te[removed, dim], feat_te[removed])[0, 1])
            if int(removed.sum()) > 2 else float("nan"),
        }
        latents[name] = {"dim": dim, "train": zk.numpy(), "removed": zr.numpy(), "removed_x": test.x[removed]}
    return scores, latents
