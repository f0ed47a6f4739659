"""One image of a post-processed batch mapped back to its ORIGINAL pixels: the only place that resizes back."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from monai_mcx.keys import DatalistKeys, DetKeys, OriginalKeys, PredKeys

__all__ = ["to_original", "probs_to_original", "scale_boxes_to_original"]


def _np(x: Any, dtype=np.float64) -> np.ndarray:
    if isinstance(x, Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def probs_to_original(probs: Tensor | np.ndarray, original_size: Sequence[int]) -> Tensor:
    """Maps of the network geometry resized to the ORIGINAL image: the one resampling rule of masks and saliency.

    Args:
        probs: ``(..., w, h)`` probabilities (or saliency maps) at the network input size: ``(w, h)``,
            ``(1, w, h)``, ``(B, C, w, h)``, ...
        original_size: ``(W, H)`` of the original image (x first, MONAI order).

    Returns:
        ``(..., W, H)`` float32 CPU tensor (same leading dims), bilinear (``align_corners=False``); threshold it
        for the mask.
    """
    seg = torch.as_tensor(probs).detach().float().cpu()
    lead = seg.shape[:-2]
    size = [int(v) for v in original_size]
    out = F.interpolate(seg.reshape(-1, 1, *seg.shape[-2:]), size=size, mode="bilinear", align_corners=False)
    return out.reshape(*lead, *size)


def scale_boxes_to_original(boxes: Any, input_size: Sequence[int], original_size: Sequence[int]) -> np.ndarray:
    """``xyxy`` boxes in the network input's pixels -> the original image's pixels (float64, ``(M, 4)``).

    Each axis is scaled by ``original / input`` (the inverse of the bundle's resize) and clipped to
    ``[0, W] x [0, H]``; ``input_size`` and ``original_size`` are ``(W, H)``.
    """
    orig = [float(v) for v in original_size]
    scale = np.array([o / float(s) for o, s in zip(orig, input_size)] * 2)
    return np.clip(_np(boxes).reshape(-1, 4) * scale, 0, np.array(orig * 2, dtype=np.float64))


def to_original(
    pred: Mapping[str, Any],
    index: int,
    original_size: Sequence[int],
    seg_threshold: float = 0.5,
    lung_threshold: float = 0.5,
) -> dict[str, Any]:
    """One image of a post-processed batch, in the ORIGINAL image's pixels: the only place that maps back.

    The mask is the seg probability map resized (bilinear, ``align_corners=False``) to the original ``(W, H)``,
    thresholded at ``seg_threshold`` and gated; boxes are scaled by ``original / input`` per axis and clipped to
    ``[0, W] x [0, H]``.

    Args:
        pred: the output of :class:`MultiCheXNetPostprocessor` for a batch (network geometry).
        index: the image's index in the batch.
        original_size: ``(W, H)`` of the original image (x first, MONAI order).
        seg_threshold: the mask threshold (the post-processor's).
        lung_threshold: the lung mask threshold (the post-processor's); the lesion mask is cut to ``lung_field``
            (resized the same way) when the prediction has one.

    Returns:
        ``size_wh`` ``[W, H]``; ``class_probs`` ``(K,)`` numpy or None (calibrated when the post-processor is);
        ``gate`` bool; ``mask`` /
        ``mask_ungated`` ``(W, H)`` bool numpy (None without a segmentation head); ``boxes`` ``(M, 4)`` float64
        ``xyxy`` original pixels with ``scores`` ``(M,)`` and ``labels`` ``(M,)`` (gated, operating point),
        ``boxes_ungated`` / ``scores_ungated`` / ``labels_ungated`` (operating point, ungated); empty arrays
        without a localization head (``has_boxes`` False); ``lung_mask`` ``(W, H)`` bool or None; ``population``
        ``{"population", "reason"}`` (:meth:`MultiCheXNetPostprocessor.point_record` adds its thresholds).
    """
    orig = [int(v) for v in original_size]
    if len(orig) != 2 or min(orig) <= 0:
        raise ValueError(f"original_size must be a positive (W, H), got {original_size}.")
    out: dict[str, Any] = {OriginalKeys.SIZE_WH.value: orig}
    probs = pred.get(PredKeys.CLASS_PROBS)
    out[OriginalKeys.CLASS_PROBS.value] = None if probs is None else _np(probs[index]).reshape(-1)
    gate = pred.get(PredKeys.GATE)
    positive = True if gate is None else bool(gate[index])
    out[OriginalKeys.GATE.value] = positive
    out[OriginalKeys.MASK.value] = out[OriginalKeys.MASK_UNGATED.value] = None
    in_size = None
    pops = pred.get(PredKeys.POPULATION)
    out[OriginalKeys.POPULATION.value] = (
        dict(pops[index]) if pops is not None else {DatalistKeys.POPULATION.value: None, "reason": None}
    )
    out[OriginalKeys.LUNG_MASK.value] = None
    field = None
    if PredKeys.LUNG_PROBS in pred:
        lung = pred[PredKeys.LUNG_PROBS][index]
        in_size = [int(s) for s in lung.shape[-2:]]
        lungs = probs_to_original(lung, orig)[0] >= float(lung_threshold)
        if PredKeys.LUNG_MASK in pred:  # only where the kept components are (no island the post-processor removed)
            lungs = lungs & (probs_to_original(pred[PredKeys.LUNG_MASK][index].float(), orig)[0] > 0)
        out[OriginalKeys.LUNG_MASK.value] = lungs.numpy()
        if PredKeys.LUNG_FIELD in pred:
            field = (probs_to_original(pred[PredKeys.LUNG_FIELD][index].float(), orig)[0] >= 0.5).numpy()
    if PredKeys.SEG_PROBS in pred:
        seg = pred[PredKeys.SEG_PROBS][index]  # (1, w, h)
        in_size = [int(s) for s in seg.shape[-2:]]
        mask = (probs_to_original(seg, orig)[0] >= float(seg_threshold)).numpy()
        if field is not None:
            mask = mask & field
        out[OriginalKeys.MASK_UNGATED.value] = mask
        out[OriginalKeys.MASK.value] = mask & positive
    out[OriginalKeys.HAS_BOXES.value] = PredKeys.DETECTIONS_OP in pred
    for names, key in (
        ((OriginalKeys.BOXES, OriginalKeys.SCORES, OriginalKeys.LABELS), PredKeys.DETECTIONS_GATED),
        (
            (OriginalKeys.BOXES_UNGATED, OriginalKeys.SCORES_UNGATED, OriginalKeys.LABELS_UNGATED),
            PredKeys.DETECTIONS_OP,
        ),
    ):
        boxes, scores, labels = np.zeros((0, 4)), np.zeros((0,)), np.zeros((0,), dtype=np.int64)
        if key in pred:
            det = pred[key][index]
            size = pred.get(PredKeys.INPUT_SIZE) or in_size
            if size is None:
                raise ValueError("to_original needs the network input size (the post-processor records it).")
            boxes = scale_boxes_to_original(det[DetKeys.BOXES], size, orig)
            scores = _np(det[DetKeys.SCORES]).reshape(-1)
            labels = _np(det.get(DetKeys.LABELS, np.zeros(len(scores))), dtype=np.int64).reshape(-1)
        out.update(zip([n.value for n in names], (boxes, scores, labels)))
    return out
