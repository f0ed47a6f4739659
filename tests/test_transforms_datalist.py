"""Datalist validation, annotation preparation (unknown vs negative) and box-aware resizing."""

import json

import numpy as np
import pytest
import torch
from monai.transforms import LoadImage
from PIL import Image

from monai_mcx.data import DatalistError, collate_cxr, inference_items, load_datalist, resolve_datalist
from monai_mcx.data.errors import DataError
from monai_mcx.transforms import AnnotationError, PrepareAnnotationsd, ResizeWithBoxesd, ToSingleChanneld


def _png(path, rows, cols, value=None):
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
        {"image": "a.png", "patient": "p1", "source": "t", "label": [1], "mask": "a_mask.png", "boxes": [[10, 5, 30, 15]]},
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
    assert xs.min() >= box[0] - 1 and xs.max() + 1 <= box[2] + 1 and ys.min() >= box[1] - 1 and ys.max() + 1 <= box[3] + 1


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
    assert [f["image"] for f in files] == [str(tmp_path / n) for n in ("a.png", "a_mask.png", "small_mask.png") if (tmp_path / n).exists()]
    assert inference_items(small_set, "training")[0] == {"image": str(tmp_path / "a.png")}
    with pytest.raises(DatalistError, match="no DICOM/PNG"):
        inference_items(tmp_path / "other")
