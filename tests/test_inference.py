"""Inference through bundle/configs/inference.json: a folder of DICOM/PNG/JPEG/NIfTI plus one corrupt file.

Non-square images of different sizes catch W/H swaps: NIfTI masks are ``(W, H)`` (MONAI order), PNGs are
rows x columns, so PIL's ``size`` is ``(W, H)``.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from PIL import Image
from tiny_model import ANCHORS, save_always_positive_model

from conftest import BUNDLE, run_bundle, run_inference

#: name -> (W, H) of the readable test images
SIZES = {
    "a_png.png": (70, 50),
    "b_dicom.dcm": (90, 40),
    "c_jpeg.jpg": (60, 80),
    "d_nifti.nii.gz": (55, 45),
    "h_dicom_no_extension": (48, 36),
    "i_tiff.tif": (52, 44),  # grayscale TIFF (issue 24 item 7)
    "j_dicom_named.png": (46, 38),  # a DICOM named .png: read as DICOM, by its content
}
#: name -> what its error row says (#13 items 8, 9): refused images and skipped paths
ERRORS = {
    "e_broken.png": "not an image",
    "f_tiny.png": "image is 1x1 pixels",
    "g_huge.png": "more than max_pixels",
    "notes.txt": "skipped: not an image file: its content is not DICOM, PNG, JPEG, TIFF, BMP or NIfTI",
    "sub": "skipped: a folder",
    "loop_a": "skipped: symlink loop",
    "loop_b": "skipped: symlink loop",
}


def _write_dicom(path: Path, pixels: np.ndarray) -> None:
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME1"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelSpacing = ["0.5", "0.25"]
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(str(path), enforce_file_format=True)


def _make_inputs(folder: Path) -> None:
    import nibabel as nib

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    w, h = SIZES["a_png.png"]
    Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8)).save(folder / "a_png.png")
    w, h = SIZES["b_dicom.dcm"]
    _write_dicom(folder / "b_dicom.dcm", rng.integers(0, 4096, (h, w)))
    w, h = SIZES["c_jpeg.jpg"]
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / "c_jpeg.jpg")
    w, h = SIZES["d_nifti.nii.gz"]
    nib.save(
        nib.Nifti1Image(rng.random((w, h)).astype(np.float32), np.diag([0.7, 0.7, 1, 1])),
        str(folder / "d_nifti.nii.gz"),
    )
    (folder / "e_broken.png").write_bytes(b"this is not an image \x00\x01\x02" * 10)
    from test_cxr_io import _bilevel_png

    Image.fromarray(np.zeros((1, 1), np.uint8)).save(folder / "f_tiny.png")
    _bilevel_png(folder / "g_huge.png", 10000, 10000)  # 12 kB file, 100 M pixels: refused from the header
    w, h = SIZES["h_dicom_no_extension"]
    _write_dicom(folder / "h_dicom_no_extension", rng.integers(0, 4096, (h, w)))  # found by its DICOM header
    w, h = SIZES["i_tiff.tif"]
    Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8)).save(folder / "i_tiff.tif")
    w, h = SIZES["j_dicom_named.png"]
    _write_dicom(folder / "j_dicom_named.png", rng.integers(0, 4096, (h, w)))
    (folder / "notes.txt").write_text("not an image")
    (folder / "sub").mkdir()
    (folder / "loop_a").symlink_to(folder / "loop_b")
    (folder / "loop_b").symlink_to(folder / "loop_a")


@pytest.fixture(scope="module")
def inference_run(tmp_path_factory):
    """Run the inference bundle (ConfigWorkflow) once on a fresh tiny network's checkpoint and its description
    (gate always positive, every candidate box: boxes and masks are written)."""
    root = tmp_path_factory.mktemp("infer")
    _make_inputs(root / "inputs")
    save_always_positive_model(root / "models" / "model.pt")
    out = root / "predictions"
    run_inference(root, out, batch_size=2)  # the corrupt file shares a batch with a good one
    return root, out


def test_summary_has_a_row_per_file_and_names_the_corrupt_one(inference_run):
    root, out = inference_run
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    assert sorted(Path(r["image"]).name for r in rows) == sorted([*SIZES, *ERRORS])
    for r in rows:
        name = Path(r["image"]).name
        if name in ERRORS:
            assert name in r["error"] and ERRORS[name] in r["error"], r
            assert r["json"] == ""
        else:
            assert r["error"] == "", r
            assert 0.0 <= float(r["p_pneumonia"]) <= 1.0
    assert not (out / "e_broken.json").exists() and not list(out.glob("e_broken*"))


def test_datalist_input_with_a_missing_file_gets_an_error_row(inference_run):
    """A datalist whose second item points nowhere: the run goes on, that item gets an error row."""
    root, _ = inference_run
    dl = root / "inputs" / "list.json"
    dl.write_text(json.dumps({"test": [{"image": "a_png.png"}, {"image": "missing.png"}]}))
    out = root / "predictions_datalist"
    run_bundle(
        "inference.json",
        workflow_type="infer",
        bundle_root=str(BUNDLE),
        input=str(dl),
        ckpt_dir=str(root / "models"),
        output_dir=str(out),
        spatial_size=[64, 64],
        encoder="densenet-tiny",
        base_anchor_shapes=ANCHORS,
        batch_size=2,
    )
    rows = {Path(r["image"]).name: r for r in csv.DictReader((out / "predictions.csv").open())}
    assert set(rows) == {"a_png.png", "missing.png"}
    assert rows["a_png.png"]["error"] == "" and rows["a_png.png"]["json"] == "a_png.json"
    assert "list.json: test[1]" in rows["missing.png"]["error"] and "not found" in rows["missing.png"]["error"]


@pytest.mark.parametrize("name", sorted(SIZES))
def test_outputs_at_original_size(inference_run, name):
    import nibabel as nib

    _, out = inference_run
    w, h = SIZES[name]
    stem = name.split(".")[0]
    rec = json.loads((out / f"{stem}.json").read_text())
    assert rec["size_wh"] == [w, h]
    assert rec["gate"]["positive"] is True and set(rec["class_probabilities"]) == {"pneumonia"}
    assert rec["boxes"], "score_thresh=0 must give boxes"
    for b in rec["boxes"]:
        x1, y1, x2, y2 = b["box"]
        assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h, (b, w, h)
        assert 0.0 <= b["score"] <= 1.0
    mask = nib.load(str(out / rec["mask_nifti"]))
    assert mask.shape == (w, h) and mask.get_data_dtype() == np.uint8
    data = np.asarray(mask.dataobj)
    assert set(np.unique(data)) <= {0, 1} and int(data.sum()) == rec["mask_area_px"]
    png = np.asarray(Image.open(out / rec["mask"]))
    assert png.shape == (h, w) and np.array_equal(png > 0, data.T > 0)
    overlay = Image.open(out / rec["overlay"])
    assert overlay.size == (w, h) and overlay.mode == "RGB"


def test_dicom_spacing_in_nifti_affine(inference_run):
    import nibabel as nib

    _, out = inference_run
    aff = nib.load(str(out / "b_dicom_mask.nii.gz")).affine
    # PixelSpacing = [row spacing 0.5, column spacing 0.25] -> x (columns) 0.25, y (rows) 0.5
    assert np.allclose(np.diag(aff)[:2], [0.25, 0.5])


def test_guard_collates_good_and_failed_items(tmp_path):
    from monai.transforms import Compose, Resized

    from monai_mcx.data import collate_cxr
    from monai_mcx.transforms import GuardLoadd
    from monai_mcx.transforms.io import LoadCXRd

    Image.fromarray(np.zeros((40, 36), np.uint8)).save(tmp_path / "ok.png")
    guard = GuardLoadd(Compose([LoadCXRd("image"), Resized("image", (32, 32))]), spatial_size=(32, 32))
    skipped = {"image": str(tmp_path / "loop"), "error": f"{tmp_path / 'loop'}: skipped: symlink loop"}
    items = [guard({"image": str(tmp_path / n)}) for n in ("ok.png", "missing.png")] + [guard(skipped)]
    batch = collate_cxr(items)
    assert batch["image"].shape == (3, 1, 32, 32)
    assert batch["error"][0] == "" and "missing.png" in batch["error"][1] and "not found" in batch["error"][1]
    assert batch["error"][2] == skipped["error"]  # an item listed as skipped keeps its reason, untransformed
    assert batch["original_size"][0] == [36, 40]


def test_benchmark_quick_writes_records_with_the_schema(tmp_path):
    """``python -m experiments.benchmark --quick`` at a tiny size: the JSON records' schema (no timing is checked)."""
    import json as _json

    from experiments import benchmark as bench

    out_json, out_md = tmp_path / "b.json", tmp_path / "b.md"
    bench.main(
        [
            "--quick",
            "--sizes",
            "32",
            "--encoder",
            "densenet-tiny",
            "--no-memory",
            "--no-xrv",
            "--device",
            "cpu",
            "--out-json",
            str(out_json),
            "--out-md",
            str(out_md),
        ]
    )
    payload = _json.loads(out_json.read_text())
    variants = [r["variant"] for r in payload["records"]]
    assert variants == [
        "multichexnet",
        "single_classification",
        "single_segmentation",
        "single_localization",
        "sum_single_task",
    ]
    for r in payload["records"]:
        for key in (
            "variant",
            "size",
            "batch",
            "device",
            "median_latency_ms",
            "throughput_img_s",
            "flops",
            "parameters",
            "peak_memory_mb",
        ):
            assert key in r, (key, r)
        assert r["size"] == 32 and r["batch"] == 1 and r["device"] == "cpu"
        assert r["median_latency_ms"] > 0 and r["flops"] > 0 and r["parameters"] > 0
    by = {r["variant"]: r for r in payload["records"]}
    assert by["sum_single_task"]["parameters"] == sum(by[v]["parameters"] for v in variants[1:4])
    assert {"ratio_vs_sum_single", "holds_vs_sum_single", "ratio_vs_classification_only"} <= set(payload["targets"][0])
    assert "torch" in payload["machine"] and "load_average_start" in payload
    assert "MultiCheXNet latency" in out_md.read_text()


def test_heads_option_runs_only_the_named_heads(inference_run, tmp_path):
    """``--heads "['classification']"``: the network runs the encoder and the classifier only; the probabilities
    are those of the full run, and no mask or box is written."""
    root, full = inference_run
    out = tmp_path / "cls_only"
    calls = []
    from monai_mcx.networks import MultiCheXNet

    original = MultiCheXNet.forward

    def spy(self, image, tasks=None):
        calls.append(tasks)
        return original(self, image, tasks=tasks)

    with mock.patch.object(MultiCheXNet, "forward", spy):
        run_inference(root, out, batch_size=2, heads=["classification"])
    assert calls and all(t == ["classification"] for t in calls)
    compared = 0
    for rec_file in sorted(full.glob("*.json")):
        ref = json.loads(rec_file.read_text())
        if "class_probabilities" not in ref:
            continue
        got = json.loads((out / rec_file.name).read_text())
        assert got["class_probabilities"] == pytest.approx(ref["class_probabilities"], abs=1e-6)
        assert not got.get("boxes") and not got.get("mask_nifti")
        compared += 1
    assert compared >= 2


def test_background_writer_writes_the_same_files_as_the_synchronous_one(inference_run, tmp_path):
    """``background_writes`` (default true) moves encoding and writing to a thread: the same files, the same JSON
    and mask pixels, and ``predictions.csv`` lists them only after they exist."""
    from PIL import Image

    root, _ = inference_run
    background, sync = tmp_path / "background", tmp_path / "sync"
    run_inference(root, background, batch_size=2)
    run_inference(root, sync, batch_size=2, background_writes=False)
    names = sorted(p.name for p in background.iterdir() if not p.name.startswith("."))
    assert names == sorted(p.name for p in sync.iterdir() if not p.name.startswith("."))
    assert any(n.endswith("_overlay.png") for n in names) and any(n.endswith("_mask.nii.gz") for n in names)
    for name in names:
        if name.endswith(".json"):
            assert json.loads((background / name).read_text()) == json.loads((sync / name).read_text()), name
        elif name.endswith(".png"):
            a, b = (np.asarray(Image.open(d / name)) for d in (background, sync))
            assert np.array_equal(a, b), name
    assert (background / "predictions.csv").read_text() == (sync / "predictions.csv").read_text()


def test_background_writer_raises_a_write_error_in_the_engine(tmp_path):
    """A file the writer thread cannot write is not lost silently: flush (and the next batch) raise its error."""
    from monai_mcx.handlers.predictions import PredictionWriter

    writer = PredictionWriter(tmp_path, ["pneumonia"])
    done = []

    def fail(path):
        raise OSError(f"{path}: disk full")

    writer._submit(fail, tmp_path / "a_mask.png")
    with pytest.raises(OSError, match="a_mask.png: disk full"):
        writer.flush()
    writer.flush()  # reported once
    writer._submit(fail, tmp_path / "b_mask.png")
    writer._pending[0].exception()  # let it finish: the next batch's first write reports it
    with pytest.raises(OSError, match="b_mask.png: disk full"):
        writer._submit(done.append, "next batch")
    writer._submit(done.append, "after")
    writer.flush()
    assert done == ["after"]


def test_overlays_come_from_the_loaded_image_without_reading_the_file_again(inference_run, tmp_path, monkeypatch):
    """``inference.json`` keeps a uint8 copy of each loaded image (``KeepOverlayImaged``) for its overlay: every
    readable file is decoded once, and the overlays equal those drawn from the file read again."""
    from PIL import Image

    import monai_mcx.transforms.io as cxr_io

    root, _ = inference_run
    real_read, reads = cxr_io.read_cxr, []

    def counting_read(filename, *args, **kwargs):
        reads.append(Path(filename).name)
        return real_read(filename, *args, **kwargs)

    monkeypatch.setattr(cxr_io, "read_cxr", counting_read)
    kept, reread = tmp_path / "kept", tmp_path / "reread"
    run_inference(root, kept, batch_size=2)
    readable = [Path(r["image"]).name for r in csv.DictReader((kept / "predictions.csv").open()) if not r["error"]]
    assert len(readable) >= 5 and sorted(n for n in reads if n in readable) == sorted(readable)
    reads.clear()
    run_inference(root, reread, batch_size=2, **{"preprocessing#transform#transforms#1#enabled": False})
    assert sorted(n for n in reads if n in readable) == sorted(readable * 2)  # without the copy: read twice
    overlays = sorted(p.name for p in kept.glob("*_overlay.png"))
    assert len(overlays) == len(readable)
    for name in overlays:
        a, b = (np.asarray(Image.open(d / name)) for d in (kept, reread))
        assert np.array_equal(a, b), name


def test_keep_overlay_image_stores_rows_by_cols_uint8_and_collates_as_a_list(tmp_path):
    from monai.transforms import Compose, Resized

    from monai_mcx.data import collate_cxr
    from monai_mcx.transforms import GuardLoadd, KeepOverlayImaged
    from monai_mcx.transforms.io import LoadCXRd, read_cxr
    from monai_mcx.visualize import overlay_image

    pixels = np.random.default_rng(1).integers(0, 256, (40, 36), dtype=np.uint8)  # rows x cols
    Image.fromarray(pixels).save(tmp_path / "ok.png")
    pre = Compose([LoadCXRd("image"), KeepOverlayImaged("image"), Resized("image", (32, 32))])
    guard = GuardLoadd(pre, spatial_size=(32, 32))
    batch = collate_cxr([guard({"image": str(tmp_path / n)}) for n in ("ok.png", "missing.png")])
    kept = batch["overlay_image"]
    assert kept[1] is None and "missing.png" in batch["error"][1]  # the unreadable item's placeholder has none
    assert kept[0].dtype == np.uint8 and kept[0].shape == (40, 36)
    gray, _ = read_cxr(tmp_path / "ok.png")
    assert np.array_equal(kept[0], (np.clip(gray, 0, 1) * 255).astype(np.uint8))
    assert np.array_equal(np.asarray(overlay_image(kept[0], None)), np.asarray(overlay_image(gray, None)))
    off = Compose([LoadCXRd("image"), KeepOverlayImaged("image", enabled=False)])
    assert "overlay_image" not in off({"image": str(tmp_path / "ok.png")})


def test_background_writer_bounds_the_writes_waiting_in_its_queue(tmp_path):
    """Back-pressure: with a slow disk the engine waits instead of holding every image's files in memory."""
    import threading

    from monai_mcx.handlers.predictions import PredictionWriter

    writer = PredictionWriter(tmp_path, ["pneumonia"])
    writer.max_pending = 3
    gate, written, queued = threading.Event(), [], []

    def slow_write(i):
        gate.wait(5)
        written.append(i)

    def release_soon():
        gate.wait(0.3)
        gate.set()

    threading.Thread(target=release_soon).start()
    for i in range(10):
        writer._submit(slow_write, i)
        queued.append(len(writer._pending))
    writer.flush()
    assert max(queued) <= 3 and written == list(range(10))


@pytest.mark.parametrize("alpha", [0.25, 0.4, 0.7])
def test_overlay_tint_equals_the_blend_computed_pixel_by_pixel(alpha):
    """The overlay's look-up table gives exactly round((1 - alpha) * gray + alpha * (255, 0, 0)) on the mask."""
    from monai_mcx.visualize import overlay_image

    rng = np.random.default_rng(3)
    gray = rng.random((37, 29)).astype(np.float32)
    mask = rng.random((37, 29)) > 0.5
    g = (gray * 255).astype(np.uint8)
    expected = np.repeat(g[..., None], 3, axis=-1)
    for r, c in zip(*np.nonzero(mask)):
        v = float(g[r, c])
        expected[r, c] = [round((1 - alpha) * v + alpha * 255), round((1 - alpha) * v), round((1 - alpha) * v)]
    got = np.asarray(overlay_image(gray, mask, alpha=alpha))
    assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1  # float32 vs float64 rounding at .5
    assert np.array_equal(np.asarray(overlay_image(g, mask, alpha=alpha)), got)  # uint8 input: the same image
    assert np.array_equal(np.asarray(overlay_image(gray, None)), np.repeat(g[..., None], 3, axis=-1))


def test_jpeg_overlays_on_request_and_an_unknown_format_is_refused(inference_run, tmp_path):
    from monai_mcx.handlers.predictions import PredictionWriter

    root, png_out = inference_run
    out = tmp_path / "jpg"
    run_inference(root, out, batch_size=2, overlay_format="jpg")
    rec = json.loads((out / "a_png.json").read_text())
    assert rec["overlay"] == "a_png_overlay.jpg" and not list(out.glob("*_overlay.png"))
    jpg = Image.open(out / rec["overlay"])
    assert jpg.format == "JPEG" and jpg.size == tuple(SIZES["a_png.png"])
    png = np.asarray(Image.open(png_out / "a_png_overlay.png")).astype(int)
    lossy = np.asarray(jpg.convert("RGB")).astype(int)
    assert np.corrcoef(lossy.ravel(), png.ravel())[0, 1] > 0.9  # the same picture (of noise), lossy
    with pytest.raises(ValueError, match="overlay_format must be one of"):
        PredictionWriter(tmp_path, ["pneumonia"], overlay_format="gif")
