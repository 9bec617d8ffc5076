"""What Pyro's JIT ELBOs do to the SVI step time, per model: plain ELBO vs its ``Jit*`` version, timed side by
side (alternating steps, medians) on one real MNIST batch, the models' paper-size networks.

    OMP_NUM_THREADS=1 python benchmarks/jit_step.py [--batch 128] [--repeats 30] [--models mlvae,ugvae,...]

Prints one markdown row per model (docs/benchmarks.md). The JIT runs use
:mod:`pyro_groupvae.infer.jit` (tensors positional, numbers by keyword, and its ``JitTraceMeanField_ELBO``: Pyro
1.9's re-traces every step), so each compiles once. ``--pyro-mean-field`` times Pyro's own class instead.
"""
import argparse
import sys
from pathlib import Path

import pyro
import torch
from pyro.infer import SVI, JitTrace_ELBO, JitTraceEnum_ELBO, Trace_ELBO, TraceEnum_ELBO, TraceMeanField_ELBO

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import time_pair  # noqa: E402

from pyro_groupvae.data import load_dataset  # noqa: E402
from pyro_groupvae.data.samplers import GroupBatch  # noqa: E402
from pyro_groupvae.infer.jit import JitTraceMeanField_ELBO, by_position, split_inputs  # noqa: E402
from pyro_groupvae.models import build_model  # noqa: E402

JIT = {Trace_ELBO: JitTrace_ELBO, TraceMeanField_ELBO: JitTraceMeanField_ELBO, TraceEnum_ELBO: JitTraceEnum_ELBO}
CONFIGS = {  # paper-size networks (MLP on 28x28)
    "mlvae": {}, "vae": {}, "ugvae": {}, "nvae": dict(architecture="mlp"), "cvae": {},
    "hfvae": {},
}


def plain_elbo(model):
    """The model's default ELBO as the Pyro class that has a JIT version (N-VAE's default is Pyro's
    ``TraceMeanField_ELBO`` plus a clearer error); HFVAE's own objective has none: Pyro's ``Trace_ELBO``."""
    elbo = model.default_elbo()
    for kind in (TraceEnum_ELBO, TraceMeanField_ELBO):
        if isinstance(elbo, kind):
            return kind(max_plate_nesting=2) if kind is TraceEnum_ELBO else kind()
    return Trace_ELBO()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--models", default=",".join(CONFIGS))
    p.add_argument("--pyro-mean-field", action="store_true", help="Pyro's JitTraceMeanField_ELBO (re-traces)")
    p.add_argument("--also-trace-elbo", action="store_true",
                   help="for models trained with TraceMeanField_ELBO, also time Trace_ELBO vs JitTrace_ELBO")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    if args.pyro_mean_field:
        JIT[TraceMeanField_ELBO] = pyro.infer.JitTraceMeanField_ELBO
    train = load_dataset("mnist", "train")
    n = args.batch
    rows = torch.arange(n)
    order = torch.argsort(train.y[rows], stable=True)  # groups of one digit, cut into groups of 8 for UG-VAE
    gi = torch.arange(n) // 8
    print(f"| model | ELBO | plain step (ms) | JIT step (ms) | JIT / plain | batch {n}, {args.repeats} repeats |")
    print("|---|---|---|---|---|---|")
    for name in args.models.split(","):
        pyro.set_rng_seed(0)
        model = build_model(name, **CONFIGS[name])
        data = train.binarized() if model.config.get("likelihood") == "bernoulli" else train
        kw = model.batch_inputs(data, GroupBatch(rows[order], gi, int(gi.max()) + 1), torch.device("cpu"))
        names, targs, consts = split_inputs(kw)
        elbos = [plain_elbo(model)]
        if args.also_trace_elbo and isinstance(elbos[0], TraceMeanField_ELBO):
            elbos.append(Trace_ELBO())
        for plain in elbos:
            elbo_kw = {"max_plate_nesting": 2} if isinstance(plain, TraceEnum_ELBO) else {}
            jit = JIT[type(plain)](**elbo_kw)
            pyro.clear_param_store()
            optim = pyro.optim.Adam({"lr": 1e-4})
            svi_plain = SVI(model.model, model.guide, optim, plain)
            svi_jit = SVI(by_position(model.model, names), by_position(model.guide, names), optim, jit)
            with model.trusted_inputs(), pyro.validation_enabled(False):
                a, b = time_pair(lambda: svi_plain.step(**kw), lambda: svi_jit.step(*targs, **consts),
                                 args.repeats)
            print(f"| {name} | {type(plain).__name__} | {1e3 * a:.1f} | {1e3 * b:.1f} | {b / a:.2f} | |",
                  flush=True)


if __name__ == "__main__":
    main()
