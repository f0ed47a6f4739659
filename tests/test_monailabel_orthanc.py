"""End to end: MONAI Label on a PACS. The app (monailabel_app/) served by the real MONAI Label server with
``--studies http://127.0.0.1:<port>/dicom-web``, a throw-away Orthanc with its DICOMweb plugin
(``tests/orthanc_fixture.py``) as the datastore (issue 22 item 5).

* STOW a synthetic DX radiograph and, with the shared pack, a real RSNA DICOM (CR, JPEG) to Orthanc; the server lists
  both series as images (``lib/dicomweb.py``: modalities DX and CR, not MONAI Label's default CT);
* ``/infer`` on each series id returns the label (rows x cols of the study, matching the network's own mask
  computed here from the stored file) and the result JSON;
* ``PUT /datastore/label`` (tag ``final``) with a PNG label, and with a NIfTI one in MONAI's ``(W, H)`` order, stores
  a DICOM SEG (the project's writer, ``monai_mcx.dicom.seg``) back in Orthanc: QIDO finds one new SEG series in the
  study, and ``monai_mcx.dicom.read_seg`` reads it back equal to the saved mask, referencing the source;
* a label of the wrong size is refused (422) and stores nothing; an unknown series id is 404.

Skipped with a ``NOT RUN:`` reason (banner at the end of the run) when Orthanc / its DICOMweb plugin is not installed
or the MONAI Label environment cannot be built (see tests/test_monailabel.py).
"""

from __future__ import annotations

import io
import json
from urllib.parse import quote

import numpy as np
import pydicom
import pytest
from dicom_factory import make_radiograph
from test_dicom import RSNA
from test_monailabel import MODEL, _expected, _infer, _png, _request, ml_python, run_server, setup_dirs  # noqa: F401

from monai_mcx.dicom import read_seg
from monai_mcx.dicom.web import make_client, retrieve_instances, search_instances, search_series, store_instances

pytestmark = pytest.mark.slow

#: (rows, cols) of the synthetic DX: non-square, so that a transposed label is caught
DX_SHAPE = (96, 72)


@pytest.fixture(scope="module")
def pacs(orthanc, tmp_path_factory):
    """Orthanc with a synthetic DX and (with the shared pack) one RSNA CR stored; ``{"client", "images": {name:
    {"path", "header"}}}``."""
    root = tmp_path_factory.mktemp("pacs_sources")
    dx = root / "dx.dcm"
    make_radiograph(shape=DX_SHAPE, modality="DX", patient_id="MCXML1", seed=3).save_as(dx, enforce_file_format=True)
    images = {"dx": dx}
    rsna = sorted(RSNA.glob("*.dcm"))[:1] if RSNA.is_dir() else []
    if rsna:
        images["rsna"] = rsna[0]
    client = make_client(orthanc["dicomweb"])
    store_instances(client, list(images.values()))
    return {
        **orthanc,
        "client": client,
        "images": {k: {"path": p, "header": pydicom.dcmread(p, stop_before_pixels=True)} for k, p in images.items()},
    }


@pytest.fixture(scope="module")
def server(pacs, ml_python, setup_dirs):  # noqa: F811 - pacs first: without Orthanc the test skips before building the venv
    env = {"MONAI_LABEL_DATASTORE_CACHE_PATH": str(setup_dirs["root"] / "dicomweb-cache")}
    with run_server(ml_python, setup_dirs, pacs["dicomweb"], env=env) as srv:
        yield {**pacs, **setup_dirs, **srv}


def _series(server, name: str) -> str:
    return str(server["images"][name]["header"].SeriesInstanceUID)


def _put_label(base: str, image_id: str, filename: str, data: bytes, tag: str = "final"):
    boundary = "mcx-label-boundary-51c2"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="params"\r\n\r\n{{}}\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="label"; filename="{filename}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return _request(
        "PUT",
        f"{base}/datastore/label?image={quote(image_id)}&tag={tag}",
        body,
        {"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )


def _png_bytes(mask: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _nifti_bytes(mask_wh: np.ndarray, tmp_path) -> bytes:
    import nibabel as nib

    path = tmp_path / "label.nii.gz"
    nib.save(nib.Nifti1Image(mask_wh.astype(np.uint8), np.eye(4)), str(path))
    return path.read_bytes()


def _seg_series(server, name: str) -> list[str]:
    study = str(server["images"][name]["header"].StudyInstanceUID)
    found = search_series(server["client"], {"StudyInstanceUID": study, "Modality": "SEG"})
    return [str(s.SeriesInstanceUID) for s in found]


def _read_back(server, name: str, series_uid: str, folder) -> tuple[np.ndarray, pydicom.Dataset]:
    study = str(server["images"][name]["header"].StudyInstanceUID)
    instances = search_instances(server["client"], {"StudyInstanceUID": study, "SeriesInstanceUID": series_uid})
    (path,) = retrieve_instances(server["client"], instances, folder)
    return read_seg(path), pydicom.dcmread(path)


# ------------------------------------------------------------------------------------------------------
def test_images_are_the_pacs_series(server):
    for name in server["images"]:
        status, result, _ = _infer(server["base"], _series(server, name))
        assert status == 200, (name, result)
    status, text, _ = _infer(server["base"], "1.2.3.4.5.6.7.8.9")  # a series Orthanc does not have
    assert status == 404 and "1.2.3.4.5.6.7.8.9" in text


@pytest.mark.parametrize("name", ["dx", "rsna"])
def test_infer_on_a_pacs_instance(server, name):
    if name not in server["images"]:
        pytest.skip("the shared RSNA pack is not here (the synthetic DX case still runs)")
    header = server["images"][name]["header"]
    path = server["images"][name]["path"]
    _, prob, _ = _expected(server["net"], server["decoder"], path, 0.5)
    thr = float(np.median(prob))
    expected, _, _ = _expected(server["net"], server["decoder"], path, thr)
    status, result, label = _infer(server["base"], _series(server, name), seg_threshold=thr)
    assert status == 200, result
    mask = _png(label)
    assert mask.shape == (header.Rows, header.Columns)
    assert float((mask == expected).mean()) > 0.97  # read from the WADO download with the bundle's DICOM reader
    assert set(result["class_probabilities"]) == {"pneumonia"}
    assert result["size_wh"] == [header.Columns, header.Rows]


def test_saved_label_goes_back_as_dicom_seg(server, tmp_path):
    header = server["images"]["dx"]["header"]
    rows, cols = int(header.Rows), int(header.Columns)
    status, _, label = _infer(server["base"], _series(server, "dx"))  # what the annotator starts from
    assert status == 200
    mask = _png(label).astype(bool)
    mask[10:40, 5:60] = True  # ... and corrects: an asymmetric, non-square block
    mask[70:90, 50:70] = False
    assert _seg_series(server, "dx") == []

    status, _, body = _put_label(server["base"], _series(server, "dx"), "label.png", _png_bytes(mask))
    assert status == 200, body.decode(errors="replace") + server["log"].read_text()[-3000:]
    assert json.loads(body)["image"] == _series(server, "dx")
    (seg_uid,) = _seg_series(server, "dx")
    back, ds = _read_back(server, "dx", seg_uid, tmp_path / "seg")
    assert back.shape == (rows, cols)
    np.testing.assert_array_equal(back, mask)
    assert ds.Modality == "SEG" and ds.SeriesNumber == 902 and ds.StudyInstanceUID == header.StudyInstanceUID
    (ref,) = ds.ReferencedSeriesSequence
    assert ref.SeriesInstanceUID == header.SeriesInstanceUID
    assert ref.ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == header.SOPInstanceUID

    # a label of the wrong size (transposed) is refused, and nothing is stored
    status, _, body = _put_label(server["base"], _series(server, "dx"), "label.png", _png_bytes(mask.T))
    assert status == 422 and b"rows, cols" in body, body
    assert _seg_series(server, "dx") == [seg_uid]
    assert server["proc"].poll() is None

    # a viewer's raw buffer (.bin: uint8, rows x cols in C order, MONAI Label's binary_to_image) is a second SEG
    other = np.zeros((rows, cols), np.uint8)
    other[50:60, 3:33] = 1
    status, _, body = _put_label(server["base"], _series(server, "dx"), "label.bin", other.tobytes())
    assert status == 200, body.decode(errors="replace") + server["log"].read_text()[-3000:]
    (new_uid,) = set(_seg_series(server, "dx")) - {seg_uid}
    np.testing.assert_array_equal(_read_back(server, "dx", new_uid, tmp_path / "seg2")[0], other.astype(bool))


def test_nifti_label_of_a_real_rsna_image(server, tmp_path):
    if "rsna" not in server["images"]:
        pytest.skip("the shared RSNA pack is not here (the synthetic DX case still runs)")
    header = server["images"]["rsna"]["header"]
    mask = np.zeros((header.Rows, header.Columns), bool)
    mask[100:400, 200:700] = True
    data = _nifti_bytes(mask.T, tmp_path)  # MONAI order (W, H), as MONAI Label writes NIfTI labels
    status, _, body = _put_label(server["base"], _series(server, "rsna"), "label.nii.gz", data)
    assert status == 200, body.decode(errors="replace") + server["log"].read_text()[-3000:]
    (seg_uid,) = _seg_series(server, "rsna")
    back, ds = _read_back(server, "rsna", seg_uid, tmp_path / "seg")
    np.testing.assert_array_equal(back, mask)
    assert ds.LossyImageCompression == "01"  # the JPEG source's lossy history is carried over
