"""Group posteriors against closed forms and brute force."""
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch.distributions import kl_divergence

from pyro_groupvae.distributions import MixtureOfNormals, ProductOfNormals, product_of_normals, segment_logsumexp


def closed_form(loc, var, group_index, g):
    """The product of Gaussians by the textbook formula, one group at a time (float64)."""
    out_loc, out_var = [], []
    for k in range(g):
        m = group_index == k
        prec = 1.0 / var[m]
        v = 1.0 / prec.sum(0)
        out_loc.append(v * (prec * loc[m]).sum(0))
        out_var.append(v)
    return torch.stack(out_loc), torch.stack(out_var)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_product_matches_closed_form_variable_groups(seed):
    torch.manual_seed(seed)
    sizes = [1, 3, 1, 7, 2]
    group_index = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    group_index = group_index[torch.randperm(len(group_index))]
    loc = torch.randn(len(group_index), 4, dtype=torch.float64) * 3
    log_var = torch.empty_like(loc).uniform_(math.log(1e-8), math.log(1e8))
    q = ProductOfNormals.from_observations(loc, log_var=log_var, group_index=group_index, num_groups=len(sizes))
    ref_loc, ref_var = closed_form(loc, log_var.exp(), group_index, len(sizes))
    assert torch.allclose(q.loc, ref_loc, rtol=1e-9, atol=1e-12)
    assert torch.allclose(q.scale ** 2, ref_var, rtol=1e-9)


def test_single_element_groups_are_the_observation_posteriors():
    loc = torch.randn(6, 3)
    scale = torch.rand(6, 3) + 0.1
    q = ProductOfNormals.from_observations(loc, scale, torch.arange(6), 6)
    assert torch.allclose(q.loc, loc, atol=1e-6)
    assert torch.allclose(q.scale, scale, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_extreme_variances_are_stable(dtype):
    # one very precise and one very vague observation per group; variances 1e-8 .. 1e8
    loc = torch.tensor([[1.0], [5.0], [-2.0], [3.0]], dtype=dtype)
    var = torch.tensor([[1e-8], [1e8], [1e8], [1e8]], dtype=dtype)
    gi = torch.tensor([0, 0, 1, 1])
    g_loc, g_log_var = product_of_normals(loc, var.log(), gi, 2)
    assert torch.isfinite(g_loc).all() and torch.isfinite(g_log_var).all()
    assert torch.allclose(g_loc[0], torch.tensor([1.0], dtype=dtype), atol=1e-5)  # the precise one wins
    assert torch.allclose(g_log_var[0].exp(), torch.tensor([1e-8], dtype=dtype), rtol=1e-4)
    assert torch.allclose(g_loc[1], torch.tensor([0.5], dtype=dtype), atol=1e-5)  # equal precisions: the average
    assert torch.allclose(g_log_var[1].exp(), torch.tensor([5e7], dtype=dtype), rtol=1e-4)


def test_product_gradients_finite_at_extremes():
    loc = torch.randn(5, 2, requires_grad=True)
    log_var = torch.tensor([[-18.4] * 2, [18.4] * 2, [0.0] * 2, [-18.4] * 2, [18.4] * 2], requires_grad=True)
    q = ProductOfNormals.from_observations(loc, log_var=log_var, group_index=torch.tensor([0, 0, 1, 1, 2]),
                                           num_groups=3)
    (q.rsample().sum() + q.log_prob(torch.zeros(3, 2)).sum()).backward()
    assert torch.isfinite(loc.grad).all() and torch.isfinite(log_var.grad).all()


def test_accumulating_evidence_shrinks_variance():
    loc, scale = torch.zeros(10, 2), torch.ones(10, 2)
    for n in (1, 2, 5, 10):
        q = ProductOfNormals.from_observations(loc[:n], scale[:n], torch.zeros(n, dtype=torch.long), 1)
        assert torch.allclose(q.scale ** 2, torch.full((1, 2), 1.0 / n))


def test_expand_keeps_class_and_registered_kl():
    q = ProductOfNormals.from_observations(torch.randn(4, 3), torch.rand(4, 3) + 0.5, torch.tensor([0, 1, 1, 2]), 3)
    e = q.expand([5, 3, 3])
    assert type(e) is ProductOfNormals and e.batch_shape == (5, 3, 3)
    assert torch.equal(e.loc[2], q.loc)
    prior = dist.Normal(0.0, 1.0).expand([5, 3, 3])
    kl = kl_divergence(e.to_event(1), prior.to_event(1))
    assert kl.shape == (5, 3)
    ref = 0.5 * (q.scale ** 2 + q.loc ** 2 - 1 - 2 * q.scale.log()).sum(-1)
    assert torch.allclose(kl[0], ref, atol=1e-5)


def test_analytic_kl_matches_monte_carlo():
    torch.manual_seed(0)
    q = ProductOfNormals.from_observations(torch.randn(6, 2), torch.rand(6, 2) + 0.3,
                                           torch.tensor([0, 0, 0, 1, 1, 1]), 2).to_event(1)
    p = dist.Normal(torch.zeros(2, 2), 1.0).to_event(1)
    z = q.rsample([200000])
    mc = (q.log_prob(z) - p.log_prob(z)).mean(0)
    assert torch.allclose(mc, kl_divergence(q, p), atol=0.02)


def test_plate_expand_in_pyro_trace_uses_analytic_kl():
    q = ProductOfNormals.from_observations(torch.randn(4, 3), torch.rand(4, 3) + 0.5, torch.tensor([0, 0, 1, 1]), 2)

    def model():
        with pyro.plate("p", 7, dim=-2), pyro.plate("g", 2, dim=-1):
            pyro.sample("c", dist.Normal(0.0, 1.0).expand([3]).to_event(1))

    def guide():
        with pyro.plate("p", 7, dim=-2), pyro.plate("g", 2, dim=-1):
            pyro.sample("c", q.to_event(1))

    # TraceMeanField_ELBO uses the registered KL: the loss is deterministic and equals 7 * sum of group KLs
    loss = pyro.infer.TraceMeanField_ELBO().loss(model, guide)
    ref = 7 * 0.5 * (q.scale ** 2 + q.loc ** 2 - 1 - 2 * q.scale.log()).sum()
    assert loss == pytest.approx(ref.item(), rel=1e-5)


def test_segment_logsumexp_matches_loop_and_handles_empty():
    v = torch.randn(3, 8, 2)
    gi = torch.tensor([0, 2, 2, 0, 3, 3, 3, 0])
    out = segment_logsumexp(v, gi, 5, dim=-2)
    for g in range(5):
        m = gi == g
        if m.any():
            assert torch.allclose(out[:, g], torch.logsumexp(v[:, m], dim=-2), atol=1e-6)
        else:
            assert torch.isinf(out[:, g]).all()


def test_mixture_log_prob_matches_brute_force():
    torch.manual_seed(0)
    loc, scale = torch.randn(7, 3), torch.rand(7, 3) + 0.2
    gi = torch.tensor([0, 1, 0, 2, 2, 2, 1])
    m = MixtureOfNormals(loc, scale, gi, 3)
    value = torch.randn(5, 3, 3)
    lp = m.log_prob(value)
    for g in range(3):
        comps = dist.Normal(loc[gi == g], scale[gi == g]).to_event(1)
        ref = torch.logsumexp(comps.log_prob(value[:, g].unsqueeze(1)), -1) - math.log(int((gi == g).sum()))
        assert torch.allclose(lp[:, g], ref, atol=1e-5)
    # per-observation layout: row i under its own group's mixture
    mo = MixtureOfNormals(loc, scale, gi, 3, per_observation=True)
    rows = torch.randn(7, 3)
    lpo = mo.log_prob(rows)
    for i in range(7):
        comps = dist.Normal(loc[gi == gi[i]], scale[gi == gi[i]]).to_event(1)
        ref = torch.logsumexp(comps.log_prob(rows[i]), -1) - math.log(int((gi == gi[i]).sum()))
        assert torch.allclose(lpo[i], ref, atol=1e-5)


def test_mixture_rsample_moments_and_gradients():
    torch.manual_seed(0)
    loc = torch.tensor([[0.0], [4.0], [10.0]], requires_grad=True)
    scale = torch.tensor([[1.0], [1.0], [0.5]])
    m = MixtureOfNormals(loc, scale, torch.tensor([0, 0, 1]), 2)
    z = m.rsample([100000])
    assert z.shape == (100000, 2, 1)
    assert torch.allclose(z.mean(0), m.mean, atol=0.05)
    assert torch.allclose(z.var(0), m.variance, rtol=0.03)
    assert torch.allclose(m.mean, torch.tensor([[2.0], [10.0]]))
    assert torch.allclose(m.variance, torch.tensor([[5.0], [0.25]]))
    z.sum().backward()
    assert torch.allclose(loc.grad, torch.tensor([[50000.0], [50000.0], [100000.0]]), rtol=0.02)
    e = m.expand([4, 2])
    assert type(e) is MixtureOfNormals and e.rsample().shape == (4, 2, 1) and e.log_prob(e.rsample()).shape == (4, 2)


def test_mixture_monte_carlo_kl_is_the_supplement_estimator():
    """E_q[log q - log p] by Trace_ELBO with the per-observation layout and a 1/|G| scale = eq. 3 with L = |G|."""
    torch.manual_seed(0)
    loc, scale = torch.randn(4, 2), torch.rand(4, 2) + 0.5
    gi = torch.tensor([0, 0, 0, 1])
    big = MixtureOfNormals(loc, scale, gi, 2)
    z = big.rsample([200000])
    ref = (big.log_prob(z) - dist.Normal(0.0, 1.0).expand([2]).to_event(1).log_prob(z)).mean(0).sum()
    counts = torch.tensor([3.0, 3.0, 3.0, 1.0])

    def model():
        with pyro.plate("obs", 4), pyro.poutine.scale(scale=1.0 / counts):
            pyro.sample("c", dist.Normal(torch.zeros(2), 1.0).to_event(1))

    def guide():
        with pyro.plate("obs", 4), pyro.poutine.scale(scale=1.0 / counts):
            pyro.sample("c", MixtureOfNormals(loc, scale, gi, 2, per_observation=True))

    est = pyro.infer.Trace_ELBO(num_particles=20000, vectorize_particles=True).loss(model, guide)
    assert est == pytest.approx(ref.item(), abs=0.05)
