"""Latency / throughput / FLOPs / parameters / peak memory: MultiCheXNet vs three single-task models.

Compares, at the same input size and batch:

- ``multichexnet``: one encoder pass, three heads (classification, segmentation, localization);
- ``single_classification`` (the classification-only model), ``single_segmentation``,
  ``single_localization``: ``MultiCheXNet(tasks=("<task>",))`` with the same encoder;
- ``sum_single_task``: the three single-task models run one after the other (sum of their medians,
  FLOPs and parameters) -- the cost of answering all three questions without a shared encoder;
- ``xrv_densenet121``: TorchXRayVision's DenseNet-121 classifier (random weights), when
  ``torchxrayvision`` is importable. With ``weights=None`` it has no fixed input resolution, so it runs at
  the same size as the others.

Method: every variant is warmed up, then the variants are timed INTERLEAVED (round-robin, the starting
variant rotating each repetition) ``--repeats`` times inside one process and the median is reported, so
that load changes on a shared machine hit all variants alike and the ratios hold. Forward passes only
(``torch.inference_mode``, ``eval()``), no data loading, no box decoding. FLOPs from
``torch.utils.flop_counter.FlopCounterMode`` (one multiply-add = 2 FLOPs; convolutions, matmuls,
interpolation not counted). Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` during one forward
(weights included); on CPU the peak resident set size (``ru_maxrss``) of a FRESH process running one
forward, minus its RSS just before the forward (model and input already built): the activations and
workspace of that forward as the OS sees them. (Measured in a separate process because in a long-running
process malloc keeps freed memory and RSS deltas read ~0; ``tracemalloc`` does not see torch's allocator.)

Devices: ``cpu`` rows always (``--device cpu``, the default ``auto``), plus, when CUDA is available
and ``--device`` is ``auto`` or ``cuda``, ``cuda-fp32``, ``cuda-amp`` (fp16 autocast) and
``cuda-amp-cl`` (fp16 autocast + channels_last) rows.

Writes ``docs/benchmarks.md`` and ``docs/benchmarks.json`` (one record per row) unless ``--no-write``.

Example::

    python -m experiments.benchmark                   # full default run (256/512 px, batch 1/8)
    python -m experiments.benchmark --quick --encoder densenet-tiny --out-json /tmp/b.json --out-md /tmp/b.md
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time
from contextlib import nullcontext
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from experiments.bench_sections import (
    add_output_options,
    command_line,
    kept_sections,
    load_average,
    main_or_memory_probe,
    peak_rss,
    reset_peak_rss,
    run_memory_probe,
)
from monai_mcx.networks import MultiCheXNet

#: this module (run again by ``python -m`` in a fresh process for a CPU memory probe)
MODULE = "experiments.benchmark"

#: targets checked on the CPU rows (issue 5)
TARGET_VS_SUM = 0.40
TARGET_VS_CLS = 1.5

SINGLE = ("single_classification", "single_segmentation", "single_localization")


# ------------------------------------------------------------------------------------------ models
def build_models(encoder: str, with_xrv: bool) -> dict[str, nn.Module]:
    torch.manual_seed(0)
    models: dict[str, nn.Module] = {"multichexnet": MultiCheXNet(encoder=encoder)}
    for task in ("classification", "segmentation", "localization"):
        models[f"single_{task}"] = MultiCheXNet(encoder=encoder, tasks=(task,))
    if with_xrv:
        import torchxrayvision as xrv

        models["xrv_densenet121"] = xrv.models.DenseNet(weights=None)
    for m in models.values():
        m.eval()
    return models


def xrv_available() -> bool:
    try:
        import torchxrayvision  # noqa: F401
    except Exception:  # noqa: BLE001 - optional peer model
        return False
    return True


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def count_flops(model: nn.Module, x: torch.Tensor) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with torch.inference_mode(), FlopCounterMode(display=False) as fc:
        model(x)
    return int(fc.get_total_flops())


# ------------------------------------------------------------------------------------------ timing
class Mode:
    """One device setting: ``name``, ``device``, autocast dtype or None, channels_last."""

    def __init__(self, name: str, device: str, amp: bool = False, channels_last: bool = False):
        self.name, self.device, self.amp, self.channels_last = name, torch.device(device), amp, channels_last

    def autocast(self):
        return torch.autocast("cuda", dtype=torch.float16) if self.amp else nullcontext()

    def sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def prepare(self, m: nn.Module) -> nn.Module:
        m = m.to(self.device)
        return (
            m.to(memory_format=torch.channels_last)
            if self.channels_last
            else m.to(memory_format=torch.contiguous_format)
        )

    def input(self, size: int, batch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(size * 100 + batch)
        x = torch.rand(batch, 1, size, size, generator=g).to(self.device)
        return x.to(memory_format=torch.channels_last) if self.channels_last else x


def forward_seconds(model: nn.Module, x: torch.Tensor, mode: Mode) -> float:
    mode.sync()
    t0 = time.perf_counter()
    with torch.inference_mode(), mode.autocast():
        model(x)
    mode.sync()
    return time.perf_counter() - t0


def peak_memory(model: nn.Module, x: torch.Tensor, mode: Mode) -> tuple[float | None, str]:
    """Peak memory of one forward in MiB and what it measures."""
    gc.collect()
    if mode.device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(mode.device)
        forward_seconds(model, x, mode)
        return torch.cuda.max_memory_allocated(mode.device) / 2**20, "cuda max_memory_allocated (weights included)"
    return None, "not measured"


CPU_MEM_KIND = "peak RSS (VmHWM, reset before the forward) of a fresh process during one forward minus its RSS just before (weights and input excluded)"


def cpu_peak_memory(variant: str, encoder: str, size: int, batch: int, threads: int) -> float | None:
    """Run one forward of ``variant`` in a fresh process; peak RSS increase in MiB (``VmHWM``)."""
    try:
        return run_memory_probe(MODULE, [variant, encoder, size, batch, threads])
    except Exception as e:  # noqa: BLE001 - memory is a side measurement
        print(f"memory probe failed for {variant} {size}px b{batch}: {e}", file=sys.stderr)
        return None


def _memory_probe(variant: str, encoder: str, size: int, batch: int, threads: int) -> None:
    import psutil

    torch.set_num_threads(threads)
    if variant == "xrv_densenet121":
        import torchxrayvision as xrv

        model = xrv.models.DenseNet(weights=None).eval()
    elif variant == "multichexnet":
        model = MultiCheXNet(encoder=encoder).eval()
    else:
        model = MultiCheXNet(encoder=encoder, tasks=(variant.removeprefix("single_"),)).eval()
    x = torch.rand(batch, 1, size, size)
    with torch.inference_mode():
        model(torch.rand(1, 1, 32, 32))  # lazy initialisation outside the measurement
    gc.collect()
    base = psutil.Process().memory_info().rss
    reset_peak_rss()  # so that import-time peaks do not count
    with torch.inference_mode():
        model(x)
    print((peak_rss() - base) / 2**20)


def bench_config(
    models: dict[str, nn.Module],
    mode: Mode,
    size: int,
    batch: int,
    repeats: int,
    warmup: int,
    bar: tqdm,
    flops_cache: dict,
    encoder: str = "densenet121",
    memory: bool = True,
) -> list[dict]:
    x = mode.input(size, batch)
    names = list(models)
    for name in names:
        for _ in range(warmup):
            forward_seconds(models[name], x, mode)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            times[name].append(forward_seconds(models[name], x, mode))
            bar.update(1)
    rows = []
    for name in names:
        key = (name, size)
        if key not in flops_cache:
            flops_cache[key] = count_flops(models[name].cpu(), torch.rand(1, 1, size, size))
            mode.prepare(models[name])
        if mode.device.type == "cuda":
            mem, mem_kind = peak_memory(models[name], x, mode)
        elif memory:
            mem, mem_kind = cpu_peak_memory(name, encoder, size, batch, torch.get_num_threads()), CPU_MEM_KIND
        else:
            mem, mem_kind = None, "not measured (--no-memory)"
        med = statistics.median(times[name])
        q = statistics.quantiles(times[name], n=4) if len(times[name]) >= 2 else [med, med, med]
        rows.append(
            {
                "variant": name,
                "size": size,
                "batch": batch,
                "device": mode.name,
                "median_latency_ms": round(med * 1e3, 3),
                "p25_latency_ms": round(q[0] * 1e3, 3),
                "p75_latency_ms": round(q[2] * 1e3, 3),
                "throughput_img_s": round(batch / med, 3),
                "flops": flops_cache[key] * batch,
                "parameters": n_params(models[name]),
                "peak_memory_mb": None if mem is None else round(mem, 1),
                "peak_memory_kind": mem_kind,
                "repeats": repeats,
            }
        )
    by = {r["variant"]: r for r in rows}
    s = sum(by[n]["median_latency_ms"] for n in SINGLE) / 1e3
    rows.insert(
        4,
        {
            "variant": "sum_single_task",
            "size": size,
            "batch": batch,
            "device": mode.name,
            "median_latency_ms": round(s * 1e3, 3),
            "p25_latency_ms": None,
            "p75_latency_ms": None,
            "throughput_img_s": round(batch / s, 3),
            "flops": sum(by[n]["flops"] for n in SINGLE),
            "parameters": sum(by[n]["parameters"] for n in SINGLE),
            "peak_memory_mb": None,
            "peak_memory_kind": "not measured (three models run one after the other)",
            "repeats": repeats,
        },
    )
    return rows


# ------------------------------------------------------------------------------------------ report
def machine_info(threads: int) -> dict:
    import monai

    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "monai": monai.__version__,
        "torch_threads": threads,
        "cpu_model": platform.processor() or platform.machine(),
        "logical_cpus": os.cpu_count(),
    }
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu_model"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        import psutil

        info["physical_cores"] = psutil.cpu_count(logical=False)
        info["memory_gb"] = round(psutil.virtual_memory().total / 2**30, 1)
    except Exception:  # noqa: BLE001
        pass
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    return info


def targets(rows: list[dict]) -> list[dict]:
    out = []
    keys = sorted({(r["device"], r["size"], r["batch"]) for r in rows}, key=lambda k: (k[0] != "cpu", k))
    for dev, size, batch in keys:
        by = {r["variant"]: r for r in rows if (r["device"], r["size"], r["batch"]) == (dev, size, batch)}
        mcx, s, cls = (by[v]["median_latency_ms"] for v in ("multichexnet", "sum_single_task", "single_classification"))
        out.append(
            {
                "device": dev,
                "size": size,
                "batch": batch,
                "ratio_vs_sum_single": round(mcx / s, 3),
                "holds_vs_sum_single": mcx <= TARGET_VS_SUM * s,
                "ratio_vs_classification_only": round(mcx / cls, 3),
                "holds_vs_classification_only": mcx <= TARGET_VS_CLS * cls,
                "flops_ratio_vs_sum_single": round(by["multichexnet"]["flops"] / by["sum_single_task"]["flops"], 3),
            }
        )
    return out


def fmt_table(rows: list[dict]) -> str:
    head = (
        "| device | size | batch | variant | median ms | p25–p75 ms | img/s | GFLOPs | params (M) | peak mem (MiB) |\n"
        "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |"
    )
    lines = [head]
    for r in rows:
        spread = "" if r["p25_latency_ms"] is None else f"{r['p25_latency_ms']:.1f}–{r['p75_latency_ms']:.1f}"
        mem = "" if r["peak_memory_mb"] is None else f"{r['peak_memory_mb']:.0f}"
        lines.append(
            f"| {r['device']} | {r['size']} | {r['batch']} | {r['variant']} | {r['median_latency_ms']:.1f} | {spread} | "
            f"{r['throughput_img_s']:.2f} | {r['flops'] / 1e9:.2f} | {r['parameters'] / 1e6:.2f} | {mem} |"
        )
    return "\n".join(lines)


def fmt_targets(tg: list[dict]) -> str:
    lines = [
        "| device | size | batch | MCX / sum of 3 single (≤ 0.40) | holds | MCX / classification-only (≤ 1.5) | holds | FLOPs MCX / sum |",
        "| --- | ---: | ---: | ---: | --- | ---: | --- | ---: |",
    ]
    for t in tg:
        lines.append(
            f"| {t['device']} | {t['size']} | {t['batch']} | {t['ratio_vs_sum_single']:.3f} | "
            f"{'yes' if t['holds_vs_sum_single'] else '**no**'} | {t['ratio_vs_classification_only']:.3f} | "
            f"{'yes' if t['holds_vs_classification_only'] else '**no**'} | {t['flops_ratio_vs_sum_single']:.3f} |"
        )
    return "\n".join(lines)


def write_markdown(path: Path, rows, tg, info, command, load_start, load_end, args, elapsed) -> None:
    mem_kinds = sorted({f"`{r['device']}`: {r['peak_memory_kind']}" for r in rows if r["peak_memory_mb"] is not None})
    cpu_tg = [t for t in tg if t["device"] == "cpu"]
    all_hold = all(t["holds_vs_sum_single"] and t["holds_vs_classification_only"] for t in cpu_tg)
    text = f"""# Benchmark: one shared encoder vs three single-task models

Generated by `python -m experiments.benchmark` on {datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")} in {elapsed / 60:.1f} min.
Records for scripts: [`benchmarks.json`](benchmarks.json) (one record per row of the table below).

## Targets (issue 5, CPU)

MultiCheXNet latency ≤ {TARGET_VS_SUM:.2f} × the sum of the three single-task models' latencies, and
≤ {TARGET_VS_CLS} × the classification-only model's, at 256 and 512 px, batch 1 and 8.
**{"All CPU targets hold." if all_hold else "Not all CPU targets hold (see below)."}**

{fmt_targets(tg)}

## Results

Encoder `{args.encoder}`; random weights; forward pass only (`eval()`, `torch.inference_mode`), no data
loading or box decoding. `sum_single_task` = sum of the three single-task medians (and FLOPs, parameters).
Medians over {args.repeats} interleaved repetitions after {args.warmup} warm-up pass(es) per variant;
p25–p75 shows the spread. GFLOPs per batch (FlopCounterMode; 1 multiply-add = 2 FLOPs).

{fmt_table(rows)}

Peak memory: {"; ".join(mem_kinds) or "n/a"}.

## Machine and command

- CPU: {info.get("cpu_model")} — {info.get("logical_cpus")} logical CPUs{f", {info['physical_cores']} physical cores" if "physical_cores" in info else ""}{f", {info['memory_gb']} GiB RAM" if "memory_gb" in info else ""}
- {"GPU: " + info["cuda_device"] + " (CUDA " + str(info["cuda"]) + ")" if "cuda_device" in info else "GPU: none (CPU rows only)"}
- torch {info["torch"]}, monai {info["monai"]}, Python {info["python"]}, {info["platform"]}
- `torch.set_num_threads({info["torch_threads"]})` for every variant
- load average (1, 5, 15 min) at start: {load_start}, at end: {load_end} — the machine is shared; the
  interleaved repetitions keep the ratios meaningful, absolute times are not.
- command: `{command}`
"""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + kept_sections(path))  # the training / end-to-end sections other scripts wrote


# ------------------------------------------------------------------------------------------ main
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--sizes", type=int, nargs="+", default=[256, 512], help="square input sizes (px)")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8], help="batch sizes")
    p.add_argument("--repeats", type=int, default=5, help="interleaved timed repetitions per variant (median reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed passes per variant before timing")
    p.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda"],
        default="auto",
        help="auto: CPU rows, plus CUDA rows when a GPU is present; cpu: CPU only; cuda: CUDA only",
    )
    p.add_argument("--encoder", default="densenet121", help="MultiCheXNet encoder (same for every variant)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's default)")
    p.add_argument("--no-xrv", action="store_true", help="skip the TorchXRayVision DenseNet-121 row")
    p.add_argument("--quick", action="store_true", help="validation run: 64 px, batch 1, 2 repeats (unless given)")
    add_output_options(p)
    p.add_argument("--no-memory", action="store_true", help="skip the CPU peak-memory probes (one fresh process each)")
    args = p.parse_args(argv)
    if args.quick:
        given = set(a.split("=")[0] for a in (argv if argv is not None else sys.argv[1:]))
        if "--sizes" not in given:
            args.sizes = [64]
        if "--batches" not in given:
            args.batches = [1]
        if "--repeats" not in given:
            args.repeats = 2
    return args


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    command = command_line(MODULE, argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    load_start = load_average()
    t_start = time.perf_counter()
    modes = []
    if args.device in ("auto", "cpu"):
        modes.append(Mode("cpu", "cpu"))
    if args.device in ("auto", "cuda"):
        if torch.cuda.is_available():
            torch.backends.cudnn.benchmark = True
            modes += [
                Mode("cuda-fp32", "cuda"),
                Mode("cuda-amp", "cuda", amp=True),
                Mode("cuda-amp-cl", "cuda", amp=True, channels_last=True),
            ]
        elif args.device == "cuda":
            raise SystemExit("--device cuda: CUDA is not available")
    use_xrv = not args.no_xrv and xrv_available()
    models = build_models(args.encoder, use_xrv)
    total = len(modes) * len(args.sizes) * len(args.batches) * args.repeats * len(models)
    rows: list[dict] = []
    flops_cache: dict = {}
    with tqdm(total=total, desc="timed forwards", unit="fwd") as bar:
        for mode in modes:
            for m in models.values():
                mode.prepare(m)
            for size in args.sizes:
                for batch in args.batches:
                    bar.set_postfix_str(f"{mode.name} {size}px b{batch}")
                    rows += bench_config(
                        models,
                        mode,
                        size,
                        batch,
                        args.repeats,
                        args.warmup,
                        bar,
                        flops_cache,
                        encoder=args.encoder,
                        memory=not args.no_memory,
                    )
    for r in rows:
        r["encoder"] = args.encoder if r["variant"] != "xrv_densenet121" else "torchxrayvision densenet121"
        r["threads"] = threads
    load_end = load_average()
    elapsed = time.perf_counter() - t_start
    tg = targets(rows)
    print(fmt_table(rows))
    print()
    print(fmt_targets(tg))
    print(f"\nthreads={threads} load average start={load_start} end={load_end} elapsed={elapsed:.0f}s")
    if not args.no_write:
        info = machine_info(threads)
        payload = {
            "records": rows,
            "targets": tg,
            "machine": info,
            "command": command,
            "load_average_start": load_start,
            "load_average_end": load_end,
            "repeats": args.repeats,
            "warmup": args.warmup,
            "xrv": use_xrv,
        }
        args.out_json.parent.mkdir(parents=True, exist_ok=True)
        if args.out_json.is_file():  # keep the keys other benchmark scripts wrote (training, end_to_end)
            old = json.loads(args.out_json.read_text())
            payload.update({k: v for k, v in old.items() if k not in payload})
        args.out_json.write_text(json.dumps(payload, indent=1) + "\n")
        write_markdown(args.out_md, rows, tg, info, command, load_start, load_end, args, elapsed)
        print(f"wrote {args.out_md} and {args.out_json}")
    return rows


if __name__ == "__main__":
    main_or_memory_probe(main, _memory_probe)
