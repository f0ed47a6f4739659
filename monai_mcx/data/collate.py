"""Collation for batches whose items carry a variable number of boxes."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.data.utils import list_data_collate

__all__ = ["collate_cxr", "LIST_KEYS"]

#: keys kept as per-item lists instead of being stacked (variable length)
LIST_KEYS = ("boxes", "box_labels")


def collate_cxr(batch: Sequence[dict]) -> dict:
    """Collate a list of transformed items into a batch.

    Fixed-size entries (``image``, ``mask``, ``label``, ``has_*`` flags, ...) are stacked by MONAI's
    ``list_data_collate``; ``boxes`` (``(N_i, 4)`` per item, ``N_i`` varies) stays a list of tensors.
    Items produced by a multi-sample transform (a list per item) are flattened first.
    """
    flat: list[dict] = []
    for item in batch:
        flat.extend(item if isinstance(item, list) else [item])
    lists = {k: [torch.as_tensor(d[k]) for d in flat] for k in LIST_KEYS if k in flat[0]}
    rest = [{k: v for k, v in d.items() if k not in lists} for d in flat]
    out = list_data_collate(rest)
    out.update(lists)
    return out
