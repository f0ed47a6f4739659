"""TensorBoard overlays of validation cases: the X-ray with true/predicted masks (contours) and boxes.

:func:`overlay_rgb` draws one case into an RGB ``uint8`` array with numpy only (no plotting library),
:class:`TensorBoardOverlayHandler` logs a few validation images every validation round with
``SummaryWriter.add_image``. MONAI's ``TensorBoardImageHandler`` logs one image/label/prediction tensor
per round but draws neither contours nor boxes, hence this handler.

Geometry (``docs/CONTRACTS.md``): tensors are ``(C, W, H)`` with x = spatial dim 0 = column, boxes
``[x1, y1, x2, y2]`` in pixel-edge coordinates; the returned picture is ``(H', W', 3)`` (rows, columns),
i.e. the array is transposed once, here, and a box's x lands on the columns.
Colours: truth green, prediction red (where both overlap the pixel is yellow).

With ``saliency`` (a :class:`monai_mcx.explain.SaliencyMaps` of the evaluated network; ``train.json``'s
``tensorboard_saliency``, on by default), each case also gets ``<saliency_tag>/<i>``: the Grad-CAM map of the
case's most probable class blended over the X-ray (:func:`saliency_rgb`), with the same contours and boxes drawn.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.utils.enums import CommonKeys

from monai_mcx.explain import saliency_overlay
from monai_mcx.keys import BatchKeys, DetKeys, PredKeys

__all__ = ["overlay_rgb", "saliency_rgb", "TensorBoardOverlayHandler", "TRUE_RGB", "PRED_RGB"]

TRUE_RGB = (0, 255, 0)
PRED_RGB = (255, 0, 0)


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


class TensorBoardOverlayHandler:
    """Log ``num_images`` validation cases as TensorBoard images each time the evaluator runs.

    Attach to the evaluator (``validate#handlers``). The first ``num_images`` samples of each run are drawn
    with :func:`overlay_rgb`: true mask and boxes in green, the prediction of the evaluator's post-processing
    (:class:`monai_mcx.inferers.MultiCheXNetPostprocessor`: ``seg_mask`` and the boxes at the operating point,
    ``detections_op``; both ungated, to show the heads themselves) in red. Tags are ``<tag>/<i>``; the step is the
    evaluator's epoch, which MONAI's ``ValidationHandler`` sets to the trainer's epoch.

    Args:
        log_dir: TensorBoard folder (the bundle's ``tensorboard_dir``); ignored when ``summary_writer`` is given.
        num_images: how many validation images to show.
        tag: tag prefix.
        upscale: magnification; default makes the longer side at least 256 px.
        summary_writer: an existing ``SummaryWriter``.
        saliency: a :class:`monai_mcx.explain.SaliencyMaps` of the evaluator's network: also log each case's
            saliency (module docstring) under ``saliency_tag``; None: overlays only.
        saliency_tag: tag prefix of the saliency images.
    """

    def __init__(
        self,
        log_dir: str | os.PathLike = "./runs",
        num_images: int = 4,
        tag: str = "validation/overlay",
        upscale: int | None = None,
        summary_writer: Any | None = None,
        saliency: Any | None = None,
        saliency_tag: str = "validation/saliency",
    ) -> None:
        self.log_dir = str(log_dir)
        self.num_images = int(num_images)
        self.tag = tag
        self.upscale = upscale
        self._writer = summary_writer
        self.saliency = saliency
        self.saliency_tag = saliency_tag
        self._cases: list[dict] = []

    @property
    def writer(self):
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=self.log_dir)
        return self._writer

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._write)

    def _reset(self, engine: Engine) -> None:
        self._cases = []

    def _collect(self, engine: Engine) -> None:
        if len(self._cases) >= self.num_images:
            return
        out = engine.state.output
        pred, targets, images = out[CommonKeys.PRED], out[CommonKeys.LABEL], out[CommonKeys.IMAGE]
        for i in range(images.shape[0]):
            if len(self._cases) >= self.num_images:
                break
            case = {"image": _np(images[i, 0])}
            if self.saliency is not None:
                img = images[i].detach()
                case["_input"] = img.as_tensor() if hasattr(img, "as_tensor") else img
                if PredKeys.CLASS_PROBS in pred:
                    case["_class"] = int(torch.argmax(pred[PredKeys.CLASS_PROBS][i]).item())
            if BatchKeys.MASK in targets and float(targets[BatchKeys.HAS_MASK][i]) > 0.5:
                case["true_mask"] = _np(targets[BatchKeys.MASK][i, 0])
            if PredKeys.SEG_MASK in pred:
                case["pred_mask"] = _np(pred[PredKeys.SEG_MASK][i, 0])
            if BatchKeys.BOXES in targets and float(targets[BatchKeys.HAS_BOXES][i]) > 0.5:
                case["true_boxes"] = _np(targets[BatchKeys.BOXES][i]).reshape(-1, 4)
            if PredKeys.DETECTIONS_OP in pred:
                case["pred_boxes"] = _np(pred[PredKeys.DETECTIONS_OP][i][DetKeys.BOXES]).reshape(-1, 4)
            self._cases.append(case)

    def _write(self, engine: Engine) -> None:
        step = int(engine.state.epoch)
        maps = self._saliency_maps()
        for i, case in enumerate(self._cases):
            drawn = {k: v for k, v in case.items() if not k.startswith("_")}
            w, h = case["image"].shape
            s = self.upscale or max(1, int(np.ceil(256 / max(w, h))))
            rgb = overlay_rgb(upscale=s, **drawn)
            self.writer.add_image(f"{self.tag}/{i}", rgb, global_step=step, dataformats="HWC")
            if maps is not None:
                channel = (
                    self.saliency.class_indices.index(case["_class"])
                    if case.get("_class") in (self.saliency.class_indices)
                    else 0
                )
                rgb = saliency_rgb(saliency=maps[i, channel], upscale=s, **drawn)
                self.writer.add_image(f"{self.saliency_tag}/{i}", rgb, global_step=step, dataformats="HWC")
        self.writer.flush()

    def _saliency_maps(self) -> np.ndarray | None:
        """``(n, K', W, H)`` maps of the collected cases (in the network's eval mode), or None."""
        if self.saliency is None or not self._cases:
            return None
        x = torch.stack([c["_input"] for c in self._cases]).float()
        x = x.to(next(self.saliency.wrapper.parameters()).device)
        return self.saliency(x).cpu().numpy()
