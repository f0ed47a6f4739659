"""Dictionary transforms that turn a datalist item's (possibly missing) annotations into tensors plus
availability flags, and move boxes with the image through resizing.

Unknown (``null``) is not negative: an unknown mask becomes an all-zero mask with ``has_mask = 0`` and an
unknown box list becomes an empty ``(0, 4)`` tensor with ``has_boxes = 0``; the losses and metrics skip
them. A known-empty box list (``[]``) keeps ``has_boxes = 1``.

Ground-truth positivity for teacher forcing is per task (:func:`task_positives`) and is computed from the
annotations as they reach the loss, i.e. after every crop, zoom and resize: a lesion cropped away or a small
mask that vanishes when downsampled makes that task's target empty, and so that task's positive flag 0,
whatever the class label says. The item's ``positive`` key (set here) is only the image-level flag.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.apps.detection.transforms.box_ops import resize_boxes
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Resize
from monai.utils import ensure_tuple, ensure_tuple_rep

from monai_mcx.data.boxes import check_boxes
from monai_mcx.data.errors import DataError
from monai_mcx.keys import BatchKeys, DatalistKeys, Task
from monai_mcx.transforms.io import LoadCXR

__all__ = ["AnnotationError", "PrepareAnnotationsd", "ResizeWithBoxesd", "task_positives"]


class AnnotationError(DataError):
    """An annotation does not fit its image. The message names the file(s) and the problem."""


def _name(d: Mapping, key: str) -> str:
    v = d.get(key)
    if isinstance(v, MetaTensor):
        return str(v.meta.get("filename_or_obj", "<image>"))
    return str(v)


class PrepareAnnotationsd(MapTransform):
    """Load the mask (if any), turn ``label``/``mask``/``boxes`` into tensors and add availability flags.

    Input (after the image was loaded channel-first as ``(1, W, H)``): ``label`` list or None,
    ``mask`` path or None, ``boxes`` list of ``[x1, y1, x2, y2]`` (StandardMode, x = spatial dim 0) or None.

    Output keys: ``label`` ``(K,)`` float, ``has_label``; ``mask`` ``(1, W, H)`` float 0/1, ``has_mask``,
    ``mask_path`` (the mask file, ``""`` for an in-memory or absent mask: metrics at the original resolution
    reload it, see :class:`monai_mcx.handlers.MultiTaskMetrics`);
    ``boxes`` ``(N, 4)`` float, ``has_boxes``; ``positive`` (image-level ground-truth positivity: any class
    if the label is known, else a non-empty mask, else a non-empty box list). Teacher forcing does not use
    ``positive``: it uses the per-task flags of :func:`task_positives`, computed after the geometry.

    Args:
        num_classes: length of the class vector K.
        box_tolerance: boxes may exceed the image by this many pixels (then they are clipped); beyond it
            an :class:`AnnotationError` names the image. Boxes are checked by
            :func:`monai_mcx.data.boxes.check_boxes` (NaN/Inf and inverted boxes are errors too).
        grey_masks: a mask path is loaded by :class:`~monai_mcx.transforms.io.LoadCXR` (``as_mask``): ``"error"``
            refuses grey-level masks, ``"threshold"`` binarises them at half their maximum with a warning.
        empty_mask_if_no_boxes: an image whose mask is unknown (``None``) but whose box list is known and empty
            gets a known, all-zero lesion mask (``has_mask`` = 1). Only for box sets that box every lesion
            (RSNA: no box means no opacity), so that their negatives can teach the mask head to paint nothing;
            an image with boxes keeps an unknown mask. Off by default: unknown is not empty.
        lung_mask_key: the item key of the lung-field mask (``"lung_mask"``) to load like the lesion mask, giving
            ``lung_mask`` ``(1, W, H)`` and ``has_lung_mask`` (an unknown lung mask: zeros and flag 0), for the
            ``lungs`` task. None (default): no lung keys are produced and an item's ``lung_mask`` entry is dropped.
    """

    def __init__(
        self,
        num_classes: int,
        image_key: str = BatchKeys.IMAGE.value,
        label_key: str = BatchKeys.LABEL.value,
        mask_key: str = BatchKeys.MASK.value,
        box_key: str = BatchKeys.BOXES.value,
        box_tolerance: float = 2.0,
        grey_masks: str = "error",
        empty_mask_if_no_boxes: bool = False,
        lung_mask_key: str | None = None,
    ) -> None:
        super().__init__(keys=[image_key], allow_missing_keys=False)
        self.num_classes = int(num_classes)
        self.image_key, self.label_key, self.mask_key, self.box_key = image_key, label_key, mask_key, box_key
        self.box_tolerance = float(box_tolerance)
        self.empty_mask_if_no_boxes = bool(empty_mask_if_no_boxes)
        self.lung_mask_key = lung_mask_key
        # masks load like images (EXIF orientation, grey-level check): monai_mcx.transforms.io.LoadCXR
        self._load_mask = LoadCXR(as_mask=True, grey_masks=grey_masks)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        image = d[self.image_key]
        spatial = tuple(int(s) for s in image.shape[1:])
        name = _name(d, self.image_key)

        label = d.get(self.label_key)
        if label is None:
            d[self.label_key] = torch.zeros(self.num_classes, dtype=torch.float32)
            d[BatchKeys.HAS_LABEL.value] = torch.tensor(0.0)
        else:
            t = torch.as_tensor(np.asarray(label, dtype=np.float32)).reshape(-1)
            if t.numel() != self.num_classes:
                raise AnnotationError(f"{name}: label has {t.numel()} values, expected {self.num_classes}")
            d[self.label_key] = t
            d[BatchKeys.HAS_LABEL.value] = torch.tensor(1.0)

        mask = d.get(self.mask_key)
        boxes = d.get(self.box_key)
        if mask is None and self.empty_mask_if_no_boxes and boxes is not None and len(boxes) == 0:
            mask = np.zeros(spatial, dtype=np.uint8)  # no box on a fully boxed set: no lesion pixel
        is_path = isinstance(mask, (str, bytes)) or hasattr(mask, "__fspath__")
        d[BatchKeys.MASK_PATH.value] = os.fsdecode(mask) if is_path else ""
        d[self.mask_key], d[BatchKeys.HAS_MASK.value] = self._binary_mask(mask, image, spatial, name, "mask")
        if self.lung_mask_key is not None:
            d[self.lung_mask_key], d[BatchKeys.HAS_LUNG_MASK.value] = self._binary_mask(
                d.get(self.lung_mask_key), image, spatial, name, "lung mask"
            )
        else:
            d.pop(DatalistKeys.LUNG_MASK.value, None)

        if boxes is None:
            d[self.box_key] = torch.zeros((0, 4), dtype=torch.float32)
            d[BatchKeys.HAS_BOXES.value] = torch.tensor(0.0)
        else:
            try:  # the one box validation (finite, x2 > x1, y2 > y1, inside the image up to the tolerance)
                b = torch.as_tensor(check_boxes(boxes, spatial[0], spatial[1], tol=self.box_tolerance))
            except DataError as e:
                raise AnnotationError(f"{name}: {e.problem}") from None
            if b.numel():
                hi = torch.tensor([spatial[0], spatial[1], spatial[0], spatial[1]], dtype=torch.float32)
                b = torch.minimum(torch.clamp(b, min=0.0), hi)
            d[self.box_key] = b
            d[BatchKeys.HAS_BOXES.value] = torch.tensor(1.0)

        if d[BatchKeys.HAS_LABEL] > 0:
            positive = bool(d[self.label_key].max() > 0.5)
        elif d[BatchKeys.HAS_MASK] > 0:
            positive = bool(d[self.mask_key].any())
        elif d[BatchKeys.HAS_BOXES] > 0:
            positive = d[self.box_key].shape[0] > 0
        else:
            positive = False
        d[BatchKeys.POSITIVE.value] = torch.tensor(float(positive))
        return d

    def _binary_mask(self, mask, image, spatial: tuple, name: str, what: str) -> tuple:
        """``(mask (1, W, H) float 0/1, known flag)`` from a path, an array or None (unknown: zeros, flag 0)."""
        if mask is None:
            zeros = MetaTensor(torch.zeros((1, *spatial), dtype=torch.float32), meta=dict(getattr(image, "meta", {})))
            return zeros, torch.tensor(0.0)
        if isinstance(mask, (str, bytes)) or hasattr(mask, "__fspath__"):
            try:
                m = self._load_mask(mask)
            except DataError as e:  # names the mask file; say which image it belongs to
                raise AnnotationError(f"{mask}: cannot use it as the {what} of {name}: {e.problem}") from e
        else:
            m = mask if isinstance(mask, torch.Tensor) else torch.as_tensor(np.asarray(mask))
        if m.ndim == len(spatial):
            m = m[None]
        if m.shape[0] > 1:  # RGB(A) mask: any channel set
            m = m.amax(dim=0, keepdim=True)
        if tuple(m.shape[1:]) != spatial:
            raise AnnotationError(
                f"{mask}: {what} size {tuple(m.shape[1:])} differs from its image {name} size {spatial} (W, H)"
            )
        m = (m > 0).float()
        if not isinstance(m, MetaTensor):
            m = MetaTensor(m, meta=dict(getattr(image, "meta", {})))
        return m, torch.tensor(1.0)


def task_positives(targets: Mapping[str, object]) -> dict[str, torch.Tensor]:
    """Per-sample ground-truth positivity of each dense task, for teacher forcing.

    A task's positive is its own annotation being non-empty (``segmentation``: any mask pixel, ``localization``:
    at least one box), taken from ``targets`` as they reach the loss, i.e. after every geometric transform.
    Only where that task's annotation is unknown (``has_mask`` / ``has_boxes`` = 0) does the class label decide
    (any class > 0.5 where ``has_label`` = 1, else 0); the losses never train a head on such samples, so
    there the flag is informative only. With several classes, masks and boxes are one "lesion" class shared
    by every class of ``class_names``: a known annotation decides alone, whichever class is positive; the label
    fallback is "any class positive".

    Args:
        targets: a batch (:data:`monai_mcx.engines.utils.TARGET_KEYS`): ``mask`` ``(B, 1, W, H)``, ``has_mask``
            ``(B,)``, ``boxes`` list of ``(N_i, 4)``, ``has_boxes`` ``(B,)``, ``label`` ``(B, K)``,
            ``has_label`` ``(B,)``; missing keys count as unknown.

    Returns:
        ``{"segmentation": (B,), "localization": (B,)}`` float 0/1 on the device of the flags.
    """
    flags = [
        targets[k]
        for k in (BatchKeys.HAS_LABEL.value, BatchKeys.HAS_MASK.value, BatchKeys.HAS_BOXES.value)
        if k in targets
    ]
    if not flags:
        raise ValueError("task_positives needs at least one of has_label, has_mask, has_boxes in the targets")
    ref = torch.as_tensor(flags[0]).reshape(-1)
    b, device = ref.shape[0], ref.device

    def known(key: str) -> torch.Tensor:
        if key not in targets:
            return torch.zeros(b, dtype=torch.bool, device=device)
        return torch.as_tensor(targets[key]).reshape(-1).to(device) > 0.5

    label_pos = known(BatchKeys.HAS_LABEL.value)
    if BatchKeys.LABEL in targets:
        label_pos = label_pos & (torch.as_tensor(targets[BatchKeys.LABEL]).reshape(b, -1).to(device).amax(dim=1) > 0.5)
    else:
        label_pos = torch.zeros_like(label_pos)
    out = {}
    if BatchKeys.MASK in targets:
        mask_nonempty = torch.as_tensor(targets[BatchKeys.MASK]).reshape(b, -1).to(device).amax(dim=1) > 0
    else:
        mask_nonempty = torch.zeros(b, dtype=torch.bool, device=device)
    out[Task.SEGMENTATION.value] = torch.where(known(BatchKeys.HAS_MASK.value), mask_nonempty, label_pos)
    boxes = targets.get(BatchKeys.BOXES)
    box_nonempty = (
        torch.tensor(
            [int(torch.as_tensor(x).reshape(-1, 4).shape[0]) > 0 for x in boxes], dtype=torch.bool, device=device
        )
        if boxes is not None
        else torch.zeros(b, dtype=torch.bool, device=device)
    )
    out[Task.LOCALIZATION.value] = torch.where(known(BatchKeys.HAS_BOXES.value), box_nonempty, label_pos)
    return {k: v.float() for k, v in out.items()}


class ResizeWithBoxesd(MapTransform):
    """Resize images/masks to ``spatial_size`` and scale the boxes with them.

    MONAI has box-aware zoom/flip/crop transforms (``ZoomBoxd``, ``RandFlipBoxd`` ...) but no box-aware
    resize to a fixed size; this wraps MONAI's ``Resize`` and ``resize_boxes``.

    Args:
        keys: image-like keys, ``(C, W, H)``.
        spatial_size: target ``(W, H)``.
        box_keys: ``(N, 4)`` StandardMode boxes attached to ``box_ref_image_key``.
        mode: interpolation per key (``area`` for images, ``nearest`` for masks).
    """

    def __init__(
        self,
        keys: KeysCollection,
        spatial_size: Sequence[int] | int,
        box_keys: KeysCollection = (BatchKeys.BOXES.value,),
        box_ref_image_key: str = BatchKeys.IMAGE.value,
        mode: Sequence[str] | str = "area",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.spatial_size = ensure_tuple_rep(spatial_size, 2)
        self.box_keys = ensure_tuple(box_keys)
        self.box_ref_image_key = box_ref_image_key
        self.mode = ensure_tuple_rep(mode, len(self.keys))
        self.resizers = {m: Resize(spatial_size=self.spatial_size, mode=m) for m in set(self.mode)}

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        src = tuple(int(s) for s in d[self.box_ref_image_key].shape[1:])
        for key, mode in self.key_iterator(d, self.mode):
            d[key] = self.resizers[mode](d[key])
        for key in self.box_keys:
            if key in d and torch.as_tensor(d[key]).numel():
                d[key] = resize_boxes(torch.as_tensor(d[key], dtype=torch.float32), src, self.spatial_size)
        return d
