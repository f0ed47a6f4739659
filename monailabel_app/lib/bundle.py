"""Reading the MultiCheXNet bundle from a local folder (nothing is downloaded from a model zoo).

The network and the post-processing (class thresholds and gate rule, mask threshold, box operating point,
anchors / box decoder) come from the model description ``<bundle>/models/model.json`` saved with the weights
``<bundle>/models/model.pt`` (:mod:`monai_mcx.artifact`), read as one pair by :func:`.publish.load_published`.
Without a description (an older bundle) they come from ``<bundle>/configs/inference.json`` through MONAI's
``ConfigParser``, with the app's overrides applied (``--conf overrides '<json>'``, the same ``key`` / ``a#b`` ids
as ``python -m monai.bundle run``), and a warning.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

logger = logging.getLogger(__name__)

__all__ = ["BundleSpec", "parse_overrides"]


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
        from monai.bundle import ConfigParser

        self.bundle_dir = os.path.abspath(self.bundle_dir)
        self.config_file = os.path.join(self.bundle_dir, "configs", "inference.json")
        if not os.path.isfile(self.config_file):
            raise FileNotFoundError(f"the bundle {self.bundle_dir} has no configs/inference.json")
        self.model_path = os.path.join(self.bundle_dir, "models", "model.pt")
        parser = ConfigParser()
        parser.read_config(self.config_file)
        parser["bundle_root"] = self.bundle_dir
        parser["device"] = "$torch.device('cpu')"  # the task moves the network to the request's device
        parser.update(dict(self.overrides))
        self.parser = parser
        self.spatial_size = [int(s) for s in parser.get_parsed_content("spatial_size")]
        self.class_names = [str(c) for c in parser.get_parsed_content("class_names")]
        self.tasks = list(parser.get_parsed_content("tasks"))
        desc = self.description()
        if desc is not None:
            self.spatial_size, self.class_names, self.tasks = list(desc.spatial_size), list(desc.class_names), list(desc.tasks)
        if "segmentation" not in self.tasks:
            raise ValueError(f"the MONAI Label app needs a segmentation head; the bundle builds tasks={self.tasks}")

    def description(self):
        """The published model's description (checked against its weights), or None without one."""
        if not os.path.isfile(self.model_path):
            return None
        from .publish import load_published

        return load_published(self.model_path)[0]

    def build_network(self, description=None) -> torch.nn.Module:
        """A new MultiCheXNet (random weights) from ``description`` (default: the published model's), else from
        the config's ``network_def``."""
        desc = description if description is not None else self.description()
        if desc is not None:
            return desc.build_network()
        logger.warning(f"{self.model_path}: no model description; the network comes from {self.config_file}")
        return self.parser.get_parsed_content("network_def", instantiate=True, lazy=False)

    def build_postprocessor(self, description=None):
        """The :class:`monai_mcx.inferers.MultiCheXNetPostprocessor` of the published model (its description),
        else the config's ``postprocessing``."""
        from monai_mcx.inferers import MultiCheXNetPostprocessor

        desc = description if description is not None else self.description()
        if desc is not None:
            return MultiCheXNetPostprocessor.from_description(desc)
        return self.parser.get_parsed_content("postprocessing", instantiate=True, lazy=False)

    def has_weights(self) -> bool:
        return os.path.isfile(self.model_path)

    def info(self) -> dict:
        return {
            "bundle": self.bundle_dir,
            "class_names": self.class_names,
            "tasks": self.tasks,
            "spatial_size": self.spatial_size,
            "postprocessing": self.build_postprocessor().settings() if self.has_weights() or "postprocessing" in self.parser else {},
        }
