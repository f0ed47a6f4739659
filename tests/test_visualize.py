"""Tests of monai_mcx.visualize: each plot writes a PNG of its documented size, the prediction overlay's boxes.

Geometry of the gallery panels and the TensorBoard overlays: tests/test_report.py; the mask tint: test_inference.py;
the saliency overlay: test_explain.py.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from monai_mcx.visualize import (
    overlay_image,
    save_dice_histogram,
    save_gallery,
    save_pr_curve,
    save_reliability_diagram,
    save_roc_curve,
)

#: matplotlib's C3 (the ROC operating point) as RGB
C3 = np.array([0xD6, 0x27, 0x28])


def _png(path) -> np.ndarray:
    assert path.is_file() and path.stat().st_size > 1000, path
    with Image.open(path) as im:
        assert im.format == "PNG"
        return np.asarray(im.convert("RGB"))


def _scores(n: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (np.arange(n) % 2).astype(float)
    return np.clip(0.3 * y + 0.7 * rng.random(n), 0, 1), y


def test_plots_write_pngs_of_the_documented_size(tmp_path):
    p, y = _scores()
    save_roc_curve(tmp_path / "a" / "roc.png", p, y, class_name="pneumonia", auc=0.8)  # creates the folder
    save_pr_curve(tmp_path / "pr.png", p, y, class_name="pneumonia")
    save_reliability_diagram(tmp_path / "rel.png", y, p, p**2, class_name="pneumonia")
    save_dice_histogram(tmp_path / "dice.png", [0.9, 0.5, 0.7], [0.9, 0.0, 0.7])
    sizes = {"a/roc.png": (400, 400), "pr.png": (400, 400), "rel.png": (500, 420), "dice.png": (320, 500)}
    for name, (rows, cols) in sizes.items():
        assert _png(tmp_path / name).shape == (rows, cols, 3), name


def test_roc_draws_the_operating_point_only_with_a_threshold(tmp_path):
    p, y = _scores()
    save_roc_curve(tmp_path / "plain.png", p, y)
    save_roc_curve(tmp_path / "thr.png", p, y, threshold=0.5)

    def c3_pixels(name):
        return int((np.abs(_png(tmp_path / name).astype(int) - C3).sum(-1) < 30).sum())

    assert c3_pixels("plain.png") == 0 and c3_pixels("thr.png") > 10


def test_gallery_has_one_panel_per_case_and_one_below_each_with_saliency(tmp_path):
    image = np.linspace(0, 1, 24 * 16, dtype=np.float32).reshape(24, 16)  # (W, H)
    case = {"image": image, "pred_boxes": np.array([[2.0, 2.0, 10.0, 8.0]]), "pred_scores": [0.7], "title": "a"}
    rows = [[case, case], [case]]
    save_gallery(tmp_path / "g.png", rows, suptitle="title")
    assert _png(tmp_path / "g.png").shape == (500, 460, 3)  # 2 rows x 2 columns of 2.3 x 2.5 inches at 100 dpi
    below = [[dict(case, saliency=image)] * 2, [dict(case, saliency=image)]]
    save_gallery(tmp_path / "s.png", rows, below)
    assert _png(tmp_path / "s.png").shape == (1000, 460, 3)
    with pytest.raises(ValueError, match="saliency"):
        save_gallery(tmp_path / "bad.png", [[dict(case, saliency=image.T)]])


def test_overlay_image_box_edges_in_yellow_and_far_pixels_unchanged():
    gray = np.full((40, 60), 0.5, dtype=np.float32)  # rows x cols
    x1, y1, x2, y2 = 5, 4, 45, 30  # pixel edges: columns 5..44, rows 4..29
    rgb = np.asarray(overlay_image(gray, None, boxes=[[x1, y1, x2, y2]], scores=[0.87]))
    assert rgb.shape == (40, 60, 3)
    yellow = np.array([255, 255, 0])
    for r, c in [
        (y1, x1),
        (y1, x2 - 1),
        (y2 - 1, x1),
        (y2 - 1, x2 - 1),
        (y1, 25),
        (y2 - 1, 25),
        (17, x1),
        (17, x2 - 1),
    ]:
        assert (rgb[r, c] == yellow).all(), (r, c)
    outside = np.ones((40, 60), dtype=bool)
    outside[y1:y2, x1:x2] = False
    assert (rgb[outside] == 127).all()  # floor(0.5 * 255): the X-ray's gray, untouched
    assert (rgb[y2 - 3, x1 + 3] == 127).all()  # inside, away from the edge and the score text
    plain = np.asarray(overlay_image(gray, None, boxes=[[x1, y1, x2, y2]]))
    assert (plain != rgb).any()  # the score is written


def test_importing_visualize_does_not_load_matplotlib():
    code = "import sys, monai_mcx.visualize; sys.exit('matplotlib' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
