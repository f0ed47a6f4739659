"""The rows of ``predictions.csv``: one per input, from the image's JSON record (or its error)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from monai_mcx.dicom.inputs import DICOM_COLUMNS, dicom_columns
from monai_mcx.dicom.outputs import OUTPUT_COLUMNS
from monai_mcx.keys import BatchKeys, DatalistKeys, OriginalKeys

__all__ = ["csv_fields", "csv_row", "error_row"]


def csv_fields(class_names: Sequence[str]) -> list[str]:
    """The columns of ``predictions.csv`` for a model with ``class_names``."""
    return [
        DatalistKeys.IMAGE.value,
        *DICOM_COLUMNS,
        "gate_positive",
        "population",
        "population_reason",
        *[f"p_{c}" for c in class_names],
        "calibrated",
        "n_boxes",
        "max_box_score",
        "mask_area_px",
        "lung_area_px",
        "json",
        "mask_nifti",
        "overlay",
        "saliency_nifti",
        *OUTPUT_COLUMNS,
        BatchKeys.ERROR.value,
    ]


def csv_row(r: Mapping, output_columns: Mapping | None = None) -> dict:
    """An image's row from its JSON record ``r``; ``output_columns``: the DICOM output hook's columns."""
    point = r.get("operating_point", {})
    row = {
        DatalistKeys.IMAGE.value: r[DatalistKeys.IMAGE],
        "gate_positive": r.get(OriginalKeys.GATE, {}).get("positive", ""),
        "calibrated": r.get("calibrated", ""),
        "n_boxes": len(r.get(OriginalKeys.BOXES, [])),
        "max_box_score": max([b["score"] for b in r.get(OriginalKeys.BOXES, [])], default=""),
        "mask_area_px": r.get("mask_area_px", ""),
        "lung_area_px": r.get("lung_area_px", ""),
        DatalistKeys.POPULATION.value: point.get(DatalistKeys.POPULATION) or "",
        "population_reason": point.get("reason") or "",
        "json": r.get("json", ""),
        "mask_nifti": r.get("mask_nifti", ""),
        "overlay": r.get("overlay", ""),
        "saliency_nifti": r.get("saliency", {}).get("nifti", ""),
        **dicom_columns(r.get("dicom")),
        **dict(output_columns or {}),
        BatchKeys.ERROR.value: "",
    }
    for c, p in r.get("class_probabilities", {}).items():
        row[f"p_{c}"] = round(p, 6)
    return row


def error_row(image: str, error: str, info: Mapping | None) -> dict:
    """The row of an input without outputs: its image, its DICOM columns (``info``), the error."""
    return {DatalistKeys.IMAGE.value: image, **dicom_columns(info), BatchKeys.ERROR.value: error}
