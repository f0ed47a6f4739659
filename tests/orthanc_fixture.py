"""The throw-away Orthanc PACS of the DICOMweb tests (``orthanc`` fixture), started by
:func:`monai_mcx.dicom.orthanc.start_orthanc` (its configuration: a free port, ``RemoteAccessAllowed`` false, DICOMweb
only) in the test's temporary folder.

When the binary or the plugin is missing the fixture skips with a reason starting ``NOT RUN:`` (repeated in the
banner at the end of the pytest output, see ``tests/conftest.py``); with ``MCX_REQUIRE_ORTHANC=1`` it fails
instead. Install them with ``apt-get install -y orthanc orthanc-dicomweb`` (``.ci/run`` does).
"""

from __future__ import annotations

import os

import pytest

from monai_mcx.dicom.orthanc import OrthancUnavailable, start_orthanc, stop_orthanc

NOT_RUN = "NOT RUN: Orthanc DICOMweb end-to-end test:"


def _skip_or_fail(why: str):
    if os.environ.get("MCX_REQUIRE_ORTHANC") == "1":
        pytest.fail(f"{why} (MCX_REQUIRE_ORTHANC=1)")
    pytest.skip(f"{NOT_RUN} {why}")


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    """A running Orthanc; yields ``{"base": "http://127.0.0.1:<port>", "dicomweb": "<base>/dicom-web",
    "root": <its folder>, "log": <its log>}`` and stops it (SIGTERM, then SIGKILL) afterwards."""
    root = tmp_path_factory.mktemp("orthanc")
    try:
        base, proc = start_orthanc(root)
    except OrthancUnavailable as e:
        _skip_or_fail(str(e))
    except RuntimeError as e:
        pytest.fail(str(e))
    try:
        yield {"base": base, "dicomweb": f"{base}/dicom-web", "root": root, "log": root / "orthanc.log"}
    finally:
        stop_orthanc(proc)
