"""The one box validation of monai_mcx: datalist loader, data-set adapters and transforms all call it.

A box is ``[x1, y1, x2, y2]`` in MONAI ``StandardMode`` (``xyxy``, pixel edges, x = column = spatial dim 0).
It is valid when its four values are finite numbers, ``x2 > x1`` and ``y2 > y1``, and it lies inside the
image: ``x1, y1 >= -tol`` and, when the image size is known, ``x2 <= width + tol`` and ``y2 <= height + tol``.
MONAI's box utilities only fail later with "Box area is NaN or Inf." and name no file; these checks run
where the file is known.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from monai_mcx.data.errors import DataError

__all__ = ["check_box", "check_boxes"]


def check_box(
    box: Sequence[float],
    width: float | None = None,
    height: float | None = None,
    file: str | os.PathLike | None = None,
    row: int | str | None = None,
    tol: float = 1e-3,
) -> list[float]:
    """Check one ``[x1, y1, x2, y2]`` box (module docstring) and return it as four floats.

    Args:
        box: the four coordinates (StandardMode, x = column).
        width, height: the image size in pixels (``W``, ``H``); ``None`` checks only the lower bounds.
        file, row: where the box comes from (named in the error).
        tol: how many pixels a box may exceed the image before it is an error.

    Raises:
        DataError: naming ``file`` / ``row`` and the box: not four finite numbers, ``x2 <= x1`` or
            ``y2 <= y1``, or outside the image.
    """
    b: list[float] = []
    if isinstance(box, (Sequence, np.ndarray)) and not isinstance(box, (str, bytes)):
        if not any(isinstance(v, (bool, str, bytes)) for v in box):
            try:
                b = [float(v) for v in box]
            except (TypeError, ValueError):
                b = []
    if len(b) != 4:
        raise DataError(f"box {box!r} is not [x1, y1, x2, y2] (four finite numbers)", file, row)
    if not all(np.isfinite(b)):
        raise DataError(f"box {b} is not [x1, y1, x2, y2] (four finite numbers): it holds NaN or Inf", file, row)
    if b[2] <= b[0] or b[3] <= b[1]:
        raise DataError(f"box {b} has x2 <= x1 or y2 <= y1", file, row)
    if (
        b[0] < -tol
        or b[1] < -tol
        or (width is not None and b[2] > float(width) + tol)
        or (height is not None and b[3] > float(height) + tol)
    ):
        size = f"W x H = {width} x {height}" if width is not None else "negative coordinates"
        raise DataError(f"box {b} lies outside the image ({size})", file, row)
    return b


def check_boxes(
    boxes,
    width: float | None = None,
    height: float | None = None,
    file: str | os.PathLike | None = None,
    row: int | str | None = None,
    tol: float = 1e-3,
) -> np.ndarray:
    """Check every box of an ``(N, 4)`` array or list with :func:`check_box`.

    Returns:
        float32 array ``(N, 4)`` (``(0, 4)`` for an empty list).

    Raises:
        DataError: as :func:`check_box`, with the box index in the problem.
    """
    arr = boxes.detach().cpu().numpy() if hasattr(boxes, "detach") else boxes
    if isinstance(arr, np.ndarray):
        if arr.size == 0:
            return np.zeros((0, 4), np.float32)
        if arr.ndim != 2 or arr.shape[1] != 4:
            raise DataError(f"boxes of shape {tuple(arr.shape)} are not (N, 4) [x1, y1, x2, y2]", file, row)
    if isinstance(arr, (str, bytes)) or not isinstance(arr, (Sequence, np.ndarray)):
        raise DataError(f"boxes must be a list of [x1, y1, x2, y2], got {boxes!r}", file, row)
    out = []
    for i, b in enumerate(arr):
        if not isinstance(b, (Sequence, np.ndarray)) or isinstance(b, (str, bytes)):
            raise DataError(f"box {i}: {b!r} is not [x1, y1, x2, y2] (four finite numbers)", file, row)
        try:
            out.append(check_box(b, width, height, None, None, tol))
        except DataError as e:
            raise DataError(f"box {i}: {e.problem}", file, row) from None
    return np.asarray(out, dtype=np.float32).reshape(-1, 4)
