"""End to end: the MONAI Label app (monailabel_app/) serving a tiny MultiCheXNet bundle over HTTP.

Builds the separate MONAI Label environment with ``scripts/setup_monailabel.sh`` (first time: minutes;
``$MCX_MONAILABEL_VENV`` picks another location), writes synthetic studies (non-square PNGs and one
non-square DICOM) and a freshly initialised ``densenet-tiny`` checkpoint into a temporary copy of the bundle,
starts ``monailabel.main start_server`` on 127.0.0.1 with a free port and talks plain HTTP to it:

* ``/info/`` lists the infer and train tasks;
* ``/infer`` on a PNG and on the DICOM returns a uint8 PNG label of the study's rows x cols that matches the
  network's own mask computed here, plus class probabilities, the gate and boxes in the result JSON;
  raising the gate threshold empties the mask and the boxes;
* an unknown image id or a server path outside the studies (404 alike) and a corrupt study (422) get clean errors, and the server keeps serving;
* ``/train`` runs one epoch on two annotated pairs and publishes new weights, which the next ``/infer`` uses.

Skipped only when the environment cannot be built for lack of the package index; the skip reason starts with
``NOT RUN:``, which ``tests/conftest.py`` repeats in a banner at the end of the pytest output (and
``scripts/run_tests.sh`` passes ``-rs``), so a green run that did not test the server says so. With
``MCX_REQUIRE_MONAILABEL=1`` (a CI that has the package index) the same condition fails instead.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
SETUP = REPO / "scripts" / "setup_monailabel.sh"
APP = REPO / "monailabel_app"
VENV = Path(os.environ.get("MCX_MONAILABEL_VENV", REPO / ".venv-monailabel"))
MODEL = "multichexnet"

#: the checkpoint's config: small enough for 2 CPU cores (same as tests/conftest.py SMALL)
OVERRIDES = {
    "encoder": "densenet-tiny",
    "spatial_size": [64, 64],
    "base_anchor_shapes": [[8, 8], [12, 12], [16, 10]],
}
#: (rows, cols) of the studies: non-square on purpose
PNG_SHAPES = {"cxr_a": (72, 56), "cxr_b": (60, 80), "cxr_c": (64, 64)}
DICOM_ID, DICOM_SHAPE = "cxr_dicom", (80, 66)

#: prefix of the skip reason; tests/conftest.py repeats such skips in a banner at the end of the run
NOT_RUN = "NOT RUN: MONAI Label server end-to-end test:"

NETWORK_ERRORS = (
    "Could not find a version",
    "No matching distribution",
    "Failed to establish a new connection",
    "Temporary failure in name resolution",
    "Network is unreachable",
    "ConnectTimeout",
    "ReadTimeoutError",
)


# ------------------------------------------------------------------------------------------------------
# environment
@pytest.fixture(scope="module")
def ml_python() -> Path:
    """The MONAI Label venv's python; built by scripts/setup_monailabel.sh (a no-op when up to date)."""
    t0 = time.time()
    proc = subprocess.run(
        ["bash", str(SETUP)],
        capture_output=True,
        text=True,
        timeout=3600,
        env={**os.environ, "MCX_MONAILABEL_VENV": str(VENV)},
    )
    log = proc.stdout + proc.stderr
    if proc.returncode != 0:
        tail = "\n".join(log.splitlines()[-25:])
        if any(s in log for s in NETWORK_ERRORS):
            why = f"cannot build the MONAI Label environment (package index unreachable?) in {VENV}"
            if os.environ.get("MCX_REQUIRE_MONAILABEL", "") not in ("", "0"):
                pytest.fail(f"{why}, and MCX_REQUIRE_MONAILABEL is set:\n{tail}")
            pytest.skip(f"{NOT_RUN} {why}:\n{tail}")
        pytest.fail(f"scripts/setup_monailabel.sh failed (exit {proc.returncode}):\n{tail}")
    print(f"[monailabel env] ready in {time.time() - t0:.0f} s: {VENV}")
    return VENV / "bin" / "python"


# ------------------------------------------------------------------------------------------------------
# data: studies, bundle with a tiny checkpoint
def _build_network():
    from monai.bundle import ConfigParser

    from monai_mcx.model import ModelDescription

    desc = ModelDescription(
        class_names=["pneumonia"],
        tasks=["classification", "segmentation", "localization"],
        encoder=OVERRIDES["encoder"],
        spatial_size=OVERRIDES["spatial_size"],
        base_anchor_shapes=OVERRIDES["base_anchor_shapes"],
    )
    parser = ConfigParser()
    parser.read_config(str(REPO / "bundle" / "configs" / "inference.json"))
    parser["bundle_root"] = str(REPO / "bundle")
    parser["model_description"] = desc  # the description the checkpoint is saved with (setup_dirs)
    parser.update(OVERRIDES)
    return parser, parser.get_parsed_content("network_def", instantiate=True, lazy=False)


def _write_studies(root: Path) -> dict:
    from PIL import Image

    from monai_mcx.data.synthetic import _write_dicom, synthesize_cxr

    studies = root / "studies"
    (studies / "labels" / "final").mkdir(parents=True)
    rng = np.random.default_rng(7)
    truth = {}
    for i, (sid, (rows, cols)) in enumerate(PNG_SHAPES.items()):
        img, mask, _ = synthesize_cxr(rng, max(rows, cols), positive=i != 2)
        img, mask = img[:rows, :cols], mask[:rows, :cols]
        Image.fromarray(np.clip(np.rint(img * 255), 0, 255).astype(np.uint8)).save(studies / f"{sid}.png")
        truth[sid] = mask
    img, mask, _ = synthesize_cxr(rng, max(DICOM_SHAPE), positive=True)
    _write_dicom(str(studies / f"{DICOM_ID}.dcm"), img[: DICOM_SHAPE[0], : DICOM_SHAPE[1]], "ml-test", DICOM_ID, 0)
    (studies / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    # two annotated pairs (what an annotator saves as "final" labels): the train task's data
    for sid in ("cxr_a", "cxr_b"):
        Image.fromarray(truth[sid].astype(np.uint8)).save(studies / "labels" / "final" / f"{sid}.png")
    return {"studies": studies, "truth": truth}


@pytest.fixture(scope="module")
def setup_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("monailabel")
    data = _write_studies(root)
    bundle = root / "bundle"
    shutil.copytree(REPO / "bundle" / "configs", bundle / "configs")
    (bundle / "models").mkdir()
    torch.manual_seed(0)
    parser, net = _build_network()
    with torch.no_grad():  # a confident classifier: the gate opens, so the mask and boxes are kept
        net.classification_head.fc.bias.fill_(4.0)
        net.localization_head.classification_head.cls_logits.bias.fill_(0.0)  # box scores ~0.5: boxes exist
    from monai_mcx.model import save_model

    save_model(net, parser.get_parsed_content("model_description"), bundle / "models" / "model.pt")  # + model.json
    app = root / "app"  # a copy, so that the server's logs/ and model/ stay out of the repository
    shutil.copytree(APP, app, ignore=shutil.ignore_patterns("__pycache__", "logs", "model", "bin"))
    scratch = root / "scratch"
    scratch.mkdir()
    decoder = parser.get_parsed_content("box_decoder", instantiate=True, lazy=False)
    return {"root": root, "bundle": bundle, "app": app, "scratch": scratch, "net": net, "decoder": decoder, **data}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def run_server(ml_python, d: dict, studies: str, env: dict | None = None, extra_conf: dict | None = None):
    """Start ``monailabel.main start_server`` for the app copy ``d["app"]`` and bundle ``d["bundle"]`` on
    ``studies`` (a folder, or a DICOMweb root ``http://.../dicom-web``) on a free port, with ``env`` added to the
    environment and ``extra_conf`` to the ``--conf`` pairs; yield
    ``{"base", "proc", "log"}`` once ``/info/`` answers; stop it afterwards."""
    port = _free_port()
    log_path = d["root"] / f"server-{port}.log"
    env = {
        **os.environ,
        "TMPDIR": str(d["scratch"]),
        "MONAI_LABEL_DATASTORE_FILE_EXT": json.dumps(["*.png", "*.dcm", "*.nii.gz"]),
        "BUNDLE_DOWNLOAD_SRC": "github",
        "PYTHONPATH": str(REPO),  # this checkout's monai_mcx, whatever the venv's editable install points to
        "PYTHONUNBUFFERED": "1",
        **(env or {}),
    }
    conf = {"bundle": str(d["bundle"]), "overrides": json.dumps(OVERRIDES), "zoo_source": "github", "sam2": "false"}
    conf.update(extra_conf or {})
    cmd = [str(ml_python), "-m", "monailabel.main", "start_server", "--app", str(d["app"]), "--studies", studies]
    for key, value in conf.items():
        cmd += ["--conf", key, value]
    cmd += ["--host", "127.0.0.1", "--port", str(port)]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            cmd, cwd=d["scratch"], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    base = f"http://127.0.0.1:{port}"
    try:
        t0 = time.time()
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the server exited ({proc.returncode}):\n{log_path.read_text()[-4000:]}")
            try:
                if _request("GET", f"{base}/info/", timeout=5)[0] == 200:
                    break
            except OSError:
                pass
            if time.time() - t0 > 240:
                pytest.fail(f"the server did not answer /info/ within 240 s:\n{log_path.read_text()[-4000:]}")
            time.sleep(1)
        print(f"[monailabel server] up in {time.time() - t0:.0f} s on {base}")
        yield {"base": base, "proc": proc, "log": log_path}
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=20)


@pytest.fixture(scope="module")
def server(ml_python, setup_dirs):
    with run_server(ml_python, setup_dirs, str(setup_dirs["studies"])) as srv:
        yield {**setup_dirs, **srv}


# ------------------------------------------------------------------------------------------------------
# helpers: plain HTTP with the standard library (urllib; multipart answers parsed with email)
def _request(method: str, url: str, body: bytes | None = None, headers: dict | None = None, timeout=300):
    """(status, headers, body) without raising on HTTP errors."""
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def _get(base: str, path: str):
    return _request("GET", f"{base}{path}", timeout=30)


def _multipart(fields: dict) -> tuple[bytes, str]:
    boundary = "mcx-test-boundary-7f3a"
    out = b""
    for k, v in fields.items():
        out += f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n'.encode() + v.encode() + b"\r\n"
    return out + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def _parse_multipart(body: bytes, content_type: str) -> dict:
    from email.parser import BytesParser
    from email.policy import HTTP

    msg = BytesParser(policy=HTTP).parsebytes(f"Content-Type: {content_type}\r\n\r\n".encode() + body)
    return {
        part.get_param("name", header="content-disposition"): part.get_payload(decode=True) for part in msg.iter_parts()
    }


def _infer(base: str, image_id: str, **params):
    """POST /infer/<model>?image=<id>: (status, result JSON, label bytes) or (status, error text, None)."""
    from urllib.parse import quote

    body, ctype = _multipart({"params": json.dumps(params)})
    status, headers, content = _request(
        "POST", f"{base}/infer/{MODEL}?image={quote(image_id)}", body, {"Content-Type": ctype}
    )
    if status != 200:
        return status, content.decode(errors="replace"), None
    ctype = headers.get("content-type") or headers.get("Content-Type")
    assert ctype.startswith("multipart/"), ctype
    parts = _parse_multipart(content, ctype)
    return status, json.loads(parts["params"]), parts.get("image")


def _png(data: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        assert im.mode in ("L", "P", "1"), im.mode
        return np.asarray(im)


def _expected(net, decoder, path: Path, seg_threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What the served network should give, computed here: mask (rows, cols), prob map, ungated boxes
    ``(N, 4)`` in original pixels (x = column)."""
    import torch.nn.functional as F
    from monai.transforms import Resize

    from monai_mcx.transforms.io import LoadCXR

    img = LoadCXR()(str(path))  # (1, W, H) in [0, 1], as the bundle's preprocessing (LoadCXRd alone)
    w, h = img.shape[1:]
    x = Resize(OVERRIDES["spatial_size"], mode="area")(img).as_tensor()[None].float()
    net.eval()
    with torch.no_grad():
        out = net(x)
    seg = torch.sigmoid(out["seg_logits"])
    prob = F.interpolate(seg, size=(w, h), mode="bilinear", align_corners=False)[0, 0].numpy().T
    boxes = decoder(out, x)[0]["boxes"].numpy().reshape(-1, 4)
    boxes = boxes * np.array([w / x.shape[2], h / x.shape[3]] * 2)
    return (prob >= seg_threshold).astype(np.uint8), prob, boxes


# ------------------------------------------------------------------------------------------------------
# tests
def test_info(server):
    info = json.loads(_get(server["base"], "/info/")[2])
    model = info["models"][MODEL]
    assert model["type"] == "segmentation" and model["dimension"] == 2 and model["labels"] == {"lesion": 1}
    assert MODEL in info["trainers"]
    ids = json.loads(_get(server["base"], "/datastore/?output=all")[2])["objects"].keys()
    assert {*PNG_SHAPES, DICOM_ID, "corrupt"} <= set(ids)


@pytest.mark.parametrize("image_id", ["cxr_a", "cxr_b", DICOM_ID])
def test_infer_mask_and_json(server, image_id):
    ext = ".dcm" if image_id == DICOM_ID else ".png"
    path = server["studies"] / f"{image_id}{ext}"
    rows, cols = DICOM_SHAPE if image_id == DICOM_ID else PNG_SHAPES[image_id]
    # threshold at the median of the network's own probability map: a mask with structure, so the
    # comparison below checks orientation (rows vs cols) and the restored size pixel by pixel
    _, prob, _ = _expected(server["net"], server["decoder"], path, 0.5)
    thr = float(np.median(prob))
    expected, _, boxes = _expected(server["net"], server["decoder"], path, thr)

    status, result, label = _infer(server["base"], image_id, seg_threshold=thr)
    assert status == 200, result
    mask = _png(label)
    assert mask.shape == (rows, cols)
    assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}
    agreement = float((mask == expected).mean())
    assert agreement > 0.97, agreement
    assert 0 < mask.sum() < mask.size

    probs = result["class_probabilities"]
    assert set(probs) == {"pneumonia"} and all(0.0 <= p <= 1.0 for p in probs.values())
    gate = result["gate"]
    assert (
        gate["positive"] is True
        and gate["thresholds"] == {"pneumonia": 0.5}
        and gate["rule"] == "any_class_at_threshold"
    )
    assert isinstance(result["boxes"], list) and result["boxes"] == result["boxes_ungated"]
    assert result["boxes"], "a random localization head with score_thresh 0.05 gives boxes"
    for b in result["boxes"]:
        x1, y1, x2, y2 = b["box"]
        assert 0 <= x1 < x2 <= cols and 0 <= y1 < y2 <= rows  # original pixels, x = column
        assert 0.0 <= b["score"] <= 1.0 and b["label"] == "lesion"
    got = np.array([b["box"] for b in result["boxes"]])
    assert got.shape == boxes.shape and np.allclose(got, boxes, atol=0.6), (got[:3], boxes[:3])
    assert result["size_wh"] == [cols, rows]
    assert result["mask_area_px"] == int(mask.sum())
    assert result["operating_point"]["gate_thresholds"] == gate["thresholds"]  # the point applied, stated


def test_gate_closed_empties_mask_and_boxes(server):
    status, result, label = _infer(server["base"], "cxr_b", class_thresholds=1.01, seg_threshold=0.0)
    assert status == 200, result
    assert result["gate"]["thresholds"] == {"pneumonia": 1.01} and result["gate"]["positive"] is False
    assert result["boxes"] == [] and len(result["boxes_ungated"]) > 0
    mask = _png(label)
    assert mask.shape == PNG_SHAPES["cxr_b"] and mask.sum() == 0


def test_nifti_label(server):
    import nibabel as nib

    status, result, label = _infer(server["base"], "cxr_a", result_extension=".nii.gz")
    assert status == 200, result
    f = server["scratch"] / "label_check.nii.gz"
    f.write_bytes(label)
    arr = np.asarray(nib.load(str(f)).dataobj)
    rows, cols = PNG_SHAPES["cxr_a"]
    assert arr.shape == (cols, rows)  # NIfTI in MONAI order (W, H)


def test_bad_requests_keep_the_server_serving(server):
    base = server["base"]
    status, text, _ = _infer(base, "no_such_image")
    assert status == 404 and "no_such_image" in text
    assert _get(base, "/info/")[0] == 200

    status, text, _ = _infer(base, "corrupt")
    assert status == 422 and "corrupt.png" in text, text
    assert _get(base, "/info/")[0] == 200

    status, text, _ = _infer(base, "/etc/hostname")  # a server path outside the studies: answered as a missing one
    assert status == 404 and "'/etc/hostname'" in text, text
    status, text, _ = _infer(base, "/etc/no_such_file")
    assert status == 404 and "'/etc/no_such_file'" in text, text
    assert server["proc"].poll() is None
    status, result, _ = _infer(base, "cxr_c")  # still answers inference
    assert status == 200 and "class_probabilities" in result


def test_train_one_epoch_publishes_weights(server):
    model_pt = server["bundle"] / "models" / "model.pt"
    before = model_pt.read_bytes()
    t0 = time.time()
    req = {
        "max_epochs": 1,
        "val_split": 0.0,
        "train_batch_size": 2,
        "learning_rate": 0.05,
        "dataset": "Dataset",
        "dataloader": "DataLoader",
        "device": "cpu",
    }
    status, _, body = _request(
        "POST",
        f"{server['base']}/train/{MODEL}?run_sync=true",
        json.dumps(req).encode(),
        {"Content-Type": "application/json"},
        timeout=600,
    )
    text = body.decode(errors="replace")
    assert status == 200, f"{status} {text[:2000]}\n{server['log'].read_text()[-4000:]}"
    print(f"[monailabel train] 1 epoch on 2 pairs: {time.time() - t0:.1f} s; {text[:300]}")
    stats = json.loads(text)
    assert stats.get("total_epochs") == 1, stats
    after = model_pt.read_bytes()
    assert after != before, "the train task did not publish new weights to <bundle>/models/model.pt"

    _, net = _build_network()
    state = torch.load(model_pt, map_location="cpu", weights_only=True)
    net.load_state_dict(state.get("model", state) if isinstance(state, dict) else state)
    # the frozen heads are unchanged, the segmentation head moved
    old = torch.load(io.BytesIO(before), map_location="cpu", weights_only=True)
    new = net.state_dict()
    cls_keys = [k for k in old if k.startswith("classification_head.")]
    seg_keys = [k for k in old if k.startswith("segmentation_head.") and old[k].is_floating_point()]
    assert all(torch.equal(old[k], new[k]) for k in cls_keys)
    assert any(not torch.equal(old[k], new[k]) for k in seg_keys)
    # the infer task picks up the new weights
    status, _, label_after = _infer(server["base"], "cxr_a", seg_threshold=0.5)
    assert status == 200
    assert _png(label_after).shape == PNG_SHAPES["cxr_a"]


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q", "-s"]))


# ------------------------------------------------------------------------------------------------------
# an environment that cannot be built (no package index) is a visible skip, or a failure when required
def test_offline_skip_is_reported_and_can_be_required(tmp_path):
    empty = tmp_path / "no_wheels"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "MCX_REQUIRE"))}
    env.update(
        PIP_CONFIG_FILE=os.devnull,
        PIP_NO_INDEX="1",
        PIP_FIND_LINKS=str(empty),
        PIP_RETRIES="0",
        MCX_MONAILABEL_VENV=str(tmp_path / "venv"),
        PYTHONUNBUFFERED="1",
    )
    cmd = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", f"{Path(__file__).name}::test_info"]
    offline = subprocess.run(cmd, cwd=Path(__file__).parent, env=env, capture_output=True, text=True, timeout=600)
    out = offline.stdout
    assert offline.returncode == 0, out[-3000:] + offline.stderr[-2000:]
    assert "1 skipped" in out and "SKIPPED" in out, out[-3000:]  # -rs: in pytest's short summary
    banner = out[out.index("TESTS NOT RUN") :]  # and the banner after it, at the very end
    assert f"1 skipped: {NOT_RUN}" in banner and "test_monailabel.py::test_info" in banner, out[-3000:]
    assert " -rs " in (REPO / "scripts" / "run_tests.sh").read_text(), "the suite's command lists skips"
    required = subprocess.run(
        cmd,
        cwd=Path(__file__).parent,
        env={**env, "MCX_REQUIRE_MONAILABEL": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert required.returncode == 1 and "1 error" in required.stdout, required.stdout[-3000:]
    assert "MCX_REQUIRE_MONAILABEL is set" in required.stdout, required.stdout[-3000:]
