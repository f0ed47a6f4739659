"""TensorBoard overlays of validation cases: the X-ray with true/predicted masks (contours) and boxes.

:class:`TensorBoardOverlayHandler` logs a few validation images every validation round with
``SummaryWriter.add_image``, drawn by :func:`monai_mcx.visualize.overlay_rgb` (geometry and colours there: truth
green, prediction red). MONAI's ``TensorBoardImageHandler`` logs one image/label/prediction tensor per round but
draws neither contours nor boxes, hence this handler.

With ``saliency`` (a :class:`monai_mcx.explain.SaliencyMaps` of the evaluated network; ``train.json``'s
``tensorboard_saliency``, on by default), each case also gets ``<saliency_tag>/<i>``: the Grad-CAM map of the
case's most probable class blended over the X-ray (:func:`monai_mcx.visualize.saliency_rgb`), with the same contours
and boxes drawn.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.utils.enums import CommonKeys

from monai_mcx.keys import BatchKeys, DetKeys, PredKeys
from monai_mcx.visualize.overlays import overlay_rgb, saliency_rgb

__all__ = ["TensorBoardOverlayHandler"]


def _np(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x)


class TensorBoardOverlayHandler:
    """Log ``num_images`` validation cases as TensorBoard images each time the evaluator runs.

    Attach to the evaluator (``validate#handlers``). The first ``num_images`` samples of each run are drawn
    with :func:`monai_mcx.visualize.overlay_rgb`: true mask and boxes in green, the prediction of the evaluator's post-processing
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
            case = {BatchKeys.IMAGE.value: _np(images[i, 0])}
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
            w, h = case[BatchKeys.IMAGE].shape
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
