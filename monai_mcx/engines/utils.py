"""Batch preparation and small output helpers for the multi-task engines."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from monai_mcx.keys import BatchKeys as K

__all__ = ["prepare_cxr_batch", "TARGET_KEYS", "PASS_THROUGH_KEYS", "loss_items"]

#: batch keys moved to the device and handed to the loss / metrics as ``targets``
TARGET_KEYS = tuple(k.value for k in (K.LABEL, K.HAS_LABEL, K.MASK, K.HAS_MASK, K.BOXES, K.HAS_BOXES, K.POSITIVE))
#: batch keys copied into ``targets`` as plain per-item lists (``patient``: the ids the bootstrap resamples)
PASS_THROUGH_KEYS = (K.PATIENT.value,)


def prepare_cxr_batch(
    batchdata: Mapping[str, object], device: str | torch.device | None = None, non_blocking: bool = False, **kwargs
) -> tuple[torch.Tensor, dict]:
    """Split a collated batch into ``(inputs, targets)`` on ``device``.

    ``inputs`` is the image batch ``(B, 1, W, H)``; ``targets`` holds :data:`TARGET_KEYS` (``boxes`` stays a
    list of ``(N_i, 4)`` tensors) plus ``image`` (the same inputs, for anchor generation) and the
    :data:`PASS_THROUGH_KEYS` (``patient`` ids, a list, not moved to the device). Missing keys are skipped, so an
    inference batch without annotations works too.
    """
    image = batchdata[K.IMAGE]
    inputs = torch.as_tensor(image).to(device=device, non_blocking=non_blocking, **kwargs)
    targets: dict = {K.IMAGE.value: inputs}
    for key in TARGET_KEYS:
        if key not in batchdata:
            continue
        value = batchdata[key]
        if isinstance(value, (list, tuple)):
            targets[key] = [torch.as_tensor(v).to(device=device, non_blocking=non_blocking) for v in value]
        else:
            targets[key] = torch.as_tensor(value).to(device=device, non_blocking=non_blocking)
    for key in PASS_THROUGH_KEYS:  # non-tensor values (ids): handed on as they are, never moved to the device
        if key in batchdata:
            targets[key] = list(batchdata[key])
    return inputs, targets


def loss_items(output: Mapping[str, object]) -> dict[str, float]:
    """Scalars for logging from a trainer's ``engine.state.output``: ``loss`` and ``loss/<task>``."""
    items = {"loss": float(output["loss"])}
    for task, value in dict(output.get("losses", {})).items():
        items[f"loss/{task}"] = float(value)
    return items
