"""MONAI's ITKReader (the `itk` extra) and our pydicom path give the same pixels and geometry."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_cxr_io import REAL_DICOM, write_dicom

from monai_mcx.transforms.io import LoadCXR

itk = pytest.importorskip("itk", reason="itk not installed (pip install itk; CI installs it)")


def _itk(path) -> tuple[np.ndarray, np.ndarray]:
    """ITKReader -> (W, H) float array min-max scaled, and its (x, y) spacing.

    ITKReader (``reverse_indexing=True``) already gives spatial dim 0 = x; a single-frame DICOM comes
    back as ``(W, H, 1)``, squeezed here. ITK applies the rescale slope/intercept but no VOI window and
    no MONOCHROME1 inversion, so the comparison uses min-max scaled MONOCHROME2 images without a window.
    """
    from monai.transforms import LoadImage

    x = LoadImage(reader="ITKReader", image_only=True, ensure_channel_first=True)(str(path))
    a = x.squeeze().numpy().astype(np.float32)
    assert a.ndim == 2, x.shape
    a = (a - a.min()) / max(float(a.max() - a.min()), 1e-12)
    spacing = np.asarray(x.meta.get("spacing", np.abs(np.diag(x.affine.numpy())[:3])), dtype=float)[:2]
    return a, spacing


def _ours(path) -> tuple[np.ndarray, np.ndarray]:
    # min-max on both sides: ITK has no stored-range / window mapping, so _itk min-max normalises (the real
    # SIIM file's pixels end at 254: our default pipeline's x / 255 differs from ITK's x / 254 by design)
    y = LoadCXR(apply_voi=False, scale="minmax")(path)
    return y[0].numpy(), np.asarray(y.meta["pixel_spacing"], dtype=float)


def test_itk_matches_pydicom_on_synthetic_non_square_dicom(tmp_path):
    rng = np.random.default_rng(0)
    px = rng.integers(0, 4095, (40, 72)).astype(np.uint16)  # 40 rows x 72 columns
    px[:5, :10] = 4095  # a bright top-left corner pins the orientation
    path = write_dicom(tmp_path / "ns.dcm", px, bits_stored=12, slope=2.0, intercept=-100, spacing=(0.5, 0.25))
    # a CR file: ITK (GDCM) reads ImagerPixelSpacing for the CR SOP class and ignores PixelSpacing there
    # (it reports 1.0); real CR files carry ImagerPixelSpacing, which our reader also falls back to
    import pydicom

    ds = pydicom.dcmread(path)
    ds.ImagerPixelSpacing = ds.PixelSpacing
    ds.save_as(path)
    a, sp_itk = _itk(path)
    b, sp_ours = _ours(path)
    assert a.shape == b.shape == (72, 40)  # (W, H)
    assert float(b[:10, :5].min()) == pytest.approx(1.0)
    np.testing.assert_allclose(a, b, atol=1e-5)
    np.testing.assert_allclose(sp_itk, sp_ours)
    np.testing.assert_allclose(sp_ours, (0.25, 0.5))  # (x, y): column spacing first


@pytest.mark.shared
def test_itk_matches_pydicom_on_real_dicom():
    if not REAL_DICOM.is_file():
        pytest.skip(
            f"real DICOM not found at {REAL_DICOM} (the shared cxr-real pack; set MCX_SHARED to its parent folder)"
        )
    import pydicom
    from pydicom.pixels import get_decoder

    if not get_decoder(pydicom.uid.JPEGBaseline8Bit).is_available:
        pytest.skip("no pydicom JPEG plugin installed (pip install pillow or pylibjpeg) to decode the real DICOM")
    a, sp_itk = _itk(REAL_DICOM)
    b, sp_ours = _ours(REAL_DICOM)
    assert a.shape == b.shape == (1024, 1024)
    # the two JPEG decoders may differ by one grey level
    assert float(np.abs(a - b).max()) <= 2.0 / 255 + 1e-6 and float(np.abs(a - b).mean()) < 0.5 / 255
    np.testing.assert_allclose(sp_itk, sp_ours)
    # orientation: the same image, not its transpose
    assert float(np.abs(a - b).mean()) < float(np.abs(a.T - b).mean()) / 10
    assert torch.allclose(torch.as_tensor(a), torch.as_tensor(b), atol=2.0 / 255 + 1e-6)
