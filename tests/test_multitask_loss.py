"""Teacher-forced multi-task loss: unknown vs negative, modes, all-missing batches."""

import math

import pytest
import torch
from torch import nn

from monai_mcx.losses import MultiCheXNetLoss
from monai_mcx.losses.multitask import select_samples


class RecordingLocLoss(nn.Module):
    """Stands in for LocalizationLoss: records which images/boxes it was given, returns a known value."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, cls_maps, reg_maps, images, boxes):
        self.calls.append(
            {"n": images.shape[0], "boxes": [b.clone() for b in boxes], "cls0": cls_maps[0].detach().clone()}
        )
        return {"cls": cls_maps[0].float().mean() * 0 + 0.5, "box": reg_maps[0].float().mean() * 0 + 0.25}


def make_batch(B=4, K=2, W=16, H=12):
    torch.manual_seed(0)
    outputs = {
        "class_logits": torch.randn(B, K, requires_grad=True),
        "seg_logits": torch.randn(B, 1, W, H, requires_grad=True),
        "box_cls_logits": [torch.randn(B, 3, 4, 3, requires_grad=True)],
        "box_regression": [torch.randn(B, 12, 4, 3, requires_grad=True)],
    }
    mask = torch.zeros(B, 1, W, H)
    mask[0, 0, 2:6, 3:7] = 1
    mask[2, 0, 1:3, 1:3] = 1
    targets = {
        "image": torch.rand(B, 1, W, H),
        "label": torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0], [0.0, 0.0]])[:B, :K],
        "has_label": torch.tensor([1.0, 1.0, 0.0, 0.0])[:B],
        "mask": mask,
        "has_mask": torch.tensor([1.0, 1.0, 1.0, 0.0])[:B],
        "boxes": [
            torch.tensor([[1.0, 1.0, 5.0, 6.0]]),
            torch.zeros(0, 4),
            torch.tensor([[2.0, 2.0, 4.0, 4.0]]),
            torch.zeros(0, 4),
        ][:B],
        "has_boxes": torch.tensor([1.0, 1.0, 0.0, 1.0])[:B],
        # sample 0 positive (label), 1 negative (label), 2 positive (mask), 3 unknown -> not positive
        "positive": torch.tensor([1.0, 0.0, 1.0, 0.0])[:B],
    }
    return outputs, targets


def test_classification_uses_only_labelled_samples():
    outputs, targets = make_batch()
    loss = MultiCheXNetLoss(localization_loss=RecordingLocLoss())(outputs, targets)
    expected = nn.functional.binary_cross_entropy_with_logits(outputs["class_logits"][:2], targets["label"][:2])
    assert torch.allclose(loss["classification"], expected)
    assert int(loss["n_classification"]) == 2
    # changing the (unknown) label of samples 2, 3 must not change the loss
    targets["label"][2:] = 1.0
    loss2 = MultiCheXNetLoss(localization_loss=RecordingLocLoss())(outputs, targets)
    assert torch.allclose(loss2["classification"], expected)


def test_positive_only_segmentation_selects_annotated_positives():
    outputs, targets = make_batch()
    seg = MultiCheXNetLoss(localization_loss=RecordingLocLoss()).segmentation_loss
    loss = MultiCheXNetLoss(localization_loss=RecordingLocLoss())(outputs, targets)
    idx = torch.tensor([0, 2])  # has_mask and positive; sample 1 is an annotated negative, 3 has no mask
    expected = seg(outputs["seg_logits"][idx], targets["mask"][idx])
    assert torch.allclose(loss["segmentation"], expected)
    assert int(loss["n_segmentation"]) == 2


def test_all_mode_includes_annotated_negatives_but_not_unknown():
    outputs, targets = make_batch()
    loc = RecordingLocLoss()
    loss = MultiCheXNetLoss(localization_loss=loc, teacher_forcing="all")(outputs, targets)
    assert int(loss["n_segmentation"]) == 3  # 0, 1, 2 (3 unknown)
    assert int(loss["n_localization"]) == 3  # 0, 1, 3 carry boxes (1 and 3 with [] = negative)
    assert loc.calls[-1]["n"] == 3
    assert [b.shape[0] for b in loc.calls[-1]["boxes"]] == [1, 0, 0]


def test_positive_only_localization_passes_only_positive_box_images():
    outputs, targets = make_batch()
    loc = RecordingLocLoss()
    loss = MultiCheXNetLoss(localization_loss=loc)(outputs, targets)
    assert int(loss["n_localization"]) == 1
    call = loc.calls[-1]
    assert call["n"] == 1 and torch.equal(call["boxes"][0], targets["boxes"][0])
    assert torch.equal(call["cls0"], outputs["box_cls_logits"][0][0:1].detach())
    assert math.isclose(float(loss["localization"]), 0.75, rel_tol=1e-6)


def test_balanced_mode_keeps_positives_and_a_fraction_of_negatives():
    available = torch.ones(2000)
    positive = torch.zeros(2000)
    positive[:100] = 1
    idx = select_samples(
        available, positive, "balanced", negative_fraction=0.25, generator=torch.Generator().manual_seed(0)
    )
    assert set(range(100)) <= set(idx.tolist())
    n_neg = int((idx >= 100).sum())
    assert 0.2 * 1900 < n_neg < 0.3 * 1900
    none = select_samples(available, positive, "balanced", negative_fraction=0.0)
    assert none.tolist() == list(range(100))


def test_all_missing_batch_gives_exact_zero_and_gradients_exist():
    outputs, targets = make_batch()
    targets["has_label"][:] = 0
    targets["has_mask"][:] = 0
    targets["has_boxes"][:] = 0
    loss = MultiCheXNetLoss(localization_loss=RecordingLocLoss())(outputs, targets)
    for task in ("classification", "segmentation", "localization"):
        assert float(loss[task]) == 0.0 and not math.isnan(float(loss[task]))
    assert float(loss["loss"]) == 0.0
    loss["loss"].backward()  # still connected to every head (DDP-safe)
    for key in ("class_logits", "seg_logits"):
        assert outputs[key].grad is not None and float(outputs[key].grad.abs().sum()) == 0.0


def test_no_positive_in_positive_only_mode_is_zero_not_nan():
    outputs, targets = make_batch()
    targets["mask"][:] = 0  # teacher forcing's positives are the annotations themselves (not the `positive` key)
    targets["boxes"] = [torch.zeros(0, 4) for _ in targets["boxes"]]
    loss = MultiCheXNetLoss(localization_loss=RecordingLocLoss())(outputs, targets)
    assert float(loss["segmentation"]) == 0.0 and float(loss["localization"]) == 0.0
    assert float(loss["classification"]) > 0


def test_weights_scale_the_total():
    outputs, targets = make_batch()
    base = MultiCheXNetLoss(localization_loss=RecordingLocLoss())(outputs, targets)
    w = {"classification": 2.0, "segmentation": 0.5, "localization": 0.0}
    weighted = MultiCheXNetLoss(localization_loss=RecordingLocLoss(), weights=w)(outputs, targets)
    expected = 2.0 * base["classification"] + 0.5 * base["segmentation"]
    assert torch.allclose(weighted["loss"], expected)


def test_subset_outputs_and_bad_mode():
    outputs, targets = make_batch()
    only_cls = {"class_logits": outputs["class_logits"]}
    loss = MultiCheXNetLoss()(only_cls, targets)
    assert set(k for k in loss if not k.startswith("n_")) == {"loss", "classification"}
    with pytest.raises(ValueError, match="teacher_forcing"):
        MultiCheXNetLoss(teacher_forcing="sometimes")
    with pytest.raises(ValueError, match="localization_loss"):
        MultiCheXNetLoss()(
            {"box_cls_logits": outputs["box_cls_logits"], "box_regression": outputs["box_regression"]}, targets
        )
