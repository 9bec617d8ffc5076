"""Tests for pyro_groupvae.evaluation.disentanglement on a toy ground-truth data set."""
import numpy as np
import pytest
import torch

from pyro_groupvae.evaluation.disentanglement import (
    dci,
    dci_score,
    discrete_entropy,
    discrete_mutual_info,
    factor_vae_score,
    histogram_discretize,
    mig,
    mig_score,
    mutual_information_per_dimension,
)


class ToyData:
    """Three independent uniform factors of sizes 4, 5, 6 (plus a constant one, like dSprites' color);
    the observation is the factor vector itself."""

    factor_sizes = (4, 1, 5, 6)
    num_factors = 4

    def sample_factors(self, n, seed):
        rng = np.random.default_rng(seed)
        return torch.from_numpy(np.stack([rng.integers(0, s, n) for s in self.factor_sizes], axis=1))

    def sample_observations_from_factors(self, factors):
        return torch.as_tensor(factors).float()


DATA = ToyData()
INFORMATIVE = [0, 2, 3]


def perfect(x):
    return x[:, INFORMATIVE].numpy()


def permuted_rescaled(x):
    z = x[:, INFORMATIVE].numpy()
    return z[:, [2, 0, 1]] * np.array([3.0, -0.5, 10.0]) + np.array([1.0, 2.0, -3.0])


_noise_rng = np.random.default_rng(0)


def with_noise_dims(x):
    z = x[:, INFORMATIVE].numpy()
    return np.concatenate([z, _noise_rng.normal(size=(len(z), 2)), np.zeros((len(z), 1))], axis=1)


def random_code(x):
    return _noise_rng.normal(size=(len(x), 3))


FAST_FVAE = dict(num_train=200, num_eval=200, num_variance_estimate=1000, batch_size=32)
FAST_GBT = dict(n_estimators=20)


# ------------------------------------------------------------------------------------- FactorVAE
@pytest.mark.parametrize("represent", [perfect, permuted_rescaled, with_noise_dims])
def test_factor_vae_good_codes(represent):
    out = factor_vae_score(DATA, represent, seed=0, **FAST_FVAE)
    assert out["train_accuracy"] == pytest.approx(1.0)
    assert out["eval_accuracy"] == pytest.approx(1.0)
    expected_active = 5 if represent is with_noise_dims else 3  # the all-zero dimension is pruned
    assert out["num_active_dims"] == expected_active


def test_factor_vae_random_code_is_chance():
    out = factor_vae_score(DATA, random_code, seed=0, **FAST_FVAE)
    assert out["eval_accuracy"] < 0.5  # chance is 1/3 for three informative factors
    assert out["train_accuracy"] < 0.6


def test_factor_vae_seeded_and_pruning():
    a = factor_vae_score(DATA, permuted_rescaled, seed=3, **FAST_FVAE)
    b = factor_vae_score(DATA, permuted_rescaled, seed=3, **FAST_FVAE)
    np.testing.assert_array_equal(a["votes_train"], b["votes_train"])
    # votes_per_call does not change the result for a per-sample encoder
    c = factor_vae_score(DATA, permuted_rescaled, seed=3, votes_per_call=1, **FAST_FVAE)
    np.testing.assert_array_equal(a["votes_train"], c["votes_train"])
    dead = factor_vae_score(DATA, lambda x: np.zeros((len(x), 2)), seed=0, **FAST_FVAE)
    assert dead == dict(train_accuracy=0.0, eval_accuracy=0.0, num_active_dims=0)


# ------------------------------------------------------------------------------------------- DCI
def test_dci_perfect_and_permuted():
    for represent in (perfect, permuted_rescaled):
        out = dci_score(DATA, represent, num_train=600, num_test=300, seed=0, gbt_kwargs=FAST_GBT)
        assert out["disentanglement"] > 0.95
        assert out["completeness"] > 0.95
        assert out["informativeness_test"] > 0.95
        assert out["importance_matrix"].shape == (3, 3)  # the constant factor is left out


def test_dci_random_code_is_low():
    out = dci_score(DATA, random_code, num_train=600, num_test=300, seed=0, gbt_kwargs=FAST_GBT)
    assert out["disentanglement"] < 0.3
    assert out["completeness"] < 0.3
    assert out["informativeness_test"] < 0.4


def test_dci_noise_dims_keep_disentanglement():
    out = dci_score(DATA, with_noise_dims, num_train=600, num_test=300, seed=0, gbt_kwargs=FAST_GBT)
    assert out["disentanglement"] > 0.8  # noise dims get little importance
    assert out["importance_matrix"].shape == (6, 3)


def test_dci_function_on_mixed_code():
    rng = np.random.default_rng(0)
    f = np.stack([rng.integers(0, 4, 800), rng.integers(0, 5, 800)], axis=1)
    mixed = np.stack([f[:, 0] + f[:, 1], f[:, 0] - f[:, 1]], axis=1).astype(float)
    out = dci(mixed[:600], f[:600], mixed[600:], f[600:], gbt_kwargs=FAST_GBT)
    clean = dci(f[:600].astype(float), f[:600], f[600:].astype(float), f[600:], gbt_kwargs=FAST_GBT)
    assert out["disentanglement"] < clean["disentanglement"] - 0.3


# ------------------------------------------------------------------------------------------- MIG
def test_mig_perfect_permuted_noise_random():
    for represent in (perfect, permuted_rescaled, with_noise_dims):
        out = mig_score(DATA, represent, num_train=2000, seed=0)
        assert out["discrete_mig"] > 0.9, (represent.__name__, out["discrete_mig"])
        assert len(out["mig_per_factor"]) == 3
    out = mig_score(DATA, random_code, num_train=2000, seed=0)
    assert out["discrete_mig"] < 0.05


def test_mig_helpers():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, size=(5000, 1))
    h = discrete_entropy(y)
    assert h[0] == pytest.approx(np.log(4), abs=0.01)
    codes = np.concatenate([y + 0.01 * rng.normal(size=y.shape), rng.normal(size=y.shape)], axis=1)
    disc = histogram_discretize(codes, num_bins=20)
    assert disc.min() >= 1 and disc.max() <= 20
    m = discrete_mutual_info(disc, y)
    assert m.shape == (2, 1)
    assert m[0, 0] == pytest.approx(np.log(4), abs=0.01) and m[1, 0] < 0.02
    out = mig(codes, np.concatenate([y, np.zeros_like(y)], axis=1))  # constant factor: nan, ignored
    assert np.isnan(out["mig_per_factor"][1]) and out["discrete_mig"] > 0.95


# -------------------------------------------------------------------------------- MI per dimension
def test_mutual_information_per_dimension():
    rng = np.random.default_rng(0)
    n = 1000
    loc = np.stack([rng.normal(size=n), np.zeros(n), 0.3 * rng.normal(size=n)], axis=1)
    scale = np.stack([np.full(n, 0.1), np.ones(n), np.full(n, 0.5)], axis=1)
    mi = mutual_information_per_dimension(loc, scale, num_samples=2, chunk_size=100, seed=0)
    assert mi.shape == (3,)
    assert abs(mi[1]) < 1e-9  # posterior equals the prior for every x
    # Gaussian channel: I = 0.5 log(1 + var(loc) / scale^2) = 0.5 log(101) = 2.31 nats for dim 0
    assert mi[0] == pytest.approx(0.5 * np.log(1 + 1 / 0.01), abs=0.15)
    assert mi[2] == pytest.approx(0.5 * np.log(1 + 0.09 / 0.25), abs=0.05)
    assert mi[0] > mi[2] > mi[1]
    assert mi.max() <= np.log(n) + 0.1
    # same result from a Normal distribution and for other chunk sizes
    dist = torch.distributions.Normal(torch.tensor(loc), torch.tensor(scale))
    np.testing.assert_allclose(mutual_information_per_dimension(dist, num_samples=2, chunk_size=100, seed=0), mi)
    other = mutual_information_per_dimension(loc, scale, num_samples=2, chunk_size=37, seed=1)
    np.testing.assert_allclose(other, mi, atol=0.1)


# ------------------------------------------------------------------------------ with dSprites
def test_metrics_run_on_dsprites():
    from pyro_groupvae.data.dsprites import DSprites

    ds = DSprites()

    def area_and_centroid(x):
        x = x[:, 0]
        area = x.sum(dim=(1, 2))
        rows = (x * torch.arange(64.0)[:, None]).sum(dim=(1, 2)) / area
        cols = (x * torch.arange(64.0)[None, :]).sum(dim=(1, 2)) / area
        return torch.stack([area, rows, cols], dim=1)  # a tensor is accepted too

    out = factor_vae_score(ds, area_and_centroid, num_train=100, num_eval=100, num_variance_estimate=1000,
                           seed=0)
    votes = out["votes_train"]  # factors shape, scale, orientation, posX, posY (color is constant)
    assert votes.shape == (5, 3)
    assert votes[3].argmax() == 2 and votes[4].argmax() == 1  # posX -> column centroid, posY -> row
    assert out["eval_accuracy"] > 0.5
    m = mig_score(ds, area_and_centroid, num_train=2000, seed=0)
    assert m["mig_per_factor"].shape == (5,)
    assert m["mig_per_factor"][3] > 0.5 and m["mig_per_factor"][4] > 0.5
