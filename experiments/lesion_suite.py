"""The LESION suite of :mod:`experiments.run_experiments` (issue 12 item 4): MultiCheXNet's claims on real lesion data.

Data: Kermany (classes, ``../shared/data/cxr-real/kermany``), the SIIM-FISABIO-RSNA adults (opacity classes,
``../shared/data/cxr-adult/siim_covid``, when present), RSNA (classes + opacity boxes) and covid_lesions
(classes + lesion masks) from ``../shared/data/cxr-lesions``, prepared by ``scripts/prepare_data.py`` with one
patient-level split (``--val-fraction 0.2 --test-fraction 0``, seed fixed), then, for this suite:

* covid_lesions is re-split by patient with HALF of its patients in validation (``covid_val_fraction``), so
  that the lesion Dice is measured on ~27 images instead of 9 and the transfer set (below) is made only of
  images that no encoder of this suite was trained on;
* Kermany and SIIM are subsampled (``kermany_train`` / ``kermany_val``, ``siim_train`` / ``siim_val``) to fit the
  CPU budget. The validation set is the
  same for every row.

Every model is trained through the bundle (``train.json`` + ``train_real.json``: ResNet-18, box-aware
augmentation, ``SourceWeightedSampler`` 45/40/15 Kermany/RSNA/covid_lesions, AdamW + cosine) with
:func:`experiments.common.train_run`, at the preset's resolution, epochs and samples per epoch. Three tables:

(a) ``lesion_multitask_vs_single``: MultiCheXNet (teacher forcing ``balanced``, the recipe's) vs the three
    single-task models (``tasks`` override), each trained on its task's sources only and on exactly the samples
    of its task the joint model sees per epoch (equal data and epochs: the classifier draws the joint model's
    samples per epoch from all three sources, the segmenter 15 % of them from covid_lesions, the detector 40 %
    from RSNA).
(b) ``lesion_teacher_forcing``: the joint model with ``positive_only`` / ``all`` / ``balanced`` (the row of (a)).
(c) ``lesion_transfer``: COVID-19 vs other pneumonias on the covid_lesions VALIDATION patients (never trained
    on), k-fold cross-validation by patient, a new classifier (``finetune.json``) on the encoder of (a)'s
    MultiCheXNet, of the single classifier, or random, frozen and fine-tuned; pooled out-of-fold AUC with a
    patient-bootstrap interval and the per-fold AUCs.

Operating points, as ``evaluate.json`` on the validation split: the gate (class threshold) maximises Youden's
J over the labelled validation images of all sources; the box score threshold maximises the RSNA challenge
metric of the gated RSNA boxes (of the ungated boxes for a model without a classifier). AUC, AP50 and Dice do
not depend on them; the thresholded numbers are optimistic (chosen on the images they are scored on).

A finished row is saved under ``<work>/lesions/<preset>/rows/<row>.json`` and not re-run (delete the file to
re-run it); a training killed mid-run resumes from its ``last.pt``. ``results.json`` / ``results.md`` are
rewritten after every row, so an interrupted run leaves partial tables (missing rows are listed).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch

from experiments.common import (
    CONFIGS,
    REPO,
    discussion_lines,
    preset_name,
    run_header,
    sample,
    timed_forward,
    train_handlers,
    train_run,
)

SUITE = "lesions"
SOURCES = ("kermany", "siim_covid", "rsna", "covid_lesions")
#: train_real.json's source fractions (0.4.0 recipe) over the suite's sources, renormalised: the recipe's lung-outline
#: sources (covid_lungs, qu_viral_lungs, 10 % of its draws) and its lungs head are not part of this suite
FRACTIONS = {"kermany": 0.35 / 0.9, "siim_covid": 0.25 / 0.9, "rsna": 0.20 / 0.9, "covid_lesions": 0.10 / 0.9}
TF_MODES = ("positive_only", "all", "balanced")
TASK_NAMES = ("classification", "segmentation", "localization")
TRANSFER_INITS = ("from_multichexnet", "from_single_classifier", "random_init")

LESION_PRESETS = {
    "quick": dict(
        size=64,
        encoder="densenet-tiny",
        epochs=1,
        samples_per_epoch=16,
        batch_size=8,
        kermany_train=12,
        kermany_val=8,
        rsna_train=12,
        rsna_val=8,
        siim_train=12,
        siim_val=8,
        covid_val_fraction=0.5,
        transfer_folds=2,
        transfer_epochs=1,
        transfer_batch_size=8,
        transfer_max_items=12,
        latency_repeats=2,
        n_boot=200,
    ),
    "cpu": dict(
        size=128,
        encoder="resnet18",
        epochs=2,
        samples_per_epoch=320,
        batch_size=16,
        kermany_train=400,
        kermany_val=200,
        rsna_train=None,
        rsna_val=None,
        siim_train=400,
        siim_val=200,
        covid_val_fraction=0.5,
        transfer_folds=5,
        transfer_epochs=4,
        transfer_batch_size=8,
        transfer_max_items=None,
        latency_repeats=15,
        n_boot=2000,
    ),
    "cuda": dict(
        size=256,
        encoder="resnet18",
        epochs=20,
        samples_per_epoch=4096,
        batch_size=32,
        kermany_train=None,
        kermany_val=None,
        rsna_train=None,
        rsna_val=None,
        siim_train=None,
        siim_val=None,
        covid_val_fraction=0.5,
        transfer_folds=5,
        transfer_epochs=20,
        transfer_batch_size=8,
        transfer_max_items=None,
        latency_repeats=50,
        n_boot=2000,
    ),
}


# ------------------------------------------------------------------------------------------ data
def _absolute(item: dict, base: Path) -> dict:
    out = dict(item)
    for key in ("image", "mask", "lung_mask"):
        if out.get(key) is not None and not Path(out[key]).is_absolute():
            out[key] = str((base / out[key]).resolve())
    return out


def prepare(kermany: Path, lesions: Path, work: Path, siim_covid: Path | None = None) -> Path:
    """``scripts/prepare_data.py`` on the suite's sources (docs/training.md, the shipped model's recipe), once."""
    out = work / ("prepared_datalist.json" if siim_covid is None else "prepared_datalist_siim.json")
    if not out.is_file():
        cmd = [
            sys.executable,
            str(REPO / "scripts" / "prepare_data.py"),
            "--kermany",
            str(kermany),
            "--rsna",
            str(lesions / "rsna"),
            "--covid-lesions",
            str(lesions / "covid_lesions"),
            *(["--siim-covid", str(siim_covid)] if siim_covid is not None else []),
            "--val-fraction",
            "0.2",
            "--test-fraction",
            "0",
            "--quiet",
            "--output",
            str(out),
        ]
        subprocess.run(cmd, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    return out


def build_lesion_datalists(prepared: Path, work: Path, p: dict, seed: int) -> dict:
    """The suite's split and datalists (absolute paths) under ``work/datalists``.

    Returns:
        ``{"paths": {name: Path}, "sizes": {name: {"train", "val"}}, "val_items": [...], "transfer_items": [...]}``
        where ``val_items`` is the common validation set of tables (a) and (b) and ``transfer_items`` the
        covid_lesions validation items with ``label`` = [COVID-19].
    """
    from monai_mcx.data.splits import check_patient_splits, split_by_patient

    raw = json.loads(prepared.read_text())
    base = prepared.parent
    split = {s: [_absolute(it, base) for it in raw.get(s, [])] for s in ("training", "validation")}
    rng = np.random.default_rng(seed)

    def of(s: str, src: str) -> list:
        return sorted((it for it in split[s] if it["source"] == src), key=lambda it: it["image"])

    # covid_lesions: its own patient split (its patients are only in this folder here)
    covid = of("training", "covid_lesions") + of("validation", "covid_lesions")
    csplit = split_by_patient(covid, val_fraction=p["covid_val_fraction"], test_fraction=0.0, seed=seed)
    check_patient_splits(csplit)
    train = {
        "kermany": sample(of("training", "kermany"), p["kermany_train"], rng),
        "rsna": sample(of("training", "rsna"), p["rsna_train"], rng),
        "siim_covid": sample(of("training", "siim_covid"), p["siim_train"], rng),
        "covid_lesions": sorted(csplit["training"], key=lambda it: it["image"]),
    }
    val = {
        "kermany": sample(of("validation", "kermany"), p["kermany_val"], rng),
        "rsna": sample(of("validation", "rsna"), p["rsna_val"], rng),
        "siim_covid": sample(of("validation", "siim_covid"), p["siim_val"], rng),
        "covid_lesions": sorted(csplit["validation"], key=lambda it: it["image"]),
    }
    all_train = [it for s in SOURCES for it in train[s]]
    all_val = [it for s in SOURCES for it in val[s]]
    check_patient_splits({"training": all_train, "validation": all_val})

    def strip(items: list, label=True, mask=True, boxes=True) -> list:
        return [
            dict(
                it,
                label=it["label"] if label else None,
                mask=it["mask"] if mask else None,
                boxes=it["boxes"] if boxes else None,
            )
            for it in items
        ]

    tiny_val = lambda items: items[:2]  # noqa: E731 - the bundle's evaluator is not run; the tables use val_items
    lists = {
        "joint": (all_train, tiny_val(all_val)),
        "classification": (
            strip(all_train, mask=False, boxes=False),
            tiny_val(strip(all_val, mask=False, boxes=False)),
        ),
        "segmentation": (strip(train["covid_lesions"], boxes=False), tiny_val(val["covid_lesions"])),
        "localization": (strip(train["rsna"], mask=False), tiny_val(val["rsna"])),
    }
    paths, sizes = {}, {}
    for name, (tr, va) in lists.items():
        path = work / "datalists" / f"{name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"class_names": ["pneumonia"], "training": tr, "validation": va, "test": []}))
        paths[name] = path
    for name, srcs in (
        ("joint", SOURCES),
        ("classification", SOURCES),
        ("segmentation", ("covid_lesions",)),
        ("localization", ("rsna",)),
    ):
        sizes[name] = {"train": sum(len(train[s]) for s in srcs), "val": sum(len(val[s]) for s in srcs)}
    sizes["per_source"] = {s: {"train": len(train[s]), "val": len(val[s])} for s in SOURCES}
    transfer = [
        dict(it, label=[1.0 if "covid" in (it.get("finding") or "").lower() else 0.0]) for it in val["covid_lesions"]
    ]
    if p.get("transfer_max_items"):
        transfer = transfer[: p["transfer_max_items"]]
    return {"paths": paths, "sizes": sizes, "val_items": all_val, "transfer_items": transfer}


def _shipped_recipe() -> str:
    """The budget of ``train_real.json`` (what the shipped model was trained with), for the results' text."""
    cfg = json.loads((CONFIGS / "train_real.json").read_text())
    size = cfg.get("spatial_size", ["?"])[0]
    return f"{size} px, {cfg.get('epochs')} epochs x {cfg.get('samples_per_epoch')} samples"


def preprocess_items(items: list, p: dict, cache: Path) -> list[dict]:
    """The validation items through ``preprocessing_base`` of ``train.json`` + ``train_real.json`` (once, cached):
    ``image`` ``(1, S, S)`` float tensor, ``mask`` ``(S, S)`` bool tensor or None, ``boxes`` ``(n, 4)`` or None
    (network geometry), ``label`` float or None, ``source``, ``patient``, ``finding``."""
    if cache.is_file():
        from monai_mcx.networks.weights import load_weights_file

        return load_weights_file(cache)  # the weights layer's torch.load(weights_only=True)
    from monai.bundle import ConfigParser
    from monai.transforms import Compose

    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "train.json"), str(CONFIGS / "train_real.json")])
    parser["spatial_size"] = [p["size"], p["size"]]
    transform = Compose(parser.get_parsed_content("preprocessing_base"))

    def plain(x) -> torch.Tensor:  # MetaTensor -> torch.Tensor (torch.load(weights_only=True) reads it back)
        x = torch.as_tensor(x)
        return x.as_tensor() if hasattr(x, "as_tensor") else x

    out = []
    for it in items:
        d = transform({k: it.get(k) for k in ("image", "label", "mask", "boxes")})
        d = {k: plain(d[k]) for k in ("image", "mask", "boxes")}
        out.append(
            {
                "image": torch.as_tensor(d["image"]).float().clone(),
                "mask": None if it.get("mask") is None else (torch.as_tensor(d["mask"])[0] > 0.5).clone(),
                "boxes": None
                if it.get("boxes") is None
                else torch.as_tensor(d["boxes"]).float().reshape(-1, 4).clone(),
                "label": None if it.get("label") is None else float(it["label"][0]),
                "source": it["source"],
                "patient": str(it["patient"]),
                "finding": it.get("finding") or "",
            }
        )
    cache.parent.mkdir(parents=True, exist_ok=True)
    torch.save(out, cache)
    return out


# ------------------------------------------------------------------------------------------ evaluation
def predict(net: torch.nn.Module, ckpt: str | Path, items: list[dict], batch_size: int = 32) -> list[dict]:
    """Run ``net`` and its post-processing (:func:`monai_mcx.model.build_postprocessor` of the model description
    beside ``ckpt``) on preprocessed ``items``.

    Returns:
        per item ``{"prob": float | None, "seg": (S, S) bool tensor | None, "det": {"boxes", "scores"} | None}``
        (every candidate box the decoder keeps, ungated).
    """
    from monai_mcx.keys import PredKeys
    from monai_mcx.model import build_postprocessor, load_description

    post = build_postprocessor(load_description(ckpt))  # the description beside ckpt, verified against its weights
    net.eval()
    device = next(net.parameters()).device
    out: list[dict] = []
    for i in range(0, len(items), batch_size):
        x = torch.stack([it["image"] for it in items[i : i + batch_size]]).to(device)
        with torch.inference_mode():
            pred = post(net(x), x)
        for j in range(x.shape[0]):
            probs = pred.get(PredKeys.CLASS_PROBS)
            seg = pred.get(PredKeys.SEG_MASK)
            det = pred.get(PredKeys.DETECTIONS)
            out.append(
                {
                    "prob": None if probs is None else float(probs[j, 0]),
                    "seg": None if seg is None else seg[j, 0].cpu(),
                    "det": None if det is None else {k: v.cpu() for k, v in det[j].items() if k in ("boxes", "scores")},
                }
            )
    return out


def lesion_metrics(preds: list[dict], items: list[dict]) -> dict:
    """Per-source validation metrics of one model (see the module docstring for the operating points).

    Keys: ``gate_threshold``; ``{kermany,rsna}/auc``; ``rsna/box_threshold``; ``rsna/{ap50,map,rsna_metric,
    sensitivity50,boxes_per_negative}`` and ``rsna/mask_px_per_negative`` (mask pixels at the network
    resolution per RSNA image without a box), each also ``/gated`` when the model has a classifier;
    ``covid_lesions/dice_positive`` (images with a lesion) and ``/gated``. Missing heads give missing keys.
    """
    from monai_mcx.inferers import select_detections
    from monai_mcx.metrics.classification import choose_threshold, roc_auc
    from monai_mcx.metrics.detection import choose_box_threshold, detection_metrics
    from monai_mcx.metrics.segmentation import dice_per_image

    m: dict = {}
    n = len(items)
    has_cls = preds[0]["prob"] is not None
    gate = np.ones(n, dtype=bool)
    if has_cls:
        probs = np.array([q["prob"] for q in preds])
        lab = [i for i, it in enumerate(items) if it["label"] is not None]
        y = np.array([items[i]["label"] for i in lab])
        t = choose_threshold(probs[lab], y, "youden")
        m["gate_threshold"] = t
        gate = probs >= t
        for src in SOURCES:
            idx = [i for i in lab if items[i]["source"] == src]
            ys = np.array([items[i]["label"] for i in idx])
            if idx and 0 < ys.sum() < len(ys):
                m[f"{src}/auc"] = roc_auc(probs[idx], ys)
    tags = (("", False), ("/gated", True)) if has_cls else (("", False),)
    rsna = [i for i, it in enumerate(items) if it["source"] == "rsna" and it["boxes"] is not None]
    neg = [i for i in rsna if len(items[i]["boxes"]) == 0]
    if preds[0]["det"] is not None and rsna:
        truths = [items[i]["boxes"] for i in rsna]
        dets = {
            tag: [select_detections(preds[i]["det"], 0.0, keep=bool(gate[i]) or not g) for i in rsna] for tag, g in tags
        }
        tb = choose_box_threshold(dets[tags[-1][0]], truths)[0]  # gated boxes when there is a gate
        m["rsna/box_threshold"] = tb
        for tag, _ in tags:
            dm = detection_metrics(dets[tag], truths, score_threshold=tb)
            for k in ("ap50", "map", "rsna", "sensitivity50", "boxes_per_negative"):
                m[f"rsna/{'rsna_metric' if k == 'rsna' else k}{tag}"] = dm[f"localization/{k}"]
    if preds[0]["seg"] is not None and neg:
        for tag, g in tags:
            m[f"rsna/mask_px_per_negative{tag}"] = float(
                np.mean([float(preds[i]["seg"].sum()) * (bool(gate[i]) or not g) for i in neg])
            )
    les = [
        i
        for i, it in enumerate(items)
        if it["source"] == "covid_lesions" and it["mask"] is not None and it["mask"].any()
    ]
    if preds[0]["seg"] is not None and les:
        d = dice_per_image(torch.stack([preds[i]["seg"] for i in les]), torch.stack([items[i]["mask"] for i in les]))
        m["covid_lesions/dice_positive"] = float(d.mean())
        if has_cls:
            m["covid_lesions/dice_positive/gated"] = float(np.mean([x * bool(gate[i]) for x, i in zip(d, les)]))
    return {k: (None if v is None or not np.isfinite(v) else float(v)) for k, v in m.items()}


def patient_folds(items: list[dict], k: int, seed: int) -> list[list[int]]:
    """``k`` folds of item indices, by patient (a patient's images in one fold), stratified by the patient's label
    (positive if any of its images is): positives and negatives are dealt round-robin in a seeded order."""
    lab: dict[str, float] = {}
    for it in items:
        lab[it["patient"]] = max(
            lab.get(it["patient"], 0.0), float(it["label"][0] if isinstance(it["label"], list) else it["label"])
        )
    rng = np.random.default_rng(seed)
    order = [str(q) for q in rng.permutation(sorted(q for q, v in lab.items() if v > 0.5))]
    order += [str(q) for q in rng.permutation(sorted(q for q, v in lab.items() if v <= 0.5))]
    fold_of = {q: i % k for i, q in enumerate(order)}
    return [[i for i, it in enumerate(items) if fold_of[it["patient"]] == f] for f in range(k)]


def bootstrap_auc(
    probs, labels, patients, n_boot: int = 2000, ci: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """ROC AUC with a percentile bootstrap interval over PATIENTS (all images of a drawn patient go in;
    :func:`monai_mcx.metrics.population_points.patient_bootstrap_statistic`).

    Returns:
        ``(auc, low, high)``; replicates with one class only are dropped; NaN when undefined.
    """
    from monai_mcx.metrics.classification import roc_auc
    from monai_mcx.metrics.population_points import patient_bootstrap_statistic

    probs, labels = np.asarray(probs, float), np.asarray(labels, float)
    if not (0 < labels.sum() < len(labels)):
        return float("nan"), float("nan"), float("nan")

    def auc(idx: np.ndarray) -> float:
        y = labels[idx]
        return roc_auc(probs[idx], y) if 0 < y.sum() < len(y) else float("nan")

    low, high = patient_bootstrap_statistic(auc, patients, n_boot=n_boot, ci=ci, seed=seed)
    return roc_auc(probs, labels), low, high


# ------------------------------------------------------------------------------------------ report
def _f(v, digits=3):
    return "-" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{v:.{digits}f}"


def _ci(v, lo, hi, digits=2):
    return "-" if v is None else f"{v:.{digits}f} [{_f(lo, digits)}, {_f(hi, digits)}]"


def render_lesions(entry: dict) -> list[str]:
    """The lesion section of ``results.md`` from its ``results.json`` entry (header keys + ``records``)."""
    recs = entry.get("records", [])
    p = entry.get("settings", {})
    lines = _lesion_header(entry, p)
    missing = entry.get("missing_rows") or []
    if missing:
        lines += [f"**Missing rows** (the run did not reach them before it stopped): {', '.join(missing)}.", ""]
    lines += _lesion_multitask_table(recs)
    lines += _lesion_teacher_forcing_table(recs, p)
    lines += _lesion_transfer_table(recs, p)
    return lines + [""] + discussion_lines(entry)


def _lesion_header(entry: dict, p: dict) -> list[str]:
    sz = entry.get("subset_sizes", {}).get("per_source", {})
    lines = [
        "## Part 1: LESION tasks on real X-rays (cxr-lesions + Kermany)",
        "",
        f"Produced by `{entry.get('command')}` on {entry.get('created')} ({entry.get('device')}, "
        f"{entry.get('threads')} threads, torch {entry.get('torch')}); wall time of this invocation "
        f"{entry.get('total_minutes', 0):.1f} min"
        + (
            f" ({len(entry['rows_from_cache'])} rows read from the row cache of earlier invocations)"
            if entry.get("rows_from_cache")
            else ""
        )
        + f"{'' if entry.get('complete') else ' -- INCOMPLETE run, see the missing rows below'}.",
        "",
        f"**Preset `{entry.get('preset')}` (reduced CPU setting):** {p.get('size')} px, `{p.get('encoder')}`, "
        f"{p.get('epochs')} epochs x {p.get('samples_per_epoch')} samples (batch {p.get('batch_size')}) for the joint "
        f"model, the `train_real.json` recipe otherwise (box-aware augmentation, sources "
        + "/".join(f"{round(100 * FRACTIONS[s])}" for s in SOURCES)
        + f" % {'/'.join(SOURCES)}, AdamW 1e-3 cosine; the recipe's lungs head and lung-outline sources are left "
        f"out); Kermany subsampled to {p.get('kermany_train')} training / {p.get('kermany_val')} validation images, "
        f"SIIM to {p.get('siim_train')} / {p.get('siim_val')}. "
        f"The shipped model (`bundle/models`) was trained with `train_real.json` itself ({_shipped_recipe()}) on "
        "every Kermany image: these rows are a smaller, equal-budget comparison, not the shipped model's numbers "
        "(`docs/results_real.md`).",
        "",
        "Data: one patient-level split from `scripts/prepare_data.py --val-fraction 0.2` (seed "
        f"{entry.get('seed')}); covid_lesions re-split by patient with {int(100 * p.get('covid_val_fraction', 0.5))} % "
        "of its patients in validation (so the Dice is measured on more than 9 images and the transfer set is disjoint "
        "from every encoder's training images). Images per source (train / validation): "
        + ", ".join(f"{s} {v['train']} / {v['val']}" for s, v in sz.items())
        + ". All metrics on the validation split (patients never trained on); the same images for every row.",
        "",
        "Operating points as `evaluate.json` on the validation split: gate = Youden threshold of the pneumonia "
        "probability over all labelled validation images; box score threshold = the one maximising the RSNA "
        "challenge metric of the gated RSNA boxes (ungated for a model without a classifier). AUC, AP50 and Dice do "
        "not depend on them; thresholded numbers are optimistic (chosen on the images they score).",
        "",
    ]
    return lines


def _lesion_multitask_table(recs: list[dict]) -> list[str]:
    lines = [
        "### (a) MultiCheXNet vs the three single-task models (lesions)",
        "",
        "Single-task models: the same network and recipe with one task (`tasks` override), trained on that task's "
        "sources only and on exactly the samples of its task the joint model sees per epoch (equal data and epochs): "
        f"the classifier on every source with a class label ({', '.join(SOURCES)}), the segmenter on covid_lesions "
        f"({round(100 * FRACTIONS['covid_lesions'])} % of the joint samples), the detector on RSNA "
        f"({round(100 * FRACTIONS['rsna'])} %). RSNA metric / AP50 / Dice are gated (the deployed output) where the "
        "model has a classifier; ungated values in brackets. SIIM AUC: the adults' opacity label (when the run had "
        "the SIIM-FISABIO-RSNA pack).",
        "",
        "| row | Kermany AUC | SIIM AUC | RSNA AUC | RSNA metric | AP50 | lesion Dice (covid_lesions) | samples seen | train time (s) | latency (ms, batch 1) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]

    def gated(m, key):
        g, u = m.get(f"{key}/gated"), m.get(key)
        if f"{key}/gated" in m:
            return f"{_f(g)} ({_f(u)})"
        return f"{_f(u)} (no gate)" if key in m else "-"

    for r in (r for r in recs if r["experiment"] == "lesion_multitask_vs_single"):
        m = r["metrics"]
        lines.append(
            f"| {r['row']} | {_f(m.get('kermany/auc'))} | {_f(m.get('siim_covid/auc'))} | {_f(m.get('rsna/auc'))} | "
            f"{gated(m, 'rsna/rsna_metric')} | "
            f"{gated(m, 'rsna/ap50')} | {gated(m, 'covid_lesions/dice_positive')} | {r.get('samples_seen', '-')} | "
            f"{_f(r.get('train_seconds'), 1)} | {_f(r.get('latency_ms'), 1)} |"
        )
    if any(r.get("latency_interleaved") for r in recs):
        lines += [
            "",
            "Latency: median batch-1 forward (eval mode, no box decoding) of the four trained models measured "
            "interleaved (one forward of each in turn) on the same loaded CPU; the sum row adds the three "
            "single-task models (three passes per image).",
        ]
    lines += [""] + observations(recs) + [""]
    return lines


def _lesion_teacher_forcing_table(recs: list[dict], p: dict) -> list[str]:
    lines = [
        "### (b) Teacher forcing on REAL negatives (RSNA)",
        "",
        "The joint model of (a) with `teacher_forcing` `positive_only` (only images with a lesion train the mask and "
        "box heads), `all` (every annotated image, negatives included) and `balanced` (positives + 25 % of the "
        "negatives; the row of (a)). RSNA negatives are the validation images without a box; mask pixels at the "
        f"network resolution ({p.get('size')} x {p.get('size')}). Ungated / gated.",
        "",
        "| teacher_forcing | RSNA AUC | RSNA metric | AP50 | boxes / negative image | mask px / negative image | lesion Dice | train time (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def ug(m, key, digits=3):
        return f"{_f(m.get(key), digits)} / {_f(m.get(key + '/gated'), digits)}"

    for r in (r for r in recs if r["experiment"] == "lesion_teacher_forcing"):
        m = r["metrics"]
        lines.append(
            f"| {r['row']} | {_f(m.get('rsna/auc'))} | {ug(m, 'rsna/rsna_metric')} | {ug(m, 'rsna/ap50')} | "
            f"{ug(m, 'rsna/boxes_per_negative', 2)} | {ug(m, 'rsna/mask_px_per_negative', 0)} | "
            f"{ug(m, 'covid_lesions/dice_positive')} | {_f(r.get('train_seconds'), 1)} |"
        )
    return lines


def _lesion_transfer_table(recs: list[dict], p: dict) -> list[str]:
    tr = [r for r in recs if r["experiment"] == "lesion_transfer"]
    t0 = tr[0] if tr else {}
    lines = [
        "",
        "### (c) Transfer to an unseen disease: COVID-19 vs other pneumonias (covid_lesions)",
        "",
        f"**Small set:** the {t0.get('n_images', '?')} covid_lesions VALIDATION images ({t0.get('n_patients', '?')} "
        f"patients, {t0.get('n_positive', '?')} COVID-19 images) -- never seen by any encoder of this suite (the "
        "encoders trained on the other half of the covid_lesions patients, with their lesion masks and their "
        "'pneumonia' label, never with a COVID-19 label). Same kind of source on both sides (ieee8023 publication "
        f"figures), so not confounded by hospital. {p.get('transfer_folds')}-fold cross-validation by patient "
        f"(stratified by finding); a new `covid19` classifier (`finetune.json`), {p.get('transfer_epochs')} epochs "
        "per fold; AUC of the pooled out-of-fold probabilities with a 95 % patient-bootstrap interval "
        f"({p.get('n_boot')} replicates), and mean +- sd of the per-fold AUCs (folds with both classes). With this "
        "few images the intervals are wide: differences inside them are not evidence.",
        "",
        "| encoder init | encoder | pooled OOF AUC [95 % CI] | per-fold AUC mean +- sd | train time (s, all folds) |",
        "|---|---|---|---|---|",
    ]
    for r in tr:
        m = r["metrics"]
        fold = "-" if m.get("fold_auc_mean") is None else f"{m['fold_auc_mean']:.2f} +- {_f(m.get('fold_auc_sd'), 2)}"
        lines.append(
            f"| {r['row']} | {'frozen' if r.get('freeze_encoder') else 'fine-tuned'} | "
            f"{_ci(m.get('auc'), m.get('auc_low'), m.get('auc_high'))} | {fold} | {_f(r.get('train_seconds'), 1)} |"
        )
    return lines


def observations(recs: list[dict]) -> list[str]:
    """Where MultiCheXNet wins or loses against each single-task model in table (a), in numbers."""
    rows = {r["row"]: r for r in recs if r["experiment"] == "lesion_multitask_vs_single"}
    mcx = rows.get("multichexnet")
    if not mcx:
        return []
    out = ["Measured differences (MultiCheXNet minus single-task model; deployed = gated where a gate exists):", ""]
    pairs = (
        ("single_classification", "kermany/auc", "kermany/auc"),
        ("single_classification", "rsna/auc", "rsna/auc"),
        ("single_classification", "siim_covid/auc", "siim_covid/auc"),
        ("single_localization", "rsna/rsna_metric/gated", "rsna/rsna_metric"),
        ("single_localization", "rsna/ap50/gated", "rsna/ap50"),
        ("single_localization", "rsna/ap50", "rsna/ap50"),
        ("single_segmentation", "covid_lesions/dice_positive/gated", "covid_lesions/dice_positive"),
        ("single_segmentation", "covid_lesions/dice_positive", "covid_lesions/dice_positive"),
    )
    for base, key_m, key_b in pairs:
        a, b = mcx["metrics"].get(key_m), rows.get(base, {}).get("metrics", {}).get(key_b)
        if a is None or b is None:
            continue
        verdict = "LOSES to" if a < b - 0.01 else ("is within 0.01 of" if a < b + 0.01 else "beats")
        out.append(f"- MultiCheXNet {verdict} `{base}` on {key_m}: {a:.3f} vs {b:.3f} ({a - b:+.3f}).")
    tot = rows.get("three_single_task_sum")
    if tot:
        out.append(
            f"- training time: MultiCheXNet {mcx['train_seconds']:.0f} s vs the three single-task models "
            f"{tot['train_seconds']:.0f} s; latency {mcx['latency_ms']:.1f} ms vs {tot['latency_ms']:.1f} ms (three passes)."
        )
    return out


# ------------------------------------------------------------------------------------------ the suite
#: the four models of table (a)
MAIN_ROWS = ("multichexnet", "single_classification", "single_segmentation", "single_localization")
#: the suite's rows in order; ``latency`` last (it times the four models of table (a) together)
PLAN = (
    *MAIN_ROWS,
    "tf_positive_only",
    "tf_all",
    *(f"transfer_{init}_{mode}" for mode in ("frozen", "unfrozen") for init in TRANSFER_INITS),
    "latency",
)
#: the row whose encoder a transfer row starts from (none for ``random_init``)
TRANSFER_SOURCE = {"from_multichexnet": "multichexnet", "from_single_classifier": "single_classification"}


def lesion_settings(args) -> tuple[str, dict]:
    """The preset's name and its settings with the ``--lesion-*`` options given."""
    preset = preset_name(args)
    p = dict(LESION_PRESETS[preset])
    for opt, key in (("lesion_size", "size"), ("lesion_epochs", "epochs"), ("lesion_samples", "samples_per_epoch")):
        if getattr(args, opt, None) is not None:
            p[key] = getattr(args, opt)
    return preset, p


def run_lesion_suite(args, write) -> dict:
    """Run (or continue) the lesion suite; ``write(entry)`` stores the suite's entry (after every row).

    Args:
        args: the parsed options of ``experiments/run_experiments.py`` (``quick``, ``device``, ``seed``,
            ``work_dir``, ``data_root``, ``lesions_root``, ``threads``, ``lesion_rows``, ``argv``).
        write: callable taking the suite's results entry (``results.json["suites"]["lesions"]``).

    Returns:
        the final entry.
    """
    return LesionSuite(args).run(write)


class LesionSuite:
    """One run (or continuation) of the lesion suite: its data (prepared once, cached), its row cache
    (``<work>/rows/<row>.json``, reused while the settings are the same) and its rows."""

    def __init__(self, args):
        self.args = args
        self.preset, self.p = lesion_settings(args)
        self.work = Path(args.work_dir) / "lesions" / self.preset
        self.work.mkdir(parents=True, exist_ok=True)
        self.t_start = time.perf_counter()
        siim = getattr(args, "siim_covid_root", None)
        prepared = prepare(
            Path(args.data_root) / "kermany",
            Path(args.lesions_root),
            Path(args.work_dir) / "lesions",
            Path(siim) if siim is not None and Path(siim).is_dir() else None,
        )
        self.data = build_lesion_datalists(prepared, self.work, self.p, args.seed)
        self.val = preprocess_items(self.data["val_items"], self.p, self.work / f"val_{self.p['size']}px.pt")
        self.transfer_items = self.data["transfer_items"]
        index = {it["image"]: i for i, it in enumerate(self.data["val_items"])}
        self.transfer_pre = [dict(self.val[index[it["image"]]], label=it["label"][0]) for it in self.transfer_items]
        self.folds = patient_folds(self.transfer_items, self.p["transfer_folds"], args.seed)
        self.rows_dir = self.work / "rows"
        self.rows_dir.mkdir(exist_ok=True)
        self.records: list[dict] = []
        self.from_row_cache: list[str] = []

    # -- the results entry and the row cache
    def entry(self, complete: bool, missing: list[str]) -> dict:
        return {
            "suite": SUITE,
            **run_header(self.args, self.preset, self.p, self.data["sizes"], self.t_start),
            "complete": complete,
            "missing_rows": missing,
            "rows_from_cache": sorted(set(self.from_row_cache)),
            "records": list(self.records),
        }

    def from_cache(self, step: str) -> dict | None:
        """The finished row ``step`` of an earlier run with the same settings, or None."""
        path = self.rows_dir / f"{step}.json"
        row = json.loads(path.read_text()) if path.is_file() else None
        return row if row is not None and row.get("settings") == self.p else None

    def cached(self, name: str, fn) -> dict:
        """Row ``name`` from the row cache, or computed by ``fn()`` and stored there."""
        row = self.from_cache(name)
        if row is not None:
            self.from_row_cache.append(name)
            return row
        t = time.perf_counter()
        row = fn()
        row["settings"] = self.p
        row["step_wall_seconds"] = round(time.perf_counter() - t, 1)
        (self.rows_dir / f"{name}.json").write_text(json.dumps(row, indent=1))
        return row

    # -- the rows
    def joint_like(self, name: str, task: str | None, mode: str = "balanced") -> dict:
        """MultiCheXNet (``task`` None, teacher forcing ``mode``) or the single-task model of ``task``, trained on
        its task's sources with the joint model's samples of that task per epoch, then scored on ``val``."""
        p, spe = self.p, self.p["samples_per_epoch"]
        tasks = (task,) if task else TASK_NAMES
        frac = {"segmentation": {"covid_lesions": 1.0}, "localization": {"rsna": 1.0}}.get(task, FRACTIONS)
        n = {
            "segmentation": round(FRACTIONS["covid_lesions"] * spe),
            "localization": round(FRACTIONS["rsna"] * spe),
        }.get(task, spe)
        resumed = (self.work / "runs" / name / "models" / "last.pt").is_file()
        res = train_run(
            name,
            self.work,
            self.data["paths"][task or "joint"],
            p,
            self.args,
            tasks=tasks,
            epochs=p["epochs"],
            base_configs=("train_real.json",),
            return_network=True,
            extra={
                "teacher_forcing": mode,
                "samples_per_epoch": n,
                "source_fractions": frac,
                "train#handlers": train_handlers("train", ("LrScheduleHandler", "LastCheckpoint")),
                "resume": True,
                "ckpt_interval_iters": 10,
            },
        )
        net = res.pop("network")
        t = time.perf_counter()
        metrics = lesion_metrics(predict(net, res["ckpt"], self.val), self.val)
        return {
            **res,
            "metrics": metrics,
            "eval_seconds": round(time.perf_counter() - t, 1),
            "samples_seen": n * p["epochs"],
            "tasks": list(tasks),
            "teacher_forcing": mode,
            "resumed": resumed,
        }

    def _transfer_fold(self, name: str, pretrained: str, frozen: bool, fold: int, held: list[int]) -> tuple:
        """Train the ``covid19`` classifier of one fold (every transfer item but ``held``); its predictions on the
        ``held`` items and its training seconds."""
        held_set = set(held)
        train_items = [it for i, it in enumerate(self.transfer_items) if i not in held_set]
        dl = self.work / "datalists" / f"transfer_fold{fold}.json"
        held_items = [self.transfer_items[i] for i in held][:2]
        dl.write_text(
            json.dumps({"class_names": ["covid19"], "training": train_items, "validation": held_items, "test": []})
        )
        p = self.p
        res = train_run(
            name,
            self.work,
            dl,
            dict(p, batch_size=p["transfer_batch_size"], latency_repeats=1),
            self.args,
            tasks=("classification",),
            class_names=("covid19",),
            epochs=p["transfer_epochs"],
            finetune=True,
            base_configs=("train_real.json",),
            return_network=True,
            extra={
                "pretrained_ckpt": pretrained,
                "freeze_encoder": frozen,
                "pretrained_class_names": ["pneumonia"],
                "class_names": ["covid19"],
                "samples_per_epoch": len(train_items),
                "source_fractions": {"covid_lesions": 1.0},
                "train#handlers": train_handlers("train", ("LrScheduleHandler",)),
            },
        )
        net = res.pop("network")
        return predict(net, res["ckpt"], [self.transfer_pre[i] for i in held]), res["train_seconds"]

    def transfer_row(self, init: str, frozen: bool, ckpts: dict) -> dict:
        """Table (c)'s row: k-fold cross-validation by patient of a new classifier on the encoder ``init``."""
        from monai_mcx.metrics.classification import roc_auc

        src = TRANSFER_SOURCE.get(init)
        oof = np.full(len(self.transfer_items), np.nan)
        fold_auc, seconds = [], 0.0
        for f, held in enumerate(self.folds):
            name = f"transfer_{init}_{'frozen' if frozen else 'unfrozen'}_fold{f}"
            preds, fold_seconds = self._transfer_fold(name, ckpts[src] if src else "", frozen, f, held)
            seconds += fold_seconds
            for i, q in zip(held, preds):
                oof[i] = q["prob"]
            y = np.array([self.transfer_pre[i]["label"] for i in held])
            if 0 < y.sum() < len(y):
                fold_auc.append(roc_auc(oof[held], y))
        return self._transfer_summary(oof, fold_auc, seconds, frozen)

    def _transfer_summary(self, oof: np.ndarray, fold_auc: list[float], seconds: float, frozen: bool) -> dict:
        """Pooled out-of-fold AUC with its patient-bootstrap interval, the per-fold AUCs and the set's size."""
        pre = self.transfer_pre
        labels = np.array([it["label"] for it in pre])
        auc, lo, hi = bootstrap_auc(
            oof, labels, [it["patient"] for it in pre], n_boot=self.p["n_boot"], seed=self.args.seed
        )
        return {
            "metrics": {
                "auc": None if not np.isfinite(auc) else auc,
                "auc_low": None if not np.isfinite(lo) else lo,
                "auc_high": None if not np.isfinite(hi) else hi,
                "fold_auc_mean": float(np.mean(fold_auc)) if fold_auc else None,
                "fold_auc_sd": float(np.std(fold_auc, ddof=1)) if len(fold_auc) > 1 else None,
                "folds_with_both_classes": len(fold_auc),
            },
            "oof_probs": [float(v) for v in oof],
            "fold_aucs": fold_auc,
            "train_seconds": round(seconds, 2),
            "epochs": self.p["transfer_epochs"],
            "freeze_encoder": frozen,
            "n_images": len(pre),
            "n_patients": len({it["patient"] for it in pre}),
            "n_positive": int(labels.sum()),
        }

    def run_row(self, step: str, done: dict) -> dict | None:
        """Row ``step`` (trained, or read from the row cache); None when a row it needs is not ``done``."""
        if step == "multichexnet":
            return self.cached(step, lambda: self.joint_like("multichexnet", None, "balanced"))
        if step.startswith("single_"):
            task = step.removeprefix("single_")
            return self.cached(step, lambda: self.joint_like(step, task))
        if step.startswith("tf_"):
            mode = step.removeprefix("tf_")
            return self.cached(step, lambda: self.joint_like(f"multichexnet_{mode}", None, mode))
        if step == "latency":
            if not all(r in done for r in MAIN_ROWS):
                return None
            return self.cached(step, lambda: latency_row({r: done[r]["ckpt"] for r in MAIN_ROWS}, self.p, self.args))
        init, mode = step.removeprefix("transfer_").rsplit("_", 1)
        ckpts = {k: done[k]["ckpt"] for k in ("multichexnet", "single_classification") if k in done}
        need = TRANSFER_SOURCE.get(init)
        if need is not None and need not in ckpts:
            return None
        return self.cached(step, lambda: self.transfer_row(init, mode == "frozen", ckpts))

    def run(self, write) -> dict:
        """Every row of :data:`PLAN` (``--lesion-rows``: only those; the others from the row cache when finished);
        ``write(entry)`` after every row. Returns the final entry."""
        only = set(getattr(self.args, "lesion_rows", None) or PLAN)
        done: dict[str, dict] = {}
        for step in PLAN:
            t_step = time.perf_counter()
            if step not in only:  # another process's rows (--lesion-rows): taken from the cache when finished
                row = self.from_cache(step)
                if row is not None:
                    done[step] = row
                continue
            try:
                row = self.run_row(step, done)
            except Exception as e:  # one failing row must not lose the others: recorded as missing, the run goes on
                print(f"lesion suite: row {step} failed: {type(e).__name__}: {e}", file=sys.stderr)
                traceback.print_exc()
                continue
            if row is None:
                continue
            done[step] = row
            print(f"lesion suite: {step} done in {time.perf_counter() - t_step:.0f} s", file=sys.stderr, flush=True)
            self.records[:] = _records(done, self.data["sizes"])
            write(self.entry(False, [s for s in PLAN if s not in done]))
        for step in PLAN:  # rows another process finished meanwhile
            if step not in done and self.from_cache(step) is not None:
                done[step] = self.from_cache(step)
        self.records[:] = _records(done, self.data["sizes"])
        final = self.entry(all(s in done for s in PLAN), [s for s in PLAN if s not in done])
        write(final)
        return final


def latency_row(ckpts: dict, p: dict, args) -> dict:
    """Batch-1 forward latency (eval mode, no box decoding) of the trained models, measured INTERLEAVED (one
    forward of each model in turn, ``latency_repeats`` rounds, median per model), so that the models share the
    machine's load; the per-run values measured right after each training depend on the load at that moment."""
    from monai_mcx.model import load_model

    nets = {}
    for row, ckpt in ckpts.items():
        nets[row] = load_model(ckpt)[0].to(args.device).eval()
    x = torch.rand(1, 1, p["size"], p["size"], device=args.device)
    times: dict[str, list[float]] = {row: [] for row in nets}
    with torch.inference_mode():
        for i in range(p["latency_repeats"] + 2):
            for row, net in nets.items():
                t = timed_forward(net, x)
                if i >= 2:
                    times[row].append(t)
    return {"latency_ms": {row: round(1000 * float(np.median(v)), 2) for row, v in times.items()}}


def _records(done: dict, sizes: dict) -> list[dict]:
    lat = (done.get("latency") or {}).get("latency_ms") or {}
    recs = []
    size_of = {"multichexnet": "joint", "single_classification": "classification"}
    for row in ("multichexnet", "single_classification", "single_segmentation", "single_localization"):
        if row in done:
            r = done[row]
            recs.append(
                {
                    "experiment": "lesion_multitask_vs_single",
                    "row": row,
                    **{
                        k: r.get(k)
                        for k in (
                            "metrics",
                            "train_seconds",
                            "latency_ms",
                            "epochs",
                            "samples_seen",
                            "tasks",
                            "teacher_forcing",
                            "eval_seconds",
                            "resumed",
                        )
                    },
                    "subset_sizes": sizes[size_of.get(row, row.removeprefix("single_"))],
                    "latency_ms_after_training": r.get("latency_ms"),
                    **({"latency_ms": lat[row], "latency_interleaved": True} if row in lat else {}),
                }
            )
    singles = [done.get(f"single_{t}") for t in ("classification", "segmentation", "localization")]
    if all(singles):
        metrics = {}
        metrics.update({k: v for k, v in singles[0]["metrics"].items() if "auc" in k or k == "gate_threshold"})
        metrics.update(singles[1]["metrics"])
        metrics.update(singles[2]["metrics"])
        recs.append(
            {
                "experiment": "lesion_multitask_vs_single",
                "row": "three_single_task_sum",
                "metrics": metrics,
                "train_seconds": round(sum(s["train_seconds"] for s in singles), 2),
                "latency_ms": round(
                    sum(lat.get(f"single_{t}", s["latency_ms"]) for t, s in zip(TASK_NAMES, singles)), 2
                ),
                "samples_seen": sum(s["samples_seen"] for s in singles),
                "description": "the three single-task models together: metrics from each, times and latencies added",
            }
        )
    for mode in TF_MODES:
        r = done.get("multichexnet" if mode == "balanced" else f"tf_{mode}")
        if r:
            recs.append(
                {
                    "experiment": "lesion_teacher_forcing",
                    "row": mode,
                    **{k: r.get(k) for k in ("metrics", "train_seconds", "latency_ms", "epochs", "samples_seen")},
                }
            )
    for mode in ("frozen", "unfrozen"):
        for init in TRANSFER_INITS:
            r = done.get(f"transfer_{init}_{mode}")
            if r:
                recs.append(
                    {"experiment": "lesion_transfer", "row": init, **{k: v for k, v in r.items() if k != "settings"}}
                )
    return recs
