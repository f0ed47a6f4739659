"""The SIIM-FISABIO-RSNA COVID-19 adapter (``siim_covid``) and ``prepare_data.py --siim-covid``."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from monai_mcx.data.errors import DataError
from monai_mcx.data.public import ADAPTERS, ClassMap, SIIMCovidOpacity
from monai_mcx.data.splits import SPLIT_NAMES, check_patient_splits, split_by_patient

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MCX_SHARED", ROOT.parent / "shared"))
REAL = SHARED / "data" / "cxr-adult" / "siim_covid"

#: 3 studies, 4 images: study s1 holds two images (one with opacity, one without)
LABELS = (
    "image,study,opacity,n_boxes,study_label\n"
    "a1.jpg,s1,1,2,typical\n"  # row 2
    "a2.jpg,s1,0,0,typical\n"  # row 3
    "b1.jpg,s2,0,0,negative\n"  # row 4
    "c1.jpg,s3,1,1,atypical\n"  # row 5
)


def _siim_covid(tmp_path: Path, labels: str = LABELS, images=("a1", "a2", "b1", "c1")) -> Path:
    root = tmp_path / "siim_covid"
    (root / "images").mkdir(parents=True)
    (root / "labels.csv").write_text(labels)
    for name in images:
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "images" / f"{name}.jpg")
    return root


def _load_prepare():
    spec = importlib.util.spec_from_file_location("prepare_data", ROOT / "scripts" / "prepare_data.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_siim_covid_items(tmp_path):
    root = _siim_covid(tmp_path)
    assert ADAPTERS["siim_covid"] is SIIMCovidOpacity
    items = {Path(it["image"]).name: it for it in SIIMCovidOpacity(root).load()}
    assert list(items) == ["a1.jpg", "a2.jpg", "b1.jpg", "c1.jpg"]
    a1, a2, b1, c1 = items.values()
    assert a1["patient"] == a2["patient"] == "siim_covid:s1" and b1["patient"] == "siim_covid:s2"
    assert all(it["source"] == "siim_covid" for it in items.values())
    assert [it["label"] for it in items.values()] == [[1.0], [0.0], [0.0], [1.0]]  # opacity -> pneumonia
    # boxes are not usable (original size unknown): null, never [] (= "no lesion")
    assert all(it["boxes"] is None and it["mask"] is None for it in items.values())
    assert a1["findings"] == ["Lung Opacity", "Typical Appearance"]
    assert b1["findings"] == ["Negative for Pneumonia"] and c1["findings"] == ["Lung Opacity", "Atypical Appearance"]
    assert [it["info"]["study_label"] for it in items.values()] == ["typical", "typical", "negative", "atypical"]
    assert a1["info"]["n_boxes"] == 2 and a1["info"]["study"] == "s1"
    assert Path(a1["image"]).is_absolute() and Path(a1["image"]).is_file()


def test_siim_covid_class_map_typical_vs_rest(tmp_path):
    root = _siim_covid(tmp_path)
    cm = ClassMap(["covid19"], {"siim_covid": {"Typical Appearance": "covid19"}})
    assert [it["label"] for it in SIIMCovidOpacity(root, class_map=cm).load()] == [[1.0], [1.0], [0.0], [0.0]]
    # a class map that does not cover this source: unknown, not negative
    other = ClassMap(["pneumonia"], {"rsna": {"Lung Opacity": "pneumonia"}})
    assert all(it["label"] is None for it in SIIMCovidOpacity(root, class_map=other).load())


@pytest.mark.parametrize(
    "row, problem",
    [
        ("d1.jpg,s4,2,1,typical", "opacity must be 0 or 1, got '2'"),
        ("d1.jpg,s4,yes,1,typical", "opacity must be 0 or 1"),
        ("d1.jpg,s4,1,0,typical", "opacity 1 contradicts n_boxes 0"),
        ("d1.jpg,s4,0,x,negative", "n_boxes must be a count"),
        ("d1.jpg,s4,1,1,covid", "unknown study_label 'covid'"),
        ("d1.jpg,,1,1,typical", "empty study"),
        ("a1.jpg,s1,1,2,typical", "image a1.jpg listed twice .first in row 2."),
        ("d1.jpg,s1,1,1,atypical", "study s1 has study_label 'atypical' here and 'typical' in row 2"),
        ("d1.jpg,s4,1,1,typical", r"image not found: .*d1.jpg"),
    ],
)
def test_siim_covid_bad_rows_named(tmp_path, row, problem):
    root = _siim_covid(tmp_path, LABELS + row + "\n")  # row 6; d1.jpg is never written
    with pytest.raises(DataError, match=rf"labels.csv, row 6: .*{problem}"):
        SIIMCovidOpacity(root).load()
    ds = SIIMCovidOpacity(root, on_error="skip")
    assert len(ds.load()) == 4
    assert len(ds.skipped) == 1 and ds.skipped[0]["row"] == 6


def test_siim_covid_missing_columns_named(tmp_path):
    root = _siim_covid(tmp_path, "image,study,opacity\na1.jpg,s1,1\n")
    with pytest.raises(DataError, match=r"labels.csv: missing column\(s\) \['n_boxes', 'study_label'\]"):
        SIIMCovidOpacity(root).load()


def test_prepare_data_siim_covid(tmp_path, capsys):
    prep = _load_prepare()
    out = tmp_path / "out" / "datalist.json"
    root = _siim_covid(tmp_path)
    assert prep.main(["--siim-covid", str(root), "--output", str(out), "--quiet", "--test-fraction", "0.4"]) == 0
    assert "siim_covid" in capsys.readouterr().out
    dl = json.loads(out.read_text())
    items = [it for s in SPLIT_NAMES for it in dl[s]]
    assert len(items) == 4 and all(it["boxes"] is None and it["source"] == "siim_covid" for it in items)
    assert {it["finding"] for it in items} >= {"Lung Opacity|Typical Appearance", "Negative for Pneumonia"}
    check_patient_splits(dl)
    s1 = {s for s in SPLIT_NAMES for it in dl[s] if it["patient"] == "siim_covid:s1"}
    assert len(s1) == 1  # both images of one study in one split


@pytest.mark.shared
def test_siim_covid_real():
    if not REAL.is_dir():
        pytest.skip(f"real data not found at {REAL} (the shared cxr-adult pack; set MCX_SHARED to its parent)")
    items = SIIMCovidOpacity(REAL).load()
    assert len(items) == 4433
    assert sum(it["label"] == [1.0] for it in items) == 2978
    assert sum(it["label"] == [0.0] for it in items) == 1455
    assert all(it["boxes"] is None and it["mask"] is None for it in items)
    assert sum(it["info"]["study_label"] == "typical" for it in items) == 2089
    assert len({it["patient"] for it in items}) == 4238  # studies; a few hold several images
    splits = split_by_patient(items, 0.1, 0.1, 0)
    check_patient_splits(splits)  # no study in two splits
    where = {}
    for s in SPLIT_NAMES:
        for it in splits[s]:
            assert where.setdefault(it["patient"], s) == s
    assert sum(len(splits[s]) for s in SPLIT_NAMES) == 4433
