"""The DICOM side of inference inputs: study trees, DICOMDIRs and DICOMweb addresses as items, their UIDs, and the
header check that says why an instance is not read.

:func:`monai_mcx.data.inference_items` lists the inputs; this module adds, for DICOM:

* :func:`nested_instances`: the DICOM instances in the sub-folders of an input folder (any depth, extension-less
  files sniffed; :func:`monai_mcx.dicom.find_dicom`), grouped by study, series and instance number;
* :func:`dicomdir_items`: the instances a DICOMDIR references;
* :func:`fetch_items`: a DICOMweb address (``dicomweb://host:port/dicom-web?StudyInstanceUID=...``, or
  ``http(s)://.../dicom-web?...``) searched (QIDO-RS) and retrieved (WADO-RS) into a download folder;
* :func:`annotate_items`: every DICOM item gets :data:`DICOM_KEY` (its UIDs, the patient's age, the pediatric flag)
  and, when :func:`monai_mcx.dicom.check_header` refuses it, an ``error`` giving the reason (an error row of
  ``predictions.csv``, never a prediction).

The extra keys (:data:`DICOM_KEY`, :data:`ROOT_KEY`) are for the writer and the output-folder check;
:func:`loader_item` strips them before the loader (they would not collate).
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from monai_mcx.data.formats import is_dicom_file
from monai_mcx.dicom.checks import LATERAL_VIEWS, check_header
from monai_mcx.keys import BatchKeys, DatalistKeys
from monai_mcx.utils import as_bool

__all__ = [
    "DICOM_KEY",
    "ROOT_KEY",
    "DICOM_COLUMNS",
    "is_dicomweb",
    "is_dicomdir",
    "nested_instances",
    "dicomdir_items",
    "fetch_items",
    "annotate_items",
    "loader_item",
    "dicom_columns",
]

#: item key of an input DICOM's UIDs, age and pediatric flag (a dict; absent for other inputs)
DICOM_KEY = "dicom"
#: item key of the searched input folder, for an instance found in one of its sub-folders (the output folder must
#: stay out of the whole tree, not only out of the instance's own folder)
ROOT_KEY = "input_root"
#: ``predictions.csv`` columns from :data:`DICOM_KEY` (empty for an input that is not DICOM)
DICOM_COLUMNS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "age_years", "pediatric")
_SCHEMES = ("dicomweb://", "dicomwebs://", "http://", "https://")
#: the reason a sub-folder without DICOM is not run
NO_DICOM_BELOW = "a folder without DICOM files (sub-folders are searched for DICOM only)"


def is_dicomweb(source) -> bool:
    """True for a DICOMweb address (``dicomweb://``, ``dicomwebs://``, ``http://``, ``https://``)."""
    return isinstance(source, str) and source.lower().startswith(_SCHEMES)


def is_dicomdir(path: str | os.PathLike) -> bool:
    """True for a file named ``DICOMDIR`` (any case)."""
    return Path(path).name.upper() == "DICOMDIR"


def _records_to_items(records, root: Path | None = None) -> list[dict]:
    items = []
    for r in records:
        item = {DatalistKeys.IMAGE.value: str(r.path)}
        if r.error is not None:
            item[BatchKeys.ERROR.value] = f"{r.path}: skipped: {r.error.removeprefix(f'{r.path}: ').rstrip('.')}"
        if root is not None:
            item[ROOT_KEY] = str(root)
        items.append(item)
    return items


def nested_instances(folder: str | os.PathLike) -> tuple[list[dict], list[tuple[Path, str]]]:
    """The DICOM instances in the sub-folders of ``folder`` (not the files directly in it: those are listed by
    :func:`monai_mcx.data.datalist.list_image_folder`).

    Each sub-folder is walked by :func:`monai_mcx.dicom.find_dicom` (any depth, extension-less files sniffed,
    symlinked folders not followed, a DICOMDIR and other files skipped silently). Its instances are items
    ``{"image": path, "input_root": folder}`` sorted by study, series, instance number; a file that looks like DICOM
    but cannot be read (or lacks a UID) is an item with ``error``. A sub-folder without any DICOM file is returned
    as skipped, with :data:`NO_DICOM_BELOW` as the reason.

    Returns:
        ``(items, skipped)``: the instances, and ``(sub-folder, reason)`` pairs.
    """
    from monai_mcx.dicom.tree import DicomRecord, find_dicom

    folder = Path(folder)
    records, skipped = [], []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        found = find_dicom(sub)
        if found:
            records += found
        else:
            skipped.append((sub, NO_DICOM_BELOW))
    return _records_to_items(sorted(records, key=DicomRecord.sort_key), folder), skipped


def dicomdir_items(path: str | os.PathLike) -> list[dict]:
    """The instances a DICOMDIR references (:func:`monai_mcx.dicom.read_dicomdir`), grouped by study and series;
    a referenced file that is missing is an item with ``error``."""
    from monai_mcx.dicom.tree import read_dicomdir

    return _records_to_items(read_dicomdir(path), Path(path).parent)


def _download_folder() -> Path:
    """A new temporary folder for DICOMweb downloads, removed when the process exits (the SEG and SR written
    during the run reference the instances' headers, so they live as long as the run)."""
    folder = Path(tempfile.mkdtemp(prefix="monai_mcx_dicomweb_"))
    atexit.register(shutil.rmtree, folder, True)
    return folder


def fetch_items(url: str, folder: str | os.PathLike | None = None) -> list[dict]:
    """Search (QIDO-RS) and retrieve (WADO-RS, as stored) the instances a DICOMweb address selects
    (:func:`monai_mcx.dicom.fetch`) into ``folder/<study>/<series>/<sop>.dcm``; items grouped by study and series.

    Args:
        url: ``dicomweb://host:port/dicom-web?StudyInstanceUID=...`` (or ``http(s)://...``; a filter is required).
        folder: the download folder; default: a new temporary folder removed when the process exits.

    Raises:
        ValueError: the address is malformed or has no filter, or the search finds no instance (the message
            names the address).
    """
    from monai_mcx.dicom.tree import find_dicom
    from monai_mcx.dicom.web import fetch

    folder = Path(folder) if folder is not None else _download_folder()
    try:
        paths = fetch(url, folder)
    except ValueError:
        raise
    except Exception as e:  # noqa: BLE001 - requests / dicomweb-client raise many types for an unreachable PACS
        raise ValueError(f"{url}: DICOMweb search / retrieve failed ({type(e).__name__}: {e}).") from e
    if not paths:
        raise ValueError(f"{url}: the DICOMweb search found no instance.")
    return _records_to_items(find_dicom(folder))


def annotate_items(
    items: Sequence[dict],
    dicom_checks: bool | str = True,
    allow_secondary: bool | str = False,
    allow_lateral: bool | str = False,
) -> list[dict]:
    """Add :data:`DICOM_KEY` to every readable DICOM item and refuse the instances the model cannot read.

    For each item without ``error`` whose file is DICOM (its content, whatever its name), the header is read once
    (:func:`monai_mcx.dicom.check_header`): ``item["dicom"]`` gets ``StudyInstanceUID``, ``SeriesInstanceUID``,
    ``SOPInstanceUID`` (``""`` when absent), ``age_years`` (``None`` when unknown) and ``pediatric``. With
    ``dicom_checks`` an instance that is not a frontal chest radiograph (modality CR/DX, body part chest when
    given, view PA/AP, no localizer, no ``DERIVED\\SECONDARY`` capture) gets ``error`` =
    ``"<path>: not read: <reason>"``, e.g. ``lateral view (ViewPosition LL): the model reads frontal radiographs``.

    Args:
        items: the items (``{"image": path, ...}``); not changed.
        dicom_checks: check the headers (``False``: only report UIDs and age).
        allow_secondary: accept ``DERIVED\\SECONDARY`` captures.
        allow_lateral: accept lateral views (LL, RL, LATERAL, LAT).

    Returns:
        new items (non-DICOM items unchanged).
    """
    from monai_mcx.dicom.io import read_header

    checks = as_bool(dicom_checks, "dicom_checks")
    views = ("PA", "AP", *LATERAL_VIEWS) if as_bool(allow_lateral, "allow_lateral") else ("PA", "AP")
    options = {"views": views} if checks else {"modalities": None, "body_parts": None, "views": None}
    options.update(
        allow_secondary=as_bool(allow_secondary, "allow_secondary") or not checks, allow_localizer=not checks
    )
    out = []
    for item in items:
        item = dict(item)
        out.append(item)
        if item.get(BatchKeys.ERROR) or not is_dicom_file(item[DatalistKeys.IMAGE]):
            continue
        try:
            header = read_header(item[DatalistKeys.IMAGE])
        except ValueError as e:
            item[BatchKeys.ERROR.value] = str(e)
            continue
        result = check_header(header, **options)
        item[DICOM_KEY] = {
            **{k: str(header.get(k) or "") for k in DICOM_COLUMNS[:3]},
            "age_years": None if result.age_years is None else round(result.age_years, 2),
            "pediatric": result.pediatric,
        }
        if not result.accepted:
            item[BatchKeys.ERROR.value] = f"{item[DatalistKeys.IMAGE]}: not read: {result.reason}"
    return out


def loader_item(item: Mapping) -> dict:
    """``item`` without the keys that are for the writer only (:data:`DICOM_KEY`, :data:`ROOT_KEY`)."""
    return {k: v for k, v in item.items() if k not in (DICOM_KEY, ROOT_KEY)}


def dicom_columns(info: Mapping | None) -> dict:
    """The :data:`DICOM_COLUMNS` of ``predictions.csv`` from an item's :data:`DICOM_KEY` (all ``""`` for None)."""
    info = info or {}
    return {k: "" if info.get(k) is None else info[k] for k in DICOM_COLUMNS}
