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
"""

from __future__ import annotations

import argparse
import gc
import statistics
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
    p.add_argument("--section", default="end_to_end", help="section of docs/benchmarks.md and key of the JSON")
    add_output_options(p)
    return p.parse_args(argv)


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    command = command_line("experiments.benchmark_inference", argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    load_start, t_start = load_average(), time.perf_counter()
    rows = measure(args)
    load = (load_start, load_average())
    text = report(rows, args, command, load, time.perf_counter() - t_start)
    print(text)
    if not args.no_write:
        record = {"records": rows, "command": command, "load_average_start": load[0], "load_average_end": load[1]}
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
