"""Reading the MultiCheXNet bundle from a local folder (nothing is downloaded from a model zoo).

The network, the anchors/box decoder and the inference settings come from
``<bundle>/configs/inference.json`` through MONAI's ``ConfigParser``, with the app's overrides applied
(``--conf overrides '<json>'``, the same ``key`` / ``a#b`` ids as ``python -m monai.bundle run``).
Weights: ``<bundle>/models/model.pt`` (a ``state_dict`` or ``{"model": state_dict}``), loaded with
``torch.load(..., weights_only=True)``.
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

__all__ = ["BundleSpec", "parse_overrides", "load_state_dict"]


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
    """A ``state_dict`` from ``path`` (plain or under ``"model"``), read with ``weights_only=True``."""
    ckpt = torch.load(path, map_location=map_location, weights_only=True)
    if isinstance(ckpt, Mapping) and "model" in ckpt and isinstance(ckpt["model"], Mapping):
        ckpt = ckpt["model"]
    if not isinstance(ckpt, Mapping):
        raise ValueError(f"{path}: expected a state_dict, got {type(ckpt).__name__}")
    return dict(ckpt)


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
        self.gate_threshold = float(parser.get_parsed_content("gate_threshold", default=0.5))
        self.seg_threshold = float(parser.get_parsed_content("seg_threshold", default=0.5))
        if "segmentation" not in self.tasks:
            raise ValueError(f"the MONAI Label app needs a segmentation head; the bundle builds tasks={self.tasks}")

    def build_network(self) -> torch.nn.Module:
        """A new MultiCheXNet from ``network_def`` (random weights)."""
        return self.parser.get_parsed_content("network_def", instantiate=True, lazy=False)

    def build_box_decoder(self):
        """The bundle's ``BoxDecoder`` (its anchor settings), or None without a localization head."""
        if "localization" not in self.tasks or "box_decoder" not in self.parser:
            return None
        return self.parser.get_parsed_content("box_decoder", instantiate=True, lazy=False)

    def has_weights(self) -> bool:
        return os.path.isfile(self.model_path)

    def info(self) -> dict:
        return {
            "bundle": self.bundle_dir,
            "class_names": self.class_names,
            "tasks": self.tasks,
            "spatial_size": self.spatial_size,
            "gate_threshold": self.gate_threshold,
            "seg_threshold": self.seg_threshold,
        }
