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
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Engine, Events
from ignite.metrics import Metric

from monai_mcx.metrics import classification_metrics, detection_metrics, segmentation_metrics

__all__ = ["MultiTaskMetrics", "MetricsJSONWriter", "write_json_atomic", "SCORE_KEYS"]

#: metrics averaged into the single key metric used for best-checkpoint selection
SCORE_KEYS = ("classification/auc", "segmentation/dice_positive", "localization/ap50")


def write_json_atomic(obj: object, path: str | os.PathLike) -> None:
    """Write JSON to ``path`` through a temporary file in the same folder and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _from_engine_output(output: dict) -> tuple[dict, dict]:
    return output["pred"], output["label"]


class MultiTaskMetrics(Metric):
    """Accumulate the evaluator's outputs over an epoch and compute every task's metrics.

    ``update((pred, targets))`` takes the :class:`~monai_mcx.engines.MultiTaskEvaluator` output: ``pred``
    with ``class_probs`` ``(B, K)``, ``seg_probs`` ``(B, 1, W, H)``, ``detections`` (list of dicts) and
    the targets dict with availability flags. Samples without a task's annotation are left out of that
    task's metrics (unknown is not negative).

    ``compute()`` returns the flat dict of metrics plus ``score``: the mean of the available
    :data:`SCORE_KEYS`. Attached to an engine, each key is stored in ``engine.state.metrics`` and the
    metric's own name holds ``score`` (a scalar, so it can be a MONAI key metric).
    """

    def __init__(
        self,
        class_names: Sequence[str],
        gate_threshold: float = 0.5,
        seg_threshold: float = 0.5,
        output_transform: Callable = _from_engine_output,
        device: str | torch.device = "cpu",
    ) -> None:
        self.class_names = list(class_names)
        self.gate_threshold = float(gate_threshold)
        self.seg_threshold = float(seg_threshold)
        super().__init__(output_transform=output_transform, device=device)

    def reset(self) -> None:
        self._cls_probs: list[np.ndarray] = []
        self._cls_labels: list[np.ndarray] = []
        self._seg_pred: list[np.ndarray] = []
        self._seg_true: list[np.ndarray] = []
        self._seg_gate: list[bool] = []
        self._det_pred: list[dict] = []
        self._det_true: list[np.ndarray] = []
        self._det_gate: list[bool] = []

    def update(self, output: tuple[dict, dict]) -> None:
        pred, targets = output
        gate = None
        if "class_probs" in pred:
            probs = pred["class_probs"].detach().float().cpu()
            gate = (probs.max(dim=1).values >= self.gate_threshold).numpy()
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

    def compute(self) -> dict[str, float]:
        out: dict[str, float] = {}
        if self._cls_probs:
            out.update(
                classification_metrics(np.concatenate(self._cls_probs), np.concatenate(self._cls_labels), self.class_names)
            )
        gated_available = bool(self._cls_probs) or any(not g for g in self._seg_gate + self._det_gate)
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
