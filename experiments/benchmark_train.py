"""Training cost: MultiCheXNet vs the three single-task models, seconds per epoch and time to a fixed quality.

Data sets (each preprocessed once into memory, so the timings hold the training steps only):

- ``demo_joint``: synthetic demo data, every training item with class, mask and boxes (``layout="joint"``);
- ``rsna``: RSNA pneumonia (class + boxes, no masks) from ``--rsna-datalist`` (``scripts/prepare_data.py --rsna``),
  when given; there is no single-task segmentation model (nothing to train it on) and MultiCheXNet's
  segmentation head is skipped in every step (no masks);
- ``demo_disjoint``: the demo data with disjoint training thirds (boxes only / masks only / classes only);
  each single-task model trains on its own third, MultiCheXNet on all, in mixed batches (and, as a second
  MultiCheXNet variant, in task-grouped batches).

Every model is :class:`monai_mcx.networks.MultiCheXNet` (single-task: ``tasks=("<task>",)``), trained by
:class:`monai_mcx.engines.MultiTaskTrainer` (heads without a usable sample skipped, each head run on the
samples its task trains on) with the bundle's loss
(teacher forcing ``positive_only``), AdamW, batch ``--batch-size``. Epochs are run INTERLEAVED: epoch ``e`` of
every variant, in an order rotating with ``e``, before epoch ``e + 1`` of any, so load changes of the shared
machine hit all variants alike. After each epoch the variant is validated (not timed): AUC, Dice on
positives, AP@0.5 on the validation split, from the probabilities, masks and candidate boxes of the model's
post-processor (:func:`monai_mcx.model.build_postprocessor` of its description, ungated).

Time to quality: per task the target is ``--quality-fraction`` x the lower of the best validation values
reached by MultiCheXNet and by the single-task model; a model's time to it is its cumulative training time at
the first epoch that reaches it. MultiCheXNet's time to all targets is the max over its tasks; the
single-task models' is the sum of theirs.

``--whole-batch-heads`` adds a MultiCheXNet variant trained with ``heads_on_selected_samples=False`` (every
head that runs sees the whole batch, as before that option), so that its effect is measured in the same run.

Peak memory (``--memory``): peak RSS of a fresh process during one training step at batch ``--batch-size``
per image size, minus its RSS before the step (model built, one small warm-up step done).

Writes the ``training`` section of ``docs/benchmarks.md`` and the ``training`` key of ``docs/benchmarks.json``.

Example::

    python -m experiments.benchmark_train --rsna-datalist /tmp/rsna/datalist.json --epochs 6
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from experiments.bench_sections import (
    add_output_options,
    command_line,
    load_average,
    main_or_memory_probe,
    peak_rss,
    reset_peak_rss,
    run_footer,
    run_memory_probe,
    write_section,
)
from monai_mcx.keys import TASKS

#: this module (run again by ``python -m`` in a fresh process for a memory probe)
MODULE = "experiments.benchmark_train"

TARGET_JOINT = 0.45
TARGET_DISJOINT = 1.0
#: MultiCheXNet variants besides the default one, with their label in the table
ALTERNATIVES = {
    "multichexnet_grouped": "task-grouped batches",
    "multichexnet_whole_batch_heads": "heads on the whole batch",
}
METRIC = {
    "classification": "classification/auc",
    "segmentation": "segmentation/dice_positive",
    "localization": "localization/ap50",
}


# ------------------------------------------------------------------------------------------ data
def preprocess(datalist: str, split: str, size: int, max_items: int | None) -> list[dict]:
    from monai.transforms import Compose, EnsureTyped

    from monai_mcx.data import load_datalist
    from monai_mcx.transforms import PrepareAnnotationsd, ResizeWithBoxesd
    from monai_mcx.transforms.io import LoadCXRd

    items = load_datalist(datalist, split, ["pneumonia"], max_items=max_items)
    tf = Compose(
        [
            LoadCXRd(keys="image"),
            PrepareAnnotationsd(num_classes=1),
            ResizeWithBoxesd(keys=["image", "mask"], spatial_size=[size, size], mode=["area", "nearest-exact"]),
            EnsureTyped(keys=["image", "mask"], dtype=torch.float32, track_meta=False),
        ]
    )
    keep = ("image", "label", "has_label", "mask", "has_mask", "boxes", "has_boxes", "positive")
    return [{k: v for k, v in tf(it).items() if k in keep} for it in items]


def tasks_of(item: dict) -> set[str]:
    out = set()
    if float(item["has_label"]) > 0.5:
        out.add("classification")
    if float(item["has_mask"]) > 0.5:
        out.add("segmentation")
    if float(item["has_boxes"]) > 0.5:
        out.add("localization")
    return out


def batches(items: list[dict], batch_size: int, seed: int, grouped: bool = False) -> list[dict]:
    """Shuffled mixed batches, or (``grouped``) the batches of ``TaskGroupedSampler`` (one annotation kind each,
    what ``--task_grouped_batches true`` gives the bundle; a group's last batch may be smaller)."""
    from monai_mcx.data import collate_cxr
    from monai_mcx.data.sampling import TaskGroupedSampler

    if grouped:
        sampler = TaskGroupedSampler(items, batch_size, seed=0, signature=lambda it: tuple(sorted(tasks_of(it))))
        return [collate_cxr([items[i] for i in b]) for b in sampler.batches(epoch=seed)]
    order = np.random.default_rng(seed).permutation(len(items))
    return [collate_cxr([items[i] for i in order[s : s + batch_size]]) for s in range(0, len(order), batch_size)]


# ------------------------------------------------------------------------------------------ models
class Variant:
    """One model being trained: network, loss, optimizer, its training items, its history."""

    def __init__(
        self,
        name: str,
        tasks: tuple[str, ...],
        items: list[dict],
        encoder: str,
        anchors,
        lr: float,
        batch_size: int,
        grouped: bool = False,
        set_to_none: bool = False,
        trainer_kwargs: dict | None = None,
    ):
        from monai_mcx.engines import MultiTaskTrainer
        from monai_mcx.losses import LocalizationLoss, MultiCheXNetLoss
        from monai_mcx.model import ModelDescription, build_anchor_generator, build_network, build_postprocessor

        torch.manual_seed(0)
        self.name, self.tasks, self.items, self.batch_size, self.grouped = name, tasks, items, batch_size, grouped
        self.set_to_none = set_to_none  # optimizer skips the parameters a step gave no gradient (skipped heads)
        # the model as the package describes it: network, anchors and the one post-processing (validation)
        self.description = ModelDescription(
            class_names=["pneumonia"],
            tasks=list(tasks),
            encoder=encoder,
            spatial_size=[int(s) for s in items[0]["image"].shape[1:]],
            base_anchor_shapes=anchors,
        )
        self.net = build_network(self.description)
        gen = build_anchor_generator(self.description)
        self.loss = MultiCheXNetLoss(localization_loss=LocalizationLoss(gen) if gen is not None else None)
        self.post = build_postprocessor(self.description)
        self.opt = torch.optim.AdamW(self.net.parameters(), lr=lr, weight_decay=1e-4)
        self.trainer_cls = MultiTaskTrainer
        self.trainer_kwargs = dict(trainer_kwargs or {})
        self.epoch_seconds: list[float] = []
        self.history: list[dict] = []
        self.heads_run = {t: 0 for t in tasks}
        self.steps = 0
        self.trainer = None

    def step(self, batch: dict) -> float:
        """One training step (forward, loss, backward, optimizer) of this variant's ``MultiTaskTrainer``, timed."""
        if self.trainer is None:
            self.trainer = self.trainer_cls(
                device=torch.device("cpu"),
                max_epochs=1,
                train_data_loader=[batch],
                network=self.net,
                optimizer=self.opt,
                loss_function=self.loss,
                optim_set_to_none=self.set_to_none,
                **self.trainer_kwargs,
            )
        t0 = time.perf_counter()
        out = self.trainer._iteration(self.trainer, batch)
        dt = time.perf_counter() - t0
        self.steps += 1
        for t, key in (
            ("classification", "class_logits"),
            ("segmentation", "seg_logits"),
            ("localization", "box_cls_logits"),
        ):
            if t in self.heads_run and key in out["pred"]:
                self.heads_run[t] += 1
        return dt

    @torch.no_grad()
    def validate(self, val: list[dict]) -> dict:
        from monai_mcx.keys import PredKeys
        from monai_mcx.metrics.classification import roc_auc
        from monai_mcx.metrics.detection import detection_metrics
        from monai_mcx.metrics.segmentation import segmentation_metrics

        self.net.eval()
        probs, labels, seg, masks, dets, truths = [], [], [], [], [], []
        for b in batches(val, 32, seed=0):
            # probabilities, the mask and every candidate box from the model's post-processor (ungated: the
            # validation metrics score each head on its own)
            pred = self.post(self.net(b["image"]), b["image"])
            if PredKeys.CLASS_PROBS in pred:
                probs.append(pred[PredKeys.CLASS_PROBS])
                labels.append(b["label"])
            if PredKeys.SEG_MASK in pred:
                seg.append(pred[PredKeys.SEG_MASK].float())
                masks.append(b["mask"])
            if PredKeys.DETECTIONS in pred:
                dets += [{k: v.numpy() for k, v in d.items()} for d in pred[PredKeys.DETECTIONS]]
                truths += [bx.numpy() for bx in b["boxes"]]
        self.net.train()
        m = {}
        if probs:
            m[METRIC["classification"]] = float(
                roc_auc(torch.cat(probs).numpy()[:, 0], torch.cat(labels).numpy()[:, 0])
            )
        if seg:
            m[METRIC["segmentation"]] = float(
                segmentation_metrics(torch.cat(seg), torch.cat(masks))["segmentation/dice_positive"]
            )
        if dets:
            m[METRIC["localization"]] = float(detection_metrics(dets, truths)["localization/ap50"])
        return m


def time_to(history: list[dict], seconds: list[float], key: str, target: float) -> float | None:
    total = 0.0
    for h, s in zip(history, seconds):
        total += s
        if h.get(key) is not None and not np.isnan(h[key]) and h[key] >= target:
            return total
    return None


def run_dataset(name: str, train: list[dict], val: list[dict], args, anchors) -> dict:
    """Train MultiCheXNet and the single-task models interleaved on one data set; one summary record."""
    present = [t for t in TASKS if any(t in tasks_of(it) for it in train)]

    def mcx(variant: str, **kwargs) -> Variant:
        return Variant(variant, TASKS, train, args.encoder, anchors, args.lr, args.batch_size, **kwargs)

    variants = [mcx("multichexnet")]
    if len({tuple(sorted(tasks_of(it))) for it in train}) > 1:  # disjoint (or partly disjoint) labels
        variants.append(mcx("multichexnet_grouped", grouped=True, set_to_none=args.grouped_set_to_none))
    if args.whole_batch_heads:
        variants.append(mcx("multichexnet_whole_batch_heads", trainer_kwargs={"heads_on_selected_samples": False}))
    for t in present:
        own = [it for it in train if t in tasks_of(it)]
        variants.append(Variant(f"single_{t}", (t,), own, args.encoder, anchors, args.lr, args.batch_size))
    print(
        f"[{name}] {len(train)} training items, {len(val)} validation; tasks {present}; "
        + ", ".join(f"{v.name}: {len(v.items)} items" for v in variants),
        flush=True,
    )
    for epoch in range(args.epochs):
        k = epoch % len(variants)
        order = variants[k:] + variants[:k]
        plans = {v.name: batches(v.items, v.batch_size, seed=epoch, grouped=v.grouped) for v in order}
        seconds = {v.name: 0.0 for v in order}
        gc.collect()
        # steps interleaved across the variants (round robin), so that a change of load hits all of them alike
        for i in range(max(len(p) for p in plans.values())):
            for v in order:
                if i < len(plans[v.name]):
                    seconds[v.name] += v.step(plans[v.name][i])
        for v in order:
            v.epoch_seconds.append(seconds[v.name])
            v.history.append(v.validate(val))
            print(f"[{name}] epoch {epoch + 1} {v.name}: {seconds[v.name]:.2f} s {v.history[-1]}", flush=True)

    runs = {
        v.name: {
            "tasks": v.tasks,
            "epoch_seconds": v.epoch_seconds,
            "history": v.history,
            "heads_run": dict(v.heads_run, steps=v.steps),
            "n_items": len(v.items),
        }
        for v in variants
    }
    return summarize(name, len(train), len(val), present, runs, args)


def summarize(name: str, n_train: int, n_val: int, present: list[str], runs: dict, args) -> dict:
    """One record from the per-epoch seconds and validation metrics of every variant (``runs[name]``)."""
    mcx = runs["multichexnet"]
    singles = {k: v for k, v in runs.items() if k.startswith("single_")}
    med = {k: float(np.median(v["epoch_seconds"])) for k, v in runs.items()}
    sum_single = sum(med[k] for k in singles)

    def epoch_ratio(name: str) -> tuple[float, list[float]]:
        """Median over epochs of (this variant's epoch / the single-task models' same epoch, summed): the
        variants of one epoch ran back to back, so each ratio is measured under one load."""
        n = min(len(v["epoch_seconds"]) for v in runs.values())
        per = [runs[name]["epoch_seconds"][e] / sum(v["epoch_seconds"][e] for v in singles.values()) for e in range(n)]
        return round(float(np.median(per)), 3), [round(x, 3) for x in per]

    targets, t_mcx, t_single = {}, {}, {}
    for v in singles.values():
        task = v["tasks"][0]
        key = METRIC[task]
        best_m = max((h.get(key, float("nan")) for h in mcx["history"]), default=float("nan"))
        best_s = max((h.get(key, float("nan")) for h in v["history"]), default=float("nan"))
        targets[task] = round(args.quality_fraction * float(np.nanmin([best_m, best_s])), 4)
        t_mcx[task] = time_to(mcx["history"], mcx["epoch_seconds"], key, targets[task])
        t_single[task] = time_to(v["history"], v["epoch_seconds"], key, targets[task])
    mcx_all = max(t_mcx.values()) if all(x is not None for x in t_mcx.values()) else None
    single_all = sum(t_single.values()) if all(x is not None for x in t_single.values()) else None
    alternatives = {}
    for alt in ALTERNATIVES:  # other MultiCheXNet variants, against the same targets
        if alt not in runs:
            continue
        g = runs[alt]
        t_g = {t: time_to(g["history"], g["epoch_seconds"], METRIC[t], x) for t, x in targets.items()}
        g_all = max(t_g.values()) if t_g and all(x is not None for x in t_g.values()) else None
        alternatives[alt] = {
            "ratio_epoch_vs_sum_single": epoch_ratio(alt)[0],
            "ratio_per_epoch": epoch_ratio(alt)[1],
            "time_to_target_s": t_g,
            "time_to_all_targets_s": g_all,
            "ratio_time_to_quality": round(g_all / single_all, 3) if g_all and single_all else None,
        }
    best = {
        k: {m: round(max(h.get(m, float("nan")) for h in v["history"]), 4) for m in v["history"][0]}
        for k, v in runs.items()
    }
    return {
        "dataset": name,
        "n_train": n_train,
        "n_val": n_val,
        "tasks_labelled": present,
        "epochs": min(len(v["epoch_seconds"]) for v in runs.values()),
        "batch_size": args.batch_size,
        "size": args.size,
        "encoder": args.encoder,
        "median_epoch_s": {k: round(x, 3) for k, x in med.items()},
        "sum_single_epoch_s": round(sum_single, 3),
        "ratio_epoch_mcx_vs_sum_single": epoch_ratio("multichexnet")[0],
        "ratio_per_epoch": epoch_ratio("multichexnet")[1],
        "quality_targets": targets,
        "time_to_target_s_mcx": t_mcx,
        "time_to_target_s_single": t_single,
        "time_to_all_targets_s_mcx": mcx_all,
        "time_to_all_targets_s_sum_single": single_all,
        "ratio_time_to_quality": round(mcx_all / single_all, 3) if mcx_all and single_all else None,
        "grouped": alternatives.get("multichexnet_grouped"),
        "alternatives": alternatives,
        "best_val": best,
        "heads_run_steps": {k: v.get("heads_run") for k, v in runs.items()},
        "training_items": {k: v.get("n_items") for k, v in runs.items()},
        "epoch_s_all": {k: [round(x, 3) for x in v["epoch_seconds"]] for k, v in runs.items()},
    }


def records_from_log(log: Path, args) -> list[dict]:
    """Rebuild the records of a run from its printed per-epoch lines (a run stopped before it wrote its files):
    complete epochs only, every variant cut to the same number of epochs."""
    import ast
    import re

    runs: dict[str, dict] = {}
    sizes: dict[str, tuple[int, int]] = {}
    for line in log.read_text().splitlines():
        m = re.match(r"\[(\w+)\] (\d+) training items, (\d+) validation", line)
        if m:
            sizes[m.group(1)] = (int(m.group(2)), int(m.group(3)))
        m = re.match(r"\[(\w+)\] epoch (\d+) (\w+): ([\d.]+) s (\{.*\})$", line)
        if m:
            v = runs.setdefault(m.group(1), {}).setdefault(m.group(3), {"epoch_seconds": [], "history": []})
            v["epoch_seconds"].append(float(m.group(4)))
            v["history"].append(ast.literal_eval(m.group(5).replace("nan", "None")))
    records = []
    for ds, variants in runs.items():
        n = min(len(v["epoch_seconds"]) for v in variants.values())
        if n == 0 or "multichexnet" not in variants or len(variants) < 2:
            continue
        for k, v in variants.items():
            v["epoch_seconds"], v["tasks"] = (
                v["epoch_seconds"][:n],
                (TASKS if k.startswith("multichexnet") else (k[7:],)),
            )
            v["history"] = [{m: (float("nan") if x is None else x) for m, x in h.items()} for h in v["history"][:n]]
        present = [t for t in TASKS if f"single_{t}" in variants]
        records.append(summarize(ds, *sizes.get(ds, (0, 0)), present, variants, args))
    return records


# ------------------------------------------------------------------------------------------ memory
def memory_probe(tasks: str, encoder: str, size: int, batch: int, threads: int) -> None:
    """One training step (all heads needed) in this fresh process; prints the peak RSS increase in MiB."""
    import psutil

    from monai_mcx.engines import MultiTaskTrainer
    from monai_mcx.losses import LocalizationLoss, MultiCheXNetLoss
    from monai_mcx.networks import MultiCheXNet, make_anchor_generator

    torch.set_num_threads(threads)
    task_list = tuple(tasks.split(","))
    s = size / 8.0
    anchors = [[s, s], [1.5 * s, 1.5 * s], [2 * s, 1.2 * s]]
    net = MultiCheXNet(encoder, class_names=("pneumonia",), tasks=task_list, num_anchors=3)
    loss = MultiCheXNetLoss(localization_loss=LocalizationLoss(make_anchor_generator(anchors)))

    def batch_of(n, sz):
        mask = torch.zeros(n, 1, sz, sz)
        mask[:, :, sz // 4 : sz // 2, sz // 4 : sz // 2] = 1
        box = torch.tensor([[sz / 4, sz / 4, sz / 2, sz / 2]])
        return {
            "image": torch.rand(n, 1, sz, sz),
            "label": torch.ones(n, 1),
            "has_label": torch.ones(n),
            "mask": mask,
            "has_mask": torch.ones(n),
            "boxes": [box.clone() for _ in range(n)],
            "has_boxes": torch.ones(n),
            "positive": torch.ones(n),
        }

    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    MultiTaskTrainer(
        device=torch.device("cpu"),
        max_epochs=1,
        train_data_loader=[batch_of(2, 64)],
        network=net,
        optimizer=opt,
        loss_function=loss,
    ).run()
    data = [batch_of(batch, size)]
    trainer = MultiTaskTrainer(
        device=torch.device("cpu"), max_epochs=1, train_data_loader=data, network=net, optimizer=opt, loss_function=loss
    )
    gc.collect()
    base = psutil.Process().memory_info().rss
    reset_peak_rss()
    trainer.run()
    print((peak_rss() - base) / 2**20)


def train_memory(encoder: str, sizes: list[int], batch: int, threads: int) -> list[dict]:
    """Peak memory of one training step per variant and size, each in a fresh process (:func:`memory_probe`)."""
    rows = []
    for size in sizes:
        for name, tasks in [("multichexnet", TASKS)] + [(f"single_{t}", (t,)) for t in TASKS]:
            try:
                mib = round(run_memory_probe(MODULE, [",".join(tasks), encoder, size, batch, threads]), 1)
            except Exception as e:  # noqa: BLE001 - a side measurement
                print(f"memory probe failed for {name} {size}px: {e}", file=sys.stderr)
                mib = None
            rows.append({"variant": name, "size": size, "batch": batch, "peak_rss_increase_mib": mib})
            print(rows[-1], flush=True)
    return rows


# ------------------------------------------------------------------------------------------ report
def fmt(x, nd=2):
    return "n/a" if x is None else f"{x:.{nd}f}"


def markdown(records: list[dict], memory: list[dict], args, command: str, load: tuple, elapsed: float) -> str:
    """The ``training`` section of ``docs/benchmarks.md``: the epoch-time table, the quality targets, peak memory."""
    lines = _epoch_table(records, args) + _quality_lines(records, args) + _memory_table(memory)
    return "\n".join(lines + run_footer(load, elapsed, command)) + "\n"


def _epoch_table(records: list[dict], args) -> list[str]:
    lines = [
        "## Training: MultiCheXNet vs the three single-task models (`experiments/benchmark_train.py`)",
        "",
        f"Goals: jointly labelled data, MultiCheXNet ≤ {TARGET_JOINT} × the single-task models' summed seconds "
        f"per epoch at equal quality; disjoint data ≤ {TARGET_DISJOINT} ×.",
        "",
        f"Encoder `{args.encoder}`, {args.size} px, batch {args.batch_size}, {args.epochs} epochs, AdamW lr "
        f"{args.lr}, teacher forcing `positive_only`, heads without a usable sample skipped, each head run on the "
        "samples its task trains on (`heads_on_selected_samples`). Training steps "
        "interleaved round robin across the variants (a change of load hits all of them alike): s/epoch columns are medians over epochs; *MCX / sum* is the median over epochs of "
        "(MultiCheXNet's epoch / the three single-task models' same epoch, summed), each ratio taken from "
        "variants that ran back to back under one load. **Only the ratios, measured in one run, are meaningful** (the "
        "machine may be shared: load average below), not the absolute seconds.",
        "",
        "| data | train items | MCX s/epoch | single s/epoch (cls / seg / loc) | sum single | MCX / sum | goal | holds |"
        " time to quality MCX / sum single |",
        "| --- | ---: | ---: | --- | ---: | ---: | ---: | --- | --- |",
    ]
    for r in records:
        med = r["median_epoch_s"]
        singles = " / ".join(fmt(med.get(f"single_{t}")) for t in TASKS)
        goal = TARGET_DISJOINT if r["dataset"] == "demo_disjoint" else TARGET_JOINT
        ttq = (
            f"{fmt(r['time_to_all_targets_s_mcx'], 1)} s / {fmt(r['time_to_all_targets_s_sum_single'], 1)} s"
            f" = {fmt(r['ratio_time_to_quality'], 3)}"
        )
        lines.append(
            f"| {r['dataset']} | {r['n_train']} | {fmt(med['multichexnet'])} | {singles} | "
            f"{fmt(r['sum_single_epoch_s'])} | {r['ratio_epoch_mcx_vs_sum_single']:.3f} | ≤ {goal} | "
            f"{'yes' if r['ratio_epoch_mcx_vs_sum_single'] <= goal else 'no'} | {ttq} |"
        )
        for alt, g in r.get("alternatives", {"multichexnet_grouped": r.get("grouped")}).items():
            if not g:
                continue
            label = ALTERNATIVES[alt]
            if alt == "multichexnet_grouped" and getattr(args, "grouped_set_to_none", False):
                label += ", optimizer skips untrained heads"
            lines.append(
                f"| {r['dataset']}, {label} | {r['n_train']} | {fmt(med[alt])} | "
                f"{singles} | {fmt(r['sum_single_epoch_s'])} | {g['ratio_epoch_vs_sum_single']:.3f} | ≤ {goal} | "
                f"{'yes' if g['ratio_epoch_vs_sum_single'] <= goal else 'no'} | "
                f"{fmt(g['time_to_all_targets_s'], 1)} s / {fmt(r['time_to_all_targets_s_sum_single'], 1)} s"
                f" = {fmt(g['ratio_time_to_quality'], 3)} |"
            )
    return lines


def _quality_lines(records: list[dict], args) -> list[str]:
    lines = [
        "",
        "Quality targets (fraction "
        f"{args.quality_fraction} of the lower of the two best validation values) and best values reached:",
        "",
    ]
    for r in records:
        best = "; ".join(
            f"{v}: " + ", ".join(f"{k.split('/')[0][:3]} {x:.3f}" for k, x in b.items())
            for v, b in r["best_val"].items()
        )
        tg = ", ".join(f"{METRIC[t]} ≥ {x}" for t, x in r["quality_targets"].items())
        heads = r["heads_run_steps"].get("multichexnet")
        heads_alt = "".join(
            f" With {label}: {r['heads_run_steps'][alt]}."
            for alt, label in ALTERNATIVES.items()
            if r["heads_run_steps"].get(alt)
        )
        lines.append(
            f"- `{r['dataset']}` ({r['epochs']} epochs): targets {tg}. Best: {best}."
            + (f" Steps in which MultiCheXNet ran each head: {heads}." if heads else "")
            + heads_alt
        )
    return lines


def _memory_table(memory: list[dict]) -> list[str]:
    if not memory:
        return []
    lines = [
        "",
        f"Peak memory of one training step, batch {memory[0]['batch']} (peak RSS of a fresh process "
        "during the step minus its RSS before it; MiB):",
        "",
        "| size | " + " | ".join(["multichexnet"] + [f"single_{t}" for t in TASKS]) + " |",
        "| ---: | ---: | ---: | ---: | ---: |",
    ]
    for size in sorted({m["size"] for m in memory}):
        vals = {m["variant"]: m["peak_rss_increase_mib"] for m in memory if m["size"] == size}
        lines.append(
            f"| {size} | "
            + " | ".join(fmt(vals.get(v), 0) for v in ["multichexnet"] + [f"single_{t}" for t in TASKS])
            + " |"
        )
    return lines


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", nargs="+", default=["demo_joint", "rsna", "demo_disjoint"])
    p.add_argument(
        "--rsna-datalist", help="datalist from scripts/prepare_data.py --rsna (the rsna data set is skipped without it)"
    )
    p.add_argument("--demo-images", type=int, default=200, help="demo data set size (all splits)")
    p.add_argument("--max-train", type=int, default=None, help="cap on training items per data set")
    p.add_argument("--max-val", type=int, default=60)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--encoder", default="densenet-tiny")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--quality-fraction", type=float, default=0.9)
    p.add_argument(
        "--grouped-set-to-none",
        action="store_true",
        help="task-grouped MultiCheXNet with optim_set_to_none=True: AdamW skips the heads a batch did not train",
    )
    p.add_argument(
        "--whole-batch-heads",
        action="store_true",
        help="add a MultiCheXNet variant whose heads run on the whole batch (heads_on_selected_samples=False)",
    )
    p.add_argument("--threads", type=int, default=None)
    p.add_argument(
        "--memory-sizes", type=int, nargs="*", default=[64, 128, 256], help="sizes of the memory probes ([] = none)"
    )
    add_output_options(p)
    p.add_argument("--from-log", type=Path, help="write the tables from the printed log of an interrupted run")
    return p.parse_args(argv)


def main(argv=None) -> list[dict]:
    from monai_mcx.data import generate_demo_data
    from monai_mcx.data.anchors import anchor_shapes_from_datalist

    args = parse_args(argv)
    command = command_line(MODULE, argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    load_start, t0 = load_average(), time.perf_counter()
    records = []
    if args.from_log:
        records = records_from_log(args.from_log, args)
        args.datasets = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.datasets:
            if name == "rsna":
                if not args.rsna_datalist:
                    print("rsna: no --rsna-datalist, skipped", file=sys.stderr)
                    continue
                datalist = args.rsna_datalist
            else:
                layout = "joint" if name == "demo_joint" else "disjoint"
                datalist = generate_demo_data(
                    Path(tmp) / name, num_images=args.demo_images, image_size=args.size, seed=0, layout=layout
                )
            anchors = anchor_shapes_from_datalist(
                datalist, "training", [args.size, args.size], 3, fallback=[[8, 8], [12, 12], [16, 10]]
            )
            train = preprocess(datalist, "training", args.size, args.max_train)
            val = preprocess(datalist, "validation", args.size, args.max_val)
            records.append(run_dataset(name, train, val, args, anchors))
            print(
                json.dumps(
                    {
                        k: records[-1][k]
                        for k in ("dataset", "median_epoch_s", "ratio_epoch_mcx_vs_sum_single", "ratio_time_to_quality")
                    }
                ),
                flush=True,
            )
    memory = []
    if args.memory_sizes:
        memory = train_memory(args.encoder, args.memory_sizes, args.batch_size, torch.get_num_threads())
    load = (load_start, load_average())
    elapsed = time.perf_counter() - t0
    text = markdown(records, memory, args, command, load, elapsed)
    print(text)
    if not args.no_write:
        write_section(
            args,
            "training",
            text,
            {
                "records": records,
                "memory": memory,
                "command": command,
                "load_average_start": load[0],
                "load_average_end": load[1],
            },
        )
    return records


if __name__ == "__main__":
    main_or_memory_probe(main, memory_probe)
