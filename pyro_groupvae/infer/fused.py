"""Fused CPU kernels for the HFVAE estimator of q(z) (:mod:`pyro_groupvae.infer.hfvae_elbo`).

The pairwise work of the estimator over the batch is written as loops in C++ (``fused_kernels.cpp``) that form
every entry in registers and reduce it at once, forward and backward, so no ``B x B x E`` tensor is ever stored:
a Normal group's per-dimension log-sum-exps together with its ``B x B`` group table (:class:`NormalGroup`), the
pairwise Concrete log densities (:class:`ConcreteLP`) and the log-sum-exps of the group tables and of their sum
(:class:`GroupLSE`). Same numbers as the tensor code, several times faster on a CPU (docs/benchmarks.md).

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

__all__ = ["available", "NormalGroup", "ConcreteLP", "GroupLSE", "library"]

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
        getattr(lib, f"normal_group_fwd_{suf}").argtypes = [i64] * 4 + [ptr] * 4 + [dbl, i64, ptr, ptr, cint]
        getattr(lib, f"normal_group_bwd_{suf}").argtypes = [i64] * 4 + [ptr] * 4 + [dbl, i64] + [ptr] * 7 + [cint]
        getattr(lib, f"concrete_lp_fwd_{suf}").argtypes = [i64] * 5 + [ptr, ptr, dbl, dbl, ptr, ptr, cint]
        getattr(lib, f"concrete_lp_bwd_{suf}").argtypes = [i64] * 5 + [ptr, ptr, dbl] + [ptr] * 6 + [cint]
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


def _p_or_null(t):
    return None if t is None else _p(t)


class NormalGroup(torch.autograd.Function):
    r"""A Normal group's per-dimension batch marginals and pairwise group table, rows ``offset .. offset + c`` of
    the batch:

    ``out[p, e, i] = log sum_j exp(x[p, e, i, j] + dw [j = i + offset])`` and ``grp[p, i, j] = sum_e x[p, e, i, j]``
    with ``x[p, e, i, j] = a[p, e, j] + h[p, e, j] (z[p, e, i] - mu[p, e, j])^2``,

    for ``z (P, E, c)``, ``mu, h, a (P, E, B)`` (``h = -1 / (2 s^2)``, ``a = -log s - log(2 pi) / 2``),
    ``dw`` the log weight of ``b' = b`` minus the one of ``b' != b`` (eq. 13). Returns ``(out (P, E, c),
    grp (P, c, B))``; the caller adds the off-diagonal log weight to ``out``. Every ``x`` is formed directly from
    ``z - mu`` (never by expanding the square), so the group table needs no float64."""

    @staticmethod
    def forward(ctx, z, mu, h, a, dw, offset):
        z, mu, h, a = (t.detach().contiguous() for t in (z, mu, h, a))
        P, E, c = z.shape
        B = mu.shape[-1]
        out = torch.empty_like(z)
        grp = torch.empty(P, c, B, dtype=z.dtype)
        _fn("normal_group_fwd", z.dtype)(P, E, c, B, _p(z), _p(mu), _p(h), _p(a), float(dw), int(offset), _p(out),
                                         _p(grp), torch.get_num_threads())
        ctx.save_for_backward(z, mu, h, a, out)
        ctx.dw, ctx.offset = float(dw), int(offset)
        ctx.set_materialize_grads(False)
        return out, grp

    @staticmethod
    def backward(ctx, gout, ggrp):
        z, mu, h, a, out = ctx.saved_tensors
        gout = None if gout is None else gout.contiguous()
        ggrp = None if ggrp is None else ggrp.contiguous()
        P, E, c = z.shape
        B = mu.shape[-1]
        gz, gmu, gh, ga = torch.empty_like(z), torch.empty_like(mu), torch.empty_like(h), torch.empty_like(a)
        _fn("normal_group_bwd", z.dtype)(P, E, c, B, _p(z), _p(mu), _p(h), _p(a), ctx.dw, ctx.offset, _p(out),
                                         _p_or_null(gout), _p_or_null(ggrp), _p(gz), _p(gmu), _p(gh), _p(ga),
                                         torch.get_num_threads())
        return gz, gmu, gh, ga, None, None


class ConcreteLP(torch.autograd.Function):
    r"""Pairwise ExpConcrete log densities (Maddison et al. eq. B.5) of rows ``v (P, c, V, K)`` under the batch's
    normalised logits, given transposed as ``Lt (P, V, K, B)``:

    ``lp[p, v, i, j] = sum_k s_k - K log sum_k exp(s_k) + cst``, ``s_k = Lt[p, v, k, j] - tau v[p, i, v, k]``,

    with ``tau`` and ``cst`` (``lgamma(K) + (K - 1) log tau``) 0-d tensors. Returns ``(P, V, c, B)``; no
    ``(P, c, B, V, K)`` tensor is formed."""

    @staticmethod
    def forward(ctx, v, Lt, tau, cst):
        v, Lt = v.detach().contiguous(), Lt.detach().contiguous()
        P, c, V, K = v.shape
        B = Lt.shape[-1]
        t = float(tau)
        lp = torch.empty(P, V, c, B, dtype=v.dtype)
        lse = torch.empty_like(lp)
        _fn("concrete_lp_fwd", v.dtype)(P, c, V, K, B, _p(v), _p(Lt), t, float(cst), _p(lp), _p(lse),
                                        torch.get_num_threads())
        ctx.save_for_backward(v, Lt, lse)
        ctx.tau = t
        ctx.shapes = (tau.shape, tau.dtype, cst.shape, cst.dtype)
        return lp

    @staticmethod
    def backward(ctx, grad):
        v, Lt, lse = ctx.saved_tensors
        grad = grad.contiguous()
        P, c, V, K = v.shape
        B = Lt.shape[-1]
        gLt, gv = torch.empty_like(Lt), torch.empty_like(v)
        gtau, gcst = torch.zeros((), dtype=v.dtype), torch.zeros((), dtype=v.dtype)
        _fn("concrete_lp_bwd", v.dtype)(P, c, V, K, B, _p(v), _p(Lt), ctx.tau, _p(lse), _p(grad), _p(gLt), _p(gv),
                                        _p(gtau), _p(gcst), torch.get_num_threads())
        tshape, tdtype, cshape, cdtype = ctx.shapes
        return (gv, gLt, gtau.to(tdtype).reshape(tshape) if ctx.needs_input_grad[2] else None,
                gcst.to(cdtype).reshape(cshape) if ctx.needs_input_grad[3] else None)


def _ptrs(tensors):
    return (ctypes.c_void_p * len(tensors))(*(t.data_ptr() for t in tensors))


class GroupLSE(torch.autograd.Function):
    r"""Group and joint marginals of eq. 13 from ``D`` pairwise group log-density tables ``x_d (P, c, B)`` (rows
    ``offset .. offset + c`` of the batch): ``out[p, d, i] = log sum_j exp(x_d[p, i, j] + dw [j = i + offset])``
    for ``d < D`` and, at ``d = D``, the same of ``sum_d x_d[p, i, j]`` (the joint). Returns ``(P, D + 1, c)``,
    without the constant off-diagonal log weight (the caller adds it). Called as ``GroupLSE.apply(dw, offset,
    *tables)``; the tables are read where they lie (no stacked copy)."""

    @staticmethod
    def forward(ctx, dw, offset, *xs):
        xs = [x.detach().contiguous() for x in xs]
        P, c, B = xs[0].shape
        D = len(xs)
        out = torch.empty(P, D + 1, c, dtype=xs[0].dtype)
        _fn("group_lse_fwd", out.dtype)(P, D, c, B, _ptrs(xs), float(dw), int(offset), _p(out),
                                        torch.get_num_threads())
        ctx.save_for_backward(out, *xs)
        ctx.dw, ctx.offset = float(dw), int(offset)
        return out

    @staticmethod
    def backward(ctx, grad):
        out, *xs = ctx.saved_tensors
        grad = grad.contiguous()
        P, c, B = xs[0].shape
        gxs = [torch.empty_like(x) for x in xs]
        _fn("group_lse_bwd", out.dtype)(P, len(xs), c, B, _ptrs(xs), ctx.dw, ctx.offset, _p(out), _p(grad),
                                        _ptrs(gxs), torch.get_num_threads())
        return (None, None, *gxs)
