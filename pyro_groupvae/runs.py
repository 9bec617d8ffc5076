"""Runs: train a model into a folder, load it back, evaluate it into figures, ``metrics.json`` and ``report.md``.

A *recipe* (one per model, in :mod:`pyro_groupvae.experiments`) says how to build the model and its batch sampler
from command-line options and how to evaluate a trained run; the CLI and :func:`train_run` use it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch

from .infer.train import (CHECKPOINT, CONFIG, CheckpointError, check_checkpoint, fit, load_checkpoint, plain_json,
                          resolve_device)

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
    :param model: the registered model whose ``Config`` generates the recipe's model options (``--help`` shows
        the dataclass defaults); ``None``: the recipe adds all its options itself.
    :param config_defaults: recipe-level defaults replacing the dataclass's on the command line (e.g.
        ``{"architecture": None}``: chosen from the image size by ``build``).
    :param config_exclude: config fields the recipe sets itself (not offered as options).
    """

    name: str
    add_arguments: Callable
    build: Callable
    evaluate: Optional[Callable] = None
    default_dataset: str = "mnist"
    description: str = ""
    extra: dict = field(default_factory=dict)
    model: Optional[str] = None
    config_defaults: dict = field(default_factory=dict)
    config_exclude: tuple = ()

    @property
    def config_class(self):
        """The ``Config`` dataclass of :attr:`model` (or ``None``)."""
        if self.model is None:
            return None
        from .models import get_model

        return get_model(self.model).Config


def register_recipe(recipe: Recipe) -> Recipe:
    RECIPES[recipe.name] = recipe
    return recipe


def all_recipes() -> dict:
    """Every recipe: imports the recipe module of each registered model (:func:`~pyro_groupvae.models.base.
    register_model` records it), which registers its recipes (a module may hold several, e.g. ablations)."""
    import importlib

    from .models import MODELS

    for cls in MODELS.values():
        mod = getattr(cls, "recipe_module", None)
        if mod is None:
            continue
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name != mod:  # a model without a recipe is fine; a broken recipe is not
                raise
    return RECIPES


def get_recipe(name) -> Recipe:
    """The recipe ``name`` (``pyro-groupvae train NAME``)."""
    if name not in RECIPES:
        all_recipes()
    if name not in RECIPES:
        raise ValueError(f"unknown model {name!r}; known: {sorted(RECIPES)}")
    return RECIPES[name]


def load_data(dataset, split, opts):
    """Load a dataset split for a run; binarised when the run's likelihood is Bernoulli."""
    from .data import load_dataset

    from .data.options import dataset_kwargs

    kw = {**dataset_kwargs(dataset, opts), **dict(opts.get("dataset_options") or {})}
    return load_dataset(dataset, split=split, root=opts.get("data_root"),
                        binarize=opts.get("likelihood") == "bernoulli", **kw)


def train_run(model_name, out, dataset=None, epochs=10, device="cpu", seed=None, lr=None, resume=False,
              progress=True, overwrite=False, engine=None, given=None, **opts):
    """Train ``model_name`` on ``dataset`` into the run folder ``out``.

    :param engine: training-engine options forwarded to :func:`~pyro_groupvae.infer.fit` (``accelerator``,
        ``devices``, ``strategy``, ``num_nodes``, ``precision``, ``logger``, ``num_workers``, ``early_stopping``,
        ``jit``).
    :param seed: seed of a new run (default 0).
    :param resume: continue the run in ``out`` with its own dataset, seed and options. Options given again must
        agree with the run's (else :class:`~pyro_groupvae.errors.ConfigError`); ``epochs`` (the new total), ``lr``
        (applied from the next step, with a warning), the device and engine options are honoured.
    :param given: names of the options the user gave (the CLI's); ``None``: every option passed counts as given.
    :param overwrite: replace a run already in ``out`` (otherwise that is an error).
    :returns: ``(model, history)``.
    """
    from .errors import ConfigError
    from .validation import read_json_config

    recipe = get_recipe(model_name)
    out = Path(out)
    engine = {k: v for k, v in (engine or {}).items() if v is not None}
    cfg = None
    if resume:
        if not (out / CONFIG).exists():
            raise CheckpointError(f"cannot resume: no {CONFIG} in {out} (no epoch finished there); start the run "
                                  "without --resume")
        cfg = read_json_config(out / CONFIG, required=("model",))  # the one read; fit gets it as run_config
        given = set(opts) | {"dataset", "seed"} if given is None else set(given)
        asked = {"dataset": dataset, "seed": seed, **opts}
        saved = {"dataset": cfg.get("dataset"), "seed": cfg.get("seed"), **cfg.get("options", {})}
        given -= {k for k in ("dataset", "seed") if asked[k] is None}
        clash = [k for k in sorted(given) if k in saved and k in asked and plain_json(asked[k]) !=
                 plain_json(saved[k])]
        if clash:
            what = ", ".join(f"--{k.replace('_', '-')} {asked[k]!r} (the run has {saved[k]!r})" for k in clash[:4])
            raise ConfigError(f"cannot resume {out} with other options: {what}; a resumed run keeps its data, seed "
                              "and model options: drop them, or start a new run (another --out, or --overwrite)")
        opts, dataset, seed = cfg["options"], cfg["dataset"], cfg["seed"]
    dataset = dataset or recipe.default_dataset
    seed = 0 if seed is None else seed
    torch.manual_seed(seed)
    train = load_data(dataset, "train", opts)
    try:
        val = load_data(dataset, "val", opts)
    except ValueError:
        val = None
    parts = recipe.build(dict(opts), train, val)
    model = parts["model"]
    train, val = parts.get("train", train), parts.get("val", val)  # a recipe may train on a view (e.g. partly labelled)
    history = fit(model, train, parts["sampler"], epochs, elbo=parts.get("elbo"), lr=lr, device=device, seed=seed,
                  out_dir=out, val_data=val if parts.get("val_sampler") is not None else None,
                  val_sampler=parts.get("val_sampler"), resume=resume, progress=progress, overwrite=overwrite,
                  config={"recipe": model_name, "dataset": dataset, "options": opts}, run_config=cfg, **engine)
    return model, history


@dataclass
class Run:
    """A trained run folder, loaded: the model (in eval mode), ``config.json``, the training history, and paths.

    Attribute access the ``Run`` does not know falls through to :attr:`model`, so code written for the old
    ``load_run`` (which returned the model) keeps working; new code should use ``run.model``.
    """

    model: torch.nn.Module
    config: dict
    history: list
    path: Path

    @property
    def checkpoint(self) -> Path:
        return self.path / CHECKPOINT

    @property
    def recipe(self) -> str:
        """Name of the recipe that trained it (the model name for a folder written by :func:`fit`)."""
        return self.config.get("recipe") or self.config["model"]

    def __getattr__(self, name):
        if name.startswith("__") or name in ("model", "config", "history", "path"):
            raise AttributeError(name)
        return getattr(self.model, name)


def load_run(run_dir, device="cpu") -> Run:
    """Load a run folder written by ``pyro-groupvae train``, :func:`train_run` or :func:`~pyro_groupvae.infer.fit`.

    :param run_dir: the folder.
    :param device: where to put the model.
    :returns: a :class:`Run` (``run.model`` is rebuilt from its config and in eval mode).
    """
    from .models import build_model
    from .validation import read_json_config

    run_dir = Path(run_dir)
    cfg = read_json_config(run_dir / CONFIG, required=("model",))
    device = resolve_device(device)
    state = load_checkpoint(run_dir / CHECKPOINT, map_location=device)
    # the model is rebuilt from config.json (the asdict of its config dataclass); the checkpoint must match it
    name = cfg["model"]
    model_config = cfg.get("model_config") or state.get("model_config") or {}
    try:
        model = build_model(name, **model_config)
    except TypeError as e:
        raise CheckpointError(f"{run_dir / CONFIG}: its model_config does not build a {name!r} model ({e})") from None
    check_checkpoint(state, model, run_dir / CHECKPOINT)
    try:
        model.load_state_dict(state["model_state"])
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {run_dir / CHECKPOINT} does not match its config: {e}") from None
    model.to(device).eval()
    return Run(model=model, config=cfg, history=list(state.get("history") or []), path=run_dir)


def evaluate_run(run_dir, device="cpu", **opts):
    """Evaluate a run: writes ``metrics.json``, ``figures/*.png`` and ``report.md`` into the run folder.

    :returns: the metrics dict.
    """
    from .experiments.report import run_report

    run_dir = Path(run_dir)
    run = load_run(run_dir, device)
    model, cfg = run.model, dict(run.config)
    recipe = get_recipe(run.recipe)
    if recipe.evaluate is None:
        raise ValueError(f"model {recipe.name!r} has no evaluation")
    # a folder written by fit() directly has no recipe options: the likelihood decides binarisation
    cfg.setdefault("recipe", recipe.name)
    cfg["dataset"] = cfg.get("dataset") or recipe.default_dataset
    cfg["options"] = {"likelihood": model.config.get("likelihood"), **(cfg.get("options") or {})}
    (run_dir / "figures").mkdir(exist_ok=True)
    metrics, sections = recipe.evaluate(model, cfg, run_dir, opts)
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, default=float))
    (run_dir / "report.md").write_text(run_report(recipe.name, run_dir, cfg, run.history, metrics, sections))
    return metrics
