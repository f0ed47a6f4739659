"""Anchor shapes fitted to a datalist's training boxes, and the ``anchors.json`` that carries them.

The bundle's ``base_anchor_shapes`` are not generic priors: :func:`anchor_shapes_from_datalist` reads
the boxes of the training split (items whose ``boxes`` is ``null`` or ``[]`` contribute nothing),
scales each item's boxes from its image's size to the network input ``spatial_size`` exactly as
:class:`monai_mcx.transforms.ResizeWithBoxesd` does, and clusters them with
:func:`monai_mcx.networks.anchors.fit_anchor_shapes` (k-means, ``1 - IoU`` distance, seeded, hence
deterministic). Training writes the result next to the checkpoint (:func:`save_anchor_shapes`,
``<ckpt_dir>/anchors.json``); inference reads it back (:func:`load_anchor_shapes`) so that the network
and its box decoder always use the anchors the weights were trained with.

Image sizes are read from the file headers only (no pixel decoding): PIL for PNG/JPEG/..., pydicom
with ``stop_before_pixels`` (``Columns`` x ``Rows``) for DICOM, nibabel's header for NIfTI. Sizes are
``(W, H)``: ``W`` along spatial dim 0 = x = column (see ``docs/CONTRACTS.md``).
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from monai_mcx.data.datalist import load_datalist
from monai_mcx.data.errors import DataError
from monai_mcx.data.formats import input_format
from monai_mcx.keys import DatalistKeys
from monai_mcx.networks.anchors import fit_anchor_shapes
from monai_mcx.transforms.readers import exif_size_wh
from monai_mcx.utils import write_json_atomic

__all__ = [
    "image_size_wh",
    "training_boxes",
    "anchor_shapes_from_datalist",
    "anchor_shapes_from_file_or_datalist",
    "save_anchor_shapes",
    "load_anchor_shapes",
    "DEFAULT_ANCHOR_SHAPES",
]

#: fallback shapes ``[w, h]`` for a 128-px input when the data hold too few boxes to fit (scaled to the input size)
DEFAULT_ANCHOR_SHAPES = ((16.0, 16.0), (24.0, 24.0), (32.0, 20.0))


def image_size_wh(path: str | os.PathLike) -> tuple[int, int]:
    """``(W, H)`` of a 2D image file from its header (W = number of columns = size along x).

    Raises:
        DataError: naming the file when it cannot be read or is not 2D.
    """
    path = Path(path)
    try:
        fmt = input_format(path)  # the loader's rule: the content decides, not the name
        if fmt == "nifti":
            import nibabel as nib

            shape = [int(s) for s in nib.load(str(path)).header.get_data_shape()]
            if len(shape) < 2:
                raise DataError(f"expected a 2D NIfTI image, got shape {tuple(shape)}", path)
            return shape[0], shape[1]  # NIfTI arrays are indexed (x, y)
        if fmt == "dicom":
            import pydicom

            ds = pydicom.dcmread(str(path), stop_before_pixels=True)
            return int(ds.Columns), int(ds.Rows)
        from PIL import Image

        with Image.open(path) as im:
            return exif_size_wh(im)  # (width, height) as loaded: after the EXIF orientation, as LoadCXR does
    except DataError:
        raise
    except FileNotFoundError as e:
        raise DataError("file not found", path) from e
    except Exception as e:  # noqa: BLE001
        raise DataError(f"cannot read the image size from the header ({type(e).__name__}: {e})", path) from e


def training_boxes(
    datalist_file: str | os.PathLike,
    split: str = "training",
    spatial_size: Sequence[int] | None = None,
    max_items: int | None = None,
) -> list[np.ndarray]:
    """Boxes of ``split``, one ``(N_i, 4)`` ``xyxy`` float64 array per item with at least one box.

    With ``spatial_size = (W', H')`` each item's boxes are scaled from its image's ``(W, H)`` to the
    network input: ``x * W'/W``, ``y * H'/H`` (as ``ResizeWithBoxesd``). Items whose ``boxes`` is
    ``null`` (unknown) or ``[]`` (no lesion) are skipped, and their images are not opened.
    """
    items = load_datalist(datalist_file, split, check_files=False, max_items=max_items)
    out = []
    for it in items:
        boxes = it.get(DatalistKeys.BOXES)
        if not boxes:
            continue
        b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        if spatial_size is not None:
            w, h = image_size_wh(it[DatalistKeys.IMAGE])
            sx, sy = float(spatial_size[0]) / w, float(spatial_size[1]) / h
            b = b * np.array([sx, sy, sx, sy])
        out.append(b)
    return out


def anchor_shapes_from_datalist(
    datalist_file: str | os.PathLike,
    split: str = "training",
    spatial_size: Sequence[int] = (128, 128),
    num_anchors: int = 3,
    feature_map_scales: Sequence[float] = (1, 2, 4),
    max_items: int | None = None,
    seed: int = 0,
    fallback: Sequence[Sequence[float]] | None = None,
) -> list[list[float]]:
    """Base anchor shapes ``[[w, h], ...]`` (input pixels, finest head level) fitted to the training boxes.

    Args:
        datalist_file: the monai_mcx datalist JSON.
        split: which list to read (the training split).
        spatial_size: network input ``(W, H)``; boxes are scaled to it from each image's own size.
        num_anchors: A, the network's ``num_anchors``.
        feature_map_scales: the anchor generator's per-level scales (``make_anchor_generator``).
        max_items: use only the first ``max_items`` items (as the bundle's ``max_items``).
        seed: k-means seed (the result is a deterministic function of the data and the arguments).
        fallback: shapes to return (with a warning) when the split has fewer than ``num_anchors`` boxes,
            e.g. a classification-only data set; default: :data:`DEFAULT_ANCHOR_SHAPES` scaled to
            ``spatial_size`` (they are given for 128 px) and cut/cycled to ``num_anchors``.

    Returns:
        ``num_anchors`` shapes sorted by area, rounded to 0.1 px; see :func:`~monai_mcx.networks.fit_anchor_shapes`.
    """
    boxes = training_boxes(datalist_file, split, spatial_size, max_items)
    n = int(sum(len(b) for b in boxes))
    if n < int(num_anchors):
        if fallback is None:
            s = np.array([float(spatial_size[0]) / 128.0, float(spatial_size[1]) / 128.0])
            fallback = [
                list(np.round(np.asarray(DEFAULT_ANCHOR_SHAPES[i % len(DEFAULT_ANCHOR_SHAPES)]) * s, 1))
                for i in range(int(num_anchors))
            ]
        fallback = [[float(v) for v in shape] for shape in fallback]
        warnings.warn(
            f"{datalist_file}: the {split!r} split has {n} boxes, fewer than num_anchors={num_anchors}; "
            f"using the anchor shapes {fallback} instead of fitting them.",
            stacklevel=2,
        )
        return fallback
    return fit_anchor_shapes(boxes, num_anchors=int(num_anchors), feature_map_scales=feature_map_scales, seed=seed)


def anchor_shapes_from_file_or_datalist(
    anchors_file: str | os.PathLike, datalist_file: str | os.PathLike, **fit_kwargs
) -> list[list[float]]:
    """The anchors a trained model was trained with: ``anchors_file`` (``<ckpt_dir>/anchors.json``) when it exists
    and holds ``num_anchors`` shapes, else :func:`anchor_shapes_from_datalist` ``(datalist_file, **fit_kwargs)``
    (with a warning when the file exists but does not fit). Used by the evaluate config, so that evaluating on
    another datalist keeps the training anchors."""
    if Path(anchors_file).is_file():
        shapes = load_anchor_shapes(anchors_file)
        want = fit_kwargs.get("num_anchors")
        if want is None or len(shapes) == int(want):
            return shapes
        warnings.warn(
            f"{anchors_file}: holds {len(shapes)} anchor shapes, num_anchors={want}; refitting.", stacklevel=2
        )
    return anchor_shapes_from_datalist(datalist_file, **fit_kwargs)


def save_anchor_shapes(
    base_anchor_shapes: Sequence[Sequence[float]],
    path: str | os.PathLike,
    feature_map_scales: Sequence[float] | None = None,
    spatial_size: Sequence[int] | None = None,
) -> str:
    """Write ``{"base_anchor_shapes": ..., ...}`` to ``path`` atomically (e.g. ``<ckpt_dir>/anchors.json``);
    returns ``path``."""

    obj: dict = {"base_anchor_shapes": [[float(v) for v in s] for s in base_anchor_shapes]}
    if feature_map_scales is not None:
        obj["feature_map_scales"] = [float(v) for v in feature_map_scales]
    if spatial_size is not None:
        obj["spatial_size"] = [int(v) for v in spatial_size]
    write_json_atomic(obj, path)
    return str(path)


def load_anchor_shapes(path: str | os.PathLike, default: Sequence[Sequence[float]] | None = None) -> list[list[float]]:
    """``base_anchor_shapes`` from a file written by :func:`save_anchor_shapes`.

    Returns ``default`` when the file does not exist and a default is given.

    Raises:
        DataError: the file is missing (and no default) or malformed.
    """
    path = Path(path)
    if not path.is_file():
        if default is not None:
            return [[float(v) for v in s] for s in default]
        raise DataError(
            "anchor file not found; it is written next to the checkpoint by the training run "
            "(or pass base_anchor_shapes explicitly)",
            path,
        )
    try:
        shapes = json.loads(path.read_text())["base_anchor_shapes"]
        shapes = [[float(v) for v in s] for s in shapes]
    except (ValueError, KeyError, TypeError) as e:
        raise DataError(f"not a valid anchors file ({type(e).__name__}: {e})", path) from e
    if not shapes or any(len(s) != 2 or min(s) <= 0 for s in shapes):
        raise DataError(f"base_anchor_shapes must be a non-empty list of positive [w, h], got {shapes}", path)
    return shapes
