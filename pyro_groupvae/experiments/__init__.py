"""Experiments: one recipe module per model (how the CLI and :func:`pyro_groupvae.runs.train_run` build, train and
evaluate it, see :mod:`pyro_groupvae.runs`), the paper experiments that train several models (e.g.
:func:`pyro_groupvae.experiments.hfvae.dsprites_table`), and the run reports (:mod:`.report`). Metrics come from
:mod:`pyro_groupvae.evaluation`, figures from :mod:`pyro_groupvae.plots`."""
