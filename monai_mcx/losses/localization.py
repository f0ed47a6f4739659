"""Localization (dense box) loss: ATSS matching + sigmoid focal loss + GIoU / smooth-L1.

Everything is MONAI except the glue (MONAI's ``RetinaNetDetector`` has the same pieces but bound to a
full detector that owns the network, which MultiCheXNet's shared encoder does not fit):

- anchors: the MONAI anchor generator given (:func:`monai_mcx.networks.anchors.make_anchor_generator`);
- matching: :class:`monai.apps.detection.utils.ATSS_matcher.ATSSMatcher`, per image;
- classification: :class:`monai.losses.FocalLoss` (sigmoid, ``gamma``, ``alpha``) summed over all
  non-ignored anchors of the batch and divided by the number of foreground anchors (at least 1);
- boxes: :func:`monai.data.box_utils.box_pair_giou` on (decoded prediction, matched ground truth)
  pairs (``BoxCoder.decode_single``), or smooth-L1 on ``BoxCoder.encode_single`` targets; mean over the
  foreground anchors of the batch, times ``box_weight``.

Hard negatives: no sampler (MONAI's ``HardNegativeSampler``) is used; every anchor that is not
foreground counts as a negative and the focal term ``(1 - p_t)^gamma`` down-weights the many easy
ones, so the hard negatives dominate the background loss (RetinaNet's recipe).

Box mode: targets are ``xyxy`` (``StandardMode``) in input-image pixels, x along spatial dim 0.
All boxes are lesion class 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.apps.detection.utils.ATSS_matcher import ATSSMatcher
from monai.apps.detection.utils.box_coder import BoxCoder
from monai.data.box_utils import box_pair_giou
from monai.losses import FocalLoss
from monai.utils import look_up_option
from torch import Tensor, nn

from ..networks.box_decoding import flatten_head_maps, num_anchors_per_location

__all__ = ["LocalizationLoss"]


class LocalizationLoss(nn.Module):
    """Dense detection loss for the MultiCheXNet localization head.

    Args:
        anchor_generator: MONAI anchor generator (the one used at inference by ``BoxDecoder``).
        box_coder: MONAI ``BoxCoder``; default ``BoxCoder(weights=(1, 1, 1, 1))``.
        num_candidates: ATSS candidates per level and anchor shape.
        center_in_gt: ATSS option (False suits small lesions).
        focal_gamma, focal_alpha: sigmoid focal loss parameters.
        box_loss: ``"giou"`` (1 - GIoU of decoded boxes) or ``"smooth_l1"`` (on encoded deltas, beta 1/9).
        box_weight: multiplier of the box term.

    ``forward(box_cls_logits, box_regression, images, target_boxes)``:

    - ``box_cls_logits``: per level ``(B, A*C, w_l, h_l)``; ``box_regression``: per level ``(B, A*4, w_l, h_l)``;
    - ``images``: ``(B, C_in, W, H)`` (only its shape is used, for the anchors);
    - ``target_boxes``: list of B ``(N_i, 4)`` ``xyxy`` tensors (``(0, 4)`` for none).

    Returns ``{"cls": scalar, "box": scalar}``. Images without boxes contribute only background
    classification terms; with no foreground anchor in the batch (or ``B == 0``) ``box`` is exactly 0
    and nothing is NaN.
    """

    def __init__(
        self,
        anchor_generator: nn.Module,
        box_coder: BoxCoder | None = None,
        num_candidates: int = 4,
        center_in_gt: bool = False,
        focal_gamma: float = 2.0,
        focal_alpha: float | None = 0.25,
        box_loss: str = "giou",
        box_weight: float = 1.0,
    ) -> None:
        super().__init__()
        self.anchor_generator = anchor_generator
        self.box_coder = box_coder if box_coder is not None else BoxCoder(weights=(1.0, 1.0, 1.0, 1.0))
        self.matcher = ATSSMatcher(num_candidates=num_candidates, center_in_gt=center_in_gt)
        self.focal = FocalLoss(
            include_background=True,
            to_onehot_y=False,
            gamma=focal_gamma,
            alpha=focal_alpha,
            use_softmax=False,
            reduction="none",
        )
        self.box_loss = look_up_option(box_loss, ("giou", "smooth_l1"))
        self.box_weight = float(box_weight)

    def match(
        self, anchors: Tensor, boxes: Tensor, num_anchor_locs_per_level: Sequence[int], num_anchors: int
    ) -> Tensor:
        """ATSS matching for one image: ``(N,)`` long, matched box index or negative (-1 background, -2 ignore)."""
        if boxes.numel() == 0:
            return torch.full((anchors.shape[0],), -1, dtype=torch.long, device=anchors.device)
        _, matched = self.matcher(boxes.to(anchors), anchors, num_anchor_locs_per_level, num_anchors)
        return matched.to(device=anchors.device, dtype=torch.long)

    def forward(
        self,
        box_cls_logits: list[Tensor],
        box_regression: list[Tensor],
        images: Tensor,
        target_boxes: Sequence[Tensor],
    ) -> dict[str, Tensor]:
        # exact zero that keeps every head output in the graph (no unused parameters under DDP)
        zero = sum(m.sum() for m in box_cls_logits) * 0.0 + sum(m.sum() for m in box_regression) * 0.0
        if not isinstance(zero, Tensor):
            zero = images.new_zeros(())
        batch = int(images.shape[0])
        if len(target_boxes) != batch:
            raise ValueError(f"got {len(target_boxes)} target box tensors for a batch of {batch} images.")
        if batch == 0:
            return {"cls": zero, "box": zero}
        anchors = self.anchor_generator(images, box_cls_logits)
        num_anchors = num_anchors_per_location(box_cls_logits, int(anchors[0].shape[0]))
        locs = [int(m.shape[-2]) * int(m.shape[-1]) for m in box_cls_logits]
        cls_flat = flatten_head_maps(box_cls_logits, num_anchors)  # (B, N, C)
        reg_flat = flatten_head_maps(box_regression, num_anchors)  # (B, N, 4)

        cls_terms, num_fg = [], 0
        pred_list, target_list, anchor_list = [], [], []
        for b in range(batch):
            anchors_b = anchors[b]
            boxes_b = torch.as_tensor(target_boxes[b]).reshape(-1, 4).to(device=anchors_b.device, dtype=torch.float32)
            matched = self.match(anchors_b.float(), boxes_b, locs, num_anchors)
            fg = matched >= 0
            valid = matched != ATSSMatcher.BETWEEN_THRESHOLDS
            target_cls = torch.zeros_like(cls_flat[b], dtype=torch.float32)
            target_cls[fg, 0] = 1.0  # one lesion class
            logits_b = cls_flat[b][valid].float()
            if logits_b.numel():
                cls_terms.append(self.focal(logits_b, target_cls[valid]).sum())
            n_fg = int(fg.sum())
            num_fg += n_fg
            if n_fg:
                pred_list.append(reg_flat[b][fg].float())
                target_list.append(boxes_b[matched[fg]])
                anchor_list.append(anchors_b[fg].float())
        normaliser = float(max(num_fg, 1))
        cls_loss = zero + (torch.stack(cls_terms).sum() / normaliser if cls_terms else 0.0)
        if num_fg == 0:
            return {"cls": cls_loss, "box": zero}
        pred = torch.cat(pred_list)
        target = torch.cat(target_list)
        anc = torch.cat(anchor_list)
        if self.box_loss == "giou":
            decoded = self.box_coder.decode_single(pred, anc)
            box = (1.0 - box_pair_giou(decoded, target)).sum() / normaliser
        else:
            encoded = self.box_coder.encode_single(target, anc)
            box = F.smooth_l1_loss(pred, encoded, beta=1.0 / 9.0, reduction="sum") / normaliser
        return {"cls": cls_loss, "box": zero + self.box_weight * box}
