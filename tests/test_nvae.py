"""N-VAE: the Dirichlet class prior, the bound of eq. 3, enumeration for unlabelled data, input errors, recipe."""
import json
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.distributions.kl import kl_divergence
from pyro.infer import Trace_ELBO, TraceEnum_ELBO, TraceMeanField_ELBO

from pyro_groupvae.distributions import DirichletClassPrior, class_bound_terms, dirichlet_kl, surrogate_class_term
from pyro_groupvae.models import MODELS, build_model
from pyro_groupvae.models.nvae import CVAE, NVAE
from pyro_groupvae.validation import InputError

torch.set_num_threads(1)
L = 10


def small(**kw):
    cfg = dict(class_dim=2, shared_dim=3, hidden=32, architecture="mlp")
    cfg.update(kw)
    return NVAE(**cfg)


def batch(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 28, 28, generator=g), torch.randint(0, L, (n,), generator=g)


def closed_form_dirichlet_kl(a, b):
    """KL(Dir(a) || Dir(b)) written out independently of the library."""
    a0, b0 = a.sum(-1, keepdim=True), b.sum(-1, keepdim=True)
    t = torch.lgamma(a0) - torch.lgamma(b0) - (torch.lgamma(a) - torch.lgamma(b)).sum(-1, keepdim=True)
    return (t + ((a - b) * (torch.digamma(a) - torch.digamma(a0))).sum(-1, keepdim=True)).squeeze(-1)


# ------------------------------------------------------------------------------------------ distribution
def test_dirichlet_kl_matches_torch_and_monte_carlo():
    torch.manual_seed(0)
    a, b = torch.rand(4, 5) * 3 + 0.2, torch.rand(4, 5) * 3 + 0.2
    ref = torch.distributions.kl_divergence(torch.distributions.Dirichlet(a), torch.distributions.Dirichlet(b))
    assert torch.allclose(dirichlet_kl(a, b), ref, atol=1e-5)
    assert torch.allclose(closed_form_dirichlet_kl(a, b), ref, atol=1e-5)
    # registered KL against the class prior == sampled E_q[log q - log p] using our log_prob
    q = dist.Dirichlet(torch.tensor([3.0, 1.0, 0.5, 2.0]))
    p = DirichletClassPrior.symmetric(0.7, 4).update(torch.tensor(2))
    s = q.sample((200000,))
    mc = (q.log_prob(s) - p.log_prob(s)).mean()
    assert abs(float(mc - kl_divergence(q, p))) < 0.02


def test_conjugacy_and_marginal():
    """p(pi) p(y|pi) == p(y) p(pi|y) pointwise, and p(y) = E_prior[pi_y] = 1/L."""
    prior = DirichletClassPrior.symmetric(0.3, 5)
    pi = dist.Dirichlet(torch.ones(5)).sample((7,))
    y = torch.tensor([0, 1, 2, 3, 4, 0, 2])
    lhs = prior.log_prob(pi) + dist.Categorical(probs=pi).log_prob(y)
    rhs = prior.class_marginal().log_prob(y) + prior.update(y).log_prob(pi)
    assert torch.allclose(lhs, rhs, atol=1e-4)
    assert torch.allclose(prior.class_marginal().probs, torch.full((5,), 0.2))
    assert torch.allclose(prior.update(y).concentration[0], torch.tensor([1.3, 0.3, 0.3, 0.3, 0.3]))
    ref = dist.Dirichlet(torch.tensor([1.3, 0.3, 0.3, 0.3, 0.3]))
    assert torch.allclose(prior.update(y).log_prob(pi)[0], ref.log_prob(pi[0]), atol=1e-5)


def test_expand_under_plate_keeps_class_and_kl():
    prior = DirichletClassPrior.symmetric(0.1, L).update(torch.arange(L).unsqueeze(-1))  # (L, 1) like enumeration
    e = prior.expand((L, 4))
    assert isinstance(e, DirichletClassPrior) and e.batch_shape == (L, 4) and e.event_shape == (L,)
    assert e.rsample().shape == (L, 4, L)
    q = dist.Dirichlet(torch.rand(4, L) + 0.1)
    assert kl_divergence(q, e).shape == (L, 4)

    def model():
        with pyro.plate("obs", 4):
            pyro.sample("pi", DirichletClassPrior.symmetric(0.1, L))

    site = poutine.trace(model).get_trace().nodes["pi"]
    assert isinstance(site["fn"], DirichletClassPrior) and site["fn"].batch_shape == (4,)


def test_surrogate_is_not_a_bound():
    """-log q(y|x) stays log L for q = Dir(t 1) while the KL grows with t: no constant k bounds it."""
    y = torch.tensor([3])
    kls = [float(class_bound_terms(torch.full((1, L), t), y, 0.1)) for t in (1.0, 100.0, 10000.0)]
    assert kls[0] > kls[1] > kls[2] + 5
    for t in (1.0, 100.0):
        assert abs(float(surrogate_class_term(torch.full((1, L), t), y)) + math.log(L)) < 1e-5


# ------------------------------------------------------------------------------------------ the bound (eq. 3)
def _guide_and_model_traces(model, x, y, seed):
    pyro.set_rng_seed(seed)
    g = poutine.trace(model.guide).get_trace(x, y)
    m = poutine.trace(poutine.replay(model.model, trace=g)).get_trace(x, y)
    return g, m


def test_pyro_elbo_equals_eq3_closed_form():
    model = small(beta_c=2.0, alpha_p=0.3)
    x, y = batch()
    pyro.set_rng_seed(1)
    loss = TraceMeanField_ELBO().loss(model.model, model.guide, x, y)
    g, m = _guide_and_model_traces(model, x, y, seed=1)
    recon = m.nodes["x"]["fn"].log_prob(x).sum().detach()
    with torch.no_grad():
        c_loc, c_lv, s_loc, s_lv, logits = model.encode_params(x)
    kl_n = lambda mu, lv: 0.5 * (lv.exp() + mu ** 2 - 1 - lv).sum()  # noqa: E731
    floor = model.min_concentration / model.alpha_q
    a = model.alpha_q * (floor + (1 - L * floor) * torch.softmax(logits, -1))
    assert model.alpha_q == pytest.approx(L * 0.3 + 1)
    b = 0.3 + torch.nn.functional.one_hot(y, L).float()
    eq3 = (recon - kl_n(s_loc, s_lv) - 2.0 * kl_n(c_loc, c_lv) - closed_form_dirichlet_kl(a, b).sum()
           + len(y) * math.log(1.0 / L))
    assert abs(-loss - float(eq3)) < 1e-5 * abs(float(eq3)) + 1e-2


def test_beta_c_scales_only_the_zc_kl():
    x, y = batch()
    m1 = small(beta_c=1.0)
    m3 = small(beta_c=3.0)
    m3.load_state_dict(m1.state_dict())
    pyro.set_rng_seed(0)
    l1 = TraceMeanField_ELBO().loss(m1.model, m1.guide, x, y)
    pyro.set_rng_seed(0)
    l3 = TraceMeanField_ELBO().loss(m3.model, m3.guide, x, y)
    with torch.no_grad():
        c_loc, c_lv = m1.encode_params(x)[:2]
    kl_c = float(0.5 * (c_lv.exp() + c_loc ** 2 - 1 - c_lv).sum())
    assert abs((l3 - l1) - 2 * kl_c) < 1e-2


def test_surrogate_class_site_is_log_q_y_given_x():
    model = small(class_objective="surrogate")
    x, y = batch()
    g, m = _guide_and_model_traces(model, x, y, seed=0)
    assert "pi" not in g.nodes and "pi" not in m.nodes
    with torch.no_grad():
        conc = model.q_pi_concentration(model.encode_params(x)[-1])
    assert torch.allclose(m.nodes["y"]["fn"].log_prob(y), surrogate_class_term(conc, y), atol=1e-5)


# ------------------------------------------------------------------------------------------ semi-supervised
def test_unlabelled_elbo_is_q_weighted_sum_of_labelled_elbos():
    """Brute force: with the same guide draw of (pi, z), TraceEnum_ELBO's bound for an unlabelled image (y
    enumerated in the guide, q(y|x) = alpha(x)) equals sum_k q(k|x) [ELBO(x, y=k) - log q(k|x)]."""
    model = small(semi_supervised=True)
    x, _ = batch(n=1)
    pyro.set_rng_seed(3)
    unl = TraceEnum_ELBO(max_plate_nesting=1).loss(model.model, model.guide, x, None, torch.tensor([False]))
    per_k = []
    for k in range(L):
        pyro.set_rng_seed(3)
        per_k.append(-Trace_ELBO().loss(model.model, model.guide, x, torch.tensor([k])))
    with torch.no_grad():
        q = model.class_probs(model.encode_params(x)[-1])[0].double()
    brute = float((q * (torch.tensor(per_k, dtype=torch.float64) - q.log())).sum())
    assert abs(-unl - brute) < 1e-3 * abs(brute)
    # the same with y=None (no mask): the guide enumerates the site "y" itself
    pyro.set_rng_seed(3)
    assert abs(TraceEnum_ELBO(max_plate_nesting=1).loss(model.model, model.guide, x) - unl) < 1e-3 * abs(brute)


def test_labelled_rows_in_semi_path_equal_supervised():
    model = small(semi_supervised=True, class_weight=1.0)
    x, y = batch(n=5)
    pyro.set_rng_seed(4)
    with pytest.warns(UserWarning, match="TraceEnum_ELBO"):  # Pyro: the enumerated guide site is sampled here
        semi = Trace_ELBO().loss(model.model, model.guide, x, y, torch.ones(5, dtype=torch.bool))
    pyro.set_rng_seed(4)
    sup = Trace_ELBO().loss(model.model, model.guide, x, y)
    assert abs(semi - sup) < 1e-2
    # the semi-supervised ELBO (TraceEnum_ELBO, y_unobserved enumerated in the guide as a point mass on labelled
    # rows) gives labelled rows exactly the supervised bound on the same draw
    pyro.set_rng_seed(4)
    enum = TraceEnum_ELBO(max_plate_nesting=1).loss(model.model, model.guide, x, y, torch.ones(5, dtype=torch.bool))
    assert abs(enum - sup) < 1e-2


def test_semi_path_shapes_particles_and_extreme_disagreement():
    model = small(semi_supervised=True, class_weight=3.0)
    x, y = batch(n=8)
    lab = torch.tensor([True, False] * 4)
    tr = poutine.trace(model.model).get_trace(x, y, lab)
    assert tr.nodes["x"]["fn"].batch_shape == (8,)
    assert torch.equal(tr.nodes["y"]["value"][lab], y[lab])  # the value downstream is the label where known
    elbo = TraceEnum_ELBO(num_particles=3, vectorize_particles=True, max_plate_nesting=1)
    loss = elbo.differentiable_loss(model.model, model.guide, x, y, lab)
    loss.backward()
    assert torch.isfinite(loss) and model.class_head.weight.grad.abs().sum() > 0
    # classifier and decoder in strong disagreement (a model-side log-space contraction underflows float32
    # here; the guide-side expectation does not): finite loss and gradients
    with torch.no_grad():
        model.class_head.bias.copy_(torch.tensor([60.0] + [-60.0] * (L - 1)))
        model.class_head.weight.zero_()
    model.zero_grad()
    y2 = torch.full((8,), 7)
    loss = TraceEnum_ELBO(max_plate_nesting=1).differentiable_loss(model.model, model.guide, x, y2, lab)
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_float64_dirichlet_keeps_tiny_components():
    from pyro_groupvae.distributions.dirichlet_prior import Float64Dirichlet

    q = Float64Dirichlet(torch.full((2000, 3), 0.02))
    s = q.rsample()
    assert s.dtype == torch.float64 and (s.min(-1).values < 1e-38).any()
    lp = q.log_prob(s)
    assert lp.dtype == torch.float32 and torch.isfinite(lp).all()
    ref = torch.distributions.Dirichlet(torch.full((3,), 0.02, dtype=torch.float64)).log_prob(s[:5])
    assert torch.allclose(lp[:5].double(), ref, rtol=1e-5)
    assert isinstance(q.expand((4, 2000)), Float64Dirichlet)


def test_vectorized_particles_and_decoder_input():
    model = small()
    x, y = batch(n=4)
    loss = Trace_ELBO(num_particles=3, vectorize_particles=True, max_plate_nesting=1).loss(
        model.model, model.guide, x, y)
    assert math.isfinite(loss)
    z_c, z_s = torch.randn(4, L, 2), torch.randn(4, 3)
    inp = model.decoder_input(y, z_c, z_s)
    assert inp.shape == (4, L * 3 + 3)
    # other class blocks are masked: changing them leaves the input unchanged; the true block does not
    z2 = z_c.clone()
    other = (y + 1) % L
    z2[torch.arange(4), other] += 5.0
    assert torch.equal(model.decoder_input(y, z2, z_s), inp)
    z2[torch.arange(4), y] += 5.0
    assert not torch.equal(model.decoder_input(y, z2, z_s), inp)
    # the bias column is the one-hot label; the ablation drops it
    blocks = inp[:, : L * 3].reshape(4, L, 3)
    assert torch.equal(blocks[..., 0], torch.nn.functional.one_hot(y, L).float())
    assert small(bias=False).decoder_input(y, z_c, z_s).shape == (4, L * 2 + 3)
    # enumerated labels broadcast
    assert model.decoder_input(torch.arange(L).view(L, 1), z_c, z_s).shape == (L, 4, L * 3 + 3)


# ------------------------------------------------------------------------------------------ errors & API
def test_clear_errors_for_bad_labels():
    model = small()
    x, y = batch(n=4)
    with pytest.raises(InputError, match=r"outside 0\.\.9"):
        model.model(x, torch.tensor([0, 1, 10, 2]))
    with pytest.raises(InputError, match=r"outside 0\.\.9"):
        model.model(x, torch.tensor([0, -1, 3, 2]))
    with pytest.raises(InputError, match="match the batch"):
        model.model(x, torch.tensor([0, 1, 2]))
    with pytest.raises(InputError, match="integer"):
        model.model(x, y.float())
    with pytest.raises(InputError, match="labelled"):
        model.model(x, y, torch.ones(3, dtype=torch.bool))
    with pytest.raises(InputError, match="match the batch"):
        CVAE(hidden=16, architecture="mlp").guide(x, torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="0..4"):
        DirichletClassPrior.symmetric(1.0, 5).update(torch.tensor([5]))
    with pytest.raises(ValueError, match="semi-supervised"):
        NVAE(class_objective="surrogate", semi_supervised=True)
    with pytest.raises(InputError, match="surrogate"):
        small(class_objective="surrogate").model(x, y, torch.ones(4, dtype=torch.bool))
    # placeholders (-1) are fine on unlabelled rows, not on labelled ones
    lab = torch.tensor([True, False, True, False])
    semi = small(semi_supervised=True)
    with pytest.warns(UserWarning, match="TraceEnum_ELBO"):
        assert math.isfinite(Trace_ELBO().loss(semi.model, semi.guide, x, torch.tensor([1, -1, 2, -1]), lab))
    with pytest.raises(InputError, match=r"outside 0\.\.9"):
        semi.model(x, torch.tensor([-1, -1, 2, -1]), lab)


def test_classify_encode_generate_and_registry():
    assert MODELS["nvae"] is NVAE and MODELS["cvae"] is CVAE
    model = build_model("nvae", **small().config)
    x, y = batch(n=5)
    p = model.classify(x)
    assert p.shape == (5, L) and torch.allclose(p.sum(-1), torch.ones(5))
    post = model.encode(x)
    z_c, z_s, q_pi = post["z_c"], post["z_s"], post["pi"]
    assert z_c.batch_shape == (5, L, 2) and z_s.batch_shape == (5, 3) and torch.allclose(q_pi.mean, p, atol=1e-6)
    assert model.generate(y, 1.4).shape == (5, 1, 28, 28)
    assert model.decode(y, torch.zeros(5, 2), torch.zeros(5, 3)).shape == (5, 1, 28, 28)
    cvae = CVAE(hidden=16, latent_dim=4, architecture="mlp")
    assert math.isfinite(TraceMeanField_ELBO().loss(cvae.model, cvae.guide, x, y))
    assert cvae.generate(y, 2.0).shape == (5, 1, 28, 28)


@pytest.mark.slow
def test_learns_to_classify_and_kl_detects_true_block():
    """Seeded: 12 epochs on 1,500 bundled digits -> q(y|x) test accuracy > 0.9 (0.94 when written) and the
    true-class block carries more KL than the other blocks."""
    from pyro_groupvae.data import RandomBatchSampler, load_dataset
    from pyro_groupvae.evaluation.nvae import classification_accuracy, kl_per_dimension
    from pyro_groupvae.infer.train import fit

    train = load_dataset("mnist", "train").subset(torch.arange(1500))
    test = load_dataset("mnist", "test").subset(torch.arange(500))
    model = NVAE(class_dim=2, shared_dim=5, hidden=200, architecture="mlp", class_weight=10.0)
    fit(model, train, RandomBatchSampler(len(train), 100, seed=0), 12, progress=False, seed=0)
    acc = classification_accuracy(model, test.x, test.y)
    kl = kl_per_dimension(model, test.x, test.y)
    assert acc > 0.9, acc
    assert kl["mean_z_cy"] > 2 * kl["mean_z_c_other"], kl


def test_cli_train_and_evaluate(tmp_path):
    from pyro_groupvae.cli import main

    nv, cv = tmp_path / "nvae", tmp_path / "cvae"
    common = ["--epochs", "1", "--architecture", "mlp", "--hidden", "32", "--no-progress"]
    assert main(["train", "nvae", "--out", str(nv), "--labelled-fraction", "0.1", "--shared-dim", "3"] + common) == 0
    assert main(["train", "cvae", "--out", str(cv), "--latent-dim", "5"] + common) == 0
    cfg = json.loads((nv / "config.json").read_text())
    assert cfg["model_config"]["semi_supervised"] and cfg["elbo"] == "TraceEnum_ELBO"
    assert main(["evaluate", str(nv), "--quick", "--baseline", str(cv)]) == 0
    metrics = json.loads((nv / "metrics.json").read_text())
    assert 0 <= metrics["test_accuracy"] <= 1
    assert "CVAE_p0.4_sigma2" in metrics["augmentation"]
    for name in ("kl_per_dimension", "kl_block_by_class", "traversal_class", "augmentation_p0.4"):
        assert (nv / "figures" / f"{name}.png").exists()
    assert main(["train", "nvae", "--out", str(tmp_path / "bad"), "--labelled-fraction", "0"] + common) == 2
