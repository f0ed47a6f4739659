"""Operating points and scores of ``experiments.evaluate_real`` (its module docstring says what and why).

Every decision goes through :meth:`monai_mcx.inferers.MultiCheXNetPostprocessor.apply_operating_point` on the raw
outputs ``evaluate_real.collect`` kept, so the numbers are those of the deployed post-processing. Intervals are
patient-bootstrap percentile 95 % intervals (:func:`monai_mcx.metrics.population_points.patient_bootstrap_statistic`).
"""

from __future__ import annotations

import numpy as np
import torch

from monai_mcx.data.populations import POPULATIONS
from monai_mcx.inferers import MultiCheXNetPostprocessor, boxes_in_field
from monai_mcx.keys import DetKeys, PredKeys, Task
from monai_mcx.metrics.classification import choose_threshold, roc_auc
from monai_mcx.metrics.detection import average_precision, choose_box_threshold, rsna_metric
from monai_mcx.metrics.population_points import choose_population_point, patient_bootstrap_statistic
from monai_mcx.metrics.segmentation import dice_per_image

__all__ = ["choose_points", "score", "write_results", "write_gallery", "apply_points"]

CHUNK = 64


def _labelled(records):
    return [r for r in records if r["label"] is not None]


def _lesion_positive(r) -> bool:
    return bool((r["has_mask"] and r["mask"].any()) or (r["has_boxes"] and len(r["boxes"]) > 0))


def apply_points(post: MultiCheXNetPostprocessor, records: list[dict], population="own") -> list[dict]:
    """Post-process the kept raw outputs of ``records`` at ``post``'s settings; per image: ``prob`` ``(K,)``,
    ``decision`` ``(K,)`` bool, ``gate``, ``mask`` (gated) / ``mask_ungated`` ``(W, H)`` bool, ``det`` (gated) /
    ``det_ungated`` boxes, ``lung`` / ``field`` ``(W, H)`` bool, ``point`` (population and reason).
    ``population``: ``"own"`` (each record's), or one name / None for every image."""
    out = []
    for i in range(0, len(records), CHUNK):
        ch = records[i : i + CHUNK]
        pred = {PredKeys.CLASS_LOGITS.value: torch.tensor(np.stack([r["logits"] for r in ch]), dtype=torch.float32)}
        if "seg" in ch[0]:
            pred[PredKeys.SEG_PROBS.value] = torch.stack([r["seg"].float() for r in ch])
            pred[PredKeys.INPUT_SIZE.value] = [int(s) for s in ch[0]["seg"].shape[-2:]]
        if "lung" in ch[0]:
            pred[PredKeys.LUNG_PROBS.value] = torch.stack([r["lung"].float() for r in ch])
        if "det" in ch[0]:
            pred[PredKeys.DETECTIONS.value] = [r["det"] for r in ch]
        pops = [(r["population"], r["population_reason"]) if population == "own" else population for r in ch]
        p = post.apply_operating_point(pred, batch_size=len(ch), populations=pops)
        for j in range(len(ch)):
            probs = p[PredKeys.CLASS_PROBS][j].numpy().astype(np.float64)
            o = {
                "prob": probs,
                "decision": probs >= p[PredKeys.CLASS_THRESHOLDS][j].numpy(),
                "gate": bool(p[PredKeys.GATE][j]),
                "point": p[PredKeys.POPULATION][j],
            }
            if PredKeys.SEG_MASK in p:
                o["mask"] = p[PredKeys.SEG_MASK_GATED][j, 0].numpy()
                o["mask_ungated"] = p[PredKeys.SEG_MASK][j, 0].numpy()
            if PredKeys.LUNG_MASK in p:
                o["lung"] = p[PredKeys.LUNG_MASK][j, 0].numpy()
                o["field"] = p[PredKeys.LUNG_FIELD][j, 0].numpy()
            if PredKeys.DETECTIONS_GATED in p:
                o["det"] = p[PredKeys.DETECTIONS_GATED][j]
                o["det_ungated"] = p[PredKeys.DETECTIONS_OP][j]
            out.append(o)
    return out


def _probs(post, rs) -> np.ndarray:
    return np.asarray(post.probabilities(np.stack([r["logits"] for r in rs])), dtype=np.float64)


def choose_points(desc, records: list[dict], args):
    """The description with the calibration, the global and per-population operating points, the default population
    and the lung restriction chosen on ``records`` (module docstring of ``evaluate_real``)."""
    from monai_mcx.metrics.calibration import fit_temperature
    from monai_mcx.metrics.operating_points import threshold_for_sensitivity

    names = desc.class_names
    lab = _labelled(records)
    y = np.stack([r["label"] for r in lab])
    z = np.stack([r["logits"] for r in lab])
    temps = {c: float(fit_temperature(z[:, k], y[:, k])) for k, c in enumerate(names)}
    d = desc.with_calibration(temps, split=args.split, fitted_on=len(lab))
    if Task.LUNGS in d.tasks:
        d = d.replace(
            lung_restriction={
                "enabled": True,
                "lung_threshold": 0.5,
                "dilation": float(args.dilation),
                "components": int(getattr(args, "components", 2)),
            }
        )
    post = MultiCheXNetPostprocessor.from_description(d)
    p = _probs(post, lab)
    d = d.with_thresholds(
        {c: float(choose_threshold(p[:, k], y[:, k], "youden")) for k, c in enumerate(names)}, "youden", args.split
    )
    sens = {
        f"sens{t}": {c: float(threshold_for_sensitivity(p[:, k], y[:, k], t / 100)) for k, c in enumerate(names)}
        for t in (90, 95)
    }
    d = d.replace(sensitivity_thresholds=sens)
    points = {}
    for pop in POPULATIONS:
        rs = [r for r in lab if r["population"] == pop]
        if not rs:
            continue
        les = [r for r in records if r["population"] == pop and (r["has_mask"] or r["has_boxes"])]
        points[pop] = choose_population_point(
            names,
            _probs(post, rs),
            np.stack([r["label"] for r in rs]),
            _probs(post, les) if les else None,
            [_lesion_positive(r) for r in les] if les else None,
            lesion_recall=args.lesion_recall,
            split=args.split,
        )
        boxed = [r for r in records if r["population"] == pop and r["has_boxes"] and "det" in r]
        if boxed:
            trial = post.with_settings(operating_points={pop: {**points[pop], "box_score_threshold": 0.0}})
            out = apply_points(trial, boxed)
            t, _ = choose_box_threshold([o["det"] for o in out], [r["boxes"] for r in boxed])
            points[pop]["box_score_threshold"] = float(t)
            points[pop]["methods"]["box"] = "rsna (gated boxes of this population)"
    adult_box = (points.get("adult") or {}).get("box_score_threshold")
    if adult_box is not None:
        d = d.with_box_threshold(adult_box, "rsna (adult gated boxes)", args.split)
    return d.with_operating_points(points, default_population=args.default_population)


# ------------------------------------------------------------------------------------------------ scoring
def _ci(stat, patients, n_boot) -> list:
    lo, hi = patient_bootstrap_statistic(stat, patients, n_boot=n_boot)
    return [None if not np.isfinite(v) else round(v, 4) for v in (lo, hi)]


def _r(v):
    return None if v is None or not np.isfinite(v) else round(float(v), 4)


def classification_rows(records, res, groups: dict, n_boot: int) -> list[dict]:
    """AUC, sensitivity and specificity at the applied point, per group of images, with intervals."""
    rows = []
    for name, idx in groups.items():
        idx = [i for i in idx if records[i]["label"] is not None]
        if not idx:
            continue
        y = np.array([records[i]["label"][0] for i in idx])
        p = np.array([res[i]["prob"][0] for i in idx])
        dec = np.array([res[i]["decision"][0] for i in idx])
        pats = [records[i]["patient"] for i in idx]

        def auc(s, y=y, p=p):
            return roc_auc(p[s], y[s]) if 0 < y[s].sum() < len(s) else float("nan")

        def sens(s, y=y, dec=dec):
            return dec[s][y[s] == 1].mean() if (y[s] == 1).any() else float("nan")

        def spec(s, y=y, dec=dec):
            return (~dec[s][y[s] == 0]).mean() if (y[s] == 0).any() else float("nan")

        every = np.arange(len(idx))
        rows.append(
            {
                "group": name,
                "images": len(idx),
                "patients": len(set(pats)),
                "positives": int(y.sum()),
                "auc": _r(auc(every)),
                "auc_ci": _ci(auc, pats, n_boot) if 0 < y.sum() < len(y) else [None, None],
                "sensitivity": _r(sens(every)),
                "sensitivity_ci": _ci(sens, pats, n_boot),
                "specificity": _r(spec(every)),
                "specificity_ci": _ci(spec, pats, n_boot),
            }
        )
    return rows


def lesion_scores(records, variants: dict, n_boot: int) -> dict:
    """Gated-out lesion images, lesion Dice (covid_lesions), RSNA metric and AP50 (rsna) per post-processing variant."""
    out = {}
    adult_pos = [i for i, r in enumerate(records) if r["population"] == "adult" and _lesion_positive(r)]
    dice_idx = [
        i for i, r in enumerate(records) if r["source"] == "covid_lesions" and r["has_mask"] and r["mask"].any()
    ]
    rsna_idx = [i for i, r in enumerate(records) if r["source"] == "rsna" and r["has_boxes"]]
    for name, res in variants.items():
        m = {"lesion_images_adult": len(adult_pos), "gated_out_adult": int(sum(not res[i]["gate"] for i in adult_pos))}
        if dice_idx and "mask" in res[0]:
            d = dice_per_image(
                np.stack([res[i]["mask"] for i in dice_idx]), np.stack([records[i]["mask"] for i in dice_idx])
            )
            pats = [records[i]["patient"] for i in dice_idx]
            m.update(
                {
                    "dice_covid_lesions": _r(d.mean()),
                    "dice_covid_lesions_ci": _ci(lambda s: d[s].mean(), pats, n_boot),
                    "dice_images": len(dice_idx),
                }
            )
        if rsna_idx and "det" in res[0]:
            preds = [res[i]["det"] for i in rsna_idx]
            truths = [records[i]["boxes"] for i in rsna_idx]
            pats = [records[i]["patient"] for i in rsna_idx]
            m["rsna_metric"] = _r(rsna_metric(preds, truths))
            m["rsna_metric_ci"] = _ci(
                lambda s: rsna_metric([preds[i] for i in s], [truths[i] for i in s]), pats, n_boot
            )
            allc = [res[i]["det_ungated"] for i in rsna_idx]
            m["ap50_ungated"] = _r(average_precision(allc, truths, 0.5)) if allc else None
            neg = [k for k, t in enumerate(truths) if len(t) == 0]
            m["boxes_per_negative"] = _r(np.mean([len(preds[k][DetKeys.BOXES]) for k in neg])) if neg else None
        out[name] = m
    return out


def outside_lungs(records, res_on, res_off) -> dict:
    """Predicted lesion pixels and boxes outside the dilated lung field (the field of ``res_on``), restriction on/off,
    over every image whose lesion output is not empty."""
    out = {}
    for name, res in (("restriction_on", res_on), ("restriction_off", res_off)):
        px = out_px = boxes = out_boxes = 0
        for o_on, o in zip(res_on, res):
            if "field" not in o_on or "mask" not in o:
                continue
            field = o_on["field"]
            px += int(o["mask"].sum())
            out_px += int((o["mask"] & ~field).sum())
            if "det" in o:
                n = len(o["det"][DetKeys.BOXES])
                boxes += n
                out_boxes += n - len(boxes_in_field(o["det"], torch.as_tensor(field))[DetKeys.BOXES])
        out[name] = {"lesion_px": px, "lesion_px_outside": out_px, "boxes": boxes, "boxes_centre_outside": out_boxes}
    return out


def lung_rows(records, res, n_boot) -> list[dict]:
    """Lung-field Dice (a lung OUTLINE task, not lesions) per source."""
    rows = []
    for src in sorted({r["source"] for r in records if r.get("has_lung")}):
        idx = [i for i, r in enumerate(records) if r["source"] == src and r.get("has_lung")]
        d = dice_per_image(np.stack([res[i]["lung"] for i in idx]), np.stack([records[i]["lung_gt"] for i in idx]))
        pats = [records[i]["patient"] for i in idx]
        rows.append(
            {
                "source": src,
                "images": len(idx),
                "lung_dice": _r(d.mean()),
                "lung_dice_ci": _ci(lambda s: d[s].mean(), pats, n_boot),
            }
        )
    return rows


def score(desc, records: list[dict], args) -> dict:
    """Every score of ``results_real.json`` (module docstring of ``evaluate_real``)."""
    post = MultiCheXNetPostprocessor.from_description(desc)
    res = apply_points(post, records)
    single = apply_points(post.with_settings(operating_points={}), records)
    no_lungs = apply_points(post.with_settings(lung_restriction=False), records)
    sources = sorted({r["source"] for r in records})
    groups = {f"population {p}": [i for i, r in enumerate(records) if r["population"] == p] for p in POPULATIONS}
    groups.update({f"source {s}": [i for i, r in enumerate(records) if r["source"] == s] for s in sources})
    out = {
        "classification": classification_rows(records, res, groups, args.n_boot),
        "classification_one_point": classification_rows(records, single, groups, args.n_boot),
        "lesions": lesion_scores(
            records,
            {"per_population": res, "one_point_for_all": single, "per_population_no_lung_restriction": no_lungs},
            args.n_boot,
        ),
        "counts": {s: sum(r["source"] == s for r in records) for s in sources},
    }
    if "lung" in records[0]:
        out["outside_lungs"] = outside_lungs(records, res, no_lungs)
        out["lungs"] = lung_rows(records, res, args.n_boot)
    return out


# ------------------------------------------------------------------------------------------------ writing
def _fmt(v, ci=None) -> str:
    if v is None:
        return "-"
    text = f"{v:.3f}" if isinstance(v, float) else str(v)
    if ci and ci[0] is not None:
        text += f" [{ci[0]:.3f}, {ci[1]:.3f}]"
    return text


def _class_table(rows) -> list[str]:
    lines = [
        "| images of | n (patients) | positives | AUC [95 % CI] | sensitivity | specificity |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['group']} | {r['images']} ({r['patients']}) | {r['positives']} | {_fmt(r['auc'], r['auc_ci'])} | "
            f"{_fmt(r['sensitivity'], r['sensitivity_ci'])} | {_fmt(r['specificity'], r['specificity_ci'])} |"
        )
    return lines


def write_results(args, out: dict) -> None:
    """``results_real.json`` and ``results_real.md`` in ``--output-dir``."""
    from monai_mcx.utils import write_json_atomic

    args.output_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out, args.output_dir / "results_real.json")
    d = out["description"]
    lines = [
        "# The real-data model on its validation split, per population and per source",
        "",
        f"`python -m experiments.evaluate_real` on `{out['ckpt']}`: the `{out['split']}` split of "
        f"`{out['datalist']}` (patients never trained on; {out['seconds']:.0f} s to run the network on CPU). The "
        "calibration and every operating point below were CHOSEN on this same split, so the numbers at those points "
        "are optimistic; the AUCs do not depend on them. 95 % intervals: patient bootstrap, "
        f"{args.n_boot} replicates.",
        "",
        "## Operating points (chosen on this split)",
        "",
        "| population | diagnosis threshold (Youden) | gate of the lesion heads | box score | chosen on |",
        "|---|---|---|---|---|",
    ]
    for pop, pt in (d["operating_points"] or {}).items():
        lines.append(
            f"| {pop} | {', '.join(f'{c} {t:.3f}' for c, t in pt['class_thresholds'].items())} | "
            f"{', '.join(f'{c} {t:.3f}' for c, t in pt['gate_thresholds'].items())} ({pt['methods']['gate']}) | "
            f"{_fmt(pt['box_score_threshold'])} | {pt['n_images']} images, {pt['n_lesion_positive']} with a lesion |"
        )
    lines += ["", f"Images of unknown population get the `{d['default_population']}` point.", ""]
    lines += ["## Diagnosis, at each image's population point", ""] + _class_table(out["classification"])
    lines += ["", "The same with ONE point for every image (Youden on all images):", ""]
    lines += _class_table(out["classification_one_point"])
    lines += [
        "",
        "## Lesions (adult images)",
        "",
        "| post-processing | lesion images gated out | lesion Dice covid_lesions [CI] | RSNA metric [CI] | AP50 (ungated) | boxes per RSNA negative |",
        "|---|---|---|---|---|---|",
    ]
    for name, m in out["lesions"].items():
        lines.append(
            f"| {name.replace('_', ' ')} | {m['gated_out_adult']} of {m['lesion_images_adult']} | "
            f"{_fmt(m.get('dice_covid_lesions'), m.get('dice_covid_lesions_ci'))} | "
            f"{_fmt(m.get('rsna_metric'), m.get('rsna_metric_ci'))} | {_fmt(m.get('ap50_ungated'))} | "
            f"{_fmt(m.get('boxes_per_negative'))} |"
        )
    if "outside_lungs" in out:
        lines += [
            "",
            "## Lesions outside the dilated lung field (every validation image)",
            "",
            "| lung restriction | lesion pixels | outside the field | boxes | centre outside the field |",
            "|---|---|---|---|---|",
        ]
        for name, m in out["outside_lungs"].items():
            lines.append(
                f"| {name.split('_')[-1]} | {m['lesion_px']} | {m['lesion_px_outside']} | {m['boxes']} | {m['boxes_centre_outside']} |"
            )
        lines += [
            "",
            "## Lung fields (a lung OUTLINE task, not lesions)",
            "",
            "| source | images | lung Dice [CI] |",
            "|---|---|---|",
        ]
        lines += [
            f"| {r['source']} | {r['images']} | {_fmt(r['lung_dice'], r['lung_dice_ci'])} |" for r in out["lungs"]
        ]
    lines += ["", "Images per source: " + ", ".join(f"{s} {n}" for s, n in out["counts"].items()), ""]
    if not args.no_gallery:
        lines += [
            "The worst validation cases per source: [images/worst_validation_cases.png](images/worst_validation_cases.png).",
            "",
        ]
    (args.output_dir / "results_real.md").write_text("\n".join(lines))


def write_gallery(args, desc, records, items, transform, per_source: int = 4) -> None:
    """``images/worst_validation_cases.png``: per source the most confident diagnosis errors, or the lowest lesion /
    lung Dice where the source has masks (truth green, prediction red)."""
    from monai_mcx.visualize.gallery import save_gallery

    post = MultiCheXNetPostprocessor.from_description(desc)
    res = apply_points(post, records)
    rows = []
    for src in sorted({r["source"] for r in records}):
        idx = [i for i, r in enumerate(records) if r["source"] == src]
        if src == "covid_lesions":
            idx = [i for i in idx if records[i]["has_mask"] and records[i]["mask"].any()]
            bad = (
                dice_per_image(np.stack([res[i]["mask"] for i in idx]), np.stack([records[i]["mask"] for i in idx]))
                if idx
                else []
            )
            order, what = np.argsort(bad), "lesion Dice"
        elif all(records[i].get("has_lung") for i in idx) and idx:
            bad = dice_per_image(
                np.stack([res[i]["lung"] for i in idx]), np.stack([records[i]["lung_gt"] for i in idx])
            )
            order, what = np.argsort(bad), "lung Dice"
        else:
            idx = [i for i in idx if records[i]["label"] is not None]
            bad = np.array([abs(res[i]["prob"][0] - records[i]["label"][0]) for i in idx])
            order, what = np.argsort(-bad), "p"
        cases = []
        for k in order[:per_source]:
            i = idx[k]
            r, o = records[i], res[i]
            img = transform(dict(items[r["index"]]))["image"][0].numpy()
            lungs = what == "lung Dice"
            value = o["prob"][0] if what == "p" else bad[k]
            cases.append(
                {
                    "image": img,
                    "true_mask": r.get("lung_gt") if lungs else r.get("mask"),
                    "pred_mask": o.get("lung") if lungs else o.get("mask"),
                    "true_boxes": r["boxes"].numpy() if r["has_boxes"] else None,
                    "pred_boxes": o["det"][DetKeys.BOXES].numpy() if "det" in o and not lungs else None,
                    "pred_scores": o["det"][DetKeys.SCORES].numpy() if "det" in o and not lungs else None,
                    "title": f"{src} {what} {value:.2f}" + ("" if r["label"] is None else f" y={int(r['label'][0])}"),
                }
            )
        if cases:
            rows.append(cases)
    if rows:
        save_gallery(
            args.output_dir / "images" / "worst_validation_cases.png",
            rows,
            suptitle="worst validation cases per source (truth green, prediction red)",
        )
