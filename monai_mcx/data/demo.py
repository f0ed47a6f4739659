"""Embedded SYNTHETIC chest-radiograph demo data.

.. warning::
    Every image produced here is **synthetic**: a cartoon of a frontal (PA) chest X-ray drawn from
    ellipses, bands and Gaussian blobs with a random number generator. No real patient, no real
    image and no real annotation is involved. The data exist so that the toolkit, the bundle and
    the tests run end to end offline; results on them say nothing about clinical performance.

What an image contains (all geometry is drawn in normalised coordinates ``u`` (x, column) and
``v`` (y, row), both in ``[-1, 1]``, so the same random draws give the same anatomy at any size):

* a dark background and a soft-tissue body ellipse;
* two lung fields (dark, rounded, narrower at the apex), left and right of the midline; the
  image-right lung (the patient's left) is indented by the heart, which gives it a kidney-like shape;
* ribs (thin brighter curved bands crossing each lung) and clavicles;
* a bright spine / mediastinum band in the middle and a bright heart shadow lower-middle,
  extending to the image's right side (the patient's left);
* a smooth intensity gradient, contrast jitter and Gaussian noise.

Positive images carry 1-3 pneumonia-like opacities: irregular, soft-edged brighter patches made of
a few overlapping anisotropic Gaussian blobs modulated by a low-frequency texture, clipped to the
lung fields. The opacity is visible but never the brightest structure (heart and spine are
brighter). The lesion mask is ``(opacity field >= threshold) & lungs`` with connected components
smaller than 0.3 % of the image removed; the lesion boxes are the bounding boxes of the remaining
components (``skimage.measure.label`` / ``regionprops``), so mask and boxes always agree.
Negative images have no opacity, an empty mask and ``[]`` boxes.

Geometry (see ``docs/CONTRACTS.md``): arrays are numpy row-major ``(H, W)`` here; boxes are
``[x1, y1, x2, y2]`` with x = column, y = row, pixel-edge convention (``x2`` = last column + 1).
MONAI's ``LoadImage`` reads the written PNG / DICOM files as ``(W, H)`` (x first), where the same
boxes index spatial dim 0 by x.

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
from typing import NamedTuple, Sequence

import numpy as np

__all__ = [
    "SyntheticCXR",
    "synthesize_cxr",
    "synthesize_cxr_sample",
    "generate_demo_data",
    "ensure_demo_data",
    "main",
]

#: components of the lesion mask smaller than this fraction of the image area are dropped
MIN_COMPONENT_FRACTION = 0.003
#: the opacity field (peak about 1) is thresholded here to give the lesion mask
OPACITY_THRESHOLD = 0.4
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


class SyntheticCXR(NamedTuple):
    """One synthetic radiograph. Arrays are numpy row-major ``(H, W)``."""

    image: np.ndarray  #: float32 in [0, 1]
    mask: np.ndarray  #: uint8 0/1 lesion mask
    boxes: list  #: ``[[x1, y1, x2, y2], ...]`` (x = column, pixel-edge), ``[]`` when negative
    lungs: np.ndarray  #: bool lung-field mask (the opacities lie inside it)


# ----------------------------------------------------------------------------------------------
# parameter sampling (size independent)


def _sample_anatomy(rng: np.random.Generator) -> dict:
    u = rng.uniform
    lung_cx = u(0.36, 0.42)
    lung_cy = u(-0.06, 0.01)
    anatomy = {
        "shift": (u(-0.04, 0.04), u(-0.04, 0.04)),
        "tilt": u(-0.04, 0.04),  # small rotation (radians)
        "body": (u(0.84, 0.94), u(1.05, 1.2), u(0.38, 0.46)),  # semi-axes x, y; intensity
        "lungs": [
            # (cx, cy, ax, ay, depth); index 0 = image left (patient right), 1 = image right
            (-lung_cx + u(-0.02, 0.02), lung_cy + u(-0.02, 0.02), u(0.24, 0.29), u(0.55, 0.63), u(0.22, 0.28)),
            (lung_cx + u(-0.02, 0.02), lung_cy + u(-0.02, 0.02), u(0.23, 0.28), u(0.53, 0.61), u(0.22, 0.28)),
        ],
        "heart": (u(0.12, 0.19), u(0.2, 0.28), u(0.3, 0.36), u(0.2, 0.25), u(0.15, 0.45), u(0.24, 0.3)),
        "spine": (u(0.085, 0.115), u(0.26, 0.34), u(0.0, 6.28)),  # half-width, intensity, phase
        "ribs": (int(rng.integers(7, 10)), u(-0.8, -0.7), u(0.12, 0.15), u(0.055, 0.09), u(0.75, 1.0)),
        "clavicle": (u(-0.72, -0.64), u(0.06, 0.1)),
        "gradient": (u(-0.06, 0.06), u(-0.02, 0.06)),
        "contrast": (u(0.85, 1.15), u(-0.04, 0.04)),
        "noise": u(0.012, 0.03),
    }
    return anatomy


def _jitter_anatomy(anatomy: dict, rng: np.random.Generator) -> dict:
    """A follow-up image of the same patient: small pose / exposure changes."""
    a = dict(anatomy)
    a["shift"] = (anatomy["shift"][0] + rng.uniform(-0.03, 0.03), anatomy["shift"][1] + rng.uniform(-0.03, 0.03))
    a["tilt"] = anatomy["tilt"] + rng.uniform(-0.02, 0.02)
    a["contrast"] = (
        anatomy["contrast"][0] * rng.uniform(0.93, 1.07),
        anatomy["contrast"][1] + rng.uniform(-0.02, 0.02),
    )
    a["gradient"] = (
        anatomy["gradient"][0] + rng.uniform(-0.02, 0.02),
        anatomy["gradient"][1] + rng.uniform(-0.02, 0.02),
    )
    a["noise"] = anatomy["noise"] * rng.uniform(0.85, 1.15)
    return a


def _inside_heart(anatomy: dict, x: float, y: float, margin: float = 1.0) -> bool:
    hx, hy, hax, hay, rot, _ = anatomy["heart"]
    c, s = math.cos(rot), math.sin(rot)
    dx, dy = x - hx, y - hy
    xr, yr = c * dx + s * dy, -s * dx + c * dy
    return (xr / hax) ** 2 + (yr / hay) ** 2 < margin


def _sample_lesions(rng: np.random.Generator, anatomy: dict) -> list:
    """1-3 opacities, mostly in one lung. Each is a list of blobs plus a texture."""
    n = int(rng.choice([1, 1, 2, 2, 3]))
    main = int(rng.integers(0, 2))
    lesions = []
    for i in range(n):
        side = main if (i == 0 or rng.uniform() < 0.75) else 1 - main
        cx, cy, ax, ay, _ = anatomy["lungs"][side]
        for _ in range(20):  # a centre well inside the lung, not behind the heart
            r, t = math.sqrt(rng.uniform()) * 0.62, rng.uniform(0, 2 * math.pi)
            x, y = cx + r * ax * math.cos(t), cy + r * ay * math.sin(t)
            if not _inside_heart(anatomy, x, y, margin=1.4):
                break
        base = rng.uniform(0.075, 0.12) * (1.0 if n == 1 else 0.85)
        blobs = []
        for _ in range(int(rng.integers(2, 5))):
            blobs.append(
                (
                    x + rng.normal(0, base * 0.8),
                    y + rng.normal(0, base * 1.0),
                    base * rng.uniform(0.7, 1.3),
                    base * rng.uniform(0.8, 1.6),
                    rng.uniform(0, math.pi),
                    rng.uniform(0.75, 1.05),
                )
            )
        texture = [(rng.normal(0, 5, size=2), rng.uniform(0, 2 * math.pi), rng.uniform(0.08, 0.16)) for _ in range(4)]
        lesions.append({"blobs": blobs, "texture": texture, "amplitude": rng.uniform(0.2, 0.3)})
    return lesions


def _jitter_lesions(lesions: list, rng: np.random.Generator) -> list:
    out = []
    for les in lesions:
        dx, dy, s = rng.normal(0, 0.015), rng.normal(0, 0.015), rng.uniform(0.9, 1.1)
        blobs = [(x + dx, y + dy, sx * s, sy * s, th, a) for (x, y, sx, sy, th, a) in les["blobs"]]
        out.append({"blobs": blobs, "texture": les["texture"], "amplitude": les["amplitude"] * rng.uniform(0.9, 1.1)})
    return out


# ----------------------------------------------------------------------------------------------
# rendering


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _grid(size: int, anatomy: dict) -> tuple[np.ndarray, np.ndarray]:
    """Normalised (u, v) of the pixel centres, in the patient frame (shift and tilt undone)."""
    c = (np.arange(size, dtype=np.float64) + 0.5) / size * 2.0 - 1.0
    v, u = np.meshgrid(c, c, indexing="ij")  # (H, W): v = row coordinate, u = column coordinate
    u, v = u - anatomy["shift"][0], v - anatomy["shift"][1]
    ct, st = math.cos(anatomy["tilt"]), math.sin(anatomy["tilt"])
    return ct * u + st * v, -st * u + ct * v


def _soft_ellipse(u, v, cx, cy, ax, ay, rot=0.0, edge=0.04):
    c, s = math.cos(rot), math.sin(rot)
    du, dv = u - cx, v - cy
    xr, yr = c * du + s * dv, -s * du + c * dv
    d = np.sqrt((xr / ax) ** 2 + (yr / ay) ** 2)
    return _sigmoid((1.0 - d) / edge)


def _lung_field(u, v, lung, heart_soft, spine_hw):
    cx, cy, ax, ay, _ = lung
    # narrower apex, wider base: the x semi-axis grows from top to bottom
    t = np.clip((v - (cy - ay)) / (2 * ay), 0.0, 1.0)
    ax_v = ax * (0.45 + 0.65 * np.sqrt(t))
    d = np.sqrt(((u - cx) / ax_v) ** 2 + ((v - cy) / ay) ** 4 * 0.85 + ((v - cy) / ay) ** 2 * 0.15)
    field = _sigmoid((1.0 - d) / 0.05)
    field *= _sigmoid((np.abs(u) - spine_hw - 0.05) / 0.02)  # keep off the mediastinum
    return field * (1.0 - heart_soft)


def _opacity_field(u, v, lesion) -> np.ndarray:
    f = np.zeros_like(u)
    for x, y, sx, sy, th, a in lesion["blobs"]:
        c, s = math.cos(th), math.sin(th)
        du, dv = u - x, v - y
        xr, yr = c * du + s * dv, -s * du + c * dv
        f += a * np.exp(-0.5 * ((xr / sx) ** 2 + (yr / sy) ** 2))
    tex = np.ones_like(u)
    for k, ph, amp in lesion["texture"]:
        tex += amp * np.cos(k[0] * u + k[1] * v + ph)
    return np.clip(f, 0.0, 1.0) * tex


def _render(anatomy: dict, lesions: list, size: int, rng: np.random.Generator):
    """Returns (image float32, opacity field, lungs bool, noise-free flag)."""
    u, v = _grid(size, anatomy)
    bx, by, b_int = anatomy["body"]
    img = np.full(u.shape, 0.03)
    body = _soft_ellipse(u, v, 0.0, 0.08, bx, by, edge=0.03)
    img += b_int * body

    hx, hy, hax, hay, hrot, h_int = anatomy["heart"]
    heart = _soft_ellipse(u, v, hx, hy, hax, hay, hrot, edge=0.06)

    spine_hw, s_int, phase = anatomy["spine"]
    # mediastinum: wider at the top, fading in at the apex; vertebral bodies as a faint periodic texture
    hw = spine_hw * (1.0 + 0.35 * np.clip(-v, 0.0, 1.0))
    spine = _sigmoid((hw - np.abs(u)) / 0.02) * _sigmoid((v + 0.95) / 0.05)
    spine *= 1.0 + 0.12 * np.cos(v * 2 * math.pi * 6.5 + phase) * _sigmoid((0.04 - np.abs(u)) / 0.015)

    lungs_soft = np.zeros_like(u)
    for lung in anatomy["lungs"]:
        lf = _lung_field(u, v, lung, heart, spine_hw)
        lungs_soft = np.maximum(lungs_soft, lf)
        img -= lung[4] * lf * body
    lungs = lungs_soft > 0.5

    # ribs: posterior ribs run laterally from the spine and curve down; visible over the chest
    n_ribs, y0, spacing, r_int, curv = anatomy["ribs"]
    chest = _sigmoid((0.7 - np.abs(u)) / 0.04) * _sigmoid((np.abs(u) - 0.08) / 0.02)
    ribs = np.zeros_like(u)
    for i in range(n_ribs):
        t = np.abs(u) - 0.1
        yc = y0 + i * spacing - 0.15 * t + curv * t**2
        w = 0.022 + 0.006 * (i / max(n_ribs - 1, 1))
        ribs = np.maximum(ribs, np.exp(-(((v - yc) / w) ** 2)))
    img += r_int * ribs * chest * body
    cy0, c_int = anatomy["clavicle"]
    clav = np.exp(-(((v - (cy0 - 0.12 * (np.abs(u) - 0.1))) / 0.03) ** 2)) * _sigmoid((0.6 - np.abs(u)) / 0.04)
    img += c_int * clav * _sigmoid((np.abs(u) - 0.06) / 0.02) * body

    img += s_int * spine * body
    img += h_int * heart * body * (1.0 - 0.6 * spine)  # heart and spine overlap: do not double up

    opacity = np.zeros_like(u)
    for les in lesions:
        f = _opacity_field(u, v, les)
        opacity = np.maximum(opacity, f)
        img += les["amplitude"] * f * lungs_soft

    gx, gy = anatomy["gradient"]
    img += gx * u + gy * v
    c, b = anatomy["contrast"]
    img = (img - 0.3) * c + 0.3 + b
    img += rng.normal(0.0, anatomy["noise"], size=img.shape)
    return np.clip(img, 0.0, 1.0).astype(np.float32), opacity, lungs


def _mask_and_boxes(opacity: np.ndarray, lungs: np.ndarray) -> tuple[np.ndarray, list]:
    from skimage.measure import label, regionprops

    mask = (opacity >= OPACITY_THRESHOLD) & lungs
    min_area = max(1, math.ceil(MIN_COMPONENT_FRACTION * mask.size))
    labels = label(mask, connectivity=2)
    out = np.zeros(mask.shape, dtype=np.uint8)
    boxes = []
    for region in regionprops(labels):
        if region.area < min_area:
            continue
        r0, c0, r1, c1 = region.bbox  # rows/cols, max exclusive = pixel-edge convention
        out[labels == region.label] = 1
        boxes.append([int(c0), int(r0), int(c1), int(r1)])
    boxes.sort()
    return out, boxes


def _synthesize(anatomy: dict, lesions: list | None, size: int, rng: np.random.Generator) -> SyntheticCXR:
    if lesions is None:
        image, _, lungs = _render(anatomy, [], size, rng)
        return SyntheticCXR(image, np.zeros((size, size), np.uint8), [], lungs)
    for _ in range(8):
        image, opacity, lungs = _render(anatomy, lesions, size, rng)
        mask, boxes = _mask_and_boxes(opacity, lungs)
        if boxes:
            return SyntheticCXR(image, mask, boxes, lungs)
        lesions = _sample_lesions(rng, anatomy)  # too small after clipping to the lungs: redraw
    # last resort: a large opacity at the centre of the image-left lung (never behind the heart)
    cx, cy, ax, ay, _ = anatomy["lungs"][0]
    big = [{"blobs": [(cx, cy, ax * 0.6, ay * 0.4, 0.0, 1.0)], "texture": [], "amplitude": 0.22}]
    image, opacity, lungs = _render(anatomy, big, size, rng)
    mask, boxes = _mask_and_boxes(opacity, lungs)
    return SyntheticCXR(image, mask, boxes, lungs)


def synthesize_cxr_sample(rng: np.random.Generator, size: int, positive: bool) -> SyntheticCXR:
    """Draw one synthetic radiograph and return image, lesion mask, boxes and the lung-field mask.

    Args:
        rng: the random generator (all randomness comes from it).
        size: image side in pixels (square images).
        positive: draw 1-3 opacities inside the lungs if True; none if False.

    Returns:
        :class:`SyntheticCXR` with numpy row-major ``(H, W)`` arrays and boxes ``[x1, y1, x2, y2]``
        (x = column, pixel-edge). A positive image always has at least one box.
    """
    if int(size) < 16:
        raise ValueError(f"size must be at least 16 pixels, got {size}.")
    anatomy = _sample_anatomy(rng)
    lesions = _sample_lesions(rng, anatomy) if positive else None
    return _synthesize(anatomy, lesions, int(size), rng)


def synthesize_cxr(rng: np.random.Generator, size: int, positive: bool) -> tuple[np.ndarray, np.ndarray, list]:
    """Draw one synthetic chest radiograph (not a real patient).

    Returns:
        ``(image, mask, boxes)``: ``image`` float32 ``(H, W)`` in [0, 1]; ``mask`` uint8 ``(H, W)``
        0/1; ``boxes`` ``[[x1, y1, x2, y2], ...]`` with x = column, y = row, pixel-edge convention
        (``[]`` for a negative image). Every mask pixel lies in a box and every box holds mask pixels.
    """
    s = synthesize_cxr_sample(rng, size, positive)
    return s.image, s.mask, s.boxes


# ----------------------------------------------------------------------------------------------
# writing files


def _write_png(path: str, array: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(np.ascontiguousarray(array)).save(path, format="PNG")


def _write_dicom(path: str, image: np.ndarray, patient: str, image_id: str, seed: int) -> None:
    """Secondary Capture (ConversionType SYN), MONOCHROME2, 16 bits allocated / 12 stored."""
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    sop_class = "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture Image Storage
    ent = ["monai_mcx-demo", str(seed), image_id]
    sop_instance = generate_uid(entropy_srcs=ent + ["sop"])
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = ExplicitVRLittleEndian

    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_instance
    ds.StudyInstanceUID = generate_uid(entropy_srcs=ent + ["study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=ent + ["series"])
    ds.PatientID = patient
    ds.PatientName = "SYNTHETIC^DEMO"
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.StudyDate = ""
    ds.StudyTime = ""
    ds.StudyID = ""
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.Modality = "DX"
    ds.ConversionType = "SYN"  # synthetic image
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.PatientOrientation = ["L", "F"]  # rows run to the patient's left, columns to the feet (PA view)
    ds.ImageComments = "SYNTHETIC image generated by monai_mcx.data.demo - not a real patient"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = int(image.shape[0]), int(image.shape[1])
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.PixelSpacing = [0.5, 0.5]  # row spacing (between rows), column spacing, in mm
    # Image Plane attributes (not required by Secondary Capture) so that readers such as MONAI's
    # PydicomReader can derive the affine: rows run along +x, columns along +y of the patient (LPS)
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [0, 0, 0]
    ds.WindowCenter = 2048
    ds.WindowWidth = 4096
    pixels = np.clip(np.rint(image.astype(np.float64) * 4095.0), 0, 4095).astype("<u2")
    ds.PixelData = pixels.tobytes()  # row-major: rows = y, columns = x

    if int(pydicom.__version__.split(".")[0]) >= 3:
        ds.save_as(path, enforce_file_format=True)
    else:  # pydicom 2.x
        ds.is_little_endian = True
        ds.is_implicit_VR = False
        ds.save_as(path, write_like_original=False)


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


def _item_sample(seed: int, patient_index: int, k: int, positive: bool, size: int) -> SyntheticCXR:
    """Image ``k`` of patient ``patient_index`` (0-based) of the data set drawn with ``seed``."""
    prng = np.random.default_rng([seed, patient_index])
    anatomy = _sample_anatomy(prng)
    lesions = _sample_lesions(prng, anatomy) if positive else None
    irng = np.random.default_rng([seed, patient_index, k])
    if k > 0:  # follow-up: same anatomy and lesions, jittered
        anatomy = _jitter_anatomy(anatomy, irng)
        lesions = _jitter_lesions(lesions, irng) if lesions is not None else None
    return _synthesize(anatomy, lesions, size, irng)


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
                            "image": rel_image,
                            "patient": pid,
                            "source": SOURCE,
                            "label": [1.0 if positive else 0.0],
                            "mask": rel_mask,
                            "boxes": [[int(c) for c in b] for b in sample.boxes],
                            "_positive": positive,
                        }
                    )
                    bar.update(1)

        if layout == "disjoint":  # thirds, each with about a third of the positives and negatives
            rng = np.random.default_rng([seed, 7_000_003])
            train = items["training"]
            ordered = []
            for cls in (True, False):
                idx = [i for i, it in enumerate(train) if it["_positive"] == cls]
                ordered += [idx[j] for j in rng.permutation(len(idx))]
            for r, i in enumerate(ordered):
                role = r % 3
                it = train[i]
                if role == 0:  # boxes only (RSNA role)
                    it["label"], it["mask"] = None, None
                elif role == 1:  # masks only (SIIM role)
                    it["label"], it["boxes"] = None, None
                else:  # classes only (NIH role)
                    it["mask"], it["boxes"] = None, None
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
