"""Load a trained model from disk: the one function every consumer uses (:func:`load_model`)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from monai_mcx.inferers import MultiCheXNetPostprocessor
from monai_mcx.model.build import build_network, build_postprocessor
from monai_mcx.model.description import ModelDescription
from monai_mcx.model.files import load_description, verified_state_dict
from monai_mcx.networks import MultiCheXNet
from monai_mcx.networks.weights import check_state_dict

__all__ = ["load_model"]


def load_model(
    path: str | os.PathLike,
    map_location: Any = "cpu",
    description: str | os.PathLike | None = None,
    weights_key: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    opt_out: Sequence[str] = (),
) -> tuple[MultiCheXNet, ModelDescription, MultiCheXNetPostprocessor]:
    """``(network, description, postprocessor)`` of the trained model ``path`` (``model.pt`` with ``model.json``).

    Reads the description (:func:`~monai_mcx.model.load_description`), reads the weights once through the weights
    layer (``torch.load(weights_only=True)``), checks that they are the described ones (same ``weights_sha256``,
    a state dict that fits the described network: :func:`~monai_mcx.model.files.verified_state_dict`), builds the
    network (:func:`~monai_mcx.model.build_network`) and loads them (strict), then builds the post-processing
    (:func:`~monai_mcx.model.build_postprocessor`).

    Args:
        path: the checkpoint (``model.pt``; ``last.pt`` with ``last.json`` records ``weights_key="model"``).
        map_location: where the weights are read to; a device (``"cpu"``, ``"cuda:0"``, ``torch.device``) also
            moves the network there.
        description: the description file, when it is not ``<path stem>.json``.
        weights_key: the checkpoint's entry holding the state dict (default: the description's ``weights_key``).
        overrides: ``{field: value}`` that must agree with the description
            (:func:`~monai_mcx.model.reconcile.reconcile`; a contradiction is an error naming both values).
        opt_out: fields of ``overrides`` that deliberately replace the description's.

    Returns:
        the network in eval mode with the weights loaded, its description (``description.path``: the file read)
        and its :class:`~monai_mcx.inferers.MultiCheXNetPostprocessor`.

    Raises:
        DescriptionError: no description (the message gives the explicit path for a legacy checkpoint), a malformed
            one, one that does not fit the weights, or a conflicting override.
        StaleDescriptionError: the description belongs to other weights (names the files and both hashes).
        WeightsError: the checkpoint is missing, truncated, pickled or foreign (names the file).
    """
    path = Path(path)
    desc = load_description(path, verify=False, description=description)
    network = build_network(desc)
    state, _ = verified_state_dict(desc, path, str(desc.path), map_location, weights_key, network=network)
    where = desc.path
    if overrides or opt_out:
        described = desc.network_args()
        desc = desc.reconcile(overrides or {}, opt_out, where=str(where))
        desc.path = where
        if desc.network_args() != described:  # an opted-out field changed the architecture: check against it
            network = build_network(desc)
            check_state_dict(network, state, str(path), what="network of its model description")
    network.load_state_dict(state, strict=True)
    if isinstance(map_location, (str, torch.device)):
        network.to(map_location)
    return network.eval(), desc, build_postprocessor(desc)
