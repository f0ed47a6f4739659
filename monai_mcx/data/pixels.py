"""The size, intensity and mask rules every image reader shares (:mod:`monai_mcx.transforms.readers` for
PNG/JPEG/BMP/TIFF and NIfTI, :mod:`monai_mcx.dicom.reader` for DICOM); the rules are those of the
:mod:`monai_mcx.transforms.io` docstring.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from monai_mcx.data.errors import DataError

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_MIN_SIZE",
    "binary_mask",
    "check_single_frame",
    "check_size",
    "minmax",
    "to_unit",
]

#: smallest accepted side of an image, in pixels
DEFAULT_MIN_SIZE = 32
#: largest accepted number of pixels of an image or mask
DEFAULT_MAX_PIXELS = 40_000_000


def minmax(a: np.ndarray) -> np.ndarray:
    a = a.astype(np.float32, copy=False)
    lo, hi = float(np.min(a)), float(np.max(a))
    if not np.isfinite(lo) or not np.isfinite(hi):
        raise ValueError("image has non-finite values")
    if hi <= lo:
        return np.zeros_like(a, dtype=np.float32)
    return (a - lo) / (hi - lo)


def to_unit(a: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Map ``[lo, hi]`` linearly to [0, 1] (float32 arithmetic, clipped); ``lo == 0, hi == 255`` is ``x / 255``."""
    if not hi > lo:
        raise ValueError(f"empty intensity range [{lo}, {hi}]")
    out = (a.astype(np.float32, copy=False) - np.float32(lo)) / np.float32(hi - lo)
    return np.clip(out, 0.0, 1.0)


def check_single_frame(frames: int, what: str, path: Path) -> None:
    """Refuse a multi-frame file (multi-frame DICOM, animated PNG, multi-page TIFF) rather than read one frame of it."""
    if frames > 1:
        raise DataError(f"expected a single-frame 2D image, got {frames} frames ({what})", path)


def check_size(cols: int, rows: int, path: Path, min_size: int, max_pixels: int | None) -> None:
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


def binary_mask(arr: np.ndarray, path: Path, grey_masks: str) -> np.ndarray:
    """A label mask (0 and one foreground value) -> 0/1; a grey-level mask -> error or thresholded
    (:mod:`monai_mcx.transforms.io` docstring)."""
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
