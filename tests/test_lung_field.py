"""The lung-field head and the lung restriction (issue 23 item 3): a ``lungs`` task trained on lung masks only, and
lesion masks and boxes kept inside the (dilated) predicted lung field by the one post-processing path."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.ndimage import binary_dilation
from tiny_model import save_always_positive_model

from monai_mcx.inferers import MultiCheXNetPostprocessor
from monai_mcx.keys import BatchKeys, PredKeys, Task
from monai_mcx.losses import MultiCheXNetLoss
from monai_mcx.model import DescriptionError, ModelDescription
from monai_mcx.networks import MultiCheXNet, MultiCheXNetExport
from monai_mcx.transforms import PrepareAnnotationsd

from conftest import run_inference


def test_the_lungs_task_builds_its_own_head():
    net = MultiCheXNet("densenet-tiny", tasks=("classification", "lungs")).eval()
    out = net(torch.rand(2, 1, 64, 48))
    assert set(out) == {PredKeys.CLASS_LOGITS, PredKeys.LUNG_LOGITS}
    assert out[PredKeys.LUNG_LOGITS].shape == (2, 1, 64, 48)
    assert MultiCheXNet("densenet-tiny").lung_head is None  # not a default task
    assert set(MultiCheXNetExport(net).state_dict()) == set(net.state_dict())


def test_the_lung_loss_uses_only_images_with_a_lung_mask():
    loss = MultiCheXNetLoss()
    lungs = torch.zeros(2, 1, 8, 8)
    lungs[0, :, 2:6, 2:6] = 1
    targets = {
        BatchKeys.IMAGE.value: torch.zeros(2, 1, 8, 8),
        BatchKeys.LABEL.value: torch.zeros(2, 1),
        BatchKeys.HAS_LABEL.value: torch.zeros(2),
        BatchKeys.LUNG_MASK.value: lungs,
        BatchKeys.HAS_LUNG_MASK.value: torch.tensor([1.0, 0.0]),
    }
    sel = loss.select(targets, [Task.LUNGS.value])
    assert sel[Task.LUNGS].tolist() == [0]
    logits = torch.randn(2, 1, 8, 8)
    first = loss({PredKeys.LUNG_LOGITS.value: logits}, targets, sel)
    logits[1] = 100.0  # the image without a lung mask: no effect
    again = loss({PredKeys.LUNG_LOGITS.value: logits}, targets, sel)
    assert first[Task.LUNGS.value] > 0 and torch.equal(first[Task.LUNGS.value], again[Task.LUNGS.value])
    assert int(first["n_lungs"]) == 1


def test_lung_masks_are_loaded_next_to_the_lesion_mask(tmp_path):
    mask = np.zeros((12, 10), dtype=np.uint8)
    mask[2:8, 3:6] = 255
    Image.fromarray(mask).save(tmp_path / "lungs.png")
    image = torch.zeros(1, 10, 12)
    prep = PrepareAnnotationsd(num_classes=1, lung_mask_key="lung_mask")
    d = prep({"image": image, "label": [1], "mask": None, "boxes": None, "lung_mask": str(tmp_path / "lungs.png")})
    assert d[BatchKeys.HAS_LUNG_MASK] == 1 and d["lung_mask"].shape == (1, 10, 12)
    assert torch.equal(d["lung_mask"][0].T, torch.as_tensor(mask > 0).float())  # (W, H): x first
    d = prep({"image": image, "label": None, "mask": None, "boxes": None, "lung_mask": None})
    assert d[BatchKeys.HAS_LUNG_MASK] == 0 and not d["lung_mask"].any()  # unknown, not empty
    d = PrepareAnnotationsd(num_classes=1)(
        {"image": image, "label": None, "mask": None, "boxes": None, "lung_mask": "x"}
    )
    assert "lung_mask" not in d and BatchKeys.HAS_LUNG_MASK not in d


def _pred(lung_on: bool = True):
    lung = torch.zeros(2, 1, 40, 40)
    if lung_on:
        lung[0, :, 10:20, 10:30] = 0.9  # image 0: one lung box; image 1: no lung found
    det = {
        "boxes": torch.tensor([[12.0, 12.0, 18.0, 20.0], [30.0, 30.0, 38.0, 38.0]]),  # centre inside / outside
        "scores": torch.tensor([0.9, 0.8]),
        "labels": torch.tensor([0, 0]),
    }
    return {
        PredKeys.CLASS_LOGITS.value: torch.full((2, 1), 3.0),
        PredKeys.SEG_PROBS.value: torch.full((2, 1, 40, 40), 0.9),
        PredKeys.LUNG_PROBS.value: lung,
        PredKeys.DETECTIONS.value: [det, det],
        PredKeys.INPUT_SIZE.value: [40, 40],
    }


def test_the_restriction_keeps_lesions_inside_the_dilated_lung_field():
    post = MultiCheXNetPostprocessor(lung_restriction={"enabled": True, "lung_threshold": 0.5, "dilation": 0.05})
    out = post.apply_operating_point(_pred())
    field = np.zeros((40, 40), dtype=bool)
    field[8:22, 8:32] = True  # the 10 x 20 lung dilated by 0.05 * 40 = 2 pixels
    assert np.array_equal(out[PredKeys.LUNG_FIELD][0, 0].numpy(), field)
    assert np.array_equal(out[PredKeys.SEG_MASK_GATED][0, 0].numpy(), field)
    assert out[PredKeys.DETECTIONS_GATED][0]["boxes"].tolist() == [[12.0, 12.0, 18.0, 20.0]]
    # an image whose lung mask is empty is not restricted (a lung-head failure must not erase every lesion)
    assert out[PredKeys.SEG_MASK_GATED][1].all() and len(out[PredKeys.DETECTIONS_GATED][1]["boxes"]) == 2
    # in the original pixels (twice the size) the mask stays inside the field
    orig = post.to_original(out, 0, [80, 80])
    assert orig["mask"].sum() == 4 * field.sum() and not (orig["mask"] & ~np.kron(field, np.ones((2, 2), bool))).any()
    assert orig["lung_mask"].sum() == 4 * 200
    off = post.with_settings(lung_restriction=False).apply_operating_point(_pred())
    assert off[PredKeys.SEG_MASK_GATED][0].all() and len(off[PredKeys.DETECTIONS_GATED][0]["boxes"]) == 2


def test_the_restriction_needs_a_lungs_head():
    with pytest.raises(DescriptionError, match="lungs head"):
        ModelDescription(
            class_names=["pneumonia"],
            tasks=["classification", "segmentation"],
            encoder="resnet18",
            spatial_size=[64, 64],
            lung_restriction={"enabled": True, "lung_threshold": 0.5, "dilation": 0.03},
        ).validate()


def test_inference_writes_the_lung_field_and_cuts_the_mask_to_it(tmp_path, single_thread):
    import torch.nn.functional as F

    from monai_mcx.model import load_model, save_description

    ckpt = tmp_path / "models" / "model.pt"
    desc = save_always_positive_model(
        ckpt,
        spatial_size=(48, 48),
        tasks=["classification", "segmentation", "localization", "lungs"],
        mask_threshold=0.0,  # every pixel is lesion: only the lung field limits the mask
    )
    (tmp_path / "inputs").mkdir()
    pixels = np.random.default_rng(0).integers(0, 256, (40, 48), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "inputs" / "x.png")
    # the untrained lung head's field: threshold its probabilities at their median, so that half the image is lung
    net, desc, _ = load_model(ckpt)
    x = F.interpolate(torch.as_tensor(pixels.T / 255.0, dtype=torch.float32)[None, None], size=(48, 48), mode="area")
    with torch.no_grad():
        lung = torch.sigmoid(net.eval()(x, tasks=["lungs"])[PredKeys.LUNG_LOGITS])
    thr = float(lung.median())
    save_description(desc.replace(lung_restriction={"enabled": True, "lung_threshold": thr, "dilation": 0.03}), ckpt)
    run_inference(tmp_path, tmp_path / "out", write_overlay=False)
    rec = json.loads((tmp_path / "out" / "x.json").read_text())
    lungs = np.asarray(Image.open(tmp_path / "out" / rec["lung_mask"])) > 0
    mask = np.asarray(Image.open(tmp_path / "out" / rec["mask"])) > 0
    assert rec["lung_restriction"] is True and rec["lung_area_px"] == int(lungs.sum())
    assert (tmp_path / "out" / "x_lungs.nii.gz").is_file()
    assert 0.2 < lungs.mean() < 0.8 and mask.sum() > 0
    assert not (mask & ~binary_dilation(lungs, iterations=3)).any()  # nothing beyond the dilated field
    assert mask.sum() < mask.size  # ... which is not the whole image


def test_the_dicom_seg_holds_the_lung_field_as_its_second_segment(tmp_path, single_thread):
    from dicom_factory import make_radiograph

    from monai_mcx.dicom.seg import LESION_LABEL, LUNG_LABEL, read_seg

    save_always_positive_model(  # lung threshold ~0: the whole image is lung, so segment 2 cannot be empty
        tmp_path / "models" / "model.pt",
        spatial_size=(48, 48),
        tasks=["classification", "segmentation", "lungs"],
        lung_restriction={"enabled": False, "lung_threshold": 1e-6, "dilation": 0.0},
    )
    (tmp_path / "inputs").mkdir()
    make_radiograph(shape=(50, 40)).save_as(str(tmp_path / "inputs" / "cxr.dcm"), enforce_file_format=True)
    run_inference(tmp_path, tmp_path / "out", write_overlay=False, write_dicom=True)
    rec = json.loads((tmp_path / "out" / "cxr.json").read_text())
    seg = tmp_path / "out" / rec["dicom_outputs"]["seg"]
    lungs = np.asarray(Image.open(tmp_path / "out" / rec["lung_mask"])) > 0
    lesion = np.asarray(Image.open(tmp_path / "out" / rec["mask"])) > 0
    assert lungs.all() and not lesion.all()
    assert np.array_equal(read_seg(seg, LUNG_LABEL), lungs) and np.array_equal(read_seg(seg, LESION_LABEL), lesion)


def test_the_lung_field_keeps_the_two_lungs_not_the_islands():
    lung = torch.zeros(1, 1, 40, 40)
    lung[0, 0, 5:20, 5:35] = 0.9  # right lung (image left)
    lung[0, 0, 22:37, 5:35] = 0.9  # left lung
    lung[0, 0, 1:3, 37:39] = 0.9  # a 4-pixel island over the shoulder
    det = {"boxes": torch.tensor([[36.0, 0.0, 40.0, 4.0]]), "scores": torch.tensor([0.9]), "labels": torch.tensor([0])}
    pred = {
        PredKeys.CLASS_LOGITS.value: torch.full((1, 1), 3.0),
        PredKeys.SEG_PROBS.value: torch.full((1, 1, 40, 40), 0.9),
        PredKeys.LUNG_PROBS.value: lung,
        PredKeys.DETECTIONS.value: [det],
        PredKeys.INPUT_SIZE.value: [40, 40],
    }
    post = MultiCheXNetPostprocessor(lung_restriction={"enabled": True, "lung_threshold": 0.5, "dilation": 0.0})
    out = post.apply_operating_point(pred)
    lungs = out[PredKeys.LUNG_MASK][0, 0]
    assert int(lungs.sum()) == 2 * 15 * 30 and not lungs[1:3, 37:39].any()
    assert (
        not out[PredKeys.SEG_MASK_GATED][0, 0, 1:3, 37:39].any()
        and len(out[PredKeys.DETECTIONS_GATED][0]["boxes"]) == 0
    )
    assert not post.to_original(out, 0, [80, 80])["lung_mask"][2:6, 74:78].any()  # the island, original pixels
    every = MultiCheXNetPostprocessor(lung_restriction={"enabled": True, "dilation": 0.0, "components": 0})
    assert every.apply_operating_point(pred)[PredKeys.LUNG_MASK][0, 0, 1:3, 37:39].all()  # 0: every component
