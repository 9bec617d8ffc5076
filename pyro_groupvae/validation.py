"""Input checks shared by every model: clear errors instead of silent wrong answers or deep stack traces.

The exception types live in :mod:`pyro_groupvae.errors`; :class:`InputError` is re-exported here.
"""
from __future__ import annotations

import json
import math
import numbers
import os
from pathlib import Path

import torch
from pyro.poutine.runtime import am_i_wrapped

from .errors import ConfigError, DataError, DeviceError, InputError, RunFolderError, TrainingError

__all__ = [
    "InputError",
    "check_images",
    "check_model_images",
    "check_batchnorm_batch",
    "check_group_index",
    "check_labels",
    "check_label_set",
    "group_index_from_ids",
    "relabel",
    "validate_config",
    "validate_options",
    "resolve_device",
    "check_run_dir",
    "read_json_config",
    "check_finite_loss",
]

#: slack allowed around [0, 1] for images under the Normal likelihood (resampling can overshoot by a hair)
RANGE_TOL = 1e-4


def _range_advice(lo, hi):
    if lo >= 0 and hi > 1 and hi <= 255:
        return "they look like 0..255 pixel values: divide by 255"
    if lo >= -1 - RANGE_TOL and hi <= 1 + RANGE_TOL and lo < 0:
        return "they look like -1..1 images: map them with (x + 1) / 2"
    return "rescale them to [0, 1], e.g. (x - x.min()) / (x.max() - x.min())"


def check_images(x, image_shape, likelihood=None, name="x", dtype=None, device=None):
    """Check a batch of images ``(N, C, H, W)``: a floating tensor of the expected shape (and, when given, the
    model's ``dtype`` and ``device``), finite, in ``[0, 1]`` under the Normal likelihood (whose mean is a
    sigmoid) and binary under the Bernoulli likelihood."""
    if not torch.is_tensor(x):
        raise InputError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not torch.is_floating_point(x):
        hint = ": convert 0..255 pixels with x.float() / 255" if x.dtype == torch.uint8 else \
            ": convert with x.float() (images are floating point in [0, 1])"
        raise InputError(f"{name} must be a floating-point tensor, got dtype {x.dtype}{hint}")
    if dtype is not None and x.dtype != dtype:
        raise InputError(f"{name} has dtype {x.dtype} but the model's parameters are {dtype}: convert the images "
                         f"with x.to({dtype}) (or the model with model.to({x.dtype}))")
    if x.dim() != 4 or tuple(x.shape[1:]) != tuple(image_shape):
        raise InputError(
            f"{name} must have shape (N, {', '.join(map(str, image_shape))}), got {tuple(x.shape)}"
        )
    if x.shape[0] == 0:
        raise InputError(f"{name} is empty (0 observations)")
    if device is not None and x.device != torch.device(device):
        raise InputError(f"{name} is on {x.device} but the model is on {device}: move it with x.to('{device}')")
    if not torch.isfinite(x).all():
        n_bad = int((~torch.isfinite(x)).flatten(1).any(1).sum())
        raise InputError(f"{name} contains NaN or infinite values (in {n_bad} of {x.shape[0]} images)")
    if likelihood == "bernoulli" and not ((x == 0) | (x == 1)).all():
        raise InputError(
            f"{name} is not binary but the likelihood is Bernoulli: binarise the data "
            "(ImageDataset.binarized()) or use likelihood='normal'"
        )
    if likelihood == "normal":
        lo, hi = float(x.min()), float(x.max())
        if lo < -RANGE_TOL or hi > 1 + RANGE_TOL:
            raise InputError(
                f"{name} has values in [{lo:.4g}, {hi:.4g}] but the Normal likelihood's mean is a sigmoid in "
                f"(0, 1), so images must lie in [0, 1]: {_range_advice(lo, hi)}")
    return x


def _has_batchnorm(module):
    flag = getattr(module, "_rel_has_batchnorm", None)
    if flag is None:
        # BatchNorm1d normalises each feature over the batch alone: undefined for one image (BatchNorm2d also
        # averages over pixels, so it works)
        flag = any(isinstance(m, torch.nn.BatchNorm1d) for m in module.modules())
        object.__setattr__(module, "_rel_has_batchnorm", flag)
    return flag


def check_batchnorm_batch(module, n):
    """A batch of one image cannot train a network with batch normalisation (its batch variance is undefined):
    a clear error instead of a shape dump from deep inside Pyro. Only inside a Pyro trace (a model/guide call
    of a training step; ``encode`` and friends switch to eval mode themselves). No host synchronisation."""
    if n == 1 and module.training and am_i_wrapped() and _has_batchnorm(module):
        raise InputError(
            "a training batch holds a single image, but the network uses batch normalisation, which needs at "
            "least 2 images per batch: choose a batch size that leaves no last batch of one image (or drop the "
            "last batch, drop_last=True), or call model.eval() to encode/score single images")


def _model_dtype_device(model):
    p = next(iter(model.parameters()), None)
    return (None, None) if p is None else (p.dtype, p.device)


def check_model_images(model, x, name="x", per_call=True):
    """:func:`check_images` against a model's config (``image_shape``, ``likelihood``) and its parameters' dtype
    (and device, for ``per_call`` checks of a batch; a whole dataset may stay on the CPU)."""
    dtype, device = _model_dtype_device(model)
    check_images(x, model.config["image_shape"], model.config.get("likelihood"), name=name, dtype=dtype,
                 device=device if per_call else None)
    return x


def check_group_index(group_index, n, num_groups=None, name="group_index"):
    """Check per-observation group ids: integer, length ``n``, in ``0..num_groups-1``, no empty group.

    :returns: ``(group_index, num_groups)``.
    """
    if not torch.is_tensor(group_index):
        group_index = torch.as_tensor(group_index)
    if group_index.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise InputError(f"{name} must be an integer tensor, got dtype {group_index.dtype}")
    if group_index.dim() != 1 or group_index.shape[0] != n:
        raise InputError(f"{name} must have shape ({n},) (one group id per observation), "
                         f"got {tuple(group_index.shape)}")
    group_index = group_index.long()
    if n and int(group_index.min()) < 0:
        raise InputError(f"{name} has negative group ids")
    if num_groups is None:
        num_groups = int(group_index.max()) + 1 if n else 0
    if n and int(group_index.max()) >= num_groups:
        raise InputError(f"{name} has group id {int(group_index.max())} but num_groups={num_groups}: ids must lie "
                         f"in 0..{num_groups - 1} (renumber groups with torch.unique(..., return_inverse=True))")
    counts = torch.bincount(group_index, minlength=num_groups)
    if (counts == 0).any():
        empty = torch.nonzero(counts == 0).flatten().tolist()
        raise InputError(f"empty group(s) {empty[:10]}: every group id in 0..{num_groups - 1} needs at least "
                         "one observation (renumber groups with torch.unique(..., return_inverse=True))")
    return group_index, num_groups


def _offending(values, limit=10):
    values = sorted(set(int(v) for v in values))
    more = f" and {len(values) - limit} more" if len(values) > limit else ""
    return ", ".join(map(str, values[:limit])) + more


def check_labels(y, n, num_classes, name="y"):
    """Check class labels: integer, length ``n``, in ``0..num_classes-1`` (the message lists offending values)."""
    if not torch.is_tensor(y):
        y = torch.as_tensor(y)
    if y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
        raise InputError(f"{name} must be integer class labels, got dtype {y.dtype}: convert with y.long()")
    if y.dim() != 1 or y.shape[0] != n:
        raise InputError(f"{name} must have shape ({n},) to match the batch, got {tuple(y.shape)}")
    if n and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        bad = y[(y < 0) | (y >= num_classes)]
        raise InputError(f"{name} has labels outside 0..{num_classes - 1}: {_offending(bad.tolist())} "
                         f"({bad.numel()} of {n} rows); fix or drop those rows, or build the model with more "
                         "classes")
    return y.long()


def check_label_set(y, classes, source="the dataset"):
    """Labels of a dataset against the classes it declares (e.g. MNIST's 0..9): a stray label must not silently
    add classes. ``classes`` is a number of classes or a collection of allowed values."""
    y = torch.as_tensor(y)
    allowed = torch.arange(int(classes)) if isinstance(classes, int) else torch.as_tensor(list(classes))
    bad_mask = ~torch.isin(y.long(), allowed.long())
    if bool(bad_mask.any()):
        bad = y[bad_mask]
        rows = torch.nonzero(bad_mask).flatten()[:5].tolist()
        declared = f"0..{int(classes) - 1}" if isinstance(classes, int) else str(sorted(allowed.tolist()))
        raise DataError(f"{source} has labels outside its declared classes {declared}: "
                         f"{_offending(bad.tolist())} ({bad.numel()} row(s), first at row(s) {rows}); fix or remove "
                         "those rows")
    return y


def group_index_from_ids(group_ids, n, device=None):
    """Per-observation group ids of any integers -> ``(group_index in 0..G-1, G)``; ``None`` means every
    observation is its own group. Raises a clear error for ids of the wrong length."""
    if group_ids is None:
        return torch.arange(n, device=device), n
    group_ids = torch.as_tensor(group_ids, device=device)
    if group_ids.shape != (n,):
        raise InputError(f"group_ids must have shape ({n},), got {tuple(group_ids.shape)}")
    return relabel(group_ids)


def relabel(group_ids):
    """Map arbitrary integer group ids to ``0..G-1``; returns ``(group_index, num_groups)``."""
    uniq, inverse = torch.unique(torch.as_tensor(group_ids), return_inverse=True)
    return inverse, len(uniq)


# ------------------------------------------------------------------------------------------------ options
# One table of rules, by option name, shared by every model's config and by the command line (where the option
# ``min_scale`` is ``--min-scale``): ``name -> (kind, lower bound, strict, what it is)``.
_INT, _FLOAT = "int", "float"
OPTION_RULES = {
    # networks
    "hidden": (_INT, 1, False, "the number of hidden units, the paper's MNIST networks use 500"),
    "cluster_hidden": (_INT, 1, False, "hidden units of the cluster networks"),
    "global_hidden": (_INT, 1, False, "hidden units of the global encoder"),
    "width": (_FLOAT, 0, True, "the multiplier of hidden widths, 1 = the paper"),
    "min_scale": (_FLOAT, 0, True, "the floor of the Normal likelihood's standard deviation, default 0.05"),
    "max_abs_log_var": (_FLOAT, 0, True, "the bound on log-variances, default 5"),
    # latent sizes
    "content_dim": (_INT, 0, False, "the size of the content latent, 0 = no content"),
    "style_dim": (_INT, 1, False, "the size of the style latent"),
    "latent_dim": (_INT, 1, False, "the size of the latent"),
    "local_dim": (_INT, 1, False, "the size of the local latent z"),
    "global_dim": (_INT, 1, False, "the size of the global latent beta"),
    "num_clusters": (_INT, 1, False, "the number of clusters K"),
    "class_dim": (_INT, 1, False, "the size of each class block"),
    "shared_dim": (_INT, 0, False, "the size of the shared latent"),
    "num_classes": (_INT, 2, False, "the number of classes"),
    "continuous_dim": (_INT, 1, False, "the size of the continuous latent"),
    "discrete_vars": (_INT, 0, False, "the number of discrete latent variables"),
    "discrete_classes": (_INT, 2, False, "the number of values of each discrete variable"),
    "num_train_obs": (_INT, 1, False, "the number of training observations"),
    "num_train_groups": (_INT, 1, False, "the number of training groups"),
    # objective weights and priors
    "temperature": (_FLOAT, 0, True, "the Concrete relaxation temperature, paper: 0.67"),
    "alpha_p": (_FLOAT, 0, True, "the Dirichlet prior concentration"),
    "alpha_q": (_FLOAT, 0, True, "the total concentration of q(pi|x)"),
    "beta_c": (_FLOAT, 0, False, "the weight of the class-latent KL"),
    "class_weight": (_FLOAT, 0, True, "the weight of the class term"),
    "min_concentration": (_FLOAT, 0, False, "the floor on the Dirichlet concentrations"),
    "style_beta": (_FLOAT, 0, False, "the weight of the style KL"),
    "alpha": (_FLOAT, 0, False, "an objective weight"),
    "beta": (_FLOAT, 0, False, "an objective weight"),
    "gamma": (_FLOAT, 0, False, "an objective weight"),
    "delta": (_FLOAT, 0, False, "an objective weight"),
    # training (command line / fit)
    "epochs": (_INT, 1, False, "the number of epochs"),
    "lr": (_FLOAT, 0, True, "the learning rate, the paper's Adam uses 1e-3"),
    "batch_size": (_INT, 1, False, "the number of images per batch"),
    "batch_groups": (_INT, 1, False, "the number of groups per batch"),
    "group_size": (_INT, 1, False, "the number of images per group"),
    "max_group_size": (_INT, 1, False, "the largest group size"),
    "batches_per_step": (_INT, 1, False, "the number of random batches per step"),
    "num_images": (_INT, 1, False, "the number of images to keep"),
    "clip_norm": (_FLOAT, 0, True, "the gradient-norm clipping threshold"),
    "num_nodes": (_INT, 1, False, "the number of machines"),
    "num_workers": (_INT, 0, False, "the number of data-loader worker processes"),
}
_CHOICES = {"likelihood": ("normal", "bernoulli"), "group_posterior": ("product", "mixture"),
            "content_sample": ("group", "observation"), "guide_type": ("amortized", "svi"),
            "objective": ("paper", "marginal"), "class_objective": ("kl", "surrogate")}


_FLAGS = {"guide_type": "--guide"}  # command-line names that are not the option name with dashes


def _flag(name):
    return _FLAGS.get(name, "--" + name.replace("_", "-"))


def _check_option(name, value, where, none_ok=True):
    """``none_ok``: ``None`` (an option not given) passes; a model config refuses it for a choice."""
    if value is None and (none_ok or name not in _CHOICES) or name not in OPTION_RULES and name not in _CHOICES:
        return
    if name in _CHOICES:
        if value not in _CHOICES[name]:
            raise ConfigError(f"{where}{name}={value!r} is not valid: choose one of {list(_CHOICES[name])} "
                              f"({_flag(name)} on the command line)")
        return
    kind, low, strict, what = OPTION_RULES[name]
    bound = f"> {low}" if strict else f">= {low}"
    need = f"an integer {bound}" if kind == _INT else f"a finite number {bound}"
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if ok:
        value_f = float(value)
        ok = math.isfinite(value_f) and (value_f > low if strict else value_f >= low)
        if ok and kind == _INT:
            ok = isinstance(value, numbers.Integral) or value_f.is_integer()
    if not ok:
        raise ConfigError(f"{where}{name}={value!r} is not valid ({what}): it must be {need}; set {_flag(name)} "
                          f"on the command line or {name}= in Python")


def validate_config(config, model_name=None):
    """Check a model's options (a config dict or dataclass) against :data:`OPTION_RULES` up front, so that
    ``hidden=0`` or ``min_scale=-1`` are refused with the right advice instead of training a broken network or
    failing later for another reason. Raises :class:`~pyro_groupvae.errors.ConfigError`."""
    if not isinstance(config, dict):
        import dataclasses

        config = dataclasses.asdict(config)
    where = f"{model_name}: " if model_name else ""
    for name, value in config.items():
        _check_option(name, value, where, none_ok=False)
    shape = config.get("image_shape")
    if shape is not None:
        try:
            ok = len(shape) == 3 and all(int(v) == v and int(v) >= 1 for v in shape)
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ConfigError(f"{where}image_shape={shape!r} is not valid: it must be (channels, height, width) "
                              "with positive integers, e.g. (1, 28, 28)")
    return config


def validate_options(options, skip=(), required=()):
    """Command-line options (``vars(args)``, or :func:`~pyro_groupvae.infer.fit`'s arguments) against
    :data:`OPTION_RULES`; unknown names are ignored, and so is ``None`` (not given) unless the name is ``required``."""
    for name in required:
        if options.get(name) is None:
            raise ConfigError(f"{name} is required ({OPTION_RULES[name][3]}): set {_flag(name)} on the command line "
                              f"or {name}= in Python")
    for name, value in options.items():
        if name not in skip:
            _check_option(name, value, "")
    devices = options.get("devices")
    if isinstance(devices, int) and not isinstance(devices, bool) and devices < 1:
        raise ConfigError(f"devices={devices!r} is not valid: give a number >= 1, a list of GPU ids or 'auto' "
                          "(--devices)")
    frac = options.get("labelled_fraction")
    if frac is not None and not (0 < frac <= 1):
        raise ConfigError(f"labelled_fraction={frac!r} is not valid: the fraction of labelled training images must "
                          "lie in (0, 1] (--labelled-fraction)")
    return options


# ------------------------------------------------------------------------------------------------ environment
def resolve_device(device=None):
    """``"auto"``/``None`` -> CUDA when available, else CPU; otherwise ``torch.device(device)``. Unknown names
    (``"gpu"``) and devices not available here (``"cuda"`` without CUDA, ``"cuda:3"`` on a 1-GPU machine) raise
    :class:`~pyro_groupvae.errors.DeviceError`."""
    if isinstance(device, torch.device):
        dev = device
    elif device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            dev = torch.device(device)
        except (RuntimeError, TypeError, ValueError):
            raise DeviceError(f"unknown device {device!r}: use 'cpu', 'cuda', 'cuda:<index>' or 'auto'") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"device {str(device)!r} was requested but CUDA is not available on this machine "
                              "(torch.cuda.is_available() is False): use --device cpu (or 'auto')")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DeviceError(f"device {str(device)!r} does not exist: this machine has "
                              f"{torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise DeviceError(f"device {str(device)!r} was requested but MPS is not available: use 'cpu'")
    elif dev.type not in ("cpu",):
        raise DeviceError(f"device {str(device)!r} is not supported: use 'cpu', 'cuda', 'cuda:<index>' or 'auto'")
    return dev


def check_run_dir(path, create=False):
    """A run folder must be a folder (or not exist yet) and not lie under a regular file; ``create`` makes it.
    Raises :class:`~pyro_groupvae.errors.RunFolderError` naming the file in the way."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise RunFolderError(f"run folder {path} is an existing file, not a folder: choose another --out / out_dir")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise RunFolderError(f"run folder {path} cannot be created: {parent} is a regular file, not a "
                                     "folder; choose another --out / out_dir")
            if not os.access(parent, os.W_OK) and not path.exists():
                raise RunFolderError(f"run folder {path} cannot be created: {parent} is not writable; choose "
                                     "another --out / out_dir")
            break
    if create:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise RunFolderError(f"run folder {path} cannot be created ({e.strerror or e}); choose another "
                                 "--out / out_dir") from None
    return path


def read_json_config(path, required=(), what="run config"):
    """Read a JSON object from ``path`` with errors that name the file: missing, invalid JSON, not an object,
    or missing one of the ``required`` keys (:class:`~pyro_groupvae.errors.ConfigError`)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} {path} does not exist: is {path.parent} a run folder written by "
                          "`pyro-groupvae train`?")
    try:
        cfg = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{what} {path} is not valid JSON ({e}): restore it from a backup, or train into a "
                          "new run folder") from None
    if not isinstance(cfg, dict):
        raise ConfigError(f"{what} {path} must hold a JSON object, got {type(cfg).__name__}: restore it or train "
                          "into a new run folder")
    missing = [k for k in required if k not in cfg]
    if missing:
        raise ConfigError(f"{what} {path} lacks {', '.join(map(repr, missing))} (it is incomplete or not written "
                          "by pyro-groupvae): restore it, or train into a new run folder")
    return cfg


def check_finite_loss(loss, epoch=None, step=None):
    """A NaN/inf loss stops training with :class:`~pyro_groupvae.errors.TrainingError` and advice."""
    if not math.isfinite(loss):
        at = " at" + (f" epoch {epoch}" if epoch is not None else "") + (f" step {step}" if step is not None else "")
        raise TrainingError(f"non-finite loss {loss}{at if at != ' at' else ''}: lower the learning rate (--lr), "
                            "check the data (range, NaN) or clip gradients")
    return loss
