"""Transfer to an unseen disease with bundle/configs/finetune.json (and the --quick experiment script)."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import pytest
import torch

from monai_mcx.model.merge import MergeError, freeze_encoder, load_compatible
from monai_mcx.networks import MultiCheXNet

from conftest import CONFIGS, REPO, SHARED, bundle_overrides

torch.set_num_threads(1)


def _source(tmp_path, class_names=("pneumonia",)):
    torch.manual_seed(11)
    net = MultiCheXNet(encoder="densenet-tiny", class_names=class_names)
    with torch.no_grad():
        for buf in net.buffers():
            if buf.dtype.is_floating_point:
                buf.uniform_(0.5, 1.5)
    path = tmp_path / "source_model.pt"
    from monai_mcx.model import ModelDescription, save_model

    desc = ModelDescription(
        class_names=list(class_names),
        tasks=list(net.tasks),
        encoder="densenet-tiny",
        spatial_size=[64, 64],
        base_anchor_shapes=[[8, 8], [12, 12], [16, 10]],
    )
    save_model(net, desc, path)  # source_model.pt + source_model.json (finetune.json reads the description)
    return path, {k: v.clone() for k, v in net.state_dict().items()}


def _new_disease_datalist(demo_datalist, tmp_path, name="opacity"):
    data = json.loads(demo_datalist.read_text())
    data["class_names"] = [name]
    for split in ("training", "validation", "test"):
        for it in data[split]:
            for key in ("image", "mask"):
                if it.get(key):
                    it[key] = str(demo_datalist.parent / it[key])
    path = tmp_path / "new_disease.json"
    path.write_text(json.dumps(data))
    return path


def _workflow(tmp_path, demo_datalist, **extra):
    from monai.bundle import ConfigWorkflow

    overrides = bundle_overrides(
        tmp_path / "run",
        dataset_dir=str(demo_datalist.parent),
        epochs=1,
        max_items=16,
        datalist_file=str(_new_disease_datalist(demo_datalist, tmp_path)),
        class_names=["opacity"],
        **extra,
    )
    return ConfigWorkflow(
        workflow_type="train",
        config_file=[str(CONFIGS / "train.json"), str(CONFIGS / "finetune.json")],
        meta_file=str(CONFIGS / "metadata.json"),
        **overrides,
    )


def test_finetune_frozen_encoder_carries_weights_and_trains_only_the_new_head(tmp_path, demo_datalist):
    src_path, src = _source(tmp_path)
    wf = _workflow(tmp_path, demo_datalist, pretrained_ckpt=str(src_path), freeze_encoder=True)
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append  # logging.conf replaces the root handlers (and caplog's) when the workflow is made
    logging.getLogger("monai_mcx.model.merge").addHandler(handler)
    try:
        wf.initialize()  # train.json's initialize builds @network (MergeWeights), which loads the checkpoint
        net = wf.parser.get_parsed_content("network")
    finally:
        logging.getLogger("monai_mcx.model.merge").removeHandler(handler)
    text = "\n".join(r.getMessage() for r in records)
    start = {k: v.clone() for k, v in net.state_dict().items()}
    enc_keys = [k for k in start if k.startswith("encoder.")]
    assert enc_keys and all(torch.equal(start[k], src[k]) for k in enc_keys)  # encoder carried over
    assert net.class_names == ("opacity",) and net.segmentation_head is None and net.localization_head is None
    assert not torch.equal(start["classification_head.fc.weight"], src["classification_head.fc.weight"])  # new head
    report = net.transfer_report
    assert "replaced" in report.skipped["classification_head.fc.weight"]
    assert any(k.startswith("segmentation_head.") for k in report.skipped)
    assert (
        "classification_head.fc.weight: replaced" in text
        and "segmentation_head.* (" in text
        and "source_model.pt" in text
    )
    opt = wf.parser.get_parsed_content("optimizer")
    opt_params = {id(p) for g in opt.param_groups for p in g["params"]}
    assert opt_params == {id(p) for p in net.classification_head.parameters()}

    wf.run()
    wf.finalize()
    end = net.state_dict()
    assert all(torch.equal(end[k], src[k]) for k in enc_keys)  # frozen: weights AND BatchNorm statistics unchanged
    assert not torch.equal(end["classification_head.fc.weight"], start["classification_head.fc.weight"])
    saved = torch.load(tmp_path / "run" / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert torch.equal(saved["encoder.features.conv0.weight"], src["encoder.features.conv0.weight"])
    assert saved["classification_head.fc.weight"].shape == (1, src["classification_head.fc.weight"].shape[1])


def test_same_classes_reuse_the_head_and_different_count_skips_it(tmp_path):
    src_path, src = _source(tmp_path)
    torch.manual_seed(0)
    same = MultiCheXNet(encoder="densenet-tiny", tasks=("classification",))
    rep = load_compatible(same, src_path)
    assert torch.equal(same.state_dict()["classification_head.fc.weight"], src["classification_head.fc.weight"])
    assert all(k.startswith(("segmentation_head.", "localization_head.")) for k in rep.skipped)
    two = MultiCheXNet(encoder="densenet-tiny", tasks=("classification",), class_names=("covid19", "other"))
    rep = load_compatible(two, src_path, log=False)
    assert rep.skipped["classification_head.fc.weight"].startswith("shape (1,")
    assert "classification_head.fc.weight" in rep.missing
    assert torch.equal(two.state_dict()["encoder.features.conv0.weight"], src["encoder.features.conv0.weight"])


def test_encoder_that_does_not_fit_is_an_error(tmp_path):
    src_path, _ = _source(tmp_path)
    other = MultiCheXNet(encoder="densenet-tiny", tasks=("classification",), encoder_kwargs={"growth_rate": 4})
    with pytest.raises(MergeError, match=r"source_model\.pt.*encoder\.features"):
        load_compatible(other, src_path)


def test_frozen_encoder_stays_in_eval_mode():
    net = freeze_encoder(MultiCheXNet(encoder="densenet-tiny", tasks=("classification",)))
    net.train()
    before = {k: v.clone() for k, v in net.encoder.state_dict().items()}
    net(torch.rand(4, 1, 64, 64)).get("class_logits").sum().backward()
    assert not net.encoder.training and net.classification_head.training
    assert all(p.grad is None for p in net.encoder.parameters())
    assert all(torch.equal(v, net.encoder.state_dict()[k]) for k, v in before.items())


@pytest.mark.shared
@pytest.mark.slow
def test_run_experiments_quick_writes_result_records(tmp_path):
    data = SHARED / "data" / "cxr-real"
    if not (data / "kermany").is_dir():
        pytest.skip(f"no real chest X-ray pack at {data}")
    out = tmp_path / "results"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.run_experiments",
            "--quick",
            "--suite",
            "lung",
            "--data-root",
            str(data),
            "--output-dir",
            str(out),
            "--work-dir",
            str(tmp_path / "work"),
            "--threads",
            "1",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    records = json.loads((out / "results.json").read_text())["suites"]["lung_outline"]["records"]
    experiments = {r["experiment"] for r in records}
    assert experiments == {"multitask_vs_single", "teacher_forcing", "transfer"}
    for r in records:
        for key in ("experiment", "row", "metrics", "train_seconds", "epochs", "resolution", "subset_sizes", "command"):
            assert key in r, (key, r)
        assert all(v is None or isinstance(v, (int, float)) for v in r["metrics"].values())
    rows = {r["row"] for r in records if r["experiment"] == "multitask_vs_single"}
    assert {
        "single_classification",
        "single_segmentation",
        "single_localization",
        "multichexnet_scratch",
        "multichexnet_merged",
    } <= rows
    assert {r["row"] for r in records if r["experiment"] == "transfer"} >= {
        "from_multichexnet",
        "from_single_classifier",
        "random_init",
    }
    assert "| " in (out / "results.md").read_text()
