r"""The Concrete (Gumbel-softmax) distribution in log space, for the discrete block of the HFVAE.

:class:`ExpConcrete` is the ExpConcrete of Maddison et al. (2017): ``y = log_softmax((logits + g) / tau)`` with
``g`` i.i.d. Gumbel, so that ``exp(y)`` is a Concrete / relaxed one-hot sample on the simplex. The HFVAE paper
(appendix B) uses a Concrete variable for the discrete latent; we put the sample site on the *log* simplex
because

* the density of ``y`` is finite for every sample, whereas the density of ``exp(y)`` needs ``log(exp(y))`` which
  underflows to ``-inf`` in float32 when a class probability is tiny (the posterior is often confident);
* every term of the HFVAE objective is a difference of log densities of the same sample (``log q(z|x)``,
  ``log q(z)``, ``log p(z)``), so the Jacobian of ``exp`` cancels: KL, mutual information and total correlations
  are identical for ``y`` and ``exp(y)``.

It is the torch ``ExpRelaxedCategorical`` made a Pyro distribution (``expand`` keeps the class, so ``pyro.plate``
works; ``rsample`` is reparameterised). No KL is registered: the HFVAE objective never uses an analytic KL
(it estimates the marginals by sampling), and no closed form exists for two Concrete distributions.

Support: :data:`log_simplex` (``logsumexp(value) = 0``), with a registered ``biject_to``/``transform_to``
(:class:`LogSimplexTransform`, ``x in R^(K-1) -> log_softmax([x, 0])``), so that AutoGuides and HMC stay on it
and distribution validation rejects values off it. The density (Maddison et al. eq. B.5) is with respect to
Lebesgue measure on the first ``K-1`` coordinates; the transform's log-Jacobian (``value[..., -1]``) is for the
same coordinates, so ``AutoNormal`` scores its samples correctly.
"""
from __future__ import annotations

import torch
from pyro.distributions.torch_distribution import TorchDistributionMixin
from torch.distributions import biject_to, constraints, transform_to
from torch.distributions.transforms import Transform
from torch.distributions.relaxed_categorical import ExpRelaxedCategorical

__all__ = ["ExpConcrete", "log_simplex", "LogSimplexTransform"]


class _LogSimplex(constraints.Constraint):
    """Real vectors ``y`` with ``logsumexp(y) = 0`` (``exp(y)`` on the probability simplex); event dim 1."""

    event_dim = 1

    def check(self, value):
        lse = torch.logsumexp(value, -1)
        tol = 1e-4 if value.dtype != torch.float64 else 1e-8
        return (value == value).all(-1) & ((lse.abs() <= tol * value.shape[-1]))


log_simplex = _LogSimplex()


class LogSimplexTransform(Transform):
    r"""Bijection ``R^(K-1) -> log simplex``: ``y = log_softmax([x, 0])``, inverse ``x = y[:-1] - y[-1]``.

    ``log |det dy_{1:K-1}/dx| = y_K``: the Jacobian ``I - 1 p^T`` has determinant ``1 - sum_{j<K} p_j = p_K``.
    """

    domain = constraints.real_vector
    codomain = log_simplex
    bijective = True

    def __eq__(self, other):
        return isinstance(other, LogSimplexTransform)

    def _call(self, x):
        z = torch.cat([x, x.new_zeros(x.shape[:-1] + (1,))], -1)
        return z - torch.logsumexp(z, -1, keepdim=True)

    def _inverse(self, y):
        return y[..., :-1] - y[..., -1:]

    def log_abs_det_jacobian(self, x, y):
        return y[..., -1]

    def forward_shape(self, shape):
        return shape[:-1] + (shape[-1] + 1,)

    def inverse_shape(self, shape):
        return shape[:-1] + (shape[-1] - 1,)


@biject_to.register(type(log_simplex))
@transform_to.register(type(log_simplex))
def _transform_to_log_simplex(constraint):
    return LogSimplexTransform()


class ExpConcrete(ExpRelaxedCategorical, TorchDistributionMixin):
    r"""Log of a Concrete (relaxed one-hot categorical) variable.

    :param temperature: relaxation temperature :math:`\tau > 0` (a float or tensor broadcastable to the batch).
    :param probs: class probabilities ``(..., K)`` (or ``logits``).
    :param logits: unnormalised log-probabilities ``(..., K)``.

    ``batch_shape`` is ``logits.shape[:-1]``, ``event_shape`` is ``(K,)``; values are real vectors whose
    ``logsumexp`` is 0 (the support :data:`log_simplex`). ``exp(value)`` lies in the open simplex.
    """

    arg_constraints = {"probs": constraints.simplex, "logits": constraints.real_vector}
    support = log_simplex
    has_rsample = True

    def __init__(self, temperature, probs=None, logits=None, validate_args=None):
        if not torch.is_tensor(temperature):
            if not float(temperature) > 0:  # a Python number: checked without a host sync
                raise ValueError(f"temperature must be positive, got {temperature}")
            ref = logits if logits is not None else probs
            temperature = torch.full((), float(temperature), dtype=ref.dtype, device=ref.device)
        elif (validate_args if validate_args is not None else self._validate_args) and not torch.jit.is_tracing() \
                and bool((temperature <= 0).any()):  # a tensor: checked only under validation (a host sync)
            raise ValueError(f"temperature must be positive, got {temperature}")
        super().__init__(temperature, probs=probs, logits=logits, validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(ExpConcrete, _instance)
        return super().expand(batch_shape, _instance=new)

    def rsample(self, sample_shape=torch.Size()):
        return super().rsample(sample_shape)

    def log_prob(self, value):
        """Density of the log-simplex value (Maddison et al. 2017, eq. B.5); broadcasts ``value`` against the
        batch shape (``value`` may carry extra leading dimensions)."""
        return super().log_prob(value)

    @property
    def mean(self):
        raise NotImplementedError("ExpConcrete has no closed-form mean")

    @property
    def variance(self):
        raise NotImplementedError("ExpConcrete has no closed-form variance")
