"""HFVAE recipe: ``pyro-groupvae train hfvae --dataset dsprites|mnist32|mnist --preset ... --beta 4 --gamma 3``.

Training uses plain random minibatches (:class:`~pyro_groupvae.data.RandomBatchSampler`, one batch per step)
and :class:`~pyro_groupvae.infer.HFVAE_ELBO` with ``N = len(train)`` in the estimator of q(z). Evaluation
(:func:`evaluate`) writes traversals from -3 to 3 per dimension (figs. 5, 7, 11), reconstructions, prior samples,
the mutual information per dimension (fig. 6) and, on dSprites, the FactorVAE / DCI / MIG scores (table 2).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..data import RandomBatchSampler
from ..infer.hfvae_elbo import PRESETS
from ..runs import Recipe, register_recipe

#: per dataset: discrete classes, continuous dim, number of discrete variables, likelihood (appendix B, sec. 6)
DATASET_DEFAULTS = {
    "dsprites": dict(discrete_classes=3, continuous_dim=10, discrete_vars=1, likelihood="bernoulli"),
    "mnist": dict(discrete_classes=10, continuous_dim=10, discrete_vars=1, likelihood="bernoulli"),
    "mnist32": dict(discrete_classes=10, continuous_dim=10, discrete_vars=1, likelihood="bernoulli"),
    "fashion-mnist": dict(discrete_classes=10, continuous_dim=10, discrete_vars=1, likelihood="bernoulli"),
    "folder": dict(discrete_classes=2, continuous_dim=20, discrete_vars=2, likelihood="normal"),  # CelebA
}


class _SubsetAction(argparse.Action):
    """``--subset N``: the dataset option ``n`` (number of dSprites images drawn for the run)."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        opts = dict(getattr(namespace, "dataset_options", None) or {})
        opts["n"] = int(values)
        namespace.dataset_options = opts


def _add_args(p):
    p.add_argument("--preset", choices=sorted(PRESETS), default="hfvae",
                   help="table-1 objective: vae, beta-vae, beta-tcvae (Normal block only), beta-svae, hfvae")
    p.add_argument("--alpha", type=float, default=None, help="override: weight of I(x;z)")
    p.add_argument("--beta", type=float, default=4.0, help="TC between groups (beta of the preset)")
    p.add_argument("--gamma", type=float, default=3.0, help="TC within groups (HFVAE)")
    p.add_argument("--delta", type=float, default=None, help="override: weight of the dimension-wise KLs")
    p.add_argument("--batch-size", type=int, default=512, help="paper: 512-1024")
    p.add_argument("--continuous-dim", type=int, default=None)
    p.add_argument("--discrete-classes", type=int, default=None)
    p.add_argument("--discrete-vars", type=int, default=None)
    p.add_argument("--temperature", type=float, default=0.67)
    p.add_argument("--likelihood", choices=["bernoulli", "normal"], default="bernoulli",
                   help="bernoulli (binarised data, appendix B sigmoid decoder) or normal (CelebA)")
    p.add_argument("--architecture", choices=["auto", "mlp", "dsprites", "conv"], default="auto")
    p.add_argument("--width", type=float, default=1.0, help="multiplier of hidden widths (1 = paper)")
    p.add_argument("--subset", type=int, default=None, action=_SubsetAction,
                   help="dSprites: number of training images drawn (dataset option n)")
    p.add_argument("--dataset-options", type=json.loads, default=None,
                   help='JSON dict passed to the dataset loader, e.g. \'{"n": 20000}\'')


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

    preset = opts.get("preset") or "hfvae"
    a, b, g, d = preset_weights(preset, opts.get("beta", 4.0), opts.get("gamma", 3.0))
    if opts.get("alpha") is not None:
        a = float(opts["alpha"])
    if opts.get("delta") is not None:
        d = float(opts["delta"])
    structured = PRESETS[preset]["structured"]
    get = lambda k: opts.get(k) if opts.get(k) is not None else defaults[k]  # noqa: E731
    return HFVAE(image_shape=image_shape, architecture=opts.get("architecture") or "auto",
                 continuous_dim=get("continuous_dim"), discrete_vars=get("discrete_vars") if structured else 0,
                 discrete_classes=get("discrete_classes"), temperature=opts.get("temperature", 0.67),
                 likelihood=get("likelihood"), alpha=a, beta=b, gamma=g, delta=d, preset=preset,
                 width=opts.get("width", 1.0))


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
        dopts["n"] = n or min(int(dopts.get("n", 5000)), 5000)
        opts["dataset_options"] = dopts
    try:
        return load_data(config["dataset"], "test", opts)
    except ValueError:
        return load_data(config["dataset"], "train", opts)


def evaluate(model, config, run_dir, opts):
    """Figures and metrics of a trained HFVAE run (see :func:`pyro_groupvae.evaluation.hfvae.evaluate_model`)."""
    from ..evaluation.hfvae import evaluate_model

    test = _test_data(config)
    return evaluate_model(model, test, Path(run_dir) / "figures", dataset=config.get("dataset"),
                          quick=bool(opts.get("quick")), seed=int(opts.get("seed") or 0))


register_recipe(Recipe("hfvae", _add_args, _build, evaluate, "mnist32",
                       "Hierarchically Factorized VAE and its table-1 baselines (Esmaeili et al. 2019)"))
