"""Networks shared by every model: encoder trunks, Gaussian heads, decoders and image likelihoods.

All modules accept any number of leading batch dimensions (Pyro adds them for vectorised particles and for
enumerated discrete variables): inputs are flattened to one batch dimension and the output is reshaped back.
"""
from __future__ import annotations

import math

import pyro.distributions as dist
import torch
from torch import nn

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "elu": nn.ELU, "softplus": nn.Softplus}


def flat_apply(module, x, event_dims):
    """Apply ``module`` to ``x`` whose last ``event_dims`` dimensions are the input, broadcasting the rest."""
    batch = x.shape[: x.dim() - event_dims]
    y = module(x.reshape((-1,) + x.shape[x.dim() - event_dims:]))
    return y.reshape(batch + y.shape[1:])


def mlp(sizes, activation="tanh", final_activation=False):
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2 or final_activation:
            layers.append(ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


class CReLU(nn.Module):
    """Concatenated ReLU: ``[relu(x), relu(-x)]`` (doubles the features)."""

    def forward(self, x):
        return torch.cat([torch.relu(x), torch.relu(-x)], -1)


class MLPTrunk(nn.Module):
    """Flatten an image and apply an MLP (ML-VAE MNIST encoder: 784-500 tanh).

    :param tuple image_shape: ``(C, H, W)``.
    :param hidden: hidden layer sizes.
    :param str activation: name in :data:`ACTIVATIONS`.
    """

    def __init__(self, image_shape, hidden=(500,), activation="tanh"):
        super().__init__()
        self.image_shape = tuple(image_shape)
        self.net = mlp([math.prod(image_shape)] + list(hidden), activation, final_activation=True)
        self.out_features = hidden[-1]

    def forward(self, x):
        return flat_apply(lambda v: self.net(v.flatten(1)), x, 3)


class ConvTrunk64(nn.Module):
    """The ML-VAE face encoder (supplement sec. 2): four 4x4 stride-2 convolutions with 64, 128, 256, 512 filters,
    batch norm and ReLU, then two linear layers of 256 units with batch norm and CReLU."""

    def __init__(self, image_shape=(3, 64, 64), hidden=256):
        super().__init__()
        c, h, w = image_shape
        if (h, w) != (64, 64):
            raise ValueError(f"ConvTrunk64 needs 64x64 images, got {h}x{w}")
        layers, prev = [], c
        for ch in (64, 128, 256, 512):
            layers += [nn.Conv2d(prev, ch, 4, 2, 1), nn.BatchNorm2d(ch), nn.ReLU()]
            prev = ch
        self.conv = nn.Sequential(*layers)
        self.fc = nn.Sequential(
            nn.Linear(512 * 4 * 4, hidden), nn.BatchNorm1d(hidden), CReLU(),
            nn.Linear(2 * hidden, hidden), nn.BatchNorm1d(hidden), CReLU(),
        )
        self.out_features = 2 * hidden

    def forward(self, x):
        return flat_apply(lambda v: self.fc(self.conv(v).flatten(1)), x, 3)


class GaussianHead(nn.Module):
    """Linear layers giving the mean and log-variance of a diagonal Gaussian.

    :param float max_abs_log_var: log-variances are squashed as ``m * tanh(v / m)`` (the supplement's
        ``5 tanh``), which keeps the variances of products of many Gaussians finite.
    """

    def __init__(self, in_features, out_features, max_abs_log_var=5.0):
        super().__init__()
        self.loc = nn.Linear(in_features, out_features)
        self.log_var = nn.Linear(in_features, out_features)
        self.max_abs_log_var = max_abs_log_var

    def forward(self, h):
        m = self.max_abs_log_var
        return self.loc(h), m * torch.tanh(self.log_var(h) / m)


class MLPDecoder(nn.Module):
    """Latent -> image parameters through an MLP (ML-VAE MNIST decoder: d-500 tanh-784)."""

    def __init__(self, latent_dim, image_shape, hidden=(500,), activation="tanh"):
        super().__init__()
        self.image_shape = tuple(image_shape)
        self.net = mlp([latent_dim] + list(hidden) + [math.prod(image_shape)], activation)

    def forward(self, z):
        out = flat_apply(self.net, z, 1)
        return out.reshape(z.shape[:-1] + self.image_shape), None


class ConvDecoder64(nn.Module):
    """The ML-VAE face decoder (supplement sec. 2): linear to 512x8x8, three 4x4 stride-2 transposed
    convolutions with 256, 128, 64 filters, batch norm and ReLU, then two 3x3 stride-1 layers giving the
    per-pixel mean and log-variance (``5 tanh``)."""

    def __init__(self, latent_dim, image_shape=(3, 64, 64)):
        super().__init__()
        c, h, w = image_shape
        if (h, w) != (64, 64):
            raise ValueError(f"ConvDecoder64 needs 64x64 images, got {h}x{w}")
        self.image_shape = tuple(image_shape)
        self.fc = nn.Sequential(nn.Linear(latent_dim, 512 * 8 * 8), nn.ReLU())
        layers, prev = [], 512
        for ch in (256, 128, 64):
            layers += [nn.ConvTranspose2d(prev, ch, 4, 2, 1), nn.BatchNorm2d(ch), nn.ReLU()]
            prev = ch
        self.deconv = nn.Sequential(*layers)
        self.mean = nn.Conv2d(64, c, 3, 1, 1)
        self.log_var = nn.Conv2d(64, c, 3, 1, 1)

    def forward(self, z):
        def f(v):
            h = self.deconv(self.fc(v).view(-1, 512, 8, 8))
            return torch.cat([self.mean(h), 5 * torch.tanh(self.log_var(h) / 5)], 1)

        out = flat_apply(f, z, 1)
        c = self.image_shape[0]
        return out[..., :c, :, :], out[..., c:, :, :]


class ImageLikelihood(nn.Module):
    """``p(x | decoder output)`` for images, an event of 3 dimensions.

    * ``"bernoulli"``: the decoder output is the logits; the data must be binary.
    * ``"normal"``: mean ``sigmoid(output)``; the variance is the decoder's per-pixel log-variance when it gives
      one (conv decoder), otherwise a learned per-pixel parameter (the paper's MNIST model: the decoder's
      784-vector is the mean and the variance is learned). Standard deviations are bounded below by
      ``min_scale`` (default 0.05): without a floor, the constant black background of MNIST lets the variance
      collapse and the likelihood grow without bound.
    """

    def __init__(self, image_shape, kind="normal", min_scale=0.05):
        super().__init__()
        if kind not in ("normal", "bernoulli"):
            raise ValueError(f"likelihood must be 'normal' or 'bernoulli', got {kind!r}")
        self.kind = kind
        self.min_scale = min_scale
        if kind == "normal":
            self.log_scale = nn.Parameter(torch.full(tuple(image_shape), math.log(0.2)))

    def scale(self, log_var=None):
        log_scale = self.log_scale if log_var is None else 0.5 * log_var
        return self.min_scale + torch.exp(log_scale)

    def forward(self, out, log_var=None):
        if self.kind == "bernoulli":
            return dist.Bernoulli(logits=out, validate_args=False).to_event(3)
        return dist.Normal(torch.sigmoid(out), self.scale(log_var)).to_event(3)

    def mean(self, out):
        return torch.sigmoid(out)


def make_encoder_trunk(architecture, image_shape, hidden=500):
    if architecture == "mlp":
        return MLPTrunk(image_shape, (hidden,), "tanh")
    if architecture == "conv":
        return ConvTrunk64(image_shape)
    raise ValueError(f"architecture must be 'mlp' or 'conv', got {architecture!r}")


def make_decoder(architecture, latent_dim, image_shape, hidden=500):
    if architecture == "mlp":
        return MLPDecoder(latent_dim, image_shape, (hidden,), "tanh")
    if architecture == "conv":
        return ConvDecoder64(latent_dim, image_shape)
    raise ValueError(f"architecture must be 'mlp' or 'conv', got {architecture!r}")


def compile_networks(model, **kwargs):
    """``torch.compile`` every network of ``model`` in place (its direct sub-modules with parameters), for
    training speed; off unless called. Parameters, ``state_dict`` names and the Pyro param store are unchanged
    (``nn.Module.compile`` wraps ``forward``). The first step of each network compiles (minutes on a small CPU);
    docs/benchmarks.md says what it gains. ``kwargs`` go to ``torch.compile`` (default ``dynamic=False``).

    :returns: ``model``.
    """
    kwargs.setdefault("dynamic", False)
    for child in model.children():
        if any(True for _ in child.parameters()):
            child.compile(**kwargs)
    return model
