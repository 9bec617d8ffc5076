"""Timing shared by the benchmark scripts."""
import statistics
import time


def time_pair(step_a, step_b, repeats, warmup=5, sync=lambda: None):
    """Median seconds of two steps run alternately (a, b, a, b, ...), so that load on the machine hits both alike.

    :param sync: called around each timed call (e.g. ``torch.cuda.synchronize``).
    """
    for _ in range(warmup):
        step_a()
        step_b()
    ta, tb = [], []
    for _ in range(repeats):
        for step, times in ((step_a, ta), (step_b, tb)):
            sync()
            t0 = time.perf_counter()
            step()
            sync()
            times.append(time.perf_counter() - t0)
    return statistics.median(ta), statistics.median(tb)
