"""Operating points per population (adult, pediatric), and patient-bootstrap intervals of any per-image statistic.

A population's operating point (``operating_points`` of the model description) has two thresholds per class:

* ``class_thresholds`` -- the **diagnosis** decision ``p >= t``, chosen on the population's validation images with
  a known label (Youden's J by default: the threshold maximising sensitivity + specificity - 1);
* ``gate_thresholds`` -- the **gate** of the lesion heads (below it an image gets no mask and no box), chosen for
  **lesion recall**: the highest threshold that lets at least ``lesion_recall`` of the population's validation
  images with an annotated lesion (a non-empty lesion mask or at least one box) through, and never above the class
  threshold. A population without annotated lesions gets its class threshold as gate.

The box score of a population is chosen separately (``monai_mcx.metrics.detection.choose_box_threshold`` on its
gated boxes). All thresholds are on the calibrated probabilities the model outputs.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from monai_mcx.metrics.classification import choose_threshold
from monai_mcx.metrics.operating_points import threshold_for_sensitivity

__all__ = ["choose_population_point", "gate_for_lesion_recall", "patient_bootstrap_statistic"]


def gate_for_lesion_recall(probs: Any, lesion_positive: Any, recall: float = 0.95) -> float:
    """The highest threshold ``t`` such that at least ``recall`` of the lesion-positive images have ``p >= t``.

    Args:
        probs: ``(N,)`` calibrated probabilities of the class that means "a lesion is visible".
        lesion_positive: ``(N,)`` 0/1, the image has an annotated lesion.
        recall: the share of lesion-positive images the gate must let through.

    Returns:
        the threshold, NaN when there is no lesion-positive image.
    """
    return threshold_for_sensitivity(probs, lesion_positive, recall)


def choose_population_point(
    class_names: Sequence[str],
    probs: Any,
    labels: Any,
    lesion_probs: Any = None,
    lesion_positive: Any = None,
    lesion_recall: float = 0.95,
    method: str = "youden",
    box_score_threshold: float | None = None,
    split: str = "validation",
    sensitivity_targets: Sequence[float] = (0.9, 0.95),
) -> dict:
    """One population's operating point (module docstring), as the model description stores it.

    Args:
        class_names: the K classes.
        probs: ``(N, K)`` calibrated probabilities of the population's images with a known label.
        labels: ``(N, K)`` 0/1 labels of those images.
        lesion_probs: ``(M, K)`` calibrated probabilities of the population's images whose lesions are annotated
            (mask or boxes known), or None.
        lesion_positive: ``(M,)`` 0/1, that image has a lesion.
        lesion_recall: the gate's target share of lesion-positive images let through.
        method: the class threshold rule (:func:`monai_mcx.metrics.classification.choose_threshold`).
        box_score_threshold: the population's box score (None: the model's global one).
        split: the split the point was chosen on.
        sensitivity_targets: also store the thresholds reaching these sensitivities.

    Returns:
        ``{"class_thresholds", "gate_thresholds", "box_score_threshold", "sensitivity_thresholds", "methods",
        "split", "n_images", "n_positive", "n_lesion_positive", "date"}``.
    """
    p = np.asarray(probs, dtype=np.float64).reshape(len(probs), -1)
    y = np.asarray(labels, dtype=np.float64).reshape(len(labels), -1)
    if p.shape != y.shape or p.shape[1] != len(class_names):
        raise ValueError(f"probs {p.shape} and labels {y.shape} must be (N, {len(class_names)}).")
    if p.shape[0] == 0:
        raise ValueError("choose_population_point needs images with a known label.")
    cls_t = {c: float(choose_threshold(p[:, k], y[:, k], method)) for k, c in enumerate(class_names)}
    gate_t = dict(cls_t)
    n_lesion = 0
    gate_method = "class threshold (no annotated lesion in this population)"
    if lesion_probs is not None and lesion_positive is not None:
        lp = np.asarray(lesion_probs, dtype=np.float64).reshape(len(lesion_probs), -1)
        pos = np.asarray(lesion_positive, dtype=np.float64).reshape(-1)
        n_lesion = int(pos.sum())
        if n_lesion:
            # a lesion is one "lesion" class shared by the classes (teacher forcing): the gate is any class, so
            # each class's gate is lowered until the lesion-positive images reach the recall on that class
            for k, c in enumerate(class_names):
                t = gate_for_lesion_recall(lp[:, k], pos, lesion_recall)
                gate_t[c] = float(min(cls_t[c], t))
            gate_method = (
                f"lesion recall >= {lesion_recall:g} on the lesion-annotated images (at most the class threshold)"
            )
    sens = {}
    for target in sensitivity_targets:
        name = f"sens{int(round(target * 100))}"
        sens[name] = {c: float(threshold_for_sensitivity(p[:, k], y[:, k], target)) for k, c in enumerate(class_names)}
    return {
        "class_thresholds": cls_t,
        "gate_thresholds": gate_t,
        "box_score_threshold": None if box_score_threshold is None else float(box_score_threshold),
        "sensitivity_thresholds": sens,
        "methods": {"class": method, "gate": gate_method, "box": "rsna" if box_score_threshold is not None else None},
        "split": split,
        "n_images": int(p.shape[0]),
        "n_positive": int((y.max(axis=1) > 0.5).sum()),
        "n_lesion_positive": n_lesion,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def patient_bootstrap_statistic(
    statistic: Callable[[np.ndarray], float],
    patients: Sequence[Any],
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile interval of ``statistic`` when PATIENTS (all their images together) are resampled with replacement.

    For statistics that are not sums over patients (AUC, mean Dice, the RSNA metric):
    :func:`monai_mcx.metrics.operating_points.patient_bootstrap_ci` covers the additive ones faster.

    Args:
        statistic: maps an array of image indices (a replicate, images repeated as their patient is) to a number
            (NaN when undefined, e.g. an AUC with one class: ignored).
        patients: ``(N,)`` patient id of each image.
        n_boot: replicates; ci: coverage; seed: the numpy generator's seed.

    Returns:
        ``(low, high)``; NaN when no replicate defined the statistic.
    """
    ids = np.asarray([str(p) for p in patients])
    uniq, inverse = np.unique(ids, return_inverse=True)
    members = [np.nonzero(inverse == j)[0] for j in range(len(uniq))]
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(int(n_boot)):
        pick = rng.integers(0, len(uniq), size=len(uniq))
        idx = np.concatenate([members[j] for j in pick]) if len(uniq) else np.zeros(0, dtype=int)
        v = float(statistic(idx))
        if np.isfinite(v):
            values.append(v)
    if not values:
        return float("nan"), float("nan")
    alpha = (1 - ci) / 2
    low, high = np.quantile(values, [alpha, 1 - alpha])
    return float(low), float(high)
