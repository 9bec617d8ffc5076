r"""Multi-Level VAE (Bouchacourt, Tomioka & Nowozin, AAAI 2018), with its baselines.

Generative model, for groups :math:`G` of observations (paper fig. 3b)::

    c_G ~ N(0, I)                      one content per group        (plate "groups")
    s_i ~ N(0, I)                      one style per observation    (plate "observations")
    x_i ~ p(x | c_{G(i)}, s_i)         decoder on [c, s]

Guide: :math:`q(s_i|x_i)` Normal, and :math:`q(c_G|X_G)` built from the per-observation Gaussians
:math:`q(c_G|x_i)` by the precision-weighted product (eq. 7, :class:`ProductOfNormals`) or by the uniform mixture
(supplement sec. 1, :class:`MixtureOfNormals`). With ``TraceMeanField_ELBO`` the product's KL is analytic and the
mixture's is estimated by sampling, exactly as in the paper (eq. 3).

Pyro layout: plates ``"groups"`` (size ``G``) and ``"observations"`` (size ``N``), both ``dim=-1`` and not nested
(an observation's group is ``group_index``); sites ``content`` ``(G, content_dim)``, ``style`` ``(N, style_dim)``
and the observed ``x`` ``(N, C, H, W)``.

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
plates; :meth:`MLVAE.infer_local` fits fresh local parameters on new data with the decoder frozen. Its free
parameters are ``AutoNormal``'s: a mean and a softplus-parameterised standard deviation, starting at 0 and 0.1
(``init_scale=0.1``); starting at the prior's unit standard deviation ended about 2x worse in loss after 300 steps
(docs/results.md).

Plain Pyro: ``model(None, group_index, num_groups)`` generates (prior ``Predictive``). AutoGuides work on full
batches; on minibatches an AutoGuide's local parameters must be indexed by training row and group, which
:meth:`MLVAE.create_plates` provides (``AutoNormal(model.model, create_plates=model.create_plates)``, with
``obs_index``/``group_id`` passed and ``num_train_obs``/``num_train_groups`` set) -- without it Pyro pairs batch
*positions* with local parameters, i.e. every row with other rows' posteriors.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Optional

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from torch import nn
from tqdm import tqdm

from ..distributions import MixtureOfNormals, ProductOfNormals, group_sizes
from ..validation import InputError, group_index_from_ids
from .base import (GroupModel, hidden_param, image_shape_param, likelihood_param, min_scale_param, param,
                   register_model)
from .nets import GaussianHead, ImageLikelihood, make_decoder, make_encoder_trunk


@dataclass
class MLVAEConfig:
    """Options of :class:`MLVAE` (field order = positional order of the constructor)."""

    image_shape: tuple = image_shape_param()
    content_dim: int = param(10, "dimension of the content c_G (paper: 10 on MNIST, 50 on faces)")
    style_dim: int = param(10, "dimension of the style s_i")
    likelihood: str = likelihood_param()
    architecture: str = param("mlp", "mlp (supplement's MNIST networks) or conv (64x64 images)", ("mlp", "conv"))
    hidden: int = hidden_param()
    group_posterior: str = param("product", "q(c_G|X_G): product (eq. 7) or mixture (supplement sec. 1)",
                                 ("product", "mixture"))
    content_sample: str = param("group", "one content sample per group, or per observation (Algorithm 1)",
                                ("group", "observation"))
    guide_type: str = param("amortized", "amortized (the ML-VAE) or svi (non-amortised baseline)",
                            ("amortized", "svi"), flag="guide")
    num_train_obs: Optional[int] = param(None, "training observations (guide_type='svi')", cli=False)
    num_train_groups: Optional[int] = param(None, "training groups (guide_type='svi')", cli=False)
    min_scale: float = min_scale_param()
    style_beta: float = param(1.0, "weight of the style KL (1 = the paper's ELBO; >1 pushes group information "
                                   "into the content)")


def _local_init(n, dim, init_scale=0.1):
    """Initial free parameters ``(n, 2, dim)`` of the SVI baseline: row 0 the mean (0), row 1 the unconstrained
    standard deviation (``softplus`` of it is the standard deviation), initially ``init_scale`` -- exactly
    ``AutoNormal``'s parameterisation and default ``init_scale=0.1``. (Before: log-variance 0, i.e. the prior's unit
    standard deviation, which starts the decoder on pure noise; it ended about 2x worse in loss after 300 steps.)"""
    p = torch.zeros(n, 2, dim)
    p[:, 1] = math.log(math.expm1(init_scale))
    return p


def _local_normal(p):
    """``Normal`` (event dim 1) of free parameters laid out as in :func:`_local_init`."""
    return dist.Normal(p[..., 0, :], nn.functional.softplus(p[..., 1, :])).to_event(1)


def _layout(model, x, group_index, num_groups):
    """``(group_index, n, num_groups, like)`` of a call: checked from ``x``, or for ``x=None`` (prior
    predictive) from ``group_index`` (or ``num_groups`` groups of one); ``like`` is a tensor on the model's
    device and dtype."""
    if x is not None:
        group_index, num_groups = model.check_inputs(x, group_index, num_groups)
        return group_index, x.shape[0], num_groups, x
    like = next(model.parameters())
    if group_index is None:
        if num_groups is None:
            raise InputError("with x=None give group_index (and num_groups) or num_groups: how many images to "
                             "generate")
        return torch.arange(int(num_groups), device=like.device), int(num_groups), int(num_groups), like
    group_index = torch.as_tensor(group_index, device=like.device)
    num_groups = int(group_index.max()) + 1 if num_groups is None else num_groups
    return group_index, group_index.shape[0], num_groups, like


@register_model
class MLVAE(GroupModel):
    r"""The ML-VAE model/guide pair. Options: :class:`MLVAEConfig` (keywords, or a config instance).

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

    :meth:`encode` returns ``{"content", "style"}`` (``"style"`` only when ``content_dim=0``).
    """

    name = "mlvae"
    Config = MLVAEConfig
    latent_sites = ("content", "style")
    group_site = "content"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        c = self._network_config()
        image_shape, content_dim, style_dim = c.image_shape, c.content_dim, c.style_dim
        group_posterior, content_sample, guide_type = c.group_posterior, c.content_sample, c.guide_type
        architecture, hidden = c.architecture, c.hidden
        num_train_obs, num_train_groups = c.num_train_obs, c.num_train_groups
        # group_posterior, content_sample, guide_type: checked by validate_config (GroupModel.__init__)
        if not content_dim:
            self.latent_sites = ("style",)
        self.image_shape = image_shape
        self.content_dim, self.style_dim = content_dim, style_dim
        self.group_posterior, self.content_sample, self.guide_type = group_posterior, content_sample, guide_type
        self.style_beta = float(c.style_beta)
        self.decoder = make_decoder(architecture, content_dim + style_dim, image_shape, hidden)
        self.likelihood = ImageLikelihood(image_shape, c.likelihood, c.min_scale)
        if guide_type == "amortized":
            self.trunk = make_encoder_trunk(architecture, image_shape, hidden)
            self.style_head = GaussianHead(self.trunk.out_features, style_dim)
            if content_dim:
                self.content_head = GaussianHead(self.trunk.out_features, content_dim)
        else:
            if not num_train_obs or (content_dim and not num_train_groups):
                raise ValueError("guide_type='svi' needs num_train_obs and num_train_groups")
            # free variational parameters: mean and log-variance per observation (style) and per group (content)
            self.local = nn.ParameterDict({"style": nn.Parameter(_local_init(num_train_obs, style_dim))})
            if content_dim:
                self.local["content"] = nn.Parameter(_local_init(num_train_groups, content_dim))

    # ------------------------------------------------------------------ plates
    def _plates(self, n, num_groups, obs_index=None, group_id=None):
        """Plates for the batch; subsampled from the whole training set when ``obs_index``/``group_id`` (rows
        and groups of the training set) are given: the SVI baseline, and AutoGuides (:meth:`create_plates`)."""
        for index, value, size in (("obs_index", obs_index, "num_train_obs"),
                                   ("group_id", group_id, "num_train_groups")):
            if value is not None and not self.config.get(size):
                raise InputError(f"{index} (training-set ids) needs {size}, the training-set size, in the "
                                 "model's constructor")
        if obs_index is not None:
            obs = pyro.plate("observations", self.config["num_train_obs"], subsample=obs_index, dim=-1)
        else:
            obs = pyro.plate("observations", n, dim=-1)
        if group_id is not None:
            groups = pyro.plate("groups", self.config["num_train_groups"], subsample=group_id, dim=-1)
        else:
            groups = pyro.plate("groups", num_groups, dim=-1)
        return obs, groups

    def create_plates(self, x=None, group_index=None, num_groups=None, obs_index=None, group_id=None):
        """The model's plates, for Pyro's AutoGuides on minibatches::

            guide = AutoNormal(model.model, create_plates=model.create_plates)
            svi.step(x, group_index, num_groups=G, obs_index=rows, group_id=groups)

        With ``obs_index``/``group_id`` (training-set rows of the batch and training-set ids of its groups; the
        model needs ``num_train_obs``/``num_train_groups``) the plates are subsampled from the training set, so
        the AutoGuide keeps one local parameter per training observation/group and pairs every batch row with
        its own. Without them an AutoGuide's local parameters are per *batch position*: rows of different
        batches share them (Pyro cannot know better), which is only right for full-batch training.

        An AutoGuide does not copy the model's ``poutine.scale`` onto its own sites, so with ``style_beta != 1``
        it optimises ``beta log p(s) - log q(s)`` rather than the beta-weighted KL; use ``guide_type="svi"``
        (which scales its ``style`` site too) for a weighted style KL.
        """
        n, num_groups, _ = _layout(self, x, group_index, num_groups)[1:]
        return list(self._plates(n, num_groups, obs_index, group_id))

    def _needs_svi_index(self, obs_index, group_id):
        if self.guide_type == "svi" and (obs_index is None or (self.content_dim and group_id is None)):
            raise InputError("the SVI guide needs obs_index (training rows) and group_id (training groups); "
                             "for new data use infer_local()")

    # ------------------------------------------------------------------ model
    def model(self, x=None, group_index=None, num_groups=None, obs_index=None, group_id=None):
        """p(X, C, S) = prod_G p(c_G) prod_{i in G} p(s_i) p(x_i | c_G, s_i).

        :param x: images ``(N, C, H, W)``; ``None``: generate (prior predictive) ``len(group_index)`` images in
            ``num_groups`` groups, or ``num_groups`` images in groups of one when ``group_index`` is ``None``.
        :param group_index: LongTensor ``(N,)`` with the group of each image in ``0..num_groups-1``;
            ``None``: every image is its own group.
        :param int num_groups: number of groups in the batch.
        :param obs_index: rows of the training set (SVI baseline only).
        :param group_id: training-set ids of the batch's groups (SVI baseline only).
        """
        group_index, n, num_groups, like = _layout(self, x, group_index, num_groups)
        self.register()
        obs_plate, group_plate = self._plates(n, num_groups, obs_index, group_id)
        zeros = like.new_zeros(self.content_dim)
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
                style = pyro.sample("style", dist.Normal(like.new_zeros(self.style_dim), 1.0).to_event(1))
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
        self.register()
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
            return _local_normal(params)

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
    def _network_config(self):
        """The :class:`MLVAEConfig` the networks are built from (the VAE maps its own config to one)."""
        return self.cfg

    @torch.no_grad()
    def encode(self, x, group=None):
        """Posteriors of content and style for images ``x``: ``{"content": Normal (N, content_dim), "style":
        Normal (N, style_dim)}``; row ``i`` of ``"content"`` is the posterior of the content of image ``i``'s
        group (the product, or for the mixture a moment-matched Normal). No ``"content"`` when ``content_dim=0``.

        :param x: images ``(N, C, H, W)``.
        :param group: any integer ids ``(N,)``; images with the same id accumulate evidence on their content.
            ``None`` means each image is its own group (strategy 1 of the paper).
        """
        if self.guide_type == "svi":
            # non-amortised: there is no encoder, so "encoding" is test-time SVI with the decoder frozen
            content, style, _ = self.infer_local(x, group, steps=self.encode_steps)
            return {"style": style} if content is None else {"content": content, "style": style}
        self.check_inputs(x)
        group_index, num_groups = group_index_from_ids(group, x.shape[0], x.device)
        with self.eval_mode():
            c_loc, c_lv, s_loc, s_lv = self.local_posteriors(x)
        style = dist.Normal(s_loc, torch.exp(0.5 * s_lv))
        if not self.content_dim:
            return {"style": style}
        q = self.content_posterior(c_loc, c_lv, group_index, num_groups, per_observation=True)
        if isinstance(q, MixtureOfNormals):
            return {"content": dist.Normal(q.mean, q.variance.sqrt()), "style": style}
        return {"content": q.base_dist, "style": style}

    @torch.no_grad()
    def decode(self, content=None, style=None):
        """Mean image for latent codes: ``content (N, content_dim)``, ``style (N, style_dim)``."""
        if style is None:
            raise InputError("decode needs the style (N, style_dim)")
        latent = style if content is None or not self.content_dim else torch.cat(
            [content.expand(style.shape[:-1] + content.shape[-1:]), style], -1)
        with self.eval_mode():
            out, _ = self.decoder(latent)
        return self.likelihood.mean(out)

    @torch.no_grad()
    def sample(self, n, group_size=1):
        """``n`` mean images from the prior, ``(n, C, H, W)``; consecutive blocks of ``group_size`` images share
        one content draw (a group)."""
        dev, dtype = self.device, next(self.parameters()).dtype
        style = torch.randn(n, self.style_dim, device=dev, dtype=dtype)
        content = None
        if self.content_dim:
            groups = -(-n // group_size)
            content = torch.randn(groups, self.content_dim, device=dev, dtype=dtype).repeat_interleave(
                group_size, 0)[:n]
        return self.decode(content, style)

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
        style_p = _local_init(n, self.style_dim).to(x.device).requires_grad_()
        content_p = _local_init(num_groups, max(self.content_dim, 1)).to(x.device).requires_grad_()

        def local_guide(x, group_index, num_groups):
            def normal(p):
                return _local_normal(p)

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
        mode = self.content_sample
        self.content_sample = "group"
        try:
            with self.eval_mode():
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
            self.content_sample = mode
        sd = lambda p: nn.functional.softplus(p[..., 1, :]).detach()  # noqa: E731
        style = dist.Normal(style_p[:, 0].detach(), sd(style_p))
        content = None
        if self.content_dim:
            content = dist.Normal(content_p[:, 0].detach()[group_index], sd(content_p)[group_index])
        return content, style, history


@dataclass
class VAEConfig:
    """Options of :class:`VAE`."""

    image_shape: tuple = image_shape_param()
    latent_dim: int = param(20, "dimension of z (20 = the ML-VAE's 10 + 10)")
    likelihood: str = likelihood_param()
    architecture: str = param("mlp", "mlp (28x28 digits) or conv (64x64 images)", ("mlp", "conv"))
    hidden: int = hidden_param()
    min_scale: float = min_scale_param()


@register_model
class VAE(MLVAE):
    """The VAE baseline: one latent ``z_i`` per observation and no grouping in training.

    It is the ML-VAE without content, so its latent site is ``"style"``. At evaluation :meth:`encode` also
    returns ``"content"``: the ``z`` posteriors of the images sharing a group id accumulated with the same product
    of Normals as the ML-VAE's (the paper's comparison in fig. 6c); without groups it equals ``"style"``.

    :param int latent_dim: dimension of ``z`` (default 20 = the ML-VAE's 10 + 10).
    """

    name = "vae"
    Config = VAEConfig
    latent_sites = ("style",)

    def _network_config(self):
        c = self.cfg
        return MLVAEConfig(image_shape=c.image_shape, content_dim=0, style_dim=c.latent_dim,
                           likelihood=c.likelihood, architecture=c.architecture, hidden=c.hidden,
                           min_scale=c.min_scale)

    @torch.no_grad()
    def encode(self, x, group=None):
        """``{"content": z accumulated over the group, "style": z}`` (Normals ``(N, latent_dim)``)."""
        z = super().encode(x)["style"]
        if group is None:
            return {"content": z, "style": z}
        group_index, num_groups = group_index_from_ids(group, x.shape[0], x.device)
        q = ProductOfNormals.from_observations(z.loc, z.scale, group_index, num_groups)
        return {"content": dist.Normal(q.loc[group_index], q.scale[group_index]), "style": z}

    @torch.no_grad()
    def decode(self, content=None, style=None):
        """Mean image of latent ``z`` (``content``; ``style`` is ignored if ``content`` is given)."""
        return super().decode(None, content if content is not None else style)

    @torch.no_grad()
    def sample(self, n):
        """``n`` mean images decoded from ``z ~ N(0, I)``."""
        return super().sample(n)
