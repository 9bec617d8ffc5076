"""HFVAE recipe and experiments (Esmaeili et al., AISTATS 2019).

* Recipe: ``pyro-groupvae train hfvae --dataset dsprites|mnist32|mnist --preset ... --beta 4 --gamma 3``. Training
  uses plain random minibatches (:class:`~pyro_groupvae.data.RandomBatchSampler`, one batch per step) and
  :class:`~pyro_groupvae.infer.HFVAE_ELBO` with ``N = len(train)`` in the estimator of q(z). Evaluation
  (:func:`evaluate`) writes traversals from -3 to 3 per dimension (figs. 5, 7, 11), reconstructions, prior
  samples, the mutual information per dimension (fig. 6) and, on dSprites, the FactorVAE / DCI / MIG scores
  (table 2).
* :func:`dsprites_table`: paper table 2 (trains every table-1 objective on one dSprites subset, then scores it).
* :func:`zero_shot`: paper fig. 9 (trains without thick 7s and narrow 0s, scores the removed digits).

The metrics are pure functions in :mod:`pyro_groupvae.evaluation.hfvae`.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from tqdm import tqdm

from ..data import RandomBatchSampler
from ..data.options import add_dataset_arguments
from ..infer.hfvae_elbo import PRESETS
from ..models.base import config_from_options
from ..runs import Recipe, register_recipe
from .report import FigureWriter, md_table

#: per dataset: discrete classes, continuous dim, number of discrete variables, likelihood (appendix B, sec. 6)
DATASET_DEFAULTS = {
    "dsprites": dict(discrete_classes=3, continuous_dim=10, discrete_vars=1, likelihood="bernoulli"),
    "mnist": dict(discrete_classes=10, continuous_dim=10, discrete_vars=1, likelihood="bernoulli"),
    "mnist32": dict(discrete_classes=10, continuous_dim=10, discrete_vars=1, likelihood="bernoulli"),
    "fashion-mnist": dict(discrete_classes=10, continuous_dim=10, discrete_vars=1, likelihood="bernoulli"),
    "folder": dict(discrete_classes=2, continuous_dim=20, discrete_vars=2, likelihood="normal"),  # CelebA
}


#: model options are generated from :class:`~pyro_groupvae.models.HFVAEConfig`. ``None`` defaults here: alpha
#: and delta come from the preset unless given, the latent sizes from the dataset (:data:`DATASET_DEFAULTS`)
CONFIG_DEFAULTS = {"alpha": None, "delta": None, "continuous_dim": None, "discrete_classes": None,
                   "discrete_vars": None}


def _add_args(p):
    """Sampler and data options (the model's come from its config)."""
    p.add_argument("--batch-size", type=int, default=512, help="paper: 512-1024")
    p.add_argument("--subset", dest="num_images", type=int, default=None,
                   help="alias of --num-images (dSprites: the number of training images drawn)")
    p.add_argument("--dataset-options", type=json.loads, default=None,
                   help='JSON dict passed to the dataset loader, e.g. \'{"n": 20000}\'')
    add_dataset_arguments(p)


def _defaults(train):
    """Per-dataset defaults from the dataset's name (``dsprites-train``, ``mnist32...``) or image shape."""
    for key in sorted(DATASET_DEFAULTS, key=len, reverse=True):
        if train.name.startswith(key):
            return DATASET_DEFAULTS[key]
    if tuple(train.image_shape) == (3, 64, 64):
        return DATASET_DEFAULTS["folder"]
    return DATASET_DEFAULTS["mnist"]


def build_model(opts, image_shape, defaults):
    """The :class:`~pyro_groupvae.models.hfvae.HFVAE` of the options (preset + overrides)."""
    from ..models.hfvae import HFVAE
    from ..infer.hfvae_elbo import preset_weights

    def option(k, default):
        return opts[k] if opts.get(k) is not None else default

    preset = option("preset", HFVAE.Config.preset)
    a, b, g, d = preset_weights(preset, option("beta", HFVAE.Config.beta), option("gamma", HFVAE.Config.gamma))
    # the preset decides the weights (alpha and delta unless given), the dataset the latent sizes and likelihood;
    # the other fields come from the options or the config's defaults
    sizes = {k: option(k, defaults[k]) for k in ("continuous_dim", "discrete_vars", "discrete_classes", "likelihood")}
    if not PRESETS[preset]["structured"]:
        sizes["discrete_vars"] = 0
    return HFVAE(config_from_options(HFVAE.Config, opts, image_shape=image_shape, preset=preset,
                                     alpha=float(option("alpha", a)), beta=b, gamma=g,
                                     delta=float(option("delta", d)), **sizes))


def _build(opts, train, val):
    defaults = _defaults(train)
    model = build_model(opts, train.image_shape, defaults)
    bs = min(int(opts.get("batch_size", 512)), len(train))
    sampler = RandomBatchSampler(len(train), bs, batches_per_step=1, shuffle=True, drop_last=True,
                                 seed=int(opts.get("sampler_seed", 0)))
    val_sampler = None
    if val is not None and len(val) >= 2:
        val_sampler = RandomBatchSampler(len(val), min(bs, len(val)), shuffle=False, seed=1)
    return {"model": model, "sampler": sampler, "val_sampler": val_sampler}


# ---------------------------------------------------------------------------------------------- evaluation
def _test_data(config, n=None):
    from ..runs import load_data

    opts = dict(config.get("options", {}))
    if config.get("dataset") == "dsprites":
        dopts = dict(opts.get("dataset_options") or {})
        dopts["n"] = n or min(int(dopts.get("n", opts.get("num_images") or 5000)), 5000)
        opts["dataset_options"] = dopts
    try:
        return load_data(config["dataset"], "test", opts)
    except ValueError:
        return load_data(config["dataset"], "train", opts)


def evaluate(model, config, run_dir, opts):
    """Figures and metrics of a trained HFVAE run (see :func:`evaluate_model`)."""
    test = _test_data(config)
    return evaluate_model(model, test, Path(run_dir) / "figures", dataset=config.get("dataset"),
                          quick=bool(opts.get("quick")), seed=int(opts.get("seed") or 0))


def evaluate_model(model, test, fig_dir, dataset=None, quick=False, seed=0):
    """Evaluate a trained HFVAE on ``test``: reconstructions, prior samples, traversals (zero code and test images),
    MI per dimension, the decomposition of the objective, and on dSprites the FactorVAE / DCI / MIG scores.

    :returns: ``(metrics, markdown lines)`` for :func:`pyro_groupvae.runs.evaluate_run`; PNGs go to ``fig_dir``.
    """
    from ..evaluation.hfvae import dsprites_scores, mutual_information, traversal_images
    from ..infer.hfvae_elbo import HFVAE_ELBO
    from ..plots import bar_plot, image_grid

    save = FigureWriter(fig_dir)
    torch.manual_seed(seed)
    dev = model.device
    n = min(len(test), 500 if quick else 2000)
    x = test.x[:n].to(dev)
    metrics, sections = {}, []
    # decomposition of the objective on the test batch
    a, b, g, d = model.weights
    dec = HFVAE_ELBO(a, b, g, d).decomposition(model.model, model.guide, x[:min(n, 512)],
                                                dataset_size=len(test))
    metrics["decomposition"] = dec
    sections += ["## Objective decomposition (test batch, per observation)", ""]
    sections += md_table(["term", "value"], [[k, f"{v:.4g}"] for k, v in dec.items()]) + [""]
    # reconstructions, samples, traversals
    rec = model.reconstruct(x[:8])
    sections.append("## Reconstructions, samples and traversals")
    sections.append(save(image_grid(torch.stack([x[:8].cpu(), rec.cpu()]), "data / reconstruction",
                                    row_labels=["data", "recon"]), "reconstructions.png", "recon"))
    torch.manual_seed(seed)
    sections.append(save(image_grid(model.sample(16).cpu().view(2, 8, *model.image_shape), "prior samples"),
                         "samples.png", "samples"))
    imgs, rl, cl = traversal_images(model, None)
    sections.append(save(image_grid(imgs, "traversal from -3 to 3, other latents 0 (fig. 11)", rl, cl,
                                    xlabel="value of the traversed latent", ylabel="latent"),
                         "traversal_zero.png", "traversal"))
    for i in range(1 if quick else 2):
        imgs, rl, cl = traversal_images(model, x[i].cpu())
        sections.append(save(image_grid(imgs, f"traversal of test image {i} (fig. 5)", rl, cl,
                                        xlabel="value of the traversed latent", ylabel="latent"),
                             f"traversal_image{i}.png", f"traversal {i}"))
    # mutual information per dimension
    mi = mutual_information(model, x)
    metrics["mutual_information_per_dimension"] = {f"z{i}": v for i, v in enumerate(mi)}
    sections += ["", "## Mutual information per dimension (fig. 6)",
                 save(bar_plot(mi, "dimension z_d", "I(x; z_d) (nats)", "mutual information per dimension (fig. 6)"),
                      "mutual_information.png", "mi")]
    if dataset == "dsprites" or str(getattr(test, "name", "")).startswith("dsprites"):
        scores = dsprites_scores(model, quick, seed)
        metrics.update(scores)
        sections += ["", "## dSprites disentanglement (table 2)", ""]
        sections += md_table(["metric", "ours", "paper (HFVAE)"],
                             [["FactorVAE", f"{metrics['factor_vae']:.3f}", f"{PAPER_TABLE['hfvae'][0]:.2f}"],
                              ["DCI disentanglement", f"{metrics['dci_disentanglement']:.3f}",
                               f"{PAPER_TABLE['hfvae'][1]:.2f}"],
                              ["MIG", f"{metrics['mig']:.3f}", "-"]])
    return metrics, sections


# ---------------------------------------------------------------------------------------------- dSprites table
#: paper table 2: (FactorVAE, Eastwood/DCI disentanglement)
PAPER_TABLE = {
    "vae": (0.71, 0.40),
    "beta-vae": (0.72, 0.71),
    "beta-svae": (0.47, 0.19),
    "beta-tcvae": (0.71, 0.31),
    "hfvae": (0.78, 0.74),
}
LABELS = {"vae": "VAE", "beta-vae": "β-VAE (β=4)", "beta-svae": "β-SVAE (β=4)", "beta-tcvae": "β-TCVAE (β=4)",
          "hfvae": "HFVAE (β=4, γ=3)"}
TABLE_PRESETS = ("vae", "beta-vae", "beta-tcvae", "beta-svae", "hfvae")


def dsprites_table(out, presets=TABLE_PRESETS, epochs=8, n_train=20000, batch_size=512, seed=0, width=1.0,
                   train=True, quick=False, progress=True, beta=4.0, gamma=3.0, overwrite=False):
    """Paper table 2: train every preset on the same dSprites subset with the same seed and budget, then score
    FactorVAE / DCI / MIG; writes ``out/<preset>/`` run folders, ``out/table.json`` and ``out/table.md``.

    :param int epochs: epochs over the ``n_train`` images (the budget; stated in the table).
    :param bool train: train (``False``: only score existing runs, e.g. after training elsewhere).
    :param bool overwrite: train again into run folders that exist (otherwise training refuses).
    :returns: the markdown table.
    """
    from ..evaluation.hfvae import dsprites_scores
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
                      overwrite=overwrite, **opts)
        train_seconds = time.perf_counter() - t0
        loaded = load_run(run)
        model, history = loaded.model, loaded.history
        t1 = time.perf_counter()
        scores = dsprites_scores(model, quick, seed)
        hist = history[-1] if history else {}
        rows[preset] = {
            "factor_vae": scores["factor_vae"],
            "dci": scores["dci_disentanglement"],
            "mig": scores["mig"],
            "train_objective": hist.get("train_elbo"),
            "train_seconds": train_seconds if train else None,
            "metric_seconds": time.perf_counter() - t1,
        }
        (out / "table.json").write_text(json.dumps({"rows": rows, "budget": dict(
            epochs=epochs, n_train=n_train, batch_size=batch_size, seed=seed, width=width)}, indent=2))
    steps = epochs * (n_train // batch_size)
    lines = [f"Budget: {n_train} dSprites training images (seed-{seed} subset of the 90% train split), batch "
             f"{batch_size}, {epochs} epochs = {steps} Adam steps (lr 1e-3), seed {seed}, width x{width}, CPU "
             "(1 thread); metrics on fresh ground-truth samples.", ""]
    lines += md_table(["model", "FactorVAE (ours)", "DCI disent. (ours)", "MIG (ours)", "FactorVAE (paper)",
                       "Eastwood (paper)"],
                      [[LABELS[p], f"{r['factor_vae']:.3f}", f"{r['dci']:.3f}", f"{r['mig']:.3f}",
                        f"{PAPER_TABLE[p][0]:.2f}", f"{PAPER_TABLE[p][1]:.2f}"] for p, r in rows.items()])
    table = "\n".join(lines)
    (out / "table.md").write_text(table + "\n")
    return table


# ---------------------------------------------------------------------------------------------- zero-shot
def zero_shot(out, dataset="mnist32", epochs=60, batch_size=500, seed=0, q=0.2, preset="hfvae", quick=False,
              progress=True, train_model=True, overwrite=False):
    """Paper fig. 9: train an HFVAE on MNIST without thick 7s and narrow 0s (the rule of
    :func:`pyro_groupvae.evaluation.hfvae.removed_mask`, quantile ``q``), then reconstruct and encode the removed
    digits of the test split (never seen) and compare with kept digits of the same classes
    (:func:`pyro_groupvae.evaluation.hfvae.zero_shot_scores`).

    ``train_model=False`` re-scores the model saved in ``out/run``; ``overwrite=True`` trains again into an existing
    ``out/run``. Writes ``out/zero_shot.json``,
    ``out/zero_shot.md`` and figures into ``out/figures``.
    """
    from ..data import load_dataset
    from ..data.samplers import RandomBatchSampler
    from ..evaluation.hfvae import prune_thresholds, removed_mask, zero_shot_scores
    from ..infer.train import fit
    from ..models.hfvae import HFVAE
    from ..plots import histogram_plot, image_grid

    out = Path(out)
    save = FigureWriter(out / "figures")
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
        fit(model, pruned, sampler, epochs, seed=seed, out_dir=out / "run", progress=progress, overwrite=overwrite,
            config={"experiment": "zero-shot", "thresholds": th, "q": q, "dataset": dataset})
    else:
        from ..infer.train import load_checkpoint

        model.load_state_dict(load_checkpoint(out / "run" / "checkpoint.pt")["model_state"])
    seconds = time.perf_counter() - t0
    model.eval()
    res = {"thresholds": {"area_7": th[0], "width_0": th[1]}, "q": q, "train_kept": int(keep.sum()),
           "train_removed": int((~keep).sum()), "epochs": epochs, "batch_size": bs, "seed": seed,
           "train_seconds": seconds}
    scores, latents = zero_shot_scores(model, pruned, test, th)
    res.update(scores)
    for name, lat in latents.items():
        label = name.replace("_", " ")
        sel = lat["removed_x"][:8]
        if len(sel):
            save(image_grid(torch.stack([sel, model.reconstruct(sel).cpu()]),
                            f"removed {label}s (test): data / reconstruction", ["data", "recon"]),
                 f"zero_shot_{name}.png")
        save(histogram_plot({"training (pruned)": lat["train"], "removed (test)": lat["removed"]},
                            f"z{lat['dim']} (sign-aligned with the feature)", f"{label}: encoded feature"),
             f"hist_{name}.png")
    (out / "zero_shot.json").write_text(json.dumps(res, indent=2))
    md = [f"Rule: remove 7s with ink area > {th[0]:.0f} px (top {q:.0%} of training 7s) and 0s with ink width < "
          f"{th[1]:.0f} columns (bottom {q:.0%} of training 0s); {res['train_removed']} of "
          f"{res['train_removed'] + res['train_kept']} training images removed. HFVAE (preset {preset}) on "
          f"{dataset}, {epochs} epochs, batch {bs}, seed {seed}.", ""]
    md += md_table(["removed group", "test images", "recon BCE removed", "recon BCE kept (same digit)", "latent",
                    "corr(train)", "removed beyond train 5/95% quantile", "kept test beyond it"],
                   [[name, r["test_removed"], f"{r['recon_bce_removed']:.1f}", f"{r['recon_bce_kept']:.1f}",
                     f"z{r['latent_dim']}", f"{r['corr_with_feature_train']:.2f}",
                     f"{r['removed_frac_beyond_train']:.0%}", f"{r['kept_test_frac_beyond_train']:.0%}"]
                    for name, r in ((n, res[n]) for n in ("thick_7", "narrow_0"))])
    (out / "zero_shot.md").write_text("\n".join(md) + "\n")
    return res


register_recipe(Recipe("hfvae", _add_args, _build, evaluate, "mnist32",
                       "Hierarchically Factorized VAE and its table-1 baselines (Esmaeili et al. 2019)",
                       model="hfvae", config_defaults=CONFIG_DEFAULTS))
