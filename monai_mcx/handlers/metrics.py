"""Ignite metric and writer that evaluate all three heads at once and save ``metrics.json``.

Keys follow ``<task>/<metric>[/<variant>]`` (see DESIGN.md): ``classification/auc``,
``classification/auc/<class>``, ``segmentation/dice_positive``, ``segmentation/dice_empty_aware``,
``localization/ap50``, ``localization/map``, ``localization/rsna``, and ``.../gated`` for the variants where
the classifier gates the other heads (below ``gate_threshold`` an image gets an empty mask and no boxes).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from ignite.engine import Engine, Events
from ignite.metrics import Metric

from monai_mcx.utils import write_json_atomic
from monai_mcx.metrics import classification_metrics, detection_metrics, segmentation_metrics

__all__ = ["MultiTaskMetrics", "MetricsJSONWriter", "resolve_class_thresholds", "SCORE_KEYS"]

#: metrics averaged into the single key metric used for best-checkpoint selection
SCORE_KEYS = ("classification/auc", "segmentation/dice_positive", "localization/ap50")


def _from_engine_output(output: dict) -> tuple[dict, dict]:
    return output["pred"], output["label"]


class MultiTaskMetrics(Metric):
    """Accumulate the evaluator's outputs over an epoch and compute every task's metrics.

    ``update((pred, targets))`` takes the :class:`~monai_mcx.engines.MultiTaskEvaluator` output: ``pred``
    with ``class_probs`` ``(B, K)``, ``seg_probs`` ``(B, 1, W, H)``, ``detections`` (list of dicts) and
    the targets dict with availability flags. Samples without a task's annotation are left out of that
    task's metrics (unknown is not negative).

    In a ``torch.distributed`` run (a ``DistributedSampler`` giving each rank a shard of the validation set),
    ``compute()`` first gathers every rank's samples, so all ranks report the metrics of the whole set.

    ``compute()`` returns the flat dict of metrics plus ``score``: the mean of the available
    :data:`SCORE_KEYS`. Attached to an engine, each key is stored in ``engine.state.metrics`` and the
    metric's own name holds ``score`` (a scalar, so it can be a MONAI key metric).

    ``threshold``: the classification decision threshold(s) for sensitivity/specificity/F1 — a number, one per
    class, ``"youden"``/``"f1"`` (chosen on the evaluated data, i.e. "chosen on validation" when evaluating the
    validation split) or the path of a ``thresholds.json``; see :func:`resolve_class_thresholds`. The values
    used are reported as ``classification/threshold/<class>`` and kept in ``class_thresholds``.
    The gate of the ``/gated`` variants is ``max_k class_probs >= gate_threshold``, computed for every image
    whether or not its class label is known.
    """

    def __init__(
        self,
        class_names: Sequence[str],
        gate_threshold: float = 0.5,
        seg_threshold: float = 0.5,
        output_transform: Callable = _from_engine_output,
        device: str | torch.device = "cpu",
        threshold: float | Sequence[float] | str = 0.5,
    ) -> None:
        self.class_names = list(class_names)
        self.gate_threshold = float(gate_threshold)
        self.seg_threshold = float(seg_threshold)
        self.threshold = threshold
        #: per-class classification thresholds used by the last ``compute()``
        self.class_thresholds: list[float] | None = None
        super().__init__(output_transform=output_transform, device=device)

    def reset(self) -> None:
        self._gathered = False
        self._cls_probs: list[np.ndarray] = []
        self._cls_labels: list[np.ndarray] = []
        self._seg_pred: list[np.ndarray] = []
        self._seg_true: list[np.ndarray] = []
        self._seg_gate: list[bool] = []
        self._det_pred: list[dict] = []
        self._det_true: list[np.ndarray] = []
        self._det_gate: list[bool] = []
        self._have_gate = False

    def update(self, output: tuple[dict, dict]) -> None:
        pred, targets = output
        gate = None
        if "class_probs" in pred:
            probs = pred["class_probs"].detach().float().cpu()
            gate = (probs.max(dim=1).values >= self.gate_threshold).numpy()
            self._have_gate = True
            has = targets["has_label"].reshape(-1).cpu() > 0.5
            if has.any():
                self._cls_probs.append(probs[has].numpy())
                self._cls_labels.append(targets["label"].detach().float().cpu()[has].numpy())
        if "seg_probs" in pred:
            has = (targets["has_mask"].reshape(-1).cpu() > 0.5).numpy()
            seg = (pred["seg_probs"].detach().float().cpu() >= self.seg_threshold).numpy()
            true = (targets["mask"].detach().float().cpu() > 0.5).numpy()
            for i in np.nonzero(has)[0]:
                self._seg_pred.append(seg[i, 0])
                self._seg_true.append(true[i, 0])
                self._seg_gate.append(True if gate is None else bool(gate[i]))
        if "detections" in pred:
            has = (targets["has_boxes"].reshape(-1).cpu() > 0.5).numpy()
            for i in np.nonzero(has)[0]:
                det = pred["detections"][i]
                self._det_pred.append(
                    {"boxes": det["boxes"].detach().float().cpu().numpy().reshape(-1, 4),
                     "scores": det["scores"].detach().float().cpu().numpy().reshape(-1)}
                )
                self._det_true.append(targets["boxes"][i].detach().float().cpu().numpy().reshape(-1, 4))
                self._det_gate.append(True if gate is None else bool(gate[i]))

    _STATE = ("_cls_probs", "_cls_labels", "_seg_pred", "_seg_true", "_seg_gate", "_det_pred", "_det_true", "_det_gate")

    def _gather_ranks(self) -> None:
        """Under ``torch.distributed`` (each rank evaluated its shard of the data), replace the per-sample lists
        by the concatenation of every rank's, so that every rank computes the metrics of the whole set — the
        same numbers as a one-process evaluation. Collective: every rank must call :meth:`compute`."""
        if getattr(self, "_gathered", False) or not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return
        self._gathered = True
        mine = {k: getattr(self, k) for k in self._STATE}
        mine["_have_gate"] = bool(getattr(self, "_have_gate", False))
        parts: list = [None] * dist.get_world_size()
        dist.all_gather_object(parts, mine)
        for k in self._STATE:
            setattr(self, k, [item for part in parts for item in part[k]])
        self._have_gate = any(part["_have_gate"] for part in parts)

    def compute(self) -> dict[str, float]:
        self._gather_ranks()
        out: dict[str, float] = {}
        if self._cls_probs:
            probs, labels = np.concatenate(self._cls_probs), np.concatenate(self._cls_labels)
            self.class_thresholds = resolve_class_thresholds(self.threshold, probs, labels, self.class_names)
            out.update(classification_metrics(probs, labels, self.class_names, threshold=self.class_thresholds))
        gated_available = self._have_gate or bool(self._cls_probs) or any(not g for g in self._seg_gate + self._det_gate)
        if self._seg_pred:
            pred = np.stack(self._seg_pred)
            true = np.stack(self._seg_true)
            out.update(segmentation_metrics(pred, true))
            if gated_available:
                keep = np.asarray(self._seg_gate, dtype=bool)[:, None, None]
                out.update({f"{k}/gated": v for k, v in segmentation_metrics(pred & keep, true).items()})
        if self._det_pred:
            out.update(detection_metrics(self._det_pred, self._det_true))
            if gated_available:
                empty = {"boxes": np.zeros((0, 4), np.float32), "scores": np.zeros((0,), np.float32)}
                gated = [p if g else empty for p, g in zip(self._det_pred, self._det_gate)]
                out.update({f"{k}/gated": v for k, v in detection_metrics(gated, self._det_true).items()})
        out = {k: float(v) for k, v in out.items()}
        parts = [out[k] for k in SCORE_KEYS if k in out and not math.isnan(out[k])]
        out["score"] = float(np.mean(parts)) if parts else 0.0
        return out

    def completed(self, engine: Engine, name: str) -> None:
        result = self.compute()
        for key, value in result.items():
            if key != "score":
                engine.state.metrics[key] = value
        engine.state.metrics[name] = result["score"]


def resolve_class_thresholds(
    threshold: float | Sequence[float] | str, probs: np.ndarray, labels: np.ndarray, class_names: Sequence[str]
) -> list[float]:
    """Per-class decision thresholds from ``MultiTaskMetrics(threshold=...)``.

    - a number or one number per class: used as given;
    - ``"youden"`` / ``"f1"`` (or ``"choose"`` = ``"youden"``): chosen on ``probs``/``labels`` (the data being
      evaluated, i.e. the validation split) with :func:`monai_mcx.metrics.choose_threshold`;
    - a path to a ``thresholds.json`` (see :class:`monai_mcx.handlers.report.ThresholdsWriter`): its
      ``class_thresholds``; a missing file falls back to 0.5 with a warning.
    """
    from monai_mcx.metrics import choose_threshold

    k = len(class_names)
    if isinstance(threshold, str):
        if threshold in ("youden", "f1", "choose"):
            method = "youden" if threshold == "choose" else threshold
            return [float(choose_threshold(probs[:, c], labels[:, c], method=method)) for c in range(k)]
        path = Path(threshold)
        if not path.is_file():
            import warnings

            warnings.warn(f"{path}: thresholds file not found; using 0.5 for every class.", stacklevel=2)
            return [0.5] * k
        table = json.loads(path.read_text()).get("class_thresholds", {})
        missing = [n for n in class_names if n not in table]
        if missing:
            raise ValueError(f"{path}: no threshold for the classes {missing}.")
        return [float(table[n]) for n in class_names]
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

    def __init__(self, output_dir: str | os.PathLike, filename: str = "metrics.json", extra: dict | None = None) -> None:
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
