"""Prediction files of an evaluation, written at the operating point THAT evaluation chose.

On the validation split ``evaluate.json`` chooses the calibration, the class thresholds and the box operating point
at the end of the epoch (:class:`~monai_mcx.handlers.MultiTaskMetrics`) and writes them into ``model.json``; a
:class:`~monai_mcx.handlers.PredictionWriter` attached to the evaluator would have written each batch before,
at the description's old operating point. :class:`EvaluationPredictionWriter` keeps what the writer needs of
each batch on disk during the epoch and hands it to the writer when the epoch completes, after the metrics have
chosen the operating point: the files then hold the probabilities, gate, masks and boxes of ``model.json`` as it
is after the run.

Memory stays one batch: each batch (the network input, the raw outputs ``class_logits``, ``seg_probs``,
``detections``, and the batch keys the writer reads) is saved with ``torch.save`` into a temporary folder
(``spool_dir``, default the system's), read back with ``torch.load(weights_only=True)`` and deleted after the
files are written. In a distributed evaluation every rank keeps and writes its own images (the metrics, and so the
operating point, are the same on every rank) and the writer's summary gathers the rows
(:meth:`PredictionWriter.write_summary`).
"""

from __future__ import annotations

import os
import tempfile
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.data import MetaTensor
from monai.utils.enums import CommonKeys

from monai_mcx.handlers.metrics import deployed_from_metrics
from monai_mcx.handlers.predictions import PredictionWriter
from monai_mcx.keys import BatchKeys, PredKeys
from monai_mcx.networks.weights import load_weights_file
from monai_mcx.transforms.guard import ERROR_KEY

__all__ = ["EvaluationPredictionWriter"]

#: the outputs the operating point is recomputed from (:meth:`MultiCheXNetPostprocessor.apply_operating_point`)
RAW_PRED_KEYS = (PredKeys.CLASS_LOGITS, PredKeys.SEG_PROBS, PredKeys.DETECTIONS, PredKeys.INPUT_SIZE)
#: the batch keys :meth:`PredictionWriter.write_batch` reads (and the image's ``pixel_spacing`` meta data)
BATCH_KEYS = (BatchKeys.IMAGE, BatchKeys.IMAGE_PATH, BatchKeys.ORIGINAL_SIZE, ERROR_KEY, BatchKeys.OVERLAY_IMAGE)

_ARRAY, _META = "__ndarray__", "__metatensor__"


def _key(k: Any) -> str:
    return str(getattr(k, "value", k))


def _encode(value: Any, where: str) -> Any:
    """``value`` in the types ``torch.load(weights_only=True)`` reads back: tensors on the CPU, numpy arrays as
    tensors (marked), plain Python containers and scalars; a MetaTensor keeps its ``pixel_spacing``."""
    if isinstance(value, MetaTensor):
        meta = {"pixel_spacing": _encode(value.meta["pixel_spacing"], where)} if "pixel_spacing" in value.meta else {}
        return {_META: value.as_tensor().detach().cpu(), "meta": meta}
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, np.ndarray):
        return {_ARRAY: torch.from_numpy(np.ascontiguousarray(value))}
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, (list, tuple)):
        return type(value)(_encode(v, where) for v in value)
    if isinstance(value, Mapping):
        return {_key(k): _encode(v, where) for k, v in value.items()}
    raise TypeError(f"EvaluationPredictionWriter cannot keep {where} ({type(value).__name__}) until the epoch ends.")


def _decode(value: Any) -> Any:
    if isinstance(value, dict):
        if _ARRAY in value:
            return value[_ARRAY].numpy()
        if _META in value:
            return MetaTensor(value[_META], meta={k: _decode(v) for k, v in value["meta"].items()})
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_decode(v) for v in value)
    return value


class EvaluationPredictionWriter:
    """Run ``writer`` (a :class:`~monai_mcx.handlers.PredictionWriter`) when the evaluator's epoch completes, with the
    post-processing at the operating point the evaluation's metrics chose (:func:`deployed_from_metrics`: the same
    values :class:`monai_mcx.handlers.OperatingPointWriter` writes into ``model.json``).

    Attach it to the evaluator INSTEAD of the writer, after the key metric (which the evaluator attaches first).

    Args:
        writer: the prediction writer; its ``postprocessor`` is the evaluation's starting one (the description's)
            and is replaced by the deployed one before writing.
        spool_dir: where the batches wait for the end of the epoch (a temporary folder is made in it and removed
            after writing); None: the system's temporary folder.
    """

    #: every rank keeps and writes its own images (the writer's summary gathers the rows)
    rank0_only = False

    def __init__(self, writer: PredictionWriter, spool_dir: str | os.PathLike | None = None) -> None:
        self.writer = writer
        self.spool_dir = spool_dir
        self._tmp: tempfile.TemporaryDirectory | None = None
        self._files: list[Path] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self.start)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.keep)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.write)

    def start(self, engine: Engine | None = None) -> None:
        self.close()
        if self.spool_dir is not None:
            Path(self.spool_dir).mkdir(parents=True, exist_ok=True)
        self._tmp = tempfile.TemporaryDirectory(prefix="mcx-evaluation-predictions-", dir=self.spool_dir)
        self._files = []

    def close(self) -> None:
        """Remove the kept batches."""
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
        self._files = []

    def keep(self, engine: Engine) -> None:
        """Save what the writer needs of this batch (raw outputs, the batch keys it reads)."""
        if self._tmp is None:
            self.start()
        output = engine.state.output
        pred = output[CommonKeys.PRED]
        record = {
            "pred": {_key(k): _encode(pred[k], f"pred[{_key(k)!r}]") for k in RAW_PRED_KEYS if k in pred},
            "batch": {_key(k): _encode(engine.state.batch[k], _key(k)) for k in BATCH_KEYS if k in engine.state.batch},
        }
        if (
            self.writer.saliency is not None
            and isinstance(output, Mapping)
            and output.get(CommonKeys.IMAGE) is not None
        ):
            record[BatchKeys.IMAGE.value] = _encode(output[CommonKeys.IMAGE], "the network input")
        path = Path(self._tmp.name) / f"{len(self._files):08d}.pt"
        torch.save(record, path)
        self._files.append(path)

    def write(self, engine: Engine) -> None:
        """Write every kept batch's files and the summary at the operating point of ``engine.state.metrics``."""
        deployed = deployed_from_metrics(self.writer.postprocessor, engine.state.metrics)
        self.writer.postprocessor = deployed
        try:
            self.writer.start(engine)
            for path in self._files:
                record = _decode(load_weights_file(path))
                batch = record["batch"]
                n = int(batch[BatchKeys.IMAGE.value].shape[0])
                pred = deployed.apply_operating_point(record["pred"], batch_size=n, device="cpu")
                output = {CommonKeys.PRED: pred, CommonKeys.IMAGE: record.get(BatchKeys.IMAGE)}
                self.writer.write_batch(types.SimpleNamespace(state=types.SimpleNamespace(output=output, batch=batch)))
                path.unlink()
            self.writer.write_summary(engine)
        finally:
            self.close()
