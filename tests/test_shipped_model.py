"""The model shipped in bundle/models: it is described, verified and predicts with a bare inference.json."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest

from conftest import BUNDLE, CONFIGS, run_bundle

SHIPPED = BUNDLE / "models" / "model.pt"
SHARED = Path(os.environ.get("MCX_SHARED", BUNDLE.parent.parent / "shared"))
RSNA = SHARED / "data" / "cxr-lesions" / "rsna" / "stage_2_train_images"

pytestmark = pytest.mark.skipif(not SHIPPED.is_file(), reason="no shipped model in bundle/models")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _write_dicom(path: Path, w: int, h: int) -> None:
    """An 8-bit MONOCHROME2 chest-sized DICOM (w columns, h rows) with a bright body and dark lungs."""
    from monai_mcx.data.synthetic import _write_dicom as write

    yy, xx = np.mgrid[0:h, 0:w]
    img = 200 - 120 * ((((xx - w * 0.3) / (w * 0.15)) ** 2 + ((yy - h * 0.5) / (h * 0.3)) ** 2) < 1)
    img = img - 120 * ((((xx - w * 0.7) / (w * 0.15)) ** 2 + ((yy - h * 0.5) / (h * 0.3)) ** 2) < 1)
    write(str(path), img.astype(np.uint8), patient="p0", image_id="shipped0", seed=0)


def test_shipped_description_is_complete_and_verified():
    from monai_mcx.model import load_description

    desc = load_description(SHIPPED)  # verifies the weights hash
    assert desc.thresholds_split == "validation" and desc.thresholds_method != "default"
    assert desc.box_threshold_split == "validation" and desc.box_threshold_method.startswith("rsna")
    assert desc.box_score_threshold is not None
    assert set(desc.training["data_sources"]) >= {"kermany", "rsna", "covid_lesions", "siim_covid", "covid_lungs"}
    # issue 23: operating points per population, the lung-field head and the restriction to it
    assert set(desc.operating_points) == {"adult", "pediatric"} and desc.default_population == "adult"
    for point in desc.operating_points.values():
        assert point["split"] == "validation" and point["n_images"] > 0
        assert all(point["gate_thresholds"][c] <= point["class_thresholds"][c] for c in desc.class_names)
    assert "lungs" in desc.tasks and desc.lung_restriction["enabled"]
    assert SHIPPED.stat().st_size < 40 * 2**20


def _bare_inference(folder: Path, out: Path) -> list[dict]:
    # no ckpt_dir / encoder / spatial_size / thresholds: inference.json's defaults and the description only
    run_bundle("inference.json", workflow_type="infer", bundle_root=str(BUNDLE), input=str(folder), output_dir=str(out))
    return [json.loads(p.read_text()) for p in sorted(out.glob("*.json"))]


def _check_record(rec: dict, w: int, h: int) -> None:
    from PIL import Image

    from monai_mcx.model import load_description

    desc = load_description(SHIPPED)
    assert rec["size_wh"] == [w, h]
    p = rec["class_probabilities"]["pneumonia"]
    assert 0.0 <= p <= 1.0
    point = desc.operating_point(rec["operating_point"]["population"])  # the image's population's point
    assert rec["gate"]["thresholds"]["pneumonia"] == pytest.approx(point["gate_thresholds"][0])
    assert rec["gate"]["positive"] == (p >= point["gate_thresholds"][0])
    assert rec["operating_point"]["class_thresholds"]["pneumonia"] == pytest.approx(point["class_thresholds"][0])
    assert rec["box_score_threshold"] == pytest.approx(point["box_score_threshold"])
    for b in rec["boxes"]:
        x1, y1, x2, y2 = b["box"]
        assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h
        assert b["score"] >= point["box_score_threshold"]
    if not rec["gate"]["positive"]:
        assert rec["boxes"] == [] and rec["mask_area_px"] == 0
    mask = np.asarray(Image.open(Path(rec["_out"]) / rec["mask"]))
    assert mask.shape == (h, w)


def test_bare_inference_with_the_shipped_model_on_a_dicom(tmp_path):
    before = _sha256(SHIPPED), _sha256(SHIPPED.with_suffix(".json"))
    (tmp_path / "in").mkdir()
    _write_dicom(tmp_path / "in" / "study1", 300, 260)  # no extension, as PACS exports
    recs = _bare_inference(tmp_path / "in", tmp_path / "out")
    assert len(recs) == 1
    recs[0]["_out"] = str(tmp_path / "out")
    _check_record(recs[0], 300, 260)
    assert (_sha256(SHIPPED), _sha256(SHIPPED.with_suffix(".json"))) == before, "inference changed the shipped model"


@pytest.mark.shared
@pytest.mark.skipif(not RSNA.is_dir(), reason=f"real RSNA pack not found at {RSNA} (set MCX_SHARED)")
def test_bare_inference_on_real_rsna_dicoms(tmp_path):
    import pydicom

    (tmp_path / "in").mkdir()
    files = sorted(RSNA.glob("*.dcm"))[:2]
    for f in files:
        (tmp_path / "in" / f.name).symlink_to(f)
    recs = _bare_inference(tmp_path / "in", tmp_path / "out")
    assert len(recs) == len(files)
    for rec in recs:
        ds = pydicom.dcmread(rec["image"], stop_before_pixels=True)
        age = float(str(ds.PatientAge).rstrip("Y"))
        assert rec["operating_point"]["reason"] == "dicom_age"  # RSNA headers carry the patient's age
        assert rec["operating_point"]["population"] == ("adult" if age >= 18 else "pediatric")
        rec["_out"] = str(tmp_path / "out")
        _check_record(rec, int(ds.Columns), int(ds.Rows))


def test_training_configs_never_write_the_shipped_model():
    from monai.bundle import ConfigParser

    shipped = (BUNDLE / "models").resolve()
    for files in (["train.json"], ["train.json", "train_real.json"], ["train.json", "evaluate.json"]):
        parser = ConfigParser()
        parser.read_config([str(CONFIGS / f) for f in files])
        parser["bundle_root"] = str(BUNDLE)
        parser["datalist"] = "unused"  # do not generate the demo data
        for key in ("ckpt_dir", "output_dir"):
            assert Path(parser.get_parsed_content(key)).resolve() != shipped, (files, key)
    demo = (BUNDLE.parent / "scripts" / "run_demo.sh").read_text()
    assert "--ckpt_dir" in demo and "bundle/models" not in demo.replace("bundle/models/", "")
