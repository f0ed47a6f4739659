"""A saved MONAI Label label as a DICOM SEG (monailabel_app/lib/labels.py; no MONAI Label needed): label files in
both orders (pictures rows x cols, volumes MONAI's (W, H)) give the same mask, a wrong size is refused with both
sizes named, and a lossy JPEG source without a compression ratio gets one (highdicom 0.22, the MONAI Label venv's,
needs it)."""

from __future__ import annotations

import importlib.util
import sys

import nibabel as nib
import numpy as np
import pydicom
import pytest
from dicom_factory import make_radiograph
from PIL import Image

from monai_mcx.dicom import read_seg
from monai_mcx.dicom.io import save_dataset

from conftest import REPO


def _labels_module():
    spec = importlib.util.spec_from_file_location("mcx_ml_labels", REPO / "monailabel_app" / "lib" / "labels.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def mask():
    m = np.zeros((40, 30), np.uint8)  # (rows, cols), asymmetric
    m[5:12, 3:25] = 1
    m[20:35, 10:14] = 1
    return m


def test_picture_and_volume_labels_give_the_same_mask(tmp_path, mask):
    labels = _labels_module()
    Image.fromarray(mask * 255).save(tmp_path / "l.png")
    Image.fromarray(np.stack([mask * 200] * 3, -1)).save(tmp_path / "rgb.png")
    nib.save(nib.Nifti1Image(mask.T.copy(), np.eye(4)), str(tmp_path / "l.nii.gz"))  # (W, H)
    nib.save(nib.Nifti1Image(mask.T[..., None].copy(), np.eye(4)), str(tmp_path / "l1.nii.gz"))  # (W, H, 1)
    for name in ("l.png", "rgb.png", "l.nii.gz", "l1.nii.gz"):
        np.testing.assert_array_equal(labels.read_label_mask(tmp_path / name, 40, 30), mask.astype(bool), name)
    with pytest.raises(ValueError, match=r"l.png.*\(40, 30\).*\(30, 40\)"):
        labels.read_label_mask(tmp_path / "l.png", 30, 40)
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="bad.png: not a readable label"):
        labels.read_label_mask(tmp_path / "bad.png", 40, 30)


def test_label_to_seg_round_trip_and_lossy_ratio(tmp_path, mask):
    labels = _labels_module()
    src = make_radiograph(shape=(40, 30), modality="DX")
    src.LossyImageCompression = "01"  # said lossy, no ratio given (as the RSNA files)
    path = tmp_path / "src.dcm"
    src.save_as(path, enforce_file_format=True)
    Image.fromarray(mask).save(tmp_path / "l.png")
    header = labels.with_lossy_ratio(pydicom.dcmread(path, stop_before_pixels=True), path)
    assert float(header.LossyImageCompressionRatio) == pytest.approx(1.0)  # uncompressed bytes / stored bytes
    seg = labels.label_to_seg(path, tmp_path / "l.png", series_number=902)
    assert seg.SeriesNumber == 902 and seg.LossyImageCompression == "01"
    np.testing.assert_array_equal(read_seg(save_dataset(seg, tmp_path / "seg.dcm")), mask.astype(bool))
