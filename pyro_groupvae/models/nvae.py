r"""N-VAE: natural-clustering VAE (Antorán & Miguel, "Disentangling and learning robust representations with
natural clustering", ICMLA 2019), with a CVAE baseline.

Generative model (sec. III, fig. 4), for every observation (plate "observations")::

    pi  ~ Dir(alpha_p 1_L)                          class probabilities
    y   ~ Cat(pi)                                   label
    z_c ~ N(0, I)   (L blocks of class_dim)         class-dependent latents, one block per class
    z_s ~ N(0, I)   (shared_dim)                    shared latents
    x   ~ p(x | [z_cy, z_s])                        decoder

with ``z_cy = vec(c_y ⊙ [1_L, Z_c])`` (sec. III-B, appendix B): the one-hot ``c_y`` masks every class block but the
true one and, through the ``1_L`` column, adds the class-dependent bias ``b_y`` to the decoder's first layer
(``bias=False`` drops that column: the fig. 10 ablation).

Guide (eqs. 4-5): one shared encoder gives ``q(z_c, z_s | x)`` (diagonal Normal) and
``q(pi | x) = Dir(alpha_q * alpha(x))``.

Pyro layout: one plate ``"observations"`` (``dim=-1``, size ``N``); sites ``y`` ``(N,)`` (observed), ``pi``
``(N, L)``, ``z_c`` ``(N, L, class_dim)`` (event dim 2), ``z_s`` ``(N, shared_dim)``, ``x`` ``(N, C, H, W)``
(observed). The CVAE has ``z`` ``(N, latent_dim)`` and ``x``, the label a decoder input.

How Pyro's ELBO becomes eq. 3. The model samples the label *first* from its marginal and then ``pi`` from the
conjugate posterior, ``p(pi) p(y|pi) = p(y) p(pi|y)`` (:class:`~pyro_groupvae.distributions.DirichletClassPrior`):
``y`` is observed under ``p(y) = Cat(1/L)`` and ``pi ~ Dir(alpha_p 1 + c_y)``. With ``TraceMeanField_ELBO`` every
term of eq. 3 is then one site: ``E_q[log p(x|y,z)]`` (Monte Carlo), ``KL(q(z|x)||p(z))`` (analytic),
``KL(q(pi|x)||p(pi|y))`` (analytic, registered KL) and ``log p(y) = -log L``. ``beta_c`` (eq. 7) multiplies the
``z_c`` site by ``poutine.scale`` in model and guide.

``class_objective="surrogate"`` optimises eq. 6/7 instead: no ``pi`` site, and the label is observed under the
encoder's predictive ``q(y|x) = E_q[pi] = alpha(x)``, which adds ``log q(y|x)``.

Beyond the paper, semi-supervised training (as Kingma et al.'s M2, Pyro's ``examples/vae/ss_vae_M2.py``): pass
``labelled`` (bool mask; the labels of unlabelled rows may be placeholders such as -1). The model is the same
program: ``y`` is observed where labelled and a latent elsewhere (``pyro.sample(..., obs_mask=labelled)``, sites
``y_observed``/``y_unobserved``), and every value downstream of ``y`` is the value the site returns. The guide
enumerates the latent label with ``q(y|x) = alpha(x)`` (``infer={"enumerate": "parallel"}``), and
``TraceEnum_ELBO`` sums it out exactly: an unlabelled row gets
``sum_y q(y|x) [log p(y) + log p(pi|y) + log p(x|y,z) - log q(y|x)] - log q(pi|x) + ...``, an expectation that
also trains the classifier on unlabelled images; a labelled row keeps the supervised bound (the guide's
``y_unobserved`` is a point mass at its label). Why guide-side: model-side enumeration contracts
``log p(x|y,z)``, which spans hundreds of nats over ``y``, in log space with a per-factor shift that underflows
float32 (the first attempt's loss was ``inf`` at epoch 1 on MNIST); the guide-side expectation has no such
contraction. ``q(pi|x)`` is drawn in float64
(:class:`~pyro_groupvae.distributions.dirichlet_prior.Float64Dirichlet`): ``log pi_y`` is evaluated at the sample.

Plain Pyro: ``model(x, y)`` observes the labels, ``model(x)`` leaves ``y`` latent (``condition``/``do`` on
``"y"``, ``infer_discrete``), and ``model(None, y)`` / ``model(None, num_obs=n)`` generate (prior
``Predictive``). ``infer_discrete`` with the *replay* recipe fails here (a Pyro limitation: a replayed latent,
``pi``, depends on the enumerated ``y``); condition the continuous latents instead (README, "plain Pyro").

Choices the paper leaves open (and ours):

* ``alpha(x)`` is a softmax (floored so that every concentration is at least ``min_concentration = 0.02``), so
  ``alpha_q`` is the total concentration of ``q(pi|x)`` and ``q(y|x) = alpha(x)`` (:meth:`NVAE.classify`).
  ``alpha_q`` defaults to ``L alpha_p + 1``, the total concentration of
  ``p(pi|y)``, so that ``q`` can match the conjugate posterior exactly (KL 0) on a perfectly classified image.
* ``alpha_p = 0.1`` by default (the paper gives no value): then ``p(pi|y)`` puts mean ``(1 + alpha_p)/(1 + L
  alpha_p) = 0.55`` on the true class for L = 10. Smaller values make the KL sharper.
* Latent sizes: the paper does not state them for MNIST; we use ``class_dim=2`` per class and ``shared_dim=10``.
* Networks: ``architecture="mlp"`` is the library's MNIST MLPs (784-500 tanh trunk, 500 tanh decoder);
  ``"cnn"`` (the recipe's default for digits) swaps the encoder trunk for :class:`SmallConvTrunk`, because the
  MLP trunk classifies the bundled digits worse (docs/results.md, N-VAE).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Optional

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from torch import nn

from ..distributions import DirichletClassPrior
from ..distributions.dirichlet_prior import Float64Dirichlet
from ..validation import InputError, check_batchnorm_batch, check_labels, check_model_images
from .base import (GroupModel, hidden_param, image_shape_param, likelihood_param, min_scale_param, param,
                   register_model)
from .nets import GaussianHead, ImageLikelihood, flat_apply, make_decoder, make_encoder_trunk


class SmallConvTrunk(nn.Module):
    """A small CNN encoder trunk for digit-sized images (28x28, 32x32): two 5x5 convolutions (32 and 64 filters,
    ReLU, 2x2 max-pooling) and a ``hidden``-unit tanh layer. Used by ``architecture="cnn"`` (with the MLP decoder):
    the MLP trunk leaves the q(y|x) classifier of N-VAE short of the 0.97 target on the 3,500 bundled digits."""

    def __init__(self, image_shape=(1, 28, 28), hidden=500):
        super().__init__()
        c, h, w = image_shape
        self.conv = nn.Sequential(nn.Conv2d(c, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                                  nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2))
        self.fc = nn.Sequential(nn.Linear(64 * (h // 4) * (w // 4), hidden), nn.Tanh())
        self.out_features = hidden

    def forward(self, x):
        return flat_apply(lambda v: self.fc(self.conv(v).flatten(1)), x, 3)


def make_networks(architecture, image_shape, hidden, decoder_in):
    """``(encoder trunk, decoder)``: the library's ``"mlp"``/``"conv"`` networks, or ``"cnn"``: the small CNN
    trunk above with the MLP decoder."""
    if architecture == "cnn":
        return SmallConvTrunk(image_shape, hidden), make_decoder("mlp", decoder_in, image_shape, hidden)
    return make_encoder_trunk(architecture, image_shape, hidden), make_decoder(architecture, decoder_in, image_shape,
                                                                               hidden)


ARCHITECTURES = ("mlp", "cnn", "conv")


@dataclass
class NVAEConfig:
    """Options of :class:`NVAE` (field order = positional order of the constructor)."""

    image_shape: tuple = image_shape_param()
    num_classes: int = param(10, "number of classes L", cli=False)
    class_dim: int = param(2, "dimensions of each class block z_ci")
    shared_dim: int = param(10, "dimensions of the shared latent z_s")
    alpha_p: float = param(0.1, "symmetric Dirichlet prior concentration")
    alpha_q: Optional[float] = param(None, "total concentration of q(pi|x) (default L*alpha_p + 1)")
    beta_c: float = param(2.0, "weight of the z_c KL (eq. 7)")
    bias: bool = param(True, "drop the one-hot bias column of z_cy (fig. 10 ablation)", flag="no-bias",
                       negate=True)
    class_objective: str = param("kl", "kl: Dirichlet KL of eq. 3; surrogate: log q(y|x) of eq. 6",
                                 ("kl", "surrogate"))
    semi_supervised: bool = param(False, "recorded when trained with part of the labels", cli=False)
    class_weight: float = param(1.0, "weight of the class term (beyond the paper; 1 = the paper's objective)")
    min_concentration: float = param(0.02, "floor on every concentration of q(pi|x)")
    likelihood: str = likelihood_param()
    architecture: str = param("mlp", "mlp (paper-style MLPs), cnn (small CNN encoder + MLP decoder) or conv "
                                     "(64x64)", ARCHITECTURES)
    hidden: int = hidden_param()
    min_scale: float = min_scale_param()


@dataclass
class CVAEConfig:
    """Options of :class:`CVAE`."""

    image_shape: tuple = image_shape_param()
    num_classes: int = param(10, "number of classes L", cli=False)
    latent_dim: int = param(12, "latent size (N-VAE's class_dim + shared_dim)")
    likelihood: str = likelihood_param()
    architecture: str = param("mlp", "mlp, cnn (small CNN encoder + MLP decoder) or conv (64x64)", ARCHITECTURES)
    hidden: int = hidden_param()
    min_scale: float = min_scale_param()


class TraceMeanField_ELBO(pyro.infer.TraceMeanField_ELBO):
    """Pyro's ``TraceMeanField_ELBO`` (N-VAE's default when supervised: every KL of eq. 3 analytic) with one clear
    error: called with latent labels (``y=None`` or a ``labelled`` mask), whose guide site is enumerated and not
    reparameterisable, it says to use ``TraceEnum_ELBO`` instead of Pyro's "must be fully reparameterized"."""

    def _clear(self, method, *args, **kwargs):
        try:
            return method(*args, **kwargs)
        except NotImplementedError as e:
            if "reparameterized" not in str(e):
                raise
            raise InputError("the labels are latent in this call (y=None or a labelled mask) and the guide "
                             "enumerates them: use TraceEnum_ELBO(max_plate_nesting=1) (the default of "
                             "NVAE(semi_supervised=True)), not TraceMeanField_ELBO") from None

    def loss(self, model, guide, *args, **kwargs):
        return self._clear(super().loss, model, guide, *args, **kwargs)

    def differentiable_loss(self, model, guide, *args, **kwargs):
        return self._clear(super().differentiable_loss, model, guide, *args, **kwargs)

    def loss_and_grads(self, model, guide, *args, **kwargs):
        return self._clear(super().loss_and_grads, model, guide, *args, **kwargs)


class LabelledModel(GroupModel):
    """Shared part of N-VAE and CVAE: labels from ``ImageDataset.y`` and the input checks."""

    name = "labelled"

    def check_xy(self, x, y, labelled=None, need_labels=True):
        """Validate images, labels (``0..L-1``, one per image) and the optional labelled mask. Skipped (only moved
        to ``x``'s device) inside :meth:`trusted_inputs` and while JIT-tracing, so that no check is frozen into a
        trace and a training step makes no host syncs."""
        if torch.jit.is_tracing() or not self._checks:
            def to(v):
                return v if v is None else v.to(x.device) if torch.is_tensor(v) else torch.as_tensor(v, device=x.device)

            if not torch.jit.is_tracing():
                check_batchnorm_batch(self, x.shape[0])  # always on (no host sync): a batch of one under BatchNorm
            return to(y), to(labelled)
        check_batchnorm_batch(self, x.shape[0])
        check_model_images(self, x)
        n = x.shape[0]
        if labelled is not None:
            labelled = torch.as_tensor(labelled, device=x.device)
            if labelled.dtype != torch.bool or labelled.shape != (n,):
                raise InputError(f"labelled must be a bool tensor of shape ({n},), got dtype {labelled.dtype} "
                                 f"and shape {tuple(labelled.shape)}")
            if y is None and bool(labelled.any()):
                raise InputError("labelled marks rows as labelled but y is None")
        if y is None:
            if need_labels:
                raise InputError("y (class labels) is required")
        else:
            if labelled is not None and torch.is_tensor(y) and y.shape == (n,) and not y.dtype.is_floating_point:
                # the labels of unlabelled rows are placeholders (e.g. -1): only the known ones are checked
                y = torch.where(labelled, y.to(labelled.device), torch.zeros_like(y, device=labelled.device))
            y = check_labels(y, n, self.num_classes).to(x.device)
        return y, labelled

    def batch_inputs(self, data, batch, device=None):
        """``x`` and ``y`` of the batch's rows; ``labelled`` when ``data`` is a
        :class:`~pyro_groupvae.data.labelled.PartlyLabelledDataset` (its explicit bool mask over the rows). Group
        structure is not used."""
        device = device or self.device
        idx = batch.indices
        kw = dict(x=data.x[idx].to(device), y=data.y[idx].to(device))
        mask = getattr(data, "labelled", None)
        if mask is not None:
            kw["labelled"] = torch.as_tensor(mask)[idx].to(device)
        return kw

    def _eval_call(self, fn, *args):
        with self.eval_mode():
            return fn(*args)

    @torch.no_grad()
    def sample(self, n, sigma=1.0, generator=None):
        """``n`` mean images from the prior: labels drawn uniformly (``p(y) = 1/L``), then :meth:`generate`."""
        y = torch.randint(self.num_classes, (n,), generator=generator)
        return self.generate(y, sigma, generator=generator)


@register_model
class NVAE(LabelledModel):
    r"""The N-VAE model/guide pair.

    :param tuple image_shape: ``(C, H, W)``.
    :param int num_classes: ``L``.
    :param int class_dim: size of each class block ``z_ci``.
    :param int shared_dim: size of ``z_s``.
    :param float alpha_p: symmetric Dirichlet prior concentration.
    :param float alpha_q: total concentration of ``q(pi|x)``; ``None``: ``L alpha_p + 1``.
    :param float beta_c: weight of the ``z_c`` KL (eq. 7; paper: 2).
    :param bool bias: keep the one-hot bias column of ``z_cy`` (appendix B); ``False`` is the fig. 10 ablation.
    :param str class_objective: ``"kl"`` (eq. 3, the Dirichlet KL) or ``"surrogate"`` (eq. 6, ``log q(y|x)``).
    :param float class_weight: weight ``gamma`` of the class term (beyond the paper, default 1 = eq. 3/6):
        ``poutine.scale`` on the ``pi`` site (model and guide) multiplies ``KL(q(pi|x) || p(pi|y))``, or on the
        surrogate's ``y`` site ``log q(y|x)`` -- like the classification weight of Kingma et al.'s M2.
    :param float min_concentration: floor ``c_min`` on every concentration of ``q(pi|x)`` (see :meth:`class_probs`).
    :param bool semi_supervised: recorded in the config (the recipe sets it when ``--labelled-fraction < 1``); the
        model takes the semi-supervised path whenever ``labelled`` is passed; the default ELBO is then
        ``TraceEnum_ELBO`` (the latent labels are enumerated in the guide).
    :param str likelihood: ``"normal"`` or ``"bernoulli"``.
    :param str architecture: ``"mlp"``, ``"cnn"`` (small CNN encoder, MLP decoder) or ``"conv"`` (64x64).
    :param int hidden: hidden units of the MLPs.
    :param float min_scale: floor on the Normal likelihood's standard deviation.
    """

    name = "nvae"
    Config = NVAEConfig
    latent_sites = ("z_c", "z_s", "pi")

    def normalize_config(self, cfg):
        cfg = super().normalize_config(cfg)
        if cfg.alpha_q is None:
            cfg = replace(cfg, alpha_q=cfg.num_classes * cfg.alpha_p + 1.0)
        return cfg

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        c = self.cfg
        image_shape, num_classes, class_dim, shared_dim = c.image_shape, c.num_classes, c.class_dim, c.shared_dim
        alpha_p, alpha_q, beta_c, bias = c.alpha_p, c.alpha_q, c.beta_c, c.bias
        class_objective, semi_supervised, class_weight = c.class_objective, c.semi_supervised, c.class_weight
        min_concentration, likelihood, architecture, hidden = (c.min_concentration, c.likelihood, c.architecture,
                                                               c.hidden)
        min_scale = c.min_scale
        # class_objective, num_classes, class_dim, shared_dim, alpha_p, alpha_q, beta_c, class_weight: checked by
        # validate_config (GroupModel.__init__); here only the checks that relate options to each other
        if semi_supervised and class_objective != "kl":
            raise ValueError("semi-supervised training needs class_objective='kl' (the surrogate of eq. 6 has no "
                             "term for unlabelled images)")
        self.image_shape = image_shape
        self.num_classes, self.class_dim, self.shared_dim = num_classes, class_dim, shared_dim
        self.alpha_p, self.alpha_q, self.beta_c = float(alpha_p), float(alpha_q), float(beta_c)
        self.class_weight = float(class_weight)
        self.min_concentration = float(min_concentration)
        if not 0 <= self.min_concentration * num_classes < self.alpha_q:
            raise ValueError("need 0 <= min_concentration * num_classes < alpha_q")
        self.bias, self.class_objective, self.semi_supervised = bool(bias), class_objective, semi_supervised
        self.decoder_in = num_classes * (class_dim + int(self.bias)) + shared_dim
        self.trunk, self.decoder = make_networks(architecture, image_shape, hidden, self.decoder_in)
        self.likelihood = ImageLikelihood(image_shape, likelihood, min_scale)
        self.z_head = GaussianHead(self.trunk.out_features, num_classes * class_dim + shared_dim)
        self.class_head = nn.Linear(self.trunk.out_features, num_classes)

    def default_elbo(self):
        """``TraceMeanField_ELBO`` (analytic KLs, eq. 3); ``TraceEnum_ELBO`` when semi-supervised (latent labels
        are enumerated in the guide)."""
        if self.semi_supervised:
            return pyro.infer.TraceEnum_ELBO(max_plate_nesting=self.max_plate_nesting)
        return TraceMeanField_ELBO()

    # ------------------------------------------------------------------ pieces
    def class_prior(self, device=None, dtype=None):
        """``p(pi) = Dir(alpha_p 1_L)`` as a :class:`DirichletClassPrior` (on the model's device and dtype unless
        given)."""
        p = next(self.parameters())
        return DirichletClassPrior.symmetric(self.alpha_p, self.num_classes, device=device or p.device,
                                             dtype=dtype or p.dtype)

    def decoder_input(self, y, z_c, z_s):
        r"""``[z_cy, z_s]`` with ``z_cy = vec(c_y ⊙ [1_L, Z_c])`` (without the ``1_L`` column if ``bias=False``).

        :param y: labels, any shape broadcasting with the batch (e.g. ``(L, 1)`` under enumeration).
        :param z_c: ``(..., L, class_dim)``.
        :param z_s: ``(..., shared_dim)``.
        """
        c_y = nn.functional.one_hot(y, self.num_classes).to(z_c.dtype).unsqueeze(-1)  # (..., L, 1)
        blocks = c_y * z_c
        if self.bias:
            blocks = torch.cat([c_y.expand(blocks.shape[:-1] + (1,)), blocks], -1)
        z_cy = blocks.flatten(-2)
        batch = torch.broadcast_shapes(z_cy.shape[:-1], z_s.shape[:-1])
        return torch.cat([z_cy.expand(batch + z_cy.shape[-1:]), z_s.expand(batch + z_s.shape[-1:])], -1)

    def encode_params(self, x):
        """``(z_c_loc, z_c_log_var, z_s_loc, z_s_log_var, class_logits)`` with ``z_c`` shaped ``(N, L, class_dim)``."""
        h = self.trunk(x)
        loc, log_var = self.z_head(h)
        nc = self.num_classes * self.class_dim
        shape = loc.shape[:-1] + (self.num_classes, self.class_dim)
        return (loc[..., :nc].reshape(shape), log_var[..., :nc].reshape(shape), loc[..., nc:], log_var[..., nc:],
                self.class_head(h))

    def class_probs(self, logits):
        r"""``alpha(x)``: the softmax of the class logits floored at ``c_min / alpha_q`` (a mixture with the uniform
        distribution that keeps the sum at 1). Why a floor: Dirichlets whose concentrations underflow to 0 make
        ``lgamma``/``digamma`` infinite (a confident softmax reaches 0 in float32), and their samples underflow the
        floating-point range, which breaks the sampled ``pi`` terms of the semi-supervised ELBO."""
        floor = self.min_concentration / self.alpha_q
        return floor + (1.0 - self.num_classes * floor) * torch.softmax(logits, -1)

    def q_pi_concentration(self, logits):
        """Concentration of ``q(pi|x) = Dir(alpha_q * alpha(x))`` (eq. 4)."""
        return self.alpha_q * self.class_probs(logits)

    # ------------------------------------------------------------------ model
    def _size(self, x, y, num_obs):
        """``(n, device, dtype)`` of a call: from ``x``, else (prior predictive, ``x=None``) from ``y`` or
        ``num_obs``."""
        p = next(self.parameters())
        if x is not None:
            return x.shape[0], x.device, x.dtype
        if y is not None:
            return len(y), p.device, p.dtype
        if num_obs is None:
            raise InputError("with x=None give y (class-conditional generation) or num_obs (how many images)")
        return int(num_obs), p.device, p.dtype

    def _label_site(self, p_y, y, labelled, device):
        """The ``y`` site; returns its value (observed labels, a sample, or Pyro's enumerated values).

        ``labelled=None``: ``y`` observed when given, otherwise a latent. With a ``labelled`` mask Pyro splits the
        site (``obs_mask``) into ``y_observed`` (labelled rows) and the latent ``y_unobserved``; the returned
        value interleaves them. Placeholder labels of unlabelled rows are never read.
        """
        if labelled is None:
            return pyro.sample("y", p_y, obs=y)
        labelled = labelled.to(device)
        y = torch.zeros_like(labelled, dtype=torch.long) if y is None else \
            torch.where(labelled, y.to(device), torch.zeros_like(y, device=device))
        return pyro.sample("y", p_y, obs=y, obs_mask=labelled)

    def model(self, x=None, y=None, labelled=None, num_obs=None):
        r"""p(x, y, z, pi) = p(x | y, z) p(pi | y) p(y) p(z)  (= p(x|y,z) p(y|pi) p(pi) p(z)).

        Every value downstream of ``y`` (``p(pi|y)``, the decoder input) is the value the ``y`` site returns, so
        ``poutine.condition``/``do`` on ``y``, ``Predictive`` and ``infer_discrete`` see the model as written.

        :param x: images ``(N, C, H, W)``; ``None``: generate (``N`` from ``y`` or ``num_obs``).
        :param y: labels ``(N,)`` in ``0..L-1`` (observed); ``None``: ``y`` is a latent.
        :param labelled: optional bool ``(N,)``: which labels are known (semi-supervised, see the module
            docstring): ``y`` is observed on those rows and a latent (site ``y_unobserved``) on the others.
        :param int num_obs: number of images to generate when ``x`` and ``y`` are ``None``.
        """
        n, device, dtype = self._size(x, y, num_obs)
        if x is not None:
            y, labelled = self.check_xy(x, y, labelled, need_labels=False)
        elif y is not None:
            y = torch.as_tensor(y, device=device)
        self.register()
        prior = self.class_prior(device, dtype)
        if labelled is not None and self.class_objective != "kl":
            raise InputError("unlabelled rows (labelled=...) need class_objective='kl'; the eq. 6 surrogate is "
                             "defined for labelled data only")
        checks = self._checks and not torch.jit.is_tracing()
        with pyro.plate("observations", n, dim=-1):
            if self.class_objective == "surrogate":
                # eq. 6: the class term is log q(y|x) (the encoder is registered with the model)
                # (generating, x=None: there is no q(y|x); the label follows the prior p(y) = 1/L)
                p_y = prior.class_marginal() if x is None else \
                    dist.Categorical(probs=self.class_probs(self.encode_params(x)[-1]))
                with poutine.scale(scale=self.class_weight):
                    y = pyro.sample("y", p_y, obs=y)
            else:
                y = self._label_site(prior.class_marginal(), y, labelled, device)  # log p(y) = -log L
                with poutine.scale(scale=self.class_weight):
                    pyro.sample("pi", prior.update(y, check=checks))               # p(pi | y), KL analytic
            zeros = torch.zeros((), device=device, dtype=dtype)
            with poutine.scale(scale=self.beta_c):
                z_c = pyro.sample("z_c", dist.Normal(zeros.expand(self.num_classes, self.class_dim), 1.0)
                                  .to_event(2))
            z_s = pyro.sample("z_s", dist.Normal(zeros.expand(self.shared_dim), 1.0).to_event(1))
            out, log_var = self.decoder(self.decoder_input(y, z_c, z_s))
            pyro.sample("x", self.likelihood(out, log_var), obs=x)

    # ------------------------------------------------------------------ guide
    def guide(self, x, y=None, labelled=None, num_obs=None):
        r"""q(z_c, z_s, pi, y | x) = q(z|x) q(pi|x) [q(y|x)]; arguments as :meth:`model`.

        Latent labels are enumerated *in the guide* (``infer={"enumerate": "parallel"}``, as in Pyro's
        ``examples/vae/ss_vae_M2.py``) with ``q(y|x) = alpha(x) = E_q[pi]`` (:meth:`class_probs`):
        ``TraceEnum_ELBO`` then computes ``sum_y q(y|x) [log p(y) + log p(pi|y) + log p(x|y,z) - log q(y|x)]``
        exactly, an expectation that cannot underflow (the model-side contraction of ``log p(x|y,z)``, which
        spans hundreds of nats over ``y``, underflows float32). With a ``labelled`` mask the guide's
        ``y_unobserved`` is a point mass at the known label on labelled rows (``-inf`` logits elsewhere, which
        ``TraceEnum_ELBO`` drops), so those rows keep the supervised bound.
        """
        y, labelled = self.check_xy(x, y, labelled, need_labels=False)  # (moved to x's device only, if trusted)
        self.register()
        c_loc, c_lv, s_loc, s_lv, logits = self.encode_params(x)
        with pyro.plate("observations", x.shape[0], dim=-1):
            if self.class_objective == "kl":
                # drawn in float64, whose range holds the tiny components a float32 draw would clamp (the
                # enumerated bound evaluates log pi_y at the sample)
                with poutine.scale(scale=self.class_weight):
                    pyro.sample("pi", Float64Dirichlet(self.q_pi_concentration(logits)))
            with poutine.scale(scale=self.beta_c):
                pyro.sample("z_c", dist.Normal(c_loc, torch.exp(0.5 * c_lv)).to_event(2))
            pyro.sample("z_s", dist.Normal(s_loc, torch.exp(0.5 * s_lv)).to_event(1))
            if self.class_objective == "kl" and (y is None or labelled is not None):
                log_q = torch.log(self.class_probs(logits))
                enum = {"enumerate": "parallel"}
                if labelled is None:
                    pyro.sample("y", dist.Categorical(logits=log_q), infer=enum)
                else:
                    labelled = labelled.to(x.device)
                    known = torch.zeros_like(labelled, dtype=torch.long) if y is None else \
                        torch.where(labelled, y.to(x.device), torch.zeros_like(y, device=x.device))
                    point = torch.where(nn.functional.one_hot(known, self.num_classes).bool(), 0.0, -math.inf)
                    pyro.sample("y_unobserved", dist.Categorical(
                        logits=torch.where(labelled.unsqueeze(-1), point.to(log_q.dtype), log_q)), infer=enum)

    # ------------------------------------------------------------------ user API
    @torch.no_grad()
    def classify(self, x):
        r"""Class probabilities ``q(y|x) = E_{q(pi|x)}[pi] = alpha(x)`` (:meth:`class_probs`), shape ``(N, L)``."""
        check_model_images(self, x)
        return self._eval_call(lambda v: self.class_probs(self.encode_params(v)[-1]), x)

    @torch.no_grad()
    def encode(self, x, group=None, y=None):
        """Posteriors ``{"z_c": Normal (N, L, class_dim), "z_s": Normal (N, shared_dim), "pi": Dirichlet q(pi|x)
        (N,) x (L,)}``. The guide does not look at labels or groups: ``group`` and ``y`` are ignored."""
        check_model_images(self, x)
        c_loc, c_lv, s_loc, s_lv, logits = self._eval_call(self.encode_params, x)
        return {"z_c": dist.Normal(c_loc, torch.exp(0.5 * c_lv)), "z_s": dist.Normal(s_loc, torch.exp(0.5 * s_lv)),
                "pi": dist.Dirichlet(self.q_pi_concentration(logits))}

    @torch.no_grad()
    def decode(self, y, z_c, z_s):
        """Mean image for labels ``y (N,)``, ``z_c (N, L, class_dim)`` (or ``(N, class_dim)``: the block of class
        ``y``, placed into its slot) and ``z_s (N, shared_dim)``."""
        y = torch.as_tensor(y, device=z_s.device).long()
        if z_c.dim() == z_s.dim():  # only the true-class block was given
            full = z_c.new_zeros(z_c.shape[:-1] + (self.num_classes, self.class_dim))
            z_c = full.scatter(-2, y.reshape(y.shape + (1, 1)).expand(y.shape + (1, self.class_dim)),
                               z_c.unsqueeze(-2))
        out, _ = self._eval_call(lambda v: self.decoder(v), self.decoder_input(y, z_c, z_s))
        return self.likelihood.mean(out)

    @torch.no_grad()
    def generate(self, y, sigma=1.0, generator=None):
        """Class-conditional samples (mean images) with ``z ~ N(0, sigma^2 I)`` (sec. IV-C; ``sigma`` is read as
        a standard deviation)."""
        y = torch.as_tensor(y, device=self.device).long()
        n = y.shape[0]
        z_c = sigma * torch.randn((n, self.num_classes, self.class_dim), generator=generator).to(self.device)
        z_s = sigma * torch.randn((n, self.shared_dim), generator=generator).to(self.device)
        return self.decode(y, z_c, z_s)

    @torch.no_grad()
    def reconstruct(self, x, group=None, y=None):
        """Mean reconstruction from the posterior means, with the given labels or the predicted class."""
        post = self.encode(x)
        if y is None:
            y = self.classify(x).argmax(-1)
        return self.decode(y, post["z_c"].mean, post["z_s"].mean)


@register_model
class CVAE(LabelledModel):
    r"""Conditional VAE baseline (Sohn et al. 2015 as used in the N-VAE paper's fig. 9) with the same networks::

        z ~ N(0, I)            x ~ p(x | [c_y, z])            q(z | x, y) = N(head([trunk(x), c_y]))

    The label is a conditioning input (not modelled). ``latent_dim`` defaults to ``class_dim + shared_dim`` of the
    N-VAE it is compared with (the latents N-VAE uses for one class), and the one-hot ``c_y`` on the decoder input
    is the same class bias.
    """

    name = "cvae"
    Config = CVAEConfig
    latent_sites = ("z",)
    needs_labels = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        c = self.cfg
        image_shape, num_classes, latent_dim = c.image_shape, c.num_classes, c.latent_dim
        architecture, hidden, likelihood, min_scale = c.architecture, c.hidden, c.likelihood, c.min_scale
        self.image_shape, self.num_classes, self.latent_dim = image_shape, num_classes, latent_dim
        self.trunk, self.decoder = make_networks(architecture, image_shape, hidden, num_classes + latent_dim)
        self.likelihood = ImageLikelihood(image_shape, likelihood, min_scale)
        self.z_head = GaussianHead(self.trunk.out_features + num_classes, latent_dim)

    def _c(self, y, like):
        return nn.functional.one_hot(y, self.num_classes).to(like.dtype)

    def model(self, x=None, y=None, labelled=None):
        """p(x, z | y) = p(z) p(x | y, z); ``x=None`` generates one image per label ``y``."""
        if y is None:
            raise InputError("y (class labels) is required: the CVAE conditions on them")
        if x is None:
            like = next(self.parameters())
            y = torch.as_tensor(y, device=like.device)
        else:
            like = x
            y, labelled = self.check_xy(x, y, labelled)
            if labelled is not None and self._checks and not torch.jit.is_tracing() and not bool(labelled.all()):
                raise InputError("the CVAE needs every label (it has no semi-supervised mode)")
        self.register()
        with pyro.plate("observations", y.shape[0], dim=-1):
            z = pyro.sample("z", dist.Normal(like.new_zeros(self.latent_dim), 1.0).to_event(1))
            c = self._c(y, z)
            out, log_var = self.decoder(torch.cat([c.expand(z.shape[:-1] + c.shape[-1:]), z], -1))
            pyro.sample("x", self.likelihood(out, log_var), obs=x)

    def guide(self, x, y=None, labelled=None):
        """q(z | x, y)."""
        y, _ = self.check_xy(x, y, labelled)
        self.register()
        loc, log_var = self.z_head(torch.cat([self.trunk(x), self._c(y, x)], -1))
        with pyro.plate("observations", x.shape[0], dim=-1):
            pyro.sample("z", dist.Normal(loc, torch.exp(0.5 * log_var)).to_event(1))

    @torch.no_grad()
    def encode(self, x, group=None, y=None):
        """Posterior ``{"z": Normal (N, latent_dim)}`` of ``q(z | x, y)``: needs the labels ``y`` ``(N,)``
        (``group`` is ignored: the CVAE has no group latent)."""
        if y is None:
            raise InputError("CVAE.encode needs the labels: encode(x, y=labels), q(z|x,y) is conditioned on them")
        y, _ = self.check_xy(x, y)
        with self.eval_mode():
            loc, log_var = self.z_head(torch.cat([self.trunk(x), self._c(y, x)], -1))
        return {"z": dist.Normal(loc, torch.exp(0.5 * log_var))}

    @torch.no_grad()
    def reconstruct(self, x, group=None, y=None):
        """Mean reconstruction of ``x`` with its labels ``y`` from the posterior mean of ``z``."""
        return self.decode(y, self.encode(x, y=y)["z"].mean)

    @torch.no_grad()
    def decode(self, y, z):
        """Mean images for labels ``y (N,)`` and latents ``z (N, latent_dim)``."""
        y = torch.as_tensor(y, device=z.device).long()
        out, _ = self._eval_call(lambda v: self.decoder(v), torch.cat([self._c(y, z), z], -1))
        return self.likelihood.mean(out)

    @torch.no_grad()
    def generate(self, y, sigma=1.0, generator=None):
        """Class-conditional samples (mean images) with ``z ~ N(0, sigma^2 I)``."""
        y = torch.as_tensor(y, device=self.device).long()
        z = sigma * torch.randn((y.shape[0], self.latent_dim), generator=generator).to(self.device)
        return self.decode(y, z)
