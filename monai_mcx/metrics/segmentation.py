"""Binary lesion-mask metrics.

Masks are binary (``> 0.5`` is foreground for float input, non-zero for integer/bool input) with any leading shape
``(N, ...)``: ``(N, H, W)``, ``(N, 1, W, H)``, ... one image per leading index. numpy arrays or torch tensors.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = ["dice_per_image", "segmentation_metrics"]


def _flat_binary(x: Any, what: str) -> torch.Tensor:
    t = x.detach().cpu() if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    if t.ndim < 1:
        raise ValueError(f"{what} must have a leading image dimension (N, ...), got a scalar.")
    t = t > 0.5 if t.is_floating_point() else t != 0
    return t.reshape(t.shape[0], 1, int(np.prod(t.shape[1:], dtype=np.int64)))  # (N, 1, L)


def dice_per_image(pred: Any, target: Any) -> np.ndarray:
    """Dice of each image, ``(N,)`` float64, with the empty-aware (SIIM-ACR) rule.

    ``2 |P & T| / (|P| + |T|)``; an image whose truth and prediction are both empty scores 1, one where exactly one
    of them is empty scores 0. This is the rule of :func:`monai.metrics.compute_dice` with ``ignore_empty=False``
    (the tests check the two agree); it is computed here from exact integer counts because ``compute_dice`` returns
    float32 and loops over the images in Python.
    """
    if tuple(np.shape(pred)) != tuple(np.shape(target)):
        raise ValueError(
            f"pred and target must have the same shape, got {tuple(np.shape(pred))} and {tuple(np.shape(target))}."
        )
    p = _flat_binary(pred, "pred")
    t = _flat_binary(target, "target")
    inter = (p & t).sum(dim=(1, 2)).numpy().astype(np.float64)
    denom = (p.sum(dim=(1, 2)) + t.sum(dim=(1, 2))).numpy().astype(np.float64)
    return np.where(denom > 0, 2.0 * inter / np.where(denom > 0, denom, 1.0), 1.0)


def segmentation_metrics(pred: Any, target: Any) -> dict[str, float]:
    """``{"segmentation/dice_positive", "segmentation/dice_empty_aware"}``.

    - ``dice_positive``: mean Dice over the images whose truth is non-empty (``NaN`` if there are none);
    - ``dice_empty_aware``: mean over all images with the SIIM rule of :func:`dice_per_image` (``NaN`` if ``N = 0``).

    ``pred`` and ``target`` are arrays ``(N, ...)`` or two equally long sequences of per-image masks whose
    sizes may differ between images (e.g. masks at each image's original resolution).
    """
    if isinstance(pred, (list, tuple)) or isinstance(target, (list, tuple)):
        if len(pred) != len(target):
            raise ValueError(f"pred and target must hold as many images, got {len(pred)} and {len(target)}.")
        d = np.asarray([dice_per_image(p[None], t[None])[0] for p, t in zip(pred, target)], dtype=np.float64)
        positive = np.asarray([bool(_flat_binary(t[None], "target").any()) for t in target], dtype=bool)
    else:
        d = dice_per_image(pred, target)
        positive = _flat_binary(target, "target").any(dim=2).reshape(-1).numpy()
    return {
        "segmentation/dice_positive": float(d[positive].mean()) if positive.any() else float("nan"),
        "segmentation/dice_empty_aware": float(d.mean()) if d.size else float("nan"),
    }
