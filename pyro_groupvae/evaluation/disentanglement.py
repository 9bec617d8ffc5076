"""Disentanglement metrics on ground-truth data: FactorVAE score, DCI, MIG, and the per-dimension mutual
information ``I(x; z_d)`` of HFVAE (Esmaeili et al., 2019, fig. 6).

The definitions follow the public reference implementations in google-research/disentanglement_lib
(``evaluation/metrics/{factor_vae,dci,mig,utils}.py``), re-implemented here:

* **FactorVAE score** (Kim & Mnih, 2018): each code dimension is divided by its standard deviation, estimated on
  ``num_variance_estimate`` random observations (``ddof=1``); dimensions whose standard deviation is below
  ``prune_threshold`` (0.05, the reference configuration's ``prune_dims.threshold``; the test is on the
  square root of the variance of the *unnormalised* code) are pruned. A vote fixes one random factor over a
  batch of ``batch_size`` samples and records the active code dimension with the smallest normalised
  variance; the majority-vote classifier maps each code dimension to the factor it was most often the argmin
  for. Accuracy = share of votes the classifier gets right (train: the votes it was fitted on; eval: fresh
  ones).
* **DCI** (Eastwood & Williams, 2018): one ``sklearn`` ``GradientBoostingClassifier`` (defaults) per factor on the
  codes; ``|feature_importances_|`` form the importance matrix ``R`` (codes x factors). Disentanglement =
  ``sum_i rho_i (1 - H_K(P_i.))`` with ``P`` the row-normalised ``R`` and ``rho_i`` the code's share of the total
  importance; completeness likewise over columns with ``H_D``; informativeness = mean train / test accuracy.
* **MIG** (Chen et al., 2018): codes are discretised into ``num_bins`` equal-width histogram bins per dimension;
  ``I(z_j; v_k)`` by ``sklearn.metrics.mutual_info_score`` (nats); MIG = mean over factors of the gap between the
  two largest ``I(z_j; v_k)`` divided by ``H(v_k)``.

Differences from the reference, all deliberate:

* Factors with a single value (dSprites' ``color``) carry no information; they are left out of every score
  (disentanglement_lib's dSprites does the same by exposing only the five other factors). For DSprites the
  scores are therefore over ``shape, scale, orientation, posX, posY``.
* ``num_active_dims`` is the number of unpruned dimensions (the reference returns the code size).
* Votes record the code dimension itself (the reference records its position among the active dimensions;
  the accuracies are the same).
* Several FactorVAE votes are encoded in one call of ``represent`` (``votes_per_call``); results do not depend
  on it as long as ``represent`` encodes each observation independently (e.g. a posterior mean).

Data interface: ``data`` is any object with ``num_factors``, ``factor_sizes``, ``sample_factors(n, seed)``
(``(n, num_factors)`` integer array or tensor) and ``sample_observations_from_factors(factors)`` (e.g.
:class:`pyro_groupvae.data.dsprites.DSprites`); ``represent(x)`` maps a batch of observations to an
``(n, D)`` array (numpy or tensor). Everything is seeded by ``seed``: the data is asked for samples with integer
seeds drawn from ``np.random.default_rng(seed)``.

Arrays are sample-major throughout: codes ``(n, D)``, factors ``(n, K)`` (the reference uses the transpose).
"""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import torch
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.metrics import mutual_info_score

__all__ = [
    "factor_vae_score",
    "dci",
    "dci_score",
    "mig",
    "mig_score",
    "discrete_mutual_info",
    "discrete_entropy",
    "histogram_discretize",
    "generate_factor_code",
    "mutual_information_per_dimension",
]


# ----------------------------------------------------------------------------------------- helpers
def _to_numpy(x) -> np.ndarray:
    if torch.is_tensor(x):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _new_seed(rng: np.random.Generator) -> int:
    return int(rng.integers(0, 2**31 - 1))


def _informative_factors(data) -> np.ndarray:
    """Indices of factors with more than one value."""
    sizes = np.asarray(list(data.factor_sizes))
    if len(sizes) != data.num_factors:
        raise ValueError(f"data.factor_sizes has {len(sizes)} entries but num_factors = {data.num_factors}")
    idx = np.nonzero(sizes > 1)[0]
    if len(idx) == 0:
        raise ValueError("data has no factor with more than one value")
    return idx


def _sample_factors(data, n: int, rng: np.random.Generator):
    """Factors as returned by the data (array or tensor), and a numpy int64 copy."""
    factors = data.sample_factors(int(n), _new_seed(rng))
    arr = _to_numpy(factors).astype(np.int64)
    if arr.shape != (n, data.num_factors):
        raise ValueError(f"data.sample_factors({n}, seed) returned shape {arr.shape}, expected "
                         f"({n}, {data.num_factors})")
    return factors, arr


def _like(template, arr: np.ndarray):
    """``arr`` in the container type of ``template`` (tensor or array)."""
    if torch.is_tensor(template):
        return torch.as_tensor(arr, dtype=template.dtype, device=template.device)
    return arr.astype(np.asarray(template).dtype, copy=False)


def _represent(represent: Callable, observations) -> np.ndarray:
    codes = _to_numpy(represent(observations)).astype(np.float64)
    if codes.ndim == 1:
        codes = codes[:, None]
    if codes.ndim != 2:
        raise ValueError(f"represent must return an (n, D) array, got shape {codes.shape}")
    return codes


def generate_factor_code(data, represent: Callable, num_points: int, seed=0, batch_size: int = 16):
    """Sample factors, observe and encode them.

    :param data: ground-truth data (see module docstring).
    :param callable represent: observations -> ``(n, D)`` codes.
    :param int num_points: number of samples.
    :param seed: int seed or ``np.random.Generator``.
    :param int batch_size: samples per call of ``data`` and ``represent``.
    :return: ``(codes (num_points, D) float64, factors (num_points, num_factors) int64)``.
    """
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    codes, factors = [], []
    for start in range(0, int(num_points), int(batch_size)):
        m = min(int(batch_size), int(num_points) - start)
        f, f_np = _sample_factors(data, m, rng)
        codes.append(_represent(represent, data.sample_observations_from_factors(f)))
        factors.append(f_np)
    if not codes:
        raise ValueError("num_points must be positive")
    return np.concatenate(codes), np.concatenate(factors)


# ----------------------------------------------------------------------------------------- FactorVAE
def factor_vae_score(data, represent: Callable, num_train: int = 10000, num_eval: int = 5000,
                     num_variance_estimate: int = 10000, batch_size: int = 64, seed: int = 0,
                     prune_threshold: float = 0.05, votes_per_call: Optional[int] = None) -> dict:
    """FactorVAE disentanglement score (majority-vote classifier on the argmin normalised variance).

    :param data: ground-truth data (see module docstring).
    :param callable represent: observations -> ``(n, D)`` codes (e.g. the posterior mean).
    :param int num_train: votes to fit the classifier on.
    :param int num_eval: fresh votes to evaluate it on.
    :param int num_variance_estimate: samples to estimate each dimension's global variance.
    :param int batch_size: samples per vote (all sharing the value of one random factor).
    :param int seed: random seed.
    :param float prune_threshold: dimensions whose global standard deviation is below this are ignored.
    :param int votes_per_call: votes encoded per ``represent`` call (default: about 1024 observations).
    :return: dict with ``train_accuracy``, ``eval_accuracy``, ``num_active_dims`` (and ``votes_train``, the
        ``(K, D)`` vote matrix over the informative factors).
    """
    if batch_size < 2:
        raise ValueError("batch_size must be at least 2 to estimate a variance")
    rng = np.random.default_rng(seed)
    factor_idx = _informative_factors(data)
    codes, _ = generate_factor_code(data, represent, num_variance_estimate, rng,
                                    batch_size=max(batch_size, 1024))
    global_var = np.var(codes, axis=0, ddof=1)
    active = np.sqrt(global_var) >= prune_threshold
    if not active.any():
        return dict(train_accuracy=0.0, eval_accuracy=0.0, num_active_dims=0)
    votes_per_call = votes_per_call or max(1, 1024 // batch_size)

    def votes(num_points):
        v = np.zeros((len(factor_idx), codes.shape[1]), dtype=np.int64)
        done = 0
        while done < num_points:
            m = min(votes_per_call, num_points - done)
            ks, batches = [], []
            for _ in range(m):
                k = int(rng.integers(len(factor_idx)))
                f, f_np = _sample_factors(data, batch_size, rng)
                f_np[:, factor_idx[k]] = f_np[0, factor_idx[k]]
                ks.append(k)
                batches.append(f_np)
            template = f
            obs = data.sample_observations_from_factors(_like(template, np.concatenate(batches)))
            reps = _represent(represent, obs).reshape(m, batch_size, -1)
            local_var = np.var(reps, axis=1, ddof=1)  # (m, D)
            ratio = np.where(active, local_var / np.where(active, global_var, 1.0), np.inf)
            np.add.at(v, (np.asarray(ks), np.argmin(ratio, axis=1)), 1)
            done += m
        return v

    train_votes = votes(num_train)
    classifier = np.argmax(train_votes, axis=0)
    dims = np.arange(train_votes.shape[1])
    train_acc = train_votes[classifier, dims].sum() / max(train_votes.sum(), 1)
    eval_votes = votes(num_eval)
    eval_acc = eval_votes[classifier, dims].sum() / max(eval_votes.sum(), 1)
    return dict(train_accuracy=float(train_acc), eval_accuracy=float(eval_acc),
                num_active_dims=int(active.sum()), votes_train=train_votes)


# ----------------------------------------------------------------------------------------- DCI
def _normalised_entropy(p: np.ndarray, axis: int, base: int) -> np.ndarray:
    """Entropy of ``p`` normalised along ``axis`` with log base ``base`` (0 when ``base`` is 1)."""
    if base < 2:
        return np.zeros(p.shape[1 - axis])
    p = p + 1e-11
    p = p / p.sum(axis=axis, keepdims=True)
    return -(p * np.log(p)).sum(axis=axis) / np.log(base)


def _disentanglement(importance: np.ndarray) -> float:
    per_code = 1.0 - _normalised_entropy(importance, axis=1, base=importance.shape[1])
    weights = importance if importance.sum() > 0 else np.ones_like(importance)
    code_weight = weights.sum(axis=1) / weights.sum()
    return float(np.sum(per_code * code_weight))


def _completeness(importance: np.ndarray) -> float:
    per_factor = 1.0 - _normalised_entropy(importance, axis=0, base=importance.shape[0])
    weights = importance if importance.sum() > 0 else np.ones_like(importance)
    factor_weight = weights.sum(axis=0) / weights.sum()
    return float(np.sum(per_factor * factor_weight))


def dci(codes_train, factors_train, codes_test, factors_test, seed: int = 0,
        gbt_kwargs: Optional[dict] = None) -> dict:
    """Disentanglement, completeness and informativeness from gradient-boosted-tree importances.

    Factors that are constant in the training sample are left out.

    :param codes_train: ``(n, D)`` codes.
    :param factors_train: ``(n, K)`` integer factors.
    :param codes_test: ``(m, D)`` codes.
    :param factors_test: ``(m, K)`` integer factors.
    :param int seed: ``random_state`` of the classifiers.
    :param dict gbt_kwargs: extra ``GradientBoostingClassifier`` arguments (default: sklearn defaults, as the
        reference; e.g. ``{"n_estimators": 20}`` for speed).
    :return: dict with ``disentanglement``, ``completeness``, ``informativeness_train``,
        ``informativeness_test`` (mean accuracies) and ``importance_matrix`` ``(D, K')``.
    """
    x_train, y_train = _to_numpy(codes_train).astype(np.float64), _to_numpy(factors_train)
    x_test, y_test = _to_numpy(codes_test).astype(np.float64), _to_numpy(factors_test)
    if y_train.ndim == 1:
        y_train, y_test = y_train[:, None], y_test[:, None]
    keep = [k for k in range(y_train.shape[1]) if len(np.unique(y_train[:, k])) > 1]
    if not keep:
        raise ValueError("every factor is constant in the training sample")
    importance = np.zeros((x_train.shape[1], len(keep)))
    train_acc, test_acc = [], []
    for j, k in enumerate(keep):
        model = GradientBoostingClassifier(random_state=seed, **(gbt_kwargs or {}))
        model.fit(x_train, y_train[:, k])
        importance[:, j] = np.abs(model.feature_importances_)
        train_acc.append(np.mean(model.predict(x_train) == y_train[:, k]))
        test_acc.append(np.mean(model.predict(x_test) == y_test[:, k]))
    return dict(disentanglement=_disentanglement(importance), completeness=_completeness(importance),
                informativeness_train=float(np.mean(train_acc)), informativeness_test=float(np.mean(test_acc)),
                importance_matrix=importance)


def dci_score(data, represent: Callable, num_train: int = 10000, num_test: int = 5000, seed: int = 0,
              batch_size: int = 16, gbt_kwargs: Optional[dict] = None) -> dict:
    """DCI on freshly sampled data (see :func:`dci`).

    :param data: ground-truth data (see module docstring).
    :param callable represent: observations -> ``(n, D)`` codes.
    :param int num_train: training samples for the classifiers.
    :param int num_test: test samples.
    :param int seed: random seed.
    :param int batch_size: samples per call of ``represent``.
    :param dict gbt_kwargs: extra ``GradientBoostingClassifier`` arguments.
    :return: the dict of :func:`dci`.
    """
    rng = np.random.default_rng(seed)
    factor_idx = _informative_factors(data)
    c_train, f_train = generate_factor_code(data, represent, num_train, rng, batch_size)
    c_test, f_test = generate_factor_code(data, represent, num_test, rng, batch_size)
    return dci(c_train, f_train[:, factor_idx], c_test, f_test[:, factor_idx], seed=seed, gbt_kwargs=gbt_kwargs)


# ----------------------------------------------------------------------------------------- MIG
def histogram_discretize(codes, num_bins: int = 20) -> np.ndarray:
    """Discretise each column into ``num_bins`` equal-width bins over its range (labels 1..num_bins).

    :param codes: ``(n, D)`` array.
    :param int num_bins: number of bins.
    :return: int64 ``(n, D)``.
    """
    codes = _to_numpy(codes).astype(np.float64)
    if codes.ndim == 1:
        codes = codes[:, None]
    out = np.zeros(codes.shape, dtype=np.int64)
    for j in range(codes.shape[1]):
        edges = np.histogram(codes[:, j], num_bins)[1]
        out[:, j] = np.digitize(codes[:, j], edges[:-1])
    return out


def discrete_mutual_info(codes, factors) -> np.ndarray:
    """Mutual information (nats) between every discrete code column and every factor column.

    :param codes: ``(n, D)`` discrete codes (e.g. from :func:`histogram_discretize`).
    :param factors: ``(n, K)`` discrete factors.
    :return: ``(D, K)`` matrix.
    """
    codes, factors = _to_numpy(codes), _to_numpy(factors)
    if codes.ndim == 1:
        codes = codes[:, None]
    if factors.ndim == 1:
        factors = factors[:, None]
    m = np.zeros((codes.shape[1], factors.shape[1]))
    for i in range(codes.shape[1]):
        for j in range(factors.shape[1]):
            m[i, j] = mutual_info_score(factors[:, j], codes[:, i])
    return m


def discrete_entropy(factors) -> np.ndarray:
    """Entropy (nats) of every discrete column.

    :param factors: ``(n, K)`` discrete values.
    :return: ``(K,)`` entropies.
    """
    factors = _to_numpy(factors)
    if factors.ndim == 1:
        factors = factors[:, None]
    return np.array([mutual_info_score(factors[:, j], factors[:, j]) for j in range(factors.shape[1])])


def mig(codes, factors, num_bins: int = 20) -> dict:
    """Mutual information gap of continuous codes w.r.t. discrete factors.

    Factors with zero entropy in the sample are left out of the mean (their gap is ``nan``).

    :param codes: ``(n, D)`` continuous codes.
    :param factors: ``(n, K)`` integer factors.
    :param int num_bins: histogram bins per code dimension.
    :return: dict with ``discrete_mig`` (the score), ``mig_per_factor`` ``(K,)``, ``mutual_info`` ``(D, K)``
        and ``factor_entropy`` ``(K,)``.
    """
    m = discrete_mutual_info(histogram_discretize(codes, num_bins), factors)
    h = discrete_entropy(factors)
    sorted_m = np.sort(m, axis=0)[::-1]
    second = sorted_m[1] if m.shape[0] > 1 else np.zeros(m.shape[1])
    with np.errstate(divide="ignore", invalid="ignore"):
        gaps = np.where(h > 0, (sorted_m[0] - second) / np.where(h > 0, h, 1.0), np.nan)
    score = float(np.nanmean(gaps)) if np.isfinite(gaps).any() else float("nan")
    return dict(discrete_mig=score, mig_per_factor=gaps, mutual_info=m, factor_entropy=h)


def mig_score(data, represent: Callable, num_train: int = 10000, seed: int = 0, num_bins: int = 20,
              batch_size: int = 16) -> dict:
    """MIG on freshly sampled data (see :func:`mig`).

    :param data: ground-truth data (see module docstring).
    :param callable represent: observations -> ``(n, D)`` codes.
    :param int num_train: number of samples.
    :param int seed: random seed.
    :param int num_bins: histogram bins per code dimension.
    :param int batch_size: samples per call of ``represent``.
    :return: the dict of :func:`mig`.
    """
    rng = np.random.default_rng(seed)
    factor_idx = _informative_factors(data)
    codes, factors = generate_factor_code(data, represent, num_train, rng, batch_size)
    return mig(codes, factors[:, factor_idx], num_bins=num_bins)


# ------------------------------------------------------------------------ I(x; z_d), HFVAE fig. 6
def mutual_information_per_dimension(loc, scale=None, num_samples: int = 1, chunk_size: int = 256,
                                     seed: int = 0) -> np.ndarray:
    """Mutual information ``I(x; z_d)`` (nats) between the data and each latent dimension, for Normal
    encoder posteriors ``q(z_d | x_n) = N(loc[n, d], scale[n, d])``.

    ``I(x; z_d) = E_x[KL(q(z_d | x) || q(z_d))]`` where the aggregate posterior ``q(z_d)`` is the mixture of
    the ``N`` posteriors, ``log q(z_d) = logsumexp_n log q(z_d | x_n) - log N``; the KL is estimated with
    ``num_samples`` draws ``z_d ~ q(z_d | x_i)`` per data point. Computed in chunks of ``chunk_size`` data points
    and one dimension at a time, so memory is ``O(N * chunk_size * num_samples)``. The estimate lies in
    ``[0, log N]`` up to Monte Carlo noise; a dimension whose posterior is the same for every ``x`` (e.g. equal
    to the prior) gets 0.

    :param loc: ``(N, D)`` posterior means (array or tensor), or a ``torch.distributions.Normal``.
    :param scale: ``(N, D)`` posterior standard deviations (omit when ``loc`` is a distribution).
    :param int num_samples: Monte Carlo draws per data point.
    :param int chunk_size: data points per chunk.
    :param int seed: random seed of the draws.
    :return: ``(D,)`` numpy array.
    """
    if isinstance(loc, torch.distributions.Distribution):
        base = loc
        while isinstance(base, torch.distributions.Independent):
            base = base.base_dist
        loc, scale = base.loc, base.scale
    if scale is None:
        raise ValueError("scale is required unless loc is a Normal distribution")
    loc = torch.as_tensor(_to_numpy(loc), dtype=torch.float64)
    scale = torch.as_tensor(_to_numpy(scale), dtype=torch.float64).expand_as(loc)
    if loc.dim() == 1:
        loc, scale = loc[:, None], scale[:, None]
    if loc.dim() != 2:
        raise ValueError(f"loc must have shape (N, D), got {tuple(loc.shape)}")
    if (scale <= 0).any():
        raise ValueError("scale must be positive")
    n, d = loc.shape
    gen = torch.Generator().manual_seed(int(seed))
    log_n = np.log(n)
    half_log_2pi = 0.5 * np.log(2 * np.pi)
    log_scale = scale.log()
    total = torch.zeros(d, dtype=torch.float64)
    for start in range(0, n, int(chunk_size)):
        stop = min(start + int(chunk_size), n)
        eps = torch.randn((num_samples, stop - start, d), generator=gen, dtype=torch.float64)
        z = loc[start:stop] + scale[start:stop] * eps  # (S, c, D)
        log_q_cond = (-0.5 * eps ** 2 - log_scale[start:stop] - half_log_2pi).sum(dim=0)  # (c, D) summed over S
        for j in range(d):
            zz = z[:, :, j].reshape(-1, 1)  # (S c, 1)
            comp = -0.5 * ((zz - loc[None, :, j]) / scale[None, :, j]) ** 2 - log_scale[None, :, j] - half_log_2pi
            log_q_marg = torch.logsumexp(comp, dim=1) - log_n  # (S c,)
            total[j] += log_q_cond[:, j].sum() - log_q_marg.sum()
    return (total / (n * num_samples)).numpy()
