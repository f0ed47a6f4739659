"""Anchors for the localization head: MONAI's shape-based anchor generator and data-driven shapes.

Semantics of :func:`make_anchor_generator` (MONAI
:class:`~monai.apps.detection.utils.anchor_utils.AnchorGeneratorWithAnchorShape`, 2D, ``indexing="ij"``):

- ``base_anchor_shapes``: A shapes ``[w, h]`` **in input-image pixels**, ``w`` along spatial dim 0
  (x) and ``h`` along dim 1 (y), used as they are on the **first (finest) head level** — with
  MultiCheXNet's default ``loc_feature_levels=(1, 2, 3)`` that is the stride-8 map. ``A`` must equal
  the network's ``num_anchors``.
- ``feature_map_scales``: one multiplier per head level, finest first; level ``l`` uses the shapes
  ``feature_map_scales[l] * base_anchor_shapes``. ``len(feature_map_scales)`` must equal the number of
  head levels; ``(1, 2, 4)`` follows the strides 8/16/32 of the default levels (``stride_l / stride_0``).
- MONAI rounds each half-size to an integer (``round(w/2)``), so an anchor is ``2*round(w*s/2)`` wide.
- Anchor centres at level ``l`` are ``i * stride + stride // 2`` along each axis, with
  ``stride = image_size // feature_size`` (integer, per axis, computed from the actual map sizes).
- Order: levels finest first; within a level position ``(i, j)`` row-major (``i`` along dim 0), then
  the A shapes. This matches :func:`monai_mcx.networks.box_decoding.flatten_head_maps`.

:func:`fit_anchor_shapes` returns shapes in exactly this convention (base shapes at scale 1).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from monai.apps.detection.utils.anchor_utils import AnchorGeneratorWithAnchorShape

__all__ = ["make_anchor_generator", "fit_anchor_shapes", "shape_iou"]


def make_anchor_generator(
    base_anchor_shapes: Sequence[Sequence[float]], feature_map_scales: Sequence[float] = (1, 2, 4)
) -> AnchorGeneratorWithAnchorShape:
    """MONAI ``AnchorGeneratorWithAnchorShape`` for 2D images (see the module docstring for the semantics).

    Args:
        base_anchor_shapes: A shapes ``[w, h]`` in image pixels at the finest head level.
        feature_map_scales: per-head-level multipliers, finest first.

    Returns:
        the generator; ``gen(images (B, C, W, H), head_maps) -> list of B (N, 4) xyxy tensors``.
    """
    shapes = [[float(v) for v in s] for s in base_anchor_shapes]
    if not shapes or any(len(s) != 2 or min(s) <= 0 for s in shapes):
        raise ValueError(f"base_anchor_shapes must be a non-empty list of positive [w, h], got {base_anchor_shapes}.")
    scales = [float(s) for s in feature_map_scales]
    if not scales or min(scales) <= 0:
        raise ValueError(f"feature_map_scales must be positive, got {feature_map_scales}.")
    return AnchorGeneratorWithAnchorShape(feature_map_scales=scales, base_anchor_shapes=shapes, indexing="ij")


def shape_iou(wh1: np.ndarray, wh2: np.ndarray) -> np.ndarray:
    """IoU of centred boxes given by shapes: ``wh1`` ``(N, 2)``, ``wh2`` ``(M, 2)`` -> ``(N, M)``."""
    inter = np.minimum(wh1[:, None, 0], wh2[None, :, 0]) * np.minimum(wh1[:, None, 1], wh2[None, :, 1])
    union = (wh1[:, 0] * wh1[:, 1])[:, None] + (wh2[:, 0] * wh2[:, 1])[None, :] - inter
    return inter / np.maximum(union, 1e-12)


def _to_shapes(boxes) -> np.ndarray:
    arrays = []
    for b in boxes:
        if b is None:
            continue
        a = b.detach().cpu().numpy() if isinstance(b, torch.Tensor) else np.asarray(b, dtype=np.float64)
        a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
        arrays.append(a)
    if not arrays:
        return np.zeros((0, 2))
    allb = np.concatenate(arrays, axis=0)
    wh = np.stack([allb[:, 2] - allb[:, 0], allb[:, 3] - allb[:, 1]], axis=1)
    return wh[(wh[:, 0] > 0) & (wh[:, 1] > 0)]


def _kmeans_scaled(wh: np.ndarray, centres: np.ndarray, scales: np.ndarray, iters: int) -> tuple[np.ndarray, float]:
    """k-means with distance 1 - IoU where cluster k stands for the family ``{s * centre_k, s in scales}``."""
    k = centres.shape[0]
    prev = None
    for _ in range(iters):
        cand = (scales[None, :, None] * centres[:, None, :]).reshape(-1, 2)  # (k*S, 2), index k*S + s
        iou = shape_iou(wh, cand).reshape(len(wh), k, len(scales))
        best = iou.reshape(len(wh), -1).argmax(1)
        assign_k, assign_s = best // len(scales), best % len(scales)
        if prev is not None and np.array_equal(prev, best):
            break
        prev = best
        normalised = wh / scales[assign_s][:, None]  # each box brought to scale 1
        for c in range(k):
            members = normalised[assign_k == c]
            if len(members):
                centres[c] = np.median(members, axis=0)
            else:  # empty cluster: restart it on the worst-covered box
                worst = iou.reshape(len(wh), -1).max(1).argmin()
                centres[c] = normalised[worst]
    cand = (scales[None, :, None] * centres[:, None, :]).reshape(-1, 2)
    mean_iou = float(shape_iou(wh, cand).max(1).mean())
    return centres, mean_iou


def fit_anchor_shapes(
    boxes,
    num_anchors: int = 3,
    feature_map_scales: Sequence[float] = (1, 2, 4),
    seed: int = 0,
    n_init: int = 5,
    max_iter: int = 100,
) -> list[list[float]]:
    """Fit ``num_anchors`` base anchor shapes to training boxes by k-means with ``1 - IoU`` distance.

    The anchors the generator produces are the family ``{s * base_k}`` over ``feature_map_scales``;
    the clustering respects that: each box is assigned to the (shape, scale) pair of highest IoU
    (boxes and anchors compared centred, i.e. by shape only), and each base shape is updated to the
    median of its boxes' shapes divided by their assigned scale. The best of ``n_init`` seeded
    restarts (highest mean best-IoU) is kept.

    Args:
        boxes: list of ``(N_i, 4)`` arrays/tensors of ``xyxy`` boxes in image pixels (the ones the
            network sees, i.e. after resizing); degenerate boxes are ignored.
        num_anchors: A, number of base shapes.
        feature_map_scales: the scales the anchor generator will use (see :func:`make_anchor_generator`).
        seed: random seed of the initialisation.
        n_init: number of restarts.
        max_iter: iterations per restart.

    Returns:
        ``[[w, h], ...]`` (A shapes, sorted by area, rounded to 0.1 px) in image pixels at the finest
        head level, ready for ``make_anchor_generator(shapes, feature_map_scales)``.

    Raises:
        ValueError: fewer valid boxes than ``num_anchors``.
    """
    wh = _to_shapes(boxes)
    if len(wh) < num_anchors:
        raise ValueError(f"fit_anchor_shapes needs at least num_anchors={num_anchors} boxes, got {len(wh)}.")
    scales = np.asarray([float(s) for s in feature_map_scales], dtype=np.float64)
    rng = np.random.default_rng(seed)
    best_centres, best_score = None, -1.0
    for _ in range(max(1, n_init)):
        idx = rng.choice(len(wh), size=num_anchors, replace=False)
        # start each centre at scale 1 from a random box brought to the smallest scale covering it
        init = wh[idx] / scales.min()
        centres, score = _kmeans_scaled(wh, init.copy(), scales, max_iter)
        if score > best_score:
            best_centres, best_score = centres, score
    order = np.argsort(best_centres[:, 0] * best_centres[:, 1])
    return [[round(float(w), 1), round(float(h), 1)] for w, h in best_centres[order]]
