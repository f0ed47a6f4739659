"""Collation for batches whose items carry a variable number of boxes."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from monai.data.utils import list_data_collate

from monai_mcx.keys import BatchKeys, DatalistKeys

__all__ = ["collate_cxr", "LIST_KEYS", "HOST_KEYS"]

#: keys kept as per-item lists instead of being stacked (variable length)
LIST_KEYS = (BatchKeys.BOXES.value, BatchKeys.BOX_LABELS.value)
#: keys kept as per-item lists of the values as they are (numpy arrays of varying size, ``None`` where an item
#: lacks the key), never converted or moved to the device: the overlay background of
#: :class:`monai_mcx.transforms.KeepOverlayImaged`, and the datalist's ``source`` and ``population`` (strings or None:
#: an inference input from a folder has neither)
HOST_KEYS = (BatchKeys.OVERLAY_IMAGE.value, DatalistKeys.SOURCE.value, DatalistKeys.POPULATION.value)


def collate_cxr(batch: Sequence[dict]) -> dict:
    """Collate a list of transformed items into a batch.

    Fixed-size entries (``image``, ``mask``, ``label``, ``has_*`` flags, ...) are stacked by MONAI's
    ``list_data_collate``; ``boxes`` (``(N_i, 4)`` per item, ``N_i`` varies) stays a list of tensors.
    Items produced by a multi-sample transform (a list per item) are flattened first.

    When ``image`` is a MetaTensor, the batch also gets ``image_path`` (list of source file names) and
    ``original_size`` (list of the loaded images' ``(W, H)`` before any resizing), so that predictions can
    be mapped back to the original pixels.
    """
    flat: list[dict] = []
    for item in batch:
        flat.extend(item if isinstance(item, list) else [item])
    lists = {k: [torch.as_tensor(d[k]) for d in flat] for k in LIST_KEYS if k in flat[0]}
    lists.update({k: [d.get(k) for d in flat] for k in HOST_KEYS if any(k in d for d in flat)})
    rest = [{k: v for k, v in d.items() if k not in lists} for d in flat]
    out = list_data_collate(rest)
    out.update(lists)
    metas = [getattr(d.get(BatchKeys.IMAGE), "meta", None) for d in flat]
    if all(m is not None for m in metas):
        out[BatchKeys.IMAGE_PATH.value] = [str(m.get("filename_or_obj", "")) for m in metas]
        out[BatchKeys.ORIGINAL_SIZE.value] = [
            [int(v) for v in np.asarray(m.get("spatial_shape", []))[:2]] for m in metas
        ]
    return out
