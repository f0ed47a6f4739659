"""Keeping the published model consistent when MONAI Label fine-tunes it (no MONAI Label import here).

The train task fine-tunes the segmentation head on the annotators' masks. What the other heads depend on is
frozen, so the classifier, the gate and the boxes of the published model are those the description's thresholds
were chosen for:

- :func:`freeze_for_segmentation`: only ``segmentation_head`` trains by default; ``train_encoder=True`` also
  trains the encoder's weights, but its BatchNorm statistics stay frozen either way (the BatchNorm layers run in
  eval mode during training, see :func:`freeze_batchnorm_stats`);
- :func:`classifier_drift`: how much the class probabilities moved between the published and the new weights on
  the annotated images (0 with the encoder frozen); recorded in the description and the train stats, and a
  training whose drift exceeds ``max_drift`` is not published;
- :func:`publish_model`: writes ``model.pt`` and its description ``model.json`` (new weights hash, the
  fine-tuning recorded under ``training["monailabel"]``) to temporary files in the same folder, then renames
  both; :func:`load_published` loads them as one pair with :func:`monai_mcx.model.load_model` (the package's hash
  check; retried if it raced a publish).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from monai_mcx.model import StaleDescriptionError, description_path, load_model
from monai_mcx.networks.weights import state_dict_sha256

logger = logging.getLogger(__name__)

__all__ = ["freeze_for_segmentation", "freeze_batchnorm_stats", "classifier_drift", "publish_model", "load_published"]

SEG_HEAD = "segmentation_head"
ENCODER = "encoder"


def freeze_batchnorm_stats(module: nn.Module) -> None:
    """Keep every BatchNorm layer of ``module`` in eval mode, even after ``module.train()`` (a forward pre-hook):
    running statistics never update and the forward is the inference one."""
    bns = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]

    def _eval(mod, args):  # noqa: ARG001 - forward pre-hook signature
        for bn in bns:
            bn.eval()

    module.register_forward_pre_hook(_eval)


def freeze_for_segmentation(network: nn.Module, train_encoder: bool = False) -> list[str]:
    """Make only the segmentation head (and the encoder's weights with ``train_encoder``) trainable; freeze the
    encoder's BatchNorm statistics in every case. Returns the names of the trainable parameters."""
    trainable = (SEG_HEAD, ENCODER) if train_encoder else (SEG_HEAD,)
    names = []
    for name, p in network.named_parameters():
        p.requires_grad = name.split(".")[0] in trainable
        if p.requires_grad:
            names.append(name)
    if hasattr(network, ENCODER):
        freeze_batchnorm_stats(getattr(network, ENCODER))
    return names


@torch.no_grad()
def classifier_drift(before: nn.Module, after: nn.Module, images: Iterable[torch.Tensor]) -> dict[str, Any]:
    """Class-probability change between two networks on ``images`` (each ``(B, C, W, H)``, network input).

    Returns:
        ``{"images": n, "mean_abs": mean |p_after - p_before|, "max_abs": max of it}`` (zeros without a
        classifier or without images).
    """
    before.eval()
    after.eval()
    diffs, n = [], 0
    for x in images:
        a, b = before(x), after(x)
        if "class_logits" not in a:
            break
        n += int(x.shape[0])
        diffs.append(
            (torch.sigmoid(b["class_logits"].float()) - torch.sigmoid(a["class_logits"].float())).abs().reshape(-1)
        )
    if not diffs:
        return {"images": 0, "mean_abs": 0.0, "max_abs": 0.0}
    d = torch.cat(diffs)
    return {"images": n, "mean_abs": float(d.mean()), "max_abs": float(d.max())}


def _tmp(path: Path, suffix: str) -> Path:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o644)
    return Path(tmp)


def publish_model(
    state_dict: Mapping[str, torch.Tensor],
    model_path: str | os.PathLike,
    description: Any | None,
    note: Mapping[str, Any] | None = None,
) -> tuple[Path, Path | None]:
    """Publish new weights and their description together.

    Both files are written to temporary names beside ``model_path`` first; then ``model.pt`` and
    ``model.json`` are renamed into place one right after the other (each rename atomic). A reader that lands
    between the two renames sees a hash mismatch, which :func:`load_published` resolves by reading again.

    Args:
        state_dict: the network's weights.
        model_path: the published ``model.pt``.
        description: the model's :class:`monai_mcx.model.ModelDescription` (the one the weights were
            fine-tuned from), or None for a model without one (weights only, a warning).
        note: recorded as ``description.training["monailabel"]`` (e.g. epochs, pairs, classifier drift).

    Returns:
        ``(model_path, description_path or None)``.
    """
    model_path = Path(model_path)
    state = {k: v.detach().cpu() for k, v in state_dict.items()}
    tmp_pt = _tmp(model_path, ".pt")
    tmp_json = None
    try:
        torch.save(state, tmp_pt)
        new_desc = None
        if description is not None:
            training = dict(description.training or {})
            training["monailabel"] = {**dict(note or {}), "date": time.strftime("%Y-%m-%dT%H:%M:%S")}
            new_desc = description.replace(
                weights_sha256=state_dict_sha256(state),
                weights_file=model_path.name,
                weights_key=None,
                training=training,
            )
            new_desc.validate(str(description_path(model_path)))
            tmp_json = _tmp(model_path, ".json")
            tmp_json.write_text(json.dumps(new_desc.to_dict(), indent=2))
        else:
            logger.warning("%s has no model description: publishing the weights alone", model_path)
        os.replace(tmp_pt, model_path)
        dpath = None
        if tmp_json is not None:
            dpath = description_path(model_path)
            os.replace(tmp_json, dpath)
        return model_path, dpath
    finally:
        for t in (tmp_pt, tmp_json):
            if t is not None and t.exists():
                t.unlink()


def load_published(model_path: str | os.PathLike, retries: int = 3, wait_s: float = 0.2) -> tuple[nn.Module, Any, Any]:
    """``(network, description, postprocessor)`` of a published model with its description
    (:func:`monai_mcx.model.load_model`: weights checked against the description's hash); read again when a publish
    was caught half-way (:class:`~monai_mcx.model.StaleDescriptionError`), up to ``retries`` times.

    A model without a description is not loaded here: check :func:`monai_mcx.model.has_description` first and load
    its weights into the bundle's network through the weights layer.

    Raises:
        StaleDescriptionError: the pair still disagrees after ``retries`` reads (names both files and hashes).
        monai_mcx.model.DescriptionError: there is no description (or it is malformed).
    """
    last: Exception | None = None
    for attempt in range(max(1, retries)):
        if attempt:
            time.sleep(wait_s)
        try:
            return load_model(model_path)
        except StaleDescriptionError as e:
            last = e
    raise last
