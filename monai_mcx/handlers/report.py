"""The evaluation report: ``report.md`` with every metric (ungated and gated side by side), plots and a gallery.

:class:`EvaluationReport` is an Ignite handler for the evaluator of ``bundle/configs/evaluate.json``. During the
epoch it keeps what the plots need (class probabilities and labels, per-image Dice, per-image box quality, and
only the ``num_cases`` best and worst cases with their images, so memory stays small on large splits); when the
epoch completes it writes under ``output_dir``:

- ``report.md``: the table of ``engine.state.metrics`` (the same numbers as ``metrics.json``, 4 decimals), the
  ``/gated`` variant beside each metric, the number of images per task, the thresholds, links to the plots;
- ``plots/roc_<class>.png``, ``plots/pr_<class>.png``: ROC and precision-recall curves per class;
- ``plots/reliability_<class>.png``: reliability diagram per class, raw ``sigmoid(z)`` against the calibrated
  ``sigmoid(z / T)`` probabilities (the temperatures of ``calibration/temperature/<class>``), and a section
  "Calibration and operating points" with ECE / Brier / NLL before and after and sensitivity / specificity with
  95 % patient-bootstrap intervals at the chosen threshold and at fixed sensitivity targets;
- ``plots/dice_hist.png``: Dice of the images with a non-empty true mask (ungated and gated);
- ``plots/gallery.png``: the best and worst cases (by Dice where the image has a true mask, else by the
  per-image box IoU of :func:`monai_mcx.metrics.box_quality`) with the X-ray, true (green) and predicted (red) mask
  contours and boxes (predicted ones with their scores); with ``saliency``, each case has a second panel below it:
  the Grad-CAM map of its most probable class over the X-ray, with the truth in green;
- with ``explain/...`` keys in the metrics (:class:`monai_mcx.handlers.explain.SaliencyEvaluation`): a section
  "Explanations (saliency)" comparing the pointing game and the saliency mass inside the truth with the
  centred-Gaussian baseline and with the localization head's top box.

The thresholds chosen on the validation split (class thresholds, box operating point: see
:class:`~monai_mcx.handlers.MultiTaskMetrics`) are saved into the model description by
:class:`monai_mcx.handlers.OperatingPointWriter`.

In a distributed evaluation (``multi_gpu_evaluate.json``) the handler runs on every rank: at the end each rank's
per-image records are gathered (:meth:`EvaluationReport.gather`, as :class:`~monai_mcx.handlers.MultiTaskMetrics`
gathers its samples) and rank 0 writes the report of the whole split.

This handler only collects the per-image records and writes the report: the curves' numbers come from
:mod:`monai_mcx.metrics`, the figures are drawn by :mod:`monai_mcx.visualize` (plots, gallery), and the sections of
``report.md`` that depend on the metrics alone are :mod:`monai_mcx.handlers.report_markdown`.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.utils.enums import CommonKeys

from monai_mcx.handlers.report_markdown import calibration_section, explain_section, metrics_section, plots_section
from monai_mcx.keys import BatchKeys, DatalistKeys, DetKeys, PredKeys
from monai_mcx.metrics import box_quality, dice_per_image
from monai_mcx.utils import write_text_atomic
from monai_mcx.visualize import (
    save_dice_histogram,
    save_gallery,
    save_pr_curve,
    save_reliability_diagram,
    save_roc_curve,
)

__all__ = ["EvaluationReport"]


def _np(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(name)).strip("_") or "class"


# ----------------------------------------------------------------------------------------------- report
class EvaluationReport:
    """Write ``report.md``, ``per_image.csv`` and the plots under ``output_dir`` when the evaluator's epoch completes.

    Attach after :class:`~monai_mcx.handlers.MultiTaskMetrics` (the evaluator's key metric, whose values it
    tabulates from ``engine.state.metrics``) and :class:`~monai_mcx.handlers.MetricsJSONWriter`.

    The gate, the mask and the boxes shown are those of the post-processor with the thresholds the metrics used
    (``classification/threshold/<class>`` and ``localization/box_threshold`` of ``engine.state.metrics``, so the
    ones chosen on validation when evaluation chose them): the deployed model's. ``per_image.csv`` lists, per
    evaluated image, the class probabilities, the gate decision and the number of gated boxes at the operating
    point (what inference outputs for the same image).

    Args:
        output_dir: where ``report.md`` and ``plots/`` go.
        class_names: the bundle's class names.
        postprocessor: the deployed post-processing (:class:`monai_mcx.inferers.MultiCheXNetPostprocessor`); its
            thresholds are replaced by those of ``engine.state.metrics`` when present.
        num_cases: number of best and of worst cases in the gallery.
        metrics_file: the metrics file name (linked from the report).
        threshold_note: how the classification thresholds were obtained (printed in the report).
        box_threshold_note: how the box operating point was obtained (printed in the report).
        title: the report's heading.
        saliency: a :class:`monai_mcx.explain.SaliencyMaps` of the evaluator's network: the gallery shows each
            case's saliency (computed at the end, for the gallery cases only); None: no saliency panels.
        sensitivity_note: where the thresholds of the sensitivity targets (``sens90``...) come from
            (:func:`monai_mcx.handlers.report_markdown.sensitivity_note`); empty: "on the validation split".
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        class_names: Sequence[str],
        postprocessor: Any | None = None,
        num_cases: int = 4,
        metrics_file: str = "metrics.json",
        report_file: str = "report.md",
        threshold_note: str = "",
        box_threshold_note: str = "",
        title: str = "MultiCheXNet evaluation report",
        saliency: Any | None = None,
        sensitivity_note: str = "",
    ) -> None:
        from monai_mcx.inferers import MultiCheXNetPostprocessor

        self.output_dir = Path(output_dir)
        self.class_names = list(class_names)
        self.postprocessor = postprocessor if postprocessor is not None else MultiCheXNetPostprocessor(self.class_names)
        self.deployed = self.postprocessor
        self.num_cases = int(num_cases)
        self.metrics_file = metrics_file
        self.report_file = report_file
        self.threshold_note = threshold_note
        self.box_threshold_note = box_threshold_note
        self.title = title
        self.saliency = saliency
        self.sensitivity_note = sensitivity_note
        self.plot_files: list[str] = []
        self.reset()

    # -- collection
    def reset(self, engine: Engine | None = None) -> None:
        self._probs: list[np.ndarray] = []  # images with a known label
        self._labels: list[np.ndarray] = []
        self._all_probs: list[np.ndarray] = []  # every image (for the gate)
        self._all_pops: list[str | None] = []  # every image: the population whose point the evaluator applied
        self._all_logits: list[np.ndarray | None] = []  # every image: raw class logits (recalibrated at write())
        self._known: list[int] = []  # indices into _all_probs of the images with a known label
        self._images: list[dict] = []  # every image: path, box scores
        self._dice: list[tuple[int, float]] = []  # (image index, ungated Dice) for images with a non-empty true mask
        self._counts = {
            "images": 0,
            BatchKeys.LABEL.value: 0,
            BatchKeys.MASK.value: 0,
            "mask_positive": 0,
            BatchKeys.BOXES.value: 0,
            "boxes_positive": 0,
            "true_boxes": 0,
        }
        self._pos_per_class = np.zeros(len(self.class_names))
        self._cases: list[tuple[float, int, dict]] = []
        self._index = 0

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def _collect(self, engine: Engine) -> None:
        out = engine.state.output
        pred, targets, images = out[CommonKeys.PRED], out[CommonKeys.LABEL], out[CommonKeys.IMAGE]
        batch = getattr(engine.state, "batch", None) or {}
        paths = batch.get(BatchKeys.IMAGE_PATH) if isinstance(batch, dict) else None
        probs = _np(pred[PredKeys.CLASS_PROBS]) if PredKeys.CLASS_PROBS in pred else None
        logits = _np(pred[PredKeys.CLASS_LOGITS]).astype(np.float64) if PredKeys.CLASS_LOGITS in pred else None
        for i in range(images.shape[0]):
            idx = self._index
            self._index += 1
            self._counts["images"] += 1
            info: dict = {DatalistKeys.IMAGE.value: str(paths[i]) if paths else f"#{idx}"}
            if probs is not None:
                self._all_probs.append(probs[i].reshape(-1))
                points = pred.get(PredKeys.POPULATION)
                self._all_pops.append(None if points is None else points[i].get(DatalistKeys.POPULATION))
                self._all_logits.append(None if logits is None else logits[i].reshape(-1))
            if probs is not None and float(targets[BatchKeys.HAS_LABEL][i]) > 0.5:
                self._known.append(len(self._all_probs) - 1)
                y = _np(targets[BatchKeys.LABEL][i]).reshape(-1)
                self._probs.append(probs[i].reshape(-1))
                self._labels.append(y)
                self._pos_per_class += y > 0.5
                self._counts[BatchKeys.LABEL.value] += 1
            rank, kind = None, None
            case = {"index": idx}
            if PredKeys.SEG_MASK in pred:
                info["mask_area_px_input"] = int(_np(pred[PredKeys.SEG_MASK][i, 0]).sum())
            if PredKeys.SEG_MASK in pred and float(targets[BatchKeys.HAS_MASK][i]) > 0.5:
                pm = _np(pred[PredKeys.SEG_MASK][i, 0]) > 0.5
                tm = _np(targets[BatchKeys.MASK][i, 0]) > 0.5
                self._counts[BatchKeys.MASK.value] += 1
                case.update(true_mask=tm, pred_mask=pm)
                if tm.any():
                    self._counts["mask_positive"] += 1
                    d = float(dice_per_image(pm[None], tm[None])[0])
                    self._dice.append((idx, d))
                    rank, kind = d, "Dice"
            if PredKeys.DETECTIONS in pred:
                det = pred[PredKeys.DETECTIONS][i]
                info[DetKeys.SCORES.value] = _np(det[DetKeys.SCORES]).reshape(-1)
                if float(targets[BatchKeys.HAS_BOXES][i]) > 0.5:
                    tb = _np(targets[BatchKeys.BOXES][i]).reshape(-1, 4)
                    ps = info[DetKeys.SCORES]
                    pb = _np(det[DetKeys.BOXES]).reshape(-1, 4)
                    self._counts[BatchKeys.BOXES.value] += 1
                    self._counts["true_boxes"] += len(tb)
                    case.update(true_boxes=tb, all_boxes=pb, all_scores=ps)
                    if len(tb):
                        self._counts["boxes_positive"] += 1
                        if (
                            rank is None
                        ):  # ranked at the post-processor's operating point (the final one is unknown yet)
                            rank, kind = box_quality(pb[ps >= self.postprocessor.box_score_threshold], tb), "box IoU"
            self._images.append(info)
            if rank is None:
                continue
            case[BatchKeys.IMAGE.value] = _np(images[i, 0]).astype(np.float32)
            if self.saliency is not None:  # the network input, for the gallery's saliency panel
                case["input"] = images[i].detach().cpu()
                case["probs"] = None if probs is None else probs[i].reshape(-1)
            case["rank"], case["rank_kind"] = rank, kind
            self._cases.append((rank, idx, case))
        self._prune()

    def _prune(self) -> None:
        k = self.num_cases
        if len(self._cases) <= 2 * k:
            return
        self._cases.sort(key=lambda t: (t[0], t[1]))
        self._cases = self._cases[:k] + self._cases[-k:]

    #: runs on every rank of a distributed evaluation (``rank0_handlers`` keeps it): the ranks' records are gathered
    #: (a collective), rank 0 writes
    rank0_only = False

    _RECORDS = ("_probs", "_labels", "_all_probs", "_all_pops", "_all_logits", "_known", "_images", "_dice",
                "_counts", "_pos_per_class", "_cases")  # fmt: skip

    def gather(self) -> None:
        """Under ``torch.distributed`` (each rank evaluated its shard of the split): replace this rank's records by
        those of every rank (:func:`monai_mcx.engines.distributed.gather_shards`, as the metrics gather theirs),
        so that ``report.md``, its plots and gallery and ``per_image.csv`` cover the whole split. Collective: every
        rank calls it. Memory: the per-image records are small (probabilities, box scores, one Dice); of the
        images only each rank's ``num_cases`` best and worst cases travel."""
        from monai_mcx.engines.distributed import gather_shards

        mine = {k: getattr(self, k) for k in self._RECORDS}
        mine["_index"] = self._index
        renumber = {
            "_known": lambda j, o: j + o,  # every image has probabilities when there is a classifier
            "_dice": lambda t, o: (t[0] + o, t[1]),
            "_cases": lambda t, o: (t[0], t[1] + o, {**t[2], "index": t[2]["index"] + o}),
        }
        merged = gather_shards(mine, "_index", renumber)
        if merged is None:
            return
        for k in self._RECORDS:
            setattr(self, k, merged[k])
        self._index = merged["_index"]
        self._prune()

    # -- output
    def __call__(self, engine: Engine) -> None:
        from monai_mcx.engines.distributed import get_rank

        self.gather()
        if get_rank() != 0:
            return
        metrics = {}
        for key, v in engine.state.metrics.items():
            if isinstance(v, (int, float, np.floating, np.integer)) or (torch.is_tensor(v) and v.numel() == 1):
                f = float(v)
                metrics[key] = None if math.isnan(f) else f
        self.write(metrics)

    def _deployed(self, metrics: dict) -> Any:
        """The post-processor with the thresholds the metrics used (when reported)."""
        from monai_mcx.handlers.metrics import deployed_from_metrics

        return deployed_from_metrics(self.postprocessor, metrics)

    def _recalibrate(self) -> None:
        """Recompute the collected probabilities from the raw logits with the deployed calibration (the one the
        metrics used, possibly fitted in this very evaluation), so that gate, curves and per-image rows agree with
        ``metrics.json``."""
        if not self._all_logits or any(z is None for z in self._all_logits):
            return
        z = torch.as_tensor(np.stack(self._all_logits), dtype=torch.float32)  # as the post-processor computes them
        probs = self.deployed.probabilities(z).double().numpy()
        self._all_probs = list(probs)
        self._probs = [probs[j] for j in self._known]

    def _plot_reliability(self) -> list[tuple[str, str]]:
        """``plots/reliability_<class>.png`` (raw against calibrated) for the classes with both label values."""
        links: list[tuple[str, str]] = []
        if not self._probs or not self._all_logits or any(z is None for z in self._all_logits):
            return links
        logits = torch.as_tensor(np.stack([self._all_logits[j] for j in self._known]), dtype=torch.float32)
        raw = self.deployed.with_settings(calibration=False).probabilities(logits).double().numpy()
        cal = np.stack(self._probs) if self.deployed.calibrated else None
        labels = np.stack(self._labels)
        for c, name in enumerate(self.class_names):
            y = labels[:, c]
            known = ~np.isnan(y)
            if not known.any() or (y[known] > 0.5).all() or not (y[known] > 0.5).any():
                continue
            rel = f"plots/reliability_{_safe(name)}.png"
            save_reliability_diagram(
                self.output_dir / rel,
                y[known],
                raw[known, c],
                None if cal is None else cal[known, c],
                class_name=name,
            )
            self.plot_files.append(rel)
            links.append((name, rel))
        return links

    def _gates(self) -> np.ndarray:
        """The deployed gate of every collected image (all True without a classifier)."""
        if not self._all_probs:
            return np.ones(self._index, dtype=bool)
        pops = self._all_pops if any(p is not None for p in self._all_pops) else None
        return self.deployed.gate(torch.as_tensor(np.stack(self._all_probs)), pops).numpy()

    def write(self, metrics: dict[str, float | None]) -> Path:
        """Write the plots, ``per_image.csv`` and ``report.md`` for the collected data and the given flat ``metrics``."""
        self.deployed = self._deployed(metrics)
        self._recalibrate()
        gates = self._gates()
        plots_dir = self.output_dir / "plots"
        self.plot_files = []
        curve_links = self._plot_curves(plots_dir, metrics)
        self._calibration_lines = calibration_section(
            metrics, self.class_names, self.deployed, self._plot_reliability(), self.sensitivity_note
        )
        dice_link = self._plot_dice(plots_dir, gates)
        gallery_link = self._plot_gallery(plots_dir, gates)
        self._write_per_image(gates)
        text = self._markdown(metrics, curve_links, dice_link, gallery_link, gates)
        path = self.output_dir / self.report_file
        write_text_atomic(text, path)
        return path

    def per_image_rows(self, gates: np.ndarray | None = None) -> list[dict]:
        """One row per evaluated image: ``image``, ``gate_positive``, ``p_<class>``, ``n_boxes`` (gated, at the
        operating point), ``max_box_score`` (of those) and ``mask_area_px_input`` (gated, network geometry)."""
        gates = self._gates() if gates is None else gates
        rows = []
        t = self.deployed.box_score_threshold
        for j, info in enumerate(self._images):
            g = bool(gates[j])
            row = {DatalistKeys.IMAGE.value: info[DatalistKeys.IMAGE], "gate_positive": g}
            if self._all_probs:
                row.update({f"p_{c}": round(float(p), 6) for c, p in zip(self.class_names, self._all_probs[j])})
            if DetKeys.SCORES in info:
                kept = info[DetKeys.SCORES][info[DetKeys.SCORES] >= t] if g else info[DetKeys.SCORES][:0]
                row["n_boxes"] = len(kept)
                row["max_box_score"] = float(kept.max()) if len(kept) else ""
            if "mask_area_px_input" in info:
                row["mask_area_px_input"] = info["mask_area_px_input"] if g else 0
            rows.append(row)
        return rows

    def _write_per_image(self, gates: np.ndarray) -> None:
        import csv
        import io

        rows = self.per_image_rows(gates)
        fields = [
            DatalistKeys.IMAGE.value,
            "gate_positive",
            *[f"p_{c}" for c in self.class_names],
            "n_boxes",
            "max_box_score",
            "mask_area_px_input",
        ]
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
        write_text_atomic(buf.getvalue(), self.output_dir / "per_image.csv")

    def _plot_curves(self, plots_dir: Path, metrics: dict) -> list[tuple[str, str, str]]:
        links = []
        if not self._probs:
            return links
        probs, labels = np.stack(self._probs), np.stack(self._labels)
        for c, name in enumerate(self.class_names):
            y = labels[:, c] > 0.5
            if y.all() or not y.any():
                continue
            roc_name, pr_name = f"plots/roc_{_safe(name)}.png", f"plots/pr_{_safe(name)}.png"
            save_roc_curve(
                self.output_dir / roc_name,
                probs[:, c],
                y,
                class_name=name,
                auc=metrics.get(f"classification/auc/{name}"),
                threshold=metrics.get(f"classification/threshold/{name}"),
            )
            save_pr_curve(self.output_dir / pr_name, probs[:, c], y, class_name=name)
            self.plot_files += [roc_name, pr_name]
            links.append((name, roc_name, pr_name))
        return links

    def _plot_dice(self, plots_dir: Path, gates: np.ndarray) -> str | None:
        if not self._dice:
            return None
        dice = [d for _, d in self._dice]
        dice_gated = [d if gates[j] else 0.0 for j, d in self._dice]  # gated out: empty mask, Dice 0
        name = "plots/dice_hist.png"
        save_dice_histogram(self.output_dir / name, dice, dice_gated)
        self.plot_files.append(name)
        return name

    def gallery_cases(self) -> tuple[list[dict], list[dict]]:
        """``(best, worst)``: up to ``num_cases`` each, best first / worst first, disjoint."""
        ordered = sorted(self._cases, key=lambda t: (t[0], t[1]))
        k = self.num_cases
        worst = [c for _, _, c in ordered[:k]]
        rest = ordered[k:]
        best = [c for _, _, c in reversed(rest[-k:])] if rest else []
        return best, worst

    def _deployed_case(self, case: dict, gate: bool) -> dict:
        """A gallery case with the deployed output: gated mask, gated boxes at the operating point."""
        out = {k: v for k, v in case.items() if k not in ("all_boxes", "all_scores")}
        if "pred_mask" in case and not gate:
            out["pred_mask"] = np.zeros_like(case["pred_mask"])
        if "all_boxes" in case:
            keep = (case["all_scores"] >= self.deployed.box_score_threshold) & bool(gate)
            out["pred_boxes"], out["pred_scores"] = case["all_boxes"][keep], case["all_scores"][keep]
        return out

    def _plot_gallery(self, plots_dir: Path, gates: np.ndarray) -> str | None:
        best, worst = self.gallery_cases()
        if not best and not worst:
            return None
        rows = [(label, cases) for label, cases in (("best", best), ("worst", worst)) if cases]
        panels = self._saliency_panels([c for _, cases in rows for c in cases])
        grid = []
        for label, cases in rows:
            grid.append([])
            for c, case in enumerate(cases):
                gate = bool(gates[case["index"]])
                title = f"{label} #{c + 1}: {case['rank_kind']} {case['rank']:.2f}" + ("" if gate else ", gated out")
                grid[-1].append(dict(self._deployed_case(case, gate), title=title))
        name = "plots/gallery.png"
        save_gallery(
            self.output_dir / name,
            grid,
            [[panels[case["index"]] for case in cases] for _, cases in rows] if panels else None,
            suptitle=f"truth green, deployed prediction red (gated; boxes with score >= "
            f"{self.deployed.box_score_threshold:.3g}); ranked by ungated Dice / box IoU"
            + (f"\nbelow each case: {self._saliency_text()} of its most probable class, truth green" if panels else ""),
        )
        self.plot_files.append(name)
        return name

    # -- saliency (issue 14) -----------------------------------------------------------------------------
    def _saliency_text(self) -> str:
        st = self.saliency.settings() if hasattr(self.saliency, "settings") else {}
        method = {"gradcam": "Grad-CAM", "gradcampp": "Grad-CAM++"}.get(st.get("method"), "saliency")
        return f"{method} on `{st.get('layer', '?')}`"

    def _saliency_panels(self, cases: list[dict]) -> dict[int, dict]:
        """``{case index: draw_case dict}``: each gallery case's saliency map (its most probable class) over the
        X-ray, truth in green. Empty without ``saliency``."""
        if self.saliency is None or not cases or any("input" not in c for c in cases):
            return {}
        device = next(self.saliency.wrapper.parameters()).device
        x = torch.stack([c["input"] for c in cases]).float().to(device)
        maps = self.saliency(x).cpu().numpy()  # (n, K', W, H)
        indices = list(self.saliency.class_indices)
        panels = {}
        for j, case in enumerate(cases):
            probs = case.get("probs")
            k = int(np.argmax([probs[c] for c in indices])) if probs is not None else 0
            name = self.class_names[indices[k]] if indices[k] < len(self.class_names) else str(indices[k])
            p = f" p={float(probs[indices[k]]):.2f}" if probs is not None else ""
            panels[case["index"]] = {
                BatchKeys.IMAGE.value: case[BatchKeys.IMAGE],
                "saliency": maps[j, k],
                "true_mask": case.get("true_mask"),
                "true_boxes": case.get("true_boxes"),
                "title": f"saliency: {name}{p}",
            }
        return panels

    def _markdown(self, metrics: dict, curve_links, dice_link, gallery_link, gates: np.ndarray) -> str:
        from monai_mcx.inferers import GATE_RULE_TEXT

        d = self.deployed
        thr_text = ", ".join(f"{n} {t:.4g}" for n, t in zip(d.class_names, d.class_thresholds))
        lines = [f"# {self.title}", ""]
        lines += [
            f"All numbers are those of [`{self.metrics_file}`]({self.metrics_file}), rounded to 4 decimals "
            "(`n/a`: undefined on this data, `null` in the JSON). *Gated*: the classifier gates the other heads "
            f"with the deployed rule and thresholds ({GATE_RULE_TEXT}; thresholds {thr_text}); a negative image "
            "gets an empty mask and no boxes. AP / mAP rank all the decoded boxes; the RSNA metric, boxes per "
            f"negative image and sensitivity at IoU 0.5 count the boxes at the operating point "
            f"(score >= {d.box_score_threshold:.4g}).",
            "",
        ]
        c = self._counts
        gated_out = int((~gates).sum()) if self._all_probs else 0
        lines += [
            "## Images",
            "",
            "| task | images evaluated | with lesion / positive | note |",
            "| --- | ---: | ---: | --- |",
        ]
        lines.append(f"| all | {c['images']} | | {gated_out} gated out by the classifier |")
        pos = ", ".join(f"{n}: {int(p)}" for n, p in zip(self.class_names, self._pos_per_class))
        lines.append(f"| classification | {c[BatchKeys.LABEL]} | {pos} | images with a known class label |")
        lines.append(f"| segmentation | {c[BatchKeys.MASK]} | {c['mask_positive']} | images with a known mask |")
        lines.append(
            f"| localization | {c[BatchKeys.BOXES]} | {c['boxes_positive']} | images with known boxes; {c['true_boxes']} true boxes |"
        )
        lines.append("")
        lines += ["## Thresholds (the deployed model's)", ""]
        note = f" ({self.threshold_note})" if self.threshold_note else ""
        if self._all_probs:
            lines += [f"- class thresholds{note}: {thr_text}", f"- gate (`{d.gate_rule}`): {GATE_RULE_TEXT}"]
        else:
            lines += ["- gate: none (no classifier: every image goes through)"]
        lines += [f"- predicted mask: probability >= {d.seg_threshold:g}"]
        if any(k.startswith("localization/") for k in metrics):
            bnote = f" ({self.box_threshold_note})" if self.box_threshold_note else ""
            lines += [
                f"- box operating point{bnote}: score >= {d.box_score_threshold:.4g} (inference, MONAI Label and "
                "the gallery output these boxes)"
            ]
        lines += ["- per-image decisions: [`per_image.csv`](per_image.csv)", ""]
        lines += metrics_section(metrics)
        lines += getattr(self, "_calibration_lines", [])
        method = self._saliency_text() if self.saliency is not None else "the saliency of the model description"
        lines += explain_section(metrics, self.class_names, method)
        lines += plots_section(curve_links, dice_link, gallery_link)
        return "\n".join(lines)
