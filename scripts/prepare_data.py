#!/usr/bin/env python
"""Build one monai_mcx datalist from any subset of the public chest X-ray data sets.

Each data set is read from its own files, as downloaded (see ``monai_mcx.data.public``). The items are
merged, mapped to the bundle's class names, split by patient (fixed seed) into training / validation /
test, and written as ``{"class_names": [...], "training": [...], "validation": [...], "test": [...]}``
with image/mask paths relative to the datalist's folder. Every item has the same keys: ``image, patient,
source, label, mask, boxes, lung_mask, population`` and ``finding`` (the source's findings joined by ``|``, ``""`` = none).

Examples::

    python scripts/prepare_data.py --kermany ../shared/data/cxr-real/kermany \\
        --covid-lungs ../shared/data/cxr-real/covid_lungs --qu-viral-lungs ../shared/data/cxr-real/qu_viral_lungs \\
        --output data/cxr/datalist.json

    python scripts/prepare_data.py --kermany ../shared/data/cxr-real/kermany \\
        --rsna ../shared/data/cxr-lesions/rsna --covid-lesions ../shared/data/cxr-lesions/covid_lesions \\
        --covid-lungs ../shared/data/cxr-real/covid_lungs --output bundle/runs/real/datalist.json

    python scripts/prepare_data.py --siim-covid ../shared/data/cxr-adult/siim_covid --output data/adult/datalist.json

    python scripts/prepare_data.py --rsna /data/rsna-pneumonia-detection-challenge --siim /data/siim-acr \\
        --nih /data/ChestX-ray14 --class-map my_classes.json --output data/all/datalist.json --on-error skip

Class map (``--class-map``), JSON: ``{"class_names": ["pneumonia", "pneumothorax"], "sources":
{"rsna": {"Lung Opacity": "pneumonia"}, "siim": {"Pneumothorax": "pneumothorax"}, ...}}``. A source
whose findings do not reach every class name gets ``label: null`` (not annotated) -- unknown never
becomes negative. Default: ``class_names = ["pneumonia"]`` with RSNA Target 1 ("Lung Opacity"),
NIH "Pneumonia", Kermany PNEUMONIA, COVID-19 findings, QU viral pneumonia and SIIM-COVID opacity ("Lung
Opacity") as positives.

``covid_lesions`` masks are LESIONS (ground-glass opacity + consolidation); its patients are ieee8023 ids,
shared with ``covid_lungs`` (give both folders and one patient stays in one split across them).

``siim_covid`` patients are studies (this source does not identify patients); its items get ``boxes: null``
(the radiologists' boxes are in the unknown original size) and its ``finding`` keeps the study's appearance
(e.g. ``Lung Opacity|Typical Appearance``), which a class map can use for a COVID-19 class.

``covid_lungs`` / ``qu_viral_lungs`` masks and boxes outline the LUNGS, not lesions: by default their items
get ``mask: null, boxes: null`` (classification only); ``--lung-annotations`` keeps them (e.g. to check
the data flow, or with a class map and bundle set up for lung segmentation).

``--on-error skip`` leaves out bad items (missing image, bad CSV row, RLE overrun, bad box...) and writes
every one of them to ``<output stem>_skipped.json``; ``raise`` (default) stops at the first.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
from collections import defaultdict
from pathlib import Path

from monai_mcx.data.errors import DataError
from monai_mcx.data.public import ADAPTERS, ClassMap
from monai_mcx.data.splits import SPLIT_NAMES, check_patient_splits, split_by_patient

try:
    from tqdm import tqdm
except ImportError:  # pragma: no cover

    def tqdm(it, **_):
        return it


SOURCE_OPTIONS = {  # option dest -> adapter name
    "rsna": "rsna",
    "siim": "siim",
    "nih": "nih",
    "kermany": "kermany",
    "covid_lungs": "covid_lungs",
    "qu_viral_lungs": "qu_viral_lungs",
    "covid_lesions": "covid_lesions",
    "siim_covid": "siim_covid",
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="prepare_data.py",
        description="Merge public chest X-ray data sets into one monai_mcx datalist (patient-level splits).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("Examples::", 1)[1] if "Examples::" in __doc__ else None,
    )
    g = p.add_argument_group("data sets (any subset; each a folder as downloaded)")
    g.add_argument(
        "--rsna", metavar="DIR", help="RSNA Pneumonia Detection: stage_2_train_labels.csv, stage_2_train_images/"
    )
    g.add_argument("--siim", metavar="DIR", help="SIIM-ACR Pneumothorax: train-rle.csv, dicom-images-train/")
    g.add_argument("--nih", metavar="DIR", help="NIH ChestX-ray14: Data_Entry_2017*.csv, BBox_List_2017.csv, images*/")
    g.add_argument("--kermany", metavar="DIR", help="Kermany pediatric pneumonia: folders with NORMAL/ and PNEUMONIA/")
    g.add_argument("--covid-lungs", metavar="DIR", help="COVID lung set: images/, masks/, labels.csv, annotations.csv")
    g.add_argument("--qu-viral-lungs", metavar="DIR", help="QU viral pneumonia lungs: images/, masks/, labels.csv")
    g.add_argument(
        "--covid-lesions",
        metavar="DIR",
        help="COVID-19 / pneumonia LESION masks (ieee8023): images/, masks/, lungs/, labels.csv; patients "
        "share ids with --covid-lungs",
    )
    g.add_argument(
        "--siim-covid",
        metavar="DIR",
        help="SIIM-FISABIO-RSNA COVID-19 adult radiographs: labels.csv, images/; split by study (patients not "
        "identified), boxes null (original image size unknown)",
    )
    p.add_argument(
        "--lung-annotations",
        action="store_true",
        help="keep the LUNG masks/boxes of --covid-lungs / --qu-viral-lungs as 'mask'/'boxes', and give "
        "--covid-lesions' lung masks instead of its lesion masks. Off by default: those keys train "
        "the lesion heads, and a lung outline is not a lesion (the lung-only items then get "
        "mask/boxes null = not annotated, and still train the classifier)",
    )
    p.add_argument("--class-map", metavar="JSON", help='{"class_names": [...], "sources": {source: {finding: class}}}')
    p.add_argument(
        "--output", "-o", metavar="JSON", default="datalist.json", help="datalist to write (default: %(default)s)"
    )
    p.add_argument(
        "--val-fraction", type=float, default=0.1, help="fraction of patients for validation (default: %(default)s)"
    )
    p.add_argument(
        "--test-fraction", type=float, default=0.1, help="fraction of patients for test (default: %(default)s)"
    )
    p.add_argument("--seed", type=int, default=0, help="split seed (default: %(default)s)")
    p.add_argument(
        "--on-error",
        choices=("raise", "skip"),
        default="raise",
        help="raise at the first bad item, or skip bad items and write a report (default: %(default)s)",
    )
    p.add_argument(
        "--siim-mask-dir",
        metavar="DIR",
        help="where decoded SIIM masks are cached as PNG (default: <output folder>/siim_masks)",
    )
    p.add_argument(
        "--no-check-files", action="store_true", help="do not check that image files exist (label files only)"
    )
    p.add_argument(
        "--keep-info",
        action="store_true",
        help="also write each item's source-specific 'info' dict (subtype, view, official split...); "
        "its keys differ between sources, so drop it before collating",
    )
    p.add_argument("--check", metavar="DATALIST", help="only check an existing datalist for patients in two splits")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def summary_table(datalist: dict, class_names: list[str]) -> str:
    """Items per source x split, and per task: labelled (with positives per class), masks, boxes."""
    rows: dict[tuple[str, str], dict] = defaultdict(lambda: defaultdict(int))
    patients: dict[tuple[str, str], set] = defaultdict(set)
    for split in SPLIT_NAMES:
        for it in datalist.get(split, []):
            for key in ((it["source"], split), (it["source"], "all"), ("ALL", split), ("ALL", "all")):
                r = rows[key]
                patients[key].add(it["patient"])
                r["items"] += 1
                if it.get("label") is not None:
                    r["cls"] += 1
                    for c, v in zip(class_names, it["label"]):
                        r[f"+{c}"] += v > 0
                if it.get("mask") is not None:
                    r["seg"] += 1
                if it.get("boxes") is not None:
                    r["loc"] += 1
                    r["loc+"] += len(it["boxes"]) > 0
                    r["nbox"] += len(it["boxes"])
    cols = (
        ["source", "split", "items", "patients", "cls"]
        + [f"+{c}" for c in class_names]
        + ["seg", "loc", "loc+", "nbox"]
    )
    head = {"cls": "classif.", "seg": "seg.masks", "loc": "loc.annot", "loc+": "with boxes", "nbox": "boxes"}
    table = [[head.get(c, c) for c in cols]]
    order = sorted({k[0] for k in rows} - {"ALL"}) + ["ALL"]
    for src in order:
        for split in (*SPLIT_NAMES, "all"):
            if (src, split) not in rows:
                continue
            r = rows[(src, split)]
            table.append(
                [src, split, str(r["items"]), str(len(patients[(src, split)]))] + [str(int(r[c])) for c in cols[4:]]
            )
    widths = [max(len(row[i]) for row in table) for i in range(len(cols))]
    lines = [
        "  ".join(v.rjust(w) if i > 1 else v.ljust(w) for i, (v, w) in enumerate(zip(row, widths))) for row in table
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _atomic_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


#: the keys every written item has (uniform, so that MONAI's collate works on any mix of sources)
ITEM_KEYS = ("image", "patient", "source", "label", "mask", "boxes", "lung_mask", "population")


def _relative(item: dict, base: Path, keep_info: bool = False) -> dict:
    out = {k: item.get(k) for k in ITEM_KEYS}
    out["finding"] = "|".join(item.get("findings") or [])
    if keep_info:
        out["info"] = item.get("info", {})
    for key in ("image", "mask", "lung_mask"):
        if out.get(key) is not None:
            out[key] = os.path.relpath(os.path.abspath(out[key]), base).replace(os.sep, "/")
    return out


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.check:
        data = json.loads(Path(args.check).read_text())
        check_patient_splits(data, file=args.check)
        print(f"{args.check}: no patient is in two splits")
        return 0
    chosen = {name: getattr(args, dest) for dest, name in SOURCE_OPTIONS.items() if getattr(args, dest)}
    if not chosen:
        build_parser().error(
            "give at least one data set (--rsna, --siim, --nih, --kermany, --covid-lungs, "
            "--qu-viral-lungs, --covid-lesions, --siim-covid)"
        )
    class_map = ClassMap.from_json(args.class_map) if args.class_map else ClassMap()
    output = Path(args.output).resolve()
    out_dir = output.parent
    items: list[dict] = []
    skipped: list[dict] = []
    for name, root in chosen.items():
        kwargs = {"class_map": class_map, "on_error": args.on_error, "check_files": not args.no_check_files}
        if name in ("covid_lungs", "qu_viral_lungs", "covid_lesions"):
            kwargs["lung_annotations"] = args.lung_annotations
        if name == "covid_lesions" and args.covid_lungs:
            kwargs["covid_lungs_root"] = args.covid_lungs  # one id per ieee8023 patient (group) in both folders
        if name == "siim":
            kwargs["mask_dir"] = args.siim_mask_dir or out_dir / "siim_masks"
        adapter = ADAPTERS[name](root, **kwargs)
        covered = class_map.covered(name)
        if covered != set(class_map.class_names):
            print(
                f"note: {name}: the class map reaches {sorted(covered) or 'no class'} of {class_map.class_names}; "
                f"its items get label null (not annotated)",
                file=sys.stderr,
            )
        n0 = len(items)
        for it in tqdm(adapter, desc=name, unit="img", disable=args.quiet, file=sys.stderr):
            if it["label"] is not None and len(it["label"]) != len(
                class_map.class_names
            ):  # pragma: no cover - defensive
                raise DataError(f"label length {len(it['label'])} != {len(class_map.class_names)}", it["image"])
            items.append(it)
        skipped.extend(adapter.skipped)
        if len(items) == n0:
            print(f"warning: {name} ({root}) gave no items", file=sys.stderr)
    if not items:
        raise DataError("no items to write (every item was skipped?)", args.output)
    splits = split_by_patient(items, args.val_fraction, args.test_fraction, args.seed)
    check_patient_splits(splits, file=output)
    datalist = {"class_names": list(class_map.class_names)}
    rng = random.Random(args.seed)
    for s in SPLIT_NAMES:
        split_items = list(splits[s])
        rng.shuffle(split_items)  # sources interleaved, so that the first items (``max_items``) are a mix
        datalist[s] = [_relative(it, out_dir, args.keep_info) for it in split_items]
    _atomic_json(output, datalist)
    if args.on_error == "skip":
        report = output.with_name(f"{output.stem}_skipped.json")
        _atomic_json(report, {"skipped": len(skipped), "items": skipped})
        print(f"skipped {len(skipped)} item(s); report: {report}")
    print(summary_table(datalist, list(class_map.class_names)))
    print(f"wrote {output} ({sum(len(datalist[s]) for s in SPLIT_NAMES)} items)")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
