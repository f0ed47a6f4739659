"""SIIM-FISABIO-RSNA COVID-19 Detection (2021): adult radiographs with the radiologists' opacity labels."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from monai_mcx.data.errors import DataError
from monai_mcx.data.public.common import PublicDataset, find_file, read_csv

__all__ = ["SIIMCovidOpacity", "STUDY_FINDINGS"]

#: ``study_label`` value -> the challenge's own name for it, kept as a finding (so a class map can use it)
STUDY_FINDINGS = {
    "negative": "Negative for Pneumonia",
    "typical": "Typical Appearance",
    "indeterminate": "Indeterminate Appearance",
    "atypical": "Atypical Appearance",
}

#: the finding of an image with at least one opacity box (RSNA's name for the same reading)
OPACITY_FINDING = "Lung Opacity"

_COLUMNS = ("image", "study", "opacity", "n_boxes", "study_label")


class SIIMCovidOpacity(PublicDataset):
    """SIIM-FISABIO-RSNA COVID-19 Detection (2021) training radiographs, as packed in ``cxr-adult/siim_covid``.

    Reads ``labels.csv`` (``image, study, opacity, n_boxes, study_label``, one row per image) and
    ``images/<image>`` (8-bit JPEG, 256 x 256, resized from the DICOM **without** keeping the aspect ratio).

    * ``patient`` = ``siim_covid:<study>``: this source does not identify patients, so the patient-level split
      is a split **by study** (the closest available: a patient with two studies may fall in two splits).
    * ``findings``: ``"Lung Opacity"`` when the radiologists drew at least one opacity box (``opacity`` 1;
      nothing for 0), then the study's appearance by the challenge's name (``"Negative for Pneumonia"``,
      ``"Typical Appearance"``, ``"Indeterminate Appearance"`` or ``"Atypical Appearance"``). The default
      class map counts ``"Lung Opacity"`` as ``pneumonia``, as for RSNA; a class map may instead map
      ``"Typical Appearance"`` to a class (COVID-19 typical vs the rest).
    * ``info``: ``study_label`` (``negative`` / ``typical`` / ``indeterminate`` / ``atypical``), ``study``,
      ``n_boxes`` (how many opacity boxes were drawn).
    * ``mask = None`` and ``boxes = None`` (not annotated): the boxes are in the original image's pixels, whose
      size is unknown, so they cannot be placed on these images (``[]`` would wrongly claim "no lesion").

    Args:
        root: the folder holding ``labels.csv`` and ``images/``.
        labels_csv: the label file's name under ``root``.
        images_dir: the image folder under ``root``.
        kwargs: :class:`~monai_mcx.data.public.common.PublicDataset`'s ``class_map``, ``check_files``,
            ``on_error``.

    Raises:
        DataError: naming ``labels.csv`` and the row: an empty image or study, ``opacity`` not 0/1, ``n_boxes``
            not a count or contradicting ``opacity``, an unknown ``study_label``, a study with two study labels,
            an image listed twice, or a missing image file.
    """

    source = "siim_covid"
    population = "adult"
    patient_namespace = "siim_covid"

    def __init__(self, root, labels_csv: str = "labels.csv", images_dir: str = "images", **kwargs):
        super().__init__(root, **kwargs)
        self.labels_csv = find_file(self.root, labels_csv)
        self.images_dir = self.root / images_dir

    def _parse_row(self, r: list[str], ix: dict[str, int], row_no: int) -> dict:
        path = self.labels_csv
        if len(r) < len(ix):
            raise DataError(f"row has {len(r)} values, the header {len(ix)}", path, row_no)
        rec = {c: r[ix[c]].strip() for c in _COLUMNS}
        for c in ("image", "study"):
            if not rec[c]:
                raise DataError(f"empty {c}", path, row_no)
        if Path(rec["image"]).name != rec["image"]:
            raise DataError(
                f"image must be a file name under {self.images_dir.name}/, got {rec['image']!r}", path, row_no
            )
        if rec["opacity"] not in ("0", "1"):
            raise DataError(f"opacity must be 0 or 1, got {rec['opacity']!r} (image {rec['image']})", path, row_no)
        if not rec["n_boxes"].isdigit():
            raise DataError(f"n_boxes must be a count, got {rec['n_boxes']!r} (image {rec['image']})", path, row_no)
        if (rec["opacity"] == "1") != (int(rec["n_boxes"]) > 0):
            raise DataError(
                f"opacity {rec['opacity']} contradicts n_boxes {rec['n_boxes']} (image {rec['image']})", path, row_no
            )
        if rec["study_label"] not in STUDY_FINDINGS:
            raise DataError(
                f"unknown study_label {rec['study_label']!r} (image {rec['image']}); expected one of "
                f"{sorted(STUDY_FINDINGS)}",
                path,
                row_no,
            )
        return rec

    def items(self) -> Iterator[dict]:
        path = self.labels_csv
        header, rows = read_csv(path, _COLUMNS)
        ix = {c: header.index(c) for c in _COLUMNS}
        seen: dict[str, int] = {}  # image -> row
        study_labels: dict[str, tuple[str, int]] = {}  # study -> (study_label, first row)
        for row_no, r in rows:
            try:
                rec = self._parse_row(r, ix, row_no)
                if rec["image"] in seen:
                    raise DataError(
                        f"image {rec['image']} listed twice (first in row {seen[rec['image']]})", path, row_no
                    )
                first = study_labels.setdefault(rec["study"], (rec["study_label"], row_no))
                if first[0] != rec["study_label"]:
                    raise DataError(
                        f"study {rec['study']} has study_label {rec['study_label']!r} here and {first[0]!r} in "
                        f"row {first[1]}",
                        path,
                        row_no,
                    )
            except DataError as e:
                self._fail(e)
                continue
            seen[rec["image"]] = row_no
            opacity = rec["opacity"] == "1"
            findings = [OPACITY_FINDING] if opacity else []
            findings.append(STUDY_FINDINGS[rec["study_label"]])
            image = self.images_dir / rec["image"]
            item = self._item(
                image,
                rec["study"],
                findings,
                study_label=rec["study_label"],
                study=rec["study"],
                n_boxes=int(rec["n_boxes"]),
            )
            try:
                self._check_exists(image, "image", path, row_no)
            except DataError as e:
                self._fail(e, item)
                continue
            yield item
