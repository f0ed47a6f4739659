"""Run-length encoding of binary masks as used by the SIIM-ACR Pneumothorax Segmentation challenge.

The SIIM ``train-rle.csv`` encodes a mask as pairs ``offset length`` over the **column-major** flattened
mask (pixel index ``x * height + y``), where each ``offset`` counts from the end of the previous run
(the first from pixel 0); ``-1`` (or an empty string) means an empty mask. This is the
``mask_functions.py`` convention shipped with the challenge (``rle2mask(rle, 1024, 1024).T``).
``relative=False`` reads/writes the conventional absolute ``start length`` pairs instead (still
column-major).

Masks are numpy ``(H, W)`` (rows, columns) ``uint8`` 0/1 arrays, the edge-of-pipeline layout used for
PNG writing; transpose to get MONAI's ``(W, H)``.
"""

from __future__ import annotations

import os

import numpy as np

from monai_mcx.data.errors import DataError

__all__ = ["rle_decode", "rle_encode", "rle_check", "EMPTY_RLE"]

#: the SIIM marker for an empty mask
EMPTY_RLE = "-1"


def _parse(rle: str, file, row) -> np.ndarray:
    text = str(rle).strip()
    if text in ("", EMPTY_RLE):
        return np.zeros(0, dtype=np.int64)
    try:
        values = np.array(text.split(), dtype=np.int64)
    except ValueError as e:
        raise DataError(f"RLE is not a list of integers ({text[:40]!r}...)", file, row) from e
    if values.size % 2:
        raise DataError(f"RLE has an odd number of values ({values.size}); expected offset/length pairs", file, row)
    if (values < 0).any():
        raise DataError("RLE has a negative offset or length", file, row)
    return values


def _runs(values: np.ndarray, relative: bool) -> tuple[np.ndarray, np.ndarray]:
    offsets, lengths = values[0::2], values[1::2]
    if relative:
        # start_i = sum_{j<=i} offset_j + sum_{j<i} length_j
        starts = np.cumsum(offsets) + np.concatenate(([0], np.cumsum(lengths)[:-1]))
    else:
        starts = offsets
    return starts, starts + lengths


def rle_check(
    rle: str,
    width: int = 1024,
    height: int = 1024,
    relative: bool = True,
    file: str | os.PathLike | None = None,
    row: int | None = None,
) -> int:
    """Validate an RLE string without building the mask; return its number of foreground pixels.

    Raises:
        DataError: as :func:`rle_decode` would.
    """
    values = _parse(rle, file, row)
    if not values.size:
        return 0
    starts, ends = _runs(values, relative)
    n = int(width) * int(height)
    if ends.max() > n:
        i = int(np.argmax(ends > n))
        raise DataError(
            f"RLE run {i} (pixels {int(starts[i])}..{int(ends[i]) - 1}) overruns the {width}x{height} image "
            f"({n} pixels)",
            file,
            row,
        )
    return int((ends - starts).sum())


def rle_decode(
    rle: str,
    width: int = 1024,
    height: int = 1024,
    relative: bool = True,
    file: str | os.PathLike | None = None,
    row: int | None = None,
) -> np.ndarray:
    """Decode one SIIM RLE string into a ``(height, width)`` uint8 0/1 mask.

    Args:
        rle: ``"-1"`` / ``""`` for an empty mask, else whitespace-separated ``offset length`` pairs.
        width, height: mask size in pixels (columns, rows).
        relative: offsets count from the end of the previous run (SIIM ``train-rle.csv``); ``False`` for
            absolute starts.
        file, row: named in the error message.

    Raises:
        DataError: malformed RLE, or a run that ends beyond ``width * height`` pixels.
    """
    n = int(width) * int(height)
    values = _parse(rle, file, row)
    flat = np.zeros(n, dtype=np.uint8)
    if values.size:
        starts, ends = _runs(values, relative)
        if ends.max() > n:
            i = int(np.argmax(ends > n))
            raise DataError(
                f"RLE run {i} (pixels {int(starts[i])}..{int(ends[i]) - 1}) overruns the {width}x{height} image "
                f"({n} pixels)",
                file,
                row,
            )
        lengths = ends - starts
        # indices of every foreground pixel, without a Python loop over runs
        before = np.concatenate(([0], np.cumsum(lengths)[:-1]))
        flat[np.arange(int(lengths.sum())) + np.repeat(starts - before, lengths)] = 1
    mask = flat
    # column-major: index = x * height + y  ->  (W, H) -> transpose to (H, W)
    return np.ascontiguousarray(mask.reshape(int(width), int(height)).T)


def rle_encode(mask: np.ndarray, relative: bool = True) -> str:
    """Encode a ``(H, W)`` mask (non-zero = foreground) as a SIIM RLE string; ``"-1"`` when empty.

    ``rle_decode(rle_encode(m), W, H)`` equals ``(m > 0)``.
    """
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"rle_encode expects a 2D (H, W) mask, got shape {m.shape}")
    flat = (m.T.reshape(-1) > 0).astype(np.int8)  # column-major
    if not flat.any():
        return EMPTY_RLE
    d = np.diff(np.concatenate(([0], flat, [0])))
    starts = np.flatnonzero(d == 1)
    ends = np.flatnonzero(d == -1)
    lengths = ends - starts
    if relative:
        prev_end = np.concatenate(([0], ends[:-1]))
        offsets = starts - prev_end
    else:
        offsets = starts
    pairs = np.empty(2 * starts.size, dtype=np.int64)
    pairs[0::2], pairs[1::2] = offsets, lengths
    return " ".join(map(str, pairs.tolist()))
