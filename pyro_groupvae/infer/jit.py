"""Training a model/guide pair under Pyro's JIT ELBOs (``JitTrace_ELBO``, ``JitTraceMeanField_ELBO``,
``JitTraceEnum_ELBO``) without recompiling per batch.

Pyro's ``pyro.ops.jit`` compiles one trace per *key*: the number of positional arguments and the hash of the
keyword arguments. Tensors must therefore be positional (a tensor keyword hashes by identity: every new batch
recompiles) and Python numbers (``num_groups``, ``dataset_size``) keywords (an int cannot be a traced input; as a
keyword it is hashed by value: one compile per distinct value). The models take keyword arguments
(``model.model(**model.batch_inputs(data, batch))``); :func:`by_position` adapts them::

    kw = model.batch_inputs(data, batch)
    names, args, consts = split_inputs(kw)
    svi = SVI(by_position(model.model, names), by_position(model.guide, names), optim, JitTrace_ELBO())
    svi.step(*args, **consts)          # every later batch: split_inputs(kw) again, same names

Build the two ``by_position`` wrappers once: Pyro's JIT keys its compiled traces on ``id(model)``/``id(guide)``.

Inside the trace the models skip their Python-side input checks (``torch.jit.is_tracing()``), so no check is
frozen into the compiled graph; validate the data once beforehand (``model.check_dataset(data)``).

Use :class:`JitTraceMeanField_ELBO` from here, not Pyro's: Pyro 1.9's re-traces on every step.
"""
from __future__ import annotations

import pyro.infer
import torch

__all__ = ["split_inputs", "by_position", "JitTraceMeanField_ELBO"]


def split_inputs(kwargs):
    """``(names, args, consts)``: the tensor arguments (names, in order, and values) and the other keywords.
    ``None`` values are dropped (they are the defaults)."""
    names = tuple(k for k, v in kwargs.items() if torch.is_tensor(v))
    consts = {k: v for k, v in kwargs.items() if v is not None and not torch.is_tensor(v)}
    return names, tuple(kwargs[k] for k in names), consts


class by_position:
    """``fn`` called with the tensors ``names`` given positionally (and any keywords passed through)."""

    def __init__(self, fn, names):
        self.fn, self.names = fn, tuple(names)

    def __call__(self, *tensors, **kwargs):
        if len(tensors) != len(self.names):
            raise TypeError(f"expected {len(self.names)} tensors ({', '.join(self.names)}), got {len(tensors)}")
        return self.fn(**dict(zip(self.names, tensors)), **kwargs)


class JitTraceMeanField_ELBO(pyro.infer.JitTraceMeanField_ELBO):
    """Pyro's ``JitTraceMeanField_ELBO`` compiled once. Pyro 1.9's version re-traces on *every* call: it tests for
    the attribute ``_loss_and_surrogate_loss`` before compiling but stores the compiled function as
    ``_differentiable_loss``, so each step builds and traces a new function (that is why it measured 3-4x slower
    than the plain ELBO, docs/benchmarks.md). This subclass marks the compiled function as built."""

    def differentiable_loss(self, model, guide, *args, **kwargs):
        loss = super().differentiable_loss(model, guide, *args, **kwargs)
        self._loss_and_surrogate_loss = self._differentiable_loss  # the attribute Pyro checks before re-tracing
        return loss
