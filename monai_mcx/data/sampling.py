"""Weighted, resumable sampling over a mix of data sets of very different sizes.

Joint training on Kermany (~4000 class-labelled images), RSNA (~450 with boxes) and covid_lesions (~45 with
lesion masks) with plain shuffling gives the dense heads a lesion image in one batch out of ten: the small
sets drown. :class:`SourceWeightedSampler` draws a fixed number of samples per epoch with a chosen share
per ``source`` (with replacement), so an "epoch" is a fixed budget of iterations whatever the data sizes.

On *disjoint* data (each image labelled for one task) a mixed batch holds every task, so every head and the
anchor matching run on every batch. :class:`TaskGroupedSampler` orders an epoch in batches whose items all carry
the same annotations, so that ``MultiTaskTrainer(skip_unlabelled_heads=True)`` runs only the heads a batch can
train (the trade-off: consecutive steps follow one task's gradient instead of a mix).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Hashable, Mapping
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from monai_mcx.keys import DatalistKeys, Task

__all__ = ["SourceWeightedSampler", "TaskGroupedSampler", "source_weights", "annotation_signature"]


def _sources(dataset: Any) -> list[str]:
    data = getattr(dataset, "data", dataset)
    return [str(it.get(DatalistKeys.SOURCE, "unknown")) if isinstance(it, Mapping) else "unknown" for it in data]


def source_weights(sources: list[str], fractions: Mapping[str, float] | None) -> torch.Tensor:
    """Per-item weights so that source ``s`` gets ``fractions[s] / sum(fractions)`` of the draws.

    Sources not in ``fractions`` get weight 0 (never drawn); ``fractions=None`` gives every source an equal
    share. A listed source without items is ignored (its share goes to the others).

    Raises:
        ValueError: a negative fraction, or nothing left to draw from.
    """
    counts = Counter(sources)
    if fractions is None:
        fractions = {s: 1.0 for s in counts}
    if any(float(v) < 0 for v in fractions.values()):
        raise ValueError(f"source fractions must be >= 0, got {dict(fractions)}")
    w = torch.tensor([float(fractions.get(s, 0.0)) / counts[s] for s in sources], dtype=torch.float64)
    if not len(w) or float(w.sum()) <= 0:
        raise ValueError(f"no item can be drawn: sources {dict(counts)}, fractions {dict(fractions)}")
    return w


class _EpochSampler(Sampler):
    """Shared state of the resumable samplers here: ``seed``, ``epoch`` (``set_epoch``, called by
    :class:`~monai_mcx.engines.MultiTaskTrainer` at every epoch start), a skip for the next pass and this process'
    ``rank`` / ``world`` size (0 / 1 without a process group)."""

    def _init_epochs(self, seed: int, num_replicas: int | None = None, rank: int | None = None) -> None:
        self.seed = int(seed)
        self.epoch = 0
        self._skip = 0
        initialized = dist.is_available() and dist.is_initialized()
        self.world = int(num_replicas) if num_replicas is not None else dist.get_world_size() if initialized else 1
        self.rank = int(rank) if rank is not None else dist.get_rank() if initialized else 0
        if self.world < 1 or not 0 <= self.rank < self.world:
            raise ValueError(f"rank must be in [0, {self.world}) for num_replicas={self.world}, got rank={self.rank}")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)


class SourceWeightedSampler(_EpochSampler):
    """Draw ``num_samples`` items per epoch with replacement, ``fractions[source]`` of them from each source.

    The draw of an epoch depends only on ``seed + epoch`` (``set_epoch`` is called by MONAI's engines at every
    ``EPOCH_STARTED``), and :meth:`skip_next` skips the first ``n`` samples of the next pass, so
    :class:`~monai_mcx.engines.resume.LastCheckpoint` resumes a run killed mid-epoch on exactly the
    batches it had not seen (like :class:`~monai_mcx.engines.resume.ResumableSampler`). Under a process
    group each rank takes every ``world_size``-th draw of the same sequence; as torch's ``DistributedSampler``,
    the sequence is first padded with its own first draws to a multiple of ``world_size``, so that every rank gets
    ``ceil(num_samples / world_size)`` samples and the same number of batches (ranks with fewer batches would
    leave the others waiting in a collective until the process group times out).

    Args:
        dataset: a dataset whose ``data`` (MONAI ``Dataset``/``CacheDataset``) or items are dicts with ``source``.
        fractions: ``{source: share}`` (normalised; unlisted sources are not drawn); ``None`` = equal shares.
        num_samples: draws per epoch over all ranks before padding (``None`` = ``len(dataset)``).
        seed: base seed.
        num_replicas: number of ranks (default: the process group's world size, 1 without one).
        rank: this process' rank (default: the process group's rank, 0 without one).

    Raises:
        ValueError: ``num_samples <= 0``, ``rank`` not in ``[0, num_replicas)``, or nothing to draw from.
    """

    def __init__(
        self,
        dataset: Any,
        fractions: Mapping[str, float] | None = None,
        num_samples: int | None = None,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
    ) -> None:
        self.sources = _sources(dataset)
        self.weights = source_weights(self.sources, fractions)
        self.total = int(num_samples) if num_samples is not None else len(self.sources)
        if self.total <= 0:
            raise ValueError(f"num_samples must be > 0, got {num_samples}")
        self._init_epochs(seed, num_replicas, rank)

    def skip_next(self, num_samples: int) -> None:
        self._skip = max(0, int(num_samples))

    def indices(self, epoch: int | None = None) -> list[int]:
        """This rank's draws for ``epoch`` (default: the current one), ``len(self)`` of them."""
        g = torch.Generator().manual_seed(self.seed + (self.epoch if epoch is None else int(epoch)))
        draws = torch.multinomial(self.weights, self.total, replacement=True, generator=g).tolist()
        padded = (draws * -(-len(self) * self.world // self.total))[: len(self) * self.world]
        return padded[self.rank :: self.world]

    def __len__(self) -> int:
        return -(-self.total // self.world)  # every rank the same number (DistributedSampler's padding)

    def __iter__(self):
        idx = self.indices()
        skip, self._skip = self._skip, 0
        return iter(idx[skip:])


def annotation_signature(item: Mapping) -> tuple[str, ...]:
    """The tasks a datalist item is annotated for: ``classification`` (``label`` known), ``segmentation``
    (``mask`` known) and ``localization`` (``boxes`` known, an empty list included); ``null`` is unknown."""
    keys = (
        (DatalistKeys.LABEL.value, Task.CLASSIFICATION.value),
        (DatalistKeys.MASK.value, Task.SEGMENTATION.value),
        (DatalistKeys.BOXES.value, Task.LOCALIZATION.value),
    )
    return tuple(task for key, task in keys if item.get(key) is not None)


class TaskGroupedSampler(_EpochSampler):
    """A batch sampler: every item once per epoch, in batches whose items share one :func:`annotation_signature`.

    Items are grouped by the annotations they carry; each group is shuffled (``seed + epoch``) and cut into
    batches of ``batch_size`` (a group's last batch may be smaller); the batch order is then shuffled. Use it as
    the training ``DataLoader``'s ``batch_sampler`` (``train.json --task_grouped_batches true`` does). Like
    :class:`~monai_mcx.engines.resume.ResumableSampler`, ``set_epoch`` (called by
    :class:`~monai_mcx.engines.MultiTaskTrainer` at every epoch start) fixes the order and
    :meth:`skip_next_batches` lets :class:`~monai_mcx.engines.resume.LastCheckpoint` resume mid-epoch on the
    batches not yet seen. Under a process group, rank ``r`` takes batches ``r, r + world, ...`` (every rank gets
    the same number of batches; the first ones are repeated where needed).

    Args:
        dataset: a dataset whose ``data`` (MONAI ``Dataset``/``CacheDataset``) or items are datalist dicts.
        batch_size: items per batch.
        shuffle: shuffle within groups and the order of the batches (False: datalist order, groups in order of
            first appearance).
        seed: base seed.
        signature: item -> group key (default :func:`annotation_signature`, for datalist items; a transformed
            item would be grouped by its ``has_*`` flags instead).
    """

    def __init__(
        self,
        dataset: Any,
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        signature: Callable[[Mapping], Hashable] | None = None,
    ) -> None:
        data = getattr(dataset, "data", dataset)
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self._init_epochs(seed)
        key = signature or annotation_signature
        groups: dict[Hashable, list[int]] = defaultdict(list)
        for i, it in enumerate(data):
            groups[key(it) if isinstance(it, Mapping) else ()].append(i)
        if not groups:
            raise ValueError("TaskGroupedSampler: the dataset is empty.")
        self.groups = dict(groups)

    def skip_next_batches(self, num_batches: int) -> None:
        """Skip the first ``num_batches`` batches of the next pass (a run resumed mid-epoch)."""
        self._skip = max(0, int(num_batches))

    def batches(self, epoch: int | None = None) -> list[list[int]]:
        """This rank's batches (lists of dataset indices) for ``epoch`` (default: the current one)."""
        rng = np.random.default_rng(self.seed + (self.epoch if epoch is None else int(epoch)))
        out: list[list[int]] = []
        for idx in self.groups.values():
            order = rng.permutation(idx).tolist() if self.shuffle else list(idx)
            out += [[int(i) for i in order[s : s + self.batch_size]] for s in range(0, len(order), self.batch_size)]
        if self.shuffle:
            out = [out[i] for i in rng.permutation(len(out))]
        per_rank = -(-len(out) // self.world)
        out = (out * self.world)[: per_rank * self.world]  # every rank the same number of batches
        return out[self.rank :: self.world]

    def __len__(self) -> int:
        n = sum(-(-len(g) // self.batch_size) for g in self.groups.values())
        return -(-n // self.world)

    def __iter__(self):
        batches = self.batches()
        skip, self._skip = self._skip, 0
        return iter(batches[skip:])
