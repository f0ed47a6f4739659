"""Transfer of the classifier to COVID-19 on adult radiographs, measured where it can be (issue 23 item 5).

The task: the SIIM-FISABIO-RSNA studies' appearance, ``typical`` appearance of COVID-19 against the rest
(negative for pneumonia, indeterminate, atypical). The images: the ``siim_covid`` images of the ``--split`` of the
main datalist -- studies the shipped model never trained on -- split again BY STUDY (the source identifies no
patient) into a transfer-training part (``--train-fraction``) and a transfer-test part.

Rows, every one through ``bundle/configs/finetune.json`` on top of ``train.json`` + ``train_real.json`` with the
same recipe, epochs and images: a new ``covid19`` classifier on the shipped encoder, frozen; the same, fine-tuned;
and the same network from scratch (random initialisation, fine-tuned). Reported: the AUC on the transfer-test
studies with a study-bootstrap 95 % interval, and the training time. Writes ``results_transfer_covid.{json,md}``.

Example::

    python -m experiments.transfer_covid --pretrained bundle/models/model.pt
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from experiments.common import REPO, repo_relative, train_handlers, train_run
from experiments.lesion_suite import bootstrap_auc, predict, preprocess_items

TYPICAL = "typical appearance"


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pretrained", type=Path, default=REPO / "bundle" / "models" / "model.pt")
    ap.add_argument("--datalist", type=Path, default=REPO / "bundle" / "runs" / "real" / "datalist.json")
    ap.add_argument("--split", default="validation", help="the main datalist's split the SIIM studies come from")
    ap.add_argument("--train-fraction", type=float, default=0.6)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--max-items", type=int, help="first N SIIM items only (smoke tests)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--work", type=Path, default=REPO / "bundle" / "runs" / "transfer_covid")
    ap.add_argument("--output-dir", type=Path, default=REPO / "docs")
    return ap.parse_args(argv)


def transfer_items(args) -> tuple[list[dict], list[dict]]:
    """(training, test) items with ``label = [typical]``, split by study (seeded)."""
    data = json.loads(args.datalist.read_text())
    base = args.datalist.parent
    items = [it for it in data[args.split] if it.get("source") == "siim_covid"][: args.max_items]
    out = []
    for it in items:
        findings = [f.strip().lower() for f in (it.get("finding") or "").split("|")]
        image = Path(it["image"])
        out.append(
            {
                "image": str(image if image.is_absolute() else base / image),
                "patient": it["patient"],
                "source": "siim_covid",
                "label": [1.0 if TYPICAL in findings else 0.0],
                "mask": None,
                "boxes": None,
            }
        )
    studies = sorted({it["patient"] for it in out})
    rng = np.random.default_rng(args.seed)
    train_studies = set(rng.permutation(studies)[: int(round(args.train_fraction * len(studies)))])
    return [it for it in out if it["patient"] in train_studies], [
        it for it in out if it["patient"] not in train_studies
    ]


def run_row(name: str, pretrained: str, frozen: bool, dl: Path, test_pre: list[dict], args) -> dict:
    """Train one row's classifier and score it on the transfer-test studies."""
    from monai_mcx.model import read_description

    train = json.loads(dl.read_text())["training"]
    p = {"size": args.size, "encoder": read_description(args.pretrained).encoder, "batch_size": args.batch_size}
    res = train_run(
        name,
        args.work,
        dl,
        dict(p, latency_repeats=1),
        args,
        tasks=("classification",),
        class_names=("covid19",),
        epochs=args.epochs,
        finetune=True,
        base_configs=("train_real.json",),
        return_network=True,
        extra={
            "pretrained_ckpt": pretrained,
            "freeze_encoder": frozen,
            "pretrained_class_names": read_description(args.pretrained).class_names,
            "class_names": ["covid19"],
            "samples_per_epoch": len(train),
            "source_fractions": {"siim_covid": 1.0},
            "train#handlers": train_handlers("train", ("LrScheduleHandler",)),
        },
    )
    net = res.pop("network")
    probs = [q["prob"] for q in predict(net, res["ckpt"], test_pre)]
    labels = [it["label"] for it in test_pre]
    auc, lo, hi = bootstrap_auc(probs, labels, [it["patient"] for it in test_pre], n_boot=args.n_boot, seed=args.seed)
    return {
        "row": name,
        "init": "shipped encoder" if pretrained else "random",
        "freeze_encoder": frozen,
        "auc": auc,
        "auc_ci": [lo, hi],
        "train_seconds": res["train_seconds"],
    }


def table_lines(out: dict) -> list[str]:
    """The rows of ``out`` as a Markdown table."""
    return [
        "| encoder | training | AUC on the transfer-test studies [95 % CI] | training s |",
        "|---|---|---|---|",
    ] + [
        f"| {r['init']} | {'frozen encoder, new head' if r['freeze_encoder'] else 'every layer'} | "
        f"{r['auc']:.3f} [{r['auc_ci'][0]:.3f}, {r['auc_ci'][1]:.3f}] | {r['train_seconds']:.0f} |"
        for r in out["rows"]
    ]


def render(entry: dict) -> list[str]:
    """The section of ``results.md`` (``experiments.run_experiments.render_results``)."""
    return [
        "## Transfer to COVID-19 on adult radiographs",
        "",
        f"Produced by `{entry['command']}` ({entry['seconds'] / 60:.1f} min). The SIIM-FISABIO-RSNA studies of the "
        f"main datalist's `{entry['split']}` split (never trained on by `{entry['pretrained']}`), split again by "
        f"study: {entry['train_images']} training images ({entry['train_studies']} studies, {entry['train_positive']} "
        f"typical), {entry['test_images']} test images ({entry['test_studies']} studies, {entry['test_positive']} "
        "typical). Task: `typical` appearance of COVID-19 against negative / indeterminate / atypical. Every row: "
        f"`finetune.json` on `train.json` + `train_real.json`, {entry['size']} px, {entry['epochs']} epochs over the "
        "same images; intervals: study bootstrap.",
        "",
        *table_lines(entry),
        "",
        "Read with care: the shipped encoder learnt the opacity labels of OTHER studies of the same data set, and a "
        "typical COVID-19 appearance is a pattern of opacities, so this is transfer to a related label on the same "
        "hospitals' images, not to an unseen source; the study bootstrap intervals of the pretrained and the "
        "from-scratch rows only just separate.",
        "",
    ]


def main(argv=None) -> int:
    from monai_mcx.utils import write_json_atomic

    args = parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    train, test = transfer_items(args)
    dl = args.work / "datalist.json"
    dl.write_text(json.dumps({"class_names": ["covid19"], "training": train, "validation": test[:2], "test": []}))
    test_pre = preprocess_items(test, {"size": args.size}, args.work / f"test_{args.size}.pt")
    t0 = time.perf_counter()
    pretrained = str(args.pretrained)
    rows = [
        run_row("shipped_encoder_frozen", pretrained, True, dl, test_pre, args),
        run_row("shipped_encoder_finetuned", pretrained, False, dl, test_pre, args),
        run_row("scratch", "", False, dl, test_pre, args),
    ]
    out = {
        "command": "python -m experiments.transfer_covid " + " ".join(argv or sys.argv[1:]),
        "pretrained": repo_relative(args.pretrained),
        "split": args.split,
        "train_images": len(train),
        "train_studies": len({it["patient"] for it in train}),
        "train_positive": int(sum(it["label"][0] for it in train)),
        "test_images": len(test),
        "test_studies": len({it["patient"] for it in test}),
        "test_positive": int(sum(it["label"][0] for it in test)),
        "size": args.size,
        "epochs": args.epochs,
        "seconds": round(time.perf_counter() - t0, 1),
        "rows": rows,
    }
    args.output_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out, args.output_dir / "results_transfer_covid.json")
    lines = table_lines(out)
    (args.output_dir / "results_transfer_covid.md").write_text("\n".join(lines) + "\n")
    from experiments.run_experiments import write_suite

    write_suite(args.output_dir, "transfer_covid", out)  # results.md renders it with the other suites
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
