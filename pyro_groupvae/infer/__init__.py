"""Objectives and training."""
from .hfvae_elbo import HFVAE_ELBO, PRESETS, log_batch_marginals, preset_weights
from .optim import FusedAdam
from .train import CheckpointError, evaluate_elbo, fit, load_checkpoint, resolve_device, save_checkpoint

__all__ = ["fit", "evaluate_elbo", "load_checkpoint", "save_checkpoint", "CheckpointError", "resolve_device",
           "FusedAdam", "HFVAE_ELBO", "PRESETS", "preset_weights", "log_batch_marginals"]
