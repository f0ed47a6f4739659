"""Saving the DICOM objects this package makes: atomically, with the source's header made fit to copy."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pydicom

from monai_mcx.dicom.checks import parse_age
from monai_mcx.utils import atomic_write

__all__ = ["read_header", "save_dataset", "source_header", "conform_age"]

#: the software that made the objects (Manufacturer / algorithm name)
MANUFACTURER = "monai_mcx"
ALGORITHM_NAME = "MultiCheXNet"


def read_header(source: pydicom.Dataset | str | os.PathLike) -> pydicom.Dataset:
    """``source`` itself when it is a dataset; else its header read from the file (``stop_before_pixels``).

    Raises:
        ValueError: the file cannot be read (the message names it).
    """
    if isinstance(source, pydicom.Dataset):
        return source
    try:
        return pydicom.dcmread(source, stop_before_pixels=True)
    except Exception as e:  # noqa: BLE001 - pydicom raises many types for a broken file
        raise ValueError(f"{source}: not a readable DICOM file ({type(e).__name__}: {e}).") from e


def save_dataset(dataset: pydicom.Dataset, path: str | os.PathLike) -> Path:
    """Write ``dataset`` as a DICOM file (Part 10, with preamble and file meta) at ``path``, atomically: to a
    temporary file in the same folder, then ``os.replace`` (a reader never sees a partial file). Missing parent
    folders are created. Returns the path."""
    path = Path(path)
    with atomic_write(path, "wb") as f:
        dataset.save_as(f, enforce_file_format=True)
    return path


def conform_age(value) -> str | None:
    """A PatientAge fit for the AS value representation: kept when already valid (``"045Y"``); a bare number of
    years (``"51"``, as the RSNA challenge's files have) becomes ``"051Y"``; anything else unreadable gives None."""
    text = str(value or "").strip().upper()
    if len(text) == 4 and text[:3].isdigit() and text[3] in "DWMY":
        return text
    years = parse_age(text)
    if years is None or years != int(years) or years > 999:
        return None
    return f"{int(years):03d}Y"


def source_header(source: pydicom.Dataset) -> pydicom.Dataset:
    """A copy of the source image's header (no pixel data) that highdicom can derive a 2D object from.

    * Pixel Data is dropped (highdicom needs only the header).
    * PixelSpacing and FrameOfReferenceUID are dropped: a projection radiograph has no plane position in patient
      space, and highdicom (0.28) writes a Pixel Measures item without SliceThickness that its own reader then
      refuses. The SEG lies on the source's own pixel grid and references it, so the spacing stays the source's.
    * A PatientAge that is not a valid Age String is conformed (:func:`conform_age`) or dropped, so that the
      derived object's copy of it is valid.
    """
    header = pydicom.Dataset()
    header.file_meta = copy.deepcopy(getattr(source, "file_meta", pydicom.dataset.FileMetaDataset()))
    for elem in source:
        if elem.tag.group == 0x7FE0:  # Pixel Data and friends
            continue
        header.add(copy.deepcopy(elem))
    for keyword in ("PixelSpacing", "FrameOfReferenceUID"):
        if keyword in header:
            delattr(header, keyword)
    if "PatientAge" in header:
        age = conform_age(header.PatientAge)
        if age is None:
            del header.PatientAge
        else:
            header.PatientAge = age
    return header
