"""Pyro conformance: every registered model and variant is a correct Pyro program under the workflows a Pyro user
runs (issue 8): SVI with each applicable ELBO, trace shapes, Predictive (prior with ``x=None``, posterior),
``condition``/``do`` on every latent site, ``infer_discrete`` against brute force, the param store (save/load,
``state_dict``, two live instances), JIT ELBOs without recompilation, and AutoNormal (on minibatches for the
grouped model).

A new model gets every test by one line in ``TINY`` of tests/tiny_models.py (its tiny configuration); more variants go in
:data:`EXTRA`. Tiny networks (hidden=16) on 32 real bundled MNIST digits (8 groups of 4 same-label images).
"""
import copy
import itertools
import math
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import (SVI, JitTrace_ELBO, JitTraceEnum_ELBO, Predictive, Trace_ELBO, TraceEnum_ELBO,
                        TraceMeanField_ELBO, config_enumerate, infer_discrete)
from pyro.infer.autoguide import AutoNormal
from pyro.ops.jit import CompiledFunction
from pyro.optim import Adam
from pyro.poutine.subsample_messenger import _Subsample
from pyro.util import check_site_shape

from pyro_groupvae.data import load_dataset
from pyro_groupvae.data.samplers import GroupBatch
from pyro_groupvae.infer.jit import JitTraceMeanField_ELBO, by_position, split_inputs
from pyro_groupvae.models import MODELS, build_model

torch.set_num_threads(1)

from tiny_models import TINY  # noqa: E402  (one line per registered model, shared)

N = 32  # rows of the test batch: labels 0..7, 4 images each (8 groups of 4)
#: further variants: (id, registered name, options on top of TINY)
EXTRA = [
    ("mlvae-mixture", "mlvae", dict(group_posterior="mixture")),
    ("mlvae-observation-content", "mlvae", dict(content_sample="observation")),
    ("mlvae-svi-guide", "mlvae", dict(guide_type="svi", num_train_obs=N, num_train_groups=10)),
    ("nvae-semi-supervised", "nvae", dict(semi_supervised=True)),
    ("nvae-surrogate", "nvae", dict(class_objective="surrogate")),
    ("ugvae-marginal", "ugvae", dict(objective="marginal")),
    ("hfvae-beta-tcvae", "hfvae", dict(discrete_vars=0, preset="beta-tcvae", alpha=1.0, beta=4.0, gamma=4.0)),
]
#: inputs that may be left out, which makes their sites latent (N-VAE: the label)
LATENT_INPUTS = {"nvae": ("y", "labelled")}
#: latent sites that nothing in the model depends on (N-VAE's pi only carries the Dirichlet class term)
LEAF_SITES = {"nvae": {"pi"}}
MAX_PLATE_NESTING = 2


def _all_models():
    """The registry after importing every model module (importing the package registers them all)."""
    import pyro_groupvae.models  # noqa: F401

    return dict(MODELS)


VARIANTS = [(name, name, {}) for name in sorted(_all_models())] + EXTRA
IDS = [v[0] for v in VARIANTS]


def test_every_registered_model_has_a_tiny_config():
    assert set(_all_models()) <= set(TINY), f"add a TINY line for {set(_all_models()) - set(TINY)}"


# ------------------------------------------------------------------------------------------ fixtures and helpers
@pytest.fixture(scope="module")
def mnist():
    train = load_dataset("mnist", "train")
    rows = torch.cat([torch.nonzero(train.y == k).flatten()[:4] for k in range(8)])
    data = train.subset(rows)
    semi = train.subset(rows)
    semi.extras = dict(semi.extras or {}, labelled=torch.arange(N) % 2 == 0)
    return {"normal": data, "bernoulli": data.binarized(), "semi": semi}


def make(variant, seed=0):
    _, name, extra = variant
    pyro.set_rng_seed(seed)
    return build_model(name, **{**TINY.get(name, {}), **extra})


def data_for(model, mnist):
    if model.config.get("likelihood") == "bernoulli":
        return mnist["bernoulli"]
    return mnist["semi"] if model.config.get("semi_supervised") else mnist["normal"]


def batch(rows=None, group_size=4):
    rows = torch.arange(N) if rows is None else torch.as_tensor(rows)
    gi = torch.arange(len(rows)) // group_size
    return GroupBatch(rows, gi, int(gi.max()) + 1)


def inputs(model, mnist, rows=None, group_size=4):
    return model.batch_inputs(data_for(model, mnist), batch(rows, group_size), torch.device("cpu"))


def latent_inputs(model, kw):
    """``kw`` without the inputs that can be left latent (e.g. N-VAE's labels)."""
    return {k: v for k, v in kw.items() if k not in LATENT_INPUTS.get(model.name, ())}


def latent_sites(tr):
    return [n for n, s in tr.nodes.items() if s["type"] == "sample" and not s["is_observed"]
            and not s["infer"].get("_deterministic") and not isinstance(s["fn"], _Subsample)]


def discrete_sites(tr):
    return [n for n in latent_sites(tr) if tr.nodes[n]["fn"].has_enumerate_support]


def prior_trace(model, kw, seed):
    pyro.set_rng_seed(seed)
    with torch.no_grad():
        return poutine.trace(model.model).get_trace(**kw)


def has_discrete(model, kw):
    return bool(discrete_sites(prior_trace(model, kw, 0)))


def elbos_for(model, kw):
    """Each applicable ELBO: enumeration-based ones for models with discrete latents, all three otherwise, and
    the model's default."""
    out = {"default": model.default_elbo()}
    out["TraceEnum_ELBO"] = TraceEnum_ELBO(max_plate_nesting=MAX_PLATE_NESTING)
    if not has_discrete(model, kw):
        out["Trace_ELBO"] = Trace_ELBO()
        out["TraceMeanField_ELBO"] = TraceMeanField_ELBO()
    return out


def train(model_fn, guide_fn, elbo, batches, steps, lr=5e-3):
    svi = SVI(model_fn, guide_fn, Adam({"lr": lr}), loss=elbo)
    losses = []
    for i in range(steps):
        args, kwargs = batches[i % len(batches)]
        losses.append(svi.step(*args, **kwargs))
    return losses


def x_log_prob(model, kw, values):
    """log p(x | latents = values) of the model (a deterministic function of the latents and parameters)."""
    with torch.no_grad():
        tr = poutine.trace(poutine.condition(model.model, data=values)).get_trace(**kw)
    return tr.nodes["x"]["fn"].log_prob(tr.nodes["x"]["value"])


# ------------------------------------------------------------------------------------------ SVI and shapes
@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_svi_each_elbo_trains_on_real_digits(variant, mnist):
    model = make(variant)
    kw = inputs(model, mnist)
    for name, elbo in elbos_for(model, kw).items():
        pyro.clear_param_store()
        pyro.set_rng_seed(1)
        losses = train(model.model, model.guide, elbo, [((), kw)], 20, lr=1e-2)
        assert all(math.isfinite(v) for v in losses), (name, losses)
        first, last = sum(losses[:4]) / 4, sum(losses[-4:]) / 4
        assert last < first, (name, first, last)


@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_trace_site_shapes(variant, mnist):
    model = make(variant)
    kw = inputs(model, mnist)
    for fn in (model.model, model.guide):
        tr = poutine.trace(fn).get_trace(**kw)
        tr.compute_log_prob()
        for site in tr.nodes.values():
            if site["type"] == "sample":
                check_site_shape(site, MAX_PLATE_NESTING)


# ------------------------------------------------------------------------------------------ Predictive
@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_predictive_prior_without_data_and_posterior(variant, mnist):
    model = make(variant)
    kw = inputs(model, mnist)
    prior_kw = dict(kw, x=None)
    import inspect

    if "num_obs" in inspect.signature(model.model).parameters:
        prior_kw["num_obs"] = N
    with torch.no_grad():
        prior = Predictive(model.model, num_samples=2)(**prior_kw)
    assert prior["x"].shape[0] == 2 and prior["x"].numel() == 2 * N * 28 * 28
    assert torch.isfinite(prior["x"]).all()
    # posterior: latents drawn from the guide, one leading sample dimension each
    with torch.no_grad():
        post = Predictive(model.model, guide=model.guide, num_samples=2)(**kw)
    names = latent_sites(poutine.trace(model.guide).get_trace(**kw))
    assert names and all(post[n].shape[0] == 2 and torch.isfinite(post[n].double()).all() for n in names)


# ------------------------------------------------------------------------------------------ condition / do
@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_condition_and_do_on_every_latent_site(variant, mnist):
    """Setting a latent site (condition, do) changes the sites that depend on it, and the model uses the set
    value: do(s=v) gives the same downstream distribution as condition(s=v)."""
    model = make(variant)
    kw = latent_inputs(model, inputs(model, mnist))
    tr1, tr2 = prior_trace(model, kw, 1), prior_trace(model, kw, 2)
    names = latent_sites(tr1)
    base = {n: tr1.nodes[n]["value"] for n in names}
    with torch.no_grad():
        ref = poutine.trace(poutine.condition(model.model, data=base)).get_trace(**kw)
    for s in names:
        new = tr2.nodes[s]["value"]
        assert not torch.equal(new, base[s]), s
        data = dict(base, **{s: new})
        with torch.no_grad():
            cond = poutine.trace(poutine.condition(model.model, data=data)).get_trace(**kw)
        assert torch.equal(cond.nodes[s]["value"], new)
        children = {t for t in ref.nodes if t != s and ref.nodes[t]["type"] == "sample"
                    and not torch.allclose(ref.nodes[t]["fn"].log_prob(ref.nodes[t]["value"]),
                                           cond.nodes[t]["fn"].log_prob(ref.nodes[t]["value"]))}
        if s in LEAF_SITES.get(model.name, ()):
            assert not children, (s, children)
            continue
        assert children, f"nothing depends on {s}"
        others = {k: v for k, v in base.items() if k != s}
        with torch.no_grad():
            did = poutine.trace(poutine.condition(poutine.do(model.model, data={s: new}), data=others)).get_trace(
                **kw)
        for t in children - {s}:
            if t in did.nodes and did.nodes[t]["type"] == "sample":
                v = ref.nodes[t]["value"]
                assert torch.allclose(did.nodes[t]["fn"].log_prob(v), cond.nodes[t]["fn"].log_prob(v)), (s, t)


# ------------------------------------------------------------------------------------------ infer_discrete
@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_infer_discrete_equals_brute_force(variant, mnist):
    """MAP of every discrete latent by infer_discrete (temperature 0) = argmax of the joint over all assignments,
    with the continuous latents fixed, on two images (one group)."""
    model = make(variant)
    kw = latent_inputs(model, inputs(model, mnist, rows=[0, 5], group_size=2))
    if model.config.get("semi_supervised"):
        kw = dict(inputs(model, mnist, rows=[1, 5], group_size=2))  # both rows unlabelled: y_unobserved latent
    tr = prior_trace(model, kw, 3)
    discrete = discrete_sites(tr)
    if not discrete:
        pytest.skip(f"{variant[0]} has no discrete latent site")
    cont = {n: tr.nodes[n]["value"] for n in latent_sites(tr) if n not in discrete}
    conditioned = poutine.condition(model.model, data=cont)
    with torch.no_grad():
        fn = infer_discrete(config_enumerate(conditioned, "parallel"), first_available_dim=-MAX_PLATE_NESTING - 1,
                            temperature=0)
        map_tr = poutine.trace(fn).get_trace(**kw)
    for site in discrete:
        value = tr.nodes[site]["value"]
        k = int(tr.nodes[site]["fn"].enumerate_support(expand=False).numel())
        best, best_lp = None, -math.inf
        for assignment in itertools.product(range(k), repeat=value.numel()):
            a = torch.tensor(assignment).reshape(value.shape)
            with torch.no_grad():
                lp = poutine.trace(poutine.condition(conditioned, data={site: a})).get_trace(**kw).log_prob_sum()
            if lp > best_lp:
                best, best_lp = a, float(lp)
        assert torch.equal(map_tr.nodes[site]["value"].reshape(value.shape), best), site


# ------------------------------------------------------------------------------------------ param store
def _perturb(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))


@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_param_store_save_load_and_state_dict_round_trip(variant, mnist, tmp_path):
    a = make(variant, seed=0)
    kw = inputs(a, mnist)
    tr = prior_trace(a, kw, 4)
    values = {n: tr.nodes[n]["value"] for n in latent_sites(tr)}
    pyro.clear_param_store()
    a.model(**kw)
    _perturb(a, 1)  # in place: the store holds the same tensors
    want = x_log_prob(a, kw, values)
    pyro.get_param_store().save(tmp_path / "params.pt")
    # Pyro's route: a new instance of the same name, the store loaded, then the model called
    b = make(variant, seed=5)
    assert b.pyro_name != a.pyro_name
    b.pyro_name = a.pyro_name
    pyro.clear_param_store()
    pyro.get_param_store().load(tmp_path / "params.pt")
    assert torch.allclose(x_log_prob(b, kw, values), want)
    for (n, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(pa, pb), n
    # state_dict round trip into a registered instance: the store follows
    c = make(variant, seed=6)
    pyro.clear_param_store()
    c.model(**kw)
    c.load_state_dict(a.state_dict())
    assert torch.allclose(x_log_prob(c, kw, values), want)
    name, p = next(iter(c.named_parameters()))
    assert torch.equal(pyro.param(f"{c.pyro_name}$$${name}"), p)


@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_two_live_instances_keep_their_own_parameters(variant, mnist):
    a, b = make(variant, seed=0), make(variant, seed=1)
    assert a.pyro_name != b.pyro_name
    assert copy.deepcopy(a).pyro_name not in (a.pyro_name, b.pyro_name)  # a copy never shares its original's
    kw = inputs(a, mnist)
    pyro.clear_param_store()
    b.model(**kw)
    b.guide(**kw)
    before = {n: p.detach().clone() for n, p in b.named_parameters()}
    a_before = {n: p.detach().clone() for n, p in a.named_parameters()}
    train(a.model, a.guide, elbos_for(a, kw)["TraceEnum_ELBO"], [((), kw)], 3)
    b.model(**kw)
    assert all(torch.equal(p, before[n]) for n, p in b.named_parameters())
    assert any(not torch.equal(p, a_before[n]) for n, p in a.named_parameters())
    keys = set(pyro.get_param_store().keys())
    assert any(k.startswith(a.pyro_name + "$$$") for k in keys) and any(k.startswith(b.pyro_name + "$$$")
                                                                        for k in keys)


# ------------------------------------------------------------------------------------------ JIT
@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_jit_elbos_train_without_recompiling(variant, mnist):
    model = make(variant)
    batches = []
    for rows in (torch.arange(16), torch.arange(16, 32)):
        kw = inputs(model, mnist, rows)
        names, args, consts = split_inputs(kw)
        batches.append((args, consts))
    discrete = has_discrete(model, inputs(model, mnist))
    jits = [JitTraceEnum_ELBO(max_plate_nesting=MAX_PLATE_NESTING)] if discrete else \
        [JitTrace_ELBO(), JitTraceMeanField_ELBO(), JitTraceEnum_ELBO(max_plate_nesting=MAX_PLATE_NESTING)]
    if variant[0] != variant[1]:  # extra variants (compiling is slow): the JIT ELBO of the default only
        default = type(model.default_elbo()).__name__
        jits = [e for e in jits if type(e).__name__ == "Jit" + default] or jits[:1]
    for elbo in jits:
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            svi = SVI(by_position(model.model, names), by_position(model.guide, names), Adam({"lr": 5e-3}), elbo)
            losses = [svi.step(*batches[0][0], **batches[0][1])]
            first = {k: v for k, v in vars(elbo).items() if isinstance(v, CompiledFunction)}
            losses += [svi.step(*args, **kwargs) for args, kwargs in batches * 2]
        assert all(math.isfinite(v) for v in losses), (type(elbo).__name__, losses)
        # no Python value of ours frozen into the trace (torch's own shape checks are not ours)
        tracer = [w for w in caught if issubclass(w.category, torch.jit.TracerWarning) and "pyro_groupvae" in w.filename]
        assert not tracer, f"{type(elbo).__name__}: {tracer[0].message}"
        compiled = {k: v for k, v in vars(elbo).items() if isinstance(v, CompiledFunction)}
        assert compiled and all(len(c.compiled) == 1 for c in compiled.values()), type(elbo).__name__
        assert all(compiled[k] is first.get(k) for k in compiled), f"{type(elbo).__name__} re-traced"


# ------------------------------------------------------------------------------------------ AutoGuides
@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_autonormal_guide(variant, mnist):
    """AutoNormal (discrete latents enumerated in the model) trains, and its samples stay in every site's
    support (HFVAE's z_c on the log simplex)."""
    model = make(variant)
    kw = inputs(model, mnist)
    discrete = discrete_sites(prior_trace(model, kw, 0))
    fn = config_enumerate(model.model, "parallel") if discrete else model.model
    guide = AutoNormal(poutine.block(fn, hide=discrete))
    elbo = TraceEnum_ELBO(max_plate_nesting=MAX_PLATE_NESTING) if discrete else Trace_ELBO()
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    losses = train(fn, guide, elbo, [((), kw)], 20, lr=2e-2)
    assert all(math.isfinite(v) for v in losses) and sum(losses[-4:]) < sum(losses[:4])
    with torch.no_grad():
        g = poutine.trace(guide).get_trace(**kw)
        m = poutine.trace(poutine.replay(model.model, trace=g)).get_trace(**kw)
    for n in latent_sites(m):
        if n in g.nodes:
            assert m.nodes[n]["fn"].support.check(g.nodes[n]["value"]).all(), n


def test_autonormal_on_minibatches_pairs_rows_with_their_own_parameters(mnist):
    """The grouped model on minibatches: with ``create_plates`` (subsampled plates over the training set) every
    batch row gets its own local parameters; without it Pyro can only pair batch *positions*."""
    model = make(("mlvae", "mlvae", dict(num_train_obs=N, num_train_groups=10)))
    data = mnist["normal"]
    kws = []
    for rows in (torch.arange(16), torch.arange(16, 32)):
        b = batch(rows)
        kw = model.batch_inputs(data, b)
        first = torch.arange(0, 16, 4)
        kw.update(obs_index=rows, group_id=data.y[rows[first]].long())
        kws.append(kw)
    guide = AutoNormal(model.model, create_plates=model.create_plates)
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    losses = train(model.model, guide, Trace_ELBO(), [((), kw) for kw in kws], 30, lr=1e-2)
    assert all(math.isfinite(v) for v in losses)
    assert guide.locs.style.shape == (N, 3) and guide.locs.content.shape == (10, 3)
    for kw in kws:
        with torch.no_grad():
            tr = poutine.trace(guide).get_trace(**kw)
        site = tr.nodes["style_unconstrained"]
        assert torch.equal(site["fn"].base_dist.loc, guide.locs.style[kw["obs_index"]])
        assert torch.equal(tr.nodes["content_unconstrained"]["fn"].base_dist.loc, guide.locs.content[kw["group_id"]])
    # the documented pitfall: without create_plates the parameters are per batch position
    plain = AutoNormal(poutine.block(model.model, hide=[]))
    kw = {k: v for k, v in kws[1].items() if k not in ("obs_index", "group_id")}
    pyro.clear_param_store()
    with torch.no_grad():
        tr = poutine.trace(plain).get_trace(**kw)
    assert plain.locs.style.shape == (16, 3)  # 16 batch positions, not 32 training rows


# ------------------------------------------------------------------------------------------ model-specific
def test_nvae_prior_pi_agrees_with_the_sampled_label():
    """The model uses the value of its y site: in prior draws pi ~ p(pi | y) puts its largest mass on y (the bug
    gave 10 %, chance)."""
    model = make(("nvae", "nvae", {}))
    with torch.no_grad():
        s = Predictive(model.model, num_samples=50)(x=None, num_obs=8)
    agree = (s["pi"].argmax(-1) == s["y"]).float().mean()
    assert agree > 0.6, agree
    # conditioning the label drives pi and the images
    with torch.no_grad():
        c = Predictive(poutine.condition(model.model, data={"y": torch.full((8,), 3)}), num_samples=20)(
            x=None, num_obs=8)
    assert (c["pi"].argmax(-1) == 3).float().mean() > 0.6


def test_ugvae_sites_in_caller_order(mnist):
    model = make(("ugvae", "ugvae", {}))
    kw = inputs(model, mnist)
    perm = torch.randperm(N, generator=torch.Generator().manual_seed(0))
    kw = dict(kw, x=kw["x"][perm], group_index=kw["group_index"][perm])
    with torch.no_grad():
        tr = poutine.trace(model.guide).get_trace(**kw)
        order = tr.nodes["_RETURN"]["value"]
        loc = model.to_caller_order(tr.nodes["z"]["fn"].base_dist.loc, order, event_dims=1)
        model.eval()
        want = model.local_posterior(kw["x"])[0]
    assert torch.equal(order, model.grid_order(kw["group_index"], kw["num_groups"]))
    assert torch.allclose(loc, want, atol=1e-6)


def test_exp_concrete_support_is_the_log_simplex():
    from torch.distributions import biject_to

    from pyro_groupvae.distributions import ExpConcrete

    d = ExpConcrete(0.67, logits=torch.randn(5, 4), validate_args=True)
    v = d.rsample()
    assert d.support.check(v).all() and torch.isfinite(d.log_prob(v)).all()
    with pytest.raises(ValueError, match="support"):
        d.log_prob(v + 0.5)  # off the log simplex
    t = biject_to(d.support)
    x = torch.randn(5, 3, dtype=torch.float64)
    y = t(x)
    assert torch.allclose(torch.logsumexp(y, -1), torch.zeros(5, dtype=torch.float64))
    assert torch.allclose(t.inv(y), x)
    jac = torch.autograd.functional.jacobian(lambda u: t(u)[:-1], x[0])  # density is on the first K-1 coordinates
    assert torch.allclose(torch.logdet(jac), t.log_abs_det_jacobian(x[0], y[0]))


# ------------------------------------------------------------------------------------------ Pyro limitations
def test_infer_discrete_workaround_condition_not_replay(mnist):
    """Pyro limitation: the replay recipe ``infer_discrete(replay(model, guide_trace))`` fails when a replayed
    latent depends on the enumerated site (N-VAE's pi ~ p(pi|y): "Error while packing tensors at site 'pi'").
    The documented workaround conditions the continuous latents instead (``poutine.condition``)."""
    model = make(("nvae", "nvae", {}))
    x = inputs(model, mnist, rows=torch.arange(4))["x"]
    pyro.set_rng_seed(0)
    gt = poutine.trace(poutine.block(model.guide, hide=["y"])).get_trace(x)
    with pytest.raises(ValueError, match="packing tensors at site 'pi'"):
        poutine.trace(infer_discrete(poutine.replay(config_enumerate(model.model), trace=gt),
                                     first_available_dim=-2, temperature=0)).get_trace(x)
    data = {n: gt.nodes[n]["value"] for n in latent_sites(gt)}
    y = poutine.trace(infer_discrete(poutine.condition(config_enumerate(model.model), data=data),
                                     first_available_dim=-2, temperature=0)).get_trace(x).nodes["y"]["value"]
    assert y.shape == (4,)
    # the MAP label maximises p(y) p(pi|y) p(x|y,z) row by row
    with torch.no_grad():
        lp = torch.stack([poutine.trace(poutine.condition(model.model, data=dict(data, y=torch.full((4,), k))))
                          .get_trace(x).nodes["x"]["fn"].log_prob(x) + poutine.trace(poutine.condition(
                              model.model, data=dict(data, y=torch.full((4,), k)))).get_trace(x).nodes["pi"]["fn"]
                          .log_prob(data["pi"]) for k in range(10)])
    assert torch.equal(y, lp.argmax(0))


def test_compute_marginals_one_group_workaround(mnist):
    """Pyro limitation: ``TraceEnum_ELBO.compute_marginals`` fails on UG-VAE with a single group (a plate of size
    one; ``KeyError``). Workaround (documented in UG-VAE's docstring): pad with a second copy of the group --
    groups are independent in model and guide -- and read group 0. The marginals are then
    ``p(d_i | z_i, beta) ∝ p(z_i | d_i, beta)``."""
    model = make(("ugvae-marginal", "ugvae", dict(objective="marginal")))
    x = inputs(model, mnist, rows=torch.arange(4))["x"]
    elbo = TraceEnum_ELBO(max_plate_nesting=MAX_PLATE_NESTING)
    with pytest.raises(KeyError):
        elbo.compute_marginals(model.model, model.guide, x)
    x2, gi = torch.cat([x, x]), torch.arange(2).repeat_interleave(4)
    pyro.set_rng_seed(0)
    marg = elbo.compute_marginals(model.model, model.guide, x2, gi, num_groups=2)
    pyro.set_rng_seed(0)
    gt = poutine.trace(model.guide).get_trace(x2, gi, num_groups=2)
    with torch.no_grad():
        loc, scale = model.prior_components(gt.nodes["beta"]["value"])
        lp = dist.Normal(loc, scale).log_prob(gt.nodes["z"]["value"].unsqueeze(-2)).sum(-1)
    assert torch.allclose(marg["d"].probs[0], torch.softmax(lp, -1)[0], atol=1e-5)


def test_readme_plain_pyro_section_runs():
    """The README's "Plain Pyro" code block runs as written, and its comments' shapes hold."""
    from pathlib import Path

    text = Path(__file__).resolve().parents[1].joinpath("README.md").read_text()
    section = text.split("## Plain Pyro", 1)[1]
    code = section.split("```python", 1)[1].split("```", 1)[0]
    scope = {}
    pyro.set_rng_seed(0)
    exec(compile(code, "README.md (Plain Pyro)", "exec"), scope)
    assert scope["images"].shape == (1, 16, 1, 28, 28)
    assert scope["prior"]["x"].shape == (1, 2, 8, 1, 28, 28)
    assert scope["map_y"].shape == (8,) and scope["d"].shape == (64,)
    with torch.no_grad():
        tr = poutine.trace(scope["swapped"]).get_trace(scope["x"][:8])
    assert torch.equal(tr.nodes["pi"]["fn"].concentration.argmax(-1), torch.full((8,), 7))


def test_nvae_follows_the_model_dtype_and_trusted_inputs_cover_labelled_models(mnist):
    from pyro_groupvae.validation import InputError

    model = make(("nvae", "nvae", {})).double()
    kw = inputs(model, mnist, rows=torch.arange(8))
    x, y = kw["x"].double(), kw["y"]
    tr = poutine.trace(model.model).get_trace(x, y)
    assert tr.nodes["pi"]["fn"].concentration.dtype == torch.float64
    assert math.isfinite(TraceMeanField_ELBO().loss(model.model, model.guide, x, y))
    # trusted_inputs skips the per-call label checks (host syncs) of N-VAE and CVAE
    bad = y.clone()
    bad[0] = 99
    for m in (make(("nvae", "nvae", {})), make(("cvae", "cvae", {}))):
        with pytest.raises(InputError):
            m.check_xy(kw["x"], bad)
        with m.trusted_inputs():
            assert m.check_xy(kw["x"], bad)[0] is bad


def test_pyro_jit_trace_mean_field_retraces_every_step_and_ours_does_not(mnist):
    """Pyro 1.9 limitation: ``pyro.infer.JitTraceMeanField_ELBO`` checks ``_loss_and_surrogate_loss`` but stores
    ``_differentiable_loss``, so every step traces anew (3-4x slower than the plain ELBO). The workaround
    ``pyro_groupvae.infer.jit.JitTraceMeanField_ELBO`` compiles once."""
    model = make(("vae", "vae", {}))
    names, args, consts = split_inputs(inputs(model, mnist))
    for elbo, retraces in ((pyro.infer.JitTraceMeanField_ELBO(), True), (JitTraceMeanField_ELBO(), False)):
        pyro.clear_param_store()
        seen = set()
        svi = SVI(by_position(model.model, names), by_position(model.guide, names), Adam({"lr": 1e-3}), elbo)
        for _ in range(3):
            svi.step(*args, **consts)
            seen.add(id(elbo._differentiable_loss))
        assert (len(seen) == 3) == retraces, type(elbo)
