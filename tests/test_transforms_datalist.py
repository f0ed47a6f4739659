"""Datalist validation, annotation preparation (unknown vs negative) and box-aware resizing."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.transforms import LoadImage
from PIL import Image

from monai_mcx.data import (
    DatalistError,
    collate_cxr,
    inference_items,
    list_image_folder,
    load_datalist,
    resolve_datalist,
)
from monai_mcx.data.errors import DataError
from monai_mcx.transforms import AnnotationError, PrepareAnnotationsd, ResizeWithBoxesd, ToSingleChanneld


def _png(path, rows, cols, value=None):
    """An 8-bit PNG of ``rows x cols`` (zeros, or ``value``)."""
    arr = np.zeros((rows, cols), np.uint8) if value is None else value
    Image.fromarray(arr).save(path)
    return path


@pytest.fixture
def small_set(tmp_path):
    img = np.zeros((40, 50), np.uint8)  # 40 rows (H) x 50 columns (W)
    img[5:15, 10:30] = 200
    _png(tmp_path / "a.png", 40, 50, img)
    mask = np.zeros((40, 50), np.uint8)
    mask[5:15, 10:30] = 1  # rows 5..14, columns 10..29 -> box [10, 5, 30, 15]
    _png(tmp_path / "a_mask.png", 40, 50, mask)
    items = [
        {
            "image": "a.png",
            "patient": "p1",
            "source": "t",
            "label": [1],
            "mask": "a_mask.png",
            "boxes": [[10, 5, 30, 15]],
        },
        {"image": "a.png", "patient": "p2", "source": "t", "label": None, "mask": None, "boxes": None},
        {"image": "a.png", "patient": "p3", "source": "t", "label": [0], "mask": None, "boxes": []},
    ]
    dl = tmp_path / "datalist.json"
    dl.write_text(json.dumps({"class_names": ["pneumonia"], "training": items, "validation": [], "test": []}))
    return dl


def _load(item):
    d = dict(item)
    d["image"] = LoadImage(image_only=True, ensure_channel_first=True)(item["image"])
    return d


def test_load_datalist_resolves_paths_and_keeps_null(small_set):
    items = load_datalist(small_set, "training", ["pneumonia"])
    assert items[0]["image"] == str(small_set.parent / "a.png")
    assert items[1]["label"] is None and items[1]["mask"] is None and items[1]["boxes"] is None
    assert items[2]["boxes"] == [] and items[2]["label"] == [0.0]


@pytest.mark.parametrize(
    "item, message",
    [
        ({"image": "missing.png"}, "image file not found"),
        ({"image": "a.png", "label": [1, 0]}, "label has 2 values"),
        ({"image": "a.png", "boxes": [[5, 5, 2, 9]]}, "x2 <= x1"),
        ({"image": "a.png", "boxes": [[1, 2, 3]]}, "is not \\[x1, y1, x2, y2\\]"),
        ({"image": "a.png", "mask": "nowhere.png"}, "mask file not found"),
        ({"patient": "x"}, "missing required key 'image'"),
    ],
)
def test_bad_items_name_the_datalist_and_item(small_set, item, message):
    bad = small_set.parent / "bad.json"
    bad.write_text(json.dumps({"training": [item]}))
    with pytest.raises(DatalistError, match=message) as e:
        load_datalist(bad, "training", ["pneumonia"])
    assert "bad.json" in str(e.value) and "training[0]" in str(e.value)
    assert isinstance(e.value, DataError)


def test_datalist_class_names_must_match(small_set):
    with pytest.raises(DatalistError, match="class_names"):
        load_datalist(small_set, "training", ["covid"])


def test_prepare_annotations_flags_unknown_vs_negative(small_set):
    items = load_datalist(small_set, "training", ["pneumonia"])
    t = PrepareAnnotationsd(num_classes=1)
    full, unknown, negative = (t(_load(it)) for it in items)
    assert full["image"].shape == (1, 50, 40)  # (C, W, H)
    assert full["mask"].shape == (1, 50, 40) and float(full["mask"].sum()) == 200
    # MONAI layout: mask[0, x, y] set for x (column) 10..29 and y (row) 5..14 -- inside the box [10, 5, 30, 15]
    xs, ys = torch.nonzero(full["mask"][0], as_tuple=True)
    assert xs.min() == 10 and xs.max() == 29 and ys.min() == 5 and ys.max() == 14
    assert (full["has_label"], full["has_mask"], full["has_boxes"], full["positive"]) == (1, 1, 1, 1)
    assert (unknown["has_label"], unknown["has_mask"], unknown["has_boxes"], unknown["positive"]) == (0, 0, 0, 0)
    assert unknown["boxes"].shape == (0, 4) and float(unknown["mask"].sum()) == 0
    assert (negative["has_label"], negative["has_boxes"], negative["positive"]) == (1, 1, 0)
    assert negative["boxes"].shape == (0, 4)


def test_positive_derived_from_mask_or_boxes_when_label_unknown(small_set):
    items = load_datalist(small_set, "training", ["pneumonia"])
    t = PrepareAnnotationsd(num_classes=1)
    mask_only = dict(items[0], label=None, boxes=None)
    boxes_only = dict(items[0], label=None, mask=None)
    assert t(_load(mask_only))["positive"] == 1
    assert t(_load(boxes_only))["positive"] == 1
    assert t(_load(dict(boxes_only, boxes=[])))["positive"] == 0


def test_mask_size_mismatch_and_boxes_outside_name_the_file(small_set, tmp_path):
    _png(tmp_path / "small_mask.png", 20, 20)
    items = load_datalist(small_set, "training", ["pneumonia"])
    t = PrepareAnnotationsd(num_classes=1)
    with pytest.raises(AnnotationError, match="small_mask.png.*differs from its image.*a.png"):
        t(_load(dict(items[0], mask=str(tmp_path / "small_mask.png"))))
    with pytest.raises(AnnotationError, match="a.png.*outside the image"):
        t(_load(dict(items[0], boxes=[[10, 5, 80, 15]])))
    with pytest.raises(AnnotationError, match="a.png: label has 2 values"):
        t(_load(dict(items[0], label=[1, 1])))


def test_resize_moves_boxes_with_image_and_mask(small_set):
    items = load_datalist(small_set, "training", ["pneumonia"])
    d = PrepareAnnotationsd(num_classes=1)(_load(items[0]))
    out = ResizeWithBoxesd(keys=["image", "mask"], spatial_size=(25, 80), mode=["area", "nearest"])(d)
    assert out["image"].shape == (1, 25, 80) and out["mask"].shape == (1, 25, 80)
    expected = torch.tensor([[10 * 0.5, 5 * 2.0, 30 * 0.5, 15 * 2.0]])
    assert torch.allclose(out["boxes"], expected)
    xs, ys = torch.nonzero(out["mask"][0], as_tuple=True)
    box = out["boxes"][0]
    assert (
        xs.min() >= box[0] - 1 and xs.max() + 1 <= box[2] + 1 and ys.min() >= box[1] - 1 and ys.max() + 1 <= box[3] + 1
    )


def test_to_single_channel_averages_rgb():
    rgb = torch.stack([torch.full((4, 5), 0.0), torch.full((4, 5), 0.5), torch.full((4, 5), 1.0)])
    out = ToSingleChanneld("image")({"image": rgb})["image"]
    assert out.shape == (1, 4, 5) and torch.allclose(out, torch.full((1, 4, 5), 0.5))


def test_collate_keeps_variable_boxes_as_list(small_set):
    items = load_datalist(small_set, "training", ["pneumonia"])
    t = PrepareAnnotationsd(num_classes=1)
    batch = collate_cxr([t(_load(it)) for it in items])
    assert batch["image"].shape == (3, 1, 50, 40)
    assert isinstance(batch["boxes"], list) and [b.shape[0] for b in batch["boxes"]] == [1, 0, 0]
    assert batch["has_boxes"].tolist() == [1.0, 0.0, 1.0]


def test_resolve_datalist_and_inference_items(small_set, tmp_path):
    assert resolve_datalist(small_set.parent) == str(small_set)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.txt").write_text("not a datalist")
    with pytest.raises(DatalistError, match="no datalist.json"):
        resolve_datalist(tmp_path / "other")
    files = inference_items(tmp_path)
    assert [f["image"] for f in files if "error" not in f] == [str(tmp_path / n) for n in ("a.png", "a_mask.png")]
    assert {Path(f["image"]).name: f["error"].split("skipped: ")[1] for f in files if "error" in f} == {
        "datalist.json": "not an image file: its content is not DICOM, PNG, JPEG, TIFF, BMP or NIfTI (named .json)",
        "other": "a folder without DICOM files (sub-folders are searched for DICOM only)",
    }
    # a datalist keeps each item's source (and population): they choose the operating point
    assert inference_items(small_set, "training")[0] == {"image": str(tmp_path / "a.png"), "source": "t"}
    with pytest.raises(DatalistError, match="no DICOM/PNG"):
        inference_items(tmp_path / "other")


# ---------------------------------------------------------------------------- labels (#13.4)


def _bad_datalist(small_set, items, name="bad.json"):
    bad = small_set.parent / name
    bad.write_text(json.dumps({"class_names": ["pneumonia"], "training": items}))
    return bad


@pytest.mark.parametrize(
    "value, message",
    [
        (-1, "label\\[0\\] is -1 \\(CheXpert's 'uncertain'\\).*uncertain='zeros' or 'ones'"),
        (2, "label\\[0\\] is 2, not 0 or 1"),
        (0.5, "label\\[0\\] is 0.5, not 0 or 1"),
        (float("nan"), "label\\[0\\] is nan, not 0 or 1"),
    ],
)
def test_labels_other_than_0_1_refused_with_file_and_item(small_set, value, message):
    bad = _bad_datalist(small_set, [{"image": "a.png", "label": [0]}, {"image": "a.png", "label": [value]}])
    with pytest.raises(DatalistError, match=message) as e:
        load_datalist(bad, "training", ["pneumonia"])
    assert "bad.json: training[1] (image 'a.png')" in str(e.value)


def test_uncertain_policy_maps_minus_one_explicitly(small_set):
    bad = _bad_datalist(small_set, [{"image": "a.png", "label": [-1]}, {"image": "a.png", "label": [1]}])
    assert [it["label"] for it in load_datalist(bad, "training", ["pneumonia"], uncertain="zeros")] == [[0.0], [1.0]]
    assert [it["label"] for it in load_datalist(bad, "training", ["pneumonia"], uncertain="ones")] == [[1.0], [1.0]]
    with pytest.raises(ValueError, match="uncertain must be one of"):
        load_datalist(bad, "training", ["pneumonia"], uncertain="ignore")
    nan2 = _bad_datalist(small_set, [{"image": "a.png", "label": [float("nan")]}], "nan.json")
    with pytest.raises(DatalistError, match="nan, not 0 or 1"):  # the policy maps -1 only
        load_datalist(nan2, "training", ["pneumonia"], uncertain="zeros")


# ---------------------------------------------------------------------------- one box validation (#13.5)


def test_nan_box_refused_by_datalist_transforms_and_adapters(small_set, tmp_path):
    import monai_mcx.data.boxes as boxes_mod
    import monai_mcx.data.public as public
    import monai_mcx.transforms.io as io_mod
    import monai_mcx.transforms.labels as labels_mod

    nan_box = [10, 5, float("nan"), 15]
    bad = _bad_datalist(small_set, [{"image": "a.png", "boxes": [[10, 5, 30, 15], nan_box]}])
    with pytest.raises(DatalistError, match="bad.json: training\\[0\\].*boxes\\[1\\].*NaN"):
        load_datalist(bad, "training", ["pneumonia"])
    item = load_datalist(small_set, "training", ["pneumonia"])[0]
    with pytest.raises(AnnotationError, match="a.png: box 0: .*NaN"):
        PrepareAnnotationsd(num_classes=1)(_load(dict(item, boxes=[nan_box])))
    with pytest.raises(AnnotationError, match="a.png: box 0: .*x2 <= x1"):
        PrepareAnnotationsd(num_classes=1)(_load(dict(item, boxes=[[30, 5, 10, 15]])))
    # an adapter (RSNA) reading a NaN coordinate names the CSV and its row
    (tmp_path / "rsna").mkdir()
    csv_text = "patientId,x,y,width,height,Target\np1,10,nan,20,20,1\n"
    (tmp_path / "rsna" / "stage_2_train_labels.csv").write_text(csv_text)
    with pytest.raises(DataError, match="stage_2_train_labels.csv, row 2: box .*NaN"):
        public.RSNAPneumonia(tmp_path / "rsna", detailed_csv=None).parse()
    # one function: every caller uses monai_mcx.data.boxes
    assert public.check_box is io_mod.check_box is boxes_mod.check_box
    assert labels_mod.check_boxes is boxes_mod.check_boxes


def test_no_other_box_validation_in_the_package():
    """The box rule is written once: no other module compares x2 with x1 itself."""
    import re

    import monai_mcx

    root = Path(monai_mcx.__file__).parent
    pattern = re.compile(r"x2 <= x1|\[:, 2\] <= \w+\[:, 0\]|b\[2\] <= b\[0\]")
    hits = [p.relative_to(root).as_posix() for p in root.rglob("*.py") if pattern.search(p.read_text())]
    assert hits == ["data/boxes.py"], hits


# ---------------------------------------------------------------------------- grey masks (#13.6)


def test_prepare_annotations_refuses_grey_level_mask(small_set, tmp_path):
    _png(tmp_path / "grey_mask.png", 40, 50, np.random.default_rng(0).integers(0, 256, (40, 50)).astype(np.uint8))
    item = load_datalist(small_set, "training", ["pneumonia"])[0]
    with pytest.raises(AnnotationError, match="grey_mask.png.*mask of .*a.png.*not a label mask"):
        PrepareAnnotationsd(num_classes=1)(_load(dict(item, mask=str(tmp_path / "grey_mask.png"))))
    with pytest.warns(UserWarning, match="grey_mask.png"):
        grey = _load(dict(item, mask=str(tmp_path / "grey_mask.png")))
        d = PrepareAnnotationsd(num_classes=1, grey_masks="threshold")(grey)
    assert 0.3 < float(d["mask"].mean()) < 0.7  # half the maximum, not > 0 (which would be ~100 %)


# ---------------------------------------------------------------------------- folder / datalist inference (#13.9)


def test_folder_listing_names_every_skipped_path_and_sniffs_dicom(small_set, tmp_path):
    from test_cxr_io import write_dicom

    folder = tmp_path / "inputs"
    folder.mkdir()
    _png(folder / "a.png", 40, 50)
    write_dicom(folder / "IM0001", np.zeros((40, 40), np.uint16))  # PACS export: no extension
    write_dicom(folder / "1.2.840.113619.2.55.3", np.zeros((40, 40), np.uint16))  # UID file name
    (folder / "notes.txt").write_text("hello")
    (folder / "sub").mkdir()
    os.symlink(folder / "loop_b", folder / "loop_a")
    os.symlink(folder / "loop_a", folder / "loop_b")
    os.symlink(folder / "gone.png", folder / "dangling.png")
    images, skipped = list_image_folder(folder)
    assert [p.name for p in images] == ["1.2.840.113619.2.55.3", "IM0001", "a.png"]
    assert {p.name: r for p, r in skipped} == {
        "dangling.png": "broken symlink (its target does not exist)",
        "loop_a": "symlink loop",
        "loop_b": "symlink loop",
        "notes.txt": "not an image file: its content is not DICOM, PNG, JPEG, TIFF, BMP or NIfTI (named .txt)",
        "sub": "a folder (searched for DICOM files only)",
    }
    items = inference_items(folder)
    assert len(items) == 8 and sum("error" in it for it in items) == 5
    assert all(it["error"].startswith(f"{it['image']}: skipped: ") for it in items if "error" in it)
    if os.geteuid() != 0:  # root reads everything
        (folder / "secret.png").write_bytes(b"x")
        os.chmod(folder / "secret.png", 0)
        reasons = {p.name: r for p, r in list_image_folder(folder)[1]}
        assert reasons["secret.png"] == "unreadable (permission denied)"


def test_datalist_inference_with_a_missing_file_goes_on(small_set):
    dl = _bad_datalist(small_set, [{"image": "a.png"}, {"image": "gone.png"}, {"label": [1]}], "infer.json")
    items = inference_items(dl, "training")
    assert items[0] == {"image": str(small_set.parent / "a.png")}
    assert items[1]["image"] == str(small_set.parent / "gone.png")
    assert "infer.json: training[1]" in items[1]["error"] and "image file not found" in items[1]["error"]
    assert "training[2]" in items[2]["error"] and "no 'image'" in items[2]["error"]


# ---------------------------------------------------------------------------- find_file (#13.10)


def test_find_file_never_reads_the_working_directory(tmp_path, monkeypatch):
    from monai_mcx.data.public import find_file

    root = tmp_path / "dataset"
    root.mkdir()
    (root / "labels.csv").write_text("from the data set")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    (cwd / "labels.csv").write_text("a stray file in the working directory")
    (cwd / "only_here.csv").write_text("x")
    monkeypatch.chdir(cwd)
    assert find_file(root, "labels.csv") == root / "labels.csv"
    with pytest.raises(DataError, match="no file matching 'only_here.csv'"):
        find_file(root, "only_here.csv")
    assert find_file(root, str(cwd / "only_here.csv")) == cwd / "only_here.csv"  # absolute: used as is


# ---------------------------------------------------------------------------- Windows paths (#13.12)


def test_windows_style_paths_are_accepted_or_explained(small_set):
    (small_set.parent / "images").mkdir()
    _png(small_set.parent / "images" / "img.png", 40, 50)
    dl = _bad_datalist(small_set, [{"image": "images\\img.png", "mask": "a_mask.png"}], "win.json")
    assert load_datalist(dl, "training", ["pneumonia"])[0]["image"] == str(small_set.parent / "images" / "img.png")
    missing = _bad_datalist(small_set, [{"image": "images\\nope.png"}], "win2.json")
    with pytest.raises(DatalistError, match="images/nope.png \\(read from 'images\\\\\\\\nope.png', backslashes taken"):
        load_datalist(missing, "training", ["pneumonia"])
    drive = _bad_datalist(small_set, [{"image": "C:\\data\\img.png"}], "win3.json")
    with pytest.raises(DatalistError, match="Windows absolute path.*relative to the datalist's folder"):
        load_datalist(drive, "training", ["pneumonia"])
