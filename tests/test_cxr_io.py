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


def write_dicom(
    path,
    pixels: np.ndarray,
    photometric="MONOCHROME2",
    bits_stored=12,
    slope=None,
    intercept=None,
    window=None,
    spacing=(0.5, 0.25),
    presentation_lut_shape=None,
):
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
    if presentation_lut_shape is not None:
        ds.PresentationLUTShape = presentation_lut_shape
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(str(path), enforce_file_format=True)
    return path


# ---------------------------------------------------------------------------- PNG / JPEG / NIfTI


def test_png8_matches_monai_layout(tmp_path):
    from monai.transforms import LoadImage

    rows, cols = 40, 56  # H, W: non-square to catch transposition
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
    a = np.linspace(1000, 4000, 40 * 36).reshape(40, 36).astype(np.uint16)
    p = tmp_path / "x16.png"
    Image.fromarray(a).save(p)
    x = LoadCXR()(p)
    assert tuple(x.shape) == (1, 36, 40) and float(x.min()) == 0.0 and float(x.max()) == 1.0
    rgb = np.stack([np.tile(np.arange(0, 250, 5, dtype=np.uint8), (40, 1))] * 3, -1)  # (40, 50, 3) gray content
    pj = tmp_path / "x.jpg"
    Image.fromarray(rgb).save(pj, quality=100)
    y = LoadCXR()(pj)
    assert tuple(y.shape) == (1, 50, 40)
    assert 0.0 <= float(y.min()) and float(y.max()) <= 1.0
    assert float(y[0, 40, 8]) > float(y[0, 2, 8])


def test_nifti_same_layout_as_png(tmp_path):
    import nibabel as nib

    rows, cols = 36, 48
    a = np.random.default_rng(0).integers(0, 255, (rows, cols)).astype(np.uint8)
    Image.fromarray(a).save(tmp_path / "x.png")
    nib.save(nib.Nifti1Image(a.T.astype(np.float32), np.diag([0.7, 0.7, 1, 1])), str(tmp_path / "x.nii.gz"))
    x = LoadCXR(scale="minmax")(tmp_path / "x.png")
    y = LoadCXR()(tmp_path / "x.nii.gz")
    assert tuple(y.shape) == (1, cols, rows)
    np.testing.assert_allclose(x.numpy(), y.numpy(), atol=1e-6)
    assert y.meta["pixel_spacing"] == pytest.approx((0.7, 0.7))


# ---------------------------------------------------------------------------- DICOM


def _linear_window(m: np.ndarray, center: float, width: float) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2.1 LINEAR window mapped to [0, 1] (written here, independently of pydicom)."""
    return np.clip((m - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)


def test_dicom_monochrome1_rescale_window_spacing(tmp_path):
    """Each step -- modality LUT, VOI window, MONOCHROME1, spacing -- changes the expected output."""
    rows, cols = 32, 48
    r, c = np.mgrid[0:rows, 0:cols]
    px = (400 + 25 * c + r).astype(np.uint16)  # stored 400..1606: a ramp, partly below / inside / above the window
    slope, intercept, center, width = 2.0, -100.0, 2000.5, 1001.0  # modality 700..3112, window [1500, 2500]
    p = write_dicom(
        tmp_path / "m1.dcm",
        px,
        photometric="MONOCHROME1",
        bits_stored=12,
        slope=slope,
        intercept=intercept,
        window=(center, width),
        spacing=(0.5, 0.25),
    )
    x = LoadCXR()(p)
    assert tuple(x.shape) == (1, cols, rows)
    got = x[0].numpy().T  # (rows, cols)
    expected = 1.0 - _linear_window(slope * px + intercept, center, width)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    # the test can fail: leaving out any one step gives a different image
    wrong = {
        "identity modality LUT": 1.0 - _linear_window(px.astype(float), center, width),
        "identity VOI LUT (min-max)": 1.0 - (px - px.min()) / (px.max() - px.min()),
        "no MONOCHROME1 inversion": _linear_window(slope * px + intercept, center, width),
    }
    for step, alt in wrong.items():
        assert np.abs(alt - expected).max() > 0.1, step
    assert 0.0 < expected.mean() < 1.0 and (expected == 0).any() and (expected == 1).any()  # clipped both sides
    assert x.meta["photometric_interpretation"] == "MONOCHROME1" and x.meta["voi_applied"] and x.meta["inverted"]
    # spacing: PixelSpacing = (row 0.5, column 0.25) -> (x, y) = (0.25, 0.5); swapped, the test fails
    assert x.meta["pixel_spacing"] == pytest.approx((0.25, 0.5))
    assert np.diag(x.affine.numpy())[:2] == pytest.approx([0.25, 0.5])
    raw = LoadCXR(invert_monochrome1=False)(p)
    np.testing.assert_allclose(raw.numpy(), 1 - x.numpy(), atol=1e-6)


# ---------------------------------------------------------------------------- the intensity pipeline (#13.11)


def test_window_maps_the_window_not_the_image_range(tmp_path):
    px = np.linspace(1750, 2250, 32 * 40).reshape(32, 40).astype(np.uint16)  # fills half the window [1500, 2500]
    x = LoadCXR()(write_dicom(tmp_path / "w.dcm", px, bits_stored=12, window=(2000.5, 1001)))
    expected = _linear_window(px.astype(float), 2000.5, 1001)
    np.testing.assert_allclose(x[0].numpy().T, expected, atol=1e-5)
    assert float(x.min()) == pytest.approx(0.25, abs=1e-3) and float(x.max()) == pytest.approx(0.75, abs=1e-3)
    assert x.meta["intensity"] == "voi"


def test_rescale_intercept_then_stored_range(tmp_path):
    """No window: the stored range moves through the rescale with the pixels, so an intercept changes nothing."""
    px = np.linspace(1000, 3000, 32 * 40).reshape(32, 40).astype(np.uint16)
    x = LoadCXR()(write_dicom(tmp_path / "r.dcm", px, bits_stored=12, slope=1, intercept=-1024))
    expected = px / 4095.0
    np.testing.assert_allclose(x[0].numpy().T, expected, atol=1e-6)
    assert np.abs(np.clip((px - 1024.0) / 4095, 0, 1) - expected).max() > 0.2  # dividing after the intercept
    assert np.abs((px - 1000.0) / 2000 - expected).max() > 0.2  # min-max on the image
    assert x.meta["intensity"] == "stored_range" and not x.meta["voi_applied"]


@pytest.mark.parametrize(
    "photometric, shape, inverted",
    [
        ("MONOCHROME2", "INVERSE", True),
        ("MONOCHROME2", "IDENTITY", False),
        ("MONOCHROME1", "INVERSE", True),
        ("MONOCHROME1", None, True),
    ],
)
def test_presentation_lut_shape_inverse(tmp_path, photometric, shape, inverted):
    px = np.linspace(0, 4095, 32 * 40).reshape(32, 40).astype(np.uint16)
    x = LoadCXR()(
        write_dicom(tmp_path / "p.dcm", px, photometric=photometric, bits_stored=12, presentation_lut_shape=shape)
    )
    expected = 1.0 - px / 4095.0 if inverted else px / 4095.0  # MONOCHROME1 + INVERSE: inverted once
    np.testing.assert_allclose(x[0].numpy().T, expected, atol=1e-6)
    assert bool(x.meta["inverted"]) is inverted


def test_8bit_png_jpeg_dicom_exactly_x_over_255(tmp_path):
    """Values 10..200 (not 0..255): a min-max step would give a different answer."""
    a = np.linspace(10, 200, 40 * 48).round().reshape(40, 48).astype(np.uint8)
    Image.fromarray(a).save(tmp_path / "a.png")
    Image.fromarray(a).save(tmp_path / "a.jpg", quality=90)
    write_dicom(tmp_path / "a.dcm", a.astype(np.uint16), bits_stored=8)
    jpeg = np.asarray(Image.open(tmp_path / "a.jpg").convert("L"))
    for name, pixels in (("a.png", a), ("a.jpg", jpeg), ("a.dcm", a)):
        x = LoadCXR()(tmp_path / name)[0].numpy().T
        assert np.array_equal(x, pixels.astype(np.float32) / 255), name
    assert LoadCXR(scale="minmax")(tmp_path / "a.png").max() == 1.0  # the opt-in per-image min-max
    with pytest.raises(ValueError, match="dtype"):
        LoadCXR(scale="dtype")


@pytest.mark.parametrize("config, item", [("train.json", "preprocessing_base"), ("inference.json", "preprocessing")])
def test_bundle_preprocessing_is_load_cxr_alone(tmp_path, config, item):
    """The bundle's preprocessing gives exactly LoadCXRd's x / 255 (no later ScaleIntensityd min-max)."""
    from monai.bundle import ConfigParser
    from monai.transforms import Compose

    from conftest import CONFIGS

    a = np.linspace(10, 200, 64 * 64).round().reshape(64, 64).astype(np.uint8)  # spatial_size: no resampling
    Image.fromarray(a).save(tmp_path / "a.png")
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / config))
    parser["spatial_size"] = [64, 64]
    steps = parser.get_parsed_content(item)
    transform = Compose(steps) if isinstance(steps, list) else steps
    out = transform({"image": str(tmp_path / "a.png"), "label": None, "mask": None, "boxes": None})
    np.testing.assert_array_equal(np.asarray(out["image"])[0].T, a.astype(np.float32) / 255)


# ---------------------------------------------------------------------------- masks, orientation, size (#13.6-8)


def test_grey_level_mask_refused_or_thresholded_with_warning(tmp_path):
    noise = np.random.default_rng(0).integers(0, 256, (40, 48)).astype(np.uint8)
    Image.fromarray(noise).save(tmp_path / "noise_mask.png")
    with pytest.raises(DataError, match="noise_mask.png.*not a label mask.*256 distinct values"):
        LoadCXR(as_mask=True)(tmp_path / "noise_mask.png")
    with pytest.warns(UserWarning, match="noise_mask.png.*binarised at >= 127.5"):
        m = LoadCXR(as_mask=True, grey_masks="threshold")(tmp_path / "noise_mask.png")
    np.testing.assert_array_equal(m[0].numpy().T, (noise >= 127.5).astype(np.float32))
    # label masks: 0 + one foreground value (1 or 255), palette indices
    for value in (1, 255):
        lab = np.zeros((40, 48), np.uint8)
        lab[5:20, 10:30] = value
        Image.fromarray(lab).save(tmp_path / f"lab{value}.png")
        assert float(LoadCXR(as_mask=True)(tmp_path / f"lab{value}.png").sum()) == 15 * 20
    pal = Image.fromarray((lab > 0).astype(np.uint8), mode="L").convert("P")
    pal.putpalette([0, 0, 0, 0, 0, 0] + [0] * 762)  # index 1 is drawn black: its luma would be 0
    pal.save(tmp_path / "pal.png")
    assert float(LoadCXR(as_mask=True)(tmp_path / "pal.png").sum()) == 15 * 20


def _exif_rotated(path: Path, pixels: np.ndarray, orientation: int = 6, **save) -> None:
    im = Image.fromarray(pixels)
    exif = Image.Exif()
    exif[0x0112] = orientation
    im.save(path, exif=exif.tobytes(), **save)


def test_exif_orientation_applied_to_image_and_mask(tmp_path):
    from PIL import ImageOps

    from monai_mcx.data.anchors import image_size_wh
    from monai_mcx.transforms import PrepareAnnotationsd

    rows, cols = 40, 64
    img = np.full((rows, cols), 20, np.uint8)
    img[4:12, 40:60] = 230  # bright patch, top right as stored
    mask = np.zeros((rows, cols), np.uint8)
    mask[4:12, 40:60] = 255
    _exif_rotated(tmp_path / "photo.jpg", img, quality=100)
    _exif_rotated(tmp_path / "photo_mask.png", mask)
    viewer = np.asarray(ImageOps.exif_transpose(Image.open(tmp_path / "photo.jpg")).convert("L"))
    assert viewer.shape == (cols, rows)  # orientation 6: shown rotated by 90 degrees
    x = LoadCXR()(tmp_path / "photo.jpg")
    assert tuple(x.shape) == (1, rows, cols) and x.meta["exif_orientation"] == 6
    np.testing.assert_array_equal(x[0].numpy().T, viewer.astype(np.float32) / 255)
    assert image_size_wh(tmp_path / "photo.jpg") == (rows, cols)  # anchor fitting reads the same size
    # the mask turns with its image, through LoadCXRd and through PrepareAnnotationsd
    pair = {"image": str(tmp_path / "photo.jpg"), "mask": str(tmp_path / "photo_mask.png")}
    out = LoadCXRd("image", mask_keys="mask")(pair)
    m = out["mask"][0].numpy()
    assert m.shape == (rows, cols) and float(out["image"][0].numpy()[m > 0].min()) > 0.8
    d = PrepareAnnotationsd(num_classes=1)({"image": x, "label": None, "mask": pair["mask"], "boxes": None})
    np.testing.assert_array_equal(d["mask"][0].numpy(), m)


def _bilevel_png(path: Path, width: int, height: int) -> None:
    """A valid all-black 1-bit PNG of any size, written row by row (10000 x 10000 is a 12 kB file)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    z = zlib.compressobj(9)
    row = b"\x00" * (1 + (width + 7) // 8)
    data = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", data) + chunk(b"IEND", b""))


def test_tiny_and_huge_images_refused(tmp_path):
    import time

    Image.fromarray(np.zeros((1, 1), np.uint8)).save(tmp_path / "dot.png")
    with pytest.raises(DataError, match="dot.png: image is 1x1 pixels.*minimum of 32"):
        LoadCXR()(tmp_path / "dot.png")
    Image.fromarray(np.zeros((16, 200), np.uint8)).save(tmp_path / "strip.png")
    with pytest.raises(DataError, match="strip.png.*200x16"):
        LoadCXR()(tmp_path / "strip.png")
    assert tuple(LoadCXR(min_size=8)(tmp_path / "strip.png").shape) == (1, 200, 16)  # configurable
    _bilevel_png(tmp_path / "huge.png", 10000, 10000)
    with pytest.warns(Image.DecompressionBombWarning):  # PIL only warns
        assert Image.open(tmp_path / "huge.png").size == (10000, 10000)
    t0 = time.perf_counter()
    with pytest.raises(DataError, match="huge.png.*10000x10000 = 100000000 pixels.*max_pixels=40000000"):
        LoadCXR()(tmp_path / "huge.png")
    assert time.perf_counter() - t0 < 2.0  # refused from the header, not after decoding 100 M pixels
    big = write_dicom(tmp_path / "big.dcm", np.zeros((64, 64), np.uint16))
    with pytest.raises(DataError, match="big.dcm.*4096 pixels, more than max_pixels=1000"):
        LoadCXR(max_pixels=1000)(big)
    with pytest.raises(DataError, match="big.dcm.*max_pixels"):
        LoadCXRd("image", max_pixels=1000)({"image": str(big)})


def test_dicom_16_bits_stored(tmp_path):
    px = np.full((32, 32), 32768, np.uint16)
    px[0, 0], px[0, 1], px[1, 0] = 0, 65535, 1
    x = LoadCXR()(write_dicom(tmp_path / "b16.dcm", px, bits_stored=16))
    assert float(x[0, 1, 0]) == pytest.approx(1.0) and float(x[0, 0, 0]) == 0.0
    assert float(x[0, 5, 5]) == pytest.approx(32768 / 65535)


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
    lungs = np.concatenate(
        [a[int(w * 0.2) : int(w * 0.35), ys].ravel(), a[int(w * 0.65) : int(w * 0.8), ys].ravel()]
    ).mean()
    mediastinum = a[int(w * 0.45) : int(w * 0.55), ys].mean()
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
    Image.fromarray(np.zeros((40, 60), np.uint8)).save(tmp_path / "img.png")
    Image.fromarray(np.ones((40, 40), np.uint8)).save(tmp_path / "mask.png")
    Image.fromarray(np.ones((40, 60), np.uint8)).save(tmp_path / "okmask.png")
    t = LoadCXRd(keys="image", mask_keys="mask", box_keys="boxes")
    with pytest.raises(DataError, match="mask.png.*40x40.*60x40"):
        t({"image": str(tmp_path / "img.png"), "mask": str(tmp_path / "mask.png"), "boxes": None})
    out = t({"image": str(tmp_path / "img.png"), "mask": str(tmp_path / "okmask.png"), "boxes": [[1, 2, 59, 39]]})
    assert tuple(out["mask"].shape) == (1, 60, 40) and float(out["mask"].max()) == 1.0
    assert t({"image": str(tmp_path / "img.png"), "mask": None, "boxes": None})["mask"] is None
    with pytest.raises(DataError, match="img.png.*outside"):
        t({"image": str(tmp_path / "img.png"), "mask": None, "boxes": [[1, 2, 61, 10]]})
    with pytest.raises(DataError, match="img.png.*x2 <= x1"):
        t({"image": str(tmp_path / "img.png"), "mask": None, "boxes": [[10, 2, 5, 10]]})
    with pytest.raises(DataError, match="img.png.*NaN"):
        t({"image": str(tmp_path / "img.png"), "mask": None, "boxes": [[1, 2, float("nan"), 10]]})
