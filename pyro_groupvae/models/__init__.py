"""Models: one file per paper, model and guide side by side.

:data:`MODELS` maps a registry name to its class. Every module of this package is imported here, so a model
registers itself (:func:`~pyro_groupvae.models.base.register_model`) by being in a file of this folder; models
of other packages register through the entry-point group ``pyro_groupvae.models``. Every registered class is
exported under its class name (``from pyro_groupvae.models import MLVAE, UGVAE``).
"""
import importlib
import pkgutil

from .base import MODELS, GroupModel, register_model


def _discover():
    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")
    from importlib.metadata import entry_points

    try:
        eps = entry_points(group="pyro_groupvae.models")
    except TypeError:  # Python 3.9: no selection by group
        eps = entry_points().get("pyro_groupvae.models", [])
    for ep in eps:
        try:
            ep.load()
        except Exception as e:  # a broken third-party plug-in must not break the library
            import warnings

            warnings.warn(f"pyro_groupvae: model entry point {ep.name!r} failed to load ({type(e).__name__}: {e})")


_discover()
globals().update({cls.__name__: cls for cls in MODELS.values()})
for _cls in MODELS.values():
    globals()[_cls.Config.__name__] = _cls.Config


def build_model(name, *config, **kwargs):
    """Instantiate the registered model ``name`` from its config (a ``Config`` instance and/or keywords)."""
    return get_model(name)(*config, **kwargs)


def get_model(name):
    """The registered model class ``name``."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known: {sorted(MODELS)}")
    return MODELS[name]


__all__ = ["GroupModel", "MODELS", "build_model", "get_model", "register_model"] + sorted(
    {c.__name__ for c in MODELS.values()} | {c.Config.__name__ for c in MODELS.values()})
