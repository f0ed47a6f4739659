"""Evaluation metrics: classification (AUC, thresholds, ECE), ROC / precision-recall curve points, calibration
(temperature scaling, Brier, reliability), operating points with patient-bootstrap intervals, lesion segmentation
(Dice) and lesion boxes (COCO AP / mAP, RSNA score, per-image box quality). Each ``*_metrics`` function returns the
flat ``<task>/<metric>[/<variant>]`` keys written to ``metrics.json``. Their plots are in
:mod:`monai_mcx.visualize`."""

from .calibration import (
    TemperatureScaling,
    binary_nll,
    brier_score,
    calibration_metrics,
    fit_temperature,
    logits_from_probs,
    reliability_curve,
)
from .classification import choose_threshold, classification_metrics, expected_calibration_error, roc_auc
from .curves import pr_curve, roc_curve
from .detection import (
    NO_BOX_THRESHOLD,
    RSNA_THRESHOLDS,
    average_precision,
    box_iou_float64,
    box_quality,
    box_sensitivity,
    boxes_per_negative_image,
    choose_box_threshold,
    coco_map,
    detection_metrics,
    operating_point_metrics,
    rsna_metric,
)
from .operating_points import (
    class_operating_points,
    operating_points,
    patient_bootstrap_ci,
    sensitivity_target_thresholds,
    threshold_for_sensitivity,
)
from .segmentation import dice_per_image, segmentation_metrics

__all__ = [
    "roc_auc",
    "choose_threshold",
    "expected_calibration_error",
    "classification_metrics",
    "roc_curve",
    "pr_curve",
    "dice_per_image",
    "segmentation_metrics",
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
    "TemperatureScaling",
    "fit_temperature",
    "logits_from_probs",
    "binary_nll",
    "brier_score",
    "reliability_curve",
    "calibration_metrics",
    "threshold_for_sensitivity",
    "patient_bootstrap_ci",
    "operating_points",
    "sensitivity_target_thresholds",
    "class_operating_points",
]
