"""Explanations of the diagnosis: per-class Grad-CAM saliency (MONAI's ``monai.visualize``) and whether it points at
the lesion (pointing game, saliency mass inside the truth, against a centred-Gaussian baseline)."""

from .pointing import PointingGame, boxes_to_region, centred_gaussian, mass_inside, pointing_hit, truth_region
from .saliency import (
    DEFAULT_LAYER,
    DEFAULT_SALIENCY,
    SALIENCY_METHODS,
    ClassLogits,
    SaliencyMaps,
    saliency_nifti_bytes,
    saliency_result,
    saliency_settings,
    to_original_geometry,
)

__all__ = [
    "DEFAULT_LAYER",
    "DEFAULT_SALIENCY",
    "SALIENCY_METHODS",
    "saliency_settings",
    "saliency_result",
    "ClassLogits",
    "SaliencyMaps",
    "to_original_geometry",
    "saliency_nifti_bytes",
    "PointingGame",
    "boxes_to_region",
    "truth_region",
    "centred_gaussian",
    "pointing_hit",
    "mass_inside",
]
