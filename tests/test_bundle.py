"""End-to-end: the bundle trains, evaluates and infers through ConfigWorkflow and the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import BUNDLE, CONFIGS, REPO, SMALL, bundle_overrides, run_bundle

pytestmark = pytest.mark.slow


def _cli(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.run(
        [sys.executable, "-m", "monai.bundle", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _flags(overrides: dict) -> list[str]:
    out = []
    for k, v in overrides.items():
        out += [f"--{k}", json.dumps(v) if not isinstance(v, str) else v]
    return out


def test_properties_of_train_and_inference_configs(tmp_path):
    from monai.bundle import ConfigWorkflow

    from monai_mcx.model import ModelDescription, build_network, save_model

    # inference.json builds its network from a model description: give it a described (random, tiny) model
    desc = ModelDescription(
        class_names=["pneumonia"],
        tasks=["classification", "segmentation", "localization"],
        encoder="densenet-tiny",
        spatial_size=[64, 64],
        base_anchor_shapes=SMALL["base_anchor_shapes"],
    )
    save_model(build_network(desc), desc, tmp_path / "model.pt")
    for wtype, cfg, extra in (("train", "train.json", {}), ("infer", "inference.json", {"ckpt_dir": str(tmp_path)})):
        wf = ConfigWorkflow(
            workflow_type=wtype,
            config_file=str(CONFIGS / cfg),
            meta_file=str(CONFIGS / "metadata.json"),
            logging_file=str(CONFIGS / "logging.conf"),
            dataset_dir="/nonexistent/never_built",
            **extra,
        )
        wf.initialize()
        missing = wf.check_properties()
        assert not missing, f"{cfg}: missing bundle properties {missing}"


def test_verify_metadata_offline():
    proc = _cli(
        "verify_metadata",
        "--meta_file",
        str(CONFIGS / "metadata.json"),
        "--filepath",
        str(BUNDLE / "schema" / "meta_schema_20240725.json"),
    )
    assert "metadata is verified with no error" in proc.stdout + proc.stderr


def test_training_writes_checkpoint_and_tensorboard_scalars_per_task(trained_bundle):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    root, _ = trained_bundle
    ckpt = root / "models" / "model.pt"
    assert ckpt.is_file()
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert any(k.startswith("segmentation_head") for k in state) and any(
        k.startswith("localization_head") for k in state
    )
    events = list((root / "eval" / "tensorboard").glob("events.out.tfevents.*"))
    assert events
    tags = set()
    for ev in events:
        acc = EventAccumulator(str(ev))
        acc.Reload()
        tags |= set(acc.Tags()["scalars"])
    for task in ("classification", "segmentation", "localization"):
        assert f"loss/{task}" in tags, tags
    for key in ("classification/auc", "segmentation/dice_positive", "localization/ap50"):
        assert key in tags, tags
    acc = EventAccumulator(str(events[0]))
    acc.Reload()
    if "loss/classification" in acc.Tags()["scalars"]:
        assert len(acc.Scalars("loss/classification")) >= 2


def test_evaluate_through_config_workflow_writes_metrics_json(evaluated_bundle):
    _, _, out = evaluated_bundle
    metrics = json.loads((out / "metrics.json").read_text())
    for key in (
        "classification/auc",
        "classification/auc/pneumonia",
        "segmentation/dice_positive",
        "segmentation/dice_empty_aware",
        "localization/ap50",
        "localization/map",
        "localization/rsna",
        "segmentation/dice_positive/gated",
        "localization/ap50/gated",
    ):
        assert key in metrics, sorted(metrics)
    for key, value in metrics.items():
        assert value is None or isinstance(value, (int, float)), (key, value)
    assert 0.0 <= metrics["classification/auc"] <= 1.0


def test_evaluate_and_infer_through_cli(trained_bundle, tmp_path):
    import shutil

    root, overrides = trained_bundle
    # a copy of the models: this evaluation (another process: scores equal to ~1e-7 only) writes its thresholds into
    # model.json, which must not replace the description that the shared evaluated_bundle fixture wrote
    shutil.copytree(root / "models", tmp_path / "models")
    overrides = dict(overrides, ckpt_dir=str(tmp_path / "models"))
    out = root / "eval_cli"
    _cli(
        "run",
        "--config_file",
        f"['{CONFIGS / 'train.json'}','{CONFIGS / 'evaluate.json'}']",
        *_flags(dict(overrides, output_dir=str(out))),
    )
    assert (out / "metrics.json").is_file()

    pred_dir = root / "predictions"
    # anchors and the gate threshold come from the files training/evaluation wrote next to model.pt
    infer = {k: overrides[k] for k in ("bundle_root", "dataset_dir", "ckpt_dir", "spatial_size", "encoder")}
    _cli("run", "--config_file", str(CONFIGS / "inference.json"), *_flags(dict(infer, output_dir=str(pred_dir))))
    test_items = json.loads((Path(overrides["dataset_dir"]) / "datalist.json").read_text())["test"]
    records = sorted(pred_dir.glob("*.json"))
    assert len(records) == len(test_items) > 0
    rec = json.loads(records[0].read_text())
    assert set(rec["class_probabilities"]) == {"pneumonia"} and 0.0 <= rec["class_probabilities"]["pneumonia"] <= 1.0
    assert isinstance(rec["boxes"], list) and "gate" in rec
    from PIL import Image

    mask = Image.open(pred_dir / rec["mask"])
    w, h = rec["size_wh"]
    assert mask.size == (w, h)  # PIL size is (width, height): the ORIGINAL image size
    assert (pred_dir / "predictions.csv").read_text().count("\n") == len(test_items) + 1


def test_evaluate_refuses_a_split_with_nothing_to_evaluate(trained_bundle, tmp_path):
    """Issue 24 item 10: evaluate.json on an empty split exited 0 having done nothing, and on a split without any
    annotation reported val_score 0.0; both are errors naming the datalist and the split."""
    import shutil

    root, overrides = trained_bundle
    shutil.copytree(root / "models", tmp_path / "models")
    demo = Path(overrides["dataset_dir"]) / "datalist.json"
    items = json.loads(demo.read_text())["validation"][:4]
    for it in items:
        it["image"] = str(demo.parent / it["image"])
    unlabelled = [dict(it, label=None, mask=None, boxes=None) for it in items]
    datalist = tmp_path / "datalist.json"
    datalist.write_text(json.dumps({"training": items, "validation": unlabelled, "test": []}))
    for split, problem in (("test", "is empty"), ("validation", "no item")):
        with pytest.raises(Exception) as err:
            run_bundle(
                ["train.json", "evaluate.json"],
                **dict(
                    overrides,
                    ckpt_dir=str(tmp_path / "models"),
                    output_dir=str(tmp_path / f"eval_{split}"),
                    datalist_file=str(datalist),
                    eval_split=split,
                ),
            )
        chain, e = [], err.value
        while e is not None:
            chain.append(str(e))
            e = e.__cause__ or e.__context__
        message = next((m for m in chain if problem in m), "\n".join(chain))
        assert problem in message and str(datalist) in message and repr(split) in message, message
        assert not (tmp_path / f"eval_{split}" / "metrics.json").exists()


def test_cli_train_from_scratch_one_epoch(tmp_path, demo_datalist):
    overrides = bundle_overrides(tmp_path, dataset_dir=str(demo_datalist.parent), epochs=1, max_items=16)
    proc = _cli("run", "--config_file", str(CONFIGS / "train.json"), *_flags(overrides))
    assert (tmp_path / "models" / "model.pt").is_file()
    assert "tensorboard --logdir" in proc.stdout


def test_train_and_inference_configs_agree_on_the_network():
    """inference.json is a separate file: it builds the network and the decoder from the model description that
    train.json writes (model_description), never from settings of its own."""
    train = json.loads((CONFIGS / "train.json").read_text())
    infer = json.loads((CONFIGS / "inference.json").read_text())
    for key in ("spatial_size", "encoder", "class_names", "tasks", "in_channels", "base_anchor_shapes"):
        assert infer[key] == f"$@model_description.{key}", key
        assert train["model_description"][key] == f"@{key}", key
    assert train["network_def"]["encoder"] == "@encoder" and train["network_def"]["in_channels"] == "@in_channels"
    assert infer["network_def"] == "$monai_mcx.model.build_network(@description)"
    assert infer["box_decoder"].startswith("$monai_mcx.model.build_box_decoder(@description")
