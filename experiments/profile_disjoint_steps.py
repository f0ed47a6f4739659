"""Where the disjoint-data training gap comes from (issue 15): one-task steps of MultiCheXNet vs the single-task model.

``experiments/benchmark_train.py`` interleaves the steps of five models (MultiCheXNet mixed and task-grouped, three single-task
models). This script takes the interleaving out: (1) *same batch*: for each task, a 16-image batch with only that
task's annotation goes through MultiCheXNet (three heads built, one run: the trainer skips the others) and through
the single-task model in alternation, ``--repeats`` times; (2) *epochs*: task-grouped MultiCheXNet epochs against
the three single-task models' epochs, each model run on its own; (3) *mixed batch*: one batch of ``--per-task``
images of each task through MultiCheXNet (each head on its task's images, and with the heads on the whole batch),
through each single-task model on its own images, and through a classification-only model on the whole batch
(the encoder's share), interleaved. Medians; writes a JSON.

Example::

    python -m experiments.profile_disjoint_steps --output docs/disjoint_steps.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import torch

from experiments import benchmark_train as bt  # its data, batches and Variant: the same steps as the benchmark
from experiments.bench_sections import load_average


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--encoder", default="densenet121")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--per-task", type=int, default=5, help="images of each task in the mixed batch")
    ap.add_argument("--output", type=Path, default=None)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    from monai_mcx.data import generate_demo_data
    from monai_mcx.data.anchors import anchor_shapes_from_datalist
    from monai_mcx.utils import write_json_atomic

    with tempfile.TemporaryDirectory() as tmp:
        dl = generate_demo_data(Path(tmp) / "d", num_images=120, image_size=a.size, seed=0, layout="disjoint")
        train = bt.preprocess(str(dl), "training", a.size, 96)
        anchors = anchor_shapes_from_datalist(
            str(dl), split="training", spatial_size=[a.size] * 2, num_anchors=3, feature_map_scales=[1, 2, 4]
        )
    own = {t: [it for it in train if t in bt.tasks_of(it)] for t in bt.TASKS}
    same_batch = {}
    for task in bt.TASKS:
        batch = bt.batches(own[task][:16], 16, seed=0)[0]
        mcx = bt.Variant("mcx", bt.TASKS, own[task], a.encoder, anchors, 2e-3, 16)
        single = bt.Variant("single", (task,), own[task], a.encoder, anchors, 2e-3, 16)
        times = {"mcx": [], "single": []}
        for v in (mcx, single):
            v.step(batch)  # warm-up
        for r in range(a.repeats):
            for v in (mcx, single) if r % 2 == 0 else (single, mcx):
                times[v.name].append(v.step(batch))
        med = {k: statistics.median(v) for k, v in times.items()}
        same_batch[task] = {"mcx_s": med["mcx"], "single_s": med["single"], "ratio": med["mcx"] / med["single"]}
        print(task, same_batch[task], flush=True)
    grouped = bt.Variant("grouped", bt.TASKS, train, a.encoder, anchors, 2e-3, 16, grouped=True)
    singles = {t: bt.Variant(t, (t,), own[t], a.encoder, anchors, 2e-3, 16) for t in bt.TASKS}
    epochs = []
    for epoch in range(a.epochs):
        g = sum(grouped.step(b) for b in bt.batches(train, 16, seed=epoch, grouped=True))
        s = sum(v.step(b) for v in singles.values() for b in bt.batches(v.items, 16, seed=epoch))
        epochs.append({"epoch": epoch + 1, "grouped_s": g, "singles_sum_s": s, "ratio": g / s})
        print(epochs[-1], flush=True)
    mixed = mixed_batch(own, train, anchors, a)
    out = {
        "mixed_batch": mixed,
        "encoder": a.encoder,
        "size": a.size,
        "batch": 16,
        "threads": a.threads,
        "same_batch": same_batch,
        "epochs_not_interleaved": epochs,
        "median_ratio_after_first_epoch": statistics.median(e["ratio"] for e in epochs[1:])
        if len(epochs) > 1
        else None,
        "load_average": load_average(),
        "command": "python -m experiments.profile_disjoint_steps "
        + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    if a.output:
        write_json_atomic(out, a.output)
    return out


def mixed_batch(own: dict, train: list, anchors, a) -> dict:
    """Section (3): median seconds per step on one mixed batch, and MultiCheXNet / the three single steps."""
    from monai_mcx.data import collate_cxr

    n = a.per_task
    batch = collate_cxr([it for t in bt.TASKS for it in own[t][:n]])
    parts = {t: collate_cxr(own[t][:n]) for t in bt.TASKS}

    def variant(tasks: tuple, items: list, **kwargs) -> bt.Variant:
        return bt.Variant("v", tasks, items, a.encoder, anchors, 2e-3, 16, **kwargs)

    runs = {
        "mcx": (variant(bt.TASKS, train), batch),
        "mcx_whole_batch_heads": (
            variant(bt.TASKS, train, trainer_kwargs={"heads_on_selected_samples": False}),
            batch,
        ),
        "classification_only_whole_batch": (variant(("classification",), train), batch),
    }
    for t in bt.TASKS:
        runs[f"single_{t}"] = (variant((t,), own[t]), parts[t])
    times: dict[str, list[float]] = {k: [] for k in runs}
    for v, b in runs.values():
        v.step(b)  # warm-up
    names = list(runs)
    for r in range(a.repeats):
        for k in names[r % len(names) :] + names[: r % len(names)]:
            v, b = runs[k]
            times[k].append(v.step(b))
    med = {k: statistics.median(x) for k, x in times.items()}
    singles = sum(med[f"single_{t}"] for t in bt.TASKS)
    out = {
        "images_per_task": n,
        "median_step_s": med,
        "sum_single_s": singles,
        "ratio_mcx_vs_sum_single": med["mcx"] / singles,
        "ratio_mcx_whole_batch_heads_vs_sum_single": med["mcx_whole_batch_heads"] / singles,
    }
    print("mixed batch", out, flush=True)
    return out


if __name__ == "__main__":
    main()
