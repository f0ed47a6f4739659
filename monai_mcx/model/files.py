"""Model description files: where the sidecar lives, reading and writing it, and the weights hash that ties it to
its checkpoint.

``model.pt`` (a plain state dict) and its description ``model.json`` (:func:`description_path`: the checkpoint's name
with ``.json``; ``last.pt`` -> ``last.json``). The description records ``weights_sha256``
(:func:`monai_mcx.networks.weights.state_dict_sha256`) of the weights it belongs to; :func:`check_weights` refuses
a description whose hash does not match the checkpoint (:class:`~monai_mcx.model.StaleDescriptionError`):
thresholds or anchors left from another model, or weights replaced without re-describing them, never go unnoticed.

Why a sidecar and not an entry inside ``model.pt``: ``model.pt`` stays a plain state dict (``ckpt_export``,
``CheckpointLoader``, models trained before descriptions existed), evaluation can write the thresholds it chose on
the validation split without rewriting the weights, and the hash ties the two files together (the two writes cannot
be one atomic rename, but a half-finished pair is detected, never used).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from monai_mcx.engines.checkpoint import save_checkpoint
from monai_mcx.model.build import build_network
from monai_mcx.model.description import ModelDescription
from monai_mcx.model.errors import DescriptionError, StaleDescriptionError
from monai_mcx.networks.weights import (
    WeightsError,
    check_state_dict,
    read_state_dict,
    state_dict_problems,
    state_dict_sha256,
    unwrap_module,
)
from monai_mcx.utils import write_json_atomic

__all__ = [
    "DESCRIBE_COMMAND",
    "description_path",
    "has_description",
    "checkpoint_sha256",
    "verified_state_dict",
    "check_weights",
    "save_description",
    "save_model",
    "read_description",
    "load_description",
]

#: how a checkpoint without a description gets one (quoted in the error messages)
DESCRIBE_COMMAND = "python -m monai_mcx.model describe"


def description_path(ckpt: str | os.PathLike) -> Path:
    """The sidecar of a checkpoint: ``models/model.pt`` -> ``models/model.json`` (``last.pt`` -> ``last.json``).
    A ``.json`` path is returned unchanged."""
    p = Path(ckpt)
    return p if p.suffix == ".json" else p.with_suffix(".json")


def has_description(ckpt: str | os.PathLike) -> bool:
    """Whether the checkpoint ``ckpt`` has its description file beside it."""
    return description_path(ckpt).is_file()


def checkpoint_sha256(ckpt: str | os.PathLike | Mapping, key: str | None = None) -> str:
    """:func:`~monai_mcx.networks.weights.state_dict_sha256` of a checkpoint's network state dict (read through the
    weights layer: ``model``/``state_dict`` unwrapped, ``weights_only=True``; errors name the file)."""
    state, _ = read_state_dict(ckpt, key=key)
    return state_dict_sha256(state)


def verified_state_dict(
    description: ModelDescription,
    ckpt: str | os.PathLike | Mapping,
    where: str = "<model description>",
    map_location: Any = "cpu",
    weights_key: str | None = None,
    network: Any = None,
) -> tuple[dict, str]:
    """``(state_dict, sha256)`` of ``ckpt`` (a file or a state dict), checked to be the described weights: the same
    ``weights_sha256`` and a state dict that fits :func:`~monai_mcx.model.build_network` (strict).

    Args:
        description: the description the weights must belong to.
        ckpt: the checkpoint file (or a state dict).
        where: the description file, for the messages.
        map_location: where the tensors are read to.
        weights_key: the checkpoint's entry holding the state dict (default: the description's ``weights_key``).
        network: the described network, when the caller has built it already (else one is built for the check).

    Raises:
        StaleDescriptionError: the hash differs (the description -- thresholds, anchors -- belongs to another
            model), naming both files and both hashes; or the description records no hash.
        DescriptionError: the weights do not fit the described network (names the file and the keys).
        WeightsError: the checkpoint cannot be read.
    """
    key = weights_key if weights_key is not None else description.weights_key
    state, name = read_state_dict(ckpt, map_location, key=key)
    digest = state_dict_sha256(state)
    if description.weights_sha256 is None:
        raise StaleDescriptionError(
            f"model description {where} records no weights_sha256; it cannot be matched "
            f"with {name!r} (describe it again: {DESCRIBE_COMMAND})"
        )
    if digest != description.weights_sha256:
        raise StaleDescriptionError(
            f"model description {where} belongs to other weights than {name!r}: it records weights_sha256 "
            f"{description.weights_sha256[:16]}..., the checkpoint holds {digest[:16]}.... Its thresholds, anchors "
            "and settings are stale (left from an earlier model, or the weights were replaced). Re-run evaluate.json "
            f"on the validation split after training, or describe the checkpoint: {DESCRIBE_COMMAND}"
        )
    problems = state_dict_problems(build_network(description) if network is None else network, state)
    if problems:
        raise DescriptionError(
            f"checkpoint {name!r} does not fit the network its description {where} builds:\n  " + "\n  ".join(problems)
        )
    return state, digest


def check_weights(
    description: ModelDescription, ckpt: str | os.PathLike | Mapping, where: str = "<model description>"
) -> str:
    """Verify that ``ckpt`` (a file or a state dict) holds the described weights (:func:`verified_state_dict`);
    returns their hash."""
    return verified_state_dict(description, ckpt, where)[1]


def save_description(desc: ModelDescription, path: str | os.PathLike) -> Path:
    """Validate ``desc`` and write it to ``path`` (or the sidecar of a checkpoint path) atomically."""
    path = description_path(path)
    desc.validate(str(path))
    write_json_atomic(desc.to_dict(), path)
    return path


def save_model(network: Any, description: ModelDescription, ckpt: str | os.PathLike) -> ModelDescription:
    """Save ``network``'s state dict as ``ckpt`` (atomically, a plain state dict) and its description beside it, with
    ``weights_sha256``, ``weights_file`` set; checks first that the weights fit the described network. Returns the
    saved description. (The two files are two renames: a crash between them leaves a pair whose hashes differ,
    which :func:`load_description` refuses.)"""
    state = {k: v.detach().cpu() for k, v in unwrap_module(network).state_dict().items()}
    check_state_dict(build_network(description), state, str(ckpt), what="described network")
    desc = description.replace(weights_sha256=state_dict_sha256(state), weights_file=Path(ckpt).name, weights_key=None)
    save_checkpoint(state, ckpt)
    save_description(desc, ckpt)
    return desc


def read_description(path: str | os.PathLike) -> ModelDescription:
    """Parse and validate a description file (or the sidecar of a checkpoint path), without checking weights.

    Raises:
        DescriptionError: missing, not JSON, or not a valid description; names the file.
    """
    path = description_path(path)
    if not path.is_file():
        raise DescriptionError(f"model description {str(path)!r} does not exist")
    try:
        obj = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DescriptionError(f"model description {str(path)!r} is not readable JSON ({type(e).__name__}: {e})") from e
    return ModelDescription.from_dict(obj, str(path))


_VERIFIED: dict[tuple, str] = {}


def _file_stamp(ckpt: Path, desc: ModelDescription) -> tuple | None:
    st = ckpt.stat() if ckpt.is_file() else None
    return (str(ckpt.resolve()), st.st_mtime_ns, st.st_size, desc.weights_sha256) if st else None


def load_description(
    ckpt: str | os.PathLike,
    verify: bool = True,
    description: str | os.PathLike | None = None,
) -> ModelDescription:
    """The description of checkpoint ``ckpt`` (``<ckpt stem>.json`` unless ``description`` names the file),
    verified against the weights (:func:`check_weights`) unless ``verify=False``. The file it was read from is
    ``desc.path`` (not a field).

    Raises:
        DescriptionError: there is no description (the message gives the explicit path for a checkpoint written
            before descriptions existed), or it is malformed.
        StaleDescriptionError: it belongs to other weights.
        WeightsError: the checkpoint is missing, truncated, pickled or foreign (names the file).
    """
    ckpt = Path(ckpt)
    dpath = description_path(description) if description else description_path(ckpt)
    if not dpath.is_file():
        if not ckpt.is_file():
            raise WeightsError(
                f"checkpoint file {str(ckpt)!r} does not exist (and neither does its description "
                f"{str(dpath)!r}); train first or point ckpt_dir at a trained model"
            )
        raise DescriptionError(
            f"checkpoint {str(ckpt)!r} has no model description ({str(dpath)!r} does not exist). A checkpoint written "
            f"before model descriptions existed is described once, explicitly, from its training config: "
            f"{DESCRIBE_COMMAND} --ckpt {ckpt} --config bundle/configs/train.json [--set id=value ...] "
            "(then evaluate it on the validation split to choose its thresholds)"
        )
    desc = read_description(dpath)
    if verify:
        key = _file_stamp(ckpt, desc)
        if key is None or _VERIFIED.get(key) != desc.weights_sha256:
            check_weights(desc, ckpt, str(dpath))
            if key is not None:
                _VERIFIED[key] = desc.weights_sha256
    desc.path = dpath  # not a field: where it was read from, for messages
    return desc
