"""Plots and overlays (as ``monai.visualize``): the evaluation report's figures, the best/worst gallery, and the
prediction and saliency overlays written by inference and logged to TensorBoard.

- :mod:`~monai_mcx.visualize.plots`: ROC, precision-recall, reliability diagram, Dice histogram (one PNG each);
- :mod:`~monai_mcx.visualize.gallery`: one case drawn on a matplotlib ``Axes`` and the best/worst gallery figure;
- :mod:`~monai_mcx.visualize.overlays`: RGB pictures of one image (mask tint, boxes with scores, contours, saliency).

The numbers drawn come from :mod:`monai_mcx.metrics`; the saliency maps from :mod:`monai_mcx.explain`.
"""

from .gallery import draw_case, render_case, save_gallery
from .overlays import (
    PRED_RGB,
    TRUE_RGB,
    overlay_image,
    overlay_rgb,
    saliency_overlay,
    saliency_png_bytes,
    saliency_rgb,
)
from .plots import (
    format_value,
    save_dice_histogram,
    save_figure,
    save_pr_curve,
    save_reliability_diagram,
    save_roc_curve,
)

__all__ = [
    "format_value",
    "save_figure",
    "save_roc_curve",
    "save_pr_curve",
    "save_reliability_diagram",
    "save_dice_histogram",
    "draw_case",
    "render_case",
    "save_gallery",
    "overlay_image",
    "saliency_overlay",
    "saliency_png_bytes",
    "overlay_rgb",
    "saliency_rgb",
    "TRUE_RGB",
    "PRED_RGB",
]
