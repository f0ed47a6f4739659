"""Embedded SYNTHETIC chest-radiograph demo data.

.. warning::
    Every image produced here is **synthetic**: a cartoon of a frontal (PA) chest X-ray drawn from
    ellipses, bands and Gaussian blobs with a random number generator. No real patient, no real
    image and no real annotation is involved. The data exist so that the toolkit, the bundle and
    the tests run end to end offline; results on them say nothing about clinical performance.

The images are drawn by :mod:`monai_mcx.data.synthetic` (what an image contains, the geometry of arrays and
boxes); this module writes the data set.

Files (:func:`generate_demo_data`): ``images/<id>.png`` (8-bit) for training / validation,
``images/<id>.dcm`` (16-bit, 12 bits stored, MONOCHROME2 Secondary Capture with
ConversionType ``SYN``) for the test split, ``masks/<id>.png`` (uint8 0/1) for every image,
``datalist.json`` and ``README.txt``.

Command line::

    python -m monai_mcx.data.demo --output_dir DIR [--num_images 240 --image_size 128 --seed 0
                                                    --layout disjoint|joint --overwrite]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import tempfile
from typing import Sequence

import numpy as np

from monai_mcx.data.synthetic import _item_sample, _write_dicom
from monai_mcx.keys import DatalistKeys

__all__ = ["generate_demo_data", "ensure_demo_data", "main"]

CLASS_NAMES = ["pneumonia"]
SOURCE = "demo"
LAYOUTS = ("disjoint", "joint")

README_TEXT = """\
SYNTHETIC DEMO DATA - NOT REAL PATIENTS
=======================================

Every image in this folder is SYNTHETIC: a cartoon of a frontal chest X-ray drawn by
monai_mcx.data.demo from ellipses, bands and Gaussian blobs with a seeded random number
generator. No real patient, image or annotation is involved; the "patients" are made-up ids.
Use these files only to exercise the monai_mcx toolkit and bundle; results obtained on them
say nothing about clinical performance.

Generated with: num_images={num_images}, image_size={image_size}, seed={seed},
positive_fraction={positive_fraction}, val_fraction={val_fraction},
test_fraction={test_fraction}, layout={layout}

Contents
--------
images/<id>.png   8-bit grayscale images (training and validation splits)
images/<id>.dcm   DICOM Secondary Capture, MONOCHROME2, 16-bit with 12 bits stored,
                  PixelSpacing 0.5 mm, ConversionType SYN (test split)
masks/<id>.png    uint8 lesion masks (0 background, 1 opacity) for every image
datalist.json     MONAI-style datalist: {{"class_names", "training", "validation", "test"}};
                  item keys image, patient, source, label, mask, boxes (null = not annotated,
                  [] = annotated without boxes). Boxes are [x1, y1, x2, y2] with x = column,
                  y = row, pixel-edge convention (x2 = last column + 1).

Counts: {counts}
Layout "{layout}": {layout_note}
Splits are made by patient (no patient appears in two splits).
"""


# ----------------------------------------------------------------------------------------------
# writing files


def _write_png(path: str, array: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(np.ascontiguousarray(array)).save(path, format="PNG")


# ----------------------------------------------------------------------------------------------
# the data set


def _plan_patients(num_images: int, seed: int, positive_fraction: float) -> list[tuple[str, bool, int]]:
    """``[(patient_id, positive, n_images), ...]``; a prefix of a longer plan (same seed) is the same.

    Classes follow a seed-offset golden-ratio sequence so the positive fraction is close to exact;
    about 10 % of patients have a second (follow-up) image.
    """
    offset = float(np.random.default_rng([seed, 7_000_001]).uniform())
    golden = (math.sqrt(5.0) - 1.0) / 2.0
    plan, total, p = [], 0, 0
    while total < num_images:
        positive = ((offset + p * golden) % 1.0) < positive_fraction
        n = 2 if np.random.default_rng([seed, p, 99]).uniform() < 0.1 else 1
        n = min(n, num_images - total)
        plan.append((f"demo-{p + 1:04d}", bool(positive), n))
        total += n
        p += 1
    return plan


def _split_patients(plan, seed: int, val_fraction: float, test_fraction: float) -> dict:
    """Patient id -> split, stratified by class, filled to the image-count targets."""
    rng = np.random.default_rng([seed, 7_000_002])
    split = {}
    for cls in (True, False):
        pats = [(pid, n) for pid, pos, n in plan if pos == cls]
        order = rng.permutation(len(pats))
        n_img = sum(n for _, n in pats)
        targets = [("test", round(test_fraction * n_img)), ("validation", round(val_fraction * n_img))]
        i = 0
        for name, target in targets:
            got = 0
            while got < target and i < len(order) - 1:  # always leave a training patient
                pid, n = pats[order[i]]
                split[pid] = name
                got += n
                i += 1
        for j in order[i:]:
            split[pats[j][0]] = "training"
    return split


def _layout_note(layout: str) -> str:
    if layout == "joint":
        return "every item carries label, mask and boxes."
    return (
        "training items are split in equal thirds into boxes-only (RSNA role: label and mask null), "
        "masks-only (SIIM role: label and boxes null) and classes-only (NIH role: mask and boxes null); "
        "validation and test items carry all three."
    )


def _write_items(
    tmp: str, plan, split_of: dict, seed: int, image_size: int, num_images: int, progress: bool
) -> dict[str, list[dict]]:
    """Draw and write every image and mask of ``plan`` under ``tmp``; the datalist items of each split (with
    ``_positive`` for :func:`_assign_disjoint_roles`)."""
    items = {"training": [], "validation": [], "test": []}

    from tqdm.auto import tqdm

    with tqdm(total=num_images, desc="synthetic CXRs", unit="img", disable=not progress) as bar:
        for p, (pid, positive, n) in enumerate(plan):
            for k in range(n):
                sample = _item_sample(seed, p, k, positive, image_size)
                image_id = f"{pid}_{k}"
                split = split_of[pid]
                if split == "test":
                    rel_image = f"images/{image_id}.dcm"
                    _write_dicom(os.path.join(tmp, rel_image), sample.image, pid, image_id, seed)
                else:
                    rel_image = f"images/{image_id}.png"
                    img8 = np.clip(np.rint(sample.image * 255.0), 0, 255).astype(np.uint8)
                    _write_png(os.path.join(tmp, rel_image), img8)
                rel_mask = f"masks/{image_id}.png"
                _write_png(os.path.join(tmp, rel_mask), sample.mask.astype(np.uint8))
                items[split].append(
                    {
                        DatalistKeys.IMAGE.value: rel_image,
                        DatalistKeys.PATIENT.value: pid,
                        DatalistKeys.SOURCE.value: SOURCE,
                        DatalistKeys.LABEL.value: [1.0 if positive else 0.0],
                        DatalistKeys.MASK.value: rel_mask,
                        DatalistKeys.BOXES.value: [[int(c) for c in b] for b in sample.boxes],
                        "_positive": positive,
                    }
                )
                bar.update(1)
    return items


def _assign_disjoint_roles(train: list[dict], seed: int) -> None:
    """The ``"disjoint"`` layout: the training items in equal thirds (each with about a third of the positives
    and negatives), each third keeping one annotation (see :func:`_layout_note`)."""
    rng = np.random.default_rng([seed, 7_000_003])
    ordered = []
    for cls in (True, False):
        idx = [i for i, it in enumerate(train) if it["_positive"] == cls]
        ordered += [idx[j] for j in rng.permutation(len(idx))]
    for r, i in enumerate(ordered):
        role = r % 3
        it = train[i]
        if role == 0:  # boxes only (RSNA role)
            it[DatalistKeys.LABEL.value], it[DatalistKeys.MASK.value] = None, None
        elif role == 1:  # masks only (SIIM role)
            it[DatalistKeys.LABEL.value], it[DatalistKeys.BOXES.value] = None, None
        else:  # classes only (NIH role)
            it[DatalistKeys.MASK.value], it[DatalistKeys.BOXES.value] = None, None


def generate_demo_data(
    output_dir: str | os.PathLike,
    num_images: int = 240,
    image_size: int = 128,
    seed: int = 0,
    positive_fraction: float = 0.5,
    val_fraction: float = 0.2,
    test_fraction: float = 0.1,
    layout: str = "disjoint",
    overwrite: bool = False,
    progress: bool = False,
) -> str:
    """Write a SYNTHETIC chest X-ray data set (images, masks, datalist.json, README.txt).

    Image ``k`` of patient ``p`` is drawn from generators seeded with ``(seed, p)`` (anatomy and
    lesions) and ``(seed, p, k)`` (follow-up jitter and noise), so every image is reproducible and
    does not depend on ``num_images``. Splits are made by patient, stratified by class. The data
    are written to a temporary sibling folder which is renamed into place at the end, so an
    interrupted run leaves no half-written data set.

    Args:
        output_dir: destination folder (created).
        num_images: number of images.
        image_size: side of the square images in pixels.
        seed: random seed.
        positive_fraction: fraction of patients with opacities.
        val_fraction, test_fraction: approximate fractions of images in validation / test.
        layout: ``"disjoint"`` (training thirds: boxes-only, masks-only, classes-only) or
            ``"joint"`` (every item has all three annotations).
        overwrite: replace an existing data set (the whole ``output_dir`` is replaced).
        progress: show a tqdm progress bar.

    Returns:
        the path of ``datalist.json``.

    Raises:
        FileExistsError: ``output_dir`` already holds a ``datalist.json`` and ``overwrite`` is False,
            or holds other entries named ``images``, ``masks`` or ``README.txt``.
        ValueError: invalid arguments.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}.")
    if int(num_images) < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}.")
    if int(image_size) < 16:
        raise ValueError(f"image_size must be >= 16, got {image_size}.")
    if not 0.0 <= positive_fraction <= 1.0:
        raise ValueError(f"positive_fraction must be in [0, 1], got {positive_fraction}.")
    if val_fraction < 0 or test_fraction < 0 or val_fraction + test_fraction >= 1.0:
        raise ValueError(f"need val_fraction, test_fraction >= 0 with sum < 1, got {val_fraction}, {test_fraction}.")
    num_images, image_size, seed = int(num_images), int(image_size), int(seed)

    output_dir = os.path.abspath(os.fspath(output_dir))
    datalist_name = "datalist.json"
    if os.path.exists(os.path.join(output_dir, datalist_name)) and not overwrite:
        raise FileExistsError(
            f"{output_dir} already holds a {datalist_name}; pass overwrite=True (--overwrite) to replace it."
        )
    parent = os.path.dirname(output_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(output_dir)}.tmp-", dir=parent)
    try:
        os.makedirs(os.path.join(tmp, "images"))
        os.makedirs(os.path.join(tmp, "masks"))
        plan = _plan_patients(num_images, seed, positive_fraction)
        split_of = _split_patients(plan, seed, val_fraction, test_fraction)
        items = _write_items(tmp, plan, split_of, seed, image_size, num_images, progress)
        if layout == "disjoint":  # thirds, each with about a third of the positives and negatives
            _assign_disjoint_roles(items["training"], seed)
        for split_items in items.values():
            for it in split_items:
                del it["_positive"]

        datalist = {"class_names": list(CLASS_NAMES), **items}
        counts = ", ".join(f"{k} {len(v)}" for k, v in items.items())
        counts += f"; {len(plan)} patients, {sum(1 for _, pos, n in plan if pos for _ in range(n))} positive images"
        with open(os.path.join(tmp, "README.txt"), "w") as f:
            f.write(
                README_TEXT.format(
                    num_images=num_images,
                    image_size=image_size,
                    seed=seed,
                    positive_fraction=positive_fraction,
                    val_fraction=val_fraction,
                    test_fraction=test_fraction,
                    layout=layout,
                    counts=counts,
                    layout_note=_layout_note(layout),
                )
            )
        with open(os.path.join(tmp, datalist_name), "w") as f:
            json.dump(datalist, f, indent=1)
            f.write("\n")
        _move_into_place(tmp, output_dir, overwrite, datalist_name)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return os.path.join(output_dir, datalist_name)


def _move_into_place(tmp: str, output_dir: str, overwrite: bool, datalist_name: str) -> None:
    if os.path.isdir(output_dir) and not os.listdir(output_dir):
        os.rmdir(output_dir)
    if not os.path.exists(output_dir):
        os.rename(tmp, output_dir)  # atomic on one file system
        return
    if os.path.exists(os.path.join(output_dir, datalist_name)) and not overwrite:
        raise FileExistsError(f"{output_dir} already holds a {datalist_name} (written meanwhile by another run?).")
    if overwrite:
        old = tempfile.mkdtemp(prefix=f".{os.path.basename(output_dir)}.old-", dir=os.path.dirname(output_dir))
        os.rmdir(old)
        os.rename(output_dir, old)
        os.rename(tmp, output_dir)
        shutil.rmtree(old, ignore_errors=True)
        return
    # an existing folder with other content and no datalist: move our entries in, datalist.json last
    names = sorted(n for n in os.listdir(tmp) if n != datalist_name)
    clash = [n for n in names if os.path.exists(os.path.join(output_dir, n))]
    if clash:
        raise FileExistsError(f"{output_dir} already holds {clash}; pass overwrite=True to replace the folder.")
    for n in names + [datalist_name]:
        os.replace(os.path.join(tmp, n), os.path.join(output_dir, n))
    os.rmdir(tmp)


def ensure_demo_data(dataset_dir: str | os.PathLike, **kwargs) -> str:
    """Return ``<dataset_dir>/datalist.json``, generating the synthetic demo data first if it is absent.

    Safe to call repeatedly (and from concurrent processes): an existing datalist is reused as is
    (``kwargs`` are then ignored). ``kwargs`` go to :func:`generate_demo_data`.
    """
    dataset_dir = os.path.abspath(os.fspath(dataset_dir))
    path = os.path.join(dataset_dir, "datalist.json")
    if os.path.isfile(path):
        return path
    kwargs.pop("overwrite", None)
    try:
        return generate_demo_data(dataset_dir, overwrite=False, **kwargs)
    except FileExistsError:
        if os.path.isfile(path):  # another caller finished first
            return path
        raise


def main(argv: Sequence[str] | None = None) -> str:
    parser = argparse.ArgumentParser(
        prog="python -m monai_mcx.data.demo",
        description="Generate the SYNTHETIC chest X-ray demo data set (not real patients): "
        "images, lesion masks, boxes and a MONAI datalist.json.",
    )
    parser.add_argument("--output_dir", required=True, help="destination folder")
    parser.add_argument("--num_images", type=int, default=240)
    parser.add_argument("--image_size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--positive_fraction", type=float, default=0.5)
    parser.add_argument("--val_fraction", type=float, default=0.2)
    parser.add_argument("--test_fraction", type=float, default=0.1)
    parser.add_argument("--layout", choices=LAYOUTS, default="disjoint")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing data set")
    args = parser.parse_args(argv)
    try:
        path = generate_demo_data(
            args.output_dir,
            num_images=args.num_images,
            image_size=args.image_size,
            seed=args.seed,
            positive_fraction=args.positive_fraction,
            val_fraction=args.val_fraction,
            test_fraction=args.test_fraction,
            layout=args.layout,
            overwrite=args.overwrite,
            progress=True,
        )
    except (FileExistsError, ValueError) as e:
        parser.exit(2, f"error: {e}\n")
    with open(path) as f:
        dl = json.load(f)
    counts = ", ".join(f"{k}={len(dl[k])}" for k in ("training", "validation", "test"))
    print(f"datalist: {path} ({counts})")
    return path


if __name__ == "__main__":
    main()
