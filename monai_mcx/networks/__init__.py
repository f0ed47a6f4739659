"""Networks of monai_mcx: multi-scale encoders, the three heads, MultiCheXNet, anchors and box decoding."""

from .anchors import fit_anchor_shapes, make_anchor_generator
from .box_decoding import BoxDecoder, decode_boxes, flatten_head_maps
from .encoders import (
    ENCODER_NAMES,
    DenseNetEncoder,
    EfficientNetEncoder,
    FlexUNetBackboneEncoder,
    ResNetEncoder,
    build_encoder,
)
from .heads import ClassificationHead, LocalizationHead, SegmentationDecoder
from .multichexnet import MultiCheXNet, MultiCheXNetExport, MultiCheXNetHead
from .pretrained import load_pretrained_encoder
