"""MONAI Label train task's consistency logic at function level (monailabel_app/lib/publish.py; no MONAI Label
needed): frozen encoder and BatchNorm statistics, classifier drift, weights and description published together."""

from __future__ import annotations

import importlib.util
import json
import math
import sys

import pytest
import torch

from conftest import REPO

ANCHORS = [[8.0, 8.0], [12.0, 12.0], [16.0, 10.0]]


def _publish_module():
    spec = importlib.util.spec_from_file_location("mcx_ml_publish", REPO / "monailabel_app" / "lib" / "publish.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def _described(tmp_path):
    from monai_mcx.model import ModelDescription, build_network, save_description
    from monai_mcx.networks.weights import state_dict_sha256

    desc = ModelDescription(
        class_names=["pneumonia"],
        tasks=["classification", "segmentation", "localization"],
        encoder="densenet-tiny",
        spatial_size=[64, 64],
        base_anchor_shapes=ANCHORS,
        class_thresholds={"pneumonia": 0.37},
        box_score_threshold=0.42,
    )
    torch.manual_seed(0)
    net = build_network(desc)
    path = tmp_path / "model.pt"
    torch.save(net.state_dict(), path)
    save_description(desc.replace(weights_sha256=state_dict_sha256(net.state_dict()), weights_file="model.pt"), path)
    return desc, net, path


def _train_steps(net, steps=3):
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.5)
    torch.manual_seed(1)
    for _ in range(steps):
        net.train()
        x = torch.rand(2, 1, 64, 64)
        loss = net(x)["seg_logits"].sigmoid().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_frozen_encoder_keeps_classifier_and_boxes(tmp_path):
    pub = _publish_module()
    _, net, _ = _described(tmp_path)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    trainable = pub.freeze_for_segmentation(net)
    assert trainable and all(n.startswith("segmentation_head.") for n in trainable)
    _train_steps(net)
    after = net.state_dict()
    moved = [k for k in before if not torch.equal(before[k], after[k])]
    assert moved and all(k.startswith("segmentation_head.") for k in moved), moved  # BN stats of the encoder too
    ref = type(net)(**_net_args(net))
    ref.load_state_dict(before)
    x = torch.rand(3, 1, 64, 64)
    drift = pub.classifier_drift(ref, net, [x])
    assert drift == {"images": 3, "mean_abs": 0.0, "max_abs": 0.0}


def _net_args(net):
    return {"encoder": "densenet-tiny", "num_anchors": len(ANCHORS)}


def test_train_encoder_freezes_batchnorm_statistics_and_measures_drift(tmp_path):
    pub = _publish_module()
    _, net, _ = _described(tmp_path)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    pub.freeze_for_segmentation(net, train_encoder=True)
    _train_steps(net)
    after = net.state_dict()
    stats = [k for k in before if k.startswith("encoder.") and ("running_" in k or "num_batches_tracked" in k)]
    assert stats and all(torch.equal(before[k], after[k]) for k in stats)
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("encoder.") and k not in stats)
    ref = type(net)(**_net_args(net))
    ref.load_state_dict(before)
    drift = pub.classifier_drift(ref, net, [torch.rand(2, 1, 64, 64)])
    # independent: the same numbers from the two networks' outputs
    x = torch.rand(2, 1, 64, 64)
    ref.eval(), net.eval()
    with torch.no_grad():
        d = (torch.sigmoid(net(x)["class_logits"]) - torch.sigmoid(ref(x)["class_logits"])).abs()
    got = pub.classifier_drift(ref, net, [x])
    assert got["max_abs"] == pytest.approx(float(d.max())) and got["mean_abs"] == pytest.approx(float(d.mean()))
    assert drift["images"] == 2 and drift["max_abs"] > 0


def test_publish_writes_weights_and_description_together(tmp_path):
    from monai_mcx.inferers import MultiCheXNetPostprocessor
    from monai_mcx.model import load_description

    pub = _publish_module()
    desc, net, path = _described(tmp_path)
    old_json = json.loads((tmp_path / "model.json").read_text())
    pub.freeze_for_segmentation(net)
    _train_steps(net)
    _, loaded_desc, _ = pub.load_published(path)
    pub.publish_model(net.state_dict(), path, loaded_desc, note={"pairs": 2, "classifier_drift": {"max_abs": 0.0}})
    new = load_description(path)  # verifies the hash against the new weights
    assert new.weights_sha256 != old_json["weights_sha256"]
    assert new.class_thresholds == {"pneumonia": 0.37} and new.box_score_threshold == 0.42
    assert new.training["monailabel"]["pairs"] == 2
    net2, d2, pp2 = pub.load_published(path)
    assert d2.weights_sha256 == new.weights_sha256
    state = net2.state_dict()
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())
    assert isinstance(pp2, MultiCheXNetPostprocessor) and pp2.class_thresholds == [0.37]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left


def test_publish_failure_leaves_the_old_pair(tmp_path, monkeypatch):
    pub = _publish_module()
    desc, net, path = _described(tmp_path)
    old_pt, old_json = path.read_bytes(), (tmp_path / "model.json").read_bytes()
    _, loaded, _ = pub.load_published(path)

    def broken_save(obj, f, *a, **k):  # the disk fills up half-way through the weights
        open(f, "wb").write(b"PK\x03\x04 truncated")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pub.torch, "save", broken_save)
    with pytest.raises(OSError, match="No space left"):
        pub.publish_model(net.state_dict(), path, loaded)
    assert path.read_bytes() == old_pt and (tmp_path / "model.json").read_bytes() == old_json
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_load_published_refuses_a_stale_pair(tmp_path):
    from monai_mcx.model import StaleDescriptionError

    pub = _publish_module()
    _, net, path = _described(tmp_path)
    with torch.no_grad():
        next(net.parameters()).add_(1.0)
    torch.save(net.state_dict(), path)  # weights replaced behind the description's back
    with pytest.raises(StaleDescriptionError, match="belongs to other weights"):
        pub.load_published(path, retries=2, wait_s=0.0)


def test_infer_task_takes_the_whole_operating_point_from_the_current_description(tmp_path, fake_monailabel):
    """Issue 24 item 15: after an evaluation rewrites ``model.json`` in place (new calibration, class and box
    thresholds), the MONAI Label infer task applies all of them together: the config merged into every request
    holds no start-up copy of the thresholds. A request's own override still applies."""
    import os
    import shutil

    from monai_mcx.model import load_description, save_description

    from conftest import BUNDLE, monailabel_request

    infer = fake_monailabel
    bundle = tmp_path / "bundle"
    shutil.copytree(BUNDLE / "configs", bundle / "configs")
    (bundle / "models").mkdir()
    _, net, path = _described(bundle / "models")
    task = infer.MultiCheXNetInfer(infer.BundleSpec(str(bundle)))
    x = torch.rand(1, 64, 64)
    with torch.no_grad():
        z = float(net.eval()(x[None])["class_logits"][0, 0])

    def run(**params):
        data = monailabel_request(task, {"image": x, infer.ORIGINAL_SIZE: [70, 50], **params})
        return task.run_inferer(data, device="cpu")["result"]

    first = run()
    assert first["gate"]["thresholds"] == {"pneumonia": pytest.approx(0.37)}
    assert first["box_score_threshold"] == pytest.approx(0.42) and first["calibrated"] is False

    # an evaluation writes a new operating point into model.json (same weights)
    desc = load_description(path)
    desc = desc.with_thresholds({"pneumonia": 0.61}, "youden", "validation")
    desc = desc.with_calibration({"pneumonia": 2.5}, "validation", 40).with_box_threshold(0.55, "rsna", "validation")
    save_description(desc, path)
    json_path = bundle / "models" / "model.json"
    st = os.stat(json_path)
    os.utime(json_path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # a later write, whatever the clock

    second = run()
    assert second["calibrated"] is True
    assert second["class_probabilities"]["pneumonia"] == pytest.approx(1 / (1 + math.exp(-z / 2.5)), abs=1e-5)
    assert second["gate"]["thresholds"] == {"pneumonia": pytest.approx(0.61)}
    assert second["gate"]["positive"] == (second["class_probabilities"]["pneumonia"] >= 0.61)
    assert second["box_score_threshold"] == pytest.approx(0.55)
    assert all(b["score"] >= 0.55 for b in second["boxes_ungated"])

    overridden = run(class_thresholds=0.05, box_score_threshold=0.0)
    assert overridden["gate"]["thresholds"] == {"pneumonia": 0.05} and overridden["box_score_threshold"] == 0.0
    assert overridden["class_probabilities"] == second["class_probabilities"]
