"""Loading chest X-rays (DICOM, PNG/JPEG/TIFF/BMP, NIfTI) as one-channel float images in [0, 1].

:class:`LoadCXR` / :class:`LoadCXRd` return a :class:`monai.data.MetaTensor` of shape ``(1, W, H)``
(spatial dim 0 = x = column), the layout that ``LoadImage`` + ``EnsureChannelFirst`` give for a PNG,
so masks and boxes ``[x1, y1, x2, y2]`` line up with it.

Why not MONAI's ``LoadImage``: its ``PydicomReader`` applies neither the VOI LUT / window nor the
``MONOCHROME1`` inversion, and its PIL reader neither converts RGB to one channel, nor applies the EXIF
orientation, nor scales to [0, 1]; these are what make chest radiographs from different sources comparable.
Everything else (MetaTensor, affine with the pixel spacing) follows MONAI.

**The intensity pipeline** (the one the bundle uses: ``LoadCXRd`` alone decides the [0, 1] image; no later
``ScaleIntensityd``). ``scale="auto"`` (default):

* 8-bit PNG/JPEG (and any PIL image converted to 8-bit gray: RGB by ITU-R 601 luma, palette, bilevel):
  ``x / 255``.
* DICOM, in the order of the DICOM grayscale pipeline:

  1. modality LUT (``RescaleSlope`` / ``RescaleIntercept`` or a Modality LUT Sequence);
  2. with a VOI LUT Sequence or a window (``WindowCenter`` / ``WindowWidth``, ``VOILUTFunction``) and
     ``apply_voi``: pydicom's VOI transform, then **its output range mapped to [0, 1]** -- the window, not the
     image's own range: a pixel below the window is 0, above it 1, the window centre 0.5;
     without a window: the **stored range** (``0 .. 2**BitsStored - 1``, signed when ``PixelRepresentation``
     is 1) passed through the same modality LUT, mapped to [0, 1]. For an 8-bit DICOM without rescale or
     window this is exactly ``x / 255``; a rescale intercept does not shift the result (the range moves with
     the pixels);
  3. ``MONOCHROME1`` **or** ``PresentationLUTShape = INVERSE``: ``1 - x`` (once: a conformant ``MONOCHROME1``
     DX image also carries ``INVERSE``), so that bone is bright and lungs dark.

  Colour DICOMs (``SamplesPerPixel`` 3) are averaged to gray and mapped from the stored range.

  **BitsStored and the data.** The pixels are decoded as stored, not masked to ``BitsStored`` bits. When
  unsigned pixel values exceed ``2**BitsStored - 1`` (a 12-bit header over 13-bit data: masking would wrap 4096
  to 0) the header contradicts the data: a warning names the file, the pixels are kept, and ``BitsStored`` is
  taken as the smallest bit depth that holds the largest value (at most ``BitsAllocated``; 5000 -> 13 bits,
  stored range ``0 .. 8191``); ``meta["bits_stored"]`` is the depth used. High bits that hold an embedded
  overlay (``OverlayBitPosition >= BitsStored``) are masked off silently; signed pixels are sign-extended from
  ``BitsStored``, as the standard says.
* 16-bit PNG, 32-bit/float TIFF and NIfTI (no stored range or window in the file): min-max over the image.

``scale="minmax"`` min-max normalises the result of the pipeline per image (what the bundle did before
issue #13 with a later ``ScaleIntensityd``; models trained that way need it).

DICOM: pixel data decoded by pydicom (compressed transfer syntaxes need a pixel plugin, e.g.
``pylibjpeg``/``pillow``/``gdcm``; when none is installed the error names the plugins to install), bits
stored up to 16, spacing (``PixelSpacing`` or ``ImagerPixelSpacing``) kept in the metadata
(``pixel_spacing`` = (x, y) in mm) and the affine.

**What is an input: the content, not the extension.** :func:`monai_mcx.data.formats.sniff_format` reads
the first bytes: DICOM (``DICM`` at byte 128, whatever the file's name, or none), PNG, JPEG, TIFF, BMP (their
magic bytes) and NIfTI (its single-file magic, also gzipped). A DICOM named ``.png`` is read as DICOM, a PNG
named ``.dcm`` as PNG; anything else (a text file named ``.png``, DICOM without its preamble, GIF, WebP) is
refused with an error naming the file. Folder inference lists its inputs by the same function
(:func:`monai_mcx.data.datalist.list_image_folder`).

PNG/JPEG: the EXIF orientation is applied as image viewers do (``PIL.ImageOps.exif_transpose``), for images
and masks alike (``meta["exif_orientation"]`` keeps the tag, 1 = none).

Size: an image whose shorter side is below ``min_size`` pixels (default 32) or with more than ``max_pixels``
pixels (default 40 million, about 6300 x 6300) is refused before its pixels are decoded.

Frames: one image per file. A multi-frame DICOM (``NumberOfFrames`` > 1), an animated PNG (APNG) and a multi-page
TIFF are refused before decoding ("expected a single-frame 2D image, got 3 frames (an animated PNG)"), not read
as their first frame. (A camera JPEG's MPO preview frames are ignored: its first frame is the picture.)

Masks (``as_mask``): no LUTs, no scaling, the same orientation rule. A label mask holds 0 for background and
one foreground value (any, e.g. 1 or 255; a palette PNG's indices, RGB: any channel); it becomes 0/1 with
``> 0``. A mask with more levels (grey-level, JPEG-compressed, anti-aliased) is refused
(``grey_masks="error"``, default) or, with ``grey_masks="threshold"``, binarised at half its maximum value
(``>= max / 2``) with a warning naming the file.

Every failure raises :class:`monai_mcx.data.errors.DataError` naming the file.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping
from pathlib import Path

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform

from monai_mcx.data.boxes import check_box
from monai_mcx.data.errors import DataError
from monai_mcx.data.formats import input_format
from monai_mcx.data.pixels import DEFAULT_MAX_PIXELS, DEFAULT_MIN_SIZE, minmax
from monai_mcx.dicom import reader as _dicom_reader
from monai_mcx.keys import BatchKeys
from monai_mcx.transforms.readers import _read_nifti, _read_pil

__all__ = ["LoadCXR", "LoadCXRd", "KeepOverlayImaged", "read_cxr"]

_SCALES = ("auto", "minmax")
_GREY_MASKS = ("error", "threshold")


def _check_options(scale: str, grey_masks: str) -> None:
    if scale not in _SCALES:
        hint = " ('dtype' is gone: 'auto' now maps 8-bit images by x / 255 and DICOM by its stored range)"
        raise ValueError(f"scale must be one of {_SCALES}, got {scale!r}" + (hint if scale == "dtype" else ""))
    if grey_masks not in _GREY_MASKS:
        raise ValueError(f"grey_masks must be one of {_GREY_MASKS}, got {grey_masks!r}")


def read_cxr(
    filename: str | os.PathLike,
    apply_voi: bool = True,
    invert_monochrome1: bool = True,
    scale: str = "auto",
    as_mask: bool = False,
    min_size: int = DEFAULT_MIN_SIZE,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    grey_masks: str = "error",
) -> tuple[np.ndarray, dict]:
    """Read one image as a numpy ``(rows, cols)`` float32 array in [0, 1] (0/1 when ``as_mask``) plus metadata.

    Args:
        filename: DICOM, PNG, JPEG, TIFF, BMP or NIfTI file, recognised by its content whatever its name
            (:func:`monai_mcx.data.formats.sniff_format`).
        apply_voi: apply the DICOM VOI LUT / window (pipeline step 2, module docstring).
        invert_monochrome1: invert ``MONOCHROME1`` and ``PresentationLUTShape = INVERSE`` DICOMs (step 3).
        scale: ``"auto"`` (the pipeline) or ``"minmax"`` (the pipeline, then per-image min-max).
        as_mask: read a mask: no LUTs, 0/1 (see ``grey_masks``).
        min_size: smallest accepted side in pixels (images only).
        max_pixels: largest accepted ``W * H`` (``None``: no limit), checked before decoding.
        grey_masks: ``"error"`` or ``"threshold"`` for masks that are not label masks (module docstring).

    Raises:
        DataError: file missing, not an image (its content none of the formats above), truncated, undecodable (naming the plugin to install for
            compressed DICOM), unsupported bit depth or shape, more than one frame, too small or too large,
            grey-level mask.
    """
    _check_options(scale, grey_masks)
    path = Path(filename)
    if not path.is_file():
        raise DataError("file not found" if not path.exists() else "not a file", path)
    fmt = input_format(path)  # the content decides, not the extension
    args = (as_mask, int(min_size), None if max_pixels is None else int(max_pixels), grey_masks)
    try:
        if fmt == "nifti":
            arr, spacing, meta = _read_nifti(path, *args)
        elif fmt == "dicom":
            arr, spacing, meta = _dicom_reader._read_dicom(path, apply_voi, invert_monochrome1, *args)
        else:
            arr, spacing, meta = _read_pil(path, *args)
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - never a bare traceback from deep inside a reader
        raise DataError(f"cannot read image ({type(e).__name__}: {e})", path) from e
    if arr.size == 0:
        raise DataError("image is empty", path)
    if scale == "minmax" and not as_mask:
        arr = minmax(arr)
        meta["intensity"] = f"{meta.get('intensity', '')}+minmax"
    meta["filename_or_obj"] = str(path)
    meta["pixel_spacing"] = spacing
    return arr, meta


#: metadata every loaded image carries (defaults where the format has no such field)
_META_DEFAULTS = {
    "source_format": "",
    "photometric_interpretation": "",
    "presentation_lut_shape": "",
    "bits_stored": 0,
    "transfer_syntax": "",
    "modality": "",
    "view_position": "",
    "voi_applied": False,
    "inverted": False,
    "pil_mode": "",
    "exif_orientation": 1,
    "intensity": "",
    "patient_age_years": float("nan"),  # DICOM only: monai_mcx.data.populations decides adult / pediatric from it
}


def _to_metatensor(arr: np.ndarray, meta: dict, dtype) -> MetaTensor:
    """(rows, cols) numpy -> (1, W, H) MetaTensor with an affine carrying the pixel spacing.

    ``meta["pixel_spacing"]`` is ``(x, y)`` mm, ``(1.0, 1.0)`` when the file gives none
    (``meta["pixel_spacing_known"]`` tells which).
    """
    sx, sy = meta.get("pixel_spacing") or (1.0, 1.0)
    affine = torch.diag(torch.tensor([sx, sy, 1.0, 1.0], dtype=torch.float64))
    data = torch.as_tensor(np.ascontiguousarray(arr.T)[None], dtype=dtype)
    # one key set with no None values whatever the format, so that MetaTensors of DICOM, PNG and JPEG
    # items collate together (default_collate refuses None and needs the same keys in every item)
    m = {k: v for k, v in _META_DEFAULTS.items()}
    m.update({k: v for k, v in meta.items() if v is not None})
    m["pixel_spacing_known"] = meta.get("pixel_spacing") is not None
    m["pixel_spacing"] = (float(sx), float(sy))
    m["spatial_shape"] = np.asarray(data.shape[1:])
    m["original_channel_dim"] = float("nan")  # as MONAI LoadImage(ensure_channel_first) leaves it for 2D (masks mix in)
    m["space"] = "RAS"
    m["original_affine"] = affine.clone()
    return MetaTensor(data, affine=affine, meta=m)


class LoadCXR(Transform):
    """Load a chest X-ray as a float ``(1, W, H)`` MetaTensor in [0, 1] (the intensity pipeline of the module
    docstring).

    Args:
        apply_voi: apply the DICOM VOI LUT or window (after the modality LUT).
        invert_monochrome1: invert ``MONOCHROME1`` / ``PresentationLUTShape = INVERSE`` DICOMs (lungs dark).
        scale: ``"auto"`` (the pipeline) | ``"minmax"`` (then per-image min-max).
        as_mask: load a mask instead: 0/1, no LUTs, no scaling (see ``grey_masks``).
        dtype: output dtype.
        min_size: smallest accepted side of an image, pixels (not applied to masks).
        max_pixels: largest accepted ``W * H`` (``None``: no limit), refused before decoding.
        grey_masks: ``"error"`` refuses a mask that is not 0 + one foreground value, ``"threshold"`` binarises
            it at half its maximum with a warning naming the file.
    """

    def __init__(
        self,
        apply_voi: bool = True,
        invert_monochrome1: bool = True,
        scale: str = "auto",
        as_mask: bool = False,
        dtype: torch.dtype = torch.float32,
        min_size: int = DEFAULT_MIN_SIZE,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        grey_masks: str = "error",
    ):
        _check_options(scale, grey_masks)
        self.apply_voi = apply_voi
        self.invert_monochrome1 = invert_monochrome1
        self.scale = scale
        self.as_mask = as_mask
        self.dtype = dtype
        self.min_size = int(min_size)
        self.max_pixels = max_pixels
        self.grey_masks = grey_masks

    def __call__(self, filename: str | os.PathLike) -> MetaTensor:
        arr, meta = read_cxr(
            filename,
            self.apply_voi,
            self.invert_monochrome1,
            self.scale,
            self.as_mask,
            self.min_size,
            self.max_pixels,
            self.grey_masks,
        )
        return _to_metatensor(arr, meta, self.dtype)


class LoadCXRd(MapTransform):
    """Dictionary version of :class:`LoadCXR`, plus the datalist checks that need the image size.

    Args:
        keys: image keys (loaded with :class:`LoadCXR`).
        mask_keys: mask keys, loaded as 0/1 and checked to have the size of the first image key.
        box_keys: keys holding ``[[x1, y1, x2, y2], ...]`` (x = column), checked to lie inside the image
            with ``x2 > x1`` and ``y2 > y1``.
        allow_missing_keys: skip absent keys. A ``None`` value (unknown annotation) is always kept as is.
        grey_masks: how masks that are not label masks are treated (see :class:`LoadCXR`).
        kwargs: passed to :class:`LoadCXR` (``min_size``, ``max_pixels``, ``apply_voi``, ...).

    Raises:
        DataError: naming the file (image or mask) and the problem.
    """

    def __init__(
        self,
        keys: KeysCollection,
        mask_keys: KeysCollection = (),
        box_keys: KeysCollection = (),
        allow_missing_keys: bool = False,
        grey_masks: str = "error",
        **kwargs,
    ):
        super().__init__(keys, allow_missing_keys)
        self.mask_keys = [mask_keys] if isinstance(mask_keys, str) else list(mask_keys)
        self.box_keys = [box_keys] if isinstance(box_keys, str) else list(box_keys)
        self.loader = LoadCXR(**kwargs)
        self.mask_loader = LoadCXR(
            as_mask=True,
            dtype=kwargs.get("dtype", torch.float32),
            grey_masks=grey_masks,
            max_pixels=kwargs.get("max_pixels", DEFAULT_MAX_PIXELS),
        )

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        ref = None
        for key in self.key_iterator(d):
            if d[key] is None:
                raise DataError(f"datalist item has no {key!r} file", None)
            if not isinstance(d[key], torch.Tensor):
                d[key] = self.loader(d[key])
            ref = ref if ref is not None else d[key]
        for key in self.mask_keys:
            if key not in d:
                if self.allow_missing_keys:
                    continue
                raise KeyError(f"key {key!r} not found in the item")
            if d[key] is None or isinstance(d[key], torch.Tensor):
                continue
            mask = self.mask_loader(d[key])
            if ref is not None and tuple(mask.shape[1:]) != tuple(ref.shape[1:]):
                w, h = ref.shape[1:]
                mw, mh = mask.shape[1:]
                raise DataError(
                    f"mask is {mw}x{mh} (WxH) but its image {ref.meta.get('filename_or_obj')} is {w}x{h}", d[key]
                )
            d[key] = mask
        if ref is not None:
            w, h = (int(s) for s in ref.shape[1:])
            for key in self.box_keys:
                boxes = d.get(key)
                if boxes is None or isinstance(boxes, torch.Tensor):
                    continue
                for i, b in enumerate(boxes):
                    try:
                        check_box(b, w, h)
                    except DataError as e:
                        raise DataError(f"{key}[{i}]: {e.problem}", ref.meta.get("filename_or_obj")) from None
        return d


class KeepOverlayImaged(MapTransform):
    """Keep a display copy of the loaded image for the prediction overlays, before any resizing.

    Stores ``(rows, cols)`` uint8 (``floor(clip(image, 0, 1) * 255)``, the quantisation of
    :func:`monai_mcx.visualize.overlay_image`) under ``name``, so that
    :class:`monai_mcx.handlers.PredictionWriter` draws the overlay and saliency PNGs without reading and
    decoding the file a second time. One byte per pixel: a 2048 x 2048 radiograph adds 4 MiB to its batch.
    :func:`monai_mcx.data.collate_cxr` keeps the copies as a per-item list (:data:`monai_mcx.data.collate.HOST_KEYS`).

    Args:
        keys: the image key, a ``(1, W, H)`` tensor in [0, 1] as :class:`LoadCXRd` loads it (MONAI order).
        name: the item key for the copy (default ``"overlay_image"``).
        enabled: when False the transform does nothing (the writer then re-reads the file if it needs it).
    """

    def __init__(
        self,
        keys: KeysCollection = BatchKeys.IMAGE.value,
        name: str = BatchKeys.OVERLAY_IMAGE.value,
        enabled: bool = True,
    ) -> None:
        super().__init__(keys)
        self.name = str(name)
        self.enabled = bool(enabled)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        if not self.enabled:
            return d
        for key in self.key_iterator(d):
            img = d[key]
            arr = img.detach().cpu().numpy() if isinstance(img, torch.Tensor) else np.asarray(img)
            if arr.ndim != 3 or arr.shape[0] != 1:
                raise ValueError(f"KeepOverlayImaged: {key!r} must be (1, W, H), got shape {tuple(arr.shape)}")
            gray = np.nan_to_num(np.clip(arr[0], 0, 1), copy=False)  # a new float array: scaled in place
            gray *= 255
            d[self.name] = np.ascontiguousarray(gray.astype(np.uint8).T)  # (W, H) -> (rows, cols), C order
        return d
