"""Reading the MultiCheXNet bundle from a local folder (nothing is downloaded from a model zoo).

The model is ``<bundle>/models/model.pt`` with its model description ``<bundle>/models/model.json``
(:mod:`monai_mcx.model`): ``<bundle>/configs/inference.json`` builds the network, the anchors/box decoder and the
inference settings FROM the description (hash-verified against the weights), through MONAI's ``ConfigParser``, with
the app's overrides applied (``--conf overrides '<json>'``, the same ``key`` / ``a#b`` ids as
``python -m monai.bundle run``); an override contradicting the description is an error naming both values.
Weights are read through the project's weights layer (:mod:`monai_mcx.networks.weights`: ``weights_only=True``, a
truncated, pickled or foreign file is a ``WeightsError`` naming the file).

Without ``model.pt`` (an app that will train its first model) the settings come from the overrides and the
defaults of :func:`untrained_description` (a warning is logged).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from monai.bundle import ConfigParser

from monai_mcx.data.anchors import DEFAULT_ANCHOR_SHAPES
from monai_mcx.model import ModelDescription, build_network, build_postprocessor, root_cause
from monai_mcx.networks import weights

logger = logging.getLogger(__name__)

__all__ = ["BundleSpec", "parse_overrides", "load_state_dict", "load_weights", "untrained_description"]


def parse_overrides(value: Any) -> dict:
    """``--conf overrides`` value: a JSON object (string) or a path to a JSON file; empty -> ``{}``."""
    if value is None or value == "":
        return {}
    if isinstance(value, Mapping):
        return dict(value)
    text = str(value).strip()
    if not text.startswith("{") and os.path.isfile(text):
        with open(text) as f:
            text = f.read()
    try:
        out = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"--conf overrides must be a JSON object or a JSON file, got {value!r} ({e})") from e
    if not isinstance(out, dict):
        raise ValueError(f"--conf overrides must be a JSON object, got {type(out).__name__}")
    return out


def load_state_dict(path: str, map_location="cpu") -> dict:
    """A ``state_dict`` from ``path`` (plain, under ``"model"`` or ``"state_dict"``) through the weights layer.

    Raises:
        monai_mcx.networks.weights.WeightsError: missing, truncated, pickled or foreign file (names it).
    """
    return weights.read_state_dict(path, map_location)[0]


def load_weights(network: torch.nn.Module, path: str, strict: bool = True) -> str:
    """Load ``path`` into ``network`` through the weights layer (checked key by key and shape by shape before
    anything is loaded); returns the weights' SHA-256 (compare with the description's ``weights_sha256``).

    Raises:
        monai_mcx.networks.weights.WeightsError: missing, truncated, pickled or foreign file (names it and the keys).
    """
    return weights.load_weights(network, path, strict=strict)


#: settings of a model not trained yet (overridable with the app's overrides of the same ids)
UNTRAINED_DEFAULTS = {
    "class_names": ["pneumonia"],
    "tasks": ["classification", "segmentation", "localization"],
    "encoder": "densenet121",
    "in_channels": 1,
    "spatial_size": [64, 64],
}


def untrained_description(overrides: Mapping | None = None):
    """A :class:`~monai_mcx.model.ModelDescription` for a bundle without weights: :data:`UNTRAINED_DEFAULTS`
    updated with ``overrides`` of the same names (and ``base_anchor_shapes``; default: the 128-px defaults scaled to
    ``spatial_size``)."""
    values = {k: (overrides or {}).get(k, v) for k, v in UNTRAINED_DEFAULTS.items()}
    w, h = [float(s) for s in values["spatial_size"]]
    scaled = [[a * w / 128.0, b * h / 128.0] for a, b in DEFAULT_ANCHOR_SHAPES]
    anchors = (overrides or {}).get("base_anchor_shapes") or scaled
    return ModelDescription(base_anchor_shapes=anchors, provenance="untrained (MONAI Label app defaults)", **values)


@dataclass
class BundleSpec:
    """What the app needs from the bundle: paths and the parsed inference settings.

    Args:
        bundle_dir: the bundle folder (holding ``configs/inference.json`` and ``models/model.pt``).
        overrides: config overrides (``{"encoder": "densenet-tiny", "spatial_size": [64, 64], ...}``).
    """

    bundle_dir: str
    overrides: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.bundle_dir = os.path.abspath(self.bundle_dir)
        self.config_file = os.path.join(self.bundle_dir, "configs", "inference.json")
        if not os.path.isfile(self.config_file):
            raise FileNotFoundError(f"the bundle {self.bundle_dir} has no configs/inference.json")
        self.model_path = os.path.join(self.bundle_dir, "models", "model.pt")
        parser = ConfigParser()
        parser.read_config(self.config_file)
        parser["bundle_root"] = self.bundle_dir
        parser["device"] = "$torch.device('cpu')"  # the task moves the network to the request's device
        if not os.path.isfile(self.model_path):
            logger.warning(
                f"no weights at {self.model_path}: using the settings of an untrained model "
                f"{ {k: self.overrides.get(k, v) for k, v in UNTRAINED_DEFAULTS.items()} }"
            )
            parser["model_description"] = untrained_description(self.overrides)
        parser.update(dict(self.overrides))
        self.parser = parser
        try:
            self.description = parser.get_parsed_content("description")
        except Exception as e:  # the description's own error (file, both values), not MONAI's expression wrapper
            cause = root_cause(e)
            if cause is e:
                raise
            raise cause from None
        self.spatial_size = [int(s) for s in parser.get_parsed_content("spatial_size")]
        self.class_names = [str(c) for c in parser.get_parsed_content("class_names")]
        self.tasks = list(parser.get_parsed_content("tasks"))
        if "segmentation" not in self.tasks:
            raise ValueError(f"the MONAI Label app needs a segmentation head; the bundle builds tasks={self.tasks}")

    def build_network(self, description=None) -> torch.nn.Module:
        """A new MultiCheXNet (random weights): from ``description`` when given (e.g. the pair just published by
        the train task), else from the config's ``network_def`` (built from the bundle's description)."""
        if description is not None:
            return build_network(description)
        return self.parser.get_parsed_content("network_def", instantiate=True, lazy=False)

    def build_postprocessor(self, description=None):
        """The :class:`monai_mcx.inferers.MultiCheXNetPostprocessor` of ``description`` (default: the bundle's
        reconciled description): class thresholds, gate rule, mask threshold, box operating point, box decoder."""
        return build_postprocessor(description if description is not None else self.description)

    def has_weights(self) -> bool:
        return os.path.isfile(self.model_path)

    def info(self) -> dict:
        return {
            "bundle": self.bundle_dir,
            "class_names": self.class_names,
            "tasks": self.tasks,
            "spatial_size": self.spatial_size,
            "postprocessing": self.build_postprocessor().settings(),
            "weights_sha256": self.description.weights_sha256,
        }
