"""HFVAE: the batch estimator of q(z) (brute force, unbiasedness), the decomposed objective (recovers
Trace_ELBO at alpha=beta=gamma=1), chunking/memory, the model's architectures, the recipe and the zero-shot rule."""
import itertools
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO

from pyro_groupvae.distributions import ExpConcrete
from pyro_groupvae.infer import HFVAE_ELBO, log_batch_marginals, preset_weights
from pyro_groupvae.infer.hfvae_elbo import LatentGroup, stratified_log_weights
from pyro_groupvae.models.hfvae import HFVAE
from pyro_groupvae.validation import InputError

torch.set_num_threads(1)


def _groups(B=5, D=3, V=2, K=3, seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    loc = torch.randn(B, D, generator=g).requires_grad_(requires_grad)
    scale = (0.5 + torch.rand(B, D, generator=g)).requires_grad_(requires_grad)
    logits = torch.randn(B, V, K, generator=g).requires_grad_(requires_grad)
    qn, qc = dist.Normal(loc, scale), ExpConcrete(0.67, logits=logits)
    zn = qn.rsample()
    zc = qc.rsample()
    pn, pc = dist.Normal(torch.zeros(B, D), 1.0), ExpConcrete(0.67, logits=torch.zeros(B, V, K))
    return [LatentGroup("z_n", qn, pn, qn.to_event(1), pn.to_event(1), zn, D),
            LatentGroup("z_c", qc, pc, qc.to_event(1), pc.to_event(1), zc, V)], (loc, scale, logits)


def _brute_force(groups, N):
    """eq. 13 written out with Python loops over b and b'."""
    B = groups[0].value.shape[0]
    w_self, w_other = 1.0 / N, (N - 1) / (N * (B - 1))
    joint, per_group, per_sub = [], [], []
    for b in range(B):
        def dens(g, bp):  # per sub-variable log densities of z^(b) under encoder b'
            return g.q.log_prob(g.value[b].unsqueeze(0).expand_as(g.value))[bp].reshape(-1)

        subs, grps, js = [], [], []
        for bp in range(B):
            ds = [dens(g, bp) for g in groups]
            w = w_self if bp == b else w_other
            subs.append(torch.cat(ds).exp() * w)
            grps.append(torch.stack([d.sum() for d in ds]).exp() * w)
            js.append(sum(d.sum() for d in ds).exp() * w)
        per_sub.append(torch.stack(subs).sum(0).log())
        per_group.append(torch.stack(grps).sum(0).log())
        joint.append(torch.stack(js).sum().log())
    return torch.stack(joint), torch.stack(per_group), torch.stack(per_sub)


@pytest.mark.parametrize("chunk_rows", [None, 2])
def test_estimator_matches_brute_force(chunk_rows):
    torch.set_default_dtype(torch.float64)
    try:
        groups, _ = _groups()
        for N in (5, 1000):
            got = log_batch_marginals(groups, N, chunk_rows=chunk_rows)
            want = _brute_force(groups, N)
            for a, b in zip(got, want):
                assert torch.allclose(a, b, atol=1e-9), (a, b)
    finally:
        torch.set_default_dtype(torch.float32)


def test_estimator_is_unbiased_over_all_batches():
    """E[q_hat(z)] over the choice of the other B-1 batch members equals q(z) = 1/N sum_n q(z|x^n) (eq. 18)."""
    torch.set_default_dtype(torch.float64)
    try:
        N, B = 6, 3
        g = torch.Generator().manual_seed(1)
        locs, scales = torch.randn(N, 2, generator=g), 0.5 + torch.rand(N, 2, generator=g)
        z = torch.randn(2, generator=g)  # a fixed latent value attached to data point 0
        exact = torch.logsumexp(dist.Normal(locs, scales).log_prob(z).sum(-1), 0) - math.log(N)
        estimates = []
        for others in itertools.combinations(range(1, N), B - 1):
            idx = torch.tensor((0,) + others)
            q = dist.Normal(locs[idx], scales[idx])
            values = torch.cat([z[None], q.sample()[1:]])  # only row 0's value matters for row 0
            grp = [LatentGroup("z", q, q, q.to_event(1), q.to_event(1), values, 2)]
            estimates.append(log_batch_marginals(grp, N)[0][0].exp())
        assert torch.allclose(torch.stack(estimates).mean().log(), exact, atol=1e-10)
        # and the biased plain batch mean (no stratification) would not be
        assert not torch.allclose(torch.stack(estimates).mean().log(), exact + 0.05, atol=1e-3)
    finally:
        torch.set_default_dtype(torch.float32)


def test_stratified_weights_sum_to_one():
    for B, N in [(1, 1), (4, 4), (8, 100)]:
        w = stratified_log_weights(torch.arange(B), B, N, torch.float64)
        assert torch.allclose(w.exp().sum(1), torch.ones(B, dtype=torch.float64))
    # B = 1: eq. 13 is undefined; only the deterministic stratum 1/N q(z|x) is kept
    assert stratified_log_weights(torch.arange(1), 1, 10, torch.float64).item() == pytest.approx(-math.log(10))
    with pytest.raises(InputError, match="smaller than the batch"):
        stratified_log_weights(torch.arange(4), 4, 3)


def test_chunked_gradients_match_and_memory_is_not_quadratic():
    groups, params = _groups(B=256, D=4, V=1, K=3, requires_grad=True)
    E = 5
    ref = sum(t.sum() for t in log_batch_marginals(groups, 1000, chunk_rows=256, use_checkpoint=False))
    g_ref = torch.autograd.grad(ref, params, retain_graph=True)
    saved = []

    def pack(t):
        saved.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = sum(t.sum() for t in log_batch_marginals(groups, 1000, chunk_rows=16))
    g = torch.autograd.grad(out, params)
    assert torch.allclose(out, ref, atol=1e-3)
    for a, b in zip(g, g_ref):
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)
    # with checkpointing nothing of size chunk x B x E stays saved for the backward pass
    assert sum(saved) < 256 * 256 * E / 8, sum(saved)


def _replayed(model, x, N):
    pyro.set_rng_seed(3)
    tr = poutine.trace(model.guide).get_trace(x, dataset_size=N)
    return poutine.replay(model.guide, trace=tr)


@pytest.mark.parametrize("structured", [True, False])
def test_unit_weights_recover_trace_elbo(structured):
    model = HFVAE(image_shape=(1, 12, 12), discrete_vars=int(structured), discrete_classes=4, width=0.2)
    x = (torch.rand(16, 1, 12, 12) > 0.5).float()
    guide = _replayed(model, x, 100)
    ours = HFVAE_ELBO(1, 1, 1, 1).differentiable_loss(model.model, guide, x, dataset_size=100)
    ref = Trace_ELBO().differentiable_loss(model.model, guide, x, dataset_size=100)
    assert torch.allclose(ours, ref, rtol=1e-5)
    g1 = torch.autograd.grad(ours, list(model.parameters()), allow_unused=True, retain_graph=True)
    g2 = torch.autograd.grad(ref, list(model.parameters()), allow_unused=True)
    for a, b in zip(g1, g2):
        if a is not None:
            assert torch.allclose(a, b, atol=1e-3, rtol=1e-3)
    # other weights change the objective by exactly the weighted terms of the decomposition
    w = (2.0, 4.0, 3.0, 1.5)
    dec = HFVAE_ELBO(*w).decomposition(model.model, guide, x, dataset_size=100)
    assert dec["kl"] == pytest.approx(dec["mutual_information"] + dec["tc_between"] + dec["tc_within"]
                                      + dec["dimension_kl"], abs=1e-3)
    want = dec["log_likelihood"] - (w[0] * dec["mutual_information"] + w[1] * dec["tc_between"]
                                    + w[2] * dec["tc_within"] + w[3] * dec["dimension_kl"])
    assert dec["objective"] == pytest.approx(want, rel=1e-5, abs=1e-3)
    assert dec["elbo"] == pytest.approx(-float(ref.detach()) / 16, rel=1e-5)
    if not structured:  # a single group has no between-group total correlation
        assert dec["tc_between"] == 0.0


def _toy(correlated):
    """A plain Pyro model/guide (not an HFVAE) with one 2-d Normal group: the TC within it must be detected."""

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z.sum(-1), 1.0), obs=x)

    def guide(x):
        u = x / 2
        v = x / 2 if correlated else torch.randn(x.shape[0], generator=torch.Generator().manual_seed(0))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(torch.stack([u, v], -1), 0.05).to_event(1), infer={"dataset_size": 4096})

    return model, guide


def test_total_correlation_detects_dependent_dimensions():
    x = torch.randn(512, generator=torch.Generator().manual_seed(2))
    tc = {}
    for corr in (True, False):
        model, guide = _toy(corr)
        pyro.set_rng_seed(0)
        tc[corr] = HFVAE_ELBO(1, 1, 5, 1).decomposition(model, guide, x)["tc_within"]
    assert tc[True] > 1.0 > abs(tc[False]) + 0.5, tc


def test_errors_are_clear():
    model, guide = _toy(True)
    x = torch.randn(8)
    with pytest.raises(InputError, match="smaller than the batch"):
        HFVAE_ELBO(dataset_size=4).loss(model, guide, x)

    def guide_discrete(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Categorical(logits=torch.zeros(x.shape[0], 3)))

    def model_discrete(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Categorical(logits=torch.zeros(3)))

    with pytest.raises(NotImplementedError, match="reparameterised"):
        HFVAE_ELBO().loss(model_discrete, guide_discrete, x)
    with pytest.raises(ValueError, match="beta"):
        HFVAE_ELBO(beta=float("nan"))
    m = HFVAE(image_shape=(1, 12, 12), width=0.2)
    with pytest.raises(InputError, match="shape"):
        m.model(torch.zeros(2, 1, 10, 10))
    with pytest.raises(InputError, match="binar"):
        m.guide(torch.full((2, 1, 12, 12), 0.3))
    with pytest.raises(ValueError, match="unknown preset"):
        preset_weights("gan")


def test_presets_are_table1_settings():
    assert preset_weights("vae") == (1, 1, 1, 1)
    assert preset_weights("beta-vae", 4) == (4, 4, 4, 4)
    assert preset_weights("beta-tcvae", 4) == (1, 4, 4, 1)
    assert preset_weights("beta-svae", 4) == (4, 4, 4, 4)
    assert preset_weights("hfvae", 4, 3) == (1, 4, 3, 1)
    assert HFVAE.from_preset("beta-tcvae", (1, 12, 12), width=0.2).V == 0
    m = HFVAE.from_preset("hfvae", (1, 12, 12), discrete_classes=3, width=0.2)
    assert m.V == 1 and m.weights == (1, 4, 3, 1)
    e = m.default_elbo()
    assert (e.alpha, e.beta, e.gamma, e.delta) == (1, 4, 3, 1)


@pytest.mark.parametrize("arch,shape,V,K,D,lik", [("mlp", (1, 32, 32), 1, 10, 10, "bernoulli"),
                                                  ("dsprites", (1, 64, 64), 1, 3, 10, "bernoulli"),
                                                  ("conv", (3, 64, 64), 2, 2, 20, "normal")])
def test_architectures(arch, shape, V, K, D, lik):
    m = HFVAE(image_shape=shape, architecture="auto", discrete_vars=V, discrete_classes=K, continuous_dim=D,
              likelihood=lik, width=0.25 if arch != "mlp" else 1.0)
    assert m.config["architecture"] == arch
    x = torch.rand(4, *shape)
    if lik == "bernoulli":
        x = (x > 0.5).float()
    tr = poutine.trace(m.guide).get_trace(x, dataset_size=10)
    assert tr.nodes["z_n"]["value"].shape == (4, D)
    assert tr.nodes["z_c"]["value"].shape == (4, V, K)
    mt = poutine.trace(poutine.replay(m.model, trace=tr)).get_trace(x)
    assert mt.nodes["x"]["fn"].event_shape == shape
    assert m.represent(x).shape == (4, D + V * K)
    assert m.sample(3).shape == (3,) + shape
    loss = m.default_elbo().differentiable_loss(m.model, m.guide, x, dataset_size=10)
    assert torch.isfinite(loss)


def test_appendix_b_layer_sizes():
    m = HFVAE(image_shape=(1, 64, 64), discrete_classes=3)
    lin = [l for l in m.encoder.shared if isinstance(l, torch.nn.Linear)]
    assert [(l.in_features, l.out_features) for l in lin] == [(4096, 1200), (1200, 1200)]
    assert m.encoder.branch_n[0].out_features == 400 and m.encoder.head_c.out_features == 3
    dec = [l for l in m.decoder_net if isinstance(l, torch.nn.Linear)]
    assert [(l.in_features, l.out_features) for l in dec] == [(13, 400), (400, 1200), (1200, 1200), (1200, 4096)]
    m = HFVAE(image_shape=(1, 28, 28), discrete_classes=10)
    dec = [l for l in m.decoder_net if isinstance(l, torch.nn.Linear)]
    assert [(l.in_features, l.out_features) for l in dec] == [(20, 200), (200, 400), (400, 784)]


def test_svi_training_improves_objective():
    pyro.set_rng_seed(0)
    m = HFVAE(image_shape=(1, 12, 12), discrete_classes=3, width=0.5)
    g = torch.Generator().manual_seed(0)
    protos = (torch.rand(4, 1, 12, 12, generator=g) > 0.5).float()  # 4 prototypes, 5% of pixels flipped
    flip = (torch.rand(64, 1, 12, 12, generator=g) < 0.05).float()
    x = (protos[torch.arange(64) % 4] + flip) % 2
    elbo = m.default_elbo()
    svi = SVI(m.model, m.guide, pyro.optim.Adam({"lr": 3e-3}), elbo)
    losses = [svi.step(x, dataset_size=640) for _ in range(60)]
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-10:]) < 0.7 * sum(losses[:10])


def test_ink_features_and_prune_rule():
    from pyro_groupvae.data import ImageDataset
    from pyro_groupvae.evaluation.hfvae import ink_features, prune_thresholds, removed_mask

    x = torch.zeros(3, 1, 10, 10)
    x[0, 0, 2:5, 1:4] = 1  # area 9, width 3
    x[1, 0, 0:10, 4] = 1   # area 10, width 1
    x[2, 0, 1, 0] = x[2, 0, 1, 9] = 1  # area 2, width 10
    area, width = ink_features(x)
    assert area.tolist() == [9, 10, 2] and width.tolist() == [3, 1, 10]
    # 10 sevens with areas 1..10 and 10 zeros with widths 1..10
    imgs = torch.zeros(20, 1, 10, 10)
    for i in range(10):
        imgs[i, 0].view(-1)[: i + 1] = 1
        imgs[10 + i, 0, 0, : i + 1] = 1
    y = torch.tensor([7] * 10 + [0] * 10)
    data = ImageDataset(imgs, y, "toy", {})
    th = prune_thresholds(data, q=0.2)
    mask = removed_mask(data, th)
    assert mask[:10].tolist() == [False] * 8 + [True] * 2  # the two thickest 7s
    assert mask[10:].tolist() == [True] * 2 + [False] * 8  # the two narrowest 0s


def test_cli_train_and_evaluate(tmp_path):
    from pyro_groupvae.cli import main

    out = tmp_path / "run"
    assert main(["train", "hfvae", "--dataset", "mnist32", "--epochs", "1", "--batch-size", "500", "--width",
                 "0.25", "--out", str(out), "--no-progress"]) == 0
    assert main(["evaluate", str(out), "--quick"]) == 0
    report = (out / "report.md").read_text()
    assert "traversal" in report and (out / "figures" / "traversal_zero.png").exists()
    import json

    metrics = json.loads((out / "metrics.json").read_text())
    d = metrics["decomposition"]
    assert d["dataset_size"] == 1000 and d["batch_size"] == 500  # test split of the bundled MNIST; quick batch
    assert len(metrics["mutual_information_per_dimension"]) == 10
