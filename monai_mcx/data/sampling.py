"""Weighted, resumable sampling over a mix of data sets of very different sizes.

Joint training on Kermany (~4000 class-labelled images), RSNA (~450 with boxes) and covid_lesions (~45 with
lesion masks) with plain shuffling gives the dense heads a lesion image in one batch out of ten: the small
sets drown. :class:`SourceWeightedSampler` draws a fixed number of samples per epoch with a chosen share
per ``source`` (with replacement), so an "epoch" is a fixed budget of iterations whatever the data sizes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

__all__ = ["SourceWeightedSampler", "source_weights"]


def _sources(dataset: Any) -> list[str]:
    data = getattr(dataset, "data", dataset)
    return [str(it.get("source", "unknown")) if isinstance(it, Mapping) else "unknown" for it in data]


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


class SourceWeightedSampler(Sampler):
    """Draw ``num_samples`` items per epoch with replacement, ``fractions[source]`` of them from each source.

    The draw of an epoch depends only on ``seed + epoch`` (``set_epoch`` is called by MONAI's engines at every
    ``EPOCH_STARTED``), and :meth:`skip_next` skips the first ``n`` samples of the next pass, so
    :class:`~monai_mcx.engines.checkpoint.LastCheckpoint` resumes a run killed mid-epoch on exactly the
    batches it had not seen (like :class:`~monai_mcx.engines.checkpoint.ResumableSampler`). Under a process
    group each rank takes every ``world_size``-th draw of the same sequence.

    Args:
        dataset: a dataset whose ``data`` (MONAI ``Dataset``/``CacheDataset``) or items are dicts with ``source``.
        fractions: ``{source: share}`` (normalised; unlisted sources are not drawn); ``None`` = equal shares.
        num_samples: draws per epoch over all ranks (``None`` = ``len(dataset)``).
        seed: base seed.
    """

    def __init__(
        self, dataset: Any, fractions: Mapping[str, float] | None = None, num_samples: int | None = None, seed: int = 0
    ) -> None:
        self.sources = _sources(dataset)
        self.weights = source_weights(self.sources, fractions)
        self.total = int(num_samples) if num_samples is not None else len(self.sources)
        if self.total <= 0:
            raise ValueError(f"num_samples must be > 0, got {num_samples}")
        self.seed = int(seed)
        self.epoch = 0
        self._skip = 0
        initialized = dist.is_available() and dist.is_initialized()
        self.rank = dist.get_rank() if initialized else 0
        self.world = dist.get_world_size() if initialized else 1

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def skip_next(self, num_samples: int) -> None:
        self._skip = max(0, int(num_samples))

    def indices(self, epoch: int | None = None) -> list[int]:
        """This rank's draws for ``epoch`` (default: the current one)."""
        g = torch.Generator().manual_seed(self.seed + (self.epoch if epoch is None else int(epoch)))
        draws = torch.multinomial(self.weights, self.total, replacement=True, generator=g).tolist()
        return draws[self.rank :: self.world]

    def __len__(self) -> int:
        return len(range(self.rank, self.total, self.world))

    def __iter__(self):
        idx = self.indices()
        skip, self._skip = self._skip, 0
        return iter(idx[skip:])
