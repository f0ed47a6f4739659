"""The lesion suite of experiments/run_experiments.py (issue 12 item 4): its metrics, folds, bootstrap intervals,
the results files keyed by suite, and a --quick run on a few real images."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from experiments import lesion_suite, run_experiments

from conftest import REPO, SHARED


def test_bootstrap_auc_matches_sklearn_and_brackets_the_estimate():
    rng = np.random.default_rng(3)
    y = np.r_[np.ones(15), np.zeros(12)]
    p = np.clip(0.3 * y + rng.normal(0.4, 0.25, y.size), 0, 1)
    patients = [f"p{i // 2}" for i in range(y.size)]  # two images per patient
    auc, lo, hi = lesion_suite.bootstrap_auc(p, y, patients, n_boot=500, seed=0)
    assert auc == pytest.approx(roc_auc_score(y, p))
    assert lo <= auc <= hi and hi - lo > 0.05
    assert lesion_suite.bootstrap_auc(p, y, patients, n_boot=500, seed=0) == (auc, lo, hi)  # seeded
    assert np.isnan(lesion_suite.bootstrap_auc(p, np.ones_like(y), patients)[0])  # one class: undefined


def test_patient_folds_keep_patients_together_and_stratify():
    items = [{"patient": f"p{i // 2}", "label": [1.0 if i < 16 else 0.0]} for i in range(26)]
    folds = lesion_suite.patient_folds(items, 4, seed=1)
    assert sorted(i for f in folds for i in f) == list(range(26))
    for f in folds:
        others = {items[i]["patient"] for g in folds if g is not f for i in g}
        assert not {items[i]["patient"] for i in f} & others
        assert 0 < sum(items[i]["label"][0] for i in f) < len(f)  # both findings in every fold


def _box(x0, y0, x1, y1):
    return torch.tensor([[x0, y0, x1, y1]], dtype=torch.float32)


def test_lesion_metrics_against_a_hand_computation():
    s = 16
    items, preds = [], []
    rng = np.random.default_rng(0)
    # Kermany: labels and probabilities only
    for i in range(10):
        y = float(i % 2)
        items.append({"source": "kermany", "label": y, "mask": None, "boxes": None})
        preds.append({"prob": float(np.clip(0.2 + 0.5 * y + rng.normal(0, 0.2), 0, 1)), "seg": None, "det": None})
    # RSNA: 3 positives with a box, 3 negatives
    truth = _box(2, 2, 8, 8)
    for i in range(6):
        pos = i < 3
        seg = torch.zeros(s, s, dtype=torch.bool)
        seg[: i + 1, :2] = True  # i+1 rows x 2 columns = 2 (i + 1) pixels
        det = {"boxes": _box(2, 2, 8, 8) if pos else _box(0, 0, 4, 4), "scores": torch.tensor([0.9 if pos else 0.95])}
        items.append(
            {"source": "rsna", "label": float(pos), "mask": None, "boxes": truth if pos else torch.zeros(0, 4)}
        )
        preds.append({"prob": 0.9 if pos else (0.8 if i == 3 else 0.1), "seg": seg, "det": det})
    # covid_lesions: 2 images with a lesion
    for i in range(2):
        mask = torch.zeros(s, s, dtype=torch.bool)
        mask[4:8, 4:8] = True
        seg = torch.zeros(s, s, dtype=torch.bool)
        seg[4:8, 4 : 6 + 2 * i] = True  # 8 or 16 pixels, all inside the lesion
        items.append({"source": "covid_lesions", "label": 1.0, "mask": mask, "boxes": None})
        preds.append({"prob": 0.95, "seg": seg, "det": None})
    preds = [dict(q, seg=q["seg"] if q["seg"] is not None else torch.zeros(s, s, dtype=torch.bool)) for q in preds]
    for q in preds:
        if q["det"] is None:
            q["det"] = {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0)}
    m = lesion_suite.lesion_metrics(preds, items)
    k = [i for i, it in enumerate(items) if it["source"] == "kermany"]
    assert m["kermany/auc"] == pytest.approx(
        roc_auc_score([items[i]["label"] for i in k], [preds[i]["prob"] for i in k])
    )
    assert m["rsna/auc"] == pytest.approx(roc_auc_score([1, 1, 1, 0, 0, 0], [0.9, 0.9, 0.9, 0.8, 0.1, 0.1]))
    # negatives i = 3, 4, 5 paint 8, 10, 12 pixels; the gate (Youden) keeps only i = 3 (p = 0.8)
    gate = m["gate_threshold"]
    assert 0.1 < gate <= 0.8
    assert m["rsna/mask_px_per_negative"] == pytest.approx(10.0)
    assert m["rsna/mask_px_per_negative/gated"] == pytest.approx(8 / 3)
    # every positive box is exact; the negatives score higher (0.95), so the chosen threshold (0.9) keeps them
    assert m["rsna/boxes_per_negative"] == pytest.approx(1.0)
    assert m["rsna/boxes_per_negative/gated"] == pytest.approx(1 / 3)
    assert m["rsna/rsna_metric/gated"] == pytest.approx(3 / 4)  # 3 images at 1, one gated-in negative at 0
    # AP50 ranks every box: ungated the 3 false positives (0.95) come first (precision 1/4, 2/5, 3/6 at the
    # true positives: interpolated 0.5); gated one false positive is left (1/2, 2/3, 3/4: interpolated 0.75)
    assert m["rsna/ap50"] == pytest.approx(0.5, abs=1e-6)
    assert m["rsna/ap50/gated"] == pytest.approx(0.75, abs=1e-6)
    dice = [2 * 8 / (8 + 16), 2 * 16 / (16 + 16)]
    assert m["covid_lesions/dice_positive"] == pytest.approx(np.mean(dice))
    assert m["covid_lesions/dice_positive/gated"] == pytest.approx(np.mean(dice))


def _lesion_entry():
    recs = [
        {
            "experiment": "lesion_multitask_vs_single",
            "row": "multichexnet",
            "train_seconds": 10.0,
            "latency_ms": 5.0,
            "samples_seen": 32,
            "metrics": {
                "kermany/auc": 0.9,
                "rsna/auc": 0.7,
                "rsna/rsna_metric": 0.1,
                "rsna/rsna_metric/gated": 0.12,
                "rsna/ap50": 0.2,
                "rsna/ap50/gated": 0.21,
                "covid_lesions/dice_positive": 0.5,
                "covid_lesions/dice_positive/gated": 0.4,
            },
        },
        {
            "experiment": "lesion_multitask_vs_single",
            "row": "single_segmentation",
            "train_seconds": 2.0,
            "latency_ms": 4.0,
            "samples_seen": 8,
            "metrics": {"covid_lesions/dice_positive": 0.6},
        },
        {
            "experiment": "lesion_teacher_forcing",
            "row": "all",
            "train_seconds": 10.0,
            "metrics": {"rsna/boxes_per_negative": 1.5, "rsna/boxes_per_negative/gated": 0.5},
        },
        {
            "experiment": "lesion_transfer",
            "row": "from_multichexnet",
            "freeze_encoder": True,
            "train_seconds": 3.0,
            "n_images": 27,
            "n_patients": 20,
            "n_positive": 18,
            "metrics": {"auc": 0.71, "auc_low": 0.52, "auc_high": 0.88, "fold_auc_mean": 0.7, "fold_auc_sd": 0.1},
        },
    ]
    return {
        "suite": "lesions",
        "command": "python -m experiments.run_experiments --suite lesions",
        "created": "now",
        "preset": "quick",
        "settings": lesion_suite.LESION_PRESETS["quick"],
        "total_minutes": 1.0,
        "complete": False,
        "missing_rows": ["tf_positive_only"],
        "records": recs,
    }


def test_results_files_keep_the_other_suite_and_render_three_lesion_tables(tmp_path):
    lung = {
        "command": "old",
        "created": "then",
        "device": "cpu",
        "threads": 2,
        "torch": "x",
        "preset": "cpu",
        "resolution": 128,
        "encoder": "densenet121",
        "seed": 0,
        "total_minutes": 20.0,
        "subset_sizes": {"joint": {"train": 1, "val": 1}},
        "discussion": "Hand-written lung notes.",
        "records": [
            {
                "experiment": "multitask_vs_single",
                "row": "single_classification",
                "epochs": 3,
                "subset_sizes": {"train": 800},
                "metrics": {"classification/auc": 0.988},
                "train_seconds": 1.0,
                "latency_ms": 2.0,
            }
        ],
    }
    (tmp_path / "results.json").write_text(json.dumps(lung))  # the older flat layout: becomes lung_outline
    run_experiments.write_suite(tmp_path, "lesions", _lesion_entry())
    data = json.loads((tmp_path / "results.json").read_text())
    assert set(data["suites"]) == {"lesions", "lung_outline"}
    assert data["suites"]["lung_outline"]["records"][0]["metrics"]["classification/auc"] == 0.988
    md = (tmp_path / "results.md").read_text()
    for title in (
        "### (a) MultiCheXNet vs the three",
        "### (b) Teacher forcing on REAL negatives",
        "### (c) Transfer to an unseen disease",
        "Part 2: LUNG-OUTLINE tasks",
        "Hand-written lung notes.",
    ):
        assert title in md, title
    assert md.index("### (a)") < md.index("### (b)") < md.index("### (c)") < md.index("Part 2")
    assert "0.71 [0.52, 0.88]" in md and "Missing rows" in md and "tf_positive_only" in md
    assert "0.120 (0.100)" in md  # gated (ungated)
    assert "LOSES to `single_segmentation`" in md
    # re-running the lung suite keeps the lesion entry
    run_experiments.write_outputs(tmp_path, {k: v for k, v in lung.items() if k != "records"}, lung["records"])
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["suites"]["lesions"]["records"][0]["row"] == "multichexnet"
    assert "### (c) Transfer" in (tmp_path / "results.md").read_text()


@pytest.mark.shared
@pytest.mark.slow
def test_lesion_suite_quick_on_real_images(tmp_path):
    data, lesions = SHARED / "data" / "cxr-real", SHARED / "data" / "cxr-lesions"
    if not ((data / "kermany").is_dir() and (lesions / "rsna").is_dir()):
        pytest.skip(f"real data not found at {data} / {lesions} (set MCX_SHARED)")
    out, work = tmp_path / "results", tmp_path / "work"
    cmd = [
        sys.executable,
        "-m",
        "experiments.run_experiments",
        "--suite",
        "lesions",
        "--quick",
        "--data-root",
        str(data),
        "--lesions-root",
        str(lesions),
        "--output-dir",
        str(out),
        "--work-dir",
        str(work),
        "--threads",
        "1",
        "--device",
        "cpu",
    ]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    entry = json.loads((out / "results.json").read_text())["suites"]["lesions"]
    assert entry["complete"] and not entry["missing_rows"], entry["missing_rows"]
    exps = {(r["experiment"], r["row"]) for r in entry["records"]}
    assert ("lesion_multitask_vs_single", "three_single_task_sum") in exps
    assert {r for e, r in exps if e == "lesion_teacher_forcing"} == {"positive_only", "all", "balanced"}
    assert len([1 for e, _ in exps if e == "lesion_transfer"]) == 3  # (init) x frozen / fine-tuned, rows by init
    mcx = next(r for r in entry["records"] if r["row"] == "multichexnet")
    for key in ("kermany/auc", "rsna/ap50/gated", "rsna/mask_px_per_negative/gated", "covid_lesions/dice_positive"):
        assert key in mcx["metrics"], key
    for r in (r for r in entry["records"] if r["experiment"] == "lesion_transfer"):
        m = r["metrics"]
        assert m["auc"] is None or m["auc_low"] is None or m["auc_low"] <= m["auc"] <= m["auc_high"]
    # a second run re-uses every finished row (nothing is trained again)
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    again = json.loads((out / "results.json").read_text())["suites"]["lesions"]
    assert len(again["rows_from_cache"]) == 13 and again["records"] == entry["records"]  # 12 rows + latency
    assert "rows read from the row cache" in (out / "results.md").read_text()


@pytest.mark.shared
def test_evaluate_real_post_processes_through_the_one_post_processor(tmp_path, monkeypatch):
    """experiments/evaluate_real.py chooses per-population points and scores through MultiCheXNetPostprocessor."""
    import shutil

    from experiments import evaluate_real
    from monai_mcx.data.public import COVIDLesions, RSNAPneumonia
    from monai_mcx.inferers import MultiCheXNetPostprocessor
    from monai_mcx.model import load_model

    lesions, shipped = SHARED / "data" / "cxr-lesions", REPO / "bundle" / "models"
    if not (lesions / "rsna").is_dir() or not (shipped / "model.pt").is_file():
        pytest.skip(f"needs {lesions} and the shipped model {shipped}")
    for name in ("model.pt", "model.json"):  # a copy: --write-description must not touch the shipped model
        shutil.copy(shipped / name, tmp_path / name)
    rsna = sorted(RSNAPneumonia(lesions / "rsna").load(), key=lambda it: it["image"])
    items = [it for it in rsna if it["boxes"]][:3] + [it for it in rsna if not it["boxes"]][:3]
    items += COVIDLesions(lesions / "covid_lesions").load()[:3]
    keys = ("image", "patient", "source", "label", "mask", "boxes", "lung_mask", "population")
    datalist = tmp_path / "datalist.json"
    datalist.write_text(
        json.dumps(
            {"class_names": ["pneumonia"], "training": [], "validation": [{k: it.get(k) for k in keys} for it in items]}
        )
    )
    calls = []
    real = MultiCheXNetPostprocessor.apply_operating_point

    def spy(self, pred, *args, **kwargs):
        calls.append(kwargs.get("populations"))
        return real(self, pred, *args, **kwargs)

    monkeypatch.setattr(MultiCheXNetPostprocessor, "apply_operating_point", spy)
    args = ["--ckpt", str(tmp_path / "model.pt"), "--datalist", str(datalist), "--output-dir", str(tmp_path / "out")]
    assert evaluate_real.main(args + ["--n-boot", "20", "--write-description"]) == 0
    assert any(p and ("adult", "datalist") in p for p in calls)  # each image scored at its population's point
    out = json.loads((tmp_path / "out" / "results_real.json").read_text())
    assert {r["group"] for r in out["classification"]} >= {"population adult", "source rsna", "source covid_lesions"}
    assert set(out["lesions"]) == {"per_population", "one_point_for_all", "per_population_no_lung_restriction"}
    assert out["lesions"]["per_population"]["lesion_images_adult"] >= 3
    if "outside_lungs" in out:  # a model with a lungs head: nothing outside the field with the restriction on
        assert out["outside_lungs"]["restriction_on"]["lesion_px_outside"] == 0
        assert out["outside_lungs"]["restriction_on"]["boxes_centre_outside"] == 0
    _, desc, _ = load_model(tmp_path / "model.pt")  # the written description still matches the weights
    assert desc.operating_points["adult"]["n_images"] == 9 and desc.calibration["fitted_on"] == 9  # rewritten here
    assert (tmp_path / "out" / "images" / "worst_validation_cases.png").is_file()


@pytest.mark.shared
def test_transfer_covid_and_class_probe_run_on_real_images(tmp_path):
    """experiments.transfer_covid (study split, three rows into results.md) and experiments.class_probe, tiny."""
    from experiments import class_probe, transfer_covid

    shipped = REPO / "bundle" / "models" / "model.pt"
    real = SHARED / "data"
    if not ((real / "cxr-adult" / "siim_covid").is_dir() and (real / "cxr-real" / "kermany").is_dir()):
        pytest.skip(f"needs the cxr-adult and cxr-real packs under {real}")
    dl = tmp_path / "datalist.json"
    prep = [sys.executable, str(REPO / "scripts" / "prepare_data.py"), "--quiet", "--output", str(dl)]
    prep += ["--kermany", str(real / "cxr-real" / "kermany"), "--siim-covid", str(real / "cxr-adult" / "siim_covid")]
    subprocess.run(prep + ["--val-fraction", "0.2", "--test-fraction", "0"], check=True, cwd=REPO)
    out = tmp_path / "out"
    common = ["--datalist", str(dl), "--output-dir", str(out), "--n-boot", "10"]
    args = [
        "--pretrained",
        str(shipped),
        "--max-items",
        "30",
        "--epochs",
        "1",
        "--size",
        "64",
        "--work",
        str(tmp_path / "w"),
    ]
    assert transfer_covid.main(common + args) == 0
    res = json.loads((out / "results_transfer_covid.json").read_text())
    assert [r["init"] for r in res["rows"]] == ["shipped encoder", "shipped encoder", "random"]
    train = json.loads((tmp_path / "w" / "datalist.json").read_text())
    studies = [{it["patient"] for it in train[s]} for s in ("training", "validation")]
    assert res["train_images"] + res["test_images"] == 30 and not studies[0] & studies[1]  # split by study
    assert "## Transfer to COVID-19 on adult radiographs" in (out / "results.md").read_text()
    assert class_probe.main(common + ["--ckpt", str(shipped), "--max-train", "20", "--max-val", "20"]) == 0
    rows = json.loads((out / "class_probe.json").read_text())["models"][0]["rows"]
    assert [r["population"] for r in rows] == ["pediatric", "adult"] and all("pooled_minus_own" in r for r in rows)
