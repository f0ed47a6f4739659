"""Loading chest X-rays (DICOM, PNG/JPEG, NIfTI) as one-channel float images in [0, 1].

:class:`LoadCXR` / :class:`LoadCXRd` return a :class:`monai.data.MetaTensor` of shape ``(1, W, H)``
(spatial dim 0 = x = column), the layout that ``LoadImage`` + ``EnsureChannelFirst`` give for a PNG,
so masks loaded by MONAI's reader and boxes ``[x1, y1, x2, y2]`` line up with it.

Why not MONAI's ``LoadImage``: its ``PydicomReader`` applies neither the VOI LUT / window nor the
``MONOCHROME1`` inversion, and its PIL reader neither converts RGB to one channel nor scales to [0, 1];
these are what make chest radiographs from different sources comparable. Everything else (MetaTensor,
affine with the pixel spacing) follows MONAI.

DICOM: pixel data decoded by pydicom (compressed transfer syntaxes need a pixel plugin, e.g.
``pylibjpeg``/``pillow``/``gdcm``; when none is installed the error names the plugins to install),
modality LUT (rescale slope/intercept), VOI LUT or window, ``MONOCHROME1`` inverted so that bone and
mediastinum are bright and lungs dark, bits stored up to 16, spacing (``PixelSpacing`` or
``ImagerPixelSpacing``) kept in the metadata (``pixel_spacing`` = (x, y) in mm) and the affine.

Scaling to [0, 1] (``scale``): ``"auto"`` divides 8-bit PNG/JPEG by 255 and min-max normalises
everything else (DICOM after its LUTs, 16-bit PNG, NIfTI); ``"minmax"`` always min-max;
``"dtype"`` divides integer images by their dtype's maximum (DICOM by ``2**BitsStored - 1`` after the
LUTs, clipped).

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

from monai_mcx.data.errors import DataError
from monai_mcx.utils import is_dicom_file

__all__ = ["LoadCXR", "LoadCXRd", "read_cxr", "PLUGIN_HINT"]

#: what to install for compressed DICOM transfer syntaxes
PLUGIN_HINT = "pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg (or pillow / python-gdcm)"

_DICOM_SUFFIXES = (".dcm", ".dicom", ".dic")
_PIL_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp")
_NIFTI_SUFFIXES = (".nii", ".nii.gz")


def _minmax(a: np.ndarray) -> np.ndarray:
    a = a.astype(np.float32, copy=False)
    lo, hi = float(np.min(a)), float(np.max(a))
    if not np.isfinite(lo) or not np.isfinite(hi):
        raise ValueError("image has non-finite values")
    if hi <= lo:
        return np.zeros_like(a, dtype=np.float32)
    return (a - lo) / (hi - lo)


def _spacing(ds) -> tuple[float, float] | None:
    for tag in ("PixelSpacing", "ImagerPixelSpacing"):
        v = ds.get(tag)
        if v is not None and len(v) == 2:
            row_sp, col_sp = float(v[0]), float(v[1])
            if row_sp > 0 and col_sp > 0:
                return col_sp, row_sp  # (x, y)
    return None


def _missing_decoder(ts, path: Path) -> str | None:
    """``None`` when pydicom can decode transfer syntax ``ts``, else what is missing (pydicom 2 and 3)."""
    try:  # pydicom >= 3
        from pydicom.pixels import get_decoder
    except ImportError:  # pydicom 2: the handler list
        import pydicom

        handlers = pydicom.config.pixel_data_handlers
        if any(h.is_available() and h.supports_transfer_syntax(ts) for h in handlers):
            return None
        return "a pixel data handler for this transfer syntax"
    try:
        decoder = get_decoder(ts)
    except Exception as e:  # noqa: BLE001
        raise DataError(f"pydicom has no decoder for the transfer syntax {ts.name} ({ts})", path) from e
    if decoder.is_available:
        return None
    return "; ".join(decoder.missing_dependencies) or "a pixel data plugin"


def _read_dicom(path: Path, apply_voi: bool, invert: bool, scale: str, as_mask: bool):
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:  # pydicom >= 3
        from pydicom.pixels import apply_modality_lut, apply_voi_lut
    except ImportError:  # pydicom 2 (MONAI Label 0.8.5's environment)
        from pydicom.pixel_data_handlers.util import apply_modality_lut, apply_voi_lut

    try:
        ds = pydicom.dcmread(path)
    except InvalidDicomError as e:
        raise DataError(f"not a DICOM file ({e})", path) from e
    except Exception as e:  # noqa: BLE001 - truncated header, bad tags...
        raise DataError(f"unreadable or truncated DICOM ({type(e).__name__}: {e})", path) from e
    if "PixelData" not in ds:
        raise DataError("DICOM has no pixel data", path)
    bits = int(ds.get("BitsStored", 0) or 0)
    if not 1 <= bits <= 16:
        raise DataError(f"BitsStored={bits} is not supported (1..16)", path)
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if ts is not None and ts.is_compressed:
        missing = _missing_decoder(ts, path)
        if missing is not None:
            raise DataError(
                f"pixel data is compressed ({ts.name}) and no pydicom pixel plugin that decodes it is installed: "
                f"{missing}. Install one, e.g. {PLUGIN_HINT}",
                path,
            )
    try:
        arr = ds.pixel_array
    except Exception as e:  # noqa: BLE001 - truncated pixel data, bad JPEG stream...
        raise DataError(f"cannot decode the pixel data ({type(e).__name__}: {e})", path) from e
    spp = int(ds.get("SamplesPerPixel", 1) or 1)
    if spp > 1:
        arr = arr[..., :3].astype(np.float32).mean(-1) if arr.ndim >= 3 else arr
    if arr.ndim != 2:
        raise DataError(f"expected a single-frame 2D image, got pixel array of shape {arr.shape}", path)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    meta = {
        "source_format": "dicom",
        "photometric_interpretation": photometric,
        "bits_stored": bits,
        "transfer_syntax": str(ts) if ts is not None else None,
        "modality": str(ds.get("Modality", "")),
        "view_position": str(ds.get("ViewPosition", "")),
    }
    if as_mask:
        return (arr > 0).astype(np.float32), _spacing(ds), meta
    out = apply_modality_lut(arr, ds)
    voi = False
    if apply_voi and spp == 1 and ("VOILUTSequence" in ds or "WindowCenter" in ds):
        out = apply_voi_lut(out, ds)
        voi = True
    meta["voi_applied"] = voi
    out = np.asarray(out, dtype=np.float32)
    if scale == "dtype":
        out = np.clip(out / float(2**bits - 1), 0, 1)
    else:
        out = _minmax(out)
    if invert and photometric == "MONOCHROME1":
        out = 1.0 - out
        meta["inverted"] = True
    return out, _spacing(ds), meta


def _read_pil(path: Path, scale: str, as_mask: bool):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
                arr, bits = np.asarray(im).astype(np.float32), 16
            elif mode in ("I", "F"):
                arr, bits = np.asarray(im).astype(np.float32), None
            else:
                if mode != "L":
                    im = im.convert("L")  # RGB/RGBA/P/LA/1 -> one channel (ITU-R 601 luma)
                arr, bits = np.asarray(im).astype(np.float32), 8
    except FileNotFoundError as e:
        raise DataError("file not found", path) from e
    except UnidentifiedImageError as e:
        raise DataError("not an image file (PIL cannot identify it)", path) from e
    except (OSError, ValueError, SyntaxError) as e:
        raise DataError(f"unreadable or truncated image ({type(e).__name__}: {e})", path) from e
    meta = {"source_format": path.suffix.lower().lstrip("."), "pil_mode": mode, "bits_stored": bits}
    if as_mask:
        return (arr > 0).astype(np.float32), None, meta
    if scale == "minmax" or (scale == "auto" and bits != 8) or (scale == "dtype" and bits is None):
        return _minmax(arr), None, meta
    return arr / float(2**bits - 1), None, meta


def _read_nifti(path: Path, scale: str, as_mask: bool):
    import nibabel as nib

    try:
        img = nib.load(str(path))
        arr = np.asarray(img.dataobj, dtype=np.float32)
        zooms = img.header.get_zooms()
    except Exception as e:  # noqa: BLE001
        raise DataError(f"unreadable or truncated NIfTI ({type(e).__name__}: {e})", path) from e
    arr = np.squeeze(arr)
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        arr = arr[..., :3].mean(-1)
    if arr.ndim != 2:
        raise DataError(f"expected a 2D image, got shape {arr.shape}", path)
    spacing = (float(zooms[0]), float(zooms[1])) if len(zooms) >= 2 else None
    meta = {"source_format": "nifti"}
    # NIfTI arrays are indexed (x, y) already: return (rows, cols) like the others (transposed back later)
    arr = arr.T
    if as_mask:
        return (arr > 0).astype(np.float32), spacing, meta
    return _minmax(arr), spacing, meta


def read_cxr(
    filename: str | os.PathLike,
    apply_voi: bool = True,
    invert_monochrome1: bool = True,
    scale: str = "auto",
    as_mask: bool = False,
) -> tuple[np.ndarray, dict]:
    """Read one image as a numpy ``(rows, cols)`` float32 array in [0, 1] (0/1 when ``as_mask``) plus metadata.

    Raises:
        DataError: file missing, not an image, truncated, undecodable (naming the plugin to install for
            compressed DICOM), unsupported bit depth or shape.
    """
    if scale not in ("auto", "minmax", "dtype"):
        raise ValueError(f"scale must be 'auto', 'minmax' or 'dtype', got {scale!r}")
    path = Path(filename)
    if not path.is_file():
        raise DataError("file not found" if not path.exists() else "not a file", path)
    name = path.name.lower()
    try:
        if name.endswith(_NIFTI_SUFFIXES):
            arr, spacing, meta = _read_nifti(path, scale, as_mask)
        elif name.endswith(_DICOM_SUFFIXES) or (not name.endswith(_PIL_SUFFIXES) and is_dicom_file(path)):
            arr, spacing, meta = _read_dicom(path, apply_voi, invert_monochrome1, scale, as_mask)
        else:
            arr, spacing, meta = _read_pil(path, scale, as_mask)
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - never a bare traceback from deep inside a reader
        raise DataError(f"cannot read image ({type(e).__name__}: {e})", path) from e
    if arr.size == 0:
        raise DataError("image is empty", path)
    meta["filename_or_obj"] = str(path)
    meta["pixel_spacing"] = spacing
    return arr, meta


#: metadata every loaded image carries (defaults where the format has no such field)
_META_DEFAULTS = {
    "source_format": "", "photometric_interpretation": "", "bits_stored": 0, "transfer_syntax": "",
    "modality": "", "view_position": "", "voi_applied": False, "inverted": False, "pil_mode": "",
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
    """Load a chest X-ray as a float ``(1, W, H)`` MetaTensor in [0, 1].

    Args:
        apply_voi: apply the DICOM VOI LUT or window (after the modality LUT).
        invert_monochrome1: invert ``MONOCHROME1`` DICOMs so that lungs are dark.
        scale: ``"auto"`` | ``"minmax"`` | ``"dtype"`` (see the module docstring).
        as_mask: load a mask instead: ``> 0`` -> 1.0, no LUTs, no scaling.
        dtype: output dtype.
    """

    def __init__(self, apply_voi: bool = True, invert_monochrome1: bool = True, scale: str = "auto",
                 as_mask: bool = False, dtype: torch.dtype = torch.float32):
        self.apply_voi = apply_voi
        self.invert_monochrome1 = invert_monochrome1
        self.scale = scale
        self.as_mask = as_mask
        self.dtype = dtype

    def __call__(self, filename: str | os.PathLike) -> MetaTensor:
        arr, meta = read_cxr(filename, self.apply_voi, self.invert_monochrome1, self.scale, self.as_mask)
        return _to_metatensor(arr, meta, self.dtype)


class LoadCXRd(MapTransform):
    """Dictionary version of :class:`LoadCXR`, plus the datalist checks that need the image size.

    Args:
        keys: image keys (loaded with :class:`LoadCXR`).
        mask_keys: mask keys, loaded as 0/1 and checked to have the size of the first image key.
        box_keys: keys holding ``[[x1, y1, x2, y2], ...]`` (x = column), checked to lie inside the image
            with ``x2 > x1`` and ``y2 > y1``.
        allow_missing_keys: skip absent keys. A ``None`` value (unknown annotation) is always kept as is.
        kwargs: passed to :class:`LoadCXR`.

    Raises:
        DataError: naming the file (image or mask) and the problem.
    """

    def __init__(self, keys: KeysCollection, mask_keys: KeysCollection = (), box_keys: KeysCollection = (),
                 allow_missing_keys: bool = False, **kwargs):
        super().__init__(keys, allow_missing_keys)
        self.mask_keys = [mask_keys] if isinstance(mask_keys, str) else list(mask_keys)
        self.box_keys = [box_keys] if isinstance(box_keys, str) else list(box_keys)
        self.loader = LoadCXR(**kwargs)
        self.mask_loader = LoadCXR(as_mask=True, dtype=kwargs.get("dtype", torch.float32))

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
            from monai_mcx.data.public import check_box

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
