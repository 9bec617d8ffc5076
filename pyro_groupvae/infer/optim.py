"""A Pyro optimiser that steps all parameters with one ``torch.optim.Adam``, and :func:`adam`, the Adam every
trainer of the package builds.

:class:`pyro.optim.PyroOptim` builds one PyTorch optimiser per parameter tensor and steps them one by one; for
networks with a few dozen tensors that Python loop is a visible share of a training step. :class:`FusedAdam`
keeps a single Adam (:func:`adam`) over every parameter SVI hands it (new parameters join as a new param group),
with the same update rule, and saves/loads its state by parameter *name* so that checkpoints survive a restart.

:func:`adam` uses PyTorch's single-kernel ``fused=True`` implementation where PyTorch has one for the parameters
(floating tensors on the CPU or CUDA), else ``foreach=True``. Same update rule; on the CPU the fused kernel is
several times faster than the multi-tensor one, which makes about ten passes over every parameter-sized buffer
(docs/benchmarks.md).
"""
from __future__ import annotations

import pyro
import torch
from pyro.optim import PyroOptim


def adam(params, **kwargs):
    """``torch.optim.Adam(params, fused=True, **kwargs)`` where PyTorch has a fused kernel for these parameters,
    else ``torch.optim.Adam(params, foreach=True, **kwargs)``."""
    params = list(params)
    try:
        return torch.optim.Adam(params, fused=True, **kwargs)
    except (RuntimeError, ValueError):  # a device or dtype without a fused kernel
        return torch.optim.Adam(params, foreach=True, **kwargs)


class FusedAdam(PyroOptim):
    """Adam over all parameters at once, usable wherever Pyro expects a :class:`~pyro.optim.PyroOptim`.

    :param dict optim_args: ``lr``, ``betas``, ``eps``, ``weight_decay`` as for ``torch.optim.Adam``.
    :param float clip_norm: optional gradient-norm clipping over all parameters.
    """

    def __init__(self, optim_args, clip_norm=None):
        super().__init__(torch.optim.Adam, dict(optim_args))
        self.clip_norm = clip_norm
        self._opt = None
        self._seen = set()
        self._pending_state = None

    def _names(self, params):
        store = pyro.get_param_store()
        return [store.param_name(p) for p in params]

    def __call__(self, params, *args, **kwargs):
        params = [p for p in params if p not in self._seen]
        if params:
            params.sort(key=lambda p: self._names([p])[0] or "")
            if self._opt is None:
                self._opt = adam(params, **self.pt_optim_args)
            else:
                self._opt.add_param_group({"params": params})
            self._seen.update(params)
            if self._pending_state is not None:
                self._try_load_pending()
        if self._opt is not None:
            if self.clip_norm:
                torch.nn.utils.clip_grad_norm_([p for g in self._opt.param_groups for p in g["params"]],
                                               self.clip_norm)
            self._opt.step()

    def get_state(self):
        if self._opt is None:
            return {"names": [], "state": None}
        names = [self._names(g["params"]) for g in self._opt.param_groups]
        return {"names": names, "state": self._opt.state_dict()}

    def set_state(self, state_dict):
        self._pending_state = state_dict

    def _try_load_pending(self):
        names = [self._names(g["params"]) for g in self._opt.param_groups]
        flat = sorted(n for group in names for n in group)
        saved = sorted(n for group in self._pending_state["names"] for n in group)
        if flat != saved:
            return  # wait until every saved parameter has been seen
        # rebuild the groups in the saved order, then load
        by_name = {n: p for g in self._opt.param_groups for p, n in zip(g["params"], self._names(g["params"]))}
        self._opt = adam([by_name[n] for n in self._pending_state["names"][0]], **self.pt_optim_args)
        for group in self._pending_state["names"][1:]:
            self._opt.add_param_group({"params": [by_name[n] for n in group]})
        self._opt.load_state_dict(self._pending_state["state"])
        self._pending_state = None
