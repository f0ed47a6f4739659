"""Per-image prediction files written during inference.

For each readable image (``<stem>`` = file name without its extensions; a repeated stem gets the extension
appended, e.g. ``a_dcm``):

- ``<stem>.json``: class probabilities (``calibrated``: true when they are the model's temperature-scaled
  ``sigmoid(z / T)``, with ``calibration`` giving the temperatures; false for raw ``sigmoid(z)``), the gate
  decision (rule and per-class thresholds), the boxes at the operating point with scores in the ORIGINAL image's
  pixel coordinates ``[x1, y1, x2, y2]`` (x = column, pixel edges, MONAI ``StandardMode``; ``boxes`` gated,
  ``boxes_ungated`` not), the mask area;
- ``<stem>_mask.nii.gz``: the lesion mask at the original size, uint8 0/1, array ``(W, H)`` (MONAI order,
  x first) with the image's pixel spacing in the affine;
- ``<stem>_mask.png``: the same mask as a PNG, 0/255, rows x columns;
- ``<stem>_overlay.png``: the X-ray at its original size in gray, the mask tinted red and the boxes drawn
  (yellow, with their scores; :func:`monai_mcx.visualize.overlay_image`); ``<stem>_overlay.jpg`` with
  ``overlay_format="jpg"`` (JPEG quality 90, lossy: for review only, about 15 x faster to encode than the PNG at
  1024 px);
- with ``saliency`` (``inference.json --saliency true``): ``<stem>_saliency_<class>.png``, the class's Grad-CAM
  heat map blended over the X-ray at its original size, and ``<stem>_saliency.nii.gz``, the ``K`` maps as float32
  in [0, 1], array ``(W, H, K)`` (MONAI order, x first; one slice per class, in ``class_names`` order) with the
  image's pixel spacing in the affine. The maps are computed in the network's geometry
  (:class:`monai_mcx.explain.SaliencyMaps`, method and layer from the model description's ``saliency`` slot) and
  resampled to the original size exactly as the lesion probabilities are before thresholding
  (:func:`monai_mcx.explain.to_original_geometry`). The JSON lists them under ``saliency`` (method, layer, file
  names, and each class's peak ``[x, y]`` in original pixels). Computing them needs one extra forward + backward
  pass per class on the batch (in its own ``enable_grad`` block, eval mode); the predictions are not affected.

At the end of the run ``predictions.csv`` summarises all images, one row per input file; a file that could
not be read has a row whose ``error`` column names the file and the problem (and no other output).
Every file is written to a temporary name and renamed, so a killed run never leaves a half-written file.

Everything comes from the evaluator's post-processing (:class:`monai_mcx.inferers.MultiCheXNetPostprocessor`),
mapped to the original pixels by :func:`monai_mcx.inferers.to_original`; nothing is thresholded, gated or
resized here.

Unreadable files: :class:`monai_mcx.transforms.GuardLoadd` wraps the preprocessing and turns an item that
fails into a placeholder with ``error`` set; :class:`PredictionWriter` skips placeholders and reports them.
"""

from __future__ import annotations

import copy
import csv
import io
import logging
import os
import re
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from ignite.engine import Engine, Events
from monai.utils.enums import CommonKeys
from PIL import Image

from monai_mcx.inferers import MultiCheXNetPostprocessor
from monai_mcx.keys import BatchKeys, DatalistKeys, OriginalKeys
from monai_mcx.transforms.guard import ERROR_KEY
from monai_mcx.utils import as_bool, write_bytes_atomic, write_json_atomic
from monai_mcx.visualize.overlays import overlay_image, saliency_png_bytes

__all__ = ["PredictionWriter", "OVERLAY_FORMATS"]

#: the overlay file formats (``PredictionWriter(overlay_format=...)``)
OVERLAY_FORMATS = ("png", "jpg")

logger = logging.getLogger(__name__)


def _safe(name: str) -> str:
    """A class name as a file-name part."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(name)).strip("_") or "class"


def _png_bytes(image: Image.Image | np.ndarray) -> bytes:
    """PNG bytes of an image (or a ``(rows, cols[, 3])`` uint8 array) at zlib level 1: masks and overlays
    compress almost as well as at the default level 6, several times faster."""
    im = image if isinstance(image, Image.Image) else Image.fromarray(image)
    buf = io.BytesIO()
    im.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _jpeg_bytes(image: Image.Image) -> bytes:
    """JPEG bytes of an RGB image at quality 90 (the optional, lossy overlay format)."""
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _nifti_bytes(mask_wh: np.ndarray, spacing: Sequence[float]) -> bytes:
    import gzip

    import nibabel as nib

    affine = np.diag([float(spacing[0]), float(spacing[1]), 1.0, 1.0])
    img = nib.Nifti1Image(mask_wh.astype(np.uint8), affine)
    img.header.set_data_dtype(np.uint8)
    return gzip.compress(img.to_bytes(), compresslevel=6)


def _write_png(rows_cols: np.ndarray, path: Path) -> None:
    write_bytes_atomic(_png_bytes(rows_cols), path)


def _write_nifti(mask_wh: np.ndarray, spacing: Sequence[float], path: Path) -> None:
    write_bytes_atomic(_nifti_bytes(mask_wh, spacing), path)


class PredictionWriter:
    """Write per-image predictions of a :class:`~monai_mcx.engines.MultiTaskEvaluator` run (module docstring).

    Args:
        output_dir: folder for the files.
        class_names: names of the classifier's outputs.
        postprocessor: the evaluator's post-processor (its mask threshold maps the mask back; its thresholds are
            recorded in the JSON). Default: ``MultiCheXNetPostprocessor(class_names)``.
        write_nifti, write_overlay, write_mask_png: which mask files to write.
        overlay_format: ``"png"`` (default, lossless) or ``"jpg"`` (JPEG quality 90, lossy; encoding a 1024 px
            PNG overlay takes about 50 ms of CPU, the JPEG about 4 ms).
        overlay_reader: ``path -> (rows, cols)`` array in [0, 1] for the overlay background when the batch
            carries no copy of the loaded image (``overlay_image``, from
            :class:`monai_mcx.transforms.KeepOverlayImaged`, as ``inference.json`` does when overlays or saliency
            maps are written); default: re-read the file with :func:`monai_mcx.transforms.io.read_cxr`. When that
            fails, the network input is resized to the original size instead.
        saliency: a :class:`monai_mcx.explain.SaliencyMaps` of the evaluator's network to write the saliency
            files (module docstring), or None (default: none written).
        background: encode and write the files in one background thread, off the evaluator's critical path
            (default True); every file is still written atomically, in the order the synchronous writer uses
            (mask, NIfTI, overlay, then the JSON), and a writer error is raised in the engine at the next
            batch or at the end of the run. ``predictions.csv`` is written once every file is. At most
            ``max_pending`` writes wait at a time (the engine waits for the oldest beyond that), which bounds the
            memory that masks and overlay images held for writing can take.

    Batch keys used: ``image`` ``(B, 1, W, H)``, and from ``collate_cxr`` ``image_path`` and
    ``original_size`` (``(W, H)`` per item); ``error`` (from :class:`GuardLoadd`) marks unreadable items;
    ``overlay_image`` (optional, ``(rows, cols)`` uint8 per item) is the overlay background.
    """

    #: most writes queued for the background thread before the engine waits (``background``)
    max_pending: int = 64

    def __init__(
        self,
        output_dir: str | os.PathLike,
        class_names: Sequence[str],
        postprocessor: MultiCheXNetPostprocessor | None = None,
        write_nifti: bool = True,
        write_overlay: bool = True,
        write_mask_png: bool = True,
        overlay_format: str = "png",
        overlay_reader: Callable[[str], np.ndarray] | None = None,
        saliency: Any | None = None,
        background: bool = True,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.class_names = list(class_names)
        self.postprocessor = postprocessor if postprocessor is not None else MultiCheXNetPostprocessor(self.class_names)
        self.write_nifti = as_bool(write_nifti, "write_nifti")
        self.write_overlay = as_bool(write_overlay, "write_overlay")
        self.write_mask_png = bool(write_mask_png)
        fmt = str(overlay_format).lower().lstrip(".")
        self.overlay_format = {"jpeg": "jpg"}.get(fmt, fmt)
        if self.overlay_format not in OVERLAY_FORMATS:
            raise ValueError(
                f"PredictionWriter: overlay_format must be one of {OVERLAY_FORMATS}, got {overlay_format!r}."
            )
        self.overlay_reader = overlay_reader
        self.saliency = saliency
        self.rows: list[dict] = []
        self._stems: set[str] = set()
        self.background = as_bool(background, "background")
        self._pool: ThreadPoolExecutor | None = None
        self._pending: list[Future] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.write_batch)
        engine.add_event_handler(Events.COMPLETED, self.write_summary)

    def _reset(self, engine: Engine | None = None) -> None:
        self.flush()
        self.rows.clear()
        self._stems.clear()

    # -- background writing ---------------------------------------------------------------------------------
    def _submit(self, fn: Callable[..., None], *args: Any) -> None:
        """Run ``fn(*args)`` now, or in the writer thread (``background``); raise an earlier write's error."""
        if not self.background:
            fn(*args)
            return
        self._collect(wait=False)
        while len(self._pending) >= self.max_pending:  # back-pressure: a slow disk must not pile up images
            self._pending.pop(0).result()
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mcx-prediction-writer")
        self._pending.append(self._pool.submit(fn, *args))

    def _collect(self, wait: bool) -> None:
        """Drop the finished writes (all of them when ``wait``), re-raising the first error among them (the
        other finished writes are dropped with it: one error stops the run)."""
        finished = [f for f in self._pending if wait or f.done()]
        self._pending = [f for f in self._pending if f not in finished]
        for fut in finished:
            fut.result()

    def flush(self, engine: Engine | None = None) -> None:
        """Wait until every submitted file is written (raises the first writer error)."""
        self._collect(wait=True)

    def _stem(self, src: str) -> str:
        name = Path(src).name
        parts = name.split(".")
        stem = parts[0] or name
        if stem in self._stems:
            stem = "_".join(p for p in parts if p) or f"image_{len(self._stems):05d}"
            base, k = stem, 1
            while stem in self._stems:
                stem, k = f"{base}_{k}", k + 1
        self._stems.add(stem)
        return stem

    def _background(
        self, src: str, fallback: torch.Tensor, orig: list[int], kept: np.ndarray | None = None
    ) -> np.ndarray:
        """The overlay background ``(rows, cols)``: the batch's copy of the loaded image (uint8) when it has the
        original size, else the file read again, else the network input resized."""
        if kept is not None and tuple(kept.shape) == (orig[1], orig[0]):
            return kept
        try:
            if self.overlay_reader is not None:
                gray = np.asarray(self.overlay_reader(src), dtype=np.float32)
            else:
                from monai_mcx.transforms.io import read_cxr

                gray, _ = read_cxr(src)
            if tuple(gray.shape) == (orig[1], orig[0]):
                return gray
        except Exception as e:  # noqa: BLE001 - the overlay is best effort; predictions are already written
            logger.debug("overlay background for %s re-read failed (%s); using the network input", src, e)
        img = F.interpolate(fallback[None].float(), size=orig, mode="bilinear", align_corners=False)[0, 0]
        return img.numpy().T

    def write_batch(self, engine: Engine) -> None:
        pred = engine.state.output[CommonKeys.PRED]
        batch = engine.state.batch
        images = batch[BatchKeys.IMAGE]
        n = int(images.shape[0])
        in_size = [int(s) for s in images.shape[2:]]
        names = batch.get(BatchKeys.IMAGE_PATH) or [f"image_{len(self.rows) + i:05d}" for i in range(n)]
        sizes = batch.get(BatchKeys.ORIGINAL_SIZE) or [in_size] * n
        errors = batch.get(ERROR_KEY) or [""] * n
        spacings = None
        meta = getattr(images, "meta", None)
        if isinstance(meta, Mapping) and "pixel_spacing" in meta:
            spacings = torch.as_tensor(np.asarray(meta["pixel_spacing"])).reshape(n, -1).tolist()
        pp = self.postprocessor
        net_input = engine.state.output.get(CommonKeys.IMAGE) if isinstance(engine.state.output, Mapping) else None
        net_input = net_input if net_input is not None and tuple(net_input.shape) == tuple(images.shape) else images
        maps = self._saliency_maps(net_input, [not e for e in errors])  # on the evaluator's own input batch
        kept = batch.get(BatchKeys.OVERLAY_IMAGE) or [None] * n
        for i in range(n):
            src = str(names[i])
            if errors[i]:
                self.rows.append({DatalistKeys.IMAGE.value: src, BatchKeys.ERROR.value: str(errors[i])})
                continue
            orig = [int(v) for v in sizes[i]] if len(sizes[i]) == 2 else in_size
            stem = self._stem(src)
            res = pp.to_original(pred, i, orig)
            record: dict = {DatalistKeys.IMAGE.value: src, OriginalKeys.SIZE_WH.value: orig}
            if res[OriginalKeys.CLASS_PROBS] is not None:
                record["class_probabilities"] = dict(
                    zip(self.class_names, (float(p) for p in res[OriginalKeys.CLASS_PROBS]))
                )
                record["calibrated"] = pp.calibrated
                if pp.calibrated:
                    record["calibration"] = pp.calibration.to_dict()
                record[OriginalKeys.GATE.value] = {
                    "rule": pp.gate_rule,
                    "thresholds": dict(zip(self.class_names, pp.class_thresholds)),
                    "positive": bool(res[OriginalKeys.GATE]),
                }
            if res[OriginalKeys.HAS_BOXES]:
                record["box_score_threshold"] = pp.box_score_threshold
                for key, scores in (
                    (OriginalKeys.BOXES, OriginalKeys.SCORES),
                    (OriginalKeys.BOXES_UNGATED, OriginalKeys.SCORES_UNGATED),
                ):
                    record[key.value] = [
                        {"box": [round(float(v), 2) for v in b], "score": float(sc)}
                        for b, sc in zip(res[key], res[scores])
                    ]
            # (W, H), gated; a new array per image, never changed after: the writer thread reads it
            mask_wh = res[OriginalKeys.MASK]
            if mask_wh is not None:
                if self.write_mask_png:
                    rows_cols = (mask_wh.T * 255).astype(np.uint8)
                    self._submit(_write_png, rows_cols, self.output_dir / f"{stem}_mask.png")
                    record[OriginalKeys.MASK.value] = f"{stem}_mask.png"
                if self.write_nifti:
                    spacing = spacings[i] if spacings else (1.0, 1.0)
                    self._submit(_write_nifti, mask_wh, spacing, self.output_dir / f"{stem}_mask.nii.gz")
                    record["mask_nifti"] = f"{stem}_mask.nii.gz"
                record["mask_area_px"] = int(mask_wh.sum())
            gray = None
            if maps is not None:
                gray = self._background(src, images[i].detach().cpu(), orig, kept[i])
                spacing = spacings[i] if spacings else (1.0, 1.0)
                record["saliency"] = self._write_saliency(maps[i], orig, gray, spacing, stem)
            if self.write_overlay:
                self._submit(
                    self._write_overlay,
                    src,
                    images[i].detach().cpu().clone(),
                    orig,
                    kept[i] if gray is None else gray,
                    None if mask_wh is None else mask_wh.T,
                    res[OriginalKeys.BOXES].tolist(),
                    res[OriginalKeys.SCORES].tolist(),
                    self.output_dir / f"{stem}_overlay.{self.overlay_format}",
                )
                record["overlay"] = f"{stem}_overlay.{self.overlay_format}"
            self._submit(write_json_atomic, copy.deepcopy(record), self.output_dir / f"{stem}.json")
            record["json"] = f"{stem}.json"
            self.rows.append(record)

    def _write_overlay(
        self,
        src: str,
        fallback: torch.Tensor,
        orig: list[int],
        gray: np.ndarray | None,
        mask_rows_cols: np.ndarray | None,
        boxes: list,
        scores: list,
        path: Path,
    ) -> None:
        """Draw the mask and boxes over the background (``gray``, or the image read again when None), write the
        overlay (``overlay_format``) atomically."""
        gray = self._background(src, fallback, orig, gray)
        im = overlay_image(gray, mask_rows_cols, boxes, scores)
        write_bytes_atomic(_jpeg_bytes(im) if self.overlay_format == "jpg" else _png_bytes(im), path)

    # -- saliency -------------------------------------------------------------------------------------------
    def _saliency_maps(self, images: torch.Tensor, readable: Sequence[bool]) -> torch.Tensor | None:
        """``(B, K, W, H)`` maps in the network's geometry for the batch (zeros for unreadable placeholders), or
        None without ``saliency``. Runs on the network's device."""
        if self.saliency is None or not any(readable):
            return None
        keep = [i for i, ok in enumerate(readable) if ok]
        device = next(self.saliency.wrapper.parameters()).device
        x = images[keep]
        x = (x.as_tensor() if hasattr(x, "as_tensor") else torch.as_tensor(x)).to(device)
        m = self.saliency(x).detach().float().cpu()
        out = torch.zeros((images.shape[0], *m.shape[1:]), dtype=torch.float32)
        out[keep] = m
        return out

    def _write_saliency(
        self, maps: torch.Tensor, orig: list[int], gray: np.ndarray, spacing: Sequence[float], stem: str
    ) -> dict:
        """Write one image's saliency PNGs and NIfTI; return the JSON entry."""
        from monai_mcx.explain import saliency_nifti_bytes, to_original_geometry

        sal = to_original_geometry(maps, orig).numpy()  # (K, W0, H0)
        names = [self.class_names[c] for c in self.saliency.class_indices]
        entry: dict = {**self.saliency.settings(), "classes": names, "png": {}, "peak_xy": {}}
        for k, name in enumerate(names):
            fname = f"{stem}_saliency_{_safe(name)}.png"
            write_bytes_atomic(saliency_png_bytes(gray, sal[k].T), self.output_dir / fname)
            entry["png"][name] = fname
            peak = float(sal[k].max())
            entry["peak_xy"][name] = (
                [int(v) for v in np.unravel_index(int(sal[k].argmax()), sal[k].shape)] if peak > 0 else None
            )
        fname = f"{stem}_saliency.nii.gz"
        write_bytes_atomic(saliency_nifti_bytes(np.moveaxis(sal, 0, -1), spacing), self.output_dir / fname)
        entry["nifti"] = fname
        entry["nifti_layout"] = "(W, H, K): x first, one slice per class in 'classes' order, float32 in [0, 1]"
        return entry

    def write_summary(self, engine: Engine) -> None:
        self.flush()  # every per-image file first: the summary lists them
        buf = io.StringIO()
        fields = [
            DatalistKeys.IMAGE.value,
            "gate_positive",
            *[f"p_{c}" for c in self.class_names],
            "calibrated",
            "n_boxes",
            "max_box_score",
            "mask_area_px",
            "json",
            "mask_nifti",
            "overlay",
            "saliency_nifti",
            BatchKeys.ERROR.value,
        ]
        w = csv.DictWriter(buf, fieldnames=fields)
        w.writeheader()
        for r in self.rows:
            if r.get(BatchKeys.ERROR):
                w.writerow({DatalistKeys.IMAGE.value: r[DatalistKeys.IMAGE], BatchKeys.ERROR.value: r[BatchKeys.ERROR]})
                continue
            row = {
                DatalistKeys.IMAGE.value: r[DatalistKeys.IMAGE],
                "gate_positive": r.get(OriginalKeys.GATE, {}).get("positive", ""),
                "calibrated": r.get("calibrated", ""),
                "n_boxes": len(r.get(OriginalKeys.BOXES, [])),
                "max_box_score": max([b["score"] for b in r.get(OriginalKeys.BOXES, [])], default=""),
                "mask_area_px": r.get("mask_area_px", ""),
                "json": r.get("json", ""),
                "mask_nifti": r.get("mask_nifti", ""),
                "overlay": r.get("overlay", ""),
                "saliency_nifti": r.get("saliency", {}).get("nifti", ""),
                BatchKeys.ERROR.value: "",
            }
            for c, p in r.get("class_probabilities", {}).items():
                row[f"p_{c}"] = round(p, 6)
            w.writerow(row)
        write_bytes_atomic(buf.getvalue().encode(), self.output_dir / "predictions.csv")
        n_err = sum(1 for r in self.rows if r.get(BatchKeys.ERROR))
        if n_err:
            logger.warning(
                "%d of %d inputs could not be read; see the 'error' column of %s",
                n_err,
                len(self.rows),
                self.output_dir / "predictions.csv",
            )
