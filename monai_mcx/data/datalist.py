"""The monai_mcx datalist: one JSON schema for every data set.

A datalist is a MONAI-style JSON object ``{"class_names": [...], "training": [...], "validation": [...],
"test": [...]}``.  Each item has the keys

========== =====================================================================================
``image``   path to a DICOM/PNG/JPEG/NIfTI file, relative to the datalist's folder
``patient`` patient id (splits are made by patient, never by image)
``source``  data set name (``rsna``, ``siim``, ``nih``, ``kermany``, ``covid_lungs``, ``demo`` ...)
``label``   class vector over ``class_names`` or ``null`` when the image has no class annotation
``mask``    path to a lesion mask, or ``null`` when the image was not segmented
``boxes``   list of ``[x1, y1, x2, y2]`` (x = column), ``[]`` = annotated with no box, ``null`` = unknown
========== =====================================================================================

``null`` (unknown) is not the same as empty (negative): unknown labels contribute to no loss and no metric.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from monai_mcx.data.errors import DataError

__all__ = ["DatalistError", "load_datalist", "validate_item", "resolve_datalist", "inference_items", "SPLITS"]

SPLITS = ("training", "validation", "test")
_REQUIRED = ("image",)


class DatalistError(DataError):
    """A datalist (or one of its items) is invalid. The message names the file and the problem."""


def _where(datalist_file: str | os.PathLike, split: str, index: int, item: dict | None = None) -> str:
    image = f" (image {item.get('image')!r})" if isinstance(item, dict) and "image" in item else ""
    return f"{datalist_file}: {split}[{index}]{image}"


def validate_item(
    item: dict,
    num_classes: int | None,
    base_dir: str | os.PathLike,
    where: str = "datalist item",
    check_files: bool = True,
) -> dict:
    """Check one datalist item and return a copy whose paths are absolute.

    Raises:
        DatalistError: naming ``where`` and the problem (missing key, file not found, label length,
            malformed box).
    """
    if not isinstance(item, dict):
        raise DatalistError(f"{where}: an item must be a JSON object, got {type(item).__name__}")
    for key in _REQUIRED:
        if key not in item or item[key] in (None, ""):
            raise DatalistError(f"{where}: missing required key {key!r}")
    out = dict(item)
    out.setdefault("patient", Path(str(item["image"])).stem)
    out.setdefault("source", "unknown")
    for key in ("label", "mask", "boxes"):
        out.setdefault(key, None)
    for key in ("image", "mask"):
        if out[key] is None:
            continue
        path = Path(str(out[key]))
        if not path.is_absolute():
            path = Path(base_dir) / path
        if check_files and not path.is_file():
            raise DatalistError(f"{where}: {key} file not found: {path}")
        out[key] = str(path)
    if out["label"] is not None:
        label = out["label"]
        if isinstance(label, (int, float)):
            label = [label]
        if not isinstance(label, Sequence) or not all(isinstance(v, (int, float)) for v in label):
            raise DatalistError(f"{where}: label must be a list of numbers or null, got {out['label']!r}")
        if num_classes is not None and len(label) != num_classes:
            raise DatalistError(
                f"{where}: label has {len(label)} values but the bundle has {num_classes} class names"
            )
        out["label"] = [float(v) for v in label]
    if out["boxes"] is not None:
        boxes = out["boxes"]
        if not isinstance(boxes, Sequence):
            raise DatalistError(f"{where}: boxes must be a list of [x1, y1, x2, y2] or null, got {boxes!r}")
        for b in boxes:
            if not isinstance(b, Sequence) or len(b) != 4 or not all(isinstance(v, (int, float)) for v in b):
                raise DatalistError(f"{where}: box {b!r} is not [x1, y1, x2, y2]")
            if b[2] <= b[0] or b[3] <= b[1]:
                raise DatalistError(f"{where}: box {list(b)} has x2 <= x1 or y2 <= y1")
        out["boxes"] = [[float(v) for v in b] for b in boxes]
    return out


def load_datalist(
    datalist_file: str | os.PathLike,
    split: str = "training",
    class_names: Sequence[str] | None = None,
    check_files: bool = True,
    max_items: int | None = None,
) -> list[dict]:
    """Read ``split`` of a monai_mcx datalist, validate every item and make its paths absolute.

    Args:
        datalist_file: path to the JSON datalist.
        split: ``training``, ``validation`` or ``test``.
        class_names: the bundle's class names; when the datalist declares ``class_names`` they must match.
        check_files: check that image and mask files exist.
        max_items: keep only the first ``max_items`` items (quick runs).

    Raises:
        DatalistError: naming the datalist file, the item and what is wrong.
    """
    datalist_file = Path(datalist_file)
    if not datalist_file.is_file():
        raise DatalistError(f"{datalist_file}: datalist file not found")
    try:
        data = json.loads(datalist_file.read_text())
    except json.JSONDecodeError as e:
        raise DatalistError(f"{datalist_file}: not valid JSON ({e})") from e
    if not isinstance(data, dict):
        raise DatalistError(f"{datalist_file}: the datalist must be a JSON object with 'training'/'validation'/'test' lists")
    if split not in data:
        raise DatalistError(f"{datalist_file}: has no {split!r} list (it has {sorted(data)})")
    declared = data.get("class_names")
    if class_names is not None and declared is not None and list(declared) != list(class_names):
        raise DatalistError(
            f"{datalist_file}: its class_names {list(declared)} differ from the bundle's {list(class_names)}"
        )
    num_classes = len(class_names) if class_names is not None else (len(declared) if declared else None)
    items = data[split]
    if not isinstance(items, list):
        raise DatalistError(f"{datalist_file}: {split!r} must be a list")
    if max_items is not None:
        items = items[: int(max_items)]
    base = datalist_file.parent
    return [
        validate_item(it, num_classes, base, _where(datalist_file, split, i, it), check_files)
        for i, it in enumerate(items)
    ]


def resolve_datalist(dataset_dir: str | os.PathLike, datalist_file: str | None = None, generate_demo: bool = True, **demo_kwargs) -> str:
    """Find the datalist for ``dataset_dir``; generate the synthetic demo data there if it is absent.

    * ``datalist_file`` given: it must exist and is returned.
    * ``<dataset_dir>/datalist.json`` exists: returned.
    * ``dataset_dir`` missing or empty and ``generate_demo``: the synthetic demo data set is generated
      into it (see :mod:`monai_mcx.data.demo`) and its datalist returned.
    * otherwise a :class:`DatalistError` explains what to pass.
    """
    if datalist_file:
        if not Path(datalist_file).is_file():
            raise DatalistError(f"{datalist_file}: datalist file not found")
        return str(datalist_file)
    dataset_dir = Path(dataset_dir)
    candidate = dataset_dir / "datalist.json"
    if candidate.is_file():
        return str(candidate)
    if generate_demo and (not dataset_dir.exists() or not any(dataset_dir.iterdir())):
        from monai_mcx.data.demo import ensure_demo_data

        return str(ensure_demo_data(str(dataset_dir), **demo_kwargs))
    raise DatalistError(
        f"{dataset_dir}: no datalist.json here. Point 'datalist_file' at your datalist "
        "(scripts/prepare_data.py builds one), or use an empty/missing 'dataset_dir' to generate the synthetic demo data."
    )


IMAGE_SUFFIXES = (".dcm", ".dicom", ".png", ".jpg", ".jpeg", ".nii", ".nii.gz")


def inference_items(source: str | os.PathLike, split: str = "test") -> list[dict]:
    """Items ``{"image": path}`` to run inference on.

    ``source`` is a folder (every DICOM/PNG/JPEG/NIfTI file in it, sorted, not recursive), a datalist JSON
    (its ``split`` list; annotations are dropped), or a single image file.
    """
    source = Path(source)
    if source.is_dir():
        files = sorted(p for p in source.iterdir() if p.is_file() and p.name.lower().endswith(IMAGE_SUFFIXES))
        if not files:
            raise DatalistError(f"{source}: no DICOM/PNG/JPEG/NIfTI files in this folder")
        return [{"image": str(p)} for p in files]
    if source.suffix.lower() == ".json":
        return [{"image": it["image"]} for it in load_datalist(source, split, check_files=True)]
    if source.is_file():
        return [{"image": str(source)}]
    raise DatalistError(f"{source}: no such file or folder")
