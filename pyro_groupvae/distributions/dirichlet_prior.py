r"""The Dirichlet class prior of N-VAE (Antorán & Miguel, sec. III-B) as a Pyro distribution.

The class probabilities :math:`\pi` of an observation follow a symmetric Dirichlet and its label is a categorical
draw::

    pi ~ Dir(alpha_p 1_L)        y | pi ~ Cat(pi)

Because the Dirichlet is conjugate to the categorical, the joint factorises the other way round as
``p(pi) p(y | pi) = p(y) p(pi | y)`` with the marginal ``p(y) = alpha_y / sum(alpha)`` (``1/L`` for the symmetric
prior) and the conjugate posterior ``p(pi | y) = Dir(alpha_p 1_L + c_y)`` (``c_y`` one-hot). This second order is
what makes the bound of eq. 3 appear term by term in Pyro's ELBO: a model that samples ``y ~ p(y)`` (observed)
and then ``pi ~ p(pi | y)`` against a guide ``q(pi | x)`` contributes exactly
``log p(y) - KL(q(pi|x) || p(pi|y))``, and the KL is analytic (registered below).

:class:`DirichletClassPrior` is a Dirichlet over the simplex parameterised by the prior concentration
``alpha_p`` and the observed class *counts* (zero for the prior, ``c_y`` for the posterior of one label), so that
the conjugate update is :meth:`DirichletClassPrior.update` and the label marginal is
:meth:`DirichletClassPrior.class_marginal`.
"""
from __future__ import annotations

import torch
from pyro.distributions import Categorical, Dirichlet
from pyro.distributions.torch_distribution import TorchDistribution
from torch.distributions import constraints
from torch.distributions import Dirichlet as _TorchDirichlet
from torch.distributions.kl import register_kl

__all__ = ["DirichletClassPrior", "Float64Dirichlet", "dirichlet_kl", "class_bound_terms", "surrogate_class_term"]


def dirichlet_kl(a, b):
    r"""Closed form :math:`KL(Dir(a) \| Dir(b))` over the last dimension (broadcasting the others).

    ``log G(a0) - sum log G(a_i) - log G(b0) + sum log G(b_i) + sum (a_i - b_i)(psi(a_i) - psi(a0))``.
    """
    a0, b0 = a.sum(-1), b.sum(-1)
    return (torch.lgamma(a0) - torch.lgamma(a).sum(-1) - torch.lgamma(b0) + torch.lgamma(b).sum(-1)
            + ((a - b) * (torch.digamma(a) - torch.digamma(a0).unsqueeze(-1))).sum(-1))


class DirichletClassPrior(TorchDistribution):
    r"""``Dir(alpha_p 1_L + counts)``: the class prior (``counts = 0``) or its conjugate posterior after observing
    labels (``counts = c_y``).

    :param alpha_p: prior concentration per class (scalar or tensor broadcasting with ``counts.shape[:-1]``).
    :param counts: ``(..., L)`` non-negative observed class counts.

    Use :meth:`symmetric` for the prior and :meth:`update` for ``p(pi | y)``::

        prior = DirichletClassPrior.symmetric(0.1, num_classes=10)
        p_y = prior.class_marginal()          # Cat(1/L): p(y)
        post = prior.update(y)                # Dir(alpha_p + c_y): p(pi | y), batch shape y.shape
    """

    arg_constraints = {"alpha_p": constraints.positive, "counts": constraints.independent(constraints.nonnegative, 1)}
    support = constraints.simplex
    has_rsample = True

    def __init__(self, alpha_p, counts, validate_args=None):
        counts = torch.as_tensor(counts, dtype=torch.get_default_dtype()) if not torch.is_tensor(counts) else counts
        if not torch.jit.is_tracing() and (counts.dim() < 1 or counts.shape[-1] < 2):
            raise ValueError(f"counts must have shape (..., L) with L >= 2 classes, got {tuple(counts.shape)}")
        alpha_p = alpha_p.to(counts) if torch.is_tensor(alpha_p) else \
            torch.full((), float(alpha_p), dtype=counts.dtype, device=counts.device)
        batch_shape = torch.broadcast_shapes(alpha_p.shape, counts.shape[:-1])
        self.alpha_p = alpha_p.expand(batch_shape)
        self.counts = counts.expand(batch_shape + counts.shape[-1:])
        super().__init__(batch_shape, counts.shape[-1:], validate_args=validate_args)

    # ------------------------------------------------------------------ constructors
    @classmethod
    def symmetric(cls, alpha_p, num_classes, device=None, validate_args=None, dtype=None):
        """The prior ``Dir(alpha_p 1_L)`` (no observed labels), in ``dtype`` (default: torch's default dtype)."""
        if int(num_classes) < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        return cls(alpha_p, torch.zeros(int(num_classes), device=device, dtype=dtype), validate_args=validate_args)

    def update(self, y, check=True):
        """Conjugate posterior after one label per batch element: ``Dir(alpha_p + counts + c_y)``.

        ``y`` (integer tensor) broadcasts with the batch shape; its shape may carry extra leading dimensions
        (e.g. Pyro's enumeration dimension). ``check=False`` skips the range check (a host sync; also skipped
        while JIT-tracing).
        """
        y = y.to(self.counts.device) if torch.is_tensor(y) else torch.as_tensor(y, device=self.counts.device)
        if y.dtype.is_floating_point or y.dtype == torch.bool:
            raise ValueError(f"y must hold integer class labels, got dtype {y.dtype}")
        num_classes = self.num_classes
        if check and not torch.jit.is_tracing() and y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
            raise ValueError(f"labels must lie in 0..{num_classes - 1}, got min {int(y.min())}, max {int(y.max())}")
        c_y = torch.nn.functional.one_hot(y.long(), num_classes).to(self.counts.dtype)
        return DirichletClassPrior(self.alpha_p, self.counts + c_y, validate_args=self._validate_args)

    # ------------------------------------------------------------------ properties
    @property
    def num_classes(self):
        return self.counts.shape[-1]

    @property
    def concentration(self):
        return self.alpha_p.unsqueeze(-1) + self.counts

    @property
    def mean(self):
        c = self.concentration
        return c / c.sum(-1, keepdim=True)

    @property
    def variance(self):
        c = self.concentration
        c0 = c.sum(-1, keepdim=True)
        return c * (c0 - c) / (c0.pow(2) * (c0 + 1))

    def class_marginal(self):
        r"""The label's marginal (Dirichlet-categorical with one trial): ``p(y) = alpha_y / sum(alpha)``, i.e.
        ``Cat(1/L)`` for the symmetric prior and the posterior predictive after an update."""
        return Categorical(probs=self.mean)

    # ------------------------------------------------------------------ distribution contract
    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(DirichletClassPrior, _instance)
        batch_shape = torch.Size(batch_shape)
        new.alpha_p = self.alpha_p.expand(batch_shape)
        new.counts = self.counts.expand(batch_shape + self.event_shape)
        super(DirichletClassPrior, new).__init__(batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    def rsample(self, sample_shape=torch.Size()):
        return Dirichlet(self.concentration).rsample(sample_shape)

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        # samples of Dirichlets with small concentrations reach the float floor; keep log(value) finite
        value = value.clamp_min(torch.finfo(value.dtype).tiny)
        c = self.concentration
        # a value drawn in higher precision (to keep tiny components) is scored in it, returned in our dtype
        lp = ((c.to(value.dtype) - 1) * torch.log(value)).sum(-1)
        return lp.to(c.dtype) + torch.lgamma(c.sum(-1)) - torch.lgamma(c).sum(-1)

    def entropy(self):
        return Dirichlet(self.concentration).entropy()


@register_kl(_TorchDirichlet, DirichletClassPrior)
def _kl_dirichlet_classprior(p, q):
    return dirichlet_kl(p.concentration, q.concentration)


class Float64Dirichlet(Dirichlet):
    """A Dirichlet whose samples are drawn (and scored) in float64 while its log-densities keep the dtype of the
    concentration. Samples of Dirichlets with small concentrations have components far below float32's smallest
    number (``Gamma(0.02)`` draws are often ``< 1e-38``); float32 clamps them, and log-densities evaluated at the
    clamped values are wrong. Used for ``q(pi|x)`` where the ELBO evaluates densities at the sample (Pyro's
    enumerated semi-supervised N-VAE). The analytic KLs are those of :class:`Dirichlet`."""

    def rsample(self, sample_shape=torch.Size()):
        return Dirichlet(self.concentration.double()).rsample(sample_shape)

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        c = self.concentration.double()
        value = value.double().clamp_min(torch.finfo(torch.float64).tiny)
        lp = ((c - 1) * torch.log(value)).sum(-1) + torch.lgamma(c.sum(-1)) - torch.lgamma(c).sum(-1)
        return lp.to(self.concentration.dtype)


@register_kl(DirichletClassPrior, DirichletClassPrior)
def _kl_classprior_classprior(p, q):
    return dirichlet_kl(p.concentration, q.concentration)


@register_kl(DirichletClassPrior, _TorchDirichlet)
def _kl_classprior_dirichlet(p, q):
    return dirichlet_kl(p.concentration, q.concentration)


def class_bound_terms(q_concentration, y, alpha_p):
    r"""The class part of the N-VAE bound (eq. 3): ``log p(y) - KL(q(pi|x) || p(pi|y))`` per observation.

    :param q_concentration: ``(N, L)`` concentration of ``q(pi | x)``.
    :param y: ``(N,)`` labels.
    :param float alpha_p: symmetric prior concentration.
    """
    prior = DirichletClassPrior.symmetric(alpha_p, q_concentration.shape[-1], device=q_concentration.device)
    return prior.class_marginal().log_prob(y) - dirichlet_kl(q_concentration, prior.update(y).concentration)


def surrogate_class_term(q_concentration, y):
    r"""The paper's eq. 6 surrogate of the class part: ``log q(y | x)`` with ``q(y|x) = E_q[pi_y] = a_y / a_0``.

    The paper calls ``-log q(y|x) + k`` an upper bound of ``KL(q(pi|x) || p(pi|y))``; that holds only on part of
    the parameter space (e.g. ``q = Dir(t 1_L)`` has ``-log q(y|x) = log L`` for every ``t`` while the KL grows
    like ``(L-1)/2 log t``), so we treat it as a surrogate objective, not a bound.
    """
    return torch.log(q_concentration.gather(-1, y.long().unsqueeze(-1)).squeeze(-1)) - torch.log(
        q_concentration.sum(-1))

