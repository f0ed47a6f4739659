"""One class or two? Kermany's pediatric "pneumonia" against the adults' "lung opacity" (issue 23 item 2).

The question is whether the two data sets' positive labels mean one thing to the network. Linear probes on the
frozen encoder's pooled stride-32 features answer it without training two networks: on the training split, fit
logistic regressions on (a) every labelled image, one class (Kermany pneumonia and the adults' opacity pooled), (b)
the pediatric images only, (c) the adult images only; on the validation split compare, per population, the
AUC of the pooled probe with the population's own probe (their difference with a patient-bootstrap 95 % interval),
and score each population's probe on the other population (does "pediatric pneumonia" rank adult opacity, and
the reverse?). If the pooled probe is no worse than the population probes, one class with per-population operating
points loses nothing; a clear loss says two classes (with ``null`` where a data set does not label one).

Example::

    python -m experiments.class_probe --ckpt bundle/models/model.pt --max-train 1500
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from experiments.common import REPO, repo_relative

ADULT = ("siim_covid", "rsna")
PEDIATRIC = ("kermany",)


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ckpt", type=Path, action="append", help="model(s) whose encoder is probed (repeatable)")
    ap.add_argument("--datalist", type=Path, default=REPO / "bundle" / "runs" / "real" / "datalist.json")
    ap.add_argument("--max-train", type=int, default=1500, help="training images per population")
    ap.add_argument("--max-val", type=int, help="validation images per population (default: all)")
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--output-dir", type=Path, default=REPO / "docs")
    return ap.parse_args(argv)


def features(net, desc, items: list[dict], batch_size: int) -> np.ndarray:
    """``(N, C)`` global-average-pooled deepest encoder features (the classifier's input)."""
    from monai.transforms import Compose, EnsureTyped, Resized

    from monai_mcx.transforms.io import LoadCXRd

    tf = Compose(
        [
            LoadCXRd(keys="image", scale="auto"),
            Resized(keys="image", spatial_size=desc.spatial_size, mode="area"),
            EnsureTyped(keys="image", dtype=torch.float32, track_meta=False),
        ]
    )
    out = []
    for i in range(0, len(items), batch_size):
        x = torch.stack([tf({"image": it["image"]})["image"] for it in items[i : i + batch_size]])
        with torch.no_grad():
            out.append(net.encoder(x)[-1].mean(dim=(2, 3)).numpy())
        print(f"class_probe: features {min(i + batch_size, len(items))}/{len(items)}", flush=True)
    return np.concatenate(out).astype(np.float64)


def pick(items, sources, limit, seed=0) -> list[dict]:
    chosen = [it for it in items if it["source"] in sources and it["label"] is not None]
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(chosen))
    return [chosen[i] for i in order[:limit]] if limit else chosen


def probe(ckpt: Path, train: dict, val: dict, args) -> dict:
    """The probes' AUCs on one model's encoder (module docstring)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from experiments.lesion_suite import bootstrap_auc
    from monai_mcx.metrics.classification import roc_auc
    from monai_mcx.metrics.population_points import patient_bootstrap_statistic
    from monai_mcx.model import load_model

    net, desc, _ = load_model(ckpt)
    net.eval()
    f_tr = {k: features(net, desc, v, args.batch_size) for k, v in train.items()}
    f_va = {k: features(net, desc, v, args.batch_size) for k, v in val.items()}
    y_tr = {k: np.array([it["label"][0] for it in v]) for k, v in train.items()}

    def fit(x, y):
        return make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000)).fit(x, y)

    probes = {
        "pooled": fit(
            np.concatenate([f_tr["pediatric"], f_tr["adult"]]), np.concatenate([y_tr["pediatric"], y_tr["adult"]])
        ),
        "pediatric": fit(f_tr["pediatric"], y_tr["pediatric"]),
        "adult": fit(f_tr["adult"], y_tr["adult"]),
    }
    rows = []
    for pop in ("pediatric", "adult"):
        y = np.array([it["label"][0] for it in val[pop]])
        pats = [it["patient"] for it in val[pop]]
        scores = {name: p.predict_proba(f_va[pop])[:, 1] for name, p in probes.items()}
        row = {"population": pop, "images": len(y), "positives": int(y.sum())}
        for name, s in scores.items():
            auc, lo, hi = bootstrap_auc(s, y, pats, n_boot=args.n_boot)
            row[f"{name}_probe"] = [round(auc, 4), round(lo, 4), round(hi, 4)]

        def diff(idx, y=y, a=scores["pooled"], b=scores[pop]):
            yy = y[idx]
            return roc_auc(a[idx], yy) - roc_auc(b[idx], yy) if 0 < yy.sum() < len(yy) else float("nan")

        lo, hi = patient_bootstrap_statistic(diff, pats, n_boot=args.n_boot)
        row["pooled_minus_own"] = [
            round(roc_auc(scores["pooled"], y) - roc_auc(scores[pop], y), 4),
            round(lo, 4),
            round(hi, 4),
        ]
        rows.append(row)
    return {"ckpt": repo_relative(ckpt), "encoder": desc.encoder, "rows": rows}


def write_markdown(out: dict, path: Path) -> list[str]:
    """``class_probe.md`` from the results ``out``; returns its table lines."""
    fmt = lambda v: f"{v[0]:.3f} [{v[1]:.3f}, {v[2]:.3f}]"  # noqa: E731
    lines = [
        "| encoder of | validation images | pooled probe (one class) | own population's probe | other population's probe | pooled - own [95 % CI] |",
        "|---|---|---|---|---|---|",
    ]
    for m in out["models"]:
        for r in m["rows"]:
            other = "adult" if r["population"] == "pediatric" else "pediatric"
            lines.append(
                f"| `{m['ckpt']}` | {r['population']} {r['images']} ({r['positives']} positive) | {fmt(r['pooled_probe'])} | "
                f"{fmt(r[r['population'] + '_probe'])} | {fmt(r[other + '_probe'])} | {fmt(r['pooled_minus_own'])} |"
            )
    head = [
        "# One class or two: linear probes on the encoder",
        "",
        "`python -m experiments.class_probe` (module docstring): logistic regressions on the frozen encoder's pooled "
        "stride-32 features, fitted on the training split (pooled: pediatric and adult images with one label; own: "
        "one population), scored per population on the validation split of "
        f"`{out['datalist']}` (Kermany for pediatric; SIIM-FISABIO-RSNA and RSNA for adult). AUC [patient-bootstrap "
        "95 % interval]; the last column is the paired difference.",
        "",
    ]
    path.write_text("\n".join(head + lines) + "\n")
    return lines


def main(argv=None) -> int:
    from monai_mcx.data import load_datalist
    from monai_mcx.utils import write_json_atomic

    args = parse_args(argv)
    ckpts = args.ckpt or [REPO / "bundle" / "models" / "model.pt"]
    tr = load_datalist(args.datalist, "training", ["pneumonia"])
    va = load_datalist(args.datalist, "validation", ["pneumonia"])
    train = {"pediatric": pick(tr, PEDIATRIC, args.max_train), "adult": pick(tr, ADULT, args.max_train)}
    val = {"pediatric": pick(va, PEDIATRIC, args.max_val), "adult": pick(va, ADULT, args.max_val)}
    out = {"datalist": repo_relative(args.datalist), "models": [probe(c, train, val, args) for c in ckpts]}
    write_json_atomic(out, args.output_dir / "class_probe.json")
    lines = write_markdown(out, args.output_dir / "class_probe.md")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
