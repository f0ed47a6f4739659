"""MultiCheXNet's experiments on real chest X-rays, by one command: ``docs/results.md`` / ``results.json``.

Two suites (``--suite all`` runs both; ``--suite lesions`` / ``--suite lung`` re-runs one and keeps the other's
entry in ``results.json``, keyed by suite, from which ``results.md`` is rendered):

* ``lesions`` (:mod:`experiments.lesion_suite`): REAL LESION tasks -- Kermany classes, RSNA opacity boxes,
  covid_lesions lesion masks (``../shared/data/cxr-lesions``) with the ``train_real.json`` recipe: MultiCheXNet vs
  the three single-task models, teacher forcing on real negatives, transfer to COVID-19 vs other pneumonias with
  cross-validation. Reduced CPU preset, resumable per row (see ``experiments/lesion_suite.py``).
* ``lung`` (below): the older suite on ``../shared/data/cxr-real`` whose segmentation and localization targets
  are LUNG OUTLINES, not lesions.

The lung-outline suite:

Every run goes through the bundle (``bundle/configs/train.json``, ``finetune.json`` for transfer) with
``monai.bundle.ConfigWorkflow`` and overrides, so the engines, losses, transforms and metrics are the ones a
bundle user gets. Three experiments, one record per row in ``results.json`` and a table in ``results.md``:

1. ``multitask_vs_single`` -- DISJOINT data sets, one patient-level split (fixed seed) over all sources:
   classification on Kermany (pneumonia vs normal), segmentation on the lung masks (qu_viral_lungs + one
   half of the covid_lungs patients), localization on the lung boxes (the other half of covid_lungs).
   Each item carries only its own task's annotation (``label``/``mask``/``boxes`` set to null otherwise),
   and Kermany images that are the same radiograph as a qu_viral_lungs image are left out of the
   classification set. Rows: the three single-task baselines, their sum, MultiCheXNet trained jointly from
   scratch (mixed batches), and MultiCheXNet merged from the three baselines (encoder from the classifier,
   each head from its own model; :func:`monai_mcx.model.merge_multichexnet`) then fine-tuned
   jointly. Metrics: ``classification/auc``, ``segmentation/dice_positive`` (ungated: lungs exist on every
   image), ``localization/map`` (COCO mAP@[0.5:0.95]; AP@0.5 saturates on lung boxes), training time
   (trainer wall time minus validation), latency (median batch-1 forward, eval mode, no box decoding).
2. ``teacher_forcing`` -- on the synthetic demo data (lesions exist only on positives; disjoint thirds),
   the joint model with ``teacher_forcing`` ``positive_only`` vs ``all``, ungated and gated metrics.
3. ``transfer`` -- COVID-19 vs other findings. covid_lungs alone is degenerate (282 COVID-19, 1 "No
   Finding"), so the set is covid_lungs (positives) + Kermany normal and pneumonia images (negatives) from
   the same patient-level split. This is CONFOUNDED (adult vs pediatric, different sources and formats);
   read it as a comparison of initialisations, not as a COVID detector. Rows: the new classifier trained on
   a frozen encoder from (a) the MultiCheXNet model, (b) the single-task classifier, (c) random
   initialisation, at equal epochs (``finetune.json``; ``--transfer-unfrozen`` adds full fine-tuning rows).

Presets: ``--quick`` (64 px, ``densenet-tiny``, tiny subsets, 1 epoch: for tests), the CPU default
(128 px, DenseNet-121, subsets, 3 epochs: about 45-55 min on 2 quiet CPU cores) and, when CUDA is present,
256 px with every image and 10 epochs. Any of them can be changed by the options below.

Examples::

    python -m experiments.run_experiments                       # writes docs/results.md and docs/results.json
    python -m experiments.run_experiments --quick --output-dir /tmp/res --work-dir /tmp/work
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from experiments.common import (
    REPO,
    discussion_lines,
    preset_name,
    run_header,
    sample,
    suite_command,
    train_run,
)
from experiments.lesion_suite import render_lesions, run_lesion_suite
from monai_mcx.data.public import COVIDLungs, KermanyPneumonia, QUViralLungs
from monai_mcx.data.splits import check_patient_splits, split_by_patient

TASKS = ("classification", "segmentation", "localization")
ITEM_KEYS = ("image", "patient", "source", "label", "mask", "boxes")
#: the metric each task is compared on
MAIN_METRIC = {
    "classification": "classification/auc",
    "segmentation": "segmentation/dice_positive",
    "localization": "localization/map",
}

PRESETS = {
    "quick": dict(
        size=64,
        encoder="densenet-tiny",
        epochs=1,
        merged_epochs=1,
        batch_size=8,
        cls_train=24,
        cls_val=12,
        seg_train=16,
        seg_val=8,
        loc_train=12,
        loc_val=6,
        demo_images=40,
        tf_size=64,
        tf_epochs=1,
        transfer_train=16,
        transfer_val=12,
        transfer_epochs=1,
        latency_repeats=3,
    ),
    "cpu": dict(
        size=128,
        encoder="densenet121",
        epochs=3,
        merged_epochs=2,
        batch_size=16,
        cls_train=800,
        cls_val=300,
        seg_train=300,
        seg_val=100,
        loc_train=None,
        loc_val=None,
        demo_images=600,
        tf_size=64,
        tf_epochs=12,
        transfer_train=300,
        transfer_val=120,
        transfer_epochs=3,
        latency_repeats=15,
    ),
    "cuda": dict(
        size=256,
        encoder="densenet121",
        epochs=10,
        merged_epochs=3,
        batch_size=32,
        cls_train=None,
        cls_val=None,
        seg_train=None,
        seg_val=None,
        loc_train=None,
        loc_val=None,
        demo_images=600,
        tf_size=128,
        tf_epochs=15,
        transfer_train=None,
        transfer_val=None,
        transfer_epochs=10,
        latency_repeats=50,
    ),
}


# ------------------------------------------------------------------------------------------ data
def _item(it: dict, label=True, mask=True, boxes=True) -> dict:
    out = {k: it.get(k) for k in ITEM_KEYS}
    if not label:
        out["label"] = None
    if not mask:
        out["mask"] = None
    if not boxes:
        out["boxes"] = None
    return out


def build_datalists(data_root: Path, work: Path, p: dict, seed: int) -> dict[str, Path]:
    """Write the task datalists (absolute paths) under ``work``; return ``{name: path}`` plus sizes."""
    kermany = KermanyPneumonia(data_root / "kermany").load()
    covid = COVIDLungs(data_root / "covid_lungs").load()
    quv = QUViralLungs(data_root / "qu_viral_lungs").load()
    # Kermany images that are the same radiograph as a qu_viral_lungs image: not in the classification set
    dup: set[str] = set()
    with open(data_root / "qu_viral_lungs" / "labels.csv", newline="") as f:
        for row in csv.DictReader(f):
            for m in (row.get("kermany_train_match") or "").replace("|", ";").split(";"):
                if m.strip():
                    dup.add(str((data_root / "kermany" / m.strip()).resolve()))
    items = kermany + covid + quv
    splits = split_by_patient(items, val_fraction=0.2, test_fraction=0.0, seed=seed)
    check_patient_splits(splits)
    rng = np.random.default_rng(seed)
    # covid_lungs patients: in each split one half for segmentation, the other for localization (disjoint
    # images). Own generator: split_by_patient permutes the same sorted ids with default_rng(seed).
    half_rng = np.random.default_rng([seed, 1])
    seg_half: set[str] = set()
    for split in ("training", "validation"):
        pats = sorted({it["patient"] for it in splits[split] if it["source"] == "covid_lungs"})
        seg_half |= set(half_rng.permutation(pats)[: len(pats) // 2].tolist())

    def part(split: str, source: str, cond=lambda it: True) -> list:
        return [it for it in splits[split] if it["source"] == source and cond(it)]

    lists: dict[str, dict[str, list]] = {t: {} for t in (*TASKS, "joint", "transfer")}
    for split, key in (("training", "train"), ("validation", "val")):
        cls = [
            _item(it, mask=False, boxes=False)
            for it in part(split, "kermany", lambda it: str(Path(it["image"]).resolve()) not in dup)
        ]
        seg = [_item(it, label=False, boxes=False) for it in part(split, "qu_viral_lungs")]
        seg += [
            _item(it, label=False, boxes=False)
            for it in part(split, "covid_lungs", lambda it: it["patient"] in seg_half)
        ]
        loc = [
            _item(it, label=False, mask=False)
            for it in part(split, "covid_lungs", lambda it: it["patient"] not in seg_half)
        ]
        cls = sample(cls, p[f"cls_{key}"], rng)
        seg = sample(seg, p[f"seg_{key}"], rng)
        loc = sample(loc, p[f"loc_{key}"], rng)
        lists["classification"][split], lists["segmentation"][split], lists["localization"][split] = cls, seg, loc
        lists["joint"][split] = cls + seg + loc
        # transfer: COVID-19 (covid_lungs) vs other findings (Kermany normal + pneumonia), same patient split
        pos = [
            dict(
                _item(it, mask=False, boxes=False),
                label=[1.0 if any("covid" in f.lower() for f in it["findings"]) else 0.0],
            )
            for it in part(split, "covid_lungs")
        ]
        n = p[f"transfer_{key}"]
        n_pos = len(pos) if n is None else min(len(pos), n // 2)
        pos = sample(pos, n_pos, rng)
        neg_pool = [dict(_item(it, mask=False, boxes=False), label=[0.0]) for it in part(split, "kermany")]
        neg = sample(neg_pool, (n - n_pos) if n is not None else len(pos), rng)
        lists["transfer"][split] = pos + neg
    out: dict[str, Path] = {}
    sizes: dict[str, dict[str, int]] = {}
    for name, d in lists.items():
        class_names = ["covid19"] if name == "transfer" else ["pneumonia"]
        path = work / "datalists" / f"{name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            json.dumps(
                {"class_names": class_names, "training": d["training"], "validation": d["validation"], "test": []}
            )
        )
        out[name] = path
        sizes[name] = {"train": len(d["training"]), "val": len(d["validation"])}
    out["_sizes"] = sizes  # type: ignore[assignment]
    return out


# ------------------------------------------------------------------------------------------ report
def _fmt(v, digits=3):
    return "-" if v is None else (f"{v:.{digits}f}" if isinstance(v, float) else str(v))


#: results.json keys of the suites, in the order of results.md
SUITES = ("lesions", "lung_outline")


def load_results(out_dir: Path) -> dict:
    """``results.json`` as ``{"suites": {name: entry}}``; a file of the older flat layout (one lung-outline run:
    header keys + ``records``) becomes the ``lung_outline`` entry."""
    path = out_dir / "results.json"
    if not path.is_file():
        return {"suites": {}}
    data = json.loads(path.read_text())
    if "suites" not in data:
        data = {"suites": {"lung_outline": data}}
    return data


def write_suite(out_dir: Path, suite: str, entry: dict) -> None:
    """Store one suite's entry in ``results.json`` (the other suites' entries are kept) and render ``results.md``
    from every suite in the file."""
    from monai_mcx.utils import write_json_atomic

    out_dir.mkdir(parents=True, exist_ok=True)
    data = load_results(out_dir)
    old = data["suites"].get(suite, {})
    if old.get("discussion") and "discussion" not in entry:  # hand-written: kept, the renderer names its run
        entry = {**entry, "discussion": old["discussion"], "discussion_for": old.get("discussion_for")}
    data["suites"][suite] = entry
    write_json_atomic(data, out_dir / "results.json")
    render_results(out_dir, data)


def render_results(out_dir: Path, data: dict) -> None:
    """``results.md``: the lesion suite, then the lung-outline suite (whichever ``results.json`` holds)."""
    lines = [
        "# Results: MultiCheXNet on real chest X-rays",
        "",
        "Generated from `docs/results.json` by `python -m experiments.run_experiments` (`--suite lesions` or "
        "`--suite lung` re-runs one part and keeps the other). Part 1 uses real LESION annotations (RSNA opacity "
        "boxes, covid_lesions masks); part 2 is the older suite whose segmentation and localization targets are "
        "LUNG OUTLINES (not lesions).",
        "",
    ]
    suites = data["suites"]
    if "lesions" in suites:
        lines += render_lesions(suites["lesions"])
    if "transfer_covid" in suites:
        from experiments.transfer_covid import render as render_transfer_covid

        lines += render_transfer_covid(suites["transfer_covid"])
    if "lung_outline" in suites:
        lines += render_lung(suites["lung_outline"])
    tmp = out_dir / ".results.md.tmp"
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, out_dir / "results.md")


def write_outputs(out_dir: Path, header: dict, records: list[dict]) -> None:
    """The lung-outline suite's entry (``header`` + ``records``) into ``results.json`` / ``results.md``."""
    write_suite(out_dir, "lung_outline", {**header, "suite": "lung_outline", "records": records})


def render_lung(entry: dict) -> list[str]:
    """The lung-outline section of ``results.md``."""
    records = entry.get("records", [])
    lines = _lung_header(entry)
    lines += _lung_multitask_table(records)
    lines += _lung_teacher_forcing_table(records)
    lines += _lung_transfer_table(records)
    lines += [
        "",
        "Subset sizes per data set: "
        + ", ".join(f"{k} {v['train']}/{v['val']}" for k, v in entry["subset_sizes"].items())
        + " (train/validation images).",
        "",
    ]
    return lines + discussion_lines(entry)


def _lung_header(header: dict) -> list[str]:
    lines = [
        "## Part 2: LUNG-OUTLINE tasks (cxr-real; segmentation and boxes of the lungs, not lesions)",
        "",
        f"Produced by `{header['command']}` on {header['created']} ({header['device']}, {header['threads']} threads, "
        f"torch {header['torch']}). Preset `{header['preset']}`: {header['resolution']} px, encoder `{header['encoder']}`, "
        f"seed {header['seed']}. Total wall time {header['total_minutes']:.1f} min.",
        "",
    ]
    if header["preset"] != "cuda":
        lines += [
            "**Reduced setting:** this run used a reduced resolution and subsets of the data so that it fits in "
            "about an hour on 2 CPU cores; with CUDA the script uses 256 px, every image and 10 epochs.",
            "",
        ]
    return lines + [
        "Data: `../shared/data/cxr-real`, one patient-level split (20 % validation, seed fixed) over Kermany, "
        "covid_lungs and qu_viral_lungs; disjoint task sets (see `experiments/run_experiments.py`).",
        "",
    ]


def _lung_multitask_table(records: list[dict]) -> list[str]:
    lines = [
        "### (lung outlines) MultiCheXNet vs single-task baselines",
        "",
        "| row | epochs | train images | AUC (cls) | Dice (seg) | mAP@[.5:.95] (loc) | AP@0.5 (loc) | train time (s) | latency (ms, batch 1) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in (r for r in records if r["experiment"] == "multitask_vs_single"):
        m = r["metrics"]
        lines.append(
            f"| {r['row']} | {r['epochs']} | {r['subset_sizes'].get('train', '-')} | {_fmt(m.get('classification/auc'))} | "
            f"{_fmt(m.get('segmentation/dice_positive'))} | {_fmt(m.get('localization/map'))} | {_fmt(m.get('localization/ap50'))} | "
            f"{_fmt(r['train_seconds'], 1)} | {_fmt(r['latency_ms'], 1)} |"
        )
    lines += [
        "",
        "`three_single_task_sum`: the three baselines together (times and latencies added). "
        "`multichexnet_merged`: initialised from the three baselines (encoder from the classifier), then fine-tuned "
        "jointly for the epochs shown; its time is the fine-tuning only (`train_seconds_cumulative` in the JSON adds "
        "the baselines').",
        "",
    ]
    return lines + _observations(records)


def _lung_teacher_forcing_table(records: list[dict]) -> list[str]:
    tf_rows = [r for r in records if r["experiment"] == "teacher_forcing"]
    lines = ["### (lung outlines) Teacher forcing on/off (synthetic demo data, lesions only on positives)", ""]
    if tf_rows:
        r0 = tf_rows[0]
        lines += [
            f"Joint model trained from scratch on the disjoint demo layout at {r0.get('resolution')} px, "
            f"{r0.get('epochs')} epochs, {r0['subset_sizes']['train']} training images (a third each with only boxes, "
            f"only masks, only classes); evaluated on its {r0['subset_sizes']['val']} fully annotated validation images.",
            "",
        ]
    lines += [
        "| teacher_forcing | AUC | Dice+ | Dice (empty-aware) | Dice (empty-aware, gated) | AP@0.5 | AP@0.5 gated | mAP | train time (s) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in tf_rows:
        m = r["metrics"]
        lines.append(
            f"| {r['row']} | {_fmt(m.get('classification/auc'))} | {_fmt(m.get('segmentation/dice_positive'))} | "
            f"{_fmt(m.get('segmentation/dice_empty_aware'))} | {_fmt(m.get('segmentation/dice_empty_aware/gated'))} | "
            f"{_fmt(m.get('localization/ap50'))} | {_fmt(m.get('localization/ap50/gated'))} | {_fmt(m.get('localization/map'))} | "
            f"{_fmt(r['train_seconds'], 1)} |"
        )
    return lines


def _lung_transfer_table(records: list[dict]) -> list[str]:
    lines = [
        "",
        "### (lung outlines) Transfer to COVID-19 vs other findings (new classifier)",
        "",
        "covid_lungs alone is degenerate (282 COVID-19, 1 'No Finding'), so negatives are Kermany normal and "
        "pneumonia images of the same patient-level split. The two sources differ in age (adult vs pediatric), "
        "hospital and format, so the task is confounded and easy; compare the rows with each other, not with the "
        "literature.",
        "",
        "| init | encoder | epochs | train / val images | AUC | train time (s) |",
        "|---|---|---|---|---|---|",
    ]
    for r in (r for r in records if r["experiment"] == "transfer"):
        lines.append(
            f"| {r['row']} | {'frozen' if r.get('freeze_encoder') else 'fine-tuned'} | {r['epochs']} | "
            f"{r['subset_sizes']['train']} / {r['subset_sizes']['val']} | {_fmt(r['metrics'].get('classification/auc'))} | "
            f"{_fmt(r['train_seconds'], 1)} |"
        )
    return lines


def _observations(records: list[dict]) -> list[str]:
    rows = {r["row"]: r for r in records if r["experiment"] == "multitask_vs_single"}
    out = ["Measured differences (joint minus baseline):", ""]
    for joint in ("multichexnet_scratch", "multichexnet_merged"):
        if joint not in rows:
            continue
        for task, key in MAIN_METRIC.items():
            base = rows.get(f"single_{task}", {}).get("metrics", {}).get(key)
            val = rows[joint]["metrics"].get(key)
            if base is not None and val is not None:
                verdict = "loses to" if val < base else "matches or beats"
                out.append(
                    f"- `{joint}` {verdict} `single_{task}` on {key}: {val:.3f} vs {base:.3f} ({val - base:+.3f})."
                )
    total = rows.get("three_single_task_sum")
    if total and "multichexnet_scratch" in rows:
        out.append(
            f"- training time: joint {rows['multichexnet_scratch']['train_seconds']:.0f} s vs the three baselines "
            f"{total['train_seconds']:.0f} s; latency {rows['multichexnet_scratch']['latency_ms']:.1f} ms vs {total['latency_ms']:.1f} ms."
        )
    return out + [""]


# ------------------------------------------------------------------------------------------ main
def build_parser() -> argparse.ArgumentParser:
    """The command-line options of both suites."""
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("Examples::", 1)[1],
    )
    shared = Path(os.environ.get("MCX_SHARED", REPO.parent / "shared"))  # as the tests' conftest
    ap.add_argument("--data-root", type=Path, default=shared / "data" / "cxr-real", help="cxr-real pack")
    ap.add_argument(
        "--output-dir", type=Path, default=REPO / "docs", help="where results.md / results.json go (default: docs/)"
    )
    ap.add_argument("--work-dir", type=Path, default=REPO / "runs" / "experiments", help="datalists, checkpoints")
    ap.add_argument("--quick", action="store_true", help="tiny subsets, 1 epoch, 64 px, densenet-tiny (tests)")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--size", type=int, help="square training/eval resolution (px)")
    ap.add_argument("--encoder", help="encoder name (densenet121, resnet18, densenet-tiny, ...)")
    ap.add_argument("--epochs", type=int, help="epochs of the baselines and of the joint model from scratch")
    ap.add_argument("--merged-epochs", type=int, help="joint fine-tuning epochs of the merged model")
    ap.add_argument("--transfer-epochs", type=int)
    ap.add_argument("--tf-epochs", type=int, help="epochs of the teacher-forcing runs")
    ap.add_argument("--max-cls-train", type=int, help="Kermany training images (0 = all)")
    ap.add_argument(
        "--transfer-unfrozen", action="store_true", help="also fine-tune the whole network in the transfer rows"
    )
    ap.add_argument("--skip", nargs="*", default=[], choices=["multitask", "teacher_forcing", "transfer"])
    ap.add_argument(
        "--suite",
        default="all",
        choices=["all", "lesions", "lung"],
        help="lesions: real lesion tasks (cxr-lesions + Kermany); lung: the lung-outline suite (cxr-real); "
        "all (default): both. results.json keeps the suites not run",
    )
    ap.add_argument("--lesions-root", type=Path, default=shared / "data" / "cxr-lesions", help="cxr-lesions pack")
    ap.add_argument(
        "--siim-covid-root",
        type=Path,
        default=shared / "data" / "cxr-adult" / "siim_covid",
        help="lesion suite: SIIM-FISABIO-RSNA adult opacity classes (skipped when absent)",
    )
    ap.add_argument("--lesion-size", type=int, help="lesion suite: resolution (px)")
    ap.add_argument("--lesion-epochs", type=int, help="lesion suite: epochs of every training")
    ap.add_argument("--lesion-samples", type=int, help="lesion suite: samples per epoch of the joint model")
    ap.add_argument(
        "--lesion-rows",
        nargs="*",
        help="lesion suite: run only these rows (e.g. transfer_random_init_frozen); the others are read from the "
        "row cache when finished (to split the suite over processes)",
    )
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "auto":
        args.device = "cuda:0" if torch.cuda.is_available() else "cpu"
    if args.suite in ("all", "lesions") and run_lesions(args) != 0:
        return 2
    if args.suite in ("all", "lung"):
        return run_lung_suite(args)
    return 0


def run_lesions(args) -> int:
    """The lesion suite (:mod:`experiments.lesion_suite`), its entry written after every row."""
    if not ((args.data_root / "kermany").is_dir() and (args.lesions_root / "rsna").is_dir()):
        print(
            f"error: the lesion suite needs {args.data_root / 'kermany'} and {args.lesions_root} (rsna/, covid_lesions/)",
            file=sys.stderr,
        )
        return 2
    t0 = time.perf_counter()
    final = run_lesion_suite(args, lambda entry: write_suite(args.output_dir, "lesions", entry))
    print(
        f"lesion suite: {len(final['records'])} rows in {(time.perf_counter() - t0) / 60:.1f} min "
        f"(missing: {final['missing_rows'] or 'none'})"
    )
    return 0


# ------------------------------------------------------------------------------------------ the lung-outline suite
def lung_settings(args) -> dict:
    """The preset's settings with the options given on the command line."""
    p = dict(PRESETS[preset_name(args)])
    for key in ("size", "encoder", "epochs", "merged_epochs", "transfer_epochs", "tf_epochs"):
        if getattr(args, key) is not None:
            p[key] = getattr(args, key)
    if args.max_cls_train is not None:
        p["cls_train"] = args.max_cls_train or None
    return p


def lung_plan(args) -> list[str]:
    """The suite's steps, in order (``--skip``, ``--transfer-unfrozen``)."""
    plan = [] if "multitask" in args.skip else ["cls", "seg", "loc", "joint", "merged"]
    plan += [] if "teacher_forcing" in args.skip else ["tf_pos", "tf_all"]
    if "transfer" not in args.skip:
        plan += ["tr_mcx", "tr_cls", "tr_rand"] + (
            ["tr_mcx_u", "tr_cls_u", "tr_rand_u"] if args.transfer_unfrozen else []
        )
    return plan


def run_lung_suite(args) -> int:
    """The lung-outline suite (module docstring): trains its rows and writes its section."""
    preset = preset_name(args)
    p = lung_settings(args)
    if not (args.data_root / "kermany").is_dir():
        print(
            f"error: no cxr-real pack at {args.data_root} (expected kermany/, covid_lungs/, qu_viral_lungs/)",
            file=sys.stderr,
        )
        return 2
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    lists = build_datalists(args.data_root, args.work_dir, p, args.seed)
    sizes = lists.pop("_sizes")
    suite = LungSuite(args, p, lists, sizes)
    bar = tqdm(lung_plan(args), desc="experiments", unit="run", file=sys.stderr)
    for step in bar:
        bar.set_postfix_str(step)
        suite.run_step(step)
    header = run_header(args, preset, p, sizes, t_start)
    write_outputs(args.output_dir, header, suite.records)
    print(
        f"wrote {args.output_dir / 'results.md'} and results.json ({len(suite.records)} rows) in {header['total_minutes']:.1f} min"
    )
    return 0


class LungSuite:
    """The runs of the lung-outline suite, one step of :func:`lung_plan` at a time; ``records`` are its rows."""

    SINGLE = {"cls": "classification", "seg": "segmentation", "loc": "localization"}
    TRANSFER_SOURCE = {"tr_mcx": "joint", "tr_cls": "cls", "tr_rand": None}
    TRANSFER_ROW = {"tr_mcx": "from_multichexnet", "tr_cls": "from_single_classifier", "tr_rand": "random_init"}

    def __init__(self, args, p: dict, lists: dict, sizes: dict):
        self.args, self.p, self.lists, self.sizes, self.work = args, p, lists, sizes, args.work_dir
        self.common = {
            "resolution": p["size"],
            "encoder": p["encoder"],
            "device": args.device,
            "seed": args.seed,
            "command": suite_command(args),
        }
        self.records: list[dict] = []
        self.results: dict[str, dict] = {}

    def record(self, experiment: str, row: str, res: dict, sizes: dict, description: str, **extra) -> None:
        self.records.append(
            {
                "experiment": experiment,
                "row": row,
                "description": description,
                "metrics": res["metrics"],
                "train_seconds": res["train_seconds"],
                "val_seconds": res.get("val_seconds"),
                "latency_ms": res.get("latency_ms"),
                "epochs": res["epochs"],
                "subset_sizes": sizes,
                **self.common,
                **extra,
            }
        )

    def run_step(self, step: str) -> None:
        if step in self.SINGLE:
            self.single(step)
        elif step == "joint":
            self.joint()
        elif step == "merged":
            self.merged()
        elif step in ("tf_pos", "tf_all"):
            self.teacher_forcing(step)
        else:
            self.transfer(step)

    def single(self, step: str) -> None:
        task = self.SINGLE[step]
        res = train_run(
            f"single_{task}", self.work, self.lists[task], self.p, self.args, tasks=(task,), epochs=self.p["epochs"]
        )
        self.results[step] = res
        desc = f"MultiCheXNet(tasks=('{task}',)) from scratch"
        self.record("multitask_vs_single", f"single_{task}", res, self.sizes[task], desc)

    def joint(self) -> None:
        res = train_run(
            "multichexnet_scratch", self.work, self.lists["joint"], self.p, self.args, epochs=self.p["epochs"]
        )
        self.results["joint"] = res
        if all(k in self.results for k in self.SINGLE):
            singles = [self.results[k] for k in self.SINGLE]
            metrics = {k: v for s in singles for k, v in s["metrics"].items()}
            s = {
                "metrics": {k: v for k, v in metrics.items() if k.split("/")[0] in TASKS and "/gated" not in k},
                "train_seconds": round(sum(r["train_seconds"] for r in singles), 2),
                "val_seconds": round(sum(r["val_seconds"] for r in singles), 2),
                "latency_ms": round(sum(r["latency_ms"] for r in singles), 2),
                "epochs": self.p["epochs"],
            }
            desc = "the three single-task models together: metrics from each, times and latencies added"
            self.record("multitask_vs_single", "three_single_task_sum", s, self.sizes["joint"], desc)
        desc = "joint from scratch, mixed batches of the disjoint sets"
        self.record("multitask_vs_single", "multichexnet_scratch", res, self.sizes["joint"], desc)

    def merged(self) -> None:
        if not all(k in self.results for k in self.SINGLE):
            return
        ckpt = {k: self.results[k]["ckpt"] for k in self.SINGLE}
        merge = {"encoder_from": ckpt["cls"], "heads_from": {task: ckpt[k] for k, task in self.SINGLE.items()}}
        res = train_run(
            "multichexnet_merged",
            self.work,
            self.lists["joint"],
            self.p,
            self.args,
            epochs=self.p["merged_epochs"],
            merge=merge,
        )
        cum = res["train_seconds"] + sum(self.results[k]["train_seconds"] for k in self.SINGLE)
        self.record(
            "multitask_vs_single",
            "multichexnet_merged",
            res,
            self.sizes["joint"],
            "encoder from the classifier, each head from its baseline, then joint fine-tuning",
            train_seconds_cumulative=round(cum, 2),
        )

    def teacher_forcing(self, step: str) -> None:
        from monai_mcx.data import generate_demo_data

        p, demo = self.p, self.work / "demo_data" / "datalist.json"
        if step == "tf_pos" or not demo.is_file():
            generate_demo_data(
                self.work / "demo_data",
                num_images=p["demo_images"],
                image_size=p["tf_size"],
                seed=self.args.seed,
                overwrite=True,
            )
        mode = "positive_only" if step == "tf_pos" else "all"
        # the demo data at the bundle demo's resolution (the lesions are drawn for it), not the real-data size
        res = train_run(
            f"teacher_forcing_{mode}",
            self.work,
            demo,
            dict(p, size=p["tf_size"]),
            self.args,
            epochs=p["tf_epochs"],
            extra={"teacher_forcing": mode},
        )
        n = {s: len(json.loads(demo.read_text())[s]) for s in ("training", "validation")}
        self.record(
            "teacher_forcing",
            mode,
            res,
            {"train": n["training"], "val": n["validation"]},
            f"joint model on the synthetic demo data, teacher_forcing={mode}",
            teacher_forcing=mode,
            resolution=p["tf_size"],
        )

    def transfer(self, step: str) -> None:
        base = step.removesuffix("_u")
        src = self.TRANSFER_SOURCE[base]
        if src is not None and src not in self.results:
            return
        frozen, row = not step.endswith("_u"), self.TRANSFER_ROW[base]
        extra = {
            "pretrained_ckpt": self.results[src]["ckpt"] if src else "",
            "freeze_encoder": frozen,
            "pretrained_class_names": ["pneumonia"],
            "class_names": ["covid19"],
        }
        res = train_run(
            f"transfer_{row}{'' if frozen else '_unfrozen'}",
            self.work,
            self.lists["transfer"],
            self.p,
            self.args,
            tasks=("classification",),
            class_names=("covid19",),
            epochs=self.p["transfer_epochs"],
            extra=extra,
            finetune=True,
        )
        self.record(
            "transfer",
            row if frozen else f"{row}_unfrozen",
            res,
            self.sizes["transfer"],
            f"finetune.json, new 'covid19' classifier, encoder {'frozen' if frozen else 'fine-tuned'}",
            freeze_encoder=frozen,
            skipped_keys=res["skipped_keys"],
        )


if __name__ == "__main__":
    sys.exit(main())
