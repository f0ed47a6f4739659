"""Tests of anchors, box decoding and the localization loss."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from monai.apps.detection.utils.box_coder import BoxCoder
from monai.apps.detection.utils.box_selector import BoxSelector
from monai.data.box_utils import box_iou

from monai_mcx.losses import LocalizationLoss
from monai_mcx.networks import (
    BoxDecoder,
    LocalizationHead,
    MultiCheXNet,
    decode_boxes,
    fit_anchor_shapes,
    flatten_head_maps,
    make_anchor_generator,
)

SHAPES = [[16, 16], [12, 24], [24, 12]]  # (w, h) at the stride-8 level
A = len(SHAPES)
IMAGE = (96, 64)  # W != H
GRIDS = [(12, 8), (6, 4), (3, 2)]  # strides 8, 16, 32


pytestmark = pytest.mark.usefixtures("single_thread")


def _unflatten(flat: torch.Tensor, grids, num_anchors: int) -> list[torch.Tensor]:
    """Inverse of flatten_head_maps: (B, N, K) -> list of (B, A*K, w, h)."""
    b, _, k = flat.shape
    maps, start = [], 0
    for w, h in grids:
        n = w * h * num_anchors
        part = flat[:, start : start + n].reshape(b, w, h, num_anchors, k).permute(0, 3, 4, 1, 2)
        maps.append(part.reshape(b, num_anchors * k, w, h))
        start += n
    return maps


def _setup(batch=1):
    gen = make_anchor_generator(SHAPES, (1, 2, 4))
    images = torch.zeros(batch, 1, *IMAGE)
    dummy = [torch.zeros(batch, A, w, h) for w, h in GRIDS]
    anchors = gen(images, dummy)
    return gen, images, anchors


def _index(level: int, i: int, j: int, a: int) -> int:
    offset = sum(w * h * A for w, h in GRIDS[:level])
    return offset + (i * GRIDS[level][1] + j) * A + a


def test_flatten_roundtrip_and_anchor_order():
    _, _, anchors = _setup()
    assert anchors[0].shape == (sum(w * h for w, h in GRIDS) * A, 4)
    flat = torch.randn(2, anchors[0].shape[0], 4)
    maps = _unflatten(flat, GRIDS, A)
    assert torch.equal(flatten_head_maps(maps, A), flat)
    # anchor at level 0, position (i, j), shape a: centre (i*8+4, j*8+4), size SHAPES[a]
    i, j, a = 10, 3, 1
    anchor = anchors[0][_index(0, i, j, a)]
    assert anchor.tolist() == [i * 8 + 4 - 6, j * 8 + 4 - 12, i * 8 + 4 + 6, j * 8 + 4 + 12]


def _maps_with(entries, num_total, batch=1):
    """entries: {flat index: (logit, delta(4,))} -> cls maps, reg maps (everything else: logit -10, delta 0)."""
    cls = torch.full((batch, num_total, 1), -10.0)
    reg = torch.zeros(batch, num_total, 4)
    for idx, (logit, delta) in entries.items():
        cls[:, idx, 0] = logit
        reg[:, idx] = torch.as_tensor(delta, dtype=torch.float32)
    return _unflatten(cls, GRIDS, A), _unflatten(reg, GRIDS, A)


def test_decode_single_anchor_hand_checked():
    _, _, anchors = _setup()
    coder = BoxCoder(weights=(1.0, 1.0, 1.0, 1.0))
    selector = BoxSelector(score_thresh=0.5, topk_candidates_per_level=100, nms_thresh=0.5, detections_per_img=10)
    idx = _index(1, 2, 1, 2)  # stride-16 level
    delta = torch.tensor([0.1, -0.2, 0.3, -0.1])
    cls, reg = _maps_with({idx: (4.0, delta)}, anchors[0].shape[0])
    det = decode_boxes(cls, reg, anchors, coder, selector, IMAGE)
    assert len(det) == 1 and det[0]["boxes"].shape == (1, 4)
    expected = coder.decode_single(delta[None], anchors[0][idx][None])
    assert torch.allclose(det[0]["boxes"], expected, atol=1e-4)
    assert det[0]["scores"].item() == pytest.approx(1 / (1 + math.exp(-4.0)), rel=1e-5)
    assert det[0]["labels"].dtype == torch.long and det[0]["labels"].tolist() == [0]


def test_decode_xy_convention():
    """Anchor at feature position (i, j) of a W != H image -> box x-centre from i (spatial dim 0)."""
    _, _, anchors = _setup()
    coder = BoxCoder(weights=(1.0, 1.0, 1.0, 1.0))
    selector = BoxSelector(score_thresh=0.5)
    i, j = 9, 2  # 9 only exists along dim 0 (12 x 8 grid)
    cls, reg = _maps_with({_index(0, i, j, 0): (5.0, [0, 0, 0, 0])}, anchors[0].shape[0])
    box = decode_boxes(cls, reg, anchors, coder, selector, IMAGE)[0]["boxes"][0]
    assert (box[0] + box[2]).item() / 2 == pytest.approx(i * 8 + 4)
    assert (box[1] + box[3]).item() / 2 == pytest.approx(j * 8 + 4)
    # the same through the network-map layout: logit placed at cls_map[0, a, i, j]
    cls_maps = [torch.full((1, A, w, h), -10.0) for w, h in GRIDS]
    cls_maps[0][0, 0, i, j] = 5.0
    reg_maps = [torch.zeros(1, A * 4, w, h) for w, h in GRIDS]
    box2 = BoxDecoder(make_anchor_generator(SHAPES), score_thresh=0.5)(
        {"box_cls_logits": cls_maps, "box_regression": reg_maps}, torch.zeros(1, 1, *IMAGE)
    )[0]["boxes"][0]
    assert torch.allclose(box, box2)


def test_decode_nms_removes_duplicate_and_clips():
    _, _, anchors = _setup()
    coder = BoxCoder(weights=(1.0, 1.0, 1.0, 1.0))
    selector = BoxSelector(score_thresh=0.5, nms_thresh=0.5)
    target = torch.tensor([[30.0, 20.0, 50.0, 44.0]])
    i1, i2 = _index(0, 4, 4, 0), _index(0, 5, 4, 1)  # two neighbouring anchors, both regressing to target
    d1 = coder.encode_single(target, anchors[0][i1][None])[0]
    d2 = coder.encode_single(target, anchors[0][i2][None])[0]
    far = _index(0, 11, 7, 0)  # bottom-right corner anchor pushed outside the image
    cls, reg = _maps_with({i1: (3.0, d1), i2: (2.0, d2), far: (1.0, [0.5, 0.5, 0.5, 0.5])}, anchors[0].shape[0])
    det = decode_boxes(cls, reg, anchors, coder, selector, IMAGE)[0]
    assert det["boxes"].shape == (2, 4)  # the duplicate is gone
    assert torch.allclose(det["boxes"][0], target[0], atol=1e-3)
    assert det["scores"][0] > det["scores"][1]
    b = det["boxes"]
    assert (b[:, 0] >= 0).all() and (b[:, 1] >= 0).all()
    assert (b[:, 2] <= IMAGE[0]).all() and (b[:, 3] <= IMAGE[1]).all()
    unclipped = coder.decode_single(torch.full((1, 4), 0.5), anchors[0][far][None])[0]
    assert unclipped[2] > IMAGE[0] and unclipped[3] > IMAGE[1]
    assert b[1, 2].item() == pytest.approx(IMAGE[0]) and b[1, 3].item() == pytest.approx(IMAGE[1])


def test_decode_empty_batch():
    gen = make_anchor_generator(SHAPES)
    maps = [torch.zeros(0, A, w, h) for w, h in GRIDS]
    out = BoxDecoder(gen)(
        {"box_cls_logits": maps, "box_regression": [m.repeat(1, 4, 1, 1) for m in maps]}, torch.zeros(0, 1, *IMAGE)
    )
    assert out == []


def _monai_per_image(cls, reg, anchors, coder, selector, image_size):
    """The reference: MONAI's BoxSelector, one image and one level at a time (what decode_boxes replaced)."""
    num_anchors = A
    per_level = [int(m.shape[-2]) * int(m.shape[-1]) * num_anchors for m in cls]
    cls_levels = flatten_head_maps(cls, num_anchors).split(per_level, dim=1)
    reg_levels = flatten_head_maps(reg, num_anchors).split(per_level, dim=1)
    out = []
    for b in range(len(anchors)):
        boxes_list = [coder.decode_single(r[b], a) for r, a in zip(reg_levels, anchors[b].split(per_level))]
        boxes, scores, labels = selector.select_boxes_per_image(boxes_list, [c[b] for c in cls_levels], image_size)
        out.append((boxes, scores, labels))
    return out


@pytest.mark.parametrize("num_classes", [1, 2])
@pytest.mark.parametrize(
    "thresh,topk,nms,max_det",
    [(0.05, 1000, 0.5, 100), (0.3, 7, 0.3, 5), (0.97, 50, 0.5, 20), (0.9, 50, 0.3, -1), (0.9, 10, 0.5, 0)],
)
@pytest.mark.parametrize("torchvision_nms", [True, False])
def test_batched_decoding_equals_monai_per_image_selection(
    num_classes, thresh, topk, nms, max_det, torchvision_nms, monkeypatch
):
    if not torchvision_nms:  # the fall-back when torchvision (the ``detection`` extra) is not installed
        import builtins

        real_import = builtins.__import__

        def no_torchvision(name, *args, **kwargs):
            if name.startswith("torchvision"):
                raise ImportError(name)
            return real_import(name, *args, **kwargs)

        monkeypatch.setattr(builtins, "__import__", no_torchvision)
    batch = 5
    _, _, anchors = _setup(batch)
    gen = torch.Generator().manual_seed(7 * num_classes + int(100 * thresh))
    cls = [torch.randn(batch, A * num_classes, w, h, generator=gen) * 2.5 for w, h in GRIDS]
    reg = [torch.randn(batch, A * 4, w, h, generator=gen) * 0.4 for w, h in GRIDS]
    cls[0][2] = -20.0  # image 2: nothing above the threshold at the finest level
    for m in cls:
        m[4] = -20.0  # image 4: no candidate at all
    coder = BoxCoder(weights=(1.0, 1.0, 1.0, 1.0))
    selector = BoxSelector(
        score_thresh=thresh, topk_candidates_per_level=topk, nms_thresh=nms, detections_per_img=max_det
    )
    ours = decode_boxes(cls, reg, anchors, coder, selector, IMAGE)
    ref = _monai_per_image(cls, reg, anchors, coder, selector, IMAGE)
    assert len(ours) == batch
    for b, (det, (boxes, scores, labels)) in enumerate(zip(ours, ref)):
        assert det["boxes"].shape == boxes.shape, f"image {b}"
        torch.testing.assert_close(det["boxes"], boxes.float(), atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(det["scores"], scores)
        assert torch.equal(det["labels"], labels.long())
    assert ours[4]["boxes"].shape == (0, 4)
    from monai.data import MetaTensor  # the outputs of a network called on a MetaTensor batch: the same boxes

    def batched(t):
        m = MetaTensor(t, meta={"filename_or_obj": "x.png"})
        m.is_batch = True
        return m

    meta = decode_boxes([batched(c) for c in cls], [batched(r) for r in reg], anchors, coder, selector, IMAGE)
    assert all(torch.equal(m["boxes"], d["boxes"]) and type(m["boxes"]) is torch.Tensor for m, d in zip(meta, ours))
    assert sum(len(d["boxes"]) for d in ours) > 4  # every case selects something
    if max_det <= 0:  # no cap on detections (MONAI: -1 or 0): the NMS alone removed candidates
        above = sum(int((torch.sigmoid(c[0]) > thresh).sum()) for c in cls)
        assert 0 < len(ours[0]["boxes"]) < min(above, topk * len(GRIDS))


@pytest.mark.parametrize("box_loss", ["giou", "smooth_l1"])
def test_loss_without_boxes_is_finite(box_loss):
    gen, images, _ = _setup(batch=2)
    loss = LocalizationLoss(gen, box_loss=box_loss)
    cls = [torch.randn(2, A, w, h, requires_grad=True) for w, h in GRIDS]
    reg = [torch.randn(2, A * 4, w, h, requires_grad=True) for w, h in GRIDS]
    out = loss(cls, reg, images, [torch.zeros(0, 4), torch.zeros(0, 4)])
    assert torch.isfinite(out["cls"]) and out["cls"] > 0
    assert out["box"].item() == 0.0
    (out["cls"] + out["box"]).backward()
    assert all(torch.isfinite(c.grad).all() for c in cls)
    # empty batch
    empty = loss([c[:0] for c in cls], [r[:0] for r in reg], images[:0], [])
    assert empty["cls"].item() == 0.0 and empty["box"].item() == 0.0


@pytest.mark.parametrize("box_loss", ["giou", "smooth_l1"])
def test_perfect_prediction_beats_random_and_gradients_flow(box_loss):
    torch.manual_seed(0)
    gen, images, anchors = _setup(batch=2)
    coder = BoxCoder(weights=(1.0, 1.0, 1.0, 1.0))
    loss = LocalizationLoss(gen, box_coder=coder, box_loss=box_loss)
    targets = [torch.tensor([[20.0, 10.0, 44.0, 30.0], [60.0, 30.0, 80.0, 60.0]]), torch.zeros(0, 4)]
    locs = [w * h for w, h in GRIDS]
    n = anchors[0].shape[0]
    cls_flat = torch.full((2, n, 1), -12.0)
    reg_flat = torch.zeros(2, n, 4)
    matched = loss.match(anchors[0], targets[0], locs, A)
    fg = matched >= 0
    assert fg.sum() >= 2
    cls_flat[0, fg, 0] = 12.0
    reg_flat[0, fg] = coder.encode_single(targets[0][matched[fg]], anchors[0][fg])
    perfect = loss(_unflatten(cls_flat, GRIDS, A), _unflatten(reg_flat, GRIDS, A), images, targets)
    rand_cls = [torch.randn(2, A, w, h, requires_grad=True) for w, h in GRIDS]
    rand_reg = [torch.randn(2, A * 4, w, h, requires_grad=True) for w, h in GRIDS]
    random = loss(rand_cls, rand_reg, images, targets)
    assert perfect["box"] < 1e-3 and perfect["cls"] < 1e-3
    assert random["box"] > 0.1 and random["cls"] > 0.1
    (random["cls"] + random["box"]).backward()
    assert all(torch.isfinite(t.grad).all() for t in rand_cls + rand_reg)
    assert sum(t.grad.abs().sum() for t in rand_reg) > 0 and sum(t.grad.abs().sum() for t in rand_cls) > 0


def _square_images():
    images = torch.zeros(2, 1, 64, 64)
    boxes = [torch.tensor([[12.0, 20.0, 36.0, 44.0]]), torch.tensor([[30.0, 8.0, 54.0, 28.0]])]
    for img, b in zip(images, boxes):
        x1, y1, x2, y2 = (int(v) for v in b[0])
        img[0, x1:x2, y1:y2] = 1.0  # x indexes spatial dim 0
    return images, boxes


def test_short_training_recovers_box():
    torch.manual_seed(0)
    images, boxes = _square_images()
    gen = make_anchor_generator([[16, 16], [24, 24], [24, 16]], (1, 2, 4))
    net = MultiCheXNet("densenet-tiny", tasks=("localization",), num_anchors=3)
    loss_fn = LocalizationLoss(gen)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(60):
        out = net(images)
        loss = loss_fn(out["box_cls_logits"], out["box_regression"], images, boxes)
        opt.zero_grad()
        (loss["cls"] + loss["box"]).backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        det = BoxDecoder(gen, score_thresh=0.05)(net(images), images)
    for d, b in zip(det, boxes):
        assert len(d["boxes"]) > 0
        assert box_iou(d["boxes"][:1], b).item() > 0.5  # top-scoring box


def test_localization_head_alone_learns():
    """A tiny LocalizationHead over fixed random features learns to score the matched anchors."""
    torch.manual_seed(0)
    head = LocalizationHead([8, 16, 24, 32], fpn_channels=16, num_anchors=3, num_convs=1)
    feats = [torch.randn(1, c, 64 // s, 64 // s) for c, s in zip([8, 16, 24, 32], [4, 8, 16, 32])]
    images = torch.zeros(1, 1, 64, 64)
    gen = make_anchor_generator([[16, 16], [24, 24], [24, 16]])
    loss_fn = LocalizationLoss(gen)
    target = [torch.tensor([[10.0, 14.0, 34.0, 38.0]])]
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    first = None
    for _ in range(60):
        out = head(feats)
        loss = loss_fn(out["box_cls_logits"], out["box_regression"], images, target)
        total = loss["cls"] + loss["box"]
        first = total.item() if first is None else first
        opt.zero_grad()
        total.backward()
        opt.step()
    assert total.item() < 0.5 * first
    with torch.no_grad():
        det = BoxDecoder(gen)(head(feats), images)[0]
    assert box_iou(det["boxes"][:1], target[0]).item() > 0.5


def test_fit_anchor_shapes_two_clusters():
    rng = np.random.default_rng(1)
    boxes = []
    for w, h in [(10, 30), (30, 10)]:
        for _ in range(40):
            x, y = rng.uniform(0, 100, 2)
            ww, hh = w + rng.normal(0, 1), h + rng.normal(0, 1)
            boxes.append(np.array([[x, y, x + ww, y + hh]]))
    shapes = fit_anchor_shapes(boxes, num_anchors=2, feature_map_scales=(1,), seed=0)
    np.testing.assert_allclose(sorted(shapes), [[10, 30], [30, 10]], atol=1.0)
    # with levels: boxes of two aspect ratios at several sizes -> each family covered
    boxes = [
        torch.tensor([[0.0, 0.0, 20 * s, 10 * s], [0.0, 0.0, 10 * s, 20 * s]]) for s in (1, 2, 4) for _ in range(5)
    ]
    shapes = fit_anchor_shapes(boxes, num_anchors=2, feature_map_scales=(1, 2, 4), seed=0)
    ratios = sorted(w / h for w, h in shapes)
    assert ratios == pytest.approx([0.5, 2.0], rel=0.05)
    gen = make_anchor_generator(shapes, (1, 2, 4))
    assert gen.num_anchors_per_location() == [2, 2, 2]
    with pytest.raises(ValueError):
        fit_anchor_shapes([np.zeros((1, 4))], num_anchors=2)
