"""The evaluation report's gallery: one panel per case (the X-ray with contours, boxes, scores, saliency), in a grid.

:func:`draw_case` draws one case on a matplotlib ``Axes``; :func:`render_case` renders one to an RGB array;
:func:`save_gallery` lays rows of cases (the best and the worst ones in the report), each optionally with a second
panel below it (its saliency), into ``plots/gallery.png``.

Geometry: arrays are ``(W, H)`` (x = dim 0); :func:`draw_case` transposes once for ``imshow`` and draws boxes with x
along the columns, in pixel-edge coordinates (``extent=(0, W, H, 0)``). matplotlib's object API with the Agg canvas
(no pyplot state, no display), imported inside the functions that draw, so that importing :mod:`monai_mcx` does not
load it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from monai_mcx.keys import BatchKeys
from monai_mcx.visualize.overlays import _np
from monai_mcx.visualize.plots import save_figure

__all__ = ["draw_case", "render_case", "save_gallery"]


def draw_case(ax: Any, case: dict, show_scores: bool = True, linewidth: float = 1.5) -> None:
    """Draw one case on a matplotlib ``Axes``.

    ``case`` keys: ``image`` ``(W, H)``; optional ``true_mask``/``pred_mask`` ``(W, H)`` (bool or probabilities,
    ``> 0.5`` inside), ``true_boxes``/``pred_boxes`` ``(N, 4)`` xyxy in image pixels (x along dim 0),
    ``pred_scores`` ``(N,)``, ``saliency`` ``(W, H)`` in [0, 1] (a jet heat map blended over the X-ray with
    opacity ``0.5 * saliency``), ``title``. The image is shown transposed (rows = y) with ``extent=(0, W, H, 0)``
    so a box ``[x1, y1, x2, y2]`` is the rectangle of columns ``x1..x2`` and rows ``y1..y2``. Truth green,
    prediction red.
    """
    # matplotlib: imported on use only (module docstring)
    from matplotlib.patches import Rectangle

    img = _np(case[BatchKeys.IMAGE]).astype(np.float32)
    w, h = img.shape
    ax.imshow(
        img.T,
        cmap="gray",
        extent=(0, w, h, 0),
        interpolation="nearest",
        vmin=float(img.min()),
        vmax=float(img.max()) if img.max() > img.min() else float(img.min()) + 1,
    )
    if case.get("saliency") is not None:
        sal = np.clip(np.nan_to_num(_np(case["saliency"]).astype(np.float32)), 0, 1)
        if sal.shape != img.shape:
            raise ValueError(f"draw_case: saliency {sal.shape} and image {img.shape} differ.")
        ax.imshow(sal.T, cmap="jet", vmin=0, vmax=1, alpha=0.5 * sal.T, extent=(0, w, h, 0), interpolation="bilinear")
    xs, ys = np.arange(w) + 0.5, np.arange(h) + 0.5
    for key, colour in (("true_mask", "#00ff00"), ("pred_mask", "#ff0000")):
        m = case.get(key)
        if m is None:
            continue
        m = _np(m) > 0.5
        if m.any() and not m.all():
            ax.contour(xs, ys, m.T.astype(np.float32), levels=[0.5], colors=colour, linewidths=linewidth)
    for key, colour in (("true_boxes", "#00ff00"), ("pred_boxes", "#ff0000")):
        boxes = case.get(key)
        if boxes is None:
            continue
        boxes = _np(boxes).reshape(-1, 4)
        scores = _np(case.get("pred_scores", np.zeros(len(boxes)))).reshape(-1) if key == "pred_boxes" else None
        for k, (x1, y1, x2, y2) in enumerate(boxes):
            ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=colour, linewidth=linewidth))
            if show_scores and scores is not None and k < len(scores):
                ax.text(x1, max(y1 - 1, 0), f"{scores[k]:.2f}", color=colour, fontsize=6, va="bottom", ha="left")
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)
    ax.set_xticks([])
    ax.set_yticks([])
    if case.get("title"):
        ax.set_title(case["title"], fontsize=7)


def render_case(case: dict, scale: int = 4, show_scores: bool = False, linewidth: float = 1.0) -> np.ndarray:
    """Render one case with :func:`draw_case` to an RGB array ``(H * scale, W * scale, 3)`` (the axes fill the
    figure, so image pixel ``(x, y)`` covers output rows ``y*scale..`` and columns ``x*scale..``)."""
    # matplotlib: imported on use only (module docstring)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    w, h = _np(case[BatchKeys.IMAGE]).shape
    dpi = 100
    fig = Figure(figsize=(w * scale / dpi, h * scale / dpi), dpi=dpi)
    ax = fig.add_axes((0, 0, 1, 1))
    draw_case(ax, dict(case, title=None), show_scores=show_scores, linewidth=linewidth)
    ax.set_axis_off()
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def save_gallery(
    path: str | os.PathLike,
    rows: Sequence[Sequence[dict]],
    below: Sequence[Sequence[dict]] | None = None,
    suptitle: str = "",
) -> None:
    """Write a grid of :func:`draw_case` panels as a PNG (2.3 x 2.5 inches per panel, 100 dpi), atomically.

    Args:
        path: the PNG to write (``plots/gallery.png`` in the report).
        rows: one list of cases per row (the report: best, worst), each case a :func:`draw_case` dict with its
            ``title``; the grid has as many columns as the longest row.
        below: the same shape as ``rows``: a second panel drawn under each case (the report: its saliency);
            None or empty: one panel per case.
        suptitle: the figure's title (font size 8).
    """
    # matplotlib: imported on use only (module docstring)
    from matplotlib.figure import Figure

    ncol = max(len(cases) for cases in rows)
    per = 2 if below else 1
    fig = Figure(figsize=(2.3 * ncol, 2.5 * len(rows) * per))
    for r, cases in enumerate(rows):
        for c, case in enumerate(cases):
            ax = fig.add_subplot(len(rows) * per, ncol, r * per * ncol + c + 1)
            draw_case(ax, case)
            if below:
                ax = fig.add_subplot(len(rows) * per, ncol, (r * per + 1) * ncol + c + 1)
                draw_case(ax, below[r][c])
    fig.suptitle(suptitle, fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
