"""Decoding the localization head's dense maps into boxes (inference / evaluation step).

Box mode everywhere: MONAI ``StandardMode`` (``xyxy``) in input-image pixels, x along spatial dim 0.

Pieces used from MONAI:

- anchors: :class:`monai.apps.detection.utils.anchor_utils.AnchorGeneratorWithAnchorShape`
  (see :mod:`monai_mcx.networks.anchors`);
- :meth:`monai.apps.detection.utils.box_coder.BoxCoder.decode_single` (regression -> boxes);
- :meth:`monai.apps.detection.utils.box_selector.BoxSelector.select_boxes_per_image` (sigmoid,
  score threshold, per-level top-k, clipping to the image with removal of empty boxes, batched NMS,
  detections per image).

The flattening of head maps (:func:`flatten_head_maps`) is the one of
``RetinaNetDetector._reshape_maps``, rewritten as a free function because MONAI only has it as a
method of a full ``RetinaNetDetector`` (and that one also runs NaN checks that break tracing).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.apps.detection.utils.box_coder import BoxCoder
from monai.apps.detection.utils.box_selector import BoxSelector
from torch import Tensor, nn

from monai_mcx.keys import DetKeys, PredKeys

__all__ = ["flatten_head_maps", "num_anchors_per_location", "decode_boxes", "BoxDecoder"]


def flatten_head_maps(maps: list[Tensor], num_anchors: int) -> Tensor:
    """Concatenate per-level head maps into one ``(B, sum_l(w_l*h_l*A), K)`` tensor.

    ``maps[l]`` is ``(B, A*K, w_l, h_l)`` (channel ``a*K + k``). The flat index over one level is
    ``(i * h_l + j) * A + a`` for feature position ``(i, j)`` (i along spatial dim 0) and anchor ``a``,
    levels concatenated finest first: the same order as MONAI's anchor generators
    (``AnchorGenerator.forward``) and ``RetinaNetDetector._reshape_maps``.
    """
    out = []
    for m in maps:
        b, ch = m.shape[0], m.shape[1]
        k = ch // num_anchors
        # (B, A, K, w, h) -> (B, w, h, A, K) -> (B, w*h*A, K)
        out.append(m.reshape(b, num_anchors, k, m.shape[2], m.shape[3]).permute(0, 3, 4, 1, 2).reshape(b, -1, k))
    return torch.cat(out, dim=1)


def num_anchors_per_location(maps: Sequence[Tensor], num_total_anchors: int) -> int:
    """A, inferred from the head maps and the number of anchors of one image (``sum_l w_l*h_l*A``)."""
    locs = sum(int(m.shape[-2]) * int(m.shape[-1]) for m in maps)
    if locs == 0 or num_total_anchors % locs != 0:
        raise ValueError(f"{num_total_anchors} anchors do not fit {locs} feature-map locations.")
    return num_total_anchors // locs


def decode_boxes(
    box_cls_logits: list[Tensor],
    box_regression: list[Tensor],
    anchors: list[Tensor],
    box_coder: BoxCoder,
    box_selector: BoxSelector,
    image_size: Sequence[int],
) -> list[dict[str, Tensor]]:
    """Decode dense head outputs into per-image detections.

    Args:
        box_cls_logits: per level ``(B, A*C, w_l, h_l)`` logits.
        box_regression: per level ``(B, A*4, w_l, h_l)`` encoded deltas (``box_coder``'s encoding).
        anchors: one ``(N, 4)`` ``xyxy`` tensor per image, ``N = sum_l w_l*h_l*A``, in the order of
            MONAI's anchor generator (``anchor_generator(images, box_cls_logits)``).
        box_coder: MONAI ``BoxCoder`` (the same weights as in training).
        box_selector: MONAI ``BoxSelector`` (sigmoid, threshold, top-k per level, NMS, max detections).
        image_size: ``(W, H)`` of the input images; boxes are clipped to ``[0, W] x [0, H]`` and empty
            ones removed.

    Returns:
        one dict per image: ``boxes`` ``(M, 4)`` float ``xyxy`` image pixels, ``scores`` ``(M,)``
        (sigmoid probabilities), ``labels`` ``(M,)`` long, sorted by decreasing score.
    """
    batch = len(anchors)
    if batch == 0:
        return []
    num_anchors = num_anchors_per_location(box_cls_logits, int(anchors[0].shape[0]))
    per_level = [int(m.shape[-2]) * int(m.shape[-1]) * num_anchors for m in box_cls_logits]
    cls_flat = flatten_head_maps(box_cls_logits, num_anchors)
    reg_flat = flatten_head_maps(box_regression, num_anchors)
    if reg_flat.shape[-1] != 4:
        raise ValueError(f"box_regression must have A*4 channels per level, got {reg_flat.shape[-1]} per anchor.")
    cls_levels = cls_flat.split(per_level, dim=1)
    reg_levels = reg_flat.split(per_level, dim=1)
    size = [int(s) for s in image_size]
    results: list[dict[str, Tensor]] = []
    for b in range(batch):
        anchor_levels = anchors[b].split(per_level, dim=0)
        boxes_list = [
            box_coder.decode_single(r[b].to(torch.float32), a.to(torch.float32))
            for r, a in zip(reg_levels, anchor_levels)
        ]
        logits_list = [c[b] for c in cls_levels]
        boxes, scores, labels = box_selector.select_boxes_per_image(boxes_list, logits_list, size)
        results.append(
            {DetKeys.BOXES.value: boxes.float(), DetKeys.SCORES.value: scores, DetKeys.LABELS.value: labels.long()}
        )
    return results


class BoxDecoder:
    """Callable turning a network output dict into boxes: anchors + :func:`decode_boxes`.

    Args:
        anchor_generator: the MONAI anchor generator used in training
            (:func:`monai_mcx.networks.anchors.make_anchor_generator`).
        box_coder: MONAI ``BoxCoder``; default ``BoxCoder(weights=(1, 1, 1, 1))`` (the loss's default).
        score_thresh, topk_candidates_per_level, nms_thresh, detections_per_img: MONAI ``BoxSelector``
            parameters (sigmoid is applied to the logits).

    ``decoder(outputs, images)``: ``outputs`` has ``box_cls_logits`` and ``box_regression`` (network
    contract), ``images`` is the ``(B, C, W, H)`` input batch (only its shape is used). Returns the list
    of per-image dicts of :func:`decode_boxes`. Runs without gradient.
    """

    def __init__(
        self,
        anchor_generator: nn.Module,
        box_coder: BoxCoder | None = None,
        score_thresh: float = 0.05,
        topk_candidates_per_level: int = 1000,
        nms_thresh: float = 0.5,
        detections_per_img: int = 100,
    ) -> None:
        self.anchor_generator = anchor_generator
        self.box_coder = box_coder if box_coder is not None else BoxCoder(weights=(1.0, 1.0, 1.0, 1.0))
        self.box_selector = BoxSelector(
            apply_sigmoid=True,
            score_thresh=score_thresh,
            topk_candidates_per_level=topk_candidates_per_level,
            nms_thresh=nms_thresh,
            detections_per_img=detections_per_img,
        )

    def __call__(self, outputs: dict, images: Tensor) -> list[dict[str, Tensor]]:
        cls_maps = list(outputs[PredKeys.BOX_CLS_LOGITS])
        reg_maps = list(outputs[PredKeys.BOX_REGRESSION])
        with torch.no_grad():
            anchors = self.anchor_generator(images, cls_maps)
            return decode_boxes(
                [c.detach() for c in cls_maps],
                [r.detach() for r in reg_maps],
                anchors,
                self.box_coder,
                self.box_selector,
                images.shape[2:],
            )
