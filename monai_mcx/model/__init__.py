"""A trained model: ``model.pt`` (a plain state dict) plus its description ``model.json``.

* :mod:`~monai_mcx.model.description`: the schema (:class:`ModelDescription`): encoder, tasks, class names, input
  channels, spatial size, intensity pipeline, anchors and box-decoder settings, per-class thresholds and how they
  were chosen, the gate rule, the mask threshold, the box operating point, calibration and saliency slots, a
  training summary, and ``weights_sha256``, the hash of the weights it belongs to;
* :mod:`~monai_mcx.model.reconcile`: config values against a description (a conflict names both values);
* :mod:`~monai_mcx.model.build`: description -> network, anchor generator, box decoder, post-processor;
* :mod:`~monai_mcx.model.files`: description files and the weights hash check;
* :mod:`~monai_mcx.model.load`: :func:`load_model`, the one way to get a trained model from disk;
* :mod:`~monai_mcx.model.merge`: merging sub-models, transfer to new classes, freezing the encoder;
* :mod:`~monai_mcx.model.legacy`: describing a checkpoint written before descriptions existed;
* command line: ``python -m monai_mcx.model {show,verify,describe} ...`` (:mod:`~monai_mcx.model.cli`).

The Ignite handlers that write descriptions during training and evaluation are
:class:`monai_mcx.handlers.DescriptionWriter` and :class:`monai_mcx.handlers.OperatingPointWriter`.
"""

from .build import build_anchor_generator, build_box_decoder, build_network, build_postprocessor
from .description import DEFAULT_INTENSITY, DESCRIPTION_FORMAT, DESCRIPTION_VERSION, GATE_RULES, ModelDescription
from .errors import DescriptionConflictError, DescriptionError, StaleDescriptionError, root_cause
from .files import (
    check_weights,
    checkpoint_sha256,
    description_path,
    has_description,
    load_description,
    read_description,
    save_description,
    save_model,
    verified_state_dict,
)
from .legacy import describe_legacy_checkpoint
from .load import load_model
from .merge import (
    LoadReport,
    MergeError,
    MergeReport,
    MergeWeights,
    check_source_descriptions,
    freeze_encoder,
    init_network,
    load_compatible,
    merge_multichexnet,
    trainable_parameters,
    transfer_network,
)
from .reconcile import reconcile
from .training import training_summary

__all__ = [
    "DEFAULT_INTENSITY",
    "DESCRIPTION_FORMAT",
    "DESCRIPTION_VERSION",
    "GATE_RULES",
    "ModelDescription",
    "DescriptionError",
    "StaleDescriptionError",
    "DescriptionConflictError",
    "root_cause",
    "reconcile",
    "build_network",
    "build_anchor_generator",
    "build_box_decoder",
    "build_postprocessor",
    "description_path",
    "has_description",
    "checkpoint_sha256",
    "verified_state_dict",
    "check_weights",
    "save_description",
    "save_model",
    "read_description",
    "load_description",
    "load_model",
    "training_summary",
    "describe_legacy_checkpoint",
    "MergeError",
    "MergeReport",
    "LoadReport",
    "MergeWeights",
    "merge_multichexnet",
    "init_network",
    "load_compatible",
    "freeze_encoder",
    "trainable_parameters",
    "transfer_network",
    "check_source_descriptions",
]
