"""The matrix-product / fused estimator of HFVAE_ELBO (eq. 13) against the direct pairwise formula: values and
gradients, Normal, Concrete and other distributions, chunks, vectorised particles, and the whole objective on a
fixed batch and seed."""
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO

from pyro_groupvae.distributions import ExpConcrete
from pyro_groupvae.infer import HFVAE_ELBO, log_batch_marginals
from pyro_groupvae.infer import fused, hfvae_elbo
from pyro_groupvae.infer.hfvae_elbo import LatentGroup

torch.set_num_threads(1)


def direct(groups, N):
    """eq. 13 by the direct formula: every log density of every value under every encoder, ``(*, B, B, E)``,
    then log-sum-exps (the implementation before the matrix-product rewrite)."""
    lead = groups[0].lead
    B = groups[0].value.shape[lead]
    off = math.log(N - 1) - math.log(N) - math.log(B - 1) if B > 1 else -math.inf
    log_w = torch.full((B, B), off, dtype=torch.float64)
    log_w.diagonal().fill_(-math.log(N))
    subs = []
    for g in groups:
        v = g.value.movedim(lead, 0).unsqueeze(lead + 1)  # (B, *lead, 1, ...)
        lp = g.q.log_prob(v).movedim(0, lead)  # (*lead, B, B, ...)
        subs.append(lp.reshape(lp.shape[:lead + 2] + (g.num_sub,)).double())
    grp = torch.stack([s.sum(-1) for s in subs], -1)
    sub = torch.cat(subs, -1)
    return (torch.logsumexp(grp.sum(-1) + log_w, -1), torch.logsumexp(grp + log_w.unsqueeze(-1), -2),
            torch.logsumexp(sub + log_w.unsqueeze(-1), -2))


def make_groups(B=7, D=3, V=2, K=4, P=None, dtype=torch.float32, seed=0, extra=False, spread=1.0):
    g = torch.Generator().manual_seed(seed)
    lead = () if P is None else (P,)
    loc = (3 * torch.randn(lead + (B, D), generator=g, dtype=dtype) + 5).requires_grad_()
    scale = (spread * (0.05 + torch.rand(lead + (B, D), generator=g, dtype=dtype))).requires_grad_()
    logits = (4 * torch.randn(lead + (B, V, K), generator=g, dtype=dtype)).requires_grad_()
    params = [loc, scale, logits]
    qn, qc = dist.Normal(loc, scale), ExpConcrete(0.67, logits=logits)
    zn, zc = qn.rsample(), qc.rsample()
    pn = dist.Normal(torch.zeros(lead + (B, D), dtype=dtype), 1.0)
    pc = ExpConcrete(0.67, logits=torch.zeros(lead + (B, V, K), dtype=dtype))
    n = len(lead)
    groups = [LatentGroup("z_n", qn, pn, qn.to_event(1), pn.to_event(1), zn, D, n),
              LatentGroup("z_c", qc, pc, qc.to_event(1), pc.to_event(1), zc, V, n)]
    if extra:  # a distribution without a fast path: the direct pairwise log_prob
        lloc = torch.randn(lead + (B, 2), generator=g, dtype=dtype).requires_grad_()
        ql = dist.Laplace(lloc, 0.7)
        params.append(lloc)
        groups.append(LatentGroup("z_l", ql, ql, ql.to_event(1), ql.to_event(1), ql.rsample(), 2, n))
    return groups, params


def _check(groups, params, N, rtol, atol, gatol, **kw):
    got = log_batch_marginals(groups, N, **kw)
    want = direct(groups, N)
    for a, b in zip(got, want):
        assert a.shape == b.shape and a.dtype == groups[0].value.dtype
        assert torch.allclose(a.double(), b, rtol=rtol, atol=atol), (a - b).abs().max()
    weights = [torch.randn(a.shape, generator=torch.Generator().manual_seed(i), dtype=torch.float64)
               for i, a in enumerate(want)]
    g1 = torch.autograd.grad(sum((a.double() * w).sum() for a, w in zip(got, weights)), params, retain_graph=True)
    g2 = torch.autograd.grad(sum((a * w).sum() for a, w in zip(want, weights)), params, retain_graph=True)
    for a, b in zip(g1, g2):  # relative to the largest gradient entry
        err, size = (a.double() - b.double()).abs().max(), b.double().abs().max()
        assert err <= gatol + rtol * size, (err, size)


def _need_kernels(use_fused):
    if use_fused and fused.library() is None:
        if fused._compiler() is None:
            pytest.skip("no C++ compiler: the fused kernels cannot be built here")
        raise AssertionError(f"a C++ compiler is present but the fused kernels did not build: "
                             f"{fused._STATE.get('error')}")


@pytest.mark.parametrize("use_fused", [True, False], ids=["fused", "tensor"])
@pytest.mark.parametrize("chunk_rows", [None, 3])
def test_matches_direct_formula_float64(chunk_rows, use_fused):
    _need_kernels(use_fused)
    groups, params = make_groups(dtype=torch.float64, extra=True)
    for N in (7, 50, 10 ** 6):
        _check(groups, params, N, rtol=1e-9, atol=1e-9, gatol=1e-8, chunk_rows=chunk_rows, fused=use_fused)


@pytest.mark.parametrize("use_fused", [True, False], ids=["fused", "tensor"])
@pytest.mark.parametrize("spread", [1.0, 0.02])
def test_matches_direct_formula_float32(spread, use_fused):
    """float32 inputs far from 0 (loc ~ 5 +- 3), narrow and wide posteriors, peaked Concrete logits."""
    _need_kernels(use_fused)
    groups, params = make_groups(B=64, D=10, V=1, K=10, spread=spread, seed=1)
    _check(groups, params, 60000, rtol=1e-4, atol=1e-4, gatol=1e-4, fused=use_fused)


def _grads_close(got, want, inputs, g, tol):
    """Values and the gradients of a random weighting of the outputs agree."""
    got, want = (got,) if torch.is_tensor(got) else got, (want,) if torch.is_tensor(want) else want
    ws = [torch.randn(w.shape, generator=g, dtype=w.dtype) for w in want]
    retain = dict(retain_graph=True)
    for x, y in zip(got, want):
        assert x.shape == y.shape and torch.allclose(x, y, **tol), (x - y).abs().max()
    for x, y in zip(torch.autograd.grad(sum((o * w).sum() for o, w in zip(got, ws)), inputs),
                    torch.autograd.grad(sum((o * w).sum() for o, w in zip(want, ws)), inputs, **retain)):
        assert torch.allclose(x, y, **tol), (x - y).abs().max()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_kernels_match_tensor_code(dtype):
    """The C++ kernels (Normal marginals + group table, pairwise Concrete density, group/joint log-sum-exps)
    against the same functions written as tensor code, values and all gradients (also through only one of two
    outputs), one and two threads, several row offsets (the diagonal of eq. 13 moves with the chunk)."""
    _need_kernels(True)
    g = torch.Generator().manual_seed(4)
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=3e-5, atol=3e-5)
    P, E, c, B = 2, 5, 4, 9
    z = torch.randn(P, E, c, generator=g, dtype=dtype).requires_grad_()
    mu = torch.randn(P, E, B, generator=g, dtype=dtype).requires_grad_()
    h = (-0.5 / (0.1 + torch.rand(P, E, B, generator=g, dtype=dtype)) ** 2).requires_grad_()
    a = torch.randn(P, E, B, generator=g, dtype=dtype).requires_grad_()
    V, K = 3, 4
    v = torch.randn(P, c, V, K, generator=g, dtype=dtype).requires_grad_()
    L = (5 * torch.randn(P, B, V, K, generator=g, dtype=dtype)).requires_grad_()
    tau = torch.tensor(0.67, dtype=dtype, requires_grad=True)
    cst = torch.tensor(1.3, dtype=dtype, requires_grad=True)
    threads = torch.get_num_threads()
    try:
        for nt in (1, 2):
            torch.set_num_threads(nt)
            for offset in (0, 3, B - c):
                lw = torch.zeros(c, B, dtype=dtype)
                lw[torch.arange(c), torch.arange(c) + offset] = -2.5
                x = a.unsqueeze(-2) + h.unsqueeze(-2) * (z.unsqueeze(-1) - mu.unsqueeze(-2)) ** 2   # (P, E, c, B)
                want = (torch.logsumexp(x + lw, -1), x.sum(1))
                for k in (slice(None), 0, 1):  # both outputs; only the marginals; only the table
                    got = fused.NormalGroup.apply(z, mu, h, a, -2.5, offset)
                    _grads_close(got[k], want[k], (z, mu, h, a), g, tol)
                x = (20 * torch.randn(P, 3, c, B, generator=g, dtype=dtype)).requires_grad_()
                want = torch.cat([torch.logsumexp(x + lw, -1), torch.logsumexp(x.sum(1) + lw, -1).unsqueeze(1)], 1)
                _grads_close(fused.GroupLSE.apply(-2.5, offset, *x.unbind(1)), want, (x,), g, tol)
            score = L.unsqueeze(1) - tau * v.unsqueeze(2)                           # (P, c, B, V, K)
            want = (score.sum(-1) - K * torch.logsumexp(score, -1) + cst).permute(0, 3, 1, 2)
            got = fused.ConcreteLP.apply(v, L.permute(0, 2, 3, 1), tau, cst)
            _grads_close(got, want, (v, L, tau, cst), g, tol)
    finally:
        torch.set_num_threads(threads)


def test_fused_kernels_can_be_turned_off(monkeypatch):
    """``PYRO_GROUPVAE_FUSED=0``: no kernels, the tensor code gives the same numbers; never on other devices or
    dtypes."""
    groups, params = make_groups(B=16, D=4, V=1, K=5, dtype=torch.float64)
    assert not fused.available(torch.zeros(2, dtype=torch.float16))
    assert not fused.available(torch.zeros(2, device="meta"))
    monkeypatch.setattr(fused, "_STATE", {})
    monkeypatch.setenv("PYRO_GROUPVAE_FUSED", "0")
    assert fused.library() is None and not fused.available(groups[0].value)
    _check(groups, params, 1000, rtol=1e-9, atol=1e-9, gatol=1e-8)


def test_vectorised_particles_are_independent_estimates():
    groups, params = make_groups(B=6, P=3, dtype=torch.float64, extra=True, seed=2)
    _check(groups, params, 100, rtol=1e-9, atol=1e-9, gatol=1e-8, chunk_rows=4)
    got = log_batch_marginals(groups, 100)
    for p in range(3):
        single = [LatentGroup(g.name, _slice(g.q, p), None, None, None, g.value[p], g.num_sub, 0) for g in groups]
        for a, b in zip(got, log_batch_marginals(single, 100)):
            assert torch.allclose(a[p], b, atol=1e-10)


def _slice(q, p):
    if isinstance(q, ExpConcrete):
        return ExpConcrete(q.temperature, logits=q.logits[p])
    return type(q)(q.loc[p], q.scale[p])


def test_single_observation_and_n_equals_b():
    groups, params = make_groups(B=1, dtype=torch.float64)
    _check(groups, params, 10, rtol=1e-9, atol=1e-9, gatol=1e-8)
    groups, params = make_groups(B=5, dtype=torch.float64)
    _check(groups, params, 5, rtol=1e-9, atol=1e-9, gatol=1e-8)


@pytest.mark.parametrize("use_fused", [True, False], ids=["fused", "tensor"])
def test_extreme_concrete_logits_stay_finite(use_fused):
    """Logit gaps of hundreds of nats stay finite and exact (a factorised product of exponentials, tried
    first, was wrong by 38 nats here)."""
    _need_kernels(use_fused)
    logits = 200 * torch.randn(8, 2, 4, generator=torch.Generator().manual_seed(3))
    q = ExpConcrete(0.67, logits=logits)
    groups = [LatentGroup("z_c", q, None, None, None, q.rsample(), 2, 0)]
    out = log_batch_marginals(groups, 100, fused=use_fused)
    assert all(torch.isfinite(o).all() for o in out)
    want = direct(groups, 100)
    for a, b in zip(out, want):
        assert torch.allclose(a.double(), b, rtol=1e-4, atol=1e-2), (a.double() - b).abs().max()


def _toy(D=3, K=4):
    """A plain Pyro model/guide with a Normal and a Concrete group in one observation plate."""
    enc = torch.nn.Linear(5, 2 * D + K)
    dec = torch.nn.Linear(D + K, 5)

    def model(x):
        pyro.module("dec", dec)
        with pyro.plate("data", x.shape[-2]):
            z = pyro.sample("z", dist.Normal(torch.zeros(D), 1.0).to_event(1))
            c = pyro.sample("c", ExpConcrete(0.67, logits=torch.zeros(K)))
            pyro.sample("x", dist.Normal(dec(torch.cat([z, c.exp()], -1)), 1.0).to_event(1), obs=x)

    def guide(x):
        pyro.module("enc", enc)
        h = enc(x)
        with pyro.plate("data", x.shape[-2]):
            pyro.sample("z", dist.Normal(h[..., :D], h[..., D:2 * D].exp()).to_event(1),
                        infer={"dataset_size": 1000})
            pyro.sample("c", ExpConcrete(0.67, logits=h[..., 2 * D:]), infer={"dataset_size": 1000})

    return model, guide, list(enc.parameters()) + list(dec.parameters())


def _old_marginals(groups, N, *args, **kwargs):
    return tuple(t.to(groups[0].value.dtype) for t in direct(groups, N))


def test_objective_unchanged_on_fixed_batch_and_seed(monkeypatch):
    """The whole HFVAE objective and its gradients: fast estimator vs the direct formula, same batch and seed."""
    torch.manual_seed(0)
    model, guide, params = _toy()
    x = torch.randn(32, 5)
    elbo = HFVAE_ELBO(1.0, 4.0, 3.0, 1.0)
    results = []
    for fn in (hfvae_elbo.log_batch_marginals, _old_marginals):
        monkeypatch.setattr(hfvae_elbo, "log_batch_marginals", fn)
        pyro.set_rng_seed(5)
        loss = elbo.differentiable_loss(model, guide, x)
        results.append((loss, torch.autograd.grad(loss, params)))
    (l1, g1), (l2, g2) = results
    assert torch.allclose(l1, l2, rtol=1e-5), (l1, l2)
    for a, b in zip(g1, g2):
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-3)


def test_vectorize_particles():
    torch.manual_seed(0)
    model, guide, params = _toy()
    x = torch.randn(16, 5)
    # one vectorised particle draws the same noise as the sequential particle: same loss
    losses = []
    for vec in (False, True):
        pyro.set_rng_seed(7)
        losses.append(HFVAE_ELBO(1, 4, 3, 1, vectorize_particles=vec, max_plate_nesting=1)
                      .differentiable_loss(model, guide, x))
    assert torch.allclose(losses[0], losses[1], rtol=1e-6)
    # unit weights: the ordinary ELBO, particle by particle, as Trace_ELBO computes it vectorised
    vals = []
    for elbo in (HFVAE_ELBO(1, 1, 1, 1, num_particles=4, vectorize_particles=True, max_plate_nesting=1),
                 Trace_ELBO(num_particles=4, vectorize_particles=True, max_plate_nesting=1)):
        pyro.set_rng_seed(8)
        vals.append(elbo.differentiable_loss(model, guide, x))
    assert torch.allclose(vals[0], vals[1], rtol=1e-5)
    # the decomposition averages over particles and observations
    pyro.set_rng_seed(9)
    dec = HFVAE_ELBO(1, 4, 3, 1, num_particles=4, vectorize_particles=True,
                     max_plate_nesting=1).decomposition(model, guide, x)
    assert dec["kl"] == pytest.approx(dec["mutual_information"] + dec["tc_between"] + dec["tc_within"]
                                      + dec["dimension_kl"], abs=1e-4)
    want = dec["log_likelihood"] - (dec["mutual_information"] + 4 * dec["tc_between"] + 3 * dec["tc_within"]
                                    + dec["dimension_kl"])
    assert dec["objective"] == pytest.approx(want, rel=1e-5, abs=1e-3)


def test_traces_without_validation_skip_latent_log_probs_and_keep_the_loss():
    """With validation off the plate's latent sites get no log density from the trace (the estimator forms its
    own), observed and global sites keep theirs, and the loss and gradients are those of the validated path."""
    torch.manual_seed(0)
    model, guide, params = _toy()
    pyro.clear_param_store()
    positive = torch.distributions.constraints.positive

    def model2(x):
        s = pyro.sample("s", dist.Normal(0.0, 1.0))
        pyro.sample("s_obs", dist.Normal(s, 1.0), obs=torch.tensor(0.3))
        model(x)

    def guide2(x):
        pyro.sample("s", dist.Normal(0.1, pyro.param("g_scale", torch.tensor(0.5), constraint=positive)))
        guide(x)

    x = torch.randn(16, 5)
    elbo = HFVAE_ELBO(1.0, 4.0, 3.0, 1.0)
    results = []
    for valid in (True, False):
        with pyro.validation_enabled(valid):
            pyro.set_rng_seed(3)
            model_trace, guide_trace = elbo._get_trace(model2, guide2, (x,), {})
            pyro.set_rng_seed(3)
            loss = elbo.differentiable_loss(model2, guide2, x)
            results.append((loss, torch.autograd.grad(loss, params + [pyro.param("g_scale").unconstrained()])))
        if not valid:
            assert "log_prob" not in model_trace.nodes["z"] and "log_prob" not in guide_trace.nodes["c"]
            assert "log_prob_sum" in model_trace.nodes["x"] and "log_prob_sum" in guide_trace.nodes["s"]
    (l1, g1), (l2, g2) = results
    assert torch.allclose(l1, l2, rtol=1e-6)
    for a, b in zip(g1, g2):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)
