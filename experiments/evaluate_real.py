"""Per-source validation metrics of a model trained with ``bundle/configs/train_real.json`` (issue 12).

The bundle's evaluator pools every source into one AUC; the real-data goals are per source. This script
reads the model with :func:`monai_mcx.model.load_model` (a checkpoint without a description is described after
the fact from ``train.json`` + ``train_real.json`` + ``--set`` overrides, without writing a file beside it), builds
the preprocessing and the box decoder from the same merged configs, runs the checkpoint on the validation split of the datalist (patients
never trained on) and writes ``results_real.json`` / ``results_real.md``:

* Kermany AUC, RSNA AUC (classification head, per source);
* RSNA challenge metric and AP50, ungated and gated (an image whose pneumonia probability is below the gate
  gets no box); boxes are kept from ``--box-score`` up (the bundle's default 0.5), the metric is also
  reported at the box score that maximises it on this split (optimistic: chosen on the data it is scored on);
* boxes and mask pixels per RSNA negative image (ungated / gated);
* lesion Dice on covid_lesions (images with a lesion; masks at the training resolution).

Example::

    python -m experiments.evaluate_real --ckpt bundle/runs/real/models/model.pt --output-dir docs
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from experiments.common import CONFIGS, REPO, repo_relative

CONFIG_FILES = [str(CONFIGS / "train.json"), str(CONFIGS / "train_real.json")]


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ckpt", type=Path, default=REPO / "bundle" / "runs" / "real" / "models" / "model.pt")
    ap.add_argument("--datalist", type=Path, default=REPO / "bundle" / "runs" / "real" / "datalist.json")
    ap.add_argument("--split", default="validation")
    ap.add_argument("--output-dir", type=Path, default=REPO / "docs")
    ap.add_argument("--gate", type=float, default=0.5, help="classification gate of the dense heads")
    ap.add_argument("--box-score", type=float, default=0.5, help="boxes kept from this score up")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-items", type=int, help="first N items only (smoke tests)")
    ap.add_argument("--set", nargs="*", default=[], help="config overrides id=json_value (as in training)")
    return ap.parse_args(argv)


def config_overrides(args) -> dict:
    """The overrides of ``train.json`` + ``train_real.json``: datalist, CPU, anchors file and ``--set``."""
    overrides = {
        "datalist_file": str(args.datalist),
        "device": "$torch.device('cpu')",
        "anchors_file": str(args.ckpt.parent / "anchors.json"),
    }
    for s in args.set:
        k, v = s.split("=", 1)
        overrides[k] = json.loads(v)
    return overrides


def load_network(ckpt: Path, overrides: dict):
    """The model through :func:`monai_mcx.model.load_model`: ``(network, description)``. A legacy checkpoint (no
    description) is described after the fact from the training configs and ``overrides``
    (:func:`monai_mcx.model.describe_legacy_checkpoint`, anchors from ``anchors.json`` beside it) into a temporary
    file, not beside the checkpoint."""
    from monai_mcx.model import describe_legacy_checkpoint, has_description, load_model, save_description

    if has_description(ckpt):
        net, desc, _ = load_model(ckpt)
        return net, desc
    if "base_anchor_shapes" not in overrides and (ckpt.parent / "anchors.json").is_file():
        anchors = json.loads((ckpt.parent / "anchors.json").read_text())
        overrides = {
            **overrides,
            "base_anchor_shapes": anchors["base_anchor_shapes"] if isinstance(anchors, dict) else anchors,
        }
    desc = describe_legacy_checkpoint(ckpt, CONFIG_FILES, overrides=overrides, write=False)
    with tempfile.TemporaryDirectory() as tmp:
        net, desc, _ = load_model(ckpt, description=save_description(desc, Path(tmp) / "model.json"))
    return net, desc


def build_pipeline(args, overrides: dict, desc):
    """The preprocessing of the merged configs, the class names and the one post-processing path
    (:class:`monai_mcx.inferers.MultiCheXNetPostprocessor`: probabilities, gate, mask, every candidate box) at
    ``--gate`` / ``--box-score``, with the described anchors."""
    from monai.bundle import ConfigParser
    from monai.transforms import Compose

    from monai_mcx.inferers import MultiCheXNetPostprocessor

    parser = ConfigParser()
    parser.read_config(CONFIG_FILES)
    parser.update({**overrides, "base_anchor_shapes": desc.base_anchor_shapes})
    class_names = parser.get_parsed_content("class_names")
    post = MultiCheXNetPostprocessor(
        class_names=class_names,
        class_thresholds=args.gate,
        seg_threshold=0.5,
        box_score_threshold=args.box_score,
        box_decoder=parser.get_parsed_content("box_decoder"),
    )
    return Compose(parser.get_parsed_content("preprocessing_base")), class_names, post


def collect(net, transform, post, items: list[dict], batch_size: int) -> dict:
    """Run the model on ``items``; per source the lists ``gate``, ``prob``, ``label`` and, with those heads,
    ``seg`` / ``mask`` / ``has_mask`` and ``det`` / ``boxes`` / ``has_boxes``."""
    from monai_mcx.data import collate_cxr
    from monai_mcx.keys import PredKeys

    rec = defaultdict(lambda: defaultdict(list))
    for i in range(0, len(items), batch_size):
        batch = collate_cxr([transform(dict(it)) for it in items[i : i + batch_size]])
        with torch.no_grad():
            pred = post(net(batch["image"]), batch["image"])
            probs = pred[PredKeys.CLASS_PROBS][:, 0]
            seg = pred[PredKeys.SEG_MASK] if PredKeys.SEG_MASK in pred else None
            dets = pred.get(PredKeys.DETECTIONS)
        for j, it in enumerate(items[i : i + batch_size]):
            r = rec[it["source"]]
            r["gate"].append(bool(pred[PredKeys.GATE][j]))
            r["prob"].append(float(probs[j]))
            r["label"].append(None if it["label"] is None else float(it["label"][0]))
            if seg is not None:
                r["seg"].append(seg[j].numpy())
                r["mask"].append(batch["mask"][j].numpy() > 0.5)
                r["has_mask"].append(it["mask"] is not None)
            if dets is not None:
                r["det"].append({k: v.detach() for k, v in dets[j].items()})
                r["boxes"].append(batch["boxes"][j] if isinstance(batch["boxes"], list) else batch["boxes"][j])
                r["has_boxes"].append(it["boxes"] is not None)
    return rec


def rsna_metrics(r: dict, box_score: float) -> dict:
    """RSNA challenge metric and AP50 (ungated and gated), the best-scoring box threshold, boxes and mask pixels
    per negative image."""
    from monai_mcx.inferers import select_detections
    from monai_mcx.metrics.detection import detection_metrics, rsna_metric

    m: dict = {}
    truths = [torch.as_tensor(b).reshape(-1, 4) for b in r["boxes"]]
    gate = r["gate"]

    def keep(d, score, g=True):
        return select_detections(d, score, keep=g)

    for tag, gated in (("", False), ("/gated", True)):
        preds = [keep(d, box_score, g or not gated) for d, g in zip(r["det"], gate)]
        allp = [keep(d, 0.0, g or not gated) for d, g in zip(r["det"], gate)]
        m[f"rsna/ap50{tag}"] = detection_metrics(allp, truths)["localization/ap50"]
        m[f"rsna/rsna_metric{tag}"] = rsna_metric(preds, truths)
        grid = {
            round(float(s), 2): rsna_metric([keep(d, s, g or not gated) for d, g in zip(r["det"], gate)], truths)
            for s in np.arange(0.05, 1.0, 0.05)
        }
        best = max(grid, key=lambda s: -1 if np.isnan(grid[s]) else grid[s])
        m[f"rsna/rsna_metric_best{tag}"] = grid[best]
        m[f"rsna/rsna_metric_best_score{tag}"] = best
        neg = [i for i, y in enumerate(r["label"]) if y == 0]
        m[f"rsna/boxes_per_negative{tag}"] = float(np.mean([len(preds[i]["boxes"]) for i in neg])) if neg else None
        if r["seg"]:
            m[f"rsna/mask_px_per_negative{tag}"] = (
                float(np.mean([r["seg"][i].sum() * (gate[i] or not gated) for i in neg])) if neg else None
            )
    return m


def lesion_dice(r: dict) -> tuple[dict, int]:
    """Lesion Dice on the covid_lesions images with a lesion (ungated and gated) and their number."""
    from monai_mcx.metrics.segmentation import dice_per_image

    pos = [i for i, mk in enumerate(r["mask"]) if mk.any()]
    d = dice_per_image(np.stack([r["seg"][i] for i in pos]), np.stack([r["mask"][i] for i in pos]))
    gate = [r["gate"][i] for i in pos]
    return {
        "covid_lesions/dice_positive": float(d.mean()),
        "covid_lesions/dice_positive/gated": float(np.mean([x if g else 0.0 for x, g in zip(d, gate)])),
    }, len(pos)


def compute_metrics(rec: dict, box_score: float) -> tuple[dict, dict]:
    """Every metric of the module docstring (rounded, None where undefined) and the images per source."""
    from monai_mcx.metrics.classification import roc_auc

    m, counts = {}, {}
    for src, r in rec.items():
        lab = [(p, y) for p, y in zip(r["prob"], r["label"]) if y is not None]
        counts[src] = {"images": len(r["prob"]), "positives": int(sum(y for _, y in lab))}
        if lab:
            m[f"{src}/auc"] = roc_auc(np.array([p for p, _ in lab]), np.array([y for _, y in lab]))
    if "rsna" in rec and rec["rsna"]["det"]:
        m.update(rsna_metrics(rec["rsna"], box_score))
    if "covid_lesions" in rec and rec["covid_lesions"]["seg"]:
        dice, n = lesion_dice(rec["covid_lesions"])
        m.update(dice)
        counts["covid_lesions"]["with_lesion"] = n
    m = {k: (None if v is None or (isinstance(v, float) and np.isnan(v)) else round(float(v), 4)) for k, v in m.items()}
    return m, counts


def write_results(args, out: dict, seconds: float) -> list[str]:
    """``results_real.json`` and ``results_real.md`` in ``--output-dir``; the Markdown lines."""
    from monai_mcx.utils import write_json_atomic

    args.output_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out, args.output_dir / "results_real.json")
    lines = (
        [
            "# The real-data model on its validation split",
            "",
            f"`python -m experiments.evaluate_real` on `{args.ckpt}` ({args.split} split of `{args.datalist.name}`; "
            f"patients never trained on; gate {args.gate}, boxes from score {args.box_score}; {seconds:.0f} s on CPU).",
            "",
            "| metric | value |",
            "|---|---|",
        ]
        + [f"| {k} | {'-' if v is None else v} |" for k, v in out["metrics"].items()]
        + ["", "Images per source: " + ", ".join(f"{s} {c}" for s, c in out["counts"].items()), ""]
    )
    (args.output_dir / "results_real.md").write_text("\n".join(lines))
    return lines


def main(argv=None) -> int:
    from monai_mcx.data import load_datalist

    args = parse_args(argv)
    overrides = config_overrides(args)
    net, desc = load_network(args.ckpt, overrides)
    net.eval()
    transform, class_names, post = build_pipeline(args, overrides, desc)
    items = load_datalist(args.datalist, args.split, class_names, max_items=args.max_items)
    t0 = time.perf_counter()
    rec = collect(net, transform, post, items, args.batch_size)
    seconds = time.perf_counter() - t0
    metrics, counts = compute_metrics(rec, args.box_score)
    out = {
        "ckpt": repo_relative(args.ckpt),
        "datalist": repo_relative(args.datalist),
        "split": args.split,
        "gate": args.gate,
        "box_score": args.box_score,
        "seconds": round(seconds, 1),
        "metrics": metrics,
        "counts": counts,
    }
    print("\n".join(write_results(args, out, seconds)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
