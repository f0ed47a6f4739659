"""Curve points of one binary task: ROC and precision-recall, one point per distinct score.

Written with numpy on the ranking of :func:`monai_mcx.metrics.classification.choose_threshold` (MONAI's
``compute_roc_auc`` returns the area only, and scikit-learn is only a test dependency). The plots are
:func:`monai_mcx.visualize.save_roc_curve` and :func:`monai_mcx.visualize.save_pr_curve`; the reliability curve is
:func:`monai_mcx.metrics.calibration.reliability_curve`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from monai_mcx.metrics.classification import _np, _sorted_counts

__all__ = ["roc_curve", "pr_curve"]


def roc_curve(probs: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(fpr, tpr)`` of the ROC curve, one point per distinct score (as ``sklearn.metrics.roc_curve`` with
    ``drop_intermediate=False``), starting at ``(0, 0)``.

    Args:
        probs: ``(N,)`` scores (any order-preserving scale).
        labels: ``(N,)`` 0/1 (or bool) labels.

    Returns:
        ``(fpr, tpr)``, each ``(D + 1,)`` for ``D`` distinct scores.

    Raises:
        ValueError: when ``labels`` do not hold both values.
    """
    tps, fps, _ = _sorted_counts(_np(probs).reshape(-1), _np(labels).reshape(-1))
    n_pos, n_neg = (tps[-1], fps[-1]) if tps.size else (0.0, 0.0)
    if n_pos == 0 or n_neg == 0:
        raise ValueError("roc_curve needs positive and negative labels.")
    return np.r_[0.0, fps / n_neg], np.r_[0.0, tps / n_pos]


def pr_curve(probs: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(recall, precision)``, one point per distinct score, highest score first.

    Args:
        probs: ``(N,)`` scores.
        labels: ``(N,)`` 0/1 (or bool) labels.

    Returns:
        ``(recall, precision)``, each ``(D,)`` for ``D`` distinct scores.

    Raises:
        ValueError: when ``labels`` hold no positive.
    """
    tps, fps, _ = _sorted_counts(_np(probs).reshape(-1), _np(labels).reshape(-1))
    if not tps.size or tps[-1] == 0:
        raise ValueError("pr_curve needs positive labels.")
    return tps / tps[-1], tps / (tps + fps)
