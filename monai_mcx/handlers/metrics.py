"""Ignite metric and writer that evaluate all three heads at once and save ``metrics.json``.

Keys follow ``<task>/<metric>[/<variant>]`` (see DESIGN.md): ``classification/auc``,
``classification/auc/<class>``, ``classification/threshold/<class>``, ``segmentation/dice_positive``,
``segmentation/dice_empty_aware``, ``localization/ap50``, ``localization/map`` (over all boxes),
``localization/rsna``, ``localization/boxes_per_negative``, ``localization/sensitivity50`` (at the box operating
point ``localization/box_threshold``), and ``.../gated`` for the variants where the classifier gates the other heads
with exactly the deployed rule and thresholds (:func:`monai_mcx.inferers.gate_decision`: an image is positive when
some class reaches its own threshold; a negative image gets an empty mask and no boxes).

Segmentation and localization keys are computed at the network input (``spatial_size``). With
``original_resolution=True`` the same metrics are also computed at each image's ORIGINAL resolution, as SIIM-ACR and
most papers report Dice, under ``<key>/original`` and ``<key>/gated/original``: the mask probability is resized
to the image's size by :func:`monai_mcx.inferers.probs_to_original` (what inference writes) and compared with the
mask file reloaded at its own size; boxes and true boxes are scaled by ``original / input`` per axis
(:func:`monai_mcx.inferers.scale_boxes_to_original`). IoU does not change under a per-axis scaling, so the box
metrics agree at both resolutions up to clipping and rounding; Dice does not (the mask is resampled).

Calibration and operating points (issue 14): with ``calibration="temperature"`` (evaluation of the validation
split) per-class temperatures are fitted on the RAW class logits of the labelled images BEFORE the class thresholds
are chosen, and the thresholds, the classification metrics, the gate and the operating points all use the calibrated
probabilities ``sigmoid(z / T)``. Keys: ``calibration/temperature/<class>``, ``calibration/{ece,brier,nll}/<class>``
(calibrated) and ``.../<class>/raw`` (``sigmoid(z)``), ``calibration/fitted_on``; sensitivity and specificity with
95 % patient-bootstrap intervals ``classification/{sensitivity,specificity}/<class>/ci_{low,high}`` at the chosen
threshold, and ``classification/sens90/{threshold,sensitivity,specificity}/<class>[/ci_low|/ci_high]`` (and
``sens95``) at fixed sensitivity targets (:func:`monai_mcx.metrics.class_operating_points`).
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Engine, Events
from ignite.metrics import Metric
from monai.utils.enums import CommonKeys

from monai_mcx.inferers import (
    MultiCheXNetPostprocessor,
    probs_to_original,
    scale_boxes_to_original,
    select_detections,
)
from monai_mcx.keys import BatchKeys, DatalistKeys, DetKeys, PredKeys
from monai_mcx.metrics import (
    TemperatureScaling,
    calibration_metrics,
    choose_box_threshold,
    choose_threshold,
    class_operating_points,
    classification_metrics,
    detection_metrics,
    segmentation_metrics,
)
from monai_mcx.metrics.calibration import logits_from_probs
from monai_mcx.transforms.io import LoadCXR
from monai_mcx.utils import as_bool, write_json_atomic

__all__ = [
    "MultiTaskMetrics",
    "MetricsJSONWriter",
    "resolve_class_thresholds",
    "deployed_from_metrics",
    "SCORE_KEYS",
    "BOX_THRESHOLD_KEY",
    "ORIGINAL_SUFFIX",
    "SEG_COUNT_KEY",
    "class_threshold_key",
]

#: metrics averaged into the single key metric used for best-checkpoint selection
SCORE_KEYS = ("classification/auc", "segmentation/dice_positive", "localization/ap50")
#: the ``metrics.json`` key of the box operating point used by the thresholded box metrics
BOX_THRESHOLD_KEY = "localization/box_threshold"
#: suffix of the keys computed at each image's original resolution (``MultiTaskMetrics(original_resolution=True)``)
ORIGINAL_SUFFIX = "/original"
#: the number of images in the segmentation metrics (with a known mask); ``.../original``: at the original resolution
SEG_COUNT_KEY = "segmentation/n_images"


def class_threshold_key(name: str) -> str:
    """The ``metrics.json`` key of one class's decision / gate threshold."""
    return f"classification/threshold/{name}"


def _from_engine_output(output: dict) -> tuple[dict, dict]:
    return output[CommonKeys.PRED], output[CommonKeys.LABEL]


def _shift_image_index(item: tuple, offset: int) -> tuple:
    """A ``(image index, ...)`` record of one rank's shard, renumbered for the merged set."""
    return (item[0] + offset, *item[1:])


class MultiTaskMetrics(Metric):
    """Accumulate the evaluator's outputs over an epoch and compute every task's metrics.

    ``update((pred, targets))`` takes the :class:`~monai_mcx.engines.MultiTaskEvaluator` output: ``pred`` from
    :class:`~monai_mcx.inferers.MultiCheXNetPostprocessor` (``class_probs`` ``(B, K)``, ``seg_mask`` ``(B, 1, W, H)``
    ungated, ``detections``: every decoded box, ungated) and the targets dict with availability flags. Samples
    without a task's annotation are left out of that task's metrics (unknown is not negative); every image
    counts for the gate.

    The gate and the thresholded metrics use the post-processor's own functions with the thresholds resolved at
    ``compute()``: the class thresholds (``threshold``) first, then the gate :meth:`MultiCheXNetPostprocessor.gate`
    on every image, then the box operating point (``box_threshold``), chosen on the GATED boxes when asked to,
    so that the ``/gated`` numbers are those of the model as deployed with these thresholds. The values used are
    reported as ``classification/threshold/<class>`` and ``localization/box_threshold`` and kept in
    :attr:`deployed` (the post-processor with them).

    In a ``torch.distributed`` run (a ``DistributedSampler`` giving each rank a shard of the validation set),
    ``compute()`` first gathers every rank's samples, so all ranks report the metrics of the whole set.

    ``compute()`` returns the flat dict of metrics plus ``score``: the mean of the available
    :data:`SCORE_KEYS`. Attached to an engine, each key is stored in ``engine.state.metrics`` and the
    metric's own name holds ``score`` (a scalar, so it can be a MONAI key metric).

    Args:
        class_names: the classifier's class names.
        postprocessor: the deployed post-processing (its class thresholds, gate rule, box operating point); by
            default ``MultiCheXNetPostprocessor(class_names)`` (0.5 per class, every box).
        threshold: the class thresholds: None (the post-processor's), a number or one per class, ``"youden"`` /
            ``"f1"`` (chosen on the evaluated data, i.e. "chosen on validation" when evaluating the validation
            split; see :func:`resolve_class_thresholds`).
        box_threshold: the box operating point: None (the post-processor's), a number, or ``"rsna"`` (chosen on
            the evaluated data with :func:`monai_mcx.metrics.choose_box_threshold`: maximises the RSNA challenge
            metric of the gated boxes).
        max_detections: boxes per image counted by AP (COCO's 100).
        original_resolution: also compute the segmentation and localization metrics at each image's original
            resolution (keys ``.../original``; module docstring). Needs the batch's ``original_size`` and
            ``mask_path`` (:class:`~monai_mcx.transforms.PrepareAnnotationsd` records the mask file; an in-memory
            mask has none: an empty one counts as an all-zero mask of the original size (a negative of
            ``empty_mask_if_no_boxes``), a non-empty one is left out of the ``/original`` Dice, with a warning).
            ``segmentation/n_images`` and ``segmentation/n_images/original`` count the images of both.
        mask_loader: reads a mask file at its own size for ``original_resolution`` (default
            ``LoadCXR(as_mask=True)``, the loader of :class:`~monai_mcx.transforms.PrepareAnnotationsd`).
        calibration: the classifier's calibration: None (the post-processor's, e.g. the model description's on a
            test split: nothing refit), ``"temperature"`` (or True: fit per-class temperature scaling on the raw
            logits of the evaluated images with known labels, before the thresholds are chosen: on the validation
            split), ``"none"`` (or False: raw ``sigmoid`` probabilities, no calibration).
        sensitivity_targets: fixed sensitivities of the reported operating points (``0.9`` -> ``sens90``).
        target_thresholds: ``{"sens90": {class: t}, ...}`` chosen on validation (the model description's
            ``sensitivity_thresholds``); None: chosen on the evaluated data (only when that IS the validation
            split). A target or class missing from a mapping (``{}``: a description without them, on a test split)
            is not chosen here: its ``classification/<op>/...`` keys are NaN (``null``, "not available").
        n_boot: bootstrap replicates of the confidence intervals (resampling patients: the targets' ``patient``
            ids; one image = one patient where they are missing, see :attr:`patients_known`).
        ci: coverage of the intervals.
    """

    def __init__(
        self,
        class_names: Sequence[str],
        postprocessor: MultiCheXNetPostprocessor | None = None,
        threshold: float | Sequence[float] | str | None = None,
        box_threshold: float | str | None = None,
        output_transform: Callable = _from_engine_output,
        device: str | torch.device = "cpu",
        max_detections: int = 100,
        original_resolution: bool = False,
        mask_loader: Callable | None = None,
        calibration: str | bool | None = None,
        sensitivity_targets: Sequence[float] = (0.9, 0.95),
        target_thresholds: dict | None = None,
        n_boot: int = 1000,
        ci: float = 0.95,
    ) -> None:
        self.class_names = list(class_names)
        self.original_resolution = as_bool(original_resolution, "metrics_original_resolution")
        self._mask_loader = mask_loader
        self.postprocessor = postprocessor if postprocessor is not None else MultiCheXNetPostprocessor(self.class_names)
        if list(self.postprocessor.class_names) != self.class_names:
            raise ValueError(
                f"MultiTaskMetrics class_names {self.class_names} differ from the post-processor's "
                f"{self.postprocessor.class_names}."
            )
        if isinstance(box_threshold, str) and box_threshold not in ("rsna", "choose"):
            raise ValueError(f"box_threshold must be a number, None or 'rsna', got {box_threshold!r}.")
        self.threshold = threshold
        self.box_threshold = box_threshold
        self.max_detections = int(max_detections)
        if calibration is True:
            calibration = "temperature"
        elif calibration is False:
            calibration = "none"
        if calibration not in (None, "temperature", "none"):
            raise ValueError(f"calibration must be None, 'temperature' or 'none', got {calibration!r}.")
        self.calibration = calibration
        self.sensitivity_targets = [float(t) for t in sensitivity_targets]
        # {op: {class: t}} (the description's layout) -> {class: {op: t}} (class_operating_points')
        self.target_thresholds = None
        if target_thresholds is not None:  # {} (none from validation): reported as undefined, never chosen here
            self.target_thresholds = {}
            for op, table in dict(target_thresholds).items():
                for c, t in dict(table).items():
                    self.target_thresholds.setdefault(str(c), {})[str(op)] = float(t)
        self.n_boot = int(n_boot)
        self.ci = float(ci)
        #: the temperatures fitted by the last ``compute()`` (``calibration="temperature"``), else None
        self.fitted_calibration: TemperatureScaling | None = None
        #: whether the last ``compute()`` had a patient id for every image (else images were bootstrapped alone)
        self.patients_known: bool = True
        #: per-class classification thresholds used by the last ``compute()``
        self.class_thresholds: list[float] | None = None
        #: the post-processor with the thresholds of the last ``compute()`` (what evaluation deploys)
        self.deployed: MultiCheXNetPostprocessor = self.postprocessor
        super().__init__(output_transform=output_transform, device=device)

    def reset(self) -> None:
        self._gathered = False
        self._probs: list[np.ndarray] = []  # every image, (K,)
        self._labels: list[np.ndarray | None] = []  # every image: (K,) or None when unknown
        self._seg: list[tuple[int, np.ndarray, np.ndarray]] = []  # (image index, pred mask, true mask)
        self._det: list[tuple[int, dict, np.ndarray]] = []  # (image index, all detections, true boxes)
        self._logits: list[np.ndarray | None] = []  # every image: raw class logits (K,), None when unavailable
        self._patients: list[str | None] = []  # every image: patient id, None when unknown
        self._pops: list[str | None] = []  # every image: the population whose point the evaluator applied
        # original resolution: (image index, seg probs (w, h) float32 as inference has them, mask file, original (W, H))
        self._seg_orig: list[tuple[int, np.ndarray, str, list[int]]] = []
        self._det_geom: list[tuple[list[int], list[int]]] = []  # per _det entry: (input (w, h), original (W, H))
        self._missing_mask_files = 0
        self._n = 0

    def update(self, output: tuple[dict, dict]) -> None:
        pred, targets = output
        n = int(targets[BatchKeys.IMAGE].shape[0]) if BatchKeys.IMAGE in targets else None
        probs = None
        if PredKeys.CLASS_PROBS in pred:
            probs = pred[PredKeys.CLASS_PROBS].detach().float().cpu().numpy()
            n = probs.shape[0]
        if n is None:
            n = len(next(v for v in pred.values() if isinstance(v, (list, torch.Tensor))))
        base = self._n
        self._n += n
        has_label = targets.get(BatchKeys.HAS_LABEL)
        raw = self._raw_logits(pred)
        patients = targets.get(BatchKeys.PATIENT)
        points = pred.get(PredKeys.POPULATION)
        for i in range(n if probs is not None else 0):
            self._pops.append(None if points is None else points[i].get(DatalistKeys.POPULATION))
            self._logits.append(None if raw is None else raw[i])
            pid = None if patients is None else patients[i]
            self._patients.append(None if pid is None or str(pid) == "" else str(pid))
            self._probs.append(probs[i])
            known = has_label is not None and float(has_label.reshape(-1)[i]) > 0.5
            self._labels.append(targets[BatchKeys.LABEL][i].detach().float().cpu().numpy() if known else None)
        if PredKeys.SEG_MASK in pred and BatchKeys.HAS_MASK in targets:
            has = (targets[BatchKeys.HAS_MASK].reshape(-1).cpu() > 0.5).numpy()
            seg = pred[PredKeys.SEG_MASK].detach().cpu().numpy().astype(bool)
            true = (targets[BatchKeys.MASK].detach().float().cpu() > 0.5).numpy()
            for i in np.nonzero(has)[0]:
                self._seg.append((base + int(i), seg[i, 0], true[i, 0]))
            if self.original_resolution:
                self._update_seg_original(pred, targets, has, base)
        if PredKeys.DETECTIONS in pred and BatchKeys.HAS_BOXES in targets:
            has = (targets[BatchKeys.HAS_BOXES].reshape(-1).cpu() > 0.5).numpy()
            for i in np.nonzero(has)[0]:
                det = pred[PredKeys.DETECTIONS][i]
                det = {
                    DetKeys.BOXES.value: det[DetKeys.BOXES].detach().float().cpu().reshape(-1, 4),
                    DetKeys.SCORES.value: det[DetKeys.SCORES].detach().float().cpu().reshape(-1),
                }
                truth = targets[BatchKeys.BOXES][i].detach().float().cpu().numpy().reshape(-1, 4)
                self._det.append((base + int(i), det, truth))
                if self.original_resolution:
                    self._det_geom.append((list(pred[PredKeys.INPUT_SIZE]), self._original_size(targets, i)))

    def _raw_logits(self, pred: dict) -> np.ndarray | None:
        """``(B, K)`` raw (uncalibrated) class logits: ``class_logits``, else the logit of ``class_probs_raw``, else
        of ``class_probs`` when the post-processor is uncalibrated; None when the raw values are unknown."""
        if PredKeys.CLASS_LOGITS in pred:
            return pred[PredKeys.CLASS_LOGITS].detach().double().cpu().numpy()
        if PredKeys.CLASS_PROBS_RAW in pred:
            return logits_from_probs(pred[PredKeys.CLASS_PROBS_RAW].detach().double().cpu().numpy())
        if PredKeys.CLASS_PROBS in pred and not self.postprocessor.calibrated:
            return logits_from_probs(pred[PredKeys.CLASS_PROBS].detach().double().cpu().numpy())
        return None

    @staticmethod
    def _original_size(targets: dict, i: int) -> list[int]:
        sizes = targets.get(BatchKeys.ORIGINAL_SIZE)
        if sizes is None:
            raise ValueError(
                "MultiTaskMetrics(original_resolution=True) needs the batch's 'original_size' (collate_cxr adds it "
                "for images loaded as MetaTensors)."
            )
        return [int(v) for v in sizes[i]]

    def _update_seg_original(self, pred: dict, targets: dict, has: np.ndarray, base: int) -> None:
        probs = (
            pred[PredKeys.SEG_PROBS].detach().float().cpu().numpy()
        )  # float32: a rounding would flip pixels at the threshold
        paths = targets.get(BatchKeys.MASK_PATH) or [""] * len(has)
        empty = ~(targets[BatchKeys.MASK].detach().cpu().reshape(len(has), -1) > 0.5).any(dim=1).numpy()
        for i in np.nonzero(has)[0]:
            path = str(paths[i]) if paths[i] else None
            if path is None and not empty[i]:  # an in-memory lesion mask: its original-size pixels are unknown
                self._missing_mask_files += 1
                continue
            # no file and no lesion pixel (``empty_mask_if_no_boxes``): an all-zero mask of the original size
            self._seg_orig.append((base + int(i), probs[i, 0].copy(), path, self._original_size(targets, i)))

    _STATE = ("_probs", "_labels", "_seg", "_det", "_seg_orig", "_det_geom", "_logits", "_patients", "_pops")

    def _gather_ranks(self) -> None:
        """Under ``torch.distributed`` (each rank evaluated its shard of the data), replace the per-sample lists
        by the concatenation of every rank's (image indices shifted), so that every rank computes the metrics of
        the whole set — the same numbers as a one-process evaluation. Collective: every rank must call
        :meth:`compute` (:func:`monai_mcx.engines.distributed.gather_shards`)."""
        from monai_mcx.engines.distributed import gather_shards

        if getattr(self, "_gathered", False):
            return
        mine = {k: getattr(self, k) for k in self._STATE}
        mine["_n"] = self._n
        shifted = {k: _shift_image_index for k in ("_seg", "_det", "_seg_orig")}
        merged = gather_shards(mine, "_n", shifted)
        if merged is None:
            return
        self._gathered = True
        for k in self._STATE:
            setattr(self, k, merged.get(k, []))
        self._n = merged["_n"]

    def compute(self) -> dict[str, float]:
        self._gather_ranks()
        out: dict[str, float] = {}
        deployed = self.postprocessor
        gate = None
        self.fitted_calibration = None
        if self._probs:
            probs = np.stack(self._probs)
            known = [i for i, y in enumerate(self._labels) if y is not None]
            logits = np.stack(self._logits) if all(z is not None for z in self._logits) else None
            deployed, probs = self._calibrate(deployed, probs, logits, known)
            if known:
                labels = np.stack([self._labels[i] for i in known])
                if logits is not None:
                    out.update(self._calibration_metrics(deployed, logits[known], labels, len(known)))
                if self.threshold is not None:
                    deployed = deployed.with_settings(
                        class_thresholds=resolve_class_thresholds(
                            self.threshold, probs[known], labels, self.class_names
                        )
                    )
                out.update(
                    classification_metrics(probs[known], labels, self.class_names, threshold=deployed.class_thresholds)
                )
                out.update(self._operating_points(probs[known], labels, deployed.class_thresholds, known))
            out.update({class_threshold_key(c): t for c, t in zip(self.class_names, deployed.class_thresholds)})
            # the deployed gate: each image at its population's point (the global point, as chosen here, otherwise)
            pops = self._pops if any(p is not None for p in self._pops) else None
            gate = deployed.gate(torch.as_tensor(probs), pops).numpy()
        self.class_thresholds = list(deployed.class_thresholds)
        gated = gate is not None
        if self._seg:
            idx = np.asarray([j for j, _, _ in self._seg])
            pred = np.stack([p for _, p, _ in self._seg])
            true = np.stack([t for _, _, t in self._seg])
            out.update(segmentation_metrics(pred, true))
            out[SEG_COUNT_KEY] = float(len(self._seg))
            if gated:
                out.update(
                    {f"{k}/gated": v for k, v in segmentation_metrics(pred & gate[idx][:, None, None], true).items()}
                )
        if self._seg_orig:
            out.update(self._segmentation_original(deployed.seg_threshold, gate))
        if self._det:
            dets = [d for _, d, _ in self._det]
            truths = [t for _, _, t in self._det]
            keep = [True if gate is None else bool(gate[j]) for j, _, _ in self._det]
            dets_gated = [select_detections(d, 0.0, keep=k) for d, k in zip(dets, keep)]
            if self.box_threshold is not None:
                t = (
                    choose_box_threshold(dets_gated, truths)[0]
                    if isinstance(self.box_threshold, str)
                    else self.box_threshold
                )
                deployed = deployed.with_settings(box_score_threshold=float(t))
            t = deployed.box_score_threshold
            out[BOX_THRESHOLD_KEY] = t
            out.update(detection_metrics(dets, truths, self.max_detections, score_threshold=t))
            if gated:
                out.update(
                    {f"{k}/gated": v for k, v in detection_metrics(dets_gated, truths, self.max_detections, t).items()}
                )
            if self.original_resolution and len(self._det_geom) == len(dets):
                variants = [("", dets)] + ([("/gated", dets_gated)] if gated else [])
                truths_o = [scale_boxes_to_original(b, i, o) for b, (i, o) in zip(truths, self._det_geom)]
                for suffix, ds in variants:
                    ds_o = [
                        {**d, DetKeys.BOXES.value: scale_boxes_to_original(d[DetKeys.BOXES], i, o)}
                        for d, (i, o) in zip(ds, self._det_geom)
                    ]
                    res = detection_metrics(ds_o, truths_o, self.max_detections, score_threshold=t)
                    out.update({f"{k}{suffix}{ORIGINAL_SUFFIX}": v for k, v in res.items()})
        self.deployed = deployed
        out = {k: float(v) for k, v in out.items()}
        parts = [out[k] for k in SCORE_KEYS if k in out and not math.isnan(out[k])]
        out["score"] = float(np.mean(parts)) if parts else 0.0
        return out

    def _calibrate(
        self, deployed: MultiCheXNetPostprocessor, probs: np.ndarray, logits: np.ndarray | None, known: list[int]
    ) -> tuple[MultiCheXNetPostprocessor, np.ndarray]:
        """Apply :attr:`calibration`: the post-processor (with its calibration) and the probabilities ``(N, K)`` that
        the thresholds, metrics and gate use. A refit starts from the RAW logits, never from probabilities that an
        earlier calibration already scaled."""
        if self.calibration is None:
            return deployed, probs
        if logits is None:
            raise ValueError(
                f"MultiTaskMetrics(calibration={self.calibration!r}) needs the raw class logits (class_logits or "
                "class_probs_raw in the prediction); the post-processor output has neither."
            )
        if self.calibration == "none":
            deployed = deployed.with_settings(calibration=False)
        else:
            y = np.stack([self._labels[i] for i in known]) if known else np.zeros((0, len(self.class_names)))
            self.fitted_calibration = TemperatureScaling.fit(logits[known], y, self.class_names)
            deployed = deployed.with_settings(calibration=self.fitted_calibration)
        # float32 torch, exactly as the post-processor computes them at inference (the thresholds are probabilities)
        probs = deployed.probabilities(torch.as_tensor(logits, dtype=torch.float32))
        return deployed, probs.double().numpy()

    def _calibration_metrics(
        self, deployed: MultiCheXNetPostprocessor, logits: np.ndarray, labels: np.ndarray, n_fit: int
    ) -> dict[str, float]:
        """ECE / Brier / NLL of the raw (``.../raw``) and, when calibrated, the calibrated probabilities, and the
        temperatures; ``calibration/fitted_on`` when this evaluation fitted them."""
        scaling = deployed.calibration
        out = calibration_metrics(logits, labels, self.class_names, scaling or TemperatureScaling(self.class_names))
        if scaling is None:  # uncalibrated: only the raw values are what leaves the model
            return {k: v for k, v in out.items() if k.endswith("/raw")}
        if self.fitted_calibration is not None:
            out["calibration/fitted_on"] = float(n_fit)
        return out

    def _operating_points(
        self, probs: np.ndarray, labels: np.ndarray, thresholds: Sequence[float], known: list[int]
    ) -> dict[str, float]:
        """Sensitivity / specificity with patient-bootstrap intervals at the chosen thresholds and at the
        sensitivity targets (:func:`monai_mcx.metrics.class_operating_points`)."""
        pats = [self._patients[i] if i < len(self._patients) else None for i in known]
        self.patients_known = all(p is not None for p in pats)
        pats = [p if p is not None else f"<image {i}>" for p, i in zip(pats, known)]  # one image = one patient
        out = class_operating_points(
            probs,
            labels,
            self.class_names,
            thresholds,
            patients=pats,
            sensitivity_targets=self.sensitivity_targets,
            target_thresholds=self.target_thresholds,
            n_boot=self.n_boot,
            ci=self.ci,
        )
        out["classification/patients_known"] = float(self.patients_known)
        return out

    def _segmentation_original(self, seg_threshold: float, gate: np.ndarray | None) -> dict[str, float]:
        """Dice at each image's original resolution: predicted probabilities resized to the image (the inference
        rule), true mask reloaded from its file at its own size."""
        if self._mask_loader is None:
            self._mask_loader = LoadCXR(as_mask=True)
        if self._missing_mask_files:
            warnings.warn(
                f"{self._missing_mask_files} image(s) with a non-empty in-memory mask (no mask file) are left out of the "
                "original-resolution Dice.",
                stacklevel=2,
            )
        preds, truths, keep = [], [], []
        for j, probs, path, orig in self._seg_orig:
            if path is None:  # an in-memory empty mask
                true = torch.zeros([int(v) for v in orig], dtype=torch.bool)
            else:
                true = torch.as_tensor(np.asarray(self._mask_loader(path)))
                true = (true[None] if true.ndim == 2 else true).amax(dim=0) > 0  # (W, H), any channel set
            if list(true.shape) != list(orig):
                raise ValueError(
                    f"{path}: mask size {tuple(true.shape)} differs from its image's original size {tuple(orig)} (W, H)."
                )
            preds.append((probs_to_original(probs, orig) >= seg_threshold).numpy())
            truths.append(true.numpy())
            keep.append(True if gate is None else bool(gate[j]))
        out = {f"{k}{ORIGINAL_SUFFIX}": v for k, v in segmentation_metrics(preds, truths).items()}
        out[f"{SEG_COUNT_KEY}{ORIGINAL_SUFFIX}"] = float(len(preds))
        if gate is not None:
            gated = [p & k for p, k in zip(preds, keep)]
            out.update({f"{k}/gated{ORIGINAL_SUFFIX}": v for k, v in segmentation_metrics(gated, truths).items()})
        return out

    def completed(self, engine: Engine, name: str) -> None:
        result = self.compute()
        for key, value in result.items():
            if key != "score":
                engine.state.metrics[key] = value
        engine.state.metrics[name] = result["score"]


def deployed_from_metrics(postprocessor: MultiCheXNetPostprocessor, metrics: Mapping) -> MultiCheXNetPostprocessor:
    """The post-processor at the operating point an evaluation's metrics used (what
    :class:`monai_mcx.handlers.OperatingPointWriter` writes into the model description on the validation split):
    ``classification/threshold/<class>`` (when every class has one), ``localization/box_threshold``, and the
    calibration: ``calibration/temperature/<class>`` (temperature scaling), raw probabilities when the metrics have
    only ``calibration/.../raw`` keys, else the post-processor's own.

    Args:
        postprocessor: the post-processing the evaluation started from (the model description's).
        metrics: the flat metrics (``engine.state.metrics`` after :class:`MultiTaskMetrics` computed).
    """
    names = list(postprocessor.class_names)
    thr = [metrics.get(class_threshold_key(c)) for c in names]
    temps = [metrics.get(f"calibration/temperature/{c}") for c in names]
    calibration = None  # keep the post-processor's unless the metrics say how they calibrated
    if all(t is not None for t in temps):
        calibration = {"method": "temperature", "temperatures": {c: float(t) for c, t in zip(names, temps)}}
    elif any(str(k).startswith("calibration/") and str(k).endswith("/raw") for k in metrics):
        calibration = False  # the metrics used raw probabilities
    box = metrics.get(BOX_THRESHOLD_KEY)
    return postprocessor.with_settings(
        class_thresholds=[float(t) for t in thr] if all(t is not None for t in thr) else None,
        box_score_threshold=None if box is None else float(box),
        calibration=calibration,
    )


def resolve_class_thresholds(
    threshold: float | Sequence[float] | str, probs: np.ndarray, labels: np.ndarray, class_names: Sequence[str]
) -> list[float]:
    """Per-class decision thresholds from ``MultiTaskMetrics(threshold=...)``.

    - a number or one number per class: used as given;
    - ``"youden"`` / ``"f1"`` (or ``"choose"`` = ``"youden"``): chosen on ``probs``/``labels`` (the data being
      evaluated, i.e. the validation split) with :func:`monai_mcx.metrics.choose_threshold`;
    """
    k = len(class_names)
    if isinstance(threshold, str):
        if threshold in ("youden", "f1", "choose"):
            method = "youden" if threshold == "choose" else threshold
            return [float(choose_threshold(probs[:, c], labels[:, c], method=method)) for c in range(k)]
        raise ValueError(f"threshold must be a number, one per class, 'youden' or 'f1', got {threshold!r}.")
    thr = np.asarray(threshold, dtype=np.float64).reshape(-1)
    if thr.size == 1:
        return [float(thr[0])] * k
    if thr.size != k:
        raise ValueError(f"{thr.size} thresholds for {k} classes.")
    return [float(t) for t in thr]


class MetricsJSONWriter:
    """Write the scalar ``engine.state.metrics`` to ``<output_dir>/<filename>`` (atomically) when an
    evaluation epoch completes. NaN (a metric undefined on this data, e.g. AUC with one class) is
    written as ``null``."""

    def __init__(
        self, output_dir: str | os.PathLike, filename: str = "metrics.json", extra: dict | None = None
    ) -> None:
        self.path = Path(output_dir) / filename
        self.extra = dict(extra or {})

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        metrics = {}
        for k, v in engine.state.metrics.items():
            if isinstance(v, (int, float, np.floating, np.integer)) or (torch.is_tensor(v) and v.numel() == 1):
                f = float(v)
                metrics[k] = None if math.isnan(f) else f
        metrics.update(self.extra)
        write_json_atomic(metrics, self.path)
