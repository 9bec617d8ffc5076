"""The style probe of accumulation_classification trains and tests on posterior means: class information in
the means of a wide style posterior is found (the old sample-trained probe misses it)."""
import pyro.distributions as dist
import torch
from torch import nn

from pyro_groupvae.evaluation.classification import accumulation_classification


class _Fake(nn.Module):
    """encode: content mean = one-hot class; style mean = class signal of size 0.5, posterior sd 3 (wide)."""

    def __init__(self, y):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))
        self.y = y

    def encode(self, x, group_ids):
        idx = x[:, 0].long()
        onehot = nn.functional.one_hot(self.y[idx], 10).float()
        g = torch.Generator().manual_seed(int(idx.sum()))
        style_mean = 0.5 * onehot + 0.05 * torch.randn(onehot.shape, generator=g)
        return {"content": dist.Normal(3 * onehot, 1.0), "style": dist.Normal(style_mean, 3.0)}


def test_style_probe_uses_means_and_reports_linear_and_nonlinear():
    y = torch.arange(10).repeat_interleave(20)
    x = torch.arange(len(y)).float().unsqueeze(1)  # the "image" is its row index
    torch.manual_seed(0)
    r = accumulation_classification(_Fake(y), x, y, ks=[1, 2], K=8, trials=1, classifier_steps=200)
    assert r["content_accuracy"][0] > 0.9
    # the class is in the style means: every means-based probe finds it
    assert r["style_accuracy"] > 0.8 and r["style_linear_accuracy"] > 0.8 and r["style_knn_accuracy"] > 0.8
    # a probe trained on samples of the wide posterior mostly sees noise
    assert r["style_sample_probe_accuracy"] < r["style_accuracy"] - 0.3
    # and a single draw of it (samples with samples) carries little of the class: signal 0.5 against noise 3
    assert r["style_draws_accuracy"] < r["style_accuracy"] - 0.3
