"""The bytes of the per-image output files (:class:`monai_mcx.handlers.PredictionWriter`): PNG, JPEG and NIfTI
masks, encoded in memory so that each file is written atomically in one step."""

from __future__ import annotations

import gzip
import io
from collections.abc import Sequence

import nibabel as nib
import numpy as np
from PIL import Image

__all__ = ["jpeg_bytes", "nifti_mask_bytes", "png_bytes"]


def png_bytes(image: Image.Image | np.ndarray) -> bytes:
    """PNG bytes of an image (or a ``(rows, cols[, 3])`` uint8 array) at zlib level 1: masks and overlays
    compress almost as well as at the default level 6, several times faster."""
    im = image if isinstance(image, Image.Image) else Image.fromarray(image)
    buf = io.BytesIO()
    im.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def jpeg_bytes(image: Image.Image) -> bytes:
    """JPEG bytes of an RGB image at quality 90 (the optional, lossy overlay format)."""
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def nifti_mask_bytes(mask_wh: np.ndarray, spacing: Sequence[float]) -> bytes:
    """Gzipped NIfTI-1 bytes of a ``(W, H)`` 0/1 mask (uint8, MONAI order: x first), ``spacing`` (x, y) in the affine."""
    affine = np.diag([float(spacing[0]), float(spacing[1]), 1.0, 1.0])
    img = nib.Nifti1Image(mask_wh.astype(np.uint8), affine)
    img.header.set_data_dtype(np.uint8)
    return gzip.compress(img.to_bytes(), compresslevel=6)
