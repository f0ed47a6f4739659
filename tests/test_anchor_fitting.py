"""Anchor shapes fitted to a datalist's training boxes (scaled to the network input), saved and read back."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from PIL import Image

from monai_mcx.data.anchors import (
    anchor_shapes_from_datalist,
    anchor_shapes_from_file_or_datalist,
    image_size_wh,
    load_anchor_shapes,
    save_anchor_shapes,
    training_boxes,
)
from monai_mcx.data.errors import DataError

SPATIAL = (64, 64)
# two clusters of box shapes (w, h) in NETWORK-INPUT pixels
TALL, WIDE = (8.0, 16.0), (20.0, 10.0)
# image sizes (W, H): both non-square and different, so the per-image scaling matters
SIZES = {"wide.png": (200, 100), "tall.png": (100, 400)}


def _png(path, wh):
    Image.fromarray(np.zeros((wh[1], wh[0]), np.uint8)).save(path)  # PIL array is (rows, cols) = (H, W)


def _make_datalist(tmp_path, jitter: float = 0.0, seed: int = 0):
    rng = np.random.default_rng(seed)
    for name, wh in SIZES.items():
        _png(tmp_path / name, wh)
    items = []
    for k in range(12):
        name = "wide.png" if k % 2 else "tall.png"
        w_img, h_img = SIZES[name]
        sx, sy = w_img / SPATIAL[0], h_img / SPATIAL[1]
        boxes = []
        for shape in (TALL, WIDE) if k % 3 else (WIDE,):
            bw, bh = (s * (1 + jitter * rng.uniform(-1, 1)) for s in shape)
            x1, y1 = 3.0 + k, 2.0 + k
            boxes.append([x1 * sx, y1 * sy, (x1 + bw) * sx, (y1 + bh) * sy])  # original-image pixels
        items.append({"image": name, "label": [1], "mask": None, "boxes": boxes})
    # unknown / empty boxes are skipped without opening the image (the file does not exist)
    items.append({"image": "missing.png", "label": [0], "mask": None, "boxes": None})
    items.append({"image": "missing.png", "label": [0], "mask": None, "boxes": []})
    path = tmp_path / "datalist.json"
    path.write_text(json.dumps({"class_names": ["x"], "training": items, "validation": [], "test": []}))
    return path


def test_image_size_from_headers(tmp_path):
    _png(tmp_path / "a.png", (30, 20))
    assert image_size_wh(tmp_path / "a.png") == (30, 20)
    import nibabel as nib

    nib.save(nib.Nifti1Image(np.zeros((30, 20), np.float32), np.eye(4)), str(tmp_path / "a.nii.gz"))
    assert image_size_wh(tmp_path / "a.nii.gz") == (30, 20)  # NIfTI is indexed (x, y)
    from monai_mcx.data.synthetic import _write_dicom

    _write_dicom(str(tmp_path / "a.dcm"), np.zeros((20, 30), np.float32), "p", "i", 0)  # (rows, cols)
    assert image_size_wh(tmp_path / "a.dcm") == (30, 20)
    with pytest.raises(DataError, match="missing.png"):
        image_size_wh(tmp_path / "missing.png")


def test_boxes_scaled_to_network_input(tmp_path):
    boxes = training_boxes(_make_datalist(tmp_path), "training", SPATIAL)
    wh = np.concatenate([np.stack([b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], 1) for b in boxes])
    assert len(boxes) == 12
    assert {tuple(np.round(r, 6)) for r in wh} == {TALL, WIDE}


def test_two_clusters_recovered_and_deterministic(tmp_path):
    path = _make_datalist(tmp_path)
    shapes = anchor_shapes_from_datalist(path, "training", SPATIAL, num_anchors=2, feature_map_scales=(1,))
    assert shapes == [list(TALL), list(WIDE)]  # sorted by area: 128 < 200
    # with jitter: close to the cluster centres, and the same on every call
    (tmp_path / "jitter").mkdir()
    path2 = _make_datalist(tmp_path / "jitter", jitter=0.1, seed=1)
    a = anchor_shapes_from_datalist(path2, "training", SPATIAL, num_anchors=2, feature_map_scales=(1,))
    b = anchor_shapes_from_datalist(path2, "training", SPATIAL, num_anchors=2, feature_map_scales=(1,))
    assert a == b
    np.testing.assert_allclose(a, [TALL, WIDE], rtol=0.12)
    # a scaled anchor family: shapes are base shapes at the finest level (the boxes match scale 1 or 2)
    c = anchor_shapes_from_datalist(path, "training", SPATIAL, num_anchors=2, feature_map_scales=(1, 2))
    assert c == anchor_shapes_from_datalist(path, "training", SPATIAL, num_anchors=2, feature_map_scales=(1, 2))
    fam = {tuple(np.round(np.asarray(s) * k, 1)) for s in c for k in (1, 2)}
    assert TALL in fam and WIDE in fam


def test_anchors_file_roundtrip_and_fallbacks(tmp_path):
    path = _make_datalist(tmp_path)
    f = tmp_path / "models" / "anchors.json"
    save_anchor_shapes([[8, 16], [20, 10]], f, feature_map_scales=(1, 2, 4), spatial_size=SPATIAL)
    assert load_anchor_shapes(f) == [[8.0, 16.0], [20.0, 10.0]]
    assert json.loads(f.read_text())["spatial_size"] == [64, 64]
    # evaluate prefers the file the training wrote (same anchors as the weights), whatever the datalist says
    assert anchor_shapes_from_file_or_datalist(f, path, spatial_size=SPATIAL, num_anchors=2) == [
        [8.0, 16.0],
        [20.0, 10.0],
    ]
    assert (
        len(anchor_shapes_from_file_or_datalist(tmp_path / "none.json", path, spatial_size=SPATIAL, num_anchors=3)) == 3
    )
    with pytest.raises(DataError, match="anchor file not found"):
        load_anchor_shapes(tmp_path / "none.json")
    # a split with too few boxes: generic shapes scaled to the input, with a warning
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"training": [{"image": "missing.png", "boxes": None}]}))
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        shapes = anchor_shapes_from_datalist(empty, "training", SPATIAL, num_anchors=3)
    assert shapes == [[8.0, 8.0], [12.0, 12.0], [16.0, 10.0]] and any(
        "fewer than num_anchors" in str(x.message) for x in w
    )


def _best_iou(wh: np.ndarray, anchors: list, scales=(1, 2, 4)) -> np.ndarray:
    """Per box (w, h): the best centre-aligned IoU with any anchor of the family ``anchor * scale``."""
    fam = np.array([[a[0] * s, a[1] * s] for a in anchors for s in scales], dtype=np.float64)
    inter = np.minimum(wh[:, None, 0], fam[None, :, 0]) * np.minimum(wh[:, None, 1], fam[None, :, 1])
    union = wh[:, None, 0] * wh[:, None, 1] + fam[None, :, 0] * fam[None, :, 1] - inter
    return (inter / union).max(axis=1)


@pytest.mark.slow
def test_bundle_default_path_fits_anchors_trains_and_evaluates_with_them(tmp_path, demo_datalist):
    """train.json without a pinned base_anchor_shapes (every other bundle test pins them): the anchors are fitted
    to the training boxes, saved in the model description (model.json), build the network, and evaluate.json reads
    them back from it."""
    from monai_mcx.data.anchors import DEFAULT_ANCHOR_SHAPES

    from conftest import SMALL, bundle_overrides, run_bundle

    overrides = bundle_overrides(tmp_path, dataset_dir=str(demo_datalist.parent), epochs=1, max_items=24, seed=0)
    overrides.pop("base_anchor_shapes")
    wf = run_bundle("train.json", **overrides)
    spatial = tuple(SMALL["spatial_size"])
    saved = json.loads((tmp_path / "models" / "model.json").read_text())
    fitted = anchor_shapes_from_datalist(
        demo_datalist, "training", spatial, num_anchors=3, feature_map_scales=(1, 2, 4), max_items=24, seed=0
    )
    assert saved["base_anchor_shapes"] == fitted == wf.parser.get_parsed_content("base_anchor_shapes")
    generic = [list(np.round(np.asarray(s) * spatial[0] / 128.0, 1)) for s in DEFAULT_ANCHOR_SHAPES]
    assert fitted != generic and fitted != SMALL["base_anchor_shapes"], "fitted, not the fallback or the test pin"
    # the fit is good for the data: computed here from the datalist's own boxes (demo images are 64 px = input)
    items = json.loads(demo_datalist.read_text())["training"][:24]
    wh = np.array([[b[2] - b[0], b[3] - b[1]] for it in items for b in (it.get("boxes") or [])], dtype=np.float64)
    assert len(wh) >= 3
    assert _best_iou(wh, fitted).mean() > _best_iou(wh, generic).mean() and _best_iou(wh, fitted).mean() > 0.6
    net = wf.parser.get_parsed_content("network")
    assert net.localization_head is not None and wf.parser.get_parsed_content("network_def#num_anchors") == 3
    # evaluate.json takes the anchors from the description the training wrote (edited here: the file, not a refit)
    from monai_mcx.model import read_description, save_description

    edited = [[round(w + 1.0, 1), round(h + 1.0, 1)] for w, h in fitted]
    desc = read_description(tmp_path / "models" / "model.json")
    save_description(desc.replace(base_anchor_shapes=edited), tmp_path / "models" / "model.json")
    ev = run_bundle(["train.json", "evaluate.json"], **dict(overrides, output_dir=str(tmp_path / "eval_fitted")))
    assert ev.parser.get_parsed_content("base_anchor_shapes") == edited
    assert (tmp_path / "eval_fitted" / "metrics.json").is_file()
