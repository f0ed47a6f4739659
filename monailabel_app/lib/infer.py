"""MONAI Label infer task: one MultiCheXNet pass gives the lesion mask (the label), class probabilities,
the gate decision and the boxes (in the result JSON).

Pipeline (``BasicInferTask.__call__``): pre = ``LoadCXRd`` (PNG/JPEG and single-frame DICOM, one channel
in [0, 1] by its intensity pipeline, ``(1, W, H)``) + ``Resized`` to the bundle's ``spatial_size``
-> :meth:`MultiCheXNetInfer.run_inferer`
(network once; sigmoid class probabilities; the classifier gates mask and boxes below ``gate_threshold``;
the seg probabilities are resized back to the ORIGINAL ``(W, H)`` and thresholded; boxes decoded with the
bundle's ``BoxDecoder`` and scaled to original pixels) -> writer. The label handed to the writer is a 2-D
``uint8`` ``(W, H)`` array (no channel, no ``Restored``), so PNG labels come back ``rows x cols`` like the study.

Result JSON (``data["result"]``, plain Python types), the same fields as the bundle's ``PredictionWriter``:
``class_probabilities`` {class: p}, ``gate`` {"threshold", "positive", "probability"}, ``boxes`` (gated)
and ``boxes_ungated``: lists of {"box": [x1, y1, x2, y2] (original pixels, x = column), "score", "label"},
``mask_area_px``, ``size_wh``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Hashable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from monai.data import MetaTensor
from monai.transforms import EnsureTyped, MapTransform, Resized
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer.basic_infer import BasicInferTask

from .bundle import BundleSpec, load_state_dict

logger = logging.getLogger(__name__)

ORIGINAL_SIZE = "mcx_original_size"
LESION = "lesion"


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

    def __init__(self, spec: BundleSpec, description: str = "MultiCheXNet: lesion mask + class probabilities + boxes",
                 result_extension: str = ".png", **kwargs):
        self.spec = spec
        self.box_decoder = spec.build_box_decoder()
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
                "gate_threshold": spec.gate_threshold,
                "seg_threshold": spec.seg_threshold,
            },
            load_strict=True,
            **kwargs,
        )

    # -- model -----------------------------------------------------------------------------------------
    def _get_network(self, device, data):
        """The network with ``models/model.pt`` (``weights_only=True``); reloaded when the file changes
        (e.g. after the train task published new weights)."""
        path = self.get_path()
        if not path:
            raise FileNotFoundError(f"no weights at {self.spec.model_path}")
        mtime = os.stat(path).st_mtime
        cached = self._networks.get(device)
        if cached and cached[1] == mtime:
            return cached[0]
        import copy

        network = copy.deepcopy(self.network)
        network.load_state_dict(load_state_dict(path, map_location="cpu"), strict=self.load_strict)
        network.to(torch.device(device)).eval()
        self._networks[device] = (network, mtime)
        logger.info(f"MultiCheXNet weights loaded from {path}")
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
        network = self._get_network(device, data)
        image = data["image"]
        x = image.as_tensor() if isinstance(image, MetaTensor) else torch.as_tensor(image)
        x = x[None].float().to(torch.device(device))  # (1, 1, w, h)
        with torch.no_grad():
            out = network(x)
        orig_w, orig_h = data.get(ORIGINAL_SIZE) or [int(s) for s in x.shape[2:]]
        in_w, in_h = (int(s) for s in x.shape[2:])

        gate_t = float(data.get("gate_threshold", self.spec.gate_threshold))
        seg_t = float(data.get("seg_threshold", self.spec.seg_threshold))
        result: dict = {"size_wh": [orig_w, orig_h]}
        positive = True
        if "class_logits" in out:
            probs = torch.sigmoid(out["class_logits"][0].float()).cpu().tolist()
            result["class_probabilities"] = {c: float(p) for c, p in zip(self.spec.class_names, probs)}
            top = max(probs) if probs else 0.0
            positive = bool(top >= gate_t)
            result["gate"] = {"threshold": gate_t, "positive": positive, "probability": float(top)}
        else:
            result["gate"] = {"threshold": gate_t, "positive": True, "probability": None}

        # mask: probabilities back to the ORIGINAL (W, H), threshold, gate; 2-D uint8 (W, H)
        seg = torch.sigmoid(out["seg_logits"][:1].float())
        seg = F.interpolate(seg, size=(orig_w, orig_h), mode="bilinear", align_corners=False)[0, 0]
        mask = ((seg >= seg_t) & positive).to(torch.uint8).cpu().numpy()
        result["mask_area_px"] = int(mask.sum())

        boxes_ungated: list = []
        if self.box_decoder is not None and "box_cls_logits" in out:
            det = self.box_decoder(out, x)[0]
            scale = np.array([orig_w / in_w, orig_h / in_h] * 2, dtype=np.float64)
            b = det["boxes"].detach().float().cpu().numpy().reshape(-1, 4) * scale
            b = np.clip(b, 0, np.array([orig_w, orig_h] * 2, dtype=np.float64))
            for box, score in zip(b, det["scores"].detach().float().cpu().numpy().reshape(-1)):
                boxes_ungated.append({"box": [round(float(v), 2) for v in box], "score": float(score), "label": LESION})
        result["boxes_ungated"] = boxes_ungated
        result["boxes"] = boxes_ungated if positive else []

        data[self.output_label_key] = mask  # (W, H) uint8: the writer transposes to rows x cols
        data[self.output_json_key] = result
        return data

    def writer(self, data, extension=None, dtype=None):
        # the writer has no 2-D geometry for PNG; keep dtype uint8 unless the request asked otherwise
        if not data.get("result_dtype"):
            data["result_dtype"] = "uint8"
        return super().writer(data, extension=extension, dtype=dtype)
