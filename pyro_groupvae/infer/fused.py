"""Fused CPU kernels for the HFVAE estimator of q(z) (:mod:`pyro_groupvae.infer.hfvae_elbo`).

The reductions of the estimator over the batch, the per-dimension Normal log-sum-exp (:class:`NormalLSE`, a
drop-in for ``hfvae_elbo._NormalLSE``), the log-sum-exp over classes of the pairwise Concrete density
(:class:`ConcreteLSE`) and the log-sum-exps of the ``B x B`` group tables (:class:`GroupLSE`), are written as loops
in C++ (``fused_kernels.cpp``) that form every entry in registers and reduce it at once, forward and backward, so no
``B x B x E`` tensor is ever stored: the same numbers as the tensor code, several times faster on a CPU
(docs/benchmarks.md).

The source is compiled at first use with the system C++ compiler (``$CXX``, else ``g++``/``c++``; ``-O3
-march=native -ffast-math``, which lets the compiler vectorise ``exp``) into
``$PYRO_GROUPVAE_CACHE`` (default ``~/.cache/pyro_groupvae``), keyed by the source, the flags and the CPU, and
loaded with :mod:`ctypes`. Without a compiler, on another device than the CPU, for dtypes other than float32 and
float64, or with ``PYRO_GROUPVAE_FUSED=0`` in the environment, :func:`available` is False and the estimator uses
its tensor code (same values). Kernels run on ``torch.get_num_threads()`` threads.
"""
from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

__all__ = ["available", "NormalLSE", "ConcreteLSE", "GroupLSE", "library"]

_SOURCE = Path(__file__).with_name("fused_kernels.cpp")
_FLAGS = ["-O3", "-march=native", "-ffast-math", "-fPIC", "-shared", "-std=c++17", "-pthread"]
_STATE = {}
_log = logging.getLogger(__name__)


def _cpu_id():
    try:
        with open("/proc/cpuinfo") as f:
            lines = [ln for ln in f if ln.startswith(("model name", "flags"))]
        return "".join(sorted(set(lines)))
    except OSError:
        return platform.processor()


def _compiler():
    for cand in (os.environ.get("CXX"), "g++", "c++", "clang++"):
        if cand and shutil.which(cand):
            return shutil.which(cand)
    return None


def library():
    """The loaded kernel library (``ctypes.CDLL``), compiling it on first use; None where it cannot be had."""
    if "lib" in _STATE:
        return _STATE["lib"]
    _STATE["lib"] = None
    if os.environ.get("PYRO_GROUPVAE_FUSED", "1").strip().lower() in ("0", "false", "no", "off"):
        return None
    cxx = _compiler()
    if cxx is None or not _SOURCE.exists():
        _log.info("fused HFVAE kernels unavailable (no C++ compiler); using the tensor code")
        return None
    src = _SOURCE.read_bytes()
    key = hashlib.sha256(src + " ".join(_FLAGS).encode() + _cpu_id().encode() + cxx.encode()).hexdigest()[:16]
    caches = [Path(os.environ.get("PYRO_GROUPVAE_CACHE", Path.home() / ".cache" / "pyro_groupvae")),
              Path(tempfile.gettempdir()) / f"pyro_groupvae_{os.getuid() if hasattr(os, 'getuid') else 0}"]
    lib, errors = None, []
    for cache in caches:  # the second where the first is not writable
        try:
            lib = ctypes.CDLL(str(_build(cxx, cache / f"fused_kernels_{key}.so")))
            break
        except (OSError, subprocess.SubprocessError) as e:
            errors.append(f"{cache}: {e}")
    if lib is None:
        _STATE["error"] = "; ".join(errors)
        _log.info("fused HFVAE kernels unavailable (%s); using the tensor code", _STATE["error"])
        return None
    i64, ptr, dbl, cint = ctypes.c_int64, ctypes.c_void_p, ctypes.c_double, ctypes.c_int
    for suf in ("f32", "f64"):
        getattr(lib, f"normal_lse_fwd_{suf}").argtypes = [i64, i64, i64, ptr, ptr, ptr, ptr, dbl, i64, ptr, cint]
        getattr(lib, f"normal_lse_bwd_{suf}").argtypes = ([i64, i64, i64] + [ptr] * 4 + [dbl, i64] + [ptr] * 6
                                                          + [cint])
        getattr(lib, f"concrete_lse_fwd_{suf}").argtypes = [i64] * 5 + [ptr, ptr, dbl, ptr, cint]
        getattr(lib, f"concrete_lse_bwd_{suf}").argtypes = [i64] * 5 + [ptr, ptr, dbl] + [ptr] * 5 + [cint]
        getattr(lib, f"group_lse_fwd_{suf}").argtypes = [i64] * 4 + [ptr, dbl, i64, ptr, cint]
        getattr(lib, f"group_lse_bwd_{suf}").argtypes = [i64] * 4 + [ptr, dbl, i64, ptr, ptr, ptr, cint]
    _STATE["lib"] = lib
    return lib


def _build(cxx, target):
    """Compile the source into ``target`` unless it is there (atomic: several processes, DDP ranks, may build at
    once); returns ``target``."""
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
        os.close(fd)
        try:
            subprocess.run([cxx, *_FLAGS, str(_SOURCE), "-o", tmp], check=True, capture_output=True, timeout=300)
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return target


_SUFFIX = {torch.float32: "f32", torch.float64: "f64"}


def available(*tensors):
    """Whether the fused kernels can compute with these tensors (CPU, float32/float64, one dtype, library built)."""
    if not tensors or any(t.device.type != "cpu" for t in tensors):
        return False
    if tensors[0].dtype not in _SUFFIX or any(t.dtype != tensors[0].dtype for t in tensors):
        return False
    return library() is not None


def _p(t):
    return ctypes.c_void_p(t.data_ptr())


def _fn(name, dtype):
    return getattr(library(), f"{name}_{_SUFFIX[dtype]}")


class NormalLSE(torch.autograd.Function):
    r"""``out[n, b] = log sum_{b'} exp(a[n, b'] + h[n, b'] (z[n, b] - mu[n, b'])^2 + dw [b' = b + offset])``, the
    same function and arguments as ``hfvae_elbo._NormalLSE``: ``z (n, c)``, ``mu, h, a (n, B)``, floats ``dw``
    and ``offset`` (rows ``offset .. offset + c`` of the batch)."""

    @staticmethod
    def forward(ctx, z, mu, h, a, dw, offset):
        z, mu, h, a = (t.detach().contiguous() for t in (z, mu, h, a))
        n, c = z.shape
        B = mu.shape[-1]
        out = torch.empty_like(z)
        _fn("normal_lse_fwd", z.dtype)(n, c, B, _p(z), _p(mu), _p(h), _p(a), float(dw), int(offset), _p(out),
                                       torch.get_num_threads())
        ctx.save_for_backward(z, mu, h, a, out)
        ctx.dw, ctx.offset = float(dw), int(offset)
        return out

    @staticmethod
    def backward(ctx, grad):
        z, mu, h, a, out = ctx.saved_tensors
        grad = grad.contiguous()
        n, c = z.shape
        B = mu.shape[-1]
        gz, gmu, gh, ga = torch.empty_like(z), torch.empty_like(mu), torch.empty_like(h), torch.empty_like(a)
        _fn("normal_lse_bwd", z.dtype)(n, c, B, _p(z), _p(mu), _p(h), _p(a), ctx.dw, ctx.offset, _p(out), _p(grad),
                                       _p(gz), _p(gmu), _p(gh), _p(ga), torch.get_num_threads())
        return gz, gmu, gh, ga, None, None


class ConcreteLSE(torch.autograd.Function):
    r"""``lse[p, i, v, j] = log sum_k exp(Lt[p, v, k, j] - tau v[p, i, v, k])``: the log-sum-exp over classes in
    the pairwise ExpConcrete density (Maddison et al. eq. B.5) of rows ``v (P, c, V, K)`` under the batch's
    logits, given transposed as ``Lt (P, V, K, B)``; ``tau`` a 0-d tensor. Returns ``(P, c, V, B)``."""

    @staticmethod
    def forward(ctx, v, Lt, tau):
        v, Lt = v.detach().contiguous(), Lt.detach().contiguous()
        P, c, V, K = v.shape
        B = Lt.shape[-1]
        t = float(tau)
        lse = torch.empty(P, c, V, B, dtype=v.dtype)
        _fn("concrete_lse_fwd", v.dtype)(P, c, V, K, B, _p(v), _p(Lt), t, _p(lse), torch.get_num_threads())
        ctx.save_for_backward(v, Lt, lse)
        ctx.tau, ctx.tau_shape, ctx.tau_dtype = t, tau.shape, tau.dtype
        return lse

    @staticmethod
    def backward(ctx, grad):
        v, Lt, lse = ctx.saved_tensors
        grad = grad.contiguous()
        P, c, V, K = v.shape
        B = Lt.shape[-1]
        gLt, gv = torch.empty_like(Lt), torch.empty_like(v)
        gtau = torch.zeros((), dtype=v.dtype)
        _fn("concrete_lse_bwd", v.dtype)(P, c, V, K, B, _p(v), _p(Lt), ctx.tau, _p(lse), _p(grad), _p(gLt), _p(gv),
                                         _p(gtau), torch.get_num_threads())
        return gv, gLt, (gtau.to(ctx.tau_dtype).reshape(ctx.tau_shape) if ctx.needs_input_grad[2] else None)


class GroupLSE(torch.autograd.Function):
    r"""Group and joint marginals of eq. 13 from the pairwise group log densities ``x (P, D, c, B)`` (rows
    ``offset .. offset + c`` of the batch): ``out[p, d, i] = log sum_j exp(x[p, d, i, j] + dw [j = i + offset])``
    for ``d < D`` and, at ``d = D``, the same of ``sum_d x[p, d, i, j]`` (the joint). Returns ``(P, D + 1, c)``,
    without the constant off-diagonal log weight (the caller adds it)."""

    @staticmethod
    def forward(ctx, x, dw, offset):
        x = x.detach().contiguous()
        P, D, c, B = x.shape
        out = torch.empty(P, D + 1, c, dtype=x.dtype)
        _fn("group_lse_fwd", x.dtype)(P, D, c, B, _p(x), float(dw), int(offset), _p(out), torch.get_num_threads())
        ctx.save_for_backward(x, out)
        ctx.dw, ctx.offset = float(dw), int(offset)
        return out

    @staticmethod
    def backward(ctx, grad):
        x, out = ctx.saved_tensors
        grad = grad.contiguous()
        P, D, c, B = x.shape
        gx = torch.empty_like(x)
        _fn("group_lse_bwd", x.dtype)(P, D, c, B, _p(x), ctx.dw, ctx.offset, _p(out), _p(grad), _p(gx),
                                      torch.get_num_threads())
        return gx, None, None
