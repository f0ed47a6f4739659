"""Operating points per population (issue 23 item 1): how an image's population is chosen (DICOM age, the
``population`` option, the datalist's population or source, the model's default), that its point is applied and
that every output says which."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_model import save_always_positive_model

from monai_mcx.data.populations import population_from_age, resolve_population
from monai_mcx.dicom.checks import parse_age
from monai_mcx.inferers import MultiCheXNetPostprocessor
from monai_mcx.keys import PredKeys
from monai_mcx.model import DescriptionError, ModelDescription

from conftest import BUNDLE, run_bundle, run_inference

#: adult images pass the gate at any probability, pediatric images never do (p >= 1 is unreachable), so the gate
#: tells which point was applied
POINTS = {
    "adult": {"class_thresholds": {"pneumonia": 0.0}, "gate_thresholds": {"pneumonia": 0.0}},
    "pediatric": {"class_thresholds": {"pneumonia": 1.0}, "gate_thresholds": {"pneumonia": 1.0}},
}


@pytest.mark.parametrize(
    "age, expected",
    [("045Y", "adult"), ("018Y", "adult"), ("017Y", "pediatric"), ("006M", "pediatric"), ("51", "adult"), ("", None)],
)
def test_population_from_the_dicom_age_string(age, expected):
    assert population_from_age(parse_age(age)) == expected


def test_resolution_order_option_age_datalist_source_default():
    assert resolve_population("pediatric", 45.0, "adult", "rsna", "adult") == ("pediatric", "option")
    assert resolve_population("auto", 6.0, "adult", "rsna", "adult") == ("pediatric", "dicom_age")
    assert resolve_population(None, None, "pediatric", "rsna", "adult") == ("pediatric", "datalist")
    assert resolve_population(None, float("nan"), None, "kermany", "adult") == ("pediatric", "source")
    assert resolve_population(None, None, None, "my_hospital", "adult") == ("adult", "default")
    assert resolve_population(None, None, None, None, None) == (None, "default")
    with pytest.raises(ValueError, match="population must be one of"):
        resolve_population("elderly")


def test_the_postprocessor_applies_each_images_point():
    post = MultiCheXNetPostprocessor(
        class_thresholds=0.5,
        box_score_threshold=0.5,
        operating_points={
            "adult": {"class_thresholds": [0.6], "gate_thresholds": [0.3], "box_score_threshold": 0.2},
            "pediatric": {"class_thresholds": [0.7], "gate_thresholds": None},
        },
        default_population="pediatric",
    )
    logits = torch.logit(torch.tensor([[0.4], [0.4], [0.4], [0.65]]))
    det = {"boxes": torch.tensor([[1.0, 1.0, 5.0, 5.0]]), "scores": torch.tensor([0.3]), "labels": torch.tensor([0])}
    pred = {PredKeys.CLASS_LOGITS.value: logits, PredKeys.DETECTIONS.value: [det] * 4}
    pops = [("adult", "dicom_age"), ("pediatric", "datalist"), None, ("adult", "option")]
    out = post.apply_operating_point(pred, populations=pops)
    # adult: gate 0.3 (lesion recall) below its diagnosis threshold 0.6; pediatric: gate = class threshold 0.7
    assert out[PredKeys.GATE].tolist() == [True, False, False, True]
    assert out[PredKeys.CLASS_THRESHOLDS][:, 0].tolist() == pytest.approx([0.6, 0.7, 0.7, 0.6])
    assert [p["population"] for p in out[PredKeys.POPULATION]] == ["adult", "pediatric", "pediatric", "adult"]
    assert [p["reason"] for p in out[PredKeys.POPULATION]] == ["dicom_age", "datalist", "default", "option"]
    # the adult box score 0.2 keeps the 0.3 box; the pediatric point has none: the global 0.5 drops it
    assert [len(d["boxes"]) for d in out[PredKeys.DETECTIONS_OP]] == [1, 0, 0, 1]
    # without per-population points every image gets the global point
    one = post.with_settings(operating_points={}).apply_operating_point(pred, populations=pops)
    assert one[PredKeys.GATE].tolist() == [False, False, False, True]
    # an explicit threshold (a what-if) applies to every image, whatever its population
    what_if = post.with_settings(class_thresholds=0.35).apply_operating_point(pred, populations=pops)
    assert what_if[PredKeys.GATE].all()


def test_the_description_checks_its_operating_points():
    desc = ModelDescription(
        class_names=["pneumonia"], tasks=["classification"], encoder="resnet18", spatial_size=[64, 64]
    )
    with pytest.raises(DescriptionError, match="population"):
        desc.with_operating_points({"elderly": POINTS["adult"]})
    with pytest.raises(DescriptionError, match="every class"):
        desc.with_operating_points({"adult": {"class_thresholds": {"other": 0.5}}})
    with pytest.raises(DescriptionError, match="default_population"):
        desc.replace(default_population="teen")
    ok = desc.with_operating_points(POINTS, default_population="adult")
    assert ok.operating_point("pediatric")["gate_thresholds"] == [1.0]
    assert ok.operating_point(None)["class_thresholds"] == [0.5]  # the global point


def _dicom(path: Path, age: str | None) -> None:
    from dicom_factory import make_radiograph

    make_radiograph(shape=(48, 40), age=age, seed=len(path.name)).save_as(str(path), enforce_file_format=True)


@pytest.fixture(scope="module")
def population_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("populations")
    save_always_positive_model(
        root / "models" / "model.pt", spatial_size=(48, 48), operating_points=POINTS, default_population="adult"
    )
    inputs = root / "inputs"
    inputs.mkdir()
    _dicom(inputs / "adult.dcm", "045Y")
    _dicom(inputs / "child.dcm", "006Y")
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 48), dtype=np.uint8)).save(inputs / "plain.png")
    return root


def _outputs(out: Path) -> dict[str, dict]:
    return {Path(p.name).name.split(".")[0]: json.loads(p.read_text()) for p in out.glob("*.json")}


def test_inference_picks_the_point_from_the_dicom_age_and_says_so(population_model, tmp_path, single_thread):
    run_inference(population_model, tmp_path / "out", write_overlay=False, write_nifti=False)
    rec = _outputs(tmp_path / "out")
    assert rec["adult"]["operating_point"]["population"] == "adult"
    assert rec["adult"]["operating_point"]["reason"] == "dicom_age"
    assert rec["child"]["operating_point"] == {
        "population": "pediatric",
        "reason": "dicom_age",
        "class_thresholds": {"pneumonia": 1.0},
        "gate_thresholds": {"pneumonia": 1.0},
        "box_score_threshold": 0.0,
    }
    assert rec["plain"]["operating_point"]["population"] == "adult"  # a PNG: the model's default
    assert rec["plain"]["operating_point"]["reason"] == "default"
    assert rec["adult"]["gate"]["positive"] and not rec["child"]["gate"]["positive"]
    assert rec["child"]["mask_area_px"] == 0 and not rec["child"]["boxes"]
    rows = {Path(r["image"]).name: r for r in csv.DictReader(open(tmp_path / "out" / "predictions.csv"))}
    assert (rows["child.dcm"]["population"], rows["child.dcm"]["population_reason"]) == ("pediatric", "dicom_age")


def test_the_population_option_overrides_the_age(population_model, tmp_path, single_thread):
    run_inference(population_model, tmp_path / "out", population="adult", write_overlay=False, write_nifti=False)
    rec = _outputs(tmp_path / "out")
    assert {r["operating_point"]["reason"] for r in rec.values()} == {"option"}
    assert rec["child"]["gate"]["positive"]  # the adult point applied to the 6-year-old on request


def test_a_datalist_population_or_source_chooses_the_point(population_model, tmp_path, single_thread):
    inputs = population_model / "inputs"
    datalist = tmp_path / "list.json"
    items = [
        {"image": str(inputs / "plain.png"), "source": "kermany"},
        {"image": str(inputs / "plain.png"), "source": "rsna", "population": "pediatric"},
    ]
    datalist.write_text(json.dumps({"test": items}))
    run_bundle(
        "inference.json",
        workflow_type="infer",
        bundle_root=str(BUNDLE),
        input=str(datalist),
        ckpt_dir=str(population_model / "models"),
        output_dir=str(tmp_path / "out"),
        write_overlay=False,
        write_nifti=False,
    )
    got = sorted(
        (r["operating_point"]["population"], r["operating_point"]["reason"])
        for r in _outputs(tmp_path / "out").values()
    )
    assert got == [("pediatric", "datalist"), ("pediatric", "source")]


def test_evaluation_gates_each_image_at_its_populations_point():
    """MultiTaskMetrics' gated Dice uses the gate the evaluator applied: the image's population's point."""
    from ignite.engine import Engine

    from monai_mcx.handlers import MultiTaskMetrics
    from monai_mcx.keys import BatchKeys

    post = MultiCheXNetPostprocessor(class_thresholds=0.5, operating_points=POINTS)
    mask = torch.zeros(4, 1, 8, 8)
    mask[:, :, 2:6, 2:6] = 1
    outputs = {PredKeys.CLASS_LOGITS.value: torch.zeros(4, 1), PredKeys.SEG_PROBS.value: mask.clone()}
    pops = [("adult", "datalist"), ("adult", "datalist"), ("pediatric", "datalist"), (None, None)]
    pred = post.apply_operating_point(outputs, populations=pops)  # p = 0.5: adult passes, pediatric does not
    targets = {
        BatchKeys.IMAGE.value: torch.zeros(4, 1, 8, 8),
        BatchKeys.LABEL.value: torch.ones(4, 1),
        BatchKeys.HAS_LABEL.value: torch.ones(4),
        BatchKeys.MASK.value: mask,
        BatchKeys.HAS_MASK.value: torch.ones(4),
    }
    engine = Engine(lambda e, b: b)
    MultiTaskMetrics(["pneumonia"], postprocessor=post).attach(engine, "score")
    m = engine.run([{"pred": pred, "label": targets}]).metrics
    assert pred[PredKeys.GATE].tolist() == [True, True, False, True]  # the last: no population, global 0.5
    assert m["segmentation/dice_positive"] == pytest.approx(1.0)
    assert m["segmentation/dice_positive/gated"] == pytest.approx(0.75)  # the pediatric image's mask is gated out
