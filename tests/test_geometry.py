"""Box-aware geometry: a box drawn as a mask and transformed with the image agrees with the transformed box."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from monai.apps.detection.transforms.dictionary import RandFlipBoxd, RandRotateBox90d
from monai.data import MetaTensor
from monai.transforms import Compose

from monai_mcx.data import collate_cxr
from monai_mcx.transforms.geometry import (
    AddBoxLabelsd,
    ClipBoxesToImaged,
    RandCropWithBoxesd,
    RandZoomWithBoxesd,
    RemoveBoxLabelsd,
    cxr_box_augmentations,
)
from monai_mcx.transforms.labels import PrepareAnnotationsd, ResizeWithBoxesd


def _raster(box, w: int, h: int) -> torch.Tensor:
    """Pixels whose centre lies inside ``box`` (x = dim 0), ``(W, H)`` bool."""
    xs, ys = torch.arange(w) + 0.5, torch.arange(h) + 0.5
    return ((xs > box[0]) & (xs < box[2]))[:, None] & ((ys > box[1]) & (ys < box[3]))[None, :]


def _iou(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a & b).sum()) / max(1.0, float((a | b).sum()))


def _item(w: int, h: int, box) -> dict:
    m = torch.zeros(1, w, h)
    m[0, box[0] : box[2], box[1] : box[3]] = 1.0
    d = {"image": MetaTensor(m.clone()), "mask": m.clone(), "label": None, "boxes": [list(map(float, box))]}
    return PrepareAnnotationsd(num_classes=1)(d)


@st.composite
def _scene(draw, min_frac=0.25):
    w, h = draw(st.integers(48, 160)), draw(st.integers(48, 160))
    bw, bh = draw(st.integers(int(w * min_frac), int(w * 0.7))), draw(st.integers(int(h * min_frac), int(h * 0.7)))
    x1, y1 = draw(st.integers(0, w - bw)), draw(st.integers(0, h - bh))
    return w, h, (x1, y1, x1 + bw, y1 + bh)


def _check(out: dict, thresh: float, edge_px: float | None = None) -> None:
    """The mask still fills the box: IoU > ``thresh``, or, with ``edge_px``, > the IoU of the box with itself
    shrunk by ``edge_px`` on every edge (the rounding that resamplings of the mask may add, which matters for
    small boxes)."""
    mask = out["mask"][0] > 0.5
    assert out["image"].shape[1:] == out["mask"].shape[1:]
    assert set(np.unique(out["mask"].numpy())) <= {0.0, 1.0}
    if out["boxes"].shape[0] == 0:  # the box left the image: so did (almost all of) its mask
        assert float(mask.sum()) <= 0.05 * mask.numel()
        return
    box = out["boxes"][0].tolist()
    if edge_px is not None:
        bw, bh = box[2] - box[0], box[3] - box[1]
        thresh = max(0.0, (bw - 2 * edge_px) * (bh - 2 * edge_px)) / (bw * bh)
    ref = _raster(box, *mask.shape)
    assert _iou(ref, mask) > thresh, (box, tuple(mask.shape), thresh)


OPS = ("resize", "crop", "zoom", "flip", "rot90")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    scene=_scene(),
    op=st.sampled_from(OPS),
    seed=st.integers(0, 2**30),
    size=st.tuples(st.integers(40, 128), st.integers(40, 128)),
)
def test_single_geometry_moves_box_with_mask(scene, op, seed, size):
    w, h, box = scene
    d = _item(w, h, box)
    t = {
        "resize": lambda: ResizeWithBoxesd(["image", "mask"], list(size), mode=["area", "nearest-exact"]),
        "crop": lambda: RandCropWithBoxesd(["image", "mask"], prob=1.0, min_scale=0.6, max_scale=1.0),
        "zoom": lambda: RandZoomWithBoxesd(
            ["image", "mask"], prob=1.0, min_zoom=0.7, max_zoom=1.4, mode=["bilinear", "nearest-exact"]
        ),
        "flip": lambda: RandFlipBoxd(["image", "mask"], "boxes", "image", prob=1.0, spatial_axis=0),
        "rot90": lambda: RandRotateBox90d(["image", "mask"], "boxes", "image", prob=1.0, max_k=3),
    }[op]()
    if hasattr(t, "set_random_state"):
        t.set_random_state(seed)
    out = Compose([AddBoxLabelsd(), t, ClipBoxesToImaged(min_size=2.0), RemoveBoxLabelsd()])(d)
    _check(out, 0.95)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    scene=_scene(min_frac=0.35),
    seed=st.integers(0, 2**30),
    flip=st.booleans(),
    size=st.tuples(st.integers(64, 128), st.integers(64, 128)),
)
@example(scene=(62, 55, (4, 0, 25, 19)), seed=32461, flip=False, size=(69, 92))  # failed CI with IoU > 0.9
def test_composed_augmentations_keep_mask_and_boxes_in_sync(scene, seed, flip, size):
    """Resize + crop/resize + zoom + flip through cxr_box_augmentations: three resamplings of the mask each add
    up to half a pixel of rounding per edge, so the mask fills the box shrunk by 1.5 px per edge (the boxes
    themselves are exact). A fixed IoU > 0.9 failed for a 25 x 31 px box at the image border (IoU 0.894)."""
    w, h, box = scene
    d = ResizeWithBoxesd(["image", "mask"], list(size), mode=["area", "nearest-exact"])(_item(w, h, box))
    aug = Compose(
        cxr_box_augmentations(
            list(size),
            crop_prob=1.0,
            crop_scale=(0.75, 1.0),
            zoom_prob=1.0,
            zoom_range=(0.85, 1.2),
            flip_prob=float(flip),
        )
    )
    aug.set_random_state(seed)
    out = aug(d)
    assert tuple(out["image"].shape[1:]) == tuple(size)
    _check(out, 0.0, edge_px=1.5)


def test_monai_randzoomboxd_offset_motivates_own_zoom():
    """Documents why RandZoomWithBoxesd exists: MONAI's RandZoomBoxd's image is sometimes a pixel short."""
    from monai.apps.detection.transforms.dictionary import RandZoomBoxd

    short = 0
    for seed in range(40):
        w, h = 97 + seed, 131 - seed
        t = RandZoomBoxd("image", "boxes", "image", prob=1.0, min_zoom=0.8, max_zoom=1.25, keep_size=False)
        t.set_random_state(seed)
        o = t({"image": MetaTensor(torch.zeros(1, w, h)), "boxes": torch.tensor([[10.0, 10, 40, 40]])})
        z = t.rand_zoom._zoom
        short += list(o["image"].shape[1:]) != [round(z[0] * w), round(z[1] * h)]
        ours = RandZoomWithBoxesd("image", prob=1.0, min_zoom=0.8, max_zoom=1.25)
        ours.set_random_state(seed)
        assert tuple(
            ours({"image": MetaTensor(torch.zeros(1, w, h)), "boxes": torch.zeros(0, 4)})["image"].shape[1:]
        ) == (w, h)
    if short == 0:
        pytest.skip("this MONAI version's RandZoomBoxd sizes the image exactly (the workaround may go)")


def test_unknown_boxes_stay_unknown_and_known_boxes_may_become_empty():
    # unknown boxes: (0, 4), has_boxes 0, positive from the mask
    d = PrepareAnnotationsd(num_classes=1)(
        {"image": MetaTensor(torch.zeros(1, 60, 40)), "label": None, "mask": None, "boxes": None}
    )
    aug = Compose(cxr_box_augmentations([60, 40], crop_prob=1.0, zoom_prob=1.0, flip_prob=1.0))
    out = aug(d)
    assert out["boxes"].shape == (0, 4) and float(out["has_boxes"]) == 0.0 and float(out["positive"]) == 0.0
    assert "box_labels" not in out and not any(k.endswith("_transforms") for k in out)
    # a known box cropped away: known-empty (has_boxes 1), positive recomputed because the label is unknown
    d = PrepareAnnotationsd(num_classes=1)(
        {"image": MetaTensor(torch.zeros(1, 100, 80)), "label": None, "mask": None, "boxes": [[0.0, 0.0, 6.0, 6.0]]}
    )
    assert float(d["positive"]) == 1.0
    t = Compose(
        [
            AddBoxLabelsd(),
            RandCropWithBoxesd(["image", "mask"], prob=1.0, min_scale=0.5, max_scale=0.5),
            ClipBoxesToImaged(min_size=2.0),
            RemoveBoxLabelsd(),
        ]
    )
    for seed in range(50):
        t.set_random_state(seed)
        out = t(d)
        if out["boxes"].shape[0] == 0:
            break
    assert out["boxes"].shape == (0, 4) and float(out["has_boxes"]) == 1.0 and float(out["positive"]) == 0.0
    # a known class label is never changed by geometry
    d["label"], d["has_label"], d["positive"] = torch.ones(1), torch.tensor(1.0), torch.tensor(1.0)
    assert float(t(d)["positive"]) == 1.0
    # the items collate
    batch = collate_cxr([out, out])
    assert batch["image"].shape == (2, 1, 50, 40) and len(batch["boxes"]) == 2


def test_flips_and_rot90_are_opt_in_and_rot90_needs_square():
    names = [type(t).__name__ for t in cxr_box_augmentations([64, 64])]
    assert "RandFlipBoxd" not in names and "RandRotateBox90d" not in names
    names = [type(t).__name__ for t in cxr_box_augmentations([64, 64], flip_prob=0.5, rot90_prob=0.5)]
    assert "RandFlipBoxd" in names and "RandRotateBox90d" in names
    with pytest.raises(ValueError, match="non-square"):
        cxr_box_augmentations([64, 48], rot90_prob=0.5)
    with pytest.raises(ValueError, match="spatial_size"):
        cxr_box_augmentations(None, crop_prob=0.5)
