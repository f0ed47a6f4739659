"""MultiCheXNet post-processing, written once: network outputs -> probabilities, gate, mask, boxes.

Following the MONAI model zoo's detection bundles (``RetinaNetInferer`` wraps a ``RetinaNetDetector`` so that
the evaluator's ``inferer`` returns boxes, not head maps), :class:`MultiCheXNetInferer` is a MONAI ``Inferer``
that runs the network and hands its dict of head outputs to a :class:`MultiCheXNetPostprocessor`. Every
consumer goes through this one component:

- the evaluator (``MultiTaskEvaluator``'s ``inferer``) and so the metrics, the report and the TensorBoard
  overlays, which read the post-processed keys in the network's geometry;
- the prediction writer and the MONAI Label infer task, which map one image back to its ORIGINAL pixels with
  :func:`to_original` (the only place where a mask or a box is resized back).

Post-processed prediction (keys :class:`monai_mcx.keys.PredKeys`), network input geometry ``(B, C, W, H)``,
x along spatial dim 0, boxes MONAI ``StandardMode`` (``xyxy``, pixel edges):

- ``class_probs`` ``(B, K)``: the probabilities that leave the model, ``sigmoid(class_logits / T_k)`` with the
  model's per-class temperatures (``calibration`` of the model description, see
  :class:`monai_mcx.metrics.TemperatureScaling`; plain ``sigmoid(class_logits)`` for a model without one);
- ``class_probs_raw`` ``(B, K)``: ``sigmoid(class_logits)``, uncalibrated (what evaluation refits the temperatures
  on);
- ``gate`` ``(B,)`` bool, the gate rule (:func:`gate_decision`): an image is **positive when some class ``k``
  reaches its own threshold**, ``any_k p_k >= t_k`` on the (calibrated) ``class_probs``; a network without a classifier lets every image through;
- ``seg_probs`` ``(B, 1, W, H)``, ``seg_mask`` (``seg_probs >= seg_threshold``) and ``seg_mask_gated``
  (``seg_mask`` and the gate);
- ``detections``: per image every box the decoder keeps (its candidate score floor, NMS, detections per
  image), ungated: what AP / mAP are computed on;
- ``detections_op``: the boxes at the operating point (``score >= box_score_threshold``), ungated;
- ``detections_gated``: ``detections_op`` of the positive images, none for the negative ones (the deployed
  output).

The raw head outputs (``class_logits``, ``seg_logits``, ``box_cls_logits``, ``box_regression``) are kept.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.inferers import Inferer
from torch import Tensor

from monai_mcx.keys import DetKeys, OriginalKeys, PredKeys, Task
from monai_mcx.metrics.calibration import TemperatureScaling
from monai_mcx.networks import BoxDecoder, make_anchor_generator

__all__ = [
    "GATE_RULE",
    "GATE_RULE_TEXT",
    "gate_decision",
    "select_detections",
    "to_original",
    "probs_to_original",
    "scale_boxes_to_original",
    "MultiCheXNetPostprocessor",
    "MultiCheXNetInferer",
]

#: name of the gate rule, as saved in the model description (``monai_mcx.model.GATE_RULES``)
GATE_RULE = "any_class_at_threshold"
#: the gate rule in words (report.md, README)
GATE_RULE_TEXT = "an image is positive when some class reaches its own threshold (any_k p_k >= t_k)"


def gate_decision(class_probs: Tensor | np.ndarray | None, class_thresholds: Sequence[float]) -> Tensor | None:
    """The gate: ``any_k class_probs[:, k] >= class_thresholds[k]``.

    Args:
        class_probs: ``(B, K)`` probabilities, or None (no classifier: the caller lets everything through).
        class_thresholds: ``K`` per-class thresholds.

    Returns:
        ``(B,)`` bool tensor (on ``class_probs``' device), or None when ``class_probs`` is None.
    """
    if class_probs is None:
        return None
    probs = torch.as_tensor(class_probs)
    if probs.ndim != 2:
        raise ValueError(f"class_probs must be (B, K), got {tuple(probs.shape)}.")
    thr = torch.as_tensor([float(t) for t in class_thresholds], dtype=probs.dtype, device=probs.device)
    if thr.numel() != probs.shape[1]:
        raise ValueError(f"{thr.numel()} class thresholds for {probs.shape[1]} classes.")
    return (probs >= thr[None]).any(dim=1)


def select_detections(det: Mapping[str, Tensor], score_threshold: float, keep: bool = True) -> dict[str, Tensor]:
    """The boxes of one image with ``score >= score_threshold`` (all of them dropped when ``keep`` is False).

    Args:
        det: ``{"boxes": (M, 4), "scores": (M,), "labels": (M,)}`` (``labels`` optional).

    Returns:
        a dict of the same keys with the selected rows, order kept (decreasing score).
    """
    scores = torch.as_tensor(det[DetKeys.SCORES]).reshape(-1)
    sel = scores >= float(score_threshold)
    if not keep:
        sel = torch.zeros_like(sel)
    out = {
        DetKeys.BOXES.value: torch.as_tensor(det[DetKeys.BOXES]).reshape(-1, 4)[sel],
        DetKeys.SCORES.value: scores[sel],
    }
    if DetKeys.LABELS in det:
        out[DetKeys.LABELS.value] = torch.as_tensor(det[DetKeys.LABELS]).reshape(-1)[sel]
    return out


def _np(x: Any, dtype=np.float64) -> np.ndarray:
    if isinstance(x, Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def probs_to_original(probs: Tensor | np.ndarray, original_size: Sequence[int]) -> Tensor:
    """Maps of the network geometry resized to the ORIGINAL image: the one resampling rule of masks and saliency.

    Args:
        probs: ``(..., w, h)`` probabilities (or saliency maps) at the network input size: ``(w, h)``,
            ``(1, w, h)``, ``(B, C, w, h)``, ...
        original_size: ``(W, H)`` of the original image (x first, MONAI order).

    Returns:
        ``(..., W, H)`` float32 CPU tensor (same leading dims), bilinear (``align_corners=False``); threshold it
        for the mask.
    """
    seg = torch.as_tensor(probs).detach().float().cpu()
    lead = seg.shape[:-2]
    size = [int(v) for v in original_size]
    out = F.interpolate(seg.reshape(-1, 1, *seg.shape[-2:]), size=size, mode="bilinear", align_corners=False)
    return out.reshape(*lead, *size)


def scale_boxes_to_original(boxes: Any, input_size: Sequence[int], original_size: Sequence[int]) -> np.ndarray:
    """``xyxy`` boxes in the network input's pixels -> the original image's pixels (float64, ``(M, 4)``).

    Each axis is scaled by ``original / input`` (the inverse of the bundle's resize) and clipped to
    ``[0, W] x [0, H]``; ``input_size`` and ``original_size`` are ``(W, H)``.
    """
    orig = [float(v) for v in original_size]
    scale = np.array([o / float(s) for o, s in zip(orig, input_size)] * 2)
    return np.clip(_np(boxes).reshape(-1, 4) * scale, 0, np.array(orig * 2, dtype=np.float64))


def to_original(
    pred: Mapping[str, Any], index: int, original_size: Sequence[int], seg_threshold: float = 0.5
) -> dict[str, Any]:
    """One image of a post-processed batch, in the ORIGINAL image's pixels: the only place that maps back.

    The mask is the seg probability map resized (bilinear, ``align_corners=False``) to the original ``(W, H)``,
    thresholded at ``seg_threshold`` and gated; boxes are scaled by ``original / input`` per axis and clipped to
    ``[0, W] x [0, H]``.

    Args:
        pred: the output of :class:`MultiCheXNetPostprocessor` for a batch (network geometry).
        index: the image's index in the batch.
        original_size: ``(W, H)`` of the original image (x first, MONAI order).
        seg_threshold: the mask threshold (the post-processor's).

    Returns:
        ``size_wh`` ``[W, H]``; ``class_probs`` ``(K,)`` numpy or None (calibrated when the post-processor is);
        ``gate`` bool; ``mask`` /
        ``mask_ungated`` ``(W, H)`` bool numpy (None without a segmentation head); ``boxes`` ``(M, 4)`` float64
        ``xyxy`` original pixels with ``scores`` ``(M,)`` and ``labels`` ``(M,)`` (gated, operating point),
        ``boxes_ungated`` / ``scores_ungated`` / ``labels_ungated`` (operating point, ungated); empty arrays
        without a localization head (``has_boxes`` False).
    """
    orig = [int(v) for v in original_size]
    if len(orig) != 2 or min(orig) <= 0:
        raise ValueError(f"original_size must be a positive (W, H), got {original_size}.")
    out: dict[str, Any] = {OriginalKeys.SIZE_WH.value: orig}
    probs = pred.get(PredKeys.CLASS_PROBS)
    out[OriginalKeys.CLASS_PROBS.value] = None if probs is None else _np(probs[index]).reshape(-1)
    gate = pred.get(PredKeys.GATE)
    positive = True if gate is None else bool(gate[index])
    out[OriginalKeys.GATE.value] = positive
    out[OriginalKeys.MASK.value] = out[OriginalKeys.MASK_UNGATED.value] = None
    in_size = None
    if PredKeys.SEG_PROBS in pred:
        seg = pred[PredKeys.SEG_PROBS][index]  # (1, w, h)
        in_size = [int(s) for s in seg.shape[-2:]]
        mask = (probs_to_original(seg, orig)[0] >= float(seg_threshold)).numpy()
        out[OriginalKeys.MASK_UNGATED.value] = mask
        out[OriginalKeys.MASK.value] = mask & positive
    out[OriginalKeys.HAS_BOXES.value] = PredKeys.DETECTIONS_OP in pred
    for names, key in (
        ((OriginalKeys.BOXES, OriginalKeys.SCORES, OriginalKeys.LABELS), PredKeys.DETECTIONS_GATED),
        (
            (OriginalKeys.BOXES_UNGATED, OriginalKeys.SCORES_UNGATED, OriginalKeys.LABELS_UNGATED),
            PredKeys.DETECTIONS_OP,
        ),
    ):
        boxes, scores, labels = np.zeros((0, 4)), np.zeros((0,)), np.zeros((0,), dtype=np.int64)
        if key in pred:
            det = pred[key][index]
            size = pred.get(PredKeys.INPUT_SIZE) or in_size
            if size is None:
                raise ValueError("to_original needs the network input size (the post-processor records it).")
            boxes = scale_boxes_to_original(det[DetKeys.BOXES], size, orig)
            scores = _np(det[DetKeys.SCORES]).reshape(-1)
            labels = _np(det.get(DetKeys.LABELS, np.zeros(len(scores))), dtype=np.int64).reshape(-1)
        out.update(zip([n.value for n in names], (boxes, scores, labels)))
    return out


class MultiCheXNetPostprocessor:
    """Network output dict -> post-processed prediction (module docstring), for one set of deployed settings.

    Args:
        class_names: the classifier's class names (``K``).
        class_thresholds: per-class gate / decision thresholds: one number for every class, ``K`` numbers, or a
            ``{class: threshold}`` mapping.
        seg_threshold: mask threshold on the seg probability.
        box_score_threshold: the box operating point (boxes with ``score >= box_score_threshold`` go out).
        box_decoder: a :class:`monai_mcx.networks.BoxDecoder` (anchors + MONAI box coder / selector), or None
            to build one from ``base_anchor_shapes`` and the decoder settings below (None with no anchors: no
            box decoding).
        base_anchor_shapes, feature_map_scales: anchors (:func:`monai_mcx.networks.make_anchor_generator`).
        candidate_score_thresh, topk_candidates_per_level, nms_thresh, detections_per_img: the decoder's
            ``BoxSelector`` settings (``candidate_score_thresh`` is the floor of the boxes kept for AP; the
            operating point is ``box_score_threshold``).
        calibration: the classifier's calibration: a :class:`monai_mcx.metrics.TemperatureScaling`, its
            ``to_dict()`` (``{"method": "temperature", "temperatures": {class: T}, ...}``, the model description's
            ``calibration``), or None (uncalibrated: ``class_probs`` = ``sigmoid(class_logits)``). The class
            thresholds must have been chosen on probabilities calibrated the same way.

    ``postprocessor(outputs, images)``: ``outputs`` the network's dict, ``images`` the ``(B, C, W, H)`` input
    batch (its shape gives the anchors and the input size). Runs without gradient, in float32.
    """

    def __init__(
        self,
        class_names: Sequence[str] = ("pneumonia",),
        class_thresholds: float | Sequence[float] | Mapping[str, float] = 0.5,
        seg_threshold: float = 0.5,
        box_score_threshold: float = 0.0,
        box_decoder: Callable | None = None,
        base_anchor_shapes: Sequence[Sequence[float]] | None = None,
        feature_map_scales: Sequence[int] = (1, 2, 4),
        candidate_score_thresh: float = 0.05,
        topk_candidates_per_level: int = 1000,
        nms_thresh: float = 0.4,
        detections_per_img: int = 20,
        calibration: Any = None,
    ) -> None:
        self.class_names = [str(c) for c in class_names]
        self.class_thresholds = self._thresholds(class_thresholds)
        self.calibration = self._calibration(calibration)
        self.seg_threshold = float(seg_threshold)
        self.box_score_threshold = float(box_score_threshold)
        self.gate_rule = GATE_RULE
        if box_decoder is None and base_anchor_shapes is not None:
            box_decoder = BoxDecoder(
                make_anchor_generator(
                    [list(s) for s in base_anchor_shapes], feature_map_scales=list(feature_map_scales)
                ),
                score_thresh=candidate_score_thresh,
                topk_candidates_per_level=topk_candidates_per_level,
                nms_thresh=nms_thresh,
                detections_per_img=detections_per_img,
            )
        self.box_decoder = box_decoder

    def _calibration(self, value: Any) -> Any:
        """None (uncalibrated) or a :class:`~monai_mcx.metrics.TemperatureScaling` over ``class_names``."""
        if value is None or value is False or (isinstance(value, Mapping) and not value):
            return None
        if isinstance(value, TemperatureScaling):
            if list(value.class_names) != self.class_names:
                raise ValueError(
                    f"calibration is for the classes {value.class_names}, the post-processor's are {self.class_names}."
                )
            return value
        if isinstance(value, Mapping):
            return TemperatureScaling.from_dict(value, self.class_names, source="calibration")
        raise TypeError(f"calibration must be None, a TemperatureScaling or its dict, got {type(value).__name__}.")

    @property
    def calibrated(self) -> bool:
        """Whether ``class_probs`` are calibrated (the model has a calibration)."""
        return self.calibration is not None

    def probabilities(self, class_logits: Tensor | np.ndarray) -> Tensor | np.ndarray:
        """The probabilities that leave the model: ``sigmoid(class_logits / T)`` (``sigmoid(class_logits)`` when
        uncalibrated); ``(..., K)`` numpy or torch, type kept."""
        if self.calibration is not None:
            return self.calibration.probabilities(class_logits)
        if isinstance(class_logits, Tensor):
            return torch.sigmoid(class_logits)
        return 1.0 / (1.0 + np.exp(-np.asarray(class_logits, dtype=np.float64)))

    def _thresholds(self, value: float | Sequence[float] | Mapping[str, float]) -> list[float]:
        k = len(self.class_names)
        if isinstance(value, Mapping):
            missing = [c for c in self.class_names if c not in value]
            if missing:
                raise ValueError(f"class_thresholds has no threshold for the classes {missing} (has {sorted(value)}).")
            return [float(value[c]) for c in self.class_names]
        thr = np.asarray(value, dtype=np.float64).reshape(-1)
        if thr.size == 1:
            return [float(thr[0])] * k
        if thr.size != k:
            raise ValueError(f"{thr.size} class thresholds for {k} classes {self.class_names}.")
        return [float(t) for t in thr]

    @classmethod
    def from_description(cls, description: Any, **overrides: Any) -> MultiCheXNetPostprocessor:
        """The post-processing of a described model (a :class:`monai_mcx.model.ModelDescription` object; this module
        reads no file -- get one with :func:`monai_mcx.model.load_model` or :func:`monai_mcx.model.read_description`):
        class names and per-class thresholds, the calibration (per-class temperatures; None: uncalibrated), gate
        rule, mask threshold, box operating point (None in the description: every candidate box) and the candidate
        box decoder (anchors, NMS, detections per image). ``overrides`` (``class_thresholds``, ``seg_threshold``,
        ``box_score_threshold``, ``calibration``) replace single settings, e.g. for an explicit what-if.

        Raises:
            TypeError: ``description`` is a path (read it first).
        """
        if isinstance(description, (str, bytes)) or hasattr(description, "__fspath__"):
            raise TypeError(
                f"from_description takes a model description, not the path {description!r}: read it first with "
                "monai_mcx.model.load_model (weights verified) or monai_mcx.model.read_description"
            )
        pp = description.post_processing()
        if pp["gate_rule"] != GATE_RULE:
            where = getattr(description, "path", None) or "the model description"
            raise ValueError(f"{where}: gate_rule {pp['gate_rule']!r} is not implemented (only {GATE_RULE!r}).")
        box_t = pp["box_score_threshold"]
        boxes = Task.LOCALIZATION in description.tasks
        out = cls(
            class_names=pp["class_names"],
            class_thresholds=pp["class_thresholds"],
            seg_threshold=pp["mask_threshold"],
            box_score_threshold=0.0 if box_t is None else box_t,
            base_anchor_shapes=description.base_anchor_shapes if boxes else None,
            feature_map_scales=description.feature_map_scales,
            candidate_score_thresh=pp["candidate_score_thresh"],
            nms_thresh=pp["nms_thresh"],
            detections_per_img=pp["detections_per_img"],
            calibration=pp.get("calibration"),
        )
        return out.with_settings(**overrides) if overrides else out

    # -- settings ----------------------------------------------------------------------------------------
    def with_settings(
        self,
        class_thresholds: float | Sequence[float] | Mapping[str, float] | None = None,
        box_score_threshold: float | None = None,
        seg_threshold: float | None = None,
        calibration: Any = None,
    ) -> MultiCheXNetPostprocessor:
        """A copy with other thresholds (the same decoder): how evaluation applies the thresholds it chose.
        ``None`` keeps a setting; ``calibration=False`` (or ``{}``) removes the calibration (raw probabilities)."""
        other = copy.copy(self)
        if calibration is not None:
            other.calibration = self._calibration(calibration)
        if class_thresholds is not None:
            other.class_thresholds = self._thresholds(class_thresholds)
        if box_score_threshold is not None:
            other.box_score_threshold = float(box_score_threshold)
        if seg_threshold is not None:
            other.seg_threshold = float(seg_threshold)
        return other

    def settings(self) -> dict[str, Any]:
        """The deployed settings as plain values (for reports and the model description)."""
        return {
            "class_thresholds": dict(zip(self.class_names, self.class_thresholds)),
            "calibration": None if self.calibration is None else self.calibration.to_dict(),
            "gate_rule": self.gate_rule,
            "seg_threshold": self.seg_threshold,
            "box_score_threshold": self.box_score_threshold,
        }

    # -- the steps ---------------------------------------------------------------------------------------
    def gate(self, class_probs: Tensor | np.ndarray | None) -> Tensor | None:
        """:func:`gate_decision` with this post-processor's class thresholds."""
        return gate_decision(class_probs, self.class_thresholds)

    def __call__(self, outputs: Mapping[str, Any], images: Tensor) -> dict[str, Any]:
        pred: dict[str, Any] = {
            k: ([t.detach().float() for t in v] if isinstance(v, (list, tuple)) else v.detach().float())
            for k, v in outputs.items()
        }
        pred[PredKeys.INPUT_SIZE.value] = [int(s) for s in images.shape[2:]]
        with torch.no_grad():
            if PredKeys.SEG_LOGITS in pred:
                pred[PredKeys.SEG_PROBS.value] = torch.sigmoid(pred[PredKeys.SEG_LOGITS])
            if self.box_decoder is not None and PredKeys.BOX_CLS_LOGITS in pred:
                pred[PredKeys.DETECTIONS.value] = self.box_decoder(pred, images)
        return self.apply_operating_point(pred, batch_size=int(images.shape[0]), device=images.device)

    def apply_operating_point(
        self, pred: Mapping[str, Any], batch_size: int | None = None, device: torch.device | str | None = None
    ) -> dict[str, Any]:
        """The operating-point part of the post-processing, from the outputs that do not depend on it: a copy of
        ``pred`` whose ``class_probs_raw``, ``class_probs`` (this calibration), ``gate`` (these class thresholds),
        ``seg_mask``/``seg_mask_gated`` (this mask threshold) and ``detections_op``/``detections_gated`` (this box
        score threshold) are computed from ``class_logits``, ``seg_probs`` and ``detections``. :meth:`__call__`
        ends with it; a prediction kept from an evaluation can be written again at the operating point that
        evaluation chose (:class:`monai_mcx.handlers.EvaluationPredictionWriter`).

        Args:
            pred: a post-processed batch (or its ``class_logits``, ``seg_probs``, ``detections``, ``input_size``).
            batch_size: ``B`` (default: from the outputs present); device: where the gate of a network without a
                classifier is made.
        """
        pred = dict(pred)
        logits, seg, dets = (pred.get(k) for k in (PredKeys.CLASS_LOGITS, PredKeys.SEG_PROBS, PredKeys.DETECTIONS))
        if batch_size is None:
            batch_size = next(len(v) for v in (logits, seg, dets) if v is not None)
        with torch.no_grad():
            gate = None
            if logits is not None:
                pred[PredKeys.CLASS_PROBS_RAW.value] = torch.sigmoid(logits)
                pred[PredKeys.CLASS_PROBS.value] = self.probabilities(logits)
                gate = self.gate(pred[PredKeys.CLASS_PROBS])
            if gate is None:
                where = device if device is not None else next((v.device for v in (seg,) if v is not None), "cpu")
                gate = torch.ones(batch_size, dtype=torch.bool, device=where)
            pred[PredKeys.GATE.value] = gate
            if seg is not None:
                mask = seg >= self.seg_threshold
                pred[PredKeys.SEG_MASK.value] = mask
                pred[PredKeys.SEG_MASK_GATED.value] = mask & gate.reshape(-1, 1, 1, 1).to(mask.device)
            if dets is not None:
                pred[PredKeys.DETECTIONS_OP.value] = [select_detections(d, self.box_score_threshold) for d in dets]
                pred[PredKeys.DETECTIONS_GATED.value] = [
                    select_detections(d, self.box_score_threshold, keep=bool(g)) for d, g in zip(dets, gate)
                ]
        return pred

    def to_original(self, pred: Mapping[str, Any], index: int, original_size: Sequence[int]) -> dict[str, Any]:
        """:func:`to_original` with this post-processor's mask threshold."""
        return to_original(pred, index, original_size, seg_threshold=self.seg_threshold)


class MultiCheXNetInferer(Inferer):
    """MONAI ``Inferer``: run the network, then the :class:`MultiCheXNetPostprocessor` (as the model zoo's
    ``RetinaNetInferer`` runs its detector's post-processing).

    Args:
        postprocessor: the post-processing (its settings are the deployed model's).
        inferer: how to run the network (default: a plain forward, as MONAI's ``SimpleInferer``).
        tasks: the heads to run (``network(inputs, tasks=...)``, e.g. ``["classification"]`` for a fast triage
            pass); None runs every head. Without the classification head there is no gate: every image gets its
            mask and boxes.

    ``inferer(inputs, network)`` returns the post-processed dict of the module docstring. Post-processing runs
    in float32 with autocast off (AMP only affects the network's forward).
    """

    def __init__(
        self,
        postprocessor: MultiCheXNetPostprocessor,
        inferer: Inferer | None = None,
        tasks: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        self.postprocessor = postprocessor
        self.inferer = inferer
        self.tasks = None if tasks is None else [str(t) for t in tasks]
        if self.tasks is not None and not self.tasks:
            raise ValueError("MultiCheXNetInferer: tasks must name at least one head (or be None for every head).")

    def __call__(self, inputs: Tensor, network: Callable, *args: Any, **kwargs: Any) -> dict[str, Any]:
        if self.tasks is not None:
            kwargs.setdefault("tasks", self.tasks)
        outputs = (
            self.inferer(inputs, network, *args, **kwargs)
            if self.inferer is not None
            else network(inputs, *args, **kwargs)
        )
        with torch.autocast(torch.device(inputs.device).type, enabled=False):
            return self.postprocessor(outputs, torch.as_tensor(inputs))
