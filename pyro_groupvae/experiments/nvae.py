"""N-VAE and CVAE recipes: training options, the paper's evaluation (KL detector, traversals, accuracy,
augmentation) and figures.

``pyro-groupvae train nvae --epochs 30 --out runs/nvae`` then ``pyro-groupvae evaluate runs/nvae
[--baseline runs/cvae]`` (the baseline, a ``train cvae`` run, enters the augmentation comparison).
"""
from __future__ import annotations

import torch

from ..data import RandomBatchSampler
from ..data.labelled import PartlyLabelledDataset, stratified_labelled_mask
from ..models.base import config_from_options
from ..runs import Recipe, load_data, register_recipe


#: model options are generated from :class:`~pyro_groupvae.models.NVAEConfig` / ``CVAEConfig``; here the
#: architecture's default is chosen by image size: cnn for digit-sized images, conv for 64x64
CONFIG_DEFAULTS = {"architecture": None}


def _add_shared(p):
    """Sampler options (the model's come from its config)."""
    p.add_argument("--batch-size", type=int, default=100)


def _add_nvae_args(p):
    _add_shared(p)
    p.add_argument("--labelled-fraction", type=float, default=1.0,
                   help="fraction of training labels kept (stratified); < 1 trains semi-supervised")
    p.add_argument("--labelled-seed", type=int, default=0)


def _architecture(opts, data):
    return opts.get("architecture") or ("conv" if data.image_shape[-1] == 64 else "cnn")


def _samplers(opts, train, val):
    bs = opts.get("batch_size", 100)
    sampler = RandomBatchSampler(len(train), bs, shuffle=True, drop_last=False, seed=0)
    val_sampler = None if val is None else RandomBatchSampler(len(val), bs, shuffle=False, drop_last=False)
    return sampler, val_sampler


def _num_classes(train):
    return int(train.y.max()) + 1


def _build_nvae(opts, train, val):
    from ..models.nvae import NVAE

    frac = opts.get("labelled_fraction", 1.0)
    semi = frac < 1.0
    if semi:
        # the labelled mask is explicit: the run trains on a PartlyLabelledDataset (NVAE.batch_inputs passes the
        # batch's slice of `labelled` to the model and guide); the loaded datasets are not modified
        train = PartlyLabelledDataset.of(train, stratified_labelled_mask(train.y, frac, opts.get("labelled_seed", 0)))
        if val is not None:
            val = PartlyLabelledDataset.of(val, torch.ones(len(val), dtype=torch.bool))
    model = NVAE(config_from_options(NVAE.Config, opts, image_shape=train.image_shape,
                                     num_classes=_num_classes(train), semi_supervised=semi,
                                     architecture=_architecture(opts, train)))
    sampler, val_sampler = _samplers(opts, train, val)
    parts = {"model": model, "sampler": sampler, "val_sampler": val_sampler}
    if semi:
        parts.update(train=train, val=val)
    return parts


def _build_cvae(opts, train, val):
    from ..models.nvae import CVAE

    model = CVAE(config_from_options(CVAE.Config, opts, image_shape=train.image_shape,
                                     num_classes=_num_classes(train), architecture=_architecture(opts, train)))
    sampler, val_sampler = _samplers(opts, train, val)
    return {"model": model, "sampler": sampler, "val_sampler": val_sampler}


# ---------------------------------------------------------------------------------------------------- evaluation
def _traversal_values(quick):
    return torch.linspace(-3, 3, 5 if quick else 7)


@torch.no_grad()
def class_traversals(model, values):
    """Images ``(L * class_dim, len(values), C, H, W)``: row (class y, dim d) moves ``z_cy[d]``, all else 0."""
    L, Dc, Ds = model.num_classes, model.class_dim, model.shared_dim
    rows = []
    for c in range(L):
        for d in range(Dc):
            zc = torch.zeros(len(values), Dc)
            zc[:, d] = values
            y = torch.full((len(values),), c, dtype=torch.long)
            rows.append(model.decode(y.to(model.device), zc.to(model.device),
                                     torch.zeros(len(values), Ds, device=model.device)).cpu())
    return torch.stack(rows)


@torch.no_grad()
def shared_traversals(model, dim, values):
    """Images ``(L, len(values), C, H, W)``: row = class, columns move ``z_s[dim]``; ``z_c = 0``."""
    L, Dc, Ds = model.num_classes, model.class_dim, model.shared_dim
    rows = []
    for c in range(L):
        zs = torch.zeros(len(values), Ds)
        zs[:, dim] = values
        y = torch.full((len(values),), c, dtype=torch.long)
        rows.append(model.decode(y.to(model.device), torch.zeros(len(values), Dc, device=model.device),
                                 zs.to(model.device)).cpu())
    return torch.stack(rows)


@torch.no_grad()
def class_samples(model, sigma=1.4, per_class=8, seed=0):
    """Class-conditional samples ``(L, per_class, C, H, W)`` with latents ``N(0, sigma^2 I)`` (paper fig. 11)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(model.num_classes).repeat_interleave(per_class)
    return model.generate(y, sigma, generator=g).cpu().reshape((model.num_classes, per_class)
                                                              + tuple(model.image_shape))


def _random_subset(data, n, seed):
    """``n`` rows of ``data`` drawn without replacement (seeded)."""
    rows = torch.randperm(len(data), generator=torch.Generator().manual_seed(int(seed)))[:n]
    return data.subset(rows.sort().values)


def augmentation_table(result):
    """Markdown table of :func:`~pyro_groupvae.evaluation.nvae.augmentation_experiment`'s result (test error in %,
    mean ± std over seeds)."""
    from .report import md_table

    def error(r):
        return f"{100 * r['mean']:.2f} ± {100 * r['std']:.2f}"

    rows = [["no augmentation", 0, "-", error(result["baseline"])]]
    rows += [[r["model"], r["p"], r["sigma"], error(r)] for r in result["settings"]]
    return "\n".join(md_table(["model", "p", "sigma", "test error % (mean ± std)"], rows))


def _evaluate_cvae(model, config, run_dir, opts):
    from ..plots.grids import image_grid
    from .report import FigureWriter

    save = FigureWriter(run_dir / "figures")
    sections = []
    for sigma in (1.0, 2.0):
        sections.append(save(image_grid(class_samples(model, sigma, 6 if opts.get("quick") else 8,
                                                      opts.get("seed", 0)),
                                        f"CVAE samples, sigma={sigma:g}", row_labels=list(range(model.num_classes)),
                                        ylabel="class", xlabel="samples, latent ~ N(0, sigma^2 I)"),
                             f"samples_sigma{sigma:g}.png", f"CVAE samples sigma {sigma:g}"))
    return {"latent_dim": model.latent_dim}, ["## CVAE samples", ""] + sections


def _evaluate_nvae(model, config, run_dir, opts):
    from ..evaluation.nvae import augmentation_experiment, classification_accuracy, kl_per_dimension, sigma_trend
    from ..plots.grids import bar_plot, image_grid, line_plot
    from .report import FigureWriter
    from ..runs import load_run

    quick = bool(opts.get("quick"))
    seed = opts.get("seed", 0)
    save = FigureWriter(run_dir / "figures")
    run_opts = config.get("options", {})
    test = load_data(config.get("dataset", "mnist"), "test", run_opts)
    if quick:
        test = _random_subset(test, 200, seed)  # the splits are sorted by class: a random subset has all classes
    metrics, sections = {}, []
    L, Dc, Ds = model.num_classes, model.class_dim, model.shared_dim

    # ---- accuracy of q(y|x)
    metrics["test_accuracy"] = classification_accuracy(model, test.x, test.y)
    frac = run_opts.get("labelled_fraction", 1.0)
    metrics["labelled_fraction"] = frac
    sections += ["## Classification by q(y|x)", "",
                 f"Test accuracy {metrics['test_accuracy']:.4f} on {len(test)} test images "
                 f"(labelled fraction in training: {frac:g}).", ""]

    # ---- KL detector (figs. 5 and 10)
    kl = kl_per_dimension(model, test.x, test.y)
    metrics["kl"] = {"mean_z_s": kl["mean_z_s"], "mean_z_cy": kl["mean_z_cy"],
                     "mean_z_c_other": kl["mean_z_c_other"]}
    values = torch.cat([kl["z_s"], kl["z_cy"], kl["z_c_other"]])
    groups = [0] * Ds + [1] * Dc + [2] * Dc
    fig_kl = save(bar_plot(values.numpy(), f"dimension: z_s (0-{Ds - 1}), z_cy, other z_c blocks", "mean KL (nats)",
                           "KL per latent dimension (fig. 5)", groups=groups,
                           group_names=["z_s (shared)", "z_cy (true class block)", "other z_c blocks (mean)"]),
                  "kl_per_dimension.png", "KL per dimension")
    block = kl["block_by_class"]
    fig_block = save(bar_plot(block.flatten().nan_to_num(0).numpy(),
                              "true class (one group of L bars per class: the L class blocks)",
                              "mean KL of block (nats)", "KL of each z_c block per true class (fig. 10)",
                              groups=[i % L for i in range(L * L)],
                              group_names=[f"block {i}" for i in range(L)],
                              xticks={c * L + (L - 1) / 2: c for c in range(L)}),
                     "kl_block_by_class.png", "KL per block and class")
    diag = float(torch.diagonal(block).nanmean())
    off = float(block[~torch.eye(L, dtype=torch.bool)].nanmean())
    metrics["kl"]["block_true_class"], metrics["kl"]["block_other_classes"] = diag, off
    sections += ["## KL detector", "",
                 f"Mean KL per dimension: z_s {kl['mean_z_s']:.3f}, true-class block z_cy {kl['mean_z_cy']:.3f}, "
                 f"other z_c blocks {kl['mean_z_c_other']:.3f} nats. Summed over a block: true class {diag:.3f}, "
                 f"other blocks {off:.3f} nats.", "",
                 fig_kl, "", fig_block, ""]

    # ---- traversals (figs. 1, 2) and samples (fig. 11)
    vals = _traversal_values(quick)
    col_labels = [f"{v:.1f}" for v in vals.tolist()]
    sections += ["## Traversals", "",
                 save(image_grid(class_traversals(model, vals), "z_cy traversals (row: class.dim)",
                                 row_labels=[f"{c}.{d}" for c in range(L) for d in range(Dc)], col_labels=col_labels,
                                 xlabel="value of z_cy[dim]", ylabel="class.dim"),
                      "traversal_class.png", "class traversals"), ""]
    if Ds:
        top = torch.argsort(kl["z_s"], descending=True)[: (1 if quick else 3)].tolist()
        for d in top:
            sections += [save(image_grid(shared_traversals(model, d, vals),
                                         f"z_s[{d}] traversal (KL {float(kl['z_s'][d]):.2f})",
                                         row_labels=list(range(L)), col_labels=col_labels,
                                         xlabel=f"value of z_s[{d}]", ylabel="class"),
                              f"traversal_shared_{d}.png", f"z_s {d}"), ""]
    sections += [save(image_grid(class_samples(model, 1.4, 6 if quick else 8, seed), "N-VAE samples, sigma=1.4",
                                 row_labels=list(range(L)), ylabel="class",
                                 xlabel="samples, latents ~ N(0, 1.4^2 I)"),
                      "samples_sigma1.4.png", "samples"), ""]

    # ---- augmentation (fig. 9)
    generators = {"N-VAE": model}
    if opts.get("baseline"):
        generators["CVAE"] = load_run(opts["baseline"], device=model.device).model
    train = load_data(config.get("dataset", "mnist"), "train", run_opts)
    probs, sigmas = ((0.4,), (1.0, 2.0)) if quick else ((0.4, 1.0), (1.0, 1.4, 2.0))
    seeds = (seed,) if quick else (seed, seed + 1, seed + 2)
    if quick:
        train = _random_subset(train, 500, seed)
    aug = augmentation_experiment(generators, train, test, probs, sigmas, seeds, epochs=1 if quick else 5,
                                  progress=not quick)
    metrics["augmentation"] = {"baseline": {"mean": aug["baseline"]["mean"], "std": aug["baseline"]["std"]}}
    for r in aug["settings"]:
        metrics["augmentation"][f"{r['model']}_p{r['p']:g}_sigma{r['sigma']:g}"] = {"mean": r["mean"],
                                                                                     "std": r["std"]}
    trend_lines, aug_figs = [], []
    for p in probs:
        curves, errors = {}, {}
        for name in generators:
            rows = sorted((r["sigma"], r["mean"], r["std"]) for r in aug["settings"]
                          if r["model"] == name and r["p"] == p)
            curves[name] = ([s for s, _, _ in rows], [100 * m for _, m, _ in rows])
            errors[name] = [100 * s for _, _, s in rows]
            slope = sigma_trend(aug, name, p)
            metrics["augmentation"][f"{name}_p{p:g}_slope_per_sigma"] = slope
            trend_lines.append(f"- {name}, p={p:g}: error slope {100 * slope:+.2f} points per unit sigma")
        aug_figs.append(save(line_plot(curves, "latent sigma", "test error (%)",
                                       f"augmentation, replacement probability {p:g} (fig. 9)", errors=errors,
                                       hlines={"no augmentation": 100 * aug["baseline"]["mean"]}),
                             f"augmentation_p{p:g}.png", f"augmentation p={p:g}"))
    sections += ["## Augmentation (fig. 9)", "",
                 f"{len(seeds)} seed(s), {aug['epochs']} classifier epoch(s), {len(train)} training images.", "",
                 augmentation_table(aug), ""] + trend_lines + [""]
    sections += aug_figs
    metrics["augmentation_raw"] = aug
    return metrics, sections


def evaluate(model, config, run_dir, opts):
    from ..models.nvae import CVAE

    if isinstance(model, CVAE):
        return _evaluate_cvae(model, config, run_dir, opts)
    return _evaluate_nvae(model, config, run_dir, opts)


register_recipe(Recipe("nvae", _add_nvae_args, _build_nvae, evaluate, "mnist",
                       "N-VAE: class-conditioned latents with a Dirichlet class prior (Antoran & Miguel 2019)",
                       model="nvae", config_defaults=CONFIG_DEFAULTS))
register_recipe(Recipe("cvae", _add_shared, _build_cvae, evaluate, "mnist",
                       "CVAE baseline for the N-VAE augmentation experiment", model="cvae",
                       config_defaults=CONFIG_DEFAULTS))
