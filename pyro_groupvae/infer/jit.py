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

Use :class:`JitTraceMeanField_ELBO` from here, not Pyro's: Pyro 1.9's re-traces on every step; and
:class:`JitTrace_ELBO` from here for ``differentiable_loss`` (Pyro 1.9's doubles the reparameterised gradients).
:class:`JitLoss` does all of this for a training loop (``fit(..., jit=True)``).
"""
from __future__ import annotations

import pyro.infer
import torch

__all__ = ["split_inputs", "by_position", "JitTraceMeanField_ELBO", "JitTrace_ELBO", "jit_elbo", "JitLoss"]


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


class JitTrace_ELBO(pyro.infer.JitTrace_ELBO):
    """Pyro's ``JitTrace_ELBO`` with a correct ``differentiable_loss``. Pyro 1.9's returns
    ``loss + (surrogate - surrogate.detach())`` with ``loss`` not detached (its ``Trace_ELBO`` uses a float there),
    so every reparameterised site's gradient counts twice (``loss_and_grads``, which ``SVI`` uses, is right).
    tests/test_engine.py checks the gradients against ``Trace_ELBO``."""

    def differentiable_loss(self, model, guide, *args, **kwargs):
        loss, surrogate_loss = self.loss_and_surrogate_loss(model, guide, *args, **kwargs)
        loss = pyro.util.warn_if_nan(loss.detach(), "loss")
        return loss + (surrogate_loss - surrogate_loss.detach())


def jit_elbo(elbo):
    """The JIT version of a Pyro ELBO, with the same settings:
    ``TraceMeanField_ELBO`` (and subclasses) -> :class:`JitTraceMeanField_ELBO` (ours, compiled once),
    ``Trace_ELBO`` -> :class:`JitTrace_ELBO` (ours, right gradients of ``differentiable_loss``),
    ``TraceEnum_ELBO`` -> ``JitTraceEnum_ELBO``; a JIT ELBO gives a fresh instance of its own kind. Any other ELBO
    raises ``ConfigError``. JIT warnings are silenced unless ``elbo`` is already a JIT ELBO."""
    from ..errors import ConfigError

    inf = pyro.infer
    if isinstance(elbo, inf.JitTraceMeanField_ELBO):
        cls, quiet = JitTraceMeanField_ELBO, elbo.ignore_jit_warnings
    elif isinstance(elbo, inf.JitTrace_ELBO):
        cls, quiet = JitTrace_ELBO, elbo.ignore_jit_warnings
    elif isinstance(elbo, inf.JitTraceEnum_ELBO):
        cls, quiet = type(elbo), elbo.ignore_jit_warnings
    elif isinstance(elbo, inf.TraceEnum_ELBO):
        cls, quiet = inf.JitTraceEnum_ELBO, True
    elif isinstance(elbo, inf.TraceMeanField_ELBO):
        cls, quiet = JitTraceMeanField_ELBO, True
    elif type(elbo) is inf.Trace_ELBO:
        cls, quiet = JitTrace_ELBO, True
    else:
        raise ConfigError(f"jit=True has no JIT version of {type(elbo).__name__}: use Trace_ELBO, TraceMeanField_ELBO "
                          "or TraceEnum_ELBO (or their Jit* classes), or train without jit")
    nesting = elbo.max_plate_nesting
    if elbo.vectorize_particles and elbo.num_particles > 1:
        nesting -= 1  # ELBO.__init__ adds the particle plate again
    return cls(num_particles=elbo.num_particles, max_plate_nesting=nesting,
               vectorize_particles=elbo.vectorize_particles,
               strict_enumeration_warning=elbo.strict_enumeration_warning, ignore_jit_warnings=quiet,
               jit_options=dict(elbo.jit_options) if elbo.jit_options else None, retain_graph=elbo.retain_graph,
               tail_adaptive_beta=elbo.tail_adaptive_beta)


def _shape_key(names, args, consts):
    def plain(v):
        try:
            hash(v)
            return v
        except TypeError:
            return repr(v)

    return (names, tuple((tuple(a.shape), a.dtype, str(a.device)) for a in args),
            tuple(sorted((k, plain(v)) for k, v in consts.items())))


class JitLoss:
    """``loss(**model_kwargs)``: the differentiable loss of the JIT version of ``elbo`` (:func:`jit_elbo`) on
    ``model``/``guide`` called with keyword arguments (``model.batch_inputs``), compiled once per *signature*
    (tensor names, shapes, dtypes, devices and the other keywords' values): a last, smaller batch compiles a second
    trace. ``torch.jit.trace`` may freeze shapes into the graph, so one trace is never reused for another shape.

    Random streams: compiling runs the model and guide twice more than a step does (Pyro's parameter capture and
    the trace itself), so the RNG state is restored after compiling and the step then runs the compiled graph.
    A step thus draws the same random numbers whether or not it compiled, which keeps a resumed run identical to
    an uninterrupted one. ``max_traces`` (default 8) distinct signatures give a warning: the batches change shape
    and compiling costs more than it saves."""

    def __init__(self, elbo, model, guide, max_traces=8):
        jit_elbo(elbo)  # refuse an ELBO without a JIT version now, not at the first step
        self.elbo, self.model, self.guide = elbo, model, guide
        self.max_traces = max_traces
        self.traces = {}

    def __call__(self, **kwargs):
        names, args, consts = split_inputs(kwargs)
        key = _shape_key(names, args, consts)
        entry = self.traces.get(key)
        if entry is None:
            entry = (jit_elbo(self.elbo), by_position(self.model, names), by_position(self.guide, names))
            self.traces[key] = entry
            if len(self.traces) == self.max_traces + 1:
                import warnings

                warnings.warn(f"jit: {len(self.traces)} traces compiled, one per batch shape: these batches change "
                              "shape from step to step; train without jit")
            cuda = sorted({a.device for a in args if a.device.type == "cuda"}, key=str)
            state = pyro.util.get_rng_state()
            cuda_states = [torch.cuda.get_rng_state(d) for d in cuda]
            entry[0].differentiable_loss(entry[1], entry[2], *args, **consts)  # compile
            pyro.util.set_rng_state(state)
            for d, s in zip(cuda, cuda_states):
                torch.cuda.set_rng_state(s, d)
        elbo, model, guide = entry
        return elbo.differentiable_loss(model, guide, *args, **consts)
