"""End-to-end folder inference throughput (``inference.json``) against the forward pass alone.

A folder of ``--images`` synthetic chest X-rays of ``--file-size`` px is written twice, as 8-bit PNG and as
DICOM. A randomly initialised MultiCheXNet (``--encoder``) is saved as the checkpoint, and the bundle's
``inference.json`` is run on each folder through MONAI's ``ConfigWorkflow`` (``initialize`` not timed;
``run`` timed: reading, preprocessing, the forward pass, box decoding, writing), with the outputs
``json`` only (``write_nifti=false``, ``write_overlay=false``), ``all`` (NIfTI masks and overlay PNGs
too) and, for DICOM, ``all-jpg`` (the same with ``overlay_format=jpg``). The gate threshold is 0, so every image gets a mask and boxes written (the most work). The
reference is the forward pass alone (``eval()``, ``no_grad``) on the same, already preprocessed batches.
Every configuration is measured ``--repeats`` times, INTERLEAVED (rotating order), median reported.

Peak memory: per configuration, the peak RSS of this process during the run (VmHWM reset before it):
model, batches and the workflow included.

Writes the ``end_to_end`` section of ``docs/benchmarks.md`` and the ``end_to_end`` key of
``docs/benchmarks.json``.

``--processes 1 2``: an archive's inference in several processes instead (``inference.json`` +
``multi_gpu_inference.json`` under ``torchrun``, CPU, gloo; every output written, PNG folder): per process count,
images per second of the run (from the first rank's start of ``run`` to the last rank's end, start included as
above) and of the whole command (process start, imports, process group too); each process gets
``cpu_count // processes`` threads, and one thread (a second row where that differs). The section (``--section``, default ``archive_processes``) also gives the
per-image cost outside the forward pass from the ``end_to_end`` and ``end_to_end_1024`` records already in
``docs/benchmarks.json``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from experiments.bench_sections import (
    add_output_options,
    command_line,
    load_average,
    peak_rss,
    reset_peak_rss,
    run_footer,
    write_section,
)
from experiments.common import REPO

TARGET = 0.7
ANCHORS = [[16.0, 16.0], [24.0, 24.0], [32.0, 20.0]]


def write_folders(root: Path, n: int, size: int) -> dict[str, Path]:
    from PIL import Image

    from monai_mcx.data.synthetic import _write_dicom, synthesize_cxr

    rng = np.random.default_rng(0)
    png, dcm = root / "png", root / "dicom"
    png.mkdir(parents=True)
    dcm.mkdir(parents=True)
    for i in range(n):
        image, _, _ = synthesize_cxr(rng, size, positive=bool(i % 2))
        img8 = np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)
        Image.fromarray(img8.T).save(png / f"img{i:03d}.png")  # (W, H) array -> PIL rows are y
        _write_dicom(str(dcm / f"img{i:03d}.dcm"), image, f"p{i}", f"img{i:03d}", 0)
    return {"png": png, "dicom": dcm}


def make_checkpoint(ckpt: Path, encoder: str, size: int) -> None:
    """A random-weight MultiCheXNet with its model description (``inference.json`` loads only described models)."""
    from monai_mcx.model import ModelDescription, build_network, save_model

    torch.manual_seed(0)
    ckpt.mkdir(parents=True)
    desc = ModelDescription(
        class_names=["pneumonia"],
        tasks=["classification", "segmentation", "localization"],
        encoder=encoder,
        spatial_size=[size, size],
        base_anchor_shapes=ANCHORS,
    )
    save_model(build_network(desc), desc, ckpt / "model.pt")


def workflow(folder: Path, out: Path, ckpt: Path, args, outputs: str):
    from monai.bundle import ConfigWorkflow

    configs = REPO / "bundle" / "configs"
    wf = ConfigWorkflow(
        workflow_type="inference",
        config_file=str(configs / "inference.json"),
        meta_file=str(configs / "metadata.json"),
        logging_file=str(configs / "logging.conf"),
        bundle_root=str(REPO / "bundle"),
        input=str(folder),
        output_dir=str(out),
        ckpt_dir=str(ckpt),
        encoder=args.encoder,
        spatial_size=[args.size, args.size],
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        base_anchor_shapes=ANCHORS,
        gate_threshold=0.0,
        write_nifti=outputs.startswith("all"),
        write_overlay=outputs.startswith("all"),
        overlay_format="jpg" if outputs == "all-jpg" else "png",
    )
    wf.initialize()
    return wf


def run_e2e(folder: Path, root: Path, ckpt: Path, args, outputs: str, rep: int) -> tuple[float, float]:
    wf = workflow(folder, root / f"out_{folder.name}_{outputs}_{rep}", ckpt, args, outputs)
    gc.collect()
    reset_peak_rss()
    t0 = time.perf_counter()
    wf.run()
    dt = time.perf_counter() - t0
    peak = peak_rss() / 2**20
    wf.finalize()
    return dt, peak


def forward_batches(folder: Path, ckpt: Path, args):
    """The network and the preprocessed batches of ``inference.json`` (built by the same config)."""
    from monai_mcx.model import load_model

    wf = workflow(folder, Path(tempfile.mkdtemp()), ckpt, args, "json")
    net = load_model(ckpt / "model.pt", map_location=wf.parser.get_parsed_content("device"))[0]
    # plain tensors, as the evaluator's prepare_batch hands them to the network (a MetaTensor is slower)
    data = [b["image"].as_tensor().clone() for b in wf.parser.get_parsed_content("dataloader")]
    return net, data


def run_forward(net, data) -> tuple[float, float]:
    gc.collect()
    reset_peak_rss()
    t0 = time.perf_counter()
    with torch.no_grad():
        for x in data:
            net(x)
    dt = time.perf_counter() - t0
    return dt, peak_rss() / 2**20


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=24)
    p.add_argument("--file-size", type=int, default=512, help="side of the image files (px)")
    p.add_argument("--size", type=int, default=256, help="network input (spatial_size)")
    p.add_argument("--encoder", default="densenet121")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--section", default=None, help="section of docs/benchmarks.md and key of the JSON")
    p.add_argument("--processes", type=int, nargs="+", default=None, help="torchrun process counts to compare")
    add_output_options(p)
    return p.parse_args(argv)


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    args.section = args.section or ("archive_processes" if args.processes else "end_to_end")
    command = command_line("experiments.benchmark_inference", argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    load_start, t_start = load_average(), time.perf_counter()
    rows = measure_processes(args) if args.processes else measure(args)
    load = (load_start, load_average())
    text = (report_processes if args.processes else report)(rows, args, command, load, time.perf_counter() - t_start)
    print(text)
    if not args.no_write:
        record = {"records": rows, "command": command, "load_average_start": load[0], "load_average_end": load[1]}
        if args.processes:
            record["outside_forward"] = args.outside
        write_section(args, args.section, text, record)
    return rows


def measure(args) -> list[dict]:
    """Every configuration ``--repeats`` times, interleaved (after one untimed warm-up each); one record each."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        folders = write_folders(root / "data", args.images, args.file_size)
        ckpt = root / "ckpt"
        make_checkpoint(ckpt, args.encoder, args.size)
        net, data = forward_batches(folders["png"], ckpt, args)
        configs = [("forward only", None, None)] + [
            (f"{fmt} {outs}", fmt, outs) for fmt in ("png", "dicom") for outs in ("json", "all")
        ]
        configs.append(("dicom all-jpg", "dicom", "all-jpg"))
        times: dict[str, list[float]] = {c[0]: [] for c in configs}
        peaks: dict[str, list[float]] = {c[0]: [] for c in configs}
        for name, fmt, outs in configs:  # warm-up, not timed
            run_forward(net, data) if fmt is None else run_e2e(folders[fmt], root, ckpt, args, outs, -1)
        for rep in range(args.repeats):
            k = rep % len(configs)
            for name, fmt, outs in configs[k:] + configs[:k]:
                dt, pk = run_forward(net, data) if fmt is None else run_e2e(folders[fmt], root, ckpt, args, outs, rep)
                times[name].append(dt)
                peaks[name].append(pk)
                print(f"rep {rep} {name}: {dt:.2f} s, peak {pk:.0f} MiB", flush=True)
    fwd = args.images / statistics.median(times["forward only"])
    rows = []
    for name, fmt, outs in configs:
        ips = args.images / statistics.median(times[name])
        rows.append(
            {
                "config": name,
                "format": fmt,
                "outputs": outs,
                "images": args.images,
                "median_s": round(statistics.median(times[name]), 3),
                "img_per_s": round(ips, 3),
                "ratio_vs_forward": round(ips / fwd, 3),
                "peak_rss_mib": round(max(peaks[name]), 1),
                "times_s": [round(t, 3) for t in times[name]],
            }
        )
    return rows


#: merged last in ``--processes`` runs: each rank writes the times its ``run`` starts and ends to ``<output_dir>.t<rank>``
TIMER = {
    "+imports": ["$import time"],
    "run": [
        "$open(@output_dir + '.t' + os.environ.get('RANK', '0'), 'w').write(str(time.time()))",
        "$monai_mcx.engines.distributed.run_evaluator(@evaluator)",
        "$open(@output_dir + '.t' + os.environ.get('RANK', '0'), 'a').write(' ' + str(time.time()))",
    ],
}


def run_torchrun(
    folder: Path, out: Path, ckpt: Path, args, processes: int, threads: int, timer: Path
) -> tuple[float, float]:
    """``inference.json`` + ``multi_gpu_inference.json`` under ``torchrun`` with ``processes`` CPU processes, every
    output written; returns (seconds of the run: first start to last end of ``run`` over the ranks, seconds of
    the whole command)."""
    configs = REPO / "bundle" / "configs"
    files = [configs / "inference.json", configs / "multi_gpu_inference.json", timer]
    flags = {
        "bundle_root": str(REPO / "bundle"),
        "input": str(folder),
        "output_dir": str(out),
        "ckpt_dir": str(ckpt),
        "encoder": args.encoder,
        "spatial_size": json.dumps([args.size, args.size]),
        "batch_size": str(args.batch_size),
        "num_workers": str(args.num_workers),
        "base_anchor_shapes": json.dumps(ANCHORS),
        "gate_threshold": "0.0",
    }
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    cmd += ["-m", "monai.bundle", "run", "--config_file", "[" + ",".join(f"'{f}'" for f in files) + "]"]
    cmd += ["--meta_file", str(configs / "metadata.json"), "--logging_file", str(configs / "logging.conf")]
    cmd += [a for k, v in flags.items() for a in (f"--{k}", v)]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=str(REPO))
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    total = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"torchrun with {processes} processes failed:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    spans = [[float(v) for v in Path(f"{out}.t{r}").read_text().split()] for r in range(processes)]
    return max(e for _, e in spans) - min(s for s, _ in spans), total


def measure_processes(args) -> list[dict]:
    """Every process count ``--repeats`` times, interleaved (after one untimed warm-up each); one record each."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        folder = write_folders(root / "data", args.images, args.file_size)["png"]
        ckpt = root / "ckpt"
        make_checkpoint(ckpt, args.encoder, args.size)
        timer = root / "timer.json"
        timer.write_text(json.dumps(TIMER))
        variants = sorted({(n, t) for n in args.processes for t in (max(1, (os.cpu_count() or 1) // n), 1)})
        variants.sort(key=lambda v: (v[0], -v[1]))
        runs: dict[tuple[int, int], list[tuple[float, float]]] = {v: [] for v in variants}
        for n, t in variants:
            run_torchrun(folder, root / f"out_{n}_{t}_warmup", ckpt, args, n, t, timer)
        for rep in range(args.repeats):
            k = rep % len(variants)
            for v in variants[k:] + variants[:k]:
                runs[v].append(run_torchrun(folder, root / f"out_{v[0]}_{v[1]}_{rep}", ckpt, args, *v, timer))
                print(
                    f"rep {rep} {v[0]} process(es) x {v[1]} thread(s): run {runs[v][-1][0]:.2f} s, command "
                    f"{runs[v][-1][1]:.2f} s",
                    flush=True,
                )
    rows = []
    for (n, t), times in runs.items():
        run_s = statistics.median(r for r, _ in times)
        cmd_s = statistics.median(c for _, c in times)
        rows.append(
            {
                "processes": n,
                "threads_per_process": t,
                "images": args.images,
                "median_run_s": round(run_s, 3),
                "run_img_per_s": round(args.images / run_s, 3),
                "median_command_s": round(cmd_s, 3),
                "command_img_per_s": round(args.images / cmd_s, 3),
                "run_times_s": [round(r, 3) for r, _ in times],
                "command_times_s": [round(c, 3) for _, c in times],
            }
        )
    return rows


def outside_forward_ms(out_json: Path) -> list[dict]:
    """Per-image milliseconds outside the forward pass (reading, resizing, decoding boxes, encoding, writing; the
    run's start spread over its images), from the ``end_to_end`` / ``end_to_end_1024`` records of ``out_json``:
    ``(median s of a configuration - median s of the forward pass alone) / images``."""
    data = json.loads(out_json.read_text()) if out_json.is_file() else {}
    rows = []
    for key in ("end_to_end", "end_to_end_1024"):
        records = {r["config"]: r for r in data.get(key, {}).get("records", [])}
        fwd = records.get("forward only")
        if fwd is None:
            continue
        files = re.search(r"--file-size (\d+)", data[key].get("command", ""))
        for name in ("png json", "png all", "dicom all", "dicom all-jpg"):
            if name in records:
                ms = 1000 * (records[name]["median_s"] - fwd["median_s"]) / fwd["images"]
                rows.append(
                    {
                        "key": key,
                        "file_px": int(files.group(1)) if files else None,
                        "config": name,
                        "forward_ms_per_image": round(1000 * fwd["median_s"] / fwd["images"], 1),
                        "outside_forward_ms_per_image": round(ms, 1),
                    }
                )
    return rows


def report_processes(rows: list[dict], args, command: str, load: tuple, elapsed: float) -> str:
    """The ``--processes`` section of ``docs/benchmarks.md`` (its rows, and the per-image cost outside the forward
    pass from the JSON's end-to-end records, which ``args.outside`` receives for the JSON record)."""
    one = rows[0]  # one process, every core's thread
    lines = [
        f"## An archive in several processes, {args.file_size} px files, network at {args.size} px "
        "(`experiments/benchmark_inference.py --processes`)",
        "",
        "`inference.json` + `multi_gpu_inference.json` under `torchrun` on CPU (gloo), a folder of "
        f"{args.images} synthetic {args.file_size} px PNGs, network input {args.size} px, encoder `{args.encoder}` "
        f"(random weights), batch {args.batch_size}, every output written (JSON, mask PNG and NIfTI, overlay PNG). "
        "Each process gets cpu_count / processes threads, or one. `run`: from the first rank's start of the workflow's "
        "`run` to the last rank's end (network build, checkpoint load, the process group's start and end "
        "included); `command`: the whole `torchrun` command (Python and torch imports too). Medians of "
        f"{args.repeats} interleaved repetitions. **This machine has {os.cpu_count()} cores shared with other "
        "work** (load average below): the speed-up is what several processes on the same cores give (the "
        "reading, encoding and writing of one process overlap the other's forward pass), not what several GPUs "
        "give.",
        "",
        "| processes | threads each | run s | run img/s | × first row | command s | command img/s |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['processes']} | {r['threads_per_process']} | {r['median_run_s']:.2f} | {r['run_img_per_s']:.2f} "
            f"| {r['run_img_per_s'] / one['run_img_per_s']:.2f} | {r['median_command_s']:.2f} | "
            f"{r['command_img_per_s']:.2f} |"
        )
    args.outside = outside_forward_ms(args.out_json)
    if args.outside:
        lines += [
            "",
            "Per-image cost outside the forward pass (reading and decoding, resizing, box decoding, encoding and "
            "writing the outputs; the run's start spread over its images), from the `end_to_end` and "
            "`end_to_end_1024` records above: (median s of the configuration - median s of the forward pass "
            "alone) / images, one process, 2 threads.",
            "",
            "| files (px) | configuration | forward ms/img | outside the forward ms/img |",
            "| ---: | --- | ---: | ---: |",
        ]
        for o in args.outside:
            lines.append(
                f"| {o['file_px']} | {o['config']} | {o['forward_ms_per_image']:.1f} | "
                f"{o['outside_forward_ms_per_image']:.1f} |"
            )
    return "\n".join(lines + run_footer(load, elapsed, command)) + "\n"


def report(rows: list[dict], args, command: str, load: tuple, elapsed: float) -> str:
    """The section of ``docs/benchmarks.md``."""
    lines = [
        f"## End-to-end folder inference, {args.file_size} px files, network at {args.size} px "
        "(`experiments/benchmark_inference.py`)",
        "",
        f"Goal: end to end ≥ {TARGET} × the forward pass alone, outputs on. `inference.json` on a folder of "
        f"{args.images} synthetic {args.file_size} px images, network input {args.size} px, encoder "
        f"`{args.encoder}` (random weights), batch {args.batch_size}, `num_workers` {args.num_workers}, gate "
        "threshold 0 (every image gets a mask and boxes written). `json`: the per-image JSON (+ mask PNG) and "
        "the summary CSV only; `all`: NIfTI masks and overlay PNGs too; `all-jpg`: the same with JPEG overlays "
        "(`overlay_format=jpg`). Each run includes its start (checkpoint load). Medians of "
        f"{args.repeats} interleaved repetitions. The forward pass alone runs the network on the same "
        "preprocessed batches as plain tensors. **Only the ratios, measured in one run, are meaningful** (the "
        "machine may be shared: load average below), not the absolute seconds.",
        "",
        "| configuration | median s | img/s | × forward only | holds (≥ 0.7, outputs on) | peak RSS (MiB) |",
        "| --- | ---: | ---: | ---: | --- | ---: |",
    ]
    for r in rows:
        holds = "" if not str(r["outputs"]).startswith("all") else ("yes" if r["ratio_vs_forward"] >= TARGET else "no")
        lines.append(
            f"| {r['config']} | {r['median_s']:.2f} | {r['img_per_s']:.2f} | {r['ratio_vs_forward']:.3f} | "
            f"{holds} | {r['peak_rss_mib']:.0f} |"
        )
    return "\n".join(lines + run_footer(load, elapsed, command)) + "\n"


if __name__ == "__main__":
    main()
