"""Tests of the synthetic demo data (monai_mcx.data.demo, monai_mcx.data.synthetic): small (24 images at 64 px)."""

from __future__ import annotations

import importlib.util
import json
import os

import numpy as np
import pytest
from PIL import Image

from monai_mcx.data import demo, ensure_demo_data, generate_demo_data, synthesize_cxr, synthetic

N, SIZE = 24, 64


def _load(path):
    with open(path) as f:
        return json.load(f)


def _all_items(dl):
    return [(split, it) for split in ("training", "validation", "test") for it in dl[split]]


def _files(root):
    out = {}
    for sub in ("images", "masks"):
        for name in sorted(os.listdir(os.path.join(root, sub))):
            with open(os.path.join(root, sub, name), "rb") as f:
                out[f"{sub}/{name}"] = f.read()
    return out


def _np_mask(root, item_image):
    """Truth mask (numpy (H, W)) of an item, read from masks/<id>.png (written for every image)."""
    stem = os.path.splitext(os.path.basename(item_image))[0]
    return np.asarray(Image.open(os.path.join(root, "masks", stem + ".png")))


def _sample_of(dl, item, size=SIZE, seed=0):
    """Re-draw the generator's image of a datalist item (patient demo-XXXX_k, 1-based patient number)."""
    stem = os.path.splitext(os.path.basename(item["image"]))[0]
    pid, k = stem.rsplit("_", 1)
    p = int(pid.split("-")[1]) - 1
    positive = bool(_np_mask(dl["_root"], item["image"]).any())
    return synthetic._item_sample(seed, p, int(k), positive, size)


@pytest.fixture(scope="module")
def disjoint(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("demo") / "disjoint")
    path = generate_demo_data(root, num_images=N, image_size=SIZE, seed=0)
    dl = _load(path)
    dl["_root"] = root
    return dl


def test_datalist_schema_and_files(disjoint):
    root = disjoint["_root"]
    assert disjoint["class_names"] == ["pneumonia"]
    items = _all_items(disjoint)
    assert len(items) == N
    assert all(len(disjoint[s]) > 0 for s in ("training", "validation", "test"))
    for split, it in items:
        assert list(it) == ["image", "patient", "source", "label", "mask", "boxes"]
        assert it["source"] == "demo"
        assert it["image"].endswith(".dcm" if split == "test" else ".png")
        assert os.path.isfile(os.path.join(root, it["image"]))
        if it["mask"] is not None:
            assert os.path.isfile(os.path.join(root, it["mask"]))
        if it["label"] is not None:
            assert it["label"] in ([0.0], [1.0]) and all(type(v) is float for v in it["label"])
        for b in it["boxes"] or []:
            assert len(b) == 4 and all(type(v) is int for v in b)
            assert 0 <= b[0] < b[2] <= SIZE and 0 <= b[1] < b[3] <= SIZE
    # truth masks for every image, 0/1 uint8
    assert len(os.listdir(os.path.join(root, "masks"))) == N
    readme = open(os.path.join(root, "README.txt")).read()
    assert "SYNTHETIC" in readme and "not real patients" in readme.lower()
    # about half of the images are positive
    n_pos = sum(_np_mask(root, it["image"]).any() for _, it in items)
    assert 0.3 * N <= n_pos <= 0.7 * N


def test_determinism(tmp_path, disjoint):
    a = generate_demo_data(str(tmp_path / "a"), num_images=N, image_size=SIZE, seed=0)
    b = generate_demo_data(str(tmp_path / "b"), num_images=N, image_size=SIZE, seed=1)
    ref = {k: v for k, v in disjoint.items() if k != "_root"}
    assert _load(a) == ref
    fa, fref, fb = _files(str(tmp_path / "a")), _files(disjoint["_root"]), _files(str(tmp_path / "b"))
    assert fa == fref  # identical bytes, DICOM included
    assert _load(b) != ref
    common = set(fa) & set(fb)
    assert any(fa[k] != fb[k] for k in common if k.startswith("images/"))


def test_images_do_not_depend_on_num_images():
    # the per-image generators depend on (seed, patient, image) only
    plan_small, plan_big = demo._plan_patients(10, 3, 0.5), demo._plan_patients(40, 3, 0.5)
    assert plan_small[:-1] == plan_big[: len(plan_small) - 1]
    a = synthetic._item_sample(3, 4, 0, True, 32)
    b = synthetic._item_sample(3, 4, 0, True, 32)
    c = synthetic._item_sample(3, 5, 0, True, 32)
    np.testing.assert_array_equal(a.image, b.image)
    assert not np.array_equal(a.image, c.image)
    # about 10 % of patients have a follow-up image
    big = demo._plan_patients(400, 0, 0.5)
    frac_two = sum(n == 2 for _, _, n in big) / len(big)
    assert 0.04 < frac_two < 0.18


def test_follow_up_is_same_patient_jittered():
    a = synthetic._item_sample(0, 7, 0, True, 64)
    b = synthetic._item_sample(0, 7, 1, True, 64)
    other = synthetic._item_sample(0, 8, 0, True, 64)
    assert a.boxes and b.boxes  # same class
    assert not np.array_equal(a.image, b.image)
    assert np.corrcoef(a.image.ravel(), b.image.ravel())[0, 1] > np.corrcoef(a.image.ravel(), other.image.ravel())[0, 1]


def test_patient_level_splits(disjoint):
    patients = {s: {it["patient"] for it in disjoint[s]} for s in ("training", "validation", "test")}
    assert not patients["training"] & patients["validation"]
    assert not patients["training"] & patients["test"]
    assert not patients["validation"] & patients["test"]
    # splits by patient with follow-ups: a larger set has two-image patients, each in one split
    split = demo._split_patients(demo._plan_patients(200, 0, 0.5), 0, 0.2, 0.1)
    plan = demo._plan_patients(200, 0, 0.5)
    assert set(split) == {pid for pid, _, _ in plan}
    n_img = {s: sum(n for pid, _, n in plan if split[pid] == s) for s in ("training", "validation", "test")}
    assert abs(n_img["validation"] - 40) <= 3 and abs(n_img["test"] - 20) <= 3


def test_disjoint_role_layout(disjoint):
    roles = {"boxes": 0, "mask": 0, "label": 0}
    for it in disjoint["training"]:
        present = [k for k in ("label", "mask", "boxes") if it[k] is not None]
        assert len(present) == 1, it
        roles[present[0]] += 1
    n = len(disjoint["training"])
    assert max(roles.values()) - min(roles.values()) <= 1 and sum(roles.values()) == n
    for split in ("validation", "test"):
        for it in disjoint[split]:
            assert it["label"] is not None and it["mask"] is not None and it["boxes"] is not None


def test_joint_layout(tmp_path):
    dl = _load(generate_demo_data(str(tmp_path / "j"), num_images=12, image_size=32, seed=2, layout="joint"))
    for _, it in _all_items(dl):
        assert it["label"] is not None and it["mask"] is not None and it["boxes"] is not None


def test_negatives_empty_positives_annotated(disjoint):
    root = disjoint["_root"]
    seen = set()
    for _, it in _all_items(disjoint):
        truth = _np_mask(root, it["image"])
        assert truth.dtype == np.uint8 and set(np.unique(truth)) <= {0, 1}
        positive = bool(truth.any())
        seen.add(positive)
        if it["label"] is not None:
            assert it["label"] == [1.0 if positive else 0.0]
        if it["boxes"] is not None:
            assert (len(it["boxes"]) > 0) == positive
            if not positive:
                assert it["boxes"] == []
        if it["mask"] is not None:
            assert np.array_equal(np.asarray(Image.open(os.path.join(root, it["mask"]))), truth)
    assert seen == {True, False}


def _check_mask_boxes(mask_np, boxes):
    """mask_np is numpy (H, W) row-major; boxes [x1, y1, x2, y2] with x = column."""
    covered = np.zeros(mask_np.shape, bool)
    for x1, y1, x2, y2 in boxes:
        patch = mask_np[y1:y2, x1:x2]
        assert patch.any()
        # tight: every edge row / column of the box holds mask pixels
        assert patch[0].any() and patch[-1].any() and patch[:, 0].any() and patch[:, -1].any()
        covered[y1:y2, x1:x2] = True
    assert not (mask_np.astype(bool) & ~covered).any()


def test_synthesize_cxr_mask_boxes_lungs():
    min_area = int(np.ceil(synthetic.MIN_COMPONENT_FRACTION * 64 * 64))
    coverage = []
    for i in range(12):
        positive = i % 3 != 0
        rng = np.random.default_rng([5, i])
        s = synthetic.synthesize_cxr_sample(rng, 64, positive)
        img, mask, boxes = synthesize_cxr(np.random.default_rng([5, i]), 64, positive)
        np.testing.assert_array_equal(img, s.image)
        assert img.dtype == np.float32 and img.shape == (64, 64) and 0.0 <= img.min() and img.max() <= 1.0
        assert mask.dtype == np.uint8 and mask.shape == (64, 64)
        if not positive:
            assert boxes == [] and not mask.any()
            continue
        assert 1 <= len(boxes) <= 3
        _check_mask_boxes(mask, boxes)
        assert all((b[2] - b[0]) * (b[3] - b[1]) >= min_area for b in boxes)
        # opacities lie inside the lungs, away from the border
        assert not (mask.astype(bool) & ~s.lungs).any()
        assert not mask[0].any() and not mask[-1].any() and not mask[:, 0].any() and not mask[:, -1].any()
        # visible (brighter than the rest of the lungs) but not the brightest thing in the image
        les, lung = img[mask > 0].mean(), img[s.lungs & (mask == 0)].mean()
        assert les > lung + 0.08
        assert np.percentile(img, 99) > les + 0.1
        coverage.append(mask.mean())
    assert 0.015 < np.median(coverage) < 0.1


def test_png_mask_through_monai_is_x_first(disjoint):
    from monai.transforms import EnsureChannelFirst, LoadImage

    root = disjoint["_root"]
    load, ecf = LoadImage(image_only=True), EnsureChannelFirst()
    checked = 0
    for _, it in _all_items(disjoint):
        if not it["mask"] or not it["boxes"]:
            continue
        m = ecf(load(os.path.join(root, it["mask"])))
        assert tuple(m.shape) == (1, SIZE, SIZE)
        m = np.asarray(m[0]) > 0  # m[x, y]
        inside = np.zeros_like(m)
        for x1, y1, x2, y2 in it["boxes"]:
            assert m[x1:x2, y1:y2].any()
            inside[x1:x2, y1:y2] = True
        assert m.any() and not (m & ~inside).any()
        checked += 1
    assert checked > 0


def test_images_through_monai_match_generator(disjoint):
    import pydicom
    from monai.transforms import EnsureChannelFirst, LoadImage
    from pydicom.uid import ExplicitVRLittleEndian

    root = disjoint["_root"]
    load, ecf = LoadImage(image_only=True), EnsureChannelFirst()

    def corr(a, b):
        return np.corrcoef(np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel())[0, 1]

    test_item = disjoint["test"][0]
    ref = _sample_of(disjoint, test_item).image  # numpy (H, W)
    path = os.path.join(root, test_item["image"])
    ds = pydicom.dcmread(path)
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert ds.PhotometricInterpretation == "MONOCHROME2"
    assert (ds.BitsAllocated, ds.BitsStored, ds.PixelRepresentation) == (16, 12, 0)
    assert ds.PatientID == test_item["patient"] and ds.ConversionType == "SYN"
    assert [float(v) for v in ds.PixelSpacing] == [0.5, 0.5]
    px = ds.pixel_array
    assert px.shape == (SIZE, SIZE) and px.max() <= 4095
    np.testing.assert_allclose(px / 4095.0, ref, atol=1.0 / 4095)

    # the default reader (ITKReader when itk is installed, else PydicomReader) and each reader by name;
    # ITKReader gives a trailing singleton depth for a single-frame DICOM: (W, H, 1)
    readers = [None, "PydicomReader"]
    if importlib.util.find_spec("itk") is not None:
        readers.append("ITKReader")
    for reader in readers:
        img = ecf(LoadImage(image_only=True, reader=reader)(path))
        assert tuple(img.shape[:3]) == (1, SIZE, SIZE) and all(d == 1 for d in img.shape[3:]), reader
        x_first = np.asarray(img[0]).reshape(SIZE, SIZE)
        assert corr(x_first, ref.T) > 0.99, reader
        assert corr(x_first, ref.T) > corr(x_first, ref) + 0.05, reader  # the orientation check can fail

    png_item = disjoint["validation"][0]
    png = ecf(load(os.path.join(root, png_item["image"])))
    assert tuple(png.shape) == (1, SIZE, SIZE)
    assert corr(png[0], _sample_of(disjoint, png_item).image.T) > 0.99


def test_ensure_demo_data_generates_once(tmp_path, monkeypatch):
    d = tmp_path / "ds"
    path = ensure_demo_data(str(d), num_images=6, image_size=32)
    assert path == os.path.join(str(d), "datalist.json") and os.path.isfile(path)
    before = _load(path)

    def boom(*a, **k):
        raise AssertionError("must not regenerate")

    monkeypatch.setattr(demo, "generate_demo_data", boom)
    assert ensure_demo_data(str(d), num_images=6, image_size=32, seed=9) == path
    assert _load(path) == before


def test_existing_dataset_and_overwrite(tmp_path):
    d = str(tmp_path / "ds")
    generate_demo_data(d, num_images=6, image_size=32, seed=0)
    first = _load(os.path.join(d, "datalist.json"))
    with pytest.raises(FileExistsError):
        generate_demo_data(d, num_images=6, image_size=32, seed=1)
    assert _load(os.path.join(d, "datalist.json")) == first
    generate_demo_data(d, num_images=8, image_size=32, seed=1, overwrite=True)
    second = _load(os.path.join(d, "datalist.json"))
    assert sum(len(second[s]) for s in ("training", "validation", "test")) == 8
    assert sorted(os.listdir(tmp_path)) == ["ds"]  # no temporary or old folders left behind


def test_interrupted_run_leaves_nothing(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = demo._write_png

    def flaky(path, array):
        calls["n"] += 1
        if calls["n"] > 5:
            raise KeyboardInterrupt
        real(path, array)

    monkeypatch.setattr(demo, "_write_png", flaky)
    with pytest.raises(KeyboardInterrupt):
        generate_demo_data(str(tmp_path / "ds"), num_images=6, image_size=32)
    assert os.listdir(tmp_path) == []
    # and the next call succeeds
    monkeypatch.setattr(demo, "_write_png", real)
    assert os.path.isfile(ensure_demo_data(str(tmp_path / "ds"), num_images=6, image_size=32))


def test_cli(tmp_path, capsys):
    path = demo.main(
        ["--output_dir", str(tmp_path / "cli"), "--num_images", "6", "--image_size", "32", "--layout", "joint"]
    )
    out = capsys.readouterr().out.strip().splitlines()[-1]
    assert out.startswith("datalist: ") and path in out and "training=" in out
    with pytest.raises(SystemExit) as e:
        demo.main(["--output_dir", str(tmp_path / "cli"), "--num_images", "6"])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        demo.main(["--help"])
    assert e.value.code == 0
