r"""Hierarchically Factorized VAE (Esmaeili, Wu, Jain, Siddharth, Paige & van de Meent, AISTATS 2019).

Generative model (paper sec. 6, appendix B): a Normal block and a discrete block per observation::

    z_n,i ~ N(0, I_D)                              Normal block, D sub-variables       (plate "observations")
    z_c,i ~ ExpConcrete(tau, uniform logits)^V     V discrete variables with K classes
    x_i   ~ p(x | decoder([z_n,i, exp(z_c,i)]))    Bernoulli (sigmoid decoder, appendix B) or Normal

Guide: ``q(z_n|x) = N(mu(x), sigma(x)^2)`` and ``q(z_c|x) = ExpConcrete(tau, logits(x))^V`` from one encoder.
The objective is :class:`~pyro_groupvae.infer.HFVAE_ELBO` (eq. 9): ``z_n`` and ``z_c`` are the two groups
:math:`z_d`, the dimensions of ``z_n`` and the ``V`` discrete variables are the sub-variables :math:`z_{d,e}`;
beta weighs the total correlation between the blocks, gamma the one between the Normal dimensions.

Pyro layout: one plate ``"observations"`` (size ``N``; the training-set size goes to :class:`HFVAE_ELBO` through
the sites' ``infer`` dicts); sites ``z_n``
``(N, D)``, ``z_c`` ``(N, V, K)`` (log-probabilities, event dims 2) and the observed ``x`` ``(N, C, H, W)``.

Choices where the paper is silent or ambiguous (stated here, used everywhere):

* **Concrete in log space.** The discrete site is :class:`~pyro_groupvae.distributions.ExpConcrete` (the sample
  is ``log`` of a Concrete sample; the decoder gets ``exp``). All objective terms are differences of log
  densities of one sample, so this is the paper's Concrete variable with a numerically safe density.
  Temperature ``tau = 0.67`` (Maddison et al.'s recommendation; the paper gives none), fixed, also in the prior.
  For ``K = 2`` (CelebA's two Bernoulli variables) the decoder gets the "on" coordinate only, so its input is
  ``z_c in (0, 1)^2`` as in table 5.
* **"FC. 2x200 ReLU" (tables 3-5)** is read as two branches after the shared layers, one hidden layer each,
  feeding the ``z_c`` logits and the ``z_n`` mean/log-variance; ``2 x 10 (z_n)`` = mean and log-variance.
  Log-variances are bounded by ``5 tanh`` (the shared :class:`~pyro_groupvae.models.nets.GaussianHead`).
* **Likelihood**: Bernoulli on logits (the "Sigmoid" output of appendix B) for MNIST/FMNIST/dSprites, which
  needs binarised images (the recipe binarises); ``"normal"`` with a learned per-pixel scale for CelebA.
* **Baselines** (table 1) are settings: VAE / beta-VAE / beta-TCVAE use only the Normal block
  (``discrete_vars=0``), beta-SVAE and HFVAE the structured prior; see :meth:`HFVAE.from_preset`.
* ``width`` (default 1) multiplies every hidden width; it is *not* in the paper and only exists to state a
  cheaper CPU budget honestly.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from ..distributions import ExpConcrete
from ..infer.hfvae_elbo import PRESETS, HFVAE_ELBO, preset_weights
from ..validation import InputError
from .base import GroupModel, image_shape_param, likelihood_param, min_scale_param, param, register_model
from .nets import GaussianHead, ImageLikelihood, flat_apply

ARCHITECTURES = ("mlp", "dsprites", "conv")


def _w(n, width):
    return max(4, int(round(n * width)))


class _MLPEncoder(nn.Module):
    """Shared MLP layers, then a z_n branch (hidden -> mean, log-var) and a z_c branch (hidden -> logits)."""

    def __init__(self, in_features, shared, branch, cont_dim, disc_out, activation=nn.ReLU):
        super().__init__()
        layers, prev = [], in_features
        for h in shared:
            layers += [nn.Linear(prev, h), activation()]
            prev = h
        self.shared = nn.Sequential(*layers)
        self.branch_n = nn.Sequential(nn.Linear(prev, branch), activation())
        self.head_n = GaussianHead(branch, cont_dim)
        self.branch_c = nn.Sequential(nn.Linear(prev, branch), activation()) if disc_out else None
        self.head_c = nn.Linear(branch, disc_out) if disc_out else None

    def features(self, x):
        return self.shared(x.flatten(1))

    def forward(self, x):
        h = self.features(x)
        loc, log_var = self.head_n(self.branch_n(h))
        logits = self.head_c(self.branch_c(h)) if self.head_c is not None else None
        return loc, log_var, logits


class _ConvEncoder(_MLPEncoder):
    """Table 5: four 4x4 stride-2 convolutions (32, 32, 64, 64) with batch norm and ReLU, then the branches."""

    def __init__(self, channels, branch, cont_dim, disc_out, width=1.0):
        super().__init__(64 * 4 * 4, (), branch, cont_dim, disc_out)
        c1, c2 = _w(32, width), _w(64, width)
        layers, prev = [], channels
        for ch in (c1, c1, c2, c2):
            layers += [nn.Conv2d(prev, ch, 4, 2, 1), nn.BatchNorm2d(ch), nn.ReLU()]
            prev = ch
        self.conv = nn.Sequential(*layers)
        self.branch_n = nn.Sequential(nn.Linear(prev * 16, branch), nn.ReLU())
        if disc_out:
            self.branch_c = nn.Sequential(nn.Linear(prev * 16, branch), nn.ReLU())

    def features(self, x):
        return self.conv(x).flatten(1)


class _ConvDecoder(nn.Module):
    """Table 5 decoder: FC 256 ReLU, FC 4x4x64 tanh, 4x4 stride-2 transposed convolutions 64, 32, 32 (batch norm,
    ReLU) and 3 (output)."""

    def __init__(self, latent, channels, width=1.0):
        super().__init__()
        c1, c2 = _w(64, width), _w(32, width)
        self.c1 = c1
        self.fc = nn.Sequential(nn.Linear(latent, _w(256, width)), nn.ReLU(), nn.Linear(_w(256, width), c1 * 16),
                                nn.Tanh())
        layers, prev = [], c1
        for ch in (c1, c2, c2):
            layers += [nn.ConvTranspose2d(prev, ch, 4, 2, 1), nn.BatchNorm2d(ch), nn.ReLU()]
            prev = ch
        layers.append(nn.ConvTranspose2d(prev, channels, 4, 2, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, z):
        return self.net(self.fc(z).view(-1, self.c1, 4, 4))


@dataclass
class HFVAEConfig:
    """Options of :class:`HFVAE` (field order = positional order of the constructor)."""

    image_shape: tuple = image_shape_param()
    architecture: str = param("auto", "mlp (table 3), dsprites (table 4), conv (table 5) or auto (by image shape)",
                              ("auto",) + ARCHITECTURES)
    continuous_dim: int = param(10, "dimension D of the Normal block")
    discrete_vars: int = param(1, "number V of discrete variables (0: Normal block only)")
    discrete_classes: int = param(10, "classes K per discrete variable")
    temperature: float = param(0.67, "Concrete temperature (prior and guide)")
    likelihood: str = likelihood_param("bernoulli")
    alpha: float = param(1.0, "weight of I(x;z)")
    beta: float = param(4.0, "weight of the TC between groups")
    gamma: float = param(3.0, "weight of the TC within groups")
    delta: float = param(1.0, "weight of the dimension-wise KLs")
    preset: str = param("hfvae", "table-1 objective: vae, beta-vae, beta-tcvae, beta-svae, hfvae",
                        tuple(sorted(PRESETS)))
    width: float = param(1.0, "multiplier of hidden widths (1 = paper)")
    min_scale: float = min_scale_param()


@register_model
class HFVAE(GroupModel):
    r"""HFVAE model/guide pair (and the table-1 baselines as settings).

    :param tuple image_shape: ``(C, H, W)``.
    :param str architecture: ``"mlp"`` (table 3, MNIST/FMNIST, any small image), ``"dsprites"`` (table 4,
        64x64 binary), ``"conv"`` (table 5, 64x64 RGB) or ``"auto"`` (by image shape).
    :param int continuous_dim: dimension ``D`` of the Normal block (10; CelebA 20).
    :param int discrete_vars: number ``V`` of discrete variables (MNIST/dSprites 1, CelebA 2; 0: no discrete
        block, the VAE/beta-VAE/beta-TCVAE prior).
    :param int discrete_classes: classes ``K`` per discrete variable (MNIST 10, dSprites 3, CelebA 2).
    :param float temperature: Concrete temperature (prior and guide).
    :param str likelihood: ``"bernoulli"`` or ``"normal"``.
    :param float alpha, beta, gamma, delta: weights of :class:`~pyro_groupvae.infer.HFVAE_ELBO`.
    :param str preset: informative name of the setting (``"hfvae"``, ``"beta-vae"``, ...).
    :param float width: multiplier of hidden widths (1 = the paper).
    :param float min_scale: floor of the Normal likelihood's standard deviation.
    """

    name = "hfvae"
    Config = HFVAEConfig
    latent_sites = ("z_n", "z_c")

    def normalize_config(self, cfg):
        cfg = super().normalize_config(cfg)
        if cfg.architecture == "auto":
            shape = cfg.image_shape
            cfg = replace(cfg, architecture=("conv" if shape[0] == 3 else "dsprites") if shape[1:] == (64, 64)
                          else "mlp")
        return cfg

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        c = self.cfg
        image_shape, architecture, continuous_dim, discrete_vars = (c.image_shape, c.architecture, c.continuous_dim,
                                                                    c.discrete_vars)
        discrete_classes, temperature, likelihood, width = c.discrete_classes, c.temperature, c.likelihood, c.width
        alpha, beta, gamma, delta, min_scale = c.alpha, c.beta, c.gamma, c.delta, c.min_scale
        if architecture not in ARCHITECTURES:
            raise ValueError(f"architecture must be one of {ARCHITECTURES} or 'auto', got {architecture!r}")
        if architecture in ("dsprites", "conv") and image_shape[1:] != (64, 64):
            raise ValueError(f"architecture {architecture!r} needs 64x64 images, got {image_shape}")
        # continuous_dim >= 1, discrete_vars >= 0, discrete_classes >= 2: validate_config (GroupModel.__init__)
        self.image_shape = image_shape
        self.D, self.V, self.K = int(continuous_dim), int(discrete_vars), int(discrete_classes)
        if not self.V:
            self.latent_sites = ("z_n",)
        self.temperature = float(temperature)
        self.weights = (float(alpha), float(beta), float(gamma), float(delta))
        disc_out = self.V * self.K
        dec_in = self.D + (self.V if self.K == 2 else disc_out) * (self.V > 0)
        n_pix = math.prod(image_shape)
        if architecture == "mlp":  # table 3
            self.encoder = _MLPEncoder(n_pix, (_w(400, width),), _w(200, width), self.D, disc_out)
            self.decoder_net = nn.Sequential(nn.Linear(dec_in, _w(200, width)), nn.ReLU(),
                                             nn.Linear(_w(200, width), _w(400, width)), nn.ReLU(),
                                             nn.Linear(_w(400, width), n_pix))
        elif architecture == "dsprites":  # table 4
            h = _w(1200, width)
            self.encoder = _MLPEncoder(n_pix, (h, h), _w(400, width), self.D, disc_out)
            self.decoder_net = nn.Sequential(nn.Linear(dec_in, _w(400, width)), nn.Tanh(),
                                             nn.Linear(_w(400, width), h), nn.Tanh(), nn.Linear(h, h), nn.Tanh(),
                                             nn.Linear(h, n_pix))
        else:  # table 5
            self.encoder = _ConvEncoder(image_shape[0], _w(256, width), self.D, disc_out, width)
            self.decoder_net = _ConvDecoder(dec_in, image_shape[0], width)
        self.likelihood = ImageLikelihood(image_shape, likelihood, min_scale)

    @classmethod
    def from_preset(cls, preset="hfvae", image_shape=(1, 28, 28), beta=4.0, gamma=3.0, discrete_vars=1, **kw):
        """A table-1 setting: ``"vae"``, ``"beta-vae"``, ``"beta-tcvae"`` (Normal block only), ``"beta-svae"``
        and ``"hfvae"`` (Normal + discrete block with ``discrete_vars`` variables)."""
        a, b, g, d = preset_weights(preset, beta, gamma)
        structured = PRESETS[preset]["structured"]
        return cls(image_shape=image_shape, discrete_vars=discrete_vars if structured else 0, alpha=a, beta=b,
                   gamma=g, delta=d, preset=preset, **kw)

    def default_elbo(self):
        a, b, g, d = self.weights
        return HFVAE_ELBO(alpha=a, beta=b, gamma=g, delta=d)

    # ------------------------------------------------------------------ networks
    def _decoder_input(self, z_n, z_c=None):
        """``[z_n, exp(z_c)]`` (``z_c`` on the log simplex); for K = 2 only the "on" coordinate."""
        if not self.V:
            return z_n
        p = torch.exp(z_c)
        p = p[..., 1] if self.K == 2 else p.flatten(-2)
        return torch.cat([z_n, p], -1)

    def _decode_logits(self, latent):
        out = flat_apply(self.decoder_net, latent, 1)
        return out.reshape(latent.shape[:-1] + self.image_shape)

    def _prior_logits(self, x):
        return x.new_zeros(self.V, self.K)

    # ------------------------------------------------------------------ model
    def model(self, x=None, dataset_size=None, num_obs=None):
        r"""p(x, z_n, z_c) = p(z_n) p(z_c) p(x | z_n, z_c) for every observation.

        :param x: images ``(B, C, H, W)``; ``None``: generate ``num_obs`` images (prior predictive).
        :param int dataset_size: ``N`` of the training set (used by the guide for the estimator of q(z)).
        :param int num_obs: number of images to generate when ``x`` is ``None``.
        """
        if x is None:
            if num_obs is None:
                raise InputError("with x=None give num_obs: how many images to generate")
            n, like = int(num_obs), next(self.parameters())
        else:
            self.check_inputs(x)
            n, like = x.shape[0], x
        self.register()
        with pyro.plate("observations", n):
            z_n = pyro.sample("z_n", dist.Normal(like.new_zeros(self.D), 1.0).to_event(1))
            z_c = None
            if self.V:
                z_c = pyro.sample("z_c", ExpConcrete(self.temperature, logits=self._prior_logits(like))
                                  .to_event(1))
            out = self._decode_logits(self._decoder_input(z_n, z_c))
            pyro.sample("x", self.likelihood(out), obs=x)

    # ------------------------------------------------------------------ guide
    def guide(self, x, dataset_size=None, num_obs=None):
        r"""q(z_n, z_c | x) = N(z_n; mu(x), sigma(x)^2) ExpConcrete(z_c; tau, logits(x)); arguments as
        :meth:`model`. ``dataset_size`` goes into the sites' ``infer`` dict for :class:`HFVAE_ELBO`."""
        self.check_inputs(x)
        self.register()
        loc, log_var, logits = self.encoder(x)
        infer = {"dataset_size": int(dataset_size)} if dataset_size else {}
        with pyro.plate("observations", x.shape[0]):
            pyro.sample("z_n", dist.Normal(loc, torch.exp(0.5 * log_var)).to_event(1), infer=dict(infer))
            if self.V:
                pyro.sample("z_c", ExpConcrete(self.temperature, logits=logits.view(-1, self.V, self.K)).to_event(1),
                            infer=dict(infer))

    def batch_inputs(self, data, batch, device=None):
        device = device or self.device
        return dict(x=data.x[batch.indices].to(device), dataset_size=len(data))

    # ------------------------------------------------------------------ user API
    def _eval(self, fn, *args):
        with self.eval_mode(), torch.no_grad():
            return fn(*args)

    def encode(self, x, group=None):
        """Posteriors of images ``x``: ``{"z_n": Normal (B, D), "z_c": ExpConcrete (B, V) x (K,)}`` (no
        ``"z_c"`` when ``discrete_vars=0``); the class probabilities of ``z_c`` are ``post["z_c"].probs``.
        ``group`` is ignored (no group latent)."""
        self.check_inputs(x)

        def f(x):
            loc, log_var, logits = self.encoder(x)
            post = {"z_n": dist.Normal(loc, torch.exp(0.5 * log_var))}
            if self.V:
                post["z_c"] = ExpConcrete(self.temperature, logits=logits.view(-1, self.V, self.K))
            return post

        return self._eval(f, x)

    def latent_point(self, site, q):
        """``z_n``: the posterior mean; ``z_c``: the class probabilities (the Concrete's location)."""
        return q.probs if site == "z_c" else q.mean

    def represent(self, x, batch_size=1024):
        """Deterministic representation for the disentanglement metrics: the posterior means of ``z_n`` followed
        by the class probabilities of each discrete variable, ``(B, D + V*K)`` on the CPU (a tensor; same as
        :meth:`get_latent_representation`)."""
        return torch.from_numpy(self.get_latent_representation(x, batch_size=batch_size))

    def decode(self, z_n, probs=None, z_c=None):
        """Mean images for ``z_n (B, D)`` and the discrete variables: class probabilities ``probs (B, V, K)``
        (default uniform) or the site's value ``z_c`` (log-probabilities)."""
        if z_n.shape[-1] != self.D:
            raise InputError(f"z_n must have last dimension {self.D}, got {tuple(z_n.shape)}")
        if self.V:
            if z_c is None:
                if probs is None:
                    probs = z_n.new_full(z_n.shape[:-1] + (self.V, self.K), 1.0 / self.K)
                z_c = torch.log(probs.clamp_min(1e-12))
        else:
            z_c = None
        return self._eval(lambda: self.likelihood.mean(self._decode_logits(self._decoder_input(z_n, z_c))))

    def reconstruct(self, x, group=None):
        """Mean reconstruction from the posterior means (``z_n`` mean, discrete probabilities)."""
        post = self.encode(x)
        return self.decode(post["z_n"].loc, post["z_c"].probs if self.V else None)

    def sample(self, n, device=None):
        """Images decoded from prior samples (discrete variables drawn as one-hot classes)."""
        device = device or self.device
        z_n = torch.randn(n, self.D, device=device)
        probs = None
        if self.V:
            cls = torch.randint(self.K, (n, self.V), device=device)
            probs = torch.nn.functional.one_hot(cls, self.K).float()
        return self.decode(z_n, probs)
