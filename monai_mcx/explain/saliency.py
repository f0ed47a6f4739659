"""Class saliency maps of MultiCheXNet's diagnosis with MONAI's Grad-CAM / Grad-CAM++ (``monai.visualize``).

MONAI's CAM classes need a network that returns logits ``(B, K)``; :class:`ClassLogits` wraps a
:class:`~monai_mcx.networks.MultiCheXNet` so that it runs only the shared encoder and the classification head and
returns ``class_logits``. Its modules are the network's own (shared, not copied) under the network's names
(``encoder.*``, ``classification_head.*``), plus one parameter-free ``nn.Identity`` named ``stride32`` through which
the encoder's last feature map passes on its way to the classification head.

Layers (``layer=``):

- ``"stride32"`` (default, :data:`DEFAULT_LAYER`): the stride-32 encoder feature ``(B, C, ~W/32, ~H/32)`` that the
  classification head pools -- for every encoder (DenseNet: ``norm5`` + ReLU; ResNet: ``layer4``; EfficientNet: the
  last block). With the head's global average pool + linear layer, Grad-CAM on it is the class activation map of
  Zhou et al. (2016). It is coarse (7 x 7 cells at 224 px, 2 x 2 at 64 px) but is exactly what the classifier sees.
- any module name of the network, e.g. ``"encoder.features.denseblock3"`` (DenseNet, stride 16, finer).

Maps (``SaliencyMaps.__call__``): ``(B, K, W, H)`` in the network's geometry (the input's size), one channel per
class, each map upsampled bilinearly by MONAI's ``default_upsampler`` and divided by its maximum so it lies in [0, 1]
with 1 at its maximum; a map with no positive evidence (all zero after Grad-CAM's ReLU) stays all zero. (MONAI's
``default_normalizer`` is not used: it maps max -> 0 and min -> 1.) Resampling to the original image goes through the
same geometry as the predicted masks (:func:`to_original_geometry`).

Side effects are undone: the hooks MONAI's ``ModelWithHooks`` registers are removed after each call, the train/eval
mode of every module and ``requires_grad`` of every parameter are restored, the network's ``.grad`` fields are not
touched (gradients flow to the input only), and ``inplace`` flags MONAI switches off on the hooked layer are reset.
Works inside ``torch.no_grad()`` / ``torch.inference_mode()`` (an evaluator's context) and under AMP (computed in
float32).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from monai_mcx.inferers import probs_to_original
from monai_mcx.keys import OriginalKeys

__all__ = [
    "DEFAULT_LAYER",
    "DEFAULT_SALIENCY",
    "SALIENCY_METHODS",
    "saliency_settings",
    "ClassLogits",
    "SaliencyMaps",
    "to_original_geometry",
    "saliency_nifti_bytes",
    "saliency_result",
]

#: the documented default layer: the stride-32 encoder feature pooled by the classification head
DEFAULT_LAYER = "stride32"
SALIENCY_METHODS = ("gradcam", "gradcampp")
#: the model description's ``saliency`` slot for new models (an absent slot means this)
DEFAULT_SALIENCY = {"method": "gradcam", "layer": DEFAULT_LAYER}


def saliency_settings(description: object = None) -> dict:
    """The saliency settings ``{"method", "layer"}`` of a model: its description's ``saliency`` slot (a
    :class:`~monai_mcx.model.ModelDescription`, the slot's dict itself, or None), with :data:`DEFAULT_SALIENCY`
    for what is absent. Raises ``ValueError`` naming the description for an unknown method or extra keys."""
    slot = getattr(description, "saliency", description)
    where = getattr(description, "path", None) or "the model description"
    if slot is None:
        return dict(DEFAULT_SALIENCY)
    if not isinstance(slot, dict):
        raise ValueError(f"{where}: saliency must be an object {{'method', 'layer'}} or null, got {slot!r}.")
    unknown = sorted(set(slot) - set(DEFAULT_SALIENCY))
    if unknown:
        raise ValueError(f"{where}: saliency has unknown keys {unknown} (known: {sorted(DEFAULT_SALIENCY)}).")
    out = {**DEFAULT_SALIENCY, **{k: v for k, v in slot.items() if v is not None}}
    if out["method"] not in SALIENCY_METHODS:
        raise ValueError(f"{where}: saliency method {out['method']!r} is not one of {list(SALIENCY_METHODS)}.")
    out["layer"] = str(out["layer"])
    return out


def _unwrap(net: nn.Module) -> nn.Module:
    """The network inside ``DistributedDataParallel`` / ``DataParallel`` (the module itself otherwise)."""
    while isinstance(net, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        net = net.module
    return net


class ClassLogits(nn.Module):
    """A MultiCheXNet as a network returning ``class_logits`` ``(B, K)``, with the hookable ``stride32`` layer.

    Args:
        net: a :class:`~monai_mcx.networks.MultiCheXNet` (or anything with ``encoder`` returning 4 features and a
            ``classification_head``) with the classification head built. Modules are shared with ``net``.

    Its state dict equals the network's encoder + classification head (``nn.Identity`` has no parameters).
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        net = _unwrap(net)
        head = getattr(net, "classification_head", None)
        if head is None:
            tasks = getattr(net, "tasks", "?")
            raise ValueError(f"saliency needs a classification head; the network has tasks={tasks}.")
        self.encoder = net.encoder
        self.classification_head = head
        self.stride32 = nn.Identity()

    def forward(self, image: Tensor) -> Tensor:
        """``image`` ``(B, C, W, H)`` -> class logits ``(B, K)``."""
        features = self.encoder(image)
        return self.classification_head(self.stride32(features[-1]))


def _max_normalise(x: Tensor) -> Tensor:
    """``(B, 1, *spatial)`` -> each map divided by its maximum (all-zero maps stay zero)."""
    peak = x.flatten(1).amax(dim=1).view(-1, *([1] * (x.ndim - 1)))
    return torch.where(peak > 0, x / peak.clamp_min(torch.finfo(x.dtype).tiny), torch.zeros_like(x))


@contextlib.contextmanager
def _restored(module: nn.Module, layer: nn.Module) -> Iterator[None]:
    """Undo what computing a Grad-CAM does to ``module``: hooks, modes, requires_grad, inplace flags."""
    modules = list(module.modules())
    modes = [m.training for m in modules]
    hooks = [(m, set(m._forward_hooks), set(m._backward_hooks)) for m in modules]
    params = list(module.parameters())
    flags = [p.requires_grad for p in params]
    inplace = layer.__dict__.get("inplace")
    try:
        for p in params:
            p.requires_grad_(False)
        yield
    finally:
        for p, f in zip(params, flags):
            p.requires_grad_(f)
        for m, mode in zip(modules, modes):
            m.training = mode
        for m, fwd, bwd in hooks:
            for k in set(m._forward_hooks) - fwd:
                del m._forward_hooks[k]
            for k in set(m._backward_hooks) - bwd:
                del m._backward_hooks[k]
            if not m._backward_hooks:
                m._is_full_backward_hook = None
        if inplace is not None:
            layer.__dict__["inplace"] = inplace


class SaliencyMaps:
    """Per-class Grad-CAM (or Grad-CAM++) maps of a MultiCheXNet's classification, with ``monai.visualize``.

    Args:
        net: the network (MultiCheXNet with a classification head); it is wrapped in :class:`ClassLogits`.
        layer: ``"stride32"`` (default) or a module name of ``net`` (module docstring).
        method: ``"gradcam"`` (:class:`monai.visualize.GradCAM`) or ``"gradcampp"``
            (:class:`monai.visualize.GradCAMpp`).
        class_indices: the classes to explain (default all ``K``).

    ``__call__(image)``: ``image`` ``(B, C, W, H)`` -> maps ``(B, len(class_indices), W, H)`` float32 in [0, 1],
    on the image's device, in the network's geometry. One forward + backward pass per class (Grad-CAM++: per class
    and image).
    """

    def __init__(
        self,
        net: nn.Module,
        layer: str = DEFAULT_LAYER,
        method: str = "gradcam",
        class_indices: Sequence[int] | None = None,
    ) -> None:
        if method not in SALIENCY_METHODS:
            raise ValueError(f"saliency method must be one of {SALIENCY_METHODS}, got {method!r}.")
        self.wrapper = ClassLogits(net)
        names = dict(self.wrapper.named_modules())
        if layer not in names or layer == "":
            examples = [n for n in names if n.count(".") <= 2 and n][:8]
            raise ValueError(
                f"saliency layer {layer!r} is not a module of the network; use {DEFAULT_LAYER!r} or a "
                f"module name such as {examples}."
            )
        self.layer = layer
        self.method = method
        k = len(getattr(_unwrap(net), "class_names", ())) or self.wrapper.classification_head.fc.out_features
        self.class_indices = list(range(k)) if class_indices is None else [int(c) for c in class_indices]
        if not self.class_indices:
            raise ValueError("class_indices must not be empty.")

    @classmethod
    def from_description(cls, net: nn.Module, description: object = None, **kwargs) -> SaliencyMaps:
        """Maps with the method and layer of a model description's ``saliency`` slot (:func:`saliency_settings`;
        absent: Grad-CAM on ``stride32``). ``kwargs``: ``class_indices``."""
        return cls(net, **saliency_settings(description), **kwargs)

    def settings(self) -> dict:
        """``{"method", "layer"}`` as recorded next to the written maps."""
        return {"method": self.method, "layer": self.layer}

    def _cam(self):
        from monai.visualize import GradCAM, GradCAMpp

        cls = GradCAM if self.method == "gradcam" else GradCAMpp
        return cls(nn_module=self.wrapper, target_layers=self.layer, postprocessing=_max_normalise)

    def __call__(self, image: Tensor) -> Tensor:
        layer = dict(self.wrapper.named_modules())[self.layer]
        x = image.detach().float()
        maps = []
        with _restored(self.wrapper, layer), torch.inference_mode(False), torch.enable_grad():
            x = x.clone().requires_grad_(True)  # gradients flow to the input; parameters are frozen meanwhile
            autocast = torch.autocast(device_type=x.device.type, enabled=False)
            with autocast:
                cam = self._cam()
                # MONAI's GradCAMpp multiplies the (B,) class scores with the (B, C, w, h) gradients without
                # reshaping, which only broadcasts for B = 1: Grad-CAM++ runs one image at a time
                chunks = [x] if self.method == "gradcam" else list(x.split(1))
                for c in self.class_indices:
                    maps.append(torch.cat([cam(xi, class_idx=c).detach() for xi in chunks], dim=0))
        return torch.cat(maps, dim=1).float()


def to_original_geometry(maps: Tensor, original_size: Sequence[int]) -> Tensor:
    """Resample maps from the network's geometry to the original image: ``(C, W, H)`` or ``(B, C, W, H)`` ->
    same leading dims at ``original_size`` ``(W0, H0)``, bilinear (``align_corners=False``), exactly as the
    predicted lesion probabilities are resampled before thresholding (:class:`monai_mcx.handlers.PredictionWriter`);
    clipped to [0, 1]."""
    return probs_to_original(maps, original_size).clamp(0, 1).to(maps.device)


def saliency_nifti_bytes(maps_wh: np.ndarray, spacing: Sequence[float] = (1.0, 1.0)) -> bytes:
    """Gzipped NIfTI of float32 saliency maps ``(W, H)`` or ``(W, H, K)`` (one slice per class, MONAI order, x
    first), with the pixel spacing in the affine (as the predicted mask's NIfTI)."""
    import gzip

    import nibabel as nib

    arr = np.asarray(maps_wh, dtype=np.float32)
    affine = np.diag([float(spacing[0]), float(spacing[1]), 1.0, 1.0])
    img = nib.Nifti1Image(arr, affine)
    img.header.set_data_dtype(np.float32)
    return gzip.compress(img.to_bytes(), compresslevel=6)


def saliency_result(
    saliency: SaliencyMaps, image: Tensor, original_size: Sequence[int], class_names: Sequence[str]
) -> dict:
    """One image's saliency as plain JSON values, for a result that travels without side files (MONAI Label).

    Args:
        saliency: the maps (method and layer recorded).
        image: ``(1, C, W, H)`` network input (network geometry), on the network's device.
        original_size: ``(W0, H0)`` of the original image; maps are resampled with :func:`to_original_geometry`.
        class_names: the classifier's class names (``saliency.class_indices`` index them).

    Returns:
        ``{"method", "layer", "classes", "size_wh", "peak_xy" {class: [x, y] or None},
        "png_base64" {class: base64 of a grayscale 8-bit PNG, rows x cols at the original size, 255 = saliency 1}}``.
    """
    import base64

    from PIL import Image

    if image.ndim != 4 or image.shape[0] != 1:
        raise ValueError(f"saliency_result: expected one image (1, C, W, H), got {tuple(image.shape)}.")
    maps = to_original_geometry(saliency(image)[0].cpu(), original_size).numpy()  # (K', W0, H0)
    names = [str(class_names[c]) for c in saliency.class_indices]
    out: dict = {
        **saliency.settings(),
        "classes": names,
        OriginalKeys.SIZE_WH.value: [int(v) for v in original_size],
        "peak_xy": {},
        "png_base64": {},
    }
    for k, name in enumerate(names):
        m = maps[k]
        out["peak_xy"][name] = [int(v) for v in np.unravel_index(int(m.argmax()), m.shape)] if m.max() > 0 else None
        buf = io.BytesIO()
        Image.fromarray((np.clip(m.T, 0, 1) * 255).round().astype(np.uint8)).save(buf, format="PNG")
        out["png_base64"][name] = base64.b64encode(buf.getvalue()).decode("ascii")
    return out
