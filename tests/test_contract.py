"""The model contract (pyro_groupvae.models.base), checked on every registered model.

Adding a model: its model file (with ``@register_model`` and a ``Config`` dataclass), its recipe, and one line in
``TINY`` of tests/tiny_models.py (small options for a fast test, shared with test_conformance.py); :func:`test_every_registered_model_is_tested` fails until
that line exists.
"""
import contextlib
import dataclasses
import io
import json
import math

import numpy as np
import pyro
import pytest
import torch
from pyro import poutine

from pyro_groupvae.cli import build_parser
from pyro_groupvae.data import ImageDataset, RandomBatchSampler, load_dataset
from pyro_groupvae.models import MODELS, build_model
from pyro_groupvae.models.base import option_key
from pyro_groupvae.runs import Run, all_recipes, load_run

from tiny_models import TINY  # noqa: E402  (one line per registered model, shared)

NAMES = sorted(TINY)


@pytest.fixture(scope="module")
def data():
    """12 binarised MNIST digits (valid for Normal and Bernoulli likelihoods), labels 0..2."""
    d = load_dataset("mnist", "test")
    return ImageDataset((d.x[:12] > 0.5).float(), torch.arange(12) % 3, name="mnist")


def sampler():
    """One step of 2 groups x 4 rows (equal groups, as UG-VAE's nested plates need)."""
    return RandomBatchSampler(12, 4, batches_per_step=2, shuffle=False, drop_last=True)


def tiny(name):
    return MODELS[name](**TINY[name])


def test_every_registered_model_is_tested():
    assert set(TINY) == set(MODELS), "add the new model's line to TINY"


@pytest.mark.parametrize("name", NAMES)
def test_config_is_the_single_source_of_defaults(name):
    cls = MODELS[name]
    cfg = cls.Config(**TINY[name])
    m1, m2 = cls(cfg), cls(**TINY[name])
    assert m1.config == m2.config == dataclasses.asdict(m1.cfg)
    assert isinstance(m1.config, dict) and json.loads(json.dumps(m1.config)) is not None  # plain, serialisable
    # rebuilt from its JSON config (what load_run does), it has the same config and parameter shapes
    m3 = build_model(name, **json.loads(json.dumps(m1.config)))
    assert m3.config == m1.config
    assert {k: v.shape for k, v in m3.state_dict().items()} == {k: v.shape for k, v in m1.state_dict().items()}
    # keywords override a config instance; unknown options are refused with the list of fields
    key, value = next(iter(TINY[name].items()))
    assert cls(cfg, **{key: value + 1}).config[key] == value + 1
    with pytest.raises(TypeError, match="unexpected keyword"):
        cls(not_an_option=1)


@pytest.mark.parametrize("name", NAMES)
def test_model_and_guide_agree_and_one_svi_step_is_finite(name, data):
    m = tiny(name)
    kw = m.batch_inputs(data, next(iter(sampler())))
    guide_tr = poutine.trace(m.guide).get_trace(**kw)
    model_tr = poutine.trace(poutine.replay(m.model, trace=guide_tr)).get_trace(**kw)
    latent = lambda tr: {n for n, s in tr.nodes.items()  # noqa: E731
                         if s["type"] == "sample" and not s["is_observed"]}
    assert latent(guide_tr) <= latent(model_tr)
    assert latent(model_tr) - latent(guide_tr) <= {"d"}  # UG-VAE "marginal" enumerates d in the model only
    assert set(m.latent_sites) <= latent(guide_tr)  # the posterior keys are site names
    svi = pyro.infer.SVI(m.model, m.guide, pyro.optim.Adam({"lr": 1e-3}), m.default_elbo())
    assert math.isfinite(svi.step(**kw))


@pytest.mark.parametrize("name", NAMES)
def test_latents_api(name, data):
    m = tiny(name)
    m.train()
    x = data.x
    y = {"y": data.y} if m.needs_labels else {}
    post = m.encode(x, **y)
    assert set(m.latent_sites) <= set(post)
    for q in post.values():
        assert isinstance(q, torch.distributions.Distribution) and q.batch_shape[0] == len(x)
    z = m.get_latent_representation(data, batch_size=5)
    width = sum(m.latent_point(k, post[k]).reshape(len(x), -1).shape[1] for k in m.latent_sites)
    assert isinstance(z, np.ndarray) and z.dtype == np.float32 and z.shape == (len(x), width)
    assert m.training  # eval mode inside, training mode restored
    # batching does not change the answer; tensors and numpy arrays are accepted
    np.testing.assert_allclose(m.get_latent_representation(x.numpy(), batch_size=100, **y), z, atol=1e-5)
    np.testing.assert_allclose(m.get_latent_representation(x, batch_size=3, **y), z, atol=1e-5)
    if m.group_site is not None:
        # groups are never split across batches: the pooled posterior equals encode's on the whole data
        g = m.get_latent_representation(data, batch_size=5, group=data.y, latents=m.group_site)
        np.testing.assert_allclose(g, m.encode(x, data.y)[m.group_site].mean.numpy(), atol=1e-5)
    assert m.reconstruct(x, **y).shape == x.shape
    assert m.sample(3).shape == (3,) + x.shape[1:]
    with m.eval_mode():
        assert not m.training
    assert m.training


@pytest.mark.parametrize("name", NAMES)
def test_checkpoint_round_trip(name, data, tmp_path):
    from pyro_groupvae.infer import fit

    m = tiny(name)
    fit(m, data, sampler(), epochs=1, out_dir=tmp_path, progress=False)
    run = load_run(tmp_path)
    assert isinstance(run, Run) and run.config["model"] == name and len(run.history) == 1
    assert run.model.config == m.config and not run.model.training
    for k, v in m.state_dict().items():
        assert torch.equal(run.model.state_dict()[k], v), k
    y = {"y": data.y} if m.needs_labels else {}
    np.testing.assert_allclose(run.model.get_latent_representation(data.x, **y),
                               m.get_latent_representation(data.x, **y), atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_cli_options_come_from_the_config(name):
    recipes = [r for r in all_recipes().values() if r.model == name]
    assert recipes, f"model {name!r} has no recipe (pyro-groupvae train ...)"
    parser = build_parser()
    for recipe in recipes:
        out = io.StringIO()
        with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
            parser.parse_args(["train", recipe.name, "--help"])
        text = out.getvalue()
        args = vars(parser.parse_args(["train", recipe.name, "--out", "unused"]))
        for f in dataclasses.fields(recipe.config_class):
            if not f.metadata.get("cli", True) or f.name in recipe.config_exclude:
                continue
            flag = "--" + (f.metadata.get("flag") or f.name).replace("_", "-")
            assert flag in text, (recipe.name, flag)
            if f.name not in recipe.config_defaults:  # the default shown is the dataclass's
                expected = False if f.metadata.get("negate") else f.default
                assert args[option_key(f)] == expected, (recipe.name, f.name)
