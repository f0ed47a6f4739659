"""What counts as an input image, decided from the file's content (issue 24, items 6-8): DICOM whose header
contradicts its pixel data, files whose extension lies, TIFF inputs, multi-frame PNG/TIFF."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from test_cxr_io import write_dicom

from monai_mcx.data.datalist import inference_items, list_image_folder
from monai_mcx.data.errors import DataError
from monai_mcx.transforms.io import LoadCXRd, read_cxr

# ---------------------------------------------------------------------------- item 6: BitsStored vs the data


def test_dicom_values_above_bits_stored_are_not_wrapped(tmp_path):
    """A 12-bit header over 13-bit data: the pixels as stored (4096 > 4095), not masked to 12 bits (4096 -> 0)."""
    px = np.zeros((40, 40), np.uint16)
    px[:10] = 4095
    px[10:20] = 4096
    px[20:30] = 5000
    p = write_dicom(tmp_path / "liar.dcm", px, bits_stored=12)
    with pytest.warns(UserWarning, match=r"liar.dcm: BitsStored=12 but pixel values reach 5000.*13 bits"):
        arr, meta = read_cxr(p)
    # the stored range widened to the smallest bit depth holding the data: 0 .. 2**13 - 1
    np.testing.assert_allclose(arr[0, 0], 4095 / 8191, rtol=1e-6)
    np.testing.assert_allclose(arr[15, 0], 4096 / 8191, rtol=1e-6)
    np.testing.assert_allclose(arr[25, 0], 5000 / 8191, rtol=1e-6)
    assert arr[35, 0] == 0.0
    assert arr[15, 0] > arr[0, 0] and arr[25, 0] > arr[15, 0]  # order kept: nothing wrapped
    assert meta["bits_stored"] == 13


def test_dicom_within_bits_stored_unchanged_and_silent(tmp_path, recwarn):
    px = np.zeros((40, 40), np.uint16)
    px[:20] = 4095
    arr, meta = read_cxr(write_dicom(tmp_path / "ok.dcm", px, bits_stored=12))
    assert arr.max() == 1.0 and arr.min() == 0.0 and meta["bits_stored"] == 12
    assert not [w for w in recwarn if "BitsStored" in str(w.message)]


def _edit(path, **tags):
    import pydicom

    ds = pydicom.dcmread(path)
    for k, v in tags.items():
        if isinstance(k, str) and k.startswith("tag_"):
            ds.add_new(tuple(int(x, 16) for x in k[4:].split("_")), "US", v)
        else:
            setattr(ds, k, v)
    ds.save_as(path, enforce_file_format=True)
    return path


def test_dicom_overlay_in_high_bits_is_masked_silently(tmp_path, recwarn):
    """An overlay embedded at bit 12 (OverlayBitPosition) is not image data: masked off, no warning."""
    px = np.full((40, 40), 2000, np.uint16)
    px[:5, :5] |= 1 << 12  # the overlay bit
    p = _edit(write_dicom(tmp_path / "overlay.dcm", px, bits_stored=12), tag_6000_0102=12)
    arr, meta = read_cxr(p)
    np.testing.assert_allclose(arr, 2000 / 4095, rtol=1e-6)
    assert meta["bits_stored"] == 12 and not [w for w in recwarn if "BitsStored" in str(w.message)]


def test_dicom_signed_sign_extended_from_bits_stored(tmp_path):
    """Signed 12-bit pixels are sign-extended from bit 11 (0x0FFF is -1), as the standard and pydicom say."""
    px = np.full((40, 40), 0x0FFF, np.uint16)  # -1 with the unused bits left 0
    px[:20] = 2047  # the largest 12-bit signed value
    p = _edit(write_dicom(tmp_path / "signed.dcm", px, bits_stored=12), PixelRepresentation=1)
    arr, _ = read_cxr(p)
    np.testing.assert_allclose(arr[0, 0], 1.0)  # 2047 -> the top of -2048..2047
    np.testing.assert_allclose(arr[30, 0], 2047 / 4095, rtol=1e-6)  # -1 -> (-1 + 2048) / 4095


# ---------------------------------------------------------------------------- item 7: content, not extension


def _gray(h=40, w=56) -> np.ndarray:
    return (np.arange(h * w).reshape(h, w) % 251).astype(np.uint8)


def test_sniff_format_reads_the_content(tmp_path):
    import nibabel as nib

    from monai_mcx.data.formats import sniff_format

    a = _gray()
    Image.fromarray(a).save(tmp_path / "p.dcm", format="PNG")
    Image.fromarray(a).save(tmp_path / "j.png", format="JPEG")
    Image.fromarray(a).save(tmp_path / "t.png", format="TIFF")
    Image.fromarray(a).save(tmp_path / "b.bmp", format="BMP")
    write_dicom(tmp_path / "d.png", a.astype(np.uint16))
    nib.save(nib.Nifti1Image(a.astype(np.float32), np.eye(4)), str(tmp_path / "n.nii.gz"))
    nib.save(nib.Nifti1Image(a.astype(np.float32), np.eye(4)), str(tmp_path / "n.nii"))
    (tmp_path / "x.png").write_text("not an image")
    (tmp_path / "short").write_bytes(b"\x89P")
    (tmp_path / "fake.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    got = {p.name: sniff_format(p) for p in tmp_path.iterdir()}
    assert got == {
        "p.dcm": "png",
        "j.png": "jpeg",
        "t.png": "tiff",
        "b.bmp": "bmp",
        "d.png": "dicom",
        "n.nii.gz": "nifti",
        "n.nii": "nifti",
        "x.png": None,
        "short": None,
        "fake.nii.gz": None,
    }


def test_dicom_named_png_loads_as_dicom(tmp_path):
    px = np.zeros((40, 56), np.uint16)
    px[:20] = 4095
    p = write_dicom(tmp_path / "scan.png", px, bits_stored=12, spacing=(0.5, 0.25))
    arr, meta = read_cxr(p)
    assert meta["source_format"] == "dicom" and meta["pixel_spacing"] == (0.25, 0.5)
    assert arr[0, 0] == 1.0 and arr[30, 0] == 0.0


def test_png_named_dcm_loads_as_png(tmp_path):
    a = _gray()
    p = tmp_path / "scan.dcm"
    Image.fromarray(a).save(p, format="PNG")
    arr, meta = read_cxr(p)
    assert meta["source_format"] == "png" and meta["pixel_spacing"] is None
    np.testing.assert_allclose(arr, a / 255.0, rtol=1e-6)


def test_text_named_png_refused_naming_the_file(tmp_path):
    p = tmp_path / "notes.png"
    p.write_text("this is not an image, whatever its name says")
    with pytest.raises(DataError, match=r"notes.png: not an image file: its content is not DICOM.*\(named \.png\)"):
        read_cxr(p)
    _, skipped = list_image_folder(tmp_path)
    assert [(q.name, r) for q, r in skipped] == [
        ("notes.png", "not an image file: its content is not DICOM, PNG, JPEG, TIFF, BMP or NIfTI (named .png)")
    ]


def test_grayscale_tiff_listed_and_loaded(tmp_path):
    a = _gray()
    Image.fromarray(a).save(tmp_path / "x.tif")
    Image.fromarray(a.astype(np.uint16) * 200).save(tmp_path / "x16.tiff")
    Image.fromarray(a).save(tmp_path / "dicom_in_disguise.dcm", format="PNG")
    write_dicom(tmp_path / "png_in_disguise.png", a.astype(np.uint16))
    images, skipped = list_image_folder(tmp_path)
    assert [p.name for p in images] == ["dicom_in_disguise.dcm", "png_in_disguise.png", "x.tif", "x16.tiff"]
    assert skipped == []
    loader = LoadCXRd(keys="image")
    for item in inference_items(tmp_path):
        img = loader(item)["image"]
        assert tuple(img.shape) == (1, 56, 40), item
    assert read_cxr(tmp_path / "x.tif")[1]["source_format"] == "tiff"


# ---------------------------------------------------------------------------- item 8: one frame only


@pytest.mark.parametrize(
    "name, fmt, what",
    [("cine.png", "PNG", "an animated PNG"), ("pages.tif", "TIFF", "a multi-page TIFF")],
)
def test_multi_frame_png_and_tiff_refused_like_multi_frame_dicom(tmp_path, name, fmt, what):
    frames = [Image.fromarray(np.full((40, 56), v, np.uint8)) for v in (10, 120, 240)]
    p = tmp_path / name
    frames[0].save(p, format=fmt, save_all=True, append_images=frames[1:])
    with Image.open(p) as im:
        assert im.n_frames == 3
    with pytest.raises(DataError, match=rf"{name}: expected a single-frame 2D image, got 3 frames \({what}\)"):
        read_cxr(p)
    with pytest.raises(DataError, match=rf"{name}: expected a single-frame 2D image, got 3 frames"):
        read_cxr(p, as_mask=True)
    single = tmp_path / f"one{p.suffix}"
    frames[0].save(single, format=fmt)
    assert read_cxr(single)[0].shape == (40, 56)


def test_multi_frame_dicom_refused_with_the_same_message(tmp_path):
    import pydicom

    p = write_dicom(tmp_path / "multi.dcm", np.zeros((40, 40), np.uint16))
    ds = pydicom.dcmread(p)
    ds.NumberOfFrames = 3
    ds.PixelData = np.zeros((3, 40, 40), np.uint16).tobytes()
    ds.save_as(p, enforce_file_format=True)
    with pytest.raises(DataError, match=r"multi.dcm: expected a single-frame 2D image, got 3 frames \(NumberOfFrames"):
        read_cxr(p)
