"""Loading chest X-rays (DICOM, PNG/JPEG, NIfTI) as one-channel float images in [0, 1].

:class:`LoadCXR` / :class:`LoadCXRd` return a :class:`monai.data.MetaTensor` of shape ``(1, W, H)``
(spatial dim 0 = x = column), the layout that ``LoadImage`` + ``EnsureChannelFirst`` give for a PNG,
so masks and boxes ``[x1, y1, x2, y2]`` line up with it.

Why not MONAI's ``LoadImage``: its ``PydicomReader`` applies neither the VOI LUT / window nor the
``MONOCHROME1`` inversion, and its PIL reader neither converts RGB to one channel, nor applies the EXIF
orientation, nor scales to [0, 1]; these are what make chest radiographs from different sources comparable.
Everything else (MetaTensor, affine with the pixel spacing) follows MONAI.

**The intensity pipeline** (the one the bundle uses: ``LoadCXRd`` alone decides the [0, 1] image; no later
``ScaleIntensityd``). ``scale="auto"`` (default):

* 8-bit PNG/JPEG (and any PIL image converted to 8-bit gray: RGB by ITU-R 601 luma, palette, bilevel):
  ``x / 255``.
* DICOM, in the order of the DICOM grayscale pipeline:

  1. modality LUT (``RescaleSlope`` / ``RescaleIntercept`` or a Modality LUT Sequence);
  2. with a VOI LUT Sequence or a window (``WindowCenter`` / ``WindowWidth``, ``VOILUTFunction``) and
     ``apply_voi``: pydicom's VOI transform, then **its output range mapped to [0, 1]** -- the window, not the
     image's own range: a pixel below the window is 0, above it 1, the window centre 0.5;
     without a window: the **stored range** (``0 .. 2**BitsStored - 1``, signed when ``PixelRepresentation``
     is 1) passed through the same modality LUT, mapped to [0, 1]. For an 8-bit DICOM without rescale or
     window this is exactly ``x / 255``; a rescale intercept does not shift the result (the range moves with
     the pixels);
  3. ``MONOCHROME1`` **or** ``PresentationLUTShape = INVERSE``: ``1 - x`` (once: a conformant ``MONOCHROME1``
     DX image also carries ``INVERSE``), so that bone is bright and lungs dark.

  Colour DICOMs (``SamplesPerPixel`` 3) are averaged to gray and mapped from the stored range.
* 16-bit PNG, 32-bit/float TIFF and NIfTI (no stored range or window in the file): min-max over the image.

``scale="minmax"`` min-max normalises the result of the pipeline per image (what the bundle did before
issue #13 with a later ``ScaleIntensityd``; models trained that way need it).

DICOM: pixel data decoded by pydicom (compressed transfer syntaxes need a pixel plugin, e.g.
``pylibjpeg``/``pillow``/``gdcm``; when none is installed the error names the plugins to install), bits
stored up to 16, spacing (``PixelSpacing`` or ``ImagerPixelSpacing``) kept in the metadata
(``pixel_spacing`` = (x, y) in mm) and the affine. Files without a DICOM extension are recognised by their
header (``DICM`` at byte 128).

PNG/JPEG: the EXIF orientation is applied as image viewers do (``PIL.ImageOps.exif_transpose``), for images
and masks alike (``meta["exif_orientation"]`` keeps the tag, 1 = none).

Size: an image whose shorter side is below ``min_size`` pixels (default 32) or with more than ``max_pixels``
pixels (default 40 million, about 6300 x 6300) is refused before its pixels are decoded.

Masks (``as_mask``): no LUTs, no scaling, the same orientation rule. A label mask holds 0 for background and
one foreground value (any, e.g. 1 or 255; a palette PNG's indices, RGB: any channel); it becomes 0/1 with
``> 0``. A mask with more levels (grey-level, JPEG-compressed, anti-aliased) is refused
(``grey_masks="error"``, default) or, with ``grey_masks="threshold"``, binarised at half its maximum value
(``>= max / 2``) with a warning naming the file.

Every failure raises :class:`monai_mcx.data.errors.DataError` naming the file.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Hashable, Mapping
from pathlib import Path

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform

from monai_mcx.data.boxes import check_box
from monai_mcx.data.errors import DataError
from monai_mcx.utils import is_dicom_file

__all__ = [
    "LoadCXR",
    "LoadCXRd",
    "KeepOverlayImaged",
    "read_cxr",
    "PLUGIN_HINT",
    "DEFAULT_MIN_SIZE",
    "DEFAULT_MAX_PIXELS",
    "exif_size_wh",
]

#: what to install for compressed DICOM transfer syntaxes
PLUGIN_HINT = "pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg (or pillow / python-gdcm)"
#: smallest accepted side of an image, in pixels
DEFAULT_MIN_SIZE = 32
#: largest accepted number of pixels of an image or mask
DEFAULT_MAX_PIXELS = 40_000_000

_DICOM_SUFFIXES = (".dcm", ".dicom", ".dic")
_PIL_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp")
_NIFTI_SUFFIXES = (".nii", ".nii.gz")
_SCALES = ("auto", "minmax")
_GREY_MASKS = ("error", "threshold")
#: EXIF orientations that swap width and height (transpose, rotate 90/270, transverse)
_EXIF_SWAPS_WH = (5, 6, 7, 8)


def _minmax(a: np.ndarray) -> np.ndarray:
    a = a.astype(np.float32, copy=False)
    lo, hi = float(np.min(a)), float(np.max(a))
    if not np.isfinite(lo) or not np.isfinite(hi):
        raise ValueError("image has non-finite values")
    if hi <= lo:
        return np.zeros_like(a, dtype=np.float32)
    return (a - lo) / (hi - lo)


def _to_unit(a: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Map ``[lo, hi]`` linearly to [0, 1] (float32 arithmetic, clipped); ``lo == 0, hi == 255`` is ``x / 255``."""
    if not hi > lo:
        raise ValueError(f"empty intensity range [{lo}, {hi}]")
    out = (a.astype(np.float32, copy=False) - np.float32(lo)) / np.float32(hi - lo)
    return np.clip(out, 0.0, 1.0)


def _check_size(cols: int, rows: int, path: Path, min_size: int, max_pixels: int | None) -> None:
    """Refuse degenerate and huge images before their pixels are decoded."""
    if min(cols, rows) < min_size:
        raise DataError(
            f"image is {cols}x{rows} pixels (W x H): a side is below the minimum of {min_size} pixels (min_size)", path
        )
    if max_pixels is not None and cols * rows > max_pixels:
        raise DataError(
            f"image is {cols}x{rows} = {cols * rows} pixels, more than max_pixels={max_pixels}: refused before "
            "decoding (raise max_pixels of LoadCXR / LoadCXRd to accept it)",
            path,
        )


def _binary_mask(arr: np.ndarray, path: Path, grey_masks: str) -> np.ndarray:
    """A label mask (0 and one foreground value) -> 0/1; a grey-level mask -> error or thresholded (module
    docstring)."""
    arr = np.asarray(arr)
    if not np.all(np.isfinite(arr)):
        raise DataError("mask holds NaN or Inf values", path)
    values = np.unique(arr)
    if values.size <= 1 or (values.size == 2 and values[0] == 0):
        return (arr > 0).astype(np.float32)
    shown = ", ".join(f"{v:g}" for v in values[:4]) + (f", ..., {values[-1]:g}" if values.size > 4 else "")
    if grey_masks == "error":
        raise DataError(
            f"mask is not a label mask: it has {values.size} distinct values ({shown}), a mask must hold 0 for "
            "background and one foreground value. Re-export it as a binary mask, or pass grey_masks='threshold' "
            "(LoadCXR / LoadCXRd / PrepareAnnotationsd) to binarise it at half its maximum",
            path,
        )
    thr = float(values[-1]) / 2.0
    warnings.warn(
        f"{path}: grey-level mask with {values.size} distinct values ({shown}) binarised at >= {thr:g} "
        "(half its maximum; grey_masks='threshold')",
        UserWarning,
        stacklevel=2,
    )
    return ((arr >= thr) & (arr > 0)).astype(np.float32)


def _spacing(ds) -> tuple[float, float] | None:
    for tag in ("PixelSpacing", "ImagerPixelSpacing"):
        v = ds.get(tag)
        if v is not None and len(v) == 2:
            row_sp, col_sp = float(v[0]), float(v[1])
            if row_sp > 0 and col_sp > 0:
                return col_sp, row_sp  # (x, y)
    return None


def _missing_decoder(ts, path: Path) -> str | None:
    """``None`` when pydicom can decode transfer syntax ``ts``, else what is missing (pydicom 2 and 3)."""
    try:  # pydicom >= 3
        from pydicom.pixels import get_decoder
    except ImportError:  # pydicom 2: the handler list
        import pydicom

        handlers = pydicom.config.pixel_data_handlers
        if any(h.is_available() and h.supports_transfer_syntax(ts) for h in handlers):
            return None
        return "a pixel data handler for this transfer syntax"
    try:
        decoder = get_decoder(ts)
    except Exception as e:  # noqa: BLE001
        raise DataError(f"pydicom has no decoder for the transfer syntax {ts.name} ({ts})", path) from e
    if decoder.is_available:
        return None
    return "; ".join(decoder.missing_dependencies) or "a pixel data plugin"


def _dicom_luts():
    try:  # pydicom >= 3
        from pydicom.pixels import apply_modality_lut, apply_voi_lut
    except ImportError:  # pydicom 2 (MONAI Label 0.8.5's environment)
        from pydicom.pixel_data_handlers.util import apply_modality_lut, apply_voi_lut
    return apply_modality_lut, apply_voi_lut


def _stored_range(ds, bits: int) -> tuple[int, int]:
    if int(ds.get("PixelRepresentation", 0) or 0) == 1:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def _dicom_to_unit(arr: np.ndarray, ds, bits: int, apply_voi: bool, meta: dict) -> np.ndarray:
    """Steps 1 and 2 of the DICOM pipeline (module docstring): modality LUT, then window or stored range -> [0, 1]."""
    apply_modality_lut, apply_voi_lut = _dicom_luts()
    smin, smax = _stored_range(ds, bits)
    out = apply_modality_lut(arr, ds)
    if apply_voi and ("VOILUTSequence" in ds or "WindowCenter" in ds):
        out = apply_voi_lut(out, ds)  # pydicom prefers the VOI LUT Sequence when both are present
        if "VOILUTSequence" in ds:
            lut_bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
            lo, hi = 0.0, float(2**lut_bits - 1)
        else:
            # the window's output range as pydicom defines it: what a value far below / above the window gives
            with np.errstate(over="ignore"):
                lo, hi = (float(v) for v in apply_voi_lut(np.array([-1e15, 1e15], dtype=np.float64), ds))
        meta["voi_applied"], meta["intensity"] = True, "voi"
    else:
        ends = apply_modality_lut(np.array([smin, smax], dtype=np.int64), ds)
        lo, hi = sorted(float(v) for v in np.asarray(ends).ravel()[:2])
        meta["intensity"] = "stored_range"
    return _to_unit(np.asarray(out), lo, hi)


def _read_dicom(path: Path, apply_voi: bool, invert: bool, as_mask: bool, min_size: int, max_pixels, grey_masks):
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(path, defer_size="1 MB")  # pixel data read only when decoded (after the size check)
    except InvalidDicomError as e:
        raise DataError(f"not a DICOM file ({e})", path) from e
    except Exception as e:  # noqa: BLE001 - truncated header, bad tags...
        raise DataError(f"unreadable or truncated DICOM ({type(e).__name__}: {e})", path) from e
    if "PixelData" not in ds:
        raise DataError("DICOM has no pixel data", path)
    bits = int(ds.get("BitsStored", 0) or 0)
    if not 1 <= bits <= 16:
        raise DataError(f"BitsStored={bits} is not supported (1..16)", path)
    _check_size(
        int(ds.get("Columns", 0) or 0), int(ds.get("Rows", 0) or 0), path, 0 if as_mask else min_size, max_pixels
    )
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if ts is not None and ts.is_compressed:
        missing = _missing_decoder(ts, path)
        if missing is not None:
            raise DataError(
                f"pixel data is compressed ({ts.name}) and no pydicom pixel plugin that decodes it is installed: "
                f"{missing}. Install one, e.g. {PLUGIN_HINT}",
                path,
            )
    try:
        arr = ds.pixel_array
    except Exception as e:  # noqa: BLE001 - truncated pixel data, bad JPEG stream...
        raise DataError(f"cannot decode the pixel data ({type(e).__name__}: {e})", path) from e
    spp = int(ds.get("SamplesPerPixel", 1) or 1)
    if spp > 1:
        arr = arr[..., :3].astype(np.float32).mean(-1) if arr.ndim >= 3 else arr
    if arr.ndim != 2:
        raise DataError(f"expected a single-frame 2D image, got pixel array of shape {arr.shape}", path)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    shape = str(ds.get("PresentationLUTShape", "") or "").upper()
    meta = {
        "source_format": "dicom",
        "photometric_interpretation": photometric,
        "presentation_lut_shape": shape,
        "bits_stored": bits,
        "transfer_syntax": str(ts) if ts is not None else None,
        "modality": str(ds.get("Modality", "")),
        "view_position": str(ds.get("ViewPosition", "")),
    }
    if as_mask:
        return _binary_mask(arr, path, grey_masks), _spacing(ds), meta
    if spp > 1:
        out = _to_unit(arr, *_stored_range(ds, bits))
        meta["intensity"] = "stored_range"
    else:
        out = _dicom_to_unit(arr, ds, bits, apply_voi, meta)
    if invert and (photometric == "MONOCHROME1" or shape == "INVERSE"):
        out = 1.0 - out
        meta["inverted"] = True
    return out, _spacing(ds), meta


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


def _read_pil(path: Path, as_mask: bool, min_size: int, max_pixels, grey_masks):
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # max_pixels below says more
            opened = Image.open(path)
        with opened as im:
            w, h = im.size  # the smaller side and the pixel count do not change with the orientation
            _check_size(w, h, path, 0 if as_mask else min_size, max_pixels)
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
        "source_format": path.suffix.lower().lstrip("."),
        "pil_mode": mode,
        "bits_stored": bits or 0,
        "exif_orientation": orientation,
    }
    if as_mask:
        return _binary_mask(arr, path, grey_masks), None, meta
    if bits == 8:
        meta["intensity"] = "x/255"
        return _to_unit(arr, 0.0, 255.0), None, meta
    meta["intensity"] = "minmax"
    return _minmax(arr), None, meta


def _read_nifti(path: Path, as_mask: bool, min_size: int, max_pixels, grey_masks):
    import nibabel as nib

    try:
        img = nib.load(str(path))
        shape = [int(s) for s in img.header.get_data_shape()]
        dims = [s for s in shape if s > 1]
        if len(dims) >= 2:
            _check_size(dims[0], dims[1], path, 0 if as_mask else min_size, max_pixels)
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
        return _binary_mask(arr, path, grey_masks), spacing, meta
    meta["intensity"] = "minmax"
    return _minmax(arr), spacing, meta


def _check_options(scale: str, grey_masks: str) -> None:
    if scale not in _SCALES:
        hint = " ('dtype' is gone: 'auto' now maps 8-bit images by x / 255 and DICOM by its stored range)"
        raise ValueError(f"scale must be one of {_SCALES}, got {scale!r}" + (hint if scale == "dtype" else ""))
    if grey_masks not in _GREY_MASKS:
        raise ValueError(f"grey_masks must be one of {_GREY_MASKS}, got {grey_masks!r}")


def read_cxr(
    filename: str | os.PathLike,
    apply_voi: bool = True,
    invert_monochrome1: bool = True,
    scale: str = "auto",
    as_mask: bool = False,
    min_size: int = DEFAULT_MIN_SIZE,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    grey_masks: str = "error",
) -> tuple[np.ndarray, dict]:
    """Read one image as a numpy ``(rows, cols)`` float32 array in [0, 1] (0/1 when ``as_mask``) plus metadata.

    Args:
        filename: DICOM (any extension, or none), PNG/JPEG/BMP/TIFF, or NIfTI file.
        apply_voi: apply the DICOM VOI LUT / window (pipeline step 2, module docstring).
        invert_monochrome1: invert ``MONOCHROME1`` and ``PresentationLUTShape = INVERSE`` DICOMs (step 3).
        scale: ``"auto"`` (the pipeline) or ``"minmax"`` (the pipeline, then per-image min-max).
        as_mask: read a mask: no LUTs, 0/1 (see ``grey_masks``).
        min_size: smallest accepted side in pixels (images only).
        max_pixels: largest accepted ``W * H`` (``None``: no limit), checked before decoding.
        grey_masks: ``"error"`` or ``"threshold"`` for masks that are not label masks (module docstring).

    Raises:
        DataError: file missing, not an image, truncated, undecodable (naming the plugin to install for
            compressed DICOM), unsupported bit depth or shape, too small or too large, grey-level mask.
    """
    _check_options(scale, grey_masks)
    path = Path(filename)
    if not path.is_file():
        raise DataError("file not found" if not path.exists() else "not a file", path)
    name = path.name.lower()
    args = (as_mask, int(min_size), None if max_pixels is None else int(max_pixels), grey_masks)
    try:
        if name.endswith(_NIFTI_SUFFIXES):
            arr, spacing, meta = _read_nifti(path, *args)
        elif name.endswith(_DICOM_SUFFIXES) or (not name.endswith(_PIL_SUFFIXES) and is_dicom_file(path)):
            arr, spacing, meta = _read_dicom(path, apply_voi, invert_monochrome1, *args)
        else:
            arr, spacing, meta = _read_pil(path, *args)
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - never a bare traceback from deep inside a reader
        raise DataError(f"cannot read image ({type(e).__name__}: {e})", path) from e
    if arr.size == 0:
        raise DataError("image is empty", path)
    if scale == "minmax" and not as_mask:
        arr = _minmax(arr)
        meta["intensity"] = f"{meta.get('intensity', '')}+minmax"
    meta["filename_or_obj"] = str(path)
    meta["pixel_spacing"] = spacing
    return arr, meta


#: metadata every loaded image carries (defaults where the format has no such field)
_META_DEFAULTS = {
    "source_format": "",
    "photometric_interpretation": "",
    "presentation_lut_shape": "",
    "bits_stored": 0,
    "transfer_syntax": "",
    "modality": "",
    "view_position": "",
    "voi_applied": False,
    "inverted": False,
    "pil_mode": "",
    "exif_orientation": 1,
    "intensity": "",
}


def _to_metatensor(arr: np.ndarray, meta: dict, dtype) -> MetaTensor:
    """(rows, cols) numpy -> (1, W, H) MetaTensor with an affine carrying the pixel spacing.

    ``meta["pixel_spacing"]`` is ``(x, y)`` mm, ``(1.0, 1.0)`` when the file gives none
    (``meta["pixel_spacing_known"]`` tells which).
    """
    sx, sy = meta.get("pixel_spacing") or (1.0, 1.0)
    affine = torch.diag(torch.tensor([sx, sy, 1.0, 1.0], dtype=torch.float64))
    data = torch.as_tensor(np.ascontiguousarray(arr.T)[None], dtype=dtype)
    # one key set with no None values whatever the format, so that MetaTensors of DICOM, PNG and JPEG
    # items collate together (default_collate refuses None and needs the same keys in every item)
    m = {k: v for k, v in _META_DEFAULTS.items()}
    m.update({k: v for k, v in meta.items() if v is not None})
    m["pixel_spacing_known"] = meta.get("pixel_spacing") is not None
    m["pixel_spacing"] = (float(sx), float(sy))
    m["spatial_shape"] = np.asarray(data.shape[1:])
    m["original_channel_dim"] = float("nan")  # as MONAI LoadImage(ensure_channel_first) leaves it for 2D (masks mix in)
    m["space"] = "RAS"
    m["original_affine"] = affine.clone()
    return MetaTensor(data, affine=affine, meta=m)


class LoadCXR(Transform):
    """Load a chest X-ray as a float ``(1, W, H)`` MetaTensor in [0, 1] (the intensity pipeline of the module
    docstring).

    Args:
        apply_voi: apply the DICOM VOI LUT or window (after the modality LUT).
        invert_monochrome1: invert ``MONOCHROME1`` / ``PresentationLUTShape = INVERSE`` DICOMs (lungs dark).
        scale: ``"auto"`` (the pipeline) | ``"minmax"`` (then per-image min-max).
        as_mask: load a mask instead: 0/1, no LUTs, no scaling (see ``grey_masks``).
        dtype: output dtype.
        min_size: smallest accepted side of an image, pixels (not applied to masks).
        max_pixels: largest accepted ``W * H`` (``None``: no limit), refused before decoding.
        grey_masks: ``"error"`` refuses a mask that is not 0 + one foreground value, ``"threshold"`` binarises
            it at half its maximum with a warning naming the file.
    """

    def __init__(
        self,
        apply_voi: bool = True,
        invert_monochrome1: bool = True,
        scale: str = "auto",
        as_mask: bool = False,
        dtype: torch.dtype = torch.float32,
        min_size: int = DEFAULT_MIN_SIZE,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        grey_masks: str = "error",
    ):
        _check_options(scale, grey_masks)
        self.apply_voi = apply_voi
        self.invert_monochrome1 = invert_monochrome1
        self.scale = scale
        self.as_mask = as_mask
        self.dtype = dtype
        self.min_size = int(min_size)
        self.max_pixels = max_pixels
        self.grey_masks = grey_masks

    def __call__(self, filename: str | os.PathLike) -> MetaTensor:
        arr, meta = read_cxr(
            filename,
            self.apply_voi,
            self.invert_monochrome1,
            self.scale,
            self.as_mask,
            self.min_size,
            self.max_pixels,
            self.grey_masks,
        )
        return _to_metatensor(arr, meta, self.dtype)


class LoadCXRd(MapTransform):
    """Dictionary version of :class:`LoadCXR`, plus the datalist checks that need the image size.

    Args:
        keys: image keys (loaded with :class:`LoadCXR`).
        mask_keys: mask keys, loaded as 0/1 and checked to have the size of the first image key.
        box_keys: keys holding ``[[x1, y1, x2, y2], ...]`` (x = column), checked to lie inside the image
            with ``x2 > x1`` and ``y2 > y1``.
        allow_missing_keys: skip absent keys. A ``None`` value (unknown annotation) is always kept as is.
        grey_masks: how masks that are not label masks are treated (see :class:`LoadCXR`).
        kwargs: passed to :class:`LoadCXR` (``min_size``, ``max_pixels``, ``apply_voi``, ...).

    Raises:
        DataError: naming the file (image or mask) and the problem.
    """

    def __init__(
        self,
        keys: KeysCollection,
        mask_keys: KeysCollection = (),
        box_keys: KeysCollection = (),
        allow_missing_keys: bool = False,
        grey_masks: str = "error",
        **kwargs,
    ):
        super().__init__(keys, allow_missing_keys)
        self.mask_keys = [mask_keys] if isinstance(mask_keys, str) else list(mask_keys)
        self.box_keys = [box_keys] if isinstance(box_keys, str) else list(box_keys)
        self.loader = LoadCXR(**kwargs)
        self.mask_loader = LoadCXR(
            as_mask=True,
            dtype=kwargs.get("dtype", torch.float32),
            grey_masks=grey_masks,
            max_pixels=kwargs.get("max_pixels", DEFAULT_MAX_PIXELS),
        )

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        ref = None
        for key in self.key_iterator(d):
            if d[key] is None:
                raise DataError(f"datalist item has no {key!r} file", None)
            if not isinstance(d[key], torch.Tensor):
                d[key] = self.loader(d[key])
            ref = ref if ref is not None else d[key]
        for key in self.mask_keys:
            if key not in d:
                if self.allow_missing_keys:
                    continue
                raise KeyError(f"key {key!r} not found in the item")
            if d[key] is None or isinstance(d[key], torch.Tensor):
                continue
            mask = self.mask_loader(d[key])
            if ref is not None and tuple(mask.shape[1:]) != tuple(ref.shape[1:]):
                w, h = ref.shape[1:]
                mw, mh = mask.shape[1:]
                raise DataError(
                    f"mask is {mw}x{mh} (WxH) but its image {ref.meta.get('filename_or_obj')} is {w}x{h}", d[key]
                )
            d[key] = mask
        if ref is not None:
            w, h = (int(s) for s in ref.shape[1:])
            for key in self.box_keys:
                boxes = d.get(key)
                if boxes is None or isinstance(boxes, torch.Tensor):
                    continue
                for i, b in enumerate(boxes):
                    try:
                        check_box(b, w, h)
                    except DataError as e:
                        raise DataError(f"{key}[{i}]: {e.problem}", ref.meta.get("filename_or_obj")) from None
        return d


class KeepOverlayImaged(MapTransform):
    """Keep a display copy of the loaded image for the prediction overlays, before any resizing.

    Stores ``(rows, cols)`` uint8 (``floor(clip(image, 0, 1) * 255)``, the quantisation of
    :func:`monai_mcx.visualize.overlay_image`) under ``name``, so that
    :class:`monai_mcx.handlers.PredictionWriter` draws the overlay and saliency PNGs without reading and
    decoding the file a second time. One byte per pixel: a 2048 x 2048 radiograph adds 4 MiB to its batch.
    :func:`monai_mcx.data.collate_cxr` keeps the copies as a per-item list (:data:`monai_mcx.data.collate.HOST_KEYS`).

    Args:
        keys: the image key, a ``(1, W, H)`` tensor in [0, 1] as :class:`LoadCXRd` loads it (MONAI order).
        name: the item key for the copy (default ``"overlay_image"``).
        enabled: when False the transform does nothing (the writer then re-reads the file if it needs it).
    """

    def __init__(self, keys: KeysCollection = "image", name: str = "overlay_image", enabled: bool = True) -> None:
        super().__init__(keys)
        self.name = str(name)
        self.enabled = bool(enabled)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        if not self.enabled:
            return d
        for key in self.key_iterator(d):
            img = d[key]
            arr = img.detach().cpu().numpy() if isinstance(img, torch.Tensor) else np.asarray(img)
            if arr.ndim != 3 or arr.shape[0] != 1:
                raise ValueError(f"KeepOverlayImaged: {key!r} must be (1, W, H), got shape {tuple(arr.shape)}")
            gray = np.nan_to_num(np.clip(arr[0], 0, 1), copy=False)  # a new float array: scaled in place
            gray *= 255
            d[self.name] = np.ascontiguousarray(gray.astype(np.uint8).T)  # (W, H) -> (rows, cols), C order
        return d
