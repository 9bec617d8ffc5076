"""Group posteriors of the ML-VAE: accumulating evidence over the observations of a group.

Two ways of building ``q(c_G | X_G)`` from per-observation Gaussians ``N(mu_i, sigma_i^2)``:

* :class:`ProductOfNormals` (paper eq. 7 and supplement sec. 5): the normalised product of the Gaussians is the
  Gaussian with precision ``sum_i sigma_i^-2`` and precision-weighted mean ``sum_i w_i mu_i``,
  ``w_i = sigma_i^-2 / sum_j sigma_j^-2``. Computed for all groups of a batch in one scatter per sum, relative
  to each group's largest precision and accumulated in float64, so variances anywhere in ``[1e-8, 1e8]`` neither
  overflow nor lose the mean, and groups of a million members stay exact in float32. Empty groups, group ids
  ``>= num_groups`` and zero/negative/infinite variances are refused when validation is on.
* :class:`MixtureOfNormals` (supplement sec. 1): the uniform mixture ``1/|G| sum_i N(mu_i, sigma_i^2)``.

Both are ordinary Pyro distributions: ``expand`` works (so ``pyro.plate`` keeps the class, and the registered
KL is found), ``rsample`` is reparameterised, and the KL of the product to a Normal prior is analytic.
"""
from __future__ import annotations

import math

import torch
from pyro.distributions import Normal, TorchDistribution, constraints
from torch.distributions import kl_divergence, register_kl
from torch.distributions.utils import broadcast_all

from ..errors import InputError

__all__ = [
    "ProductOfNormals",
    "MixtureOfNormals",
    "product_of_normals",
    "segment_logsumexp",
    "group_sizes",
]


def group_sizes(group_index: torch.Tensor, num_groups: int) -> torch.Tensor:
    """Number of observations in each group, as a float tensor of shape ``(num_groups,)``."""
    return torch.zeros(num_groups, dtype=torch.get_default_dtype(), device=group_index.device).index_add_(
        0, group_index, torch.ones_like(group_index, dtype=torch.get_default_dtype())
    )


def _accumulation_dtype(dtype):
    """Sums over a group's members are accumulated in float64 (a float32 sum of 10^6 weights drifts by ~1e-2)."""
    return torch.float64 if dtype in (torch.float16, torch.bfloat16, torch.float32) else dtype


def segment_logsumexp(values: torch.Tensor, group_index: torch.Tensor, num_groups: int, dim: int = -2):
    """``log sum_{i in g} exp(values_i)`` for every group ``g``, along dimension ``dim`` of ``values``.

    :param values: tensor whose dimension ``dim`` indexes observations.
    :param group_index: LongTensor ``(N,)`` of group ids in ``0..num_groups-1``.
    :returns: tensor with dimension ``dim`` of size ``num_groups``; ``-inf`` for an empty group.
    """
    dim = dim % values.dim()
    shape = list(values.shape)
    shape[dim] = num_groups
    view = [1] * values.dim()
    view[dim] = -1
    index = group_index.view(view).expand_as(values)
    # The max is a constant for the gradient: detach it so empty groups (-inf) do not produce NaN gradients.
    vmax = torch.full(shape, -math.inf, dtype=values.dtype, device=values.device)
    vmax = vmax.scatter_reduce(dim, index, values.detach(), reduce="amax", include_self=True)
    safe_max = torch.where(torch.isfinite(vmax), vmax, torch.zeros_like(vmax))
    acc = _accumulation_dtype(values.dtype)
    summed = torch.zeros(shape, dtype=acc, device=values.device).scatter_add(
        dim, index, torch.exp(values - safe_max.gather(dim, index)).to(acc)
    )
    return summed.log().to(values.dtype) + safe_max


def product_of_normals(loc, log_var, group_index, num_groups):
    """Precision-weighted product of per-observation diagonal Gaussians, grouped.

    The group precision ``sum_i exp(-log_var_i)`` and the weighted sum ``sum_i exp(-log_var_i) mu_i`` are
    accumulated in float64 (also for float32 inputs) after subtracting each group's largest log-precision, and the
    mean is their ratio, so the result is exact to float32 precision for groups of any size (10^6 identical
    members: mean and variance to 1e-7) and for variances anywhere in ``[1e-8, 1e8]``; it is cast back to the
    input dtype. No host synchronisation, one scatter per sum.

    :param torch.Tensor loc: means ``mu_i`` of shape ``(..., N, D)``.
    :param torch.Tensor log_var: log-variances ``log sigma_i^2``, same shape.
    :param torch.Tensor group_index: LongTensor ``(N,)``: the group of each observation.
    :param int num_groups: number of groups ``G`` (every group must have an observation).
    :returns: ``(group_loc, group_log_var)`` of shape ``(..., G, D)``; an empty group gets loc 0 and variance inf
        (:meth:`ProductOfNormals.from_observations` refuses empty groups when validating).
    """
    out_dtype = loc.dtype
    acc = _accumulation_dtype(out_dtype)
    log_prec = -log_var.to(acc)
    shape = list(log_prec.shape)
    shape[-2] = num_groups
    index = group_index.view(-1, 1).expand(log_prec.shape[-2:]).expand_as(log_prec)
    # the max is a constant for the gradient: detached, so empty groups (-inf) do not produce NaN gradients
    vmax = torch.full(shape, -math.inf, dtype=acc, device=loc.device)
    vmax = vmax.scatter_reduce(-2, index, log_prec.detach(), reduce="amax", include_self=True)
    safe_max = torch.where(torch.isfinite(vmax), vmax, torch.zeros_like(vmax))
    w = torch.exp(log_prec - safe_max.gather(-2, index))  # unnormalised precisions, largest = 1 per group
    total = torch.zeros(shape, dtype=acc, device=loc.device).scatter_add(-2, index, w)
    weighted = torch.zeros(shape, dtype=acc, device=loc.device).scatter_add(-2, index, w * loc.to(acc))
    group_loc = weighted / total.clamp_min(torch.finfo(acc).tiny)
    group_log_prec = total.log() + safe_max
    return group_loc.to(out_dtype), (-group_log_prec).to(out_dtype)


def _check_product_inputs(loc, scale, log_var, group_index, num_groups):
    """Clear errors for what would otherwise come out as an infinite scale, a raw index error or a "NaN loc"."""
    from ..validation import check_group_index

    check_group_index(group_index, loc.shape[-2], num_groups)
    if not torch.isfinite(loc).all():
        raise InputError("ProductOfNormals: the member means (loc) contain NaN or infinite values")
    if scale is not None:
        scale = torch.as_tensor(scale)
        if torch.isnan(scale).any():
            raise InputError("ProductOfNormals: the member scales contain NaN")
        if (scale <= 0).any():
            raise InputError(f"ProductOfNormals: member scales must be > 0, got min {float(scale.min()):.3g} "
                             "(a zero or negative variance); floor them, e.g. scale.clamp_min(1e-4)")
        if torch.isinf(scale).any():
            raise InputError("ProductOfNormals: member scales must be finite, got inf (an infinite variance carries "
                             "no evidence: drop that member instead)")
    else:
        log_var = torch.as_tensor(log_var)
        if not torch.isfinite(log_var).all():
            bad = log_var[~torch.isfinite(log_var)]
            kind = "NaN" if torch.isnan(bad).any() else ("-inf (a zero variance)" if (bad < 0).any() else
                                                          "+inf (an infinite variance)")
            raise InputError(f"ProductOfNormals: member log-variances must be finite, got {kind}; bound them, e.g. "
                             "log_var.clamp(-18, 18)")


class ProductOfNormals(Normal):
    r"""The ML-VAE content posterior :math:`q(C_G|X_G) \propto \prod_{i\in G} N(\mu_i, \sigma_i^2)`.

    A :class:`~pyro.distributions.Normal` over the group parameters (batch shape ``(..., G)`` before
    ``.to_event``), built with :meth:`from_observations`. Because it *is* a Normal, ``rsample`` and
    ``log_prob`` are the Normal's, and ``kl_divergence(ProductOfNormals, Normal)`` is analytic (registered
    below); ``expand`` is implemented so that ``pyro.plate`` keeps the class.

    :param loc: group means.
    :param scale: group standard deviations.
    """

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}
    support = constraints.real
    has_rsample = True

    def __init__(self, loc, scale, validate_args=None):
        super().__init__(loc, scale, validate_args=validate_args)

    @classmethod
    def from_observations(cls, loc, scale=None, group_index=None, num_groups=None, log_var=None,
                          validate_args=None):
        """Accumulate the evidence of per-observation Gaussians into one Gaussian per group.

        :param loc: per-observation means ``(..., N, D)``.
        :param scale: per-observation standard deviations (or give ``log_var`` instead, which is more stable).
        :param group_index: LongTensor ``(N,)`` with values in ``0..num_groups-1``; ``None`` means one group.
        :param int num_groups: number of groups; defaults to ``group_index.max() + 1``.
        :param log_var: per-observation log-variances, used instead of ``scale``.
        :returns: ``ProductOfNormals`` with batch shape ``(..., G, D)``.
        """
        if (scale is None) == (log_var is None):
            raise InputError("ProductOfNormals.from_observations needs exactly one of scale or log_var")
        loc = loc if torch.is_tensor(loc) else torch.as_tensor(loc)  # as_tensor on a tensor would freeze a JIT trace
        if loc.dim() < 2:
            raise InputError(f"ProductOfNormals.from_observations expects loc of shape (..., N, D), got "
                             f"{tuple(loc.shape)}")
        if group_index is None:
            group_index = torch.zeros(loc.shape[-2], dtype=torch.long, device=loc.device)
        if num_groups is None:
            num_groups = int(group_index.max()) + 1 if group_index.numel() else 0
        validate = validate_args if validate_args is not None else \
            torch.distributions.Distribution._validate_args
        if validate:
            # off inside training steps (pyro.validation_enabled(False)): costs host synchronisations
            _check_product_inputs(loc, scale, log_var, group_index, num_groups)
        if log_var is None:
            log_var = 2.0 * torch.log(scale)
        loc, log_var = broadcast_all(loc, log_var)
        group_loc, group_log_var = product_of_normals(loc, log_var, group_index, num_groups)
        return cls(group_loc, torch.exp(0.5 * group_log_var), validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        batch_shape = torch.Size(batch_shape)
        new = self._get_checked_instance(ProductOfNormals, _instance)
        new.loc = self.loc.expand(batch_shape)
        new.scale = self.scale.expand(batch_shape)
        torch.distributions.Distribution.__init__(new, batch_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new


@register_kl(ProductOfNormals, Normal)
def _kl_product_normal(p, q):
    return kl_divergence(Normal(p.loc, p.scale), q)


class MixtureOfNormals(TorchDistribution):
    r"""Uniform mixture :math:`q(C_G|X_G) = \frac{1}{|G|}\sum_{i\in G} N(\mu_i, \sigma_i^2)` (supplement sec. 1).

    Two layouts, chosen by ``per_observation``:

    * ``False``: batch shape ``(G,)``: one content variable per group. ``rsample`` picks a component uniformly
      inside each group, then draws from it with the reparameterisation trick (the weights are fixed at
      ``1/|G|``, so no gradient is lost by the discrete choice).
    * ``True``: batch shape ``(N,)``: one content *sample* per observation, the supplement's scheme with
      ``L = |G|``: row ``i`` is drawn from component ``i``, a stratified sample of its group's mixture, and
      ``log_prob`` of row ``i`` is its group's mixture density. Used with a ``1/|G|`` scale on the site, the
      Monte Carlo KL is exactly the supplement's eq. 3.

    ``log_prob`` is a segment log-sum-exp over the group's components. No KL is registered: the KL to the
    prior is estimated by sampling, as the supplement does (Pyro's ELBOs fall back to ``log q - log p``).
    ``log_prob`` costs ``O(N)`` per group sample in the group layout and ``O(sum_G |G|^2)`` in the
    per-observation layout.

    :param loc: per-observation means ``(N, D)``.
    :param scale: per-observation standard deviations ``(N, D)``.
    :param group_index: LongTensor ``(N,)``.
    :param int num_groups: number of groups.
    :param bool per_observation: layout, see above.
    """

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}
    support = constraints.real_vector
    has_rsample = True

    def __init__(self, loc, scale, group_index, num_groups=None, per_observation=False, validate_args=None):
        loc, scale = broadcast_all(loc, scale)
        if loc.dim() != 2:
            raise ValueError(f"MixtureOfNormals expects loc of shape (N, D), got {tuple(loc.shape)}")
        self.loc, self.scale = loc, scale
        self.group_index = group_index
        self.num_groups = int(group_index.max()) + 1 if num_groups is None else int(num_groups)
        self.per_observation = per_observation
        self._counts = group_sizes(group_index, self.num_groups).to(loc.dtype)
        base = loc.shape[0] if per_observation else self.num_groups
        super().__init__(torch.Size([base]), loc.shape[-1:], validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(MixtureOfNormals, _instance)
        batch_shape = torch.Size(batch_shape)
        if batch_shape[-1:] != self.batch_shape[-1:]:
            raise ValueError(f"MixtureOfNormals cannot expand batch shape {tuple(self.batch_shape)} "
                             f"to {tuple(batch_shape)}: the last dimension indexes groups/observations")
        for attr in ("loc", "scale", "group_index", "num_groups", "per_observation", "_counts"):
            setattr(new, attr, getattr(self, attr))
        torch.distributions.Distribution.__init__(new, batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    def _component_of_each_sample(self, shape):
        """Component (observation row) used by each sample, shape ``shape + batch_shape``."""
        if self.per_observation:
            return torch.arange(self.loc.shape[0], device=self.loc.device).expand(shape + self.batch_shape)
        order = torch.argsort(self.group_index, stable=True)
        start = torch.cumsum(self._counts, 0) - self._counts
        u = torch.rand(shape + self.batch_shape, device=self.loc.device)
        rank = torch.minimum((u * self._counts).long(), (self._counts - 1).long())
        return order[(start.long() + rank)]

    def rsample(self, sample_shape=torch.Size()):
        shape = torch.Size(sample_shape)
        comp = self._component_of_each_sample(shape)
        eps = torch.randn(comp.shape + self.event_shape, dtype=self.loc.dtype, device=self.loc.device)
        return self.loc[comp] + self.scale[comp] * eps

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        comp = Normal(self.loc, self.scale)
        if self.per_observation:
            # value (..., N, D): row i against every component j of its own group.
            same = self.group_index.unsqueeze(-1) == self.group_index.unsqueeze(-2)  # (N, N)
            lp = comp.log_prob(value.unsqueeze(-2)).sum(-1)  # (..., N, N)
            lp = lp.masked_fill(~same, -math.inf)
            return torch.logsumexp(lp, -1) - self._counts[self.group_index].log()
        # value (..., G, D): evaluate each group's value against that group's components only.
        lp = comp.log_prob(value.index_select(-2, self.group_index)).sum(-1)  # (..., N)
        return segment_logsumexp(lp.unsqueeze(-1), self.group_index, self.num_groups, -2).squeeze(-1) - \
            self._counts.log()

    @property
    def mean(self):
        m = torch.zeros(self.num_groups, self.loc.shape[-1], dtype=self.loc.dtype, device=self.loc.device)
        m = m.index_add(0, self.group_index, self.loc) / self._counts.unsqueeze(-1)
        if self.per_observation:
            m = m[self.group_index]
        return m.expand(self.batch_shape + self.event_shape)

    @property
    def variance(self):
        second = torch.zeros(self.num_groups, self.loc.shape[-1], dtype=self.loc.dtype, device=self.loc.device)
        second = second.index_add(0, self.group_index, self.scale ** 2 + self.loc ** 2) / self._counts.unsqueeze(-1)
        mean = self.mean
        if self.per_observation:
            second = second[self.group_index]
        return second.expand(self.batch_shape + self.event_shape) - mean ** 2
