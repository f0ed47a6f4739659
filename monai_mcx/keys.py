"""Names of the tasks and of the datalist, batch and prediction keys, in one place (as MONAI's ``CommonKeys``).

:class:`Task` names the three tasks (:data:`TASKS` in their canonical order); :class:`DatalistKeys` are the keys
of a datalist item (:mod:`monai_mcx.data.datalist`); :class:`BatchKeys` are the keys of a collated batch
(``monai_mcx.data.collate_cxr``) and of the ``targets`` dict handed to the loss and the metrics
(``monai_mcx.engines.prepare_cxr_batch``); :class:`PredKeys` are the keys of the network's output dict and of the
post-processed prediction dict (:class:`monai_mcx.inferers.MultiCheXNetPostprocessor`); :class:`DetKeys` the keys
of one image's detections; :class:`OriginalKeys` the keys of one image's prediction in the original image's pixels
(:func:`monai_mcx.inferers.to_original`).

The classes are ``StrEnum``-like (``str`` subclasses), so ``batch[BatchKeys.MASK]`` and ``batch["mask"]`` are the
same lookup and JSON configs keep using the plain strings. Code that STORES a key (a dict it builds, a value it
records) writes ``.value`` so what it builds holds plain ``str`` (pickles, ``torch.load(weights_only=True)`` and
TorchScript see no enum); code that LOOKS UP or compares uses the member.
"""

from __future__ import annotations

from enum import Enum

__all__ = ["Task", "TASKS", "ALL_TASKS", "DatalistKeys", "BatchKeys", "PredKeys", "DetKeys", "OriginalKeys"]


class StrEnum(str, Enum):
    """MONAI's ``monai.utils.StrEnum`` (the same definition: ``str(member)`` and ``repr(member)`` are its value).

    Defined here rather than imported because importing MONAI loads matplotlib: modules that only need key names
    (``monai_mcx.metrics``, ``monai_mcx.visualize``) must stay importable without MONAI.
    """

    def __str__(self) -> str:
        return self.value

    def __repr__(self) -> str:
        return self.value


class Task(StrEnum):
    """The tasks of MultiCheXNet, one head each.

    The three diagnosis/lesion tasks of the original, plus one anatomy task: ``lungs``, the lung-field
    segmentation (lung outlines, never lesions) that post-processing can use to keep lesions inside the lungs.
    """

    CLASSIFICATION = "classification"
    SEGMENTATION = "segmentation"
    LOCALIZATION = "localization"
    LUNGS = "lungs"


#: the diagnosis and lesion tasks, in the canonical order: the default set of heads (plain ``str``: they are
#: stored in model descriptions and checkpoints)
TASKS: tuple[str, ...] = (Task.CLASSIFICATION.value, Task.SEGMENTATION.value, Task.LOCALIZATION.value)
#: every task, in the canonical order: :data:`TASKS` then the anatomy task ``lungs``
ALL_TASKS: tuple[str, ...] = tuple(t.value for t in Task)


class DatalistKeys(StrEnum):
    """Keys of a datalist item (``DESIGN.md``, :mod:`monai_mcx.data.datalist`).

    ``image`` path; ``patient`` id; ``source`` data set name; ``label`` class vector or null; ``mask`` path or null;
    ``boxes`` ``[[x1, y1, x2, y2], ...]`` or null; ``lung_mask`` path to a lung-field mask (an outline of the
    lungs, not a lesion) or null; ``population`` ``adult`` / ``pediatric`` or absent (unknown); the public data-set adapters add ``findings`` (the source's
    finding names) and ``info`` (adapter-specific extras).
    """

    IMAGE = "image"
    PATIENT = "patient"
    SOURCE = "source"
    LABEL = "label"
    MASK = "mask"
    BOXES = "boxes"
    LUNG_MASK = "lung_mask"
    POPULATION = "population"
    FINDINGS = "findings"
    INFO = "info"


class BatchKeys(StrEnum):
    """Keys of a transformed item / collated batch and of the evaluator's ``targets``."""

    IMAGE = "image"
    LABEL = "label"
    HAS_LABEL = "has_label"
    MASK = "mask"
    HAS_MASK = "has_mask"
    BOXES = "boxes"
    BOX_LABELS = "box_labels"
    HAS_BOXES = "has_boxes"
    LUNG_MASK = "lung_mask"
    HAS_LUNG_MASK = "has_lung_mask"
    POSITIVE = "positive"
    IMAGE_PATH = "image_path"
    PATIENT = "patient"
    ORIGINAL_SIZE = "original_size"
    MASK_PATH = "mask_path"
    ERROR = "error"
    OVERLAY_IMAGE = "overlay_image"


class PredKeys(StrEnum):
    """Keys of the network output (raw heads) and of the post-processed prediction (network geometry).

    Raw: ``class_logits`` ``(B, K)``, ``seg_logits`` ``(B, 1, W, H)``, ``box_cls_logits`` / ``box_regression``
    (per-level anchor maps). Post-processed: ``class_probs`` ``(B, K)`` (calibrated when the model has a calibration),
    ``class_probs_raw`` ``(B, K)`` (``sigmoid(class_logits)``, uncalibrated), ``gate`` ``(B,)`` bool (the deployed
    gate rule), ``seg_probs`` ``(B, 1, W, H)``, ``seg_mask`` / ``seg_mask_gated`` ``(B, 1, W, H)`` bool,
    ``detections`` (every decoded box, for AP), ``detections_op`` (boxes at the operating point, ungated),
    ``detections_gated`` (at the operating point, gated: the deployed output), ``input_size`` ``[W, H]`` of the
    network input (what :func:`monai_mcx.inferers.to_original` scales boxes from). With a ``lungs`` head:
    ``lung_logits`` (raw) and ``lung_probs`` / ``lung_seg_mask`` ``(B, 1, W, H)`` (a lung outline, not a lesion) and
    ``lung_field`` (the dilated field lesions are kept in when the restriction is on, else all True).
    Per image: ``decision_thresholds`` ``(B, K)`` (the class thresholds applied) and ``population_point`` (list of
    ``{"population": name or None, "reason": how it was decided}``, :mod:`monai_mcx.data.populations`).
    """

    CLASS_LOGITS = "class_logits"
    SEG_LOGITS = "seg_logits"
    LUNG_LOGITS = "lung_logits"
    BOX_CLS_LOGITS = "box_cls_logits"
    BOX_REGRESSION = "box_regression"
    CLASS_PROBS = "class_probs"
    CLASS_PROBS_RAW = "class_probs_raw"
    GATE = "gate"
    SEG_PROBS = "seg_probs"
    SEG_MASK = "seg_mask"
    SEG_MASK_GATED = "seg_mask_gated"
    LUNG_PROBS = "lung_probs"
    LUNG_MASK = "lung_seg_mask"
    LUNG_FIELD = "lung_field"
    CLASS_THRESHOLDS = "decision_thresholds"
    POPULATION = "population_point"
    DETECTIONS = "detections"
    DETECTIONS_OP = "detections_op"
    DETECTIONS_GATED = "detections_gated"
    INPUT_SIZE = "input_size"


class DetKeys(StrEnum):
    """Keys of one image's detections: ``boxes`` ``(M, 4)`` xyxy, ``scores`` ``(M,)``, ``labels`` ``(M,)``."""

    BOXES = "boxes"
    SCORES = "scores"
    LABELS = "labels"


class OriginalKeys(StrEnum):
    """Keys of one image's prediction in the ORIGINAL image's pixels (:func:`monai_mcx.inferers.to_original`).

    ``size_wh`` ``[W, H]``; ``class_probs`` ``(K,)`` or None; ``gate`` bool; ``mask`` (gated) / ``mask_ungated``
    ``(W, H)`` bool or None; ``has_boxes`` (a localization head ran); ``boxes`` ``(M, 4)`` xyxy, ``scores``, ``labels``
    (operating point, gated) and ``boxes_ungated`` / ``scores_ungated`` / ``labels_ungated`` (operating point);
    ``lung_mask`` ``(W, H)`` bool or None (no lungs head); ``population`` ``{"population", "reason"}``.
    """

    SIZE_WH = "size_wh"
    CLASS_PROBS = "class_probs"
    GATE = "gate"
    MASK = "mask"
    MASK_UNGATED = "mask_ungated"
    HAS_BOXES = "has_boxes"
    BOXES = "boxes"
    SCORES = "scores"
    LABELS = "labels"
    BOXES_UNGATED = "boxes_ungated"
    SCORES_UNGATED = "scores_ungated"
    LABELS_UNGATED = "labels_ungated"
    LUNG_MASK = "lung_mask"
    POPULATION = "population"
