"""Evaluation metrics: classification (AUC, thresholds, ECE), lesion segmentation (Dice) and lesion boxes
(COCO AP / mAP, RSNA score). Each ``*_metrics`` function returns the flat ``<task>/<metric>[/<variant>]`` keys
written to ``metrics.json``."""

from .classification import choose_threshold, classification_metrics, expected_calibration_error, roc_auc
from .detection import (
    NO_BOX_THRESHOLD,
    RSNA_THRESHOLDS,
    average_precision,
    box_sensitivity,
    boxes_per_negative_image,
    choose_box_threshold,
    operating_point_metrics,
    box_iou_float64,
    coco_map,
    detection_metrics,
    rsna_metric,
)
from .segmentation import dice_per_image, segmentation_metrics

__all__ = [
    "roc_auc",
    "choose_threshold",
    "expected_calibration_error",
    "classification_metrics",
    "dice_per_image",
    "segmentation_metrics",
    "box_iou_float64",
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
