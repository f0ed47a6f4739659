"""What the experiment suites share: the repository's paths, seeded subsampling, the header of a suite's results,
one training run through the bundle, forward latency, and the hand-written discussion of ``results.md``.

:mod:`experiments.run_experiments` (the lung-outline suite and the results files) and
:mod:`experiments.lesion_suite` (the lesion suite) both import this module; neither imports the other's helpers.
"""

from __future__ import annotations

import json
import platform
import shlex
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from monai_mcx.keys import TASKS

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "bundle" / "configs"

__all__ = [
    "REPO",
    "CONFIGS",
    "sample",
    "repo_relative",
    "preset_name",
    "suite_command",
    "run_header",
    "train_handlers",
    "timed_forward",
    "latency_ms",
    "train_run",
    "discussion_lines",
]


# ------------------------------------------------------------------------------------------ data and paths
def sample(items: list, n: int | None, rng: np.random.Generator) -> list:
    """``n`` of ``items`` drawn without replacement by ``rng``, in their original order (all of them when ``n`` is
    None or not smaller than ``len(items)``)."""
    if n is None or n >= len(items):
        return list(items)
    idx = sorted(rng.choice(len(items), size=n, replace=False).tolist())
    return [items[i] for i in idx]


def repo_relative(path: str | Path) -> str:
    """An absolute ``path`` relative to the repository when inside it (results files must not name this machine's
    folders); any other path as given."""
    if not Path(path).is_absolute():
        return str(path)
    try:
        return str(Path(path).resolve().relative_to(REPO))
    except ValueError:
        return str(path)


# ------------------------------------------------------------------------------------------ suite records
def preset_name(args) -> str:
    """``quick`` (``--quick``), ``cuda`` (a CUDA device) or ``cpu``: the settings preset of a suite."""
    return "quick" if args.quick else ("cuda" if args.device.startswith("cuda") else "cpu")


def suite_command(args) -> str:
    """The command line that ran a suite (``args.argv``: the options given)."""
    return ("python -m experiments.run_experiments " + shlex.join(args.argv)).strip()


def run_header(args, preset: str, p: dict, sizes: dict, t_start: float) -> dict:
    """The header of a suite's ``results.json`` entry: command, date, machine, settings, subset sizes, minutes."""
    return {
        "command": suite_command(args),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": args.device if not args.device.startswith("cuda") else torch.cuda.get_device_name(0),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "preset": preset,
        "resolution": p["size"],
        "encoder": p["encoder"],
        "seed": args.seed,
        "settings": p,
        "subset_sizes": sizes,
        "total_minutes": (time.perf_counter() - t_start) / 60,
    }


def discussion_lines(entry: dict) -> list[str]:
    """A suite's hand-written discussion (``results.json`` ``discussion``), headed by the run it was written for."""
    if not entry.get("discussion"):
        return []
    return [
        f"#### Discussion (written by hand after the run of {entry.get('discussion_for') or '?'}; the script does not "
        "regenerate it: if the run above is newer, the numbers quoted here may differ)",
        "",
        entry["discussion"].rstrip(),
        "",
    ]


# ------------------------------------------------------------------------------------------ timing
def timed_forward(net: torch.nn.Module, x: torch.Tensor) -> float:
    """Seconds of one forward of ``net`` on ``x`` (CUDA synchronised before and after)."""
    if x.device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    net(x)
    if x.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t


def latency_ms(net: torch.nn.Module, size: int, device: torch.device, repeats: int) -> float:
    """Median batch-1 forward latency in ms (eval mode, no box decoding), after two untimed forwards."""
    net.eval()
    x = torch.rand(1, 1, size, size, device=device)
    with torch.inference_mode():
        times = [timed_forward(net, x) for _ in range(repeats + 2)][2:]
    return 1000 * statistics.median(times)


# ------------------------------------------------------------------------------------------ bundle runs
def train_handlers(section: str, keep: tuple[str, ...]) -> list:
    """The handlers of ``train.json``'s ``section`` (``train`` / ``validate``) whose target ends with one of ``keep``."""
    cfg = json.loads((CONFIGS / "train.json").read_text())
    return [h for h in cfg[section]["handlers"] if any(h["_target_"].endswith(k) for k in keep)]


def _run_overrides(name, work, datalist, p, args, tasks, class_names, epochs, extra, merge) -> dict:
    """The ``ConfigWorkflow`` overrides of one training run (see :func:`train_run`)."""
    run_dir = work / "runs" / name
    overrides = {
        "bundle_root": str(REPO / "bundle"),
        "dataset_dir": str(datalist.parent),
        "datalist_file": str(datalist),
        "output_dir": str(run_dir / "eval"),
        "ckpt_dir": str(run_dir / "models"),
        "spatial_size": [p["size"], p["size"]],
        "encoder": p["encoder"],
        "epochs": epochs,
        "val_interval": epochs,
        "batch_size": p["batch_size"],
        "tasks": list(tasks),
        "class_names": list(class_names),
        "seed": args.seed,
        "num_workers": 0,
        "device": f"$torch.device('{args.device}')",
        "train#handlers": train_handlers("train", ("LrScheduleHandler", "ValidationHandler")),
        "validate#handlers": [],
        **(extra or {}),
    }
    if merge:
        init = json.loads((CONFIGS / "train.json").read_text())["initialize"]
        overrides["initialize"] = init + [
            {"_target_": "monai_mcx.model.merge.MergeWeights", "network": "@network", **merge}
        ]
    return overrides


def _train_and_save(wf, ckpt: Path, p: dict, args, epochs: int) -> tuple[dict, torch.nn.Module]:
    """Run the initialised workflow's trainer (timed), save the weights with their description; the result record
    (without the network) and the trained network."""
    from monai_mcx.model import save_model

    trainer = wf.parser.get_parsed_content("train#trainer")  # builds (and caches) the data sets: not timed
    evaluator = wf.parser.get_parsed_content("validate#evaluator")
    net = wf.parser.get_parsed_content("network")
    t0 = time.perf_counter()
    trainer.run()
    total = time.perf_counter() - t0
    val_seconds = float(evaluator.state.times.get("COMPLETED") or 0.0)
    metrics = {
        k: (float(v) if isinstance(v, (int, float)) and np.isfinite(v) else None)
        for k, v in evaluator.state.metrics.items()
        if isinstance(v, (int, float))
    }
    # the validation handlers (CheckpointSaver + DescriptionWriter) are dropped, so write the final weights with
    # their model description (models/model.json) here: a later transfer row reads it through finetune.json
    save_model(net, wf.parser.get_parsed_content("model_description"), ckpt)
    lat = latency_ms(net, p["size"], torch.device(args.device), p["latency_repeats"])
    report = getattr(net, "transfer_report", None)
    out = {
        "metrics": metrics,
        "train_seconds": round(total - val_seconds, 2),
        "val_seconds": round(val_seconds, 2),
        "latency_ms": round(lat, 2),
        "ckpt": str(ckpt),
        "epochs": epochs,
        "skipped_keys": len(report.skipped) if report is not None else None,
    }
    return out, net


def train_run(
    name: str,
    work: Path,
    datalist: Path,
    p: dict,
    args,
    *,
    tasks=TASKS,
    class_names=("pneumonia",),
    epochs: int,
    extra: dict | None = None,
    finetune: bool = False,
    merge: dict | None = None,
    base_configs: tuple[str, ...] = (),
    return_network: bool = False,
) -> dict:
    """Train one configuration through the bundle; return metrics, timings and the checkpoint path.

    Args:
        name: the run's folder under ``work / "runs"``.
        p: the suite's settings (``size``, ``encoder``, ``batch_size``, ``latency_repeats``).
        args: the suite's options (``seed``, ``device``).
        extra: more ``ConfigWorkflow`` overrides; ``merge``: the arguments of a ``MergeWeights`` initialiser.
        finetune: add ``finetune.json``; ``base_configs``: configs merged between ``train.json`` and
            ``finetune.json`` (e.g. ``("train_real.json",)``).
        return_network: also return the trained network (key ``"network"``; not JSON).
    """
    from monai.bundle import ConfigWorkflow

    overrides = _run_overrides(name, work, datalist, p, args, tasks, class_names, epochs, extra, merge)
    configs = [str(CONFIGS / "train.json")] + [str(CONFIGS / c) for c in base_configs]
    configs += [str(CONFIGS / "finetune.json")] if finetune else []
    wf = ConfigWorkflow(
        workflow_type="train",
        config_file=configs,
        meta_file=str(CONFIGS / "metadata.json"),
        logging_file=False,
        **overrides,
    )
    wf.initialize()
    out, net = _train_and_save(wf, work / "runs" / name / "models" / "model.pt", p, args, epochs)
    if return_network:
        out["network"] = net
    return out
