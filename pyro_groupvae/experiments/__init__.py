"""Experiment recipes: how each model is trained and evaluated from the CLI (see :mod:`pyro_groupvae.runs`)."""
