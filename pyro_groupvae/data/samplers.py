"""Mini-batches of *groups* of observations.

Models for grouped data (ML-VAE, N-VAE, UG-VAE) consume batches made of several groups, each group a set of
rows that share something (a label, an identity, or -- for UG-VAE -- simply being in the same random batch).
A batch is a :class:`GroupBatch`: the dataset rows, concatenated group after group, and for each row the
index of its group inside the batch.

The samplers are reproducible: every epoch draws from a private :class:`torch.Generator` seeded from
``(seed, epoch)``, each ``iter(sampler)`` starts the next epoch, and :meth:`state_dict` /
:meth:`load_state_dict` save and restore the epoch counter so that a resumed run sees exactly the batches
the uninterrupted run would have seen. The global RNGs are never touched.
"""
from __future__ import annotations

from typing import Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch

__all__ = [
    "GroupBatch",
    "GroupBatchSampler",
    "RandomBatchSampler",
    "structured_batches",
    "DIGIT_FAMILIES",
    "single_label_families",
]


class GroupBatch(NamedTuple):
    """One mini-batch of groups.

    :ivar torch.LongTensor indices: ``(n,)`` dataset rows, concatenated group after group.
    :ivar torch.LongTensor group_index: ``(n,)`` group of each row, numbered ``0..num_groups-1`` in batch order;
        every value is present (no empty group).
    :ivar int num_groups: number of groups in the batch.
    """

    indices: torch.Tensor
    group_index: torch.Tensor
    num_groups: int


#: label families used by UG-VAE's structured-batch evaluation on digits.
DIGIT_FAMILIES: Dict[str, List[int]] = {
    "even": [0, 2, 4, 6, 8],
    "odd": [1, 3, 5, 7, 9],
    "prime": [2, 3, 5, 7],
    "fibonacci": [0, 1, 2, 3, 5, 8],
}


# ----------------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------------


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A fresh CPU generator whose state depends only on ``(seed, epoch)`` (well mixed by SeedSequence)."""
    entropy = [int(seed) & 0xFFFFFFFFFFFFFFFF, int(epoch) & 0xFFFFFFFFFFFFFFFF]
    state = np.random.SeedSequence(entropy).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def _as_labels(labels) -> torch.Tensor:
    if torch.is_tensor(labels):
        t = labels.detach().cpu()
    else:
        arr = np.asarray(labels)
        if arr.dtype == object:
            raise ValueError("labels must be a 1-D integer tensor/array, got an object array")
        if not arr.flags.writeable:
            arr = arr.copy()
        t = torch.as_tensor(arr)
    if t.dim() != 1:
        raise ValueError(f"labels must be 1-D, got shape {tuple(t.shape)}")
    if t.dtype == torch.bool or t.is_floating_point() or t.is_complex():
        raise ValueError(f"labels must have an integer dtype, got {t.dtype}")
    if t.numel() == 0:
        raise ValueError("labels is empty: there is nothing to sample")
    return t.long()


def _rows_per_label(labels: torch.Tensor) -> Tuple[torch.Tensor, List[torch.Tensor]]:
    """Distinct label values (sorted) and, for each, the rows holding it (increasing order)."""
    order = torch.argsort(labels, stable=True)
    values, counts = torch.unique_consecutive(labels[order], return_counts=True)
    return values, list(torch.split(order, counts.tolist()))


def _check_positive_int(name: str, value, allow_none: bool = False):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return int(value)


def _make_batch(groups: Sequence[torch.Tensor]) -> GroupBatch:
    sizes = torch.tensor([g.numel() for g in groups], dtype=torch.long)
    indices = torch.cat(list(groups))
    group_index = torch.repeat_interleave(torch.arange(len(groups)), sizes)
    return GroupBatch(indices, group_index, len(groups))


class _EpochState:
    """Epoch counter and distributed sharding shared by the samplers (``state_dict`` / ``load_state_dict`` /
    ``set_epoch`` / ``set_distributed``).

    **Distributed data parallel.** With ``W`` processes (ranks) every rank builds the same sampler with the same
    seed, so all ranks draw the same *global* batches each epoch; rank ``r`` keeps its share of every global
    batch's groups (``numpy.array_split`` order: contiguous, as even as possible, disjoint across ranks). The
    global batch size is therefore unchanged by the number of processes (``batch_groups`` groups per step in all),
    which is what makes ``W`` ranks x ``B/W`` groups the same step as 1 rank x ``B`` groups (the training plan
    scales the per-rank loss by ``W`` to undo DDP's gradient averaging). A global batch with fewer than ``W``
    groups (the last, smaller one) is dropped on every rank when :attr:`drop_uneven` (training: DDP needs the
    same number of steps on every rank), otherwise the ranks without a group skip it (validation).
    A sampler whose batches have fewer groups than there are ranks (``RandomBatchSampler`` with one batch per step:
    N-VAE, HF-VAE) deals its batches out whole instead: rank ``r`` takes batches ``r, r + W, ...``, so one
    distributed step covers ``W`` batches (as ``W`` batches per step would on one process).
    Rank and world size come from :meth:`set_distributed`, else from ``torch.distributed`` when it is
    initialised, else ``(0, 1)``.
    """

    seed: int
    epoch: int
    rank: Optional[int] = None
    num_replicas: Optional[int] = None
    drop_uneven: bool = True

    def set_distributed(self, rank: int, num_replicas: int, drop_uneven: Optional[bool] = None) -> None:
        """Shard the batches for rank ``rank`` of ``num_replicas`` processes (``(0, 1)``: no sharding)."""
        num_replicas = _check_positive_int("num_replicas", num_replicas)
        if not 0 <= int(rank) < num_replicas:
            raise ValueError(f"rank must be in 0..{num_replicas - 1}, got {rank}")
        self.rank, self.num_replicas = int(rank), num_replicas
        if drop_uneven is not None:
            self.drop_uneven = bool(drop_uneven)

    def _replica(self) -> Tuple[int, int]:
        if self.num_replicas is not None:
            return self.rank, self.num_replicas
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1

    def _batch_group_counts(self) -> List[int]:
        """Number of groups of every (global) batch of an epoch."""
        raise NotImplementedError

    def _share(self, num_groups: int) -> Tuple[int, int]:
        """``(first group, number of groups)`` of this rank in a global batch of ``num_groups`` groups."""
        rank, world = self._replica()
        q, r = divmod(num_groups, world)
        return rank * q + min(rank, r), q + (1 if rank < r else 0)

    def _whole_batches(self, counts: List[int], world: int) -> bool:
        """Batches of fewer groups than ranks (e.g. one group per step) are dealt out whole, in turn."""
        return bool(counts) and counts[0] < world

    def _local_len(self, counts: List[int]) -> int:
        rank, world = self._replica()
        if world == 1:
            return len(counts)
        if self._whole_batches(counts, world):
            n = len(counts) // world * world if self.drop_uneven else len(counts)
            return len(range(rank, n, world))
        if self.drop_uneven:
            return sum(1 for g in counts if g >= world)
        return sum(1 for g in counts if self._share(g)[1] > 0)

    def _shard(self, batches: Iterator[GroupBatch]) -> Iterator[GroupBatch]:
        rank, world = self._replica()
        if world == 1:
            yield from batches
            return
        counts = self._batch_group_counts()
        if self._whole_batches(counts, world):
            n = len(counts) // world * world if self.drop_uneven else len(counts)
            for k, batch in enumerate(batches):
                if k >= n:
                    break
                if k % world == rank:
                    yield batch
            return
        for batch in batches:
            if batch.num_groups < world and self.drop_uneven:
                continue
            first, size = self._share(batch.num_groups)
            if size == 0:
                continue
            bounds = torch.searchsorted(batch.group_index, torch.tensor([first, first + size]))
            lo, hi = int(bounds[0]), int(bounds[1])
            yield GroupBatch(batch.indices[lo:hi], batch.group_index[lo:hi] - first, size)

    def set_epoch(self, epoch: int) -> None:
        """Make the next ``iter(self)`` produce epoch ``epoch``."""
        self.epoch = int(epoch)

    def state_dict(self) -> dict:
        """``{"epoch": e, "seed": s}``: the next ``iter`` will produce epoch ``e``.

        Saving inside an epoch records the *next* epoch (the current one counts as started), so resuming
        continues with a fresh epoch.
        """
        return {"epoch": self.epoch, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        """Restore the epoch counter saved by :meth:`state_dict` (and the seed, if present)."""
        self.epoch = int(state["epoch"])
        if "seed" in state:
            self.seed = int(state["seed"])

    def _next_generator(self) -> torch.Generator:
        gen = _epoch_generator(self.seed, self.epoch)
        self.epoch += 1
        return gen


# ----------------------------------------------------------------------------------------------------------
# groups sharing a label
# ----------------------------------------------------------------------------------------------------------


class GroupBatchSampler(_EpochState):
    """Batches of groups of observations sharing a label (ML-VAE / N-VAE training).

    Three ways to form the groups of one epoch:

    * ``group_size=k``: for every label, its rows are permuted and cut into groups of exactly ``k`` rows; a
      remainder smaller than ``k`` is dropped (a different one every epoch). Labels with fewer than ``k``
      rows contribute no group.
    * ``group_size=None`` (default): every label is one group holding all its rows (variable size). Taking
      every group in its entirety gives an unbiased estimate of the ML-VAE objective.
    * ``group_size=None, max_group_size=m``: as above, but every epoch a group larger than ``m`` is replaced by
      ``m`` of its members drawn at random without replacement. This is the *biased* estimator of the ML-VAE
      paper (Bouchacourt et al. 2018, sec. 3.2 and supplement "Bias of the Objective"): with the product- or
      mixture-of-normals content posterior the ELBO of a sub-sampled group is not an unbiased estimate of the
      whole-group ELBO. Use it for efficiency when groups are large.

    The groups are then shuffled (if ``shuffle``; otherwise they come in increasing label order, and within
    a label in chunk order) and every ``batch_groups`` consecutive groups form a batch; the last, smaller
    batch is kept unless ``drop_last``. Note that ``shuffle=False`` only fixes the *order* of the groups:
    the random membership of fixed-size or sub-sampled groups still changes from epoch to epoch (use
    :meth:`set_epoch` to replay an epoch).

    Within a batch the groups are numbered ``0..B-1`` in batch order and their rows are concatenated in that
    order (see :class:`GroupBatch`). All randomness comes from a generator seeded from ``(seed, epoch)``; every
    ``iter(sampler)`` starts the next epoch.

    :param labels: 1-D integer labels of the dataset rows (any integer values, not necessarily contiguous).
    :param int batch_groups: number of groups per batch.
    :param int group_size: fixed group size ``k``, or ``None`` for whole-label groups.
    :param int max_group_size: cap ``m`` on the size of whole-label groups (only with ``group_size=None``).
    :param bool shuffle: shuffle the order of the groups every epoch.
    :param bool drop_last: drop the last batch if it has fewer than ``batch_groups`` groups.
    :param int seed: seed of the sampler.
    :raises ValueError: labels not 1-D integer or empty; ``batch_groups``, ``group_size`` or
        ``max_group_size`` < 1; both ``group_size`` and ``max_group_size`` given; ``group_size`` larger than
        every label's number of rows; ``drop_last`` with fewer groups than ``batch_groups``.

    Example::

        sampler = GroupBatchSampler(ds.y, batch_groups=16, group_size=5, seed=0)
        for epoch in range(10):
            for batch in sampler:
                x = ds.x[batch.indices]  # (16 * 5, C, H, W)
                loss = svi.step(x, batch.group_index, batch.num_groups)
    """

    def __init__(
        self,
        labels,
        batch_groups: int,
        group_size: Optional[int] = None,
        max_group_size: Optional[int] = None,
        shuffle: bool = True,
        drop_last: bool = False,
        seed: int = 0,
    ):
        self.labels = _as_labels(labels)
        self.batch_groups = _check_positive_int("batch_groups", batch_groups)
        self.group_size = _check_positive_int("group_size", group_size, allow_none=True)
        self.max_group_size = _check_positive_int("max_group_size", max_group_size, allow_none=True)
        if self.group_size is not None and self.max_group_size is not None:
            raise ValueError(
                "give either group_size (fixed-size groups) or max_group_size (cap on whole-label groups), "
                "not both"
            )
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.seed = int(seed)
        self.epoch = 0

        self.label_values, self._rows = _rows_per_label(self.labels)
        self.label_counts = torch.tensor([r.numel() for r in self._rows], dtype=torch.long)
        if self.group_size is not None:
            k = self.group_size
            if int(self.label_counts.max()) < k:
                raise ValueError(
                    f"group_size={k} is larger than every group: the largest label has only "
                    f"{int(self.label_counts.max())} rows, so no group can be formed"
                )
            self._groups_per_label = (self.label_counts // k).tolist()
        else:
            self._groups_per_label = [1] * len(self._rows)
        self.num_groups_per_epoch = int(sum(self._groups_per_label))
        if self.drop_last and self.num_groups_per_epoch < self.batch_groups:
            raise ValueError(
                f"drop_last=True but an epoch has only {self.num_groups_per_epoch} groups, fewer than "
                f"batch_groups={self.batch_groups}: no batch would be produced"
            )

    @property
    def num_labels(self) -> int:
        """Number of distinct label values."""
        return len(self._rows)

    @property
    def num_rows(self) -> int:
        """Number of dataset rows the sampler indexes (the length of ``labels``)."""
        return int(self.labels.numel())

    def _batch_group_counts(self) -> List[int]:
        g, b = self.num_groups_per_epoch, self.batch_groups
        counts = [b] * (g // b)
        if g % b and not self.drop_last:
            counts.append(g % b)
        return counts

    def __len__(self) -> int:
        """Number of batches per epoch on this rank (exact: the number of groups per epoch does not vary)."""
        return self._local_len(self._batch_group_counts())

    def _epoch_groups(self, gen: torch.Generator):
        """Groups of this epoch: a ``(G, k)`` LongTensor (fixed size) or a list of LongTensors."""
        if self.group_size is not None:
            k = self.group_size
            chunks = []
            for rows, n_groups in zip(self._rows, self._groups_per_label):
                if n_groups == 0:
                    continue
                perm = torch.randperm(rows.numel(), generator=gen)
                chunks.append(rows[perm[: n_groups * k]].view(n_groups, k))
            return torch.cat(chunks, 0)
        m = self.max_group_size
        groups = []
        for rows in self._rows:
            if m is not None and rows.numel() > m:
                rows = rows[torch.randperm(rows.numel(), generator=gen)[:m]]
            groups.append(rows)
        return groups

    def __iter__(self) -> Iterator[GroupBatch]:
        gen = self._next_generator()
        groups = self._epoch_groups(gen)
        g = self.num_groups_per_epoch
        order = torch.randperm(g, generator=gen) if self.shuffle else torch.arange(g)
        return self._shard(self._batches(groups, order))

    def _batches(self, groups, order: torch.Tensor) -> Iterator[GroupBatch]:
        b = self.batch_groups
        for start in range(0, len(self._batch_group_counts()) * b, b):
            sel = order[start : start + b]
            if torch.is_tensor(groups):  # fixed size: (G, k)
                block = groups[sel]
                n, k = block.shape
                yield GroupBatch(block.reshape(-1), torch.arange(n).repeat_interleave(k), n)
            else:
                yield _make_batch([groups[i] for i in sel.tolist()])


# ----------------------------------------------------------------------------------------------------------
# random batches as groups (UG-VAE)
# ----------------------------------------------------------------------------------------------------------


class RandomBatchSampler(_EpochState):
    """UG-VAE's training regime: random mini-batches, each batch being one group.

    Every epoch the rows ``0..num_items-1`` are permuted (if ``shuffle``) and cut into batches of
    ``batch_size``; every ``batches_per_step`` consecutive batches form one step, returned as a
    :class:`GroupBatch` whose ``group_index`` says which batch of the step a row belongs to (UG-VAE gives each
    batch its own global latent). With ``drop_last`` (default) a final batch smaller than ``batch_size`` and a
    final step with fewer than ``batches_per_step`` batches are dropped; otherwise they are kept.

    Reproducibility, ``state_dict`` and ``len`` behave as in :class:`GroupBatchSampler`.

    :param int num_items: number of dataset rows.
    :param int batch_size: rows per batch (group).
    :param int batches_per_step: batches (groups) per step.
    :param bool shuffle: permute the rows every epoch (otherwise consecutive rows form a batch).
    :param bool drop_last: drop incomplete batches and steps.
    :param int seed: seed of the sampler.
    """

    def __init__(
        self,
        num_items: int,
        batch_size: int,
        batches_per_step: int = 1,
        shuffle: bool = True,
        drop_last: bool = True,
        seed: int = 0,
    ):
        self.num_items = _check_positive_int("num_items", num_items)
        self.batch_size = _check_positive_int("batch_size", batch_size)
        self.batches_per_step = _check_positive_int("batches_per_step", batches_per_step)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.seed = int(seed)
        self.epoch = 0
        if self.drop_last and self.num_items < self.batch_size * self.batches_per_step:
            raise ValueError(
                f"drop_last=True but num_items={self.num_items} < batch_size * batches_per_step = "
                f"{self.batch_size * self.batches_per_step}: no step would be produced"
            )

    @property
    def num_batches(self) -> int:
        """Batches (groups) per epoch."""
        n, b = self.num_items, self.batch_size
        return n // b if self.drop_last else -(-n // b)

    @property
    def num_rows(self) -> int:
        """Number of dataset rows the sampler indexes (``num_items``)."""
        return self.num_items

    def _num_steps(self) -> int:
        nb, s = self.num_batches, self.batches_per_step
        return nb // s if self.drop_last else -(-nb // s)

    def _batch_group_counts(self) -> List[int]:
        nb, s = self.num_batches, self.batches_per_step
        return [min(s, nb - i * s) for i in range(self._num_steps())]

    def __len__(self) -> int:
        """Steps per epoch on this rank."""
        return self._local_len(self._batch_group_counts())

    def __iter__(self) -> Iterator[GroupBatch]:
        gen = self._next_generator()
        perm = torch.randperm(self.num_items, generator=gen) if self.shuffle else torch.arange(self.num_items)
        return self._shard(self._steps(perm))

    def _steps(self, perm: torch.Tensor) -> Iterator[GroupBatch]:
        bs, s = self.batch_size, self.batches_per_step
        rows_per_step = bs * s
        n_used = min(self.num_batches * bs, self.num_items)
        for step in range(self._num_steps()):
            start = step * rows_per_step
            idx = perm[start : min(start + rows_per_step, n_used)]
            group_index = torch.arange(idx.numel()) // bs
            yield GroupBatch(idx, group_index, int(group_index[-1]) + 1)


# ----------------------------------------------------------------------------------------------------------
# structured batches (UG-VAE evaluation)
# ----------------------------------------------------------------------------------------------------------


def structured_batches(
    labels,
    families: Dict[str, Sequence[int]],
    batch_size: int,
    batches_per_family: int,
    seed: int = 0,
) -> Tuple[GroupBatch, torch.Tensor]:
    """Batches whose rows all come from one *family* of labels (UG-VAE's structured evaluation).

    For every family (in dict order) ``batches_per_family`` batches are drawn; each batch is one group of
    ``batch_size`` rows sampled without replacement (inside the batch) among the rows whose label is in the
    family. Different batches are drawn independently and may share rows.

    :param labels: 1-D integer labels of the dataset rows.
    :param dict families: family name -> list of allowed label values, e.g. :data:`DIGIT_FAMILIES` or
        :func:`single_label_families`.
    :param int batch_size: rows per batch.
    :param int batches_per_family: batches per family.
    :param int seed: seed (a private generator is used).
    :return: ``(batch, family_ids)``: a :class:`GroupBatch` with ``len(families) * batches_per_family``
        groups (family after family), and ``family_ids``, a LongTensor ``(num_groups,)`` giving the family
        index (dict order) of every group.
    :raises ValueError: bad labels, empty ``families``, ``batch_size`` or ``batches_per_family`` < 1, or a family
        with fewer than ``batch_size`` rows (named).
    """
    labels = _as_labels(labels)
    if not families:
        raise ValueError("families is empty")
    batch_size = _check_positive_int("batch_size", batch_size)
    batches_per_family = _check_positive_int("batches_per_family", batches_per_family)
    gen = _epoch_generator(seed, 0)
    chunks = []
    for name, allowed in families.items():
        allowed_t = torch.as_tensor(list(allowed), dtype=torch.long)
        rows = torch.nonzero(torch.isin(labels, allowed_t), as_tuple=True)[0]
        if rows.numel() < batch_size:
            raise ValueError(
                f"family {name!r} (labels {list(allowed)}) has {rows.numel()} rows, fewer than "
                f"batch_size={batch_size}"
            )
        for _ in range(batches_per_family):
            chunks.append(rows[torch.randperm(rows.numel(), generator=gen)[:batch_size]])
    num_groups = len(chunks)
    batch = GroupBatch(torch.cat(chunks), torch.arange(num_groups).repeat_interleave(batch_size), num_groups)
    family_ids = torch.arange(len(families)).repeat_interleave(batches_per_family)
    return batch, family_ids


def single_label_families(labels) -> Dict[str, List[int]]:
    """``{str(v): [v]}`` for every distinct label value ``v`` (sorted): batches that share one label value."""
    values = torch.unique(_as_labels(labels)).tolist()
    return {str(v): [v] for v in values}


class DomainMixedBatchSampler(_EpochState):
    """Random batches with the same number of rows from every domain (paper sec. 4.2: "a proportion of 50%
    samples from each dataset inside each batch").

    Every epoch each domain's rows are permuted; the largest domain sets the number of batches (each of its rows
    is used once per epoch) and smaller domains are cycled through fresh permutations. Each batch takes
    ``batch_size / num_domains`` rows of every domain; ``batches_per_step`` batches form one
    :class:`~pyro_groupvae.data.GroupBatch` (one group per batch), as :class:`RandomBatchSampler` does.

    :param domains: 1-D integer domain label of every row.
    :param int batch_size: rows per batch, a multiple of the number of domains.
    :param int batches_per_step: batches (groups) per step.
    :param int seed: seed.
    """

    def __init__(self, domains, batch_size, batches_per_step=1, seed=0):
        domains = torch.as_tensor(domains).long().cpu()
        self._num_rows = int(domains.numel())
        self.values = torch.unique(domains)
        self.batch_size = _check_positive_int("batch_size", batch_size)
        self.batches_per_step = _check_positive_int("batches_per_step", batches_per_step)
        if self.batch_size % len(self.values):
            raise ValueError(f"batch_size={batch_size} is not a multiple of the number of domains "
                             f"({len(self.values)})")
        self.per_domain = self.batch_size // len(self.values)
        self.rows = [torch.nonzero(domains == v).flatten() for v in self.values]
        small = min(len(r) for r in self.rows)
        if small < self.per_domain:
            raise ValueError(f"a domain has {small} rows, fewer than batch_size / num_domains = {self.per_domain}")
        self.num_batches = max(len(r) for r in self.rows) // self.per_domain
        if self.num_batches < self.batches_per_step:
            raise ValueError("fewer batches per epoch than batches_per_step")
        self.seed, self.epoch = int(seed), 0

    @property
    def num_rows(self) -> int:
        """Number of dataset rows the sampler indexes (the length of ``domains``)."""
        return self._num_rows

    def _batch_group_counts(self) -> List[int]:
        return [self.batches_per_step] * (self.num_batches // self.batches_per_step)

    def __len__(self):
        return self._local_len(self._batch_group_counts())

    def __iter__(self):
        return self._shard(self._mixed_steps())

    def _mixed_steps(self):
        gen = self._next_generator()
        need = self.num_batches * self.per_domain
        streams = []
        for r in self.rows:
            reps = -(-need // len(r))
            streams.append(torch.cat([r[torch.randperm(len(r), generator=gen)] for _ in range(reps)])[:need])
        blocks = torch.stack([s.view(self.num_batches, self.per_domain) for s in streams], 1)  # (nb, D, per)
        blocks = blocks.reshape(self.num_batches, self.batch_size)
        s = self.batches_per_step
        for step in range(self.num_batches // s):
            idx = blocks[step * s:(step + 1) * s].reshape(-1)
            yield GroupBatch(idx, torch.arange(s).repeat_interleave(self.batch_size), s)
