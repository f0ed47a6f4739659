"""Find DICOM instances: walk a folder tree (any nesting, files with or without an extension) or read a DICOMDIR.

Every instance becomes a :class:`DicomRecord` (path and the study / series / SOP instance UIDs). A file that looks
like DICOM but cannot be read becomes a record with ``error`` set (the message names the file); the walk never
stops on one bad file. Records come sorted by study, series, instance number, SOP instance UID; error records
come last, sorted by path.

Which files are DICOM: a ``.dcm`` / ``.dicom`` / ``.dic`` file, any file with the ``DICM`` magic at byte 128,
and an extension-less file that pydicom can parse (``force=True``) into a dataset with a SOP Instance UID (old
"raw" DICOM without the preamble). Other files (PNG, JSON, a README) are skipped silently, and so is a DICOMDIR
found while walking (read it with :func:`read_dicomdir`).
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError

from monai_mcx.data.formats import is_dicom_file

__all__ = ["DicomRecord", "find_dicom", "read_dicomdir", "read_record"]

#: extensions that mark a file as DICOM (a file without one is sniffed)
DICOM_SUFFIXES = (".dcm", ".dicom", ".dic")
#: SOP class of a DICOMDIR (Media Storage Directory Storage): skipped by the walk
MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"
_UID_TAGS = ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID", "Modality", "InstanceNumber"]


@dataclass(frozen=True)
class DicomRecord:
    """One DICOM instance on disk.

    Attributes:
        path: the file.
        study_instance_uid, series_instance_uid, sop_instance_uid: the instance's UIDs (``None`` in an error record).
        sop_class_uid: its SOP Class UID (``None`` when unknown).
        modality: its Modality (``None`` when absent).
        instance_number: its InstanceNumber (``None`` when absent).
        error: ``None`` for a readable instance; otherwise why it could not be read, naming the file.
    """

    path: Path
    study_instance_uid: str | None = None
    series_instance_uid: str | None = None
    sop_instance_uid: str | None = None
    sop_class_uid: str | None = None
    modality: str | None = None
    instance_number: int | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def sort_key(self) -> tuple:
        if self.error is not None:
            return (1, "", "", math.inf, "", str(self.path))
        number = math.inf if self.instance_number is None else self.instance_number
        return (0, self.study_instance_uid, self.series_instance_uid, number, self.sop_instance_uid, str(self.path))


def _int_or_none(value) -> int | None:
    try:
        return None if value in (None, "") else int(value)
    except (TypeError, ValueError):
        return None


def _record_from_header(path: Path, ds: pydicom.Dataset, where: str = "") -> DicomRecord:
    missing = [k for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID") if not ds.get(k)]
    if missing:
        return DicomRecord(path, error=f"{path}: DICOM {where}without {', '.join(missing)}.")
    return DicomRecord(
        path=path,
        study_instance_uid=str(ds.StudyInstanceUID),
        series_instance_uid=str(ds.SeriesInstanceUID),
        sop_instance_uid=str(ds.SOPInstanceUID),
        sop_class_uid=str(ds.get("SOPClassUID") or "") or None,
        modality=str(ds.get("Modality") or "") or None,
        instance_number=_int_or_none(ds.get("InstanceNumber")),
    )


def read_record(path: str | os.PathLike) -> DicomRecord:
    """Read the UIDs of one DICOM file (header only); a record with ``error`` when it cannot be read."""
    path = Path(path)
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True, specific_tags=_UID_TAGS)
    except (InvalidDicomError, OSError, ValueError, EOFError, TypeError, AttributeError, KeyError) as e:
        return DicomRecord(path, error=f"{path}: not a readable DICOM file ({type(e).__name__}: {e}).")
    return _record_from_header(path, ds)


def _sniff_raw(path: Path) -> DicomRecord | None:
    """An extension-less file without the preamble: a record when pydicom finds a SOP instance in it, else None."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True, specific_tags=_UID_TAGS)
    except Exception:  # noqa: BLE001 - any parse failure means "not DICOM" for a file that only might be
        return None
    if not ds.get("SOPInstanceUID"):
        return None
    return _record_from_header(path, ds)


def _is_dicomdir(record: DicomRecord) -> bool:
    return record.sop_class_uid == MEDIA_STORAGE_DIRECTORY or record.path.name.upper() == "DICOMDIR"


def find_dicom(root: str | os.PathLike) -> list[DicomRecord]:
    """Every DICOM instance under ``root`` (recursive; symlinked folders are not followed), sorted.

    Args:
        root: a folder (walked), a DICOMDIR (read with :func:`read_dicomdir`) or one DICOM file.

    Returns:
        records sorted by study, series, instance number, SOP instance UID; unreadable files last, as
        records whose ``error`` names the file.

    Raises:
        FileNotFoundError: ``root`` does not exist.
    """
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"{root}: no such file or folder to search for DICOM.")
    if root.is_file():
        if root.name.upper() == "DICOMDIR":
            return read_dicomdir(root)
        return [read_record(root)]
    records = []
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            path = Path(folder) / name
            if name.lower().endswith(DICOM_SUFFIXES) or is_dicom_file(path):
                record = read_record(path)
            elif "." not in name:
                record = _sniff_raw(path)
            else:
                continue
            if record is not None and not _is_dicomdir(record):
                records.append(record)
    return sorted(records, key=DicomRecord.sort_key)


def read_dicomdir(path: str | os.PathLike) -> list[DicomRecord]:
    """The instances a DICOMDIR references (pydicom's :class:`~pydicom.fileset.FileSet`), sorted as
    :func:`find_dicom`'s; UIDs come from the directory records, and a referenced file that is missing becomes an
    error record naming it.

    Args:
        path: the DICOMDIR file, or the folder that holds it.

    Raises:
        FileNotFoundError: no DICOMDIR at ``path``.
        ValueError: the file is not a readable DICOMDIR (the message names it).
    """
    from pydicom.fileset import FileSet

    path = Path(path)
    if path.is_dir():
        path = path / "DICOMDIR"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no DICOMDIR there.")
    try:
        ds = pydicom.dcmread(path)
        with warnings.catch_warnings():  # pydicom warns of, and drops, records whose file is missing
            warnings.simplefilter("ignore", UserWarning)
            fs = FileSet(ds)
    except Exception as e:  # noqa: BLE001 - pydicom raises many types for a broken DICOMDIR
        raise ValueError(f"{path}: not a readable DICOMDIR ({type(e).__name__}: {e}).") from e
    referenced = {
        path.parent.joinpath(*([fid] if isinstance(fid, str) else fid)).resolve()
        for fid in (rec.get("ReferencedFileID") for rec in ds.get("DirectoryRecordSequence", []))
        if fid
    }
    records = [
        DicomRecord(file, error=f"{file}: referenced by {path} but missing.")
        for file in sorted(referenced - {Path(inst.path).resolve() for inst in fs})
    ]
    for inst in fs:
        file = Path(inst.path)
        try:
            records.append(
                DicomRecord(
                    path=file,
                    study_instance_uid=str(inst.StudyInstanceUID),
                    series_instance_uid=str(inst.SeriesInstanceUID),
                    sop_instance_uid=str(inst.SOPInstanceUID),
                    sop_class_uid=str(inst.SOPClassUID),
                    modality=str(getattr(inst, "Modality", "") or "") or None,
                    instance_number=_int_or_none(getattr(inst, "InstanceNumber", None)),
                )
            )
        except AttributeError as e:
            records.append(DicomRecord(file, error=f"{file}: its record in {path} lacks a UID ({e})."))
    return sorted(records, key=DicomRecord.sort_key)
