"""Public data-set adapters, SIIM RLE, patient-level splits and scripts/prepare_data.py."""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from monai_mcx.data.errors import DataError
from monai_mcx.data.public import (
    ClassMap,
    COVIDLungs,
    KermanyPneumonia,
    NIHChestXray14,
    QUViralLungs,
    RSNAPneumonia,
    SIIMPneumothorax,
    read_csv,
)
from monai_mcx.data.rle import rle_check, rle_decode, rle_encode
from monai_mcx.data.splits import check_patient_splits, split_by_patient

ROOT = Path(__file__).resolve().parents[1]


def _shared() -> Path:
    env = os.environ.get("MCX_SHARED")
    return Path(env) if env else ROOT.parent / "shared"


REAL = _shared() / "data" / "cxr-real"
LABELS = REAL / "labels"


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real data not found at {path} (the shared cxr-real pack; set MCX_SHARED to its parent folder)")
    return path


def _load_prepare():
    spec = importlib.util.spec_from_file_location("prepare_data", ROOT / "scripts" / "prepare_data.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# ---------------------------------------------------------------------------- RLE


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 12), st.integers(1, 12), st.data())
def test_rle_roundtrip_property(h, w, data):
    bits = data.draw(st.lists(st.booleans(), min_size=h * w, max_size=h * w))
    mask = np.array(bits, dtype=np.uint8).reshape(h, w)
    rle = rle_encode(mask)
    np.testing.assert_array_equal(rle_decode(rle, w, h), mask)
    assert rle_encode(rle_decode(rle, w, h)) == rle
    np.testing.assert_array_equal(rle_decode(rle_encode(mask, relative=False), w, h, relative=False), mask)


def test_rle_convention_column_major_relative():
    # pixels 1..2 of column 0, then (offset 3 from the end) pixels 5..5 -> column 1, row 1 (height 4)
    m = rle_decode("1 2 2 1", width=3, height=4)
    assert m.shape == (4, 3)
    assert m[:, 0].tolist() == [0, 1, 1, 0] and m[:, 1].tolist() == [0, 1, 0, 0] and m[:, 2].sum() == 0
    assert rle_decode("-1", 3, 4).sum() == 0 and rle_encode(np.zeros((4, 3))) == "-1"


def test_rle_overrun_and_malformed_named():
    with pytest.raises(DataError, match=r"train-rle.csv, row 7: .*overruns the 3x4 image"):
        rle_decode("10 3", 3, 4, file="train-rle.csv", row=7)
    with pytest.raises(DataError, match="x.csv, row 2: .*odd number"):
        rle_check("1 2 3", file="x.csv", row=2)


# ---------------------------------------------------------------------------- real label files


@pytest.mark.shared
def test_rsna_real_zip_counts():
    need(LABELS)
    header, rows = read_csv(LABELS / "kaggle_stage_2_train_labels.csv.zip")
    assert len(rows) == 30227
    ds = RSNAPneumonia(LABELS, check_files=False)  # finds kaggle_stage_2_train_labels.csv.zip by name
    recs = ds.parse()
    assert len(recs) == 26684
    assert sum(r["target"] for r in recs.values()) == 6012  # published positives
    assert sum(len(r["boxes"]) for r in recs.values()) == 9555
    items = ds.load()
    assert sum(it["boxes"] == [] for it in items) == 26684 - 6012
    assert sum(it["label"] == [1.0] for it in items) == 6012
    assert {tuple(it["findings"]) for it in items} == {("Lung Opacity",), ("No Lung Opacity",)}
    assert all(0 <= b[0] < b[2] <= 1024 and 0 <= b[1] < b[3] <= 1024 for it in items for b in it["boxes"])


@pytest.mark.shared
def test_siim_real_counts_every_rle_fits():
    need(LABELS)
    ds = SIIMPneumothorax(LABELS, rle_csv="siim-pneumothorax-train-rle.csv", check_files=False, write_masks=False)
    recs = ds.parse()  # every RLE checked against 1024x1024 (raises otherwise)
    assert sum(len(r["rows"]) for r in recs.values()) == 12954
    assert len(recs) == 12047
    assert sum(r["positive"] for r in recs.values()) == 2669
    # a multi-row image decodes to the OR of its rows, and decode agrees with the fast check
    multi = next(r for r in recs.values() if len(r["rows"]) > 2)
    m = ds.decode(multi, 1024, 1024)
    parts = [rle_decode(x, 1024, 1024) for x in multi["rles"]]
    np.testing.assert_array_equal(m, np.bitwise_or.reduce(parts))
    assert parts[0].sum() == rle_check(multi["rles"][0])
    assert rle_encode(parts[0]) == multi["rles"][0]


@pytest.mark.shared
def test_nih_real_counts():
    need(LABELS)
    ds = NIHChestXray14(LABELS, check_files=False)
    entries = ds.parse_entries()
    assert len(entries) == 112120
    assert len({e["patient"] for e in entries.values()}) == 30805
    assert sum("Pneumonia" in e["findings"] for e in entries.values()) == 1431
    assert sum(not e["findings"] for e in entries.values()) == 60361  # "No Finding"
    boxes = ds.parse_boxes()
    assert sum(len(v) for v in boxes.values()) == 984 and len(boxes) == 880


# ---------------------------------------------------------------------------- real image folders


@pytest.mark.shared
def test_kermany_real():
    items = KermanyPneumonia(need(REAL / "kermany")).load()
    assert len(items) == 5216
    assert sum(it["label"] == [0.0] for it in items) == 1341
    assert sum(it["info"]["subtype"] == "bacteria" for it in items) == 2530
    assert sum(it["info"]["subtype"] == "virus" for it in items) == 1345
    pn = [it for it in items if it["label"] == [1.0]]
    assert all(it["patient"].startswith("kermany:person") for it in pn)
    assert all(it["mask"] is None and it["boxes"] is None for it in items)


@pytest.mark.shared
def test_covid_and_qu_lungs_real():
    items = COVIDLungs(need(REAL / "covid_lungs")).load()
    assert len(items) == 283
    assert all(it["boxes"] is not None and len(it["boxes"]) == 2 for it in items)
    assert all(it["mask"] is not None and Path(it["mask"]).is_file() for it in items)
    assert sum(it["label"] == [1.0] for it in items) == 282  # one "No Finding"
    assert {n for it in items for n in it["info"]["box_names"]} == {"Left Lung", "Right Lung"}
    qu = QUViralLungs(need(REAL / "qu_viral_lungs")).load()
    assert len(qu) == 700 and all(it["label"] == [1.0] and it["patient"].startswith("kermany:person") for it in qu)


# ---------------------------------------------------------------------------- synthetic data sets


def _write_csv(path: Path, text: str):
    if path.suffix == ".gz":
        with gzip.open(path, "wt") as f:
            f.write(text)
    elif path.suffix == ".zip":
        with zipfile.ZipFile(path, "w") as z:
            z.writestr(path.name[:-4], text)
    else:
        path.write_text(text)


def _rsna(tmp_path, labels: str, detailed: str | None = None, images=("a", "b", "c")):
    root = tmp_path / "rsna"
    (root / "stage_2_train_images").mkdir(parents=True)
    for pid in images:
        (root / "stage_2_train_images" / f"{pid}.dcm").write_bytes(b"x")
    _write_csv(root / "stage_2_train_labels.csv.gz", labels)
    if detailed:
        _write_csv(root / "stage_2_detailed_class_info.csv", detailed)
    return root


RSNA_OK = "patientId,x,y,width,height,Target\na,,,,,0\nb,10,20,30,40,1\nb,100,100,50,60,1\nc,,,,,0\n"
RSNA_DETAILED = "patientId,class\na,No Lung Opacity / Not Normal\nb,Lung Opacity\nb,Lung Opacity\nc,Normal\n"


def test_rsna_synthetic_boxes_and_findings(tmp_path):
    items = {it["patient"]: it for it in RSNAPneumonia(_rsna(tmp_path, RSNA_OK, RSNA_DETAILED)).load()}
    assert items["rsna:b"]["boxes"] == [[10.0, 20.0, 40.0, 60.0], [100.0, 100.0, 150.0, 160.0]]
    assert items["rsna:a"]["boxes"] == [] and items["rsna:a"]["label"] == [0.0]
    assert items["rsna:a"]["findings"] == ["No Lung Opacity / Not Normal"]
    assert items["rsna:c"]["findings"] == ["Normal"] and items["rsna:b"]["label"] == [1.0]
    # "Not Normal" is usable as a class
    cm = ClassMap(
        ["opacity", "abnormal"],
        {"rsna": {"Lung Opacity": ["opacity", "abnormal"], "No Lung Opacity / Not Normal": "abnormal"}},
    )
    items = {it["patient"]: it for it in RSNAPneumonia(tmp_path / "rsna", class_map=cm).load()}
    assert items["rsna:a"]["label"] == [0.0, 1.0] and items["rsna:c"]["label"] == [0.0, 0.0]


@pytest.mark.parametrize(
    "row, problem",
    [
        ("b,10,20,-5,40,1", "x2 <= x1"),
        ("b,1000,20,30,40,1", "outside"),
        ("b,10,20,30,40,2", "Target must be 0 or 1"),
        ("b,x,20,30,40,1", "numeric"),
    ],
)
def test_rsna_bad_rows_named(tmp_path, row, problem):
    root = _rsna(tmp_path, "patientId,x,y,width,height,Target\na,,,,,0\n" + row + "\n")
    with pytest.raises(DataError, match=rf"stage_2_train_labels.csv.gz, row 3: .*{problem}"):
        RSNAPneumonia(root).load()
    ds = RSNAPneumonia(root, on_error="skip")
    assert [it["patient"] for it in ds.load()] == ["rsna:a"]
    assert len(ds.skipped) == 1 and ds.skipped[0]["row"] == 3 and problem in ds.skipped[0]["problem"]


def test_rsna_exact_duplicate_rows_dropped_with_a_warning(tmp_path):
    """Issue 24 item 9: a repeated row is one box, not two; the warning names the CSV lines and the patient."""
    labels = (
        "patientId,x,y,width,height,Target\n"
        "a,,,,,0\n"  # line 2
        "b,10,20,30,40,1\n"  # line 3
        "b,10,20,30,40,1\n"  # line 4: repeats line 3
        "b,100,100,50,60,1\n"  # line 5
        "c,,,,,0\n"  # line 6
        "b,10,20,30,40,1\n"  # line 7: repeats line 3 again
        "c,,,,,0\n"  # line 8: repeats line 6
    )
    root = _rsna(tmp_path, labels, RSNA_DETAILED)
    with pytest.warns(UserWarning) as record:
        items = {it["patient"]: it for it in RSNAPneumonia(root).load()}
    text = "\n".join(str(w.message) for w in record)
    assert "stage_2_train_labels.csv.gz: 3 exact duplicate rows dropped" in text
    assert "row 4 (patientId b, repeats row 3)" in text and "row 7 (patientId b, repeats row 3)" in text
    assert "row 8 (patientId c, repeats row 6)" in text
    assert items["rsna:b"]["boxes"] == [[10.0, 20.0, 40.0, 60.0], [100.0, 100.0, 150.0, 160.0]]
    assert items["rsna:c"]["boxes"] == [] and items["rsna:a"]["boxes"] == []


def test_rsna_without_duplicates_is_silent(tmp_path, recwarn):
    RSNAPneumonia(_rsna(tmp_path, RSNA_OK, RSNA_DETAILED)).load()
    assert not [w for w in recwarn if "duplicate" in str(w.message)]


def test_missing_image_and_empty_csv_named(tmp_path):
    root = _rsna(tmp_path, RSNA_OK, images=("a", "b"))
    with pytest.raises(DataError, match=r"stage_2_train_labels.csv.gz, row 5: image not found: .*c.dcm"):
        RSNAPneumonia(root).load()
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "labels.csv").write_text("")
    with pytest.raises(DataError, match=r"labels.csv: empty CSV"):
        COVIDLungs(empty).load()
    (empty / "labels.csv").write_text("image,finding\n")
    with pytest.raises(DataError, match=r"labels.csv: empty CSV"):
        COVIDLungs(empty).load()


def _dicom(path: Path, uid: str, rows=8, cols=6):
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    meta.MediaStorageSOPInstanceUID = uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.PatientID = meta.MediaStorageSOPClassUID, uid, f"pat-{uid[-1]}"
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = rows, cols, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = np.zeros((rows, cols), np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(str(path), enforce_file_format=True)


def test_siim_synthetic_nested_dicoms_or_masks(tmp_path):
    root = tmp_path / "siim"
    for uid in ("1.2.3.1", "1.2.3.2"):
        _dicom(root / "dicom-images-train" / f"study{uid}" / "series" / f"{uid}.dcm", uid)
    m1 = np.zeros((8, 6), np.uint8)
    m1[1:3, 0] = 1
    m2 = np.zeros((8, 6), np.uint8)
    m2[4:7, 4] = 1
    (root / "train-rle.csv").write_text(
        f"ImageId, EncodedPixels\n1.2.3.1,{rle_encode(m1)}\n1.2.3.2,-1\n1.2.3.1,{rle_encode(m2)}\n"
    )
    ds = SIIMPneumothorax(root, image_size=(6, 8), mask_dir=tmp_path / "cache")
    items = {it["image"].split("/")[-1]: it for it in ds.load()}
    pos, neg = items["1.2.3.1.dcm"], items["1.2.3.2.dcm"]
    np.testing.assert_array_equal(np.asarray(Image.open(pos["mask"])), m1 | m2)
    assert np.asarray(Image.open(neg["mask"])).shape == (8, 6) and np.asarray(Image.open(neg["mask"])).sum() == 0
    assert pos["findings"] == ["Pneumothorax"] and neg["findings"] == []
    assert pos["label"] is None and pos["boxes"] is None and pos["patient"] == "siim:pat-1"
    # overrunning RLE: error names file and row
    (root / "train-rle.csv").write_text("ImageId, EncodedPixels\n1.2.3.1,40 20\n")
    with pytest.raises(DataError, match=r"train-rle.csv, row 2: .*overruns"):
        SIIMPneumothorax(root, image_size=(6, 8)).load()


def test_nih_synthetic(tmp_path):
    root = tmp_path / "nih"
    (root / "images_001" / "images").mkdir(parents=True)
    for n in ("00000001_000.png", "00000002_000.png"):
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(root / "images_001" / "images" / n)
    _write_csv(
        root / "Data_Entry_2017.csv.zip",
        "Image Index,Finding Labels,Follow-up #,Patient ID\n00000001_000.png,Pneumonia|Effusion,0,1\n"
        "00000002_000.png,No Finding,0,2\n",
    )
    (root / "BBox_List_2017.csv").write_text(
        "Image Index,Finding Label,Bbox [x,y,w,h],,,\n00000001_000.png,Pneumonia,10,20,30,40\n"
        "00000001_000.png,Effusion,1,2,3,4\n"
    )
    (root / "test_list.txt").write_text("00000002_000.png\n")
    items = {it["patient"]: it for it in NIHChestXray14(root).load()}
    assert items["nih:1"]["label"] == [1.0] and items["nih:1"]["boxes"] == [[10.0, 20.0, 40.0, 60.0]]
    assert items["nih:2"]["label"] == [0.0] and items["nih:2"]["boxes"] is None
    assert items["nih:2"]["info"]["official_split"] == "test"
    cm = ClassMap(["effusion", "pneumonia"], {"nih": {"Effusion": "effusion", "Pneumonia": "pneumonia"}})
    items = {it["patient"]: it for it in NIHChestXray14(root, class_map=cm).load()}
    assert items["nih:1"]["label"] == [1.0, 1.0] and len(items["nih:1"]["boxes"]) == 2


def test_class_map_unknown_class_named(tmp_path):
    p = tmp_path / "classes.json"
    p.write_text(json.dumps({"class_names": ["pneumonia"], "sources": {"rsna": {"Lung Opacity": "pnemonia"}}}))
    with pytest.raises(DataError, match=r"classes.json: unknown class name 'pnemonia'"):
        ClassMap.from_json(p)
    cm = ClassMap(["pneumonia", "pneumothorax"])  # default map reaches only pneumonia -> unknown, not negative
    assert cm.label("rsna", ["Lung Opacity"]) is None and cm.label("siim", ["Pneumothorax"]) is None


# ---------------------------------------------------------------------------- splits


def test_split_by_patient_deterministic_and_leak_free():
    items = [
        {"image": f"{i}.png", "patient": f"p{i // 3}", "source": "s" if i % 2 else "t", "label": [float(i % 5 == 0)]}
        for i in range(300)
    ]
    a = split_by_patient(items, 0.2, 0.1, seed=3)
    b = split_by_patient(items, 0.2, 0.1, seed=3)
    assert a == b and sum(len(v) for v in a.values()) == 300
    check_patient_splits(a)
    pats = {k: {it["patient"] for it in v} for k, v in a.items()}
    assert not (
        pats["training"] & pats["validation"] or pats["training"] & pats["test"] or pats["validation"] & pats["test"]
    )
    assert 0.05 < len(pats["test"]) / 100 < 0.2 and 0.1 < len(pats["validation"]) / 100 < 0.3
    bad = {"training": [{"patient": "p7", "image": "a.png"}], "validation": [{"patient": "p7", "image": "b.png"}]}
    with pytest.raises(
        DataError, match=r"dl.json: patient 'p7' is in both 'training' \(a.png\) and 'validation' \(b.png\)"
    ):
        check_patient_splits(bad, file="dl.json")


# ---------------------------------------------------------------------------- prepare_data.py


def _kermany(tmp_path):
    root = tmp_path / "chest_xray" / "train"
    for d, names in (
        ("NORMAL", ["IM-0001-0001.jpeg", "IM-0002-0001.jpeg"]),
        ("PNEUMONIA", ["person1_bacteria_1.jpeg", "person1_virus_2.jpeg", "person2_virus_3.jpeg"]),
    ):
        (root / d).mkdir(parents=True)
        for n in names:
            Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / d / n)
    return tmp_path / "chest_xray"


def test_prepare_data_end_to_end(tmp_path, capsys):
    prep = _load_prepare()
    with pytest.raises(SystemExit) as e:
        prep.main(["--help"])
    assert e.value.code == 0 and "--covid-lungs" in capsys.readouterr().out
    kroot = _kermany(tmp_path)
    (kroot / "train" / "PNEUMONIA" / "badname.jpeg").write_bytes(b"x")
    rsna = _rsna(tmp_path, RSNA_OK, RSNA_DETAILED, images=("a", "b"))  # c's image is missing
    out = tmp_path / "out" / "datalist.json"
    with pytest.raises(DataError, match="badname.jpeg"):
        prep.main(["--kermany", str(kroot), "--output", str(out), "--quiet"])
    assert (
        prep.main(
            [
                "--kermany",
                str(kroot),
                "--rsna",
                str(rsna),
                "--output",
                str(out),
                "--quiet",
                "--on-error",
                "skip",
                "--val-fraction",
                "0.3",
                "--test-fraction",
                "0.3",
                "--seed",
                "1",
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "kermany" in text and "rsna" in text and "+pneumonia" in text
    dl = json.loads(out.read_text())
    assert dl["class_names"] == ["pneumonia"]
    items = dl["training"] + dl["validation"] + dl["test"]
    assert len(items) == 5 + 2
    keys = {"image", "patient", "source", "label", "mask", "boxes", "lung_mask", "population", "finding"}
    assert all(set(it) == keys for it in items)
    assert {it["source"]: it["population"] for it in items} == {"kermany": "pediatric", "rsna": "adult"}
    assert all(it["lung_mask"] is None for it in items)  # neither set outlines lungs
    assert all((out.parent / it["image"]).is_file() and not Path(it["image"]).is_absolute() for it in items)
    check_patient_splits(dl)
    p1 = {s for s in ("training", "validation", "test") for it in dl[s] if it["patient"] == "kermany:person1"}
    assert len(p1) == 1
    report = json.loads((out.parent / "datalist_skipped.json").read_text())
    assert report["skipped"] == 2
    assert {Path(r["file"]).name for r in report["items"]} == {"badname.jpeg", "stage_2_train_labels.csv.gz"}
    # --check refuses a leaking datalist, naming the patient
    leak = {"training": [{"patient": "x", "image": "1.png"}], "test": [{"patient": "x", "image": "2.png"}]}
    (tmp_path / "leak.json").write_text(json.dumps(leak))
    with pytest.raises(DataError, match="patient 'x'"):
        prep.main(["--check", str(tmp_path / "leak.json")])
