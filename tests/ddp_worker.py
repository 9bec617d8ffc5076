"""Run by tests/test_ddp.py as ``python tests/ddp_worker.py OUT WORLD_SIZE``: trains a tiny ML-VAE with
``fit(..., accelerator="cpu", devices=WORLD_SIZE, strategy="ddp")`` (Lightning re-runs this script once per extra
rank) and saves, per rank, the gradient of the first step (a deterministic ELBO: every latent at its posterior
mean) and the parameters after training. Not a test module itself."""
import sys
from pathlib import Path

import pyro.distributions as dist
import pytorch_lightning as pl
import torch
from pyro.infer import TraceMeanField_ELBO
from pyro.poutine.messenger import Messenger
from pyro.poutine.subsample_messenger import _Subsample

from pyro_groupvae.data import GroupBatchSampler, ImageDataset
from pyro_groupvae.infer import fit
from pyro_groupvae.models import MLVAE


class MeanGuide(Messenger):
    """Every latent of the guide at its posterior mean (a Delta): the ELBO step becomes deterministic."""

    def _process_message(self, msg):
        if msg["type"] == "sample" and not msg["is_observed"] and not isinstance(msg["fn"], _Subsample):
            msg["fn"] = dist.Delta(msg["fn"].mean, event_dim=msg["fn"].event_dim)


class FirstStepMeanELBO(TraceMeanField_ELBO):
    """Deterministic on the first ``deterministic_steps`` calls, the usual Monte Carlo ELBO after."""

    def __init__(self, deterministic_steps=1):
        super().__init__()
        self.left = deterministic_steps

    def differentiable_loss(self, model, guide, *args, **kwargs):
        if self.left > 0:
            self.left -= 1
            guide = MeanGuide()(guide)
        return super().differentiable_loss(model, guide, *args, **kwargs)


def toy_data(n_labels=8, per_label=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n_labels).repeat_interleave(per_label)
    x = (torch.rand(len(y), 1, 8, 8, generator=g) > 0.5).float()
    return ImageDataset(x, y, "toy")


def toy_model():
    torch.manual_seed(0)
    return MLVAE(image_shape=(1, 8, 8), hidden=16, content_dim=2, style_dim=2, likelihood="bernoulli")


def toy_sampler(data):
    return GroupBatchSampler(data.y, batch_groups=4, group_size=4, shuffle=False, seed=0)


class Dump(pl.Callback):
    def __init__(self, out):
        self.out = Path(out)

    def on_before_optimizer_step(self, trainer, plan, optimizer):
        if trainer.global_step == 0:  # after DDP's all-reduce, before the first Adam step
            torch.save({n: p.grad.clone() for n, p in plan.model.named_parameters() if p.grad is not None},
                       self.out / f"grads_rank{trainer.global_rank}.pt")

    def on_train_end(self, trainer, plan):
        torch.save({n: p.detach().clone() for n, p in plan.model.named_parameters()},
                   self.out / f"params_rank{trainer.global_rank}.pt")


if __name__ == "__main__":
    out, world = Path(sys.argv[1]), int(sys.argv[2])
    data = toy_data()
    fit(toy_model(), data, toy_sampler(data), epochs=2, elbo=FirstStepMeanELBO(), lr=1e-2, progress=False,
        accelerator="cpu", devices=world, callbacks=[Dump(out)],
        # the deterministic first step leaves the style log-variance head unused: DDP must be told
        strategy="ddp_find_unused_parameters_true" if world > 1 else "auto",
        logger="none")
