"""Calibration and operating points wired into the bundle: post-processor, MultiTaskMetrics, the model description,
the report, evaluate.json and inference.json (issue 14, items 3 and 4)."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch

from conftest import SMALL, run_bundle

CLASSES = ["pneumonia"]


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-np.asarray(z, dtype=np.float64)))


def _overconfident(n: int, scale: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from sigmoid(z); the 'model' outputs the logit scale * z (over-confident for scale > 1)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.5, n)
    y = (rng.random(n) < _sigmoid(z)).astype(np.float32)
    return scale * z, y


def _batches(logits: np.ndarray, labels: np.ndarray, pp, patients=None, batch: int = 64):
    """(pred, targets) batches as the evaluator hands them to MultiTaskMetrics: ``pp`` post-processes the logits."""
    n = len(logits)
    for s in range(0, n, batch):
        z = torch.as_tensor(logits[s : s + batch], dtype=torch.float32).reshape(-1, 1)
        images = torch.zeros(len(z), 1, 8, 8)
        pred = pp({"class_logits": z}, images)
        targets = {
            "image": images,
            "label": torch.as_tensor(labels[s : s + batch]).reshape(-1, 1),
            "has_label": torch.ones(len(z)),
        }
        if patients is not None:
            targets["patient"] = list(patients[s : s + batch])
        yield pred, targets


def _metrics(logits, labels, pp, patients=None, **kwargs):
    from monai_mcx.handlers import MultiTaskMetrics

    m = MultiTaskMetrics(CLASSES, postprocessor=pp, **kwargs)
    m.reset()
    for out in _batches(logits, labels, pp, patients):
        m.update(out)
    return m, m.compute()


# ----------------------------------------------------------------------------------------------- post-processor


def test_postprocessor_applies_the_description_calibration():
    from monai_mcx.inferers import MultiCheXNetPostprocessor
    from monai_mcx.model import ModelDescription

    desc = ModelDescription(
        class_names=["a", "b"], tasks=["classification"], encoder="densenet-tiny", spatial_size=[8, 8]
    )
    desc = desc.with_thresholds({"a": 0.3, "b": 0.6}, "youden", "validation").with_calibration(
        {"a": 2.0, "b": 0.5}, "validation", 10
    )
    assert desc.calibration["method"] == "temperature" and desc.calibration["fitted_on"] == 10
    pp = MultiCheXNetPostprocessor.from_description(desc)
    assert pp.calibrated and pp.settings()["calibration"]["temperatures"] == {"a": 2.0, "b": 0.5}
    z = torch.tensor([[1.0, -0.5], [-2.0, 0.4], [0.7, 0.1]])
    pred = pp({"class_logits": z}, torch.zeros(3, 1, 8, 8))
    expected = _sigmoid(z.numpy() / np.array([2.0, 0.5]))
    assert np.allclose(pred["class_probs"].numpy(), expected, atol=1e-6)
    assert np.allclose(pred["class_probs_raw"].numpy(), _sigmoid(z.numpy()), atol=1e-6)
    # the gate is taken on the calibrated probabilities with the thresholds chosen on them
    assert pred["gate"].tolist() == ((expected >= [0.3, 0.6]).any(axis=1)).tolist()
    assert pp.to_original(pred, 0, [8, 8])["class_probs"] == pytest.approx(expected[0], abs=1e-6)
    raw = pp.with_settings(calibration=False)
    assert not raw.calibrated
    assert np.allclose(raw({"class_logits": z}, torch.zeros(3, 1, 8, 8))["class_probs"].numpy(), _sigmoid(z.numpy()))
    # a calibration that does not cover the classes is an error naming the problem
    with pytest.raises(Exception, match="calibration"):
        desc.replace(calibration={"method": "temperature", "temperatures": {"a": 1.0}})


# ----------------------------------------------------------------------------------------------- metrics


def test_validation_fits_temperature_on_raw_logits_and_refit_ignores_a_stored_calibration():
    from monai_mcx.inferers import MultiCheXNetPostprocessor
    from monai_mcx.metrics import fit_temperature

    logits, y = _overconfident(1500, scale=4.0)
    plain = MultiCheXNetPostprocessor(CLASSES)
    m1, out1 = _metrics(logits, y, plain, calibration="temperature", threshold="youden", n_boot=100)
    t = out1["calibration/temperature/pneumonia"]
    assert t == pytest.approx(fit_temperature(logits.astype(np.float32), y), rel=1e-6)  # fitted on the raw logits
    assert 3.0 < t < 5.0
    assert out1["calibration/fitted_on"] == 1500
    assert out1["calibration/nll/pneumonia"] < out1["calibration/nll/pneumonia/raw"] - 0.05
    assert out1["calibration/ece/pneumonia"] < out1["calibration/ece/pneumonia/raw"]
    # the brier key is sklearn's brier_score_loss of sigmoid(z / T)
    sk = pytest.importorskip("sklearn.metrics")
    assert out1["calibration/brier/pneumonia"] == pytest.approx(sk.brier_score_loss(y, _sigmoid(logits / t)), abs=1e-9)
    # thresholds are chosen on the calibrated probabilities: the chosen threshold is one of them
    thr = out1["classification/threshold/pneumonia"]
    assert np.min(np.abs(_sigmoid(logits / t) - thr)) < 1e-6
    assert m1.deployed.calibrated and m1.deployed.calibration.temperatures == [t]
    # re-evaluating a model that already has a (different) calibration refits from the RAW logits: same T
    stale = MultiCheXNetPostprocessor(CLASSES, calibration={"temperatures": {"pneumonia": 0.3}})
    _, out2 = _metrics(logits, y, stale, calibration="temperature", threshold="youden", n_boot=100)
    assert out2["calibration/temperature/pneumonia"] == pytest.approx(t, rel=1e-6)
    assert out2["classification/threshold/pneumonia"] == pytest.approx(thr, rel=1e-6)
    assert out2["calibration/ece/pneumonia/raw"] == pytest.approx(out1["calibration/ece/pneumonia/raw"])


def test_youden_on_calibrated_probabilities_gives_the_same_gate_decisions():
    """Temperature scaling is strictly increasing: the Youden threshold chosen on calibrated probabilities
    separates the evaluated images exactly as the one chosen on the raw probabilities."""
    from monai_mcx.inferers import MultiCheXNetPostprocessor

    logits, y = _overconfident(800, scale=3.0, seed=1)  # seed 1: float64 scores would flip the image at the threshold
    plain = MultiCheXNetPostprocessor(CLASSES)
    m_cal, out_cal = _metrics(logits, y, plain, calibration="temperature", threshold="youden", n_boot=50)
    m_raw, out_raw = _metrics(logits, y, plain, calibration="none", threshold="youden", n_boot=50)
    assert out_cal["calibration/temperature/pneumonia"] != pytest.approx(1.0)
    assert "calibration/temperature/pneumonia" not in out_raw and "calibration/ece/pneumonia/raw" in out_raw
    z = torch.as_tensor(logits, dtype=torch.float32).reshape(-1, 1)
    gate_cal = m_cal.deployed.gate(m_cal.deployed.probabilities(z))
    gate_raw = m_raw.deployed.gate(m_raw.deployed.probabilities(z))
    assert gate_cal.any() and not gate_cal.all()
    assert torch.equal(gate_cal, gate_raw)
    # what inference decides (the post-processor, float32) is what evaluation scored: the image at the threshold too
    pred = m_cal.deployed({"class_logits": z}, torch.zeros(len(z), 1, 8, 8))
    assert torch.equal(pred["gate"], gate_cal)
    g = gate_cal.numpy()
    assert out_cal["classification/sensitivity/pneumonia"] == pytest.approx(g[y == 1].mean(), abs=1e-12)
    assert out_cal["classification/specificity/pneumonia"] == pytest.approx(1 - g[y == 0].mean(), abs=1e-12)
    for k in ("classification/sensitivity/pneumonia", "classification/specificity/pneumonia", "classification/auc"):
        assert out_cal[k] == pytest.approx(out_raw[k])


def test_test_split_applies_the_stored_calibration_without_refitting():
    from monai_mcx.inferers import MultiCheXNetPostprocessor

    logits, y = _overconfident(400, scale=4.0, seed=2)
    stored = MultiCheXNetPostprocessor(CLASSES, class_thresholds=0.4, calibration={"temperatures": {"pneumonia": 2.5}})
    m, out = _metrics(
        logits, y, stored, n_boot=50, target_thresholds={"sens90": {"pneumonia": 0.2}, "sens95": {"pneumonia": 0.1}}
    )
    assert m.fitted_calibration is None and "calibration/fitted_on" not in out
    assert out["calibration/temperature/pneumonia"] == 2.5
    p = _sigmoid(logits / 2.5)
    sens = np.mean(p[y == 1] >= 0.4)
    assert out["classification/sensitivity/pneumonia"] == pytest.approx(sens)
    assert out["classification/threshold/pneumonia"] == 0.4
    # the sensitivity-target thresholds chosen on validation are used as given
    assert out["classification/sens90/threshold/pneumonia"] == 0.2
    assert out["classification/sens90/sensitivity/pneumonia"] == pytest.approx(np.mean(p[y == 1] >= 0.2))


def test_operating_points_bootstrap_over_patients_with_fallback():
    from monai_mcx.inferers import MultiCheXNetPostprocessor

    logits, y = _overconfident(600, scale=1.0, seed=3)
    pp = MultiCheXNetPostprocessor(CLASSES)
    patients = [f"p{i // 3}" for i in range(600)]  # three images per patient
    m, out = _metrics(logits, y, pp, patients=patients, threshold="youden", n_boot=300)
    assert m.patients_known and out["classification/patients_known"] == 1.0
    assert out["classification/n_patients/pneumonia"] == 200
    for op in ("", "/sens90", "/sens95"):
        for metric in ("sensitivity", "specificity"):
            key = f"classification{op}/{metric}/pneumonia"
            assert out[f"{key}/ci_low"] <= out[key] <= out[f"{key}/ci_high"], key
    assert out["classification/sens90/sensitivity/pneumonia"] >= 0.9  # chosen on these data
    assert out["classification/sens95/threshold/pneumonia"] <= out["classification/sens90/threshold/pneumonia"]
    # no patient ids: each image is its own patient, and the metric says so
    m2, out2 = _metrics(logits, y, pp, threshold="youden", n_boot=300)
    assert not m2.patients_known and out2["classification/patients_known"] == 0.0
    assert out2["classification/n_patients/pneumonia"] == 600


def test_prepare_batch_hands_patient_ids_through_the_collate():
    from monai_mcx.data import collate_cxr
    from monai_mcx.engines import prepare_cxr_batch

    items = [{"image": torch.zeros(1, 4, 4), "label": torch.zeros(1), "patient": p} for p in ("p1", "p2", "p1")]
    batch = collate_cxr(items)
    _, targets = prepare_cxr_batch(batch, "cpu")
    assert targets["patient"] == ["p1", "p2", "p1"]
    assert targets["label"].shape == (3, 1)


def test_operating_point_writer_stores_the_calibration(tmp_path):
    from types import SimpleNamespace

    from monai_mcx.handlers import OperatingPointWriter
    from monai_mcx.model import ModelDescription, build_network, load_description, save_model

    desc = ModelDescription(
        class_names=CLASSES, tasks=["classification"], encoder="densenet-tiny", spatial_size=[16, 16]
    )
    save_model(build_network(desc), desc, tmp_path / "model.pt")
    metrics = {
        "classification/threshold/pneumonia": 0.42,
        "calibration/temperature/pneumonia": 1.7,
        "calibration/fitted_on": 30.0,
        "classification/sens90/threshold/pneumonia": 0.2,
        "classification/sens95/threshold/pneumonia": float("nan"),  # no positives: not stored
    }
    engine = SimpleNamespace(state=SimpleNamespace(metrics=metrics))
    OperatingPointWriter(tmp_path / "model.pt", CLASSES, copy_to=[tmp_path / "out"])(engine)
    saved = load_description(tmp_path / "model.pt")
    assert saved.calibration["temperatures"] == {"pneumonia": 1.7}
    assert saved.calibration["split"] == "validation" and saved.calibration["fitted_on"] == 30
    assert saved.class_thresholds == {"pneumonia": 0.42}
    assert saved.sensitivity_thresholds == {"sens90": {"pneumonia": 0.2}}
    assert json.loads((tmp_path / "out" / "model.json").read_text())["calibration"]["temperatures"]["pneumonia"] == 1.7
    # calibrate: none -> thresholds chosen on raw probabilities, the stored calibration is cleared
    metrics = {"classification/threshold/pneumonia": 0.5, "calibration/ece/pneumonia/raw": 0.1}
    OperatingPointWriter(tmp_path / "model.pt", CLASSES, calibrate="none")(
        SimpleNamespace(state=SimpleNamespace(metrics=metrics))
    )
    assert load_description(tmp_path / "model.pt").calibration is None


# ----------------------------------------------------------------------------------------------- the bundle


@pytest.mark.slow
def test_bundle_calibrates_on_validation_and_inference_writes_calibrated_probabilities(trained_bundle, tmp_path):
    from monai_mcx.model import build_network, load_description
    from monai_mcx.transforms.io import read_cxr

    root, overrides = trained_bundle
    shutil.copytree(root / "models", tmp_path / "models")  # never write into the shared fixture's model.json
    overrides = dict(overrides, ckpt_dir=str(tmp_path / "models"))
    ckpt = tmp_path / "models" / "model.pt"  # (already calibrated when the evaluated_bundle fixture ran first)

    out1 = tmp_path / "eval1"
    run_bundle(["train.json", "evaluate.json"], **dict(overrides, output_dir=str(out1), bootstrap_samples=200))
    desc1 = load_description(ckpt)
    metrics = json.loads((out1 / "metrics.json").read_text())
    t = desc1.calibration["temperatures"]["pneumonia"]
    assert desc1.calibration["method"] == "temperature" and desc1.calibration["split"] == "validation"
    assert desc1.calibration["fitted_on"] == metrics["calibration/fitted_on"] > 0
    assert metrics["calibration/temperature/pneumonia"] == pytest.approx(t)
    for key in ("ece", "brier", "nll"):
        assert f"calibration/{key}/pneumonia" in metrics and f"calibration/{key}/pneumonia/raw" in metrics
    # temperature scaling minimises the NLL on the data it is fitted on
    assert metrics["calibration/nll/pneumonia"] <= metrics["calibration/nll/pneumonia/raw"] + 1e-9
    for key in ("classification/sensitivity/pneumonia", "classification/sens90/specificity/pneumonia"):
        assert key in metrics and f"{key}/ci_low" in metrics and f"{key}/ci_high" in metrics
    assert desc1.sensitivity_thresholds and "sens90" in desc1.sensitivity_thresholds
    report = (out1 / "report.md").read_text()
    assert "## Calibration and operating points" in report and "plots/reliability_pneumonia.png" in report
    assert (out1 / "plots" / "reliability_pneumonia.png").is_file()
    print(
        f"demo validation: T {t:.4g}, ECE raw {metrics['calibration/ece/pneumonia/raw']:.4f} -> "
        f"{metrics['calibration/ece/pneumonia']:.4f}, Brier {metrics['calibration/brier/pneumonia/raw']:.4f} -> "
        f"{metrics['calibration/brier/pneumonia']:.4f}"
    )

    # evaluating again (the description now has a calibration) refits on the raw logits: the same temperatures
    out2 = tmp_path / "eval2"
    run_bundle(["train.json", "evaluate.json"], **dict(overrides, output_dir=str(out2), bootstrap_samples=200))
    desc2 = load_description(ckpt)
    assert desc2.calibration["temperatures"]["pneumonia"] == pytest.approx(t, rel=1e-6)
    assert desc2.class_thresholds["pneumonia"] == pytest.approx(desc1.class_thresholds["pneumonia"], rel=1e-5)

    # a test split applies the stored calibration, refits nothing and leaves model.json alone
    before = (tmp_path / "models" / "model.json").read_text()
    out3 = tmp_path / "eval_test"
    run_bundle(
        ["train.json", "evaluate.json"],
        **dict(overrides, output_dir=str(out3), eval_split="test", bootstrap_samples=100),
    )
    m3 = json.loads((out3 / "metrics.json").read_text())
    assert m3["calibration/temperature/pneumonia"] == pytest.approx(desc2.calibration["temperatures"]["pneumonia"])
    assert "calibration/fitted_on" not in m3
    assert m3["classification/sens90/threshold/pneumonia"] == pytest.approx(
        desc2.sensitivity_thresholds["sens90"]["pneumonia"]
    )
    assert (tmp_path / "models" / "model.json").read_text() == before

    # inference writes the calibrated probabilities sigmoid(z / T), with the raw logits z computed here directly
    pred_dir = tmp_path / "predictions"
    infer = {k: overrides[k] for k in ("bundle_root", "dataset_dir", "ckpt_dir")}
    run_bundle("inference.json", workflow_type="infer", **dict(infer, output_dir=str(pred_dir)))
    net = build_network(desc2)
    net.load_state_dict(torch.load(ckpt, map_location="cpu", weights_only=True))
    net.eval()
    records = sorted(p for p in pred_dir.glob("*.json"))
    assert records
    t2 = desc2.calibration["temperatures"]["pneumonia"]
    import torch.nn.functional as F

    for path in records:
        rec = json.loads(path.read_text())
        assert rec["calibrated"] is True and rec["calibration"]["temperatures"]["pneumonia"] == pytest.approx(t2)
        gray, _ = read_cxr(rec["image"])  # (rows, cols)
        x = torch.as_tensor(np.asarray(gray, dtype=np.float32).T)[None, None]  # (1, 1, W, H)
        x = F.interpolate(x, size=SMALL["spatial_size"], mode="area")
        with torch.no_grad():
            z = float(net(x)["class_logits"][0, 0])
        p = rec["class_probabilities"]["pneumonia"]
        assert p == pytest.approx(1 / (1 + math.exp(-z / t2)), abs=1e-4)
        assert rec["gate"]["positive"] == (p >= desc2.class_thresholds["pneumonia"])
    csv_text = (pred_dir / "predictions.csv").read_text().splitlines()
    assert (
        "calibrated" in csv_text[0].split(",")
        and csv_text[1].split(",")[csv_text[0].split(",").index("calibrated")] == "True"
    )


# ------------------------------------------------------------------- sensitivity targets on a test split (item 16)
def test_test_split_without_sensitivity_thresholds_does_not_choose_them():
    """Issue 24 item 16: a description without sensitivity-target thresholds (``{}`` on a test split) does not get
    them chosen on the evaluated split: the ``sens90``/``sens95`` keys are undefined and the report says why."""
    from monai_mcx.handlers.report_markdown import calibration_section, sensitivity_note
    from monai_mcx.inferers import MultiCheXNetPostprocessor

    logits, y = _overconfident(300, scale=1.0, seed=5)
    pp = MultiCheXNetPostprocessor(CLASSES)
    _, chosen = _metrics(logits, y, pp, n_boot=50)  # None: chosen on these data (the validation split)
    assert chosen["classification/sens90/sensitivity/pneumonia"] >= 0.9
    _, out = _metrics(logits, y, pp, n_boot=50, target_thresholds={})
    for op in ("sens90", "sens95"):
        for key in (f"classification/{op}/threshold/pneumonia", f"classification/{op}/sensitivity/pneumonia"):
            assert math.isnan(out[key]), key
    assert not math.isnan(out["classification/sensitivity/pneumonia"])  # the chosen class threshold still is

    note = sensitivity_note("test", None, [0.9, 0.95])
    assert note == "not available: the description has no 90/95 % sensitivity thresholds from a validation split"
    assert sensitivity_note("test", {"sens90": {"pneumonia": 0.2}}, [0.9]) == (
        "chosen on the validation split, read from the model description"
    )
    assert sensitivity_note("validation", None, [0.9]) == "chosen on this validation split"
    metrics = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in out.items()}
    metrics.update({"calibration/ece/pneumonia/raw": 0.1})
    text = "\n".join(calibration_section(metrics, CLASSES, pp, (), note))
    assert note in text and "on the validation split." not in text


@pytest.mark.slow
def test_bundle_test_split_without_sensitivity_thresholds(trained_bundle, tmp_path):
    """evaluate.json on a test split with a description that has no sensitivity thresholds: metrics.json has
    them as null and report.md says they are not available (before: chosen on the test split, reported as
    chosen on validation)."""
    from monai_mcx.model import read_description, save_description

    root, overrides = trained_bundle
    shutil.copytree(root / "models", tmp_path / "models")
    ckpt = tmp_path / "models" / "model.pt"
    save_description(read_description(ckpt).replace(sensitivity_thresholds=None), ckpt)
    out = tmp_path / "eval_test"
    run_bundle(
        ["train.json", "evaluate.json"],
        **dict(
            overrides,
            ckpt_dir=str(tmp_path / "models"),
            output_dir=str(out),
            eval_split="test",
            bootstrap_samples=50,
            explain=False,
        ),
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["classification/sens90/threshold/pneumonia"] is None
    assert metrics["classification/sens95/sensitivity/pneumonia"] is None
    report = (out / "report.md").read_text()
    assert "not available: the description has no 90/95 % sensitivity thresholds from a validation split" in report
    assert "sensitivity on the validation split" not in report


@pytest.mark.slow
def test_validation_predictions_use_the_operating_point_this_evaluation_writes(trained_bundle, tmp_path):
    """Issue 24 item 14: evaluate.json --write_predictions true on the validation split writes the prediction files
    at the operating point it chooses and writes into model.json (calibration, class thresholds, box score), not
    at the description's earlier one."""
    from monai_mcx.model import load_description, read_description, save_description

    root, overrides = trained_bundle
    shutil.copytree(root / "models", tmp_path / "models")
    ckpt = tmp_path / "models" / "model.pt"
    before = read_description(ckpt)  # start from an uncalibrated description at 0.5 / every box
    save_description(before.replace(calibration=None, class_thresholds=None, box_score_threshold=None), ckpt)
    out = tmp_path / "eval"
    run_bundle(
        ["train.json", "evaluate.json"],
        **dict(
            overrides,
            ckpt_dir=str(tmp_path / "models"),
            output_dir=str(out),
            bootstrap_samples=20,
            explain=False,
            write_predictions=True,
        ),
    )
    desc = load_description(ckpt)
    assert desc.calibration and desc.box_score_threshold is not None and desc.box_score_threshold > 0
    records = sorted((out / "predictions").glob("*.json"))
    assert records
    temps = desc.calibration["temperatures"]
    for path in records:
        rec = json.loads(path.read_text())
        assert rec["calibrated"] is True and rec["calibration"]["temperatures"] == pytest.approx(temps), path.name
        assert rec["gate"]["thresholds"] == pytest.approx(desc.class_thresholds), path.name
        assert rec["box_score_threshold"] == pytest.approx(desc.box_score_threshold), path.name
        assert all(b["score"] >= desc.box_score_threshold for b in rec["boxes_ungated"])
        p = rec["class_probabilities"]["pneumonia"]
        assert rec["gate"]["positive"] == (p >= desc.class_thresholds["pneumonia"])
    # the same probabilities as per_image.csv (the report's, at the deployed calibration)
    import csv

    with (out / "per_image.csv").open() as f:
        table = {r["image"]: float(r["p_pneumonia"]) for r in csv.DictReader(f)}
    for path in records:
        rec = json.loads(path.read_text())
        assert rec["class_probabilities"]["pneumonia"] == pytest.approx(table[rec["image"]], abs=1e-6)
