"""Per-task Ignite metrics: one metric of one task as a scalar Ignite ``Metric`` (usable as a MONAI key metric).

:class:`~monai_mcx.handlers.MultiTaskMetrics` is the bundle's handler for all tasks at once (it writes every
``<task>/<metric>[/<variant>]`` key to ``engine.state.metrics``). :class:`TaskMetric` is the same accumulation
restricted to one key, for configs that want e.g. ``segmentation/dice_positive`` as the key metric of a
single-task network::

    "key_metric": {"val_dice": {"_target_": "monai_mcx.handlers.task_metrics.TaskMetric",
                                 "key": "segmentation/dice_positive", "class_names": "@class_names"}}

All the numbers come from the tested functions of :mod:`monai_mcx.metrics` (``classification_metrics``,
``segmentation_metrics``, ``detection_metrics``), through ``MultiTaskMetrics.compute``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ignite.engine import Engine

from monai_mcx.handlers.metrics import MultiTaskMetrics

__all__ = ["TaskMetric", "ClassificationAUC", "SegmentationDice", "LocalizationAP50", "LocalizationRSNA"]


class TaskMetric(MultiTaskMetrics):
    """One key of :class:`MultiTaskMetrics` (e.g. ``"localization/map/gated"``) as a scalar metric.

    Args:
        key: the ``metrics.json`` key to report; an undefined value (``NaN``, or a key the data cannot produce)
            is reported as ``NaN``.
        class_names, postprocessor, threshold, box_threshold: as :class:`MultiTaskMetrics`.
    """

    def __init__(self, key: str, class_names: Sequence[str] = ("lesion",), **kwargs: Any) -> None:
        self.key = str(key)
        super().__init__(class_names=class_names, **kwargs)

    def compute(self) -> float:  # type: ignore[override]
        return float(super().compute().get(self.key, float("nan")))

    def completed(self, engine: Engine, name: str) -> None:
        engine.state.metrics[name] = self.compute()


class ClassificationAUC(TaskMetric):
    """Mean ROC AUC over the classes (``classification/auc``)."""

    def __init__(self, class_names: Sequence[str], **kwargs: Any) -> None:
        super().__init__("classification/auc", class_names, **kwargs)


class SegmentationDice(TaskMetric):
    """Dice over the images with a lesion (``segmentation/dice_positive``), or the SIIM empty-aware Dice with
    ``empty_aware=True``; ``gated=True`` for the classifier-gated variant."""

    def __init__(
        self, class_names: Sequence[str] = ("lesion",), empty_aware: bool = False, gated: bool = False, **kwargs: Any
    ) -> None:
        key = "segmentation/dice_empty_aware" if empty_aware else "segmentation/dice_positive"
        super().__init__(key + ("/gated" if gated else ""), class_names, **kwargs)


class LocalizationAP50(TaskMetric):
    """COCO AP at IoU 0.5 of the lesion boxes (``localization/ap50``); ``gated=True`` for the gated variant."""

    def __init__(self, class_names: Sequence[str] = ("lesion",), gated: bool = False, **kwargs: Any) -> None:
        super().__init__("localization/ap50" + ("/gated" if gated else ""), class_names, **kwargs)


class LocalizationRSNA(TaskMetric):
    """The RSNA Pneumonia competition score (``localization/rsna``); ``gated=True`` for the gated variant."""

    def __init__(self, class_names: Sequence[str] = ("lesion",), gated: bool = False, **kwargs: Any) -> None:
        super().__init__("localization/rsna" + ("/gated" if gated else ""), class_names, **kwargs)
