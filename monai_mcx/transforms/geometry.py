"""Box-aware geometric augmentation for chest X-rays: masks and boxes move with the image.

The heavy lifting is MONAI's detection box transforms (``monai.apps.detection.transforms.dictionary``:
``RandFlipBoxd``, ``RandRotateBox90d``; ``resize_boxes``) and ``monai.data.box_utils``
(``clip_boxes_to_image``, ``spatial_crop_boxes``). What this module adds is the glue our items need:

* MONAI's box transforms expect a per-box label array next to the boxes (``ClipBoxToImaged`` and
  ``RandCropBoxByPosNegLabeld`` require one); our items carry ``boxes`` ``(N, 4)`` only.
  :class:`AddBoxLabelsd` adds ``box_labels`` ``(N,)`` and :class:`RemoveBoxLabelsd` removes it again
  (and the ``*_transforms`` trace entries MONAI leaves in the dict for plain-tensor box keys).
* :class:`ClipBoxesToImaged`: clip to the image and drop boxes that (almost) left it, keeping the
  per-box labels in sync. Unlike ``ClipBoxToImaged`` it needs no label key and never touches the
  availability flag: an unknown box list (``has_boxes = 0``, empty) stays unknown, a known one that lost
  all its boxes becomes known-empty.
* :class:`RandCropWithBoxesd`: a random crop of a random fraction of each side that crops image and
  mask and moves/clips the boxes. MONAI's only box-aware crop, ``RandCropBoxByPosNegLabeld``, samples
  crops around foreground boxes and so needs boxes to be known, which most of our items are not.
* :class:`RandZoomWithBoxesd`: random zoom keeping the image size. MONAI's ``RandZoomBoxd`` rounds the
  zoomed size of the boxes but lets ``torch.nn.functional.interpolate`` floor the image's, so about one
  zoom in eight leaves the image one pixel short and the boxes up to ~1.5 px off (measured in
  ``tests/test_geometry.py``); this one resizes to the rounded size with ``Resize`` and pads/crops with
  explicit offsets that the boxes share.
* :class:`RandRotateWithBoxesd`: a small random rotation (MONAI ``Rotate``, size kept); each box becomes
  the enclosing box of its rotated rectangle (MONAI has box-aware rotations by multiples of 90 degrees only).
* :func:`cxr_box_augmentations`: a ready list for a bundle's ``train#augmentation``.

Conventions (see ``docs/CONTRACTS.md``): images and masks are ``(C, W, H)`` (spatial dim 0 = x),
boxes ``[x1, y1, x2, y2]`` in MONAI ``StandardMode`` with x indexing spatial dim 0. These transforms
run after :class:`~monai_mcx.transforms.PrepareAnnotationsd` (so ``mask`` is always a ``(1, W, H)``
tensor -- all zeros when unknown -- and ``boxes`` an ``(N, 4)`` tensor).

Chest radiographs are not left-right symmetric (heart, aortic arch, gastric bubble): a horizontal
flip produces anatomy that does not occur, so flips and 90-degree rotations are **off** unless asked for.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.apps.detection.transforms.box_ops import resize_boxes
from monai.apps.detection.transforms.dictionary import RandFlipBoxd, RandRotateBox90d
from monai.config import KeysCollection
from monai.data.box_utils import clip_boxes_to_image, spatial_crop_boxes
from monai.transforms import BorderPad, MapTransform, RandomizableTransform, Resize, Rotate, SpatialCrop
from monai.utils import ensure_tuple, ensure_tuple_rep

from monai_mcx.keys import BatchKeys
from monai_mcx.transforms.labels import ResizeWithBoxesd

__all__ = [
    "AddBoxLabelsd",
    "RemoveBoxLabelsd",
    "ClipBoxesToImaged",
    "RandCropWithBoxesd",
    "RandZoomWithBoxesd",
    "RandRotateWithBoxesd",
    "cxr_box_augmentations",
]


def _boxes(x) -> torch.Tensor:
    """Any box container -> plain float32 ``(N, 4)`` tensor (``(0, 4)`` when empty)."""
    t = torch.as_tensor(np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x, dtype=np.float32))
    return t.reshape(-1, 4)


class AddBoxLabelsd(MapTransform):
    """Add a per-box label array ``(N,)`` (int64, all ``value``) for MONAI's box transforms.

    Args:
        keys: box keys, ``(N, 4)``.
        label_keys: one label key per box key (default ``"box_labels"``).
        value: the label (our localization task has one lesion class).
    """

    def __init__(
        self,
        keys: KeysCollection = BatchKeys.BOXES.value,
        label_keys: KeysCollection = BatchKeys.BOX_LABELS.value,
        value: int = 1,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.label_keys = ensure_tuple_rep(label_keys, len(self.keys))
        self.value = int(value)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key, label_key in self.key_iterator(d, self.label_keys):
            d[key] = _boxes(d[key])
            d[label_key] = torch.full((d[key].shape[0],), self.value, dtype=torch.long)
        return d


class RemoveBoxLabelsd(MapTransform):
    """Undo :class:`AddBoxLabelsd`: drop the label key and MONAI's ``<key>_transforms`` trace entries,
    leave the boxes as a plain float32 ``(N, 4)`` tensor, and (``update_positive``) recompute ``positive``.

    ``positive`` is recomputed only where the class label is unknown (``has_label = 0``): then it follows a
    known mask (non-empty after the geometry), else known boxes (any left), as in ``PrepareAnnotationsd``.
    A known class label is the ground truth and is never changed by a crop.

    Args:
        keys: box keys.
        label_keys: the label keys to remove (one per box key).
        mask_key: the mask key used for ``positive``.
        update_positive: recompute ``positive`` (when the item has the ``has_*`` flags).
    """

    def __init__(
        self,
        keys: KeysCollection = BatchKeys.BOXES.value,
        label_keys: KeysCollection = BatchKeys.BOX_LABELS.value,
        mask_key: str = BatchKeys.MASK.value,
        update_positive: bool = True,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.label_keys = ensure_tuple_rep(label_keys, len(self.keys))
        self.mask_key = mask_key
        self.update_positive = update_positive

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key, label_key in self.key_iterator(d, self.label_keys):
            d[key] = _boxes(d[key])
            for k in (label_key, f"{key}_transforms", f"{label_key}_transforms"):
                d.pop(k, None)
        first = self.keys[0]
        if (
            self.update_positive
            and BatchKeys.POSITIVE in d
            and first in d
            and float(d.get(BatchKeys.HAS_LABEL, 1)) == 0
        ):
            if float(d.get(BatchKeys.HAS_MASK, 0)) > 0 and self.mask_key in d:
                pos = bool(torch.as_tensor(d[self.mask_key]).any())
            elif float(d.get(BatchKeys.HAS_BOXES, 0)) > 0:
                pos = d[first].shape[0] > 0
            else:
                pos = False
            d[BatchKeys.POSITIVE.value] = torch.tensor(float(pos))
        return d


class ClipBoxesToImaged(MapTransform):
    """Clip boxes to their image and drop those that left it; keep per-box labels in sync.

    A box is kept when, after clipping, both sides are at least ``min_size`` pixels. The availability flag
    (``has_boxes``) is not touched: unknown stays unknown, a known list may become known-empty.

    Args:
        keys: box keys (StandardMode ``(N, 4)``).
        box_ref_image_keys: image each box key is attached to (its ``(C, W, H)`` shape gives the bounds).
        label_keys: per-box arrays (``(N,)``) filtered with the boxes; a missing one is ignored.
        min_size: minimum side in pixels of a kept box after clipping.
    """

    def __init__(
        self,
        keys: KeysCollection = BatchKeys.BOXES.value,
        box_ref_image_keys: KeysCollection = BatchKeys.IMAGE.value,
        label_keys: KeysCollection = (BatchKeys.BOX_LABELS.value,),
        min_size: float = 1.0,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.box_ref_image_keys = ensure_tuple_rep(box_ref_image_keys, len(self.keys))
        self.label_keys = ensure_tuple(label_keys)
        self.min_size = float(min_size)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key, ref in self.key_iterator(d, self.box_ref_image_keys):
            boxes = _boxes(d[key])
            spatial = [int(s) for s in d[ref].shape[1:]]
            if boxes.shape[0]:
                clipped, keep = clip_boxes_to_image(boxes, spatial, remove_empty=False)
                keep = torch.as_tensor(keep, dtype=torch.bool)
                keep &= ((clipped[:, 2] - clipped[:, 0]) >= self.min_size) & (
                    (clipped[:, 3] - clipped[:, 1]) >= self.min_size
                )
                boxes = clipped[keep]
            else:
                keep = torch.zeros(0, dtype=torch.bool)
            d[key] = boxes.reshape(-1, 4).float()
            for lk in self.label_keys:
                if lk in d:
                    d[lk] = torch.as_tensor(d[lk])[keep]
        return d


class RandCropWithBoxesd(RandomizableTransform, MapTransform):
    """Randomly crop image-like keys to a random fraction of each side; boxes move with the crop.

    The crop size is ``round(s_x * W) x round(s_y * H)`` with ``s_x, s_y`` drawn independently from
    ``[min_scale, max_scale]`` (so the aspect ratio changes a little), at a uniformly random position.
    The output size varies: follow with :class:`~monai_mcx.transforms.ResizeWithBoxesd` to batch.
    Boxes are shifted and clipped with ``monai.data.box_utils.spatial_crop_boxes``; boxes whose
    clipped sides fall below ``min_size`` are dropped with their labels (``has_boxes`` is kept).

    Args:
        keys: image-like keys ``(C, W, H)`` cropped alike (image, mask).
        box_keys: StandardMode box keys.
        box_ref_image_key: the image the boxes belong to.
        label_keys: per-box arrays filtered with the boxes.
        prob: probability of cropping.
        min_scale, max_scale: the side fraction range, in ``(0, 1]``.
        min_size: minimum side (pixels) of a kept box.
    """

    def __init__(
        self,
        keys: KeysCollection,
        box_keys: KeysCollection = BatchKeys.BOXES.value,
        box_ref_image_key: str = BatchKeys.IMAGE.value,
        label_keys: KeysCollection = (BatchKeys.BOX_LABELS.value,),
        prob: float = 0.5,
        min_scale: float = 0.8,
        max_scale: float = 1.0,
        min_size: float = 1.0,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        if not 0 < min_scale <= max_scale <= 1:
            raise ValueError(f"need 0 < min_scale <= max_scale <= 1, got {min_scale}, {max_scale}")
        self.box_keys = ensure_tuple(box_keys)
        self.box_ref_image_key = box_ref_image_key
        self.label_keys = ensure_tuple(label_keys)
        self.min_scale, self.max_scale = float(min_scale), float(max_scale)
        self.min_size = float(min_size)
        self._start: list[int] = []
        self._end: list[int] = []

    def randomize(self, spatial: Sequence[int]) -> None:
        super().randomize(None)
        self._start, self._end = [], []
        for s in spatial:
            size = max(1, min(int(s), int(round(self.R.uniform(self.min_scale, self.max_scale) * s))))
            start = int(self.R.randint(0, int(s) - size + 1))
            self._start.append(start)
            self._end.append(start + size)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        spatial = [int(s) for s in d[self.box_ref_image_key].shape[1:]]
        self.randomize(spatial)
        if not self._do_transform:
            return d
        cropper = SpatialCrop(roi_start=self._start, roi_end=self._end)
        for key in self.key_iterator(d):
            d[key] = cropper(d[key])
        for key in self.box_keys:
            if key not in d:
                continue
            boxes = _boxes(d[key])
            keep = torch.zeros(0, dtype=torch.bool)
            if boxes.shape[0]:
                boxes, keep = spatial_crop_boxes(boxes, self._start, self._end, remove_empty=False)
                boxes = torch.as_tensor(boxes, dtype=torch.float32)
                keep = torch.as_tensor(keep, dtype=torch.bool)
                keep &= ((boxes[:, 2] - boxes[:, 0]) >= self.min_size) & ((boxes[:, 3] - boxes[:, 1]) >= self.min_size)
                boxes = boxes[keep]
            d[key] = boxes.reshape(-1, 4)
            for lk in self.label_keys:
                if lk in d:
                    d[lk] = torch.as_tensor(d[lk])[keep]
        return d


class RandZoomWithBoxesd(RandomizableTransform, MapTransform):
    """Randomly zoom image-like keys by ``z`` in ``[min_zoom, max_zoom]`` keeping their size; boxes follow.

    The image is resized to ``round(z * W) x round(z * H)`` (MONAI ``Resize``), then centre-cropped
    (``z > 1``) or zero-padded (``z < 1``, ``padding_mode``) back to ``W x H`` with offsets
    ``(|diff| // 2)``; the boxes are resized with ``resize_boxes`` and shifted by the same offsets. Boxes
    may leave the image: follow with :class:`ClipBoxesToImaged`.

    Args:
        keys: image-like keys ``(C, W, H)`` (image, mask).
        box_keys: StandardMode box keys attached to ``box_ref_image_key``.
        prob, min_zoom, max_zoom: probability and zoom range (one factor for both axes).
        mode: interpolation per key (``"bilinear"`` for images, ``"nearest-exact"`` for masks; plain
            ``"nearest"`` in torch samples half a pixel off-centre).
        padding_mode: ``BorderPad`` mode for zoom-out.
    """

    def __init__(
        self,
        keys: KeysCollection,
        box_keys: KeysCollection = BatchKeys.BOXES.value,
        box_ref_image_key: str = BatchKeys.IMAGE.value,
        prob: float = 0.5,
        min_zoom: float = 0.9,
        max_zoom: float = 1.1,
        mode: Sequence[str] | str = "bilinear",
        padding_mode: str = "constant",
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        if not 0 < min_zoom <= max_zoom:
            raise ValueError(f"need 0 < min_zoom <= max_zoom, got {min_zoom}, {max_zoom}")
        self.box_keys = ensure_tuple(box_keys)
        self.box_ref_image_key = box_ref_image_key
        self.min_zoom, self.max_zoom = float(min_zoom), float(max_zoom)
        self.mode = ensure_tuple_rep(mode, len(self.keys))
        self.padding_mode = padding_mode
        self._zoom = 1.0

    def randomize(self, data=None) -> None:
        super().randomize(None)
        self._zoom = float(self.R.uniform(self.min_zoom, self.max_zoom))

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        self.randomize()
        if not self._do_transform:
            return d
        src = [int(s) for s in d[self.box_ref_image_key].shape[1:]]
        dst = [max(1, int(round(self._zoom * s))) for s in src]
        if dst == src:
            return d
        crop_start = [max(0, (z - s) // 2) for s, z in zip(src, dst)]
        crop_end = [c + min(s, z) for c, s, z in zip(crop_start, src, dst)]
        pad = []
        for s, z in zip(src, dst):
            diff = max(0, s - z)
            pad += [diff // 2, diff - diff // 2]
        shift = torch.tensor([pad[0] - crop_start[0], pad[2] - crop_start[1]] * 2, dtype=torch.float32)
        cropper = SpatialCrop(roi_start=crop_start, roi_end=crop_end)
        padder = BorderPad(spatial_border=pad, mode=self.padding_mode)
        for key, mode in self.key_iterator(d, self.mode):
            d[key] = padder(cropper(Resize(spatial_size=dst, mode=mode)(d[key])))
        for key in self.box_keys:
            if key in d:
                boxes = _boxes(d[key])
                if boxes.shape[0]:
                    boxes = torch.as_tensor(resize_boxes(boxes, src, dst), dtype=torch.float32) + shift
                d[key] = boxes
        return d


class RandRotateWithBoxesd(RandomizableTransform, MapTransform):
    """Rotate image-like keys by a random angle in ``[-max_angle, max_angle]`` degrees (size kept); boxes follow.

    Images and masks are rotated with MONAI ``Rotate`` (``keep_size=True``, zero padding). Each box is drawn
    as a filled rectangle, rotated by the same ``Rotate`` (nearest neighbour) and replaced by the enclosing
    box of the result, so the boxes share the image's rotation convention exactly; the enclosing box of a
    rotated rectangle is a little larger than the rectangle (at 10 degrees, a square grows by ~16 % per side).
    A box rotated out of the image is dropped with its per-box labels; ``has_boxes`` is kept.

    Args:
        keys: image-like keys ``(C, W, H)`` (image, mask).
        box_keys: StandardMode box keys attached to ``box_ref_image_key``.
        label_keys: per-box arrays filtered with the boxes.
        prob: probability of rotating.
        max_angle: the largest angle in degrees (chest X-rays: a few degrees of patient tilt).
        mode: interpolation per key (``"bilinear"`` for images, ``"nearest"`` for masks).
    """

    def __init__(
        self,
        keys: KeysCollection,
        box_keys: KeysCollection = BatchKeys.BOXES.value,
        box_ref_image_key: str = BatchKeys.IMAGE.value,
        label_keys: KeysCollection = (BatchKeys.BOX_LABELS.value,),
        prob: float = 0.5,
        max_angle: float = 7.0,
        mode: Sequence[str] | str = "bilinear",
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        if max_angle < 0:
            raise ValueError(f"max_angle must be >= 0, got {max_angle}")
        self.box_keys = ensure_tuple(box_keys)
        self.box_ref_image_key = box_ref_image_key
        self.label_keys = ensure_tuple(label_keys)
        self.max_angle = float(max_angle)
        self.mode = ensure_tuple_rep(mode, len(self.keys))
        self._angle = 0.0

    def randomize(self, data=None) -> None:
        super().randomize(None)
        self._angle = float(self.R.uniform(-self.max_angle, self.max_angle))

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        self.randomize()
        if not self._do_transform or self._angle == 0.0:
            return d
        rad = float(np.deg2rad(self._angle))
        for key, mode in self.key_iterator(d, self.mode):
            d[key] = Rotate(angle=rad, keep_size=True, mode=mode, padding_mode="zeros")(d[key])
        spatial = [int(s) for s in d[self.box_ref_image_key].shape[1:]]
        for key in self.box_keys:
            if key not in d:
                continue
            boxes = _boxes(d[key])
            keep = torch.zeros(0, dtype=torch.bool)
            if boxes.shape[0]:
                canvas = torch.zeros((boxes.shape[0], *spatial), dtype=torch.float32)
                for i, b in enumerate(boxes.tolist()):
                    x1, y1 = max(0, int(np.floor(b[0]))), max(0, int(np.floor(b[1])))
                    x2, y2 = min(spatial[0], int(np.ceil(b[2]))), min(spatial[1], int(np.ceil(b[3])))
                    canvas[i, x1:x2, y1:y2] = 1.0
                rotated = torch.as_tensor(
                    Rotate(angle=rad, keep_size=True, mode="nearest", padding_mode="zeros")(canvas)
                )
                out, keep_l = [], []
                for r in rotated:
                    xs = torch.nonzero(r.any(dim=1)).flatten()
                    ys = torch.nonzero(r.any(dim=0)).flatten()
                    ok = xs.numel() > 0 and ys.numel() > 0
                    keep_l.append(ok)
                    if ok:
                        out.append([float(xs[0]), float(ys[0]), float(xs[-1]) + 1.0, float(ys[-1]) + 1.0])
                keep = torch.tensor(keep_l, dtype=torch.bool)
                boxes = torch.tensor(out, dtype=torch.float32)
            d[key] = boxes.reshape(-1, 4)
            for lk in self.label_keys:
                if lk in d:
                    d[lk] = torch.as_tensor(d[lk])[keep]
        return d


def cxr_box_augmentations(
    spatial_size: Sequence[int] | int | None = None,
    image_key: str = BatchKeys.IMAGE.value,
    mask_key: str | None = BatchKeys.MASK.value,
    box_key: str = BatchKeys.BOXES.value,
    box_label_key: str = BatchKeys.BOX_LABELS.value,
    crop_prob: float = 0.5,
    crop_scale: Sequence[float] = (0.8, 1.0),
    zoom_prob: float = 0.5,
    zoom_range: Sequence[float] = (0.9, 1.1),
    flip_prob: float = 0.0,
    rot90_prob: float = 0.0,
    rot90_max_k: int = 3,
    min_box_size: float = 2.0,
    rotate_prob: float = 0.0,
    max_angle: float = 7.0,
    extra_mask_keys: Sequence[str] = (),
) -> list:
    """A list of box-aware geometric augmentations for chest X-rays (for ``train#augmentation``).

    Order: add box labels -> random crop + resize back to ``spatial_size`` -> random zoom (size kept,
    zero padding) -> small rotation (opt-in) -> left-right flip (opt-in) -> rotate by k*90 degrees (opt-in) -> clip/drop boxes
    that left the image -> remove the box labels and recompute ``positive`` where the class is unknown.
    Image keys use bilinear/area interpolation, the mask nearest neighbour (stays 0/1).

    Args:
        spatial_size: the training size ``(W, H)``; needed when ``crop_prob > 0`` (crops are resized back).
        image_key, mask_key, box_key: item keys (``mask_key=None`` when there is no mask).
        box_label_key: temporary per-box label key used by MONAI's box transforms.
        crop_prob, crop_scale: probability and side-fraction range of :class:`RandCropWithBoxesd`.
        zoom_prob, zoom_range: probability and range of :class:`RandZoomWithBoxesd`.
        flip_prob: probability of a left-right flip (spatial axis 0). Default 0: a flipped chest X-ray has
            its heart on the wrong side.
        rot90_prob, rot90_max_k: MONAI's ``RandRotateBox90d`` (default off; needs a square ``spatial_size``
            so that batches keep one shape).
        min_box_size: boxes whose clipped sides fall below this many pixels are dropped.
        rotate_prob, max_angle: probability and largest angle (degrees) of :class:`RandRotateWithBoxesd`.
        extra_mask_keys: other 0/1 masks moved with the image like ``mask_key`` (e.g. ``("lung_mask",)``).
    """
    masks = ([mask_key] if mask_key else []) + [k for k in extra_mask_keys if k]
    img_keys = [image_key] + masks
    modes_resize = ["area"] + ["nearest-exact"] * len(masks)
    out: list = [AddBoxLabelsd(box_key, box_label_key)]
    if crop_prob > 0:
        if spatial_size is None:
            raise ValueError("cxr_box_augmentations: crop_prob > 0 needs spatial_size (crops are resized back to it)")
        out += [
            RandCropWithBoxesd(
                img_keys,
                box_key,
                image_key,
                (box_label_key,),
                prob=crop_prob,
                min_scale=crop_scale[0],
                max_scale=crop_scale[1],
                min_size=min_box_size,
            ),
            ResizeWithBoxesd(img_keys, spatial_size, box_keys=box_key, box_ref_image_key=image_key, mode=modes_resize),
        ]
    if zoom_prob > 0:
        out.append(
            RandZoomWithBoxesd(
                img_keys,
                box_key,
                image_key,
                prob=zoom_prob,
                min_zoom=zoom_range[0],
                max_zoom=zoom_range[1],
                mode=["bilinear"] + ["nearest-exact"] * len(masks),
            )
        )
    if rotate_prob > 0:
        out.append(
            RandRotateWithBoxesd(
                img_keys,
                box_key,
                image_key,
                (box_label_key,),
                prob=rotate_prob,
                max_angle=max_angle,
                mode=["bilinear"] + ["nearest"] * len(masks),
            )
        )
    if flip_prob > 0:
        out.append(RandFlipBoxd(img_keys, box_key, image_key, prob=flip_prob, spatial_axis=0))
    if rot90_prob > 0:
        if spatial_size is not None:
            w, h = ensure_tuple_rep(spatial_size, 2)
            if w != h:
                raise ValueError(f"rot90 with a non-square spatial_size {spatial_size} would change the batch shape")
        out.append(
            RandRotateBox90d(img_keys, box_key, image_key, prob=rot90_prob, max_k=rot90_max_k, spatial_axes=(0, 1))
        )
    out += [
        ClipBoxesToImaged(box_key, image_key, (box_label_key,), min_size=min_box_size),
        RemoveBoxLabelsd(box_key, box_label_key, mask_key=mask_key or BatchKeys.MASK.value),
    ]
    return out
