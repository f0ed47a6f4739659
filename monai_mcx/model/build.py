"""Building from a model description: the network, the anchor generator, the box decoder, the post-processor.

Pure functions of a :class:`~monai_mcx.model.ModelDescription`; nothing here reads a file (loading a trained
model -- description, weights and the hash check -- is :func:`monai_mcx.model.load_model`).
"""

from __future__ import annotations

from typing import Any

from monai_mcx.inferers import MultiCheXNetPostprocessor
from monai_mcx.keys import Task
from monai_mcx.model.description import ModelDescription
from monai_mcx.networks import BoxDecoder, MultiCheXNet, make_anchor_generator

__all__ = ["build_network", "build_anchor_generator", "build_box_decoder", "build_postprocessor"]


def build_network(description: ModelDescription, **extra: Any) -> MultiCheXNet:
    """A new :class:`~monai_mcx.networks.MultiCheXNet` (random weights) with the described architecture
    (:meth:`ModelDescription.network_args`, updated with ``extra``)."""
    return MultiCheXNet(**{**description.network_args(), **extra})


def build_anchor_generator(description: ModelDescription):
    """MONAI's ``AnchorGenerator`` for the described anchors (None without a localization head)."""
    if Task.LOCALIZATION not in description.tasks:
        return None
    return make_anchor_generator(description.base_anchor_shapes, feature_map_scales=description.feature_map_scales)


def build_box_decoder(description: ModelDescription, operating_point: bool = False) -> BoxDecoder | None:
    """The :class:`~monai_mcx.networks.BoxDecoder` of the described anchors (None without boxes).

    ``operating_point=False`` (evaluation: AP needs every candidate): scores from ``candidate_score_thresh``.
    ``operating_point=True`` (deployment): from ``max(candidate_score_thresh, box_score_threshold)``, i.e. only
    the boxes at the box operating point chosen on the validation split (all candidates when none was chosen).
    """
    gen = build_anchor_generator(description)
    if gen is None:
        return None
    score = float(description.candidate_score_thresh)
    if operating_point and description.box_score_threshold is not None:
        score = max(score, float(description.box_score_threshold))
    return BoxDecoder(
        gen,
        score_thresh=score,
        nms_thresh=description.nms_thresh,
        detections_per_img=description.detections_per_img,
    )


def build_postprocessor(description: ModelDescription, **overrides: Any) -> MultiCheXNetPostprocessor:
    """The :class:`~monai_mcx.inferers.MultiCheXNetPostprocessor` of a described model
    (:meth:`MultiCheXNetPostprocessor.from_description`: thresholds, calibration, gate rule, mask threshold, box
    operating point and the candidate box decoder); ``overrides`` replace single settings."""
    return MultiCheXNetPostprocessor.from_description(description, **overrides)
