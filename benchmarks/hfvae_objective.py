"""Benchmark of the HFVAE objective (CPU, one thread).

1. Step time (forward + backward of the loss, no optimiser) of :class:`~pyro_groupvae.infer.HFVAE_ELBO` vs
   ``pyro.infer.Trace_ELBO`` on the *same* HFVAE model/guide and batch, for the MNIST (table 3) and dSprites
   (table 4) architectures at the paper's batch size 512.
2. Peak memory of the batch estimator of q(z), q(z_d), q(z_{d,e}) (eq. 13) alone, forward + backward, at
   ``B = 1024`` (and 4096 chunked) with the dSprites latent layout (10 Normal dims + one 3-class Concrete): each
   configuration runs in a fresh subprocess and reports the peak of live tensor memory (the running sum of the
   allocations and frees recorded by ``torch.profiler`` with ``profile_memory=True``), the bytes that autograd
   keeps for the backward pass (``saved_tensors_hooks``), and, for reference, the growth of the peak resident set
   size (``ru_maxrss``; includes memory the allocator keeps after frees).

Usage: ``OMP_NUM_THREADS=1 python benchmarks/hfvae_objective.py [--quick] [--out FILE.json]``
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile


def _rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def step_times(arch, batch, reps):
    import pyro
    from pyro.infer import Trace_ELBO

    from pyro_groupvae.infer import HFVAE_ELBO
    from pyro_groupvae.models.hfvae import HFVAE

    shape, k = ((1, 64, 64), 3) if arch == "dsprites" else ((1, 28, 28), 10)
    pyro.set_rng_seed(0)
    model = HFVAE.from_preset("hfvae", shape, discrete_classes=k)
    x = (torch.rand(batch, *shape) > 0.8).float()
    out = {}
    for name, elbo in [("Trace_ELBO", Trace_ELBO()), ("HFVAE_ELBO", HFVAE_ELBO(1, 4, 3, 1))]:
        times = []
        for i in range(reps + 1):
            model.zero_grad()
            t0 = time.perf_counter()
            loss = elbo.differentiable_loss(model.model, model.guide, x, dataset_size=20000)
            loss.backward()
            if i:  # the first call warms up
                times.append(time.perf_counter() - t0)
        out[name] = statistics.median(times)
    out["overhead"] = out["HFVAE_ELBO"] / out["Trace_ELBO"] - 1
    return out


def estimator_memory(B, chunked):
    """Run in a subprocess: peak-RSS growth (MB) and saved-for-backward bytes of the estimator alone."""
    import pyro.distributions as dist

    from pyro_groupvae.distributions import ExpConcrete
    from pyro_groupvae.infer.hfvae_elbo import _Group, log_batch_marginals

    torch.manual_seed(0)
    loc = torch.randn(B, 10, requires_grad=True)
    log_scale = torch.zeros(B, 10, requires_grad=True)
    logits = torch.randn(B, 1, 3, requires_grad=True)

    def setup():
        qn, qc = dist.Normal(loc, log_scale.exp()), ExpConcrete(0.67, logits=logits)
        zn, zc = qn.rsample(), qc.rsample()
        pn, pc = dist.Normal(torch.zeros(B, 10), 1.0), ExpConcrete(0.67, logits=torch.zeros(B, 1, 3))
        return [_Group("z_n", qn, pn, qn.to_event(1), pn.to_event(1), zn, 10),
                _Group("z_c", qc, pc, qc.to_event(1), pc.to_event(1), zc, 1)]

    saved = [0]

    def pack(t):
        saved[0] += t.numel() * t.element_size()
        return t

    def run():
        groups = setup()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            if chunked:
                outs = log_batch_marginals(groups, 100000)
            else:
                outs = log_batch_marginals(groups, 100000, chunk_rows=B, use_checkpoint=False)
            total = sum(o.sum() for o in outs)
        total.backward()

    t0 = time.perf_counter()
    run()  # timing without the profiler
    seconds = time.perf_counter() - t0
    saved[0] = 0
    before = _rss_mb()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run()
    events = sorted(prof.events(), key=lambda e: e.time_range.start)
    live_peak = max(itertools.accumulate(e.self_cpu_memory_usage for e in events))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"B": B, "E": 11, "chunked": chunked, "peak_live_tensor_mb": live_peak / 2 ** 20,
            "peak_rss_growth_mb": peak - before, "saved_for_backward_mb": saved[0] / 2 ** 20,
            "seconds": seconds, "dense_BxBxE_table_mb": B * B * 11 * 4 / 2 ** 20}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default=None)
    p.add_argument("--_memory", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    if args._memory:
        print(json.dumps(estimator_memory(int(args._memory[0]), args._memory[1] == "1")))
        return 0
    res = {"torch": torch.__version__, "threads": torch.get_num_threads(), "step_time_s": {}, "memory": []}
    reps = 2 if args.quick else 5
    for arch in (["mlp"] if args.quick else ["mlp", "dsprites"]):
        res["step_time_s"][arch] = step_times(arch, 128 if args.quick else 512, reps)
        print(arch, res["step_time_s"][arch], flush=True)
    configs = [(256, 1), (256, 0)] if args.quick else [(1024, 1), (1024, 0), (4096, 1)]
    for B, chunked in configs:
        r = subprocess.run([sys.executable, __file__, "--_memory", str(B), str(chunked)], capture_output=True,
                           text=True, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        res["memory"].append(json.loads(r.stdout.strip().splitlines()[-1]))
        print(res["memory"][-1], flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
