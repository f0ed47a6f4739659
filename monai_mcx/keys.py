"""Names of the batch and prediction keys, in one place (as MONAI's ``monai.utils.enums.CommonKeys``).

:class:`BatchKeys` are the keys of a collated batch (``monai_mcx.data.collate_cxr``) and of the ``targets``
dict handed to the loss and the metrics (``monai_mcx.engines.prepare_cxr_batch``); :class:`PredKeys` are the
keys of the network's output dict and of the post-processed prediction dict
(:class:`monai_mcx.inferers.MultiCheXNetPostprocessor`); :class:`DetKeys` the keys of one image's detections.

The classes are ``StrEnum``-like (``str`` subclasses), so ``batch[BatchKeys.MASK]`` and ``batch["mask"]`` are the
same lookup and JSON configs keep using the plain strings.
"""

from __future__ import annotations

from monai.utils.enums import StrEnum

__all__ = ["BatchKeys", "PredKeys", "DetKeys"]


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
    network input (what :func:`monai_mcx.inferers.to_original` scales boxes from).
    """

    CLASS_LOGITS = "class_logits"
    SEG_LOGITS = "seg_logits"
    BOX_CLS_LOGITS = "box_cls_logits"
    BOX_REGRESSION = "box_regression"
    CLASS_PROBS = "class_probs"
    CLASS_PROBS_RAW = "class_probs_raw"
    GATE = "gate"
    SEG_PROBS = "seg_probs"
    SEG_MASK = "seg_mask"
    SEG_MASK_GATED = "seg_mask_gated"
    DETECTIONS = "detections"
    DETECTIONS_OP = "detections_op"
    DETECTIONS_GATED = "detections_gated"
    INPUT_SIZE = "input_size"


class DetKeys(StrEnum):
    """Keys of one image's detections: ``boxes`` ``(M, 4)`` xyxy, ``scores`` ``(M,)``, ``labels`` ``(M,)``."""

    BOXES = "boxes"
    SCORES = "scores"
    LABELS = "labels"
