"""pyro_groupvae: Pyro models for disentangled representations of grouped, clustered and labelled data.

Models (:mod:`pyro_groupvae.models`): ML-VAE, UG-VAE, N-VAE, HFVAE, each a Pyro ``model``/``guide`` pair.
"""
import warnings as _warnings

with _warnings.catch_warnings():
    # pyro.infer imports tqdm.auto, which in Jupyter without ipywidgets warns (on import only) and falls back to the
    # plain progress bar, which is what we use anyway
    _warnings.filterwarnings("ignore", message="IProgress not found")
    import pyro.infer  # noqa: F401

from .runs import evaluate_run, load_run, train_run  # noqa: E402

__version__ = "0.1.0"
__all__ = ["load_run", "train_run", "evaluate_run", "__version__"]
