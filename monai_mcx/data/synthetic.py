"""Drawing SYNTHETIC chest radiographs, one at a time (the images of :mod:`monai_mcx.data.demo`).

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

:func:`_write_dicom` writes one as a DICOM Secondary Capture (ConversionType ``SYN``).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

__all__ = ["SyntheticCXR", "synthesize_cxr", "synthesize_cxr_sample"]

#: components of the lesion mask smaller than this fraction of the image area are dropped
MIN_COMPONENT_FRACTION = 0.003
#: the opacity field (peak about 1) is thresholded here to give the lesion mask
OPACITY_THRESHOLD = 0.4


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


# ----------------------------------------------------------------------------------------------
# writing files


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
