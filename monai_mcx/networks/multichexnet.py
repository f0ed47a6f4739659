"""MultiCheXNet: one shared encoder, up to three heads (classification, segmentation, localization), and
optionally an anatomy head (``lungs``: lung-field segmentation).

Input ``image`` ``(B, in_channels, W, H)`` (spatial dim 0 is x). ``forward`` returns a dict with only
the keys of the built tasks (``docs/CONTRACTS.md``):

=================== ====================================================================
``class_logits``    ``(B, K)``, K = ``len(class_names)``
``seg_logits``      ``(B, 1, W, H)`` (lesion)
``lung_logits``     ``(B, 1, W, H)`` (lung field; only with the ``lungs`` task)
``box_cls_logits``  list over head levels of ``(B, A*C, w_l, h_l)``, C = 1
``box_regression``  list over head levels of ``(B, A*4, w_l, h_l)``
=================== ====================================================================

``forward(image, tasks=[...])`` computes only the named heads (the encoder always runs): the trainer skips a
head whose task has no usable sample in the batch, and inference can switch off a head it does not need.
``forward(image, samples={task: indices})`` runs a head on those images of the batch only (its outputs then
have ``len(indices)`` rows, in that order): the trainer runs each head on the samples its task trains on.
The parameters and the state dict are the same whatever ``tasks`` or ``samples`` is given.

Box maps are raw; decoding (anchors, box coder, NMS) is :mod:`monai_mcx.networks.box_decoding`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Dict, List, Optional

from torch import Tensor, nn

from monai_mcx.keys import ALL_TASKS, TASKS, PredKeys, Task

from .box_decoding import flatten_head_maps
from .encoders import build_encoder, encoder_out_channels
from .heads import ClassificationHead, LocalizationHead, SegmentationDecoder

__all__ = ["MultiCheXNet", "MultiCheXNetHead", "MultiCheXNetExport"]


def _selected(samples: Optional[Dict[str, Tensor]], task: str) -> Optional[Tensor]:
    """The batch indices the head of ``task`` runs on (None: the whole batch)."""
    if samples is None or task not in samples:
        return None
    return samples[task]


def _take(x: Tensor, idx: Optional[Tensor]) -> Tensor:
    """The rows ``idx`` of ``x`` (all of ``x`` when ``idx`` is None)."""
    return x if idx is None else x.index_select(0, idx.to(x.device))


class MultiCheXNet(nn.Module):
    """Multi-task chest X-ray network (the three single-task baselines are ``tasks=("<task>",)``).

    Args:
        encoder: an encoder name for :func:`monai_mcx.networks.encoders.build_encoder` or a module
            returning 4 features at strides 4..32 and exposing ``out_channels`` (and ideally ``strides``).
        in_channels: image channels (used when ``encoder`` is a name).
        class_names: names of the K classes of the classification head.
        tasks: non-empty subset of ``("classification", "segmentation", "localization", "lungs")`` (default:
            the first three; ``lungs`` adds the lung-field segmentation head).
        encoder_kwargs: extra arguments for ``build_encoder``.
        dropout: dropout of the classification head.
        seg_decoder_channels: channels of the segmentation decoder at strides 16, 8, 4.
        loc_feature_levels: encoder levels feeding the localization FPN (default strides 8, 16, 32).
        loc_fpn_channels: FPN and box-tower width.
        num_anchors: A, anchors per location (must match the anchor generator).
        loc_num_convs: convs per box tower.
        lung_decoder_channels: channels of the lung-field decoder at strides 16, 8, 4.

    Attributes: ``class_names``, ``tasks``, ``encoder``, ``classification_head``,
    ``segmentation_head``, ``localization_head``, ``lung_head`` (None for a task not built), ``box_strides``
    (nominal strides of the localization levels, or None).
    """

    def __init__(
        self,
        encoder: str | nn.Module = "densenet121",
        in_channels: int = 1,
        class_names: Sequence[str] = ("pneumonia",),
        tasks: Sequence[str] = TASKS,
        encoder_kwargs: dict | None = None,
        dropout: float = 0.2,
        seg_decoder_channels: Sequence[int] = (64, 48, 24),
        loc_feature_levels: Sequence[int] = (1, 2, 3),
        loc_fpn_channels: int = 48,
        num_anchors: int = 3,
        loc_num_convs: int = 2,
        lung_decoder_channels: Sequence[int] = (32, 24, 16),
    ) -> None:
        super().__init__()
        if isinstance(tasks, str):
            tasks = (tasks,)
        tasks = tuple(tasks)
        bad = [t for t in tasks if t not in ALL_TASKS]
        if not tasks or bad or len(set(tasks)) != len(tasks):
            raise ValueError(f"tasks must be a non-empty subset of {ALL_TASKS} without repeats, got {tasks}.")
        if isinstance(class_names, str):
            class_names = (class_names,)
        self.class_names: tuple[str, ...] = tuple(class_names)
        if Task.CLASSIFICATION in tasks and not self.class_names:
            raise ValueError("class_names must not be empty when the classification head is built.")
        # keep the canonical order whatever order was given
        self.tasks: tuple[str, ...] = tuple(t for t in ALL_TASKS if t in tasks)

        if isinstance(encoder, str):
            self.encoder = build_encoder(encoder, in_channels=in_channels, **(encoder_kwargs or {}))
        elif isinstance(encoder, nn.Module):
            self.encoder = encoder
        else:
            raise ValueError(f"encoder must be a name or an nn.Module, got {type(encoder).__name__}.")
        channels = encoder_out_channels(self.encoder)
        strides = list(getattr(self.encoder, "strides", [4, 8, 16, 32]))

        self.classification_head: ClassificationHead | None = None
        self.segmentation_head: SegmentationDecoder | None = None
        self.localization_head: LocalizationHead | None = None
        self.lung_head: SegmentationDecoder | None = None
        self.box_strides: list[int] | None = None
        if Task.CLASSIFICATION in self.tasks:
            self.classification_head = ClassificationHead(channels[-1], len(self.class_names), dropout=dropout)
        if Task.SEGMENTATION in self.tasks:
            self.segmentation_head = SegmentationDecoder(
                channels, decoder_channels=seg_decoder_channels, out_channels=1
            )
        if Task.LOCALIZATION in self.tasks:
            self.localization_head = LocalizationHead(
                channels,
                feature_levels=loc_feature_levels,
                fpn_channels=loc_fpn_channels,
                num_anchors=num_anchors,
                num_classes=1,
                num_convs=loc_num_convs,
            )
            self.box_strides = [strides[i] for i in self.localization_head.feature_levels]
        if Task.LUNGS in self.tasks:
            self.lung_head = SegmentationDecoder(channels, decoder_channels=lung_decoder_channels, out_channels=1)
        self.num_anchors = int(num_anchors)

    def forward(
        self, image: Tensor, tasks: Optional[List[str]] = None, samples: Optional[Dict[str, Tensor]] = None
    ) -> dict[str, Tensor | list[Tensor]]:
        """Run the encoder and the heads of ``tasks``.

        Args:
            image: ``(B, in_channels, W, H)``.
            tasks: the heads to compute, a subset of ``self.tasks`` (default: every built head). A head
                left out is not run and its keys are absent from the output.
            samples: ``{task: (n,) long indices into the batch}``: that head runs on the encoder features of
                those images only and its outputs have ``n`` rows, in the order of the indices (a task
                absent from ``samples`` runs on the whole batch). The encoder always sees the whole batch.
                In training, a segmentation selection that would leave BatchNorm one value per channel (one
                image whose smallest feature map is 1 x 1) runs the decoder on the whole batch and keeps its rows.

        Returns:
            dict of the computed heads' outputs (module docstring).
        """
        run_cls = self.classification_head is not None
        run_seg = self.segmentation_head is not None
        run_loc = self.localization_head is not None
        run_lung = self.lung_head is not None
        if tasks is not None:
            for t in tasks:
                if t not in self.tasks:
                    built = ", ".join(self.tasks)
                    raise ValueError("MultiCheXNet.forward: task " + t + " is not built (tasks=" + built + ").")
            run_cls = run_cls and Task.CLASSIFICATION.value in tasks
            run_seg = run_seg and Task.SEGMENTATION.value in tasks
            run_loc = run_loc and Task.LOCALIZATION.value in tasks
            run_lung = run_lung and Task.LUNGS.value in tasks
        features = self.encoder(image)
        out: dict[str, Tensor | list[Tensor]] = {}
        cls_head = self.classification_head
        if run_cls and cls_head is not None:
            out[PredKeys.CLASS_LOGITS.value] = cls_head(
                _take(features[-1], _selected(samples, Task.CLASSIFICATION.value))
            )
        seg_head = self.segmentation_head
        if run_seg and seg_head is not None:
            idx = _selected(samples, Task.SEGMENTATION.value)
            if idx is not None and self.training and idx.numel() * min([f.shape[2] * f.shape[3] for f in features]) < 2:
                # BatchNorm cannot train on one value per channel (one sample, a 1 x 1 map): whole batch, then rows
                out[PredKeys.SEG_LOGITS.value] = _take(seg_head(features, image.shape[2:]), idx)
            else:
                out[PredKeys.SEG_LOGITS.value] = seg_head([_take(f, idx) for f in features], image.shape[2:])
        loc_head = self.localization_head
        if run_loc and loc_head is not None:
            idx = _selected(samples, Task.LOCALIZATION.value)
            box_maps = loc_head([_take(f, idx) for f in features])
            out[PredKeys.BOX_CLS_LOGITS.value] = box_maps[PredKeys.BOX_CLS_LOGITS.value]
            out[PredKeys.BOX_REGRESSION.value] = box_maps[PredKeys.BOX_REGRESSION.value]
        lung_head = self.lung_head
        if run_lung and lung_head is not None:
            idx = _selected(samples, Task.LUNGS.value)
            if idx is not None and self.training and idx.numel() * min([f.shape[2] * f.shape[3] for f in features]) < 2:
                out[PredKeys.LUNG_LOGITS.value] = _take(lung_head(features, image.shape[2:]), idx)
            else:
                out[PredKeys.LUNG_LOGITS.value] = lung_head([_take(f, idx) for f in features], image.shape[2:])
        return out


class MultiCheXNetHead(nn.Module):
    """One head of a :class:`MultiCheXNet` as a single-tensor network.

    For ``verify_net_in_out``, TorchScript (``torch.jit.script`` works with the DenseNet encoders;
    MONAI's ResNet/EfficientNet encoders need ``torch.jit.trace``) and MONAI Label. Only the encoder and
    the chosen head run. The wrapper registers ``encoder`` and ``<head>_head`` directly (the other heads
    are None), so its state dict keys are the MultiCheXNet's own: a MultiCheXNet checkpoint loads into it
    with ``strict=False`` (the other heads' keys are the only unexpected ones).

    Args:
        net: a MultiCheXNet with that head built (modules are shared, not copied).
        head: ``"classification"`` -> ``(B, K)`` class logits; ``"segmentation"`` -> ``(B, 1, W, H)`` logits.
    """

    def __init__(self, net: MultiCheXNet, head: str = Task.CLASSIFICATION.value) -> None:
        super().__init__()
        if head not in (Task.CLASSIFICATION, Task.SEGMENTATION):
            raise ValueError(f"head must be 'classification' or 'segmentation', got {head!r}.")
        if head not in net.tasks:
            raise ValueError(f"the network has no {head} head (tasks={net.tasks}).")
        self.head = head
        self.encoder = net.encoder
        self.classification_head = net.classification_head if head == Task.CLASSIFICATION else None
        self.segmentation_head = net.segmentation_head if head == Task.SEGMENTATION else None

    def forward(self, image: Tensor) -> Tensor:
        features = self.encoder(image)
        cls_head = self.classification_head
        if cls_head is not None:
            return cls_head(features[-1])
        seg_head = self.segmentation_head
        assert seg_head is not None
        return seg_head(features, image.shape[2:])


class MultiCheXNetExport(nn.Module):
    """All outputs of a :class:`MultiCheXNet` as a tuple of plain tensors (TorchScript/ONNX export).

    Returns ``(class_logits (B, K), seg_logits (B, 1, W, H), box_cls_flat (B, N, C), box_reg_flat (B, N, 4))``
    with ``N = sum_l w_l*h_l*A`` in the order of MONAI's anchor generator
    (:func:`monai_mcx.networks.box_decoding.flatten_head_maps`, as ``RetinaNetDetector._reshape_maps``).
    A task that is not built gives an empty tensor: ``(B, 0)``, ``(B, 0, W, H)``, ``(B, 0, 1)``, ``(B, 0, 4)``.
    Works with ``torch.jit.trace`` (any encoder; the traced model accepts other input sizes) and
    ``torch.jit.script`` (any encoder: DenseNet, ResNet, EfficientNet). Like :class:`MultiCheXNetHead` it registers the net's
    modules under the net's own names, so its state dict equals the MultiCheXNet's.
    """

    def __init__(self, net: MultiCheXNet) -> None:
        super().__init__()
        self.encoder = net.encoder
        self.classification_head = net.classification_head
        self.segmentation_head = net.segmentation_head
        self.localization_head = net.localization_head
        self.lung_head = net.lung_head  # registered so the state dict stays the net's; not an export output
        self.num_anchors: int = net.num_anchors

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        features = self.encoder(image)
        b = image.shape[0]
        cls_head = self.classification_head
        if cls_head is not None:
            cls = cls_head(features[-1])
        else:
            cls = image.new_zeros([b, 0])
        seg_head = self.segmentation_head
        if seg_head is not None:
            seg = seg_head(features, image.shape[2:])
        else:
            seg = image.new_zeros([b, 0, image.shape[2], image.shape[3]])
        loc_head = self.localization_head
        if loc_head is not None:
            maps = loc_head(features)
            box_cls = flatten_head_maps(maps[PredKeys.BOX_CLS_LOGITS.value], self.num_anchors)
            box_reg = flatten_head_maps(maps[PredKeys.BOX_REGRESSION.value], self.num_anchors)
        else:
            box_cls = image.new_zeros([b, 0, 1])
            box_reg = image.new_zeros([b, 0, 4])
        return cls, seg, box_cls, box_reg
