"""A saved label as a DICOM SEG for its source radiograph (no MONAI Label import; used by ``lib/dicomweb.py``).

A label reaches the app as a file: a PNG/JPEG/TIFF mask, ``rows x cols`` like the study (what ``/infer`` returns
and what a viewer saves back), or a NIfTI/NRRD volume in MONAI order ``(W, H)`` (``(W, H, 1)`` too), as MONAI Label
writes it. :func:`read_label_mask` turns either into a ``(rows, columns)`` bool mask (any non-zero value is the
lesion: the app has one label); :func:`label_to_seg` builds the DICOM SEG with the project's writer
(:func:`monai_mcx.dicom.seg.make_seg`, highdicom), on the source's pixel grid, referencing the source.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

__all__ = ["IMAGE_EXTENSIONS", "read_label_mask", "with_lossy_ratio", "label_to_seg"]

#: label files read as pictures (numpy ``(rows, cols)`` order); anything else is read by MONAI (``(W, H)``)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def read_label_mask(path: str | os.PathLike, rows: int, cols: int) -> np.ndarray:
    """The label file as a ``(rows, cols)`` bool mask (non-zero = lesion).

    Args:
        path: a picture (``IMAGE_EXTENSIONS``: ``(rows, cols)``, colour collapsed by "any channel non-zero") or a
            volume MONAI reads (``.nii.gz``, ``.nrrd``, ...: ``(W, H)`` or ``(W, H, 1)``, transposed here).
        rows, cols: the source image's size.

    Raises:
        ValueError: the file cannot be read, or its size is not the source's (the message names the file and both
            sizes).
    """
    path = Path(path)
    ext = _suffix(path)
    try:
        if ext in IMAGE_EXTENSIONS:
            from PIL import Image

            with Image.open(path) as im:
                arr = np.asarray(im)  # (rows, cols) or (rows, cols, channels)
            if arr.ndim == 3:
                arr = (arr[..., :3] != 0).any(axis=-1) if arr.shape[-1] in (3, 4) else arr[..., 0]
        else:
            from monai.transforms import LoadImage

            arr = np.asarray(LoadImage(image_only=True)(str(path)))
            arr = arr.reshape([s for s in arr.shape if s != 1] or [1]).T  # (W, H[, 1]) -> (rows, cols)
    except Exception as e:  # noqa: BLE001 - PIL / MONAI readers raise many types for a broken file
        raise ValueError(f"{path.name}: not a readable label file ({type(e).__name__}: {e}).") from e
    if arr.shape != (rows, cols):
        raise ValueError(
            f"{path.name}: the label is {tuple(arr.shape)} but the image is (rows, cols) = ({rows}, {cols}) "
            f"(pictures are rows x cols; volumes (W, H), MONAI's order)."
        )
    return arr != 0


def with_lossy_ratio(header, source: str | os.PathLike):
    """``header`` with a Lossy Image Compression Ratio when it says ``LossyImageCompression == "01"`` without one
    (the RSNA challenge's JPEG files do): the ratio of the uncompressed pixel bytes to the stored (encapsulated)
    ones, read from ``source``. highdicom 0.22 (the last release for pydicom 2, which MONAI Label 0.8.5 needs)
    copies the ratio into the SEG unconditionally and fails without it; later releases skip it. Unchanged
    otherwise."""
    if str(header.get("LossyImageCompression", "")) != "01" or "LossyImageCompressionRatio" in header:
        return header
    import pydicom

    ds = pydicom.dcmread(source)
    stored = len(ds.PixelData)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    raw = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1)) * int(ds.BitsAllocated) // 8 * frames
    header.LossyImageCompressionRatio = f"{raw / stored:.2f}"
    return header


def label_to_seg(source: str | os.PathLike, label: str | os.PathLike, **seg_kwargs):
    """The DICOM SEG (a pydicom dataset, not written) of ``label`` for the radiograph ``source``.

    Args:
        source: the source DICOM file (its header only is read).
        label: the label file (:func:`read_label_mask`).
        seg_kwargs: passed to :func:`monai_mcx.dicom.seg.make_seg` (``algorithm_name``, ``series_number``, ...).

    Raises:
        ValueError: an unreadable source or label, or a label whose size is not the source's.
    """
    from monai_mcx.dicom.io import read_header
    from monai_mcx.dicom.seg import make_seg

    header = with_lossy_ratio(read_header(source), source)
    mask = read_label_mask(label, int(header.Rows), int(header.Columns))
    return make_seg(header, mask, **seg_kwargs)
