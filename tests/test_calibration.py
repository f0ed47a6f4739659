"""Tests of monai_mcx.metrics.calibration and monai_mcx.metrics.operating_points against scikit-learn."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from monai_mcx.metrics import (
    TemperatureScaling,
    binary_nll,
    brier_score,
    calibration_metrics,
    class_operating_points,
    expected_calibration_error,
    fit_temperature,
    logits_from_probs,
    operating_points,
    reliability_curve,
    roc_auc,
    threshold_for_sensitivity,
)
from monai_mcx.visualize import save_reliability_diagram

sklearn_metrics = pytest.importorskip("sklearn.metrics")
sklearn_calibration = pytest.importorskip("sklearn.calibration")


def _overconfident(n: int, scale: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from sigmoid(z); the 'model' reports scale * z (scale > 1: over-confident)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.5, n)
    y = (rng.random(n) < 1 / (1 + np.exp(-z))).astype(float)
    return scale * z, y


# ----------------------------------------------------------------------------------------------- calibration


def test_temperature_scaling_lowers_nll_and_keeps_auc():
    logits, y = _overconfident(4000, scale=4.0)
    t = fit_temperature(logits, y)
    assert 3.3 < t < 4.8  # the true temperature is 4
    raw = 1 / (1 + np.exp(-logits))
    cal = TemperatureScaling(["c"], [t]).probabilities(logits[:, None])[:, 0]
    assert binary_nll(cal, y) < binary_nll(raw, y) - 0.1
    assert expected_calibration_error(cal, y) < expected_calibration_error(raw, y)
    assert abs(roc_auc(cal, y) - roc_auc(raw, y)) < 1e-12  # ranking unchanged
    # an under-confident model gets T < 1
    logits_u, y_u = _overconfident(4000, scale=0.3, seed=1)
    assert fit_temperature(logits_u, y_u) < 0.5


def test_fitted_temperature_matches_logistic_regression_without_intercept():
    """Independent fit: sklearn's logistic regression on the single feature z without intercept and without
    penalty finds a = 1 / T."""
    from sklearn.linear_model import LogisticRegression

    logits, y = _overconfident(2000, scale=2.5, seed=3)
    lr = LogisticRegression(fit_intercept=False, C=np.inf, tol=1e-10, max_iter=1000).fit(logits[:, None], y)
    assert abs(fit_temperature(logits, y) - 1 / lr.coef_[0, 0]) < 1e-3


def test_temperature_scaling_per_class_unknown_labels_and_round_trip():
    l0, y0 = _overconfident(1000, 3.0, seed=4)
    l1, y1 = _overconfident(1000, 0.5, seed=5)
    logits = np.stack([l0, l1], 1)
    labels = np.stack([y0, y1], 1)
    labels[:300, 1] = np.nan  # unknown labels are left out of class 1's fit
    ts = TemperatureScaling.fit(logits, labels, ["a", "b"])
    assert abs(ts.temperatures[0] - fit_temperature(l0, y0)) < 1e-9
    assert abs(ts.temperatures[1] - fit_temperature(l1[300:], y1[300:])) < 1e-9
    # torch in, torch out, on the same device / dtype
    zt = torch.tensor(logits, dtype=torch.float32)
    pt = ts.probabilities(zt)
    assert isinstance(pt, torch.Tensor) and pt.dtype == torch.float32
    assert np.allclose(pt.numpy(), ts.probabilities(logits), atol=1e-6)
    again = TemperatureScaling.from_dict(ts.to_dict(), ["a", "b"])
    assert again.temperatures == ts.temperatures
    assert TemperatureScaling.from_dict(None, ["a"]).temperatures == [1.0]
    with pytest.raises(ValueError, match="model.json: calibration has no temperature"):
        TemperatureScaling.from_dict(ts.to_dict(), ["a", "c"], source="model.json")
    with pytest.raises(ValueError, match="> 0"):
        TemperatureScaling(["a"], [0.0])
    # one label value only: nothing to fit
    assert fit_temperature([1.0, 2.0, 3.0], [1, 1, 1]) == 1.0


def test_brier_nll_reliability_match_sklearn():
    rng = np.random.default_rng(0)
    p = rng.random(500)
    y = (rng.random(500) < p**1.5).astype(int)
    assert abs(brier_score(p, y) - sklearn_metrics.brier_score_loss(y, p)) < 1e-12
    assert abs(binary_nll(p, y) - sklearn_metrics.log_loss(y, p)) < 1e-9
    mean_p, frac, count = reliability_curve(p, y, n_bins=10)
    prob_true, prob_pred = sklearn_calibration.calibration_curve(y, p, n_bins=10, strategy="uniform")
    assert np.allclose(mean_p, prob_pred) and np.allclose(frac, prob_true)
    assert count.sum() == 500
    # the ECE is the count-weighted gap of the same bins
    assert abs(np.sum(count / 500 * np.abs(frac - mean_p)) - expected_calibration_error(p, y)) < 1e-12
    assert np.allclose(logits_from_probs([0.5, 0.8]), [0.0, math.log(4)])


def test_calibration_metrics_keys_and_values(tmp_path):
    l0, y0 = _overconfident(800, 3.0, seed=7)
    logits, labels = l0[:, None], y0[:, None]
    ts = TemperatureScaling.fit(logits, labels, ["pneumonia"])
    out = calibration_metrics(logits, labels, ["pneumonia"], ts)
    raw, cal = 1 / (1 + np.exp(-l0)), ts.probabilities(logits)[:, 0]
    assert out["calibration/temperature/pneumonia"] == ts.temperatures[0]
    assert abs(out["calibration/brier/pneumonia/raw"] - sklearn_metrics.brier_score_loss(y0, raw)) < 1e-12
    assert abs(out["calibration/brier/pneumonia"] - sklearn_metrics.brier_score_loss(y0, cal)) < 1e-12
    assert out["calibration/nll"] < out["calibration/nll/raw"]
    assert out["calibration/ece"] < out["calibration/ece/raw"]
    path = tmp_path / "plots" / "reliability_pneumonia.png"
    save_reliability_diagram(path, y0, raw, cal, class_name="pneumonia")
    from PIL import Image

    assert Image.open(path).size[0] > 100


# ----------------------------------------------------------------------------------------------- operating points


@pytest.mark.parametrize("seed", range(6))
def test_threshold_for_sensitivity_matches_roc_curve(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 300)
    y[:2] = [0, 1]
    p = np.round(np.clip(0.3 * y + 0.7 * rng.random(300), 0, 1), 2 if seed % 2 else 6)
    fpr, tpr, thr = sklearn_metrics.roc_curve(y, p, drop_intermediate=False)
    for target in (0.9, 0.95, 1.0):
        t = threshold_for_sensitivity(p, y, target)
        ref = thr[np.argmax(tpr >= target - 1e-12)]
        assert t == pytest.approx(ref)
        assert sklearn_metrics.recall_score(y, p >= t) >= target - 1e-12
    assert math.isnan(threshold_for_sensitivity([0.2, 0.3], [0, 0], 0.9))


def test_operating_points_match_sklearn_and_ci_contains_the_estimate():
    rng = np.random.default_rng(0)
    n = 400
    y = rng.integers(0, 2, n)
    p = np.clip(0.35 * y + 0.65 * rng.random(n), 0, 1)
    patients = [f"p{i // 2}" for i in range(n)]
    res = operating_points(p, y, {"chosen": 0.5, "sens90": threshold_for_sensitivity(p, y, 0.9)}, patients, n_boot=500)
    for name, row in res.items():
        pred = p >= row["threshold"]
        tn, fp, fn, tp = sklearn_metrics.confusion_matrix(y, pred, labels=[0, 1]).ravel()
        assert row["sensitivity"] == pytest.approx(sklearn_metrics.recall_score(y, pred))
        assert row["specificity"] == pytest.approx(tn / (tn + fp))
        for m in ("sensitivity", "specificity"):
            assert row[f"{m}_low"] <= row[m] <= row[f"{m}_high"], (name, m, row)
            assert row[f"{m}_high"] - row[f"{m}_low"] > 0
        assert row["n_patients"] == 200
    assert res["sens90"]["sensitivity"] >= 0.9
    # same seed, same interval
    again = operating_points(p, y, {"chosen": 0.5}, patients, n_boot=500)
    assert again["chosen"]["sensitivity_low"] == res["chosen"]["sensitivity_low"]


def test_bootstrap_ci_narrows_with_more_data():
    def width(n):
        rng = np.random.default_rng(1)
        y = rng.integers(0, 2, n)
        p = np.clip(0.3 * y + 0.7 * rng.random(n), 0, 1)
        row = operating_points(p, y, {"t": 0.5}, n_boot=400)["t"]
        return row["sensitivity_high"] - row["sensitivity_low"]

    w_small, w_large = width(100), width(4000)
    assert w_large < 0.3 * w_small  # ~ 1 / sqrt(40)


def test_bootstrap_resamples_patients_not_images():
    """Five identical images per patient carry the information of one: the patient bootstrap gives the interval of
    one image per patient (same seed), while treating images as independent would give a ~sqrt(5) narrower one."""
    rng = np.random.default_rng(2)
    n_pat = 150
    y1 = rng.integers(0, 2, n_pat)
    p1 = np.clip(0.3 * y1 + 0.7 * rng.random(n_pat), 0, 1)
    y5, p5 = np.repeat(y1, 5), np.repeat(p1, 5)
    pats5 = np.repeat(np.arange(n_pat), 5)
    one = operating_points(p1, y1, {"t": 0.5}, np.arange(n_pat), n_boot=400)["t"]
    grouped = operating_points(p5, y5, {"t": 0.5}, pats5, n_boot=400)["t"]
    naive = operating_points(p5, y5, {"t": 0.5}, None, n_boot=400)["t"]
    assert grouped["sensitivity"] == one["sensitivity"]
    assert grouped["sensitivity_low"] == pytest.approx(one["sensitivity_low"])
    assert grouped["sensitivity_high"] == pytest.approx(one["sensitivity_high"])
    w_group = grouped["sensitivity_high"] - grouped["sensitivity_low"]
    w_naive = naive["sensitivity_high"] - naive["sensitivity_low"]
    assert w_naive < 0.7 * w_group


def test_operating_point_metrics_keys_and_validation_thresholds():
    rng = np.random.default_rng(3)
    n = 300
    y = rng.integers(0, 2, (n, 2)).astype(float)
    p = np.clip(0.3 * y + 0.7 * rng.random((n, 2)), 0, 1)
    y[:50, 1] = np.nan  # unknown labels are left out
    out = class_operating_points(
        p, y, ["a", "b"], thresholds=[0.5, 0.6], patients=[str(i) for i in range(n)], n_boot=200
    )
    for c in ("a", "b"):
        for m in ("sensitivity", "specificity"):
            for suffix in ("", "/ci_low", "/ci_high"):
                assert f"classification/{m}/{c}{suffix}" in out
                for op in ("sens90", "sens95"):
                    assert f"classification/{op}/{m}/{c}{suffix}" in out
        for op in ("sens90", "sens95"):
            assert f"classification/{op}/threshold/{c}" in out
    # the point estimates at the chosen thresholds are classification_metrics' values
    from monai_mcx.metrics import classification_metrics

    ref = classification_metrics(p[:, :1], y[:, :1], ["a"], threshold=0.5)
    assert out["classification/sensitivity/a"] == pytest.approx(ref["classification/sensitivity/a"])
    assert out["classification/specificity/a"] == pytest.approx(ref["classification/specificity/a"])
    assert out["classification/n_patients/b"] == 250
    assert out["classification/sens95/sensitivity/a"] >= 0.95  # chosen on these data
    # thresholds chosen on validation are used as given
    given = {"a": {"sens90": 0.2, "sens95": 0.1}, "b": {"sens90": 0.3, "sens95": 0.15}}
    out2 = class_operating_points(p, y, ["a", "b"], 0.5, target_thresholds=given, n_boot=50)
    assert out2["classification/sens90/threshold/b"] == 0.3
    known = ~np.isnan(y[:, 1])
    assert out2["classification/sens90/sensitivity/b"] == pytest.approx(
        sklearn_metrics.recall_score(y[known, 1], p[known, 1] >= 0.3)
    )
