"""The training engine's step: ``pyro_groupvae.infer.fit`` (PyTorch Lightning) vs a hand-written PyTorch loop.

1. Step time, interleaved: ``fit`` trains ML-VAE on MNIST with the benchmark batches (256 images = 16 groups of 16,
   ``GroupBatchSampler``); a Lightning callback runs one step of a hand-written PyTorch loop (same networks on a
   second copy of the model, same loss as ``benchmarks/mlvae_benchmarks.py``, the same Adam as ``fit``
   (``infer.optim.adam``), the same kind of batch gathered from the dataset) after every Lightning step, so
   machine load hits both alike.
   The Lightning step is the wall time from the end of one hand-written step to the end of the next Lightning
   step: everything ``fit`` does per step (data loader, hooks, Pyro ELBO, backward, Adam, logging). Medians; the
   ratio target is <= 1.10. Also interleaved: the plain Pyro step and the plain Pyro JIT step (the same step
   without Lightning). ``--jit`` runs this twice, ``fit(jit=False)`` and ``fit(jit=True)`` (the JIT version of
   the ELBO, ``pyro_groupvae.infer.jit.JitLoss``), each against its own interleaved hand-written steps.
2. Throughput of ``fit`` in one process vs 2 DDP processes (CPU, gloo), images/s over whole epochs
   (``--ddp``; launches ``python -m pyro_groupvae train`` twice).

Usage: OMP_NUM_THREADS=1 python benchmarks/engine_step.py [--steps 300] [--device cpu] [--jit] [--ddp]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyro
import pytorch_lightning as pl
import torch
from pyro.infer import TraceMeanField_ELBO

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mlvae_benchmarks import hand_written_loss  # noqa: E402

from pyro_groupvae.data import GroupBatchSampler, load_dataset  # noqa: E402
from pyro_groupvae.infer import fit  # noqa: E402
from pyro_groupvae.infer.jit import JitLoss  # noqa: E402
from pyro_groupvae.infer.optim import adam  # noqa: E402
from pyro_groupvae.models import MLVAE  # noqa: E402


class Interleave(pl.Callback):
    """After every Lightning training step, one hand-written step, one plain Pyro step (the same ELBO module and
    Adam without Lightning) and one plain Pyro JIT step; records all durations."""

    def __init__(self, hand_step, pyro_step, jit_step, sync, warmup=10):
        self.hand_step, self.pyro_step, self.jit_step, self.sync, self.warmup = \
            hand_step, pyro_step, jit_step, sync, warmup
        self.t_lightning, self.t_hand, self.t_pyro, self.t_jit = [], [], [], []
        self._mark = None

    def on_train_batch_end(self, trainer, plan, outputs, batch, batch_idx):
        self.sync()
        now = time.perf_counter()
        if self._mark is not None:
            self.t_lightning.append(now - self._mark)
        for step, times in ((self.hand_step, self.t_hand), (self.pyro_step, self.t_pyro),
                            (self.jit_step, self.t_jit)):
            t0 = time.perf_counter()
            step()
            self.sync()
            times.append(time.perf_counter() - t0)
        self._mark = time.perf_counter()

    def on_train_epoch_end(self, trainer, plan):
        self._mark = None  # epoch boundaries (validation, checkpoints) are not steps


def step_ratio(args, jit=False):
    dev = torch.device(args.device)
    sync = (lambda: torch.cuda.synchronize()) if dev.type == "cuda" else (lambda: None)
    data = load_dataset("mnist", "train")
    sampler = GroupBatchSampler(data.y, batch_groups=16, group_size=16, seed=0)
    steps_per_epoch = len(sampler)
    epochs = max(1, -(-(args.steps + 10) // steps_per_epoch))
    torch.manual_seed(0)
    m = MLVAE()
    torch.manual_seed(0)
    m2 = MLVAE().to(dev)
    opt = adam(m2.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-8)
    hand_batches = endless(GroupBatchSampler(data.y, batch_groups=16, group_size=16, seed=1))

    def hand_step():
        b = next(hand_batches)
        x, gi = data.x[b.indices].to(dev, non_blocking=True), b.group_index.to(dev, non_blocking=True)
        opt.zero_grad()
        loss = hand_written_loss(m2, x, gi, b.num_groups)
        loss.backward()
        opt.step()

    def plain_step(name, make_loss, seed):
        """What the plan's step computes, without Lightning (checks off, as in fit), on its own model copy."""
        torch.manual_seed(0)
        model = MLVAE().to(dev)
        model.pyro_name = name
        loss = make_loss(model)
        opt = adam(model.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-8)
        batches = endless(GroupBatchSampler(data.y, batch_groups=16, group_size=16, seed=seed))

        def step():
            b = next(batches)
            with model.trusted_inputs(), pyro.validation_enabled(False):
                opt.zero_grad()
                loss(**model.batch_inputs(data, b, dev)).backward()
                opt.step()

        return step

    pyro_step = plain_step("mlvae_plain", lambda m: TraceMeanField_ELBO()(m.model, m.guide), seed=2)
    # the plain Pyro step with the JIT ELBO (what fit(jit=True) computes), without Lightning
    jit_step = plain_step("mlvae_plain_jit", lambda m: JitLoss(m.default_elbo(), m.model, m.guide), seed=3)

    cb = Interleave(hand_step, pyro_step, jit_step, sync)
    fit(m, data, sampler, epochs, device=args.device, progress=False, callbacks=[cb], logger="none",
        limit_train_batches=min(steps_per_epoch, args.steps + 10), jit=jit)
    tl, th, tp, tj = cb.t_lightning[10:], cb.t_hand[10:], cb.t_pyro[10:], cb.t_jit[10:]
    ml, mh, mp, mj = (statistics.median(t) for t in (tl, th, tp, tj))
    name = "fit(jit=True)" if jit else "fit (Lightning)"
    print(f"[1{'b' if jit else 'a'}] {len(tl)} steps of 256 images (16 groups x 16), device {dev}, threads "
          f"{torch.get_num_threads()}: {name} {ml * 1e3:.2f} ms | hand-written PyTorch {mh * 1e3:.2f} ms | "
          f"ratio {ml / mh:.3f} (target <= 1.10)\n    plain Pyro step (same ELBO module and Adam, no Lightning) "
          f"{mp * 1e3:.2f} ms: Pyro / hand-written {mp / mh:.3f}, {name} / plain Pyro {ml / mp:.3f}\n"
          f"    plain Pyro JIT step {mj * 1e3:.2f} ms: JIT / hand-written {mj / mh:.3f}, JIT / plain Pyro "
          f"{mj / mp:.3f}, {name} / plain Pyro JIT {ml / mj:.3f}", flush=True)
    return ml, mh


def ddp_throughput(args):
    res = {}
    for devices in (1, 2):
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [sys.executable, "-m", "pyro_groupvae", "train", "mlvae", "--epochs", str(args.ddp_epochs),
                   "--out", f"{tmp}/run", "--group-size", "16", "--batch-groups", "16", "--no-progress",
                   "--accelerator", "cpu", "--devices", str(devices), "--logger", "none"]
            if devices > 1:
                cmd += ["--strategy", "ddp"]
            env = dict(os.environ, OMP_NUM_THREADS="1")
            subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
            hist = torch.load(f"{tmp}/run/checkpoint.pt", weights_only=True)["history"]
        secs = [h["seconds"] for h in hist[1:]] or [hist[0]["seconds"]]  # first epoch includes start-up
        sampler = GroupBatchSampler(load_dataset("mnist", "train").y, batch_groups=16, group_size=16)
        images = sum(min(16, sampler.num_groups_per_epoch - i * 16) * 16 for i in range(len(sampler)))
        res[devices] = images / statistics.median(secs)
        print(f"[2] {devices} process(es): {res[devices]:.0f} images/s (median over epochs 2..{args.ddp_epochs})")
    print(f"[2] 2 DDP processes / 1 process: {res[2] / res[1]:.2f}x on {os.cpu_count()} CPU cores")
    return res


def endless(sampler):
    """The sampler's batches, epoch after epoch (each ``iter`` starts the sampler's next epoch)."""
    while True:
        yield from sampler


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--jit", action="store_true", help="also measure fit(jit=True)")
    ap.add_argument("--ddp", action="store_true", help="also measure 1 vs 2 DDP processes")
    ap.add_argument("--ddp-epochs", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = {"step": step_ratio(args)}
    if args.jit:
        out["jit"] = step_ratio(args, jit=True)
    if args.ddp:
        out["ddp"] = ddp_throughput(args)
    summary = {"lightning_ms": out["step"][0] * 1e3, "hand_ms": out["step"][1] * 1e3,
               "ratio": out["step"][0] / out["step"][1]}
    if args.jit:
        summary.update(jit_lightning_ms=out["jit"][0] * 1e3, jit_hand_ms=out["jit"][1] * 1e3,
                       jit_ratio=out["jit"][0] / out["jit"][1])
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
