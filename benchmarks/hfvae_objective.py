"""Benchmark of the HFVAE objective (CPU, one thread).

1. Step time (forward + backward of the loss, no optimiser) of :class:`~pyro_groupvae.infer.HFVAE_ELBO` vs
   ``pyro.infer.Trace_ELBO`` on the *same* HFVAE model/guide and batch, for the MNIST (table 3) and dSprites
   (table 4) architectures at the paper's batch size 512, interleaved step by step with the estimator before the
   issue-13 rewrite (:func:`old_log_batch_marginals`, kept here only) and, with ``--compile``, with
   ``HFVAE_ELBO(compile=True)``; the losses of all variants on one seed are printed (they must agree).
2. Peak memory of the batch estimator of q(z), q(z_d), q(z_{d,e}) (eq. 13) alone, forward + backward, at
   ``B = 1024`` (and 4096 chunked) with the dSprites latent layout (10 Normal dims + one 3-class Concrete): each
   configuration runs in a fresh subprocess and reports the peak of live tensor memory (the running sum of the
   allocations and frees recorded by ``torch.profiler`` with ``profile_memory=True``), the bytes that autograd
   keeps for the backward pass (``saved_tensors_hooks``), and, for reference, the growth of the peak resident set
   size (``ru_maxrss``; includes memory the allocator keeps after frees).

Usage: ``OMP_NUM_THREADS=1 python benchmarks/hfvae_objective.py [--quick] [--out FILE.json] [--arch mlp|dsprites]
[--compile] [--repeats N] [--no-memory]``
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


def old_log_batch_marginals(groups, dataset_size, max_chunk_elements=2 ** 22, chunk_rows=None, use_checkpoint=None,
                            compile=False, fused=False):
    """The estimator before the matrix-product rewrite (kept here, not in the package, for the before/after
    comparison): every ``log q_{b'}(z_b)`` by the distribution's pairwise ``log_prob``, then three log-sum-exps."""
    from torch.utils.checkpoint import checkpoint

    from pyro_groupvae.infer.hfvae_elbo import chunk_plan, stratified_log_weights

    value0 = groups[0].value
    B = value0.shape[0]
    E = sum(g.num_sub for g in groups)
    D = len(groups)
    chunk_rows, use_checkpoint = chunk_plan(B, E, max_chunk_elements, chunk_rows, use_checkpoint)

    def pairwise(fn, value_rows, num_sub):
        lp = fn.log_prob(value_rows.unsqueeze(1))
        return lp.reshape(lp.shape[0], lp.shape[1], num_sub)

    def chunk(start, stop):
        rows = torch.arange(start, stop, device=value0.device)
        log_w = stratified_log_weights(rows, B, dataset_size, value0.dtype, value0.device)
        parts = [pairwise(g.q, g.value[start:stop], g.num_sub) for g in groups]
        sub = torch.cat(parts, -1)
        grp = torch.stack([p.sum(-1) for p in parts], -1)
        joint = grp.sum(-1)
        out_sub = torch.logsumexp(sub + log_w.unsqueeze(-1), 1)
        out_grp = torch.logsumexp(grp + log_w.unsqueeze(-1), 1)
        out_joint = torch.logsumexp(joint + log_w, 1)
        return torch.cat([out_joint.unsqueeze(-1), out_grp, out_sub], -1)

    outs = []
    for start in range(0, B, chunk_rows):
        stop = min(B, start + chunk_rows)
        outs.append(checkpoint(chunk, start, stop, use_reentrant=False) if use_checkpoint else chunk(start, stop))
    out = torch.cat(outs, 0)
    return out[:, 0], out[:, 1:1 + D], out[:, 1 + D:]


def step_times(arch, batch, reps, compiled=False):
    """Median seconds of forward + backward of the loss, variants interleaved step by step: Trace_ELBO, the
    HFVAE_ELBO of the package (fused kernels where they build), the same with its tensor code (``fused=False``),
    and with the old estimator; plus the losses on one seed."""
    from unittest import mock

    import pyro
    from pyro.infer import Trace_ELBO

    from pyro_groupvae.infer import HFVAE_ELBO, fused, hfvae_elbo
    from pyro_groupvae.models.hfvae import HFVAE

    shape, k = ((1, 64, 64), 3) if arch == "dsprites" else ((1, 28, 28), 10)
    pyro.set_rng_seed(0)
    model = HFVAE.from_preset("hfvae", shape, discrete_classes=k)
    x = (torch.rand(batch, *shape) > 0.8).float()
    new = hfvae_elbo.log_batch_marginals

    def run(elbo, estimator):
        def f():
            with mock.patch.object(hfvae_elbo, "log_batch_marginals", estimator):
                model.zero_grad()
                loss = elbo.differentiable_loss(model.model, model.guide, x, dataset_size=60000)
                loss.backward()
            return float(loss.detach())
        return f

    variants = {"Trace_ELBO": run(Trace_ELBO(), new), "HFVAE_ELBO": run(HFVAE_ELBO(1, 4, 3, 1), new),
                "HFVAE_ELBO_tensor": run(HFVAE_ELBO(1, 4, 3, 1, fused=False), new),
                "HFVAE_ELBO_old": run(HFVAE_ELBO(1, 4, 3, 1), old_log_batch_marginals)}
    if compiled:
        variants["HFVAE_ELBO_compiled"] = run(HFVAE_ELBO(1, 4, 3, 1, compile=True), new)
        t0 = time.perf_counter()
        variants["HFVAE_ELBO_compiled"]()
        print(f"compiling the estimator's kernels: {time.perf_counter() - t0:.1f} s", flush=True)
    losses = {}
    for name, f in variants.items():  # same seed, same batch: the loss must not change
        pyro.set_rng_seed(1)
        losses[name] = f()
    times = {name: [] for name in variants}
    with model.trusted_inputs(), pyro.validation_enabled(False):
        for i in range(reps + 2):
            for name, f in variants.items():
                t0 = time.perf_counter()
                f()
                if i >= 2:  # the first calls warm up
                    times[name].append(time.perf_counter() - t0)
    out = {name: statistics.median(t) for name, t in times.items()}
    out["fused_kernels"] = fused.library() is not None
    out["ratio_hfvae_over_trace"] = out["HFVAE_ELBO"] / out["Trace_ELBO"]
    out["ratio_tensor_over_trace"] = out["HFVAE_ELBO_tensor"] / out["Trace_ELBO"]
    out["speedup_fused_over_tensor"] = out["HFVAE_ELBO_tensor"] / out["HFVAE_ELBO"]
    out["ratio_old_over_trace"] = out["HFVAE_ELBO_old"] / out["Trace_ELBO"]
    out["speedup_new_over_old"] = out["HFVAE_ELBO_old"] / out["HFVAE_ELBO"]
    out["loss_new"], out["loss_old"] = losses["HFVAE_ELBO"], losses["HFVAE_ELBO_old"]
    out["loss_tensor"] = losses["HFVAE_ELBO_tensor"]
    if compiled:
        out["ratio_compiled_over_trace"] = out["HFVAE_ELBO_compiled"] / out["Trace_ELBO"]
        out["loss_compiled"] = losses["HFVAE_ELBO_compiled"]
    return out


def estimator_memory(B, chunked):
    """Run in a subprocess: peak-RSS growth (MB) and saved-for-backward bytes of the estimator alone."""
    import pyro.distributions as dist

    from pyro_groupvae.distributions import ExpConcrete
    from pyro_groupvae.infer.hfvae_elbo import LatentGroup, log_batch_marginals

    torch.manual_seed(0)
    loc = torch.randn(B, 10, requires_grad=True)
    log_scale = torch.zeros(B, 10, requires_grad=True)
    logits = torch.randn(B, 1, 3, requires_grad=True)

    def setup():
        qn, qc = dist.Normal(loc, log_scale.exp()), ExpConcrete(0.67, logits=logits)
        zn, zc = qn.rsample(), qc.rsample()
        pn, pc = dist.Normal(torch.zeros(B, 10), 1.0), ExpConcrete(0.67, logits=torch.zeros(B, 1, 3))
        return [LatentGroup("z_n", qn, pn, qn.to_event(1), pn.to_event(1), zn, 10),
                LatentGroup("z_c", qc, pc, qc.to_event(1), pc.to_event(1), zc, 1)]

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
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--no-memory", action="store_true", help="skip the memory part")
    p.add_argument("--arch", default=None, help="mlp or dsprites (default: both)")
    p.add_argument("--compile", action="store_true", help="also time HFVAE_ELBO(compile=True)")
    p.add_argument("--_memory", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    if args._memory:
        print(json.dumps(estimator_memory(int(args._memory[0]), args._memory[1] == "1")))
        return 0
    res = {"torch": torch.__version__, "threads": torch.get_num_threads(), "step_time_s": {}, "memory": []}
    reps = 3 if args.quick else args.repeats
    for arch in ([args.arch] if args.arch else ["mlp"] if args.quick else ["mlp", "dsprites"]):
        res["step_time_s"][arch] = step_times(arch, 128 if args.quick else 512, reps, args.compile)
        print(arch, res["step_time_s"][arch], flush=True)
    configs = [(256, 1), (256, 0)] if args.quick else [(1024, 1), (1024, 0), (4096, 1)]
    if args.no_memory:
        configs = []
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
