"""Teacher forcing's per-task positives come from the annotations after the geometric transforms: a lesion
cropped away or a tiny mask that vanishes when downsampled does not train the dense heads on an empty target."""

from __future__ import annotations

import torch
from monai.data import MetaTensor

from monai_mcx.data import collate_cxr
from monai_mcx.engines.utils import prepare_cxr_batch
from monai_mcx.losses import LocalizationLoss, MultiCheXNetLoss
from monai_mcx.networks import MultiCheXNet, make_anchor_generator
from monai_mcx.transforms import PrepareAnnotationsd, ResizeWithBoxesd, cxr_box_augmentations
from monai_mcx.transforms.labels import task_positives

ANCHORS = [[8, 8], [12, 12], [16, 10]]


def _item(size: int, label, mask_box=None, boxes=None) -> dict:
    """A (1, size, size) image; ``mask_box`` = (x1, y1, x2, y2) pixels set in the mask (None: no mask)."""
    mask = None
    if mask_box is not None:
        mask = torch.zeros(1, size, size)
        x1, y1, x2, y2 = mask_box
        mask[0, x1:x2, y1:y2] = 1
    image = MetaTensor(torch.rand(1, size, size), meta={"filename_or_obj": f"img{size}.png"})
    return PrepareAnnotationsd(num_classes=1)({"image": image, "label": label, "mask": mask, "boxes": boxes})


def _loss_counts(items: list[dict], teacher_forcing: str = "positive_only") -> dict:
    torch.manual_seed(0)
    net = MultiCheXNet(encoder="densenet-tiny", class_names=["pneumonia"], num_anchors=len(ANCHORS)).eval()
    inputs, targets = prepare_cxr_batch(collate_cxr(items))
    loc = LocalizationLoss(make_anchor_generator(ANCHORS, [1, 2, 4]))
    loss = MultiCheXNetLoss(loc, teacher_forcing=teacher_forcing)
    with torch.no_grad():
        out = loss(net(inputs), targets)
    return {
        "segmentation": int(out["n_segmentation"]),
        "localization": int(out["n_localization"]),
        "positive": task_positives(targets),
    }


def test_crop_that_removes_the_lesion_makes_the_dense_tasks_negative():
    lesion = (2, 2, 8, 8)
    crop = cxr_box_augmentations(spatial_size=(64, 64), crop_prob=1.0, crop_scale=(0.5, 0.5), zoom_prob=0.0)
    for t in crop:
        if hasattr(t, "set_random_state"):
            t.set_random_state(seed=3)
    cropped = _item(64, [1.0], mask_box=lesion, boxes=[list(lesion)])
    for t in crop:
        cropped = t(cropped)
    # precondition: this crop (32 x 32 at a random corner, resized back to 64) left no lesion pixel and no box
    assert cropped["image"].shape[1:] == (64, 64)
    assert not bool(cropped["mask"].any()) and cropped["boxes"].shape[0] == 0 and float(cropped["has_boxes"]) == 1
    kept = _item(64, [1.0], mask_box=(20, 20, 40, 40), boxes=[[20, 20, 40, 40]])  # untouched positive
    unknown = _item(64, [1.0])  # positive class, no mask, no boxes: the label decides, but no dense target
    counts = _loss_counts([cropped, kept, unknown])
    assert counts["positive"]["segmentation"].tolist() == [0.0, 1.0, 1.0]
    assert counts["positive"]["localization"].tolist() == [0.0, 1.0, 1.0]
    # only `kept` trains the dense heads; `cropped` (class label positive, empty targets) trains the classifier
    assert counts["segmentation"] == 1 and counts["localization"] == 1
    # with teacher_forcing "all" the cropped image is a negative example for both dense heads
    all_counts = _loss_counts([cropped, kept, unknown], teacher_forcing="all")
    assert all_counts["segmentation"] == 2 and all_counts["localization"] == 2


def test_tiny_mask_that_vanishes_on_downsampling_is_negative_for_segmentation():
    resize = ResizeWithBoxesd(["image", "mask"], (32, 32), mode=["area", "nearest-exact"])
    tiny = resize(_item(128, [1.0], mask_box=(1, 1, 2, 2)))  # one pixel; nearest-exact at 1/4 samples 2, 6, ...
    blob = resize(_item(128, [1.0], mask_box=(40, 40, 56, 56)))
    assert not bool(tiny["mask"].any()) and bool(blob["mask"].any())  # precondition
    assert float(tiny["positive"]) == 1.0  # the image-level flag still follows the class label
    counts = _loss_counts([tiny, blob])
    assert counts["positive"]["segmentation"].tolist() == [0.0, 1.0]
    assert counts["segmentation"] == 1


def test_annotation_decides_over_the_class_label_and_label_only_where_unknown():
    targets = {
        "label": torch.tensor([[0.0, 0.0], [0.0, 1.0], [0.0, 0.0], [1.0, 0.0]]),  # two classes (multi-class)
        "has_label": torch.tensor([1.0, 1.0, 1.0, 0.0]),
        "mask": torch.zeros(4, 1, 8, 8),
        "has_mask": torch.tensor([1.0, 1.0, 0.0, 0.0]),
        "boxes": [torch.tensor([[1.0, 1.0, 3.0, 3.0]]), torch.zeros(0, 4), torch.zeros(0, 4), torch.zeros(0, 4)],
        "has_boxes": torch.tensor([1.0, 1.0, 0.0, 0.0]),
    }
    targets["mask"][0, 0, 2, 2] = 1  # class label negative but a lesion annotated: positive for the dense tasks
    pos = task_positives(targets)
    # 0: annotations non-empty; 1: second class positive, annotations empty; 2: unknown, label negative;
    # 3: unknown annotations and unknown label
    assert pos["segmentation"].tolist() == [1.0, 0.0, 0.0, 0.0]
    assert pos["localization"].tolist() == [1.0, 0.0, 0.0, 0.0]
    targets["label"][2, 1] = 1.0  # unknown annotations: any positive class decides
    assert task_positives(targets)["segmentation"].tolist() == [1.0, 0.0, 1.0, 0.0]


def test_empty_mask_if_no_boxes_makes_box_negatives_known_mask_negatives():
    """RSNA boxes every opacity: with ``empty_mask_if_no_boxes`` an image annotated with no box has a known,
    empty lesion mask, so teacher forcing ``all`` trains the mask head on it; off (the default) it stays
    unknown and trains nothing, and an image with boxes keeps its unknown mask either way."""
    image = MetaTensor(torch.rand(1, 64, 48), meta={"filename_or_obj": "rsna_neg.dcm"})
    negative = {"image": image, "label": [0.0], "mask": None, "boxes": []}
    positive = {"image": image.clone(), "label": [1.0], "mask": None, "boxes": [[4, 4, 20, 30]]}
    class_only = {"image": image.clone(), "label": [0.0], "mask": None, "boxes": None}
    on = PrepareAnnotationsd(num_classes=1, empty_mask_if_no_boxes=True)
    neg, pos, cls = on(negative), on(positive), on(class_only)
    assert float(neg["has_mask"]) == 1.0 and neg["mask"].shape == (1, 64, 48) and not bool(neg["mask"].any())
    assert neg["mask_path"] == ""
    assert float(pos["has_mask"]) == 0.0 and float(cls["has_mask"]) == 0.0
    off = PrepareAnnotationsd(num_classes=1)(negative)
    assert float(off["has_mask"]) == 0.0
    assert _loss_counts([neg, pos], teacher_forcing="all")["segmentation"] == 1
    assert _loss_counts([off, pos], teacher_forcing="all")["segmentation"] == 0


def test_prepare_cxr_batch_hands_the_network_plain_tensors_and_keeps_the_metadata_in_the_batch():
    # a MetaTensor input routes every operation of the forward pass through MONAI's metadata bookkeeping
    items = [_item(32, [1.0], mask_box=(2, 2, 8, 8), boxes=[[2, 2, 8, 8]]), _item(32, [0.0])]
    batch = collate_cxr(items)
    assert isinstance(batch["image"], MetaTensor)
    inputs, targets = prepare_cxr_batch(batch)
    assert type(inputs) is torch.Tensor
    assert type(targets["image"]) is torch.Tensor and type(targets["mask"]) is torch.Tensor
    assert all(type(b) is torch.Tensor for b in targets["boxes"])
    torch.testing.assert_close(inputs, batch["image"].as_tensor())
    assert batch["image"].meta["filename_or_obj"] == ["img32.png", "img32.png"]
