"""Adam step alone: ``torch.optim.Adam(foreach=True)`` vs ``fused=True`` (what :func:`pyro_groupvae.infer.optim.adam`
picks), over the parameter shapes of the HFVAE dSprites MLP (12.7 M parameters), alternating step by step in one
run, one thread; prints the median milliseconds, the ratio and the largest parameter difference after the steps.

Usage: ``OMP_NUM_THREADS=1 python benchmarks/adam_step.py [--repeats N]``
"""
import argparse
import statistics
import time

import torch

SHAPES = [(1200, 4096), (1200,), (1200, 1200), (1200,), (20, 1200), (1200, 10), (1200, 1200), (4096, 1200), (4096,)]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=11)
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    runs = {}
    for name in ("foreach", "fused"):
        g = torch.Generator().manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(s, generator=g)) for s in SHAPES]
        for p in params:
            p.grad = 1e-3 * torch.randn(p.shape, generator=g)
        runs[name] = (params, torch.optim.Adam(params, lr=1e-3, **{name: True}))
        runs[name][1].step()
    times = {name: [] for name in runs}
    for _ in range(a.repeats):
        for name, (_, opt) in runs.items():
            t0 = time.perf_counter()
            opt.step()
            times[name].append(time.perf_counter() - t0)
    med = {name: statistics.median(t) * 1e3 for name, t in times.items()}
    diff = max((x - y).abs().max().item() for x, y in zip(runs["foreach"][0], runs["fused"][0]))
    print(f"Adam step, {sum(p.numel() for p in runs['fused'][0]) / 1e6:.1f} M parameters: foreach "
          f"{med['foreach']:.1f} ms, fused {med['fused']:.1f} ms, ratio {med['foreach'] / med['fused']:.2f}; "
          f"max parameter difference after {a.repeats + 1} steps {diff:.1e}")


if __name__ == "__main__":
    main()
