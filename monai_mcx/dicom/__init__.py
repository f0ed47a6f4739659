"""DICOM in and out: read a radiograph's pixels (:mod:`~monai_mcx.dicom.reader`, behind ``LoadCXRd``), find
instances in folder trees and DICOMDIRs, check that a header describes a frontal chest radiograph, write the model's
findings as DICOM SEG and SR (highdicom) and move instances over DICOMweb; wired into inference by
:mod:`~monai_mcx.dicom.inputs` and :mod:`~monai_mcx.dicom.outputs`.

The names below are imported on first use (PEP 562), so that ``import monai_mcx.dicom.reader`` (every image
load) does not import highdicom and dicomweb-client.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "checks": ("HeaderCheck", "check_header", "parse_age"),
    "io": ("save_dataset",),
    "orthanc": ("start_orthanc", "stop_orthanc"),
    "seg": ("LESION_LABEL", "LUNG_LABEL", "make_seg", "read_seg", "write_seg"),
    "sr": ("PNEUMONIA", "make_sr", "read_sr", "write_sr"),
    "tree": ("DicomRecord", "find_dicom", "read_dicomdir", "read_record"),
    "web": (
        "fetch",
        "make_client",
        "parse_dicomweb_url",
        "retrieve_instances",
        "search_instances",
        "search_series",
        "store_instances",
    ),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
