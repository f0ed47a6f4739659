"""Multi-scale 2D encoders for MultiCheXNet.

Every encoder maps an image ``(B, C_in, W, H)`` (spatial dim 0 is x, see ``docs/CONTRACTS.md``) to a
list of 4 feature maps at strides 4, 8, 16 and 32::

    [(B, out_channels[0], ~W/4, ~H/4), (B, out_channels[1], ~W/8, ~H/8),
     (B, out_channels[2], ~W/16, ~H/16), (B, out_channels[3], ~W/32, ~H/32)]

and exposes ``out_channels: list[int]`` and ``strides: list[int]`` (``[4, 8, 16, 32]``). When W or H
is not a multiple of 32 the feature sizes are the backbone's own rounding (floor or ceil); the heads
never assume ``size * stride == image size``.

All the backbones are MONAI networks:

- :class:`DenseNetEncoder` taps the layers of :class:`monai.networks.nets.DenseNet` (DenseNet-121 by
  default, as in the original MultiCheXNet).
- :class:`ResNetEncoder` / :class:`EfficientNetEncoder` build the encoders registered in
  :data:`monai.networks.nets.flexible_unet.FLEXUNET_BACKBONE` (5 features at strides 2..32) and keep
  the last 4.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
from monai.networks.layers.utils import get_act_layer
from monai.networks.nets import DenseNet
from monai.networks.nets.flexible_unet import FLEXUNET_BACKBONE
from torch import Tensor, nn

__all__ = [
    "DenseNetEncoder",
    "FlexUNetBackboneEncoder",
    "ResNetEncoder",
    "EfficientNetEncoder",
    "build_encoder",
    "ENCODER_NAMES",
    "encoder_out_channels",
]

_STRIDES = [4, 8, 16, 32]


class DenseNetEncoder(nn.Module):
    """DenseNet feature extractor built from the layers of MONAI's :class:`~monai.networks.nets.DenseNet`.

    The MONAI ``DenseNet(spatial_dims=2, ...)`` is instantiated and its ``features`` Sequential
    (``conv0, norm0, relu0, pool0, denseblock1, transition1, ..., denseblock4, norm5``) is kept under
    the same name, so its state dict keys stay ``features.*`` (weights of a MONAI DenseNet can be
    loaded with ``encoder.features.load_state_dict(densenet.features.state_dict())``). The
    classification layers are dropped. Taps:

    ========== ======================================= ========================
    level      layer                                   channels (DenseNet-121)
    ========== ======================================= ========================
    stride 4   output of ``denseblock1``               256
    stride 8   output of ``denseblock2``               512
    stride 16  output of ``denseblock3``               1024
    stride 32  ``norm5`` followed by ReLU              1024
    ========== ======================================= ========================

    Args:
        in_channels: number of input channels (1 for chest X-rays).
        init_features, growth_rate, block_config, bn_size, dropout_prob, act, norm: as in
            :class:`monai.networks.nets.DenseNet`; the defaults give DenseNet-121.

    Input ``(B, in_channels, W, H)``; output a list of 4 tensors, see the module docstring.
    """

    def __init__(
        self,
        in_channels: int = 1,
        init_features: int = 64,
        growth_rate: int = 32,
        block_config: Sequence[int] = (6, 12, 24, 16),
        bn_size: int = 4,
        dropout_prob: float = 0.0,
        act: str | tuple = ("relu", {"inplace": True}),
        norm: str | tuple = "batch",
    ) -> None:
        super().__init__()
        if len(block_config) != 4:
            raise ValueError(f"DenseNetEncoder needs 4 dense blocks (strides 4..32), got block_config={block_config}.")
        net = DenseNet(
            spatial_dims=2,
            in_channels=in_channels,
            out_channels=1,
            init_features=init_features,
            growth_rate=growth_rate,
            block_config=block_config,
            bn_size=bn_size,
            act=act,
            norm=norm,
            dropout_prob=dropout_prob,
        )
        self.features = net.features
        self.final_act = get_act_layer(name=act)
        channels = []
        c = init_features
        for i, n in enumerate(block_config):
            c += n * growth_rate
            channels.append(c)
            if i < len(block_config) - 1:
                c //= 2
        self.out_channels: list[int] = channels
        self.strides: list[int] = list(_STRIDES)
        names = [name for name, _ in self.features.named_children()]
        # indices (in ``self.features``) after which a feature map is taken
        self._taps: list[int] = [names.index(f"denseblock{i}") for i in (1, 2, 3)] + [names.index("norm5")]

    def forward(self, x: Tensor) -> list[Tensor]:
        """``x``: ``(B, in_channels, W, H)`` -> list of 4 maps at strides 4, 8, 16, 32."""
        out: list[Tensor] = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self._taps:
                out.append(x)
        out[-1] = self.final_act(out[-1])
        return out


class FlexUNetBackboneEncoder(nn.Module):
    """Any encoder registered in MONAI's ``FLEXUNET_BACKBONE`` (``resnet*``, ``efficientnet-b*``), 2D.

    These MONAI encoders return 5 features at strides 2, 4, 8, 16, 32; the stride-2 one is dropped.
    ``pretrained`` is False by default (no download; MONAI's 2D ResNets have no pretrained weights).

    Args:
        backbone: a key of ``FLEXUNET_BACKBONE.register_dict``.
        in_channels: number of input channels.
        pretrained: passed to the MONAI encoder.
        encoder_kwargs: further keyword arguments for the MONAI encoder (override its registered defaults).

    Input ``(B, in_channels, W, H)``; output a list of 4 tensors, see the module docstring.
    """

    def __init__(self, backbone: str, in_channels: int = 1, pretrained: bool = False, **encoder_kwargs) -> None:
        super().__init__()
        if backbone not in FLEXUNET_BACKBONE.register_dict:
            raise ValueError(f"Unknown MONAI backbone {backbone!r}; valid: {sorted(FLEXUNET_BACKBONE.register_dict)}.")
        entry = FLEXUNET_BACKBONE.register_dict[backbone]
        params = dict(entry["parameter"])  # copy: the registry's dict is shared
        params.update(spatial_dims=2, in_channels=in_channels, pretrained=pretrained)
        params.update(encoder_kwargs)
        self.backbone_name = backbone
        self.body = entry["type"](**params)
        self.out_channels: list[int] = list(entry["feature_channel"])[1:]
        self.strides: list[int] = list(_STRIDES)

    def forward(self, x: Tensor) -> list[Tensor]:
        """``x``: ``(B, in_channels, W, H)`` -> list of 4 maps at strides 4, 8, 16, 32."""
        feats = self.body(x)
        return list(feats)[1:]


class ZeroPadShortcut(nn.Module):
    """The parameter-free shortcut of MONAI's ResNet (``shortcut_type="A"``, used by ``resnet18``/``resnet34``) as a
    module: stride-``stride`` subsampling (``avg_pool`` with kernel 1), then zero channels up to ``planes``.

    MONAI's own is a ``functools.partial`` of ``ResNet._downsample_basic_block``, which ``torch.jit.script`` cannot
    compile, and it concatenates ``out.data``, which ``torch.jit.trace``, ``torch.onnx.export`` and
    ``torch.export`` record as a constant (the example input's activations, with its batch size), so that no
    exported ResNet-18 was correct. Same values and gradients (``detach`` as ``.data``); no parameters, so state
    dicts are unchanged.
    """

    def __init__(self, planes: int, stride: int) -> None:
        super().__init__()
        self.planes = int(planes)
        self.stride = int(stride)

    def forward(self, x: Tensor) -> Tensor:
        out = nn.functional.avg_pool2d(x, kernel_size=1, stride=self.stride)
        pads = out.new_zeros([out.shape[0], self.planes - out.shape[1], out.shape[2], out.shape[3]])
        return torch.cat([out.detach(), pads], dim=1)


class ResNetEncoder(FlexUNetBackboneEncoder):
    """MONAI ResNet (``monai.networks.nets.resnet.ResNetEncoder``) features at strides 4..32.

    Channels: ``resnet18/34`` -> ``[64, 128, 256, 512]``; ``resnet50`` -> ``[256, 512, 1024, 2048]``.
    The ``shortcut_type="A"`` shortcuts are :class:`ZeroPadShortcut` modules (scriptable and exportable).
    """

    def __init__(self, model_name: str = "resnet18", in_channels: int = 1, pretrained: bool = False, **kwargs) -> None:
        if not model_name.startswith("resnet"):
            raise ValueError(f"ResNetEncoder expects a resnet name, got {model_name!r}.")
        super().__init__(model_name, in_channels=in_channels, pretrained=pretrained, **kwargs)
        for block in self.body.modules():
            down = getattr(block, "downsample", None)
            if isinstance(down, partial) and getattr(down.func, "__name__", "") == "_downsample_basic_block":
                block.downsample = ZeroPadShortcut(down.keywords["planes"], down.keywords["stride"])


class EfficientNetEncoder(FlexUNetBackboneEncoder):
    """MONAI EfficientNet (``monai.networks.nets.efficientnet.EfficientNetEncoder``) features at strides 4..32.

    Channels: ``efficientnet-b0`` -> ``[24, 40, 112, 320]``.
    """

    def __init__(
        self, model_name: str = "efficientnet-b0", in_channels: int = 1, pretrained: bool = False, **kwargs
    ) -> None:
        if not model_name.startswith("efficientnet"):
            raise ValueError(f"EfficientNetEncoder expects an efficientnet name, got {model_name!r}.")
        super().__init__(model_name, in_channels=in_channels, pretrained=pretrained, **kwargs)


_DENSENET_PRESETS: dict[str, dict] = {
    "densenet121": {},
    # a very small DenseNet for tests and CI
    "densenet-tiny": {"init_features": 16, "growth_rate": 8, "block_config": (2, 2, 2, 2), "bn_size": 2},
}
_FLEX_NAMES = ["resnet18", "resnet34", "resnet50"] + [f"efficientnet-b{i}" for i in range(4)]
ENCODER_NAMES: tuple[str, ...] = tuple(list(_DENSENET_PRESETS) + _FLEX_NAMES)


def build_encoder(name: str, in_channels: int = 1, **kwargs) -> nn.Module:
    """Build an encoder by name (see :data:`ENCODER_NAMES`).

    Args:
        name: ``densenet121`` (default of the model), ``densenet-tiny`` (tests/CI), ``resnet18``,
            ``resnet34``, ``resnet50``, ``efficientnet-b0`` ... ``efficientnet-b3``.
        in_channels: number of input channels.
        kwargs: passed to :class:`DenseNetEncoder` (overriding the preset) or to the MONAI encoder.

    Raises:
        ValueError: unknown name (the message lists the valid names).
    """
    if name in _DENSENET_PRESETS:
        return DenseNetEncoder(in_channels=in_channels, **{**_DENSENET_PRESETS[name], **kwargs})
    if name.startswith("resnet") and name in _FLEX_NAMES:
        return ResNetEncoder(name, in_channels=in_channels, **kwargs)
    if name.startswith("efficientnet") and name in _FLEX_NAMES:
        return EfficientNetEncoder(name, in_channels=in_channels, **kwargs)
    raise ValueError(f"Unknown encoder {name!r}; valid names: {', '.join(ENCODER_NAMES)}.")


def encoder_out_channels(encoder: nn.Module) -> list[int]:
    """``encoder.out_channels`` checked to be a list of 4 ints (the contract of this module)."""
    ch = getattr(encoder, "out_channels", None)
    if ch is None or len(ch) != 4:
        raise ValueError(
            f"An encoder must expose out_channels (4 ints, strides 4..32); {type(encoder).__name__} has {ch!r}."
        )
    return [int(c) for c in ch]
