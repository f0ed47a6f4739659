"""DICOM Structured Report (TID 1500 Measurement Report, Comprehensive 3D SR) of one radiograph's findings.

Content (all codes from pydicom's code dictionary, except SNOMED CT *Pneumonia* 233604007 and *Chest X-ray*
168731009, which it lacks):

* an image-level measurement group (TID 1501), finding type *Pneumonia*, referencing the source image:
  the calibrated probability (*Probability*, DCM 122157, unit UCUM ``1``) and the gate decision as a qualitative
  evaluation *Pneumonia* = *Present* / *Absent*;
* one planar ROI group (TID 1410) per box, finding type *Abnormal opacity*: a closed POLYLINE (5 points) around
  the box in the source image's pixel coordinates (column, row; (0, 0) is the top-left corner of the top-left
  pixel, so box edges ``[x1, y1, x2, y2]`` in pixels map as they are), and the box's score (*Score*, unit ``1``);
* in every group, the algorithm identification (TID 4019): name, version and ``weights_sha256=<hash>`` as an
  algorithm parameter; the observer is the device (the algorithm).

Boxes are ``[x1, y1, x2, y2]`` with x = column and y = row of the ORIGINAL source image (DICOM rows x columns),
the convention of the project's boxes after mapping back to original pixels.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from highdicom.sr import CodedConcept
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from monai_mcx import __version__
from monai_mcx.dicom.io import ALGORITHM_NAME, MANUFACTURER, read_header, save_dataset, source_header
from monai_mcx.keys import OriginalKeys

__all__ = ["PNEUMONIA", "make_sr", "write_sr", "read_sr"]

PNEUMONIA = CodedConcept("233604007", "SCT", "Pneumonia")
CHEST_XRAY = CodedConcept("168731009", "SCT", "Chest X-ray")
#: SeriesNumber of the SR series
SR_SERIES_NUMBER = 902
_WEIGHTS = "weights_sha256="


def _box_polyline(box: Sequence[float]) -> np.ndarray:
    x1, y1, x2, y2 = (float(v) for v in box)
    if not (x2 > x1 and y2 > y1):
        raise ValueError(f"box {list(box)} is not [x1, y1, x2, y2] with x2 > x1 and y2 > y1.")
    return np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2], [x1, y1]], dtype=np.float64)


def make_sr(
    source: pydicom.Dataset | str | os.PathLike,
    *,
    probability: float,
    gate: bool,
    boxes: Sequence[Sequence[float]] = (),
    scores: Sequence[float] = (),
    finding: CodedConcept = PNEUMONIA,
    algorithm_name: str = ALGORITHM_NAME,
    algorithm_version: str = __version__,
    weights_sha256: str | None = None,
    series_number: int = SR_SERIES_NUMBER,
    series_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
) -> hd.sr.Comprehensive3DSR:
    """Build the SR for ``source`` (not written; see :func:`write_sr`).

    Args:
        source: the radiograph (a pydicom dataset, pixels not needed, or a path).
        probability: the finding's calibrated probability in [0, 1].
        gate: the gate's decision (the finding present or absent).
        boxes: ``(N, 4)`` boxes ``[x1, y1, x2, y2]`` in the source image's pixels (x = column, y = row).
        scores: ``(N,)`` box scores.
        finding: the finding's code (SNOMED CT *Pneumonia* by default).
        algorithm_name, algorithm_version, weights_sha256: the algorithm identification.
        series_number, series_instance_uid, sop_instance_uid: of the new object (new UIDs by default).

    Raises:
        ValueError: a probability outside [0, 1], boxes and scores of different lengths, or a degenerate box.
    """
    source = read_header(source)
    if not 0.0 <= float(probability) <= 1.0:
        raise ValueError(f"probability must be in [0, 1], got {probability}.")
    if len(boxes) != len(scores):
        raise ValueError(f"{len(boxes)} boxes but {len(scores)} scores.")
    header = source_header(source)
    sr = hd.sr
    parameters = None if weights_sha256 is None else [f"{_WEIGHTS}{weights_sha256}"]
    algorithm = sr.AlgorithmIdentification(name=algorithm_name, version=algorithm_version, parameters=parameters)
    unitless = codes.UCUM.NoUnits
    groups = [
        sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=sr.TrackingIdentifier(uid=generate_uid(), identifier=finding.meaning),
            finding_type=finding,
            algorithm_id=algorithm,
            measurements=[
                sr.Measurement(
                    name=codes.DCM.Probability, value=float(probability), unit=unitless, algorithm_id=algorithm
                )
            ],
            qualitative_evaluations=[
                sr.QualitativeEvaluation(name=finding, value=codes.SCT.Present if gate else codes.SCT.Absent)
            ],
            source_images=[sr.SourceImageForMeasurementGroup.from_source_image(header)],
        )
    ]
    for i, (box, score) in enumerate(zip(boxes, scores), start=1):
        region = sr.ImageRegion(
            graphic_type=sr.GraphicTypeValues.POLYLINE,
            graphic_data=_box_polyline(box),
            source_image=sr.SourceImageForRegion.from_source_image(header),
        )
        groups.append(
            sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=sr.TrackingIdentifier(uid=generate_uid(), identifier=f"box {i}"),
                referenced_region=region,
                finding_type=codes.DCM.AbnormalOpacity,
                algorithm_id=algorithm,
                measurements=[sr.Measurement(name=codes.SCT.Score, value=float(score), unit=unitless)],
            )
        )
    device = sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=sr.DeviceObserverIdentifyingAttributes(
            uid=generate_uid(), name=algorithm_name, manufacturer_name=MANUFACTURER, model_name=algorithm_name
        ),
    )
    report = sr.MeasurementReport(
        observation_context=sr.ObservationContext(observer_device_context=device),
        procedure_reported=CHEST_XRAY,
        imaging_measurements=groups,
    )
    doc = sr.Comprehensive3DSR(
        evidence=[header],
        content=report,
        series_instance_uid=series_instance_uid or generate_uid(),
        series_number=series_number,
        sop_instance_uid=sop_instance_uid or generate_uid(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
    )
    doc.SeriesDescription = f"{algorithm_name} SR"
    return doc


def write_sr(source: pydicom.Dataset | str | os.PathLike, path: str | os.PathLike, **kwargs) -> Path:
    """Build (:func:`make_sr`, same keywords) and write the SR to ``path`` atomically; return the path."""
    return save_dataset(make_sr(source, **kwargs), path)


def read_sr(path: str | os.PathLike) -> dict:
    """Read an SR written by :func:`write_sr` back (highdicom).

    Returns:
        ``{"probability": float, "gate": bool, "boxes": [[x1, y1, x2, y2], ...], "scores": [...],
        "algorithm": {"name", "version", "weights_sha256"}, "source_sop_instance_uid": str}``; coordinates are
        float32 as stored (SCOORD values are FL).

    Raises:
        ValueError: the file is not a readable SR, or it lacks the image-level group (the message names it).
    """
    try:
        doc = hd.sr.srread(path)
    except Exception as e:  # noqa: BLE001 - pydicom/highdicom raise many types for a broken file
        raise ValueError(f"{path}: not a readable DICOM SR ({type(e).__name__}: {e}).") from e
    image_groups = doc.content.get_image_measurement_groups()
    if not image_groups:
        raise ValueError(f"{path}: no image-level measurement group (not an SR written by monai_mcx.dicom.sr).")
    group = image_groups[0]
    probability = next(m.value for m in group.get_measurements(name=codes.DCM.Probability))
    evaluation = group.get_qualitative_evaluations()[0]
    boxes, scores = [], []
    for roi_group in doc.content.get_planar_roi_measurement_groups():
        points = np.asarray(roi_group.roi.value, dtype=np.float64)
        boxes.append([points[:, 0].min(), points[:, 1].min(), points[:, 0].max(), points[:, 1].max()])
        scores.append(float(roi_group.get_measurements(name=codes.SCT.Score)[0].value))
    return {
        "probability": float(probability),
        OriginalKeys.GATE.value: evaluation.value == codes.SCT.Present,
        OriginalKeys.BOXES.value: [[float(v) for v in b] for b in boxes],
        OriginalKeys.SCORES.value: scores,
        "algorithm": _algorithm(group),
        "source_sop_instance_uid": next((i.referenced_sop_instance_uid for i in group.source_images), None),
    }


def _algorithm(group) -> dict:
    """name / version / weights hash from the group's TID 4019 items (found by concept name)."""
    found = {"name": None, "version": None, "weights_sha256": None}
    for item in group[0].ContentSequence:
        if item.name == codes.DCM.AlgorithmName:
            found["name"] = str(item.value)
        elif item.name == codes.DCM.AlgorithmVersion:
            found["version"] = str(item.value)
        elif item.name == codes.DCM.AlgorithmParameters and str(item.value).startswith(_WEIGHTS):
            found["weights_sha256"] = str(item.value)[len(_WEIGHTS) :]
    return found
