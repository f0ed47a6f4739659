"""Segmentation and detection metrics at the original resolution (issue 13 item 13).

``MultiTaskMetrics(original_resolution=True)`` adds ``<key>/original`` and ``<key>/gated/original``: the mask
probability resized to each image's own size (as inference writes it) against the mask file reloaded at its size,
and boxes scaled back to the original pixels. The expected Dice is computed independently with
``monai.metrics.compute_dice``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from monai.metrics import compute_dice
from PIL import Image

from monai_mcx.handlers.metrics import ORIGINAL_SUFFIX, MultiTaskMetrics
from monai_mcx.inferers import MultiCheXNetPostprocessor
from monai_mcx.keys import BatchKeys, PredKeys

ORIG = (90, 60)  # (W, H) of the original images: not square, not the network's aspect ratio
NET = (30, 30)  # (w, h) network input


def _save_mask(path, mask_wh: np.ndarray) -> str:
    """A 0/255 PNG of a ``(W, H)`` mask (PIL stores rows = y, so the array is transposed)."""
    Image.fromarray((mask_wh.T * 255).astype(np.uint8)).save(path)
    return str(path)


def _blob(size, centre, radius) -> np.ndarray:
    x, y = np.meshgrid(np.arange(size[0]), np.arange(size[1]), indexing="ij")
    d = ((x - centre[0]) / radius[0]) ** 2 + ((y - centre[1]) / radius[1]) ** 2
    return np.exp(-d).astype(np.float32)  # (W, H) smooth probability map


def _nearest_down(mask_wh: np.ndarray, size) -> np.ndarray:
    t = torch.as_tensor(mask_wh[None, None].astype(np.float32))
    return F.interpolate(t, size=list(size), mode="nearest-exact")[0, 0].numpy() > 0.5


def _batch(tmp_path):
    """Two images with a mask file at the original size and one true box each, network-geometry predictions."""
    truths = []
    m0 = np.zeros(ORIG, dtype=bool)
    m0[10:41, 14:47] = True  # x 10..40, y 14..46: not aligned with the 3 x 2 grid of the resize
    m1 = np.zeros(ORIG, dtype=bool)
    m1[50:80, 5:28] = True
    truths = [m0, m1]
    paths = [_save_mask(tmp_path / f"m{i}.png", m) for i, m in enumerate(truths)]
    probs = np.stack([_blob(NET, (8.5, 10.0), (5.0, 6.0)), _blob(NET, (21.0, 5.5), (5.5, 4.0))])[:, None]
    true_net = np.stack([_nearest_down(m, NET) for m in truths])[:, None]
    boxes_net = [torch.tensor([[3.4, 7.0, 13.7, 23.5]]), torch.tensor([[16.7, 2.5, 26.7, 14.0]])]
    dets = [
        {"boxes": torch.tensor([[4.0, 7.5, 13.0, 22.0], [20.0, 20.0, 25.0, 26.0]]), "scores": torch.tensor([0.9, 0.4])},
        {"boxes": torch.tensor([[17.0, 3.0, 27.0, 13.0]]), "scores": torch.tensor([0.8])},
    ]
    seg = torch.as_tensor(probs)
    pred = {
        PredKeys.CLASS_PROBS.value: torch.tensor([[0.9], [0.2]]),  # image 1 is gated out at 0.5
        PredKeys.SEG_PROBS.value: seg,
        PredKeys.SEG_MASK.value: seg >= 0.5,
        PredKeys.DETECTIONS.value: dets,
        PredKeys.INPUT_SIZE.value: list(NET),
    }
    targets = {
        BatchKeys.IMAGE.value: torch.zeros(2, 1, *NET),
        BatchKeys.LABEL.value: torch.tensor([[1.0], [1.0]]),
        BatchKeys.HAS_LABEL.value: torch.ones(2),
        BatchKeys.MASK.value: torch.as_tensor(true_net).float(),
        BatchKeys.HAS_MASK.value: torch.ones(2),
        BatchKeys.BOXES.value: boxes_net,
        BatchKeys.HAS_BOXES.value: torch.ones(2),
        BatchKeys.ORIGINAL_SIZE.value: [list(ORIG), list(ORIG)],
        BatchKeys.MASK_PATH.value: paths,
    }
    return pred, targets, probs, truths


def _monai_dice(pred: np.ndarray, true: np.ndarray) -> float:
    p = torch.as_tensor(pred[None, None].astype(np.float32))
    t = torch.as_tensor(true[None, None].astype(np.float32))
    return float(compute_dice(p, t, include_background=True, ignore_empty=False)[0, 0])


def test_dice_at_original_resolution_matches_monai(tmp_path):
    pred, targets, probs, truths = _batch(tmp_path)
    metric = MultiTaskMetrics(["lesion"], postprocessor=MultiCheXNetPostprocessor(["lesion"]), original_resolution=True)
    metric.update((pred, targets))
    out = metric.compute()
    # independent: probabilities resized bilinearly to the original size, thresholded at 0.5, MONAI's Dice
    up = [
        F.interpolate(torch.as_tensor(p[None]), size=list(ORIG), mode="bilinear", align_corners=False)[0, 0].numpy()
        >= 0.5
        for p in probs
    ]
    expected = [_monai_dice(u, t) for u, t in zip(up, truths)]
    # MONAI computes in float32
    assert out[f"segmentation/dice_positive{ORIGINAL_SUFFIX}"] == pytest.approx(np.mean(expected), abs=1e-6)
    # gated: image 1 (p 0.2 < 0.5) gets an empty mask, Dice 0
    assert out[f"segmentation/dice_positive/gated{ORIGINAL_SUFFIX}"] == pytest.approx(expected[0] / 2, abs=1e-6)
    # network-resolution Dice is a different number: the resampling of the truth changes it
    net = [_monai_dice(p[0] >= 0.5, t[0].numpy() > 0.5) for p, t in zip(probs, targets[BatchKeys.MASK])]
    assert out["segmentation/dice_positive"] == pytest.approx(np.mean(net), abs=1e-6)
    assert abs(out["segmentation/dice_positive"] - out[f"segmentation/dice_positive{ORIGINAL_SUFFIX}"]) > 1e-3


def test_box_metrics_at_original_resolution_agree_with_network(tmp_path):
    """IoU is invariant to a per-axis scaling: every box metric is the same at both resolutions (no clipping)."""
    pred, targets, _, _ = _batch(tmp_path)
    metric = MultiTaskMetrics(["lesion"], original_resolution=True, box_threshold=0.5)
    metric.update((pred, targets))
    out = metric.compute()
    box_keys = [k for k in out if k.startswith("localization/") and not k.endswith(ORIGINAL_SUFFIX)]
    box_keys.remove("localization/box_threshold")
    assert "localization/rsna" in box_keys and "localization/ap50/gated" in box_keys
    for k in box_keys:
        assert out[f"{k}{ORIGINAL_SUFFIX}"] == pytest.approx(out[k], abs=1e-9, nan_ok=True), k


def test_original_resolution_is_off_by_default_and_needs_sizes(tmp_path):
    pred, targets, _, _ = _batch(tmp_path)
    metric = MultiTaskMetrics(["lesion"])
    metric.update((pred, targets))
    assert not any(k.endswith(ORIGINAL_SUFFIX) for k in metric.compute())
    del targets[BatchKeys.ORIGINAL_SIZE.value]
    with pytest.raises(ValueError, match="original_size"):
        MultiTaskMetrics(["lesion"], original_resolution=True).update((pred, targets))


def test_mask_file_of_another_size_is_an_error(tmp_path):
    pred, targets, _, _ = _batch(tmp_path)
    _save_mask(tmp_path / "m0.png", np.zeros((40, 40), dtype=bool))
    metric = MultiTaskMetrics(["lesion"], original_resolution=True)
    metric.update((pred, targets))
    with pytest.raises(ValueError, match="m0.png"):
        metric.compute()


def test_bundle_evaluation_reports_both_resolutions(evaluated_bundle):
    """evaluate.json computes the original-resolution keys and labels both in report.md. The demo images are
    64 px like the network input, so the two resolutions must give the same numbers (any orientation or
    file-reloading error would break the equality)."""
    _, _, out = evaluated_bundle
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("segmentation/dice_positive", "segmentation/dice_positive/gated", "localization/ap50"):
        assert metrics[f"{key}{ORIGINAL_SUFFIX}"] == pytest.approx(metrics[key], abs=1e-9), key
    report = (out / "report.md").read_text()
    assert "gated, original px" in report and "ungated, network px" in report


def _with_in_memory_masks(pred: dict, targets: dict, lesion: bool) -> tuple[dict, dict]:
    """The batch of :func:`_batch` plus a third image whose mask exists only in memory (no file, ``mask_path`` "";
    as ``PrepareAnnotationsd(empty_mask_if_no_boxes=True)`` gives a negative): all-zero, or with a lesion."""
    p3 = torch.as_tensor(_blob(NET, (15.0, 15.0), (3.0, 3.0)))[None, None]  # some predicted pixels on a negative
    true3 = torch.zeros(1, 1, *NET)
    if lesion:
        true3[..., 5:10, 5:10] = 1.0
    pred = dict(pred)
    pred[PredKeys.SEG_PROBS.value] = torch.cat([pred[PredKeys.SEG_PROBS.value], p3])
    pred[PredKeys.SEG_MASK.value] = pred[PredKeys.SEG_PROBS.value] >= 0.5
    pred[PredKeys.CLASS_PROBS.value] = torch.tensor([[0.9], [0.2], [0.7]])
    pred[PredKeys.DETECTIONS.value] = pred[PredKeys.DETECTIONS.value] + [
        {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0)}
    ]
    t = dict(targets)
    t[BatchKeys.IMAGE.value] = torch.zeros(3, 1, *NET)
    t[BatchKeys.LABEL.value] = torch.tensor([[1.0], [1.0], [0.0]])
    t[BatchKeys.HAS_LABEL.value] = torch.ones(3)
    t[BatchKeys.MASK.value] = torch.cat([targets[BatchKeys.MASK.value], true3])
    t[BatchKeys.HAS_MASK.value] = torch.ones(3)
    t[BatchKeys.BOXES.value] = targets[BatchKeys.BOXES.value] + [torch.zeros(0, 4)]
    t[BatchKeys.HAS_BOXES.value] = torch.ones(3)
    t[BatchKeys.ORIGINAL_SIZE.value] = [list(ORIG)] * 3
    t[BatchKeys.MASK_PATH.value] = targets[BatchKeys.MASK_PATH.value] + [""]
    return pred, t


def test_in_memory_empty_mask_counts_at_both_resolutions(tmp_path):
    """Issue 24 item 17: a negative whose empty mask exists only in memory (``empty_mask_if_no_boxes``) is in the
    network-px AND the original-px Dice (as an all-zero mask of its original size), so both columns cover the same
    images."""
    pred, targets = _with_in_memory_masks(*_batch(tmp_path)[:2], lesion=False)
    metric = MultiTaskMetrics(["lesion"], original_resolution=True)
    metric.update((pred, targets))
    out = metric.compute()
    assert out["segmentation/n_images"] == out[f"segmentation/n_images{ORIGINAL_SUFFIX}"] == 3
    # the negative's predicted pixels make its Dice 0 (SIIM rule): the empty-aware mean is over 3 images at both
    two = MultiTaskMetrics(["lesion"], original_resolution=True)
    two.update(_batch(tmp_path)[:2])
    ref = two.compute()
    for key in ("segmentation/dice_empty_aware", f"segmentation/dice_empty_aware{ORIGINAL_SUFFIX}"):
        assert out[key] == pytest.approx(ref[key] * 2 / 3, abs=1e-9), key
    assert out[f"segmentation/dice_positive{ORIGINAL_SUFFIX}"] == pytest.approx(
        ref[f"segmentation/dice_positive{ORIGINAL_SUFFIX}"], abs=1e-9
    )


def test_in_memory_lesion_mask_is_left_out_at_original_resolution_with_a_warning(tmp_path):
    """A NON-empty in-memory mask has no original-size pixels to compare with: left out of the original-px Dice,
    with a warning, and the counts say so."""
    pred, targets = _with_in_memory_masks(*_batch(tmp_path)[:2], lesion=True)
    metric = MultiTaskMetrics(["lesion"], original_resolution=True)
    metric.update((pred, targets))
    with pytest.warns(UserWarning, match="1 image.*non-empty in-memory mask"):
        out = metric.compute()
    assert out["segmentation/n_images"] == 3 and out[f"segmentation/n_images{ORIGINAL_SUFFIX}"] == 2
