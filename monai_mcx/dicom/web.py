"""DICOMweb (QIDO-RS search, WADO-RS retrieve, STOW-RS store) through ``dicomweb_client``'s ``DICOMwebClient``.

Addresses: a DICOMweb service root with optional query filters, in one of two spellings:

* ``dicomweb://host:port/path?StudyInstanceUID=1.2.3`` (``dicomwebs://`` for HTTPS): the service is
  ``http://host:port/path``;
* ``http://host:port/dicom-web?StudyInstanceUID=1.2.3`` (or ``https://``): the service is the URL without its
  query.

The query's keys are DICOM keywords (``StudyInstanceUID``, ``SeriesInstanceUID``, ``Modality``,
``PatientID``, ...); a key that is not a DICOM keyword is an error. StudyInstanceUID / SeriesInstanceUID narrow the
QIDO path (``/studies/{uid}/series/{uid}/instances``); the others are QIDO search filters. Orthanc's root is
``http://127.0.0.1:8042/dicom-web``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import pydicom
from dicomweb_client.api import DICOMwebClient
from pydicom.datadict import tag_for_keyword

from monai_mcx.dicom.io import save_dataset

__all__ = [
    "parse_dicomweb_url",
    "make_client",
    "search_instances",
    "search_series",
    "retrieve_instances",
    "store_instances",
    "fetch",
]

#: WADO-RS media type: the instance as stored (any transfer syntax), not transcoded by the server
AS_STORED = (("application/dicom", "*"),)
_SCHEMES = {"dicomweb": "http", "dicomwebs": "https", "http": "http", "https": "https"}


def parse_dicomweb_url(url: str) -> tuple[str, dict[str, str]]:
    """Split a DICOMweb address (module docstring) into the service root and its filters.

    Returns:
        ``(base_url, filters)``: e.g. ``("http://127.0.0.1:8042/dicom-web", {"StudyInstanceUID": "1.2.3"})``.

    Raises:
        ValueError: another scheme, no host, or a filter key that is not a DICOM keyword.
    """
    parts = urlsplit(url)
    scheme = _SCHEMES.get(parts.scheme.lower())
    if scheme is None or not parts.netloc:
        raise ValueError(
            f"{url!r}: not a DICOMweb address; expected dicomweb://host:port/path?Key=value "
            "or http(s)://host:port/dicom-web?Key=value."
        )
    filters = dict(parse_qsl(parts.query, keep_blank_values=False))
    unknown = [k for k in filters if tag_for_keyword(k) is None]
    if unknown:
        raise ValueError(f"{url!r}: {unknown} are not DICOM keywords (e.g. StudyInstanceUID, Modality).")
    base = urlunsplit((scheme, parts.netloc, parts.path.rstrip("/"), "", ""))
    return base, filters


def make_client(url: str, **kwargs) -> DICOMwebClient:
    """A ``DICOMwebClient`` for the service root of ``url`` (its query is ignored; see
    :func:`parse_dicomweb_url`). ``kwargs`` go to the client (``headers``, ``session``, ``timeout``, ...)."""

    base, _ = parse_dicomweb_url(url)
    return DICOMwebClient(url=base, **kwargs)


def _split_filters(filters: Mapping[str, str] | None) -> tuple[str | None, str | None, dict[str, str]]:
    rest = dict(filters or {})
    return rest.pop("StudyInstanceUID", None), rest.pop("SeriesInstanceUID", None), rest


def _datasets(results: list[dict]) -> list[pydicom.Dataset]:
    return [pydicom.Dataset.from_json(r) for r in results]


def search_instances(client, filters: Mapping[str, str] | None = None) -> list[pydicom.Dataset]:
    """QIDO-RS instance search.

    Args:
        client: a ``DICOMwebClient`` (:func:`make_client`).
        filters: DICOM keyword -> value (StudyInstanceUID / SeriesInstanceUID narrow the path).

    Returns:
        one pydicom dataset per instance (the attributes the server returns: at least the three UIDs).
    """
    study, series, rest = _split_filters(filters)
    if series is not None and study is None:
        rest["SeriesInstanceUID"] = series  # a series path needs its study: filter instead
        series = None
    results = client.search_for_instances(
        study_instance_uid=study, series_instance_uid=series, search_filters=rest or None, get_remaining=True
    )
    return _datasets(results)


def search_series(client, filters: Mapping[str, str] | None = None) -> list[pydicom.Dataset]:
    """QIDO-RS series search (e.g. ``{"StudyInstanceUID": uid, "Modality": "SEG"}``); one dataset per series."""
    study, series, rest = _split_filters(filters)
    if series is not None:
        rest["SeriesInstanceUID"] = series
    results = client.search_for_series(study_instance_uid=study, search_filters=rest or None, get_remaining=True)
    return _datasets(results)


def retrieve_instances(
    client, instances: Iterable[pydicom.Dataset], folder: str | os.PathLike | None = None
) -> list[pydicom.Dataset] | list[Path]:
    """WADO-RS retrieve of each instance, as stored (no transcoding).

    Args:
        client: a ``DICOMwebClient``.
        instances: anything with ``StudyInstanceUID``, ``SeriesInstanceUID`` and ``SOPInstanceUID`` (the
            datasets of :func:`search_instances`).
        folder: when given, each instance is written (atomically) to ``folder/<study>/<series>/<sop>.dcm`` and
            the paths are returned; otherwise the datasets are.
    """
    out = []
    for inst in instances:
        study, series, sop = str(inst.StudyInstanceUID), str(inst.SeriesInstanceUID), str(inst.SOPInstanceUID)
        ds = client.retrieve_instance(study, series, sop, media_types=AS_STORED)
        out.append(ds if folder is None else save_dataset(ds, Path(folder) / study / series / f"{sop}.dcm"))
    return out


def store_instances(client, datasets: Iterable[pydicom.Dataset | str | os.PathLike]) -> pydicom.Dataset:
    """STOW-RS: store datasets (or DICOM files) on the server; returns the server's response.

    Raises:
        requests.HTTPError: the server refused the request as a whole (Orthanc answers 400 to an invalid
            instance, 409 to a study mismatch).
        RuntimeError: the server accepted the request but refused some instances (a FailedSOPSequence in its
            response; the message lists them).
    """
    items = [d if isinstance(d, pydicom.Dataset) else pydicom.dcmread(d) for d in datasets]
    response = client.store_instances(items)
    failed = response.get("FailedSOPSequence") if response is not None else None
    if failed:
        listed = [(str(f.get("ReferencedSOPInstanceUID")), f.get("FailureReason")) for f in failed]
        raise RuntimeError(f"STOW-RS refused {len(failed)} instance(s) (SOP instance UID, reason): {listed}.")
    return response


def fetch(url: str, folder: str | os.PathLike, **client_kwargs) -> list[Path]:
    """Search the instances that ``url``'s filters select and retrieve them into ``folder`` (see
    :func:`retrieve_instances`); e.g. ``fetch("dicomweb://127.0.0.1:8042/dicom-web?StudyInstanceUID=1.2.3", "in")``.

    Raises:
        ValueError: the address has no filter (it would fetch the whole archive).
    """
    _, filters = parse_dicomweb_url(url)
    if not filters:
        raise ValueError(f"{url!r}: give a filter (e.g. ?StudyInstanceUID=...) rather than fetch the whole archive.")
    client = make_client(url, **client_kwargs)
    return retrieve_instances(client, search_instances(client, filters), folder)
