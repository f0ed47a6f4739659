"""Ignite handlers that write model descriptions: after each saved checkpoint, and after an evaluation.

Flow in the bundle:

* ``train.json`` builds ``model_description`` from its own settings; :class:`DescriptionWriter` writes
  ``<ckpt_dir>/model.json`` every time ``CheckpointSaver`` writes a new best ``model.pt`` (and ``last.json`` for
  ``last.pt``), with the hash of the weights just saved. Thresholds start at 0.5 (``method: "default"``).
* ``evaluate.json`` (on top of ``train.json``) loads the description (:func:`monai_mcx.model.load_description`, hash
  verified), builds the network from it, and on the validation split :class:`OperatingPointWriter` writes the chosen
  per-class thresholds (and the box operating point, when the evaluation reports one) INTO ``model.json``, with the
  per-class temperatures fitted before them (``calibration``) and the thresholds at fixed sensitivity targets.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from ignite.engine import Events

from monai_mcx.engines.checkpoint import _rank
from monai_mcx.keys import Task
from monai_mcx.model import (
    DescriptionError,
    ModelDescription,
    checkpoint_sha256,
    description_path,
    load_description,
    read_description,
    save_description,
)
from monai_mcx.model.values import utc_now

__all__ = ["DescriptionWriter", "OperatingPointWriter"]

logger = logging.getLogger(__name__)


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
        for ev in self.events:
            engine.add_event_handler(getattr(Events, ev), self)

    def __call__(self, engine=None) -> Path | None:
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
            desc.training = {**desc.training, "saved_at_epoch": trainer_epoch, "saved_date": utc_now()}
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
            if len(parts) == 4 and parts[0] == Task.CLASSIFICATION and parts[2] == "threshold" and parts[3] in temps:
                if v is not None and math.isfinite(float(v)):
                    ops.setdefault(parts[1], {})[parts[3]] = float(v)
        return desc.replace(sensitivity_thresholds=ops or None)

    def __call__(self, engine) -> ModelDescription | None:
        if not self.enabled:
            return None
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
