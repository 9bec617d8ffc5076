"""``torch.exp`` vs ``torch.exp2`` (and ``x * log2(e)`` then ``exp2``) on a float32 tensor of the size of the HFVAE
estimator's per-dimension table (10 x 512 x 512), alternating in one run, one thread. The HFVAE estimator computes
its exponentials as ``exp2(x log2 e)`` because of this (``pyro_groupvae.infer.hfvae_elbo._exp``).

Usage: ``OMP_NUM_THREADS=1 python benchmarks/exp_vs_exp2.py [--repeats 20]``
"""
import argparse
import math
import statistics
import time

import torch


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(1)
    x = torch.rand(10, 512, 512, generator=torch.Generator().manual_seed(0)) * -30
    out = torch.empty_like(x)
    variants = {"exp": lambda: torch.exp(x, out=out),
                "exp2(x * log2 e)": lambda: torch.exp2(torch.mul(x, 1 / math.log(2), out=out), out=out),
                "exp2 alone": lambda: torch.exp2(x, out=out),
                "add (memory-bound reference)": lambda: torch.add(x, 1.0, out=out)}
    times = {k: [] for k in variants}
    for i in range(args.repeats + 2):
        for k, f in variants.items():
            t0 = time.perf_counter()
            f()
            if i >= 2:
                times[k].append(time.perf_counter() - t0)
    err = (torch.exp2(x / math.log(2)) - torch.exp(x)).abs().div(torch.exp(x)).max().item()
    print(f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
          f"{x.numel() / 1e6:.1f} M float32, median of {args.repeats}")
    for k, t in times.items():
        print(f"{k:30s} {statistics.median(t) * 1e3:8.2f} ms")
    print(f"ratio exp / exp2: {statistics.median(times['exp']) / statistics.median(times['exp2(x * log2 e)']):.1f}x; "
          f"max relative difference {err:.1e}")


if __name__ == "__main__":
    main()
