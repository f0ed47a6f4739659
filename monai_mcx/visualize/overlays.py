"""Overlays of one image: the predicted mask, boxes and saliency drawn over the X-ray, as RGB pictures.

- :func:`overlay_image`: inference's ``<stem>_overlay.png`` (:class:`monai_mcx.handlers.PredictionWriter`): the
  mask tinted red and the boxes in yellow with their scores, at the original size (a ``PIL.Image``).
- :func:`saliency_overlay` (and :func:`saliency_png_bytes`): a saliency heat map blended over the X-ray (inference's
  ``<stem>_saliency_<class>.png``, TensorBoard, ``experiments/saliency_real.py``).
- :func:`overlay_rgb`: TensorBoard's validation pictures (:class:`monai_mcx.handlers.TensorBoardOverlayHandler`):
  true (green) and predicted (red) mask contours and boxes, drawn with numpy only; :func:`saliency_rgb` adds a
  saliency heat map under them. MONAI's ``TensorBoardImageHandler`` logs one image/label/prediction tensor per
  round but draws neither contours nor boxes, hence these.

Geometry (``docs/CONTRACTS.md``): :func:`overlay_image` and :func:`saliency_overlay` take arrays that are already
``(rows, cols)``; :func:`overlay_rgb` and :func:`saliency_rgb` take MONAI's ``(W, H)`` (x = spatial dim 0 = column)
and transpose once, here. Boxes are ``[x1, y1, x2, y2]`` in pixel-edge coordinates with x along the columns. The
matplotlib panels of the evaluation report are :func:`monai_mcx.visualize.draw_case`.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

__all__ = [
    "overlay_image",
    "saliency_overlay",
    "saliency_png_bytes",
    "overlay_rgb",
    "saliency_rgb",
    "TRUE_RGB",
    "PRED_RGB",
]

#: :func:`overlay_rgb`'s colours: truth green, prediction red (where both overlap the pixel is yellow)
TRUE_RGB = (0, 255, 0)
PRED_RGB = (255, 0, 0)


def overlay_image(
    gray: np.ndarray,
    mask: np.ndarray | None,
    boxes: Sequence[Sequence[float]] = (),
    scores: Sequence[float] = (),
    alpha: float = 0.4,
) -> Image.Image:
    """RGB overlay: ``gray`` ``(rows, cols)`` in [0, 1] (or uint8, already ``floor(gray * 255)``), ``mask``
    ``(rows, cols)`` bool tinted red, ``boxes`` ``[x1, y1, x2, y2]`` (x = column, pixel edges) drawn in yellow
    with their ``scores``."""
    gray = np.asarray(gray)
    g = gray if gray.dtype == np.uint8 else (np.clip(np.nan_to_num(gray), 0, 1) * 255).astype(np.uint8)
    if mask is not None and mask.any():
        # one look-up per pixel in a (512, 3) table: row g is the gray level g, row 256 + g the same level tinted,
        # (1 - alpha) * g + alpha * (255, 0, 0) rounded (fancy-indexing the masked pixels is 5 x slower)
        levels = np.arange(256, dtype=np.float32)[:, None]
        tint = np.array([255.0, 0.0, 0.0], dtype=np.float32)
        tinted = ((1 - np.float32(alpha)) * levels + np.float32(alpha) * tint).round()
        lut = np.concatenate([np.repeat(levels, 3, axis=1), tinted]).astype(np.uint8)
        index = g.astype(np.uint16) | (np.asarray(mask, dtype=np.uint16) << 8)
        rgb = np.take(lut, index.ravel(), axis=0).reshape(*g.shape, 3)
    else:
        rgb = np.repeat(g[..., None], 3, axis=-1)
    im = Image.fromarray(rgb, mode="RGB")
    draw = ImageDraw.Draw(im)
    width = max(1, round(min(im.size) / 256))
    for i, b in enumerate(boxes):
        x1, y1, x2, y2 = (float(v) for v in b)
        draw.rectangle([x1, y1, max(x1, x2 - 1), max(y1, y2 - 1)], outline=(255, 255, 0), width=width)
        if i < len(scores):
            draw.text((x1 + 2, y1 + 1), f"{float(scores[i]):.2f}", fill=(255, 255, 0))
    return im


def saliency_overlay(gray: np.ndarray, saliency: np.ndarray, alpha: float = 0.45, cmap: str = "jet"):
    """RGB heat-map overlay (a ``PIL.Image``): ``gray`` ``(rows, cols)`` in [0, 1] (or uint8, 0-255) and ``saliency``
    ``(rows, cols)`` in [0, 1] (transpose a ``(W, H)`` map first). The colour map is blended with weight
    ``alpha * saliency``, so regions without saliency keep the X-ray's gray."""
    # matplotlib is imported here, not at module level: only its colour maps are needed, and only for saliency
    # (inference without saliency never loads it)
    from matplotlib import colormaps

    gray = np.asarray(gray)
    g = gray / np.float32(255) if gray.dtype == np.uint8 else np.clip(np.nan_to_num(gray.astype(np.float32)), 0, 1)
    s = np.clip(np.nan_to_num(np.asarray(saliency, dtype=np.float32)), 0, 1)
    if g.shape != s.shape:
        raise ValueError(f"saliency_overlay: image {g.shape} and saliency {s.shape} differ (both rows x cols).")
    heat = colormaps[cmap](s)[..., :3].astype(np.float32)
    w = (alpha * s)[..., None]
    rgb = (1 - w) * g[..., None] + w * heat
    return Image.fromarray((rgb * 255).round().astype(np.uint8), mode="RGB")


def saliency_png_bytes(gray: np.ndarray, saliency: np.ndarray, alpha: float = 0.45) -> bytes:
    """:func:`saliency_overlay` encoded as PNG bytes (for atomic writing)."""
    buf = io.BytesIO()
    saliency_overlay(gray, saliency, alpha=alpha).save(buf, format="PNG")
    return buf.getvalue()


def _np(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x)


def _contour(mask: np.ndarray) -> np.ndarray:
    """Boundary pixels of a boolean ``(rows, cols)`` mask (4-neighbourhood, image border counts as outside)."""
    m = np.pad(mask, 1, constant_values=False)
    inner = m[1:-1, 1:-1] & m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]
    return mask & ~inner


def _paint(rgb: np.ndarray, where: np.ndarray, colour: Sequence[int]) -> None:
    """Paint ``where`` in ``colour``; a pixel painted green then red (or the reverse) becomes yellow."""
    colour = np.asarray(colour, dtype=np.uint8)
    already = where & np.all(rgb == np.asarray(TRUE_RGB if tuple(colour) == PRED_RGB else PRED_RGB, np.uint8), axis=-1)
    rgb[where] = colour
    rgb[already] = (255, 255, 0)


def _box_outline(shape_rc: tuple[int, int], box: np.ndarray, scale: int, width: int) -> np.ndarray:
    """Boolean ``(rows, cols)`` mask of the outline of ``box`` (xyxy, pixel edges, original pixels) drawn inside it."""
    rows, cols = shape_rc
    x1, y1, x2, y2 = (float(v) * scale for v in box)
    c1, c2 = int(np.clip(np.floor(x1), 0, cols)), int(np.clip(np.ceil(x2), 0, cols))
    r1, r2 = int(np.clip(np.floor(y1), 0, rows)), int(np.clip(np.ceil(y2), 0, rows))
    out = np.zeros(shape_rc, dtype=bool)
    if c2 <= c1 or r2 <= r1:
        return out
    out[r1:r2, c1:c2] = True
    w = max(1, int(width))
    out[min(r1 + w, r2) : max(r2 - w, r1), min(c1 + w, c2) : max(c2 - w, c1)] = False
    return out


def overlay_rgb(
    image: Any,
    true_mask: Any | None = None,
    pred_mask: Any | None = None,
    true_boxes: Any | None = None,
    pred_boxes: Any | None = None,
    upscale: int = 1,
    line_width: int | None = None,
) -> np.ndarray:
    """Draw one case into an RGB picture.

    Args:
        image: ``(W, H)`` or ``(1, W, H)`` intensities (min-max scaled for display).
        true_mask, pred_mask: ``(W, H)`` or ``(1, W, H)``; drawn as contours (> 0.5 is inside).
        true_boxes, pred_boxes: ``(N, 4)`` ``[x1, y1, x2, y2]`` in the image's pixels (x along dim 0).
        upscale: integer nearest-neighbour magnification (small images are hard to read).
        line_width: outline width in output pixels (default ``upscale``).

    Returns:
        ``(H * upscale, W * upscale, 3)`` ``uint8`` (rows = y, columns = x), ready for
        ``SummaryWriter.add_image(..., dataformats="HWC")`` or ``PIL.Image.fromarray``.
    """
    img = _np(image).astype(np.float32)
    if img.ndim == 3:
        img = img[0]
    if img.ndim != 2:
        raise ValueError(f"image must be (W, H) or (1, W, H), got {img.shape}.")
    s = max(1, int(upscale))
    lw = s if line_width is None else int(line_width)
    lo, hi = float(img.min()), float(img.max())
    grey = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)
    grey = np.repeat(np.repeat(grey.T, s, axis=0), s, axis=1)  # (H*s, W*s): rows = y
    rgb = np.repeat((grey * 255).round().astype(np.uint8)[..., None], 3, axis=-1)
    for mask, colour in ((true_mask, TRUE_RGB), (pred_mask, PRED_RGB)):
        if mask is None:
            continue
        m = _np(mask)
        m = (m[0] if m.ndim == 3 else m) > 0.5
        if m.shape != img.shape:
            raise ValueError(f"mask shape {m.shape} differs from the image's {img.shape}.")
        m = np.repeat(np.repeat(m.T, s, axis=0), s, axis=1)
        edge = _contour(m)
        for _ in range(max(0, lw - 1)):  # thicken inwards
            edge = edge | _contour(m & ~edge)
        _paint(rgb, edge, colour)
    for boxes, colour in ((true_boxes, TRUE_RGB), (pred_boxes, PRED_RGB)):
        if boxes is None:
            continue
        for box in _np(boxes).reshape(-1, 4):
            _paint(rgb, _box_outline(rgb.shape[:2], box, s, lw), colour)
    return rgb


def saliency_rgb(
    image: Any, saliency: Any, upscale: int = 1, alpha: float = 0.45, line_width: int | None = None, **overlays: Any
) -> np.ndarray:
    """:func:`overlay_rgb` with a saliency heat map blended under the contours and boxes.

    Args:
        image: ``(W, H)`` or ``(1, W, H)``.
        saliency: ``(W, H)`` in [0, 1] (the network's geometry, as ``image``).
        upscale, line_width: as :func:`overlay_rgb`.
        alpha: the heat map's opacity at saliency 1 (``alpha * saliency`` elsewhere).
        overlays: ``true_mask``, ``pred_mask``, ``true_boxes``, ``pred_boxes`` (drawn over the heat map).

    Returns:
        ``(H * upscale, W * upscale, 3)`` ``uint8``.
    """
    img = _np(image).astype(np.float32)
    img = img[0] if img.ndim == 3 else img
    sal = _np(saliency).astype(np.float32)
    if sal.shape != img.shape:
        raise ValueError(f"saliency shape {sal.shape} differs from the image's {img.shape}.")
    s = max(1, int(upscale))
    lo, hi = float(img.min()), float(img.max())
    grey = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)
    heat = np.asarray(saliency_overlay(grey.T, sal.T, alpha=alpha))  # (H, W, 3)
    heat = np.repeat(np.repeat(heat, s, axis=0), s, axis=1)
    plain = overlay_rgb(img, upscale=s, line_width=line_width)  # the grey picture alone
    drawn = overlay_rgb(img, upscale=s, line_width=line_width, **overlays)
    changed = np.any(drawn != plain, axis=-1)  # the contour and box pixels
    heat[changed] = drawn[changed]
    return heat
