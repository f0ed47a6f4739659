"""The DICOM pixel reader behind :func:`monai_mcx.transforms.io.read_cxr` (``LoadCXRd``): header and size checks
before decoding, a clear error naming the pixel plugin to install for a compressed transfer syntax, and the DICOM
grayscale pipeline (modality LUT, VOI LUT / window or stored range, ``MONOCHROME1`` inversion) described in the
:mod:`monai_mcx.transforms.io` docstring.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from monai_mcx.data.errors import DataError
from monai_mcx.data.pixels import binary_mask, check_single_frame, check_size, to_unit

__all__ = ["PLUGIN_HINT"]

#: what to install for compressed DICOM transfer syntaxes
PLUGIN_HINT = "pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg (or pillow / python-gdcm)"


def _age_or_nan(ds) -> float:
    """The patient's age in years (:func:`monai_mcx.dicom.checks.patient_age_years`), NaN when unknown (the
    metadata of a batch is collated, so no None)."""
    from monai_mcx.dicom.checks import patient_age_years

    age = patient_age_years(ds)
    return float("nan") if age is None else float(age)


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


def _overlay_in_unused_bits(ds, bits: int) -> bool:
    """True when an overlay plane is embedded in the pixel data's high bits (retired, found in old CR files):
    ``OverlayBitPosition`` (60xx,0102) at or above ``BitsStored``."""
    for group in range(0x6000, 0x6020, 2):
        elem = ds.get((group, 0x0102))
        if elem is not None and elem.value is not None and int(elem.value) >= bits:
            return True
    return False


def _decode(ds, path: Path, bits: int) -> tuple[np.ndarray, int]:
    """The pixel array and the bits stored to use (:mod:`monai_mcx.transforms.io`, "BitsStored and the data").

    pydicom 3 masks unsigned pixels to ``BitsStored`` bits (``correct_unused_bits``): a 12-bit header over
    13-bit data would wrap 4096 to 0 and 5000 to 904. The pixels are decoded unmasked instead; when the unused
    high bits hold values (the header contradicts the data) they are kept, ``BitsStored`` is taken as the
    smallest bit depth that holds the largest value (at most ``BitsAllocated``) and a warning names the file.
    High bits that hold an embedded overlay (``OverlayBitPosition >= BitsStored``) are masked off, as the
    standard says. Signed pixels are sign-extended from ``BitsStored`` (the standard's rule, pydicom's default).
    """
    if hasattr(ds, "pixel_array_options"):  # pydicom >= 3; pydicom 2 does not mask unsigned pixels
        ds.pixel_array_options(correct_unused_bits=False)
    arr = ds.pixel_array
    allocated = int(ds.get("BitsAllocated", 0) or 0)
    if bits >= allocated or arr.dtype.kind not in "iu":
        return arr, bits
    if int(ds.get("PixelRepresentation", 0) or 0) == 1:
        shift = arr.dtype.itemsize * 8 - bits
        arr = np.left_shift(arr, shift) >> shift  # arithmetic shift on a signed dtype: sign extension
        return arr, bits
    top = int(arr.max()) if arr.size else 0
    if top < 2**bits:
        return arr, bits
    if _overlay_in_unused_bits(ds, bits):
        return arr & np.asarray(2**bits - 1, dtype=arr.dtype), bits
    used = min(allocated, top.bit_length())
    warnings.warn(
        f"{path}: BitsStored={bits} but pixel values reach {top} (BitsAllocated={allocated}): the header contradicts "
        f"the pixel data. The pixels are used as stored (not masked to {bits} bits) and BitsStored taken as "
        f"{used} bits, the smallest that holds them (stored range 0..{2**used - 1})",
        UserWarning,
        stacklevel=4,
    )
    return arr, used


def _dicom_to_unit(arr: np.ndarray, ds, bits: int, apply_voi: bool, meta: dict) -> np.ndarray:
    """Steps 1 and 2 of the DICOM pipeline (:mod:`monai_mcx.transforms.io` docstring): modality LUT, then window
    or stored range -> [0, 1]."""
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
    return to_unit(np.asarray(out), lo, hi)


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
    check_size(
        int(ds.get("Columns", 0) or 0), int(ds.get("Rows", 0) or 0), path, 0 if as_mask else min_size, max_pixels
    )
    frames = ds.get("NumberOfFrames")
    check_single_frame(int(frames or 1), f"NumberOfFrames={frames}", path)
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
        arr, bits = _decode(ds, path, bits)
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
        "patient_age_years": _age_or_nan(ds),  # monai_mcx.data.populations decides adult / pediatric from it
    }
    if as_mask:
        return binary_mask(arr, path, grey_masks), _spacing(ds), meta
    if spp > 1:
        out = to_unit(arr, *_stored_range(ds, bits))
        meta["intensity"] = "stored_range"
    else:
        out = _dicom_to_unit(arr, ds, bits, apply_voi, meta)
    if invert and (photometric == "MONOCHROME1" or shape == "INVERSE"):
        out = 1.0 - out
        meta["inverted"] = True
    return out, _spacing(ds), meta
