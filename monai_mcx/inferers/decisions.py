"""The deployed decisions on post-processed outputs: the gate rule, the box operating point, the lung field.

Shapes: ``class_probs`` ``(B, K)``; one image's detections ``{"boxes": (M, 4) xyxy, "scores": (M,), "labels": (M,)}``
in the network input's pixels (x along spatial dim 0, MONAI ``StandardMode``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from monai_mcx.keys import DetKeys

__all__ = [
    "GATE_RULE",
    "GATE_RULE_TEXT",
    "gate_decision",
    "select_detections",
    "boxes_in_field",
    "keep_largest_components",
]

#: name of the gate rule, as saved in the model description (``monai_mcx.model.GATE_RULES``)
GATE_RULE = "any_class_at_threshold"
#: the gate rule in words (report.md, README)
GATE_RULE_TEXT = "an image is positive when some class reaches its own threshold (any_k p_k >= t_k)"


def gate_decision(class_probs: Tensor | np.ndarray | None, class_thresholds: Sequence[float]) -> Tensor | None:
    """The gate: ``any_k class_probs[:, k] >= class_thresholds[k]``.

    Args:
        class_probs: ``(B, K)`` probabilities, or None (no classifier: the caller lets everything through).
        class_thresholds: ``K`` per-class thresholds.

    Returns:
        ``(B,)`` bool tensor (on ``class_probs``' device), or None when ``class_probs`` is None.
    """
    if class_probs is None:
        return None
    probs = torch.as_tensor(class_probs)
    if probs.ndim != 2:
        raise ValueError(f"class_probs must be (B, K), got {tuple(probs.shape)}.")
    thr = torch.as_tensor([float(t) for t in class_thresholds], dtype=probs.dtype, device=probs.device)
    if thr.numel() != probs.shape[1]:
        raise ValueError(f"{thr.numel()} class thresholds for {probs.shape[1]} classes.")
    return (probs >= thr[None]).any(dim=1)


def select_detections(det: Mapping[str, Tensor], score_threshold: float, keep: bool = True) -> dict[str, Tensor]:
    """The boxes of one image with ``score >= score_threshold`` (all of them dropped when ``keep`` is False).

    Args:
        det: ``{"boxes": (M, 4), "scores": (M,), "labels": (M,)}`` (``labels`` optional).

    Returns:
        a dict of the same keys with the selected rows, order kept (decreasing score).
    """
    scores = torch.as_tensor(det[DetKeys.SCORES]).reshape(-1)
    sel = scores >= float(score_threshold)
    if not keep:
        sel = torch.zeros_like(sel)
    out = {
        DetKeys.BOXES.value: torch.as_tensor(det[DetKeys.BOXES]).reshape(-1, 4)[sel],
        DetKeys.SCORES.value: scores[sel],
    }
    if DetKeys.LABELS in det:
        out[DetKeys.LABELS.value] = torch.as_tensor(det[DetKeys.LABELS]).reshape(-1)[sel]
    return out


def boxes_in_field(det: Mapping[str, Tensor], field: Tensor) -> dict[str, Tensor]:
    """The detections whose box centre lies inside ``field``.

    Args:
        det: one image's detections (``boxes`` ``(M, 4)`` xyxy network pixels, x along dim 0; ``scores``, ``labels``).
        field: ``(W, H)`` bool, where boxes may be (e.g. the dilated lung field).
    """
    boxes = torch.as_tensor(det[DetKeys.BOXES])
    if boxes.numel() == 0:
        return dict(det)
    w, h = int(field.shape[0]), int(field.shape[1])
    cx = ((boxes[:, 0] + boxes[:, 2]) / 2).floor().long().clamp(0, w - 1)
    cy = ((boxes[:, 1] + boxes[:, 3]) / 2).floor().long().clamp(0, h - 1)
    keep = field.to(boxes.device)[cx, cy]
    return {k: (v[keep] if isinstance(v, Tensor) and v.shape[:1] == keep.shape else v) for k, v in det.items()}


def keep_largest_components(mask: Tensor, k: int = 2) -> Tensor:
    """The ``k`` largest 8-connected components of each image's mask (the two lungs of a lung-field mask, without
    the islands a segmentation head leaves over the shoulders or the abdomen).

    Args:
        mask: ``(B, 1, W, H)`` bool.
        k: components kept per image (ties: the first found); ``k <= 0`` keeps everything.

    Returns:
        ``(B, 1, W, H)`` bool on ``mask``'s device.
    """
    from scipy import ndimage

    if k <= 0:
        return mask
    arr = mask.detach().cpu().numpy().astype(bool)
    out = np.zeros_like(arr)
    for i in range(arr.shape[0]):
        labels, n = ndimage.label(arr[i, 0], structure=np.ones((3, 3), dtype=int))
        if n <= k:
            out[i, 0] = arr[i, 0]
            continue
        sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
        keep = np.argsort(-sizes, kind="stable")[:k] + 1
        out[i, 0] = np.isin(labels, keep)
    return torch.as_tensor(out, device=mask.device)
