r"""The hierarchically decomposed ELBO of the HFVAE (Esmaeili et al., AISTATS 2019), as a Pyro ELBO.

Decomposition (paper figs. 2 and 4). With the empirical data distribution :math:`q(x)`, the inference marginal
:math:`q(z) = \frac1N \sum_n q(z|x^n)`, latent *groups* :math:`z_d` and *sub-variables* :math:`z_{d,e}`:

.. math::

    \text{ELBO} = \underbrace{E[\log p(x|z)]}_{①+③}
        - \underbrace{E[\log q(z|x) - \log q(z)]}_{-②:\ I(x;z)}
        + \underbrace{E[\log \tfrac{p(z)}{\prod_d p(z_d)} - \log \tfrac{q(z)}{\prod_d q(z_d)}]}_{Ⓐ:\ \text{TC between groups}}
        + \sum_d \underbrace{E[\log \tfrac{p(z_d)}{\prod_e p(z_{d,e})} - \log \tfrac{q(z_d)}{\prod_e q(z_{d,e})}]}_{ⓘ-ⓘⓘ:\ \text{TC within group } d}
        - \sum_{d,e} \underbrace{KL(q(z_{d,e}) \| p(z_{d,e}))}_{\text{dimension-wise KL}}

and the HFVAE objective (eq. 9) weights the pieces:

.. math::

    \mathcal L = E[\log p(x|z)] - \alpha\, I(x;z) - \beta\, TC_{between} - \gamma \sum_d TC_{within,d}
        - \delta \sum_{d,e} KL_{d,e}

**Reading of eq. 9 (the paper's typesetting is ambiguous).** Eq. 9 is printed as
``L = ① + ③ + ⓘⓘ + α② + βⒶ + γⓘ``; taken literally it would weight the *prior* part ⓘ of the within-group
term with gamma and the *inference* total correlation ⓘⓘ with 1, and it would drop the dimension-wise KLs, which
contradicts the text ("gamma controls the TC regularization for individual variables") and table 1. We read
γⓘ as the whole within-group term ⓘ-ⓘⓘ (inference TC relative to the prior's) and the unweighted ⓘⓘ slot as
the remaining per-sub-variable KLs. With this reading ``alpha = beta = gamma = delta = 1`` gives back the
ordinary ELBO *exactly*, sample by sample: every estimated marginal cancels (tested against ``Trace_ELBO``).
``delta`` (default 1, not in eq. 9) is there only so that the beta-VAE of table 1 (all KL pieces times beta)
is a setting of the same objective. Settings of table 1 (see :data:`PRESETS`):

=============  =======  =======  =======  =======
objective      alpha    beta     gamma    delta
=============  =======  =======  =======  =======
VAE            1        1        1        1
beta-VAE       b        b        b        b
beta-TCVAE     1        b (*)    b (*)    1
HFVAE          1        b        g        1
=============  =======  =======  =======  =======

(*) beta-TCVAE penalises the total correlation between all scalar latent variables: with one Normal site of
scalar sub-variables the between-group TC is identically 0 and the TC between dimensions is the within-group
term, so both weights are set to b.

**Groups and sub-variables of a Pyro model.** Every latent sample site of the guide that lives in the
observation plate is a group :math:`z_d`. Its sub-variables :math:`z_{d,e}` are the elements of the dimensions
reinterpreted by ``.to_event`` (``Independent``) when both the guide and the prior declare them independent
(``Normal(loc, scale).to_event(1)``: one sub-variable per dimension; ``ExpConcrete(...).to_event(1)`` over
``V`` discrete variables: one per variable); a site whose distribution is not an ``Independent`` (a single
Concrete variable, a multivariate Normal) is *one* sub-variable, so its within-group TC is 0. The prior is
taken to factorise over sites (each site's prior density is its marginal), so the prior part of Ⓐ is 0; the
prior part of ⓘ is 0 too, because a site is split into sub-variables only where its prior is an ``Independent``
over the same dimensions. Latent sites outside the observation plate
(global latents) enter with the ordinary ``log p - log q``.

**The discrete block.** A Concrete site (:class:`~pyro_groupvae.distributions.ExpConcrete`) enters like any
other group: its density under every encoder of the batch gives the batch estimate of its marginal, so it takes
part in the between-group TC with the Normal block (weight beta) and in its own dimension-wise KL to the
Concrete prior; being one sub-variable it has no within-group TC.

**Estimator of the marginals (eq. 13, appendix A.1).** For a batch of ``B`` observations out of ``N``,

.. math::

    \hat q(z^{(b)}) = \frac1N q(z^{(b)}|x^{(b)}) + \frac{N-1}{N(B-1)} \sum_{b'\ne b} q(z^{(b)}|x^{(b')}),

and the same for :math:`q(z_d)` and :math:`q(z_{d,e})` with the densities of the group or sub-variable. ``N`` is
``dataset_size`` (constructor), else the ``infer={"dataset_size": N}`` entry of the guide site, else the size of
the observation plate (so a subsampled ``pyro.plate("data", N, subsample=...)`` works as in Pyro). The
``B x B`` table of log densities is computed in row chunks of at most ``max_chunk_elements`` entries
(``chunk_rows x B x E``); with gradients each chunk is recomputed in the backward pass
(``torch.utils.checkpoint``), so memory is :math:`O(B \cdot E + \text{chunk})`, linear in the latent size,
and no ``B x B x E`` tensor exists at once.

**Computation.** By default on the CPU (``fused=True``) every pairwise density is formed directly, in the input
dtype, inside fused C++ loops (:mod:`pyro_groupvae.infer.fused`, built at first use; nothing ``B x B x E`` is
stored): for a Normal group one kernel gives the per-dimension marginals and the group's ``B x B`` table at once,
from the differences ``z - mu``; the Concrete block uses its density (Maddison et al. eq. B.5) written out
pairwise; one kernel reduces all group tables and their sum (the joint). A group of one sub-variable (one Concrete
variable) takes its sub-variable marginal from its group marginal. Writing the Concrete log-sum-exp over classes
as a product of exponentials was tried and rejected, because encoder logits and samples peak at different
classes and the factorised exponentials underflow (wrong by tens of nats at logit spreads of a few hundred, even
in float64). Other distributions use their own pairwise ``log_prob``. Without the kernels (``fused=False``,
another device, no compiler) the tensor code runs: the Normal group table as a quadratic form, the square
expanded into one matrix product (float64 and centred per dimension, so that the expansion loses no precision),
the per-dimension marginals by :class:`_NormalLSE` (the ``B x B x E`` table built, reduced and freed in the
forward pass and rebuilt in the backward pass), exponentials as ``exp2(x log2 e)`` (faster than ``torch.exp`` on
the CPU build we measured). ``compile=True`` runs the ``B x B`` kernels through ``torch.compile`` instead (off by
default: the first step compiles). Numbers: docs/benchmarks.md.

Reparameterised sites only (Normal, Concrete, or any other with ``rsample``); ``num_particles`` particles are
drawn one after another or, with ``vectorize_particles=True``, in one vectorised pass (each particle gets its
own batch estimate).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List

import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO
from pyro.infer.util import is_validation_enabled
from pyro.poutine.util import prune_subsample_sites
from pyro.util import warn_if_nan
from torch.distributions import Independent
from torch.distributions.relaxed_categorical import ExpRelaxedCategorical
from torch.utils.checkpoint import checkpoint

from ..validation import InputError
from . import fused as _fused

__all__ = ["HFVAE_ELBO", "PRESETS", "preset_weights", "LatentGroup", "log_batch_marginals", "stratified_log_weights"]

#: preset name -> function of (beta, gamma) giving the weights (alpha, beta, gamma, delta) of table 1, and whether
#: the model has the structured (Normal + Concrete) prior.
PRESETS = {
    "vae": dict(structured=False, weights=lambda b, g: (1.0, 1.0, 1.0, 1.0)),
    "beta-vae": dict(structured=False, weights=lambda b, g: (b, b, b, b)),
    "beta-tcvae": dict(structured=False, weights=lambda b, g: (1.0, b, b, 1.0)),
    "beta-svae": dict(structured=True, weights=lambda b, g: (b, b, b, b)),
    "hfvae": dict(structured=True, weights=lambda b, g: (1.0, b, g, 1.0)),
}


def preset_weights(name, beta=4.0, gamma=3.0):
    """``(alpha, beta, gamma, delta)`` of a table-1 objective: ``"vae"``, ``"beta-vae"``, ``"beta-tcvae"``,
    ``"beta-svae"`` (beta-VAE objective, structured prior) or ``"hfvae"``."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known: {sorted(PRESETS)}")
    return tuple(float(v) for v in PRESETS[name]["weights"](float(beta), float(gamma)))


def _check_sizes(B, dataset_size):
    if float(dataset_size) < B:
        raise InputError(f"dataset_size N={dataset_size} is smaller than the batch size B={B}: the stratified "
                         "estimator of q(z) needs N >= B (pass the size of the training set)")


def _stratum_log_weights(B, dataset_size):
    """``(diag, off)``: the log weights of eq. 13, ``log(1/N)`` at ``b' = b`` and ``log((N-1) / (N (B-1)))``
    elsewhere (``-inf`` for ``B = 1``, where eq. 13 is undefined and only the deterministic stratum is kept)."""
    _check_sizes(B, dataset_size)
    N = float(dataset_size)
    off = math.log(N - 1) - math.log(N) - math.log(B - 1) if (B > 1 and N > 1) else -math.inf
    return -math.log(N), off


def stratified_log_weights(rows, batch_size, dataset_size, dtype=torch.float32, device=None):
    """Log weights of eq. 13 for the rows ``rows`` (LongTensor of batch positions ``b``): ``(len(rows), B)``
    with ``log(1/N)`` at ``b' = b`` and ``log((N-1) / (N (B-1)))`` elsewhere (``B = 1``: eq. 13 is undefined and
    only the deterministic stratum ``q(z|x)/N`` is kept)."""
    B = int(batch_size)
    diag, off = _stratum_log_weights(B, dataset_size)
    w = torch.full((len(rows), B), off, dtype=dtype, device=device)
    w[torch.arange(len(rows), device=device), rows] = diag
    return w


@dataclass
class LatentGroup:
    """One latent site in the observation plate: its sub-variable distributions and values.

    ``value`` has shape ``(*lead, B, ...)`` where ``lead`` is ``()`` or ``(P,)``, the vectorised particles."""

    name: str
    q: object          # distribution giving per-sub-variable log densities (base of an Independent, or the site)
    p: object          # prior counterpart
    q_site: object     # the guide site's whole distribution
    p_site: object     # the model site's whole distribution
    value: torch.Tensor
    num_sub: int       # number of sub-variables E_d
    lead: int = 0      # number of leading particle dimensions (0, or 1 with vectorize_particles)


_LOG2E = 1.0 / math.log(2.0)


def _exp(x):
    """``exp(x)`` in place as ``2^(x log2 e)``: on the CPU build we measured this is 1.5-1.7x faster than
    ``torch.exp``, multiply included (``benchmarks/exp_vs_exp2.py``); the extra rounding of the product is one
    float ulp of the argument (relative difference 1.5e-6 at arguments down to -30)."""
    return torch.exp2(x.mul_(_LOG2E), out=x)


class _LogSumExp(torch.autograd.Function):
    """``torch.logsumexp(x, dim)`` computed with :func:`_exp` (same value within float rounding)."""

    @staticmethod
    def forward(ctx, x, dim):
        m = x.detach().amax(dim, keepdim=True)
        m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
        out = (m + _exp(x - m).sum(dim, keepdim=True).log()).squeeze(dim)
        ctx.save_for_backward(x, out)
        ctx.dim = dim
        return out

    @staticmethod
    def backward(ctx, grad):
        x, out = ctx.saved_tensors
        return _exp(x - out.unsqueeze(ctx.dim)).mul_(grad.unsqueeze(ctx.dim)), None


def logsumexp(x, dim):
    """Log-sum-exp over ``dim`` (see :class:`_LogSumExp`)."""
    return _LogSumExp.apply(x, dim)


class _NormalLSE(torch.autograd.Function):
    r"""Per-dimension log-sum-exp over the batch of Normal log densities, fused, memory ``O(n B)``:

    ``out[n, b] = log sum_{b'} exp(a[n, b'] + h[n, b'] (z[n, b] - mu[n, b'])^2 + dw [b' = b + offset])``

    for ``z (n, c)`` (rows ``offset .. offset + c`` of the batch), ``mu, h, a (n, B)``, where ``n`` runs over
    particles x dimensions, ``h = -1 / (2 s^2)``, ``a = log w_off - log s - log(2 pi) / 2`` and ``dw`` is the log
    weight of ``b' = b`` minus the one of ``b' != b`` (eq. 13). The ``(n, c, B)`` table is built in the forward
    pass, reduced and freed, and rebuilt in the backward pass. Differences ``z - mu`` are always formed directly
    (never by expanding the square), so the precision is that of the direct formula even for very narrow
    posteriors."""

    @staticmethod
    def _table(z, mu, h, a, dw, offset):
        d = z.unsqueeze(-1) - mu.unsqueeze(-2)            # (n, c, B)
        x = torch.addcmul(a.unsqueeze(-2), d * h.unsqueeze(-2), d)
        x.diagonal(offset, -2, -1).add_(dw)
        return x

    @staticmethod
    def forward(ctx, z, mu, h, a, dw, offset):
        x = _NormalLSE._table(z, mu, h, a, dw, offset)
        m = x.amax(-1, keepdim=True)
        out = (m + _exp(x.sub_(m)).sum(-1, keepdim=True).log_()).squeeze(-1)
        ctx.save_for_backward(z, mu, h, a, out)
        ctx.dw, ctx.offset = dw, offset
        return out

    @staticmethod
    def backward(ctx, grad):
        z, mu, h, a, out = ctx.saved_tensors
        g = _NormalLSE._table(z, mu, h, a, ctx.dw, ctx.offset)
        _exp(g.sub_(out.unsqueeze(-1))).mul_(grad.unsqueeze(-1))            # G = grad * softmax, (n, c, B)
        ga = g.sum(-2)                                                      # d/da_b' = sum_b G
        d = z.unsqueeze(-1) - mu.unsqueeze(-2)
        gd = g.mul_(d)                                                      # G (z - mu)
        gz = 2 * torch.bmm(gd, h.unsqueeze(-1)).squeeze(-1)                 # sum_b' 2 h G (z - mu)
        gmu = -2 * h * gd.sum(-2)
        gh = gd.mul_(d).sum(-2)                                             # sum_b G (z - mu)^2
        return gz, gmu, gh, ga, None, None


def _normal_lse_direct(z, mu, h, a, log_w):
    """What :class:`_NormalLSE` computes, as plain differentiable tensor code (for ``torch.compile``): ``z (n, c)``,
    ``mu, h, a (n, B)`` (``a`` without the weight), ``log_w (c, B)``."""
    d = z.unsqueeze(-1) - mu.unsqueeze(-2)
    return torch.logsumexp(a.unsqueeze(-2) + h.unsqueeze(-2) * d * d + log_w, -1)


def _concrete_pairwise(v, logits, tau, log_w, fast=True):
    """Direct pairwise ExpConcrete log densities (Maddison et al. eq. B.5, as ``ExpRelaxedCategorical.log_prob``)
    of rows ``v (P, c, V, K)`` under ``logits (P, B, V, K)`` (normalised), and their log-sum-exp with ``log_w``:
    ``(group (P, c, B) float64, per-variable log marginals (P, c, V))``."""
    K = logits.shape[-1]
    lse = logsumexp if fast else torch.logsumexp  # torch's for torch.compile
    const = torch.lgamma(torch.full_like(tau, float(K))) + (K - 1) * torch.log(tau)
    score = logits.unsqueeze(1) - tau * v.unsqueeze(2)                        # (P, c, B, V, K)
    lp = score.sum(-1) - K * lse(score, -1) + const                           # (P, c, B, V)
    return lp.sum(-1).double(), lse(lp + log_w.unsqueeze(-1), -2)


_COMPILED = {}


def _compiled(fn):
    """``torch.compile(fn)`` (once per process; inductor fuses the ``B x B x E`` elementwise work into loops)."""
    if fn not in _COMPILED:
        _COMPILED[fn] = torch.compile(fn, dynamic=False)
    return _COMPILED[fn]


def _pairwise_log_prob(fn, value_rows, lead):
    """``log fn_{b'}(value_b)`` for rows ``b`` of ``value_rows (*lead, c, ...)`` against all ``B`` batch members
    ``b'`` of ``fn`` (batch shape ``(*lead, B, ...)``): ``(*lead, c, B, ...)`` (the direct formula; any
    distribution)."""
    v = value_rows.movedim(lead, 0).unsqueeze(lead + 1)    # (c, *lead, 1, ...)
    return fn.log_prob(v).movedim(0, lead)


def _normal_kind(g):
    return type(g.q) in (dist.Normal, torch.distributions.Normal)


def chunk_plan(B, E, max_chunk_elements=2 ** 22, chunk_rows=None, use_checkpoint=None):
    """Rows per chunk of the ``B x B x E`` table (at most ``max_chunk_elements`` elements, or ``chunk_rows``) and
    whether to recompute chunks in the backward pass (default: with gradients and more than one chunk)."""
    if chunk_rows is None:
        chunk_rows = max(1, int(max_chunk_elements) // max(1, B * E))
    chunk_rows = min(int(chunk_rows), B)
    if use_checkpoint is None:
        use_checkpoint = torch.is_grad_enabled() and -(-B // chunk_rows) > 1
    return chunk_rows, use_checkpoint


class _Prepared:
    """Per-group tensors of the fast paths, computed once per step (all ``(P, B, ...)``; ``P = 1`` without
    vectorised particles)."""

    def __init__(self, g, off, fused=False):
        self.g = g
        lead_shape = g.value.shape[:g.lead]
        self.P = math.prod(lead_shape)
        B = g.value.shape[g.lead]
        self.B = B
        if _normal_kind(g):
            self.kind = "normal"
            shape = g.value.shape
            z = g.value.reshape(self.P, B, g.num_sub)
            mu = g.q.loc.expand(shape).reshape(self.P, B, g.num_sub)
            scale = g.q.scale.expand(shape).reshape(self.P, B, g.num_sub)
            self.h = -0.5 * scale.reciprocal().square()
            self.a = -torch.log(scale) - 0.5 * math.log(2 * math.pi)
            if fused:  # per-dimension layout (P, E, B) for fused.NormalGroup (marginals and group table at once)
                self.z3, self.mu3, self.h3, self.a3 = (t.transpose(1, 2) for t in (z, mu, self.h, self.a))
                return
            # group level in float64, centred per dimension (a constant shift of z and mu), the square expanded
            # into matrix products
            z64, mu64, h64 = z.double(), mu.double(), self.h.double()
            c = mu64.detach().mean(1, keepdim=True)
            self.z64, mu64 = z64 - c, mu64 - c
            self.right64 = torch.cat([h64, -2 * h64 * mu64], -1)                       # (P, B, 2E)
            self.const64 = (self.a.double() + h64 * mu64 * mu64).sum(-1)               # (P, B)
            # per-dimension layout for _NormalLSE: (P * E, B)
            self.zt = z.permute(0, 2, 1).reshape(-1, B)
            self.mut = mu.permute(0, 2, 1).reshape(-1, B)
            self.ht = self.h.permute(0, 2, 1).reshape(-1, B)
            self.at = (self.a + off).permute(0, 2, 1).reshape(-1, B)
            self.at_raw = self.a.permute(0, 2, 1).reshape(-1, B)
        elif isinstance(g.q, ExpRelaxedCategorical) and g.q.temperature.numel() == 1:
            self.kind = "concrete"  # the direct formula (_concrete_pairwise, or fused.ConcreteLP)
            K = g.q.logits.shape[-1]
            self.v = g.value.reshape(self.P, B, -1, K)
            self.logits = g.q.logits.expand(g.value.shape).reshape(self.P, B, -1, K)
            self.tau = g.q.temperature.reshape(())
            if fused:
                self.Lt = self.logits.permute(0, 2, 3, 1)                               # (P, V, K, B)
                self.cst = torch.lgamma(torch.full_like(self.tau, float(K))) + (K - 1) * torch.log(self.tau)
        else:
            self.kind = "generic"

    def rows(self, start, stop, log_w):
        """``(group (P, c, B) float64 pairwise log density, per-sub-variable log marginals (P, c, E_d))``."""
        g, P, B = self.g, self.P, self.B
        if self.kind == "normal":
            z = self.z64[:, start:stop]
            left = torch.cat([z * z, z], -1)                                            # (P, c, 2E)
            grp = torch.matmul(left, self.right64.transpose(-2, -1)) + self.const64.unsqueeze(-2)
            return grp, None  # the per-dimension marginals: _NormalLSE in log_batch_marginals
        # any other distribution: its own pairwise log_prob
        lp = _pairwise_log_prob(g.q, g.value.narrow(g.lead, start, stop - start), g.lead)
        lp = lp.reshape(P, stop - start, B, g.num_sub)
        return lp.sum(-1).double(), logsumexp(lp + log_w.unsqueeze(-1), -2)


def log_batch_marginals(groups: List[LatentGroup], dataset_size, max_chunk_elements=2 ** 22, chunk_rows=None,
                        use_checkpoint=None, compile=False, fused=True):
    r"""Batch estimates (eq. 13) of :math:`\log q(z^{(b)})`, :math:`\log q(z_d^{(b)})` and
    :math:`\log q(z_{d,e}^{(b)})` for every batch member ``b``.

    Fused (the default on the CPU): every pairwise density formed directly by the C++ kernels. Tensor code:
    Normal group densities as matrix products in float64 (the square expanded) and the per-dimension marginals by
    :class:`_NormalLSE`; other distributions (the Concrete block included) by the direct pairwise ``log_prob``.

    :param groups: the latent groups (see :class:`LatentGroup`; built by :meth:`HFVAE_ELBO.latent_groups`).
    :param dataset_size: ``N``.
    :param int max_chunk_elements: bound on ``rows x B x E`` of one chunk of the ``B x B`` table.
    :param int chunk_rows: explicit rows per chunk (overrides ``max_chunk_elements``).
    :param bool use_checkpoint: recompute chunks in the backward pass; default: when gradients are enabled and
        there is more than one chunk.
    :param bool compile: compute the per-dimension Normal and the Concrete pairwise terms with ``torch.compile``d
        kernels (the first call compiles, which takes minutes on a small CPU; off by default).
    :param bool fused: compute them with the fused C++ kernels of :mod:`pyro_groupvae.infer.fused` where they are
        available (CPU tensors, a C++ compiler; same values within float rounding, no ``B x B x E`` tensor);
        ignored with ``compile``.
    :returns: ``(joint (*lead, B), groups (*lead, B, D), subvariables (*lead, B, E))``.
    """
    g0 = groups[0]
    lead_shape = g0.value.shape[:g0.lead]
    B = g0.value.shape[g0.lead]
    dtype, device = g0.value.dtype, g0.value.device
    E = sum(g.num_sub for g in groups)
    D = len(groups)
    chunk_rows, use_checkpoint = chunk_plan(B, E, max_chunk_elements, chunk_rows, use_checkpoint)
    diag, off = _stratum_log_weights(B, dataset_size)
    dw = diag - off if math.isfinite(off) else 0.0

    fused = bool(fused) and not compile and math.isfinite(off) and _fused.available(g0.value)
    prepared = [_Prepared(g, off if math.isfinite(off) else 0.0, fused) for g in groups]

    def fused_chunk(start, stop):
        """The chunk with the C++ kernels: every pairwise table in the input dtype, formed directly."""
        tables, subs = [], []
        for p in prepared:
            if p.kind == "normal":
                sub, table = _fused.NormalGroup.apply(p.z3[..., start:stop], p.mu3, p.h3, p.a3, dw, start)
                sub = (sub + off).transpose(-2, -1)                           # (P, c, E)
            elif p.kind == "concrete":
                lp = _fused.ConcreteLP.apply(p.v[:, start:stop], p.Lt, p.tau, p.cst)   # (P, V, c, B)
                if lp.shape[1] == 1:  # one sub-variable: its marginal is the group's (below)
                    sub, table = None, lp.squeeze(1)
                else:
                    sub = (_fused.GroupLSE.apply(dw, start, *lp.unbind(1))[:, :-1] + off).transpose(-2, -1)
                    table = lp.sum(1)
            else:
                log_w = stratified_log_weights(torch.arange(start, stop, device=device), B, dataset_size, dtype,
                                               device)
                table, sub = p.rows(start, stop, log_w)
                table = table.to(dtype)
            tables.append(table)
            subs.append(sub)
        out = _fused.GroupLSE.apply(dw, start, *tables) + off                 # (P, D + 1, c)
        out_grp, out_joint = out[:, :D].transpose(-2, -1), out[:, D]
        subs = [out_grp[..., d:d + 1] if sub is None else sub for d, sub in enumerate(subs)]
        return torch.cat([out_joint.unsqueeze(-1), out_grp] + subs, -1)

    def chunk(start, stop):
        rows = torch.arange(start, stop, device=device)
        log_w = stratified_log_weights(rows, B, dataset_size, dtype, device)  # (c, B)
        grps, subs = [], []
        for p in prepared:
            if p.kind == "concrete":
                if compile:
                    grp, sub = _compiled(_concrete_pairwise)(p.v[:, start:stop], p.logits, p.tau, log_w, False)
                else:
                    grp, sub = _concrete_pairwise(p.v[:, start:stop], p.logits, p.tau, log_w)
                grps.append(grp)
                subs.append(sub.to(dtype))
                continue
            grp, sub = p.rows(start, stop, log_w)
            if p.kind == "normal":
                if compile:
                    sub = _compiled(_normal_lse_direct)(p.zt[:, start:stop], p.mut, p.ht, p.at_raw, log_w)
                elif math.isfinite(off):
                    sub = _NormalLSE.apply(p.zt[:, start:stop], p.mut, p.ht, p.at, dw, start)
                else:  # B = 1: only the deterministic stratum
                    sub = (p.at + p.ht * (p.zt - p.mut) ** 2)[:, start:stop] + diag
                sub = sub.reshape(p.P, p.g.num_sub, stop - start).transpose(-2, -1)
            grps.append(grp)
            subs.append(sub)
        grp = torch.stack(grps, 1)               # (P, D, c, B) float64: the reductions run over the last dim
        lw = log_w.double()
        out_grp = logsumexp(grp + lw, -1).transpose(-2, -1).to(dtype)
        out_joint = logsumexp(grp.sum(1) + lw, -1).to(dtype)
        return torch.cat([out_joint.unsqueeze(-1), out_grp] + subs, -1)

    if fused:
        chunk = fused_chunk
    outs = []
    for start in range(0, B, chunk_rows):
        stop = min(B, start + chunk_rows)
        if use_checkpoint:
            outs.append(checkpoint(chunk, start, stop, use_reentrant=False))
        else:
            outs.append(chunk(start, stop))
    out = torch.cat(outs, -2).reshape(lead_shape + (B, 1 + D + E))
    return out[..., 0], out[..., 1:1 + D], out[..., 1 + D:]


#: name of the plate Pyro's ELBOs put around model and guide for vectorised particles
_PARTICLES = "num_particles_vectorized"


def _unwrap(fn):
    """``(base, reinterpreted_ndims)`` of nested ``Independent`` wrappers."""
    k = 0
    while isinstance(fn, Independent):
        k += fn.reinterpreted_batch_ndims
        fn = fn.base_dist
    return fn, k


class HFVAE_ELBO(Trace_ELBO):
    r"""The HFVAE objective (eq. 9, our reading: see the module docstring) for any Pyro model/guide whose
    reparameterised latent sites live in one observation plate.

    :param float alpha: weight of the mutual information :math:`I(x;z)` (term ②).
    :param float beta: weight of the total correlation between groups (term Ⓐ).
    :param float gamma: weight of the total correlation within groups (term ⓘ).
    :param float delta: weight of the dimension-wise KLs (1 in the paper's HFVAE; ``beta`` for the beta-VAE).
    :param int dataset_size: ``N`` of eq. 13 (default: the guide sites' ``infer["dataset_size"]``, else the
        plate size).
    :param str plate_name: the observation plate (default: the one plate all latent sites share).
    :param int max_chunk_elements: memory bound of one chunk of the ``B x B`` density table.
    :param int chunk_rows: explicit chunk rows (overrides ``max_chunk_elements``).
    :param int num_particles: particles; each gets its own batch estimate of the marginals.
    :param bool vectorize_particles: draw the particles in one vectorised pass (an outer plate, as in Pyro's
        ELBOs) instead of one after another.
    :param bool compile: ``torch.compile`` the ``B x B`` kernels of the estimator (off by default: the first step
        compiles for minutes on a small CPU; see docs/benchmarks.md for what it gains).
    :param bool fused: use the fused C++ kernels of :mod:`pyro_groupvae.infer.fused` on the CPU where they can be
        built (default; same values as the tensor code; ``False`` or ``PYRO_GROUPVAE_FUSED=0`` turns them off).

    ``loss``/``loss_and_grads``/``differentiable_loss`` return minus the weighted objective summed over the
    batch (as ``Trace_ELBO`` does, scaled by the sites' ``poutine.scale``/subsampling); :meth:`decomposition`
    returns the terms per observation.
    """

    def __init__(self, alpha=1.0, beta=1.0, gamma=1.0, delta=1.0, dataset_size=None, plate_name=None,
                 max_chunk_elements=2 ** 22, chunk_rows=None, num_particles=1, max_plate_nesting=float("inf"),
                 vectorize_particles=False, retain_graph=None, compile=False, fused=True):
        super().__init__(num_particles=num_particles, max_plate_nesting=max_plate_nesting,
                         vectorize_particles=vectorize_particles, retain_graph=retain_graph)
        for name, v in [("alpha", alpha), ("beta", beta), ("gamma", gamma), ("delta", delta)]:
            if not (isinstance(v, (int, float)) and math.isfinite(v)):
                raise ValueError(f"{name} must be a finite number, got {v!r}")
        self.alpha, self.beta, self.gamma, self.delta = float(alpha), float(beta), float(gamma), float(delta)
        self.dataset_size = dataset_size
        self.plate_name = plate_name
        self.max_chunk_elements = max_chunk_elements
        self.chunk_rows = chunk_rows
        self.compile = bool(compile)
        self.fused = bool(fused)

    @classmethod
    def from_preset(cls, name, beta=4.0, gamma=3.0, **kw):
        """The objective of a table-1 preset (see :func:`preset_weights`)."""
        a, b, g, d = preset_weights(name, beta, gamma)
        return cls(alpha=a, beta=b, gamma=g, delta=d, **kw)

    # ------------------------------------------------------------------ structure
    def _data_frame(self, site):
        frames = [f for f in site["cond_indep_stack"] if f.vectorized and f.name != _PARTICLES]
        if self.plate_name is not None:
            frames = [f for f in frames if f.name == self.plate_name]
            return frames[0] if frames else None
        if len(frames) > 1:
            raise InputError(f"latent site {site['name']!r} is in several plates {[f.name for f in frames]}: "
                             "pass plate_name= to HFVAE_ELBO to say which one holds the observations")
        return frames[0] if frames else None

    def latent_groups(self, model_trace, guide_trace):
        """Split the guide's latent sites into groups of the observation plate and global sites.

        :returns: ``(groups, global_names, dataset_size, scale)``.
        """
        groups, global_names, sizes, scales, frame_name = [], [], [], [], None
        for name, site in guide_trace.nodes.items():
            if site["type"] != "sample" or site["is_observed"]:
                continue
            frame = self._data_frame(site)
            if frame is None:
                global_names.append(name)
                continue
            if frame_name is not None and frame.name != frame_name:
                raise InputError(f"latent sites live in different plates ({frame_name!r}, {frame.name!r}); pass "
                                 "plate_name= to HFVAE_ELBO")
            frame_name = frame.name
            q_site, p_site = site["fn"], model_trace.nodes[name]["fn"]
            if not q_site.has_rsample:
                raise NotImplementedError(f"HFVAE_ELBO needs reparameterised guide sites; {name!r} is "
                                          f"{type(q_site).__name__} without rsample")
            lead = int(any(f.name == _PARTICLES for f in site["cond_indep_stack"]))
            if len(q_site.batch_shape) != 1 + lead:
                raise InputError(f"latent site {name!r} must have batch_shape (B,) (one plate over the "
                                 f"observations, the rest in the event), got {tuple(q_site.batch_shape)}")
            value = site["value"]
            B = q_site.batch_shape[lead]
            q_base, kq = _unwrap(q_site)
            p_base, kp = _unwrap(p_site)
            if kq > 0 and kq == kp and tuple(q_base.batch_shape) == tuple(p_base.batch_shape[-len(q_base.batch_shape):]):
                num_sub = math.prod(q_base.batch_shape[1 + lead:])
                q_fn, p_fn = q_base, p_base
            else:  # the whole site is one sub-variable
                num_sub, q_fn, p_fn = 1, q_site, p_site
            groups.append(LatentGroup(name, q_fn, p_fn, q_site, p_site, value, num_sub, lead))
            N = self.dataset_size or site["infer"].get("dataset_size") or frame.size
            sizes.append(int(N))
            scales.append(site["scale"])
            if B != groups[0].value.shape[groups[0].lead]:
                raise InputError("latent sites of the observation plate have different batch sizes")
        if groups and len(set(sizes)) > 1:
            raise InputError(f"latent sites disagree on dataset_size: {sizes}")
        scale = scales[0] if scales else 1.0
        for s in scales[1:]:
            if not (s is scale or (torch.is_tensor(s) and torch.is_tensor(scale) and torch.equal(s, scale))
                    or (not torch.is_tensor(s) and not torch.is_tensor(scale) and s == scale)):
                raise InputError("latent sites of the observation plate must share one poutine.scale: the HFVAE "
                                 "terms mix the groups (weight the terms with alpha/beta/gamma instead)")
        return groups, global_names, (sizes[0] if sizes else None), scale

    def _get_trace(self, model, guide, args, kwargs):
        """One guide trace and the model replayed against it, as ``Trace_ELBO`` draws them, but with validation
        off the log densities of the latent sites of the observation plate are not computed (the estimator computes
        them per sub-variable itself): only those of observed sites and global latents."""
        if is_validation_enabled() or isinstance(poutine.unwrap(guide), poutine.messenger.Messenger):
            return super()._get_trace(model, guide, args, kwargs)
        guide_trace = poutine.trace(guide, graph_type="flat").get_trace(*args, **kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace), graph_type="flat").get_trace(
            *args, **kwargs)
        guide_trace, model_trace = prune_subsample_sites(guide_trace), prune_subsample_sites(model_trace)
        latent = {name for name, site in guide_trace.nodes.items() if site["type"] == "sample"
                  and not site["is_observed"] and self._data_frame(site) is not None}
        model_trace.compute_log_prob(lambda name, site: name not in latent)
        guide_trace.compute_log_prob(lambda name, site: name not in latent)
        return model_trace, guide_trace

    # ------------------------------------------------------------------ terms
    def _terms(self, model_trace, guide_trace):
        """Per-observation terms ``(B,)`` plus the summed reconstruction and global-latent terms."""
        groups, global_names, N, scale = self.latent_groups(model_trace, guide_trace)
        recon = 0.0
        for name, site in model_trace.nodes.items():
            if site["type"] == "sample" and site["is_observed"]:
                recon = recon + site["log_prob_sum"]
        glob = 0.0
        for name in global_names:
            glob = glob + model_trace.nodes[name]["log_prob_sum"] - guide_trace.nodes[name]["log_prob_sum"]
        t = {"recon": recon, "global": glob, "scale": scale, "batch_shape": ()}
        if not groups:
            return t
        bshape = groups[0].value.shape[:groups[0].lead + 1]  # (*particles, B)
        lq_sub = torch.cat([g.q.log_prob(g.value).reshape(bshape + (g.num_sub,)) for g in groups], -1)
        lp_sub = torch.cat([g.p.log_prob(g.value).reshape(bshape + (g.num_sub,)) for g in groups], -1)
        sizes = [g.num_sub for g in groups]

        def per_group(sub):  # (*, B, E) -> (*, B, D)
            return torch.stack([s.sum(-1) for s in sub.split(sizes, -1)], -1)

        lqh, lqh_grp, lqh_sub = log_batch_marginals(groups, N, self.max_chunk_elements, self.chunk_rows,
                                                    compile=self.compile, fused=self.fused)
        lq = lq_sub.sum(-1)
        t["batch_shape"] = tuple(bshape)
        t.update(
            mutual_information=lq - lqh,
            tc_between=lqh - lqh_grp.sum(-1),          # prior part of (A) is 0: sites are independent a priori
            tc_within=(lqh_grp - per_group(lqh_sub)).sum(-1),   # prior part of (i) is 0: see latent_groups
            dimension_kl=(lqh_sub - lp_sub).sum(-1),
            kl=lq - lp_sub.sum(-1),                    # the ordinary log q(z|x) - log p(z)
        )
        return t

    def _objective(self, t):
        """Weighted objective (to maximise) and the plain ELBO estimate, both summed over the batch."""
        obj = t["recon"] + t["global"]
        elbo = obj
        if "kl" in t:
            lat = -(self.alpha * t["mutual_information"] + self.beta * t["tc_between"]
                    + self.gamma * t["tc_within"] + self.delta * t["dimension_kl"])
            obj = obj + (t["scale"] * lat).sum()
            elbo = elbo - (t["scale"] * t["kl"]).sum()
        return obj, elbo

    # ------------------------------------------------------------------ Pyro ELBO interface
    def differentiable_loss(self, model, guide, *args, **kwargs):
        loss = 0.0
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            obj, _ = self._objective(self._terms(model_trace, guide_trace))
            loss = loss - obj / self.num_particles
        warn_if_nan(loss, "loss")
        return loss

    def loss(self, model, guide, *args, **kwargs):
        with torch.no_grad():
            loss = self.differentiable_loss(model, guide, *args, **kwargs)
        return float(loss)

    def loss_and_grads(self, model, guide, *args, **kwargs):
        loss = 0.0
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            obj, _ = self._objective(self._terms(model_trace, guide_trace))
            surrogate = -obj / self.num_particles
            loss += float(surrogate.detach())
            trainable = any(site["type"] == "param" for tr in (model_trace, guide_trace)
                            for site in tr.nodes.values())
            if trainable and getattr(surrogate, "requires_grad", False):
                surrogate.backward(retain_graph=self.retain_graph)
        warn_if_nan(loss, "loss")
        return loss

    @torch.no_grad()
    def decomposition(self, model, guide, *args, **kwargs):
        """The terms of the decomposition, averaged over particles and *per observation* of the batch:
        ``log_likelihood``, ``mutual_information`` (-②), ``tc_between`` (-Ⓐ), ``tc_within`` (-(ⓘ-ⓘⓘ)),
        ``dimension_kl``, ``kl`` (their sum, the ordinary KL), ``elbo`` (plain ELBO) and ``objective``
        (weighted), plus ``batch_size`` and ``dataset_size``."""
        acc = {}
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            t = self._terms(model_trace, guide_trace)
            groups, _, N, _ = self.latent_groups(model_trace, guide_trace)
            B = groups[0].value.shape[groups[0].lead] if groups else 1
            n = self.num_particles if self.vectorize_particles else 1  # particles in this trace
            obj, elbo = self._objective(t)
            row = {"log_likelihood": float(t["recon"]) / (B * n), "objective": float(obj) / (B * n),
                   "elbo": float(elbo) / (B * n)}
            for k in ("mutual_information", "tc_between", "tc_within", "dimension_kl", "kl"):
                if k in t:
                    row[k] = float(t[k].mean())
            for k, v in row.items():
                acc[k] = acc.get(k, 0.0) + v * n / self.num_particles
            acc["batch_size"], acc["dataset_size"] = B, N
        return acc
