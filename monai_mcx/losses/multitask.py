"""Teacher-forced multi-task loss for MultiCheXNet.

Per sample, each task's term is used only where that sample carries the annotation (availability flags
``has_label``, ``has_mask``, ``has_boxes``). On top of that, teacher forcing decides which annotated
samples train the segmentation and localization heads:

* ``positive_only`` (default): only samples whose ground truth is positive for that task (the annotation,
  not the classifier's guess: a non-empty mask for segmentation, at least one box for localization, as the
  targets reach the loss after crops and resizing; :func:`monai_mcx.transforms.labels.task_positives`);
  negatives train the classifier only.
* ``all``: every annotated sample, negatives included (empty masks / no boxes are targets too).
* ``balanced``: all annotated positives plus a random ``negative_fraction`` of the annotated negatives.

The classifier uses every sample with a class label. A batch in which no sample qualifies for a task gives
exactly zero for that task (kept in the autograd graph as ``0 * logits.sum()`` so that DDP sees every
parameter), never NaN.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from monai.losses import DiceCELoss
from torch import nn

from monai_mcx.transforms.labels import task_positives

__all__ = ["MultiCheXNetLoss", "TEACHER_FORCING_MODES", "select_samples"]

TEACHER_FORCING_MODES = ("positive_only", "all", "balanced")


def _zero(x: torch.Tensor | list) -> torch.Tensor:
    if isinstance(x, (list, tuple)):
        return sum(t.sum() for t in x) * 0.0
    return x.sum() * 0.0


def select_samples(
    available: torch.Tensor,
    positive: torch.Tensor,
    mode: str = "positive_only",
    negative_fraction: float = 0.25,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Indices of the samples that train a dense head (segmentation or localization).

    Args:
        available: ``(B,)`` 0/1, the sample carries this task's annotation.
        positive: ``(B,)`` 0/1, ground-truth positivity.
        mode: one of :data:`TEACHER_FORCING_MODES`.
        negative_fraction: for ``balanced``, the probability that an annotated negative is kept.
    """
    if mode not in TEACHER_FORCING_MODES:
        raise ValueError(f"teacher_forcing must be one of {TEACHER_FORCING_MODES}, got {mode!r}")
    avail = available.reshape(-1) > 0.5
    pos = positive.reshape(-1) > 0.5
    if mode == "positive_only":
        keep = avail & pos
    elif mode == "all":
        keep = avail
    else:
        draw = torch.rand(avail.shape[0], generator=generator) < float(negative_fraction)
        keep = avail & (pos | draw.to(avail.device))
    return torch.nonzero(keep, as_tuple=False).reshape(-1)


class MultiCheXNetLoss(nn.Module):
    """Weighted sum of the classification, segmentation and localization losses with teacher forcing.

    ``forward(outputs, targets)`` takes the network's output dict (``class_logits`` ``(B, K)``,
    ``seg_logits`` ``(B, 1, W, H)``, ``box_cls_logits`` / ``box_regression`` lists of per-level maps) and
    the batch targets (``label`` ``(B, K)``, ``has_label``, ``mask`` ``(B, 1, W, H)``, ``has_mask``,
    ``boxes`` list of ``(N_i, 4)``, ``has_boxes``, and ``image`` ``(B, 1, W, H)`` for the anchors; the
    teacher-forcing positives are derived from them per task; an item's ``positive`` key is not
    used). It returns a dict: ``loss`` (the weighted total) and one unweighted term per built task
    (``classification``, ``segmentation``, ``localization``), plus the number of samples each used
    (``n_classification`` ...).

    Args:
        localization_loss: e.g. :class:`monai_mcx.losses.LocalizationLoss`; required when the network
            has a localization head. It returns ``{"cls": ..., "box": ...}``; their sum is the task's term.
        classification_loss: defaults to ``BCEWithLogitsLoss`` (multi-label, one sigmoid per class).
        segmentation_loss: defaults to MONAI's ``DiceCELoss(sigmoid=True)``.
        weights: per-task weights, default 1.0 each.
        teacher_forcing: ``positive_only`` | ``all`` | ``balanced``.
        negative_fraction: share of annotated negatives kept in ``balanced`` mode.
    """

    def __init__(
        self,
        localization_loss: nn.Module | None = None,
        classification_loss: nn.Module | None = None,
        segmentation_loss: nn.Module | None = None,
        weights: Mapping[str, float] | None = None,
        teacher_forcing: str = "positive_only",
        negative_fraction: float = 0.25,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if teacher_forcing not in TEACHER_FORCING_MODES:
            raise ValueError(f"teacher_forcing must be one of {TEACHER_FORCING_MODES}, got {teacher_forcing!r}")
        self.classification_loss = classification_loss or nn.BCEWithLogitsLoss()
        self.segmentation_loss = segmentation_loss or DiceCELoss(sigmoid=True, squared_pred=False)
        self.localization_loss = localization_loss
        self.weights = {"classification": 1.0, "segmentation": 1.0, "localization": 1.0, **dict(weights or {})}
        self.teacher_forcing = teacher_forcing
        self.negative_fraction = float(negative_fraction)
        self.generator = torch.Generator().manual_seed(int(seed))

    def forward(self, outputs: Mapping[str, object], targets: Mapping[str, object]) -> dict[str, torch.Tensor]:
        terms: dict[str, torch.Tensor] = {}
        counts: dict[str, int] = {}

        if "class_logits" in outputs:
            logits = outputs["class_logits"]
            idx = torch.nonzero(targets["has_label"].reshape(-1) > 0.5, as_tuple=False).reshape(-1)
            counts["classification"] = int(idx.numel())
            if idx.numel():
                y = targets["label"].to(logits.device, logits.dtype)
                terms["classification"] = self.classification_loss(logits[idx].float(), y[idx].float())
            else:
                terms["classification"] = _zero(logits)

        positive = task_positives(targets) if "seg_logits" in outputs or "box_cls_logits" in outputs else {}
        mode, fraction = self.teacher_forcing, self.negative_fraction
        if "seg_logits" in outputs:
            logits = outputs["seg_logits"]
            idx = select_samples(
                targets["has_mask"], positive["segmentation"], mode, fraction, self.generator
            ).to(logits.device)
            counts["segmentation"] = int(idx.numel())
            if idx.numel():
                m = targets["mask"].to(logits.device)
                terms["segmentation"] = self.segmentation_loss(logits[idx].float(), m[idx].float())
            else:
                terms["segmentation"] = _zero(logits)

        if "box_cls_logits" in outputs:
            cls_maps, reg_maps = outputs["box_cls_logits"], outputs["box_regression"]
            if self.localization_loss is None:
                raise ValueError("the network has a localization head but MultiCheXNetLoss got no localization_loss")
            idx = select_samples(
                targets["has_boxes"], positive["localization"], mode, fraction, self.generator
            ).to(cls_maps[0].device)
            counts["localization"] = int(idx.numel())
            if idx.numel():
                images = targets["image"][idx]
                boxes = [torch.as_tensor(targets["boxes"][int(i)]).to(cls_maps[0].device).float() for i in idx]
                parts = self.localization_loss(
                    [c[idx].float() for c in cls_maps], [r[idx].float() for r in reg_maps], images, boxes
                )
                terms["localization"] = sum(parts.values()) + _zero(cls_maps) + _zero(reg_maps)
            else:
                terms["localization"] = _zero(cls_maps) + _zero(reg_maps)

        if not terms:
            raise ValueError("the network output holds none of class_logits, seg_logits, box_cls_logits")
        total = sum(self.weights[k] * v for k, v in terms.items())
        out = {"loss": total, **terms}
        out.update({f"n_{k}": torch.tensor(v) for k, v in counts.items()})
        return out
