"""The three task heads of MultiCheXNet, all fed by the same 4 encoder levels (strides 4, 8, 16, 32).

The heads are deliberately light next to the encoder (the full 3-head model must cost at most 1.5x the
classification-only model): the segmentation decoder shrinks every level with a 1x1 conv before fusing,
uses one 3x3 conv per level and never convolves at full resolution; the localization head runs a
64-channel FPN on strides 8/16/32 with 2-conv towers instead of RetinaNet's 4-conv 256-channel ones.

Geometry: tensors are ``(B, C, W, H)`` (spatial dim 0 is x), see ``docs/CONTRACTS.md``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import torch
import torch.nn.functional as F
from monai.apps.detection.networks.retinanet_network import (
    RetinaNetClassificationHead,
    RetinaNetRegressionHead,
)
from monai.networks.blocks import Convolution
from monai.networks.blocks.feature_pyramid_network import FeaturePyramidNetwork
from torch import Tensor, nn

from monai_mcx.keys import PredKeys

__all__ = ["ClassificationHead", "SegmentationDecoder", "LocalizationHead"]


class ClassificationHead(nn.Module):
    """Image-level classifier: global average pool + dropout + Linear.

    Args:
        in_channels: channels of the stride-32 feature.
        num_classes: K, number of class logits.
        dropout: dropout probability before the linear layer.

    Input: the stride-32 feature ``(B, in_channels, w, h)``. Output: logits ``(B, K)``.
    """

    def __init__(self, in_channels: int, num_classes: int, dropout: float = 0.2) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_channels, num_classes)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.dropout(torch.flatten(self.pool(x), 1)))


class _UpFuse(nn.Module):
    """Upsample ``x`` bilinearly to the skip's exact size, concatenate, fuse with one 3x3 conv-BN-ReLU.

    Own block rather than MONAI's ``UpCat``: ``UpCat`` upsamples by a fixed factor and then pads
    when sizes differ (odd feature sizes from W/H that are not multiples of 32) and uses two 3x3
    convs; interpolating straight to the skip's size is pad-free for any input size, and one conv
    keeps the decoder cheap. The conv itself is MONAI's ``Convolution``.
    """

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int, act, norm) -> None:
        super().__init__()
        self.fuse = Convolution(
            spatial_dims=2,
            in_channels=in_channels + skip_channels,
            out_channels=out_channels,
            kernel_size=3,
            act=act,
            norm=norm,
        )

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        x = F.interpolate(x, size=skip.shape[2:], mode="bilinear", align_corners=False)
        return self.fuse(torch.cat([x, skip], dim=1))


class SegmentationDecoder(nn.Module):
    """U-Net-like top-down decoder over the 4 encoder levels, producing per-pixel logits.

    Path (``d0, d1, d2 = decoder_channels``)::

        s32 --1x1--> d0 ──up+cat── s16 --1x1--> d0  --3x3--> d0   (stride 16)
                         ──up+cat── s8  --1x1--> d1  --3x3--> d1   (stride 8)
                         ──up+cat── s4  --1x1--> d2  --3x3--> d2   (stride 4)
        --1x1--> out_channels logits at stride 4 --bilinear--> image size

    All 1x1 laterals and 3x3 fusions are MONAI ``Convolution`` blocks (conv-norm-act). No
    convolution runs above stride 4; the last step is a bilinear resize, so any W/H works.

    Args:
        encoder_channels: channels of the 4 encoder levels (strides 4, 8, 16, 32).
        decoder_channels: channels after fusing at strides 16, 8, 4.
        out_channels: number of output logit channels (1: lesion).
        act, norm: activation/normalisation of the conv blocks (MONAI names).

    Input: ``features`` list of 4 tensors, ``image_size`` ``(W, H)`` (e.g. ``image.shape[2:]``; None:
    return the stride-4 logits).
    Output: logits ``(B, out_channels, W, H)``.
    """

    def __init__(
        self,
        encoder_channels: Sequence[int],
        decoder_channels: Sequence[int] = (64, 48, 24),
        out_channels: int = 1,
        act: str | tuple = "relu",
        norm: str | tuple = "batch",
    ) -> None:
        super().__init__()
        if len(encoder_channels) != 4 or len(decoder_channels) != 3:
            raise ValueError("SegmentationDecoder needs 4 encoder_channels and 3 decoder_channels.")
        c4, c8, c16, c32 = (int(c) for c in encoder_channels)
        d0, d1, d2 = (int(c) for c in decoder_channels)

        def lateral(cin: int, cout: int) -> Convolution:
            return Convolution(spatial_dims=2, in_channels=cin, out_channels=cout, kernel_size=1, act=act, norm=norm)

        self.lateral32 = lateral(c32, d0)
        self.lateral16 = lateral(c16, d0)
        self.lateral8 = lateral(c8, d1)
        self.lateral4 = lateral(c4, d2)
        self.up16 = _UpFuse(d0, d0, d0, act, norm)
        self.up8 = _UpFuse(d0, d1, d1, act, norm)
        self.up4 = _UpFuse(d1, d2, d2, act, norm)
        self.out = nn.Conv2d(d2, out_channels, kernel_size=1)

    def forward(self, features: list[Tensor], image_size: Optional[list[int]] = None) -> Tensor:
        f4, f8, f16, f32 = features[0], features[1], features[2], features[3]
        x = self.lateral32(f32)
        x = self.up16(x, self.lateral16(f16))
        x = self.up8(x, self.lateral8(f8))
        x = self.up4(x, self.lateral4(f4))
        x = self.out(x)
        if image_size is not None:
            # passed through untouched: ``image.shape[2:]`` keeps a traced model's input size dynamic
            x = F.interpolate(x, size=image_size, mode="bilinear", align_corners=False)
        return x


def _truncate_tower(head: nn.Module, num_convs: int) -> nn.Module:
    """Keep the first ``num_convs`` (conv, GroupNorm, ReLU) triplets of a MONAI RetinaNet head tower."""
    if not 0 <= num_convs <= 4:
        raise ValueError(f"num_convs must be in [0, 4] (MONAI RetinaNet towers have 4 convs), got {num_convs}.")
    head.conv = head.conv[: 3 * num_convs]
    return head


class LocalizationHead(nn.Module):
    """RetinaNet-style dense box head: MONAI FPN + MONAI RetinaNet classification/regression heads.

    - ``fpn``: :class:`monai.networks.blocks.feature_pyramid_network.FeaturePyramidNetwork`
      (``spatial_dims=2``, no extra blocks) on the encoder levels ``feature_levels``
      (indices into the 4 levels; default ``(1, 2, 3)`` = strides 8, 16, 32) -> ``fpn_channels`` each.
    - ``classification_head`` / ``regression_head``: MONAI's ``RetinaNetClassificationHead`` /
      ``RetinaNetRegressionHead`` (shared weights over levels, normal(0.01) init, prior-probability
      bias ``-log((1-0.01)/0.01)`` on the class logits), with their 4-conv towers cut to ``num_convs``
      convs (MONAI's heads have no such option). ``fpn_channels`` must be divisible by 8 (GroupNorm(8)).

    Output channel layout is MONAI's: ``box_cls_logits[l]`` is ``(B, A*C, w_l, h_l)`` with channel
    ``a*C + c``; ``box_regression[l]`` is ``(B, A*4, w_l, h_l)`` with channel ``a*4 + k`` and
    ``k`` indexing the encoded ``(dx, dy, dw, dh)`` of :class:`monai.apps.detection.utils.box_coder.BoxCoder`.
    So ``RetinaNetDetector._reshape_maps`` / :func:`monai_mcx.networks.box_decoding.flatten_head_maps`
    and MONAI's anchor generators apply unchanged.

    Args:
        encoder_channels: channels of the 4 encoder levels.
        feature_levels: which encoder levels feed the FPN (increasing).
        fpn_channels: FPN/tower width.
        num_anchors: A, anchors per location (= ``len(base_anchor_shapes)`` of the anchor generator).
        num_classes: C, lesion classes (1).
        num_convs: convs per tower (0..4).
        prior_probability: initial foreground probability of the class logits.

    Input: list of the 4 encoder features. Output: ``{"box_cls_logits": [...], "box_regression": [...]}``
    with one map per entry of ``feature_levels``, finest first.
    """

    def __init__(
        self,
        encoder_channels: Sequence[int],
        feature_levels: Sequence[int] = (1, 2, 3),
        fpn_channels: int = 48,
        num_anchors: int = 3,
        num_classes: int = 1,
        num_convs: int = 2,
        prior_probability: float = 0.01,
    ) -> None:
        super().__init__()
        levels = [int(i) for i in feature_levels]
        if not levels or sorted(set(levels)) != levels or levels[0] < 0 or levels[-1] >= len(encoder_channels):
            raise ValueError(
                f"feature_levels must be increasing indices into {len(encoder_channels)} levels, got {feature_levels}."
            )
        if fpn_channels % 8 != 0:
            raise ValueError(f"fpn_channels must be divisible by 8 (GroupNorm(8)), got {fpn_channels}.")
        self.feature_levels: list[int] = levels
        self.num_anchors = int(num_anchors)
        self.num_classes = int(num_classes)
        self._names: list[str] = [f"level{i}" for i in levels]
        self.fpn = FeaturePyramidNetwork(
            spatial_dims=2,
            in_channels_list=[int(encoder_channels[i]) for i in levels],
            out_channels=fpn_channels,
            extra_blocks=None,
        )
        self.classification_head = _truncate_tower(
            RetinaNetClassificationHead(
                fpn_channels, num_anchors, num_classes, spatial_dims=2, prior_probability=prior_probability
            ),
            num_convs,
        )
        self.regression_head = _truncate_tower(
            RetinaNetRegressionHead(fpn_channels, num_anchors, spatial_dims=2), num_convs
        )

    def forward(self, features: list[Tensor]) -> dict[str, list[Tensor]]:
        x: dict[str, Tensor] = {}  # insertion-ordered, finest level first (as MONAI's FPN expects)
        for name, i in zip(self._names, self.feature_levels):
            x[name] = features[i]
        maps = list(self.fpn(x).values())
        return {
            PredKeys.BOX_CLS_LOGITS.value: self.classification_head(maps),
            PredKeys.BOX_REGRESSION.value: self.regression_head(maps),
        }
