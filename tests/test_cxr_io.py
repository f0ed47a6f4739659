"""CXR loading (DICOM/PNG/JPEG/NIfTI) -> (1, W, H) float in [0, 1]; bad input names the file."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from monai_mcx.data.errors import DataError
from monai_mcx.transforms.io import LoadCXR, LoadCXRd


def _shared() -> Path:
    env = os.environ.get("MCX_SHARED")
    return Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared"


REAL = _shared() / "data" / "cxr-real"
REAL_DICOM = REAL / "dicom" / "1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"


def write_dicom(path, pixels: np.ndarray, photometric="MONOCHROME2", bits_stored=12, slope=None, intercept=None,
                window=None, spacing=(0.5, 0.25)):
    """An uncompressed single-frame DICOM with ``pixels`` (rows, cols) uint16."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"  # CR
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientID = "P1"
    ds.Modality = "CR"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    ds.PixelSpacing = [str(spacing[0]), str(spacing[1])]
    if slope is not None:
        ds.RescaleSlope, ds.RescaleIntercept = str(slope), str(intercept or 0)
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = str(window[0]), str(window[1])
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(str(path), enforce_file_format=True)
    return path


# ---------------------------------------------------------------------------- PNG / JPEG / NIfTI


def test_png8_matches_monai_layout(tmp_path):
    from monai.transforms import LoadImage

    rows, cols = 30, 50  # H, W: non-square to catch transposition
    a = (np.arange(rows * cols).reshape(rows, cols) % 256).astype(np.uint8)
    p = tmp_path / "x.png"
    Image.fromarray(a).save(p)
    x = LoadCXR()(p)
    ref = LoadImage(image_only=True, ensure_channel_first=True)(str(p))
    assert tuple(x.shape) == (1, cols, rows) == tuple(ref.shape)
    assert x.dtype == torch.float32
    np.testing.assert_allclose(x.numpy(), ref.numpy() / 255.0, atol=1e-6)
    assert float(x[0, 7, 3]) == pytest.approx(a[3, 7] / 255.0)  # (x, y) indexing
    assert x.meta["filename_or_obj"] == str(p)


def test_png16_and_rgb_jpeg_one_channel(tmp_path):
    a = np.linspace(1000, 4000, 20 * 10).reshape(20, 10).astype(np.uint16)
    p = tmp_path / "x16.png"
    Image.fromarray(a).save(p)
    x = LoadCXR()(p)
    assert tuple(x.shape) == (1, 10, 20) and float(x.min()) == 0.0 and float(x.max()) == 1.0
    rgb = np.stack([np.tile(np.arange(0, 250, 10, dtype=np.uint8), (16, 1))] * 3, -1)  # (16, 25, 3) gray content
    pj = tmp_path / "x.jpg"
    Image.fromarray(rgb).save(pj, quality=100)
    y = LoadCXR()(pj)
    assert tuple(y.shape) == (1, 25, 16)
    assert 0.0 <= float(y.min()) and float(y.max()) <= 1.0
    assert float(y[0, 20, 8]) > float(y[0, 2, 8])


def test_nifti_same_layout_as_png(tmp_path):
    import nibabel as nib

    rows, cols = 12, 18
    a = np.random.default_rng(0).integers(0, 255, (rows, cols)).astype(np.uint8)
    Image.fromarray(a).save(tmp_path / "x.png")
    nib.save(nib.Nifti1Image(a.T.astype(np.float32), np.diag([0.7, 0.7, 1, 1])), str(tmp_path / "x.nii.gz"))
    x = LoadCXR(scale="minmax")(tmp_path / "x.png")
    y = LoadCXR()(tmp_path / "x.nii.gz")
    assert tuple(y.shape) == (1, cols, rows)
    np.testing.assert_allclose(x.numpy(), y.numpy(), atol=1e-6)
    assert y.meta["pixel_spacing"] == pytest.approx((0.7, 0.7))


# ---------------------------------------------------------------------------- DICOM


def test_dicom_monochrome1_rescale_window_spacing(tmp_path):
    rows, cols = 16, 24
    px = np.full((rows, cols), 3000, np.uint16)
    px[:, :8] = 500  # a low stored value
    p = write_dicom(tmp_path / "m1.dcm", px, photometric="MONOCHROME1", bits_stored=12, slope=2, intercept=-100,
                    window=(3000, 6000), spacing=(0.5, 0.25))
    x = LoadCXR()(p)
    assert tuple(x.shape) == (1, cols, rows)
    # MONOCHROME1: low stored values are bright after inversion
    assert float(x[0, 2, 5]) == pytest.approx(1.0) and float(x[0, 20, 5]) == pytest.approx(0.0)
    assert x.meta["photometric_interpretation"] == "MONOCHROME1" and x.meta["voi_applied"]
    assert x.meta["pixel_spacing"] == pytest.approx((0.25, 0.5))  # (x, y) from PixelSpacing (row, col)
    assert float(x.affine[0, 0]) == pytest.approx(0.25)
    raw = LoadCXR(invert_monochrome1=False)(p)
    np.testing.assert_allclose(raw.numpy(), 1 - x.numpy(), atol=1e-6)


def test_dicom_16_bits_stored(tmp_path):
    px = np.array([[0, 65535], [32768, 1]], np.uint16)
    x = LoadCXR()(write_dicom(tmp_path / "b16.dcm", px, bits_stored=16))
    assert float(x[0, 1, 0]) == pytest.approx(1.0) and float(x[0, 0, 0]) == 0.0


@pytest.mark.shared
def test_real_siim_dicom_loads_or_names_plugin(monkeypatch):
    if not REAL_DICOM.is_file():
        pytest.skip(f"real DICOM not found at {REAL_DICOM} (set MCX_SHARED to the shared folder)")
    import pydicom
    from pydicom.pixels import get_decoder

    decoder = get_decoder(pydicom.uid.JPEGBaseline8Bit)
    if decoder.is_available:
        x = LoadCXR()(REAL_DICOM)
        assert tuple(x.shape) == (1, 1024, 1024)
        assert x.meta["pixel_spacing"] == pytest.approx((0.168, 0.168))
        assert 0.0 <= float(x.min()) < float(x.max()) <= 1.0
    # without any JPEG plugin, the error names the file and the plugin to install
    monkeypatch.setattr(decoder, "_available", {})
    with pytest.raises(DataError, match="pylibjpeg") as e:
        LoadCXR()(REAL_DICOM)
    assert REAL_DICOM.name in str(e.value)


def test_rg1_uncr_monochrome1_lungs_dark():
    pdata = pytest.importorskip("pydicom.data", reason="pydicom.data missing")
    try:
        path = pdata.get_testdata_file("RG1_UNCR.dcm")
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"pydicom-data not installed ({e})")
    if path is None:
        pytest.skip("RG1_UNCR.dcm not available: pip install pydicom-data")
    x = LoadCXR()(path)
    assert x.meta["photometric_interpretation"] == "MONOCHROME1" and x.meta["bits_stored"] == 15
    a = x[0].numpy()  # (W, H)
    w, h = a.shape
    ys = slice(int(h * 0.3), int(h * 0.6))
    lungs = np.concatenate([a[int(w * 0.2):int(w * 0.35), ys].ravel(), a[int(w * 0.65):int(w * 0.8), ys].ravel()]).mean()
    mediastinum = a[int(w * 0.45):int(w * 0.55), ys].mean()
    assert lungs < mediastinum - 0.1


# ---------------------------------------------------------------------------- bad input


def test_missing_file_named(tmp_path):
    p = tmp_path / "nowhere.png"
    with pytest.raises(DataError, match="nowhere.png.*not found"):
        LoadCXR()(p)
    with pytest.raises(DataError, match="nowhere.png"):
        LoadCXRd(keys="image")({"image": str(p)})


def test_non_image_and_truncated_files_named(tmp_path):
    txt = tmp_path / "notes.png"
    txt.write_text("this is not an image")
    with pytest.raises(DataError, match="notes.png.*not an image"):
        LoadCXR()(txt)
    a = np.random.default_rng(1).integers(0, 255, (64, 64)).astype(np.uint8)
    good = tmp_path / "good.png"
    Image.fromarray(a).save(good)
    trunc = tmp_path / "trunc.png"
    trunc.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    with pytest.raises(DataError, match="trunc.png"):
        LoadCXR()(trunc)
    d = write_dicom(tmp_path / "full.dcm", np.ones((32, 32), np.uint16))
    td = tmp_path / "trunc.dcm"
    td.write_bytes(d.read_bytes()[:-500])
    with pytest.raises(DataError, match="trunc.dcm"):
        LoadCXR()(td)
    fake = tmp_path / "fake.dcm"
    fake.write_bytes(b"\x00" * 10)
    with pytest.raises(DataError, match="fake.dcm"):
        LoadCXR()(fake)


def test_mask_size_mismatch_and_bad_boxes_named(tmp_path):
    Image.fromarray(np.zeros((20, 30), np.uint8)).save(tmp_path / "img.png")
    Image.fromarray(np.ones((20, 20), np.uint8)).save(tmp_path / "mask.png")
    Image.fromarray(np.ones((20, 30), np.uint8)).save(tmp_path / "okmask.png")
    t = LoadCXRd(keys="image", mask_keys="mask", box_keys="boxes")
    with pytest.raises(DataError, match="mask.png.*20x20.*30x20"):
        t({"image": str(tmp_path / "img.png"), "mask": str(tmp_path / "mask.png"), "boxes": None})
    out = t({"image": str(tmp_path / "img.png"), "mask": str(tmp_path / "okmask.png"), "boxes": [[1, 2, 29, 19]]})
    assert tuple(out["mask"].shape) == (1, 30, 20) and float(out["mask"].max()) == 1.0
    assert t({"image": str(tmp_path / "img.png"), "mask": None, "boxes": None})["mask"] is None
    with pytest.raises(DataError, match="img.png.*outside"):
        t({"image": str(tmp_path / "img.png"), "mask": None, "boxes": [[1, 2, 31, 10]]})
    with pytest.raises(DataError, match="img.png.*x2 <= x1"):
        t({"image": str(tmp_path / "img.png"), "mask": None, "boxes": [[10, 2, 5, 10]]})
