"""The one post-processing component (monai_mcx.inferers): gate rule, masks, boxes, mapping back, consumers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ignite.engine import Engine

from monai_mcx.inferers import (
    GATE_RULE,
    MultiCheXNetInferer,
    MultiCheXNetPostprocessor,
    gate_decision,
    select_detections,
    to_original,
)
from monai_mcx.keys import BatchKeys, DetKeys, PredKeys

ANCHORS = [[8.0, 8.0], [12.0, 12.0], [16.0, 10.0]]


def _logit(p):
    p = torch.as_tensor(p, dtype=torch.float32)
    return torch.log(p / (1 - p))


def test_gate_is_per_class():
    """t = [0.2, 0.8], p = [0.1, 0.5]: no class reaches its own threshold -> negative (``max p >= min t`` said
    positive)."""
    probs = torch.tensor([[0.1, 0.5], [0.25, 0.5], [0.1, 0.8], [0.19, 0.79]])
    assert gate_decision(probs, [0.2, 0.8]).tolist() == [False, True, True, False]
    assert float(probs[0].max()) >= min(0.2, 0.8)  # the old rule's answer for image 0
    pp = MultiCheXNetPostprocessor(["a", "b"], class_thresholds={"b": 0.8, "a": 0.2})
    assert pp.class_thresholds == [0.2, 0.8]
    out = pp(
        {PredKeys.CLASS_LOGITS: _logit(probs), PredKeys.SEG_LOGITS: torch.zeros(4, 1, 8, 8)}, torch.zeros(4, 1, 8, 8)
    )
    assert out[PredKeys.GATE].tolist() == [False, True, True, False]
    assert out[PredKeys.SEG_MASK].all()  # p = 0.5 >= 0.5 everywhere
    assert out[PredKeys.SEG_MASK_GATED].reshape(4, -1).all(dim=1).tolist() == [False, True, True, False]
    with pytest.raises(ValueError, match="no threshold for the classes"):
        MultiCheXNetPostprocessor(["a", "b"], class_thresholds={"a": 0.2})
    with pytest.raises(ValueError, match="3 class thresholds for 2 classes"):
        MultiCheXNetPostprocessor(["a", "b"], class_thresholds=[0.1, 0.2, 0.3])


def _tiny_net():
    from monai_mcx.networks import MultiCheXNet

    torch.manual_seed(0)
    return MultiCheXNet(encoder="densenet-tiny", num_anchors=len(ANCHORS)).eval()


def test_inferer_outputs_and_operating_point():
    net = _tiny_net()
    images = torch.rand(3, 1, 64, 64)
    pp = MultiCheXNetPostprocessor(
        ["pneumonia"],
        class_thresholds=0.0,
        box_score_threshold=0.0,
        base_anchor_shapes=ANCHORS,
        candidate_score_thresh=0.0,
    )
    with torch.no_grad():
        probs = torch.sigmoid(net(images)["class_logits"])[:, 0]
    thr = float(probs.median())  # one image (at least) each side
    pp = pp.with_settings(class_thresholds=thr)
    pred = MultiCheXNetInferer(pp)(images, net)
    gate = pred[PredKeys.GATE]
    assert gate.tolist() == (probs >= thr).tolist() and gate.any() and not gate.all()
    scores = torch.cat([d["scores"] for d in pred[PredKeys.DETECTIONS]])
    t = float(scores.median())
    pred = MultiCheXNetInferer(pp.with_settings(box_score_threshold=t))(images, net)
    for i, (d, op, g) in enumerate(
        zip(pred[PredKeys.DETECTIONS], pred[PredKeys.DETECTIONS_OP], pred[PredKeys.DETECTIONS_GATED])
    ):
        keep = d["scores"] >= t
        assert torch.equal(op["boxes"], d["boxes"][keep]) and torch.equal(op["scores"], d["scores"][keep])
        if gate[i]:
            assert torch.equal(g["boxes"], op["boxes"])
        else:
            assert len(g["boxes"]) == 0 and len(g["scores"]) == 0
    assert pred[PredKeys.INPUT_SIZE] == [64, 64]


def test_to_original_scales_boxes_and_resizes_the_mask():
    """Against an independent computation: boxes scaled per axis and clipped; the mask is the seg probability
    resized to the original (W, H) then thresholded, emptied by the gate."""
    w_in, h_in, w0, h0 = 16, 8, 40, 12
    seg = torch.full((2, 1, w_in, h_in), 0.1)
    seg[:, :, 4:8, 2:6] = 0.9  # x 4..8, y 2..6 in input pixels
    det = {
        "boxes": torch.tensor([[4.0, 2.0, 8.0, 6.0], [10.0, 0.0, 16.0, 8.0]]),
        "scores": torch.tensor([0.9, 0.4]),
        "labels": torch.zeros(2, dtype=torch.long),
    }
    empty = select_detections(det, 0.0, keep=False)
    pred = {
        PredKeys.CLASS_PROBS: torch.tensor([[0.9], [0.1]]),
        PredKeys.GATE: torch.tensor([True, False]),
        PredKeys.SEG_PROBS: seg,
        PredKeys.DETECTIONS_OP: [det, det],
        PredKeys.DETECTIONS_GATED: [det, empty],
        PredKeys.INPUT_SIZE: [w_in, h_in],
    }
    pos = to_original(pred, 0, (w0, h0))
    sx, sy = w0 / w_in, h0 / h_in
    expected = np.array([[4 * sx, 2 * sy, 8 * sx, 6 * sy], [10 * sx, 0, w0, h0]])
    assert np.allclose(pos["boxes"], expected) and np.allclose(pos["boxes_ungated"], expected)
    assert pos["mask"].shape == (w0, h0) and pos["gate"] is True
    xs, ys = np.nonzero(pos["mask"])
    assert 4 * sx - sx <= xs.min() and xs.max() < 8 * sx + sx and 2 * sy - sy <= ys.min() and ys.max() < 6 * sy + sy
    assert pos["mask"][int(6 * sx), int(4 * sy)] and not pos["mask"][0, 0]
    neg = to_original(pred, 1, (w0, h0))
    assert neg["gate"] is False and not neg["mask"].any() and neg["mask_ungated"].any()
    assert len(neg["boxes"]) == 0 and np.allclose(neg["boxes_ungated"], expected)


def test_metrics_gate_with_the_postprocessor_rule_and_chosen_box_threshold():
    """``MultiTaskMetrics``' /gated numbers are those of the post-processor's own output with the thresholds it
    reports (class thresholds and box operating point chosen on this data)."""
    from monai_mcx.handlers import MultiTaskMetrics
    from monai_mcx.metrics import choose_box_threshold, detection_metrics

    net = _tiny_net()
    torch.manual_seed(1)
    images = torch.rand(6, 1, 64, 64)
    boxes = [torch.tensor([[10.0, 10.0, 30.0, 26.0]]) if i % 2 else torch.zeros(0, 4) for i in range(6)]
    labels = torch.tensor([[float(i % 2)] for i in range(6)])
    targets = {
        BatchKeys.IMAGE: images,
        BatchKeys.LABEL: labels,
        BatchKeys.HAS_LABEL: torch.ones(6),
        BatchKeys.BOXES: boxes,
        BatchKeys.HAS_BOXES: torch.ones(6),
    }
    pp = MultiCheXNetPostprocessor(["pneumonia"], base_anchor_shapes=ANCHORS, candidate_score_thresh=0.0)
    pred = MultiCheXNetInferer(pp)(images, net)
    engine = Engine(lambda e, b: b)
    metric = MultiTaskMetrics(["pneumonia"], postprocessor=pp, threshold="youden", box_threshold="rsna")
    metric.attach(engine, "score")
    m = engine.run([{"pred": pred, "label": targets}]).metrics
    deployed = pp.with_settings(
        class_thresholds=m["classification/threshold/pneumonia"], box_score_threshold=m["localization/box_threshold"]
    )
    again = MultiCheXNetInferer(deployed)(images, net)  # what inference outputs with the saved thresholds
    gated = again[PredKeys.DETECTIONS_GATED]
    ref = detection_metrics(gated, boxes, score_threshold=0.0)
    assert m["localization/rsna/gated"] == pytest.approx(ref["localization/rsna"], nan_ok=True)
    assert m["localization/boxes_per_negative/gated"] == pytest.approx(ref["localization/boxes_per_negative"])
    assert m["localization/sensitivity50/gated"] == pytest.approx(ref["localization/sensitivity50"], nan_ok=True)
    # the box threshold is the chooser's on the gated candidates
    all_gated = [
        select_detections(d, 0.0, keep=bool(g)) for d, g in zip(again[PredKeys.DETECTIONS], again[PredKeys.GATE])
    ]
    assert m["localization/box_threshold"] == choose_box_threshold(all_gated, boxes)[0]
    assert metric.deployed.box_score_threshold == m["localization/box_threshold"]


def test_from_description(tmp_path):
    from monai_mcx.model import ModelDescription

    desc = ModelDescription(
        class_names=["a", "b"],
        tasks=["classification", "segmentation", "localization"],
        encoder="densenet-tiny",
        spatial_size=[64, 64],
        base_anchor_shapes=ANCHORS,
        class_thresholds={"a": 0.2, "b": 0.8},
        mask_threshold=0.4,
        box_score_threshold=0.35,
        nms_thresh=0.3,
        detections_per_img=7,
    )
    pp = MultiCheXNetPostprocessor.from_description(desc)
    assert pp.class_thresholds == [0.2, 0.8] and pp.seg_threshold == 0.4 and pp.box_score_threshold == 0.35
    assert pp.gate_rule == GATE_RULE == desc.gate_rule
    assert pp.box_decoder.box_selector.nms_thresh == 0.3 and pp.box_decoder.box_selector.detections_per_img == 7
    assert MultiCheXNetPostprocessor.from_description(desc.replace(box_score_threshold=None)).box_score_threshold == 0.0
    assert MultiCheXNetPostprocessor.from_description(desc, box_score_threshold=0.9).box_score_threshold == 0.9


def test_from_description_reads_no_file(tmp_path, monkeypatch):
    """The post-processor comes from a description OBJECT: no model.json exists, no file is opened, and a path is
    refused (reading files is monai_mcx.model's job); its box decoder is the one build_box_decoder makes."""
    import builtins

    from monai_mcx.model import ModelDescription, build_box_decoder, build_network

    desc = ModelDescription(
        class_names=["a"],
        tasks=["classification", "segmentation", "localization"],
        encoder="densenet-tiny",
        spatial_size=[64, 64],
        base_anchor_shapes=ANCHORS,
        candidate_score_thresh=0.1,
    )
    monkeypatch.chdir(tmp_path)
    opened = []
    real_open = builtins.open
    monkeypatch.setattr(builtins, "open", lambda *a, **k: opened.append(a[0]) or real_open(*a, **k))
    pp = MultiCheXNetPostprocessor.from_description(desc)
    monkeypatch.undo()
    assert opened == [] and not list(tmp_path.iterdir())
    ref = build_box_decoder(desc)
    assert pp.box_decoder.box_selector.score_thresh == ref.box_selector.score_thresh == 0.1
    assert pp.box_decoder.box_selector.topk_candidates_per_level == ref.box_selector.topk_candidates_per_level
    torch.manual_seed(0)
    images = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        head = build_network(desc).eval()(images)
    for got, want in zip(pp.box_decoder(head, images), ref(head, images)):
        assert torch.equal(got[DetKeys.BOXES], want[DetKeys.BOXES]) and torch.equal(
            got[DetKeys.SCORES], want[DetKeys.SCORES]
        )
    with pytest.raises(TypeError, match="not the path"):
        MultiCheXNetPostprocessor.from_description(tmp_path / "model.pt")
    # a description without the localization head gets no box decoder, anchors or not
    no_boxes = desc.replace(tasks=["classification", "segmentation"])
    assert MultiCheXNetPostprocessor.from_description(no_boxes).box_decoder is None


def test_evaluator_refuses_a_plain_inferer():
    from monai.inferers import SimpleInferer

    from monai_mcx.engines import MultiTaskEvaluator

    net = _tiny_net()
    batch = {"image": torch.rand(1, 1, 64, 64)}
    ev = MultiTaskEvaluator("cpu", [batch], net, inferer=SimpleInferer())
    with pytest.raises(TypeError, match="MultiCheXNetInferer"):
        ev.run()


def test_prediction_keys_have_one_home():
    """The post-processed prediction keys are spelled only in monai_mcx/keys.py (issue 11 item 7)."""
    import re

    from conftest import REPO

    names = [
        k.value
        for k in PredKeys
        if k
        not in (
            PredKeys.CLASS_LOGITS,
            PredKeys.SEG_LOGITS,
            PredKeys.BOX_CLS_LOGITS,
            PredKeys.BOX_REGRESSION,
            PredKeys.GATE,
        )
    ]
    pattern = re.compile(r"[\"'](" + "|".join(names) + r")[\"']")
    found = []
    for folder in ("monai_mcx", "monailabel_app", "scripts", "experiments"):
        for path in (REPO / folder).rglob("*.py"):
            if path.name == "keys.py":
                continue
            found += [
                f"{path.relative_to(REPO)}:{i + 1}"
                for i, line in enumerate(path.read_text().splitlines())
                if pattern.search(line)
            ]
    assert not found, found
    from monai_mcx.data.collate import LIST_KEYS
    from monai_mcx.engines import TARGET_KEYS

    assert set(TARGET_KEYS) | set(LIST_KEYS) <= {k.value for k in BatchKeys}
