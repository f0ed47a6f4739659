"""Pretrained DenseNet weights from a state-dict file on disk (nothing is downloaded).

:class:`~monai_mcx.networks.encoders.DenseNetEncoder` keeps MONAI's DenseNet layer names. MONAI nests the
layers of a dense layer in a ``layers`` Sequential, torchvision and TorchXRayVision do not:

===================================================  ====================================================
torchvision / TorchXRayVision                        this encoder (MONAI)
===================================================  ====================================================
``features.conv0.weight`` (3 / 1 input channels)     ``features.conv0.weight`` (``in_channels``)
``features.denseblock1.denselayer1.norm1.weight``    ``features.denseblock1.denselayer1.layers.norm1.weight``
``features.denseblock1.denselayer1.norm.1.weight``   (torchvision's checkpoints before 0.3 -- same target)
``features.transition1.{norm,conv}.*``, ``norm5.*``  same names
``classifier.*``, ``op_threshs`` (XRV)               dropped (MultiCheXNet has its own heads)
===================================================  ====================================================

Input channels of ``conv0`` are adapted: 3 -> 1 by averaging the RGB kernels (``channel_reduce="mean"``,
as asked by the issue; ``"sum"`` keeps the response to a gray image replicated to RGB exactly) and 1 -> 3
by repeating / 3.

Sources this reads (a state dict, ``torch.load(weights_only=True)``):

* ImageNet: ``torch.save(torchvision.models.densenet121(weights="IMAGENET1K_V1").state_dict(), path)``
  (or the ``densenet121-a639ec97.pth`` file from torchvision's cache, which uses the old ``norm.1`` names).
* TorchXRayVision: ``torch.save(xrv.models.DenseNet(weights="densenet121-res224-all").state_dict(), path)``.
  TorchXRayVision's own downloaded ``.pt`` files are whole pickled models, which ``weights_only`` refuses;
  convert them once as shown. TorchXRayVision models expect images scaled to [-1024, 1024], ImageNet ones
  mean/std-normalised RGB; the bundle feeds [0, 1] gray images, so the weights are a starting point for
  fine-tuning, not a drop-in feature extractor.
* A MultiCheXNet checkpoint (``encoder.features.*``) or a MONAI ``DenseNet`` state dict (``features.*``
  with ``layers.``) -- loaded as is.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from monai_mcx.networks.weights import MergeError, StateSource, read_state_dict

__all__ = ["convert_densenet_state_dict", "load_pretrained_encoder", "PretrainedReport", "detect_layout"]

logger = logging.getLogger(__name__)

_LAYER = re.compile(r"^(.*\.denselayer\d+)\.(norm|conv|relu)\.?([12])\.(\w+)$")
_DROP = re.compile(r"^(classifier\.|fc\.|op_threshs$|upsample\.)")


@dataclass
class PretrainedReport:
    """``layout`` detected, ``loaded`` encoder keys, ``dropped`` source keys (classifier...), ``adapted``
    (``{key: what was done}``, e.g. conv0's channels), ``kept`` encoder keys left as initialised."""

    file: str
    layout: str
    loaded: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    adapted: dict[str, str] = field(default_factory=dict)
    kept: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        s = f"pretrained encoder from {self.file} ({self.layout} layout): loaded {len(self.loaded)} tensors"
        if self.adapted:
            s += "; " + "; ".join(f"{k}: {v}" for k, v in self.adapted.items())
        if self.dropped:
            s += f"; dropped {', '.join(self.dropped[:4])}{' ...' if len(self.dropped) > 4 else ''}"
        if self.kept:
            s += f"; kept as initialised: {', '.join(self.kept[:4])}{' ...' if len(self.kept) > 4 else ''}"
        return s


def detect_layout(state: Mapping[str, Any]) -> str:
    """``"multichexnet"`` (``encoder.features.*``), ``"monai"`` (``denselayerN.layers.*``), ``"torchvision"``
    (``denselayerN.norm1``), ``"torchvision-old"`` (``denselayerN.norm.1``), or ``"unknown"``. A 1-channel
    ``conv0`` with torchvision names is reported as ``"torchxrayvision"``."""
    keys = list(state)
    if any(k.startswith("encoder.features.") for k in keys):
        return "multichexnet"
    layer_keys = [k for k in keys if ".denselayer" in k]
    if not layer_keys:
        return "unknown"
    if any(".layers." in k for k in layer_keys):
        return "monai"
    if any(re.search(r"\.denselayer\d+\.(norm|conv)\.[12]\.", k) for k in layer_keys):
        return "torchvision-old"
    conv0 = state.get("features.conv0.weight")
    if conv0 is not None and conv0.ndim == 4 and conv0.shape[1] == 1:
        return "torchxrayvision"
    return "torchvision"


def convert_densenet_state_dict(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Rename a torchvision / TorchXRayVision / MultiCheXNet DenseNet state dict to the encoder's own keys
    (``features.*`` with MONAI's ``layers.`` nesting). Returns ``(converted, dropped_keys)``."""
    out: dict[str, torch.Tensor] = {}
    dropped: list[str] = []
    for key, value in state.items():
        k = key[len("encoder.") :] if key.startswith("encoder.") else key
        if _DROP.match(k) or not k.startswith("features."):
            dropped.append(key)
            continue
        if ".layers." not in k:
            m = _LAYER.match(k)
            if m:
                if m.group(2) == "relu":  # no parameters; never in a state dict, but be safe
                    dropped.append(key)
                    continue
                k = f"{m.group(1)}.layers.{m.group(2)}{m.group(3)}.{m.group(4)}"
        out[k] = value
    return out, dropped


def _adapt_conv0(w: torch.Tensor, in_channels: int, reduce: str) -> tuple[torch.Tensor, str]:
    c = w.shape[1]
    if c == in_channels:
        return w, ""
    if in_channels == 1:
        if reduce not in ("mean", "sum"):
            raise ValueError(f"channel_reduce must be 'mean' or 'sum', got {reduce!r}")
        return (w.mean(1, keepdim=True) if reduce == "mean" else w.sum(1, keepdim=True)), f"{c} -> 1 channel ({reduce})"
    if c == 1:
        return w.repeat(1, in_channels, 1, 1) / in_channels, f"1 -> {in_channels} channels (repeated / {in_channels})"
    raise MergeError(f"conv0 has {c} input channels, the encoder {in_channels}: no rule to adapt them")


def load_pretrained_encoder(
    target: nn.Module,
    source: StateSource,
    channel_reduce: str = "mean",
    strict: bool = True,
) -> PretrainedReport:
    """Load a DenseNet state dict (torchvision, TorchXRayVision, MONAI or MultiCheXNet layout) into a
    :class:`~monai_mcx.networks.encoders.DenseNetEncoder` or the encoder of a MultiCheXNet.

    Args:
        target: a ``DenseNetEncoder`` or a network with one as ``.encoder``.
        source: path to a state-dict file (read with ``weights_only=True``) or a state dict.
        channel_reduce: how a 3-channel ``conv0`` becomes 1 channel: ``"mean"`` (default) or ``"sum"``.
        strict: every encoder key must be filled (BatchNorm ``num_batches_tracked``, absent from old
            checkpoints, is exempt).

    Returns:
        a :class:`PretrainedReport` (also logged).

    Raises:
        MergeError: naming the file: not a DenseNet state dict, missing encoder keys, or shapes that differ
            (e.g. DenseNet-121 weights into ``densenet-tiny``).
    """
    encoder = getattr(target, "encoder", target)
    if not hasattr(encoder, "features") or not any(".denselayer" in k for k in encoder.state_dict()):
        raise MergeError(
            f"load_pretrained_encoder supports DenseNet encoders; the target's encoder is {type(encoder).__name__}"
        )
    state, file = read_state_dict(source, error=MergeError)
    layout = detect_layout(state)
    if layout == "unknown":
        raise MergeError(
            f"{file!r} is not a DenseNet state dict (no '*.denselayerN.*' keys); its first keys are {list(state)[:5]}"
        )
    converted, dropped = convert_densenet_state_dict(state)
    own = encoder.state_dict()
    report = PretrainedReport(file=file, layout=layout, dropped=dropped)
    conv_key = "features.conv0.weight"
    if conv_key in converted and conv_key in own:
        w, what = _adapt_conv0(converted[conv_key], own[conv_key].shape[1], channel_reduce)
        converted[conv_key] = w
        if what:
            report.adapted[conv_key] = what
    unexpected = [k for k in converted if k not in own]
    shapes = [
        f"{k} (file {tuple(v.shape)}, encoder {tuple(own[k].shape)})"
        for k, v in converted.items()
        if k in own and tuple(v.shape) != tuple(own[k].shape)
    ]
    missing = [k for k in own if k not in converted and not k.endswith("num_batches_tracked")]
    problems = []
    if shapes:
        problems.append("shape-mismatched keys: " + ", ".join(shapes[:6]) + (" ..." if len(shapes) > 6 else ""))
    if unexpected:
        problems.append(
            "keys the encoder lacks: " + ", ".join(unexpected[:6]) + (" ..." if len(unexpected) > 6 else "")
        )
    if strict and missing:
        problems.append("encoder keys the file lacks: " + ", ".join(missing[:6]) + (" ..." if len(missing) > 6 else ""))
    if problems:
        raise MergeError(
            f"{file!r} ({layout} layout) does not fit the {type(encoder).__name__} (another DenseNet depth/width?):\n  "
            + "\n  ".join(problems)
        )
    loadable = {k: v.to(own[k].dtype) for k, v in converted.items() if k in own}
    encoder.load_state_dict(loadable, strict=False)
    report.loaded = sorted(loadable)
    report.kept = [k for k in own if k not in loadable]
    logger.info(str(report))
    return report
