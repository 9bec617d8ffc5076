"""The model contract: what every model of the library shares.

* **Config.** Every model declares ``Config``, a dataclass whose field defaults are the model's only defaults.
  A model is built from keyword arguments (``MLVAE(content_dim=10)``), from a config (``MLVAE(MLVAEConfig())``)
  or both (``MLVAE(cfg, hidden=64)``); ``model.cfg`` is the dataclass and ``model.config`` its plain-dict
  ``asdict`` (what ``config.json`` and checkpoints store, and what :func:`~pyro_groupvae.load_run` rebuilds from).
  Field metadata (:func:`param`) carries the help text and choices that the command line shows.
* **Registry.** :func:`register_model` (a class decorator) puts a model into :data:`MODELS` under ``cls.name``
  and records the module of its experiment recipe (default ``pyro_groupvae.experiments.<model module>``).
* **Inference interface** (:class:`GroupModel`): ``encode(x, group=None)`` -> ``{site name: posterior}``,
  :meth:`GroupModel.get_latent_representation` -> numpy, ``decode``, ``sample``, ``reconstruct`` and the
  :meth:`GroupModel.eval_mode` context manager.

Posterior keys convention: ``encode`` returns a dict whose keys are the names of the model's latent sample sites
(the names used by ``pyro.sample`` in ``model`` and ``guide``) and whose values are ``torch`` distributions with
batch shape ``(N, ...)``: one row per image of ``x``. A group-level latent is returned per image: row ``i`` is
the posterior of the latent of image ``i``'s group. Discrete sites are returned too (e.g. UG-VAE's ``"d"``).
"""
from __future__ import annotations

import contextlib
import dataclasses
import inspect

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from torch import nn

from ..validation import (InputError, check_batchnorm_batch, check_group_index, check_model_images,
                          group_index_from_ids, validate_config)

#: name -> model class, filled by :func:`register_model` (complete after ``import pyro_groupvae.models``)
MODELS = {}


def register_model(cls=None, *, recipe=None):
    """Class decorator: add a :class:`GroupModel` subclass to :data:`MODELS` under ``cls.name``.

    :param str recipe: module defining the model's experiment recipe (its CLI ``train``/``evaluate``); default
        ``pyro_groupvae.experiments.<name of the model's module>``, imported only when a recipe is needed.

    The class also gets a constructor signature generated from its ``Config`` (for ``help()`` and IDEs).
    """
    def decorate(cls):
        if not (isinstance(cls, type) and issubclass(cls, GroupModel)):
            raise TypeError(f"register_model expects a GroupModel subclass, got {cls!r}")
        if not dataclasses.is_dataclass(cls.__dict__.get("Config")):
            raise TypeError(f"{cls.__name__} must declare its own Config dataclass (the single source of defaults)")
        cls.recipe_module = recipe or "pyro_groupvae.experiments." + cls.__module__.rsplit(".", 1)[-1]
        cls.__signature__ = config_signature(cls.Config)
        MODELS[cls.name] = cls
        return cls

    return decorate if cls is None else decorate(cls)


def param(default, help="", choices=None, cli=True, flag=None, negate=False):
    """A config field with its command-line description.

    :param default: the default value (the only place it is written).
    :param str help: one line for ``--help``.
    :param choices: allowed values (also enforced by argparse).
    :param bool cli: ``False`` for fields set from the data or by the recipe (``image_shape``, ``num_classes``).
    :param str flag: option name if not the field name (``"guide"`` for ``guide_type``); also the key of the
        recipe's options dict.
    :param bool negate: for a bool field defaulting to ``True``: the option is ``--<flag>``, storing ``True``
        when the field is ``False`` (``--no-bias`` for ``bias``).
    """
    meta = {"help": help, "choices": tuple(choices) if choices else None, "cli": cli, "flag": flag,
            "negate": negate}
    return dataclasses.field(default=default, metadata=meta)


# fields shared by several models, defined once
def image_shape_param():
    return param((1, 28, 28), "(C, H, W) of the images", cli=False)


def likelihood_param(default="normal"):
    return param(default, "normal (learned variance) or bernoulli (binary data)", ("normal", "bernoulli"))


def hidden_param():
    return param(500, "hidden units of the MLP networks")


def min_scale_param():
    return param(0.05, "floor of the Normal likelihood's standard deviation")


def config_signature(config_cls):
    """An ``inspect.Signature``: an optional config instance, then one keyword parameter per field."""
    params = [inspect.Parameter("config", inspect.Parameter.POSITIONAL_ONLY, default=None)]
    for f in dataclasses.fields(config_cls):
        if f.init:
            params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default,
                                            annotation=f.type))
    return inspect.Signature(params)


def option_key(f):
    """Key of a config field in a recipe's options dict (the command-line option's ``dest``)."""
    return (f.metadata.get("flag") or f.name).replace("-", "_")


def config_from_options(config_cls, opts, **fixed):
    """A config from command-line/recipe options: ``fixed`` values (from the data or the recipe) first, then the
    options present and not ``None`` (keyed by :func:`option_key`: ``--no-bias`` -> ``no_bias``), then the
    dataclass defaults."""
    names = {f.name for f in dataclasses.fields(config_cls)}
    unknown = set(fixed) - names
    if unknown:
        raise TypeError(f"{config_cls.__name__} has no field(s) {sorted(unknown)}")
    kw = {}
    for f in dataclasses.fields(config_cls):
        if not f.init:
            continue
        if f.name in fixed:
            kw[f.name] = fixed[f.name]
            continue
        value = opts.get(option_key(f))
        if value is None:
            continue
        kw[f.name] = (not value) if f.metadata.get("negate") else value
    return config_cls(**kw)


class GroupModel(nn.Module):
    """Base class: an ``nn.Module`` holding the networks, with Pyro ``model`` and ``guide`` methods.

    A subclass declares ``name`` and ``Config`` (a dataclass), is decorated with :func:`register_model`, calls
    ``super().__init__(*args, **kwargs)`` first (which sets ``self.cfg`` and ``self.config``), and implements
    ``model``, ``guide``, ``batch_inputs`` and the inference interface ``encode``, ``decode``, ``sample``
    (``reconstruct`` and :meth:`get_latent_representation` are built on them here). ``pyro.module`` registers
    the networks under :attr:`pyro_name` in both ``model`` and ``guide``.
    """

    #: name in the model registry and in the Pyro param store
    name = "groupmodel"
    #: the config dataclass (each registered model declares its own)
    Config = None
    #: latent sites concatenated by :meth:`get_latent_representation` by default (keys of :meth:`encode`)
    latent_sites = ()
    #: the group-level latent site, if the model has one (its posterior pools the images of a group)
    group_site = None
    #: whether :meth:`encode` needs the labels ``y`` (conditional models)
    needs_labels = False
    #: ``"amortized"`` (an encoder gives the posterior) or ``"svi"`` (free per-observation posterior parameters)
    guide_type = "amortized"
    #: how many nested plates ``model``/``guide`` use (groups and observations at ``dim=-1``: 1; UG-VAE's grid: 2):
    #: the ``max_plate_nesting`` of its ELBOs (Pyro need not guess it) and of ``infer_discrete`` (enumeration to its
    #: left)
    max_plate_nesting = 1

    def __init__(self, *args, **kwargs):
        super().__init__()
        self.cfg = self.normalize_config(self.make_config(*args, **kwargs))
        self.config = dataclasses.asdict(self.cfg)
        validate_config(self.config, self.name)  # hidden=0, min_scale=-1, ...: refused up front

    @classmethod
    def make_config(cls, *args, **kwargs):
        """The ``Config`` of constructor arguments: an optional config instance, then the fields positionally (in
        field order) or by keyword; keywords override the instance's values."""
        C = cls.Config
        base = None
        if args and dataclasses.is_dataclass(args[0]) and not isinstance(args[0], type):
            if not isinstance(args[0], C):
                raise TypeError(f"{cls.__name__} takes a {C.__name__}, got a {type(args[0]).__name__}")
            base, args = args[0], args[1:]
        names = [f.name for f in dataclasses.fields(C) if f.init]
        if len(args) > len(names):
            raise TypeError(f"{cls.__name__}() takes at most {len(names)} positional arguments ({len(args)} given)")
        for name, value in zip(names, args):
            if name in kwargs:
                raise TypeError(f"{cls.__name__}() got multiple values for argument {name!r}")
            kwargs[name] = value
        unknown = sorted(set(kwargs) - set(names))
        if unknown:
            raise TypeError(f"{cls.__name__}() got unexpected keyword argument(s) {unknown}; its options are the "
                            f"fields of {C.__name__}: {names}")
        return dataclasses.replace(base, **kwargs) if base is not None else C(**kwargs)

    def normalize_config(self, cfg):
        """Canonical form of a config (subclasses resolve derived defaults here); stored as ``self.cfg``."""
        if hasattr(cfg, "image_shape"):
            cfg = dataclasses.replace(cfg, image_shape=tuple(int(v) for v in cfg.image_shape))
        return cfg

    #: per-class counters giving every instance its own default :attr:`pyro_name`
    _instances = {}

    @property
    def pyro_name(self):
        """Prefix of this instance's parameters in Pyro's param store (``<pyro_name>$$$<parameter path>``).

        One naming scheme for every model: the whole module is registered under this one name, in ``model`` and
        in ``guide``. The default is the registry name for the first instance of a class in a process
        (``"mlvae"``), then ``"mlvae_1"``, ``"mlvae_2"``, ... so that two live instances never share (or
        overwrite) each other's entries. Set it to load a param-store file into another instance::

            pyro.get_param_store().save("params.pt")          # trained model, pyro_name "mlvae"
            new = MLVAE(**model.config); new.pyro_name = "mlvae"
            pyro.get_param_store().load("params.pt")
            new.model(x)   # pyro.module(..., update_module_params=True): new now uses the loaded weights
        """
        name = self.__dict__.get("_pyro_name")
        if name is None or self.__dict__.get("_pyro_name_of") != id(self):
            # first use, or a copy (copy.deepcopy, pickle): a copy gets its own name, never its original's
            k = GroupModel._instances.get(self.name, 0)
            GroupModel._instances[self.name] = k + 1
            name = self.name if k == 0 else f"{self.name}_{k}"
            self.__dict__.update(_pyro_name=name, _pyro_name_of=id(self))
        return name

    @pyro_name.setter
    def pyro_name(self, value):
        if not isinstance(value, str) or not value or "$$$" in value:
            raise ValueError(f"pyro_name must be a non-empty string without '$$$', got {value!r}")
        self.__dict__.update(_pyro_name=value, _pyro_name_of=id(self))

    def register(self):
        """``pyro.module(self.pyro_name, self, update_module_params=True)``: puts this model's parameters into the
        param store under :attr:`pyro_name`, or -- when the store already holds tensors under those names (after
        ``pyro.get_param_store().load(...)``, or a store shared with an instance of the same ``pyro_name``) --
        makes the module use the store's tensors. This is Pyro's documented save/load route; entries of other
        instances are never touched. ``model.load_state_dict(...)`` copies into the registered tensors in place,
        so the store follows it. Inside :meth:`registered_once` it does nothing (registered already).
        """
        if not self._registered:
            pyro.module(self.pyro_name, self, update_module_params=True)

    #: true inside :meth:`registered_once`: :meth:`register` (the per-call ``pyro.module``) is skipped
    _registered = False

    @contextlib.contextmanager
    def registered_once(self):
        """``with model.registered_once():`` -- :meth:`register` once, then skip the per-call ``pyro.module`` of
        ``model``/``guide`` inside the block (the training loop): the optimiser holds the module's own parameters,
        which are the store's tensors, so re-registering them every step (30 ``pyro.param`` calls for ML-VAE,
        about 5% of a step) changes nothing. The previous state is restored after the block (also on errors)."""
        self.register()
        old = self._registered
        self._registered = True
        try:
            yield self
        finally:
            self._registered = old

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
        tracing = torch.jit.is_tracing()  # no check frozen into a JIT trace
        if not tracing:
            check_batchnorm_batch(self, x.shape[0])  # always on: no host sync; a clear error, not a shape dump
        checks = self._checks and not tracing
        if group_index is None:
            if checks:
                check_model_images(self, x)
            return torch.arange(x.shape[0], device=x.device), x.shape[0]
        group_index = group_index.to(x.device) if torch.is_tensor(group_index) else \
            torch.as_tensor(group_index, device=x.device)
        if not checks:
            return group_index, int(group_index.max()) + 1 if num_groups is None else num_groups
        check_model_images(self, x)
        return check_group_index(group_index, x.shape[0], num_groups)

    def check_dataset(self, data):
        """Validate a whole dataset once (shape, NaN, binary data for a Bernoulli likelihood)."""
        check_model_images(self, data.x, name=data.name or "data", per_call=False)

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

    # ------------------------------------------------------------------ inference interface
    @contextlib.contextmanager
    def eval_mode(self):
        """``with model.eval_mode():`` -- evaluation mode (batch norm statistics, no dropout) inside the block,
        the previous training/evaluation mode restored after it (also on errors)."""
        was_training = self.training
        self.eval()
        try:
            yield self
        finally:
            self.train(was_training)

    def encode(self, x, group=None, **kwargs):
        """Posteriors of the latent sites for images ``x`` ``(N, C, H, W)``: a dict ``{site name: distribution}``
        with batch shapes ``(N, ...)`` (see the module docstring for the convention).

        :param group: integer ids ``(N,)``; images with the same id share their group-level latent (its posterior
            pools their evidence). ``None``: the model's default (documented per model). Models without a
            group-level latent ignore it.
        """
        raise NotImplementedError

    def decode(self, *latents, **named):
        """Mean images for latent values given by site name (e.g. ``decode(content=c, style=s)``)."""
        raise NotImplementedError

    def sample(self, n, *args, **kwargs):
        """``n`` mean images ``(n, C, H, W)`` decoded from draws of the prior."""
        raise NotImplementedError

    @torch.no_grad()
    def reconstruct(self, x, group=None, **kwargs):
        """Mean reconstruction of ``x`` from the posterior means of :attr:`latent_sites`."""
        post = self.encode(x, group, **kwargs)
        return self.decode(**{k: post[k].mean for k in self.latent_sites})

    def latent_point(self, site, q):
        """Point summary of the posterior ``q`` of ``site`` used by :meth:`get_latent_representation`: the mean;
        for a categorical site the class probabilities."""
        if isinstance(q, (dist.Categorical, dist.OneHotCategorical)):
            return q.probs
        return q.mean

    @torch.no_grad()
    def get_latent_representation(self, data, batch_size=256, group=None, latents=None, y=None):
        """Posterior point estimates of the latents, as a numpy array ``(N, D)`` for scikit-learn, UMAP or pandas.

        Runs batched, without gradients, in evaluation mode, on the model's device (results on the CPU).

        :param data: an :class:`~pyro_groupvae.data.ImageDataset`, a tensor or a numpy array of images
            ``(N, C, H, W)``.
        :param int batch_size: images per forward pass (a batch never splits a group; a group larger than
            ``batch_size`` is one batch).
        :param group: integer ids ``(N,)`` (e.g. ``data.y``): images with the same id share their group-level
            latent. ``None``: every image is its own group.
        :param latents: site name or names, concatenated in this order; default :attr:`latent_sites`. Each
            contributes its posterior mean flattened per image (class probabilities for a discrete site).
        :param y: labels ``(N,)`` for conditional models (default ``data.y`` for a dataset).
        :returns: ``numpy.ndarray`` of the model's float dtype, one row per image in the order of ``data``.
        """
        x = data.x if hasattr(data, "x") else data
        if y is None and self.needs_labels and hasattr(data, "y"):
            y = data.y
        x = torch.as_tensor(np.asarray(x) if not torch.is_tensor(x) else x)
        if x.dim() != 4 or x.shape[0] == 0:
            raise InputError(f"get_latent_representation needs images (N, C, H, W) with N >= 1, got shape "
                             f"{tuple(x.shape)}")
        n = x.shape[0]
        if self.needs_labels and y is None:
            raise InputError(f"{type(self).__name__} encodes with the labels: pass y=... (one label per image)")
        latents = (latents,) if isinstance(latents, str) else tuple(latents or self.latent_sites)
        gi, num_groups = group_index_from_ids(None if group is None else torch.as_tensor(np.asarray(group)
                                                                                        if not torch.is_tensor(group)
                                                                                        else group), n)
        # batches of whole groups: rows sorted by group, cut where the running size would pass batch_size
        order = torch.argsort(gi, stable=True)
        sizes = torch.bincount(gi, minlength=num_groups).tolist()
        bounds, start, size = [0], 0, 0
        for s in sizes:
            if size and size + s > batch_size:
                bounds.append(start)
                size = 0
            start += s
            size += s
        bounds.append(n)
        dtype = next(self.parameters()).dtype
        out = []
        with self.eval_mode():
            for a, b in zip(bounds[:-1], bounds[1:]):
                if a == b:
                    continue
                rows = order[a:b]
                xb = x[rows].to(self.device, dtype)
                kw = {"y": torch.as_tensor(y)[rows].to(self.device)} if self.needs_labels else {}
                post = self.encode(xb, gi[rows].to(self.device), **kw)
                missing = [k for k in latents if k not in post]
                if missing:
                    raise InputError(f"{type(self).__name__} has no latent {missing}; choose from {sorted(post)}")
                out.append(torch.cat([self.latent_point(k, post[k]).reshape(len(rows), -1).to(dtype)
                                      for k in latents], -1).cpu())
        res = torch.cat(out)
        result = torch.empty_like(res)
        result[order] = res  # back to the order of data
        return result.numpy()
