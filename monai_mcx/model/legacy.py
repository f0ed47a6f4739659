"""Describing, after the fact, a checkpoint written before model descriptions existed (the explicit legacy path).

``python -m monai_mcx.model describe --ckpt model.pt --config bundle/configs/train.json [--set id=value ...]``
writes its description from the training config (:func:`describe_legacy_checkpoint`, with a warning); then evaluate
it on the validation split as usual.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

from monai.bundle import ConfigParser

from monai_mcx.model.build import build_network
from monai_mcx.model.description import ModelDescription
from monai_mcx.model.errors import DescriptionError
from monai_mcx.model.files import description_path, save_description
from monai_mcx.model.values import jsonable, utc_now
from monai_mcx.networks.weights import check_state_dict, read_state_dict, state_dict_sha256

__all__ = ["describe_legacy_checkpoint"]


def _legacy_file(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise DescriptionError(f"{str(path)!r} is not readable JSON ({e})") from e


def describe_legacy_checkpoint(
    ckpt: str | os.PathLike,
    config: str | Sequence[str],
    overrides: Mapping | None = None,
    description_id: str = "model_description",
    weights_key: str | None = None,
    write: bool = True,
    force: bool = False,
) -> ModelDescription:
    """Describe, after the fact, a checkpoint written before model descriptions existed (the explicit legacy path).

    Builds the description from the training config exactly as ``train.json`` would (its ``model_description``
    item, with ``overrides``: pass the same ones as the training run), with these corrections from files found
    beside the checkpoint: ``anchors.json`` (the anchors the weights were trained with; its ``spatial_size`` must
    agree with the config's) and ``thresholds.json`` (per-class thresholds chosen by an old evaluation; recorded
    with ``method`` ``legacy thresholds.json``). Checks that the weights fit the described network (strict), hashes
    them, marks ``provenance`` as ``"described after training"`` and warns. Writes ``<ckpt stem>.json`` unless
    ``write=False``; an existing description is kept unless ``force``.

    Raises:
        WeightsError: the checkpoint cannot be read or does not fit the network the config builds (the message names
            the file and keys -- usually an override of the training run is missing).
        DescriptionError: a description exists already (without ``force``), or ``anchors.json`` disagrees.
    """
    ckpt = Path(ckpt)
    dpath = description_path(ckpt)
    if dpath.is_file() and write and not force:
        raise DescriptionError(f"{str(dpath)!r} exists already; pass --force to replace it")
    state, name = read_state_dict(ckpt, key=weights_key)
    parser = ConfigParser()
    parser.read_config(list(config) if not isinstance(config, (str, os.PathLike)) else str(config))
    overrides = dict(overrides or {})
    anchors = _legacy_file(ckpt.parent / "anchors.json")
    if anchors and "base_anchor_shapes" not in overrides:
        overrides["base_anchor_shapes"] = anchors["base_anchor_shapes"]
    for k, v in overrides.items():
        parser[k] = v
    if description_id not in parser:
        raise DescriptionError(f"the config {config} has no {description_id!r} item (use bundle/configs/train.json)")
    desc = parser.get_parsed_content(description_id, instantiate=True)
    if not isinstance(desc, ModelDescription):
        raise DescriptionError(f"{description_id!r} of {config} builds a {type(desc).__name__}, not a ModelDescription")
    if anchors and anchors.get("spatial_size") and [int(s) for s in anchors["spatial_size"]] != desc.spatial_size:
        raise DescriptionError(
            f"{str(ckpt.parent / 'anchors.json')!r} was fitted for spatial_size {anchors['spatial_size']}, "
            f"the config says {desc.spatial_size}: pass the training run's --spatial_size"
        )
    thresholds = _legacy_file(ckpt.parent / "thresholds.json")
    if thresholds and set(thresholds.get("class_thresholds", {})) == set(desc.class_names):
        desc = desc.with_thresholds(
            thresholds["class_thresholds"],
            "legacy thresholds.json (" + str(thresholds.get("method", "?")) + ")",
            thresholds.get("split"),
        )
    check_state_dict(build_network(desc), state, name, what="network described by the training config")
    desc = desc.replace(
        weights_sha256=state_dict_sha256(state),
        weights_file=ckpt.name,
        weights_key=weights_key,
        provenance="described after training",
    )
    desc.training = {
        **desc.training,
        "described_from": [str(c) for c in ([config] if isinstance(config, (str, os.PathLike)) else config)],
        "described_overrides": jsonable(dict(overrides or {})),
        "described_date": utc_now(),
    }
    warnings.warn(
        f"{name}: legacy checkpoint without a model description, described after the fact from {config}"
        + (f" with overrides {sorted(overrides)}" if overrides else "")
        + "; check the result and evaluate it "
        "on the validation split to choose its thresholds",
        stacklevel=2,
    )
    if write:
        save_description(desc, ckpt)
    return desc
