"""MONAI Label infer task: one MultiCheXNet pass gives the lesion mask (the label), class probabilities,
the gate decision and the boxes (in the result JSON).

Pipeline (``BasicInferTask.__call__``): pre = ``LoadCXRd`` (PNG/JPEG and single-frame DICOM, one channel
in [0, 1] by its intensity pipeline, ``(1, W, H)``) + ``Resized`` to the model's ``spatial_size``
-> :meth:`MultiCheXNetInfer.run_inferer` (the bundle's one post-processing,
:class:`monai_mcx.inferers.MultiCheXNetInferer`, built from the model description: class probabilities, the
per-class gate, the mask, the boxes at the operating point; then :func:`monai_mcx.inferers.to_original` maps mask
and boxes to the ORIGINAL ``(W, H)``) -> writer. The label handed to the writer is a 2-D
``uint8`` ``(W, H)`` array (no channel, no ``Restored``), so PNG labels come back ``rows x cols`` like the study.

Result JSON (``data["result"]``, plain Python types), the same fields as the bundle's ``PredictionWriter``:
``class_probabilities`` {class: p}, ``gate`` {"rule", "thresholds" {class: t}, "positive"}, ``boxes`` (gated,
at the operating point) and ``boxes_ungated``: lists of {"box": [x1, y1, x2, y2] (original pixels, x = column),
"score", "label"}, ``box_score_threshold``, ``mask_area_px``, ``size_wh``, ``operating_point`` (the image's
population -- from the request's ``population`` or the DICOM age, else the model's default -- and its thresholds).
A request may override ``population`` (``adult`` / ``pediatric``), ``class_thresholds`` (one number or one per
class), ``seg_threshold`` and ``box_score_threshold``.

The operating point (calibration, class thresholds, mask threshold, box score threshold) comes from ONE reading
of the model description, re-read as a whole with the weights when ``model.pt`` or ``model.json`` changes (a train
task publishing, an evaluation writing a new operating point into ``model.json``). The task's config holds
``None`` for the three overridable values ("the description's"), never a copy of them: a copy taken at start-up
would be merged into every request and pair old thresholds with a new calibration.

Saliency (optional, off by default: one extra forward + backward pass per class): with the task's config
``saliency`` true (``--conf saliency true`` at server start) or a request's ``params={"saliency": true}``, the result
JSON also has ``saliency``, computed by :func:`monai_mcx.explain.saliency_result` with the method and layer of the
model description's ``saliency`` slot (default Grad-CAM on ``stride32``): ``{"method", "layer", "classes",
"size_wh", "peak_xy" {class: [x, y]}, "png_base64" {class: base64 grayscale 8-bit PNG, rows x cols of the study,
255 = saliency 1}}``. It travels inside the JSON because a MONAI Label infer result carries one label file.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Hashable, Mapping

import torch
from monai.data import MetaTensor
from monai.transforms import EnsureTyped, MapTransform, Resized
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer.basic_infer import BasicInferTask

from monai_mcx.model import description_path, has_description
from monai_mcx.networks.weights import load_weights

from .bundle import BundleSpec
from .publish import load_published

logger = logging.getLogger(__name__)

ORIGINAL_SIZE = "mcx_original_size"
LESION = "lesion"


def _truthy(value) -> bool:
    """A request / config flag: ``True``, ``"true"``, ``"1"``, ``"yes"`` (MONAI Label passes config values as given)."""
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def image_population(image, requested=None) -> tuple:
    """``(population, reason)`` of the request's image: the request's ``population`` (``adult`` / ``pediatric``),
    else the patient's age in the DICOM header (:mod:`monai_mcx.data.populations`); ``(None, None)``: the model's
    default population applies."""
    import math

    from monai_mcx.data.populations import resolve_population

    meta = getattr(image, "meta", None) or {}
    age = meta.get("patient_age_years")
    age = None if age is None or not math.isfinite(float(age)) else float(age)
    name, reason = resolve_population(requested, age)
    return (name, reason) if name is not None else (None, None)


class RecordOriginalSized(MapTransform):
    """Store the loaded image's spatial size ``(W, H)`` under ``mcx_original_size`` (before resizing)."""

    def __init__(self, keys="image"):
        super().__init__(keys)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[ORIGINAL_SIZE] = [int(s) for s in d[key].shape[1:]]
        return d


class MultiCheXNetInfer(BasicInferTask):
    """Segmentation-type task (``labels={"lesion": 1}``, dimension 2) serving the whole MultiCheXNet.

    Args:
        spec: the parsed bundle.
        description: shown in ``/info``.
        result_extension: label file extension when the request gives none (``.png`` for every 2-D input,
            DICOM included; ask for ``.nii.gz`` / ``.nrrd`` with ``params={"result_extension": ...}``).
    """

    def __init__(
        self,
        spec: BundleSpec,
        description: str = "MultiCheXNet: lesion mask + class probabilities + boxes",
        result_extension: str = ".png",
        saliency: bool = False,
        **kwargs,
    ):
        self.spec = spec
        self.postprocessor = spec.build_postprocessor()
        self.model_description = spec.description
        super().__init__(
            path=spec.model_path,
            network=spec.build_network(),
            type=InferType.SEGMENTATION,
            labels={LESION: 1},
            dimension=2,
            description=description,
            config={
                "result_extension": result_extension,
                "result_dtype": "uint8",
                # None: the current model description's (module docstring); a request may set them
                "class_thresholds": None,
                "seg_threshold": None,
                "box_score_threshold": None,
                "saliency": bool(saliency),
            },
            load_strict=True,
            **kwargs,
        )

    # -- model -----------------------------------------------------------------------------------------
    def _get_network(self, device, data):
        """The network and post-processor of ``models/model.pt`` + ``models/model.json`` (loaded as one pair by
        :func:`monai_mcx.model.load_model`, hash-checked, ``weights_only=True``); reloaded when either file changes
        (e.g. after the train task published). A model without a description: the bundle's network with the weights
        read through the weights layer."""
        path = self.get_path()
        if not path:
            raise FileNotFoundError(f"no weights at {self.spec.model_path}")
        dpath = description_path(path)
        stamp = (os.stat(path).st_mtime_ns, os.stat(dpath).st_mtime_ns if dpath.is_file() else None)
        cached = self._networks.get(device)
        if cached and cached[1] == stamp:
            return cached[0]
        if has_description(path):
            network, desc, self.postprocessor = load_published(path)
        else:
            desc, network = None, self.spec.build_network()
            load_weights(network, path, strict=self.load_strict)
            self.postprocessor = self.spec.build_postprocessor()
        network.to(torch.device(device)).eval()
        self.model_description = desc if desc is not None else self.spec.description
        self._networks[device] = (network, stamp)
        logger.info(f"MultiCheXNet weights loaded from {path}" + (f" with its description {dpath}" if desc else ""))
        return network

    # -- pipeline --------------------------------------------------------------------------------------
    def pre_transforms(self, data=None):
        from monai_mcx.transforms.io import LoadCXRd

        return [
            LoadCXRd(keys="image"),
            RecordOriginalSized(keys="image"),
            Resized(keys="image", spatial_size=self.spec.spatial_size, mode="area"),
            EnsureTyped(keys="image", dtype=torch.float32),
        ]

    def inverse_transforms(self, data=None):
        return None  # run_inferer restores the original size itself

    def post_transforms(self, data=None):
        return []

    def run_inferer(self, data, convert_to_batch=True, device="cuda"):
        from monai_mcx.inferers import MultiCheXNetInferer
        from monai_mcx.keys import OriginalKeys

        network = self._get_network(device, data)
        image = data["image"]
        x = image.as_tensor() if isinstance(image, MetaTensor) else torch.as_tensor(image)
        x = x[None].float().to(torch.device(device))  # (1, 1, w, h)
        orig = data.get(ORIGINAL_SIZE) or [int(s) for s in x.shape[2:]]
        overrides = {
            k: data[k] for k in ("class_thresholds", "seg_threshold", "box_score_threshold") if data.get(k) is not None
        }
        pp = self.postprocessor.with_settings(**overrides)
        population = image_population(image, data.get("population"))
        with torch.no_grad():
            pred = MultiCheXNetInferer(pp)(x, network, populations=[population])
        res = pp.to_original(pred, 0, orig)
        result: dict = {OriginalKeys.SIZE_WH.value: res[OriginalKeys.SIZE_WH]}
        if res[OriginalKeys.CLASS_PROBS] is not None:
            result["class_probabilities"] = {c: float(p) for c, p in zip(pp.class_names, res[OriginalKeys.CLASS_PROBS])}
            result["calibrated"] = pp.calibrated  # temperature-scaled probabilities of the model description
        point = result["operating_point"] = pp.point_record(res[OriginalKeys.POPULATION])
        result[OriginalKeys.GATE.value] = {
            "rule": pp.gate_rule,
            "thresholds": point["gate_thresholds"],
            "positive": bool(res[OriginalKeys.GATE]),
        }
        result["box_score_threshold"] = point["box_score_threshold"]
        for key, scores in (
            (OriginalKeys.BOXES, OriginalKeys.SCORES),
            (OriginalKeys.BOXES_UNGATED, OriginalKeys.SCORES_UNGATED),
        ):
            result[key.value] = [
                {"box": [round(float(v), 2) for v in b], "score": float(sc), "label": LESION}
                for b, sc in zip(res[key], res[scores])
            ]
        mask = res[OriginalKeys.MASK].astype("uint8")  # (W, H), gated
        result["mask_area_px"] = int(mask.sum())
        if _truthy(data.get("saliency")) and res[OriginalKeys.CLASS_PROBS] is not None:
            from monai_mcx.explain import SaliencyMaps, saliency_result

            maps = SaliencyMaps.from_description(network, self.model_description)
            result["saliency"] = saliency_result(maps, x, orig, pp.class_names)
        data[self.output_label_key] = mask  # (W, H) uint8: the writer transposes to rows x cols
        data[self.output_json_key] = result
        return data

    def writer(self, data, extension=None, dtype=None):
        # the writer has no 2-D geometry for PNG; keep dtype uint8 unless the request asked otherwise
        if not data.get("result_dtype"):
            data["result_dtype"] = "uint8"
        return super().writer(data, extension=extension, dtype=dtype)
