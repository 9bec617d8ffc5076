"""Training on PyTorch Lightning: a training plan for any registered model and Pyro ELBO, group-batch data
loaders, run-folder checkpoints, and the data-parallel plate scaling.

The plan follows Pyro's ``examples/svi_lightning.py`` and scvi-tools' ``PyroTrainingPlan``: a Pyro ELBO called
on ``(model, guide)`` is an ``nn.Module`` (:class:`pyro.infer.elbo.ELBOModule`) whose forward is the
differentiable loss, so Lightning's loop, a torch optimiser, DDP, precision plugins, loggers and callbacks all
apply unchanged. Hand the plan to your own ``Trainer``::

    plan = PyroTrainingPlan(model, data, sampler, val_data=val, val_sampler=val_sampler, lr=1e-3)
    pl.Trainer(max_epochs=20, accelerator="gpu", devices=4, strategy="ddp",
               use_distributed_sampler=False, num_sanity_val_steps=0).fit(plan)

(``use_distributed_sampler=False``: the group samplers shard themselves; see
:class:`~pyro_groupvae.data.samplers.GroupBatchSampler`.)

Data parallel. DDP averages the ranks' gradients. Our models' batch losses are *sums* over the batch's groups and
observations (plates of the batch's own size), so with ``W`` ranks each holding ``B/W`` of the ``B`` groups of a
global batch, the average is ``1/W`` of the one-process gradient. :class:`DataParallelScale` multiplies by ``W``
every sample site that lies in a plate and in no *subsampled* plate; sites in a subsampled plate (e.g.
``plate("observations", N, subsample=rows)``, already scaled to the whole data set by Pyro) and global sites
outside any plate are averaged correctly as they are. So ``W`` ranks x ``B/W`` groups give the same gradient as
1 rank x ``B`` groups (tests/test_ddp.py checks a deterministic step to float tolerance).
"""
from __future__ import annotations

import contextlib
import math
import sys
import time

import pyro
import pytorch_lightning as pl
import torch
from pyro.poutine.messenger import Messenger
from pyro.poutine.subsample_messenger import _Subsample

from ..errors import ConfigError
from .optim import adam
from ..validation import check_finite_loss

__all__ = ["PyroTrainingPlan", "DataParallelScale", "group_loader", "RunFolderCheckpoint", "ElboProgressBar"]


class DataParallelScale(Messenger):
    """Multiply by ``world_size`` the log-density of every sample site that lies in a plate and in no
    subsampled plate (see the module docstring)."""

    def __init__(self, world_size):
        super().__init__()
        self.world_size = world_size

    def _process_message(self, msg):
        if msg["type"] == "sample" and msg["cond_indep_stack"] and not isinstance(msg["fn"], _Subsample) and not any(
                f.full_size is not None and f.full_size != f.size for f in msg["cond_indep_stack"]):
            msg["scale"] = self.world_size * msg["scale"]


class _CPUBatches(torch.utils.data.Dataset):
    """Map-style view of a dataset whose ``__getitems__`` turns one :class:`GroupBatch` into the model's keyword
    arguments (on CPU; Lightning moves them to the device)."""

    def __init__(self, data, batch_inputs):
        self.data, self.batch_inputs = data, batch_inputs

    def __len__(self):
        return len(self.data)

    def __getitems__(self, batch):
        kw = self.batch_inputs(self.data, batch, torch.device("cpu"))
        kw["_n"] = len(batch.indices)
        return kw

    def __getitem__(self, i):  # pragma: no cover - DataLoader always calls __getitems__ with a batch sampler
        raise TypeError("index this dataset with a GroupBatch")


def _first(b):
    return b


class _LoaderBatchSampler:
    """Adapter handing a group sampler to ``DataLoader(batch_sampler=...)``. Each ``iter`` first sets the group
    sampler's epoch to ``epoch_fn()`` (the plan's number of finished epochs), so every epoch's batches depend only
    on ``(seed, epoch)`` -- also after a resume, where Lightning's own ``set_epoch`` calls (ignored here) do not
    follow the restored epoch."""

    def __init__(self, sampler, epoch_fn=None):
        self.group_sampler = sampler
        self.epoch_fn = epoch_fn

    @property
    def sampler(self):
        return self

    def set_epoch(self, epoch):
        pass

    def __iter__(self):
        epoch = self.epoch_fn() if self.epoch_fn is not None else None
        if epoch is not None and hasattr(self.group_sampler, "set_epoch"):
            self.group_sampler.set_epoch(epoch)
        return iter(self.group_sampler)

    def __len__(self):
        return len(self.group_sampler)


def group_loader(data, sampler, batch_inputs, num_workers=0, pin_memory=False, seed=0, epoch_fn=None):
    """A ``torch.utils.data.DataLoader`` whose batches are the model's keyword arguments for the batches of a
    group sampler (its ``batch_sampler``). Workers (``num_workers > 0``) are persistent; the loader has its own
    generator so that it never draws from the global random stream; ``epoch_fn()`` (if given) sets the sampler's
    epoch at the start of every pass."""
    return torch.utils.data.DataLoader(
        _CPUBatches(data, batch_inputs), batch_sampler=_LoaderBatchSampler(sampler, epoch_fn), collate_fn=_first,
        num_workers=num_workers, pin_memory=pin_memory, persistent_workers=num_workers > 0,
        generator=torch.Generator().manual_seed(int(seed)))


class PyroTrainingPlan(pl.LightningModule):
    """Lightning training plan for a :class:`~pyro_groupvae.models.base.GroupModel` and any Pyro ELBO.

    :param model: the model (its ``model``/``guide`` take the keyword arguments of ``model.batch_inputs``).
    :param data: training data (:class:`~pyro_groupvae.data.ImageDataset` or
        :func:`~pyro_groupvae.data.base.as_dataset`-like).
    :param sampler: group batch sampler over ``data`` (yields ``GroupBatch``).
    :param elbo: a Pyro ELBO; default ``model.default_elbo()``.
    :param float lr: Adam learning rate; betas (0.9, 0.999), eps 1e-8, one Adam over all parameters
        (:func:`~pyro_groupvae.infer.optim.adam`: PyTorch's fused kernel where it has one).
    :param val_data: validation data, with ``val_sampler``.
    :param lr_scheduler: optional ``f(optimizer) -> scheduler`` (stepped per epoch; ``ReduceLROnPlateau`` is given
        ``-val_elbo``, or ``-train_elbo`` without validation).
    :param float clip_norm: optional gradient-norm clipping over all parameters.
    :param bool trusted: skip per-step input checks and Pyro's validation (data validated once up front).
    :param int num_workers: DataLoader workers (persistent); ``pin_memory`` is on for CUDA.
    :param bool jit: train with the JIT version of ``elbo`` (:class:`~pyro_groupvae.infer.jit.JitLoss`: batch
        tensors passed by position, one compiled trace per batch shape); validation uses the plain ``elbo``.
    :param bool retain_cpu_memory: on the CPU, keep freed step buffers in the process instead of returning them to
        the kernel (:func:`~pyro_groupvae.infer.memory.retain_freed_memory`; glibc only, process-wide).

    Logged per epoch: ``train_elbo`` and ``val_elbo`` (per observation, summed over ranks), ``lr``. The
    progress bar shows the running ELBO of the epoch. :attr:`history` holds one row per epoch.
    """

    def __init__(self, model, data, sampler, elbo=None, lr=1e-3, val_data=None, val_sampler=None,
                 lr_scheduler=None, trusted=True, num_workers=0, seed=0, clip_norm=None, jit=False,
                 retain_cpu_memory=True):
        super().__init__()
        self.retain_cpu_memory = bool(retain_cpu_memory)
        self.model = model
        self.elbo = elbo or model.default_elbo()
        self.loss_module = self.elbo(model.model, model.guide)  # pyro.infer.elbo.ELBOModule
        self.jit = bool(jit)
        if self.jit:
            from .jit import JitLoss

            self.jit_loss = JitLoss(self.elbo, model.model, model.guide)
        self.lr = float(lr)
        self.data, self.sampler = data, sampler
        self.val_data, self.val_sampler = val_data, val_sampler
        self.lr_scheduler_fn = lr_scheduler
        self.clip_norm = clip_norm
        # one step = zero_grad, ELBO, backward, (clip), Adam: written out (Lightning's manual optimisation), which
        # skips the closure machinery of automatic optimisation (~1/3 of Lightning's per-step cost here)
        self.automatic_optimization = False
        self.trusted = trusted
        self.num_workers = int(num_workers)
        self.seed = int(seed)
        self.history = []
        self.world_size = 1
        self._stack = None
        self._sum = self._count = None
        self._epoch_t0 = None
        self._val_rng = None

    # ------------------------------------------------------------------ data
    def setup(self, stage=None):
        rank = self.trainer.global_rank if self._trainer is not None else 0
        self.world_size = self.trainer.world_size if self._trainer is not None else 1
        for s, even in ((self.sampler, True), (self.val_sampler, False)):
            if s is not None and hasattr(s, "set_distributed"):
                s.set_distributed(rank, self.world_size, drop_uneven=even)
        if self.world_size > 1:
            if self._trainer is not None and self.trainer._accelerator_connector.use_distributed_sampler:
                raise ConfigError("the group samplers shard the data themselves: build the Trainer with "
                                 "use_distributed_sampler=False")
            if len(self.sampler) == 0:
                raise ConfigError(f"with {self.world_size} processes an epoch has no step for every rank: use "
                                  "more data or smaller batches")
        if getattr(self, "fresh_seed", None) is not None:
            pyro.set_rng_seed(self.fresh_seed + rank)  # each rank its own noise; resumed runs restore theirs

    def _loader(self, data, sampler):
        pin = self._trainer is not None and self.trainer.strategy.root_device.type == "cuda"
        return group_loader(data, sampler, self.model.batch_inputs, self.num_workers, pin, self.seed,
                            self._epoch_now)

    def _epoch_now(self):
        # the epoch about to run (or being validated) = epochs finished so far; restored with the history on resume,
        # unlike Lightning's loop counters while it restarts
        return len(self.history)

    def train_dataloader(self):
        return self._loader(self.data, self.sampler)

    def val_dataloader(self):
        if self.val_data is None or self.val_sampler is None:
            return []
        return self._loader(self.val_data, self.val_sampler)

    # ------------------------------------------------------------------ optimiser
    def configure_optimizers(self):
        opt = adam(self.model.parameters(), lr=self.lr, betas=(0.9, 0.999), eps=1e-8)
        if self.lr_scheduler_fn is None:
            return opt
        return {"optimizer": opt, "lr_scheduler": {"scheduler": self.lr_scheduler_fn(opt), "interval": "epoch"}}

    # ------------------------------------------------------------------ steps
    def _loss(self, batch, differentiable=True):
        n = batch.pop("_n", None)
        if n is None:  # a batch from a user's own DataLoader: the model's keyword arguments only
            n = batch["x"].shape[0]
        # validation runs without gradients: ELBO.loss (TraceEnum_ELBO's differentiable loss refuses to run there)
        train_fn = self.jit_loss if self.jit else self.loss_module
        if self.jit and not self.trusted and torch.is_tensor(batch.get("x")):
            # the model's own per-call checks run only while tracing: check the images of every batch here
            from ..validation import check_model_images

            check_model_images(self.model, batch["x"], name="batch x")
        fn = train_fn if differentiable else (
            lambda **kw: torch.as_tensor(self.elbo.loss(self.model.model, self.model.guide, **kw)))
        if self.world_size > 1:
            with DataParallelScale(self.world_size):
                loss = fn(**batch)
            return loss, loss / self.world_size, n
        loss = fn(**batch)
        return loss, loss, n

    def on_fit_start(self):
        if self.retain_cpu_memory and self.device.type == "cpu":
            from .memory import retain_freed_memory

            retain_freed_memory()
        self._stack = contextlib.ExitStack()
        once = getattr(self.model, "registered_once", None)  # GroupModel.registered_once
        if once is not None and not self.jit:  # a JIT trace finds the parameters through the model's pyro.module
            self._stack.enter_context(once())
        if self.trusted:
            self._stack.enter_context(self.model.trusted_inputs())
            self._stack.enter_context(pyro.validation_enabled(False))

    def on_train_start(self):
        # a learning rate changed on resume replaces the restored optimiser's (fit sets lr_override)
        if getattr(self, "lr_override", None) is not None:
            for opt in self.trainer.optimizers:
                for group in opt.param_groups:
                    group["lr"] = self.lr_override

    def on_fit_end(self):
        if self._stack is not None:
            self._stack.close()
            self._stack = None

    def on_train_epoch_start(self):
        self._sum = torch.zeros((), dtype=torch.float64, device=self.device)
        self._count = 0
        self._epoch_t0 = time.perf_counter()

    def training_step(self, batch, batch_idx):
        opt = self.optimizers()
        opt.zero_grad()
        loss, own, n = self._loss(batch)
        if loss.device.type == "cpu":  # on GPU: checked per epoch (no host sync)
            check_finite_loss(float(loss.detach()), epoch=self.current_epoch + 1)
        self.manual_backward(loss)
        if self.clip_norm:
            self.clip_gradients(opt, gradient_clip_val=self.clip_norm, gradient_clip_algorithm="norm")
        opt.step()
        self._sum += own.detach()
        self._count += n
        return loss

    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        if device.type == "cpu":
            return batch  # the loader's tensors are already on the CPU: skip the generic collection walk
        return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}

    def running_elbo(self):
        """Training ELBO per observation of the epoch so far on this rank (a host sync)."""
        return -float(self._sum) / self._count if self._count else float("nan")

    def _reduce(self, total, count):
        total = torch.stack([total.double(), torch.tensor(float(count), dtype=torch.float64, device=total.device)])
        if self.world_size > 1:
            total = self.trainer.strategy.reduce(total, reduce_op="sum")
        return -float(total[0]) / max(float(total[1]), 1.0)

    def on_validation_epoch_start(self):
        self._val_rng = pyro.util.get_rng_state()  # validation must not shift the training random stream
        self._val_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        self._val_count = 0

    def validation_step(self, batch, batch_idx):
        loss, own, n = self._loss(batch, differentiable=False)
        self._val_sum += own.detach()
        self._val_count += n

    def on_validation_epoch_end(self):
        if self.trainer.sanity_checking:
            pyro.util.set_rng_state(self._val_rng)
            return
        self._val_elbo = self._reduce(self._val_sum, self._val_count)
        self.log("val_elbo", self._val_elbo, sync_dist=False)
        pyro.util.set_rng_state(self._val_rng)

    def on_train_epoch_end(self):
        train_elbo = self._reduce(self._sum, self._count)
        check_finite_loss(train_elbo, epoch=self.current_epoch + 1)
        val = getattr(self, "_val_elbo", float("nan")) if self.val_sampler is not None else float("nan")
        row = {"epoch": self.current_epoch + 1, "train_elbo": train_elbo, "val_elbo": val,
               "seconds": time.perf_counter() - self._epoch_t0}
        self.history.append(row)
        self._val_elbo = float("nan")
        sched = self.lr_schedulers()
        if sched is not None:
            if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
                sched.step(-(val if math.isfinite(val) else train_elbo))
            else:
                sched.step()
        self.log("train_elbo", train_elbo)
        self.log("lr", self.trainer.optimizers[0].param_groups[0]["lr"])

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint):
        from .train import plain_json, plain_rng_state

        checkpoint["model_name"] = self.model.name
        checkpoint["model_config"] = plain_json(self.model.config)
        checkpoint["history"] = [dict(r) for r in self.history]
        checkpoint["epoch_done"] = len(self.history)
        checkpoint["sampler_state"] = self.sampler.state_dict() if hasattr(self.sampler, "state_dict") else {}
        checkpoint["val_sampler_state"] = (self.val_sampler.state_dict() if hasattr(self.val_sampler, "state_dict")
                                           else {})
        state = plain_rng_state()
        if self.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            states = [None] * self.world_size
            torch.distributed.all_gather_object(states, state)
            checkpoint["rng_states"] = states
        checkpoint["rng_state"] = state
        checkpoint["lr"] = self.lr

    def on_load_checkpoint(self, checkpoint):
        from .train import set_plain_rng_state

        self.history = [dict(r) for r in checkpoint.get("history", [])]
        if checkpoint.get("sampler_state") and hasattr(self.sampler, "load_state_dict"):
            self.sampler.load_state_dict(checkpoint["sampler_state"])
        if checkpoint.get("val_sampler_state") and hasattr(self.val_sampler, "load_state_dict"):
            self.val_sampler.load_state_dict(checkpoint["val_sampler_state"])
        rank = self.trainer.global_rank if self._trainer is not None else 0
        states = checkpoint.get("rng_states")
        if states is not None and len(states) == self.world_size:
            set_plain_rng_state(states[rank])
        else:
            set_plain_rng_state(checkpoint["rng_state"])


class RunFolderCheckpoint(pl.callbacks.Checkpoint):
    """Writes the run folder at the end of every epoch (rank 0 only): ``checkpoint.pt`` (last), ``best.pt``
    (best validation ELBO, else training ELBO), ``history.csv``, and on the first save ``config.json`` (so a
    run killed before its first checkpoint leaves an existing folder as it was)."""

    def __init__(self, out_dir, config, on_first_save=None):
        self.out = out_dir
        self.config = config
        self.on_first_save = on_first_save
        self.best = -math.inf
        self._saved = False

    def state_dict(self):
        return {"best": self.best}

    def load_state_dict(self, state):
        self.best = float(state.get("best", -math.inf))
        self._saved = True  # resuming: config.json is already there

    def on_train_epoch_end(self, trainer, plan):
        from .train import BEST, CHECKPOINT, CONFIG, HISTORY, write_history, write_json

        row = plan.history[-1]
        score = row["val_elbo"] if math.isfinite(row["val_elbo"]) else row["train_elbo"]
        improved = score > self.best
        if improved:
            self.best = score
        trainer.save_checkpoint(self.out / CHECKPOINT)  # every rank calls it; the strategy writes on rank 0
        if improved:
            trainer.save_checkpoint(self.out / BEST)
        if trainer.is_global_zero:
            if not self._saved:
                write_json(self.out / CONFIG, self.config)
                if self.on_first_save is not None:
                    self.on_first_save()
            write_history(self.out / HISTORY, plan.history)
        self._saved = True


class ElboProgressBar(pl.callbacks.TQDMProgressBar):
    """Lightning's progress bar with the running training ELBO per observation of the epoch.

    :param int steps_per_epoch: when the output is not a terminal (a log file, a notebook's captured stream), the
        bar is redrawn about ten times per epoch instead of at every step, so a log holds a few updates per epoch.
    """

    def __init__(self, steps_per_epoch=None, refresh_rate=None):
        if refresh_rate is None:
            tty = getattr(sys.stdout, "isatty", lambda: False)()  # where Lightning's bar writes
            refresh_rate = 1 if tty or not steps_per_epoch else max(1, int(steps_per_epoch) // 10)
        super().__init__(refresh_rate=refresh_rate)

    def get_metrics(self, trainer, plan):
        items = super().get_metrics(trainer, plan)
        items.pop("v_num", None)
        if isinstance(plan, PyroTrainingPlan) and plan._count:
            items["elbo"] = f"{plan.running_elbo():.1f}"
        return items
