"""The evaluation report's plots, one PNG each: ROC and precision-recall curves, reliability diagram, Dice histogram.

Each ``save_*`` function draws one figure with matplotlib's object API (``Figure`` + the Agg canvas: no pyplot
state, no display) and writes it atomically with :func:`save_figure`. The numbers come from :mod:`monai_mcx.metrics`
(:func:`~monai_mcx.metrics.roc_curve`, :func:`~monai_mcx.metrics.pr_curve`,
:func:`~monai_mcx.metrics.reliability_curve`, ...); nothing is computed here that a metric does not already give.
matplotlib is imported inside the functions that draw, so that importing :mod:`monai_mcx` does not load it.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from monai_mcx.metrics.calibration import brier_score, reliability_curve
from monai_mcx.metrics.classification import _binary_inputs, expected_calibration_error
from monai_mcx.metrics.curves import pr_curve, roc_curve
from monai_mcx.utils import write_bytes_atomic

__all__ = [
    "format_value",
    "save_figure",
    "save_roc_curve",
    "save_pr_curve",
    "save_reliability_diagram",
    "save_dice_histogram",
]


def format_value(v: Any) -> str:
    """How the report (``report.md`` and the plots' legends) prints a metric: 4 decimals, ``n/a`` for undefined
    (``None``/NaN)."""
    if v is None:
        return "n/a"
    f = float(v)
    return "n/a" if math.isnan(f) else f"{f:.4f}"


def save_figure(fig: Any, path: str | os.PathLike, dpi: int = 100) -> None:
    """Write a matplotlib ``Figure`` as a PNG at ``dpi``, atomically (:func:`monai_mcx.utils.write_bytes_atomic`;
    the parent folder is created)."""
    # matplotlib: imported on use only (module docstring)
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, dpi=dpi, format="png")
    write_bytes_atomic(buf.getvalue(), path)


def save_roc_curve(
    path: str | os.PathLike,
    probs: Any,
    labels: Any,
    class_name: str = "",
    auc: float | None = None,
    threshold: float | None = None,
) -> None:
    """ROC curve of one class (:func:`monai_mcx.metrics.roc_curve`) with the chance diagonal, the AUC in the legend
    and the operating point at ``threshold`` (predict positive for ``prob >= threshold``) as a dot.

    Args:
        path: the PNG to write (``plots/roc_<class>.png`` in the report), 400 x 400 px.
        probs: ``(N,)`` probabilities.
        labels: ``(N,)`` labels, positive where ``> 0.5``; both values must occur.
        class_name: for the title.
        auc: printed in the legend (``n/a`` when None).
        threshold: the operating point drawn; None: none.
    """
    # matplotlib: imported on use only (module docstring)
    from matplotlib.figure import Figure

    p, y = np.asarray(probs), np.asarray(labels) > 0.5
    fpr, tpr = roc_curve(p, y)
    fig = Figure(figsize=(4, 4))
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(fpr, tpr, color="C0", label=f"AUC {format_value(auc)}")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    if threshold is not None:
        sens, spec = np.mean(p[y] >= threshold), np.mean(p[~y] < threshold)
        ax.plot([1 - spec], [sens], "o", color="C3", label=f"threshold {format_value(threshold)}")
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.set_title(f"ROC: {class_name} (n={len(y)}, {int(y.sum())} positive)", fontsize=9)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def save_pr_curve(path: str | os.PathLike, probs: Any, labels: Any, class_name: str = "") -> None:
    """Precision-recall curve of one class (:func:`monai_mcx.metrics.pr_curve`, drawn as a step function) with the
    prevalence as the chance line.

    Args:
        path: the PNG to write (``plots/pr_<class>.png`` in the report), 400 x 400 px.
        probs: ``(N,)`` probabilities.
        labels: ``(N,)`` labels, positive where ``> 0.5``; a positive must occur.
        class_name: for the title.
    """
    # matplotlib: imported on use only (module docstring)
    from matplotlib.figure import Figure

    y = np.asarray(labels) > 0.5
    rec, prec = pr_curve(np.asarray(probs), y)
    fig = Figure(figsize=(4, 4))
    ax = fig.add_subplot(1, 1, 1)
    ax.step(np.r_[0.0, rec], np.r_[prec[0], prec], where="post", color="C0")
    ax.axhline(float(y.mean()), color="grey", linestyle=":", linewidth=1, label=f"prevalence {y.mean():.3f}")
    ax.set_xlabel("recall (sensitivity)")
    ax.set_ylabel("precision")
    ax.set_title(f"Precision-recall: {class_name}", fontsize=9)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def save_reliability_diagram(
    path: str | os.PathLike,
    labels: Any,
    probs_before: Any,
    probs_after: Any | None = None,
    class_name: str = "",
    n_bins: int = 10,
) -> None:
    """Write a reliability diagram (PNG, atomically) for one class: observed fraction of positives against the mean
    predicted probability per bin (the bins of the ECE, :func:`monai_mcx.metrics.reliability_curve`), before and
    (optionally) after calibration, the diagonal of perfect calibration, and the number of images per bin below. The
    legend states ECE and Brier of each curve.

    Args:
        path: the PNG to write (``plots/reliability_<class>.png`` in the report), 420 x 500 px.
        labels: ``(N,)`` 0/1 labels.
        probs_before: ``(N,)`` raw probabilities.
        probs_after: ``(N,)`` calibrated probabilities, or None.
        class_name: for the title.
        n_bins: equal-width bins.
    """
    # matplotlib: imported on use only (module docstring)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.2, 5.0), dpi=100)
    FigureCanvasAgg(fig)
    ax, axh = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], color="0.6", linestyle="--", linewidth=1, label="perfect")
    edges = np.linspace(0, 1, n_bins + 1)
    curves = [("raw", probs_before, "tab:red")]
    if probs_after is not None:
        curves.append(("calibrated", probs_after, "tab:blue"))
    for i, (tag, probs, color) in enumerate(curves):
        mean_p, frac, count = reliability_curve(probs, labels, n_bins)
        ece = expected_calibration_error(probs, labels, n_bins)
        brier = brier_score(probs, labels)
        ax.plot(mean_p, frac, marker="o", color=color, label=f"{tag}: ECE {ece:.3f}, Brier {brier:.3f}")
        p, _ = _binary_inputs(probs, labels)
        width = (edges[1] - edges[0]) / len(curves)
        hist, _ = np.histogram(np.clip(p, 0, 1), bins=edges)
        axh.bar(edges[:-1] + i * width, hist, width=width, align="edge", color=color, alpha=0.7)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("fraction of positives")
    ax.set_title(f"Reliability: {class_name}" if class_name else "Reliability", fontsize=10)
    ax.legend(loc="upper left", fontsize=7)
    axh.set_xlabel("predicted probability")
    axh.set_ylabel("images")
    fig.tight_layout()
    save_figure(fig, path)


def save_dice_histogram(path: str | os.PathLike, dice: Sequence[float], dice_gated: Sequence[float]) -> None:
    """Histogram of per-image Dice (20 bins over [0, 1]): ungated filled, gated as an outline, means in the legend.

    Args:
        path: the PNG to write (``plots/dice_hist.png`` in the report), 500 x 320 px.
        dice: ungated Dice of the images with a non-empty true mask.
        dice_gated: the same images' gated Dice (0 where the gate removed the mask).
    """
    # matplotlib: imported on use only (module docstring)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 3.2))
    ax = fig.add_subplot(1, 1, 1)
    bins = np.linspace(0, 1, 21)
    ax.hist(dice, bins=bins, color="C0", alpha=0.7, label=f"ungated (mean {np.mean(dice):.3f})")
    ax.hist(
        dice_gated,
        bins=bins,
        histtype="step",
        color="C3",
        linewidth=1.5,
        label=f"gated (mean {np.mean(dice_gated):.3f})",
    )
    ax.set_xlabel("Dice (images with a lesion in the true mask)")
    ax.set_ylabel("images")
    ax.set_xlim(0, 1)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
