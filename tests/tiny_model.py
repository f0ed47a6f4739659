"""A tiny described model for the inference tests: ``densenet-tiny``, whose gate is always positive and whose box
decoder keeps every candidate, so that every output (masks, boxes, overlays) is written."""

from __future__ import annotations

from pathlib import Path

import torch

from monai_mcx.model import ModelDescription, build_network, save_model

#: three small anchor shapes (w, h) in network pixels
ANCHORS = [[8, 8], [12, 12], [16, 10]]


def save_always_positive_model(ckpt: str | Path, spatial_size=(64, 64), **fields) -> ModelDescription:
    """Save a freshly initialised (seed 0) tiny MultiCheXNet and its description to ``ckpt`` (``model.pt``).

    Args:
        ckpt: the weights file; ``model.json`` is written beside it.
        spatial_size: the network input (W, H).
        fields: other description fields (e.g. ``mask_threshold``).

    Returns:
        The description.
    """
    torch.manual_seed(0)
    fields.setdefault("tasks", ["classification", "segmentation", "localization"])
    desc = ModelDescription(
        class_names=["pneumonia"],
        encoder="densenet-tiny",
        spatial_size=list(spatial_size),
        base_anchor_shapes=ANCHORS,
        class_thresholds={"pneumonia": 0.0},
        box_score_threshold=0.0,
        candidate_score_thresh=0.0,
        **fields,
    )
    Path(ckpt).parent.mkdir(parents=True, exist_ok=True)
    save_model(build_network(desc), desc, Path(ckpt))
    return desc
