"""Is this DICOM instance a frontal chest radiograph the model can read? A check of the header alone.

:func:`check_header` reads only the header (``stop_before_pixels``) and returns a :class:`HeaderCheck`: accepted
or refused with the first failing check as the reason, and the patient's age in years with a pediatric flag
(reported whether the image is accepted or not; the model was trained on adults, so callers may warn or refuse).
"""

from __future__ import annotations

import datetime
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

import pydicom

__all__ = ["HeaderCheck", "check_header", "parse_age", "patient_age_years"]

#: ViewPosition values of a lateral view (refused: the model reads frontal radiographs)
LATERAL_VIEWS = ("LL", "RL", "LATERAL", "LAT")
_AGE = re.compile(r"^\s*(\d{1,3})\s*([DWMY]?)\s*$")
_DAYS_PER_YEAR = 365.25


@dataclass(frozen=True)
class HeaderCheck:
    """The result of :func:`check_header`.

    Attributes:
        accepted: True when every enabled check passed.
        reason: why the instance was refused (``None`` when accepted), e.g.
            ``"lateral view (ViewPosition LL): the model reads frontal radiographs"``.
        age_years: the patient's age in years (from PatientAge, else from PatientBirthDate and the study date),
            ``None`` when unknown.
        pediatric: ``age_years < pediatric_age`` (18 by default); ``None`` when the age is unknown.
        modality, view_position: the header's values (``None`` when absent), for messages and reports.
    """

    accepted: bool
    reason: str | None
    age_years: float | None
    pediatric: bool | None
    modality: str | None = None
    view_position: str | None = None


def parse_age(value: str | None) -> float | None:
    """Years from a DICOM Age String: ``"045Y"`` -> 45, ``"006M"`` -> 0.5, ``"002W"`` -> 14/365.25 years,
    ``"010D"`` -> 10/365.25 years. A bare number (``"51"``, as in the RSNA challenge's files; not valid AS) is
    read as years. Empty, missing or malformed values give ``None``."""
    if value is None:
        return None
    m = _AGE.match(str(value))
    if not m:
        return None
    n, unit = int(m.group(1)), m.group(2) or "Y"
    return {"Y": float(n), "M": n / 12.0, "W": 7.0 * n / _DAYS_PER_YEAR, "D": n / _DAYS_PER_YEAR}[unit]


def _age_from_dates(ds: pydicom.Dataset) -> float | None:
    birth = str(ds.get("PatientBirthDate") or "")
    study = str(ds.get("StudyDate") or ds.get("SeriesDate") or ds.get("AcquisitionDate") or "")
    try:
        b = datetime.datetime.strptime(birth[:8], "%Y%m%d").date()
        s = datetime.datetime.strptime(study[:8], "%Y%m%d").date()
    except ValueError:
        return None
    days = (s - b).days
    return days / _DAYS_PER_YEAR if days >= 0 else None


def patient_age_years(ds: pydicom.Dataset) -> float | None:
    """The patient's age in years: ``PatientAge`` (:func:`parse_age`), else from ``PatientBirthDate`` and the study
    (series, acquisition) date; None when neither tells."""
    age = parse_age(ds.get("PatientAge"))
    return _age_from_dates(ds) if age is None else age


def _upper(value) -> str | None:
    text = str(value or "").strip().upper()
    return text or None


def check_header(
    dataset: pydicom.Dataset | str | os.PathLike,
    *,
    modalities: Sequence[str] | None = ("CR", "DX"),
    body_parts: Sequence[str] | None = ("CHEST",),
    views: Sequence[str] | None = ("PA", "AP"),
    allow_missing_view: bool = True,
    allow_secondary: bool = False,
    allow_localizer: bool = False,
    pediatric_age: float = 18.0,
    refuse_pediatric: bool = False,
) -> HeaderCheck:
    """Check that a DICOM header describes a frontal chest radiograph; the first failing check is the reason.

    The checks, in order, and the option that overrides each:

    * Modality in ``modalities`` (CR, DX); refused otherwise (also when absent). ``modalities=None`` skips it.
    * BodyPartExamined, when present and not empty, in ``body_parts`` (CHEST). ``body_parts=None`` skips it.
    * ViewPosition in ``views`` (PA, AP); a lateral view (LL, RL, LATERAL, LAT) is refused with the reason
      ``"lateral view (ViewPosition LL): the model reads frontal radiographs"``, any other value (e.g. a
      decubitus LLD) with ``"view LLD (ViewPosition): ..."``. An absent or empty ViewPosition passes unless
      ``allow_missing_view=False``. ``views=None`` skips the check.
    * ImageType: a LOCALIZER is refused unless ``allow_localizer``; a secondary capture (``DERIVED\\SECONDARY``)
      unless ``allow_secondary``. A file with no ImageType passes (the RSNA challenge's files are Secondary
      Capture SOP instances without ImageType, converted from the original radiographs).
    * Age: from PatientAge (:func:`parse_age`), else PatientBirthDate and StudyDate. ``pediatric`` is
      ``age < pediatric_age``; a pediatric patient is refused only with ``refuse_pediatric=True``.

    Args:
        dataset: a pydicom dataset, or a path (its header is read with ``stop_before_pixels``).

    Returns:
        a :class:`HeaderCheck`.

    Raises:
        ValueError: ``dataset`` is a path that pydicom cannot read (the message names the file).
    """
    from monai_mcx.dicom.io import read_header  # io uses parse_age: imported here, not at the top

    ds = read_header(dataset)
    modality, view = _upper(ds.get("Modality")), _upper(ds.get("ViewPosition"))
    age = patient_age_years(ds)
    pediatric = None if age is None else age < pediatric_age

    def result(reason: str | None) -> HeaderCheck:
        return HeaderCheck(reason is None, reason, age, pediatric, modality, view)

    if modalities is not None and modality not in {m.upper() for m in modalities}:
        got = "no Modality" if modality is None else f"modality {modality}"
        return result(f"{got}: the model reads chest radiographs ({'/'.join(modalities)})")
    body = _upper(ds.get("BodyPartExamined"))
    if body_parts is not None and body is not None and body not in {b.upper() for b in body_parts}:
        return result(f"body part {body} (BodyPartExamined): the model reads chest radiographs")
    if views is not None:
        if view is None:
            if not allow_missing_view:
                return result("no ViewPosition: the model reads frontal radiographs (PA/AP) and the view is unknown")
        elif view in {v.upper() for v in views}:
            pass
        elif view in LATERAL_VIEWS:
            return result(f"lateral view (ViewPosition {view}): the model reads frontal radiographs")
        else:
            return result(f"view {view} (ViewPosition): the model reads frontal radiographs ({'/'.join(views)})")
    image_type = [str(v).strip().upper() for v in (ds.get("ImageType") or [])]
    if "LOCALIZER" in image_type and not allow_localizer:
        return result("localizer image (ImageType LOCALIZER): the model reads diagnostic radiographs")
    if image_type[:2] == ["DERIVED", "SECONDARY"] and not allow_secondary:
        return result(
            "secondary capture (ImageType DERIVED\\SECONDARY): the model reads original radiographs "
            "(allow_secondary=True accepts it)"
        )
    if refuse_pediatric and pediatric:
        return result(f"pediatric patient (age {age:.1f} y < {pediatric_age:g}): the model was trained on adults")
    return result(None)
