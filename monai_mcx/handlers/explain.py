"""Does the saliency point at the lesion? An evaluator handler that scores Grad-CAM maps against the true lesions.

:class:`SaliencyEvaluation` is attached to the evaluator of ``bundle/configs/evaluate.json`` (``explain: true``).
For every evaluated image that has a true lesion (a non-empty mask or at least one box) and is positive for a
class, it computes that class's saliency map (:class:`monai_mcx.explain.SaliencyMaps`: MONAI's Grad-CAM on the
layer named by the model description's ``saliency`` slot) in the network's geometry, where the truth and the
predicted boxes also are, and scores it with :class:`monai_mcx.explain.PointingGame`:

- ``explain/pointing_game``: share of those images whose saliency maximum lies inside the truth (mask united with
  the boxes);
- ``explain/mass_inside``: mean share of the saliency mass inside the truth;
- ``explain/pointing_game/baseline``, ``explain/mass_inside/baseline``: the same for a centred Gaussian (the trivial
  "look at the middle" map every saliency must beat);
- ``explain/top_box_agreement``: share whose saliency maximum lies inside the localization head's top-scoring box
  (ungated: the head's own best guess; over the images with a decoded box), ``explain/top_box_mass_inside``, and
  ``explain/top_box_pointing_game`` (the top box's centre inside the truth);
- ``explain/n_images``, ``explain/n_images_top_box``; every key also per class (``/<class>``).

"Positive for a class": the image's class label is known and positive for it; an image whose label is unknown
counts as positive when the model has a single class (a drawn lesion is that class's).

The keys go into ``engine.state.metrics`` at ``EPOCH_COMPLETED``; list this handler BEFORE
:class:`~monai_mcx.handlers.MetricsJSONWriter` and :class:`~monai_mcx.handlers.EvaluationReport` in the
evaluator's handlers so both see them (Ignite runs the handlers of one event in the order they were attached; the
key metric's ``completed`` runs first, so nothing it writes is overwritten).

Cost: one forward + backward pass per class on the selected images of each batch (``max_images`` caps it, per
rank). Under ``torch.distributed`` the scores of every rank are gathered before the keys are computed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.utils.enums import CommonKeys

from monai_mcx.explain import PointingGame, SaliencyMaps, truth_region
from monai_mcx.keys import BatchKeys, DetKeys, PredKeys

__all__ = ["SaliencyEvaluation"]


def _np(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x)


class SaliencyEvaluation:
    """Score the saliency of the evaluated images against their true lesions (module docstring).

    Args:
        saliency: the maps to score (a :class:`~monai_mcx.explain.SaliencyMaps` of the evaluator's network, e.g.
            ``SaliencyMaps.from_description(network, description)``).
        class_names: the classifier's class names (the map of class ``k`` is ``saliency``'s channel for ``k``).
        enabled: False makes it a no-op (no keys).
        max_images: stop after this many images were scored (None: all).
        tolerance: pointing tolerance in pixels of the network input (0: the maximum must be inside).
        sigma_fraction: of the centred-Gaussian baseline (:func:`monai_mcx.explain.centred_gaussian`).
        prefix: key prefix.

    ``rank0_only = False``: under ``multi_gpu_evaluate.json`` it runs on every rank (each scores its shard, then
    :meth:`completed` gathers them), as the metrics do.
    """

    rank0_only = False

    def __init__(
        self,
        saliency: SaliencyMaps | None,
        class_names: Sequence[str],
        enabled: bool = True,
        max_images: int | None = None,
        tolerance: float = 0.0,
        sigma_fraction: float = 0.25,
        prefix: str = "explain",
    ) -> None:
        self.saliency = saliency
        self.class_names = list(class_names)
        self.enabled = bool(enabled) and saliency is not None
        self.max_images = None if max_images is None else int(max_images)
        self.game = PointingGame(self.class_names, tolerance=tolerance, sigma_fraction=sigma_fraction, prefix=prefix)
        self.metrics: dict[str, float] = {}
        self._scored = 0

    def attach(self, engine: Engine) -> None:
        if not self.enabled:
            return
        engine.add_event_handler(Events.EPOCH_STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.update)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.completed)

    def reset(self, engine: Engine | None = None) -> None:
        self.game.reset()
        self.metrics = {}
        self._scored = 0

    def _positive_classes(self, targets: dict, i: int) -> list[int]:
        has_label = targets.get(BatchKeys.HAS_LABEL)
        known = has_label is not None and float(_np(has_label).reshape(-1)[i]) > 0.5
        if known:
            y = _np(targets[BatchKeys.LABEL][i]).reshape(-1)
            return [k for k in range(len(self.class_names)) if y[k] > 0.5]
        return [0] if len(self.class_names) == 1 else []

    def _truth(self, targets: dict, i: int, shape: tuple[int, int]) -> np.ndarray | None:
        mask = boxes = None
        if BatchKeys.HAS_MASK in targets and float(_np(targets[BatchKeys.HAS_MASK]).reshape(-1)[i]) > 0.5:
            mask = _np(targets[BatchKeys.MASK][i])
        if BatchKeys.HAS_BOXES in targets and float(_np(targets[BatchKeys.HAS_BOXES]).reshape(-1)[i]) > 0.5:
            boxes = _np(targets[BatchKeys.BOXES][i]).reshape(-1, 4)
        if mask is None and boxes is None:
            return None
        region = truth_region(shape, boxes=boxes, mask=mask)
        return region if region.any() else None

    @staticmethod
    def _top_box(pred: dict, i: int) -> np.ndarray | None:
        if PredKeys.DETECTIONS not in pred:
            return None
        det = pred[PredKeys.DETECTIONS][i]
        scores = _np(det[DetKeys.SCORES]).reshape(-1)
        if not scores.size:
            return None
        return _np(det[DetKeys.BOXES]).reshape(-1, 4)[int(np.argmax(scores))]

    def update(self, engine: Engine) -> None:
        """Score the images of the batch just evaluated (``engine.state.output``: image, label, pred)."""
        if self.max_images is not None and self._scored >= self.max_images:
            return
        out = engine.state.output
        images, targets, pred = out[CommonKeys.IMAGE], out[CommonKeys.LABEL], out[CommonKeys.PRED]
        shape = tuple(int(s) for s in images.shape[2:])
        todo: list[tuple[int, list[int], np.ndarray]] = []
        for i in range(int(images.shape[0])):
            classes = self._positive_classes(targets, i)
            if not classes:
                continue
            region = self._truth(targets, i, shape)
            if region is None:
                continue
            if self.max_images is not None and self._scored + len(todo) >= self.max_images:
                break
            todo.append((i, classes, region))
        if not todo:
            return
        x = images[[i for i, _, _ in todo]]
        x = x.as_tensor() if hasattr(x, "as_tensor") else torch.as_tensor(x)
        maps = self.saliency(x).cpu().numpy()  # (n, K', W, H)
        channel = {c: j for j, c in enumerate(self.saliency.class_indices)}
        for row, (i, classes, region) in enumerate(todo):
            top = self._top_box(pred, i)
            for k in classes:
                if k in channel:
                    self.game.add(self.class_names[k], maps[row, channel[k]], region, top_box=top)
        self._scored += len(todo)

    def compute(self) -> dict[str, float]:
        """The ``explain/...`` keys of the images scored so far."""
        return self.game.compute()

    def _gather_ranks(self) -> None:
        """Under ``torch.distributed`` (each rank evaluated a shard), merge every rank's scores so that all ranks
        report the whole split. Collective: every rank must call it."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return
        parts: list = [None] * dist.get_world_size()
        dist.all_gather_object(parts, self.game._rows)
        self.game.reset()
        for rows in parts:
            for c, table in rows.items():
                for m, values in table.items():
                    self.game._rows[c][m].extend(values)

    def completed(self, engine: Engine) -> None:
        self._gather_ranks()
        self.metrics = self.compute()
        engine.state.metrics.update(self.metrics)
