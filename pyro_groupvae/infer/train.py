"""``fit``: the one-call facade that trains any model on PyTorch Lightning (:mod:`.lightning`), and the run folder
it writes (``config.json``, ``history.csv``, ``checkpoint.pt`` every epoch, ``best.pt``), with an exact
``resume``.

Run-folder rules: a folder that already holds a run is never trained into unless ``resume`` (continue it) or
``overwrite`` (replace it) is given; ``config.json`` is written with the first checkpoint, so a fresh run killed
before it leaves the folder as it was; ``history.csv`` and checkpoints are written atomically (temporary file, then
rename) and ``history.csv`` is rebuilt from the checkpoint on resume. Checkpoints are plain tensors and primitive
types (``torch.load(..., weights_only=True)``) and carry the model's name and config, checked on resume.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import os
import random
import signal
import warnings
from pathlib import Path

import numpy as np
import pyro
import torch

from ..errors import CheckpointError, ConfigError, InputError, RunFolderError, TrainingError
from ..validation import check_run_dir, read_json_config, resolve_device, validate_options

CHECKPOINT = "checkpoint.pt"
BEST = "best.pt"
HISTORY = "history.csv"
CONFIG = "config.json"
#: files of a run folder that make it "hold a run"
RUN_FILES = (CHECKPOINT, CONFIG, HISTORY, BEST)
#: files a fresh ``overwrite`` run removes when it writes its first checkpoint (stale results of the old run)
STALE_FILES = ("metrics.json", "report.md")


# ---------------------------------------------------------------------------------------------------- files
def _atomic_write_bytes(path, data: bytes):
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_checkpoint(path, **state):
    """Write atomically (temporary file, then rename), so an interrupted save never leaves a corrupt file."""
    buf = io.BytesIO()
    torch.save(state, buf)
    _atomic_write_bytes(path, buf.getvalue())


def write_json(path, obj):
    _atomic_write_bytes(path, json.dumps(obj, indent=2, default=str).encode())


def write_history(path, history):
    """``history.csv``, atomically."""
    if not history:
        return
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(history[0].keys()))
    w.writeheader()
    w.writerows(history)
    _atomic_write_bytes(path, buf.getvalue().encode())


_write_history = write_history


def load_checkpoint(path, map_location="cpu"):
    """Load a checkpoint written by :func:`fit` (``weights_only=True``), with a clear error if it is missing,
    corrupt or not ours. ``state["model_state"]`` is the model's ``state_dict``."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises many kinds for truncated/garbage files
        if "Unsupported global" in str(e):  # a pickled object; garbage bytes also mention weights_only
            raise CheckpointError(
                f"checkpoint {path} holds Python objects besides tensors (written by pyro_groupvae 0.1 before the "
                "Lightning engine, or not by this library), so it is not loaded (weights_only=True): retrain, or, "
                "if you trust the file, read state['model_state'] from torch.load(path, weights_only=False) and "
                "pass it to model.load_state_dict") from None
        raise CheckpointError(f"checkpoint {path} is corrupt or unreadable ({type(e).__name__}: {e})") from None
    if isinstance(state, dict) and "model_state" not in state and isinstance(state.get("state_dict"), dict):
        state["model_state"] = {k[len("model."):]: v for k, v in state["state_dict"].items()
                                if k.startswith("model.")}
    if not isinstance(state, dict) or "model_state" not in state:
        raise CheckpointError(f"{path} is not a pyro_groupvae checkpoint (no model state)")
    return state


def plain_json(obj):
    """JSON-like copy (tuples -> lists, numpy/torch scalars -> Python) so that checkpoints load with
    ``weights_only=True`` and compare with ``config.json``."""
    return json.loads(json.dumps(obj, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


def check_checkpoint(state, model, path):
    """Raise :class:`CheckpointError` unless checkpoint ``state`` is of ``model``'s name and config."""
    name = state.get("model_name")
    if name is not None and name != model.name:
        raise CheckpointError(f"checkpoint {path} holds a {name!r} model, not {model.name!r}: resume it with the "
                              f"same model, or train a new run elsewhere")
    saved, now = state.get("model_config"), plain_json(model.config)
    if saved is not None and plain_json(saved) != now:
        saved = plain_json(saved)
        diff = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
        detail = ", ".join(f"{k}: checkpoint {saved.get(k)!r} vs model {now.get(k)!r}" for k in diff[:5])
        raise CheckpointError(f"checkpoint {path} is of another {model.name} config ({detail}): build the model "
                              "with the checkpoint's config, or train a new run elsewhere")


def plain_rng_state():
    """Pyro's RNG state (torch, python ``random``, numpy; CUDA when present) as tensors and primitive types."""
    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "random": list(random.getstate()[1]),
             "random_gauss": random.getstate()[2],
             "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                       int(np_state[3]), float(np_state[4])]}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_plain_rng_state(state):
    """Inverse of :func:`plain_rng_state` (also accepts ``pyro.util.get_rng_state()``)."""
    if isinstance(state.get("random"), tuple):
        pyro.util.set_rng_state(state)
        return
    torch.set_rng_state(state["torch"].cpu())
    random.setstate((3, tuple(int(v) for v in state["random"]), state.get("random_gauss")))
    n = state["numpy"]
    np.random.set_state((n[0], n[1].cpu().numpy().astype(np.uint32), n[2], n[3], n[4]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def _atomic_checkpoint_io():
    from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

    class AtomicCheckpointIO(TorchCheckpointIO):
        """Lightning checkpoint IO writing atomically and loading with ``weights_only=True``."""

        def save_checkpoint(self, checkpoint, path, storage_options=None):
            save_checkpoint(path, **checkpoint)

        def load_checkpoint(self, path, map_location=None, weights_only=None):
            return load_checkpoint(path, map_location=map_location or "cpu")

    return AtomicCheckpointIO()


@torch.no_grad()
def evaluate_elbo(model, data, sampler, elbo=None, device=None):
    """Average ELBO per observation of ``data`` over the batches of ``sampler`` (a Monte Carlo estimate)."""
    elbo = elbo or model.default_elbo()
    total, count = 0.0, 0
    with model.eval_mode():
        for batch in sampler:
            kw = model.batch_inputs(data, batch, device)
            total += elbo.loss(model.model, model.guide, **kw)
            count += len(batch.indices)
    return -total / max(count, 1)


# ---------------------------------------------------------------------------------------------------- fit
_PRECISIONS = {None: "32-true", 32: "32-true", "32": "32-true", "32-true": "32-true", "bf16-mixed": "bf16-mixed",
               "bf16": "bf16-mixed"}


def _check_sampler(sampler, data, what):
    n = getattr(sampler, "num_rows", None)
    if n is not None and n != len(data):
        raise InputError(f"the {what} sampler indexes {n} rows but the {what} data has {len(data)}: build the "
                         f"sampler from this data's labels (e.g. GroupBatchSampler(data.y, ...))")


def _len_or_none(obj):
    try:
        return len(obj)
    except TypeError:
        return None


def _is_lazy(data):
    """Data whose images are read per batch (checked per batch, not once up front)."""
    return not torch.is_tensor(getattr(data, "x", None))


def process_rank():
    """Global rank of this process (0 when not distributed)."""
    from lightning_fabric.utilities.rank_zero import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) or 0


def _lightning_device(device, accelerator, devices):
    if accelerator is not None:
        return accelerator, (devices if devices is not None else "auto")
    d = resolve_device(device)
    if d.type == "cuda":
        return "gpu", devices if devices is not None else ([d.index] if d.index is not None else 1)
    if d.type == "cpu":
        return "cpu", devices if devices is not None else 1
    return d.type, devices if devices is not None else 1


def _logger(logger, out):
    if logger is None or logger == "csv":
        if out is None:
            return False
        from pytorch_lightning.loggers import CSVLogger

        return CSVLogger(str(out), name="logs")  # logs/version_N: a resumed run adds a version
    if logger == "tensorboard":
        from pytorch_lightning.loggers import TensorBoardLogger

        if out is None:
            raise ConfigError("logger='tensorboard' needs out_dir")
        return TensorBoardLogger(str(out), name="tensorboard")
    if logger in ("none", False):
        return False
    return logger


def fit(model, data, sampler, epochs=None, elbo=None, lr=None, device=None, seed=0, out_dir=None, val_data=None,
        val_sampler=None, resume=False, progress=True, config=None, clip_norm=None, validate_each_step=False,
        overwrite=False, accelerator=None, devices=None, strategy="auto", num_nodes=1, precision=None,
        logger=None, callbacks=None, max_epochs=None, num_workers=0, early_stopping=None, lr_scheduler=None,
        jit=False, run_config=None, retain_cpu_memory=True, **trainer_kwargs):
    """Train ``model`` (a :class:`~pyro_groupvae.models.base.GroupModel`) on PyTorch Lightning with
    :class:`~pyro_groupvae.infer.lightning.PyroTrainingPlan`.

    :param model: the model; its ``model``/``guide`` take the keyword arguments of ``model.batch_inputs``.
    :param data: training data: an :class:`~pyro_groupvae.data.ImageDataset`, a ``torch.utils.data.Dataset``
        of ``(x, y)`` items (read lazily, per batch), a ``TensorDataset`` or a tuple ``(x, y)`` of arrays
        (:func:`pyro_groupvae.data.base.as_dataset`).
    :param sampler: a group batch sampler over ``data`` (``GroupBatchSampler``, ``RandomBatchSampler``, ...); it
        must index exactly ``len(data)`` rows. Under DDP it shards itself (see its docs).
    :param int epochs: total number of epochs (with ``resume``, training continues up to this number);
        ``max_epochs`` is a synonym.
    :param elbo: a Pyro ELBO instance; default ``model.default_elbo()``.
    :param float lr: Adam learning rate (default 1e-3, betas (0.9, 0.999), eps 1e-8). On ``resume``, ``None``
        keeps the run's rate and a new value is applied (with a warning).
    :param device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"auto"`` (ignored when ``accelerator`` is given).
    :param int seed: seeds Pyro, torch and numpy (rank ``r`` of a DDP run uses ``seed + r`` for its noise).
    :param out_dir: run folder: ``config.json``, ``history.csv``, ``checkpoint.pt`` (every epoch), ``best.pt``
        and the logger's files go there.
    :param val_data: validation data, with ``val_sampler``; its ELBO per observation is logged per epoch.
    :param bool resume: continue from ``out_dir/checkpoint.pt`` exactly where it stopped (parameters, optimiser
        moments, sampler epochs, random streams, history); bit for bit at epoch boundaries in one process.
    :param bool overwrite: train into an ``out_dir`` that already holds a run, replacing it (without it, that is
        an error); the old files are replaced when the first checkpoint is written.
    :param dict config: extra information written to ``config.json`` (e.g. dataset name).
    :param dict run_config: with ``resume``, the run's ``config.json`` when the caller has read it already
        (:func:`~pyro_groupvae.runs.train_run` does); default: read from ``out_dir``. It is kept, with the new
        ``epochs`` and ``lr``.
    :param float clip_norm: optional gradient-norm clipping over all parameters.
    :param bool validate_each_step: keep the per-step input checks and Pyro's distribution validation. By
        default in-memory datasets are validated once before training and the steps run without checks (they
        cost ~10% of a step of the MNIST networks); lazy datasets are always checked per batch.
    :param accelerator: Lightning accelerator (``"cpu"``, ``"gpu"``, ``"auto"``); default from ``device``.
    :param devices: number or list of devices; ``strategy``: ``"auto"``, ``"ddp"``, ``"ddp_spawn"``, ...;
        ``num_nodes``: nodes of a multi-node run (launch with torchrun or SLURM, see the README).
    :param precision: ``None``/``"32-true"`` or ``"bf16-mixed"`` (others are refused).
    :param logger: ``"csv"`` (default with ``out_dir``), ``"tensorboard"``, ``"none"`` or a Lightning logger.
    :param callbacks: extra Lightning callbacks.
    :param int num_workers: DataLoader worker processes (persistent; pinned memory on CUDA).
    :param int early_stopping: stop after this many epochs without improvement of the validation ELBO (training
        ELBO without validation data).
    :param lr_scheduler: ``f(optimizer) -> torch scheduler``, stepped every epoch.
    :param bool jit: train with the JIT version of ``elbo`` (``Trace_ELBO`` -> ``JitTrace_ELBO``,
        ``TraceMeanField_ELBO`` -> :class:`~pyro_groupvae.infer.jit.JitTraceMeanField_ELBO`, ``TraceEnum_ELBO`` ->
        ``JitTraceEnum_ELBO``), compiled once per batch shape (a last smaller batch compiles a second trace);
        same loss, same random draws (docs/benchmarks.md has the speed). Validation uses the plain ``elbo``.
    :param bool retain_cpu_memory: on the CPU, raise glibc's ``malloc`` thresholds so that a step's freed buffers
        are reused by the next step instead of being returned to the kernel and faulted in again
        (:func:`~pyro_groupvae.infer.memory.retain_freed_memory`; process-wide; no effect elsewhere).
    :param trainer_kwargs: any other ``pytorch_lightning.Trainer`` argument.
    :returns: the history, a list of dicts (epoch, train_elbo, val_elbo, seconds).
    :raises KeyboardInterrupt: on Ctrl-C (Lightning's ``sys.exit(1)`` turned back into it, with a message saying
        where the last checkpoint is; Python's SIGINT handler is restored).
    """
    import pytorch_lightning as pl

    from ..data.base import as_dataset
    from .lightning import ElboProgressBar, PyroTrainingPlan, RunFolderCheckpoint

    if epochs is None:
        epochs = max_epochs
    elif max_epochs is not None and max_epochs != epochs:
        raise ConfigError(f"epochs={epochs} and max_epochs={max_epochs} disagree: give one")
    # epochs >= 1, num_workers >= 0, num_nodes >= 1 (integers), devices >= 1: the command line's checks
    validate_options(dict(epochs=epochs, num_workers=num_workers, num_nodes=num_nodes, devices=devices),
                     required=("epochs", "num_workers", "num_nodes"))
    epochs, num_workers, num_nodes = int(epochs), int(num_workers), int(num_nodes)
    if precision not in _PRECISIONS:
        raise ConfigError(f"precision={precision!r} is not supported: use '32-true' or 'bf16-mixed' (float16 "
                         "under- and overflows in the likelihoods' log-densities; 64-bit is not tested)")
    precision = _PRECISIONS[precision]
    data = as_dataset(data)
    _check_sampler(sampler, data, "training")
    if val_data is not None and val_sampler is None:
        raise ConfigError("val_data needs a val_sampler (e.g. GroupBatchSampler(val_data.y, ...))")
    if val_data is None:
        val_sampler = None
    if val_data is not None:
        val_data = as_dataset(val_data)
        _check_sampler(val_sampler, val_data, "validation")
    lazy = _is_lazy(data) or (val_data is not None and _is_lazy(val_data))
    accelerator, devices = _lightning_device(device, accelerator, devices)

    out = Path(out_dir) if out_dir is not None else None
    state, start_epoch = None, 0
    if out is not None:
        check_run_dir(out)
    if resume:
        if out is None:
            raise ConfigError("resume=True needs out_dir")
        state = load_checkpoint(out / CHECKPOINT)
        check_checkpoint(state, model, out / CHECKPOINT)
        start_epoch = int(state.get("epoch_done", len(state.get("history", []))))
        if epochs <= start_epoch:
            raise ConfigError(f"the run in {out} has already trained {start_epoch} epochs and epochs={epochs} is the "
                             f"total: give more than {start_epoch} to continue it")
        saved_lr = float(state.get("lr", 1e-3))
        if lr is not None and float(lr) != saved_lr:
            warnings.warn(f"resume: learning rate changed from {saved_lr:g} (the run's) to {float(lr):g}")
        lr = saved_lr if lr is None else float(lr)
        if process_rank() == 0:
            write_history(out / HISTORY, state.get("history", []))  # rebuilt from the checkpoint
    else:
        lr = 1e-3 if lr is None else float(lr)
        if out is not None and process_rank() == 0 and not overwrite and out.is_dir() and any(
                (out / f).exists() for f in RUN_FILES):
            raise RunFolderError(f"{out} already holds a run: resume it (resume=True / --resume) or replace it "
                             "(overwrite=True / --overwrite), or choose another folder")
    validate_options({"lr": lr})

    if not _is_lazy(data):
        model.check_dataset(data)
    if val_data is not None and not _is_lazy(val_data):
        model.check_dataset(val_data)
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    elbo = elbo or model.default_elbo()
    plan = PyroTrainingPlan(model, data, sampler, elbo=elbo, lr=lr, val_data=val_data, val_sampler=val_sampler,
                            lr_scheduler=lr_scheduler, trusted=not (validate_each_step or lazy),
                            num_workers=num_workers, seed=seed, clip_norm=clip_norm, jit=jit,
                            retain_cpu_memory=retain_cpu_memory)
    plan.fresh_seed = None if resume else seed
    if resume and lr != float(state.get("lr", 1e-3)):
        plan.lr_override = lr

    cbs = list(callbacks or [])
    if progress:
        cbs.append(ElboProgressBar(steps_per_epoch=_len_or_none(sampler)))
    if early_stopping:
        monitor = "val_elbo" if val_sampler is not None else "train_elbo"
        cbs.append(pl.callbacks.EarlyStopping(monitor=monitor, mode="max", patience=int(early_stopping),
                                              check_on_train_epoch_end=True))
    if out is not None:
        cfg = {"model": model.name, "model_config": plain_json(model.config), "seed": seed, "lr": lr, "epochs": epochs,
               "elbo": type(elbo).__name__, "device": str(device), "accelerator": str(accelerator),
               "devices": devices if isinstance(devices, (int, str, list)) else str(devices),
               "strategy": strategy if isinstance(strategy, str) else type(strategy).__name__,
               "num_nodes": num_nodes, "precision": precision, "jit": bool(jit),
               "dataset": getattr(data, "name", None) or None,  # lets `evaluate` find the test split
               **(config or {})}
        if resume:
            if run_config is None and (out / CONFIG).exists():
                run_config = read_json_config(out / CONFIG)
            cfg = {**(run_config or {}), "epochs": epochs, "lr": lr}

        def remove_stale():
            for f in STALE_FILES:
                if (out / f).exists():
                    (out / f).unlink()

        cbs.append(RunFolderCheckpoint(out, cfg, on_first_save=None if resume else remove_stale))
        if resume and process_rank() == 0:
            write_json(out / CONFIG, cfg)
    kwargs = dict(max_epochs=epochs, accelerator=accelerator, devices=devices, strategy=strategy,
                  num_nodes=num_nodes, precision=precision, logger=_logger(logger, out), callbacks=cbs,
                  enable_checkpointing=out is not None, enable_model_summary=False, num_sanity_val_steps=0,
                  use_distributed_sampler=False, enable_progress_bar=bool(progress),
                  default_root_dir=str(out) if out is not None else None, plugins=[_atomic_checkpoint_io()],
                  log_every_n_steps=50)
    if val_sampler is None:
        kwargs["limit_val_batches"] = 0
    kwargs.update(trainer_kwargs)
    if out is not None and process_rank() == 0:
        out.mkdir(parents=True, exist_ok=True)
    with _quiet_lightning():
        try:
            trainer = pl.Trainer(**kwargs)
        except (ValueError, TypeError, RuntimeError) as e:  # Lightning's MisconfigurationException is a ValueError
            raise ConfigError(f"PyTorch Lightning refused the training options ({e}): check accelerator, devices, "
                              "strategy, num_nodes, precision and the Trainer arguments") from e
        try:
            trainer.fit(plan, ckpt_path=str(out / CHECKPOINT) if resume else None)
        except RuntimeError as e:
            if "find_unused_parameters" in str(e):
                raise ConfigError("a training step left some of the model's parameters unused, which plain DDP "
                                  "cannot handle: use strategy='ddp_find_unused_parameters_true' "
                                  "(--strategy ddp_find_unused_parameters_true)") from e
            raise
        except SystemExit:
            if trainer.interrupted:  # Lightning turns Ctrl-C into sys.exit(1) and ignores SIGINT from then on
                signal.signal(signal.SIGINT, signal.default_int_handler)
                where = f"the last checkpoint is in {out}" if out is not None else "nothing was saved (no out_dir)"
                raise KeyboardInterrupt(f"training interrupted; {where}") from None
            raise
    history = plan.history
    if not history and out is not None and (out / CHECKPOINT).exists():  # ddp_spawn: rank 0 trained elsewhere
        history = load_checkpoint(out / CHECKPOINT).get("history", [])
    return history


class _quiet_lightning:
    """Silence Lightning's info lines ("GPU available: ...") and its advice on DataLoader workers."""

    names = ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "lightning")

    def __enter__(self):
        self.levels = {}
        for n in self.names:
            lg = logging.getLogger(n)
            self.levels[n] = lg.level
            if lg.level in (logging.NOTSET, logging.INFO, logging.DEBUG) and not lg.handlers[1:]:
                lg.setLevel(logging.WARNING)
        self.w = warnings.catch_warnings()
        self.w.__enter__()
        for msg in (".*does not have many workers.*", ".*smaller than the logging interval.*",
                    ".*Checkpoint directory .* exists and is not empty.*", ".*GPU available but not used.*",
                    ".*sync_dist=True.*", ".*LeafSpec.*", ".*across ranks is zero.*"):
            warnings.filterwarnings("ignore", message=msg)
        return self

    def __exit__(self, *exc):
        self.w.__exit__(*exc)
        for n, lvl in self.levels.items():
            logging.getLogger(n).setLevel(lvl)
        return False
