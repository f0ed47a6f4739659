"""The monai_mcx datalist: one JSON schema for every data set.

A datalist is a MONAI-style JSON object ``{"class_names": [...], "training": [...], "validation": [...],
"test": [...]}``.  Each item has the keys

========== =====================================================================================
``image``   path to a DICOM/PNG/JPEG/TIFF/NIfTI file, relative to the datalist's folder
``patient`` patient id (splits are made by patient, never by image)
``source``  data set name (``rsna``, ``siim``, ``nih``, ``kermany``, ``covid_lungs``, ``demo`` ...)
``label``   class vector over ``class_names`` or ``null`` when the image has no class annotation
``mask``    path to a lesion mask, or ``null`` when the image was not segmented
``boxes``   list of ``[x1, y1, x2, y2]`` (x = column), ``[]`` = annotated with no box, ``null`` = unknown
========== =====================================================================================

Optional: ``lung_mask`` (path to a lung-field mask -- an outline of the lungs, never a lesion -- or ``null``) and
``population`` (``adult`` / ``pediatric``; absent or ``null`` = unknown: the source decides, see
:data:`monai_mcx.data.populations.SOURCE_POPULATIONS`).

``null`` (unknown) is not the same as empty (negative): unknown labels contribute to no loss and no metric.

Checks (:func:`validate_item`): label values must be 0 or 1 (``-1``, CheXpert's "uncertain", is refused
unless ``uncertain="zeros"`` or ``"ones"`` maps it; ``2``, ``0.5``, ``NaN`` are always refused); boxes go
through :func:`monai_mcx.data.boxes.check_box` (finite, ``x2 > x1``, ``y2 > y1``; the bounds are checked
against the image when it is loaded, by :class:`~monai_mcx.transforms.PrepareAnnotationsd`); paths written on
Windows (``images\\img.png``) are accepted: backslashes are read as folder separators unless a file with
the literal name exists. A Windows absolute path (``C:\\...``) cannot be found on another system: the error
says so.
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
import stat
from collections.abc import Sequence
from pathlib import Path

from monai_mcx.data.boxes import check_box
from monai_mcx.data.demo import ensure_demo_data
from monai_mcx.data.errors import DataError
from monai_mcx.data.formats import input_format
from monai_mcx.keys import BatchKeys, DatalistKeys

__all__ = [
    "DatalistError",
    "load_datalist",
    "validate_item",
    "check_label",
    "resolve_path",
    "resolve_datalist",
    "inference_items",
    "list_image_folder",
    "SPLITS",
    "UNCERTAIN_POLICIES",
]

SPLITS = ("training", "validation", "test")
_REQUIRED = (DatalistKeys.IMAGE.value,)
#: what a label value of -1 (CheXpert's "uncertain") becomes: refused, 0 (U-Zeros) or 1 (U-Ones)
UNCERTAIN_POLICIES = {"error": None, "zeros": 0.0, "ones": 1.0}
_WINDOWS_ABSOLUTE = re.compile(r"^(?:[A-Za-z]:[\\/]|\\\\)")


class DatalistError(DataError):
    """A datalist (or one of its items) is invalid. The message names the file and the problem."""


def _where(datalist_file: str | os.PathLike, split: str, index: int, item: dict | None = None) -> str:
    image = (
        f" (image {item.get(DatalistKeys.IMAGE)!r})" if isinstance(item, dict) and DatalistKeys.IMAGE in item else ""
    )
    return f"{datalist_file}: {split}[{index}]{image}"


def check_label(label, num_classes: int | None, where: str = "datalist item", uncertain: str = "error") -> list[float]:
    """Check a class vector and return it as floats.

    Args:
        label: a number or a list of numbers, one per class name.
        num_classes: the expected length (``None``: any).
        where: named in the error (datalist file, split, index and image).
        uncertain: what a ``-1`` value (CheXpert's "uncertain") becomes: ``"error"`` (refused, the default),
            ``"zeros"`` (0, "U-Zeros") or ``"ones"`` (1, "U-Ones").

    Raises:
        DatalistError: a value that is not 0 or 1 (``2``, ``0.5``, ``NaN``, or ``-1`` under ``"error"``),
            not a number, or a wrong length.
    """
    if uncertain not in UNCERTAIN_POLICIES:
        raise ValueError(f"uncertain must be one of {sorted(UNCERTAIN_POLICIES)}, got {uncertain!r}")
    values = [label] if isinstance(label, (int, float)) else label
    if (
        isinstance(values, (str, bytes))
        or not isinstance(values, Sequence)
        or not all(isinstance(v, (int, float)) for v in values)
    ):
        raise DatalistError(f"{where}: label must be a list of numbers (0 or 1) or null, got {label!r}")
    if num_classes is not None and len(values) != num_classes:
        raise DatalistError(f"{where}: label has {len(values)} values but the bundle has {num_classes} class names")
    out = []
    for i, v in enumerate(values):
        v = float(v)
        if v == -1.0 and UNCERTAIN_POLICIES[uncertain] is not None:
            v = UNCERTAIN_POLICIES[uncertain]
        elif v == -1.0:
            raise DatalistError(
                f"{where}: label[{i}] is -1 (CheXpert's 'uncertain'), which is neither 0 nor 1: map it explicitly "
                "with load_datalist(..., uncertain='zeros' or 'ones') or write 0, 1 or a null label"
            )
        elif not math.isfinite(v):
            raise DatalistError(f"{where}: label[{i}] is {v}, not 0 or 1 (an unknown label is written null)")
        elif v not in (0.0, 1.0):
            raise DatalistError(f"{where}: label[{i}] is {v:g}, not 0 or 1 (labels are binary per class)")
        out.append(v)
    return out


def resolve_path(
    value,
    base_dir: str | os.PathLike,
    where: str = "datalist item",
    key: str = DatalistKeys.IMAGE.value,
    check_files: bool = True,
) -> str:
    """The absolute path of a datalist entry (relative paths are relative to ``base_dir``).

    A path written on Windows (``images\\img.png``) is read with ``/`` as separator unless a file with the
    literal name (backslashes included) exists. A Windows absolute path (``C:\\data\\img.png`` or
    ``\\\\server\\share``) cannot be found elsewhere: when it is missing the error says so.

    Raises:
        DatalistError: ``check_files`` and the file does not exist (naming ``where``, ``key`` and the path).
    """
    text = str(value)
    path = Path(text)
    if not path.is_absolute():
        path = Path(base_dir) / path
    normalised = path
    if "\\" in text and os.sep != "\\" and not path.is_file():
        windows_abs = bool(_WINDOWS_ABSOLUTE.match(text))
        normalised = Path(text.replace("\\", "/"))
        if not normalised.is_absolute():
            normalised = Path(base_dir) / normalised
        if check_files and not normalised.is_file():
            if windows_abs:
                raise DatalistError(
                    f"{where}: {key} file not found: {text!r} is a Windows absolute path, which does not exist on "
                    "this system; write paths relative to the datalist's folder"
                )
            raise DatalistError(
                f"{where}: {key} file not found: {normalised} (read from {text!r}, backslashes taken as folder "
                "separators)"
            )
    elif check_files and not path.is_file():
        raise DatalistError(f"{where}: {key} file not found: {path}")
    return str(normalised)


def validate_item(
    item: dict,
    num_classes: int | None,
    base_dir: str | os.PathLike,
    where: str = "datalist item",
    check_files: bool = True,
    uncertain: str = "error",
) -> dict:
    """Check one datalist item and return a copy whose paths are absolute.

    Args:
        item: the datalist item.
        num_classes: the number of class names (label length), ``None`` for any.
        base_dir: the datalist's folder (relative paths start there).
        where: named in the errors.
        check_files: check that image and mask files exist.
        uncertain: the policy for ``-1`` label values (see :func:`check_label`).

    Raises:
        DatalistError: naming ``where`` and the problem (missing key, file not found, label value or length,
            malformed box).
    """
    if not isinstance(item, dict):
        raise DatalistError(f"{where}: an item must be a JSON object, got {type(item).__name__}")
    for key in _REQUIRED:
        if key not in item or item[key] in (None, ""):
            raise DatalistError(f"{where}: missing required key {key!r}")
    out = dict(item)
    out.setdefault(DatalistKeys.PATIENT.value, Path(str(item[DatalistKeys.IMAGE])).stem)
    out.setdefault(DatalistKeys.SOURCE.value, "unknown")
    for key in (DatalistKeys.LABEL.value, DatalistKeys.MASK.value, DatalistKeys.BOXES.value):
        out.setdefault(key, None)
    for key in (DatalistKeys.IMAGE.value, DatalistKeys.MASK.value, DatalistKeys.LUNG_MASK.value):
        if out.get(key) is not None:
            out[key] = resolve_path(out[key], base_dir, where, key, check_files)
    population = out.get(DatalistKeys.POPULATION.value)
    if population is not None and population not in ("adult", "pediatric"):
        raise DatalistError(f"{where}: population must be 'adult', 'pediatric' or null, got {population!r}")
    if out[DatalistKeys.LABEL] is not None:
        out[DatalistKeys.LABEL.value] = check_label(out[DatalistKeys.LABEL], num_classes, where, uncertain)
    if out[DatalistKeys.BOXES] is not None:
        boxes = out[DatalistKeys.BOXES]
        if isinstance(boxes, (str, bytes)) or not isinstance(boxes, Sequence):
            raise DatalistError(f"{where}: boxes must be a list of [x1, y1, x2, y2] or null, got {boxes!r}")
        checked = []
        for i, b in enumerate(boxes):
            try:
                # bounds need the image: PrepareAnnotationsd / LoadCXRd check them (with their tolerance)
                checked.append(check_box(b, tol=math.inf))
            except DataError as e:
                raise DatalistError(f"{where}: boxes[{i}]: {e.problem}") from None
        out[DatalistKeys.BOXES.value] = checked
    return out


def _read_split(datalist_file: Path, split: str, class_names: Sequence[str] | None):
    """``(items, num_classes)`` of ``split`` (the JSON and its structure checked, the items not)."""
    if not datalist_file.is_file():
        raise DatalistError(f"{datalist_file}: datalist file not found")
    try:
        data = json.loads(datalist_file.read_text())
    except json.JSONDecodeError as e:
        raise DatalistError(f"{datalist_file}: not valid JSON ({e})") from e
    if not isinstance(data, dict):
        raise DatalistError(
            f"{datalist_file}: the datalist must be a JSON object with 'training'/'validation'/'test' lists"
        )
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
    return items, num_classes


def load_datalist(
    datalist_file: str | os.PathLike,
    split: str = "training",
    class_names: Sequence[str] | None = None,
    check_files: bool = True,
    max_items: int | None = None,
    uncertain: str = "error",
    evaluate_tasks: Sequence[str] | None = None,
) -> list[dict]:
    """Read ``split`` of a monai_mcx datalist, validate every item and make its paths absolute.

    Args:
        datalist_file: path to the JSON datalist.
        split: ``training``, ``validation`` or ``test``.
        class_names: the bundle's class names; when the datalist declares ``class_names`` they must match.
        check_files: check that image and mask files exist.
        max_items: keep only the first ``max_items`` items (quick runs).
        uncertain: what a ``-1`` label value becomes: ``"error"`` (default), ``"zeros"`` or ``"ones"``
            (see :func:`check_label`).
        evaluate_tasks: the split is to be evaluated for these tasks (``evaluate.json`` passes the model's): it
            must not be empty, and at least one item must be annotated for one of them (``label`` for
            classification, ``mask`` for segmentation, ``boxes`` for localization, ``[]`` included), or there
            would be nothing to score (a run doing nothing, or a ``val_score`` of 0.0).

    Raises:
        DatalistError: naming the datalist file, the item and what is wrong; with ``evaluate_tasks``, naming the
            datalist file and the split that has nothing to evaluate.
    """
    datalist_file = Path(datalist_file)
    items, num_classes = _read_split(datalist_file, split, class_names)
    if max_items is not None:
        items = items[: int(max_items)]
    base = datalist_file.parent
    items = [
        validate_item(it, num_classes, base, _where(datalist_file, split, i, it), check_files, uncertain)
        for i, it in enumerate(items)
    ]
    if evaluate_tasks is not None:
        _check_evaluable(items, datalist_file, split, evaluate_tasks)
    return items


def _check_evaluable(items: list[dict], datalist_file: Path, split: str, tasks: Sequence[str]) -> None:
    """Raise a :class:`DatalistError` when ``items`` (``split`` of ``datalist_file``) give nothing to evaluate."""
    from monai_mcx.data.sampling import annotation_signature

    if not items:
        raise DatalistError(
            f"{datalist_file}: the {split!r} split is empty: nothing to evaluate (set eval_split to a split with "
            "annotated items)"
        )
    if not any(set(annotation_signature(it)) & set(tasks) for it in items):
        raise DatalistError(
            f"{datalist_file}: no item of the {split!r} split ({len(items)} items) is annotated for the model's "
            f"tasks {list(tasks)} (every label, mask and boxes is null): nothing to evaluate; evaluate a split with "
            "annotations, or run inference.json to predict on unannotated images"
        )


def resolve_datalist(
    dataset_dir: str | os.PathLike, datalist_file: str | None = None, generate_demo: bool = True, **demo_kwargs
) -> str:
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
        return str(ensure_demo_data(str(dataset_dir), **demo_kwargs))
    raise DatalistError(
        f"{dataset_dir}: no datalist.json here. Point 'datalist_file' at your datalist "
        "(scripts/prepare_data.py builds one), or use an empty/missing 'dataset_dir' to generate the synthetic demo data."
    )


#: the usual extensions of the input formats (for globs and messages: an input is recognised by its content,
#: :func:`monai_mcx.data.formats.sniff_format`, whatever its name)
IMAGE_SUFFIXES = (".dcm", ".dicom", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".nii", ".nii.gz")


def _skip_reason(path: Path) -> str | None:
    """Why folder inference skips ``path`` (``None``: it is an input image)."""
    try:
        st = path.stat()  # follows symlinks
    except OSError as e:
        if path.is_symlink():
            if e.errno == errno.ELOOP:
                return "symlink loop"
            if e.errno == errno.ENOENT:
                return "broken symlink (its target does not exist)"
        return f"cannot be read ({e.strerror or e})"
    if stat.S_ISDIR(st.st_mode):
        return "a folder (searched for DICOM files only)"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    if not os.access(path, os.R_OK):
        return "unreadable (permission denied)"
    try:
        input_format(path)  # the loader's rule: the content decides, not the name
    except DataError as e:
        return e.problem
    return None


def list_image_folder(folder: str | os.PathLike) -> tuple[list[Path], list[tuple[Path, str]]]:
    """The input images of a folder, and every other entry with the reason it is skipped.

    An entry is an input when it is a readable regular file (symlinks followed) whose content is DICOM, PNG,
    JPEG, TIFF, BMP or NIfTI, whatever its name (:func:`monai_mcx.data.formats.sniff_format`, the rule the
    loader applies: a DICOM named ``.png`` or without an extension, as PACS exports often are, is listed; a text
    file named ``.png`` is not). Everything else -- sub-folders (searched for DICOM by :func:`inference_items`),
    symlink loops, broken symlinks, unreadable and other files -- is returned with its reason; a DICOMDIR is
    left out (its instances are files of the tree).

    Returns:
        ``(images, skipped)``: sorted paths, and ``(path, reason)`` pairs in name order.
    """
    images, skipped = [], []
    for path in sorted(Path(folder).iterdir()):
        if path.name.upper() == "DICOMDIR":
            continue
        reason = _skip_reason(path)
        if reason is None:
            images.append(path)
        else:
            skipped.append((path, reason))
    return images, skipped


def inference_items(
    source: str | os.PathLike,
    split: str = "test",
    dicom_checks: bool | str = True,
    allow_secondary: bool | str = False,
    allow_lateral: bool | str = False,
) -> list[dict]:
    """Items ``{"image": path}`` to run inference on; inputs that cannot be run carry an ``error`` instead.

    ``source`` is

    * a folder: the DICOM/PNG/JPEG/TIFF/BMP/NIfTI files directly in it (by content, sorted by name; extension-less
      DICOM files included), see :func:`list_image_folder`, then the DICOM instances of its sub-folders (any depth,
      grouped by study, series and instance number; PNG/JPEG files in sub-folders are not run), see
      :func:`monai_mcx.dicom.inputs.nested_instances`. Every other entry (a sub-folder without DICOM, symlink loop,
      unreadable or non-image file) becomes ``{"image": path, "error": "<path>: skipped: <reason>"}``, which
      :class:`~monai_mcx.transforms.GuardLoadd` turns into an error row of ``predictions.csv``;
    * a DICOMDIR: the instances it references;
    * a DICOMweb address (``dicomweb://host:port/dicom-web?StudyInstanceUID=...`` or ``http(s)://...``): the
      instances it selects, downloaded into a temporary folder (:func:`monai_mcx.dicom.inputs.fetch_items`);
    * a datalist JSON: its ``split`` list (annotations are dropped; ``source`` and ``population`` are kept: they
      choose the image's operating point, :mod:`monai_mcx.data.populations`); an item whose image is missing becomes an
      item with ``error`` (the run goes on), and so does a malformed item;
    * a single image file.

    Every DICOM item then gets its UIDs, age and pediatric flag, and an ``error`` when its header says it is not a
    frontal chest radiograph (:func:`monai_mcx.dicom.inputs.annotate_items`; ``dicom_checks``, ``allow_secondary``,
    ``allow_lateral`` are its options).

    Raises:
        DatalistError: ``source`` does not exist, a folder holds no input image, a DICOMweb address selects
            nothing or cannot be reached, or the datalist file itself is not a valid datalist.
    """
    from monai_mcx.dicom import inputs

    if inputs.is_dicomweb(source):
        try:
            items = inputs.fetch_items(str(source))
        except ValueError as e:
            raise DatalistError(str(e)) from e
    else:
        items = _file_items(Path(source), split)
    return inputs.annotate_items(items, dicom_checks, allow_secondary, allow_lateral)


def _file_items(source: Path, split: str) -> list[dict]:
    """:func:`inference_items` of a local folder, DICOMDIR, datalist or file (no header checks)."""
    from monai_mcx.dicom import inputs

    if source.is_dir():
        images, skipped = list_image_folder(source)
        nested, empty = inputs.nested_instances(source)
        skipped = [(p, r) for p, r in skipped if not p.is_dir()] + empty
        if not images and not nested:
            listed = "; ".join(f"{p.name}: {r}" for p, r in skipped[:5])
            raise DatalistError(
                f"{source}: no DICOM/PNG/JPEG/TIFF/BMP/NIfTI file in this folder and no DICOM file in its sub-folders"
                + (f" ({len(skipped)} other entries skipped: {listed})" if skipped else "")
            )
        items = [{DatalistKeys.IMAGE.value: str(p)} for p in images] + nested
        items += [
            {DatalistKeys.IMAGE.value: str(p), BatchKeys.ERROR.value: f"{p}: skipped: {reason}"}
            for p, reason in sorted(skipped)
        ]
        return items
    if source.is_file() and inputs.is_dicomdir(source):
        try:
            return inputs.dicomdir_items(source)
        except ValueError as e:
            raise DatalistError(str(e)) from e
    if source.suffix.lower() == ".json":
        raw, _ = _read_split(source, split, None)
        out = []
        for i, it in enumerate(raw):
            where = _where(source, split, i, it)
            if not isinstance(it, dict) or it.get(DatalistKeys.IMAGE) in (None, ""):
                out.append(
                    {
                        DatalistKeys.IMAGE.value: f"{source}: {split}[{i}]",
                        BatchKeys.ERROR.value: f"{where}: no 'image' path in this item",
                    }
                )
                continue
            try:
                kept = {k.value: it[k] for k in (DatalistKeys.SOURCE, DatalistKeys.POPULATION) if it.get(k)}
                out.append(
                    {
                        DatalistKeys.IMAGE.value: resolve_path(
                            it[DatalistKeys.IMAGE], source.parent, where, DatalistKeys.IMAGE.value, check_files=True
                        ),
                        **kept,
                    }
                )
            except DatalistError as e:
                out.append(
                    {
                        DatalistKeys.IMAGE.value: resolve_path(
                            it[DatalistKeys.IMAGE], source.parent, where, DatalistKeys.IMAGE.value, False
                        ),
                        BatchKeys.ERROR.value: str(e),
                    }
                )
        return out
    if source.is_file():
        return [{DatalistKeys.IMAGE.value: str(source)}]
    raise DatalistError(f"{source}: no such file or folder")
