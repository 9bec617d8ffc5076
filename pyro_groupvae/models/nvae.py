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

How Pyro's ELBO becomes eq. 3. The model samples the label *first* from its marginal and then ``pi`` from the
conjugate posterior, ``p(pi) p(y|pi) = p(y) p(pi|y)`` (:class:`~pyro_groupvae.distributions.DirichletClassPrior`):
``y`` is observed under ``p(y) = Cat(1/L)`` and ``pi ~ Dir(alpha_p 1 + c_y)``. With ``TraceMeanField_ELBO`` every
term of eq. 3 is then one site: ``E_q[log p(x|y,z)]`` (Monte Carlo), ``KL(q(z|x)||p(z))`` (analytic),
``KL(q(pi|x)||p(pi|y))`` (analytic, registered KL) and ``log p(y) = -log L``. ``beta_c`` (eq. 7) multiplies the
``z_c`` site by ``poutine.scale`` in model and guide.

``class_objective="surrogate"`` optimises eq. 6/7 instead: no ``pi`` site, and the label is observed under the
encoder's predictive ``q(y|x) = E_q[pi] = alpha(x)``, which adds ``log q(y|x)``.

Beyond the paper, semi-supervised training: pass ``labelled`` (bool mask; the labels of unlabelled rows may be
placeholders such as -1). The model then uses the other factorisation, ``pi ~ p(pi) = Dir(alpha_p 1)`` (analytic
KL against ``q(pi|x)``), and sums ``y`` out exactly: one factor per row,
``log sum_y pi_y [y = label, if labelled] p(x | y, z)``, with all ``L`` classes decoded in one batched call. A
labelled row gets the supervised bound (in expectation; ``log pi_y`` is evaluated at the reparameterised sample),
an unlabelled row ``-KL(q(pi|x)||p(pi)) + E_q[log sum_y pi_y p(x|y,z)]``, which trains the classifier ``q(pi|x)`` on
unlabelled images. Why not ``TraceEnum_ELBO`` with ``y`` enumerated: it sums out ``y`` with a log-space einsum that
shifts every factor by its *own* maximum; when the y-dependent factors (``p(x|y,z)`` spans hundreds of nats, the
label reading is ``-inf`` off the label) disagree by more than ~87 nats, every product underflows float32 and the
loss is ``inf`` -- which happened on the bundled MNIST at epoch 1 (seed 0). A single joint ``logsumexp`` is exact.
``q(pi|x)`` is drawn in float64 (:class:`~pyro_groupvae.distributions.dirichlet_prior.Float64Dirichlet`).

Choices the paper leaves open (and ours):

* ``alpha(x)`` is a softmax (floored so that every concentration is at least ``min_concentration = 0.02``), so
  ``alpha_q`` is the total concentration of ``q(pi|x)`` and ``q(y|x) = alpha(x)`` (:meth:`NVAE.classify`).
  ``alpha_q`` defaults to ``L alpha_p + 1``, the total concentration of
  ``p(pi|y)``, so that ``q`` can match the conjugate posterior exactly (KL 0) on a perfectly classified image.
* ``alpha_p = 0.1`` by default (the paper gives no value): then ``p(pi|y)`` puts mean ``(1 + alpha_p)/(1 + L
  alpha_p) = 0.55`` on the true class for L = 10. Smaller values make the KL sharper.
* Latent sizes: the paper does not state them for MNIST; we use ``class_dim=2`` per class and ``shared_dim=10``.
* Networks: ``architecture="mlp"`` is the library's MNIST MLPs (784-500 tanh trunk, 500 tanh decoder);
  ``"cnn"`` (the recipe's default for digits) swaps the encoder trunk for :class:`SmallConvTrunk`, because with
  the MLP trunk q(y|x) stays at 0.93-0.94 test accuracy on the 3,500 bundled digits (docs/results.md).
"""
from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from torch import nn

from ..distributions import DirichletClassPrior, class_bound_terms
from ..distributions.dirichlet_prior import Float64Dirichlet
from ..validation import InputError, check_images, check_labels
from .base import GroupModel
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


def _register(cls):
    from . import register_model

    return register_model(cls)


class LabelledModel(GroupModel):
    """Shared part of N-VAE and CVAE: labels from ``ImageDataset.y`` and the input checks."""

    name = "labelled"

    def check_xy(self, x, y, labelled=None, need_labels=True):
        """Validate images, labels (``0..L-1``, one per image) and the optional labelled mask."""
        check_images(x, self.config["image_shape"], self.config.get("likelihood"))
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
        """``x`` and ``y`` of the batch's rows; ``labelled`` when ``data.extras["labelled"]`` (bool mask over the
        dataset rows) is present. Group structure is not used."""
        device = device or self.device
        idx = batch.indices
        kw = dict(x=data.x[idx].to(device), y=data.y[idx].to(device))
        mask = data.extras.get("labelled") if data.extras else None
        if mask is not None:
            kw["labelled"] = torch.as_tensor(mask)[idx].to(device)
        return kw

    def _eval_call(self, fn, *args):
        was_training = self.training
        self.eval()
        try:
            return fn(*args)
        finally:
            self.train(was_training)


@_register
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
        model takes the semi-supervised path whenever ``labelled`` is passed.
    :param str likelihood: ``"normal"`` or ``"bernoulli"``.
    :param str architecture: ``"mlp"``, ``"cnn"`` (small CNN encoder, MLP decoder) or ``"conv"`` (64x64).
    :param int hidden: hidden units of the MLPs.
    :param float min_scale: floor on the Normal likelihood's standard deviation.
    """

    name = "nvae"

    def __init__(self, image_shape=(1, 28, 28), num_classes=10, class_dim=2, shared_dim=10, alpha_p=0.1,
                 alpha_q=None, beta_c=2.0, bias=True, class_objective="kl", semi_supervised=False,
                 class_weight=1.0, min_concentration=0.02, likelihood="normal", architecture="mlp", hidden=500,
                 min_scale=0.05):
        image_shape = tuple(int(v) for v in image_shape)
        if alpha_q is None:
            alpha_q = num_classes * alpha_p + 1.0
        super().__init__(image_shape=image_shape, num_classes=num_classes, class_dim=class_dim,
                         shared_dim=shared_dim, alpha_p=alpha_p, alpha_q=alpha_q, beta_c=beta_c, bias=bias,
                         class_objective=class_objective, semi_supervised=semi_supervised, class_weight=class_weight,
                         min_concentration=min_concentration, likelihood=likelihood,
                         architecture=architecture, hidden=hidden, min_scale=min_scale)
        if class_objective not in ("kl", "surrogate"):
            raise ValueError(f"class_objective must be 'kl' or 'surrogate', got {class_objective!r}")
        if semi_supervised and class_objective != "kl":
            raise ValueError("semi-supervised training needs class_objective='kl' (the surrogate of eq. 6 has no "
                             "term for unlabelled images)")
        if num_classes < 2 or class_dim < 1 or shared_dim < 0:
            raise ValueError("need num_classes >= 2, class_dim >= 1, shared_dim >= 0")
        if alpha_p <= 0 or alpha_q <= 0 or beta_c < 0:
            raise ValueError("alpha_p and alpha_q must be > 0 and beta_c >= 0")
        self.image_shape = image_shape
        self.num_classes, self.class_dim, self.shared_dim = num_classes, class_dim, shared_dim
        self.alpha_p, self.alpha_q, self.beta_c = float(alpha_p), float(alpha_q), float(beta_c)
        self.class_weight = float(class_weight)
        self.min_concentration = float(min_concentration)
        if not 0 <= self.min_concentration * num_classes < self.alpha_q:
            raise ValueError("need 0 <= min_concentration * num_classes < alpha_q")
        if self.class_weight <= 0:
            raise ValueError("class_weight must be > 0")
        self.bias, self.class_objective, self.semi_supervised = bool(bias), class_objective, semi_supervised
        self.decoder_in = num_classes * (class_dim + int(self.bias)) + shared_dim
        self.trunk, self.decoder = make_networks(architecture, image_shape, hidden, self.decoder_in)
        self.likelihood = ImageLikelihood(image_shape, likelihood, min_scale)
        self.z_head = GaussianHead(self.trunk.out_features, num_classes * class_dim + shared_dim)
        self.class_head = nn.Linear(self.trunk.out_features, num_classes)

    def default_elbo(self):
        return pyro.infer.TraceMeanField_ELBO()

    # ------------------------------------------------------------------ pieces
    def class_prior(self, device=None):
        """``p(pi) = Dir(alpha_p 1_L)`` as a :class:`DirichletClassPrior`."""
        return DirichletClassPrior.symmetric(self.alpha_p, self.num_classes, device=device)

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
    def model(self, x, y=None, labelled=None):
        r"""p(x, y, z, pi) = p(x | y, z) p(pi | y) p(y) p(z)  (= p(x|y,z) p(y|pi) p(pi) p(z)).

        :param x: images ``(N, C, H, W)``.
        :param y: labels ``(N,)`` in ``0..L-1``.
        :param labelled: optional bool ``(N,)``: which labels are known (semi-supervised path, see the module
            docstring); ``None``: all known (eq. 3 path).
        """
        y, labelled = self.check_xy(x, y, labelled, need_labels=labelled is None)
        self.register()
        n = x.shape[0]
        prior = self.class_prior(x.device)
        supervised = labelled is None
        if not supervised and self.class_objective != "kl":
            raise InputError("unlabelled rows (labelled=...) need class_objective='kl'; the eq. 6 surrogate is "
                             "defined for labelled data only")
        with pyro.plate("observations", n, dim=-1):
            if supervised and self.class_objective == "surrogate":
                # eq. 6: the class term is log q(y|x) (the encoder is registered with the model)
                probs = self.class_probs(self.encode_params(x)[-1])
                with poutine.scale(scale=self.class_weight):
                    pyro.sample("y", dist.Categorical(probs=probs), obs=y)
            elif supervised:
                pyro.sample("y", prior.class_marginal(), obs=y)                   # log p(y) = -log L
                with poutine.scale(scale=self.class_weight):
                    pyro.sample("pi", prior.update(y))                             # p(pi | y), KL analytic
            else:
                # semi-supervised: pi ~ p(pi) (KL analytic); y is summed out below, together with x
                pi = pyro.sample("pi", prior)
                if self.class_weight != 1.0 and y is not None:
                    # extra (gamma - 1) share of the labelled rows' class term, analytic
                    conc = self.q_pi_concentration(self.encode_params(x)[-1])
                    extra = (self.class_weight - 1.0) * class_bound_terms(conc, y, self.alpha_p)
                    pyro.factor("class_weight", torch.where(labelled, extra, torch.zeros_like(extra)),
                                has_rsample=True)
            with poutine.scale(scale=self.beta_c):
                z_c = pyro.sample("z_c", dist.Normal(x.new_zeros(self.num_classes, self.class_dim), 1.0).to_event(2))
            z_s = pyro.sample("z_s", dist.Normal(x.new_zeros(self.shared_dim), 1.0).to_event(1))
            if supervised:
                out, log_var = self.decoder(self.decoder_input(y, z_c, z_s))
                pyro.sample("x", self.likelihood(out, log_var), obs=x)
            else:
                self._marginal_x_and_label(x, y, labelled, pi, z_c, z_s)

    def _marginal_x_and_label(self, x, y, labelled, pi, z_c, z_s):
        r"""Semi-supervised term, y summed out: ``log sum_y pi_y [y = label if labelled] p(x | y, z)``.

        With ``pi ~ p(pi)`` this is the same joint as the supervised path (``p(pi) pi_y = p(y) p(pi|y)``): a
        labelled row gets exactly the supervised bound, an unlabelled one ``log p(pi) + log sum_y pi_y p(x|y,z)``.
        All ``L`` classes are decoded in one batched call (an explicit enumeration dimension in front).
        """
        L = self.num_classes
        ys = torch.arange(L, device=x.device).reshape((L,) + (1,) * (z_s.dim() - 1))
        out, log_var = self.decoder(self.decoder_input(ys, z_c, z_s))
        log_px = self.likelihood(out, log_var).log_prob(x)  # (L, ..., N)
        log_pi = torch.log(pi.clamp_min(torch.finfo(pi.dtype).tiny)).to(log_px.dtype).movedim(-1, 0)
        joint = log_px + log_pi
        if y is not None:
            allowed = ~labelled | (ys == y)  # a known label is a noiseless reading of y
            joint = torch.where(allowed, joint, torch.full_like(joint, -math.inf))
        pyro.factor("x_and_label", torch.logsumexp(joint, 0), has_rsample=True)

    # ------------------------------------------------------------------ guide
    def guide(self, x, y=None, labelled=None):
        """q(z_c, z_s, pi | x) = q(z|x) q(pi|x); arguments as :meth:`model` (the guide does not look at ``y``)."""
        _, labelled = self.check_xy(x, y, labelled, need_labels=False)
        self.register()
        c_loc, c_lv, s_loc, s_lv, logits = self.encode_params(x)
        with pyro.plate("observations", x.shape[0], dim=-1):
            if self.class_objective == "kl":
                # the class weight scales pi in the supervised model only (see model)
                # drawn in float64, whose range holds the tiny components a float32 draw would clamp (the
                # semi-supervised term uses log pi_y at the sample)
                with poutine.scale(scale=self.class_weight if labelled is None else 1.0):
                    pyro.sample("pi", Float64Dirichlet(self.q_pi_concentration(logits)))
            with poutine.scale(scale=self.beta_c):
                pyro.sample("z_c", dist.Normal(c_loc, torch.exp(0.5 * c_lv)).to_event(2))
            pyro.sample("z_s", dist.Normal(s_loc, torch.exp(0.5 * s_lv)).to_event(1))

    # ------------------------------------------------------------------ user API
    @torch.no_grad()
    def classify(self, x):
        r"""Class probabilities ``q(y|x) = E_{q(pi|x)}[pi] = alpha(x)`` (:meth:`class_probs`), shape ``(N, L)``."""
        check_images(x, self.image_shape, self.config.get("likelihood"))
        return self._eval_call(lambda v: self.class_probs(self.encode_params(v)[-1]), x)

    @torch.no_grad()
    def encode(self, x):
        """Posteriors: ``(z_c, z_s, q_pi)``: Normals with batch shapes ``(N, L, class_dim)``, ``(N, shared_dim)``
        and the Dirichlet ``q(pi|x)``."""
        check_images(x, self.image_shape, self.config.get("likelihood"))
        c_loc, c_lv, s_loc, s_lv, logits = self._eval_call(self.encode_params, x)
        return (dist.Normal(c_loc, torch.exp(0.5 * c_lv)), dist.Normal(s_loc, torch.exp(0.5 * s_lv)),
                dist.Dirichlet(self.q_pi_concentration(logits)))

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
    def reconstruct(self, x, y=None):
        """Mean reconstruction from the posterior means, with the given labels or the predicted class."""
        z_c, z_s, _ = self.encode(x)
        if y is None:
            y = self.classify(x).argmax(-1)
        return self.decode(y, z_c.mean, z_s.mean)


@_register
class CVAE(LabelledModel):
    r"""Conditional VAE baseline (Sohn et al. 2015 as used in the N-VAE paper's fig. 9) with the same networks::

        z ~ N(0, I)            x ~ p(x | [c_y, z])            q(z | x, y) = N(head([trunk(x), c_y]))

    The label is a conditioning input (not modelled). ``latent_dim`` defaults to ``class_dim + shared_dim`` of the
    N-VAE it is compared with (the latents N-VAE uses for one class), and the one-hot ``c_y`` on the decoder input
    is the same class bias.
    """

    name = "cvae"

    def __init__(self, image_shape=(1, 28, 28), num_classes=10, latent_dim=12, likelihood="normal",
                 architecture="mlp", hidden=500, min_scale=0.05):
        image_shape = tuple(int(v) for v in image_shape)
        super().__init__(image_shape=image_shape, num_classes=num_classes, latent_dim=latent_dim,
                         likelihood=likelihood, architecture=architecture, hidden=hidden, min_scale=min_scale)
        self.image_shape, self.num_classes, self.latent_dim = image_shape, num_classes, latent_dim
        self.trunk, self.decoder = make_networks(architecture, image_shape, hidden, num_classes + latent_dim)
        self.likelihood = ImageLikelihood(image_shape, likelihood, min_scale)
        self.z_head = GaussianHead(self.trunk.out_features + num_classes, latent_dim)

    def _c(self, y, like):
        return nn.functional.one_hot(y, self.num_classes).to(like.dtype)

    def model(self, x, y=None, labelled=None):
        """p(x, z | y) = p(z) p(x | y, z)."""
        y, labelled = self.check_xy(x, y, labelled)
        if labelled is not None and not bool(labelled.all()):
            raise InputError("the CVAE needs every label (it has no semi-supervised mode)")
        self.register()
        with pyro.plate("observations", x.shape[0], dim=-1):
            z = pyro.sample("z", dist.Normal(x.new_zeros(self.latent_dim), 1.0).to_event(1))
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
    def decode(self, y, z):
        y = torch.as_tensor(y, device=z.device).long()
        out, _ = self._eval_call(lambda v: self.decoder(v), torch.cat([self._c(y, z), z], -1))
        return self.likelihood.mean(out)

    @torch.no_grad()
    def generate(self, y, sigma=1.0, generator=None):
        """Class-conditional samples (mean images) with ``z ~ N(0, sigma^2 I)``."""
        y = torch.as_tensor(y, device=self.device).long()
        z = sigma * torch.randn((y.shape[0], self.latent_dim), generator=generator).to(self.device)
        return self.decode(y, z)
