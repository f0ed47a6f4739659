"""DICOM outputs of inference: a SEG and an SR per predicted DICOM instance, optionally stored to a PACS.

:class:`DicomOutputs` is the hook of :class:`monai_mcx.handlers.PredictionWriter` (``inference.json --write_dicom
true``, ``--store_to <DICOMweb address>``). For each readable DICOM input it adds two files to the image's atomic
job (written after its masks, before its JSON, recorded in the run manifest like the others):

* ``<stem>_seg.dcm``: DICOM SEG (:func:`monai_mcx.dicom.make_seg`), the gated lesion mask at the source's pixel grid
  (the writer's ``(W, H)`` mask transposed to ``(rows, columns)``), the same pixels as ``<stem>_mask.png``;
* ``<stem>_sr.dcm``: TID 1500 SR (:func:`monai_mcx.dicom.make_sr`): the calibrated probability of the first class
  (or ``finding_class``), the gate decision, the gated boxes with their scores in the source's pixels (the JSON's
  ``boxes``), and the algorithm's name, version and ``weights_sha256`` (from the model description).

The image's JSON lists them under ``dicom_outputs`` (file names, SOP instance UIDs, notes). An input that is not
DICOM gets a note instead (no source header to reference), and so does an image without a mask (no SEG) or
without class probabilities (no SR). With ``store_to`` the image's SEG and SR are sent (STOW-RS) once its files are
written; its ``predictions.csv`` row's ``stored`` column says ``stored`` or ``not stored: <error>`` (the run goes
on).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path

import numpy as np

from monai_mcx import __version__
from monai_mcx.dicom.io import ALGORITHM_NAME, read_header, save_dataset
from monai_mcx.keys import OriginalKeys
from monai_mcx.utils import as_bool

__all__ = ["DicomOutputs", "NOT_DICOM", "OUTPUT_COLUMNS"]

#: the note of a non-DICOM input
NOT_DICOM = "not a DICOM input: no source header for a SEG or SR to reference"
#: ``predictions.csv`` columns this hook fills
OUTPUT_COLUMNS = ("dicom_seg", "dicom_sr", "stored")


class DicomOutputs:
    """Write a SEG and an SR for each DICOM input, optionally store them over DICOMweb (module docstring).

    Args:
        description: the model description (:class:`monai_mcx.model.ModelDescription`): its ``weights_sha256`` goes
            into the SR; None: no hash.
        store_to: a DICOMweb address (:func:`monai_mcx.dicom.parse_dicomweb_url`; its query is ignored) to STOW
            each image's SEG and SR to; None: not stored.
        finding_class: the class whose probability the SR reports (default: the first class).
        algorithm_name, algorithm_version: the algorithm identification in the SEG and SR.
    """

    def __init__(
        self,
        description=None,
        store_to: str | None = None,
        finding_class: str | None = None,
        algorithm_name: str = ALGORITHM_NAME,
        algorithm_version: str = __version__,
    ) -> None:
        self.weights_sha256 = getattr(description, "weights_sha256", None)
        self.store_to = store_to or None
        if self.store_to is not None:
            from monai_mcx.dicom.web import parse_dicomweb_url

            parse_dicomweb_url(self.store_to)  # a malformed address fails before the run
        self.finding_class = finding_class
        self.algorithm = {"algorithm_name": algorithm_name, "algorithm_version": algorithm_version}
        self._client = None

    @classmethod
    def create(cls, write_dicom: bool | str, store_to: str | None, description=None) -> DicomOutputs | None:
        """The hook ``inference.json`` builds: None unless ``write_dicom`` or ``store_to`` (which implies it)."""
        if not (as_bool(write_dicom, "write_dicom") or store_to):
            return None
        return cls(description, store_to=store_to)

    def settings(self) -> dict:
        """What decides the files (the run manifest's settings)."""
        return {"seg": True, "sr": True}

    @staticmethod
    def names(stem: str) -> list[str]:
        """The file names an image of stem ``stem`` may get."""
        return [f"{stem}_seg.dcm", f"{stem}_sr.dcm"]

    def add(
        self,
        src: str,
        info: Mapping | None,
        record: dict,
        mask_wh: np.ndarray | None,
        stem: str,
        steps: list[tuple[str, Callable[[Path], None]]],
        lung_wh: np.ndarray | None = None,
    ) -> None:
        """Build the SEG and SR of one image and append their writes to ``steps``; set ``record["dicom_outputs"]``.

        Args:
            src: the input file.
            info: its DICOM info (:data:`monai_mcx.dicom.inputs.DICOM_KEY`); None: not a DICOM input.
            record: the image's JSON record (class probabilities, gate, gated boxes; updated).
            mask_wh: the gated lesion mask ``(W, H)`` at the original size, or None.
            stem: the image's output stem.
            steps: the image's ``(file name, write(path))`` list, in writing order.
            lung_wh: the predicted lung field ``(W, H)`` at the original size (a lungs head), or None: the SEG's
                segment 2 "Lung".
        """
        if info is None:
            record["dicom_outputs"] = {"notes": [NOT_DICOM]}
            return
        entry: dict = {"notes": []}
        record["dicom_outputs"] = entry
        try:
            header = read_header(src)
        except ValueError as e:
            entry["notes"].append(f"no SEG or SR: {e}")
            return
        seg_name, sr_name = self.names(stem)
        if mask_wh is None:
            entry["notes"].append("no SEG: no lesion mask (the segmentation head was not run)")
        else:
            self._build(entry, steps, "seg", seg_name, self._seg, header, mask_wh, lung_wh)
        probabilities = record.get("class_probabilities")
        if not probabilities:
            entry["notes"].append("no SR: no class probability (the classification head was not run)")
        else:
            self._build(entry, steps, "sr", sr_name, self._sr, header, record)

    def _build(self, entry: dict, steps: list, kind: str, name: str, make: Callable, *args) -> None:
        try:
            dataset = make(*args)
        except Exception as e:  # noqa: BLE001 - highdicom refuses headers it cannot derive from in many ways
            entry["notes"].append(f"no {kind.upper()}: {type(e).__name__}: {e}")
            return
        steps.append((name, partial(save_dataset, dataset)))
        entry[kind] = name
        entry[f"{kind}_sop_instance_uid"] = str(dataset.SOPInstanceUID)

    def _seg(self, header, mask_wh: np.ndarray, lung_wh: np.ndarray | None = None):
        from monai_mcx.dicom.seg import make_seg

        lungs = None if lung_wh is None else np.asarray(lung_wh).T.astype(bool)
        return make_seg(header, np.asarray(mask_wh).T.astype(bool), lung_mask=lungs, **self.algorithm)

    def _sr(self, header, record: dict):
        from monai_mcx.dicom.sr import make_sr

        probabilities = record["class_probabilities"]
        name = self.finding_class if self.finding_class in probabilities else next(iter(probabilities))
        boxes = [
            b for b in record.get(OriginalKeys.BOXES, []) if b["box"][2] > b["box"][0] and b["box"][3] > b["box"][1]
        ]
        return make_sr(
            header,
            probability=min(max(float(probabilities[name]), 0.0), 1.0),
            gate=bool(record.get(OriginalKeys.GATE, {}).get("positive", False)),
            boxes=[b["box"] for b in boxes],
            scores=[b["score"] for b in boxes],
            weights_sha256=self.weights_sha256,
            **self.algorithm,
        )

    def columns(self, record: Mapping) -> dict:
        """The ``dicom_seg`` / ``dicom_sr`` columns of an image's ``predictions.csv`` row."""
        entry = record.get("dicom_outputs") or {}
        return {"dicom_seg": entry.get("seg", ""), "dicom_sr": entry.get("sr", "")}

    def store(self, output_dir: str | os.PathLike, row: dict) -> None:
        """With ``store_to``: STOW-RS the SEG and SR that ``row`` names; ``row["stored"]`` says ``stored`` or
        ``not stored: <error>`` (never raises: the run goes on)."""
        files = [Path(output_dir) / row[k] for k in ("dicom_seg", "dicom_sr") if row.get(k)]
        if self.store_to is None or not files:
            return
        from monai_mcx.dicom.web import make_client, store_instances

        try:
            if self._client is None:
                self._client = make_client(self.store_to)
            store_instances(self._client, files)
            row["stored"] = "stored"
        except Exception as e:  # noqa: BLE001 - HTTP, connection and refusal errors alike become the row's note
            row["stored"] = f"not stored: {type(e).__name__}: {e}"
