"""What every model of the library shares: config for checkpoints, Pyro registration, batching, checks."""
from __future__ import annotations

import contextlib

import pyro
import torch
from torch import nn

from ..validation import check_group_index, check_images


class GroupModel(nn.Module):
    """Base class: an ``nn.Module`` holding the networks, with Pyro ``model`` and ``guide`` methods.

    Subclasses call ``super().__init__(**config)`` with JSON-serialisable constructor arguments, so that
    :func:`pyro_groupvae.load_run` can rebuild them, and implement ``model``, ``guide`` and ``batch_inputs``.
    ``pyro.module`` registers the networks under :attr:`pyro_name` in both ``model`` and ``guide``.
    """

    #: name in the model registry and in the Pyro param store
    name = "groupmodel"

    def __init__(self, **config):
        super().__init__()
        self.config = dict(config)

    @property
    def pyro_name(self):
        return self.name

    def register(self, *parts):
        """``pyro.module`` this model, or only its sub-modules ``parts`` (attribute names): a model registers
        the networks it uses (e.g. the decoder) and the guide its own (the encoder), which halves the number of
        param sites traced per step.

        If the param store holds tensors of another instance under the same names (two models built in one
        process), they are dropped first, so the store never trains a stale copy while this module's own
        parameters stay untouched.
        """
        store = pyro.get_param_store()
        for name, module in ([(self.pyro_name, self)] if not parts else
                             [(f"{self.pyro_name}.{p}", getattr(self, p)) for p in parts]):
            prefix = name + "$$$"
            first = next(((n, p) for n, p in module.named_parameters() if p.requires_grad), None)
            if first is not None and prefix + first[0] in store._params and store._params[prefix + first[0]] \
                    is not first[1]:
                for key in [k for k in store.keys() if k.startswith(prefix)]:
                    del store[key]
            pyro.module(name, module)

    @property
    def device(self):
        return next(self.parameters()).device

    def default_elbo(self):
        """The ELBO this model trains with by default."""
        return pyro.infer.TraceMeanField_ELBO()

    #: per-call input checks in ``model``/``guide``; :meth:`trusted_inputs` turns them off
    _checks = True

    def check_inputs(self, x, group_index=None, num_groups=None):
        """Validate images and group ids; returns ``(group_index, num_groups)``."""
        if group_index is None:
            if self._checks:
                check_images(x, self.config["image_shape"], self.config.get("likelihood"))
            return torch.arange(x.shape[0], device=x.device), x.shape[0]
        if not self._checks:
            return group_index, int(group_index.max()) + 1 if num_groups is None else num_groups
        check_images(x, self.config["image_shape"], self.config.get("likelihood"))
        return check_group_index(group_index, x.shape[0], num_groups)

    def check_dataset(self, data):
        """Validate a whole dataset once (shape, NaN, binary data for a Bernoulli likelihood)."""
        check_images(data.x, self.config["image_shape"], self.config.get("likelihood"), name=data.name or "data")

    @contextlib.contextmanager
    def trusted_inputs(self):
        """Skip the per-call input checks (the training loop validates the dataset once, and the samplers
        build well-formed group ids), saving their cost in every step."""
        old = self._checks
        self._checks = False
        try:
            yield self
        finally:
            self._checks = old

    def batch_inputs(self, data, batch, device=None):
        """Keyword arguments of ``model``/``guide`` for one :class:`~pyro_groupvae.data.samplers.GroupBatch`
        of dataset ``data``."""
        device = device or self.device
        return dict(
            x=data.x[batch.indices].to(device),
            group_index=batch.group_index.to(device),
            num_groups=batch.num_groups,
        )
