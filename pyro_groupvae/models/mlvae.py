r"""Multi-Level VAE (Bouchacourt, Tomioka & Nowozin, AAAI 2018), with its baselines.

Generative model, for groups :math:`G` of observations (paper fig. 3b)::

    c_G ~ N(0, I)                      one content per group        (plate "groups")
    s_i ~ N(0, I)                      one style per observation    (plate "observations")
    x_i ~ p(x | c_{G(i)}, s_i)         decoder on [c, s]

Guide: :math:`q(s_i|x_i)` Normal, and :math:`q(c_G|X_G)` built from the per-observation Gaussians
:math:`q(c_G|x_i)` by the precision-weighted product (eq. 7, :class:`ProductOfNormals`) or by the uniform mixture
(supplement sec. 1, :class:`MixtureOfNormals`). With ``TraceMeanField_ELBO`` the product's KL is analytic and the
mixture's is estimated by sampling, exactly as in the paper (eq. 3).

Content sampling (both are in the paper):

* ``content_sample="group"`` (default): one content sample per group, the Pyro model above as written.
* ``content_sample="observation"`` (Algorithm 1, supplement sec. 2): each observation draws its own
  :math:`c_{G,i} \sim q(c_G|X_G)`. In Pyro the ``content`` site then lives in the observation plate with
  ``poutine.scale(1/|G|)`` in model *and* guide, so the KL term sums to one group KL (analytic: exactly; Monte
  Carlo: the supplement's eq. 3 estimate with :math:`L=|G|`) and the reconstruction term uses one sample per
  observation. The objective is the same group ELBO in expectation; the price is that *this* model's prior
  predictive draws one content per observation, so use the group mode for ``Predictive`` from the prior.

Baselines: :class:`VAE` (one latent per observation, whose posteriors can be accumulated with the same product at
evaluation, as in the paper's comparison), and ``guide_type="svi"``: the non-amortised SVI baseline with a free
style posterior per training observation and a free content posterior per training group, living in subsampled
plates; :meth:`MLVAE.infer_local` fits fresh local parameters on new data with the decoder frozen.
"""
from __future__ import annotations

import time

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from torch import nn
from tqdm.auto import tqdm

from ..distributions import MixtureOfNormals, ProductOfNormals, group_sizes
from ..validation import InputError, group_index_from_ids
from .base import GroupModel
from .nets import GaussianHead, ImageLikelihood, make_decoder, make_encoder_trunk


class MLVAE(GroupModel):
    r"""The ML-VAE model/guide pair.

    :param tuple image_shape: ``(C, H, W)`` of the images.
    :param int content_dim: dimension of the content :math:`c_G` (paper: 10 on MNIST, 50 on faces).
    :param int style_dim: dimension of the style :math:`s_i`.
    :param str likelihood: ``"normal"`` (paper; learned variance) or ``"bernoulli"`` (binary data).
    :param str architecture: ``"mlp"`` (supplement's MNIST networks, 500 tanh units) or ``"conv"`` (64x64 faces).
    :param int hidden: hidden units of the MLP networks.
    :param str group_posterior: ``"product"`` (eq. 7) or ``"mixture"`` (supplement sec. 1).
    :param str content_sample: ``"group"`` or ``"observation"`` (see the module docstring).
    :param str guide_type: ``"amortized"`` (the ML-VAE) or ``"svi"`` (non-amortised baseline).
    :param int num_train_obs: number of training observations (``guide_type="svi"`` only).
    :param int num_train_groups: number of training groups (``guide_type="svi"`` only).
    :param float min_scale: floor on the standard deviation of the Normal likelihood.
    :param float style_beta: weight of the style KL (``poutine.scale`` on the ``style`` site in model and guide).
        1 is the paper's ELBO. Beyond the paper: a weight > 1 makes it costlier to put group information (the
        class) into the per-image style than into the shared content, where it costs ``1/|G|`` per image.
    """

    name = "mlvae"

    def __init__(self, image_shape=(1, 28, 28), content_dim=10, style_dim=10, likelihood="normal",
                 architecture="mlp", hidden=500, group_posterior="product", content_sample="group",
                 guide_type="amortized", num_train_obs=None, num_train_groups=None, min_scale=0.05, style_beta=1.0):
        image_shape = tuple(int(v) for v in image_shape)
        super().__init__(image_shape=image_shape, content_dim=content_dim, style_dim=style_dim,
                         likelihood=likelihood, architecture=architecture, hidden=hidden,
                         group_posterior=group_posterior, content_sample=content_sample, guide_type=guide_type,
                         num_train_obs=num_train_obs, num_train_groups=num_train_groups, min_scale=min_scale,
                         style_beta=style_beta)
        for arg, value, allowed in [("group_posterior", group_posterior, ("product", "mixture")),
                                    ("content_sample", content_sample, ("group", "observation")),
                                    ("guide_type", guide_type, ("amortized", "svi"))]:
            if value not in allowed:
                raise ValueError(f"{arg} must be one of {allowed}, got {value!r}")
        self.image_shape = image_shape
        self.content_dim, self.style_dim = content_dim, style_dim
        self.group_posterior, self.content_sample, self.guide_type = group_posterior, content_sample, guide_type
        self.style_beta = float(style_beta)
        self._model_parts = ("decoder", "likelihood")
        self.decoder = make_decoder(architecture, content_dim + style_dim, image_shape, hidden)
        self.likelihood = ImageLikelihood(image_shape, likelihood, min_scale)
        if guide_type == "amortized":
            self.trunk = make_encoder_trunk(architecture, image_shape, hidden)
            self.style_head = GaussianHead(self.trunk.out_features, style_dim)
            if content_dim:
                self.content_head = GaussianHead(self.trunk.out_features, content_dim)
            self._guide_parts = ("trunk", "style_head") + (("content_head",) if content_dim else ())
        else:
            if not num_train_obs or (content_dim and not num_train_groups):
                raise ValueError("guide_type='svi' needs num_train_obs and num_train_groups")
            # free variational parameters: mean and log-variance per observation (style) and per group (content)
            self.local = nn.ParameterDict({"style": nn.Parameter(torch.zeros(num_train_obs, 2, style_dim))})
            if content_dim:
                self.local["content"] = nn.Parameter(torch.zeros(num_train_groups, 2, content_dim))
            self._guide_parts = ("local",)

    # ------------------------------------------------------------------ plates
    def _plates(self, n, num_groups, obs_index=None, group_id=None):
        """Plates for the batch; subsampled from the whole training set in the SVI baseline."""
        if obs_index is not None:
            obs = pyro.plate("observations", self.config["num_train_obs"], subsample=obs_index, dim=-1)
        else:
            obs = pyro.plate("observations", n, dim=-1)
        if group_id is not None:
            groups = pyro.plate("groups", self.config["num_train_groups"], subsample=group_id, dim=-1)
        else:
            groups = pyro.plate("groups", num_groups, dim=-1)
        return obs, groups

    def _needs_svi_index(self, obs_index, group_id):
        if self.guide_type == "svi" and (obs_index is None or (self.content_dim and group_id is None)):
            raise InputError("the SVI guide needs obs_index (training rows) and group_id (training groups); "
                             "for new data use infer_local()")

    # ------------------------------------------------------------------ model
    def model(self, x, group_index=None, num_groups=None, obs_index=None, group_id=None):
        """p(X, C, S) = prod_G p(c_G) prod_{i in G} p(s_i) p(x_i | c_G, s_i).

        :param x: images ``(N, C, H, W)``.
        :param group_index: LongTensor ``(N,)`` with the group of each image in ``0..num_groups-1``;
            ``None``: every image is its own group.
        :param int num_groups: number of groups in the batch.
        :param obs_index: rows of the training set (SVI baseline only).
        :param group_id: training-set ids of the batch's groups (SVI baseline only).
        """
        group_index, num_groups = self.check_inputs(x, group_index, num_groups)
        self.register(*self._model_parts)
        n = x.shape[0]
        obs_plate, group_plate = self._plates(n, num_groups, obs_index, group_id)
        zeros = x.new_zeros(self.content_dim)
        content = None
        if self.content_dim and self.content_sample == "group":
            with group_plate:
                content = pyro.sample("content", dist.Normal(zeros, 1.0).to_event(1))
            content = content.index_select(-2, group_index)
        with obs_plate:
            if self.content_dim and self.content_sample == "observation":
                with poutine.scale(scale=1.0 / group_sizes(group_index, num_groups)[group_index]):
                    content = pyro.sample("content", dist.Normal(zeros, 1.0).to_event(1))
            with poutine.scale(scale=self.style_beta):
                style = pyro.sample("style", dist.Normal(x.new_zeros(self.style_dim), 1.0).to_event(1))
            latent = style if content is None else torch.cat([content.expand(style.shape[:-1] + content.shape[-1:]),
                                                               style], -1)
            out, log_var = self.decoder(latent)
            pyro.sample("x", self.likelihood(out, log_var), obs=x)

    # ------------------------------------------------------------------ guide
    def local_posteriors(self, x):
        """Per-observation posteriors: ``(content_loc, content_log_var, style_loc, style_log_var)``."""
        h = self.trunk(x)
        s_loc, s_lv = self.style_head(h)
        if self.content_dim:
            c_loc, c_lv = self.content_head(h)
        else:
            c_loc = c_lv = None
        return c_loc, c_lv, s_loc, s_lv

    def content_posterior(self, c_loc, c_lv, group_index, num_groups, per_observation=False):
        """q(c_G | X_G) from per-observation Gaussians, as a distribution with event dim 1."""
        if self.group_posterior == "product":
            q = ProductOfNormals.from_observations(c_loc, log_var=c_lv, group_index=group_index,
                                                   num_groups=num_groups)
            if per_observation:
                q = ProductOfNormals(q.loc.index_select(-2, group_index), q.scale.index_select(-2, group_index))
            return q.to_event(1)
        return MixtureOfNormals(c_loc, torch.exp(0.5 * c_lv), group_index, num_groups, per_observation)

    def guide(self, x, group_index=None, num_groups=None, obs_index=None, group_id=None):
        """q(C, S | X) = prod_G q(c_G | X_G) prod_i q(s_i | x_i); arguments as :meth:`model`."""
        group_index, num_groups = self.check_inputs(x, group_index, num_groups)
        self._needs_svi_index(obs_index, group_id)
        self.register(*self._guide_parts)
        n = x.shape[0]
        obs_plate, group_plate = self._plates(n, num_groups, obs_index, group_id)
        if self.guide_type == "svi":
            self._svi_guide(obs_plate, group_plate, obs_index, group_id)
            return
        c_loc, c_lv, s_loc, s_lv = self.local_posteriors(x)
        if self.content_dim and self.content_sample == "group":
            with group_plate:
                pyro.sample("content", self.content_posterior(c_loc, c_lv, group_index, num_groups))
        with obs_plate:
            if self.content_dim and self.content_sample == "observation":
                with poutine.scale(scale=1.0 / group_sizes(group_index, num_groups)[group_index]):
                    pyro.sample("content", self.content_posterior(c_loc, c_lv, group_index, num_groups, True))
            with poutine.scale(scale=self.style_beta):
                pyro.sample("style", dist.Normal(s_loc, torch.exp(0.5 * s_lv)).to_event(1))

    def _svi_guide(self, obs_plate, group_plate, obs_index, group_id):
        def normal(params):
            return dist.Normal(params[..., 0, :], torch.exp(0.5 * params[..., 1, :].clamp(-20, 10))).to_event(1)

        if self.content_dim:
            if self.content_sample != "group":
                raise InputError("the SVI baseline supports content_sample='group' only")
            with group_plate:
                pyro.sample("content", normal(self.local["content"][group_id]))
        with obs_plate, poutine.scale(scale=self.style_beta):
            pyro.sample("style", normal(self.local["style"][obs_index]))

    # ------------------------------------------------------------------ batching
    def batch_inputs(self, data, batch, device=None):
        kw = super().batch_inputs(data, batch, device)
        if self.guide_type == "svi":
            device = kw["x"].device
            kw["obs_index"] = batch.indices.to(device)
            if self.content_dim:
                # the training groups of the SVI baseline are the label values; their ids index local_content
                first = torch.zeros(batch.num_groups, dtype=torch.long).scatter_(
                    0, batch.group_index.flip(0), torch.arange(len(batch.indices)).flip(0))
                kw["group_id"] = data.y[batch.indices[first]].long().to(device)
                if int(kw["group_id"].max()) >= self.config["num_train_groups"]:
                    raise InputError("SVI baseline: group labels must lie in 0..num_train_groups-1")
        return kw

    # ------------------------------------------------------------------ user API
    @torch.no_grad()
    def encode(self, x, group_ids=None):
        """Posteriors of content and style for images ``x``.

        :param x: images ``(N, C, H, W)``.
        :param group_ids: any integer ids ``(N,)``; images with the same id accumulate evidence on their content.
            ``None`` means each image is its own group (strategy 1 of the paper).
        :returns: ``(content, style)``: ``content`` a Normal with batch shape ``(N, content_dim)`` whose row
            ``i`` is the posterior of the content of image ``i``'s group (the product, or for the mixture a
            moment-matched Normal), ``style`` a Normal ``(N, style_dim)``.
        """
        if self.guide_type == "svi":
            # non-amortised: there is no encoder, so "encoding" is test-time SVI with the decoder frozen
            content, style, _ = self.infer_local(x, group_ids, steps=self.encode_steps)
            return content, style
        self.check_inputs(x)
        group_index, num_groups = group_index_from_ids(group_ids, x.shape[0], x.device)
        was_training = self.training
        self.eval()
        c_loc, c_lv, s_loc, s_lv = self.local_posteriors(x)
        self.train(was_training)
        style = dist.Normal(s_loc, torch.exp(0.5 * s_lv))
        if not self.content_dim:
            return None, style
        q = self.content_posterior(c_loc, c_lv, group_index, num_groups, per_observation=True)
        if isinstance(q, MixtureOfNormals):
            return dist.Normal(q.mean, q.variance.sqrt()), style
        return q.base_dist, style

    @torch.no_grad()
    def decode(self, content, style):
        """Mean image for latent codes: ``content (N, content_dim)``, ``style (N, style_dim)``."""
        latent = style if content is None or not self.content_dim else torch.cat(
            [content.expand(style.shape[:-1] + content.shape[-1:]), style], -1)
        was_training = self.training
        self.eval()
        out, _ = self.decoder(latent)
        self.train(was_training)
        return self.likelihood.mean(out)

    #: test-time SVI steps used by :meth:`encode` for the non-amortised baseline
    encode_steps = 300

    @torch.enable_grad()
    def infer_local(self, x, group_ids=None, steps=500, lr=1e-2, elbo=None, progress=False, callback=None):
        """Non-amortised test-time inference: fit fresh local posteriors (a style per image, a content per group)
        by SVI with the decoder frozen (supplement sec. 2: "epochs of inference at test-time").

        :param x: images ``(N, C, H, W)``.
        :param group_ids: integer ids ``(N,)`` or ``None`` (each image its own group).
        :param int steps: optimisation steps (full batch).
        :param callable callback: called as ``callback(step, seconds, elbo_per_obs)`` after every step.
        :returns: ``(content, style, history)``: Normals as in :meth:`encode` and a list of
            ``(step, seconds, elbo_per_observation)``.
        """
        self.check_inputs(x)
        group_index, num_groups = group_index_from_ids(group_ids, x.shape[0], x.device)
        n = x.shape[0]
        style_p = torch.zeros(n, 2, self.style_dim, device=x.device, requires_grad=True)
        content_p = torch.zeros(num_groups, 2, max(self.content_dim, 1), device=x.device, requires_grad=True)

        def local_guide(x, group_index, num_groups):
            def normal(p):
                return dist.Normal(p[..., 0, :], torch.exp(0.5 * p[..., 1, :].clamp(-20, 10))).to_event(1)

            if self.content_dim:
                with pyro.plate("groups", num_groups, dim=-1):
                    pyro.sample("content", normal(content_p))
            with pyro.plate("observations", n, dim=-1), poutine.scale(scale=self.style_beta):
                pyro.sample("style", normal(style_p))

        frozen = [p for p in self.parameters() if p.requires_grad]
        for p in frozen:
            p.requires_grad_(False)
        blocked_model = poutine.block(self.model, hide_types=["param"])
        elbo = elbo or pyro.infer.Trace_ELBO()
        opt = torch.optim.Adam([style_p, content_p], lr=lr)
        history, t0 = [], time.perf_counter()
        was_training, mode = self.training, self.content_sample
        self.eval()
        self.content_sample = "group"
        try:
            for step in tqdm(range(steps), disable=not progress, desc="test-time SVI"):
                opt.zero_grad()
                loss = elbo.differentiable_loss(blocked_model, local_guide, x, group_index, num_groups)
                loss.backward()
                opt.step()
                history.append((step + 1, time.perf_counter() - t0, -loss.item() / n))
                if callback is not None:
                    callback(*history[-1])
        finally:
            for p in frozen:
                p.requires_grad_(True)
            self.train(was_training)
            self.content_sample = mode
        sd = lambda p: torch.exp(0.5 * p[..., 1, :].clamp(-20, 10)).detach()  # noqa: E731
        style = dist.Normal(style_p[:, 0].detach(), sd(style_p))
        content = None
        if self.content_dim:
            content = dist.Normal(content_p[:, 0].detach()[group_index], sd(content_p)[group_index])
        return content, style, history


class VAE(MLVAE):
    """The VAE baseline: one latent ``z_i`` per observation and no grouping in training.

    At evaluation :meth:`encode` accumulates the ``z`` posteriors of images sharing a group id with the same
    product of Normals as the ML-VAE (the paper's comparison in fig. 6c), returned as the "content"; the
    per-image posterior is returned as the "style".

    :param int latent_dim: dimension of ``z`` (default 20 = the ML-VAE's 10 + 10).
    """

    name = "vae"

    def __init__(self, image_shape=(1, 28, 28), latent_dim=20, likelihood="normal", architecture="mlp",
                 hidden=500, min_scale=0.05):
        super().__init__(image_shape, 0, latent_dim, likelihood, architecture, hidden, min_scale=min_scale)
        self.config = dict(image_shape=tuple(image_shape), latent_dim=latent_dim, likelihood=likelihood,
                           architecture=architecture, hidden=hidden, min_scale=min_scale)

    @torch.no_grad()
    def encode(self, x, group_ids=None):
        _, z = super().encode(x)
        if group_ids is None:
            return z, z
        group_index, num_groups = group_index_from_ids(group_ids, x.shape[0], x.device)
        q = ProductOfNormals.from_observations(z.loc, z.scale, group_index, num_groups)
        return dist.Normal(q.loc[group_index], q.scale[group_index]), z

    @torch.no_grad()
    def decode(self, content, style=None):
        """Mean image of latent ``z`` (``content``; ``style`` is ignored if ``content`` is given)."""
        return super().decode(None, content if content is not None else style)
