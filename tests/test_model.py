"""The model artifact (``monai_mcx.model``) and the weights layer (``monai_mcx.networks.weights``).

A tiny model is trained at 48 px (not the 64 px of the other tests) so that a bare ``inference.json`` can only get
the size, encoder and anchors right by reading the description saved beside ``model.pt``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from monai_mcx.model import root_cause

from conftest import CONFIGS, REPO, bundle_overrides, run_bundle

SIZE = [48, 48]
ANCHORS = [[6.0, 6.0], [9.0, 9.0], [12.0, 8.0]]


@pytest.fixture(scope="module")
def trained48(tmp_path_factory, demo_datalist):
    """train.json (1 epoch, 16 items, 48 px, densenet-tiny), then evaluate.json on the validation split."""
    root = tmp_path_factory.mktemp("artifact48")
    overrides = bundle_overrides(
        root,
        dataset_dir=str(demo_datalist.parent),
        epochs=1,
        max_items=16,
        spatial_size=SIZE,
        base_anchor_shapes=ANCHORS,
    )
    run_bundle("train.json", **overrides)
    run_bundle(["train.json", "evaluate.json"], **dict(overrides, output_dir=str(root / "eval_val")))
    return root, overrides


def _bare_inference(root: Path, demo_datalist: Path, out: Path, **extra):
    return run_bundle(
        "inference.json",
        workflow_type="infer",
        bundle_root=str(REPO / "bundle"),
        ckpt_dir=str(root / "models"),
        dataset_dir=str(demo_datalist.parent),
        output_dir=str(out),
        **extra,
    )


def _small_description(**kw):
    from monai_mcx.model import ModelDescription

    args = dict(
        class_names=["pneumonia"],
        tasks=["classification", "segmentation", "localization"],
        encoder="densenet-tiny",
        spatial_size=SIZE,
        base_anchor_shapes=ANCHORS,
    )
    args.update(kw)
    return ModelDescription(**args)


# ------------------------------------------------------------------------------------------ description basics
def test_state_dict_hash_ignores_container_order_and_ddp_prefix():
    from monai_mcx.networks.weights import state_dict_sha256

    net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    sd = net.state_dict()
    h = state_dict_sha256(sd)
    assert h == state_dict_sha256(dict(reversed(list(sd.items()))))
    assert h == state_dict_sha256({f"module.{k}": v for k, v in sd.items()})
    changed = {k: v.clone() for k, v in sd.items()}
    changed["0.weight"][0, 0] += 1e-6
    assert state_dict_sha256(changed) != h
    assert len(h) == 64


def test_description_roundtrip_schema_errors_name_the_file(tmp_path):
    from monai_mcx.model import DescriptionError, read_description, save_description

    desc = _small_description()
    path = save_description(desc, tmp_path / "model.pt")
    assert path == tmp_path / "model.json"
    back = read_description(path)
    assert back.to_dict() == desc.to_dict() and back.num_anchors == 3
    assert back.post_processing()["class_thresholds"] == [0.5]
    obj = json.loads(path.read_text())
    obj["spatial_size"] = [48]
    obj["surprise"] = 1
    path.write_text(json.dumps(obj))
    with pytest.raises(DescriptionError, match="model.json.*unknown fields \\['surprise'\\]"):
        read_description(path)
    del obj["surprise"]
    path.write_text(json.dumps(obj))
    with pytest.raises(DescriptionError, match="model.json.*spatial_size \\[48\\]"):
        read_description(path)
    path.write_text("{not json")
    with pytest.raises(DescriptionError, match="model.json.*not readable JSON"):
        read_description(path)


def test_reconcile_names_both_values_and_opt_out_warns():
    from monai_mcx.model import DescriptionConflictError

    desc = _small_description()
    assert (
        desc.reconcile(
            {
                "spatial_size": [48, 48],
                "encoder": "densenet-tiny",
                "base_anchor_shapes": [[6, 6], [9, 9], [12, 8]],
                "class_thresholds": [0.5],
                "box_score_threshold": None,
            }
        )
        is desc
    )
    with pytest.raises(DescriptionConflictError) as e:
        desc.reconcile({"spatial_size": [256, 256], "class_names": ["covid19"]})
    assert "[48, 48]" in str(e.value) and "[256, 256]" in str(e.value)
    assert "['pneumonia']" in str(e.value) and "['covid19']" in str(e.value)
    with pytest.warns(UserWarning, match="mask_threshold.*0.3.*replaces"):
        other = desc.reconcile({"mask_threshold": 0.3}, opt_out=["mask_threshold"])
    assert other.mask_threshold == 0.3 and desc.mask_threshold == 0.5


# ------------------------------------------------------------------------------------------ the trained model
def test_training_writes_descriptions_and_evaluation_writes_thresholds_into_them(trained48):
    from monai_mcx.model import checkpoint_sha256, load_description, read_description

    root, _ = trained48
    models = root / "models"
    desc = load_description(models / "model.pt")  # verifies the hash
    assert desc.spatial_size == SIZE and desc.encoder == "densenet-tiny" and desc.base_anchor_shapes == ANCHORS
    assert desc.weights_sha256 == checkpoint_sha256(models / "model.pt")
    assert desc.training["epochs"] == 1 and desc.training["items"]["training"] == 16
    assert desc.training["data_sources"] == {"demo": 16}
    last = load_description(models / "last.pt")
    assert last.weights_key == "model" and last.weights_sha256 == checkpoint_sha256(models / "last.pt", key="model")
    # evaluate.json on the validation split chose the threshold and wrote it into the description
    metrics = json.loads((root / "eval_val" / "metrics.json").read_text())
    assert desc.thresholds_method == "youden" and desc.thresholds_split == "validation"
    assert desc.class_thresholds["pneumonia"] == pytest.approx(metrics["classification/threshold/pneumonia"])
    assert read_description(root / "eval_val" / "model.json").to_dict() == desc.to_dict()
    assert not (models / "thresholds.json").exists() and not (models / "anchors.json").exists()


def test_bare_inference_is_driven_by_the_description(trained48, demo_datalist, tmp_path):
    from monai_mcx.model import load_description

    root, _ = trained48
    wf = _bare_inference(root, demo_datalist, tmp_path / "pred")
    desc = load_description(root / "models" / "model.pt")
    parsed = {
        k: wf.parser.get_parsed_content(k) for k in ("spatial_size", "encoder", "base_anchor_shapes", "class_names")
    }
    assert parsed == {
        "spatial_size": SIZE,
        "encoder": "densenet-tiny",
        "base_anchor_shapes": ANCHORS,
        "class_names": ["pneumonia"],
    }
    pp = wf.parser.get_parsed_content("postprocessing")
    assert pp.class_thresholds == [pytest.approx(desc.class_thresholds["pneumonia"])]
    assert pp.box_score_threshold == desc.box_score_threshold  # chosen on validation (RSNA metric) with the thresholds
    preds = sorted((tmp_path / "pred").glob("*.json"))
    assert preds, "no predictions written"
    from PIL import Image

    masks = sorted((tmp_path / "pred").glob("*_mask.png"))
    assert masks and Image.open(masks[0]).size == (64, 64)  # written back at the original 64-px image size


@pytest.mark.parametrize(
    "override,ours,theirs",
    [
        ({"spatial_size": [256, 256]}, "[48, 48]", "[256, 256]"),
        ({"encoder": "densenet121"}, "'densenet-tiny'", "'densenet121'"),
        ({"class_names": ["covid19"]}, "['pneumonia']", "['covid19']"),
    ],
)
def test_contradicting_override_fails_naming_both_values(trained48, demo_datalist, tmp_path, override, ours, theirs):
    root, _ = trained48
    with pytest.raises(Exception) as e:
        _bare_inference(root, demo_datalist, tmp_path / "pred", **override)
    text = str(root_cause(e.value))
    assert ours in text and theirs in text and "model.json" in text, text


def test_contradicting_override_fails_in_evaluate(trained48, tmp_path):
    root, overrides = trained48
    with pytest.raises(Exception) as e:
        run_bundle(
            ["train.json", "evaluate.json"], **dict(overrides, spatial_size=[256, 256], output_dir=str(tmp_path))
        )
    text = str(root_cause(e.value))
    assert "[48, 48]" in text and "[256, 256]" in text, text


def test_stale_description_is_refused(trained48, demo_datalist, tmp_path):
    """Thresholds/anchors (model.json) left beside other weights are refused by hash, in Python and in a bundle run."""
    from monai_mcx.model import StaleDescriptionError, load_description

    root, _ = trained48
    stale = tmp_path / "models"
    stale.mkdir()
    shutil.copy(root / "models" / "model.json", stale / "model.json")
    state = torch.load(root / "models" / "model.pt", map_location="cpu", weights_only=True)
    state["classification_head.fc.bias"] = state["classification_head.fc.bias"] + 0.1  # "retrained" weights
    torch.save(state, stale / "model.pt")
    with pytest.raises(StaleDescriptionError, match="model.json.*belongs to other weights.*model.pt"):
        load_description(stale / "model.pt")
    with pytest.raises(Exception) as e:
        run_bundle(
            "inference.json",
            workflow_type="infer",
            bundle_root=str(REPO / "bundle"),
            ckpt_dir=str(stale),
            dataset_dir=str(demo_datalist.parent),
            output_dir=str(tmp_path / "pred"),
        )
    assert isinstance(root_cause(e.value), StaleDescriptionError)


def test_legacy_checkpoint_is_described_explicitly_with_a_warning(trained48, tmp_path, capsys):
    from monai_mcx.model import DescriptionError, load_description, read_description
    from monai_mcx.model.cli import main

    root, overrides = trained48
    legacy = tmp_path / "models"
    legacy.mkdir()
    shutil.copy(root / "models" / "model.pt", legacy / "model.pt")
    (legacy / "anchors.json").write_text(json.dumps({"base_anchor_shapes": ANCHORS, "spatial_size": SIZE}))
    (legacy / "thresholds.json").write_text(
        json.dumps({"class_thresholds": {"pneumonia": 0.37}, "method": "youden", "split": "validation"})
    )
    with pytest.raises(DescriptionError, match="has no model description.*python -m monai_mcx.model describe"):
        load_description(legacy / "model.pt")
    sets = [
        f"{k}={json.dumps(overrides[k])}"
        for k in ("encoder", "spatial_size", "dataset_dir", "demo_image_size", "max_items")
    ]
    args = ["describe", "--ckpt", str(legacy / "model.pt"), "--config", str(CONFIGS / "train.json")]
    for s in sets:
        args += ["--set", s]
    with pytest.warns(UserWarning, match="legacy checkpoint without a model description"):
        assert main(args) == 0
    desc = load_description(legacy / "model.pt")
    ref = read_description(root / "models" / "model.json")
    assert desc.provenance == "described after training"
    assert desc.weights_sha256 == ref.weights_sha256 and desc.base_anchor_shapes == ANCHORS
    assert desc.class_thresholds == {"pneumonia": 0.37} and desc.thresholds_method.startswith("legacy")
    assert desc.network_args() == ref.network_args() and desc.spatial_size == ref.spatial_size
    # a second describe keeps the existing description; a wrong size (anchors fitted for 48 px) is an error
    assert main(args) == 1 and "exists already" in capsys.readouterr().err
    # the same through `python -m` (the module is __main__ there; the configs build the package's classes)
    r = subprocess.run(
        [sys.executable, "-m", "monai_mcx.model", *args, "--force"],
        capture_output=True,
        text=True,
        cwd=CONFIGS.parent.parent,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr
    bad = [
        "describe",
        "--ckpt",
        str(legacy / "model.pt"),
        "--config",
        str(CONFIGS / "train.json"),
        "--force",
        "--set",
        "encoder=densenet-tiny",
        "--set",
        "spatial_size=[64, 64]",
    ]
    assert main(bad) == 1 and "fitted for spatial_size [48, 48]" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ every entry point
@pytest.fixture(scope="module")
def bad_checkpoints(tmp_path_factory):
    """A truncated, a foreign (weights-only dict of other tensors) and a pickled-module checkpoint, each with a valid
    description beside it where that matters, plus a good one."""
    from monai_mcx.model import build_network, save_model

    root = tmp_path_factory.mktemp("badckpt")
    torch.manual_seed(0)
    desc = _small_description()
    net = build_network(desc)
    good = save_model(net, desc, root / "good" / "model.pt")
    data = (root / "good" / "model.pt").read_bytes()
    files = {}
    for kind in ("truncated", "foreign", "pickled"):
        d = root / kind
        d.mkdir()
        p = d / "model.pt"
        if kind == "truncated":
            p.write_bytes(data[: len(data) // 2])
        elif kind == "foreign":
            torch.save({"fc.weight": torch.zeros(3, 3), "fc.bias": torch.zeros(3)}, p)
        else:
            torch.save(torch.nn.Linear(2, 2), p)
        shutil.copy(root / "good" / "model.json", d / "model.json")
        files[kind] = p
    return root, good, files


KINDS = ["truncated", "foreign", "pickled"]


def _check_message(err: BaseException, path: Path) -> None:
    text = str(err)
    assert str(path) in text, text
    assert "Traceback" not in text


@pytest.mark.parametrize("kind", KINDS)
def test_entry_points_give_a_clean_error_naming_the_file(bad_checkpoints, kind, tmp_path):
    from monai_mcx.engines.checkpoint import SafeCheckpointLoader
    from monai_mcx.engines.resume import LastCheckpoint
    from monai_mcx.model import DescriptionError, load_description
    from monai_mcx.model.merge import merge_multichexnet, transfer_network
    from monai_mcx.networks import MultiCheXNet
    from monai_mcx.networks.pretrained import load_pretrained_encoder
    from monai_mcx.networks.weights import WeightsError

    _, _, files = bad_checkpoints
    path = files[kind]
    net = MultiCheXNet(encoder="densenet-tiny", num_anchors=3)

    class _State:
        max_epochs = 1
        epoch = 0
        iteration = 0
        epoch_length = 1

    class _Engine:
        state = _State()
        logger = __import__("logging").getLogger("test")

    errors = []
    with pytest.raises(WeightsError) as e:  # inference/evaluate: SafeCheckpointLoader
        SafeCheckpointLoader(path, {"model": net})(_Engine())
    errors.append(e.value)
    with pytest.raises(WeightsError) as e:  # merge
        merge_multichexnet(net, encoder_from=path)
    errors.append(e.value)
    with pytest.raises(WeightsError) as e:  # pretrained encoder
        load_pretrained_encoder(net, path)
    errors.append(e.value)
    with pytest.raises(WeightsError) as e:  # transfer (finetune.json)
        transfer_network(net, path, ["pneumonia"])
    errors.append(e.value)
    resume_dir = tmp_path / "resume"
    resume_dir.mkdir()
    shutil.copy(path, resume_dir / "last.pt")
    with pytest.raises(WeightsError) as e:  # resume
        LastCheckpoint(resume_dir, {"model": net}, resume=True).load(_Engine())
    errors.append(e.value)
    with pytest.raises((WeightsError, DescriptionError)) as e:  # every description-driven consumer
        load_description(path)
    errors.append(e.value)
    for err in errors[:4] + errors[5:]:
        _check_message(err, path)
    _check_message(errors[4], resume_dir / "last.pt")
    if kind == "pickled":
        assert "pickled" in str(errors[0]) and "state_dict" in str(errors[0])


@pytest.mark.parametrize("kind", KINDS)
def test_export_cli_and_monailabel_loader_give_a_clean_error(bad_checkpoints, kind, tmp_path, capsys):
    from monai_mcx.export import main
    from monai_mcx.networks.weights import WeightsError

    _, _, files = bad_checkpoints
    path = files[kind]
    assert main(["--ckpt", str(path), "--out", str(tmp_path / "m.onnx"), "--no-check"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(path) in err and "Traceback" not in err
    sys.path.insert(0, str(REPO / "monailabel_app"))
    try:
        from lib.bundle import load_state_dict, load_weights
    finally:
        sys.path.remove(str(REPO / "monailabel_app"))
    from monai_mcx.networks import MultiCheXNet

    with pytest.raises(WeightsError) as e:
        load_weights(MultiCheXNet(encoder="densenet-tiny"), str(path))
    _check_message(e.value, path)
    if kind != "foreign":  # a foreign file holds tensors: reading works, fitting (above) does not
        with pytest.raises(WeightsError) as e:
            load_state_dict(str(path))
        _check_message(e.value, path)


def test_monailabel_bundle_spec_reads_the_description(bad_checkpoints, tmp_path):
    """The app's BundleSpec takes size, classes and thresholds from model.json and refuses stale ones."""
    from monai_mcx.model import StaleDescriptionError

    root, good, files = bad_checkpoints
    sys.path.insert(0, str(REPO / "monailabel_app"))
    try:
        from lib.bundle import BundleSpec
    finally:
        sys.path.remove(str(REPO / "monailabel_app"))
    bundle = tmp_path / "bundle"
    shutil.copytree(REPO / "bundle" / "configs", bundle / "configs")
    shutil.copytree(root / "good", bundle / "models")
    spec = BundleSpec(str(bundle))
    assert spec.spatial_size == SIZE and spec.class_names == ["pneumonia"]
    assert spec.info()["weights_sha256"] == good.weights_sha256
    with pytest.raises(Exception, match=r"\[48, 48\].*\[96, 96\]"):
        BundleSpec(str(bundle), {"spatial_size": [96, 96]})
    shutil.copy(files["foreign"], bundle / "models" / "model.pt")
    with pytest.raises(StaleDescriptionError) as e:
        BundleSpec(str(bundle))
    assert str(bundle / "models" / "model.pt") in str(e.value)


def test_ckpt_export_of_a_truncated_checkpoint_names_the_file(bad_checkpoints, tmp_path):
    """``python -m monai.bundle ckpt_export`` parses network_def, which reads the description and verifies the
    weights through the weights layer before MONAI's own torch.load."""
    _, _, files = bad_checkpoints
    path = files["truncated"]
    cmd = [
        sys.executable,
        "-m",
        "monai.bundle",
        "ckpt_export",
        "--net_id",
        "network_export",
        "--filepath",
        str(tmp_path / "m.ts"),
        "--ckpt_file",
        str(path),
        "--ckpt_dir",
        str(path.parent),
        "--meta_file",
        str(CONFIGS / "metadata.json"),
        "--config_file",
        str(CONFIGS / "inference.json"),
    ]
    proc = subprocess.run(
        cmd, cwd=REPO, capture_output=True, text=True, timeout=600, env=dict(os.environ, PYTHONPATH=str(REPO))
    )
    assert proc.returncode != 0
    assert f"cannot read checkpoint {str(path)!r}" in proc.stderr and "corrupt, truncated" in proc.stderr


# ------------------------------------------------------------------------------------------ export from the description
@pytest.mark.parametrize("fmt,suffix", [("torch_export", ".pt2"), ("torchscript", ".ts"), ("onnx", ".onnx")])
def test_export_formats_are_built_from_the_description(bad_checkpoints, tmp_path, capsys, fmt, suffix):
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
    from monai_mcx.export import main

    _, good, _ = bad_checkpoints
    ckpt = Path(_good_path(bad_checkpoints))
    out = tmp_path / f"model{suffix}"
    assert main(["--ckpt", str(ckpt), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"{fmt} parity (max abs diff)" in text and "[1, 1, 48, 48]" in text and "model description embedded" in text
    if fmt == "torch_export":
        extra = {"model.json": ""}
        program = torch.export.load(str(out), extra_files=extra)
        assert json.loads(extra["model.json"])["weights_sha256"] == good.weights_sha256
        out4 = program.module()(torch.rand(3, 1, 48, 48))  # dynamic batch
        assert out4[1].shape == (3, 1, 48, 48)
    # an override contradicting the description is refused, naming both values
    assert main(["--ckpt", str(ckpt), "--out", str(out), "--set", "spatial_size=[64, 64]"]) == 2
    err = capsys.readouterr().err
    assert "[48, 48]" in err and "[64, 64]" in err


def _good_path(bad_checkpoints) -> Path:
    root, _, _ = bad_checkpoints
    return root / "good" / "model.pt"


def test_merge_checks_source_descriptions(bad_checkpoints, tmp_path):
    from monai_mcx.model import build_network, save_model
    from monai_mcx.model.merge import MergeError, MergeWeights

    target = _small_description()
    other = _small_description(base_anchor_shapes=[[5.0, 5.0], [7.0, 7.0], [9.0, 9.0]])
    src = tmp_path / "loc" / "model.pt"
    save_model(build_network(other), other, src)
    net = build_network(target)
    with pytest.raises(MergeError, match=r"(?s)loc/model.pt.*base_anchor_shapes: \[\[5.0, 5.0\].*\[\[6.0, 6.0\]"):
        MergeWeights(net, heads_from={"localization": str(src)}, description=target)
    ok = MergeWeights(net, heads_from={"segmentation": str(src)}, description=target)  # anchors do not matter there
    assert ok.report.parts == {"segmentation": str(src)}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        MergeWeights(net, encoder_from=str(_good_path(bad_checkpoints)), description=target)


# ------------------------------------------------------------------------------------------ load_model
def test_load_model_returns_the_network_with_its_weights_description_and_postprocessor(tmp_path):
    from monai_mcx.inferers import MultiCheXNetPostprocessor
    from monai_mcx.model import build_network, load_model, save_model
    from monai_mcx.networks import MultiCheXNet

    torch.manual_seed(0)
    desc = _small_description(class_thresholds={"pneumonia": 0.3}, box_score_threshold=0.6)
    src = build_network(desc)
    saved = save_model(src, desc, tmp_path / "model.pt")
    net, got, pp = load_model(tmp_path / "model.pt")
    assert isinstance(net, MultiCheXNet) and not net.training
    want = src.state_dict()
    assert net.state_dict().keys() == want.keys() and all(torch.equal(v, want[k]) for k, v in net.state_dict().items())
    assert got.to_dict() == saved.to_dict() and got.path == tmp_path / "model.json"
    assert isinstance(pp, MultiCheXNetPostprocessor)
    assert pp.class_thresholds == [0.3] and pp.box_score_threshold == 0.6 and pp.box_decoder is not None
    x = torch.rand(1, 1, *SIZE)
    with torch.no_grad():
        assert torch.equal(net(x)["class_logits"], src.eval()(x)["class_logits"])
    # an override must agree with the description; a contradiction names both values
    load_model(tmp_path / "model.pt", overrides={"spatial_size": SIZE})
    from monai_mcx.model import DescriptionConflictError

    with pytest.raises(DescriptionConflictError, match=r"\[48, 48\].*\[64, 64\]"):
        load_model(tmp_path / "model.pt", overrides={"spatial_size": [64, 64]})


def test_load_model_refuses_tampered_weights_naming_the_file_and_both_hashes(tmp_path):
    from monai_mcx.model import StaleDescriptionError, build_network, load_model, save_model
    from monai_mcx.networks.weights import state_dict_sha256

    torch.manual_seed(0)
    desc = save_model(build_network(_small_description()), _small_description(), tmp_path / "model.pt")
    state = torch.load(tmp_path / "model.pt", map_location="cpu", weights_only=True)
    state["classification_head.fc.bias"] = state["classification_head.fc.bias"] + 0.5
    torch.save(state, tmp_path / "model.pt")
    with pytest.raises(StaleDescriptionError) as e:
        load_model(tmp_path / "model.pt")
    text = str(e.value)
    assert str(tmp_path / "model.pt") in text and str(tmp_path / "model.json") in text, text
    assert desc.weights_sha256[:16] in text and state_dict_sha256(state)[:16] in text, text


def test_load_model_without_a_description_gives_the_legacy_instructions(tmp_path):
    from monai_mcx.model import DescriptionError, build_network, load_model

    torch.save(build_network(_small_description()).state_dict(), tmp_path / "model.pt")
    with pytest.raises(DescriptionError, match="has no model description.*python -m monai_mcx.model describe"):
        load_model(tmp_path / "model.pt")
