"""Benchmark: one UG-VAE training step with Pyro's ``TraceEnum_ELBO`` vs the same objective written by hand.

For both objectives of :class:`~pyro_groupvae.models.UGVAE`:

* ``marginal`` (``d`` enumerated in the model): Pyro's enumeration vs a hand-written ``logsumexp`` over clusters
  (:meth:`UGVAE.paper_elbo` with ``objective="marginal"``);
* ``paper`` (``d`` enumerated in the guide, eqs. 10-11): Pyro vs the hand-written pi-weighted sum.

Each step = ELBO forward, backward and an Adam update of the same parameters on the same batch
(``G`` groups of ``B`` bundled-MNIST images). We report the median seconds per step over ``--steps`` steps after
``--warmup`` steps, and the ratio Pyro / hand-written. Before timing, the two losses are checked to agree on a
replayed sample (relative error printed).

Usage::

    OMP_NUM_THREADS=1 python benchmarks/ugvae_enum_vs_logsumexp.py [--groups 4] [--batch-size 128] [--steps 30]
"""
from __future__ import annotations

import argparse
import json

import pyro
import torch
from pyro import poutine

from pyro_groupvae.data import load_dataset
from pyro_groupvae.models.ugvae import UGVAE
from timing import time_pair


def run(groups=4, batch_size=128, steps=30, warmup=5, num_clusters=10, threads=1, seed=0, device="cpu"):
    torch.set_num_threads(threads)
    x = load_dataset("mnist", "train").x[: groups * batch_size].to(device)
    gi = torch.arange(groups, device=device).repeat_interleave(batch_size)
    results = {"groups": groups, "batch_size": batch_size, "num_clusters": num_clusters, "threads": threads,
               "device": device, "torch": torch.__version__, "pyro": pyro.__version__}
    for objective in ("marginal", "paper"):
        pyro.clear_param_store()
        pyro.set_rng_seed(seed)
        model = UGVAE(num_clusters=num_clusters, objective=objective).to(device)
        elbo = model.default_elbo()
        # same value on the same sample (sanity check of what is being compared)
        tr = poutine.trace(poutine.block(model.guide, hide=["d"])).get_trace(x, gi, groups)
        pyro_value = -elbo.loss(model.model, poutine.replay(model.guide, trace=tr), x, gi, groups)
        hand_value = model.paper_elbo(x, gi, groups, trace=tr).item()
        rel = abs(pyro_value - hand_value) / abs(hand_value)

        params = list(model.parameters())
        opt = torch.optim.Adam(params, lr=1e-3)

        def pyro_step():
            opt.zero_grad()
            loss = elbo.differentiable_loss(model.model, model.guide, x, gi, groups)
            loss.backward()
            opt.step()

        def hand_step():
            opt.zero_grad()
            loss = -model.paper_elbo(x, gi, groups)
            loss.backward()
            opt.step()

        t_pyro, t_hand = time_pair(pyro_step, hand_step, steps, warmup)
        results[objective] = {"traceenum_s_per_step": t_pyro, "hand_written_s_per_step": t_hand,
                              "ratio_traceenum_over_hand": t_pyro / t_hand, "value_rel_error": rel}
    return results


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--groups", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--num-clusters", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", default=None, help="also write the results to this file")
    args = p.parse_args(argv)
    res = run(args.groups, args.batch_size, args.steps, args.warmup, args.num_clusters, args.threads,
              device=args.device)
    print(json.dumps(res, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
