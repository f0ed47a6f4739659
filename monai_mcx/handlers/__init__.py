"""Ignite handlers: model descriptions, multi-task metrics, metrics.json, prediction files, TensorBoard overlays."""

from monai_mcx.handlers.description import DescriptionWriter, OperatingPointWriter
from monai_mcx.handlers.evaluation_predictions import EvaluationPredictionWriter
from monai_mcx.handlers.metrics import MetricsJSONWriter, MultiTaskMetrics
from monai_mcx.handlers.predictions import PredictionWriter
from monai_mcx.handlers.progress import ProgressBar, print_tensorboard_hint
from monai_mcx.handlers.report import EvaluationReport
from monai_mcx.handlers.task_metrics import (
    ClassificationAUC,
    LocalizationAP50,
    LocalizationRSNA,
    SegmentationDice,
    TaskMetric,
)
from monai_mcx.handlers.tensorboard import TensorBoardOverlayHandler
