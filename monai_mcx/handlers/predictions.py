"""Per-image prediction files written during inference.

For each image: ``<stem>.json`` (class probabilities, the gate decision, boxes with scores in the ORIGINAL
image's pixel coordinates ``[x1, y1, x2, y2]`` with x = column) and ``<stem>_mask.png`` (the lesion mask at
the original size, 0/255, rows × columns). At the end of the run ``predictions.csv`` summarises all images.
Every file is written to a temporary name and renamed, so a killed run never leaves a half-written file.
"""

from __future__ import annotations

import csv
import io
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from ignite.engine import Engine, Events
from PIL import Image

from monai_mcx.handlers.metrics import write_json_atomic

__all__ = ["PredictionWriter", "write_bytes_atomic"]


def write_bytes_atomic(data: bytes, path: str | os.PathLike) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class PredictionWriter:
    """Write per-image predictions of a :class:`~monai_mcx.engines.MultiTaskEvaluator` run.

    Args:
        output_dir: folder for the files.
        class_names: names of the classifier's outputs.
        gate_threshold: an image whose highest class probability is below it is called negative: its mask
            is written empty and its boxes are dropped (``gate.positive = false``); the ungated boxes are kept
            under ``boxes_ungated``.
        seg_threshold: probability threshold for the mask.
    """

    def __init__(self, output_dir: str | os.PathLike, class_names: Sequence[str], gate_threshold: float = 0.5, seg_threshold: float = 0.5) -> None:
        self.output_dir = Path(output_dir)
        self.class_names = list(class_names)
        self.gate_threshold = float(gate_threshold)
        self.seg_threshold = float(seg_threshold)
        self.rows: list[dict] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, lambda e: self.rows.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.write_batch)
        engine.add_event_handler(Events.COMPLETED, self.write_summary)

    def write_batch(self, engine: Engine) -> None:
        pred = engine.state.output["pred"]
        batch = engine.state.batch
        n = int(batch["image"].shape[0])
        in_size = [int(s) for s in batch["image"].shape[2:]]
        names = batch.get("image_path") or [f"image_{len(self.rows) + i:05d}" for i in range(n)]
        sizes = batch.get("original_size") or [in_size] * n
        for i in range(n):
            src = names[i]
            orig = list(sizes[i]) if len(sizes[i]) == 2 else in_size
            scale = [o / s for o, s in zip(orig, in_size)]
            record: dict = {"image": src, "size_wh": orig}
            positive = True
            if "class_probs" in pred:
                probs = pred["class_probs"][i].detach().float().cpu().tolist()
                record["class_probabilities"] = dict(zip(self.class_names, probs))
                positive = max(probs) >= self.gate_threshold
                record["gate"] = {"threshold": self.gate_threshold, "positive": bool(positive)}
            stem = Path(src).name.split(".")[0]
            if "detections" in pred:
                det = pred["detections"][i]
                boxes = det["boxes"].detach().float().cpu().numpy().reshape(-1, 4) * np.array(scale * 2)
                scores = det["scores"].detach().float().cpu().numpy().reshape(-1)
                found = [{"box": [round(float(v), 2) for v in b], "score": float(s)} for b, s in zip(boxes, scores)]
                record["boxes_ungated"] = found
                record["boxes"] = found if positive else []
            if "seg_probs" in pred:
                prob = pred["seg_probs"][i : i + 1].detach().float().cpu()
                prob = F.interpolate(prob, size=orig, mode="bilinear", align_corners=False)[0, 0]
                mask = (prob >= self.seg_threshold).numpy() & bool(positive)
                buf = io.BytesIO()
                Image.fromarray((mask.T * 255).astype(np.uint8)).save(buf, format="PNG")  # (W, H) -> rows x cols
                write_bytes_atomic(buf.getvalue(), self.output_dir / f"{stem}_mask.png")
                record["mask"] = f"{stem}_mask.png"
                record["mask_area_px"] = int(mask.sum())
            write_json_atomic(record, self.output_dir / f"{stem}.json")
            self.rows.append(record)

    def write_summary(self, engine: Engine) -> None:
        buf = io.StringIO()
        fields = ["image", "gate_positive", *[f"p_{c}" for c in self.class_names], "n_boxes", "max_box_score", "mask_area_px"]
        w = csv.DictWriter(buf, fieldnames=fields)
        w.writeheader()
        for r in self.rows:
            row = {"image": r["image"], "gate_positive": r.get("gate", {}).get("positive", ""), "n_boxes": len(r.get("boxes", [])),
                   "max_box_score": max([b["score"] for b in r.get("boxes", [])], default=""), "mask_area_px": r.get("mask_area_px", "")}
            for c, p in r.get("class_probabilities", {}).items():
                row[f"p_{c}"] = round(p, 6)
            w.writerow(row)
        write_bytes_atomic(buf.getvalue().encode(), self.output_dir / "predictions.csv")
