"""The model artifact: a checkpoint plus the **model description** that says what it is and how to use it.

A trained model is ``model.pt`` (a plain network state dict, as MONAI's ``CheckpointSaver`` writes it and as
``python -m monai.bundle ckpt_export`` and every model-zoo tool expect) plus its description, the JSON sidecar
``model.json`` beside it (:func:`description_path`: the checkpoint's name with ``.json``). The description holds
everything needed to rebuild the network and its post-processing -- encoder, tasks, class names, input channels,
spatial size, intensity pipeline, anchors and box-decoder settings, per-class thresholds and how they were chosen,
the gate rule, the mask threshold, the box operating point, calibration and saliency slots, a training summary --
and ``weights_sha256``, the content hash (:func:`monai_mcx.networks.weights.state_dict_sha256`) of the weights it
belongs to. A description whose hash does not match the checkpoint is refused (:class:`StaleDescriptionError`):
thresholds or anchors left from another model, or weights replaced without re-describing them, never go unnoticed.

Why a sidecar and not an entry inside ``model.pt``: ``model.pt`` stays a plain state dict (``ckpt_export``,
``CheckpointLoader``, the real model trained before this module existed), evaluation can write the thresholds it
chose on the validation split without rewriting the weights, and the hash ties the two files together (the two
writes cannot be one atomic rename, but a half-finished pair is detected, never used).

Flow in the bundle:

* ``train.json`` builds ``model_description`` from its own settings; :class:`DescriptionWriter` writes
  ``<ckpt_dir>/model.json`` every time ``CheckpointSaver`` writes a new best ``model.pt`` (and ``last.json`` for
  ``last.pt``), with the hash of the weights just saved. Thresholds start at 0.5 (``method: "default"``).
* ``evaluate.json`` (on top of ``train.json``) loads the description (:func:`load_description`, hash verified),
  builds the network from it, and on the validation split :class:`OperatingPointWriter` writes the chosen
  per-class thresholds (and the box operating point, when the evaluation reports one) INTO ``model.json``, with the
  per-class temperatures fitted before them (``calibration``) and the thresholds at fixed sensitivity targets.
* ``inference.json``, ``finetune.json``, ``monai_mcx.export``, ``networks.merge`` and the MONAI Label app read the
  description and build the network (:meth:`ModelDescription.build_network`) and the post-processing
  (:meth:`ModelDescription.post_processing`) from it. A config value that contradicts it is an error naming both
  values (:meth:`ModelDescription.reconcile`); ``description_opt_out`` lists fields the user deliberately overrides.
* A checkpoint written before descriptions existed: ``python -m monai_mcx.artifact describe --ckpt model.pt
  --config bundle/configs/train.json [--set id=value ...]`` writes its description from the training config
  (:func:`describe_legacy_checkpoint`, with a warning); then evaluate it on the validation split as usual.

Command line: ``python -m monai_mcx.artifact {show,verify,describe} ...`` (``--help``).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime
import json
import logging
import math
import os
import sys
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from monai_mcx.networks.weights import WeightsError, read_state_dict, state_dict_problems, state_dict_sha256
from monai_mcx.utils import write_json_atomic

__all__ = [
    "DESCRIPTION_FORMAT",
    "DESCRIPTION_VERSION",
    "GATE_RULES",
    "DEFAULT_INTENSITY",
    "DescriptionError",
    "StaleDescriptionError",
    "DescriptionConflictError",
    "ModelDescription",
    "description_path",
    "root_cause",
    "checkpoint_sha256",
    "save_description",
    "save_model",
    "load_description",
    "read_description",
    "training_summary",
    "DescriptionWriter",
    "OperatingPointWriter",
    "describe_legacy_checkpoint",
    "main",
]

logger = logging.getLogger(__name__)

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

#: description fields that a config value may be compared with (``reconcile``); "architecture" ones change the
#: weights' layout or meaning, the others the post-processing or the input
ARCHITECTURE_FIELDS = ("encoder", "in_channels", "class_names", "tasks", "num_anchors", "network_kwargs")
COMPARABLE_FIELDS = ARCHITECTURE_FIELDS + (
    "spatial_size",
    "intensity",
    "base_anchor_shapes",
    "feature_map_scales",
    "class_thresholds",
    "mask_threshold",
    "box_score_threshold",
    "nms_thresh",
    "detections_per_img",
    "candidate_score_thresh",
    "gate_rule",
)


class DescriptionError(ValueError):
    """A model description is missing, malformed, or cannot describe the checkpoint (the message names the file)."""


class StaleDescriptionError(DescriptionError):
    """The description's ``weights_sha256`` differs from the checkpoint's weights: it belongs to another model."""


class DescriptionConflictError(DescriptionError):
    """A config value contradicts the model description (the message names both values and the file)."""


def root_cause(error: BaseException) -> BaseException:
    """The :class:`DescriptionError` / :class:`~monai_mcx.networks.weights.WeightsError` inside an exception chain
    (MONAI's ``ConfigParser`` wraps errors of config expressions in ``RuntimeError("Failed to evaluate ...")``), or
    ``error`` itself when there is none."""
    seen = set()
    e: BaseException | None = error
    while e is not None and id(e) not in seen:
        if isinstance(e, (DescriptionError, WeightsError)):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return error


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()


def description_path(ckpt: str | os.PathLike) -> Path:
    """The sidecar of a checkpoint: ``models/model.pt`` -> ``models/model.json`` (``last.pt`` -> ``last.json``).
    A ``.json`` path is returned unchanged."""
    p = Path(ckpt)
    return p if p.suffix == ".json" else p.with_suffix(".json")


def checkpoint_sha256(ckpt: str | os.PathLike | Mapping, key: str | None = None) -> str:
    """:func:`~monai_mcx.networks.weights.state_dict_sha256` of a checkpoint's network state dict (read through the
    weights layer: ``model``/``state_dict`` unwrapped, ``weights_only=True``; errors name the file)."""
    state, _ = read_state_dict(ckpt, key=key)
    return state_dict_sha256(state)


def _jsonable(v: Any) -> Any:
    """Plain JSON values (tuples -> lists, tensors / numpy -> lists / numbers)."""
    if hasattr(v, "tolist"):
        v = v.tolist()
    if isinstance(v, Mapping):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, float) and math.isnan(v):
        return None
    return v


def _same(a: Any, b: Any) -> bool:
    a, b = _jsonable(a), _jsonable(b)
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(float(a), float(b), rel_tol=1e-6, abs_tol=1e-9)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a == b


@dataclass
class ModelDescription:
    """What a checkpoint is and how to use it; saved as JSON beside it (``model.pt`` -> ``model.json``).

    Network (build with :meth:`build_network`; these must match the weights):
        encoder: encoder name (:func:`monai_mcx.networks.build_encoder`), e.g. ``"densenet121"``.
        class_names: the K classes of the classification head, in output order.
        tasks: built heads, canonical order (``classification``, ``segmentation``, ``localization``).
        in_channels: image channels.
        network_kwargs: other :class:`~monai_mcx.networks.MultiCheXNet` arguments that were not left at their
            defaults (``dropout``, ``loc_fpn_channels``, ...); ``num_anchors`` is ``len(base_anchor_shapes)``.

    Input:
        spatial_size: network input ``(W, H)`` (x first, the bundle's geometry convention).
        intensity: the intensity pipeline (:data:`DEFAULT_INTENSITY`; ``name`` is what consumers compare).

    Boxes (build with :meth:`build_anchor_generator` / :meth:`build_box_decoder`):
        base_anchor_shapes: ``[[w, h], ...]`` input pixels at the finest head level (fitted on the training boxes).
        feature_map_scales: the anchor generator's per-level scales.
        candidate_score_thresh, nms_thresh, detections_per_img: the box decoder's candidate settings (scores below
            ``candidate_score_thresh`` never become boxes; NMS IoU; cap per image).

    Operating point (written by evaluation on the validation split, see :class:`OperatingPointWriter`):
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
        saliency: ``{"method", "layer"}`` of the saliency maps (:func:`monai_mcx.explain.saliency_settings`), e.g.
            ``{"method": "gradcam", "layer": "stride32"}`` (what ``train.json`` writes); None: that default.

    Provenance:
        training: :func:`training_summary` (data sources, items per split, epochs, date, run name, ...).
        weights_file: the checkpoint's file name; weights_key: its entry holding the state dict (``None`` for a
            plain state dict, ``"model"`` for ``last.pt``).
        weights_sha256: :func:`~monai_mcx.networks.weights.state_dict_sha256` of the weights described.
        provenance: ``"trained"`` or ``"described after training"`` (:func:`describe_legacy_checkpoint`).
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
        from monai_mcx.networks.multichexnet import TASKS

        self.class_names = [str(c) for c in self.class_names]
        self.tasks = [t for t in TASKS if t in list(self.tasks)] + [t for t in self.tasks if t not in TASKS]
        self.spatial_size = [int(s) for s in _jsonable(self.spatial_size)]
        self.in_channels = int(self.in_channels)
        self.network_kwargs = _jsonable(dict(self.network_kwargs or {}))
        self.intensity = _jsonable(dict(self.intensity or {}))
        if self.base_anchor_shapes is not None:
            self.base_anchor_shapes = [[float(v) for v in s] for s in _jsonable(self.base_anchor_shapes)]
        self.feature_map_scales = [float(v) for v in _jsonable(self.feature_map_scales)]
        if self.class_thresholds is None:
            self.class_thresholds = dict.fromkeys(self.class_names, 0.5)
        else:
            self.class_thresholds = {str(k): float(v) for k, v in _jsonable(dict(self.class_thresholds)).items()}
        self.training = _jsonable(dict(self.training or {}))

    # ------------------------------------------------------------------ schema
    def validate(self, where: str = "<model description>") -> ModelDescription:
        """Check the schema and the values; raise :class:`DescriptionError` naming ``where``. Returns ``self``."""
        from monai_mcx.networks.multichexnet import TASKS

        problems = []
        if self.format != DESCRIPTION_FORMAT:
            problems.append(f"format is {self.format!r}, expected {DESCRIPTION_FORMAT!r}")
        if int(self.version) > DESCRIPTION_VERSION:
            problems.append(f"version {self.version} is newer than this monai_mcx reads ({DESCRIPTION_VERSION})")
        if not self.tasks or any(t not in TASKS for t in self.tasks):
            problems.append(f"tasks {self.tasks} must be a non-empty subset of {list(TASKS)}")
        if not self.class_names:
            problems.append("class_names is empty")
        if len(self.spatial_size) != 2 or min(self.spatial_size) <= 0:
            problems.append(f"spatial_size {self.spatial_size} must be two positive sizes [W, H]")
        if "localization" in self.tasks:
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
                from monai_mcx.metrics.calibration import TemperatureScaling

                TemperatureScaling.from_dict(self.calibration, self.class_names, source="calibration")
            except (ValueError, TypeError, AttributeError) as e:
                problems.append(f"calibration {self.calibration!r} is invalid ({e})")
        for op, table in (self.sensitivity_thresholds or {}).items():
            if not isinstance(table, Mapping) or any(
                not isinstance(t, (int, float)) or not 0.0 <= float(t) <= 1.0 for t in table.values()
            ):
                problems.append(f"sensitivity_thresholds[{op!r}] must map classes to thresholds in [0, 1], got {table}")
        if self.weights_sha256 is not None and (len(str(self.weights_sha256)) != 64):
            problems.append(f"weights_sha256 {self.weights_sha256!r} is not a SHA-256 hex digest")
        if problems:
            raise DescriptionError(f"model description {where}: " + "; ".join(problems))
        return self

    def to_dict(self) -> dict:
        return _jsonable(dataclasses.asdict(self))

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

    def build_network(self, **extra):
        """A new :class:`~monai_mcx.networks.MultiCheXNet` (random weights) with the described architecture."""
        from monai_mcx.networks import MultiCheXNet

        return MultiCheXNet(**{**self.network_args(), **extra})

    def build_anchor_generator(self):
        """MONAI's ``AnchorGenerator`` for the described anchors (None without a localization head)."""
        if "localization" not in self.tasks:
            return None
        from monai_mcx.networks import make_anchor_generator

        return make_anchor_generator(self.base_anchor_shapes, feature_map_scales=self.feature_map_scales)

    def build_box_decoder(self, operating_point: bool = False):
        """The :class:`~monai_mcx.networks.BoxDecoder` of the described anchors (None without boxes).

        ``operating_point=False`` (evaluation: AP needs every candidate): scores from ``candidate_score_thresh``.
        ``operating_point=True`` (deployment): from ``max(candidate_score_thresh, box_score_threshold)``, i.e. only
        the boxes at the box operating point chosen on the validation split (all candidates when none was chosen).
        """
        gen = self.build_anchor_generator()
        if gen is None:
            return None
        from monai_mcx.networks import BoxDecoder

        score = float(self.candidate_score_thresh)
        if operating_point and self.box_score_threshold is not None:
            score = max(score, float(self.box_score_threshold))
        return BoxDecoder(
            gen, score_thresh=score, nms_thresh=self.nms_thresh, detections_per_img=self.detections_per_img
        )

    def post_processing(self) -> dict:
        """The settings of the post-processing component, plain values::

        {"class_names", "class_thresholds" (list, class order), "gate_rule", "mask_threshold",
         "box_score_threshold" (None: keep every candidate), "candidate_score_thresh", "nms_thresh",
         "detections_per_img", "spatial_size", "calibration", "saliency"}
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
        """Compare config values with the description; a difference is an error naming both values.

        Args:
            values: ``{field: config value}``, e.g. ``{"spatial_size": @spatial_size, "encoder": @encoder}``;
                ``None`` values are not compared (the config does not set them). ``class_thresholds`` may be a
                mapping or a list in ``class_names`` order; ``intensity`` may be a mapping or its ``name``.
            opt_out: fields whose config value deliberately replaces the description's (logged as a warning;
                architecture fields still have to fit the weights, which the loader checks).
            where: the description file, for the message.

        Returns:
            ``self`` when everything agrees, else a copy with the opted-out values.

        Raises:
            DescriptionConflictError: ``"spatial_size: the model description <file> says [64, 64], the config says
                [256, 256]"`` (every conflicting field listed), or an unknown field name.
        """
        where = where or str(getattr(self, "path", None) or "<model description>")
        bad_opt = [f for f in opt_out if f not in COMPARABLE_FIELDS]
        unknown = [f for f in dict(values or {}) if f not in COMPARABLE_FIELDS]
        if bad_opt or unknown:
            raise DescriptionConflictError(
                f"unknown description fields {bad_opt + unknown}; valid: {list(COMPARABLE_FIELDS)}"
            )
        conflicts, changes = [], {}
        for name, value in dict(values or {}).items():
            if value is None:
                continue
            ours = self.field_value(name)
            if name == "class_thresholds" and not isinstance(value, Mapping):
                vals = [
                    float(v) for v in (value if isinstance(value, (list, tuple)) else [value] * len(self.class_names))
                ]
                value = dict(zip(self.class_names, vals)) if len(vals) == len(self.class_names) else vals
            if name == "intensity" and isinstance(value, str):
                ours = self.intensity.get("name")
            if name == "tasks":
                from monai_mcx.networks.multichexnet import TASKS

                value = [t for t in TASKS if t in list(value)] if not isinstance(value, str) else [value]
            if _same(ours, value):
                continue
            if name in opt_out:
                warnings.warn(
                    f"{name}: the config's {_jsonable(value)} replaces the model description's "
                    f"{_jsonable(ours)} ({where}; listed in description_opt_out)",
                    stacklevel=2,
                )
                if name == "num_anchors":
                    continue
                changes[name] = value
            else:
                conflicts.append(
                    f"{name}: the model description {where} says {_jsonable(ours)!r}, the config says "
                    f"{_jsonable(value)!r}"
                )
        if conflicts:
            raise DescriptionConflictError(
                "the configuration contradicts the model description (drop the override, use a checkpoint described "
                "with these settings, or list the field in description_opt_out to override it deliberately):\n  "
                + "\n  ".join(conflicts)
            )
        if not changes:
            return self
        if "intensity" in changes and isinstance(changes["intensity"], str):
            changes["intensity"] = {**self.intensity, "name": changes["intensity"]}
        return self.replace(**changes)

    # ------------------------------------------------------------------ weights
    def check_weights(self, ckpt: str | os.PathLike | Mapping, where: str = "<model description>") -> str:
        """Verify that ``ckpt`` (a file or a state dict) holds the described weights: same ``weights_sha256`` and a
        state dict that fits :meth:`build_network`. Returns the hash.

        Raises:
            StaleDescriptionError: the hash differs (the description -- thresholds, anchors -- belongs to another
                model), naming both files and both hashes.
            WeightsError: the checkpoint cannot be read or does not fit the described network.
        """
        state, name = read_state_dict(ckpt, key=self.weights_key)
        digest = state_dict_sha256(state)
        if self.weights_sha256 is None:
            raise StaleDescriptionError(
                f"model description {where} records no weights_sha256; it cannot be matched "
                f"with {name!r} (describe it again: python -m monai_mcx.artifact describe)"
            )
        if digest != self.weights_sha256:
            raise StaleDescriptionError(
                f"model description {where} belongs to other weights than {name!r}: it records weights_sha256 "
                f"{self.weights_sha256[:16]}..., the checkpoint holds {digest[:16]}.... Its thresholds, anchors and "
                "settings are stale (left from an earlier model, or the weights were replaced). Re-run evaluate.json "
                "on "
                "the validation split after training, or describe the checkpoint: python -m monai_mcx.artifact describe"
            )
        problems = state_dict_problems(self.build_network(), state)
        if problems:
            raise DescriptionError(
                f"checkpoint {name!r} does not fit the network its description {where} builds:\n  "
                + "\n  ".join(problems)
            )
        return digest

    # ------------------------------------------------------------------ updates by evaluation
    def with_thresholds(
        self, class_thresholds: Mapping[str, float] | Sequence[float], method: str, split: str | None
    ) -> ModelDescription:
        """A copy with new per-class thresholds (a mapping or a list in class order) and how they were chosen."""
        if not isinstance(class_thresholds, Mapping):
            class_thresholds = dict(zip(self.class_names, [float(t) for t in class_thresholds]))
        table = {**self.class_thresholds, **{str(k): float(v) for k, v in class_thresholds.items()}}
        return self.replace(
            class_thresholds=table, thresholds_method=str(method), thresholds_split=split, thresholds_date=_now()
        )

    def with_calibration(
        self, temperatures: Mapping[str, float] | None, split: str | None = None, fitted_on: int | None = None
    ) -> ModelDescription:
        """A copy with per-class temperatures ``{class: T}`` (fitted on ``split``, ``fitted_on`` images), or without
        calibration (``None``: raw probabilities)."""
        if temperatures is None:
            return self.replace(calibration=None)
        from monai_mcx.metrics.calibration import TemperatureScaling

        ts = TemperatureScaling.from_dict({"temperatures": dict(temperatures)}, self.class_names, source="calibration")
        cal = {
            **ts.to_dict(),
            "split": split,
            "fitted_on": None if fitted_on is None else int(fitted_on),
            "date": _now(),
        }
        return self.replace(calibration=cal)

    def with_box_threshold(self, score: float, method: str, split: str | None) -> ModelDescription:
        """A copy with the box operating point ``score`` and how it was chosen."""
        return self.replace(
            box_score_threshold=float(score),
            box_threshold_method=str(method),
            box_threshold_split=split,
            box_threshold_date=_now(),
        )


# --------------------------------------------------------------------------------------------------- files
def save_description(desc: ModelDescription, path: str | os.PathLike) -> Path:
    """Validate ``desc`` and write it to ``path`` (or the sidecar of a checkpoint path) atomically."""
    path = description_path(path)
    desc.validate(str(path))
    write_json_atomic(desc.to_dict(), path)
    return path


def save_model(network: Any, description: ModelDescription, ckpt: str | os.PathLike) -> ModelDescription:
    """Save ``network``'s state dict as ``ckpt`` (atomically, a plain state dict) and its description beside it, with
    ``weights_sha256``, ``weights_file`` set; checks first that the weights fit the described network. Returns the
    saved description. (The two files are two renames: a crash between them leaves a pair whose hashes differ,
    which :func:`load_description` refuses.)"""
    from monai_mcx.engines.checkpoint import save_checkpoint
    from monai_mcx.networks.weights import check_state_dict, unwrap_module

    state = {k: v.detach().cpu() for k, v in unwrap_module(network).state_dict().items()}
    check_state_dict(description.build_network(), state, str(ckpt), what="described network")
    desc = description.replace(weights_sha256=state_dict_sha256(state), weights_file=Path(ckpt).name, weights_key=None)
    save_checkpoint(state, ckpt)
    save_description(desc, ckpt)
    return desc


def read_description(path: str | os.PathLike) -> ModelDescription:
    """Parse and validate a description file (or the sidecar of a checkpoint path), without checking weights.

    Raises:
        DescriptionError: missing, not JSON, or not a valid description; names the file.
    """
    path = description_path(path)
    if not path.is_file():
        raise DescriptionError(f"model description {str(path)!r} does not exist")
    try:
        obj = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DescriptionError(f"model description {str(path)!r} is not readable JSON ({type(e).__name__}: {e})") from e
    return ModelDescription.from_dict(obj, str(path))


_VERIFIED: dict[tuple, str] = {}


def load_description(
    ckpt: str | os.PathLike,
    verify: bool = True,
    description: str | os.PathLike | None = None,
) -> ModelDescription:
    """The description of checkpoint ``ckpt`` (``<ckpt stem>.json`` unless ``description`` names the file),
    verified against the weights (:meth:`ModelDescription.check_weights`) unless ``verify=False``.

    Raises:
        DescriptionError: there is no description (the message gives the explicit path for a checkpoint written
            before descriptions existed), or it is malformed.
        StaleDescriptionError: it belongs to other weights.
        WeightsError: the checkpoint is missing, truncated, pickled or foreign (names the file).
    """
    ckpt = Path(ckpt)
    dpath = description_path(description) if description else description_path(ckpt)
    if not dpath.is_file():
        if not ckpt.is_file():
            raise WeightsError(
                f"checkpoint file {str(ckpt)!r} does not exist (and neither does its description "
                f"{str(dpath)!r}); train first or point ckpt_dir at a trained model"
            )
        raise DescriptionError(
            f"checkpoint {str(ckpt)!r} has no model description ({str(dpath)!r} does not exist). A checkpoint written "
            "before model descriptions existed is described once, explicitly, from its training config: python -m "
            f"monai_mcx.artifact describe --ckpt {ckpt} --config bundle/configs/train.json [--set id=value ...] "
            "(then evaluate it on the validation split to choose its thresholds)"
        )
    desc = read_description(dpath)
    if verify:
        st = ckpt.stat() if ckpt.is_file() else None
        key = (str(ckpt.resolve()), st.st_mtime_ns, st.st_size, desc.weights_sha256) if st else None
        if key is None or _VERIFIED.get(key) != desc.weights_sha256:
            desc.check_weights(ckpt, str(dpath))
            if key is not None:
                _VERIFIED[key] = desc.weights_sha256
    desc.path = dpath  # not a field: where it was read from, for messages
    return desc


# --------------------------------------------------------------------------------------------------- training
def training_summary(
    datalist: Any = None,
    class_names: Sequence[str] | None = None,
    epochs: int | None = None,
    max_items: int | None = None,
    run_name: str | None = None,
    **extra,
) -> dict:
    """The description's ``training`` entry: ``{"date", "run_name", "epochs", "datalist", "items" {split: n},
    "data_sources" {source: n training items}, **extra}``. ``datalist`` is a datalist file (or dict); items are
    counted as ``monai_mcx.data.load_datalist`` reads them (``max_items`` applied), without opening images."""
    out: dict[str, Any] = {"date": _now()}
    if run_name is not None:
        out["run_name"] = str(run_name)
    if epochs is not None:
        out["epochs"] = int(epochs)
    if datalist is not None:
        out["datalist"] = str(datalist) if isinstance(datalist, (str, os.PathLike)) else "<in-memory datalist>"
        try:
            from monai_mcx.data import load_datalist

            items, sources = {}, {}
            for split in ("training", "validation", "test"):
                try:
                    rows = load_datalist(datalist, split, class_names, check_files=False, max_items=max_items)
                except Exception:  # noqa: BLE001 -- a split may be absent
                    continue
                items[split] = len(rows)
                if split == "training":
                    for r in rows:
                        s = str(r.get("source", "unknown"))
                        sources[s] = sources.get(s, 0) + 1
            out["items"], out["data_sources"] = items, sources
        except Exception as e:  # noqa: BLE001 -- the summary must never stop a training run
            out["items_error"] = f"{type(e).__name__}: {e}"
    out.update(_jsonable(extra))
    return out


class DescriptionWriter:
    """Write the description of a checkpoint each time the checkpoint file changes (an Ignite handler).

    Attach it after the handler that saves the checkpoint (``CheckpointSaver`` in ``validate#handlers`` for
    ``model.pt``; ``LastCheckpoint`` in ``train#handlers`` for ``last.pt``). At ``EPOCH_COMPLETED`` it compares the
    checkpoint's ``(mtime, size)`` with the last one it described; when they changed it reads the weights (through the
    weights layer), hashes them and writes ``<checkpoint stem>.json`` atomically. On rank > 0 it does nothing.

    Args:
        description: the run's :class:`ModelDescription` (``@model_description`` in ``train.json``).
        checkpoint: the checkpoint file, e.g. ``<ckpt_dir>/model.pt``.
        weights_key: entry of the checkpoint holding the network (``"model"`` for ``last.pt``; None: plain).
        events: Ignite event names to check at (default ``["EPOCH_COMPLETED"]``; add ``"COMPLETED"``).
    """

    def __init__(
        self,
        description: ModelDescription,
        checkpoint: str | os.PathLike,
        weights_key: str | None = None,
        events: Sequence[str] = ("EPOCH_COMPLETED", "COMPLETED"),
    ) -> None:
        self.description = description
        self.checkpoint = Path(checkpoint)
        self.weights_key = weights_key
        self.events = list(events)
        self._seen: tuple | None = None
        self.written: list[str] = []  # hashes written, in order

    def attach(self, engine) -> None:
        from ignite.engine import Events

        for ev in self.events:
            engine.add_event_handler(getattr(Events, ev), self)

    def __call__(self, engine=None) -> Path | None:
        from monai_mcx.engines.checkpoint import _rank

        if _rank() != 0 or not self.checkpoint.is_file():
            return None
        st = self.checkpoint.stat()
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp == self._seen and description_path(self.checkpoint).is_file():
            return None
        digest = checkpoint_sha256(self.checkpoint, key=self.weights_key)
        self._seen = stamp
        existing = description_path(self.checkpoint)
        if existing.is_file():  # e.g. a resumed run whose model.pt did not change: keep its (evaluated) description
            try:
                if read_description(existing).weights_sha256 == digest:
                    return None
            except DescriptionError:
                pass
        desc = self.description.replace(
            weights_sha256=digest, weights_file=self.checkpoint.name, weights_key=self.weights_key
        )
        if engine is not None and getattr(engine, "state", None) is not None:
            trainer_epoch = getattr(engine.state, "epoch", None)
            desc.training = {**desc.training, "saved_at_epoch": trainer_epoch, "saved_date": _now()}
            best = getattr(engine.state, "best_metric", None)
            if best is not None and best != -1:
                desc.training["best_metric"] = float(best)
        path = save_description(desc, self.checkpoint)
        self._seen = stamp
        self.written.append(digest)
        logger.info(f"model description {path} (weights sha256 {digest[:12]}...)")
        return path


class OperatingPointWriter:
    """Write the operating point chosen by an evaluation INTO the checkpoint's description (an Ignite handler).

    At ``EPOCH_COMPLETED`` of the evaluator (after its key metric has computed), reads
    ``classification/threshold/<class>`` of ``engine.state.metrics`` (the thresholds ``MultiTaskMetrics`` chose,
    e.g. Youden's J on the validation split) and, when present, ``box_threshold_key`` (the box score threshold
    chosen by the evaluation), then rewrites ``<ckpt stem>.json`` atomically after re-checking that the description
    still belongs to the checkpoint's weights. Optionally copies the result to ``copy_to`` (e.g. the evaluation's
    ``output_dir``). ``enabled=False`` makes it a no-op (evaluating the test split with the saved thresholds).

    Calibration: with ``calibrate=True`` the temperatures the evaluation fitted (``calibration/temperature/<class>``
    with ``calibration/fitted_on``) go into the description's ``calibration`` slot with the thresholds chosen on the
    calibrated probabilities; with ``calibrate=False`` new thresholds (chosen on raw probabilities) clear it. The
    thresholds at the sensitivity targets (``classification/sens90/threshold/<class>``, ...) go into
    ``sensitivity_thresholds``.

    Args:
        ckpt: the checkpoint whose description is updated.
        class_names: the classes (the description's).
        method: how the class thresholds were chosen (``"youden"``, ``"f1"``).
        split: the split they were chosen on.
        box_threshold_key: metric key of the box operating point (``localization/box_threshold``).
        box_method: how the box threshold was chosen (recorded), e.g. ``"rsna"``.
        copy_to: extra folders to write a copy of the updated description to (``model.json``).
        calibrate: whether the evaluation calibrated the probabilities (``evaluate.json``'s ``calibrate``).
    """

    def __init__(
        self,
        ckpt: str | os.PathLike,
        class_names: Sequence[str],
        method: str = "youden",
        split: str | None = "validation",
        box_threshold_key: str = "localization/box_threshold",
        box_method: str = "rsna",
        copy_to: Sequence[str | os.PathLike] = (),
        enabled: bool = True,
        calibrate: bool | str = True,
    ) -> None:
        self.ckpt = Path(ckpt)
        self.class_names = list(class_names)
        self.method = method
        self.split = split
        self.box_threshold_key = box_threshold_key
        self.box_method = box_method
        self.copy_to = [copy_to] if isinstance(copy_to, (str, os.PathLike)) else list(copy_to)
        self.enabled = bool(enabled)
        self.calibrate = calibrate not in (False, None, "none")
        self.description: ModelDescription | None = None

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def _calibration(self, desc: ModelDescription, metrics: Mapping) -> ModelDescription:
        """The calibration and sensitivity-target thresholds that go with newly chosen class thresholds."""
        temps = {c: metrics.get(f"calibration/temperature/{c}") for c in self.class_names}
        fitted = metrics.get("calibration/fitted_on")
        if (
            self.calibrate
            and fitted is not None
            and all(t is not None and math.isfinite(float(t)) for t in temps.values())
        ):
            desc = desc.with_calibration({c: float(t) for c, t in temps.items()}, self.split, int(fitted))
        elif not self.calibrate:
            desc = desc.with_calibration(None)
        ops: dict[str, dict[str, float]] = {}
        for key, v in metrics.items():
            parts = str(key).split("/")
            if len(parts) == 4 and parts[0] == "classification" and parts[2] == "threshold" and parts[3] in temps:
                if v is not None and math.isfinite(float(v)):
                    ops.setdefault(parts[1], {})[parts[3]] = float(v)
        return desc.replace(sensitivity_thresholds=ops or None)

    def __call__(self, engine) -> ModelDescription | None:
        if not self.enabled:
            return None
        from monai_mcx.engines.checkpoint import _rank

        if _rank() != 0:
            return None
        metrics = engine.state.metrics
        table = {}
        for name in self.class_names:
            v = metrics.get(f"classification/threshold/{name}")
            if v is not None and not math.isnan(float(v)):
                table[name] = float(v)
        desc = load_description(self.ckpt)
        if table:
            desc = desc.with_thresholds(table, self.method, self.split)
            desc = self._calibration(desc, metrics)
        box = metrics.get(self.box_threshold_key)
        if box is not None and not math.isnan(float(box)):
            desc = desc.with_box_threshold(float(box), self.box_method, self.split)
        if not table and box is None:
            return None
        save_description(desc, self.ckpt)
        for folder in self.copy_to:
            save_description(desc, Path(folder) / description_path(self.ckpt).name)
        self.description = desc
        logger.info(
            f"operating point written to {description_path(self.ckpt)}: class thresholds {table}"
            + (f", calibration {desc.calibration['temperatures']}" if desc.calibration else "")
            + (f", box score threshold {box}" if box is not None else "")
        )
        return desc


# --------------------------------------------------------------------------------------------------- legacy
def _legacy_file(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise DescriptionError(f"{str(path)!r} is not readable JSON ({e})") from e


def describe_legacy_checkpoint(
    ckpt: str | os.PathLike,
    config: str | Sequence[str],
    overrides: Mapping | None = None,
    description_id: str = "model_description",
    weights_key: str | None = None,
    write: bool = True,
    force: bool = False,
) -> ModelDescription:
    """Describe, after the fact, a checkpoint written before model descriptions existed (the explicit legacy path).

    Builds the description from the training config exactly as ``train.json`` would (its ``model_description``
    item, with ``overrides``: pass the same ones as the training run), with these corrections from files found
    beside the checkpoint: ``anchors.json`` (the anchors the weights were trained with; its ``spatial_size`` must
    agree with the config's) and ``thresholds.json`` (per-class thresholds chosen by an old evaluation; recorded
    with ``method`` ``legacy thresholds.json``). Checks that the weights fit the described network (strict), hashes
    them, marks ``provenance`` as ``"described after training"`` and warns. Writes ``<ckpt stem>.json`` unless
    ``write=False``; an existing description is kept unless ``force``.

    Raises:
        WeightsError: the checkpoint cannot be read or does not fit the network the config builds (the message names
            the file and keys -- usually an override of the training run is missing).
        DescriptionError: a description exists already (without ``force``), or ``anchors.json`` disagrees.
    """
    from monai.bundle import ConfigParser

    ckpt = Path(ckpt)
    dpath = description_path(ckpt)
    if dpath.is_file() and write and not force:
        raise DescriptionError(f"{str(dpath)!r} exists already; pass --force to replace it")
    state, name = read_state_dict(ckpt, key=weights_key)
    parser = ConfigParser()
    parser.read_config(list(config) if not isinstance(config, (str, os.PathLike)) else str(config))
    overrides = dict(overrides or {})
    anchors = _legacy_file(ckpt.parent / "anchors.json")
    if anchors and "base_anchor_shapes" not in overrides:
        overrides["base_anchor_shapes"] = anchors["base_anchor_shapes"]
    for k, v in overrides.items():
        parser[k] = v
    if description_id not in parser:
        raise DescriptionError(f"the config {config} has no {description_id!r} item (use bundle/configs/train.json)")
    desc = parser.get_parsed_content(description_id, instantiate=True)
    if not isinstance(desc, ModelDescription):
        raise DescriptionError(f"{description_id!r} of {config} builds a {type(desc).__name__}, not a ModelDescription")
    if anchors and anchors.get("spatial_size") and [int(s) for s in anchors["spatial_size"]] != desc.spatial_size:
        raise DescriptionError(
            f"{str(ckpt.parent / 'anchors.json')!r} was fitted for spatial_size {anchors['spatial_size']}, "
            f"the config says {desc.spatial_size}: pass the training run's --spatial_size"
        )
    thresholds = _legacy_file(ckpt.parent / "thresholds.json")
    if thresholds and set(thresholds.get("class_thresholds", {})) == set(desc.class_names):
        desc = desc.with_thresholds(
            thresholds["class_thresholds"],
            "legacy thresholds.json (" + str(thresholds.get("method", "?")) + ")",
            thresholds.get("split"),
        )
    from monai_mcx.networks.weights import check_state_dict

    check_state_dict(desc.build_network(), state, name, what="network described by the training config")
    desc = desc.replace(
        weights_sha256=state_dict_sha256(state),
        weights_file=ckpt.name,
        weights_key=weights_key,
        provenance="described after training",
    )
    desc.training = {
        **desc.training,
        "described_from": [str(c) for c in ([config] if isinstance(config, (str, os.PathLike)) else config)],
        "described_overrides": _jsonable(dict(overrides or {})),
        "described_date": _now(),
    }
    warnings.warn(
        f"{name}: legacy checkpoint without a model description, described after the fact from {config}"
        + (f" with overrides {sorted(overrides)}" if overrides else "")
        + "; check the result and evaluate it "
        "on the validation split to choose its thresholds",
        stacklevel=2,
    )
    if write:
        save_description(desc, ckpt)
    return desc


# --------------------------------------------------------------------------------------------------- CLI
def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m monai_mcx.artifact", description="Model descriptions of checkpoints.")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("show", help="print a checkpoint's description (verified against the weights)")
    s.add_argument("ckpt")
    v = sub.add_parser("verify", help="check that a description belongs to its checkpoint (exit status 1 if not)")
    v.add_argument("ckpt")
    d = sub.add_parser("describe", help="write the description of a legacy checkpoint from its training config")
    d.add_argument("--ckpt", required=True, help="the checkpoint (model.pt, or last.pt with --weights_key model)")
    d.add_argument("--config", nargs="+", default=["bundle/configs/train.json"], help="the training config file(s)")
    d.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="ID=VALUE",
        help="the training run's overrides, VALUE parsed as JSON when possible (repeatable)",
    )
    d.add_argument("--weights_key", default=None)
    d.add_argument("--force", action="store_true", help="replace an existing description")
    args = p.parse_args(argv)
    try:
        if args.cmd in ("show", "verify"):
            desc = load_description(args.ckpt)
            print(
                json.dumps(desc.to_dict(), indent=2)
                if args.cmd == "show"
                else f"ok: {description_path(args.ckpt)} describes {args.ckpt} (sha256 {desc.weights_sha256})"
            )
            return 0
        overrides = {}
        for item in args.overrides:
            if "=" not in item:
                p.error(f"--set expects ID=VALUE, got {item!r}")
            k, val = item.split("=", 1)
            overrides[k] = _parse_value(val)
        config = args.config if len(args.config) > 1 else args.config[0]
        desc = describe_legacy_checkpoint(args.ckpt, config, overrides, weights_key=args.weights_key, force=args.force)
        print(
            f"wrote {description_path(args.ckpt)} (sha256 {desc.weights_sha256[:16]}..., encoder {desc.encoder}, "
            f"classes {desc.class_names}, spatial_size {desc.spatial_size}, tasks {desc.tasks})"
        )
        return 0
    except (DescriptionError, WeightsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    # run the imported module's main: under ``python -m`` this file is ``__main__``, and its classes would not be
    # the ``monai_mcx.artifact`` classes that the bundle configs build (isinstance checks would fail)
    from monai_mcx.artifact import main as _main

    raise SystemExit(_main())
