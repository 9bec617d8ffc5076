"""Keep a CPU training step's freed buffers inside the process (glibc's ``malloc``).

A training step allocates the same buffers every time: activations, and the parameter gradients that
``zero_grad`` sets to ``None``. glibc serves blocks above ``M_MMAP_THRESHOLD`` (128 KiB to start with) with fresh
``mmap`` calls and hands them back to the kernel when they are freed, and it trims freed memory above
``M_TRIM_THRESHOLD`` from the top of the heap, so the next step touches new pages and the kernel has to fault them in
and zero them: on the dSprites HFVAE step (14 M parameters, batch 128) about 10,000 page faults and 20 ms of
kernel time per 140 ms step (docs/benchmarks.md). :func:`retain_freed_memory` raises both thresholds, so freed
blocks stay in ``malloc``'s free lists and the next step reuses them, which is what a caching allocator (jemalloc,
tcmalloc, PyTorch's CUDA allocator) does. The process keeps its peak memory instead of giving it back between steps
(a few MB more resident memory on that step).

It is process-wide and cannot be undone (glibc has no "restore defaults"), so the training plan applies it only to
runs on the CPU and only when asked (``fit(..., retain_cpu_memory=True)``, the default). On other C libraries
(macOS, musl, Windows) it does nothing.
"""
from __future__ import annotations

import ctypes
import platform

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameter numbers (malloc.h)
_applied = False


def retain_freed_memory(mmap_threshold=32 << 20, trim_threshold=1 << 30):
    """Set glibc's ``M_MMAP_THRESHOLD`` (largest block served from the heap; 32 MiB is glibc's maximum) and
    ``M_TRIM_THRESHOLD`` (free memory kept at the top of the heap), once per process.

    :returns: True if the settings are (now or already) in effect, False where the C library is not glibc.
    """
    global _applied
    if _applied:
        return True
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _applied = bool(mallopt(_M_MMAP_THRESHOLD, int(mmap_threshold))) and bool(
        mallopt(_M_TRIM_THRESHOLD, int(trim_threshold)))
    return _applied
