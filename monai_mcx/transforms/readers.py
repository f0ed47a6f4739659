"""The readers behind :func:`monai_mcx.transforms.io.read_cxr` for PNG/JPEG/BMP/TIFF (PIL) and NIfTI (the DICOM
reader is :mod:`monai_mcx.dicom.reader`; the size, intensity and mask rules every reader shares are in
:mod:`monai_mcx.data.pixels`, what is an input image in :mod:`monai_mcx.data.formats`).
Each reader returns ``(array (rows, cols), pixel spacing (x, y) or None, metadata)``; the rules are those of
the :mod:`monai_mcx.transforms.io` docstring.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from monai_mcx.data.errors import DataError
from monai_mcx.data.pixels import (
    binary_mask,
    check_single_frame,
    check_size,
    minmax,
    to_unit,
)

__all__ = ["exif_size_wh"]

#: EXIF orientations that swap width and height (transpose, rotate 90/270, transverse)
_EXIF_SWAPS_WH = (5, 6, 7, 8)


def _exif_orientation(im) -> int:
    """The EXIF orientation tag of an open PIL image (1 = none; a broken EXIF block is ignored, as viewers do)."""
    try:
        return int(im.getexif().get(0x0112, 1) or 1)
    except Exception:  # noqa: BLE001
        return 1


def exif_size_wh(im) -> tuple[int, int]:
    """``(W, H)`` of an open PIL image as a viewer shows it (after its EXIF orientation), without decoding it.

    A PNG's orientation is read only from an ``eXIf`` chunk before the pixel data (reading a later one would
    decode the image).
    """
    w, h = im.size
    if getattr(im, "format", None) == "PNG" and "exif" not in im.info:
        return w, h
    return (h, w) if _exif_orientation(im) in _EXIF_SWAPS_WH else (w, h)


#: the PIL plugins the loader opens: the formats :func:`monai_mcx.data.formats.sniff_format` finds (PIL opens an MPO as a JPEG)
_PIL_FORMATS = ("PNG", "JPEG", "TIFF", "BMP")
#: PIL formats whose extra frames are images of their own (refused, as multi-frame DICOM is)
_MULTI_FRAME = {"PNG": "an animated PNG", "TIFF": "a multi-page TIFF"}


def _read_pil(path: Path, as_mask: bool, min_size: int, max_pixels, grey_masks):
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # max_pixels below says more
            opened = Image.open(path, formats=_PIL_FORMATS)
        with opened as im:
            fmt = im.format
            w, h = im.size  # the smaller side and the pixel count do not change with the orientation
            check_size(w, h, path, 0 if as_mask else min_size, max_pixels)
            if fmt in _MULTI_FRAME:  # not MPO: a camera JPEG's extra frames are previews of the first
                check_single_frame(getattr(im, "n_frames", 1), _MULTI_FRAME[fmt], path)
            im.load()
            orientation = _exif_orientation(im)
            if orientation != 1:
                im = ImageOps.exif_transpose(im)  # as image viewers show it (the same rule for masks)
            mode = im.mode
            if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
                arr, bits = np.asarray(im).astype(np.float32), 16
            elif mode in ("I", "F"):
                arr, bits = np.asarray(im).astype(np.float32), None
            elif as_mask and mode in ("P", "1"):
                arr, bits = np.asarray(im).astype(np.float32), 8  # palette indices are the labels
            elif as_mask and mode in ("RGB", "RGBA", "LA", "PA"):
                a = np.asarray(im.convert("RGBA" if mode != "LA" else "LA"))
                arr, bits = a[..., :-1].max(-1).astype(np.float32), 8  # any colour channel set (alpha ignored)
            else:
                if mode != "L":
                    im = im.convert("L")  # RGB/RGBA/P/LA/1 -> one channel (ITU-R 601 luma)
                arr, bits = np.asarray(im).astype(np.float32), 8
    except DataError:
        raise
    except FileNotFoundError as e:
        raise DataError("file not found", path) from e
    except UnidentifiedImageError as e:
        raise DataError("not an image file (PIL cannot identify it)", path) from e
    except Image.DecompressionBombError as e:
        raise DataError(f"image too large to decode ({e})", path) from e
    except (OSError, ValueError, SyntaxError) as e:
        raise DataError(f"unreadable or truncated image ({type(e).__name__}: {e})", path) from e
    meta = {
        "source_format": (fmt or "").lower(),
        "pil_mode": mode,
        "bits_stored": bits or 0,
        "exif_orientation": orientation,
    }
    if as_mask:
        return binary_mask(arr, path, grey_masks), None, meta
    if bits == 8:
        meta["intensity"] = "x/255"
        return to_unit(arr, 0.0, 255.0), None, meta
    meta["intensity"] = "minmax"
    return minmax(arr), None, meta


def _read_nifti(path: Path, as_mask: bool, min_size: int, max_pixels, grey_masks):
    import nibabel as nib

    try:
        img = nib.load(str(path))
        shape = [int(s) for s in img.header.get_data_shape()]
        dims = [s for s in shape if s > 1]
        if len(dims) >= 2:
            check_size(dims[0], dims[1], path, 0 if as_mask else min_size, max_pixels)
        arr = np.asarray(img.dataobj, dtype=np.float32)
        zooms = img.header.get_zooms()
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001
        raise DataError(f"unreadable or truncated NIfTI ({type(e).__name__}: {e})", path) from e
    arr = np.squeeze(arr)
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        arr = arr[..., :3].mean(-1)
    if arr.ndim != 2:
        raise DataError(f"expected a 2D image, got shape {arr.shape}", path)
    spacing = (float(zooms[0]), float(zooms[1])) if len(zooms) >= 2 else None
    meta = {"source_format": "nifti"}
    # NIfTI arrays are indexed (x, y) already: return (rows, cols) like the others (transposed back later)
    arr = arr.T
    if as_mask:
        return binary_mask(arr, path, grey_masks), spacing, meta
    meta["intensity"] = "minmax"
    return minmax(arr), spacing, meta
