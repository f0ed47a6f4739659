#!/usr/bin/env python
"""Store a trained checkpoint as the bundle's shipped model (fp16 weights) and measure fp16-vs-fp32 parity.

The shipped ``bundle/models/model.pt`` must stay under 40 MB: a ResNet-18 MultiCheXNet is 45.6 MB in fp32 and half
of that in fp16. The network still runs in fp32: ``load_state_dict`` casts the stored fp16 tensors up, so the only
difference is the rounding of each weight to fp16, which this script measures on real images (class probability,
mask pixels, box scores) and writes to a JSON beside the model card.

Usage (then choose the operating points of the written checkpoint, see docs/experiments.md)::

    python scripts/ship_model.py --ckpt bundle/runs/real/models/final.pt --out bundle/models/model.pt \\
        --description bundle/runs/real/models/last.json \\
        --images ../shared/data/cxr-lesions/rsna/stage_2_train_images --report docs/shipped_model_parity.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from monai_mcx.utils import write_json_atomic


def half_state_dict(state: dict) -> dict:
    """Floating-point tensors to fp16, everything else (e.g. BatchNorm's ``num_batches_tracked``) unchanged."""
    return {k: (v.half() if v.is_floating_point() else v) for k, v in state.items()}


def parity(desc_path: Path, state32: dict, images: list[Path]) -> dict:
    """Largest differences between the network with fp32 and with fp16-rounded weights on ``images``."""
    from monai_mcx.model import build_network, read_description
    from monai_mcx.transforms.io import LoadCXR

    desc = read_description(desc_path)
    nets = []
    for state in (state32, {k: v.float() if v.is_floating_point() else v for k, v in half_state_dict(state32).items()}):
        net = build_network(desc)
        net.load_state_dict(state)
        nets.append(net.eval())
    load = LoadCXR()
    worst = {"class_prob": 0.0, "seg_prob": 0.0, "box_cls_prob": 0.0, "mask_pixels_changed": 0.0}
    with torch.no_grad():
        for path in images:
            img = load(str(path))[None].float()
            img = torch.nn.functional.interpolate(img, size=tuple(desc.spatial_size), mode="area")
            out32, out16 = (n(img) for n in nets)
            worst["class_prob"] = max(
                worst["class_prob"],
                float((out32["class_logits"].sigmoid() - out16["class_logits"].sigmoid()).abs().max()),
            )
            s32, s16 = out32["seg_logits"].sigmoid(), out16["seg_logits"].sigmoid()
            worst["seg_prob"] = max(worst["seg_prob"], float((s32 - s16).abs().max()))
            t = desc.mask_threshold
            worst["mask_pixels_changed"] = max(
                worst["mask_pixels_changed"], float(((s32 >= t) != (s16 >= t)).float().mean())
            )
            for a, b in zip(out32["box_cls_logits"], out16["box_cls_logits"]):
                worst["box_cls_prob"] = max(worst["box_cls_prob"], float((a.sigmoid() - b.sigmoid()).abs().max()))
    return {"images": len(images), "max_abs_diff": worst}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ckpt", required=True, help="the fp32 checkpoint (plain state dict)")
    p.add_argument("--out", help="where to write the fp16 state dict (e.g. bundle/models/model.pt)")
    p.add_argument(
        "--description",
        help="a model description of this network: the parity check builds the network from it and, with --out, it is "
        "written beside the fp16 weights (model.json) with their hash",
    )
    p.add_argument("--images", help="folder of images for the parity check")
    p.add_argument("--max-images", type=int, default=32)
    p.add_argument("--report", help="JSON file for the parity numbers")
    a = p.parse_args(argv)
    from monai_mcx.networks.weights import read_state_dict

    state, _ = read_state_dict(a.ckpt)  # torch.load(weights_only=True), a clean error naming the file
    if a.out:
        tmp = Path(a.out).with_suffix(".pt.tmp")
        torch.save(half_state_dict(state), tmp)
        tmp.replace(a.out)
        print(f"wrote {a.out} ({Path(a.out).stat().st_size / 1e6:.1f} MB, fp16)")
        if a.description:
            from monai_mcx.model import read_description, save_description
            from monai_mcx.model.files import checkpoint_sha256

            desc = read_description(a.description).replace(
                weights_sha256=checkpoint_sha256(a.out), weights_file=Path(a.out).name, weights_key=None
            )
            print(f"wrote {save_description(desc, a.out)} (the description of the fp16 weights)")
    if a.description and a.images:
        from monai_mcx.data.datalist import list_image_folder

        files = list_image_folder(a.images)[0][: a.max_images]
        result = parity(Path(a.description), state, [Path(f) for f in files])
        result.update({"fp32_checkpoint": str(a.ckpt), "images_folder": str(a.images)})
        print(json.dumps(result, indent=1))
        if a.report:
            write_json_atomic(result, a.report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
