"""Evaluation report, plots, overlay geometry, gated metrics and TensorBoard overlays."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from ignite.engine import Engine

from monai_mcx.handlers import MultiTaskMetrics
from monai_mcx.handlers.report import EvaluationReport
from monai_mcx.visualize import format_value, overlay_rgb, render_case

from conftest import SMALL

ROW = re.compile(r"^\| `([^`]+)` \|(( [^|]* \|)+)$")


def _table(report: str) -> dict[str, tuple[str, ...]]:
    """``key -> (ungated, gated[, ungated original px, gated original px])`` from report.md's metric table."""
    return {
        m.group(1): tuple(c.strip() for c in m.group(2).split("|")[:-1])
        for m in map(ROW.match, report.splitlines())
        if m
    }


def _column(key: str) -> tuple[str, int]:
    """The table row and column of a metrics.json key."""
    base, col = key, 0
    if base.endswith("/original"):
        base, col = base[: -len("/original")], 2
    if base.endswith("/gated"):
        base, col = base[: -len("/gated")], col + 1
    return base, col


# --------------------------------------------------------------------------------------------- bundle evaluate
@pytest.mark.slow
def test_evaluate_writes_report_plots_and_thresholds(evaluated_bundle):
    root, overrides, out = evaluated_bundle
    metrics = json.loads((out / "metrics.json").read_text())
    report = (out / "report.md").read_text()
    # every plot the report links exists, and the expected ones are linked
    links = set(re.findall(r"\]\((plots/[^)]+\.png)\)", report))
    assert {"plots/roc_pneumonia.png", "plots/pr_pneumonia.png", "plots/dice_hist.png", "plots/gallery.png"} <= links
    for link in links:
        assert (out / link).is_file() and (out / link).stat().st_size > 1000, link
    # the table holds every metric of metrics.json, with the same numbers; gated beside ungated
    table = _table(report)
    assert any(k.endswith("/original") for k in metrics)  # evaluate.json: both resolutions
    for key, value in metrics.items():
        base, col = _column(key)
        assert base in table, key
        assert table[base][col] == format_value(value), (key, value, table[base])
    assert table["segmentation/dice_positive"][1] == format_value(metrics["segmentation/dice_positive/gated"])
    # thresholds chosen on validation, reported, and saved for inference next to the checkpoint
    thr = json.loads((root / "models" / "model.json").read_text())  # the model description
    assert thr["thresholds_split"] == "validation" and set(thr["class_thresholds"]) == {"pneumonia"}
    assert format_value(thr["class_thresholds"]["pneumonia"]) == format_value(
        metrics["classification/threshold/pneumonia"]
    )
    assert (
        thr["box_score_threshold"] == pytest.approx(metrics["localization/box_threshold"], rel=1e-6)
        and thr["box_threshold_method"] == "rsna"
    )
    assert "chosen on the validation split" in report
    # counts per task
    n_val = len(json.loads((Path(overrides["dataset_dir"]) / "datalist.json").read_text())["validation"])
    m = re.search(r"^\| all \| (\d+) \|", report, re.M)
    assert m and int(m.group(1)) == n_val
    # the anchors used by training were saved in the description
    assert thr["base_anchor_shapes"] == [[float(v) for v in s] for s in SMALL["base_anchor_shapes"]]


@pytest.mark.slow
def test_training_logs_overlay_images_to_tensorboard(trained_bundle):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    root, _ = trained_bundle
    steps = {}
    for ev in (root / "eval" / "tensorboard").glob("events.out.tfevents.*"):
        acc = EventAccumulator(str(ev), size_guidance={"images": 0})
        acc.Reload()
        for tag in acc.Tags()["images"]:
            steps.setdefault(tag, set()).update(e.step for e in acc.Images(tag))
    assert "validation/overlay/0" in steps, steps
    assert steps["validation/overlay/0"] == {1, 2}  # one per validation round (2 epochs)
    overlays = {t for t in steps if t.startswith("validation/overlay/")}
    saliency = {t for t in steps if t.startswith("validation/saliency/")}  # #14: the same cases' Grad-CAM
    assert len(overlays) == 4 and len(saliency) == 4 and overlays | saliency == set(steps), steps
    assert all(steps[t] == {1, 2} for t in saliency)


# --------------------------------------------------------------------------------------------- geometry
W, H = 40, 24  # non-square: a transposition would move everything
BOX = [5.0, 3.0, 15.0, 9.0]  # columns 5..15, rows 3..9
MASK_X, MASK_Y = slice(25, 35), slice(12, 20)


def _case():
    image = np.zeros((W, H), np.float32)
    image[0, 0] = 1.0
    mask = np.zeros((W, H), bool)
    mask[MASK_X, MASK_Y] = True  # (W, H) indexing: x first
    return {"image": image, "true_mask": mask, "pred_boxes": np.array([BOX]), "pred_scores": np.array([0.9])}


def _where(rgb, colour):
    r, g, b = (rgb[..., i].astype(int) for i in range(3))
    sel = (r > 180) & (g < 80) & (b < 80) if colour == "red" else (g > 180) & (r < 80) & (b < 80)
    return np.nonzero(sel)


def test_gallery_panel_geometry_x_is_column():
    s = 4
    rgb = render_case(_case(), scale=s)
    assert rgb.shape == (H * s, W * s, 3)
    rows, cols = _where(rgb, "red")
    assert len(rows)
    assert abs(cols.min() - BOX[0] * s) <= 2 and abs(cols.max() - BOX[2] * s) <= 2
    assert abs(rows.min() - BOX[1] * s) <= 2 and abs(rows.max() - BOX[3] * s) <= 2
    rows, cols = _where(rgb, "green")  # the mask contour
    assert len(rows)
    assert MASK_X.start * s - 3 <= cols.min() and cols.max() <= MASK_X.stop * s + 3
    assert MASK_Y.start * s - 3 <= rows.min() and rows.max() <= MASK_Y.stop * s + 3
    assert cols.max() - cols.min() > rows.max() - rows.min()  # the mask is 10 wide (x) and 8 high (y)


def test_tensorboard_overlay_geometry_x_is_column():
    case = _case()
    rgb = overlay_rgb(case["image"], true_mask=case["true_mask"], pred_boxes=case["pred_boxes"])
    assert rgb.shape == (H, W, 3)
    rows, cols = _where(rgb, "red")
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (3, 8, 5, 14)  # pixel-edge box [5, 3, 15, 9]
    rows, cols = _where(rgb, "green")
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (12, 19, 25, 34)
    big = overlay_rgb(case["image"], pred_boxes=case["pred_boxes"], upscale=3)
    rows, cols = _where(big, "red")
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (9, 26, 15, 44)


# --------------------------------------------------------------------------------------------- gated metrics
def _hand_made_batches():
    """Image 0: the classifier says 0.2 (gated out at 0.5) but there is a lesion, found exactly by the seg and box
    heads. Image 1: classifier 0.9, a lesion, half found. Image 2: classifier 0.8, no lesion, nothing predicted."""
    n, size = 3, 16
    mask = torch.zeros(n, 1, size, size)
    mask[0, 0, 2:6, 3:9] = 1
    mask[1, 0, 8:12, 8:12] = 1
    seg = mask.clone()
    seg[1, 0, 10:12] = 0  # half of image 1's lesion
    boxes = [torch.tensor([[2.0, 3.0, 6.0, 9.0]]), torch.tensor([[8.0, 8.0, 12.0, 12.0]]), torch.zeros(0, 4)]
    dets = [
        {"boxes": boxes[0].clone(), "scores": torch.tensor([0.9]), "labels": torch.zeros(1)},
        {"boxes": boxes[1].clone(), "scores": torch.tensor([0.8]), "labels": torch.zeros(1)},
        {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0)},
    ]
    pred = {"class_probs": torch.tensor([[0.2], [0.9], [0.8]]), "seg_mask": seg > 0.5, "detections": dets}
    ones = torch.ones(n)
    label = {
        "image": torch.rand(n, 1, size, size),
        "label": torch.tensor([[1.0], [1.0], [0.0]]),
        "has_label": ones,
        "mask": mask,
        "has_mask": ones,
        "boxes": boxes,
        "has_boxes": ones,
    }
    return [{"image": label["image"], "pred": pred, "label": label}]


def test_gated_metrics_on_a_hand_made_case(tmp_path):
    engine = Engine(lambda e, batch: batch)
    MultiTaskMetrics(class_names=["pneumonia"], threshold="youden").attach(engine, "score")
    report = EvaluationReport(tmp_path, ["pneumonia"], num_cases=1)
    report.attach(engine)
    m = engine.run(_hand_made_batches()).metrics
    # the gate uses the threshold chosen here (0.9, below): images 0 (0.2) and 2 (0.8) are gated out
    # image 0 is gated out although it has a lesion: Dice 1 ungated, 0 gated; image 1: Dice 2*8/(8+16) = 2/3
    assert m["segmentation/dice_positive"] == pytest.approx((1 + 2 / 3) / 2)
    assert m["segmentation/dice_positive/gated"] == pytest.approx((0 + 2 / 3) / 2)
    # empty-aware Dice: image 2 (empty truth, empty prediction) scores 1 in both
    assert m["segmentation/dice_empty_aware/gated"] == pytest.approx((0 + 2 / 3 + 1) / 3)
    # boxes: both lesions found ungated (AP 1); gated, image 0 loses its box -> recall 1/2
    assert m["localization/ap50"] == pytest.approx(1.0)
    assert m["localization/ap50/gated"] < 0.6
    # threshold chosen on this (validation) data by Youden's J: positives 0.2, 0.9, negative 0.8 -> 0.9 (J = 0.5)
    assert m["classification/threshold/pneumonia"] == pytest.approx(0.9)
    assert m["classification/sensitivity"] == pytest.approx(0.5) and m["classification/specificity"] == pytest.approx(
        1.0
    )
    # the report shows ungated and gated side by side, and counts the gated-out image
    text = (tmp_path / "report.md").read_text()
    table = _table(text)
    assert table["segmentation/dice_positive"] == (
        format_value(m["segmentation/dice_positive"]),
        format_value(m["segmentation/dice_positive/gated"]),
    )
    assert "| all | 3 | | 2 gated out by the classifier |" in text
    assert "pneumonia 0.9" in text and "some class reaches its own threshold" in text
    best, worst = report.gallery_cases()
    assert best[0]["index"] == 0 and worst[0]["index"] == 1  # ranked by Dice (1 vs 2/3)
    for name in ("roc_pneumonia.png", "pr_pneumonia.png", "dice_hist.png", "gallery.png"):
        assert (tmp_path / "plots" / name).is_file()


# ------------------------------------------------------------------------------ distributed evaluation (item 12)
def _shard(batches: list[dict], keep: list[int]) -> list[dict]:
    """The images ``keep`` of the one-batch hand-made evaluation (what one rank's sampler would give it)."""
    b = batches[0]

    def take(v):
        if isinstance(v, dict):
            return {k: take(x) for k, x in v.items()}
        if isinstance(v, list):
            return [v[i] for i in keep]
        return v[keep]

    return [{k: take(v) for k, v in b.items()}]


def _fake_ranks(monkeypatch, rank: int, sent: list, others: list) -> None:
    """A 2-rank ``torch.distributed`` where this process is ``rank``: ``all_gather_object`` records what this rank
    sends in ``sent`` and receives, in rank order, its own object and ``others.pop(0)``."""
    import torch.distributed as dist

    def all_gather_object(parts, obj):
        sent.append(obj)
        other = others.pop(0) if others else obj
        parts[:] = [obj, other] if rank == 0 else [other, obj]

    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(dist, "get_rank", lambda: rank)
    monkeypatch.setattr(dist, "all_gather_object", all_gather_object)


def _per_image(folder: Path) -> set[tuple]:
    import csv

    with (folder / "per_image.csv").open() as f:
        return {tuple(sorted(r.items())) for r in csv.DictReader(f)}


def test_distributed_report_covers_every_rank(tmp_path, monkeypatch):
    """Issue 24 item 12: each rank collects its shard; the report gathers every rank's per-image records, so
    report.md's counts, per_image.csv and the gallery of rank 0 cover the whole split (as one process), and the
    report handler runs on every rank (the gather is a collective), rank 0 alone writing."""
    from monai_mcx.engines.distributed import rank0_handlers

    batches = _hand_made_batches()
    batches[0]["image_path"] = ["a.png", "b.png", "c.png"]  # as collate_cxr hands them to the report
    single = EvaluationReport(tmp_path / "single", ["pneumonia"], num_cases=1)
    engine = Engine(lambda e, batch: batch)
    single.attach(engine)
    engine.run(batches)

    sent: list = []
    with monkeypatch.context() as m:  # rank 1: images 1; it sends its records and writes nothing
        _fake_ranks(m, 1, sent, [])
        r1 = EvaluationReport(tmp_path / "rank1", ["pneumonia"], num_cases=1)
        assert rank0_handlers([r1], rank=1) == [r1]
        e1 = Engine(lambda e, batch: batch)
        r1.attach(e1)
        e1.run(_shard(batches, [1]))
    assert not (tmp_path / "rank1").exists()
    with monkeypatch.context() as m:  # rank 0: images 0 and 2, receives rank 1's records
        _fake_ranks(m, 0, [], [sent[0]])
        r0 = EvaluationReport(tmp_path / "rank0", ["pneumonia"], num_cases=1)
        e0 = Engine(lambda e, batch: batch)
        r0.attach(e0)
        e0.run(_shard(batches, [0, 2]))

    assert (
        _per_image(tmp_path / "rank0") == _per_image(tmp_path / "single") and len(_per_image(tmp_path / "single")) == 3
    )
    text0, text1 = (tmp_path / "rank0" / "report.md").read_text(), (tmp_path / "single" / "report.md").read_text()
    section = text1.split("## Images")[1].split("## ")[0]  # the per-task image counts
    assert "| all | 3 |" in section and section in text0
    assert "| all | 3 |" in text0 and "shard" not in text0
    # the gallery ranks the cases of both ranks: the best (Dice 1) is on rank 0, the worst (Dice 2/3) on rank 1
    best, worst = r0.gallery_cases()
    assert best[0]["rank"] == pytest.approx(1.0) and worst[0]["rank"] == pytest.approx(2 / 3)
    assert (tmp_path / "rank0" / "plots" / "dice_hist.png").is_file()


def test_prediction_summary_gathers_every_rank(monkeypatch):
    """The prediction writer's summary rows: every rank's on rank 0, None on the others; a file name written by
    two ranks for different images is an error on every rank."""
    from monai_mcx.engines.distributed import gather_rows

    a, b = (
        [{"image": "x/a.png", "json": "a.json"}],
        [{"image": "y/b.png", "json": "b.json"}, {"image": "z", "error": "e"}],
    )
    assert gather_rows(a, unique="json") == a  # one process
    with monkeypatch.context() as m:
        _fake_ranks(m, 0, [], [b])
        assert gather_rows(a, unique="json") == a + b
    with monkeypatch.context() as m:
        _fake_ranks(m, 1, [], [a])
        assert gather_rows(b, unique="json") is None
    clash = [{"image": "other/a.png", "json": "a.json"}]
    for rank in (0, 1):
        with monkeypatch.context() as m:
            _fake_ranks(m, rank, [], [clash])
            with pytest.raises(RuntimeError, match=r"a.json \(rank 0: .*a.png, rank 1: .*a.png\)"):
                gather_rows(a, unique="json")
