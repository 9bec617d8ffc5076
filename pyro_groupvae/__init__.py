"""pyro_groupvae: Pyro models for disentangled representations of grouped, clustered and labelled data.

Models (:mod:`pyro_groupvae.models`): ML-VAE, UG-VAE, N-VAE, HFVAE, each a Pyro ``model``/``guide`` pair.
"""
from .runs import evaluate_run, load_run, train_run

__version__ = "0.1.0"
__all__ = ["load_run", "train_run", "evaluate_run", "__version__"]
