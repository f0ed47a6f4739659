"""Does the shipped model's saliency point at the RSNA boxes? Pointing game on real validation images (issue 14).

Runs a model (default the shipped ``bundle/models/model.pt`` with its ``model.json``) on the validation images of a
datalist that are positive and have true boxes or a mask (patients the model never trained on, when the datalist is
the one it was trained with), computes the Grad-CAM map of the description's ``saliency`` slot (default Grad-CAM on
``stride32``) in the network's geometry and scores it with :class:`monai_mcx.explain.PointingGame` against the truth,
the centred-Gaussian baseline and the localization head's top box -- the same numbers as ``evaluate.json``'s
``explain/...`` keys, without writing anything into the model's description. Optionally draws one case at its
original size (``--figure``).

Example::

    python -m experiments.saliency_real --datalist bundle/runs/real/datalist.json --sources rsna \\
        --output docs/saliency_real.json --figure docs/images/saliency_real_rsna.png
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from experiments.common import REPO, repo_relative


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ckpt", default=str(REPO / "bundle" / "models" / "model.pt"))
    ap.add_argument("--datalist", required=True)
    ap.add_argument("--split", default="validation")
    ap.add_argument("--sources", nargs="*", default=None, help="only these data sources (default: all)")
    ap.add_argument("--max-images", type=int, default=None)
    ap.add_argument("--output", default=None, help="JSON record of the numbers")
    ap.add_argument("--figure", default=None, help="PNG of one case (the image with the largest true box)")
    return ap.parse_args(argv)


def _positive_classes(it: dict, class_names: list[str]) -> list[int]:
    """The classes an item is positive for (a single-class model: an unlabelled item counts as positive)."""
    label = it.get("label")
    positive = [k for k, y in enumerate(label or []) if y is not None and float(y) > 0.5]
    if label is None and len(class_names) == 1:
        positive = [0]
    return positive


def _truth_region(it: dict, size: list[int]):
    """The item's image (loaded) and its true region (boxes and mask) in the network's geometry, or None."""
    from monai.transforms import Resized

    from monai_mcx.explain import truth_region
    from monai_mcx.transforms.io import LoadCXRd

    load = LoadCXRd(keys="image")
    d = load({"image": it["image"]})
    orig = [int(s) for s in d["image"].shape[1:]]
    mask = None
    if it.get("mask"):
        m = load({"image": it["mask"]})["image"]
        mask = Resized(keys="m", spatial_size=size, mode="nearest")({"m": m})["m"][0].numpy()
    scale = np.array([size[0] / orig[0], size[1] / orig[1]] * 2)
    boxes = np.asarray(it.get("boxes") or np.zeros((0, 4)), dtype=np.float64).reshape(-1, 4) * scale
    region = truth_region(size, boxes=boxes, mask=mask)
    return (d, orig, region) if region.any() else None


def _top_box(pred: dict):
    """The localization head's highest-scoring box of the first image (None without one)."""
    from monai_mcx.keys import DetKeys, PredKeys

    if PredKeys.DETECTIONS not in pred:
        return None
    det = pred[PredKeys.DETECTIONS][0]
    if not len(det[DetKeys.SCORES]):
        return None
    return det[DetKeys.BOXES][int(torch.argmax(det[DetKeys.SCORES]))].numpy()


def main(argv=None) -> int:
    from monai.transforms import Resized

    from monai_mcx.data import load_datalist
    from monai_mcx.explain import PointingGame, SaliencyMaps, saliency_settings
    from monai_mcx.inferers import MultiCheXNetInferer
    from monai_mcx.model import load_model

    args = parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    net, desc, pp = load_model(args.ckpt)
    sal = SaliencyMaps.from_description(net, desc)
    size = [int(s) for s in desc.spatial_size]
    resize = Resized(keys="image", spatial_size=size, mode="area")
    items = load_datalist(args.datalist, args.split, desc.class_names)
    if args.sources:
        items = [it for it in items if it.get("source") in args.sources]
    game = PointingGame(desc.class_names)
    t0 = time.time()
    n, best = 0, None
    for it in items:
        positive = _positive_classes(it, desc.class_names)
        if not positive or (not it.get("boxes") and not it.get("mask")):
            continue
        case = _truth_region(it, size)
        if case is None:
            continue
        d, orig, region = case
        x = torch.as_tensor(resize(d)["image"]).float()[None]
        with torch.no_grad():
            pred = MultiCheXNetInferer(pp)(x, net)
        top = _top_box(pred)
        maps = sal(x)[0].numpy()
        for k in positive:
            game.add(desc.class_names[k], maps[sal.class_indices.index(k)], region, top_box=top)
        b = np.asarray(it.get("boxes") or [[0, 0, 0, 0]], dtype=np.float64).reshape(-1, 4)
        area = float((b[:, 2:] - b[:, :2]).prod(1).max())
        if args.figure and (best is None or area > best[0]):
            best = (area, it, orig, maps[sal.class_indices.index(positive[0])], pred, positive[0])
        n += 1
        if args.max_images and n >= args.max_images:
            break
    out = game.compute()
    record = {
        "model": repo_relative(Path(args.ckpt)),
        "weights_sha256": desc.weights_sha256,
        "datalist": repo_relative(Path(args.datalist)),
        "split": args.split,
        "sources": args.sources,
        "saliency": saliency_settings(desc),
        "spatial_size": size,
        "seconds": round(time.time() - t0, 1),
        "metrics": {k: (None if np.isnan(v) else round(float(v), 4)) for k, v in out.items()},
    }
    print(json.dumps(record, indent=2))
    if args.output:
        Path(args.output).write_text(json.dumps(record, indent=2) + "\n")
    if args.figure and best is not None:
        _figure(best, desc, pp, Path(args.figure))
    return 0


def _figure(best, desc, pp, path: Path) -> None:
    """The X-ray at its original size: left plain with the true boxes (green) and the model's deployed boxes (red),
    right the saliency overlay (resampled to the original size like the masks) with the true boxes."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    from monai_mcx.explain import to_original_geometry
    from monai_mcx.keys import PredKeys
    from monai_mcx.transforms.io import read_cxr
    from monai_mcx.visualize import saliency_overlay

    _, it, orig, smap, pred, k = best
    gray, _ = read_cxr(it["image"])  # (rows, cols) in [0, 1]
    s0 = to_original_geometry(torch.as_tensor(smap)[None], orig)[0].numpy()  # (W0, H0)
    res = pp.to_original(pred, 0, orig)
    p = float(res[PredKeys.CLASS_PROBS.value][k])
    fig = Figure(figsize=(8, 4.3), dpi=110)
    for j, title in enumerate(
        [
            f"RSNA validation image, p({desc.class_names[k]}) = {p:.2f}\ntruth green, model's boxes red",
            f"Grad-CAM ({desc.encoder}, layer stride32), {desc.spatial_size[0]} px input\nresampled to the original",
        ]
    ):
        ax = fig.add_subplot(1, 2, j + 1)
        ax.imshow(gray if j == 0 else np.asarray(saliency_overlay(gray, s0.T)), cmap="gray", vmin=0, vmax=1)
        for x1, y1, x2, y2 in it.get("boxes") or []:
            ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor="#00ff00", linewidth=1.5))
        if j == 0:
            for x1, y1, x2, y2 in res["boxes"]:
                ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor="#ff3030", linewidth=1.2))
        ax.set_title(title, fontsize=8)
        ax.set_axis_off()
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", bbox_inches="tight", pad_inches=0.08)
    print(f"figure: {path}")


if __name__ == "__main__":
    raise SystemExit(main())
