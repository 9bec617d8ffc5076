"""Runs: train a model into a folder, load it back, evaluate it into figures, ``metrics.json`` and ``report.md``.

A *recipe* (one per model, in :mod:`pyro_groupvae.experiments`) says how to build the model and its batch sampler
from command-line options and how to evaluate a trained run; the CLI and :func:`train_run` use it.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch

from .infer.train import CHECKPOINT, CONFIG, CheckpointError, fit, load_checkpoint, resolve_device

RECIPES = {}


@dataclass
class Recipe:
    """How to train and evaluate one model from the command line.

    :param name: the CLI name (``pyro-groupvae train NAME``).
    :param add_arguments: ``f(parser)`` adding model-specific options (use defaults; names with dashes).
    :param build: ``f(opts: dict, train: ImageDataset, val: ImageDataset) -> dict`` with keys ``model``,
        ``sampler`` and optionally ``val_sampler``, ``elbo``.
    :param evaluate: ``f(model, config: dict, run_dir: Path, opts: dict) -> (metrics: dict, sections: list)``;
        it writes PNGs into ``run_dir/figures`` and returns markdown sections for the report.
    :param default_dataset: dataset name used when ``--dataset`` is not given.
    :param binarize: whether a Bernoulli likelihood needs binarised data (decided from opts).
    """

    name: str
    add_arguments: Callable
    build: Callable
    evaluate: Optional[Callable] = None
    default_dataset: str = "mnist"
    description: str = ""
    extra: dict = field(default_factory=dict)


def register_recipe(recipe: Recipe) -> Recipe:
    RECIPES[recipe.name] = recipe
    return recipe


def _import_recipes():
    import importlib

    for mod in ("mlvae", "ugvae", "nvae", "hfvae"):
        try:
            importlib.import_module(f"pyro_groupvae.experiments.{mod}")
        except ModuleNotFoundError as e:
            if e.name != f"pyro_groupvae.experiments.{mod}":
                raise


def get_recipe(name) -> Recipe:
    _import_recipes()
    if name not in RECIPES:
        raise ValueError(f"unknown model {name!r}; known: {sorted(RECIPES)}")
    return RECIPES[name]


def load_data(dataset, split, opts):
    """Load a dataset split for a run; binarised when the run's likelihood is Bernoulli."""
    from .data import load_dataset

    kw = dict(opts.get("dataset_options") or {})
    return load_dataset(dataset, split=split, root=opts.get("data_root"),
                        binarize=opts.get("likelihood") == "bernoulli", **kw)


def train_run(model_name, out, dataset=None, epochs=10, device="cpu", seed=0, lr=1e-3, resume=False,
              progress=True, **opts):
    """Train ``model_name`` on ``dataset`` into the run folder ``out``.

    :returns: ``(model, history)``.
    """
    recipe = get_recipe(model_name)
    out = Path(out)
    if resume:
        cfg = json.loads((out / CONFIG).read_text()) if (out / CONFIG).exists() else None
        if cfg is None:
            raise CheckpointError(f"cannot resume: no {CONFIG} in {out}")
        opts, dataset, seed, lr = cfg["options"], cfg["dataset"], cfg["seed"], cfg["lr"]
    dataset = dataset or recipe.default_dataset
    torch.manual_seed(seed)
    train = load_data(dataset, "train", opts)
    try:
        val = load_data(dataset, "val", opts)
    except ValueError:
        val = None
    parts = recipe.build(dict(opts), train, val)
    model = parts["model"]
    history = fit(model, train, parts["sampler"], epochs, elbo=parts.get("elbo"), lr=lr, device=device, seed=seed,
                  out_dir=out, val_data=val if parts.get("val_sampler") is not None else None,
                  val_sampler=parts.get("val_sampler"), resume=resume, progress=progress,
                  config={"recipe": model_name, "dataset": dataset, "options": opts})
    return model, history


def load_run(run_dir, device="cpu"):
    """The trained model of a run folder (in eval mode).

    :param run_dir: a folder written by ``pyro-groupvae train`` / :func:`train_run`.
    :param device: where to put the model.
    """
    from .models import build_model

    run_dir = Path(run_dir)
    if not (run_dir / CONFIG).exists():
        raise CheckpointError(f"{run_dir} is not a run folder (no {CONFIG})")
    try:
        cfg = json.loads((run_dir / CONFIG).read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{run_dir / CONFIG} is corrupt ({e})") from None
    device = resolve_device(device)
    state = load_checkpoint(run_dir / CHECKPOINT, map_location=device)
    model = build_model(cfg["model"], **state["model_config"])
    try:
        model.load_state_dict(state["model_state"])
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {run_dir / CHECKPOINT} does not match its config: {e}") from None
    model.to(device).eval()
    model.run_config = cfg
    model.history = state.get("history", [])
    return model


def _fmt(v):
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4g}"
    return str(v)


def flatten_metrics(metrics, prefix=""):
    """Scalar entries of a nested metrics dict, as ``(dotted.name, value)`` pairs."""
    rows = []
    for k, v in metrics.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            rows += flatten_metrics(v, name + ".")
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            rows.append((name, v))
    return rows


def evaluate_run(run_dir, device="cpu", **opts):
    """Evaluate a run: writes ``metrics.json``, ``figures/*.png`` and ``report.md`` into the run folder.

    :returns: the metrics dict.
    """
    run_dir = Path(run_dir)
    model = load_run(run_dir, device)
    cfg = model.run_config
    recipe = get_recipe(cfg.get("recipe", cfg["model"]))
    if recipe.evaluate is None:
        raise ValueError(f"model {recipe.name!r} has no evaluation")
    (run_dir / "figures").mkdir(exist_ok=True)
    metrics, sections = recipe.evaluate(model, cfg, run_dir, opts)
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, default=float))
    lines = [f"# {recipe.name} run report", "", f"Run folder: `{run_dir}`; dataset `{cfg.get('dataset')}`, "
             f"{cfg.get('epochs')} epochs, seed {cfg.get('seed')}, ELBO `{cfg.get('elbo')}`.", ""]
    if model.history:
        last = model.history[-1]
        lines += [f"Final training ELBO per observation: {_fmt(last['train_elbo'])} "
                  f"(validation: {_fmt(last.get('val_elbo', float('nan')))}).", ""]
    lines += ["## Metrics", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in flatten_metrics(metrics) if ".curves." not in f".{k}."]
    lines.append("")
    prev = ""
    for sec in sections:
        # recipes return lines: consecutive table rows stay together, anything else gets a blank line before it
        if not (sec.startswith("|") and prev.startswith("|")) and lines[-1] != "":
            lines.append("")
        lines.append(sec)
        prev = sec
    (run_dir / "report.md").write_text("\n".join(lines))
    return metrics
