"""Before/after: each model's ``fit`` training step with glibc's default ``malloc`` thresholds and with
:func:`~pyro_groupvae.infer.memory.retain_freed_memory` (what ``fit`` does on the CPU).

The setting is process-wide and cannot be undone, so every measurement is a child process (the two settings
alternate, ``--rounds`` times each). A child builds the step of ``benchmarks/utilisation.py`` (same cases, one
thread), checks the first loss, times ``--repeats`` steps after three warm-up steps and reports the median step
time, the minor page faults and kernel (system) time per step, and the peak resident memory. Printed: per case, the
medians over rounds and the ratio default / retained; the first-step losses of both settings must be identical.

Usage: ``OMP_NUM_THREADS=1 python benchmarks/cpu_memory.py [--rounds 3] [--repeats 20] [--models ...]``
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def child(case, retain, repeats):
    import torch

    sys.path.insert(0, HERE)
    import utilisation

    torch.set_num_threads(1)
    step, _, _, stack = utilisation.build_step(case, retain_cpu_memory=retain)
    with stack:
        loss = float(step().detach())
        for _ in range(2):
            step()
        r0, times = resource.getrusage(resource.RUSAGE_SELF), []
        for _ in range(repeats):
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
        r1 = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"ms": statistics.median(times) * 1e3, "loss": loss,
                      "faults": (r1.ru_minflt - r0.ru_minflt) / repeats,
                      "sys_ms": (r1.ru_stime - r0.ru_stime) / repeats * 1e3, "maxrss_mb": r1.ru_maxrss / 1024}))


def main(argv=None):
    sys.path.insert(0, HERE)
    from utilisation import CASES

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--models", default=",".join(CASES))
    ap.add_argument("--child", nargs=2, metavar=("CASE", "RETAIN"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child(args.child[0], args.child[1] == "1", args.repeats)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    print(f"{'model':16s} {'ms default':>10s} {'ms retained':>11s} {'ratio':>6s} {'faults/step':>18s} "
          f"{'kernel ms/step':>15s} {'max RSS MB':>12s}  same loss")
    for case in args.models.split(","):
        runs = {"0": [], "1": []}
        for _ in range(args.rounds):
            for retain in ("0", "1"):
                out = subprocess.run([sys.executable, __file__, "--child", case, retain, "--repeats",
                                      str(args.repeats)], env=env, capture_output=True, text=True, check=True)
                runs[retain].append(json.loads(out.stdout.strip().splitlines()[-1]))

        def med(k, r):
            return statistics.median(x[k] for x in runs[r])

        same = len({x["loss"] for x in runs["0"] + runs["1"]}) == 1
        print(f"{case:16s} {med('ms', '0'):10.1f} {med('ms', '1'):11.1f} {med('ms', '0') / med('ms', '1'):6.2f} "
              f"{med('faults', '0'):8.0f} -> {med('faults', '1'):6.0f} {med('sys_ms', '0'):6.1f} -> "
              f"{med('sys_ms', '1'):5.1f} {med('maxrss_mb', '0'):5.0f} -> {med('maxrss_mb', '1'):4.0f}  {same}",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
