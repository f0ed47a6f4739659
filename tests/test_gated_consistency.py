"""Evaluation and inference give the same gated answers (the one post-processing component, issue 11).

On the session's tiny trained bundle (conftest ``trained_bundle``): evaluating the validation split chooses the
class thresholds and the box operating point; inference then applies exactly those; and evaluation of the test
split with the saved thresholds writes the same per-image files as inference of that split, file by file.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from conftest import BUNDLE, run_bundle

pytestmark = pytest.mark.slow


def _infer(overrides: dict, root: Path, split: str, out: Path) -> Path:
    run_bundle(
        "inference.json",
        workflow_type="infer",
        bundle_root=str(BUNDLE),
        dataset_dir=overrides["dataset_dir"],
        input=str(Path(overrides["dataset_dir"]) / "datalist.json"),
        input_split=split,
        ckpt_dir=str(root / "models"),
        output_dir=str(out),
        batch_size=4,
    )  # bare: the network and the post-processing come from the model description
    return out


def _rows(path: Path) -> dict[str, dict]:
    return {Path(r["image"]).name: r for r in csv.DictReader(path.open())}


def test_inference_applies_the_thresholds_chosen_on_validation(evaluated_bundle):
    root, overrides, out = evaluated_bundle
    metrics = json.loads((out / "metrics.json").read_text())
    saved = json.loads((root / "models" / "model.json").read_text())  # the model description
    chosen = metrics["localization/box_threshold"]
    assert saved["box_score_threshold"] == pytest.approx(chosen, rel=1e-6) and saved["box_threshold_method"] == "rsna"
    assert saved["class_thresholds"]["pneumonia"] == metrics["classification/threshold/pneumonia"]
    pred_dir = _infer(overrides, root, "validation", root / "infer_validation")
    evaluated = _rows(out / "per_image.csv")
    inferred = _rows(pred_dir / "predictions.csv")
    assert evaluated and set(evaluated) == set(inferred)
    for name, r in inferred.items():
        rec = json.loads((pred_dir / r["json"]).read_text())
        assert rec["box_score_threshold"] == chosen
        assert (
            rec["gate"]["thresholds"] == saved["class_thresholds"] and rec["gate"]["rule"] == "any_class_at_threshold"
        )
        assert all(b["score"] >= chosen for b in rec["boxes"] + rec["boxes_ungated"])
        e = evaluated[name]
        assert r["gate_positive"] == e["gate_positive"], name  # the same gated decisions
        assert int(r["n_boxes"]) == int(e["n_boxes"]), name
        assert float(r["p_pneumonia"]) == pytest.approx(float(e["p_pneumonia"]), abs=1e-5)
    report = (out / "report.md").read_text()
    assert "some class reaches its own threshold" in report and f"score >= {chosen:.4g}" in report


def test_gated_evaluation_equals_gated_inference_file_by_file(evaluated_bundle):
    root, overrides, _ = evaluated_bundle
    ev = root / "eval_test"
    run_bundle(
        ["train.json", "evaluate.json"],
        **dict(overrides, output_dir=str(ev), eval_split="test", write_predictions=True),
    )
    pred_dir = _infer(overrides, root, "test", root / "infer_test")
    ev_pred = ev / "predictions"
    names = sorted(p.name for p in pred_dir.glob("*.json"))
    assert names and names == sorted(p.name for p in ev_pred.glob("*.json"))
    n_pos = 0
    for name in names:
        a, b = json.loads((ev_pred / name).read_text()), json.loads((pred_dir / name).read_text())
        assert a["gate"] == b["gate"], name
        n_pos += b["gate"]["positive"]
        assert a["boxes"] == b["boxes"] and a["boxes_ungated"] == b["boxes_ungated"], name
        assert a["class_probabilities"] == pytest.approx(b["class_probabilities"], abs=1e-6)
        assert a["mask_area_px"] == b["mask_area_px"], name
        ma = np.asarray(nib.load(str(ev_pred / a["mask_nifti"])).dataobj)
        mb = np.asarray(nib.load(str(pred_dir / b["mask_nifti"])).dataobj)
        assert np.array_equal(ma, mb), name
        assert (ev_pred / a["mask"]).read_bytes() == (pred_dir / b["mask"]).read_bytes(), name
    print(f"[gated consistency] {len(names)} test images, {n_pos} gated positive, identical files")
