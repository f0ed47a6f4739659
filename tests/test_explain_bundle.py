"""Saliency in the bundle (#14): inference's ``--saliency`` files, the evaluator's ``explain/...`` metrics and report,
TensorBoard's saliency images and the MONAI Label infer task's ``saliency`` result."""

from __future__ import annotations

import base64
import csv
import gzip
import io
import json
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from monai_mcx.explain import (
    DEFAULT_SALIENCY,
    SaliencyMaps,
    boxes_to_region,
    centred_gaussian,
    saliency_result,
    saliency_settings,
    to_original_geometry,
)
from monai_mcx.networks import MultiCheXNet

from conftest import BUNDLE, run_inference

ANCHORS = [[8, 8], [12, 12], [16, 10]]
CLASSES = ["pneumonia", "effusion"]
#: name -> (W, H): non-square, different sizes (W/H swaps show)
SIZES = {"a.png": (70, 50), "b.png": (48, 80)}


# ----------------------------------------------------------------------------------------------- settings
def test_saliency_settings_default_and_errors():
    assert saliency_settings(None) == DEFAULT_SALIENCY == {"method": "gradcam", "layer": "stride32"}
    assert saliency_settings({"layer": "encoder.features.denseblock3"}) == {
        "method": "gradcam",
        "layer": "encoder.features.denseblock3",
    }
    desc = types.SimpleNamespace(saliency={"method": "gradcampp", "layer": "stride32"}, path="m/model.json")
    assert saliency_settings(desc)["method"] == "gradcampp"
    with pytest.raises(ValueError, match=r"m/model.json.*lime"):
        saliency_settings(types.SimpleNamespace(saliency={"method": "lime"}, path="m/model.json"))
    with pytest.raises(ValueError, match="unknown keys"):
        saliency_settings({"method": "gradcam", "colour": "red"})


def test_train_config_writes_the_saliency_slot():
    """New models get {"method": "gradcam", "layer": "stride32"} in model.json (train.json's model_description)."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "train.json"))
    assert parser.get_parsed_content("saliency_settings") == DEFAULT_SALIENCY
    assert parser.get("model_description")["saliency"] == "@saliency_settings"


# ----------------------------------------------------------------------------------------------- inference
@pytest.fixture(scope="module")
def saliency_inference(tmp_path_factory):
    """Inference (ConfigWorkflow, inference.json) on two PNGs with a fresh 2-class tiny network, once without and
    once with ``--saliency true``; the description's slot asks for Grad-CAM++ on denseblock3 (not the default)."""
    from monai_mcx.model import ModelDescription, build_network, save_model

    root = tmp_path_factory.mktemp("sal_infer")
    rng = np.random.default_rng(0)
    (root / "inputs").mkdir()
    for name, (w, h) in SIZES.items():
        Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8)).save(root / "inputs" / name)
    torch.manual_seed(0)
    desc = ModelDescription(
        class_names=CLASSES,
        tasks=["classification", "segmentation", "localization"],
        encoder="densenet-tiny",
        spatial_size=[64, 64],
        base_anchor_shapes=ANCHORS,
        class_thresholds=dict.fromkeys(CLASSES, 0.0),
        box_score_threshold=0.0,
        candidate_score_thresh=0.0,
        saliency={"method": "gradcampp", "layer": "encoder.features.denseblock3"},
    )
    (root / "models").mkdir()
    save_model(build_network(desc), desc, root / "models" / "model.pt")
    outs = {}
    for flag in (False, True):
        outs[flag] = root / f"pred_{flag}"
        # saliency as `--saliency true` arrives from the command line (a string)
        run_inference(root, outs[flag], batch_size=2, saliency="true" if flag else "false")
    return root, outs


def test_inference_saliency_files_at_original_size(saliency_inference):
    nib = pytest.importorskip("nibabel")
    _, outs = saliency_inference
    out = outs[True]
    for name, (w, h) in SIZES.items():
        stem = name.split(".")[0]
        rec = json.loads((out / f"{stem}.json").read_text())
        sal = rec["saliency"]
        assert sal["method"] == "gradcampp" and sal["layer"] == "encoder.features.denseblock3"  # from model.json
        assert sal["classes"] == CLASSES
        assert sal["nifti"] == f"{stem}_saliency.nii.gz"
        img = nib.Nifti1Image.from_bytes(gzip.decompress((out / sal["nifti"]).read_bytes()))
        maps = np.asarray(img.dataobj)
        assert maps.shape == (w, h, len(CLASSES)) and maps.dtype == np.float32  # (W, H, K), MONAI order
        assert np.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1
        for k, c in enumerate(CLASSES):
            png = out / sal["png"][c]
            assert png.name == f"{stem}_saliency_{c}.png"
            with Image.open(png) as im:
                assert im.size == (w, h) and im.mode == "RGB"  # PIL size is (W, H): the original's
            if sal["peak_xy"][c] is not None:
                x, y = sal["peak_xy"][c]
                assert maps[x, y, k] == maps[..., k].max()
        assert not (outs[False] / f"{stem}_saliency.nii.gz").exists()
        assert "saliency" not in json.loads((outs[False] / f"{stem}.json").read_text())
    rows = {Path(r["image"]).name: r for r in csv.DictReader((out / "predictions.csv").open())}
    assert rows["a.png"]["saliency_nifti"] == "a_saliency.nii.gz"


def test_inference_saliency_leaves_the_predictions_unchanged(saliency_inference):
    _, outs = saliency_inference
    for name in SIZES:
        stem = name.split(".")[0]
        off = json.loads((outs[False] / f"{stem}.json").read_text())
        on = json.loads((outs[True] / f"{stem}.json").read_text())
        on.pop("saliency")
        assert on == off  # probabilities, gate, boxes, mask area: identical
        with Image.open(outs[False] / f"{stem}_mask.png") as a, Image.open(outs[True] / f"{stem}_mask.png") as b:
            assert np.array_equal(np.asarray(a), np.asarray(b))


def test_inference_saliency_matches_the_maps_resampled_like_the_masks(saliency_inference, single_thread):
    """The written NIfTI is the network-geometry map resampled to the original size by the mask's path."""
    nib = pytest.importorskip("nibabel")
    from monai.transforms import Resized

    from monai_mcx.model import build_network, load_description
    from monai_mcx.transforms.io import LoadCXRd

    root, outs = saliency_inference
    desc = load_description(root / "models" / "model.pt")
    net = build_network(desc)
    net.load_state_dict(torch.load(root / "models" / "model.pt", weights_only=True))
    net.eval()
    d = Resized(keys="image", spatial_size=[64, 64], mode="area")(
        LoadCXRd(keys="image")({"image": str(root / "inputs" / "a.png")})
    )
    x = torch.as_tensor(d["image"]).float()[None]
    ref = to_original_geometry(SaliencyMaps.from_description(net, desc)(x)[0], SIZES["a.png"]).numpy()
    img = nib.Nifti1Image.from_bytes(gzip.decompress((outs[True] / "a_saliency.nii.gz").read_bytes()))
    assert np.allclose(np.moveaxis(np.asarray(img.dataobj), -1, 0), ref, atol=1e-5)


# ----------------------------------------------------------------------------------------------- evaluator handler
class _Engine:
    def __init__(self, output):
        self.state = types.SimpleNamespace(output=output, metrics={})


def test_saliency_evaluation_against_a_direct_computation(single_thread):
    """SaliencyEvaluation scores exactly the positive images with a lesion, with the truth = mask united with the
    boxes, and the top box = the highest-scoring decoded box; checked against SaliencyMaps + numpy here."""
    from monai.utils.enums import CommonKeys

    from monai_mcx.handlers.explain import SaliencyEvaluation

    torch.manual_seed(0)
    net = MultiCheXNet("densenet-tiny", class_names=CLASSES, tasks=("classification",)).eval()
    x = torch.rand(5, 1, 64, 48)
    mask = torch.zeros(5, 1, 64, 48)
    mask[1, 0, 40:60, 10:30] = 1
    targets = {
        "image": x,
        "label": torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0], [0.0, 1.0], [0.0, 0.0]]),
        "has_label": torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0]),  # image 4: unknown label (2 classes: not scored)
        "mask": mask,
        "has_mask": torch.tensor([0.0, 1.0, 0.0, 0.0, 0.0]),
        "boxes": [
            torch.tensor([[4.0, 4.0, 20.0, 30.0]]),
            torch.tensor([[0.0, 0.0, 8.0, 8.0]]),
            torch.tensor([[10.0, 10.0, 30.0, 30.0]]),  # negative: not scored
            torch.zeros(0, 4),  # positive but no lesion: not scored
            torch.tensor([[1.0, 1.0, 9.0, 9.0]]),
        ],
        "has_boxes": torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0]),
    }
    dets = [
        {"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0], [30.0, 20.0, 60.0, 46.0]]), "scores": torch.tensor([0.2, 0.9])}
        for _ in range(5)
    ]
    pred = {"detections": dets}
    sal = SaliencyMaps(net)
    handler = SaliencyEvaluation(sal, CLASSES)
    handler.reset()
    engine = _Engine({CommonKeys.IMAGE: x, CommonKeys.LABEL: targets, CommonKeys.PRED: pred})
    handler.update(engine)
    handler.completed(engine)
    m = engine.state.metrics

    maps = sal(x).numpy()
    hits = {c: [] for c in CLASSES}
    base = {c: [] for c in CLASSES}
    mass = {c: [] for c in CLASSES}
    agree = {c: [] for c in CLASSES}
    top_region = boxes_to_region([[30.0, 20.0, 60.0, 46.0]], (64, 48))
    g = centred_gaussian((64, 48))
    for i, ks in ((0, [0]), (1, [0, 1])):
        region = boxes_to_region(targets["boxes"][i], (64, 48)) | (mask[i, 0].numpy() > 0.5)
        for k in ks:
            s = maps[i, k]
            am = np.unravel_index(s.argmax(), s.shape)
            hits[CLASSES[k]].append(bool(region[am]) and s.max() > 0)
            base[CLASSES[k]].append(bool(region[np.unravel_index(g.argmax(), g.shape)]))
            mass[CLASSES[k]].append(s[region].sum() / s.sum() if s.sum() > 0 else region.mean())
            agree[CLASSES[k]].append(bool(top_region[am]) and s.max() > 0)
    assert m["explain/n_images"] == 3 and m["explain/n_images/pneumonia"] == 2 and m["explain/n_images/effusion"] == 1
    for c in CLASSES:
        assert m[f"explain/pointing_game/{c}"] == pytest.approx(np.mean(hits[c]))
        assert m[f"explain/pointing_game/baseline/{c}"] == pytest.approx(np.mean(base[c]))
        assert m[f"explain/mass_inside/{c}"] == pytest.approx(np.mean(mass[c]))
        assert m[f"explain/top_box_agreement/{c}"] == pytest.approx(np.mean(agree[c]))
    for key in ("pointing_game", "pointing_game/baseline", "mass_inside", "mass_inside/baseline", "top_box_agreement"):
        assert m[f"explain/{key}"] == pytest.approx(np.mean([m[f"explain/{key}/{c}"] for c in CLASSES]))
    # single class: an unknown label with a lesion counts as positive
    one = SaliencyEvaluation(SaliencyMaps(MultiCheXNet("densenet-tiny", class_names=["p"]).eval()), ["p"])
    one.reset()
    t1 = dict(targets, label=targets["label"][:, :1])
    one.update(_Engine({CommonKeys.IMAGE: x, CommonKeys.LABEL: t1, CommonKeys.PRED: pred}))
    assert one.compute()["explain/n_images"] == 3  # images 0, 1 and 4
    assert SaliencyEvaluation(None, CLASSES).enabled is False


# ----------------------------------------------------------------------------------------------- evaluation bundle
def test_evaluation_writes_explain_metrics_and_report(evaluated_bundle):
    _, _, out = evaluated_bundle
    metrics = json.loads((out / "metrics.json").read_text())
    keys = [
        "explain/pointing_game",
        "explain/mass_inside",
        "explain/pointing_game/baseline",
        "explain/mass_inside/baseline",
        "explain/top_box_agreement",
    ]
    for k in keys:
        assert k in metrics, k
    assert metrics["explain/n_images"] > 0
    for k in keys[:4]:
        assert 0.0 <= metrics[k] <= 1.0
    report = (out / "report.md").read_text()
    assert "## Explanations (saliency)" in report and "Grad-CAM on `stride32`" in report
    assert f"| {metrics['explain/pointing_game']:.4f} |" in report.split("## Explanations (saliency)")[1]
    with Image.open(out / "plots" / "gallery.png") as im:
        assert im.size[1] > 400  # two panels (case + saliency) per row of cases
    desc = json.loads((out / "model.json").read_text())
    assert desc["saliency"] == DEFAULT_SALIENCY


# ----------------------------------------------------------------------------------------------- TensorBoard
def test_tensorboard_logs_saliency_images(single_thread):
    from monai.utils.enums import CommonKeys

    from monai_mcx.handlers.tensorboard import TensorBoardOverlayHandler
    from monai_mcx.visualize import overlay_rgb, saliency_rgb

    class Writer:
        def __init__(self):
            self.images = {}

        def add_image(self, tag, img, global_step=None, dataformats=None):
            self.images[tag] = np.asarray(img)

        def flush(self):
            pass

    torch.manual_seed(0)
    net = MultiCheXNet("densenet-tiny", class_names=CLASSES, tasks=("classification",)).eval()
    x = torch.rand(3, 1, 64, 48)
    targets = {"image": x, "boxes": [torch.tensor([[2.0, 3.0, 20.0, 30.0]])] * 3, "has_boxes": torch.ones(3)}
    pred = {"class_probs": torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.5, 0.5]])}
    writer = Writer()
    handler = TensorBoardOverlayHandler(num_images=2, summary_writer=writer, saliency=SaliencyMaps(net))
    engine = _Engine({CommonKeys.IMAGE: x, CommonKeys.LABEL: targets, CommonKeys.PRED: pred})
    engine.state.epoch = 1
    handler._reset(engine)
    handler._collect(engine)
    handler._write(engine)
    assert sorted(writer.images) == [
        "validation/overlay/0",
        "validation/overlay/1",
        "validation/saliency/0",
        "validation/saliency/1",
    ]
    assert (
        writer.images["validation/saliency/1"].shape
        == writer.images["validation/overlay/1"].shape
        == (48 * 4, 64 * 4, 3)
    )
    # the saliency picture keeps the true box outline drawn over the heat map
    maps = SaliencyMaps(net)(x[:2])[1, 1].numpy()  # the two cases' batch; case 1's most probable class: effusion
    ref = saliency_rgb(x[1, 0], maps, upscale=4, true_boxes=targets["boxes"][1])
    assert np.array_equal(writer.images["validation/saliency/1"], ref)
    outline = np.any(
        overlay_rgb(x[1, 0], upscale=4, true_boxes=targets["boxes"][1]) != overlay_rgb(x[1, 0], upscale=4), -1
    )
    assert np.all(ref[outline] == (0, 255, 0))


# ----------------------------------------------------------------------------------------------- MONAI Label
def test_saliency_result_for_monai_label(single_thread):
    torch.manual_seed(0)
    net = MultiCheXNet("densenet-tiny", class_names=CLASSES, tasks=("classification",)).eval()
    sal = SaliencyMaps(net)
    x = torch.rand(1, 1, 64, 64)
    res = saliency_result(sal, x, (70, 50), CLASSES)
    json.dumps(res)  # plain JSON
    assert res["method"] == "gradcam" and res["layer"] == "stride32" and res["size_wh"] == [70, 50]
    ref = to_original_geometry(sal(x)[0], (70, 50)).numpy()
    for k, c in enumerate(CLASSES):
        with Image.open(io.BytesIO(base64.b64decode(res["png_base64"][c]))) as im:
            arr = np.asarray(im)
        assert arr.shape == (50, 70) and arr.dtype == np.uint8  # rows x cols of the study
        assert np.abs(arr.astype(float) / 255 - ref[k].T).max() <= 0.5 / 255 + 1e-6
        if res["peak_xy"][c] is not None:
            assert ref[k][tuple(res["peak_xy"][c])] == ref[k].max()
    with pytest.raises(ValueError, match="one image"):
        saliency_result(sal, torch.rand(2, 1, 64, 64), (70, 50), CLASSES)


def test_monailabel_infer_task_returns_saliency_on_request(fake_monailabel, single_thread):
    from monai_mcx.inferers import MultiCheXNetPostprocessor
    from monai_mcx.model import ModelDescription, build_network

    infer = fake_monailabel
    desc = ModelDescription(
        class_names=CLASSES, tasks=["classification", "segmentation"], encoder="densenet-tiny", spatial_size=[64, 64]
    )
    torch.manual_seed(0)
    net = build_network(desc).eval()
    task = infer.MultiCheXNetInfer.__new__(infer.MultiCheXNetInfer)
    task.output_label_key, task.output_json_key = "pred", "result"
    task.postprocessor = MultiCheXNetPostprocessor.from_description(desc)
    task.model_description = desc
    task._get_network = lambda device, data: net
    x = torch.rand(1, 64, 64)
    plain = task.run_inferer({"image": x, infer.ORIGINAL_SIZE: [70, 50]}, device="cpu")["result"]
    assert "saliency" not in plain
    for flag in (True, "true"):
        res = task.run_inferer({"image": x, infer.ORIGINAL_SIZE: [70, 50], "saliency": flag}, device="cpu")["result"]
        assert res["saliency"] == saliency_result(SaliencyMaps(net), x[None], (70, 50), CLASSES)
        assert res["class_probabilities"] == plain["class_probabilities"]


def test_saliency_evaluation_gathers_ranks(monkeypatch):
    """Under torch.distributed every rank reports the scores of all shards (here: a faked 2-rank gather), and the
    handler runs on every rank of multi_gpu_evaluate.json (rank0_handlers keeps it)."""
    import torch.distributed as dist

    from monai_mcx.engines.distributed import rank0_handlers
    from monai_mcx.handlers.explain import SaliencyEvaluation

    region = np.zeros((8, 8), dtype=bool)
    region[:4] = True
    hit, miss = np.zeros((8, 8)), np.zeros((8, 8))
    hit[1, 1], miss[6, 6] = 1.0, 1.0
    h = SaliencyEvaluation(types.SimpleNamespace(class_indices=[0]), ["p"])
    h.game.add("p", hit, region)
    other = SaliencyEvaluation(types.SimpleNamespace(class_indices=[0]), ["p"])
    other.game.add("p", miss, region)
    other.game.add("p", miss, region)

    def all_gather_object(parts, obj):
        parts[0], parts[1] = obj, other.game._rows

    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(dist, "all_gather_object", all_gather_object)
    engine = _Engine({})
    h.completed(engine)
    assert engine.state.metrics["explain/n_images"] == 3
    assert engine.state.metrics["explain/pointing_game"] == pytest.approx(1 / 3)
    assert rank0_handlers([h], rank=1) == [h]
