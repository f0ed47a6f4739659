"""The model description: what a checkpoint is and how to use it (the schema of ``model.json``).

A trained model is ``model.pt`` (a plain network state dict, as MONAI's ``CheckpointSaver`` writes it and as
``python -m monai.bundle ckpt_export`` and every model-zoo tool expect) plus its description, the JSON sidecar
``model.json`` beside it. The description holds everything needed to rebuild the network and its post-processing
(:mod:`monai_mcx.model.build`) and ``weights_sha256``, the content hash of the weights it belongs to
(:mod:`monai_mcx.model.files` refuses a description whose hash does not match the checkpoint). This module is the
schema alone: the fields, their validation, JSON round trips and the updates evaluation makes (``with_*``).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from monai_mcx.keys import ALL_TASKS, Task
from monai_mcx.metrics.calibration import TemperatureScaling
from monai_mcx.model.errors import DescriptionError
from monai_mcx.model.reconcile import reconcile
from monai_mcx.model.values import jsonable, utc_now

__all__ = ["DESCRIPTION_FORMAT", "DESCRIPTION_VERSION", "GATE_RULES", "DEFAULT_INTENSITY", "ModelDescription"]

DESCRIPTION_FORMAT = "monai_mcx.model_description"
DESCRIPTION_VERSION = 1

#: gate rules: ``any_class_at_threshold``: an image is positive when some class k has p_k >= t_k (its own
#: threshold); the segmentation and localization outputs of a negative image are emptied.
GATE_RULES = ("any_class_at_threshold",)

#: the intensity pipeline of the bundle (``LoadCXRd`` alone gives the [0, 1] image, see README "Intensity")
DEFAULT_INTENSITY = {
    "name": "cxr_unit_range",
    "loader": "monai_mcx.transforms.io.LoadCXRd",
    "output_range": [0.0, 1.0],
    "rule": "8-bit PNG/JPEG: x / 255; DICOM: modality LUT, VOI window mapped to [0, 1] (else the stored-bits "
    "range), MONOCHROME1 inverted",
    "resize": "area interpolation to spatial_size",
}


@dataclass
class ModelDescription:
    """What a checkpoint is and how to use it; saved as JSON beside it (``model.pt`` -> ``model.json``).

    Network (build with :func:`monai_mcx.model.build_network`; these must match the weights):
        encoder: encoder name (:func:`monai_mcx.networks.build_encoder`), e.g. ``"densenet121"``.
        class_names: the K classes of the classification head, in output order.
        tasks: built heads, canonical order (``classification``, ``segmentation``, ``localization``).
        in_channels: image channels.
        network_kwargs: other :class:`~monai_mcx.networks.MultiCheXNet` arguments that were not left at their
            defaults (``dropout``, ``loc_fpn_channels``, ...); ``num_anchors`` is ``len(base_anchor_shapes)``.

    Input:
        spatial_size: network input ``(W, H)`` (x first, the bundle's geometry convention).
        intensity: the intensity pipeline (:data:`DEFAULT_INTENSITY`; ``name`` is what consumers compare).

    Boxes (build with :func:`monai_mcx.model.build_anchor_generator` /
    :func:`monai_mcx.model.build_box_decoder`):
        base_anchor_shapes: ``[[w, h], ...]`` input pixels at the finest head level (fitted on the training boxes).
        feature_map_scales: the anchor generator's per-level scales.
        candidate_score_thresh, nms_thresh, detections_per_img: the box decoder's candidate settings (scores below
            ``candidate_score_thresh`` never become boxes; NMS IoU; cap per image).

    Operating point (written by evaluation on the validation split, see
    :class:`monai_mcx.handlers.OperatingPointWriter`):
        class_thresholds: ``{class name: t_k}``; the decision for class k is ``p_k >= t_k``.
        thresholds_method: ``"default"`` (0.5, not chosen), ``"youden"``, ``"f1"``, or ``"manual"``.
        thresholds_split / thresholds_date: where and when they were chosen (None when not chosen).
        gate_rule: :data:`GATE_RULES` -- ``any_class_at_threshold``: positive when some class reaches its own
            threshold; a negative image gets an empty mask and no boxes.
        mask_threshold: the lesion mask is ``sigmoid(seg_logits) >= mask_threshold``.
        box_score_threshold: the box operating point: boxes scoring below it are dropped (None: not chosen yet,
            every candidate above ``candidate_score_thresh`` is kept).
        box_threshold_method / box_threshold_split / box_threshold_date: how it was chosen (e.g. ``"rsna"``: the
            threshold maximising the RSNA challenge metric on the validation split).
        calibration: the classifier's calibration, fitted by evaluation on the validation split (raw logits of the
            images with known labels) and applied by the post-processing everywhere probabilities leave the model:
            ``{"method": "temperature", "temperatures": {class: T}, "split": "validation", "fitted_on": n,
            "date": ...}`` (:class:`monai_mcx.metrics.TemperatureScaling`: ``p = sigmoid(z / T)``); None:
            uncalibrated (``sigmoid(z)``). The class thresholds are chosen on these calibrated probabilities.
        sensitivity_thresholds: ``{"sens90": {class: t}, "sens95": {class: t}}``: the thresholds reaching 90 % / 95 %
            sensitivity on the validation split (calibrated probabilities), chosen with the class thresholds; a test
            evaluation reports sensitivity / specificity at them. None: not chosen.
        operating_points: per-population operating points, ``{population: point}`` for populations of
            :data:`monai_mcx.data.populations.POPULATIONS`, each chosen on that population's validation images
            (:func:`monai_mcx.metrics.population_points.choose_population_point`)::

                {"class_thresholds": {class: t},        # the diagnosis decision p_k >= t_k (e.g. Youden)
                 "gate_thresholds": {class: t},         # the gate of the lesion heads (may differ: lesion recall)
                 "box_score_threshold": s or None,      # None: the global box_score_threshold
                 "sensitivity_thresholds": {...} or None,
                 "methods": {"class": ..., "gate": ..., "box": ...}, "split": ..., "n_images": n, "date": ...}

            An image whose population has no point uses the global fields above. None: one operating point for all.
        default_population: the population of an image when nothing tells it (no ``--population``, DICOM age,
            datalist population or known source; :func:`monai_mcx.data.populations.resolve_population`); None:
            such an image gets the global operating point.
        lung_restriction: with a ``lungs`` head, keep lesions inside the (dilated) predicted lung field::

                {"enabled": bool, "lung_threshold": 0.5, "dilation": 0.03, "components": 2}

            the lung mask keeps its ``components`` largest connected components (default 2, the two lungs; 0: all);
            ``dilation`` is the dilation radius as a fraction of the image width; a mask pixel outside the dilated
            field is removed and a box whose centre lies outside it is dropped (an image whose lung mask is empty
            is not restricted). None: no restriction.
        saliency: ``{"method", "layer"}`` of the saliency maps (:func:`monai_mcx.explain.saliency_settings`), e.g.
            ``{"method": "gradcam", "layer": "stride32"}`` (what ``train.json`` writes); None: that default.

    Provenance:
        training: :func:`monai_mcx.model.training_summary` (data sources, items per split, epochs, date, run name, ...).
        weights_file: the checkpoint's file name; weights_key: its entry holding the state dict (``None`` for a
            plain state dict, ``"model"`` for ``last.pt``).
        weights_sha256: :func:`~monai_mcx.networks.weights.state_dict_sha256` of the weights described.
        provenance: ``"trained"`` or ``"described after training"`` (:func:`monai_mcx.model.describe_legacy_checkpoint`).
        format, version: schema identification (:data:`DESCRIPTION_FORMAT`, :data:`DESCRIPTION_VERSION`).
    """

    class_names: list[str]
    tasks: list[str]
    encoder: str
    spatial_size: list[int]
    in_channels: int = 1
    network_kwargs: dict = field(default_factory=dict)
    intensity: dict = field(default_factory=lambda: dict(DEFAULT_INTENSITY))
    base_anchor_shapes: list[list[float]] | None = None
    feature_map_scales: list[float] = field(default_factory=lambda: [1.0, 2.0, 4.0])
    candidate_score_thresh: float = 0.05
    nms_thresh: float = 0.4
    detections_per_img: int = 20
    class_thresholds: dict[str, float] | None = None
    thresholds_method: str = "default"
    thresholds_split: str | None = None
    thresholds_date: str | None = None
    gate_rule: str = "any_class_at_threshold"
    mask_threshold: float = 0.5
    box_score_threshold: float | None = None
    box_threshold_method: str | None = None
    box_threshold_split: str | None = None
    box_threshold_date: str | None = None
    calibration: dict | None = None
    sensitivity_thresholds: dict | None = None
    operating_points: dict | None = None
    default_population: str | None = None
    lung_restriction: dict | None = None
    saliency: dict | None = None
    training: dict = field(default_factory=dict)
    weights_file: str | None = None
    weights_key: str | None = None
    weights_sha256: str | None = None
    provenance: str = "trained"
    format: str = DESCRIPTION_FORMAT
    version: int = DESCRIPTION_VERSION

    def __post_init__(self) -> None:
        if isinstance(self.class_names, str):
            self.class_names = [self.class_names]
        if isinstance(self.tasks, str):
            self.tasks = [self.tasks]
        self.class_names = [str(c) for c in self.class_names]
        self.tasks = [t for t in ALL_TASKS if t in list(self.tasks)] + [t for t in self.tasks if t not in ALL_TASKS]
        self.spatial_size = [int(s) for s in jsonable(self.spatial_size)]
        self.in_channels = int(self.in_channels)
        self.network_kwargs = jsonable(dict(self.network_kwargs or {}))
        self.intensity = jsonable(dict(self.intensity or {}))
        if self.base_anchor_shapes is not None:
            self.base_anchor_shapes = [[float(v) for v in s] for s in jsonable(self.base_anchor_shapes)]
        self.feature_map_scales = [float(v) for v in jsonable(self.feature_map_scales)]
        if self.class_thresholds is None:
            self.class_thresholds = dict.fromkeys(self.class_names, 0.5)
        else:
            self.class_thresholds = {str(k): float(v) for k, v in jsonable(dict(self.class_thresholds)).items()}
        self.training = jsonable(dict(self.training or {}))

    # ------------------------------------------------------------------ schema
    def validate(self, where: str = "<model description>") -> ModelDescription:
        """Check the schema and the values; raise :class:`DescriptionError` naming ``where``. Returns ``self``."""
        problems = []
        if self.format != DESCRIPTION_FORMAT:
            problems.append(f"format is {self.format!r}, expected {DESCRIPTION_FORMAT!r}")
        if int(self.version) > DESCRIPTION_VERSION:
            problems.append(f"version {self.version} is newer than this monai_mcx reads ({DESCRIPTION_VERSION})")
        if not self.tasks or any(t not in ALL_TASKS for t in self.tasks):
            problems.append(f"tasks {self.tasks} must be a non-empty subset of {list(ALL_TASKS)}")
        if not self.class_names:
            problems.append("class_names is empty")
        if len(self.spatial_size) != 2 or min(self.spatial_size) <= 0:
            problems.append(f"spatial_size {self.spatial_size} must be two positive sizes [W, H]")
        if Task.LOCALIZATION in self.tasks:
            if not self.base_anchor_shapes or any(len(s) != 2 or min(s) <= 0 for s in self.base_anchor_shapes):
                problems.append(
                    f"base_anchor_shapes {self.base_anchor_shapes} must be positive [w, h] pairs "
                    "(the localization head is built)"
                )
        if set(self.class_thresholds) != set(self.class_names):
            problems.append(
                f"class_thresholds has classes {sorted(self.class_thresholds)}, class_names are {self.class_names}"
            )
        for name, t in self.class_thresholds.items():
            if not 0.0 <= t <= 1.0:
                problems.append(f"class threshold of {name!r} is {t}, outside [0, 1]")
        if self.gate_rule not in GATE_RULES:
            problems.append(f"gate_rule {self.gate_rule!r} is not one of {list(GATE_RULES)}")
        if not 0.0 <= float(self.mask_threshold) <= 1.0:
            problems.append(f"mask_threshold {self.mask_threshold} is outside [0, 1]")
        if self.box_score_threshold is not None and not 0.0 <= float(self.box_score_threshold) <= 1.0:
            problems.append(f"box_score_threshold {self.box_score_threshold} is outside [0, 1]")
        if self.calibration is not None:
            try:
                TemperatureScaling.from_dict(self.calibration, self.class_names, source="calibration")
            except (ValueError, TypeError, AttributeError) as e:
                problems.append(f"calibration {self.calibration!r} is invalid ({e})")
        for op, table in (self.sensitivity_thresholds or {}).items():
            if not isinstance(table, Mapping) or any(
                not isinstance(t, (int, float)) or not 0.0 <= float(t) <= 1.0 for t in table.values()
            ):
                problems.append(f"sensitivity_thresholds[{op!r}] must map classes to thresholds in [0, 1], got {table}")
        problems += self._population_problems()
        if self.lung_restriction is not None:
            lr = self.lung_restriction
            if not isinstance(lr, Mapping) or set(lr) - {"enabled", "lung_threshold", "dilation", "components"}:
                problems.append(
                    f"lung_restriction {lr!r} must be {{'enabled', 'lung_threshold', 'dilation', 'components'}}"
                )
            elif lr.get("enabled") and Task.LUNGS not in self.tasks:
                problems.append("lung_restriction is enabled but the lungs head is not built")
            elif not 0.0 <= float(lr.get("dilation", 0.0)) <= 0.5 or not 0.0 < float(lr.get("lung_threshold", 0.5)) < 1:
                problems.append(f"lung_restriction {lr!r}: dilation must be in [0, 0.5], lung_threshold in (0, 1)")
        if self.weights_sha256 is not None and (len(str(self.weights_sha256)) != 64):
            problems.append(f"weights_sha256 {self.weights_sha256!r} is not a SHA-256 hex digest")
        if problems:
            raise DescriptionError(f"model description {where}: " + "; ".join(problems))
        return self

    def _population_problems(self) -> list[str]:
        from monai_mcx.data.populations import POPULATIONS

        problems = []
        if self.default_population is not None and self.default_population not in POPULATIONS:
            problems.append(f"default_population {self.default_population!r} is not one of {list(POPULATIONS)}")
        for pop, point in (self.operating_points or {}).items():
            if pop not in POPULATIONS:
                problems.append(f"operating_points has the population {pop!r}; populations are {list(POPULATIONS)}")
                continue
            if not isinstance(point, Mapping):
                problems.append(f"operating_points[{pop!r}] must be an object, got {point!r}")
                continue
            for key in ("class_thresholds", "gate_thresholds"):
                table = point.get(key)
                if table is None and key == "gate_thresholds":
                    continue
                if not isinstance(table, Mapping) or set(table) != set(self.class_names):
                    problems.append(f"operating_points[{pop!r}][{key!r}] must give every class of {self.class_names}")
                elif any(not 0.0 <= float(t) <= 1.0 for t in table.values()):
                    problems.append(f"operating_points[{pop!r}][{key!r}] has thresholds outside [0, 1]: {table}")
            box = point.get("box_score_threshold")
            if box is not None and not 0.0 <= float(box) <= 1.0:
                problems.append(f"operating_points[{pop!r}]['box_score_threshold'] {box} is outside [0, 1]")
        return problems

    def operating_point(self, population: str | None) -> dict:
        """The operating point applied to an image of ``population`` (None or a population without a point: the
        global fields): ``{"class_thresholds", "gate_thresholds", "box_score_threshold"}`` with the thresholds as
        lists in class order."""
        point = (self.operating_points or {}).get(population) if population is not None else None
        if point is None:
            cls = self.class_threshold_list()
            return {
                "class_thresholds": cls,
                "gate_thresholds": list(cls),
                "box_score_threshold": self.box_score_threshold,
            }
        cls = [float(point["class_thresholds"][c]) for c in self.class_names]
        gate = point.get("gate_thresholds")
        box = point.get("box_score_threshold")
        return {
            "class_thresholds": cls,
            "gate_thresholds": list(cls) if gate is None else [float(gate[c]) for c in self.class_names],
            "box_score_threshold": self.box_score_threshold if box is None else float(box),
        }

    def to_dict(self) -> dict:
        return jsonable(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, obj: Mapping, where: str = "<model description>") -> ModelDescription:
        """Build from a parsed ``model.json``; unknown keys and a missing required field are errors naming ``where``."""
        if not isinstance(obj, Mapping):
            raise DescriptionError(f"model description {where}: expected a JSON object, found {type(obj).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(obj) - names)
        if unknown:
            raise DescriptionError(
                f"model description {where}: unknown fields {unknown} (written by a newer monai_mcx?)"
            )
        try:
            desc = cls(**dict(obj))
        except TypeError as e:
            raise DescriptionError(f"model description {where}: {e}") from e
        return desc.validate(where)

    def replace(self, **changes) -> ModelDescription:
        """A copy with ``changes`` (validated)."""
        return dataclasses.replace(copy.deepcopy(self), **changes).validate()

    # ------------------------------------------------------------------ derived settings
    @property
    def num_anchors(self) -> int:
        """A, anchors per location: ``len(base_anchor_shapes)`` (3 when there are none)."""
        return (
            len(self.base_anchor_shapes) if self.base_anchor_shapes else int(self.network_kwargs.get("num_anchors", 3))
        )

    def class_threshold_list(self) -> list[float]:
        """The per-class thresholds in ``class_names`` order."""
        return [float(self.class_thresholds[c]) for c in self.class_names]

    def network_args(self) -> dict:
        """Keyword arguments of :class:`~monai_mcx.networks.MultiCheXNet` for these weights."""
        kw = dict(self.network_kwargs)
        kw.pop("num_anchors", None)
        return {
            "encoder": self.encoder,
            "in_channels": self.in_channels,
            "class_names": list(self.class_names),
            "tasks": list(self.tasks),
            "num_anchors": self.num_anchors,
            **kw,
        }

    def post_processing(self) -> dict:
        """The settings of the post-processing component, plain values::

        {"class_names", "class_thresholds" (list, class order), "gate_rule", "mask_threshold",
         "box_score_threshold" (None: keep every candidate), "candidate_score_thresh", "nms_thresh",
         "detections_per_img", "spatial_size", "calibration", "saliency", "operating_points",
         "default_population", "lung_restriction"}
        """
        return {
            "class_names": list(self.class_names),
            "class_thresholds": self.class_threshold_list(),
            "gate_rule": self.gate_rule,
            "mask_threshold": float(self.mask_threshold),
            "box_score_threshold": None if self.box_score_threshold is None else float(self.box_score_threshold),
            "candidate_score_thresh": float(self.candidate_score_thresh),
            "nms_thresh": float(self.nms_thresh),
            "detections_per_img": int(self.detections_per_img),
            "spatial_size": list(self.spatial_size),
            "calibration": copy.deepcopy(self.calibration),
            "saliency": copy.deepcopy(self.saliency),
            "operating_points": copy.deepcopy(self.operating_points),
            "default_population": self.default_population,
            "lung_restriction": copy.deepcopy(self.lung_restriction),
        }

    # ------------------------------------------------------------------ config values vs the description
    def field_value(self, name: str) -> Any:
        if name == "num_anchors":
            return self.num_anchors
        if name == "class_thresholds":
            return dict(self.class_thresholds)
        return getattr(self, name)

    def reconcile(
        self, values: Mapping[str, Any] | None = None, opt_out: Sequence[str] = (), where: str | None = None
    ) -> ModelDescription:
        """:func:`monai_mcx.model.reconcile.reconcile` of this description (the bundle configs call
        ``@model_description.reconcile({...}, @description_opt_out)``)."""
        return reconcile(self, values, opt_out, where)

    # ------------------------------------------------------------------ updates by evaluation
    def with_thresholds(
        self, class_thresholds: Mapping[str, float] | Sequence[float], method: str, split: str | None
    ) -> ModelDescription:
        """A copy with new per-class thresholds (a mapping or a list in class order) and how they were chosen."""
        if not isinstance(class_thresholds, Mapping):
            class_thresholds = dict(zip(self.class_names, [float(t) for t in class_thresholds]))
        table = {**self.class_thresholds, **{str(k): float(v) for k, v in class_thresholds.items()}}
        return self.replace(
            class_thresholds=table, thresholds_method=str(method), thresholds_split=split, thresholds_date=utc_now()
        )

    def with_calibration(
        self, temperatures: Mapping[str, float] | None, split: str | None = None, fitted_on: int | None = None
    ) -> ModelDescription:
        """A copy with per-class temperatures ``{class: T}`` (fitted on ``split``, ``fitted_on`` images), or without
        calibration (``None``: raw probabilities)."""
        if temperatures is None:
            return self.replace(calibration=None)
        ts = TemperatureScaling.from_dict({"temperatures": dict(temperatures)}, self.class_names, source="calibration")
        cal = {
            **ts.to_dict(),
            "split": split,
            "fitted_on": None if fitted_on is None else int(fitted_on),
            "date": utc_now(),
        }
        return self.replace(calibration=cal)

    def with_operating_points(
        self, points: Mapping[str, Mapping], default_population: str | None = None
    ) -> ModelDescription:
        """A copy with the per-population operating points ``{population: point}`` (replacing those populations'
        points; the class docstring gives a point's fields) and, when given, the default population."""
        table = {**copy.deepcopy(self.operating_points or {}), **{str(k): jsonable(dict(v)) for k, v in points.items()}}
        changes: dict[str, Any] = {"operating_points": table}
        if default_population is not None:
            changes["default_population"] = str(default_population)
        return self.replace(**changes)

    def with_box_threshold(self, score: float, method: str, split: str | None) -> ModelDescription:
        """A copy with the box operating point ``score`` and how it was chosen."""
        return self.replace(
            box_score_threshold=float(score),
            box_threshold_method=str(method),
            box_threshold_split=split,
            box_threshold_date=utc_now(),
        )
