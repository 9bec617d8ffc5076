"""ML-VAE's non-amortised SVI baseline (``guide_type="svi"``) against Pyro's ``AutoNormal`` on the same model, data,
batches and seed: training loss per observation after ``--steps`` steps.

    OMP_NUM_THREADS=1 python benchmarks/svi_baseline_init.py [--steps 300] [--rows 1000]

Three guides: the native guide with its initial standard deviation 0.1 (AutoNormal's ``init_scale``, the default
now), the native guide with the former initial standard deviation 1, and
``AutoNormal(model.model, create_plates=model.create_plates)`` (local parameters per training row/group).

Common random numbers: every guide sees the same initial network, the same batches *and the same Monte Carlo noise*
(the RNG is reseeded from ``(seed, stream, step)`` before every step; AutoNormal's prototype trace, which draws
random numbers, is built before the first step). Without this the guides were compared on different noise streams
(AutoNormal's set-up shifted every later draw), and the spread between noise streams (about 1 nat per image at 300
steps) read as a gap. ``--streams K`` repeats each seed on K noise streams and prints mean +- sd.
"""
import argparse
import math
import pyro
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoNormal

from pyro_groupvae.data import GroupBatchSampler, load_dataset
from pyro_groupvae.models import MLVAE


def run(guide_kind, train, steps, seed=0, stream=0):
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    model = MLVAE(guide_type="svi", num_train_obs=len(train), num_train_groups=10)
    if guide_kind == "native, init sd 1":
        with torch.no_grad():
            for p in model.local.values():
                p[:, 1] = math.log(math.expm1(1.0))  # softplus^-1(1): unit standard deviation
    guide = AutoNormal(model.model, create_plates=model.create_plates) if guide_kind == "AutoNormal" else model.guide
    svi = SVI(model.model, guide, pyro.optim.Adam({"lr": 1e-3}), Trace_ELBO())
    sampler = GroupBatchSampler(train.y, batch_groups=8, group_size=8, seed=seed)
    losses = []
    with model.trusted_inputs(), pyro.validation_enabled(False):
        while len(losses) < steps:
            for batch in sampler:
                kw = model.batch_inputs(train, batch, torch.device("cpu"))
                if not losses and guide_kind == "AutoNormal":
                    guide(**kw)  # build its prototype (draws random numbers) before the common noise starts
                pyro.set_rng_seed((seed * 1000 + stream) * 100003 + len(losses))  # common random numbers
                # per observation of the training set (the subsampled plates scale the batch to the full set)
                losses.append(svi.step(**kw) / len(train))
                if len(losses) == steps:
                    break
    return sum(losses[-20:]) / 20


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--rows", type=int, default=1000)
    p.add_argument("--seeds", default="0", help="comma-separated seeds (one column each)")
    p.add_argument("--streams", type=int, default=1, help="noise streams per seed (mean +- sd when > 1)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    train = load_dataset("mnist", "train").subset(torch.arange(args.rows))
    seeds = [int(v) for v in args.seeds.split(",")]
    print(f"| guide | loss per observation, mean of steps {args.steps - 19}-{args.steps}, seeds {args.seeds}"
          f"{f', mean +- sd over {args.streams} noise streams' if args.streams > 1 else ''} |")
    print("|---|---|")
    for kind in ("native, init sd 0.1", "native, init sd 1", "AutoNormal"):
        cells = []
        for seed in seeds:
            v = torch.tensor([run(kind, train, args.steps, seed, k) for k in range(args.streams)], dtype=torch.float64)
            cells.append(f"{v.mean():.2f} +- {v.std():.2f}" if args.streams > 1 else f"{v.item():.2f}")
        print(f"| {kind} | {' / '.join(cells)} |", flush=True)

if __name__ == "__main__":
    main()
