"""Models: one file per paper, model and guide side by side.

:data:`MODELS` maps a name to its class; every class is a :class:`~pyro_groupvae.models.base.GroupModel` whose
constructor arguments (``model.config``) rebuild it.
"""
from .base import GroupModel
from .mlvae import MLVAE, VAE

MODELS = {"mlvae": MLVAE, "vae": VAE}


def __getattr__(name):
    """``from pyro_groupvae.models import UGVAE, NVAE, CVAE, HFVAE`` (imported on first use)."""
    where = {"UGVAE": "ugvae", "NVAE": "nvae", "CVAE": "nvae", "HFVAE": "hfvae"}
    if name in where:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{where[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def register_model(cls):
    """Class decorator adding a model to :data:`MODELS` under ``cls.name``."""
    MODELS[cls.name] = cls
    return cls


def build_model(name, **config):
    """Instantiate a registered model from its config."""
    _import_all()
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known: {sorted(MODELS)}")
    return MODELS[name](**config)


def _import_all():
    """Import the optional model modules so that they register themselves."""
    import importlib

    for mod in ("ugvae", "nvae", "hfvae"):
        try:
            importlib.import_module(f"{__name__}.{mod}")
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{mod}":
                raise


__all__ = ["GroupModel", "MLVAE", "VAE", "MODELS", "build_model", "register_model"]
