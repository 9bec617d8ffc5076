"""One training loop for every model: SVI with a chosen ELBO and Adam, seeded, with progress bar, validation
ELBO, history CSV, a checkpoint every epoch and an exact ``resume``."""
from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import time
from pathlib import Path

import pyro
import torch
from pyro.infer import SVI
from tqdm.auto import tqdm

from .optim import FusedAdam

CHECKPOINT = "checkpoint.pt"
HISTORY = "history.csv"
CONFIG = "config.json"


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, truncated or not one of ours."""


def resolve_device(device=None):
    """``"auto"``/``None`` -> CUDA when available, else CPU; otherwise ``torch.device(device)`` with a clear
    error when CUDA is asked for but not available."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was requested but torch.cuda.is_available() is False")
    return device


def save_checkpoint(path, **state):
    """Write atomically (temporary file, then rename), so an interrupted save never leaves a corrupt file."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path, map_location="cpu"):
    """Load a checkpoint written by :func:`save_checkpoint`, with a clear error if it is missing or corrupt."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # torch raises many kinds for truncated/garbage files
        raise CheckpointError(f"checkpoint {path} is corrupt or unreadable ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict) or "model_state" not in state:
        raise CheckpointError(f"{path} is not a pyro_groupvae checkpoint (no model_state)")
    return state


def _write_history(path, history):
    if not history:
        return
    keys = list(history[0].keys())
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(history)


@torch.no_grad()
def evaluate_elbo(model, data, sampler, elbo=None, device=None):
    """Average ELBO per observation of ``data`` over the batches of ``sampler`` (a Monte Carlo estimate)."""
    elbo = elbo or model.default_elbo()
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for batch in sampler:
        kw = model.batch_inputs(data, batch, device)
        total += elbo.loss(model.model, model.guide, **kw)
        count += len(batch.indices)
    model.train(was_training)
    return -total / max(count, 1)


def fit(model, data, sampler, epochs, elbo=None, lr=1e-3, device=None, seed=0, out_dir=None, val_data=None,
        val_sampler=None, resume=False, progress=True, config=None, clip_norm=None, validate_each_step=False):
    """Train ``model`` (a :class:`~pyro_groupvae.models.base.GroupModel`) with ``pyro.infer.SVI``.

    :param model: the model; its ``model``/``guide`` take the keyword arguments of ``model.batch_inputs``.
    :param data: training :class:`~pyro_groupvae.data.ImageDataset`.
    :param sampler: a batch sampler yielding ``GroupBatch`` (with ``state_dict``/``load_state_dict``).
    :param int epochs: total number of epochs (with ``resume``, training continues up to this number).
    :param elbo: a Pyro ELBO instance; default ``model.default_elbo()``.
    :param float lr: Adam learning rate (the paper's 1e-3, betas (0.9, 0.999), eps 1e-8).
    :param device: ``"cpu"``, ``"cuda"``, ``"auto"``.
    :param int seed: seeds Pyro, torch and numpy.
    :param out_dir: run folder: ``config.json``, ``history.csv`` and ``checkpoint.pt`` (every epoch) go there.
    :param val_data: validation dataset, with ``val_sampler``; its ELBO per observation is logged per epoch.
    :param bool resume: continue from ``out_dir/checkpoint.pt`` exactly where it stopped (same parameters,
        optimiser moments, data order and random streams).
    :param dict config: extra information written to ``config.json`` (e.g. dataset name).
    :param float clip_norm: optional gradient-norm clipping.
    :param bool validate_each_step: keep the per-step input checks and Pyro's distribution validation. By
        default the datasets are validated once before training and the steps run without checks (they cost
        ~10% of a step of the MNIST networks).
    :returns: the history, a list of dicts (epoch, train_elbo, val_elbo, seconds).
    """
    device = resolve_device(device)
    model.to(device)
    elbo = elbo or model.default_elbo()
    optim = FusedAdam({"lr": lr, "betas": (0.9, 0.999), "eps": 1e-8}, clip_norm=clip_norm)
    history, start_epoch = [], 0
    out = Path(out_dir) if out_dir is not None else None
    pyro.clear_param_store()
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    if resume:
        if out is None:
            raise ValueError("resume=True needs out_dir")
        state = load_checkpoint(out / CHECKPOINT, map_location=device)
        model.load_state_dict(state["model_state"])
        optim.set_state(state["optim_state"])
        sampler.load_state_dict(state["sampler_state"])
        pyro.util.set_rng_state(state["rng_state"])
        history, start_epoch = state["history"], state["epoch"]
    else:
        pyro.set_rng_seed(seed)
        if out is not None:
            cfg = {"model": model.name, "model_config": model.config, "seed": seed, "lr": lr, "epochs": epochs,
                   "elbo": type(elbo).__name__, "device": str(device), **(config or {})}
            (out / CONFIG).write_text(json.dumps(cfg, indent=2, default=str))
    svi = SVI(model.model, model.guide, optim, loss=elbo)
    model.check_dataset(data)
    if val_data is not None:
        model.check_dataset(val_data)
    model.train()
    with contextlib.ExitStack() as stack:
        if not validate_each_step:
            stack.enter_context(model.trusted_inputs())
            stack.enter_context(pyro.validation_enabled(False))
        _train_epochs(model, data, sampler, svi, elbo, optim, epochs, start_epoch, history, out, device,
                      val_data, val_sampler, progress)
    return history


def _train_epochs(model, data, sampler, svi, elbo, optim, epochs, start_epoch, history, out, device, val_data,
                  val_sampler, progress):
    bar = tqdm(range(start_epoch, epochs), disable=not progress, desc=f"train {model.name}", unit="epoch")
    for epoch in bar:
        t0 = time.perf_counter()
        total, count = 0.0, 0
        for batch in sampler:
            kw = model.batch_inputs(data, batch, device)
            loss = svi.step(**kw)
            if not math.isfinite(loss):
                raise FloatingPointError(f"non-finite loss {loss} at epoch {epoch + 1}: lower the learning rate "
                                         "or check the data")
            total += loss
            count += len(batch.indices)
        row = {"epoch": epoch + 1, "train_elbo": -total / max(count, 1), "val_elbo": float("nan"),
               "seconds": time.perf_counter() - t0}
        if val_data is not None and val_sampler is not None:
            rng = pyro.util.get_rng_state()  # validation must not shift the training random stream
            row["val_elbo"] = evaluate_elbo(model, val_data, val_sampler, elbo, device)
            pyro.util.set_rng_state(rng)
        history.append(row)
        bar.set_postfix(elbo=f"{row['train_elbo']:.1f}", val=f"{row['val_elbo']:.1f}")
        if out is not None:
            save_checkpoint(out / CHECKPOINT, model_state=model.state_dict(), optim_state=optim.get_state(),
                            sampler_state=sampler.state_dict(), rng_state=pyro.util.get_rng_state(),
                            epoch=epoch + 1, history=history, model_name=model.name, model_config=model.config)
            _write_history(out / HISTORY, history)
