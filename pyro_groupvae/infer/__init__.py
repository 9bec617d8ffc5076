"""Objectives and training."""
from .train import CheckpointError, evaluate_elbo, fit, load_checkpoint, resolve_device, save_checkpoint

__all__ = ["fit", "evaluate_elbo", "load_checkpoint", "save_checkpoint", "CheckpointError", "resolve_device"]
from .hfvae_elbo import HFVAE_ELBO, PRESETS, log_batch_marginals, preset_weights  # noqa: E402
