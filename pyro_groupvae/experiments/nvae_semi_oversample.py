"""N-VAE with 10 % labels: do the unlabelled images help? (docs/results.md, "Semi-supervised")

Semi-supervised N-VAE (labels enumerated in the guide, ``TraceEnum_ELBO``) on the 3,500 bundled MNIST digits with
the stratified 10 % label mask, with and without oversampling the labelled images (each batch half labelled rows
drawn with replacement, as M2 implementations do), against a supervised N-VAE on the labelled images only, all
for the same number of SVI steps::

    OMP_NUM_THREADS=1 python -m pyro_groupvae.experiments.nvae_semi_oversample [--steps 525] [--seed 0]

Prints the q(y|x) test accuracy of each run.
"""
from __future__ import annotations

import argparse
import time

import pyro
import torch
from pyro.infer import SVI

from ..data import load_dataset
from ..data.labelled import stratified_labelled_mask
from ..models.nvae import NVAE


def batches(mask, steps, batch_size, oversample, generator):
    """Row indices of each step: uniform over the training set, or half labelled rows (with replacement)."""
    lab, unl = torch.nonzero(mask).flatten(), torch.nonzero(~mask).flatten()
    n = len(mask)
    for _ in range(steps):
        if oversample:
            half = batch_size // 2
            yield torch.cat([lab[torch.randint(len(lab), (half,), generator=generator)],
                             unl[torch.randint(len(unl), (batch_size - half,), generator=generator)]])
        else:
            yield torch.randperm(n, generator=generator)[:batch_size]


def run(train, test, mask, steps, mode, seed, batch_size=100, class_weight=10.0):
    """``mode``: ``"semi"`` (uniform batches), ``"semi-oversampled"`` (half labelled rows) or ``"labelled-only"``
    (supervised N-VAE on batches drawn from the labelled rows only)."""
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    semi = mode != "labelled-only"
    model = NVAE(architecture="cnn", class_weight=class_weight, semi_supervised=semi)
    svi = SVI(model.model, model.guide, pyro.optim.Adam({"lr": 1e-3}), model.default_elbo())
    g = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    lab = torch.nonzero(mask).flatten()
    with model.trusted_inputs(), pyro.validation_enabled(False):
        if not semi:
            for _ in range(steps):
                rows = lab[torch.randperm(len(lab), generator=g)[:batch_size]]
                svi.step(train.x[rows], train.y[rows])
        for rows in batches(mask, steps if semi else 0, batch_size, mode == "semi-oversampled", g):
            y = torch.where(mask[rows], train.y[rows], torch.full_like(train.y[rows], -1))
            svi.step(train.x[rows], y, mask[rows])
    acc = float((model.classify(test.x).argmax(-1) == test.y).float().mean())
    return acc, time.perf_counter() - t0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=525)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--modes", default="semi,semi-oversampled,labelled-only")
    args = p.parse_args(argv)
    train, test = load_dataset("mnist", "train"), load_dataset("mnist", "test")
    mask = torch.as_tensor(stratified_labelled_mask(train.y, 0.1, seed=0)).bool()
    print(f"{int(mask.sum())} labelled of {len(mask)}; {args.steps} steps of 100 rows; seed {args.seed}")
    for mode in args.modes.split(","):
        acc, sec = run(train, test, mask, args.steps, mode, args.seed)
        print(f"{mode}: test accuracy {acc:.3f} ({sec:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
