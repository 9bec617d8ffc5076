"""ML-VAE model/guide: plates and shapes, Pyro interoperability, baselines, training loop, errors."""
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, Predictive, Trace_ELBO, TraceMeanField_ELBO

from pyro_groupvae.data import GroupBatchSampler, ImageDataset
from pyro_groupvae.infer import CheckpointError, fit, load_checkpoint
from pyro_groupvae.models import MLVAE, VAE
from pyro_groupvae.validation import InputError

SHAPE = (1, 8, 8)


def tiny(**kw):
    kw.setdefault("image_shape", SHAPE)
    kw.setdefault("hidden", 32)
    kw.setdefault("content_dim", 3)
    kw.setdefault("style_dim", 2)
    return MLVAE(**kw)


def batch(n=10, binary=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, *SHAPE, generator=g)
    x = (x > 0.5).float() if binary else x
    gi = torch.tensor([0, 0, 0, 1, 2, 2, 3, 3, 3, 3])[:n]
    return x, gi, int(gi.max()) + 1


@pytest.mark.parametrize("posterior", ["product", "mixture"])
@pytest.mark.parametrize("content_sample", ["group", "observation"])
def test_trace_shapes(posterior, content_sample):
    m = tiny(group_posterior=posterior, content_sample=content_sample)
    x, gi, g = batch()
    tr = poutine.trace(m.guide).get_trace(x, gi, g)
    mt = poutine.trace(poutine.replay(m.model, trace=tr)).get_trace(x, gi, g)
    mt.compute_log_prob()
    n_content = g if content_sample == "group" else x.shape[0]
    assert mt.nodes["content"]["value"].shape == (n_content, 3)
    assert mt.nodes["style"]["value"].shape == (10, 2)
    assert mt.nodes["x"]["log_prob"].shape == (10,)
    assert [f.name for f in mt.nodes["content"]["cond_indep_stack"]] == (
        ["groups"] if content_sample == "group" else ["observations"])


@pytest.mark.parametrize("elbo", [TraceMeanField_ELBO(), Trace_ELBO(num_particles=3, vectorize_particles=True)])
@pytest.mark.parametrize("kw", [dict(), dict(group_posterior="mixture"), dict(content_sample="observation"),
                                dict(likelihood="bernoulli")])
def test_svi_steps_are_finite(elbo, kw):
    pyro.clear_param_store()
    m = tiny(**kw)
    x, gi, g = batch()
    svi = SVI(m.model, m.guide, pyro.optim.Adam({"lr": 1e-3}), elbo)
    assert all(math.isfinite(svi.step(x, gi, g)) for _ in range(3))


def test_elbo_equals_closed_form_terms():
    """TraceMeanField ELBO = E[log p(x|c,s)] - sum_i KL(q(s_i)||p) - sum_G KL(q(c_G)||p) (paper eq. 3)."""
    torch.manual_seed(0)
    m = tiny()
    x, gi, g = batch()
    c_loc, c_lv, s_loc, s_lv = m.local_posteriors(x)
    qc = m.content_posterior(c_loc, c_lv, gi, g)
    kl_c = torch.distributions.kl_divergence(qc, dist.Normal(torch.zeros(g, 3), 1.0).to_event(1)).sum()
    qs = dist.Normal(s_loc, torch.exp(0.5 * s_lv)).to_event(1)
    kl_s = torch.distributions.kl_divergence(qs, dist.Normal(torch.zeros(10, 2), 1.0).to_event(1)).sum()
    # the reconstruction term is random; fix the noise with a seed on both sides
    torch.manual_seed(1)
    loss = TraceMeanField_ELBO().loss(m.model, m.guide, x, gi, g)
    torch.manual_seed(1)
    tr = poutine.trace(m.guide).get_trace(x, gi, g)
    mt = poutine.trace(poutine.replay(m.model, trace=tr)).get_trace(x, gi, g)
    rec = mt.nodes["x"]["fn"].log_prob(x).sum()
    assert loss == pytest.approx((-(rec - kl_s - kl_c)).item(), rel=1e-5)


def test_observation_mode_has_the_same_expected_objective():
    """One content sample per observation: same analytic KL, same expected ELBO as one per group."""
    torch.manual_seed(0)
    m = tiny()
    x, gi, g = batch()
    e = Trace_ELBO(num_particles=4000, vectorize_particles=True)
    a = e.loss(m.model, m.guide, x, gi, g)
    m.content_sample = "observation"
    b = e.loss(m.model, m.guide, x, gi, g)
    assert a == pytest.approx(b, rel=0.01)
    m.content_sample = "group"


def test_predictive_and_prior_samples():
    m = tiny()
    x, gi, g = batch()
    pred = Predictive(m.model, guide=m.guide, num_samples=4, return_sites=["content", "style", "x"])
    out = pred(x, gi, g)
    assert out["content"].shape == (4, g, 3) and out["style"].shape == (4, 10, 2)
    prior = Predictive(poutine.uncondition(m.model), num_samples=2)(x, gi, g)
    assert prior["x"].shape == (2, 10, *SHAPE)


def test_encode_accumulates_evidence_and_decode_shape():
    m = tiny()
    x, gi, g = batch()
    c1, s1 = (m.encode(x)[k] for k in ("content", "style"))
    c2, s2 = (m.encode(x, gi * 10 + 7)[k] for k in ("content", "style"))  # arbitrary integer ids
    assert c1.mean.shape == (10, 3) and s1.mean.shape == (10, 2)
    assert torch.allclose(s1.mean, s2.mean)
    assert (c2.stddev[:3] < c1.stddev[:3]).all()  # three images in group 0: a tighter posterior
    assert torch.allclose(c2.mean[0], c2.mean[2])  # same group, same content
    assert torch.allclose(c1.mean[3], c2.mean[3], atol=1e-6)  # a single-image group: unchanged
    assert m.decode(c2.mean, s2.mean).shape == (10, *SHAPE)


def test_vae_baseline_accumulates_with_the_product():
    v = VAE(image_shape=SHAPE, latent_dim=4, hidden=16)
    x, gi, g = batch()
    acc, z = (v.encode(x, gi)[k] for k in ("content", "style"))
    assert acc.mean.shape == (10, 4) and torch.allclose(acc.mean[0], acc.mean[1])
    pyro.clear_param_store()
    svi = SVI(v.model, v.guide, pyro.optim.Adam({"lr": 1e-3}), TraceMeanField_ELBO())
    assert math.isfinite(svi.step(x, gi, g))
    assert v.decode(z.mean).shape == (10, *SHAPE)


def test_svi_baseline_subsampled_plates_and_test_time_inference():
    data = ImageDataset(batch()[0].repeat(3, 1, 1, 1), torch.arange(30) % 4)
    m = tiny(guide_type="svi", num_train_obs=30, num_train_groups=4)
    sampler = GroupBatchSampler(data.y, batch_groups=2, group_size=None, seed=0)
    kw = m.batch_inputs(data, next(iter(sampler)))
    assert set(kw) >= {"obs_index", "group_id"}
    tr = poutine.trace(m.guide).get_trace(**kw)
    assert tr.nodes["style"]["value"].shape == (len(kw["obs_index"]), 2)
    # subsampled plates scale the log-likelihood by N / batch size
    assert tr.nodes["observations"]["value"].shape == kw["obs_index"].shape
    before = m.decoder.net[0].weight.clone()
    hist = fit(m, data, sampler, epochs=3, progress=False, lr=0.05)
    assert hist[-1]["train_elbo"] > hist[0]["train_elbo"]
    assert not torch.equal(before, m.decoder.net[0].weight)
    dec = m.decoder.net[0].weight.clone()
    content, style, curve = m.infer_local(data.x[:6], torch.tensor([0, 0, 1, 1, 1, 2]), steps=60, lr=0.05)
    assert torch.equal(dec, m.decoder.net[0].weight)  # decoder frozen at test time
    assert curve[-1][2] > curve[0][2]  # the local ELBO improves
    assert content.mean.shape == (6, 3) and style.mean.shape == (6, 2)


def test_errors_are_clear():
    m = tiny()
    x, gi, g = batch()
    with pytest.raises(InputError, match="empty group"):
        m.model(x, gi, 6)
    with pytest.raises(InputError, match="NaN"):
        m.guide(torch.where(torch.arange(64).view(1, 8, 8) == 3, float("nan"), x), gi, g)
    with pytest.raises(InputError, match="shape"):
        m.encode(torch.rand(4, 1, 28, 28))
    with pytest.raises(InputError, match="shape"):
        m.model(x, gi[:5], g)
    with pytest.raises(InputError, match="group_ids must have shape"):
        m.encode(x, torch.zeros(3, dtype=torch.long))
    with pytest.raises(InputError, match="not binary"):
        tiny(likelihood="bernoulli").model(torch.rand(10, *SHAPE), gi, g)
    with pytest.raises(InputError, match="SVI guide needs"):
        tiny(guide_type="svi", num_train_obs=10, num_train_groups=4).guide(x, gi, g)
    with pytest.raises(ValueError, match="group_posterior"):
        tiny(group_posterior="sum")


def _data(n=40):
    g = torch.Generator().manual_seed(0)
    return ImageDataset((torch.rand(n, *SHAPE, generator=g) > 0.5).float(), torch.arange(n) % 4)


def test_resume_continues_exactly(tmp_path):
    data = _data()
    torch.manual_seed(0)
    straight = tiny(likelihood="bernoulli")
    fit(straight, data, GroupBatchSampler(data.y, 2, group_size=5, seed=3), epochs=4, seed=1,
        out_dir=tmp_path / "a", progress=False)
    torch.manual_seed(0)
    first = tiny(likelihood="bernoulli")
    fit(first, data, GroupBatchSampler(data.y, 2, group_size=5, seed=3), epochs=2, seed=1,
        out_dir=tmp_path / "b", progress=False)
    resumed = tiny(likelihood="bernoulli")
    hist = fit(resumed, data, GroupBatchSampler(data.y, 2, group_size=5, seed=3), epochs=4, seed=1,
               out_dir=tmp_path / "b", resume=True, progress=False)
    assert [h["epoch"] for h in hist] == [1, 2, 3, 4]
    for (n, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), n
    assert (tmp_path / "b" / "history.csv").read_text().count("\n") == 5


def test_corrupt_checkpoint(tmp_path):
    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(tmp_path / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")
    torch.save({"foo": 1}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a pyro_groupvae checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


def test_two_models_in_one_process_train_their_own_parameters():
    data = _data()
    a = tiny(likelihood="bernoulli")
    fit(a, data, GroupBatchSampler(data.y, 2, group_size=5), epochs=1, progress=False)
    b = tiny(likelihood="bernoulli")
    before = b.decoder.net[0].weight.clone()
    x, gi, g = batch()
    svi = SVI(b.model, b.guide, pyro.optim.Adam({"lr": 1e-2}), TraceMeanField_ELBO())
    svi.step(x, gi, g)
    assert not torch.equal(before, b.decoder.net[0].weight)


def test_conv_architecture_on_a_folder_of_groups(tmp_path):
    """The supplement's 64x64 face networks on a folder-of-groups dataset (generated PNGs)."""
    from PIL import Image

    from pyro_groupvae.data import load_dataset

    rng = torch.Generator().manual_seed(0)
    for person in ("alice", "bob"):
        (tmp_path / person).mkdir()
        for i in range(3):
            arr = (torch.rand(40, 50, 3, generator=rng) * 255).byte().numpy()
            Image.fromarray(arr).save(tmp_path / person / f"{i}.png")
    data = load_dataset("folder", root=tmp_path, size=64, lazy=False)  # in memory: the test calls SVI on data.x
    assert data.x.shape == (6, 3, 64, 64)
    m = MLVAE(image_shape=(3, 64, 64), architecture="conv", content_dim=4, style_dim=4)
    pyro.clear_param_store()
    svi = SVI(m.model, m.guide, pyro.optim.Adam({"lr": 1e-4}), TraceMeanField_ELBO())
    assert math.isfinite(svi.step(data.x, data.y, 2))
    content, style = (m.encode(data.x, data.y)[k] for k in ("content", "style"))
    assert content.mean.shape == (6, 4) and m.decode(content.mean, style.mean).shape == (6, 3, 64, 64)


def test_style_beta_scales_the_style_kl_in_model_and_guide():
    torch.manual_seed(0)
    m = tiny()
    x, gi, g = batch()
    _, _, s_loc, s_lv = m.local_posteriors(x)
    kl_s = torch.distributions.kl_divergence(dist.Normal(s_loc, torch.exp(0.5 * s_lv)).to_event(1),
                                             dist.Normal(torch.zeros(10, 2), 1.0).to_event(1)).sum().item()
    torch.manual_seed(1)
    base = TraceMeanField_ELBO().loss(m.model, m.guide, x, gi, g)
    m.style_beta = 4.0
    torch.manual_seed(1)
    weighted = TraceMeanField_ELBO().loss(m.model, m.guide, x, gi, g)
    assert weighted - base == pytest.approx(3.0 * kl_s, rel=1e-4)


@pytest.mark.slow
def test_learns_to_disentangle_digits_on_real_mnist():
    """Seeded, small: 20 epochs on the bundled MNIST (groups of 16 images of one digit, style KL weight 10).
    Measured when written: content 0.76 at k=1 and 0.99 at k=10, style 0.14 (chance 0.10) with the probe trained on
    style samples; 0.48 with the probe trained and tested on style means (issue 13: the style still carries class
    information at this budget; see docs/results.md)."""
    from pyro_groupvae.data import load_dataset
    from pyro_groupvae.evaluation.classification import accumulation_classification

    train, test = load_dataset("mnist", "train"), load_dataset("mnist", "test")
    torch.manual_seed(0)
    m = MLVAE(min_scale=0.2, style_beta=10.0)
    fit(m, train, GroupBatchSampler(train.y, 16, group_size=16, seed=0), epochs=20, seed=0, progress=False)
    r = accumulation_classification(m, test.x, test.y, ks=[1, 10], K=30, trials=2, classifier_steps=300)
    acc_1, acc_10 = r["content_accuracy"]
    assert acc_10 >= 0.95 and acc_1 >= 0.6
    assert r["style_sample_probe_accuracy"] <= 0.3
    assert r["style_accuracy"] <= 0.6 and r["style_linear_accuracy"] <= 0.6
    assert acc_1 > r["style_accuracy"] + 0.15
