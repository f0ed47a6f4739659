"""The sections of the evaluation report's ``report.md`` that depend on the metrics only (no collected images).

:class:`monai_mcx.handlers.EvaluationReport` collects the per-image records, writes the plots and assembles
``report.md`` from its own sections (images, thresholds) and these: the metric table, calibration and operating
points, explanations (saliency), the plots. Each function returns markdown lines; numbers are printed by
:func:`monai_mcx.visualize.format_value` (4 decimals, ``n/a`` for undefined).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from monai_mcx.handlers.metrics import ORIGINAL_SUFFIX
from monai_mcx.visualize import format_value

__all__ = ["metrics_section", "calibration_section", "explain_section", "plots_section", "sensitivity_note"]


def sensitivity_note(split: str | None, description_thresholds: Mapping | None, targets: Sequence[float]) -> str:
    """Where the thresholds of the fixed sensitivity targets (``sens90``, ``sens95``) of an evaluation come from, in
    words, for :func:`calibration_section`.

    Args:
        split: the evaluated split; ``"validation"``: chosen on it by this evaluation.
        description_thresholds: the model description's ``sensitivity_thresholds`` (chosen on a validation split),
            or None.
        targets: the sensitivity targets (``0.9`` -> "90").

    Returns:
        ``"chosen on this validation split"``, ``"chosen on the validation split, read from the model
        description"``, or ``"not available: the description has no 90/95 % sensitivity thresholds from a
        validation split"`` (then they are not chosen on the evaluated split either).
    """
    if split == "validation":
        return "chosen on this validation split"
    if description_thresholds:
        return "chosen on the validation split, read from the model description"
    pct = "/".join(f"{100 * float(t):g}" for t in targets)
    return f"not available: the description has no {pct} % sensitivity thresholds from a validation split"


def metrics_section(metrics: Mapping[str, float | None]) -> list[str]:
    """The "Metrics" section: one row per key, ungated beside ``/gated`` (and, when the metrics have them, beside the
    ``/original`` keys at the images' own resolution), 4 decimals (:func:`monai_mcx.visualize.format_value`).

    Args:
        metrics: the flat metrics of ``metrics.json``.

    Returns:
        The markdown lines.
    """
    orig = ORIGINAL_SUFFIX
    has_orig = any(k.endswith(orig) for k in metrics)
    lines = ["## Metrics", ""]
    if has_orig:
        lines += [
            "Segmentation and localization numbers are computed twice: at the network input (`spatial_size`, "
            "the *network px* columns) and at each image's original resolution (*original px*: the mask "
            "probability resized to the image as inference writes it, against the mask file at its own size; "
            "boxes scaled back to the original pixels), which is how SIIM-ACR and most papers report Dice. "
            "Box metrics agree at both resolutions (IoU does not change under a per-axis scaling) up to "
            "clipping and rounding. Classification numbers do not depend on the resolution.",
            "",
            "| metric | ungated, network px | gated, network px | ungated, original px | gated, original px |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
    else:
        lines += ["| metric | ungated | gated |", "| --- | ---: | ---: |"]

    def cell(key: str) -> str:
        return format_value(metrics[key]) if key in metrics else ""

    keys = sorted(k for k in metrics if not k.endswith(("/gated", orig)))
    for k in keys:
        row = f"| `{k}` | {cell(k)} | {cell(f'{k}/gated')} |"
        lines.append(row + (f" {cell(k + orig)} | {cell(f'{k}/gated{orig}')} |" if has_orig else ""))
    if any(not k.startswith(("classification/", "segmentation/", "localization/", "explain/")) for k in keys):
        lines.append("")
        lines.append(
            "Keys outside a task (e.g. the evaluator's key metric) are the checkpoint-selection score, "
            "the mean of `classification/auc`, `segmentation/dice_positive` and `localization/ap50`."
        )
    for k in sorted(k for k in metrics if k.endswith("/gated") and k[: -len("/gated")] not in metrics):
        lines.append(f"| `{k[: -len('/gated')]}` | | {format_value(metrics[k])} |" + (" | |" if has_orig else ""))
    lines.append("")
    return lines


def calibration_section(
    metrics: Mapping[str, float | None],
    class_names: Sequence[str],
    deployed: Any,
    reliability_links: Sequence[tuple[str, str]] = (),
    sensitivity_source: str = "",
) -> list[str]:
    """The "Calibration and operating points" section: ECE / Brier / NLL before and after calibration, the reliability
    diagrams, and sensitivity / specificity with their bootstrap intervals at each operating point.

    Args:
        metrics: the flat metrics (``calibration/...``, ``classification/...`` keys).
        class_names: the classes, in order.
        deployed: the deployed post-processor (:class:`monai_mcx.inferers.MultiCheXNetPostprocessor`): its
            calibration says which table is written.
        reliability_links: ``(class, relative PNG path)`` of the reliability diagrams shown.
        sensitivity_source: where the sensitivity-target thresholds come from (:func:`sensitivity_note`); empty:
            "on the validation split".

    Returns:
        The markdown lines; empty without ``calibration/ece/<class>/raw`` keys.
    """
    names = class_names
    if not any(f"calibration/ece/{c}/raw" in metrics for c in names):
        return []
    d = deployed
    lines = ["## Calibration and operating points", ""]
    if d.calibrated:
        temps = ", ".join(f"{c} T = {t:.4g}" for c, t in zip(names, d.calibration.temperatures))
        fitted = metrics.get("calibration/fitted_on")
        how = (
            f"fitted on these {int(fitted)} labelled images (raw logits) before the thresholds were chosen"
            if fitted is not None
            else "read from the model description"
        )
        lines += [
            f"Probabilities are calibrated by per-class temperature scaling, `p = sigmoid(z / T)` ({temps}; {how}). "
            "Everything that leaves the model (inference JSON/CSV, MONAI Label, this report) is calibrated, and "
            "the thresholds are chosen on the calibrated probabilities. Lower is better for all three scores; "
            "ECE: 10 equal-width bins.",
            "",
            "| class | T | ECE raw | ECE calibrated | Brier raw | Brier calibrated | NLL raw | NLL calibrated |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for c in names:
            vals = [metrics.get(f"calibration/temperature/{c}")]
            for m in ("ece", "brier", "nll"):
                vals += [metrics.get(f"calibration/{m}/{c}/raw"), metrics.get(f"calibration/{m}/{c}")]
            lines.append(f"| {c} | " + " | ".join(format_value(v) for v in vals) + " |")
    else:
        lines += [
            "Probabilities are raw `sigmoid(z)` (no calibration).",
            "",
            "| class | ECE | Brier | NLL |",
            "| --- | ---: | ---: | ---: |",
        ]
        for c in names:
            vals = [metrics.get(f"calibration/{m}/{c}/raw") for m in ("ece", "brier", "nll")]
            lines.append(f"| {c} | " + " | ".join(format_value(v) for v in vals) + " |")
    lines.append("")
    for c, rel in reliability_links:
        lines += [f"![reliability {c}]({rel})", ""]

    def ci(key: str) -> str:
        v, lo, hi = metrics.get(key), metrics.get(f"{key}/ci_low"), metrics.get(f"{key}/ci_high")
        if v is None:
            return "n/a"
        return f"{format_value(v)} [{format_value(lo)}, {format_value(hi)}]" if lo is not None else format_value(v)

    ops = sorted({k.split("/")[1] for k in metrics if re.fullmatch(r"classification/sens[0-9.]+/threshold/.+", k)})
    source = sensitivity_source or "on the validation split"
    if source.startswith("not available"):
        sens = f"*sensNN* (the highest threshold reaching NN % sensitivity on a validation split): {source}"
    else:
        sens = f"*sensNN*: the highest threshold reaching NN % sensitivity, {source}"
    lines += [
        "Operating points (sensitivity and specificity with 95 % confidence intervals, percentile bootstrap "
        f"over patients: all images of a patient are resampled together). *chosen*: the deployed class threshold; "
        f"{sens}.",
        "",
        "| class | operating point | threshold | sensitivity [95 % CI] | specificity [95 % CI] | patients |",
        "| --- | --- | ---: | --- | --- | ---: |",
    ]
    for c in names:
        n_pat = metrics.get(f"classification/n_patients/{c}")
        n_pat = "" if n_pat is None else str(int(n_pat))
        lines.append(
            f"| {c} | chosen | {format_value(metrics.get(f'classification/threshold/{c}'))} | "
            f"{ci(f'classification/sensitivity/{c}')} | {ci(f'classification/specificity/{c}')} | {n_pat} |"
        )
        for op in ops:
            lines.append(
                f"| {c} | {op} | {format_value(metrics.get(f'classification/{op}/threshold/{c}'))} | "
                f"{ci(f'classification/{op}/sensitivity/{c}')} | {ci(f'classification/{op}/specificity/{c}')} | "
                f"{n_pat} |"
            )
    if metrics.get("classification/patients_known") == 0.0:
        lines += [
            "",
            "*Some images had no patient id: each of them was resampled as its own patient (the intervals are "
            "too narrow where a patient has several images).*",
        ]
    lines.append("")
    return lines


def explain_section(metrics: Mapping[str, float | None], class_names: Sequence[str], method: str) -> list[str]:
    """The "Explanations (saliency)" section, from the ``explain/...`` keys
    (:class:`monai_mcx.handlers.explain.SaliencyEvaluation`).

    Args:
        metrics: the flat metrics.
        class_names: the classes, in order (a class without images is left out).
        method: how the saliency was computed, in words (e.g. ``"Grad-CAM on `stride32`"``).

    Returns:
        The markdown lines; empty without ``explain/pointing_game``.
    """
    if "explain/pointing_game" not in metrics:
        return []
    v = format_value
    n = metrics.get("explain/n_images")
    n_box = metrics.get("explain/n_images_top_box")
    lines = [
        "## Explanations (saliency)",
        "",
        f"Does the diagnosis look at the lesion? {method}, scored on the {int(n or 0)} evaluated images that are "
        "positive for a class and have a true lesion (mask or boxes), in the network's geometry. *Pointing game*: "
        "share of the images whose saliency maximum lies inside the truth; *mass inside*: mean share of the "
        "saliency inside the truth. The baseline is a centred Gaussian (sd a quarter of the width and height): "
        "a saliency that does not beat it says nothing about the lesion.",
        "",
        "| class | images | pointing game | baseline | mass inside | baseline | top-box agreement |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for c in [None, *class_names]:
        suf = "" if c is None else f"/{c}"
        if c is not None and not metrics.get(f"explain/n_images{suf}"):
            continue
        lines.append(
            f"| {'all (mean over classes)' if c is None else c} | {int(metrics.get(f'explain/n_images{suf}') or 0)} "
            f"| {v(metrics.get(f'explain/pointing_game{suf}'))} "
            f"| {v(metrics.get(f'explain/pointing_game/baseline{suf}'))} "
            f"| {v(metrics.get(f'explain/mass_inside{suf}'))} "
            f"| {v(metrics.get(f'explain/mass_inside/baseline{suf}'))} "
            f"| {v(metrics.get(f'explain/top_box_agreement{suf}'))} |"
        )
    lines += [
        "",
        f"*Top-box agreement*: share of the images whose saliency maximum lies inside the localization head's "
        f"top-scoring box (ungated; {int(n_box or 0)} images have a decoded box); the top box's own centre lies "
        f"inside the truth for {v(metrics.get('explain/top_box_pointing_game'))} of them, and "
        f"{v(metrics.get('explain/top_box_mass_inside'))} of the saliency mass falls inside it. Keys "
        "`explain/...` of `metrics.json`; the gallery shows the saliency of each case.",
        "",
    ]
    return lines


def plots_section(
    curve_links: Sequence[tuple[str, str, str]], dice_link: str | None, gallery_link: str | None
) -> list[str]:
    """The "Plots" section: links to and images of the plots written.

    Args:
        curve_links: ``(class, ROC PNG, PR PNG)`` per class with both label values.
        dice_link: the Dice histogram, or None.
        gallery_link: the gallery, or None.

    Returns:
        The markdown lines.
    """
    lines = ["## Plots", ""]
    if curve_links:
        lines += ["| class | ROC | precision-recall |", "| --- | --- | --- |"]
        lines += [f"| {n} | [{roc}]({roc}) | [{pr}]({pr}) |" for n, roc, pr in curve_links]
        lines.append("")
        for n, roc, pr in curve_links:
            lines += [f"![ROC {n}]({roc}) ![PR {n}]({pr})", ""]
    else:
        lines += ["No ROC/PR curves: no class with both positive and negative labels.", ""]
    if dice_link:
        lines += [
            f"Dice of the images with a lesion: [{dice_link}]({dice_link})",
            "",
            f"![Dice histogram]({dice_link})",
            "",
        ]
    if gallery_link:
        lines += [
            f"Best and worst cases (by Dice where a true mask exists, else by box IoU): [{gallery_link}]({gallery_link})",
            "",
            f"![gallery]({gallery_link})",
            "",
        ]
    return lines
