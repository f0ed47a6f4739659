"""Per-image prediction files written during inference.

Names. ``<stem>`` is the input's file name without its image suffix (``1.2.840.113619.2.55.3.1234.dcm`` ->
``1.2.840.113619.2.55.3.1234``); unique in the run, never a name already in the folder, UTF-8 and at most 128
bytes: the rule is :func:`monai_mcx.handlers.output_folder.candidate_stems` (and ``docs/inference.md``). The input
path in the JSON and ``predictions.csv`` shows bytes that are not UTF-8 as ``\\xe9`` (``backslashreplace``).

For each readable image:

- ``<stem>.json``: class probabilities (``calibrated``: true when they are the model's temperature-scaled
  ``sigmoid(z / T)``, with ``calibration`` giving the temperatures; false for raw ``sigmoid(z)``), the gate
  decision (rule and per-class thresholds), the boxes at the operating point with scores in the ORIGINAL image's
  pixel coordinates ``[x1, y1, x2, y2]`` (x = column, pixel edges, MONAI ``StandardMode``; ``boxes`` gated,
  ``boxes_ungated`` not), the mask area, and the ``operating_point`` applied: the image's ``population`` and how it
  was decided (``reason``: ``option``, ``dicom_age``, ``datalist``, ``source`` or ``default``;
  :mod:`monai_mcx.data.populations`), its class, gate and box-score thresholds;
- with a ``lungs`` head: ``<stem>_lungs.png`` (0/255) and, with NIfTI, ``<stem>_lungs.nii.gz``: the predicted lung
  field (a lung OUTLINE, not a lesion), ``lung_area_px`` and ``lung_restriction`` (whether lesions were cut to the
  dilated lung field) in the JSON;
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
not be read has a row whose ``error`` column names the file and the problem (and no other output). An image's
outputs are complete or absent: its JSON is written last, and when one of its files cannot be written (full disk,
...) the others are removed and its row's ``error`` names the file and the error; the run goes on.
Every file is written to a temporary name and renamed, so a killed run never leaves a half-written file.

The output folder (:mod:`monai_mcx.handlers.output_folder`): it may not be, contain or lie inside the folder of
an input image; a folder that is not empty is refused unless ``overwrite`` (the previous runs' files are removed
first) or ``resume`` (complete images are kept, not written again) is asked; ``.monai_mcx_run.jsonl``, the run
manifest, records each image's files before they are written and the image once they all are.

Everything comes from the evaluator's post-processing (:class:`monai_mcx.inferers.MultiCheXNetPostprocessor`),
mapped to the original pixels by :func:`monai_mcx.inferers.to_original`; nothing is thresholded, gated or
resized here.

DICOM: ``predictions.csv`` has the instance's UIDs, ``age_years`` and ``pediatric`` (from the input items,
:mod:`monai_mcx.dicom.inputs`); with ``dicom`` (:class:`monai_mcx.dicom.outputs.DicomOutputs`) an image's job also
writes ``<stem>_seg.dcm`` and ``<stem>_sr.dcm`` (before its JSON) and may store them to a PACS.

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
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from ignite.engine import Engine, Events
from monai.utils.enums import CommonKeys

from monai_mcx.dicom.inputs import DICOM_KEY
from monai_mcx.engines.distributed import gather_rows, is_main_process, on_rank0
from monai_mcx.handlers.encoding import jpeg_bytes, nifti_mask_bytes, png_bytes
from monai_mcx.handlers.output_folder import (
    MANIFEST_NAME,
    SUMMARY_NAME,
    OutputNames,
    RunManifest,
    check_outside_inputs,
    display_text,
    prepare_output_folder,
    sort_rows,
)
from monai_mcx.handlers.prediction_table import csv_fields, csv_row, error_row
from monai_mcx.inferers import MultiCheXNetPostprocessor
from monai_mcx.keys import BatchKeys, DatalistKeys, OriginalKeys
from monai_mcx.transforms.guard import ERROR_KEY
from monai_mcx.utils import as_bool, write_bytes_atomic, write_json_atomic
from monai_mcx.visualize.overlays import overlay_image, saliency_png_bytes

__all__ = ["PredictionWriter", "OVERLAY_FORMATS"]

#: the overlay file formats (``PredictionWriter(overlay_format=...)``)
OVERLAY_FORMATS = ("png", "jpg")
#: the JSON record's box lists and the :func:`~monai_mcx.inferers.to_original` keys of their boxes and scores
_BOX_LISTS = ((OriginalKeys.BOXES, OriginalKeys.SCORES), (OriginalKeys.BOXES_UNGATED, OriginalKeys.SCORES_UNGATED))

logger = logging.getLogger(__name__)


def _safe(name: str) -> str:
    """A class name as a file-name part."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(name)).strip("_") or "class"


def _write_encoded(encode: Callable[..., bytes], args: tuple, path: Path) -> None:
    write_bytes_atomic(encode(*args), path)


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
            (masks, saliency maps, overlay, then the JSON). A file that cannot be written (``OSError``: full disk,
            quota, ...) makes its image an error row naming the file, its other files removed; any other writer
            error is raised in the engine at the next batch or at the end of the run. ``predictions.csv`` is
            written once every file is. At most
            ``max_pending`` writes wait at a time (the engine waits for the oldest beyond that), which bounds the
            memory that masks and overlay images held for writing can take.
        inputs: the run's input items (``{"image": path}``, e.g. :func:`monai_mcx.data.inference_items`) or
            paths. When given, an ``output_dir`` that is, contains or lies inside the folder of one of them is
            refused when the run starts, before anything is written
            (:func:`monai_mcx.handlers.output_folder.check_outside_inputs`).
        dicom: a :class:`monai_mcx.dicom.outputs.DicomOutputs` to write each DICOM input's SEG and SR (and store
            them), or None (default).
        overwrite, resume: what to do with an ``output_dir`` that is not empty when the run starts (default:
            refuse it). ``overwrite``: remove the files the previous runs recorded in the folder's run manifest,
            then write this run; ``resume``: keep the images whose outputs are complete (they are not written
            again, their rows are kept in ``predictions.csv``) and write the others
            (:func:`monai_mcx.handlers.output_folder.prepare_output_folder`). A folder with files but no manifest
            is refused either way.

    Whatever the options, a run never replaces a file it did not create: an image whose output names are taken
    by files already in ``output_dir`` gets another stem (module docstring).

    Batch keys used: ``image`` ``(B, 1, W, H)``, and from ``collate_cxr`` ``image_path`` and
    ``original_size`` (``(W, H)`` per item); ``error`` (from :class:`GuardLoadd`) marks unreadable items;
    ``overlay_image`` (optional, ``(rows, cols)`` uint8 per item) is the overlay background.
    """

    #: most writes queued for the background thread before the engine waits (``background``)
    max_pending: int = 64
    #: distributed evaluation (``multi_gpu_evaluate.json``): every rank writes its own images' files (memory stays
    #: one batch per rank), rank 0 writes ``predictions.csv`` from every rank's rows (:meth:`write_summary`)
    rank0_only = False

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
        inputs: Sequence[str | os.PathLike | Mapping] | None = None,
        overwrite: bool = False,
        resume: bool = False,
        dicom: Any | None = None,
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
        self.inputs = None if inputs is None else list(inputs)
        self.dicom = dicom
        self._info = {str(x[DatalistKeys.IMAGE]): x.get(DICOM_KEY) for x in self.inputs or [] if isinstance(x, Mapping)}
        self.overwrite, self.resume = as_bool(overwrite, "overwrite"), as_bool(resume, "resume")
        #: this run's rows of ``predictions.csv`` (one per input, in run order)
        self.rows: list[dict] = []
        self._names = OutputNames(self.output_dir, reserved=[SUMMARY_NAME, MANIFEST_NAME])
        self._manifest: RunManifest | None = None
        self._kept: dict[str, dict] = {}  # resumed: input path -> complete entry of the manifest
        self._stems: dict[str, list[str]] = {}  # input path -> its stem(s) not yet used (start)
        self.background = as_bool(background, "background")
        self._pool: ThreadPoolExecutor | None = None
        self._pending: list[Future] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.start)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.write_batch)
        engine.add_event_handler(Events.COMPLETED, self.write_summary)

    def start(self, engine: Engine | None = None) -> None:
        """A new run: check the output folder (``inputs``, ``overwrite``, ``resume``) before anything is written,
        start its manifest, forget the previous run's rows and names."""
        self.flush()
        if self.inputs is not None:
            check_outside_inputs(self.output_dir, self.inputs)
        # several ranks (distributed evaluation, an archive's inference): rank 0 checks, clears or continues the
        # folder and gives every input its stem(s); every rank appends its own images' records to the one manifest
        self._kept, self._stems = on_rank0(self._prepare_folder)
        if not is_main_process():
            self._manifest = RunManifest(self.output_dir)  # rank 0 prepared it; the other ranks only append
        self.rows.clear()
        self._names.clear()
        self._claim(self._names, self._kept)
        for stem in (s for stems in self._stems.values() for s in stems):
            self._names.claim(self._output_names(stem))

    def _prepare_folder(self) -> tuple[dict[str, dict], dict[str, list[str]]]:
        """:func:`prepare_output_folder` (on rank 0 only, see :meth:`start`); returns the images kept and the stems
        of the others' (:meth:`OutputNames.allocate_inputs`: in input order, whatever rank writes an image)."""
        self._manifest, kept = prepare_output_folder(self.output_dir, self.settings(), self.overwrite, self.resume)
        names = OutputNames(self.output_dir, reserved=[SUMMARY_NAME, MANIFEST_NAME])
        self._claim(names, kept)
        return kept, names.allocate_inputs(self.inputs or [], self._output_names, skip=kept)

    def _claim(self, names: OutputNames, kept: dict[str, dict]) -> None:
        """Reserve in ``names`` the files of the images kept from a resumed run and the names of their stems."""
        for entry in kept.values():
            names.claim([*entry["files"], *self._output_names(entry["stem"])])

    def settings(self) -> dict:
        """What decides the files and values of an image (recorded in the manifest, compared on ``resume``)."""
        pp = self.postprocessor
        return {
            "class_names": self.class_names,
            "files": {
                "mask_png": self.write_mask_png,
                "nifti": self.write_nifti,
                "overlay": self.overlay_format if self.write_overlay else None,
                "saliency": self.saliency is not None,
                **({} if self.dicom is None else {"dicom": self.dicom.settings()}),
            },
            "class_thresholds": [float(t) for t in pp.class_thresholds],
            "mask_threshold": float(pp.seg_threshold),
            "box_score_threshold": float(pp.box_score_threshold),
            "operating_points": pp.operating_points,
            "default_population": pp.default_population,
            "lung_restriction": pp.lung_restriction,
        }

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

    def _output_names(self, stem: str) -> list[str]:
        """Every file name an image of stem ``stem`` may get with this writer's options."""
        names = [f"{stem}.json", f"{stem}_mask.png", f"{stem}_mask.nii.gz", f"{stem}_overlay.{self.overlay_format}"]
        names += [f"{stem}_lungs.png", f"{stem}_lungs.nii.gz"]
        if self.saliency is not None:
            names += [f"{stem}_saliency_{_safe(c)}.png" for c in self.class_names] + [f"{stem}_saliency.nii.gz"]
        return names + ([] if self.dicom is None else self.dicom.names(stem))

    def _stem(self, src: str) -> str:
        """The stem given to ``src`` when the run started, else one none of whose output names this run claimed or
        a file in ``output_dir`` holds."""
        stems = self._stems.get(src)
        return stems.pop(0) if stems else self._names.allocate(src, self._output_names)

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
        if self._manifest is None:  # used without attach(): the run starts at its first batch
            self.start(engine)
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
            if src in self._kept:  # resumed: its outputs are complete, its row is kept
                continue
            info = self._info.get(src)
            if errors[i]:
                self.rows.append(error_row(display_text(src), display_text(str(errors[i])), info))
                continue
            orig = [int(v) for v in sizes[i]] if len(sizes[i]) == 2 else in_size
            stem = self._stem(src)
            res = pp.to_original(pred, i, orig)
            record: dict = {DatalistKeys.IMAGE.value: display_text(src), OriginalKeys.SIZE_WH.value: orig}
            record.update({} if info is None else {"dicom": info})
            point = record["operating_point"] = pp.point_record(res[OriginalKeys.POPULATION])
            steps: list[tuple[str, Callable[[Path], None]]] = []  # (file name, write(path)), in writing order
            if res[OriginalKeys.CLASS_PROBS] is not None:
                record["class_probabilities"] = dict(
                    zip(self.class_names, (float(p) for p in res[OriginalKeys.CLASS_PROBS]))
                )
                record["calibrated"] = pp.calibrated
                if pp.calibrated:
                    record["calibration"] = pp.calibration.to_dict()
                record[OriginalKeys.GATE.value] = {
                    "rule": pp.gate_rule,
                    "thresholds": point["gate_thresholds"],
                    "positive": bool(res[OriginalKeys.GATE]),
                }
            if res[OriginalKeys.HAS_BOXES]:
                record["box_score_threshold"] = point["box_score_threshold"]
                for key, scores in _BOX_LISTS:
                    record[key.value] = [
                        {"box": [round(float(v), 2) for v in b], "score": float(sc)}
                        for b, sc in zip(res[key], res[scores])
                    ]
            mask_wh = res[OriginalKeys.MASK]  # (W, H), gated; a new array per image, never changed after
            if mask_wh is not None:
                if self.write_mask_png:
                    record[OriginalKeys.MASK.value] = f"{stem}_mask.png"
                    steps.append(
                        (
                            record[OriginalKeys.MASK],
                            partial(_write_encoded, png_bytes, ((mask_wh.T * 255).astype(np.uint8),)),
                        )
                    )
                if self.write_nifti:
                    spacing = spacings[i] if spacings else (1.0, 1.0)
                    record["mask_nifti"] = f"{stem}_mask.nii.gz"
                    steps.append((record["mask_nifti"], partial(_write_encoded, nifti_mask_bytes, (mask_wh, spacing))))
                record["mask_area_px"] = int(mask_wh.sum())
            self._lung_files(res[OriginalKeys.LUNG_MASK], record, stem, spacings[i] if spacings else (1.0, 1.0), steps)
            gray = None
            if maps is not None:
                gray = self._background(src, images[i].detach().cpu(), orig, kept[i])
                spacing = spacings[i] if spacings else (1.0, 1.0)
                record["saliency"] = self._saliency_files(maps[i], orig, gray, spacing, stem, steps)
            if self.write_overlay:
                record["overlay"] = f"{stem}_overlay.{self.overlay_format}"
                overlay = (
                    src,
                    images[i].detach().cpu().clone(),
                    orig,
                    kept[i] if gray is None else gray,
                    None if mask_wh is None else mask_wh.T,
                    res[OriginalKeys.BOXES].tolist(),
                    res[OriginalKeys.SCORES].tolist(),
                )
                steps.append((record["overlay"], partial(self._write_overlay, *overlay)))
            if self.dicom is not None:  # <stem>_seg.dcm, <stem>_sr.dcm (monai_mcx.dicom.outputs)
                self.dicom.add(src, info, record, mask_wh, stem, steps, res[OriginalKeys.LUNG_MASK])
            steps.append((f"{stem}.json", partial(write_json_atomic, copy.deepcopy(record))))  # last: complete
            record["json"] = f"{stem}.json"
            row = self._csv_row(record)
            self.rows.append(row)
            self._submit(self._write_image, src, stem, steps, row)

    def _lung_files(self, lung_wh: np.ndarray | None, record: dict, stem: str, spacing, steps: list) -> None:
        """The lung field's files and JSON fields (a lung outline, not a lesion), when the model has a lungs head."""
        if lung_wh is None:
            return
        record["lung_restriction"] = bool(self.postprocessor.lung_restriction)
        record["lung_area_px"] = int(lung_wh.sum())
        if self.write_mask_png:
            record[OriginalKeys.LUNG_MASK.value] = f"{stem}_lungs.png"
            steps.append(
                (
                    record[OriginalKeys.LUNG_MASK],
                    partial(_write_encoded, png_bytes, ((lung_wh.T * 255).astype(np.uint8),)),
                )
            )
        if self.write_nifti:
            record["lung_mask_nifti"] = f"{stem}_lungs.nii.gz"
            steps.append((record["lung_mask_nifti"], partial(_write_encoded, nifti_mask_bytes, (lung_wh, spacing))))

    def _write_image(self, src: str, stem: str, steps: list[tuple[str, Callable[[Path], None]]], row: dict) -> None:
        """Write one image's files in order (its JSON last), between its ``image`` and ``done`` manifest records.

        The image's outputs are complete or absent: when a file cannot be written (``OSError``: a full disk, a
        quota, ...) the files of the image already written are removed and ``row`` becomes an error row naming
        the file and the error; the run goes on."""
        written: list[Path] = []
        path = self._manifest.path
        try:
            self._manifest.start_image(src, stem, [name for name, _ in steps])
            for name, write in steps:
                path = self.output_dir / name
                write(path)
                written.append(path)
            path = self._manifest.path
            if self.dicom is not None:
                self.dicom.store(self.output_dir, row)  # STOW-RS with store_to: row["stored"]
            self._manifest.finish_image(src, row)
        except OSError as e:
            for done in written:
                try:
                    os.unlink(done)
                except OSError:
                    pass
            detail = f"{e.strerror or e}" if e.errno is None else f"[Errno {e.errno}] {e.strerror}"
            error = display_text(f"{src}: outputs not written: {path}: {detail}")
            logger.warning("%s", error)
            image = row[DatalistKeys.IMAGE]
            row.clear()
            row.update({DatalistKeys.IMAGE.value: image, BatchKeys.ERROR.value: error})

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
        write_bytes_atomic(jpeg_bytes(im) if self.overlay_format == "jpg" else png_bytes(im), path)

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

    def _saliency_files(
        self,
        maps: torch.Tensor,
        orig: list[int],
        gray: np.ndarray,
        spacing: Sequence[float],
        stem: str,
        steps: list[tuple[str, Callable[[Path], None]]],
    ) -> dict:
        """Add one image's saliency PNGs and NIfTI to ``steps``; return the JSON entry."""
        from monai_mcx.explain import saliency_nifti_bytes, to_original_geometry

        sal = to_original_geometry(maps, orig).numpy()  # (K, W0, H0)
        names = [self.class_names[c] for c in self.saliency.class_indices]
        entry: dict = {**self.saliency.settings(), "classes": names, "png": {}, "peak_xy": {}}
        for k, name in enumerate(names):
            fname = f"{stem}_saliency_{_safe(name)}.png"
            steps.append((fname, partial(_write_encoded, saliency_png_bytes, (gray, sal[k].T))))
            entry["png"][name] = fname
            peak = float(sal[k].max())
            entry["peak_xy"][name] = (
                [int(v) for v in np.unravel_index(int(sal[k].argmax()), sal[k].shape)] if peak > 0 else None
            )
        fname = f"{stem}_saliency.nii.gz"
        steps.append((fname, partial(_write_encoded, saliency_nifti_bytes, (np.moveaxis(sal, 0, -1), spacing))))
        entry["nifti"] = fname
        entry["nifti_layout"] = "(W, H, K): x first, one slice per class in 'classes' order, float32 in [0, 1]"
        return entry

    def _fields(self) -> list[str]:
        """The columns of ``predictions.csv``."""
        return csv_fields(self.class_names)

    def _csv_row(self, r: dict) -> dict:
        """An image's row of ``predictions.csv`` from its JSON record."""
        return csv_row(r, {} if self.dicom is None else self.dicom.columns(r))

    def write_summary(self, engine: Engine | None = None) -> None:
        """Write ``predictions.csv``: the rows of the images kept from the run this one resumed and this run's, in
        input order (:func:`~monai_mcx.handlers.output_folder.sort_rows`: whatever rank wrote an image)."""
        self.flush()  # every per-image file first: the summary lists them
        if self._manifest is None:
            self.start(engine)
        rows = gather_rows(self.rows, unique="json")  # every rank's rows on rank 0 (None on the others)
        if rows is None:
            return
        rows = sort_rows([e["row"] for e in self._kept.values()] + rows, self.inputs or [])  # in input order
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=self._fields())
        w.writeheader()
        for r in rows:
            w.writerow(error_row(r[DatalistKeys.IMAGE], r[BatchKeys.ERROR], r) if r.get(BatchKeys.ERROR) else r)
        self._manifest.start_summary([SUMMARY_NAME])
        path = self.output_dir / SUMMARY_NAME
        try:
            write_bytes_atomic(buf.getvalue().encode("utf-8", "backslashreplace"), path)
        except OSError as e:
            raise OSError(e.errno, f"{path}: cannot be written ({e.strerror or e})") from e
        n_err = sum(1 for r in rows if r.get(BatchKeys.ERROR))
        if n_err:
            logger.warning(
                "%d of %d inputs have no outputs (unreadable, or their files could not be written); see the 'error' "
                "column of %s",
                n_err,
                len(rows),
                self.output_dir / SUMMARY_NAME,
            )
