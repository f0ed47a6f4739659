"""The post-processing component (:class:`MultiCheXNetPostprocessor`) and the MONAI ``Inferer`` that runs it;
the package docstring (:mod:`monai_mcx.inferers`) describes the prediction it returns."""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.inferers import Inferer
from torch import Tensor

from monai_mcx.keys import DatalistKeys, PredKeys, Task
from monai_mcx.metrics.calibration import TemperatureScaling
from monai_mcx.networks import BoxDecoder, make_anchor_generator

from .decisions import GATE_RULE, boxes_in_field, gate_decision, keep_largest_components, select_detections
from .original import to_original

__all__ = ["MultiCheXNetPostprocessor", "MultiCheXNetInferer"]


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
        operating_points: ``{population: {"class_thresholds", "gate_thresholds", "box_score_threshold"}}``
            (thresholds as ``K`` numbers or ``{class: t}``; a missing gate / box entry: the class thresholds / the
            global box score); None: one operating point for every image.
        default_population: the point of an image whose population is unknown (None: the global point).
        lung_restriction: ``{"enabled", "lung_threshold", "dilation", "components"}`` (module docstring), or None;
            ``components`` (default 2): the lung mask keeps that many largest connected components (0: all).

    ``postprocessor(outputs, images, populations=None)``: ``outputs`` the network's dict, ``images`` the ``(B, C, W, H)`` input
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
        operating_points: Mapping[str, Mapping[str, Any]] | None = None,
        default_population: str | None = None,
        lung_restriction: Mapping[str, Any] | None = None,
    ) -> None:
        self.class_names = [str(c) for c in class_names]
        self.class_thresholds = self._thresholds(class_thresholds)
        self.operating_points = self._points(operating_points)
        self.default_population = default_population
        lr = dict(lung_restriction or {})
        self.lung_restriction = bool(lr.get("enabled", False))
        self.lung_threshold = float(lr.get("lung_threshold", 0.5))
        self.lung_dilation = float(lr.get("dilation", 0.0))
        self.lung_components = int(lr.get("components", 2))
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

    def _points(self, points: Mapping[str, Mapping[str, Any]] | None) -> dict[str, dict[str, Any]]:
        """``{population: {"class_thresholds": [K], "gate_thresholds": [K], "box_score_threshold": float or None}}``."""
        out = {}
        for pop, point in (points or {}).items():
            cls_t = self._thresholds(point["class_thresholds"])
            gate = point.get("gate_thresholds")
            box = point.get("box_score_threshold")
            out[str(pop)] = {
                "class_thresholds": cls_t,
                "gate_thresholds": cls_t if gate is None else self._thresholds(gate),
                "box_score_threshold": None if box is None else float(box),
            }
        return out

    def point(self, population: str | None) -> tuple[str | None, list[float], list[float], float]:
        """``(population used or None, class thresholds, gate thresholds, box score)`` for an image of
        ``population`` (None: the default population; a population without a point: the global settings)."""
        name = population if population is not None else self.default_population
        p = self.operating_points.get(name) if name is not None else None
        if p is None:
            return None, self.class_thresholds, self.class_thresholds, self.box_score_threshold
        box = self.box_score_threshold if p["box_score_threshold"] is None else p["box_score_threshold"]
        return name, p["class_thresholds"], p["gate_thresholds"], box

    def point_record(self, population: Mapping[str, Any]) -> dict[str, Any]:
        """The operating point an image got, as the outputs state it: ``population`` and ``reason`` (the image's
        ``population_point`` record) with the point's ``class_thresholds`` and ``gate_thresholds`` (``{class: t}``)
        and ``box_score_threshold``."""
        _, cls_t, gate_t, box_t = self.point(population.get(DatalistKeys.POPULATION))
        return {
            **population,
            "class_thresholds": dict(zip(self.class_names, cls_t)),
            "gate_thresholds": dict(zip(self.class_names, gate_t)),
            "box_score_threshold": box_t,
        }

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
            operating_points={p: description.operating_point(p) for p in (pp.get("operating_points") or {})},
            default_population=pp.get("default_population"),
            lung_restriction=pp.get("lung_restriction"),
        )
        return out.with_settings(**overrides) if overrides else out

    # -- settings ----------------------------------------------------------------------------------------
    def with_settings(
        self,
        class_thresholds: float | Sequence[float] | Mapping[str, float] | None = None,
        box_score_threshold: float | None = None,
        seg_threshold: float | None = None,
        calibration: Any = None,
        lung_restriction: bool | None = None,
        operating_points: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> MultiCheXNetPostprocessor:
        """A copy with other thresholds (the same decoder): how evaluation applies the thresholds it chose.
        ``None`` keeps a setting; ``calibration=False`` (or ``{}``) removes the calibration (raw probabilities);
        ``lung_restriction`` switches the restriction on or off (its threshold and dilation are kept);
        ``operating_points={}`` removes the per-population points (every image gets the global point), and so does
        a ``class_thresholds`` or ``box_score_threshold`` given without ``operating_points``."""
        other = copy.copy(self)
        if calibration is not None:
            other.calibration = self._calibration(calibration)
        if class_thresholds is not None:
            other.class_thresholds = self._thresholds(class_thresholds)
        if box_score_threshold is not None:
            other.box_score_threshold = float(box_score_threshold)
        if seg_threshold is not None:
            other.seg_threshold = float(seg_threshold)
        if lung_restriction is not None:
            other.lung_restriction = bool(lung_restriction)
        if operating_points is not None:
            other.operating_points = other._points(operating_points or {})
        elif class_thresholds is not None or box_score_threshold is not None:
            other.operating_points = {}  # an explicit threshold is a what-if for every image, whatever its population
        return other

    def settings(self) -> dict[str, Any]:
        """The deployed settings as plain values (for reports and the model description)."""
        return {
            "class_thresholds": dict(zip(self.class_names, self.class_thresholds)),
            "calibration": None if self.calibration is None else self.calibration.to_dict(),
            "gate_rule": self.gate_rule,
            "seg_threshold": self.seg_threshold,
            "box_score_threshold": self.box_score_threshold,
            "operating_points": copy.deepcopy(self.operating_points),
            "default_population": self.default_population,
            "lung_restriction": {
                "enabled": self.lung_restriction,
                "lung_threshold": self.lung_threshold,
                "dilation": self.lung_dilation,
                "components": self.lung_components,
            },
        }

    # -- the steps ---------------------------------------------------------------------------------------
    def gate(
        self, class_probs: Tensor | np.ndarray | None, populations: Sequence[str | None] | None = None
    ) -> Tensor | None:
        """:func:`gate_decision` with this post-processor's class thresholds, or, with ``populations`` (one name or
        None per image, as ``population_point`` records them), each image's population's gate thresholds."""
        if populations is None or class_probs is None:
            return gate_decision(class_probs, self.class_thresholds)
        probs = torch.as_tensor(class_probs)
        if len(populations) != probs.shape[0]:
            raise ValueError(f"{len(populations)} populations for {probs.shape[0]} images.")
        thr = torch.tensor([self.point(p)[2] for p in populations], dtype=probs.dtype, device=probs.device)
        return (probs >= thr.reshape(probs.shape[0], -1)).any(dim=1)

    def __call__(
        self, outputs: Mapping[str, Any], images: Tensor, populations: Sequence[Any] | None = None
    ) -> dict[str, Any]:
        pred: dict[str, Any] = {
            k: ([t.detach().float() for t in v] if isinstance(v, (list, tuple)) else v.detach().float())
            for k, v in outputs.items()
        }
        pred[PredKeys.INPUT_SIZE.value] = [int(s) for s in images.shape[2:]]
        with torch.no_grad():
            if PredKeys.SEG_LOGITS in pred:
                pred[PredKeys.SEG_PROBS.value] = torch.sigmoid(pred[PredKeys.SEG_LOGITS])
            if PredKeys.LUNG_LOGITS in pred:
                pred[PredKeys.LUNG_PROBS.value] = torch.sigmoid(pred[PredKeys.LUNG_LOGITS])
            if self.box_decoder is not None and PredKeys.BOX_CLS_LOGITS in pred:
                pred[PredKeys.DETECTIONS.value] = self.box_decoder(pred, images)
        return self.apply_operating_point(
            pred, batch_size=int(images.shape[0]), device=images.device, populations=populations
        )

    def lung_mask(self, lung_probs: Tensor) -> Tensor:
        """``(B, 1, W, H)`` bool: ``lung_probs >= lung_threshold``, its ``components`` largest connected components."""
        return keep_largest_components(lung_probs >= self.lung_threshold, self.lung_components)

    def lung_field(self, lungs: Tensor) -> Tensor:
        """``(B, 1, W, H)`` bool: where lesions may be. With the restriction on, the lung mask ``lungs``
        (:meth:`lung_mask`) dilated by ``dilation * W`` pixels (a square structuring element), all True for an image
        whose lung mask is empty; with it off, all True."""
        if not self.lung_restriction:
            return torch.ones_like(lungs, dtype=torch.bool)
        lungs = lungs.float()
        r = int(round(self.lung_dilation * lungs.shape[-2]))
        field = F.max_pool2d(lungs, kernel_size=2 * r + 1, stride=1, padding=r) > 0.5 if r > 0 else lungs > 0.5
        empty = lungs.flatten(1).amax(dim=1) <= 0
        return field | empty.reshape(-1, 1, 1, 1)

    def apply_operating_point(
        self,
        pred: Mapping[str, Any],
        batch_size: int | None = None,
        device: torch.device | str | None = None,
        populations: Sequence[Any] | None = None,
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
            populations: per image, its population (a name or None) or ``(name, reason)`` as
                :func:`monai_mcx.data.populations.resolve_population` returns; None: every image unknown.
        """
        pred = dict(pred)
        logits, seg, dets = (pred.get(k) for k in (PredKeys.CLASS_LOGITS, PredKeys.SEG_PROBS, PredKeys.DETECTIONS))
        lung = pred.get(PredKeys.LUNG_PROBS)
        if batch_size is None:
            batch_size = next(len(v) for v in (logits, seg, dets, lung) if v is not None)
        if populations is None:
            populations = [None] * batch_size
        if len(populations) != batch_size:
            raise ValueError(f"{len(populations)} populations for a batch of {batch_size} images.")
        points, records = [], []
        for p in populations:
            name, reason = p if isinstance(p, (tuple, list)) else (p, None if p is None else "given")
            if name is None:
                reason = "default" if self.default_population is not None else None
            used, cls_t, _, box_t = self.point(name)
            points.append((cls_t, box_t))
            records.append({DatalistKeys.POPULATION.value: used, "reason": reason if used is not None else None})
        pred[PredKeys.POPULATION.value] = records
        with torch.no_grad():
            gate = None
            if logits is not None:
                pred[PredKeys.CLASS_PROBS_RAW.value] = torch.sigmoid(logits)
                probs = self.probabilities(logits)
                pred[PredKeys.CLASS_PROBS.value] = probs
                cls_t = torch.tensor([p[0] for p in points], dtype=probs.dtype, device=probs.device)
                pred[PredKeys.CLASS_THRESHOLDS.value] = cls_t
                gate = self.gate(probs, [r[DatalistKeys.POPULATION] for r in records])
            if gate is None:
                where = device if device is not None else next((v.device for v in (seg, lung) if v is not None), "cpu")
                gate = torch.ones(batch_size, dtype=torch.bool, device=where)
            pred[PredKeys.GATE.value] = gate
            field = None
            if lung is not None:
                lungs = self.lung_mask(lung)
                pred[PredKeys.LUNG_MASK.value] = lungs
                field = self.lung_field(lungs)
                pred[PredKeys.LUNG_FIELD.value] = field
            if seg is not None:
                mask = seg >= self.seg_threshold
                if field is not None:
                    mask = mask & field.to(mask.device)
                pred[PredKeys.SEG_MASK.value] = mask
                pred[PredKeys.SEG_MASK_GATED.value] = mask & gate.reshape(-1, 1, 1, 1).to(mask.device)
            if dets is not None:
                op = []
                for i, d in enumerate(dets):
                    kept = select_detections(d, points[i][1])
                    if field is not None and self.lung_restriction:
                        kept = boxes_in_field(kept, field[i, 0])
                    op.append(kept)
                pred[PredKeys.DETECTIONS_OP.value] = op
                pred[PredKeys.DETECTIONS_GATED.value] = [
                    select_detections(d, 0.0, keep=bool(g)) for d, g in zip(op, gate)
                ]
        return pred

    def to_original(self, pred: Mapping[str, Any], index: int, original_size: Sequence[int]) -> dict[str, Any]:
        """:func:`to_original` with this post-processor's mask and lung thresholds."""
        return to_original(
            pred, index, original_size, seg_threshold=self.seg_threshold, lung_threshold=self.lung_threshold
        )


class MultiCheXNetInferer(Inferer):
    """MONAI ``Inferer``: run the network, then the :class:`MultiCheXNetPostprocessor` (as the model zoo's
    ``RetinaNetInferer`` runs its detector's post-processing).

    Args:
        postprocessor: the post-processing (its settings are the deployed model's).
        inferer: how to run the network (default: a plain forward, as MONAI's ``SimpleInferer``).
        tasks: the heads to run (``network(inputs, tasks=...)``, e.g. ``["classification"]`` for a fast triage
            pass); None runs every head. Without the classification head there is no gate: every image gets its
            mask and boxes.

    ``inferer(inputs, network, populations=None)`` (per image, see
    :meth:`MultiCheXNetPostprocessor.apply_operating_point`) returns the post-processed dict of the module docstring. Post-processing runs
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

    def __call__(
        self, inputs: Tensor, network: Callable, *args: Any, populations: Sequence[Any] | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        if self.tasks is not None:
            kwargs.setdefault("tasks", self.tasks)
        outputs = (
            self.inferer(inputs, network, *args, **kwargs)
            if self.inferer is not None
            else network(inputs, *args, **kwargs)
        )
        with torch.autocast(torch.device(inputs.device).type, enabled=False):
            return self.postprocessor(outputs, torch.as_tensor(inputs), populations=populations)
