"""Decoding the localization head's dense maps into boxes (inference / evaluation step).

Box mode everywhere: MONAI ``StandardMode`` (``xyxy``) in input-image pixels, x along spatial dim 0.

Pieces used from MONAI:

- anchors: :class:`monai.apps.detection.utils.anchor_utils.AnchorGeneratorWithAnchorShape`
  (see :mod:`monai_mcx.networks.anchors`);
- :meth:`monai.apps.detection.utils.box_coder.BoxCoder.decode_single` (regression -> boxes);
- the settings and steps of :meth:`monai.apps.detection.utils.box_selector.BoxSelector.select_boxes_per_image`
  (sigmoid, score threshold, per-level top-k, clipping to the image with removal of empty boxes, NMS per class,
  detections per image), run on the whole batch at once (:func:`decode_boxes`): MONAI's selector works one image
  and one level at a time and took about 10 ms per image on CPU, more than the rest of the post-processing.

The flattening of head maps (:func:`flatten_head_maps`) is the one of
``RetinaNetDetector._reshape_maps``, rewritten as a free function because MONAI only has it as a
method of a full ``RetinaNetDetector`` (and that one also runs NaN checks that break tracing).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.apps.detection.utils.box_coder import BoxCoder
from monai.apps.detection.utils.box_selector import BoxSelector
from monai.data.box_utils import batched_nms as monai_batched_nms
from monai.utils import convert_to_tensor
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


def _batched_nms(boxes: Tensor, scores: Tensor, groups: Tensor, nms_thresh: float) -> Tensor:
    """Indices kept by greedy NMS run separately in each group, by decreasing score: torchvision's compiled
    ``batched_nms`` when torchvision is installed, else MONAI's (a Python loop over the kept boxes)."""
    try:
        from torchvision.ops import batched_nms
    except ImportError:  # torchvision is optional (the ``detection`` extra)
        return monai_batched_nms(boxes, scores, groups, nms_thresh)
    return batched_nms(boxes, scores, groups, nms_thresh)


def decode_boxes(
    box_cls_logits: list[Tensor],
    box_regression: list[Tensor],
    anchors: list[Tensor],
    box_coder: BoxCoder,
    box_selector: BoxSelector,
    image_size: Sequence[int],
) -> list[dict[str, Tensor]]:
    """Decode dense head outputs into per-image detections, the whole batch at once.

    The steps and settings are those of MONAI's ``BoxSelector.select_boxes_per_image`` (sigmoid, candidates
    above ``score_thresh``, the ``topk_candidates_per_level`` best per level, clipping to the image with
    removal of boxes under one pixel, NMS per class at ``nms_thresh``, the ``detections_per_img`` best), run on
    tensors that hold every image and level: only the selected candidates are decoded, and the NMS is one call
    over the batch (torchvision's ``batched_nms``, grouped by image and class). The results equal MONAI's
    per-image selection up to the order of exactly tied scores (``tests/test_localization.py``).

    Args:
        box_cls_logits: per level ``(B, A*C, w_l, h_l)`` logits.
        box_regression: per level ``(B, A*4, w_l, h_l)`` encoded deltas (``box_coder``'s encoding).
        anchors: one ``(N, 4)`` ``xyxy`` tensor per image, ``N = sum_l w_l*h_l*A``, in the order of
            MONAI's anchor generator (``anchor_generator(images, box_cls_logits)``).
        box_coder: MONAI ``BoxCoder`` (the same weights as in training).
        box_selector: MONAI ``BoxSelector`` (its ``apply_sigmoid``, ``score_thresh``,
            ``topk_candidates_per_level``, ``nms_thresh`` and ``detections_per_img``).
        image_size: ``(W, H)`` of the input images; boxes are clipped to ``[0, W] x [0, H]`` and empty
            ones removed.

    Returns:
        one dict per image: ``boxes`` ``(M, 4)`` float ``xyxy`` image pixels, ``scores`` ``(M,)``
        (sigmoid probabilities, in the logits' dtype), ``labels`` ``(M,)`` long, sorted by decreasing score.
    """
    batch = len(anchors)
    if batch == 0:
        return []
    # plain tensors: a MONAI MetaTensor (the outputs of a network called on one) would apply its batch-metadata
    # rules to the batched indexing below
    box_cls_logits, box_regression, anchors = (
        [convert_to_tensor(t, track_meta=False) for t in ts] for ts in (box_cls_logits, box_regression, anchors)
    )
    num_anchors = num_anchors_per_location(box_cls_logits, int(anchors[0].shape[0]))
    per_level = [int(m.shape[-2]) * int(m.shape[-1]) * num_anchors for m in box_cls_logits]
    cls_flat = flatten_head_maps(box_cls_logits, num_anchors)  # (B, N, C)
    reg_flat = flatten_head_maps(box_regression, num_anchors)  # (B, N, 4)
    if reg_flat.shape[-1] != 4:
        raise ValueError(f"box_regression must have A*4 channels per level, got {reg_flat.shape[-1]} per anchor.")
    num_classes = int(cls_flat.shape[-1])
    sel = box_selector
    # candidates per level: scores above the threshold, the top k of them (flat index = anchor * C + class)
    idx_levels, score_levels, valid_levels = [], [], []
    start = 0
    for logits in cls_flat.split(per_level, dim=1):
        scores = logits.to(torch.float32).reshape(batch, -1)
        scores = torch.sigmoid(scores) if sel.apply_sigmoid else scores
        above = scores > sel.score_thresh
        k = min(int(sel.topk_candidates_per_level), int(scores.shape[1]))
        top, flat_idx = scores.masked_fill(~above, float("-inf")).topk(k, dim=1)
        idx_levels.append(flat_idx + start * num_classes)
        score_levels.append(top)
        valid_levels.append(top > float("-inf"))
        start += int(logits.shape[1])
    flat_idx = torch.cat(idx_levels, dim=1)  # (B, K)
    cand_scores = torch.cat(score_levels, dim=1)
    valid = torch.cat(valid_levels, dim=1)
    anchor_idx = torch.div(flat_idx, num_classes, rounding_mode="floor")
    labels = flat_idx % num_classes
    gather = anchor_idx[..., None].expand(-1, -1, 4)
    rel = reg_flat.to(torch.float32).gather(1, gather)
    ref = torch.stack([a.to(torch.float32) for a in anchors]).gather(1, gather)
    boxes = box_coder.decode_single(rel.reshape(-1, 4), ref.reshape(-1, 4)).reshape(batch, -1, 4)
    # clip to [0, W] x [0, H] and drop boxes under one pixel (MONAI's clip_boxes_to_image, remove_empty=True)
    size = torch.as_tensor([float(s) for s in image_size], dtype=boxes.dtype, device=boxes.device)
    boxes = torch.minimum(boxes.clamp(min=0), torch.cat([size, size]))
    valid &= (boxes[..., 2] >= boxes[..., 0] + 1) & (boxes[..., 3] >= boxes[..., 1] + 1)
    image_idx = torch.arange(batch, device=boxes.device)[:, None].expand_as(labels)
    b_boxes, b_scores, b_labels, b_image = boxes[valid], cand_scores[valid], labels[valid], image_idx[valid]
    keep = _batched_nms(b_boxes, b_scores, b_image * num_classes + b_labels, float(sel.nms_thresh))
    out_dtype = cls_flat.dtype
    results: list[dict[str, Tensor]] = []
    for b in range(batch):
        k_b = keep[b_image[keep] == b]
        if sel.detections_per_img > 0:
            k_b = k_b[: int(sel.detections_per_img)]
        results.append(
            {
                DetKeys.BOXES.value: b_boxes[k_b].float(),
                DetKeys.SCORES.value: b_scores[k_b].to(out_dtype),
                DetKeys.LABELS.value: b_labels[k_b].long(),
            }
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
