"""Tests of monai_mcx.metrics against scikit-learn, pycocotools, MONAI and hand-computed cases."""

from __future__ import annotations

import contextlib
import io
import logging
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from monai_mcx.metrics import (
    average_precision,
    box_iou_float64,
    box_quality,
    choose_threshold,
    classification_metrics,
    coco_map,
    detection_metrics,
    dice_per_image,
    expected_calibration_error,
    pr_curve,
    roc_auc,
    roc_curve,
    rsna_metric,
    segmentation_metrics,
)

sklearn_metrics = pytest.importorskip("sklearn.metrics")


# ----------------------------------------------------------------------------------------------- classification


@pytest.mark.parametrize("seed", range(12))
def test_roc_auc_matches_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 120))
    labels = rng.integers(0, 2, n)
    labels[:2] = [0, 1]
    probs = np.clip(labels * 0.2 + rng.random(n), 0, 1)
    if seed % 2 == 0:
        probs = np.round(probs, 1)  # many ties
    ref = sklearn_metrics.roc_auc_score(labels, probs)
    assert abs(roc_auc(probs, labels) - ref) < 1e-6
    assert abs(roc_auc(torch.tensor(probs), torch.tensor(labels)) - ref) < 1e-6


def test_roc_auc_one_class_is_nan():
    assert math.isnan(roc_auc([0.1, 0.9, 0.5], [1, 1, 1]))
    assert math.isnan(roc_auc([0.1, 0.9], [0, 0]))
    assert roc_auc([0.1, 0.9], [0, 1]) == 1.0
    assert roc_auc([0.5, 0.5], [0, 1]) == 0.5


def test_ece_hand_computed():
    probs = [0.05, 0.15, 0.15, 0.85, 0.95]
    labels = [0, 0, 1, 1, 1]
    # bins 0: |0 - .05| * 1/5; 1: |.5 - .15| * 2/5; 8: |1 - .85| * 1/5; 9: |1 - .95| * 1/5
    expected = (0.05 * 1 + 0.35 * 2 + 0.15 * 1 + 0.05 * 1) / 5
    assert abs(expected_calibration_error(probs, labels) - expected) < 1e-12
    # perfectly calibrated bins
    assert expected_calibration_error([0.25] * 4 + [0.75] * 4, [1, 0, 0, 0, 1, 1, 1, 0]) < 1e-12
    # one bin: |mean label - mean prob|
    assert abs(expected_calibration_error([0.2, 0.8], [1, 1], n_bins=1) - 0.5) < 1e-12
    # p = 1.0 falls in the last bin
    assert abs(expected_calibration_error([1.0, 0.0], [0, 0], n_bins=10) - 0.5) < 1e-12


def test_classification_metrics_match_sklearn():
    rng = np.random.default_rng(3)
    n, names = 200, ["pneumonia", "effusion", "nodule"]
    labels = rng.integers(0, 2, (n, 3))
    probs = np.round(np.clip(0.35 * labels + 0.65 * rng.random((n, 3)), 0, 1), 2)
    thresholds = [0.3, 0.5, 0.7]
    out = classification_metrics(torch.tensor(probs), labels, names, threshold=thresholds)

    expected_keys = {f"classification/{m}" for m in ("auc", "sensitivity", "specificity", "f1", "ece")}
    expected_keys |= {
        f"classification/{m}/{c}"
        for m in ("auc", "sensitivity", "specificity", "f1", "ece", "threshold")
        for c in names
    }
    assert set(out) == expected_keys
    for k, (c, t) in enumerate(zip(names, thresholds)):
        y, pred = labels[:, k], (probs[:, k] >= t).astype(int)
        tn, fp, fn, tp = sklearn_metrics.confusion_matrix(y, pred, labels=[0, 1]).ravel()
        assert abs(out[f"classification/auc/{c}"] - sklearn_metrics.roc_auc_score(y, probs[:, k])) < 1e-6
        assert abs(out[f"classification/sensitivity/{c}"] - sklearn_metrics.recall_score(y, pred)) < 1e-12
        assert abs(out[f"classification/specificity/{c}"] - tn / (tn + fp)) < 1e-12
        assert abs(out[f"classification/f1/{c}"] - sklearn_metrics.f1_score(y, pred)) < 1e-12
        assert abs(out[f"classification/ece/{c}"] - expected_calibration_error(probs[:, k], y)) < 1e-12
        assert out[f"classification/threshold/{c}"] == t
    for m in ("auc", "sensitivity", "specificity", "f1", "ece"):
        assert abs(out[f"classification/{m}"] - np.mean([out[f"classification/{m}/{c}"] for c in names])) < 1e-12
    # a single threshold applies to every class
    single = classification_metrics(probs, labels, names, threshold=0.5)
    assert all(single[f"classification/threshold/{c}"] == 0.5 for c in names)
    assert abs(single["classification/sensitivity/effusion"] - out["classification/sensitivity/effusion"]) < 1e-12


def test_classification_auc_mean_skips_undefined_classes():
    probs = np.array([[0.1, 0.2], [0.9, 0.4], [0.8, 0.3]])
    labels = np.array([[0, 0], [1, 0], [1, 0]])
    out = classification_metrics(probs, labels, ["a", "b"])
    assert out["classification/auc/a"] == 1.0
    assert math.isnan(out["classification/auc/b"])
    assert out["classification/auc"] == 1.0
    assert math.isnan(out["classification/sensitivity/b"])  # no positives
    assert out["classification/specificity/b"] == 1.0
    assert math.isnan(out["classification/f1/b"])  # no positive label, no positive prediction
    with pytest.raises(ValueError):
        classification_metrics(probs, labels, ["a"])
    with pytest.raises(ValueError):
        classification_metrics(probs, labels + 1, ["a", "b"])


def test_choose_threshold_separable():
    probs = [0.1, 0.2, 0.35, 0.6, 0.7, 0.9]
    labels = [0, 0, 0, 1, 1, 1]
    assert choose_threshold(probs, labels, "youden") == 0.6
    assert choose_threshold(probs, labels, "f1") == 0.6
    # sklearn's roc_curve example: J = 0.5 at 0.8 and at 0.35; ties go to the higher threshold
    assert choose_threshold([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1], "youden") == 0.8
    assert choose_threshold([0.3, 0.3], [1, 1]) == 0.5
    with pytest.raises(ValueError):
        choose_threshold(probs, labels, "accuracy")


@pytest.mark.parametrize("seed", range(5))
def test_choose_threshold_is_optimal(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 60)
    labels[:2] = [0, 1]
    probs = np.round(np.clip(0.3 * labels + 0.7 * rng.random(60), 0, 1), 2)
    fpr, tpr, _ = sklearn_metrics.roc_curve(labels, probs, drop_intermediate=False)
    t = choose_threshold(probs, labels, "youden")
    pred = probs >= t
    j = pred[labels == 1].mean() - pred[labels == 0].mean()
    assert abs(j - np.max(tpr - fpr)) < 1e-12
    t = choose_threshold(probs, labels, "f1")
    best_f1 = max(sklearn_metrics.f1_score(labels, probs >= c) for c in np.unique(probs))
    assert abs(sklearn_metrics.f1_score(labels, probs >= t) - best_f1) < 1e-12


@pytest.mark.parametrize("seed", range(4))
def test_roc_and_pr_curves_match_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 50)
    labels[:2] = [0, 1]
    probs = np.round(np.clip(0.3 * labels + 0.7 * rng.random(50), 0, 1), 1)  # many ties
    fpr, tpr = roc_curve(probs, labels)
    ref_fpr, ref_tpr, _ = sklearn_metrics.roc_curve(labels, probs, drop_intermediate=False)
    assert np.allclose(fpr, ref_fpr) and np.allclose(tpr, ref_tpr)
    rec, prec = pr_curve(torch.as_tensor(probs), labels > 0)  # tensors and bool labels as the report passes them
    ref_prec, ref_rec, _ = sklearn_metrics.precision_recall_curve(labels, probs)
    # sklearn: lowest score first plus the end point (recall 0, precision 1)
    assert np.allclose(rec, ref_rec[:-1][::-1]) and np.allclose(prec, ref_prec[:-1][::-1])
    with pytest.raises(ValueError, match="positive and negative"):
        roc_curve(probs, np.ones(50))
    with pytest.raises(ValueError, match="positive"):
        pr_curve(probs, np.zeros(50))


def test_box_quality_hand_computed():
    truth = [[0, 0, 10, 10], [20, 20, 30, 30]]
    assert box_quality(np.zeros((0, 4)), np.zeros((0, 4))) == 1.0
    assert box_quality(np.zeros((0, 4)), truth) == 0.0 and box_quality(truth, np.zeros((0, 4))) == 0.0
    assert box_quality(truth, truth) == pytest.approx(1.0)
    # one box found with IoU 50/100 (half width), the other missed: 0.5 / max(1, 2)
    assert box_quality([[0, 0, 5, 10]], truth) == pytest.approx(0.25)
    # a false positive far away lowers it as a miss does: (1 + 1) / 3
    assert box_quality([*truth, [50, 50, 60, 60]], torch.tensor(truth, dtype=torch.float32)) == pytest.approx(2 / 3)


# ----------------------------------------------------------------------------------------------- segmentation


def _seg_case():
    pred = np.zeros((4, 1, 5, 5))
    target = np.zeros((4, 1, 5, 5))
    # image 0: empty / empty
    pred[1, 0, 0, :3] = target[1, 0, 0, :3] = 1  # image 1: perfect
    target[2, 0, 1, :] = 1  # image 2: empty prediction, non-empty truth
    pred[3, 0, 0, :4] = 1  # image 3: |P| = 4
    target[3, 0, 0, 1:4] = 1
    target[3, 0, 1, 0:2] = 1  # |T| = 5, |P & T| = 3
    return pred, target


def test_dice_hand_computed():
    pred, target = _seg_case()
    d = dice_per_image(pred, target)
    np.testing.assert_allclose(d, [1.0, 1.0, 0.0, 2 * 3 / (4 + 5)], atol=1e-12)
    out = segmentation_metrics(torch.tensor(pred), torch.tensor(target))
    assert set(out) == {"segmentation/dice_positive", "segmentation/dice_empty_aware"}
    assert abs(out["segmentation/dice_positive"] - (1.0 + 0.0 + 2 / 3) / 3) < 1e-12  # image 0 excluded
    assert abs(out["segmentation/dice_empty_aware"] - (1.0 + 1.0 + 0.0 + 2 / 3) / 4) < 1e-12
    # non-empty prediction on an empty truth scores 0 in the empty-aware mean and is excluded from dice_positive
    out = segmentation_metrics(target[2:3], np.zeros((1, 1, 5, 5)))
    assert out["segmentation/dice_empty_aware"] == 0.0
    assert math.isnan(out["segmentation/dice_positive"])
    # leading shape (N, H, W), float masks thresholded at 0.5, bool masks
    assert dice_per_image(pred[:, 0] * 0.9, target[:, 0].astype(bool))[3] == pytest.approx(2 / 3, abs=1e-12)
    with pytest.raises(ValueError):
        dice_per_image(pred, target[:, :, :4])
    with pytest.raises(ValueError):
        dice_per_image(pred, target.reshape(4, 25))  # same size, different shape


def test_dice_agrees_with_monai_compute_dice():
    from monai.metrics import compute_dice

    rng = np.random.default_rng(0)
    pred = rng.random((12, 1, 8, 8)) < rng.random((12, 1, 1, 1))
    target = rng.random((12, 1, 8, 8)) < rng.random((12, 1, 1, 1)) * 0.5
    pred[:3] = False
    target[:2] = False  # images 0, 1 empty/empty; image 2 empty prediction
    ref = (
        compute_dice(
            torch.tensor(pred).float(), torch.tensor(target).float(), include_background=True, ignore_empty=False
        )
        .reshape(-1)
        .numpy()
    )
    np.testing.assert_allclose(dice_per_image(pred, target), ref, atol=1e-6)


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_dice_symmetric_and_bounded(seed):
    rng = np.random.default_rng(seed)
    a = rng.random((3, 4, 4)) < rng.random()
    b = rng.random((3, 4, 4)) < rng.random()
    d = dice_per_image(a, b)
    np.testing.assert_array_equal(d, dice_per_image(b, a))
    assert np.all((d >= 0) & (d <= 1))
    np.testing.assert_array_equal(dice_per_image(a, a), np.ones(3))


# ----------------------------------------------------------------------------------------------- detection


def _pycoco_ap(preds, truths):
    """AP per COCO IoU threshold (0.50:0.05:0.95) from pycocotools, area 'all', maxDets 100."""
    pycoco = pytest.importorskip("pycocotools.coco")
    pycocoeval = pytest.importorskip("pycocotools.cocoeval")
    images = [{"id": i + 1, "width": 1000, "height": 1000} for i in range(len(truths))]
    anns = []
    for i, g in enumerate(truths):
        for b in np.asarray(g, dtype=float).reshape(-1, 4):
            w, h = b[2] - b[0], b[3] - b[1]
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i + 1,
                    "category_id": 1,
                    "iscrowd": 0,
                    "bbox": [b[0], b[1], w, h],
                    "area": w * h,
                }
            )
    dets = [
        {"image_id": i + 1, "category_id": 1, "score": float(s), "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]]}
        for i, p in enumerate(preds)
        for b, s in zip(np.asarray(p["boxes"], dtype=float), p["scores"])
    ]
    with contextlib.redirect_stdout(io.StringIO()):
        gt = pycoco.COCO()
        gt.dataset = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "lesion"}]}
        gt.createIndex()
        ev = pycocoeval.COCOeval(gt, gt.loadRes(dets), "bbox")
        ev.evaluate()
        ev.accumulate()
    assert ev.params.maxDets[2] == 100 and ev.params.areaRngLbl[0] == "all"
    return ev.eval["precision"][:, :, 0, 0, 2].mean(axis=1)


def _random_detection_case(rng, integer):
    preds, truths = [], []
    for _ in range(int(rng.integers(1, 7))):
        n_gt = int(rng.integers(0, 4))
        xy = rng.uniform(0, 80, (n_gt, 2))
        gt = np.concatenate([xy, xy + rng.uniform(5, 30, (n_gt, 2))], 1)
        found = rng.random(n_gt) < 0.8
        pb = gt[found] + rng.normal(0, 3, (int(found.sum()), 4))  # jittered truths
        n_fp = int(rng.integers(0, 3))
        fxy = rng.uniform(0, 80, (n_fp, 2))
        pb = np.concatenate([pb, np.concatenate([fxy, fxy + rng.uniform(5, 30, (n_fp, 2))], 1)])
        if integer:
            gt, pb = np.round(gt), np.round(pb)
        pb[:, 2:] = np.maximum(pb[:, 2:], pb[:, :2] + 1)
        scores = rng.choice([0.2, 0.5, 0.9], len(pb)) if rng.random() < 0.5 else rng.random(len(pb))  # ties
        preds.append({"boxes": pb, "scores": scores})
        truths.append(gt.reshape(-1, 4))
    return preds, truths


@pytest.fixture(autouse=True)
def _quiet_monai_coco(caplog):
    caplog.set_level(logging.ERROR)


@pytest.mark.parametrize("seed", range(24))
def test_ap_and_map_match_pycocotools(seed):
    rng = np.random.default_rng(seed)
    preds, truths = _random_detection_case(rng, integer=seed % 2 == 0)
    while sum(len(t) for t in truths) == 0 or sum(len(p["boxes"]) for p in preds) == 0:
        preds, truths = _random_detection_case(rng, integer=seed % 2 == 0)
    ref = _pycoco_ap(preds, truths)
    assert abs(average_precision(preds, truths, iou_threshold=0.5) - ref[0]) < 1e-6
    assert abs(average_precision(preds, truths, iou_threshold=0.75) - ref[5]) < 1e-6
    out = coco_map(preds, truths)
    assert abs(out["localization/ap50"] - ref[0]) < 1e-6
    assert abs(out["localization/ap75"] - ref[5]) < 1e-6
    assert abs(out["localization/map"] - ref.mean()) < 1e-6


def test_box_iou_float64_agrees_with_monai():
    from monai.data.box_utils import box_iou

    rng = np.random.default_rng(1)
    a = rng.uniform(0, 50, (7, 2))
    a = np.concatenate([a, a + rng.uniform(1, 20, (7, 2))], 1)
    b = rng.uniform(0, 50, (5, 2))
    b = np.concatenate([b, b + rng.uniform(1, 20, (5, 2))], 1)
    np.testing.assert_allclose(box_iou_float64(a, b), box_iou(a, b), atol=1e-6)
    assert box_iou_float64(np.zeros((0, 4)), b).shape == (0, 5)
    assert box_iou_float64(torch.tensor([[0.0, 0, 10, 1]]), np.array([[0.0, 0, 7, 1]]))[0, 0] == 0.7


def test_monai_float32_discrepancies_are_avoided():
    """MONAI's box_iou (float32) puts IoU 7/10 just below 0.7, and MONAI's COCOMetric (float32 counts) puts recall
    9/10 just below the 0.9 recall level; pycocotools does neither, and neither does coco_map."""
    from monai.apps.detection.metrics.coco import COCOMetric
    from monai.apps.detection.metrics.matching import matching_batch
    from monai.data.box_utils import box_iou

    # 1) IoU exactly 0.7 with integer pixel boxes
    preds, truths = [{"boxes": np.array([[0.0, 0, 7, 1]]), "scores": np.array([0.9])}], [np.array([[0.0, 0, 10, 1]])]
    ref = _pycoco_ap(preds, truths)
    assert ref[4] == pytest.approx(1.0, abs=1e-12) and ref[5] == 0.0  # matched at 0.70, not at 0.75
    assert float(box_iou(preds[0]["boxes"], truths[0])[0, 0]) < 0.7  # MONAI: 0.69999999
    assert average_precision(preds, truths, iou_threshold=0.7) == pytest.approx(1.0, abs=1e-12)
    assert abs(coco_map(preds, truths)["localization/map"] - ref.mean()) < 1e-12

    # 2) 10 truths; ranked detections TP x 9, FP, TP: precision at recall 0.9 is 1 (pycocotools)
    truths = [np.array([[0.0, 0, 10, 10]]) for _ in range(10)]
    preds = [{"boxes": np.array([[0.0, 0, 10, 10]]), "scores": np.array([1.0 - 0.01 * i])} for i in range(9)]
    preds.append({"boxes": np.array([[50.0, 50, 60, 60], [0, 0, 10, 10]]), "scores": np.array([0.5, 0.4])})
    ref = _pycoco_ap(preds, truths)
    expected = (91 * 1.0 + 10 * (10 / 11)) / 101  # recall levels 0..0.90 at precision 1, 0.91..1.0 at 10/11
    assert abs(ref[0] - expected) < 1e-12
    metric = COCOMetric(
        classes=["l"],
        iou_list=(0.5,),
        iou_range=(0.5, 0.95, 0.05),
        max_detection=(100,),
        per_class=False,
        verbose=False,
    )
    res = matching_batch(
        box_iou_float64,
        metric.iou_thresholds,
        [p["boxes"] for p in preds],
        [np.zeros(len(p["boxes"]), int) for p in preds],
        [p["scores"] for p in preds],
        truths,
        [np.zeros(1, int)] * 10,
    )
    monai_ap50 = metric(res)[0]["AP_IoU_0.50_MaxDet_100"]
    assert monai_ap50 < expected - 1e-4  # MONAI reads precision 10/11 at recall 0.90
    out = coco_map(preds, truths)
    assert abs(out["localization/ap50"] - expected) < 1e-12
    assert abs(out["localization/map"] - ref.mean()) < 1e-12
    assert abs(average_precision(preds, truths) - expected) < 1e-12


def test_ap_edge_cases():
    empty = {"boxes": np.zeros((0, 4)), "scores": np.zeros(0)}
    box = np.array([[10.0, 10, 30, 40]])
    # no truths and no predictions anywhere: undefined
    assert math.isnan(average_precision([empty, empty], [np.zeros((0, 4))] * 2))
    out = detection_metrics([empty], [np.zeros((0, 4))])
    assert out.pop("localization/boxes_per_negative") == 0.0  # one negative image, no box on it
    assert all(math.isnan(v) for v in out.values())
    # predictions but no truths: 0
    assert average_precision([{"boxes": box, "scores": np.array([0.9])}], [np.zeros((0, 4))]) == 0.0
    assert coco_map([{"boxes": box, "scores": np.array([0.9])}], [np.zeros((0, 4))])["localization/map"] == 0.0
    # truths but no predictions: 0
    assert average_precision([empty], [box]) == 0.0
    assert coco_map([empty], [box]) == {"localization/map": 0.0, "localization/ap50": 0.0, "localization/ap75": 0.0}
    # one perfect prediction (torch input)
    perfect = [{"boxes": torch.tensor(box), "scores": torch.tensor([0.3])}]
    assert average_precision(perfect, [torch.tensor(box)]) == pytest.approx(1.0, abs=1e-12)  # 1/(1+eps)
    out = detection_metrics(perfect, [box])
    assert math.isnan(out.pop("localization/boxes_per_negative"))  # no negative image
    assert out == pytest.approx(
        {
            "localization/ap50": 1.0,
            "localization/map": 1.0,
            "localization/rsna": 1.0,
            "localization/sensitivity50": 1.0,
        },
        abs=1e-12,
    )
    # tied scores across and within images: ranking img0 TP, img1 FP, img1 TP
    b2 = np.array([[50.0, 50, 70, 80]])
    preds = [
        {"boxes": box, "scores": np.array([0.5])},
        {"boxes": np.concatenate([np.array([[0.0, 0, 5, 5]]), b2]), "scores": np.array([0.5, 0.5])},
    ]
    truths = [box, b2]
    expected = (51 * 1.0 + 50 * (2 / 3)) / 101
    assert abs(average_precision(preds, truths) - expected) < 1e-12
    assert abs(_pycoco_ap(preds, truths)[0] - expected) < 1e-12
    assert abs(coco_map(preds, truths)["localization/ap50"] - expected) < 1e-12
    with pytest.raises(ValueError):
        average_precision([{"boxes": box, "scores": np.array([0.1, 0.2])}], [box])
    with pytest.raises(ValueError):
        average_precision([empty], [box, box])


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_ap_is_one_for_exact_predictions(seed):
    rng = np.random.default_rng(seed)
    truths, preds = [], []
    for _ in range(int(rng.integers(1, 4))):
        n = int(rng.integers(0, 4))
        xy = rng.uniform(0, 100, (n, 2))
        g = np.concatenate([xy, xy + rng.uniform(1, 40, (n, 2))], 1)
        truths.append(g)
        preds.append({"boxes": g.copy(), "scores": rng.choice([0.1, 0.5, rng.random()], n)})
    if sum(len(g) for g in truths) == 0:
        truths[0] = np.array([[0.0, 0, 10, 10]])
        preds[0] = {"boxes": truths[0].copy(), "scores": np.array([0.2])}
    out = detection_metrics(preds, truths)
    assert out["localization/ap50"] == pytest.approx(1.0, abs=1e-12)
    assert out["localization/map"] == pytest.approx(1.0, abs=1e-12)
    assert out["localization/rsna"] == pytest.approx(1.0, abs=1e-12)


# ----------------------------------------------------------------------------------------------- RSNA


def test_rsna_hand_computed():
    t1, t2 = [10.0, 10, 30, 30], [50.0, 50, 80, 90]
    fp = [100.0, 100, 120, 120]
    img_a = ({"boxes": np.array([t1, fp]), "scores": np.array([0.9, 0.8])}, np.array([t1, t2]))  # TP=FP=FN=1
    img_b = ({"boxes": np.array([fp]), "scores": np.array([0.5])}, np.zeros((0, 4)))  # no truth, prediction: 0
    img_c = ({"boxes": np.zeros((0, 4)), "scores": np.zeros(0)}, np.zeros((0, 4)))  # skipped
    img_d = ({"boxes": np.zeros((0, 4)), "scores": np.zeros(0)}, np.array([t1]))  # truth, no prediction: 0

    def score(*imgs):
        return rsna_metric([p for p, _ in imgs], [t for _, t in imgs])

    assert abs(score(img_a) - 1 / 3) < 1e-12
    assert score(img_b) == 0.0
    assert score(img_d) == 0.0
    assert math.isnan(score(img_c))
    assert abs(score(img_a, img_b, img_c) - (1 / 3 + 0.0) / 2) < 1e-12
    assert abs(score(img_c, img_a, img_d) - (1 / 3) / 2) < 1e-12


def test_rsna_strict_iou_threshold():
    truth = np.array([[0.0, 0, 10, 10]])
    pred = {"boxes": np.array([[0.0, 0, 6, 10]]), "scores": np.array([0.7])}  # IoU exactly 0.6
    assert box_iou_float64(pred["boxes"], truth)[0, 0] == 0.6
    # hit for t in {0.40, 0.45, 0.50, 0.55} (score 1), miss for t in {0.60, ..., 0.75} (TP 0, FP 1, FN 1: 0)
    assert abs(rsna_metric([pred], [truth]) - 4 / 8) < 1e-12
    assert rsna_metric([pred], [truth], thresholds=[0.6]) == 0.0
    assert rsna_metric([pred], [truth], thresholds=[0.59]) == 1.0
    # IoU exactly 0.5 (COCO's ">=" would count it at 0.5): hits for 0.40 and 0.45 only
    pred_half = {"boxes": np.array([[0.0, 0, 5, 10]]), "scores": np.array([0.7])}
    assert abs(rsna_metric([pred_half], [truth]) - 2 / 8) < 1e-12


def test_rsna_greedy_by_score():
    # the higher-scoring prediction takes the truth; the other one is a false positive
    truth = np.array([[0.0, 0, 10, 10]])
    preds = {"boxes": np.array([[0.0, 0, 10, 10], [0.0, 0, 10, 9]]), "scores": np.array([0.2, 0.9])}
    # second box (IoU 0.9) is taken first -> at every threshold TP 1, FP 1: 1/2
    assert abs(rsna_metric([preds], [truth]) - 0.5) < 1e-12
    # two truths: each prediction takes its own
    truths = np.array([[0.0, 0, 10, 10], [20.0, 20, 30, 30]])
    preds = {"boxes": np.array([[20.0, 20, 30, 30], [0.0, 0, 10, 10]]), "scores": np.array([0.5, 0.5])}
    assert rsna_metric([preds], [truths]) == 1.0


# ----------------------------------------------------------------------------------------------- operating point
def _brute_force_box_threshold(preds, truths):
    """Independent: RSNA metric of the boxes above every candidate threshold, by :func:`rsna_metric` itself."""
    scores = sorted({float(s) for p in preds for s in np.asarray(p["scores"]).reshape(-1)}, reverse=True)
    best_t, best = None, -1.0
    for t in [1.0, *scores]:  # 1.0: no box at all (the scores drawn here are < 1)
        kept = [
            {
                "boxes": np.asarray(p["boxes"]).reshape(-1, 4)[np.asarray(p["scores"]) >= t],
                "scores": np.asarray(p["scores"])[np.asarray(p["scores"]) >= t],
            }
            for p in preds
        ]
        v = rsna_metric(kept, truths)
        v = -1.0 if math.isnan(v) else v
        if v > best + 1e-12:  # strictly better only: the highest threshold wins ties
            best_t, best = t, v
    return best_t, best


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_choose_box_threshold_matches_brute_force(seed):
    from monai_mcx.metrics import NO_BOX_THRESHOLD, choose_box_threshold

    rng = np.random.default_rng(seed)
    preds, truths = [], []
    for _ in range(int(rng.integers(1, 6))):
        g = int(rng.integers(0, 3))
        xy = rng.uniform(0, 60, (g, 2))
        gt = np.concatenate([xy, xy + rng.uniform(5, 30, (g, 2))], 1)
        n = int(rng.integers(0, 6))
        base = gt[rng.integers(0, g, n)] if g else rng.uniform(0, 60, (n, 4))
        pb = base + rng.normal(0, 4, (n, 4))
        pb = np.concatenate([np.minimum(pb[:, :2], pb[:, 2:]), np.maximum(pb[:, :2], pb[:, 2:]) + 1], 1)
        preds.append({"boxes": pb, "scores": rng.choice([0.2, 0.5, 0.9, rng.random()], n)})
        truths.append(gt)
    t, v = choose_box_threshold(preds, truths)
    bt, bv = _brute_force_box_threshold(preds, truths)
    if bv < 0:  # neither truths nor predictions
        assert t == NO_BOX_THRESHOLD and math.isnan(v)
        return
    assert v == pytest.approx(bv, abs=1e-12)
    assert t == pytest.approx(bt, abs=0)
    kept = [
        {
            "boxes": np.asarray(p["boxes"])[np.asarray(p["scores"]) >= t],
            "scores": np.asarray(p["scores"])[np.asarray(p["scores"]) >= t],
        }
        for p in preds
    ]
    assert (
        rsna_metric(kept, truths) == pytest.approx(v, abs=1e-12)
        if sum(len(k["boxes"]) for k in kept) or sum(map(len, truths))
        else True
    )


def test_choose_box_threshold_drops_false_positives():
    from monai_mcx.metrics import choose_box_threshold

    truth = np.array([[10.0, 10, 30, 30]])
    # one good box (0.8), then a false positive at 0.6 and one on a negative image at 0.7
    preds = [
        {"boxes": np.array([[10.0, 10, 30, 30], [40, 40, 50, 50]]), "scores": np.array([0.8, 0.6])},
        {"boxes": np.array([[5.0, 5, 15, 15]]), "scores": np.array([0.7])},
    ]
    truths = [truth, np.zeros((0, 4))]
    t, v = choose_box_threshold(preds, truths)
    assert t == 0.8 and v == pytest.approx(1.0)
    # the negative image's box scores above the true box: keeping the good one costs the negative image
    preds[1]["scores"] = np.array([0.9])
    t, v = choose_box_threshold(preds, truths)
    assert t == 0.8 and v == pytest.approx(0.5)  # (1 + 0) / 2 beats no box (0), 0.9 (0) and 0.6 ((1/2 + 0) / 2)


def test_operating_point_metrics_hand_computed():
    from monai_mcx.metrics import operating_point_metrics

    truths = [np.array([[0.0, 0, 10, 10], [20, 20, 30, 30]]), np.zeros((0, 4)), np.zeros((0, 4))]
    preds = [
        {
            "boxes": np.array([[0.0, 0, 10, 10], [21, 21, 31, 31], [50, 50, 60, 60]]),
            "scores": np.array([0.9, 0.4, 0.2]),
        },
        {"boxes": np.array([[0.0, 0, 5, 5], [1, 1, 6, 6]]), "scores": np.array([0.5, 0.1])},
        {"boxes": np.zeros((0, 4)), "scores": np.zeros(0)},
    ]
    # IoU([21,21,31,31], [20,20,30,30]) = 81 / 119 = 0.68 >= 0.5
    m = operating_point_metrics(preds, truths, 0.3)
    assert m["localization/sensitivity50"] == 1.0
    assert m["localization/boxes_per_negative"] == pytest.approx(1 / 2)  # image 1: one box >= 0.3, image 2: none
    m = operating_point_metrics(preds, truths, 0.5)
    assert m["localization/sensitivity50"] == 0.5 and m["localization/boxes_per_negative"] == 0.5
    m = operating_point_metrics(preds, truths, 0.0)
    assert m["localization/boxes_per_negative"] == 1.0
    # RSNA at 0.5: image 0 TP=1 FN=1 at every threshold -> 1/2; image 1 one FP -> 0; image 2 skipped
    assert operating_point_metrics(preds, truths, 0.5)["localization/rsna"] == pytest.approx((0.5 + 0.0) / 2)
