"""What is an input image: :func:`sniff_format` reads a file's first bytes (never its name), and
:func:`input_format` turns "none of them" into an error naming the file. The one rule used by the loader
(:func:`monai_mcx.transforms.io.read_cxr`), the folder listing (:func:`monai_mcx.data.datalist.list_image_folder`)
and the DICOM tree walk (:func:`monai_mcx.dicom.find_dicom`).
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

from monai_mcx.data.errors import DataError

__all__ = ["INPUT_FORMATS", "input_format", "is_dicom_file", "sniff_format"]


#: the input image formats, as :func:`sniff_format` names them
INPUT_FORMATS = ("dicom", "png", "jpeg", "tiff", "bmp", "nifti")
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic TIFF and BigTIFF, both byte orders
_BMP_DIB_SIZES = (12, 40, 52, 56, 64, 108, 124)  # the BITMAPINFOHEADER sizes: "BM" alone is too weak a magic


def _nifti_magic(head: bytes) -> bool:
    return head[344:348] in (b"n+1\x00",) or head[4:12] == b"n+2\x00\r\n\x1a\n"  # NIfTI-1 / NIfTI-2 single file


def sniff_format(path: str | os.PathLike) -> str | None:
    """The format of an input image, read from the file's first bytes; its name is not trusted.

    ``"dicom"``: the ``DICM`` magic at byte 128 (the DICOM file format's preamble); ``"png"``, ``"jpeg"``,
    ``"tiff"`` (also BigTIFF) and ``"bmp"``: their magic bytes at byte 0; ``"nifti"``: the NIfTI-1 (``n+1`` at
    byte 344) or NIfTI-2 (``n+2`` at byte 4) single-file magic, also inside a gzip stream (``.nii.gz``).
    DICOM comes first: a DICOM file's 128-byte preamble may hold a TIFF header (dual-personality files).

    Returns:
        one of :data:`INPUT_FORMATS`, or ``None`` for anything else (text, other image formats, DICOM
        without the preamble, a truncated header).

    Raises:
        OSError: the file cannot be opened or read.
    """
    with open(path, "rb") as f:
        head = f.read(348)
    if head[128:132] == b"DICM":
        return "dicom"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head[:4] in _TIFF_MAGIC:
        return "tiff"
    if head[:2] == b"BM" and len(head) >= 18 and int.from_bytes(head[14:18], "little") in _BMP_DIB_SIZES:
        return "bmp"
    if head.startswith(b"\x1f\x8b"):
        try:
            with gzip.open(path, "rb") as g:
                head = g.read(348)
        except (OSError, EOFError):  # not a gzip stream after all, or a truncated one
            return None
    return "nifti" if _nifti_magic(head) else None


def input_format(path: str | os.PathLike) -> str:
    """:func:`sniff_format` for an input that must be an image: the format, or an error naming the file.

    Raises:
        DataError: the content is none of :data:`INPUT_FORMATS` (the message says which extension it had) or
            the file cannot be read.
    """
    path = Path(path)
    try:
        fmt = sniff_format(path)
    except FileNotFoundError as e:
        raise DataError("file not found", path) from e
    except OSError as e:
        raise DataError(f"cannot be read ({e.strerror or e})", path) from e
    if fmt is None:
        named = ".nii.gz" if path.name.lower().endswith(".nii.gz") else path.suffix.lower()
        raise DataError(
            "not an image file: its content is not DICOM, PNG, JPEG, TIFF, BMP or NIfTI"
            + (f" (named {named})" if named else ""),
            path,
        )
    return fmt


def is_dicom_file(path: str | os.PathLike) -> bool:
    """:func:`sniff_format` is ``"dicom"`` (the ``DICM`` magic at byte 128); a file that cannot be read is not."""
    try:
        return sniff_format(path) == "dicom"
    except OSError:
        return False
