"""Does the saliency point at the lesion? The pointing game and the saliency mass inside the truth.

For a positive image with a known lesion (boxes or mask), a saliency map ``(W, H)`` (MONAI order, x first) is scored
by

- **pointing game** (Zhang et al., *Top-down Neural Attention by Excitation Backprop*, ECCV 2016): a hit when the
  map's maximum lies inside the truth (within ``tolerance`` pixels of it; Zhang et al. use 15 px at 224 px);
- **mass inside**: the share of the map's total mass that lies inside the truth (``sum(s * truth) / sum(s)``).

Both are compared with the same numbers for a trivial baseline, a centred Gaussian (:func:`centred_gaussian`): lesions
of chest X-rays are mostly in the middle of the lung fields, so a saliency method must beat "look at the centre".
The explanation's consistency with the model's own boxes is measured by the same two numbers with the
localization head's top-scoring box in place of the truth (``top_box_agreement``, ``top_box_mass_inside``), next to
the top box's own pointing game (its centre inside the truth, ``top_box_pointing_game``).

An all-zero map (no positive evidence: Grad-CAM's ReLU removed everything) scores a miss and is treated as uniform for
the mass (mass inside = the truth's share of the image). Box convention: ``[x1, y1, x2, y2]`` in pixel edges
(``StandardMode``), pixel ``(i, j)`` is inside when its centre ``(i + 0.5, j + 0.5)`` is.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["boxes_to_region", "truth_region", "centred_gaussian", "pointing_hit", "mass_inside", "PointingGame"]


def _np(x: Any, dtype=np.float64) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def boxes_to_region(boxes: Any, shape_wh: Sequence[int]) -> np.ndarray:
    """Union of boxes ``(N, 4)`` ``[x1, y1, x2, y2]`` as a bool region ``(W, H)`` (pixel centres inside a box)."""
    w, h = (int(s) for s in shape_wh)
    region = np.zeros((w, h), dtype=bool)
    b = _np(boxes).reshape(-1, 4)
    cx = np.arange(w) + 0.5
    cy = np.arange(h) + 0.5
    for x1, y1, x2, y2 in b:
        region |= ((cx >= x1) & (cx < x2))[:, None] & ((cy >= y1) & (cy < y2))[None, :]
    return region


def truth_region(shape_wh: Sequence[int], boxes: Any = None, mask: Any = None) -> np.ndarray:
    """The true lesion region ``(W, H)`` bool: the mask when given (``(W, H)`` or ``(1, W, H)``, > 0.5), united
    with the boxes when given. Raises when the mask's shape differs from ``shape_wh``."""
    w, h = (int(s) for s in shape_wh)
    region = np.zeros((w, h), dtype=bool)
    if mask is not None:
        m = _np(mask)
        if m.ndim == 3 and m.shape[0] == 1:
            m = m[0]
        if m.shape != (w, h):
            raise ValueError(f"truth_region: mask shape {m.shape} differs from the saliency's {(w, h)}.")
        region |= m > 0.5
    if boxes is not None:
        region |= boxes_to_region(boxes, (w, h))
    return region


def centred_gaussian(shape_wh: Sequence[int], sigma_fraction: float = 0.25) -> np.ndarray:
    """A centred isotropic-in-relative-units Gaussian ``(W, H)`` in [0, 1] (1 at the centre), standard deviation
    ``sigma_fraction`` of the width along x and of the height along y: the trivial "look at the middle" map."""
    w, h = (int(s) for s in shape_wh)
    x = (np.arange(w) + 0.5 - w / 2) / (sigma_fraction * w)
    y = (np.arange(h) + 0.5 - h / 2) / (sigma_fraction * h)
    return np.exp(-0.5 * (x[:, None] ** 2 + y[None, :] ** 2))


def pointing_hit(saliency: Any, region: np.ndarray, tolerance: float = 0.0) -> bool:
    """Whether the maximum of ``saliency`` ``(W, H)`` lies inside ``region`` ``(W, H)`` (or within ``tolerance`` pixels
    of it). Ties: any maximal pixel counts. An all-zero map or an empty region is a miss."""
    s = _np(saliency)
    if s.shape != region.shape:
        raise ValueError(f"pointing_hit: saliency {s.shape} and region {region.shape} differ.")
    peak = s.max() if s.size else 0.0
    if not region.any() or not peak > 0:
        return False
    at_max = s >= peak
    if tolerance > 0:
        from scipy.ndimage import distance_transform_edt

        dist = distance_transform_edt(~region)
        return bool(np.any(dist[at_max] <= tolerance))
    return bool(np.any(region[at_max]))


def mass_inside(saliency: Any, region: np.ndarray) -> float:
    """``sum(saliency * region) / sum(saliency)`` for a non-negative map ``(W, H)``; an all-zero map counts as
    uniform (the region's share of the image)."""
    s = np.clip(_np(saliency), 0, None)
    if s.shape != region.shape:
        raise ValueError(f"mass_inside: saliency {s.shape} and region {region.shape} differ.")
    total = float(s.sum())
    if not total > 0:
        return float(region.mean()) if region.size else float("nan")
    return float(s[region].sum() / total)


class PointingGame:
    """Accumulate the pointing game and mass-inside scores per class, with the centred-Gaussian baseline and the
    consistency with the localization head's top box.

    Args:
        class_names: the classes whose maps are scored.
        tolerance: pointing tolerance in pixels of the maps' geometry.
        sigma_fraction: of the Gaussian baseline (:func:`centred_gaussian`).
        prefix: key prefix (``"explain"``).

    :meth:`add` one positive image with a known, non-empty truth at a time; :meth:`compute` returns the flat keys
    (``NaN`` for a class without images), each also per class with ``/<class>`` appended:

    - ``<prefix>/pointing_game``, ``<prefix>/mass_inside``: the saliency against the truth;
    - ``<prefix>/pointing_game/baseline``, ``<prefix>/mass_inside/baseline``: the centred Gaussian against the truth;
    - ``<prefix>/top_box_agreement``: the saliency maximum inside the localization head's top predicted box (over
      the images that have a predicted box); ``<prefix>/top_box_mass_inside``: the saliency mass inside it;
    - ``<prefix>/top_box_pointing_game``: the top box's centre inside the truth (the box head's own pointing game);
    - ``<prefix>/n_images``, ``<prefix>/n_images_top_box``: how many images were scored.

    The keys without a class are the means over the classes that have images (``n_images``: the total).
    """

    #: internal name -> key stem (``<prefix>/<stem>[/<class>]``)
    KEYS = {
        "pointing_game": "pointing_game",
        "pointing_game_baseline": "pointing_game/baseline",
        "mass_inside": "mass_inside",
        "mass_inside_baseline": "mass_inside/baseline",
        "top_box_pointing_game": "top_box_pointing_game",
        "pointing_game_top_box": "top_box_agreement",
        "mass_inside_top_box": "top_box_mass_inside",
    }
    _METRICS = tuple(KEYS)

    def __init__(
        self, class_names: Sequence[str], tolerance: float = 0.0, sigma_fraction: float = 0.25, prefix: str = "explain"
    ) -> None:
        self.class_names = list(class_names)
        self.tolerance = float(tolerance)
        self.sigma_fraction = float(sigma_fraction)
        self.prefix = prefix
        self._baselines: dict[tuple[int, int], np.ndarray] = {}
        self.reset()

    def reset(self) -> None:
        self._rows: dict[str, dict[str, list[float]]] = {c: {m: [] for m in self._METRICS} for c in self.class_names}

    def _baseline(self, shape: tuple[int, int]) -> np.ndarray:
        if shape not in self._baselines:
            self._baselines[shape] = centred_gaussian(shape, self.sigma_fraction)
        return self._baselines[shape]

    def add(self, class_name: str, saliency: Any, region: np.ndarray, top_box: Any = None) -> None:
        """Score one image.

        Args:
            class_name: the class the map explains (the image is positive for it).
            saliency: ``(W, H)`` map in [0, 1].
            region: ``(W, H)`` bool truth (:func:`truth_region`), non-empty.
            top_box: the localization head's highest-scoring box ``[x1, y1, x2, y2]`` in the same geometry, or None.
        """
        if class_name not in self._rows:
            raise ValueError(f"PointingGame: unknown class {class_name!r} (known: {self.class_names}).")
        s = _np(saliency)
        region = np.asarray(region, dtype=bool)
        if s.shape != region.shape:
            raise ValueError(f"PointingGame.add: saliency {s.shape} and truth {region.shape} differ.")
        if not region.any():
            raise ValueError("PointingGame.add: the truth is empty (score only positive images with a lesion).")
        base = self._baseline(tuple(int(v) for v in s.shape))
        r = self._rows[class_name]
        r["pointing_game"].append(float(pointing_hit(s, region, self.tolerance)))
        r["pointing_game_baseline"].append(float(pointing_hit(base, region, self.tolerance)))
        r["mass_inside"].append(mass_inside(s, region))
        r["mass_inside_baseline"].append(mass_inside(base, region))
        if top_box is not None and len(_np(top_box).reshape(-1)) == 4:
            b = _np(top_box).reshape(4)
            centre = ((b[0] + b[2]) / 2, (b[1] + b[3]) / 2)
            i, j = int(math.floor(centre[0])), int(math.floor(centre[1]))
            inside = 0 <= i < region.shape[0] and 0 <= j < region.shape[1] and bool(region[i, j])
            box_region = boxes_to_region(b[None], s.shape)
            r["top_box_pointing_game"].append(float(inside))
            r["pointing_game_top_box"].append(float(pointing_hit(s, box_region, self.tolerance)))
            r["mass_inside_top_box"].append(mass_inside(s, box_region))

    def compute(self) -> dict[str, float]:
        """The flat metrics (class docstring)."""
        out: dict[str, float] = {}
        means: dict[str, list[float]] = {m: [] for m in self._METRICS}
        for c in self.class_names:
            r = self._rows[c]
            for m in self._METRICS:
                v = float(np.mean(r[m])) if r[m] else float("nan")
                out[f"{self.prefix}/{self.KEYS[m]}/{c}"] = v
                if not math.isnan(v):
                    means[m].append(v)
            out[f"{self.prefix}/n_images/{c}"] = float(len(r["pointing_game"]))
            out[f"{self.prefix}/n_images_top_box/{c}"] = float(len(r["pointing_game_top_box"]))
        for m, vs in means.items():
            out[f"{self.prefix}/{self.KEYS[m]}"] = float(np.mean(vs)) if vs else float("nan")
        out[f"{self.prefix}/n_images"] = float(sum(len(self._rows[c]["pointing_game"]) for c in self.class_names))
        out[f"{self.prefix}/n_images_top_box"] = float(
            sum(len(self._rows[c]["pointing_game_top_box"]) for c in self.class_names)
        )
        return out
