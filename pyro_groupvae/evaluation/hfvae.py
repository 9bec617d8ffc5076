r"""HFVAE experiments: evaluation of a run (traversals, MI per dimension, dSprites metrics), the dSprites table
(paper table 2) and the zero-shot generalisation experiment (paper fig. 9).

Zero-shot pruning rule (the paper gives none; ours, on binarised images, pixel > 0.5 is "ink"):

* **thick 7s**: the 7s whose *ink area* (number of ink pixels) is above the ``1 - q`` quantile of the training
  7s; for a fixed digit shape the ink area grows with stroke thickness;
* **narrow 0s**: the 0s whose *ink width* (columns between the leftmost and rightmost ink pixel) is below the
  ``q`` quantile of the training 0s;

with ``q = 0.2``. The quantiles are computed on the training split and the same thresholds select the removed
digits of the test split.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..plots import bar_plot, histogram_plot, image_grid, line_plot

PAPER_TABLE = {  # paper table 2: (FactorVAE, Eastwood/DCI disentanglement)
    "vae": (0.71, 0.40),
    "beta-vae": (0.72, 0.71),
    "beta-svae": (0.47, 0.19),
    "beta-tcvae": (0.71, 0.31),
    "hfvae": (0.78, 0.74),
}
LABELS = {"vae": "VAE", "beta-vae": "β-VAE (β=4)", "beta-svae": "β-SVAE (β=4)", "beta-tcvae": "β-TCVAE (β=4)",
          "hfvae": "HFVAE (β=4, γ=3)"}


# ---------------------------------------------------------------------------------------------- figures
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
        q, probs = model.encode(x.unsqueeze(0).to(dev))
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
        labels.append("z_c classes")
        if k > len(values):
            cols = cols  # the class row shows the first len(values) classes
    return torch.stack(rows).cpu(), labels, cols


def mutual_information(model, x, batch_size=512):
    """Mutual information :math:`I(x; z_d)` per continuous dimension (fig. 6), from the posterior Gaussians of
    ``x`` via :func:`pyro_groupvae.evaluation.disentanglement.mutual_information_per_dimension`."""
    from .disentanglement import mutual_information_per_dimension

    locs, scales = [], []
    for i in range(0, x.shape[0], batch_size):
        q, _ = model.encode(x[i:i + batch_size].to(model.device))
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


def _dsprites_metrics(model, quick=False, seed=0):
    """FactorVAE, DCI and MIG on fresh dSprites ground-truth samples (metrics of
    :mod:`pyro_groupvae.evaluation.disentanglement`, sizes :data:`METRIC_SETTINGS`), on the representation
    :meth:`~pyro_groupvae.models.hfvae.HFVAE.represent` (posterior means of z_n + discrete probabilities)."""
    from ..data.dsprites import DSprites
    from . import disentanglement as dm

    data = DSprites()
    settings = METRIC_SETTINGS["quick" if quick else "full"]

    def represent(x):
        return model.represent(torch.as_tensor(x).float())

    out = {}
    for name, fn in [("factor_vae", dm.factor_vae_score), ("dci", dm.dci_score), ("mig", dm.mig_score)]:
        t0 = time.perf_counter()
        out[name] = fn(data, represent, seed=seed, **settings[name])
        out[name + "_seconds"] = time.perf_counter() - t0
    return out


def _scalar(res, *keys):
    """A float from a metric result (a number, or a dict with one of ``keys``)."""
    if isinstance(res, dict):
        for k in keys:
            if k in res:
                return float(res[k])
        raise KeyError(f"none of {keys} in metric result {sorted(res)}")
    return float(res)


def evaluate_model(model, test, fig_dir, dataset=None, quick=False, seed=0):
    """Evaluate a trained HFVAE on ``test``: reconstructions, prior samples, traversals (zero code and two test
    images), MI per dimension, the decomposition of the objective, and on dSprites the FactorVAE / DCI / MIG
    scores. Returns ``(metrics, markdown sections)`` for :func:`pyro_groupvae.runs.evaluate_run`."""
    fig_dir = Path(fig_dir)
    fig_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    dev = model.device
    n = min(len(test), 500 if quick else 2000)
    x = test.x[:n].to(dev)
    metrics, sections = {}, []
    # decomposition of the objective on the test batch
    from ..infer.hfvae_elbo import HFVAE_ELBO

    a, b, g, d = model.weights
    dec = HFVAE_ELBO(a, b, g, d).decomposition(model.model, model.guide, x[:min(n, 512)],
                                                dataset_size=len(test))
    metrics["decomposition"] = dec
    sections += ["## Objective decomposition (test batch, per observation)", "",
                 "| term | value |", "|---|---|"] + [f"| {k} | {v:.4g} |" for k, v in dec.items()] + [""]
    # reconstructions and samples
    rec = model.reconstruct(x[:8])
    image_grid(torch.stack([x[:8].cpu(), rec.cpu()]), fig_dir / "reconstructions.png", "data / reconstruction",
               row_labels=["data", "recon"])
    torch.manual_seed(seed)
    image_grid(model.sample(16).cpu().view(2, 8, *model.image_shape), fig_dir / "samples.png", "prior samples")
    # traversals
    imgs, rl, cl = traversal_images(model, None)
    image_grid(imgs, fig_dir / "traversal_zero.png", "traversal from -3 to 3, other latents 0 (fig. 11)", rl, cl)
    for i in range(1 if quick else 2):
        imgs, rl, cl = traversal_images(model, x[i].cpu())
        image_grid(imgs, fig_dir / f"traversal_image{i}.png", f"traversal of test image {i} (fig. 5)", rl, cl)
    sections += ["## Reconstructions, samples and traversals", "![recon](figures/reconstructions.png)",
                 "![samples](figures/samples.png)", "![traversal](figures/traversal_zero.png)",
                 "![traversal 0](figures/traversal_image0.png)"] + ([] if quick else
                                                                   ["![traversal 1](figures/traversal_image1.png)"])
    # mutual information per dimension
    try:
        mi = mutual_information(model, x)
    except ImportError as e:  # the metrics module is someone else's; say so instead of failing
        sections += ["", f"MI per dimension not computed: {e}"]
    else:
        metrics["mutual_information_per_dimension"] = {f"z{i}": v for i, v in enumerate(mi)}
        bar_plot(mi, fig_dir / "mutual_information.png", "dimension z_d",
                 "I(x; z_d) (nats)", "mutual information per dimension (fig. 6)")
        sections += ["", "## Mutual information per dimension (fig. 6)", "![mi](figures/mutual_information.png)"]
    if dataset == "dsprites" or str(getattr(test, "name", "")).startswith("dsprites"):
        dm = _dsprites_metrics(model, quick, seed)
        metrics["factor_vae"] = _scalar(dm["factor_vae"], "eval_accuracy")
        metrics["dci_disentanglement"] = _scalar(dm["dci"], "disentanglement")
        metrics["mig"] = _scalar(dm["mig"], "discrete_mig")
        metrics["dci_completeness"] = _scalar(dm["dci"], "completeness")
        metrics["dci_informativeness_test"] = _scalar(dm["dci"], "informativeness_test")
        metrics["metric_seconds"] = {k: v for k, v in dm.items() if k.endswith("_seconds")}
        sections += ["", "## dSprites disentanglement (table 2)", "",
                     "| metric | ours | paper (HFVAE) |", "|---|---|---|",
                     f"| FactorVAE | {metrics['factor_vae']:.3f} | 0.78 |",
                     f"| DCI disentanglement | {metrics['dci_disentanglement']:.3f} | 0.74 |",
                     f"| MIG | {metrics['mig']:.3f} | - |"]
    return metrics, sections


# ---------------------------------------------------------------------------------------------- dSprites table
TABLE_PRESETS = ("vae", "beta-vae", "beta-tcvae", "beta-svae", "hfvae")


def dsprites_table(out, presets=TABLE_PRESETS, epochs=8, n_train=20000, batch_size=512, seed=0, width=1.0,
                   train=True, quick=False, progress=True, beta=4.0, gamma=3.0):
    """Paper table 2: train every preset on the same dSprites subset with the same seed and budget, then score
    FactorVAE / DCI / MIG; writes ``out/<preset>/`` run folders, ``out/table.json`` and ``out/table.md``.

    :param int epochs: epochs over the ``n_train`` images (the budget; stated in the table).
    :param bool train: train (``False``: only score existing runs, e.g. after training elsewhere).
    :returns: the markdown table.
    """
    from ..runs import load_run, train_run

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    opts = dict(batch_size=batch_size, beta=beta, gamma=gamma, width=width, dataset_options={"n": n_train})
    rows = {}
    for preset in tqdm(presets, desc="dSprites table", disable=not progress):
        run = out / preset
        t0 = time.perf_counter()
        if train:
            train_run("hfvae", run, dataset="dsprites", epochs=epochs, seed=seed, progress=progress, preset=preset,
                      **opts)
        train_seconds = time.perf_counter() - t0
        model = load_run(run)
        t1 = time.perf_counter()
        dm = _dsprites_metrics(model, quick, seed)
        hist = model.history[-1] if model.history else {}
        rows[preset] = {
            "factor_vae": _scalar(dm["factor_vae"], "eval_accuracy"),
            "dci": _scalar(dm["dci"], "disentanglement"),
            "mig": _scalar(dm["mig"], "discrete_mig"),
            "train_objective": hist.get("train_elbo"),
            "train_seconds": train_seconds if train else None,
            "metric_seconds": time.perf_counter() - t1,
        }
        (out / "table.json").write_text(json.dumps({"rows": rows, "budget": dict(
            epochs=epochs, n_train=n_train, batch_size=batch_size, seed=seed, width=width)}, indent=2))
    steps = epochs * (n_train // batch_size)
    lines = [f"Budget: {n_train} dSprites training images (seed-{seed} subset of the 90% train split), batch "
             f"{batch_size}, {epochs} epochs = {steps} Adam steps (lr 1e-3), seed {seed}, width x{width}, CPU "
             "(1 thread); metrics on fresh ground-truth samples.", "",
             "| model | FactorVAE (ours) | DCI disent. (ours) | MIG (ours) | FactorVAE (paper) | Eastwood (paper) |",
             "|---|---|---|---|---|---|"]
    for preset, r in rows.items():
        pf, pe = PAPER_TABLE[preset]
        lines.append(f"| {LABELS[preset]} | {r['factor_vae']:.3f} | {r['dci']:.3f} | {r['mig']:.3f} | {pf:.2f} | "
                     f"{pe:.2f} |")
    table = "\n".join(lines)
    (out / "table.md").write_text(table + "\n")
    return table


# ---------------------------------------------------------------------------------------------- zero-shot
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
    """The rule of the module docstring: ``(area threshold for 7s, width threshold for 0s)`` from ``train``."""
    area, width = ink_features(train.x)
    t7 = float(torch.quantile(area[train.y == 7], 1 - q))
    t0 = float(torch.quantile(width[train.y == 0], q))
    return t7, t0


def removed_mask(data, thresholds):
    """Boolean mask of the images the rule removes (thick 7s and narrow 0s)."""
    t7, t0 = thresholds
    area, width = ink_features(data.x)
    return ((data.y == 7) & (area > t7)) | ((data.y == 0) & (width < t0))


@torch.no_grad()
def _bce(model, x):
    rec = model.reconstruct(x.to(model.device)).clamp(1e-6, 1 - 1e-6).cpu()
    return -(x * rec.log() + (1 - x) * (1 - rec).log()).flatten(1).sum(1)


def zero_shot(out, dataset="mnist32", epochs=60, batch_size=500, seed=0, q=0.2, preset="hfvae", quick=False,
              progress=True, train_model=True):
    """Paper fig. 9: train an HFVAE on MNIST without thick 7s and narrow 0s, then reconstruct and encode the
    removed digits (of the test split, never seen) and compare with kept digits of the same classes.

    Reported: reconstruction cross-entropy (nats per image) of removed vs kept 7s/0s of the test split; the
    latent dimension most correlated with ink area (7s) / ink width (0s) on the training data, and whether the
    encoder places the removed digits beyond the training range of that feature (histograms, as in fig. 9):
    thick 7s above the 95% quantile of the training 7s, narrow 0s below the 5% quantile of the training 0s
    (latents sign-aligned with the feature). ``train_model=False`` re-scores the model saved in ``out/run``.
    Writes ``out/zero_shot.json``, ``out/zero_shot.md`` and figures into ``out/figures``.
    """
    from ..data import load_dataset
    from ..data.samplers import RandomBatchSampler
    from ..infer.train import fit
    from ..models.hfvae import HFVAE

    out = Path(out)
    fig = out / "figures"
    fig.mkdir(parents=True, exist_ok=True)
    train = load_dataset(dataset, "train", binarize=True)
    test = load_dataset(dataset, "test", binarize=True)
    th = prune_thresholds(train, q)
    keep = ~removed_mask(train, th)
    pruned = train.subset(torch.nonzero(keep).flatten())
    torch.manual_seed(seed)
    model = HFVAE.from_preset(preset, image_shape=train.image_shape, discrete_classes=10)
    bs = min(batch_size, len(pruned))
    sampler = RandomBatchSampler(len(pruned), bs, seed=seed)
    t0 = time.perf_counter()
    if train_model:
        fit(model, pruned, sampler, epochs, seed=seed, out_dir=out / "run", progress=progress,
            config={"experiment": "zero-shot", "thresholds": th, "q": q, "dataset": dataset})
    else:
        from ..infer.train import load_checkpoint

        model.load_state_dict(load_checkpoint(out / "run" / "checkpoint.pt")["model_state"])
    seconds = time.perf_counter() - t0
    model.eval()
    rm_test = removed_mask(test, th)
    area, width = ink_features(test.x)
    res = {"thresholds": {"area_7": th[0], "width_0": th[1]}, "q": q, "train_kept": int(keep.sum()),
           "train_removed": int((~keep).sum()), "epochs": epochs, "batch_size": bs, "seed": seed,
           "train_seconds": seconds}
    # the latent most related to each feature, chosen on the (pruned) training data
    tr_area, tr_width = ink_features(pruned.x)
    z_tr = model.represent(pruned.x)[:, :model.D]
    z_te = model.represent(test.x)[:, :model.D]
    for digit, feat_tr, feat_te, name, side in [(7, tr_area, area, "thick_7", 1), (0, tr_width, width, "narrow_0", -1)]:
        m_tr = pruned.y == digit
        zc = z_tr[m_tr] - z_tr[m_tr].mean(0)
        fc = feat_tr[m_tr] - feat_tr[m_tr].mean()
        corr = (zc * fc[:, None]).mean(0) / (zc.std(0) * fc.std() + 1e-8)
        dim = int(corr.abs().argmax())
        sign = float(torch.sign(corr[dim]))
        removed = (test.y == digit) & rm_test
        kept = (test.y == digit) & ~rm_test
        bce_r, bce_k = _bce(model, test.x[removed]), _bce(model, test.x[kept])
        zr, zk = sign * z_te[removed, dim], sign * z_tr[m_tr, dim] * 1.0
        res[name] = {
            "test_removed": int(removed.sum()), "test_kept": int(kept.sum()),
            "recon_bce_removed": float(bce_r.mean()), "recon_bce_kept": float(bce_k.mean()),
            "latent_dim": dim, "corr_with_feature_train": float(corr[dim]),
            "removed_latent_mean": float(zr.mean()), "train_latent_mean": float(zk.mean()),
            "train_latent_q05": float(torch.quantile(zk, 0.05)),
            "train_latent_q95": float(torch.quantile(zk, 0.95)),
            "removed_frac_beyond_train": float((zr > torch.quantile(zk, 0.95)).float().mean() if side > 0 else
                                               (zr < torch.quantile(zk, 0.05)).float().mean()),
            "kept_test_frac_beyond_train": float(
                (sign * z_te[kept, dim] > torch.quantile(zk, 0.95)).float().mean() if side > 0 else
                (sign * z_te[kept, dim] < torch.quantile(zk, 0.05)).float().mean()),
            "corr_with_feature_test_removed": float(np.corrcoef(z_te[removed, dim], feat_te[removed])[0, 1])
            if int(removed.sum()) > 2 else float("nan"),
        }
        sel = test.x[removed][:8]
        if len(sel):
            image_grid(torch.stack([sel, model.reconstruct(sel).cpu()]), fig / f"zero_shot_{name}.png",
                       f"removed {name.replace('_', ' ')}s (test): data / reconstruction", ["data", "recon"])
        histogram_plot({"training (pruned)": zk.numpy(), "removed (test)": zr.numpy()}, fig / f"hist_{name}.png",
                   f"z{dim} (sign-aligned with the feature)", f"{name.replace('_', ' ')}: encoded feature")
    (out / "zero_shot.json").write_text(json.dumps(res, indent=2))
    md = [f"Rule: remove 7s with ink area > {th[0]:.0f} px (top {q:.0%} of training 7s) and 0s with ink width < "
          f"{th[1]:.0f} columns (bottom {q:.0%} of training 0s); {res['train_removed']} of "
          f"{res['train_removed'] + res['train_kept']} training images removed. HFVAE (preset {preset}) on "
          f"{dataset}, {epochs} epochs, batch {bs}, seed {seed}.", "",
          "| removed group | test images | recon BCE removed | recon BCE kept (same digit) | latent | "
          "corr(train) | removed beyond train 5/95% quantile | kept test beyond it |",
          "|---|---|---|---|---|---|---|---|"]
    for name in ("thick_7", "narrow_0"):
        r = res[name]
        md.append(f"| {name} | {r['test_removed']} | {r['recon_bce_removed']:.1f} | {r['recon_bce_kept']:.1f} | "
                  f"z{r['latent_dim']} | {r['corr_with_feature_train']:.2f} | "
                  f"{r['removed_frac_beyond_train']:.0%} | {r['kept_test_frac_beyond_train']:.0%} |")
    (out / "zero_shot.md").write_text("\n".join(md) + "\n")
    return res


__all__ = ["traversal_images", "mutual_information", "evaluate_model", "dsprites_table", "zero_shot",
           "ink_features", "prune_thresholds", "removed_mask", "PAPER_TABLE"]
_ = (math, line_plot)
