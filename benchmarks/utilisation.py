"""How close each model's training step comes to this machine's matrix-multiply peak (CPU, one thread).

For every model's training step at its experiment's default size, measured in one run:

* the machine's float32 matmul peak (single thread): median GFLOP/s of ``2048^3`` and ``512 x 4096 x 1200``
  products, re-measured between the models (interleaved) so that load on a shared machine hits both alike;
* the step's FLOPs, counted by ``torch.utils.flop_counter.FlopCounterMode`` over one whole step (forward,
  backward; matmuls and convolutions only -- elementwise work and the optimiser are not counted);
* the step's time: the median of the training step that :func:`~pyro_groupvae.infer.train.fit` runs (the
  Lightning plan's step: ``zero_grad``, the ELBO module's loss, backward, the plan's Adam, with trusted inputs and
  no Pyro validation, glibc's malloc thresholds raised as ``fit`` does on the CPU), on one batch of the recipe's own
  sampler;

and prints achieved GFLOP/s and the fraction of the peak.

With ``--matmul-bound`` each step's matrix products are also replayed alone (same shapes and strides, random
operands), interleaved with the steps: the fraction of peak the step would reach if all else were free.

Usage: ``OMP_NUM_THREADS=1 python benchmarks/utilisation.py [--repeats 20] [--models mlvae,ugvae,...]
[--compile] [--matmul-bound]``
"""
from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time

import torch

#: name -> (recipe, dataset, options that differ from the recipe's defaults, description)
CASES = {
    "mlvae": ("mlvae", "mnist", {"min_scale": 0.2, "style_beta": 10.0}, "ML-VAE MNIST, 16 groups x 16 images"),
    "ugvae": ("ugvae", "mnist", {}, "UG-VAE MNIST, 4 batches x 128, K=10 enumerated"),
    "nvae": ("nvae", "mnist", {}, "N-VAE MNIST, CNN encoder, batch 100"),
    "hfvae-dsprites": ("hfvae", "dsprites", {"batch_size": 128, "dataset_options": {"n": 2000}},
                       "HFVAE dSprites MLP (table 4), batch 128 (the table's setting)"),
    "hfvae-mnist": ("hfvae", "mnist", {}, "HFVAE MNIST MLP (table 3), batch 512"),
}


def matmul_peak(reps=3):
    """Median GFLOP/s of single float32 products (best of the two shapes)."""
    best = 0.0
    for m, k, n in ((2048, 2048, 2048), (512, 4096, 1200)):
        a, b = torch.randn(m, k), torch.randn(k, n)
        a @ b
        ts = []
        for _ in range(reps):
            t0 = time.perf_counter()
            a @ b
            ts.append(time.perf_counter() - t0)
        best = max(best, 2 * m * k * n / statistics.median(ts) / 1e9)
    return best


def matmul_replay(step):
    """A function that runs the products the flop counter counts in one ``step()`` alone (matrix products and
    convolutions, forward and backward: the same shapes, strides and arguments on random operands), in order: the
    step's time if everything else were free."""
    from torch.utils._python_dispatch import TorchDispatchMode

    aten = torch.ops.aten
    ops = (aten.mm.default, aten.addmm.default, aten.bmm.default, aten.baddbmm.default, aten.convolution.default,
           aten.convolution_backward.default)
    calls = []

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func in ops:
                calls.append((func, [("T", a.shape, a.stride()) if isinstance(a, torch.Tensor) else a for a in args],
                              kwargs or {}))
            return func(*args, **(kwargs or {}))

    with Record():
        step()

    def operand(a):
        if not (isinstance(a, tuple) and a and a[0] == "T"):
            return a
        shape, stride = a[1], a[2]
        return torch.randn(sum((n - 1) * s for n, s in zip(shape, stride)) + 1).as_strided(shape, stride)

    replay = [(func, [operand(a) for a in args], kw) for func, args, kw in calls]

    def run():
        for func, args, kw in replay:
            func(*args, **kw)

    return run


def default_options(recipe):
    p = argparse.ArgumentParser()
    recipe.add_arguments(p)
    return vars(p.parse_args([]))


def build_step(case, compile_nets=False, retain_cpu_memory=True):
    """``(step, count_flops, description, stack)`` for one case: ``step()`` is one training step of ``fit`` on a
    fixed batch, as :class:`~pyro_groupvae.infer.lightning.PyroTrainingPlan` runs it (``zero_grad`` to None, the
    ELBO module's loss, backward, the plan's Adam; trusted inputs, Pyro validation off, modules registered once)."""
    import pyro

    from pyro_groupvae.infer.lightning import PyroTrainingPlan
    from pyro_groupvae.runs import get_recipe, load_data

    name, dataset, over, desc = CASES[case]
    recipe = get_recipe(name)
    opts = {**default_options(recipe), **over}
    torch.manual_seed(0)
    pyro.set_rng_seed(0)
    train = load_data(dataset, "train", opts)
    parts = recipe.build(dict(opts), train, None)
    model = parts["model"]
    if compile_nets:
        from pyro_groupvae.models.nets import compile_networks

        compile_networks(model)
    pyro.clear_param_store()
    plan = PyroTrainingPlan(model, train, parts["sampler"], elbo=parts.get("elbo"), lr=1e-3,
                            retain_cpu_memory=retain_cpu_memory)
    opt = plan.configure_optimizers()
    batch = next(iter(parts["sampler"]))
    kw = model.batch_inputs(train, batch, torch.device("cpu"))
    model.train()
    plan.on_fit_start()
    stack = contextlib.ExitStack()
    stack.callback(plan.on_fit_end)

    def step():
        opt.zero_grad()
        loss = plan.loss_module(**kw)
        float(loss.detach())  # the plan's finite-loss check reads the loss on the CPU
        loss.backward()
        opt.step()
        return loss

    def count_flops():
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as fc:
            step()
        return fc.get_total_flops()

    n = len(batch.indices)
    return step, count_flops, f"{desc} ({n} images/step)", stack


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=20, help="timed steps per model")
    ap.add_argument("--models", default=",".join(CASES))
    ap.add_argument("--compile", action="store_true", help="torch.compile the networks (nets.compile_networks)")
    ap.add_argument("--matmul-bound", action="store_true",
                    help="also time the step's matrix products alone (replayed on random operands)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, OMP_NUM_THREADS="
          f"{os.environ.get('OMP_NUM_THREADS')}, median of {args.repeats} steps, compile={args.compile}")
    print(f"{'model':16s} {'GFLOP/step':>10s} {'ms/step':>9s} {'GFLOP/s':>8s} {'peak':>7s} {'of peak':>8s}")
    rows = []
    for case in args.models.split(","):
        step, count_flops, desc, stack = build_step(case, args.compile)
        with stack:
            for _ in range(3):  # warm-up (and compilation)
                step()
            flops = count_flops()
            replay = matmul_replay(step) if args.matmul_bound else None
            times, peaks, mm_times = [], [], []
            for i in range(args.repeats):
                if i % 5 == 0:
                    peaks.append(matmul_peak(1))  # interleaved with the steps
                t0 = time.perf_counter()
                step()
                times.append(time.perf_counter() - t0)
                if replay is not None:
                    t0 = time.perf_counter()
                    replay()
                    mm_times.append(time.perf_counter() - t0)
        t, peak = statistics.median(times), statistics.median(peaks)
        rate = flops / t / 1e9
        rows.append((case, flops, t, rate, peak))
        print(f"{case:16s} {flops / 1e9:10.3f} {t * 1e3:9.1f} {rate:8.1f} {peak:7.1f} {rate / peak:8.1%}   {desc}",
              flush=True)
        if mm_times:
            tm = statistics.median(mm_times)
            print(f"{'':16s} {'':10s} {tm * 1e3:9.1f} {flops / tm / 1e9:8.1f} {'':7s} {flops / tm / 1e9 / peak:8.1%}"
                  "   its matrix products alone", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
