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

The classifier uses every sample with a class label; the lung-field head (task ``lungs``, an anatomy task) every
sample with a lung mask (no teacher forcing: every chest has lungs). A batch in which no sample qualifies for a task gives
exactly zero for that task (kept in the autograd graph as ``0 * logits.sum()`` when the head was computed),
never NaN.

Skipping what has no label: :meth:`MultiCheXNetLoss.select` draws the samples of every task *before* the
forward pass, so a trainer can leave out the heads whose task has no usable sample
(:meth:`MultiCheXNetLoss.needed_tasks`, ``MultiCheXNet.forward(image, tasks=...)``) and hand the same
selection to ``forward(outputs, targets, selection)``: a task whose head was not computed gives an exact
zero outside the graph, and the anchor generation and matching of the localization loss never run for it.
With ``gathered=True`` the outputs hold, per task, only the rows of its selected samples
(``MultiCheXNet.forward(image, samples=selection)``): each head then runs on the samples its task trains on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from monai.losses import DiceCELoss
from torch import nn

from monai_mcx.keys import BatchKeys, PredKeys, Task
from monai_mcx.transforms.labels import task_positives

__all__ = ["MultiCheXNetLoss", "TEACHER_FORCING_MODES", "select_samples"]

#: the network output key that tells a task's head was computed
_OUTPUT_KEYS = {
    Task.CLASSIFICATION.value: PredKeys.CLASS_LOGITS.value,
    Task.SEGMENTATION.value: PredKeys.SEG_LOGITS.value,
    Task.LOCALIZATION.value: PredKeys.BOX_CLS_LOGITS.value,
    Task.LUNGS.value: PredKeys.LUNG_LOGITS.value,
}

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
        segmentation_loss: defaults to MONAI's ``DiceCELoss(sigmoid=True)``; also the lung-field loss.
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
        self.weights = {
            Task.CLASSIFICATION.value: 1.0,
            Task.SEGMENTATION.value: 1.0,
            Task.LOCALIZATION.value: 1.0,
            Task.LUNGS.value: 1.0,
            **dict(weights or {}),
        }
        self.teacher_forcing = teacher_forcing
        self.negative_fraction = float(negative_fraction)
        self.generator = torch.Generator().manual_seed(int(seed))

    def select(self, targets: Mapping[str, object], tasks: Sequence[str]) -> dict[str, torch.Tensor]:
        """The samples each task trains on, teacher forcing applied (one draw per call in ``balanced`` mode).

        Args:
            targets: the batch targets (class docstring).
            tasks: the network's tasks, in the canonical order (``MultiCheXNet.tasks``).

        Returns:
            ``{task: (n_task,) long indices into the batch}`` for each of ``tasks``.
        """
        sel: dict[str, torch.Tensor] = {}
        positive = task_positives(targets) if {Task.SEGMENTATION.value, Task.LOCALIZATION.value} & set(tasks) else {}
        for task in tasks:
            if task == Task.CLASSIFICATION:
                sel[task] = torch.nonzero(targets[BatchKeys.HAS_LABEL].reshape(-1) > 0.5, as_tuple=False).reshape(-1)
            elif task == Task.LUNGS:
                flag = targets.get(BatchKeys.HAS_LUNG_MASK)
                if flag is None:
                    sel[task] = torch.zeros(0, dtype=torch.long)
                else:
                    sel[task] = torch.nonzero(torch.as_tensor(flag).reshape(-1) > 0.5, as_tuple=False).reshape(-1)
            elif task in (Task.SEGMENTATION, Task.LOCALIZATION):
                flag = targets[BatchKeys.HAS_MASK if task == Task.SEGMENTATION else BatchKeys.HAS_BOXES]
                sel[task] = select_samples(
                    flag, positive[task], self.teacher_forcing, self.negative_fraction, self.generator
                )
            else:
                raise ValueError(f"unknown task {task!r}; expected one of {tuple(_OUTPUT_KEYS)}")
        return sel

    @staticmethod
    def needed_tasks(selection: Mapping[str, torch.Tensor]) -> list[str]:
        """Tasks of ``selection`` with at least one sample (the heads a training step must compute)."""
        return [t for t, idx in selection.items() if idx.numel() > 0]

    def forward(
        self,
        outputs: Mapping[str, object],
        targets: Mapping[str, object],
        selection: Mapping[str, torch.Tensor] | None = None,
        gathered: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Args:
        outputs: the network's output dict (the heads computed).
        targets: the batch targets (class docstring).
        selection: from :meth:`select`; default: drawn here for the heads present in ``outputs``. A task
            in ``selection`` whose head is absent from ``outputs`` must have no sample; its term is 0.
        gathered: the outputs of each task hold only its selected samples, row ``j`` for batch item
            ``selection[task][j]`` (``MultiCheXNet.forward(image, samples=selection)``); needs ``selection``.
            The terms are the same as from whole-batch outputs (up to floating-point rounding).
        """
        if selection is None:
            if gathered:
                raise ValueError("MultiCheXNetLoss: gathered outputs need the selection they were gathered with.")
            selection = self.select(targets, [t for t, k in _OUTPUT_KEYS.items() if k in outputs])

        def rows(task: str, first: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            """(rows of the outputs, rows of the targets) of the task's selected samples."""
            idx = selection[task].to(first.device)
            if not gathered:
                return idx, idx
            if first.shape[0] != idx.numel():
                raise ValueError(
                    f"MultiCheXNetLoss: gathered {task} outputs have {first.shape[0]} rows for {idx.numel()} "
                    "selected samples."
                )
            return torch.arange(idx.numel(), device=first.device), idx

        terms: dict[str, torch.Tensor] = {}
        counts: dict[str, int] = {}
        device = targets[BatchKeys.IMAGE].device if BatchKeys.IMAGE in targets else None
        for task, idx in selection.items():
            counts[task] = int(idx.numel())
            if _OUTPUT_KEYS[task] not in outputs:
                if idx.numel():
                    raise ValueError(f"the {task} head was not computed but {idx.numel()} samples need it")
                terms[task] = torch.zeros((), device=device)

        if Task.CLASSIFICATION in selection and PredKeys.CLASS_LOGITS in outputs:
            logits = outputs[PredKeys.CLASS_LOGITS]
            oi, idx = rows(Task.CLASSIFICATION.value, logits)
            if idx.numel():
                y = targets[BatchKeys.LABEL].to(logits.device, logits.dtype)
                terms[Task.CLASSIFICATION.value] = self.classification_loss(logits[oi].float(), y[idx].float())
            else:
                terms[Task.CLASSIFICATION.value] = _zero(logits)

        if Task.SEGMENTATION in selection and PredKeys.SEG_LOGITS in outputs:
            logits = outputs[PredKeys.SEG_LOGITS]
            oi, idx = rows(Task.SEGMENTATION.value, logits)
            if idx.numel():
                m = targets[BatchKeys.MASK].to(logits.device)
                terms[Task.SEGMENTATION.value] = self.segmentation_loss(logits[oi].float(), m[idx].float())
            else:
                terms[Task.SEGMENTATION.value] = _zero(logits)

        if Task.LUNGS in selection and PredKeys.LUNG_LOGITS in outputs:
            logits = outputs[PredKeys.LUNG_LOGITS]
            oi, idx = rows(Task.LUNGS.value, logits)
            if idx.numel():
                m = targets[BatchKeys.LUNG_MASK].to(logits.device)
                terms[Task.LUNGS.value] = self.segmentation_loss(logits[oi].float(), m[idx].float())
            else:
                terms[Task.LUNGS.value] = _zero(logits)

        if Task.LOCALIZATION in selection and PredKeys.BOX_CLS_LOGITS in outputs:
            cls_maps, reg_maps = outputs[PredKeys.BOX_CLS_LOGITS], outputs[PredKeys.BOX_REGRESSION]
            if self.localization_loss is None:
                raise ValueError("the network has a localization head but MultiCheXNetLoss got no localization_loss")
            oi, idx = rows(Task.LOCALIZATION.value, cls_maps[0])
            if idx.numel():
                images = targets[BatchKeys.IMAGE][idx]
                boxes = [torch.as_tensor(targets[BatchKeys.BOXES][int(i)]).to(cls_maps[0].device).float() for i in idx]
                parts = self.localization_loss(
                    [c[oi].float() for c in cls_maps], [r[oi].float() for r in reg_maps], images, boxes
                )
                terms[Task.LOCALIZATION.value] = sum(parts.values()) + _zero(cls_maps) + _zero(reg_maps)
            else:
                terms[Task.LOCALIZATION.value] = _zero(cls_maps) + _zero(reg_maps)

        if not terms:
            raise ValueError("the network output holds none of class_logits, seg_logits, box_cls_logits")
        terms = {t: terms[t] for t in _OUTPUT_KEYS if t in terms}
        total = sum(self.weights[k] * v for k, v in terms.items())
        out = {"loss": total, **terms}
        out.update({f"n_{k}": torch.tensor(v) for k, v in counts.items()})
        return out
