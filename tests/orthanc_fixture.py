"""A throw-away Orthanc PACS with its DICOMweb plugin, for the DICOMweb tests (``orthanc`` fixture).

Starts the Debian ``Orthanc`` binary (packages ``orthanc`` and ``orthanc-dicomweb``) with a generated JSON
configuration: its own storage folder under the test's temporary folder, a free HTTP port, ``RemoteAccessAllowed``
false (Orthanc 1.10 has no bind-address option: it listens on all interfaces but answers only 127.0.0.1), no
authentication, and the DICOM (DIMSE) server, WebDAV and the Explorer off (the tests speak DICOMweb only, so no
DICOM port is opened at all). The system service that the Debian package installs (port 8042) is not used.

When the binary or the plugin is missing the fixture skips with a reason starting ``NOT RUN:`` (repeated in the
banner at the end of the pytest output, see ``tests/conftest.py``); with ``MCX_REQUIRE_ORTHANC=1`` it fails
instead. Install them with ``apt-get install -y orthanc orthanc-dicomweb`` (``.ci/run`` does).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

NOT_RUN = "NOT RUN: Orthanc DICOMweb end-to-end test:"
#: where Debian's orthanc-dicomweb puts the plugin (``dpkg -L orthanc-dicomweb``); $MCX_ORTHANC_PLUGIN overrides
PLUGIN_CANDIDATES = (
    "/usr/share/orthanc/plugins/libOrthancDicomWeb.so",
    "/usr/lib/orthanc/libOrthancDicomWeb.so",
)
START_TIMEOUT_S = 60


def _skip_or_fail(why: str):
    if os.environ.get("MCX_REQUIRE_ORTHANC") == "1":
        pytest.fail(f"{why} (MCX_REQUIRE_ORTHANC=1)")
    pytest.skip(f"{NOT_RUN} {why}")


def plugin_candidates() -> tuple[str, ...]:
    env = os.environ.get("MCX_ORTHANC_PLUGIN")
    return (env,) if env else PLUGIN_CANDIDATES


def find_orthanc() -> tuple[str | None, str | None]:
    """(path of the ``Orthanc`` binary or None, path of the DICOMweb plugin or None)."""
    binary = shutil.which("Orthanc") or next((p for p in ("/usr/sbin/Orthanc",) if os.access(p, os.X_OK)), None)
    plugin = next((p for p in plugin_candidates() if Path(p).is_file()), None)
    return binary, plugin


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def orthanc_config(root: Path, http_port: int, plugin: str) -> dict:
    """The JSON configuration of the test instance (see the module docstring)."""
    return {
        "Name": "monai_mcx-test",
        "StorageDirectory": str(root / "storage"),
        "IndexDirectory": str(root / "storage"),
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomServerEnabled": False,
        "WebDavEnabled": False,
        "OrthancExplorerEnabled": False,
        "HttpThreadsCount": 4,
        "ConcurrentJobs": 1,
        "SaveJobs": False,
        "Plugins": [plugin],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False},
    }


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    """A running Orthanc; yields ``{"base": "http://127.0.0.1:<port>", "dicomweb": "<base>/dicom-web",
    "root": <its folder>}`` and stops it (SIGTERM, then SIGKILL) afterwards."""
    binary, plugin = find_orthanc()
    if binary is None:
        _skip_or_fail("the Orthanc binary is not installed (apt-get install orthanc orthanc-dicomweb)")
    if plugin is None:
        _skip_or_fail(f"the Orthanc DICOMweb plugin is not installed (looked in {list(plugin_candidates())})")
    root = tmp_path_factory.mktemp("orthanc")
    port = free_port()
    config = root / "orthanc.json"
    config.write_text(json.dumps(orthanc_config(root, port, plugin), indent=2))
    log_path = root / "orthanc.log"
    base = f"http://127.0.0.1:{port}"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([binary, str(config)], stdout=log, stderr=subprocess.STDOUT, cwd=root)
    try:
        t0 = time.time()
        while not (_answers(f"{base}/system") and _answers(f"{base}/dicom-web/studies")):
            if proc.poll() is not None:
                pytest.fail(f"Orthanc exited ({proc.returncode}):\n{log_path.read_text()[-4000:]}")
            if time.time() - t0 > START_TIMEOUT_S:
                pytest.fail(f"Orthanc did not answer within {START_TIMEOUT_S} s:\n{log_path.read_text()[-4000:]}")
            time.sleep(0.2)
        yield {"base": base, "dicomweb": f"{base}/dicom-web", "root": root, "log": log_path}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
