"""UG-VAE recipes: ``train ugvae`` (the paper's model on random batches), ``train mlvae-random`` (the paper's fig. 4
ablation: the existing ML-VAE trained on the same random batches) and their shared evaluation.

Evaluation (``pyro-groupvae evaluate RUN``) writes into the run folder:

* ``figures/sampling_grid_cluster{k}.png`` (fig. 3; fig. 4 for the ablation),
* structured batches (table 1, fig. 7, the supplement's MNIST series): SVMs on samples of the global posterior
  for even vs odd, even vs odd vs random, the four series (even, odd, prime, Fibonacci) with and without random
  batches, and single-digit batches; ``figures/tsne_series.png``, ``figures/tsne_digits.png``,
* domain alignment on ``mnist+uci`` (fig. 5): SVMs for MNIST-only vs UCI-only (vs mixed) batches,
  ``figures/interp_domains.png``, ``figures/interp_same_domain.png``, ``figures/tsne_domains.png``,
* ``metrics.json`` (every number above, the pixel-mean reference and the untrained-model reference).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..data.samplers import DomainMixedBatchSampler, GroupBatch, RandomBatchSampler, structured_batches
from ..data.samplers import DIGIT_FAMILIES, single_label_families
from ..data.options import add_dataset_arguments
from ..models.base import config_from_options
from ..runs import Recipe, load_data, register_recipe

__all__ = ["evaluate_ugvae"]


# ------------------------------------------------------------------------------------------------ recipes
#: model options are generated from :class:`~pyro_groupvae.models.UGVAEConfig`; the architecture's default here
#: is chosen by image size. The fig. 4 ablation (``mlvae-random``) takes the UG-VAE options it shares with the
#: ML-VAE (``--local-dim`` = style, ``--global-dim`` = content, likelihood, networks).
CONFIG_DEFAULTS = {"architecture": None}
MLVAE_RANDOM_EXCLUDE = ("num_clusters", "cluster_hidden", "global_hidden", "objective", "max_abs_log_var")


def _add_shared(p):
    """Sampler and data options (the model's come from its config)."""
    p.add_argument("--batch-size", type=int, default=128, help="images per random batch (= one group)")
    p.add_argument("--batches-per-step", type=int, default=4, help="random batches (groups) per SVI step")
    p.add_argument("--no-mix-domains", action="store_true",
                   help="with a two-domain dataset, plain random batches instead of 50/50 batches")
    add_dataset_arguments(p)


def _architecture(opts, data):
    return opts.get("architecture") or ("conv" if data.image_shape[-1] == 64 else "mlp")


def _random_sampler(opts, data, seed=0, shuffle=True):
    bs, steps = opts.get("batch_size", 128), opts.get("batches_per_step", 4)
    if "domain" in data.extras and not opts.get("no_mix_domains") and shuffle:
        return DomainMixedBatchSampler(data.extras["domain"], bs, steps, seed=seed)
    return RandomBatchSampler(len(data), bs, steps, shuffle=shuffle, seed=seed)


def _val_sampler(opts, val):
    if val is None or len(val) < opts.get("batch_size", 128):
        return None
    return RandomBatchSampler(len(val), opts.get("batch_size", 128), 1, shuffle=False, seed=1)


def _build_ugvae(opts, train, val):
    from ..models.ugvae import UGVAE

    model = UGVAE(config_from_options(UGVAE.Config, opts, image_shape=train.image_shape,
                                      architecture=_architecture(opts, train)))
    return {"model": model, "sampler": _random_sampler(opts, train), "val_sampler": _val_sampler(opts, val)}


def _build_mlvae_random(opts, train, val):
    """Fig. 4 ablation: the ML-VAE, unchanged, with random batches as its groups."""
    from ..models import MLVAE, UGVAE

    c = config_from_options(UGVAE.Config, opts, image_shape=train.image_shape, architecture=_architecture(opts, train))
    model = MLVAE(image_shape=c.image_shape, content_dim=c.global_dim, style_dim=c.local_dim, likelihood=c.likelihood,
                  architecture=c.architecture, hidden=c.hidden, min_scale=c.min_scale)
    return {"model": model, "sampler": _random_sampler(opts, train), "val_sampler": _val_sampler(opts, val)}


# ------------------------------------------------------------------------------------------------ evaluation
def _svm_experiment(model, train, test, families, batch_size, n_train, n_test, samples, seed, labels_train=None,
                    labels_test=None, extra_train=None, extra_test=None):
    """SVMs on global-posterior samples of structured batches (train batches from ``train``, test from ``test``).

    ``extra_*``: an additional class of batches (e.g. random or mixed) appended after the families.
    :returns: ``(metrics, (test_means, test_classes))``.
    """
    from ..evaluation.ugvae import batch_features, pixel_mean_features, svm_batch_classification

    ytr = train.y if labels_train is None else labels_train
    yte = test.y if labels_test is None else labels_test
    btr, ftr = structured_batches(ytr, families, batch_size, n_train, seed=seed)
    bte, fte = structured_batches(yte, families, batch_size, n_test, seed=seed + 1)
    if extra_train is not None:
        from ..evaluation.ugvae import concat_batches

        btr = concat_batches(btr, extra_train)
        bte = concat_batches(bte, extra_test)
        ftr = torch.cat([ftr, torch.full((extra_train.num_groups,), len(families))])
        fte = torch.cat([fte, torch.full((extra_test.num_groups,), len(families))])
    xtr, gtr = batch_features(model, train, btr, samples, seed)
    xte, gte = batch_features(model, test, bte, samples, seed + 1)
    mtr, _ = batch_features(model, train, btr, 0)
    means, _ = batch_features(model, test, bte, 0)
    out = {"beta_samples": svm_batch_classification(xtr, ftr.numpy()[gtr], xte, fte.numpy()[gte]),
           "beta_means": svm_batch_classification(mtr, ftr.numpy(), means, fte.numpy()),
           "pixel_mean_reference": svm_batch_classification(pixel_mean_features(train, btr), ftr.numpy(),
                                                            pixel_mean_features(test, bte), fte.numpy()),
           "num_train_batches": int(btr.num_groups), "num_test_batches": int(bte.num_groups),
           "batch_size": int(batch_size), "samples_per_batch": int(samples)}
    return out, (means, fte.numpy())


def _random_batches(n_items, batch_size, n, seed):
    """``n`` random batches (independent draws, without replacement inside a batch)."""
    gen = torch.Generator().manual_seed(seed)
    idx = torch.cat([torch.randperm(n_items, generator=gen)[:batch_size] for _ in range(n)])
    return GroupBatch(idx, torch.arange(n).repeat_interleave(batch_size), n)


def _mixed_batches(domain, batch_size, n, seed):
    sampler = DomainMixedBatchSampler(domain, batch_size, 1, seed=seed)
    batches = []
    while len(batches) < n:
        batches += list(sampler)
    from ..evaluation.ugvae import concat_batches

    return concat_batches(*batches[:n])


def _table(rows):
    from .report import md_table

    cells = []
    for name, res in rows:
        for feat in ("beta_samples", "beta_means", "pixel_mean_reference", "untrained_beta_samples",
                     "untrained_beta_means"):
            if feat not in res:
                continue
            for kernel, acc in res[feat].items():
                cells.append([name, feat, f"{kernel} SVM", f"{acc['train']:.3f}", f"{acc['test']:.3f}"])
    return "\n".join(md_table(["batches", "features", "classifier", "train acc", "test acc"], cells))


@dataclass
class _Evaluation:
    """What the sections of :func:`evaluate_ugvae` share; each section adds to ``metrics`` and returns markdown."""

    model: object
    train: object
    test: object
    save: object
    bs: int
    quick: bool
    seed: int
    metrics: dict
    untrained: object = None

    @property
    def sizes(self):
        """``(SVM training batches per class, test batches per class, posterior samples per batch)``."""
        return (6, 4, 2) if self.quick else (50, 25, 5)


def evaluate_ugvae(model, config, run_dir, opts):
    """The recipe's ``evaluate``: see the module docstring. ``opts["quick"]``: few batches (smoke tests)."""
    from .report import FigureWriter

    quick, seed = bool(opts.get("quick")), int(opts.get("seed") or 0)
    options = config.get("options", {})
    dataset = config.get("dataset", "mnist")
    bs = int(options.get("batch_size", 128))
    ev = _Evaluation(model, load_data(dataset, "train", options), load_data(dataset, "test", options),
                     FigureWriter(run_dir / "figures"), bs, quick, seed,
                     {"model": model.name, "dataset": dataset, "batch_size": bs, "quick": quick})
    _test_elbo(ev)
    grids = _sampling_grids(ev)
    if not quick:  # the same model class at initialisation: a reference for every SVM accuracy
        from ..models import build_model

        torch.manual_seed(seed)
        ev.untrained = build_model(model.name, **model.config).to(next(model.parameters()).device).eval()
    sections = [s for s in (grids, _structured_batches(ev), _domain_alignment(ev)) if s]
    return ev.metrics, sections


def _test_elbo(ev):
    """Test ELBO per observation on a few random test batches."""
    from ..infer.train import evaluate_elbo

    model, test, bs, quick, seed, metrics = ev.model, ev.test, ev.bs, ev.quick, ev.seed, ev.metrics
    device = next(model.parameters()).device
    if len(test) >= bs:
        n_eval = min(len(test) // bs, 2 if quick else 8)
        sampler = RandomBatchSampler(len(test), bs, 1, shuffle=True, seed=seed)
        batches = [b for _, b in zip(range(n_eval), sampler)]
        metrics["test_elbo_per_obs"] = float(evaluate_elbo(model, test, batches, device=device))


def _sampling_grids(ev):
    """Clusters of the test images and the sampling grids (figs. 3 and 4)."""
    from ..evaluation.ugvae import cluster_metrics, global_posterior, grid_variation
    from ..plots.ugvae import plot_sampling_grid, sampling_grid_images

    model, test, bs, quick, seed, save, metrics = ev.model, ev.test, ev.bs, ev.quick, ev.seed, ev.save, ev.metrics
    device = next(model.parameters()).device
    is_ug = model.name == "ugvae"
    grid_figs = []
    center = None
    if len(test) >= bs:  # average posterior mean of random test batches: where the data put beta
        rb = _random_batches(len(test), bs, 4 if quick else 16, seed + 5)
        center = global_posterior(model, test.x[rb.indices], rb.group_index, rb.num_groups).loc.mean(0)
        metrics["beta_center_norm"] = float(center.norm())
        metrics["beta_center_rms"] = float(center.pow(2).mean().sqrt())
    if is_ug and len(test) >= bs:
        n = (min(len(test), 4 * bs if quick else len(test)) // bs) * bs
        rows_c = torch.randperm(len(test), generator=torch.Generator().manual_seed(seed))[:n]
        gi = torch.arange(n) // bs
        d = model.cluster(test.x[rows_c].to(device), gi.to(device), n // bs).cpu()
        metrics["clusters_vs_digit"] = cluster_metrics(d, test.y[rows_c], model.K)
        if "domain" in test.extras:
            metrics["clusters_vs_domain"] = cluster_metrics(d, test.extras["domain"][rows_c], model.K)
        usage = torch.bincount(d, minlength=model.K)
        shown = torch.argsort(usage, descending=True)[: 1 if quick else 3].tolist()
        for k in shown:
            grid_figs.append(save(plot_sampling_grid(
                model, cluster=k, rows=5 if quick else 7, cols=5 if quick else 7, beta_range=1.0, z_range=3.0,
                title=f"UG-VAE cluster d={k}: rows beta in [-1,1], cols z = mu_z +/- 3"),
                f"sampling_grid_cluster{k}.png", f"cluster {k}"))
            if center is not None:
                metrics.setdefault("grid_variation", {})[f"cluster{k}"] = grid_variation(
                    sampling_grid_images(model, k, 7, 7, 1.0, 3.0, center))
                grid_figs.append(save(plot_sampling_grid(
                    model, cluster=k, rows=5 if quick else 7, cols=5 if quick else 7, beta_range=1.0, z_range=3.0,
                    beta_center=center, title=f"cluster d={k}: rows beta = c + [-1,1], c = mean posterior"),
                    f"sampling_grid_cluster{k}_centered.png", f"cluster {k} centered"))
        return ("## Sampling grids (paper fig. 3)\n\nRows: beta moved diagonally from -1 to +1 on every "
                "dimension (paper: around the prior mean 0; `_centered`: around c, the average posterior "
                "mean of random test batches, RMS "
                f"{metrics.get('beta_center_rms', float('nan')):.2f} per dimension); columns: z from "
                "mu_z^(d)(beta) - 3 to + 3, for the most used clusters "
                f"{shown} (test-set usage {usage.tolist()}).\n\n" + "\n".join(grid_figs))
    if not is_ug:
        figs = [save(plot_sampling_grid(model, None, rows=5 if quick else 7, cols=5 if quick else 7, beta_range=1.0,
                                        z_range=1.0,
                                        title="ML-VAE on random batches: rows content, cols style in [-1,1]"),
                     "sampling_grid_mlvae.png", "mlvae")]
        if center is not None:
            metrics["grid_variation"] = {"mlvae": grid_variation(sampling_grid_images(model, None, 7, 7, 1.0, 1.0,
                                                                                       center))}
            figs.append(save(plot_sampling_grid(model, None, rows=5 if quick else 7, cols=5 if quick else 7,
                                                beta_range=1.0, z_range=1.0, beta_center=center,
                                                title="ML-VAE: rows content = c + [-1,1]"),
                             "sampling_grid_mlvae_centered.png", "mlvae centered"))
        return ("## Sampling grid of the ablation (paper fig. 4)\n\n" + "\n".join(figs))
    return None


def _structured_batches(ev):
    """SVMs on the global posterior of structured batches (table 1, fig. 7, the MNIST series)."""
    from ..evaluation.ugvae import tsne
    from ..plots.grids import scatter_2d

    model, train, test, bs, seed, save, metrics = ev.model, ev.train, ev.test, ev.bs, ev.seed, ev.save, ev.metrics
    n_train, n_test, samples = ev.sizes
    untrained = ev.untrained
    rows = []
    fam2 = {k: DIGIT_FAMILIES[k] for k in ("even", "odd")}
    rnd_tr = _random_batches(len(train), bs, n_train, seed + 7)
    rnd_te = _random_batches(len(test), bs, n_test, seed + 8)
    structured = {}
    for name, fams, extra in [("even_odd", fam2, False), ("even_odd_random", fam2, True),
                              ("series", DIGIT_FAMILIES, False), ("series_random", DIGIT_FAMILIES, True)]:
        res, (means, classes) = _svm_experiment(
            model, train, test, fams, bs, n_train, n_test, samples, seed,
            extra_train=rnd_tr if extra else None, extra_test=rnd_te if extra else None)
        if untrained is not None and name in ("even_odd", "series"):
            ref = _svm_experiment(untrained, train, test, fams, bs, n_train, n_test, samples, seed)[0]
            res["untrained_beta_samples"], res["untrained_beta_means"] = ref["beta_samples"], ref["beta_means"]
        structured[name] = res
        rows.append((name, res))
        if name == "series_random":
            names = list(fams) + ["random"]
            fig_series = save(scatter_2d(tsne(means, seed), classes, label_names=names,
                                         title="t-SNE of global posterior means (test batches)"),
                              "tsne_series.png", "t-SNE series")
    metrics["structured"] = structured
    # batches that share one digit (batch size capped by the per-digit test count)
    counts = torch.bincount(test.y)
    bs1 = int(min(bs, counts[counts > 0].min().item() // 2))  # half a digit's test images: varied batches
    res, (means, classes) = _svm_experiment(model, train, test, single_label_families(train.y), bs1,
                                            max(n_train // 2, 3), max(n_test // 2, 2), samples, seed)
    metrics["single_digit"] = res
    rows.append((f"single digit (batch {bs1})", res))
    fig_digits = save(scatter_2d(tsne(means, seed), classes,
                                 title="t-SNE of global posterior means, single-digit batches"),
                      "tsne_digits.png", "t-SNE digits")
    return ("## Structured batches (paper table 1, fig. 7, MNIST series)\n\n"
            f"SVMs on {samples} samples per batch of the global posterior; batches of {bs} images; SVM "
            f"training batches from the train split ({n_train} per class), test batches from the test "
            f"split ({n_test} per class). `pixel_mean_reference`: the same SVMs on the mean image of each "
            "batch (no model). `untrained_beta_samples`: the same model class at initialisation.\n\n"
            + _table(rows) + f"\n\n{fig_series}\n\n{fig_digits}")


def _domain_alignment(ev):
    """Domain alignment on ``mnist+uci`` (fig. 5): SVMs, interpolations and t-SNE of the global posterior."""
    from ..evaluation.ugvae import global_posterior, grid_variation, tsne
    from ..plots.grids import scatter_2d
    from ..plots.ugvae import interpolation_images, plot_interpolation

    model, train, test, bs, quick, seed, save, metrics = (ev.model, ev.train, ev.test, ev.bs,
                                                          ev.quick, ev.seed, ev.save, ev.metrics)
    device = next(model.parameters()).device
    n_train, n_test, samples = ev.sizes
    untrained = ev.untrained
    if "domain" not in test.extras:
        return None
    dom_tr, dom_te = train.extras["domain"], test.extras["domain"]
    fams = {"mnist": [0], "uci": [1]}
    mix_tr = _mixed_batches(dom_tr, bs, n_train, seed + 11)
    mix_te = _mixed_batches(dom_te, bs, n_test, seed + 12)
    dom_rows, domain = [], {}
    for name, extra in [("mnist_vs_uci", False), ("mnist_vs_uci_vs_mixed", True)]:
        res, (means, classes) = _svm_experiment(
            model, train, test, fams, bs, n_train, n_test, samples, seed, labels_train=dom_tr,
            labels_test=dom_te, extra_train=mix_tr if extra else None, extra_test=mix_te if extra else None)
        if untrained is not None and not extra:
            ref = _svm_experiment(untrained, train, test, fams, bs, n_train, n_test, samples, seed,
                                  labels_train=dom_tr, labels_test=dom_te)[0]
            res["untrained_beta_samples"], res["untrained_beta_means"] = ref["beta_samples"], ref["beta_means"]
        domain[name] = res
        dom_rows.append((name, res))
    metrics["domain"] = domain
    # interpolations between the posterior means of a MNIST-only and a UCI-only test batch
    (ba, _) = structured_batches(dom_te, fams, bs, 2, seed=seed + 3)
    q = global_posterior(model, test.x[ba.indices], ba.group_index, ba.num_groups)
    first = [int(torch.nonzero(ba.group_index == g)[0]) for g in range(ba.num_groups)]
    local = _local_means(model, test.x[ba.indices[first]].to(device)).cpu()
    steps = 5 if quick else 7
    p1 = save(plot_interpolation(model, q.loc[0], q.loc[2], local[0], local[2], steps,
                                 "rows: beta MNIST->UCI batch; cols: z of a MNIST -> a UCI image",
                                 ("beta MNIST", "beta UCI"), ("z MNIST", "z UCI")), "interp_domains.png", "interp")
    metrics["domain_interpolation_variation"] = grid_variation(
        interpolation_images(model, q.loc[0], q.loc[2], local[0], local[2], 7))
    p2 = save(plot_interpolation(model, q.loc[2], q.loc[3], local[2], local[3], steps,
                                 "same domain (UCI): two UCI batches and two UCI images",
                                 ("beta UCI-1", "beta UCI-2"), ("z UCI-1", "z UCI-2")),
              "interp_same_domain.png", "interp")
    # t-SNE of mixed / MNIST-only / UCI-only test batches, with the interpolation path
    means, classes = _svm_means(model, test, dom_te, fams, bs, n_test, seed, mix_te)
    w = torch.linspace(0, 1, steps)[:, None]
    path_pts = ((1 - w) * q.loc[0] + w * q.loc[2]).numpy()
    emb = tsne(np.concatenate([means, path_pts]), seed)
    lab = np.concatenate([classes, np.full(steps, 3)])
    p3 = save(scatter_2d(emb, lab, title="t-SNE of beta: test batches",
                         label_names=["MNIST only", "UCI only", "mixed 50/50", "interpolation"]),
              "tsne_domains.png", "t-SNE domains")
    return ("## Domain alignment (paper fig. 5)\n\nTraining batches are 50/50 MNIST/UCI (domain label "
            "never used in training). SVMs predict the domain of a batch from its global posterior.\n\n"
            + _table(dom_rows) + f"\n\n{p1}\n\n{p2}\n\n{p3}")


def _svm_means(model, test, labels, fams, bs, n, seed, extra):
    from ..evaluation.ugvae import batch_features, concat_batches

    b, f = structured_batches(labels, fams, bs, n, seed=seed + 1)
    b = concat_batches(b, extra)
    f = torch.cat([f, torch.full((extra.num_groups,), len(fams))])
    means, _ = batch_features(model, test, b, 0)
    return means, f.numpy()


@torch.no_grad()
def _local_means(model, x):
    """Posterior means of the local latent (UG-VAE ``z``, ML-VAE ``style``: the latent site that is not the group
    site) of each image."""
    local = next(site for site in model.latent_sites if site != model.group_site)
    return model.encode(x)[local].loc


register_recipe(Recipe("ugvae", _add_shared, _build_ugvae, evaluate_ugvae, "mnist",
                       "Unsupervised Global VAE (ICLR 2021 submission), random batches as groups", model="ugvae",
                       config_defaults=CONFIG_DEFAULTS))
register_recipe(Recipe("mlvae-random", _add_shared, _build_mlvae_random, evaluate_ugvae, "mnist",
                       "UG-VAE ablation (paper fig. 4): the ML-VAE trained on random batches", model="ugvae",
                       config_defaults=CONFIG_DEFAULTS, config_exclude=MLVAE_RANDOM_EXCLUDE))
