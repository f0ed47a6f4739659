"""The real-data model on its validation split: operating points per population, metrics per population and source.

Runs a model trained with ``bundle/configs/train_real.json`` (read with :func:`monai_mcx.model.load_model`) on a
split of the datalist (patients never trained on) once, keeps every image's raw outputs (class logits, lesion and
lung probabilities at the network's size, every candidate box) and then, through the one post-processing path
(:meth:`monai_mcx.inferers.MultiCheXNetPostprocessor.apply_operating_point`):

1. fits the classifier's temperature on the split's labelled images;
2. chooses each population's operating point on that population's images
   (:func:`monai_mcx.metrics.population_points.choose_population_point`): the diagnosis threshold (Youden), the gate
   of the lesion heads for lesion recall (``--lesion-recall`` of the lesion-annotated images let through), the box
   score maximising the RSNA metric on the population's gated boxes; the global point (Youden on every image, the
   adult box score) for images of unknown population;
3. scores per population and per source with patient-bootstrap 95 % intervals (``experiments.real_results``),
   with the lung restriction on and off, and the gate per population against one gate for all;
4. writes ``results_real.json`` / ``results_real.md``, the worst validation cases per source
   (``images/worst_<source>.png``) and, with ``--write-description``, the chosen calibration, operating points,
   default population and lung restriction into the model's ``model.json``.

Example::

    python -m experiments.evaluate_real --ckpt bundle/runs/real/models/model.pt --write-description
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from experiments.common import REPO, repo_relative


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ckpt", type=Path, default=REPO / "bundle" / "runs" / "real" / "models" / "model.pt")
    ap.add_argument("--datalist", type=Path, default=REPO / "bundle" / "runs" / "real" / "datalist.json")
    ap.add_argument("--split", default="validation")
    ap.add_argument("--output-dir", type=Path, default=REPO / "docs")
    ap.add_argument("--lesion-recall", type=float, default=0.95, help="share of lesion images the gate lets through")
    ap.add_argument("--dilation", type=float, default=0.03, help="lung-field dilation, fraction of the image width")
    ap.add_argument("--components", type=int, default=2, help="lung-mask components kept (0: all)")
    ap.add_argument("--default-population", default="adult", choices=["adult", "pediatric"])
    ap.add_argument("--n-boot", type=int, default=1000, help="patient-bootstrap replicates")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-items", type=int, help="first N items only (smoke tests)")
    ap.add_argument("--write-description", action="store_true", help="store the chosen points in model.json")
    ap.add_argument("--no-gallery", action="store_true")
    return ap.parse_args(argv)


def build_transform(desc):
    """The validation preprocessing of ``train.json`` + ``train_real.json`` (``preprocessing_base``: RSNA images
    without a box get a known empty lesion mask, lung masks are loaded) at the described model's input size."""
    from monai.bundle import ConfigParser
    from monai.transforms import Compose

    from experiments.common import CONFIGS

    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "train.json"), str(CONFIGS / "train_real.json")])
    parser["spatial_size"] = list(desc.spatial_size)
    parser["class_names"] = list(desc.class_names)
    return Compose(parser.get_parsed_content("preprocessing_base"))


def collect(net, post, transform, items: list[dict], batch_size: int) -> list[dict]:
    """Run the network on ``items``; one record per image with its annotations and raw outputs (float16 maps)."""
    from monai_mcx.data import collate_cxr
    from monai_mcx.data.populations import resolve_population
    from monai_mcx.keys import PredKeys

    records = []
    for i in range(0, len(items), batch_size):
        chunk = items[i : i + batch_size]
        batch = collate_cxr([transform(dict(it)) for it in chunk])
        images = batch["image"].as_tensor() if hasattr(batch["image"], "as_tensor") else batch["image"]
        with torch.no_grad():
            pred = post(net(images), images)  # raw maps and every candidate box; points applied later
        for j, it in enumerate(chunk):
            pop, reason = resolve_population(None, None, it.get("population"), it.get("source"))
            r = {
                "index": i + j,
                "image": it["image"],
                "source": it["source"],
                "patient": it["patient"],
                "population": pop,
                "population_reason": reason,
                "label": None if it["label"] is None else np.asarray(it["label"], dtype=np.float64),
                "logits": pred[PredKeys.CLASS_LOGITS][j].numpy().astype(np.float64),
                "has_mask": bool(batch["has_mask"][j] > 0.5),
                "has_boxes": bool(batch["has_boxes"][j] > 0.5),
                "boxes": torch.as_tensor(batch["boxes"][j]).reshape(-1, 4).clone(),
            }
            if r["has_mask"]:
                r["mask"] = batch["mask"][j, 0].numpy() > 0.5
            if PredKeys.SEG_PROBS in pred:
                r["seg"] = pred[PredKeys.SEG_PROBS][j].half().clone()
            if PredKeys.LUNG_PROBS in pred:
                r["lung"] = pred[PredKeys.LUNG_PROBS][j].half().clone()
                r["has_lung"] = bool(batch.get("has_lung_mask", torch.zeros(len(chunk)))[j] > 0.5)
                if r["has_lung"]:
                    r["lung_gt"] = batch["lung_mask"][j, 0].numpy() > 0.5
            if PredKeys.DETECTIONS in pred:
                r["det"] = {k: v.detach().clone() for k, v in pred[PredKeys.DETECTIONS][j].items()}
            records.append(r)
        print(f"evaluate_real: {min(i + batch_size, len(items))}/{len(items)} images", flush=True)
    return records


def main(argv=None) -> int:
    from experiments.real_results import choose_points, score, write_gallery, write_results
    from monai_mcx.data import load_datalist
    from monai_mcx.inferers import MultiCheXNetPostprocessor
    from monai_mcx.model import load_model, save_description

    args = parse_args(argv)
    net, desc, _ = load_model(args.ckpt)
    net.eval()
    items = load_datalist(args.datalist, args.split, desc.class_names, max_items=args.max_items)
    raw_post = MultiCheXNetPostprocessor.from_description(desc.replace(calibration=None), box_score_threshold=0.0)
    t0 = time.perf_counter()
    transform = build_transform(desc)
    records = collect(net, raw_post, transform, items, args.batch_size)
    seconds = time.perf_counter() - t0
    chosen = choose_points(desc, records, args)
    out = {
        "ckpt": repo_relative(args.ckpt),
        "datalist": repo_relative(args.datalist),
        "split": args.split,
        "seconds": round(seconds, 1),
        "description": {k: chosen.to_dict()[k] for k in ("calibration", "operating_points", "default_population")},
        **score(chosen, records, args),
    }
    write_results(args, out)
    if not args.no_gallery:
        write_gallery(args, chosen, records, items, transform)
    if args.write_description:
        save_description(chosen, args.ckpt)
        print(f"evaluate_real: wrote the operating points into {repo_relative(args.ckpt.with_suffix('.json'))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
