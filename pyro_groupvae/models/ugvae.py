r"""Unsupervised Global VAE (UG-VAE; "Unsupervised Learning of Global Factors in Deep Generative Models",
anonymous ICLR 2021 submission).

Generative model for ``G`` groups (random mini-batches) of ``B`` observations (eqs. 1-4)::

    beta_g ~ N(0, I)                                   one global latent per group          (plate "groups")
    d_i    ~ Cat(1/K)                                  cluster of observation i             (plate "observations")
    z_i    ~ N(mu_z^(d_i)(beta_g), Sigma_z^(d_i)(beta_g))   K small networks of beta, one per cluster
    x_i    ~ p(x | [z_i, beta_g])                      decoder on the concatenation (eq. 2)

Guide (eqs. 5-9)::

    q(z_i | x_i)       = N(mu(x_i), Sigma(x_i))                        encoder trunk + Gaussian head
    q(d_i | z_i)       = Cat(pi(z_i))                                  a network on z_i
    q(beta_g | X, Z)   = prod_{i in g} N(mu_i, Sigma_i),  (mu_i, Sigma_i) = net([h(x_i), pi(z_i)])

the precision-weighted product of eq. 9 being :class:`~pyro_groupvae.distributions.ProductOfNormals`.

Pyro layout. The groups and observations plates are *nested* (``dim=-2`` and ``dim=-1``), so a training step
holds ``G x B`` observations, laid out as a ``(G, B)`` grid; all groups of one call must have the same size
``B`` (the paper's random batches do; :class:`~pyro_groupvae.data.RandomBatchSampler` with ``drop_last`` gives
exactly this). The discrete ``d`` is enumerated (``infer={"enumerate": "parallel"}``) and the ELBO is
``TraceEnum_ELBO(max_plate_nesting=2)``: the enumeration dimension is ``-3`` (``-4`` with vectorised particles).
The grid holds the rows ``x[order]`` (group after group); ``model``/``guide`` return ``order``
(:meth:`UGVAE.grid_order`), and :meth:`UGVAE.to_caller_order` puts site values back in the caller's row order.
``x=None`` generates (prior ``Predictive``) on the grid given by ``group_index``.

Pyro limitation: ``TraceEnum_ELBO.compute_marginals`` fails with a single group (``KeyError``, a plate of size
one); pad the batch with a copy of the group as a second group (groups are independent in model and guide) and
read group 0 (pinned by tests/test_conformance.py).

Two objectives, chosen by ``objective``:

* ``"paper"`` (default): ``d`` is enumerated *in the guide*, ``d_i ~ q(d_i | z_i)``. ``TraceEnum_ELBO`` then sums
  exactly over the ``K`` values of every ``d_i``, weighted by ``pi_ik = q(d_i = k | z_i)``; for one sample of
  ``z`` and ``beta`` from the guide its ELBO is, term by term, eqs. 10-11 of the paper::

      sum_i [ log p(x_i | z_i, beta) + sum_k pi_ik log p(z_i | k, beta) - log q(z_i | x_i)      (E_q(d)[KL_z])
              - sum_k pi_ik (log pi_ik - log 1/K) ]                                            (KL(q(d)||p(d)))
      + log p(beta) - log q(beta | X, Z)                                                       (KL_beta)

  i.e. the paper's "pi-weighted KL" with the two Gaussian KLs estimated by the single sample that Pyro draws.
  The expectation over ``q(beta)`` in eq. 10 is the same Monte Carlo sample of ``beta``; ``KL_beta`` does not
  depend on ``d``, so the paper's ``E_q(d)[KL(q(beta)||p(beta))]`` is just ``KL(q(beta)||p(beta))``.

  The paper writes the ``z`` KL in closed form, ``sum_k pi_k(z_i) KL(q(z_i|x_i) || p(z_i|k, beta))`` (the
  official code does the same). With ``q(d_i | z_i)`` depending on ``z_i`` that is *not* the expectation of the
  ELBO (the weights are evaluated at the sampled ``z_i`` while the KL integrates over all ``z_i``); Pyro's
  Monte Carlo form is the unbiased estimate, so we use it. :meth:`UGVAE.paper_elbo` computes both forms.

* ``"marginal"``: ``d`` is enumerated *in the model* and absent from the guide, so the ELBO contains the exact
  mixture density ``log sum_k (1/K) p(z_i | k, beta)`` (a log-sum-exp over clusters). This is a tighter bound
  (it is the ``"paper"`` bound maximised over ``q(d|z)``); ``q(d|z)`` is then only a feature of the beta encoder.

Choices where the paper is silent (or lacks its supplement), with reasons:

* Defaults ``K=10``, ``local_dim=10``, ``global_dim=20``: the paper's ``K`` for MNIST and the dimensions of the
  authors' public MNIST configuration (a smaller ``global_dim`` classified batches worse: docs/results.md, UG-VAE).

* The ``K`` cluster networks (eq. 3) are one batched module (:class:`ClusterNets`, ``K`` independent two-layer
  MLPs evaluated in one ``einsum``): "as many NNs as discrete categories" without a Python loop.
* The beta encoder's per-sample input is ``[h(x_i), pi(z_i)]`` where ``h`` is the hidden layer shared with the
  ``z`` encoder (the paper says "a NN encodes x_i and pi(z_i)").
* Numerical safety: every log-variance (``q(z|x)``, the per-sample beta factors, the mixture components) is
  squashed into ``[-max_abs_log_var, max_abs_log_var]`` by ``m tanh(v/m)``; the product over a batch of ``B``
  therefore has a variance in ``[e^-m / B, e^m / B]`` and is computed in log-space, so a batch of 128 cannot
  produce NaN or infinities.
* ``z``'s and ``beta``'s KLs are Monte Carlo (what ``TraceEnum_ELBO`` does for continuous sites); over ``d`` the
  expectation is exact, which is what the paper states ("analytically marginalized").
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer import TraceEnum_ELBO, config_enumerate, infer_discrete
from pyro.ops.indexing import Vindex
from torch import nn

from ..distributions import ProductOfNormals
from ..validation import InputError, relabel
from .base import (GroupModel, hidden_param, image_shape_param, likelihood_param, min_scale_param, param,
                   register_model)
from .nets import GaussianHead, ImageLikelihood, make_decoder, make_encoder_trunk, mlp

__all__ = ["UGVAE", "ClusterNets", "group_layout"]


def _squash(log_var, m):
    return m * torch.tanh(log_var / m)


class ClusterNets(nn.Module):
    r"""``K`` independent MLPs ``beta -> (mu_z^(k)(beta), log Sigma_z^(k)(beta))`` (eq. 3), evaluated at once.

    :param int in_features: dimension of ``beta``.
    :param int out_features: dimension of ``z``.
    :param int num_clusters: ``K``.
    :param int hidden: hidden units of each cluster's network (tanh).
    :param float max_abs_log_var: bound on the components' log-variances.
    :param float init_spread: standard deviation of the random initial offsets of the component means (breaks
        the symmetry between clusters, which otherwise start identical up to small weights).

    ``forward(beta)`` takes ``(..., in_features)`` and returns ``loc, log_var`` of shape ``(..., K, out)``.
    """

    def __init__(self, in_features, out_features, num_clusters, hidden=64, max_abs_log_var=5.0, init_spread=1.0):
        super().__init__()
        k = num_clusters
        self.w1 = nn.Parameter(torch.randn(k, in_features, hidden) / math.sqrt(in_features))
        self.b1 = nn.Parameter(torch.zeros(k, hidden))
        self.w2 = nn.Parameter(torch.randn(k, hidden, 2 * out_features) * (0.1 / math.sqrt(hidden)))
        b2 = torch.zeros(k, 2 * out_features)
        b2[:, :out_features] = init_spread * torch.randn(k, out_features)
        self.b2 = nn.Parameter(b2)
        self.max_abs_log_var = max_abs_log_var

    def forward(self, beta):
        h = torch.tanh(torch.einsum("...i,kih->...kh", beta, self.w1) + self.b1)
        out = torch.einsum("...kh,kho->...ko", h, self.w2) + self.b2
        loc, log_var = out.chunk(2, -1)
        return loc, _squash(log_var, self.max_abs_log_var)


def group_layout(group_index, num_groups, n, check=True):
    """Order and size for viewing ``n`` observations in ``num_groups`` equal groups as a ``(G, B)`` grid.

    :returns: ``(order, B)``: ``order`` a permutation putting the rows group after group (stable), ``B`` the
        common group size.
    :raises InputError: groups of different sizes (nested plates need a rectangular batch).
    """
    if not check or torch.jit.is_tracing():  # trusted inputs: no host sync, nothing frozen into a JIT trace
        return torch.argsort(group_index, stable=True), n // num_groups
    counts = torch.bincount(group_index, minlength=num_groups)
    if not bool((counts == counts[0]).all()):
        raise InputError(
            "UG-VAE's nested plates (groups x observations) need groups of equal size, got sizes "
            f"{sorted(set(counts.tolist()))}; use RandomBatchSampler(drop_last=True) or equal structured batches "
            "(encode()/encode_groups() accept groups of any size)")
    order = torch.argsort(group_index, stable=True)
    return order, int(counts[0])


@dataclass
class UGVAEConfig:
    """Options of :class:`UGVAE` (field order = positional order of the constructor)."""

    image_shape: tuple = image_shape_param()
    num_clusters: int = param(10, "K, values of the discrete d")
    local_dim: int = param(10, "dimension of the local latent z")
    global_dim: int = param(20, "dimension of the global latent beta")
    likelihood: str = likelihood_param()
    architecture: str = param("mlp", "mlp (28x28) or conv (64x64)", ("mlp", "conv"))
    hidden: int = hidden_param()
    cluster_hidden: int = param(64, "hidden units of each of the K prior networks and of q(d|z)")
    global_hidden: int = param(128, "hidden units of the per-sample beta encoder")
    objective: str = param("paper", "paper: d enumerated in the guide (eqs. 10-11); marginal: d summed out in "
                                    "the model", ("paper", "marginal"))
    min_scale: float = min_scale_param()
    max_abs_log_var: float = param(5.0, "bound on every log-variance")


@register_model
class UGVAE(GroupModel):
    r"""The UG-VAE model/guide pair (see the module docstring for the equations and Pyro layout).

    :param tuple image_shape: ``(C, H, W)``.
    :param int num_clusters: ``K`` (paper: 10 on MNIST, 20 on CelebA).
    :param int local_dim: dimension of ``z``.
    :param int global_dim: dimension of ``beta``.
    :param str likelihood: ``"normal"`` (paper, learned variance) or ``"bernoulli"``.
    :param str architecture: ``"mlp"`` (28x28) or ``"conv"`` (64x64).
    :param int hidden: hidden units of the MLP encoder trunk and decoder.
    :param int cluster_hidden: hidden units of each of the ``K`` prior networks and of ``q(d|z)``.
    :param int global_hidden: hidden units of the per-sample beta encoder on ``[h(x_i), pi(z_i)]``.
    :param str objective: ``"paper"`` (guide-side enumeration, eqs. 10-11) or ``"marginal"`` (model-side).
    :param float min_scale: floor of the Normal likelihood's standard deviation.
    :param float max_abs_log_var: bound on every log-variance (see the module docstring).
    """

    name = "ugvae"
    Config = UGVAEConfig
    latent_sites = ("beta", "z")
    group_site = "beta"
    max_plate_nesting = 2  # the (groups, observations) grid

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        c = self.cfg
        image_shape, num_clusters, local_dim, global_dim = c.image_shape, c.num_clusters, c.local_dim, c.global_dim
        likelihood, architecture, hidden, objective = c.likelihood, c.architecture, c.hidden, c.objective
        cluster_hidden, global_hidden, min_scale, max_abs_log_var = (c.cluster_hidden, c.global_hidden,
                                                                     c.min_scale, c.max_abs_log_var)
        # objective, num_clusters, local_dim, global_dim: checked by validate_config (GroupModel.__init__)
        self.image_shape = image_shape
        self.K, self.local_dim, self.global_dim = int(num_clusters), int(local_dim), int(global_dim)
        self.objective = objective
        m = max_abs_log_var
        # generative networks
        self.cluster_nets = ClusterNets(global_dim, local_dim, num_clusters, cluster_hidden, m)  # eq. 3
        self.decoder = make_decoder(architecture, local_dim + global_dim, image_shape, hidden)  # eq. 2
        self.likelihood = ImageLikelihood(image_shape, likelihood, min_scale)
        # inference networks
        self.trunk = make_encoder_trunk(architecture, image_shape, hidden)
        self.z_head = GaussianHead(self.trunk.out_features, local_dim, m)  # eq. 6
        self.d_net = mlp([local_dim, cluster_hidden, num_clusters], "tanh")  # eq. 7
        self.global_net = mlp([self.trunk.out_features + num_clusters, global_hidden], "tanh", final_activation=True)
        self.global_head = GaussianHead(global_hidden, global_dim, m)  # eq. 8

    def default_elbo(self):
        return TraceEnum_ELBO(max_plate_nesting=self.max_plate_nesting)

    # ------------------------------------------------------------------ layout
    def _grid(self, x, group_index, num_groups):
        """``x`` as a ``(G, B, C, H, W)`` grid and the permutation used (rows group after group).

        ``x=None`` (prior predictive): the grid is ``None`` and its shape comes from ``group_index``."""
        if x is None:
            if group_index is None:
                raise InputError("with x=None give group_index (equal-sized groups): which of the generated "
                                 "images share a global latent")
            group_index = torch.as_tensor(group_index, device=self.device)
            num_groups = int(group_index.max()) + 1 if num_groups is None else num_groups
            order, b = group_layout(group_index, num_groups, group_index.shape[0])
            return None, order, (num_groups, b)
        if group_index is None:
            group_index, num_groups = torch.zeros(x.shape[0], dtype=torch.long, device=x.device), 1
        group_index, num_groups = self.check_inputs(x, group_index, num_groups)
        order, b = group_layout(group_index, num_groups, x.shape[0], check=self._checks)
        return x[order].reshape((num_groups, b) + x.shape[1:]), order, (num_groups, b)

    def grid_order(self, group_index=None, num_groups=None, n=None):
        """The permutation ``order`` (LongTensor ``(N,)``) of the Pyro layout: site values of :meth:`model` and
        :meth:`guide` live on a ``(G, B)`` grid whose flattened row ``k`` is image ``order[k]`` of the caller
        (``model``/``guide`` also return it). :meth:`to_caller_order` undoes it."""
        if group_index is None:
            return torch.arange(n, device=self.device)
        group_index = torch.as_tensor(group_index)
        num_groups = int(group_index.max()) + 1 if num_groups is None else num_groups
        return group_layout(group_index, num_groups, group_index.shape[0])[0]

    @staticmethod
    def to_caller_order(value, order, event_dims=0):
        """A site value on the ``(..., G, B, *event)`` grid as ``(..., N, *event)`` rows in the caller's order
        (``order`` from :meth:`grid_order` or the model's return value)."""
        shape = value.shape
        batch = shape[:len(shape) - event_dims - 2]
        flat = value.reshape(batch + (-1,) + shape[len(shape) - event_dims:])
        return flat.index_select(len(batch), torch.argsort(order.to(value.device)))

    def _plates(self, num_groups, b):
        return pyro.plate("groups", num_groups, dim=-2), pyro.plate("observations", b, dim=-1)

    # ------------------------------------------------------------------ pieces of the model
    def prior_components(self, beta):
        """Mixture components ``p(z | d=k, beta)``: ``(loc, scale)`` of shape ``(..., K, local_dim)``."""
        loc, log_var = self.cluster_nets(beta)
        return loc, torch.exp(0.5 * log_var)

    def _decode_out(self, z, beta):
        shape = torch.broadcast_shapes(z.shape[:-1], beta.shape[:-1])
        latent = torch.cat([z.expand(shape + z.shape[-1:]), beta.expand(shape + beta.shape[-1:])], -1)
        return self.decoder(latent)

    # ------------------------------------------------------------------ model (eqs. 1-4)
    def model(self, x=None, group_index=None, num_groups=None):
        """p(X, Z, d, beta) = prod_g p(beta_g) prod_{i in g} p(d_i) p(z_i | d_i, beta_g) p(x_i | z_i, beta_g).

        Sites live on the ``(G, B)`` grid of rows ``x[order]``; returns ``order`` (see :meth:`grid_order`).

        :param x: images ``(N, C, H, W)``; ``None``: generate (prior predictive), laid out by ``group_index``.
        :param group_index: LongTensor ``(N,)``, group of each image (``0..num_groups-1``, equal group sizes);
            ``None``: the whole ``x`` is one group (one random batch).
        :param int num_groups: number of groups.
        """
        xg, order, (g, b) = self._grid(x, group_index, num_groups)
        self.register()
        groups, obs = self._plates(g, b)
        enum = {"enumerate": "parallel"} if self.objective == "marginal" else {}
        like = x if x is not None else next(self.parameters())
        with groups:
            beta = pyro.sample("beta", dist.Normal(like.new_zeros(self.global_dim), 1.0).to_event(1))
            loc, scale = self.prior_components(beta)  # (..., G, 1, K, local_dim)
            with obs:
                d = pyro.sample("d", dist.Categorical(logits=like.new_zeros(self.K)), infer=enum)
                z = pyro.sample("z", dist.Normal(Vindex(loc)[..., d, :], Vindex(scale)[..., d, :]).to_event(1))
                out, log_var = self._decode_out(z, beta)
                pyro.sample("x", self.likelihood(out, log_var), obs=xg)
        return order

    # ------------------------------------------------------------------ guide (eqs. 5-9)
    def local_posterior(self, x):
        """``q(z|x)``: ``(loc, log_var, h)`` with ``h`` the shared hidden features of ``x``."""
        h = self.trunk(x)
        loc, log_var = self.z_head(h)
        return loc, log_var, h

    def cluster_probs(self, z):
        """``pi(z) = q(d | z)``, probabilities of shape ``(..., K)`` (eq. 7)."""
        return torch.softmax(self.d_net(z), -1)

    def global_factors(self, h, pi):
        """Per-observation Gaussian factors of ``q(beta | X, Z)`` (eq. 8): ``(loc, log_var)``."""
        return self.global_head(self.global_net(torch.cat([h.expand(pi.shape[:-1] + h.shape[-1:]), pi], -1)))

    def guide(self, x, group_index=None, num_groups=None):
        """q(Z, d, beta | X) = prod_i q(z_i | x_i) q(d_i | z_i) prod_g q(beta_g | X_g, Z_g); arguments as
        :meth:`model`.

        ``beta`` is sampled before ``d``: it depends on ``pi(z)``, not on the value of ``d``, so the order is the
        same factorisation as eq. 5, and Pyro's plate-independence check wants the group-level site first."""
        xg, order, (g, b) = self._grid(x, group_index, num_groups)
        self.register()
        groups, obs = self._plates(g, b)
        z_loc, z_lv, h = self.local_posterior(xg)
        with groups:
            with obs:
                z = pyro.sample("z", dist.Normal(z_loc, torch.exp(0.5 * z_lv)).to_event(1))
            pi = self.cluster_probs(z)
            b_loc, b_lv = self.global_factors(h, pi)  # (..., G, B, global_dim)
            one = torch.zeros(b, dtype=torch.long, device=x.device)
            q_beta = ProductOfNormals.from_observations(b_loc, log_var=b_lv, group_index=one, num_groups=1)
            pyro.sample("beta", q_beta.to_event(1))  # batch shape (..., G, 1): the groups plate
            if self.objective == "paper":
                with obs:
                    pyro.sample("d", dist.Categorical(probs=pi), infer={"enumerate": "parallel"})
        return order

    # ------------------------------------------------------------------ the paper's objective, by hand
    def paper_elbo(self, x, group_index=None, num_groups=None, analytic=False, trace=None):
        r"""The ELBO of eqs. 10-11 written with tensors (no Pyro inference), summed over the batch.

        Per observation: ``log p(x_i|z_i,beta) - sum_k pi_ik KL_z(k) - KL(q(d_i|z_i) || Cat(1/K))``, plus
        ``- KL(q(beta|X,Z) || N(0,I))`` per group, where ``KL_z(k) = KL(q(z_i|x_i) || p(z_i|k,beta))``.

        With ``objective="marginal"`` the local term is instead
        ``log p(x_i|z_i,beta) + logsumexp_k [log p(z_i|k,beta) - log K] - log q(z_i|x_i)``.

        :param bool analytic: closed-form Gaussian KLs (the paper's notation) instead of the one-sample estimate
            ``log q - log p`` that ``TraceEnum_ELBO`` uses. Only for ``objective="paper"``.
        :param trace: optional guide trace whose ``z`` and ``beta`` values are reused (to compare with Pyro on
            the same sample); otherwise they are drawn here.
        :returns: a scalar tensor (differentiable).
        """
        xg = self._grid(x, group_index, num_groups)[0]
        z_loc, z_lv, h = self.local_posterior(xg)
        q_z = dist.Normal(z_loc, torch.exp(0.5 * z_lv))
        z = trace.nodes["z"]["value"] if trace is not None else q_z.rsample()
        pi = self.cluster_probs(z)
        b_loc, b_lv = self.global_factors(h, pi)
        one = torch.zeros(xg.shape[1], dtype=torch.long, device=x.device)
        q_beta = ProductOfNormals.from_observations(b_loc, log_var=b_lv, group_index=one, num_groups=1)
        beta = trace.nodes["beta"]["value"] if trace is not None else q_beta.rsample()
        p_beta = dist.Normal(torch.zeros_like(beta), 1.0)
        loc, scale = self.prior_components(beta)  # (G, 1, K, dz)
        out, log_var = self._decode_out(z, beta)
        log_lik = self.likelihood(out, log_var).log_prob(xg)  # (G, B)
        if self.objective == "marginal":
            if analytic:
                raise ValueError("analytic=True is the paper's pi-weighted form; use objective='paper'")
            log_pz_k = dist.Normal(loc, scale).log_prob(z.unsqueeze(-2)).sum(-1)  # (G, B, K)
            local = log_lik + torch.logsumexp(log_pz_k, -1) - math.log(self.K) - q_z.log_prob(z).sum(-1)
            return local.sum() + (p_beta.log_prob(beta) - q_beta.log_prob(beta)).sum()
        log_pi = torch.log(pi.clamp_min(1e-30))
        kl_d = (pi * (log_pi + math.log(self.K))).sum(-1)
        if analytic:
            q_z_k = dist.Normal(z_loc.unsqueeze(-2), torch.exp(0.5 * z_lv).unsqueeze(-2))
            kl_z_k = torch.distributions.kl_divergence(q_z_k, dist.Normal(loc, scale)).sum(-1)  # (G, B, K)
            kl_beta = torch.distributions.kl_divergence(dist.Normal(q_beta.loc, q_beta.scale), p_beta).sum(-1)
        else:
            log_pz_k = dist.Normal(loc, scale).log_prob(z.unsqueeze(-2)).sum(-1)
            kl_z_k = q_z.log_prob(z).sum(-1, keepdim=True) - log_pz_k
            kl_beta = (q_beta.log_prob(beta) - p_beta.log_prob(beta)).sum(-1)
        local = log_lik - (pi * kl_z_k).sum(-1) - kl_d
        return local.sum() - kl_beta.sum()

    # ------------------------------------------------------------------ user API
    @torch.no_grad()
    def encode_groups(self, x, group_index=None, num_groups=None):
        """Posteriors of the batch's global latents: ``(beta, z, pi)``.

        Groups may have any sizes here (no plates). ``z`` is summarised by its posterior mean when computing
        ``pi(z)`` for the beta encoder (deterministic features for evaluation).

        :param x: images ``(N, C, H, W)``.
        :param group_index: LongTensor ``(N,)`` in ``0..num_groups-1``; ``None``: one group.
        :returns: ``beta`` Normal with batch shape ``(num_groups, global_dim)``, ``z`` Normal ``(N, local_dim)``,
            ``pi`` tensor ``(N, K)``.
        """
        if group_index is None:
            group_index, num_groups = torch.zeros(x.shape[0], dtype=torch.long, device=x.device), 1
        group_index, num_groups = self.check_inputs(x, group_index, num_groups)
        with self.eval_mode():
            z_loc, z_lv, h = self.local_posterior(x)
            pi = self.cluster_probs(z_loc)
            b_loc, b_lv = self.global_factors(h, pi)
        q = ProductOfNormals.from_observations(b_loc, log_var=b_lv, group_index=group_index, num_groups=num_groups)
        return dist.Normal(q.loc, q.scale), dist.Normal(z_loc, torch.exp(0.5 * z_lv)), pi

    @torch.no_grad()
    def encode(self, x, group=None):
        """Posteriors per image, ``{"beta": Normal (N, global_dim), "z": Normal (N, local_dim), "d": Categorical
        q(d|z) (N,) at the posterior mean of z}``, as :meth:`MLVAE.encode <pyro_groupvae.models.MLVAE.encode>`
        does: row ``i`` of ``beta`` is the posterior of the global latent of image ``i``'s group.

        :param group: any integer ids ``(N,)``; ``None``: all of ``x`` is one batch (UG-VAE's unit).
        """
        if group is None:
            group_index, num_groups = torch.zeros(x.shape[0], dtype=torch.long, device=x.device), 1
        else:
            group = torch.as_tensor(group, device=x.device)
            if group.shape != (x.shape[0],):
                raise InputError(f"group must have shape ({x.shape[0]},), got {tuple(group.shape)}")
            group_index, num_groups = relabel(group)
        beta, z, pi = self.encode_groups(x, group_index, num_groups)
        return {"beta": dist.Normal(beta.loc[group_index], beta.scale[group_index]), "z": z,
                "d": dist.Categorical(probs=pi)}

    @torch.no_grad()
    def decode(self, beta, z):
        """Mean images for ``beta (..., global_dim)`` and ``z (..., local_dim)`` (broadcast)."""
        with self.eval_mode():
            out, _ = self._decode_out(z, beta)
        return self.likelihood.mean(out)

    @torch.no_grad()
    def cluster(self, x, group_index=None, num_groups=None, use_mean=True, temperature=0):
        """Cluster assignments ``d`` by :func:`pyro.infer.infer_discrete` on the model.

        ``z`` and ``beta`` are fixed to their posterior means (``use_mean``; otherwise one guide sample) and
        ``d`` is drawn from ``p(d | z, beta)`` (``temperature=0``: its mode, the MAP cluster).

        :returns: LongTensor ``(N,)`` in the order of ``x``.
        """
        xg, order, (g, b) = self._grid(x, group_index, num_groups)
        with self.eval_mode():
            if use_mean:
                gi = torch.arange(g, device=x.device).repeat_interleave(b)  # xg is laid out group after group
                beta, z, _ = self.encode_groups(xg.reshape((-1,) + xg.shape[2:]), gi, g)
                data = {"z": z.loc.reshape(g, b, -1), "beta": beta.loc.unsqueeze(-2)}
            else:
                tr = poutine.trace(poutine.block(self.guide, hide=["d"])).get_trace(x, group_index, num_groups)
                data = {"z": tr.nodes["z"]["value"], "beta": tr.nodes["beta"]["value"]}
            model = infer_discrete(config_enumerate(poutine.condition(self.model, data=data), "parallel"),
                                   first_available_dim=-1 - self.max_plate_nesting, temperature=temperature)
            with poutine.block():
                tr = poutine.trace(model).get_trace(x, group_index, num_groups)
        d = tr.nodes["d"]["value"].reshape(-1)
        out = torch.empty_like(d)
        out[order] = d
        return out

    @torch.no_grad()
    def sample_groups(self, num_groups=1, group_size=16, cluster=None):
        """Images from the prior: ``(num_groups, group_size, C, H, W)`` mean images and the clusters used.

        :param cluster: fix ``d`` for every sample (the paper's fig. 3 fixes ``d`` per grid); ``None``: draw it.
        """
        dev, dtype = self.device, next(self.parameters()).dtype
        beta = torch.randn(num_groups, 1, self.global_dim, device=dev, dtype=dtype)
        d = torch.randint(self.K, (num_groups, group_size), device=dev) if cluster is None else \
            torch.full((num_groups, group_size), int(cluster), device=dev)
        with self.eval_mode():
            loc, scale = self.prior_components(beta)
            z = dist.Normal(Vindex(loc)[..., d, :], Vindex(scale)[..., d, :]).sample()
            out, _ = self._decode_out(z, beta)
        return self.likelihood.mean(out), d

    @torch.no_grad()
    def sample(self, n, group_size=None, cluster=None):
        """``n`` mean images from the prior, ``(n, C, H, W)``; consecutive blocks of ``group_size`` images
        (default all ``n``) share one draw of beta (see :meth:`sample_groups` for the grid and clusters)."""
        group_size = group_size or n
        images, _ = self.sample_groups(-(-n // group_size), group_size, cluster)
        return images.reshape((-1,) + images.shape[2:])[:n]

