"""A throw-away Orthanc PACS with its DICOMweb plugin, for tests and benchmarks (:func:`start_orthanc`).

Starts the Debian ``Orthanc`` binary (packages ``orthanc`` and ``orthanc-dicomweb``) with a generated JSON
configuration: its own storage folder, a free HTTP port, ``RemoteAccessAllowed`` false (Orthanc 1.10 has no
bind-address option: it listens on all interfaces but answers only 127.0.0.1), no authentication, and the DICOM
(DIMSE) server, WebDAV and the Explorer off (DICOMweb only, so no DICOM port is opened at all). The system service
that the Debian package installs (port 8042) is not used. Install them with
``apt-get install -y orthanc orthanc-dicomweb``.
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

__all__ = [
    "PLUGIN_CANDIDATES",
    "OrthancUnavailable",
    "find_orthanc",
    "orthanc_config",
    "start_orthanc",
    "stop_orthanc",
]

#: where Debian's orthanc-dicomweb puts the plugin (``dpkg -L orthanc-dicomweb``); $MCX_ORTHANC_PLUGIN overrides
PLUGIN_CANDIDATES = (
    "/usr/share/orthanc/plugins/libOrthancDicomWeb.so",
    "/usr/lib/orthanc/libOrthancDicomWeb.so",
)
START_TIMEOUT_S = 60


class OrthancUnavailable(RuntimeError):
    """The Orthanc binary or its DICOMweb plugin is not installed (the message says which)."""


def _plugin_candidates() -> tuple[str, ...]:
    env = os.environ.get("MCX_ORTHANC_PLUGIN")
    return (env,) if env else PLUGIN_CANDIDATES


def find_orthanc() -> tuple[str, str]:
    """``(path of the Orthanc binary, path of the DICOMweb plugin)``.

    Raises:
        OrthancUnavailable: either is missing (the message names what and where it looked).
    """
    binary = shutil.which("Orthanc") or next((p for p in ("/usr/sbin/Orthanc",) if os.access(p, os.X_OK)), None)
    if binary is None:
        raise OrthancUnavailable("the Orthanc binary is not installed (apt-get install orthanc orthanc-dicomweb)")
    plugin = next((p for p in _plugin_candidates() if Path(p).is_file()), None)
    if plugin is None:
        raise OrthancUnavailable(
            f"the Orthanc DICOMweb plugin is not installed (looked in {list(_plugin_candidates())})"
        )
    return binary, plugin


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def orthanc_config(root: Path, http_port: int, plugin: str) -> dict:
    """The JSON configuration of a throw-away instance storing under ``root/storage`` (module docstring)."""
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


def start_orthanc(folder: str | os.PathLike) -> tuple[str, subprocess.Popen]:
    """Start a throw-away Orthanc keeping its configuration, storage and log (``orthanc.log``) in ``folder``.

    Returns:
        ``(url, process)``: ``url`` is the HTTP root ``http://127.0.0.1:<port>`` (DICOMweb at ``<url>/dicom-web``);
        stop the process with :func:`stop_orthanc`.

    Raises:
        OrthancUnavailable: the binary or the plugin is missing.
        RuntimeError: Orthanc exited or did not answer within a minute (the message ends with its log).
    """
    binary, plugin = find_orthanc()
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    config = root / "orthanc.json"
    config.write_text(json.dumps(orthanc_config(root, port, plugin), indent=2))
    log_path = root / "orthanc.log"
    url = f"http://127.0.0.1:{port}"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([binary, str(config)], stdout=log, stderr=subprocess.STDOUT, cwd=root)
    t0 = time.time()
    while not (_answers(f"{url}/system") and _answers(f"{url}/dicom-web/studies")):
        if proc.poll() is not None:
            raise RuntimeError(f"Orthanc exited ({proc.returncode}):\n{log_path.read_text()[-4000:]}")
        if time.time() - t0 > START_TIMEOUT_S:
            stop_orthanc(proc)
            raise RuntimeError(f"Orthanc did not answer within {START_TIMEOUT_S} s:\n{log_path.read_text()[-4000:]}")
        time.sleep(0.2)
    return url, proc


def stop_orthanc(proc: subprocess.Popen) -> None:
    """Stop an Orthanc of :func:`start_orthanc` (SIGTERM, then SIGKILL after 20 s)."""
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
