"""Multi-label classification metrics on per-class probabilities.

All functions take numpy arrays or torch tensors. Labels are 0/1; rows whose label is unknown must be left out by
the caller. Predictions are positive when ``prob >= threshold``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["roc_auc", "choose_threshold", "expected_calibration_error", "classification_metrics"]


def _np(x: Any, dtype=np.float64) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def _binary_inputs(probs: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    p = _np(probs).reshape(-1)
    y = _np(labels).reshape(-1)
    if p.shape != y.shape:
        raise ValueError(f"probs and labels must have the same length, got {p.shape[0]} and {y.shape[0]}.")
    if not np.all((y == 0) | (y == 1)):
        raise ValueError("labels must be 0 or 1 (leave rows with unknown labels out).")
    if not np.all(np.isfinite(p)):
        raise ValueError("probs must be finite.")
    return p, y


def _nanmean(values: Sequence[float]) -> float:
    v = np.asarray(values, dtype=np.float64)
    v = v[~np.isnan(v)]
    return float(v.mean()) if v.size else float("nan")


def _sorted_counts(p: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(tp, fp, thresholds)`` at each distinct score of ``p`` ``(N,)`` (0/1 labels ``y`` ``(N,)``), highest score
    first: the true and false positives when predicting positive for ``prob >= thresholds[i]``. Empty for ``N = 0``.
    The one ranking behind :func:`choose_threshold` and the curves of :mod:`monai_mcx.metrics.curves`."""
    if not p.size:
        return np.zeros(0), np.zeros(0), np.zeros(0)
    order = np.argsort(-p, kind="mergesort")
    p_sorted, y_sorted = p[order], y[order]
    # last index of each run of equal scores: predicting positive for prob >= p_sorted[i]
    last = np.r_[np.nonzero(np.diff(p_sorted))[0], p_sorted.size - 1]
    return np.cumsum(y_sorted)[last], np.cumsum(1 - y_sorted)[last], p_sorted[last]


def roc_auc(probs: Any, labels: Any) -> float:
    """Area under the ROC curve of one binary task, ``probs`` ``(N,)`` and ``labels`` ``(N,)``.

    Uses :func:`monai.metrics.compute_roc_auc` (tied scores count one half, as ``sklearn.metrics.roc_auc_score``).
    Returns ``NaN`` when ``labels`` holds only one class (AUC undefined); this is checked here so that MONAI's warning
    is not raised.
    """
    from monai.metrics import compute_roc_auc

    p, y = _binary_inputs(probs, labels)
    if p.size == 0 or y.min() == y.max():
        return float("nan")
    return float(compute_roc_auc(torch.from_numpy(p), torch.from_numpy(y)))


def choose_threshold(probs: Any, labels: Any, method: str = "youden") -> float:
    """Decision threshold chosen on validation data (predict positive when ``prob >= threshold``).

    Candidate thresholds are the distinct probabilities. ``"youden"`` maximises sensitivity + specificity - 1,
    ``"f1"`` maximises F1; ties go to the highest threshold. Written with numpy (MONAI has no threshold search and
    scikit-learn is only a test dependency). Returns 0.5 when ``labels`` holds only one class (nothing to choose).
    """
    if method not in ("youden", "f1"):
        raise ValueError(f"method must be 'youden' or 'f1', got {method!r}.")
    p, y = _binary_inputs(probs, labels)
    n_pos = y.sum()
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return 0.5
    tp, fp, thresholds = _sorted_counts(p, y)
    if method == "youden":
        score = tp / n_pos - fp / n_neg
    else:
        score = 2 * tp / (2 * tp + fp + (n_pos - tp))
    best = int(np.argmax(score))  # first = highest threshold among ties
    return float(thresholds[best])


def expected_calibration_error(probs: Any, labels: Any, n_bins: int = 10) -> float:
    """Expected calibration error of binary probabilities of the positive class.

    The probabilities are put in ``n_bins`` equal-width bins ``[0, 1/n), [1/n, 2/n), ..., [(n-1)/n, 1]``; in each
    bin ``b`` the mean probability ``conf_b`` is compared with the fraction of positive labels ``acc_b``, and
    ``ECE = sum_b (n_b / N) * |acc_b - conf_b|``. (For a binary task this is the calibration of the positive-class
    probability, not the top-label confidence.) Written here: MONAI's ``CalibrationErrorMetric`` expects
    one-hot segmentation-like tensors. Returns ``NaN`` for empty input.
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}.")
    p, y = _binary_inputs(probs, labels)
    if p.size == 0:
        return float("nan")
    if p.min() < 0 or p.max() > 1:
        raise ValueError("probs must lie in [0, 1].")
    count, sum_p, sum_y = calibration_bins(p, y, n_bins)
    nz = count > 0
    gap = np.abs(sum_y[nz] / count[nz] - sum_p[nz] / count[nz])
    return float(np.sum(count[nz] / p.size * gap))


def calibration_bins(p: np.ndarray, y: np.ndarray, n_bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The equal-width bins of :func:`expected_calibration_error` (also the reliability diagram's,
    :func:`monai_mcx.metrics.calibration.reliability_curve`): ``p`` ``(N,)`` in [0, 1] goes to bin
    ``min(floor(p * n_bins), n_bins - 1)``. Returns ``(count, sum_p, sum_y)``, each ``(n_bins,)``."""
    idx = np.clip(np.floor(p * n_bins).astype(np.int64), 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins).astype(np.float64)
    sum_p = np.bincount(idx, weights=p, minlength=n_bins)
    sum_y = np.bincount(idx, weights=y, minlength=n_bins)
    return count, sum_p, sum_y


def classification_metrics(
    probs: Any,
    labels: Any,
    class_names: Sequence[str],
    threshold: float | Sequence[float] = 0.5,
    n_bins: int = 10,
) -> dict[str, float]:
    """All classification metrics as a flat dict (the keys of ``metrics.json``).

    Args:
        probs: ``(N, K)`` probabilities (after the sigmoid).
        labels: ``(N, K)`` 0/1 labels.
        class_names: the ``K`` class names, used as key suffixes.
        threshold: one threshold for all classes or one per class (e.g. from :func:`choose_threshold` on validation).
        n_bins: bins of the calibration error.

    Returns:
        ``classification/{auc,sensitivity,specificity,f1,ece}/<class>`` and ``classification/threshold/<class>``
        per class, and ``classification/{auc,sensitivity,specificity,f1,ece}`` = mean over the classes where the
        value is defined. Undefined values are ``NaN``: AUC with one label value only, sensitivity without positives,
        specificity without negatives, F1 when there is no positive label and no positive prediction (``2TP + FP + FN =
        0``).
    """
    p = _np(probs)
    y = _np(labels)
    if p.ndim == 1:
        p, y = p[:, None], y.reshape(-1, 1)
    if p.ndim != 2 or p.shape != y.shape:
        raise ValueError(f"probs and labels must both be (N, K), got {p.shape} and {y.shape}.")
    k = p.shape[1]
    if len(class_names) != k:
        raise ValueError(f"{len(class_names)} class names for {k} columns.")
    thr = np.asarray(threshold, dtype=np.float64).reshape(-1)
    if thr.size == 1:
        thr = np.full(k, thr[0])
    elif thr.size != k:
        raise ValueError(f"{thr.size} thresholds for {k} classes.")

    out: dict[str, float] = {}
    per: dict[str, list[float]] = {m: [] for m in ("auc", "sensitivity", "specificity", "f1", "ece")}
    for c, name in enumerate(class_names):
        pc, yc = _binary_inputs(p[:, c], y[:, c])
        pred = pc >= thr[c]
        tp = float(np.sum(pred & (yc == 1)))
        fp = float(np.sum(pred & (yc == 0)))
        fn = float(np.sum(~pred & (yc == 1)))
        tn = float(np.sum(~pred & (yc == 0)))
        vals = {
            "auc": roc_auc(pc, yc),
            "sensitivity": tp / (tp + fn) if tp + fn > 0 else float("nan"),
            "specificity": tn / (tn + fp) if tn + fp > 0 else float("nan"),
            "f1": 2 * tp / (2 * tp + fp + fn) if 2 * tp + fp + fn > 0 else float("nan"),
            "ece": expected_calibration_error(pc, yc, n_bins=n_bins),
        }
        for m, v in vals.items():
            out[f"classification/{m}/{name}"] = float(v)
            per[m].append(v)
        out[f"classification/threshold/{name}"] = float(thr[c])
    for m, vs in per.items():
        out[f"classification/{m}"] = _nanmean(vs)
    return out
