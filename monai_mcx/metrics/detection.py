"""Lesion-box metrics: COCO-style AP, mAP@[0.5:0.95] and the RSNA Pneumonia competition score.

Inputs, for a data set of ``N`` images:

- ``preds``: list of ``N`` dicts with ``"boxes"`` ``(M_i, 4)`` and ``"scores"`` ``(M_i,)`` (other keys such as
  ``"labels"`` are ignored: there is one lesion class);
- ``truths``: list of ``N`` ground-truth boxes ``(G_i, 4)`` (or dicts with a ``"boxes"`` key).

Boxes are ``[x1, y1, x2, y2]`` in pixel-edge coordinates (MONAI ``StandardMode``, ``xyxy``; see
``docs/CONTRACTS.md``); numpy arrays or torch tensors; an image without boxes has shape ``(0, 4)``.

Conventions shared by the functions here:

- IoU is computed in float64 (:func:`box_iou_float64`). MONAI's :func:`monai.data.box_utils.box_iou` computes in
  float32 and adds ``eps`` to the union; with integer pixel boxes IoUs that are exactly a threshold (0.5, 0.7, ...)
  are common, and the float32 rounding then flips the match decision relative to pycocotools (double precision,
  no eps) and relative to the strict ``IoU > t`` rule of the RSNA score. Away from such ties both agree to ~1e-7.
- A data set with no ground-truth box at all has no defined AP: the AP functions return ``0.0`` when there are
  predictions (all of them are false positives) and ``NaN`` when there are none. pycocotools returns ``-1`` in both
  cases.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from monai_mcx.keys import DetKeys

__all__ = [
    "box_iou_float64",
    "box_quality",
    "average_precision",
    "coco_map",
    "rsna_metric",
    "detection_metrics",
    "box_sensitivity",
    "boxes_per_negative_image",
    "operating_point_metrics",
    "choose_box_threshold",
    "NO_BOX_THRESHOLD",
    "RSNA_THRESHOLDS",
]

RSNA_THRESHOLDS = np.arange(0.40, 0.751, 0.05)
#: the box threshold chosen when no box helps: 1.0 (scores are sigmoid probabilities, so only a saturated score of
#: exactly 1.0 passes; kept inside [0, 1] so that it is a valid model-description value)
NO_BOX_THRESHOLD = 1.0
_RECALL_THRESHOLDS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)
_COCO_IOUS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)


def _to_numpy(x: Any, dtype=np.float64) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def _as_boxes(x: Any, what: str) -> np.ndarray:
    if isinstance(x, Mapping):
        x = x[DetKeys.BOXES]
    b = _to_numpy(x)
    if b.size == 0:
        return np.zeros((0, 4), dtype=np.float64)
    if b.ndim != 2 or b.shape[1] != 4:
        raise ValueError(f"{what}: boxes must have shape (M, 4) [x1, y1, x2, y2], got {tuple(b.shape)}.")
    return b


def _prepare(preds: Sequence[Mapping[str, Any]], truths: Sequence[Any]):
    """Validate and convert to lists of float64 numpy arrays: (pred_boxes, pred_scores, gt_boxes)."""
    if len(preds) != len(truths):
        raise ValueError(f"preds and truths must list the same images, got {len(preds)} and {len(truths)}.")
    pboxes, pscores, gboxes = [], [], []
    for i, (p, t) in enumerate(zip(preds, truths)):
        b = _as_boxes(p[DetKeys.BOXES], f"preds[{i}]")
        s = _to_numpy(p[DetKeys.SCORES]).reshape(-1)
        if len(s) != len(b):
            raise ValueError(f"preds[{i}]: {len(b)} boxes but {len(s)} scores.")
        pboxes.append(b)
        pscores.append(s)
        gboxes.append(_as_boxes(t, f"truths[{i}]"))
    return pboxes, pscores, gboxes


def box_iou_float64(boxes1: Any, boxes2: Any) -> np.ndarray:
    """IoU matrix ``(N, M)`` of two sets of ``StandardMode`` boxes (``[x1, y1, x2, y2]``), computed in float64.

    Same formula as :func:`monai.data.box_utils.box_iou` (continuous coordinates, no ``+1``), but in double precision
    and without the ``eps`` in the denominator, so that IoUs which are exactly a threshold compare as pycocotools
    compares them. A pair whose union is zero (two degenerate boxes) has IoU 0. Accepts numpy or torch; returns numpy.
    """
    a = _as_boxes(boxes1, "boxes1")
    b = _as_boxes(boxes2, "boxes2")
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)
    return iou


def box_quality(pred_boxes: Any, true_boxes: Any) -> float:
    """Per-image box quality (the evaluation report ranks its gallery by it): greedy one-to-one matching by IoU
    (highest first), ``sum(matched IoU) / max(#pred, #true)``; so misses and false positives both lower it.

    Args:
        pred_boxes: ``(M, 4)`` predicted boxes ``[x1, y1, x2, y2]``.
        true_boxes: ``(G, 4)`` true boxes.

    Returns:
        A value in [0, 1]; 1 when both are empty, 0 when exactly one is.
    """
    pb = _to_numpy(pred_boxes).reshape(-1, 4)
    tb = _to_numpy(true_boxes).reshape(-1, 4)
    if len(pb) == 0 and len(tb) == 0:
        return 1.0
    if len(pb) == 0 or len(tb) == 0:
        return 0.0
    iou = box_iou_float64(pb, tb)
    total = 0.0
    while iou.size and iou.max() > 0:
        i, j = np.unravel_index(int(np.argmax(iou)), iou.shape)
        total += float(iou[i, j])
        iou[i, :] = -1
        iou[:, j] = -1
    return total / max(len(pb), len(tb))


def _coco_match_image(pb: np.ndarray, ps: np.ndarray, gb: np.ndarray, iou_thresholds: np.ndarray, max_det: int):
    """pycocotools' ``evaluateImg`` for one image and one class (no ignored boxes, area range 'all').

    Returns (sorted scores (D,), dt_matched (T, D) bool)."""
    order = np.argsort(-ps, kind="mergesort")[:max_det]
    pb, ps = pb[order], ps[order]
    n_t, n_d, n_g = len(iou_thresholds), len(pb), len(gb)
    dt_m = np.zeros((n_t, n_d), dtype=bool)
    if n_d == 0 or n_g == 0:
        return ps, dt_m
    ious = box_iou_float64(pb, gb)
    for ti, t in enumerate(iou_thresholds):
        gt_m = np.zeros(n_g, dtype=bool)
        for d in range(n_d):
            best = min(t, 1 - 1e-10)
            m = -1
            for g in range(n_g):
                if gt_m[g] or ious[d, g] < best:
                    continue
                best, m = ious[d, g], g
            if m >= 0:
                gt_m[m] = True
                dt_m[ti, d] = True
    return ps, dt_m


def _coco_ap_from_matches(scores: list[np.ndarray], matches: list[np.ndarray], n_gt: int, n_t: int) -> np.ndarray:
    """pycocotools' ``accumulate`` (one class, one area range, one maxDet): AP per IoU threshold, shape (T,)."""
    all_scores = np.concatenate(scores) if scores else np.zeros(0)
    if n_gt == 0:
        return np.full(n_t, 0.0 if len(all_scores) else np.nan)
    order = np.argsort(-all_scores, kind="mergesort")
    dtm = np.concatenate(matches, axis=1)[:, order] if matches else np.zeros((n_t, 0), dtype=bool)
    tp_sum = np.cumsum(dtm, axis=1).astype(np.float64)
    fp_sum = np.cumsum(~dtm, axis=1).astype(np.float64)
    ap = np.zeros(n_t)
    for ti in range(n_t):
        tp, fp = tp_sum[ti], fp_sum[ti]
        rc = tp / n_gt
        pr = (tp / (fp + tp + np.spacing(1))).tolist()
        for i in range(len(pr) - 1, 0, -1):  # precision envelope
            if pr[i] > pr[i - 1]:
                pr[i - 1] = pr[i]
        inds = np.searchsorted(rc, _RECALL_THRESHOLDS, side="left")
        q = np.zeros(len(_RECALL_THRESHOLDS))
        for ri, pi in enumerate(inds):  # recall levels never reached keep precision 0 (as pycocotools)
            if pi >= len(pr):
                break
            q[ri] = pr[pi]
        ap[ti] = q.mean()
    return ap


def _coco_ap(preds, truths, iou_thresholds: Sequence[float], max_detections: int) -> np.ndarray:
    pboxes, pscores, gboxes = _prepare(preds, truths)
    thr = np.asarray(iou_thresholds, dtype=np.float64).reshape(-1)
    scores, matches = [], []
    for pb, ps, gb in zip(pboxes, pscores, gboxes):
        s, m = _coco_match_image(pb, ps, gb, thr, max_detections)
        scores.append(s)
        matches.append(m)
    n_gt = int(sum(len(g) for g in gboxes))
    return _coco_ap_from_matches(scores, matches, n_gt, len(thr))


def average_precision(
    preds: Sequence[Mapping[str, Any]], truths: Sequence[Any], iou_threshold: float = 0.5, max_detections: int = 100
) -> float:
    """Single-class average precision at one IoU threshold, computed exactly as pycocotools' ``COCOeval``
    (``iouType='bbox'``, area range ``'all'``, ``maxDets=max_detections``).

    Per image, predictions are taken in descending score order (stable sort, at most ``max_detections``) and each is
    matched to the still unmatched truth box of highest IoU with ``IoU >= iou_threshold``. The matches of the whole
    data set are then ranked by score (stable), the precision envelope is taken, and the precision is read at the 101
    recall levels 0, 0.01, ..., 1 (levels not reached count as 0) and averaged.

    Written here instead of using MONAI's ``COCOMetric`` because that accumulates true positives in float32 and
    MONAI's ``box_iou`` computes in float32, either of which can move a value across a threshold (see module doc).

    Args:
        preds: per image ``{"boxes": (M, 4), "scores": (M,)}``, ``StandardMode`` boxes.
        truths: per image truth boxes ``(G, 4)``.
        iou_threshold: minimum IoU of a true positive (``>=``, as COCO).
        max_detections: highest-scoring predictions kept per image (COCO: 100).

    Returns:
        AP in [0, 1]; ``0.0`` if there is no truth box but there are predictions; ``NaN`` if there are neither.
    """
    return float(_coco_ap(preds, truths, [iou_threshold], max_detections)[0])


def coco_map(preds: Sequence[Mapping[str, Any]], truths: Sequence[Any], max_detections: int = 100) -> dict[str, float]:
    """COCO box metrics of one lesion class, via MONAI's ``matching_batch`` + ``COCOMetric``.

    Returns ``{"localization/map": AP@[0.50:0.05:0.95], "localization/ap50": AP@0.50, "localization/ap75": AP@0.75}``.

    MONAI's ``COCOMetric`` (from nnDetection) follows pycocotools with these differences, handled here:

    - its default IoU range is ``(0.1, 0.5, 0.05)`` and its default ``max_detection`` is ``(1, 5, 100)``; we pass
      COCO's ``iou_range=(0.5, 0.95, 0.05)`` and ``max_detection=(max_detections,)``;
    - it has no area ranges (the same as pycocotools' ``'all'`` up to its 1e10 px² upper bound);
    - it accumulates true/false positive counts in float32 (pycocotools: float64), so a recall ``tp / n_gt`` equal
      to one of the 101 recall levels can round below it and shift the precision read there by one detection;
    - without any truth box it warns and reports ``-1`` (as pycocotools); we report 0 / NaN (see module doc).

    The IoU passed to ``matching_batch`` is :func:`box_iou_float64` (not ``box_iou``, see module doc). Because of the
    float32 accumulation, the values reported here are those of :func:`average_precision` (pycocotools' float64
    accumulation, checked against pycocotools to 1e-6 in the tests) whenever the two differ by more than 1e-6.
    """
    from monai.apps.detection.metrics.coco import COCOMetric
    from monai.apps.detection.metrics.matching import matching_batch

    pboxes, pscores, gboxes = _prepare(preds, truths)
    n_gt = int(sum(len(g) for g in gboxes))
    if n_gt == 0:
        v = 0.0 if any(len(s) for s in pscores) else float("nan")
        return {"localization/map": v, "localization/ap50": v, "localization/ap75": v}

    metric = COCOMetric(
        classes=["lesion"],
        iou_list=(0.5, 0.75),
        iou_range=(0.5, 0.95, 0.05),
        max_detection=(max_detections,),
        per_class=False,
        verbose=False,
    )
    results = matching_batch(
        iou_fn=box_iou_float64,
        iou_thresholds=metric.iou_thresholds,
        pred_boxes=pboxes,
        pred_classes=[np.zeros(len(b), dtype=np.int64) for b in pboxes],
        pred_scores=pscores,
        gt_boxes=gboxes,
        gt_classes=[np.zeros(len(b), dtype=np.int64) for b in gboxes],
        max_detections=max_detections,
    )
    values, _ = metric(results)
    monai_map = float(values[f"mAP_IoU_0.50_0.95_0.05_MaxDet_{max_detections}"])
    monai_ap50 = float(values[f"AP_IoU_0.50_MaxDet_{max_detections}"])
    monai_ap75 = float(values[f"AP_IoU_0.75_MaxDet_{max_detections}"])

    ours = _coco_ap(preds, truths, _COCO_IOUS, max_detections)  # float64 accumulation, as pycocotools
    ours_map, ours_ap50, ours_ap75 = float(ours.mean()), float(ours[0]), float(ours[5])

    def pick(monai_v: float, ours_v: float) -> float:
        return monai_v if abs(monai_v - ours_v) <= 1e-6 else ours_v

    return {
        "localization/map": pick(monai_map, ours_map),
        "localization/ap50": pick(monai_ap50, ours_ap50),
        "localization/ap75": pick(monai_ap75, ours_ap75),
    }


def _rsna_image(pb: np.ndarray, ps: np.ndarray, gb: np.ndarray, thresholds: np.ndarray) -> float:
    n_p, n_g = len(pb), len(gb)
    if n_g == 0:
        return 0.0  # only called with n_p > 0 here: every prediction is a false positive
    if n_p == 0:
        return 0.0
    order = np.argsort(-ps, kind="mergesort")
    ious = box_iou_float64(pb[order], gb)
    out = []
    for t in thresholds:
        matched = np.zeros(n_g, dtype=bool)
        tp = 0
        for d in range(n_p):
            cand = np.where(~matched & (ious[d] > t), ious[d], -1.0)
            g = int(np.argmax(cand))
            if cand[g] > t:
                matched[g] = True
                tp += 1
        fp, fn = n_p - tp, n_g - tp
        out.append(tp / (tp + fp + fn))
    return float(np.mean(out))


def rsna_metric(
    preds: Sequence[Mapping[str, Any]], truths: Sequence[Any], thresholds: Sequence[float] = RSNA_THRESHOLDS
) -> float:
    """RSNA Pneumonia Detection Challenge score (Kaggle 2018).

    Per image and IoU threshold ``t``: predictions, in descending score order, are each matched to the still
    unmatched truth box of highest IoU if that IoU is strictly greater than ``t`` ("a predicted object is considered a
    hit if its IoU with a ground truth object is greater than t"); the image scores ``TP / (TP + FP + FN)``. The image
    score is the mean over thresholds; the data set score is the mean over images. Images with neither truth nor
    prediction are skipped; an image with predictions but no truth scores 0 (as does one with truth but no
    prediction).

    Thresholds are rounded to 6 decimals first, so that ``np.arange`` noise (``0.4 + 4 * 0.05 = 0.6000000000000001``)
    does not decide ties: an IoU of exactly 0.6 is a hit for ``t = 0.55`` but not for ``t = 0.6``.

    Returns:
        the score in [0, 1], ``NaN`` if every image was skipped.
    """
    pboxes, pscores, gboxes = _prepare(preds, truths)
    thr = np.round(np.asarray(thresholds, dtype=np.float64).reshape(-1), 6)
    scores = [_rsna_image(pb, ps, gb, thr) for pb, ps, gb in zip(pboxes, pscores, gboxes) if len(pb) > 0 or len(gb) > 0]
    return float(np.mean(scores)) if scores else float("nan")


def box_sensitivity(preds: Sequence[Mapping[str, Any]], truths: Sequence[Any], iou_threshold: float = 0.5) -> float:
    """Fraction of the true boxes found: predictions, in descending score order, are matched one-to-one to the
    still unmatched truth box of highest IoU with ``IoU >= iou_threshold`` (COCO's matching, every prediction
    kept). ``NaN`` without any truth box."""
    pboxes, pscores, gboxes = _prepare(preds, truths)
    n_gt = int(sum(len(g) for g in gboxes))
    if n_gt == 0:
        return float("nan")
    thr = np.asarray([iou_threshold], dtype=np.float64)
    found = sum(
        int(_coco_match_image(pb, ps, gb, thr, max(len(pb), 1))[1].sum()) for pb, ps, gb in zip(pboxes, pscores, gboxes)
    )
    return found / n_gt


def boxes_per_negative_image(preds: Sequence[Mapping[str, Any]], truths: Sequence[Any]) -> float:
    """Mean number of predicted boxes on the images without a true box (``NaN`` if there is none)."""
    pboxes, _, gboxes = _prepare(preds, truths)
    counts = [len(pb) for pb, gb in zip(pboxes, gboxes) if len(gb) == 0]
    return float(np.mean(counts)) if counts else float("nan")


def _above(preds: Sequence[Mapping[str, Any]], score_threshold: float) -> list[dict[str, np.ndarray]]:
    out = []
    for i, p in enumerate(preds):
        b = _as_boxes(p[DetKeys.BOXES], f"preds[{i}]")
        s = _to_numpy(p[DetKeys.SCORES]).reshape(-1)
        keep = s >= float(score_threshold)
        out.append({DetKeys.BOXES.value: b[keep], DetKeys.SCORES.value: s[keep]})
    return out


def operating_point_metrics(
    preds: Sequence[Mapping[str, Any]], truths: Sequence[Any], score_threshold: float = 0.0
) -> dict[str, float]:
    """Metrics of the boxes a user gets at one operating point (``score >= score_threshold``):

    ``localization/rsna`` (:func:`rsna_metric`), ``localization/boxes_per_negative``
    (:func:`boxes_per_negative_image`) and ``localization/sensitivity50`` (:func:`box_sensitivity` at IoU 0.5).
    """
    kept = _above(preds, score_threshold)
    return {
        "localization/rsna": rsna_metric(kept, truths),
        "localization/boxes_per_negative": boxes_per_negative_image(kept, truths),
        "localization/sensitivity50": box_sensitivity(kept, truths, 0.5),
    }


def _rsna_prefix_scores(pb: np.ndarray, ps: np.ndarray, gb: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """RSNA image score of the top-``k`` predictions for every ``k = 0..M`` (``(M + 1,)``), by one greedy pass:
    the matching of :func:`_rsna_image` is sequential in score order, so the first ``k`` steps are the
    matching of the top ``k`` alone."""
    n_p, n_g = len(pb), len(gb)
    out = np.zeros(n_p + 1)
    if n_p == 0 or n_g == 0:
        return out
    order = np.argsort(-ps, kind="mergesort")
    ious = box_iou_float64(pb[order], gb)
    k = np.arange(1, n_p + 1, dtype=np.float64)
    total = np.zeros(n_p)
    for t in thresholds:
        matched = np.zeros(n_g, dtype=bool)
        tp = np.zeros(n_p)
        count = 0
        for d in range(n_p):
            cand = np.where(~matched & (ious[d] > t), ious[d], -1.0)
            g = int(np.argmax(cand))
            if cand[g] > t:
                matched[g] = True
                count += 1
            tp[d] = count
        total += tp / (k + n_g - tp)
    out[1:] = total / len(thresholds)
    return out


def choose_box_threshold(
    preds: Sequence[Mapping[str, Any]], truths: Sequence[Any], thresholds: Sequence[float] = RSNA_THRESHOLDS
) -> tuple[float, float]:
    """The box operating point: the score threshold ``t`` maximising :func:`rsna_metric` of the boxes with
    ``score >= t``.

    Candidates are every distinct predicted score and :data:`NO_BOX_THRESHOLD` (no box at all); among equal
    scores the highest threshold wins (the fewest boxes). The RSNA metric is chosen because it is the
    challenge's own and, unlike AP, it charges every false positive box, on negative images too.

    Args:
        preds, truths: as :func:`rsna_metric` (in evaluation: the gated boxes of the validation split, i.e. what
            the deployed model would output at each threshold).
        thresholds: the RSNA IoU thresholds.

    Returns:
        ``(threshold, rsna)``; ``(NO_BOX_THRESHOLD, NaN)`` when there is neither a truth box nor a prediction.
    """
    pboxes, pscores, gboxes = _prepare(preds, truths)
    thr = np.round(np.asarray(thresholds, dtype=np.float64).reshape(-1), 6)
    all_scores = np.concatenate(pscores) if pscores else np.zeros(0)
    cands = np.unique(np.r_[NO_BOX_THRESHOLD, all_scores])[::-1]  # highest first
    total = np.zeros(len(cands))
    count = np.zeros(len(cands))
    for pb, ps, gb in zip(pboxes, pscores, gboxes):
        prefix = _rsna_prefix_scores(pb, ps, gb, thr)
        k = np.searchsorted(np.sort(-ps), -cands, side="right")  # boxes with score >= candidate
        used = (k > 0) | (len(gb) > 0)
        total += np.where(used, prefix[k], 0.0)
        count += used
    with np.errstate(invalid="ignore", divide="ignore"):
        score = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    if np.all(np.isnan(score)):
        return NO_BOX_THRESHOLD, float("nan")
    best = np.nanmax(score)
    i = int(np.nonzero(score >= best - 1e-12)[0][0])  # candidates are sorted high to low: the highest threshold
    return float(cands[i]), float(score[i])


def detection_metrics(
    preds: Sequence[Mapping[str, Any]], truths: Sequence[Any], max_detections: int = 100, score_threshold: float = 0.0
) -> dict[str, float]:
    """The lesion-box metrics of ``metrics.json``.

    - over ALL the predicted boxes (a ranking metric: the operating point does not enter):
      ``localization/ap50``, ``localization/map`` (:func:`coco_map`);
    - at the operating point ``score >= score_threshold`` (what a user gets): ``localization/rsna``,
      ``localization/boxes_per_negative``, ``localization/sensitivity50`` (:func:`operating_point_metrics`).
    """
    coco = coco_map(preds, truths, max_detections=max_detections)
    return {
        "localization/ap50": coco["localization/ap50"],
        "localization/map": coco["localization/map"],
        **operating_point_metrics(preds, truths, score_threshold),
    }
