"""Time to result on a PACS: seconds from a study's arrival in Orthanc to its DICOM SEG and SR stored back, per
single-image study, with the model loaded once, and where the time goes.

A throw-away Orthanc (:func:`monai_mcx.dicom.orthanc.start_orthanc`, DICOMweb only, 127.0.0.1) receives
``--studies`` + 2 real RSNA radiographs (``$MCX_SHARED/data/cxr-lesions/rsna/stage_2_train_images``, JPEG-baseline
CR, 1024 px; synthetic 1024 px CR when that folder is absent), one study each (the upload is not timed). The
shipped model (``bundle/models/model.pt``) is loaded once with :func:`monai_mcx.model.load_model`. Then, for each
study, the steps of ``inference.json --input dicomweb://...?StudyInstanceUID=... --store_to ...`` run one after
the other, each timed, through the functions that path calls:

* ``qido``: :func:`monai_mcx.dicom.web.search_instances` (the study's instances);
* ``wado``: :func:`monai_mcx.dicom.web.retrieve_instances` (as stored, to datasets);
* ``headers``: the header reads of the product path: :func:`monai_mcx.dicom.find_dicom` on the download folder
  (as :func:`monai_mcx.dicom.inputs.fetch_items`), :func:`monai_mcx.dicom.inputs.annotate_items` (the frontal
  chest radiograph check) and the header re-read of :meth:`monai_mcx.dicom.outputs.DicomOutputs.add`;
* ``decode_preprocess``: ``inference.json``'s own ``preprocessing`` (parsed from the config: ``GuardLoadd`` /
  ``LoadCXRd`` decoding, ``Resized`` area to the model's input, ``EnsureTyped``) and ``collate_cxr``;
* ``forward``: the network (eval, ``no_grad``, as the evaluator);
* ``postprocess``: the model's post-processor (sigmoid, calibration, gate, box decoding, operating point),
  :func:`monai_mcx.inferers.to_original` (the mask and boxes at the source's pixels) and the image's record;
* ``seg_build`` / ``sr_build``: :func:`monai_mcx.dicom.make_seg` / :func:`monai_mcx.dicom.make_sr` as
  :meth:`DicomOutputs.add` calls them (timed inside it);
* ``file_writes``: the downloaded instance (as ``fetch`` writes it), the SEG, the SR and the image's JSON (atomic
  writes; mask PNG / NIfTI / overlay off, as ``--write_nifti false --write_overlay false``);
* ``stow``: :meth:`DicomOutputs.store` (reads the two files back, STOW-RS, checks the answer).

``total`` is the wall time from the search to the end of the STOW. The first study is a warm-up (not counted).
Each ``--threads`` setting (``torch.set_num_threads``; default 2, the machine's cores, and 1) gets ``--studies``
studies of its own, the settings INTERLEAVED study by study (rotating order), so that they see the same machine
load. A last row runs the command line itself on one more study (``python -m monai.bundle run --config_file bundle/configs/inference.json --input
dicomweb://... --store_to ...``, same output options): process start, imports and model load included.

Writes the ``pacs`` section of ``docs/benchmarks.md`` and the ``pacs`` key of ``docs/benchmarks.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from experiments.bench_sections import add_output_options, command_line, load_average, run_footer, write_section
from experiments.common import CONFIGS, REPO
from monai_mcx.utils import write_json_atomic

GOAL_S = 1.0
STAGES = (
    "qido",
    "wado",
    "headers",
    "decode_preprocess",
    "forward",
    "postprocess",
    "seg_build",
    "sr_build",
    "file_writes",
    "stow",
)
STAGE_TEXT = {
    "qido": "QIDO-RS search",
    "wado": "WADO-RS retrieve",
    "headers": "header reads + check",
    "decode_preprocess": "decode + preprocessing",
    "forward": "forward pass",
    "postprocess": "post-processing + to original",
    "seg_build": "SEG build",
    "sr_build": "SR build",
    "file_writes": "file writes",
    "stow": "STOW-RS (SEG + SR)",
    "total": "**total (search to stored)**",
}
SHARED = Path(os.environ.get("MCX_SHARED", REPO.parent.parent / "shared"))
RSNA_IMAGES = SHARED / "data" / "cxr-lesions" / "rsna" / "stage_2_train_images"


# ------------------------------------------------------------------------------------------------ inputs
def input_files(root: Path, n: int) -> tuple[list[Path], str]:
    """``n`` single-image studies: the first RSNA files (sorted), or synthetic 1024 px DX written to ``root``."""
    if RSNA_IMAGES.is_dir():
        files = sorted(RSNA_IMAGES.glob("*.dcm"))[:n]
        if len(files) == n:
            return files, f"RSNA (`{RSNA_IMAGES.name}`, CR 1024 px, JPEG baseline)"
    from monai_mcx.data.synthetic import synthesize_cxr

    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(n):
        image, _, _ = synthesize_cxr(rng, 1024, positive=bool(i % 2))
        files.append(root / f"syn{i:03d}.dcm")
        synthetic_cr((np.asarray(image) * 4095).astype(np.uint16), f"SYN{i:03d}").save_as(
            files[-1], enforce_file_format=True
        )
    return files, "synthetic CR 1024 px (the RSNA files were not found; set MCX_SHARED)"


def synthetic_cr(pixels: np.ndarray, patient_id: str):
    """A single-image CR study (PA chest, 12 bits stored, uncompressed) around ``(rows, columns)`` uint16 pixels."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"  # CR Image Storage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex, ds.PatientAge = (
        "SYN^",
        patient_id,
        "",
        "O",
        "050Y",
    )
    ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.ReferringPhysicianName, ds.StudyID = (
        "20240101",
        "120000",
        "",
        "",
        "1",
    )
    ds.Modality, ds.Manufacturer, ds.SeriesNumber, ds.InstanceNumber = "CR", "monai_mcx benchmark", 1, 1
    ds.BodyPartExamined, ds.ViewPosition, ds.PatientOrientation, ds.ImageType = (
        "CHEST",
        "PA",
        ["L", "F"],
        ["ORIGINAL", "PRIMARY"],
    )
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PixelSpacing = 1, "MONOCHROME2", [0.14, 0.14]
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = np.ascontiguousarray(pixels, dtype=np.uint16).tobytes()
    return ds


def preprocessing(ckpt: Path):
    """``inference.json``'s ``preprocessing`` for the model ``ckpt`` (no overlay copy, as ``--write_overlay
    false``)."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.json"))
    parser["bundle_root"] = str(REPO / "bundle")
    parser["ckpt_path"] = str(ckpt)
    parser["write_overlay"] = False
    return parser.get_parsed_content("preprocessing")


@contextlib.contextmanager
def timed_builders(sink: dict[str, float]):
    """Time :func:`make_seg` and :func:`make_sr` inside :meth:`DicomOutputs.add` (it imports them on each call):
    their seconds are added to ``sink["seg_build"]`` / ``sink["sr_build"]``."""
    import monai_mcx.dicom.seg as seg_mod
    import monai_mcx.dicom.sr as sr_mod

    originals = (seg_mod.make_seg, sr_mod.make_sr)

    def wrap(fn, key):
        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                sink[key] = sink.get(key, 0.0) + time.perf_counter() - t0

        return timed

    seg_mod.make_seg, sr_mod.make_sr = wrap(originals[0], "seg_build"), wrap(originals[1], "sr_build")
    try:
        yield
    finally:
        seg_mod.make_seg, sr_mod.make_sr = originals


# ------------------------------------------------------------------------------------------------ one study
class Pipeline:
    """The model, its preprocessing and DICOM outputs, loaded once; :meth:`run` takes one study end to end."""

    def __init__(self, ckpt: Path, dicomweb: str, work: Path) -> None:
        from monai_mcx.dicom.outputs import DicomOutputs
        from monai_mcx.dicom.web import make_client
        from monai_mcx.model import load_model

        self.net, self.description, self.postprocessor = load_model(ckpt)
        self.preprocessing = preprocessing(ckpt)
        self.outputs = DicomOutputs(self.description, store_to=dicomweb)
        self.client = make_client(dicomweb)
        self.work = work

    def run(self, study_uid: str, index: int) -> dict:
        """One study from the search to its SEG and SR stored; ``{stage: seconds, "total": s, ...}``."""
        from monai_mcx.data import collate_cxr
        from monai_mcx.dicom import find_dicom, save_dataset
        from monai_mcx.dicom.inputs import DICOM_KEY, annotate_items, loader_item
        from monai_mcx.dicom.web import retrieve_instances, search_instances
        from monai_mcx.inferers import to_original
        from monai_mcx.keys import BatchKeys, PredKeys
        from monai_mcx.transforms.guard import ERROR_KEY

        t: dict[str, float] = dict.fromkeys(STAGES, 0.0)
        folder, out_dir = self.work / f"in{index:03d}", self.work / f"out{index:03d}"
        out_dir.mkdir(parents=True)
        t_start = clock = time.perf_counter()

        def lap(stage: str) -> None:
            nonlocal clock
            now = time.perf_counter()
            t[stage] += now - clock
            clock = now

        found = search_instances(self.client, {"StudyInstanceUID": study_uid})
        lap("qido")
        (ds,) = retrieve_instances(self.client, found)
        lap("wado")
        src = save_dataset(ds, folder / study_uid / str(ds.SeriesInstanceUID) / f"{ds.SOPInstanceUID}.dcm")
        lap("file_writes")
        records = find_dicom(folder)
        (item,) = annotate_items([{"image": str(r.path)} for r in records])
        if item.get("error"):
            raise RuntimeError(f"{study_uid}: {item['error']}")
        lap("headers")
        batch = collate_cxr([self.preprocessing(loader_item(item))])
        if batch.get(ERROR_KEY) and batch[ERROR_KEY][0]:
            raise RuntimeError(f"{src}: {batch[ERROR_KEY][0]}")
        x = batch[BatchKeys.IMAGE].as_tensor()
        lap("decode_preprocess")
        with torch.no_grad():
            outputs = self.net(x)
        lap("forward")
        pred = self.postprocessor(outputs, x)
        res = to_original(pred, 0, batch[BatchKeys.ORIGINAL_SIZE][0], self.postprocessor.seg_threshold)
        probs = res[PredKeys.CLASS_PROBS]
        record = {
            "image": str(src),
            "dicom": item[DICOM_KEY],
            "class_probabilities": dict(zip(self.description.class_names, (float(p) for p in probs))),
            "gate": {"positive": bool(res["gate"])},
            "boxes": [
                {"box": [round(float(v), 2) for v in b], "score": float(s)} for b, s in zip(res["boxes"], res["scores"])
            ],
        }
        lap("postprocess")
        steps: list = []
        built: dict[str, float] = {}
        with timed_builders(built):
            self.outputs.add(str(src), item[DICOM_KEY], record, res["mask"], "study", steps)
        if [name for name, _ in steps] != ["study_seg.dcm", "study_sr.dcm"]:
            raise RuntimeError(f"{src}: no SEG or SR: {record['dicom_outputs']['notes']}")
        lap("headers")
        t["headers"] -= sum(built.values())
        t.update({k: t[k] + v for k, v in built.items()})
        for name, write in steps:
            write(out_dir / name)
        write_json_atomic(record, out_dir / "study.json")
        lap("file_writes")
        row = self.outputs.columns(record)
        self.outputs.store(out_dir, row)
        if row.get("stored") != "stored":
            raise RuntimeError(f"{study_uid}: {row.get('stored')}")
        lap("stow")
        t["total"] = time.perf_counter() - t_start
        t["gate_positive"] = bool(res["gate"])
        t["mask_px"] = int(res["mask"].sum())
        return t


# ------------------------------------------------------------------------------------------------ the CLI row
def run_cli(dicomweb: str, study_uid: str, out: Path, threads: int) -> dict:
    """``inference.json`` from the command line on one study (a fresh process); wall seconds and the ``stored``
    column of its ``predictions.csv``."""
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(CONFIGS / "inference.json")]
    cmd += ["--input", f"{dicomweb.replace('http://', 'dicomweb://')}?StudyInstanceUID={study_uid}"]
    cmd += ["--store_to", dicomweb, "--output_dir", str(out), "--write_nifti", "false", "--write_overlay", "false"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(REPO)}
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO, env=env)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(f"inference.json failed ({r.returncode}):\n{r.stderr[-3000:]}")
    with open(out / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return {"wall_s": round(wall, 3), "stored": [row.get("stored", "") for row in rows]}


# ------------------------------------------------------------------------------------------------ main
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--studies", type=int, default=20, help="timed studies per thread setting")
    p.add_argument("--threads", type=int, nargs="+", default=[2, 1], help="torch.set_num_threads settings")
    p.add_argument("--ckpt", type=Path, default=REPO / "bundle" / "models" / "model.pt")
    p.add_argument("--quick", action="store_true", help="2 studies and --no-write (a smoke test)")
    p.add_argument("--no-cli", action="store_true", help="skip the command-line row")
    p.add_argument("--section", default="pacs", help="section of docs/benchmarks.md and key of the JSON")
    p.add_argument("--record", type=Path, default=None, help="also write the JSON record to this file")
    add_output_options(p)
    args = p.parse_args(argv)
    if args.quick:
        args.studies, args.no_write = 2, True
    return args


def quantiles(values: list[float]) -> dict:
    v = np.asarray(values, dtype=np.float64)
    return {
        "median_s": round(float(np.median(v)), 4),
        "p90_s": round(float(np.percentile(v, 90)), 4),
        "mean_s": round(float(v.mean()), 4),
        "min_s": round(float(v.min()), 4),
        "max_s": round(float(v.max()), 4),
    }


def _round(v):
    return round(v, 4) if isinstance(v, float) else v


def summary(threads: int, per_study: list[dict]) -> dict:
    """One thread setting's record: per-stage quantiles, the goal verdicts, the per-study times."""
    stages = {s: quantiles([r[s] for r in per_study]) for s in (*STAGES, "total")}
    return {
        "threads": threads,
        "studies": len(per_study),
        "stages": stages,
        "goal_met": stages["total"]["median_s"] < GOAL_S,
        "goal_met_p90": stages["total"]["p90_s"] < GOAL_S,
        "per_study": per_study,
    }


def measure(args, work: Path) -> dict:
    """Start Orthanc, store the studies, run every thread setting interleaved, then the command line."""
    import pydicom

    from monai_mcx.dicom.orthanc import start_orthanc, stop_orthanc
    from monai_mcx.dicom.web import make_client, store_instances

    n_settings = len(args.threads)
    files, data = input_files(work / "synthetic", args.studies * n_settings + 2)
    base, proc = start_orthanc(work / "orthanc")
    try:
        dicomweb = f"{base}/dicom-web"
        uids = [str(pydicom.dcmread(f, stop_before_pixels=True).StudyInstanceUID) for f in files]
        if len(set(uids)) != len(uids):
            raise RuntimeError("the input files do not have one study each")
        t0 = time.perf_counter()
        store_instances(make_client(dicomweb), files)
        upload = time.perf_counter() - t0
        pipe = Pipeline(args.ckpt, dicomweb, work / "runs")
        pipe.run(uids[0], 0)  # warm-up: lazy imports (highdicom, codecs), first allocations
        per_study: dict[int, list[dict]] = {n: [] for n in args.threads}
        queue = iter(enumerate(uids[1:-1], start=1))
        for k in range(args.studies):
            for threads in args.threads[k % n_settings :] + args.threads[: k % n_settings]:
                i, uid = next(queue)
                torch.set_num_threads(threads)
                t = pipe.run(uid, i)
                per_study[threads].append({"study": uid, **{s: _round(v) for s, v in t.items()}})
                print(f"{threads} thr, study {i}: {t['total']:.3f} s  " + " ".join(f"{s} {t[s]:.3f}" for s in STAGES))
        cli = None if args.no_cli else run_cli(dicomweb, uids[-1], work / "cli", args.threads[0])
        if cli is not None:
            print(f"command line, 1 study: {cli['wall_s']:.2f} s, stored {cli['stored']}", flush=True)
    finally:
        stop_orthanc(proc)
    return {
        "data": data,
        "studies_per_setting": args.studies,
        "upload_s": round(upload, 3),
        "goal_s": GOAL_S,
        "runs": [summary(n, per_study[n]) for n in args.threads],
        "cli": cli,
        "model": str(args.ckpt.relative_to(REPO)) if args.ckpt.is_relative_to(REPO) else str(args.ckpt),
    }


def _verdict(run: dict) -> str:
    total, fwd = run["stages"]["total"], run["stages"]["forward"]
    ok = [("met" if v else "NOT met") for v in (run["goal_met"], run["goal_met_p90"])]
    return (
        f"`torch.set_num_threads({run['threads']})`: goal at the median **{ok[0]}** ({total['median_s']:.2f} s per "
        f"study), at p90 **{ok[1]}** ({total['p90_s']:.2f} s); fastest study {total['min_s']:.2f} s; forward pass "
        f"{fwd['min_s']:.2f} to {fwd['max_s']:.2f} s across the studies."
    )


def report(result: dict, command: str, load: tuple, elapsed: float) -> str:
    """The section of ``docs/benchmarks.md``."""
    runs = result["runs"]
    n_total = result["studies_per_setting"] * len(runs) + 2
    settings = " and ".join(f"`torch.set_num_threads({r['threads']})`" for r in runs)
    lines = [
        "## Time to result on a PACS: arrival in Orthanc to SEG + SR stored (`experiments/benchmark_pacs.py`)",
        "",
        f"Goal: under {GOAL_S:g} s per single-image study on 2 CPU cores, model loaded once. A throw-away Orthanc "
        f"(DICOMweb, 127.0.0.1) holds {n_total} single-image studies, {result['data']}; the shipped "
        f"model (`{result['model']}`) is loaded once. Each study then goes through the steps of `inference.json "
        "--input dicomweb://... --store_to ...`, timed one by one with the functions that path calls (QIDO search, "
        "WADO retrieve, header reads and check, the config's own preprocessing, forward pass, post-processing "
        "and mapping to the source's pixels, SEG and SR built with highdicom, the instance / SEG / SR / JSON "
        "written, SEG + SR sent by STOW-RS; no mask PNG, NIfTI or overlay). "
        f"{result['studies_per_setting']} studies per setting ({settings}) after one warm-up, one study at a "
        "time, the settings interleaved study by study. **The machine is shared with other workers** (load "
        "average below): the seconds are an upper bound for an idle 2-core machine; compare the settings, measured "
        "side by side, rather than the absolute seconds.",
        "",
        "| stage | " + " | ".join(f"median s ({r['threads']} thr) | p90 s ({r['threads']} thr)" for r in runs) + " |",
        "| --- |" + " ---: | ---: |" * len(runs),
    ]
    for s in (*STAGES, "total"):
        cells = " | ".join(f"{r['stages'][s]['median_s']:.3f} | {r['stages'][s]['p90_s']:.3f}" for r in runs)
        lines.append(f"| {STAGE_TEXT[s]} | {cells} |")
    lines += [""] + [f"- {_verdict(r)}" for r in runs]
    lines += [
        "",
        "The stage medians need not add up to the median total. The forward pass is the stage that moves with the "
        "other workers' load (the same network on same-sized inputs)"
        + "".join(
            f"; with {r['threads']} thread(s) the median total is "
            f"{r['stages']['total']['median_s'] / runs[0]['stages']['total']['median_s']:.2f} x that with "
            f"{runs[0]['threads']}"
            for r in runs[1:]
        )
        + ". On cores shared with other processes, an OpenMP forward pass on as many threads as cores waits for "
        "whichever thread the scheduler took away; one thread does not wait.",
    ]
    if result["cli"] is not None:
        lines.append(
            f"The command line on one more study (`python -m monai.bundle run --config_file "
            f"bundle/configs/inference.json --input dicomweb://...?StudyInstanceUID=... --store_to ... "
            f"--write_nifti false --write_overlay false`, `OMP_NUM_THREADS={runs[0]['threads']}`, a fresh process: "
            f"Python start, imports, model load, the study, `predictions.csv`) took **{result['cli']['wall_s']:.1f} "
            f"s** (stored: {', '.join(result['cli']['stored'])}): a one-study run is dominated by starting up; keep "
            "the model loaded for a PACS listener."
        )
    return "\n".join(lines + run_footer(load, elapsed, command)) + "\n"


def main(argv=None) -> dict:
    args = parse_args(argv)
    command = command_line("experiments.benchmark_pacs", argv)
    # pydicom warns once per RSNA patient that its PatientName (the image id) has one component: noise here
    warnings.filterwarnings("ignore", message="The string .* is unlikely to represent the intended person name")
    load_start, t_start = load_average(), time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mcx_pacs_bench_") as tmp:
        result = measure(args, Path(tmp))
    torch.set_num_threads(args.threads[0])  # the footer's machine line names the first setting
    load = (load_start, load_average())
    text = report(result, command, load, time.perf_counter() - t_start)
    print(text)
    record = {**result, "command": command, "load_average_start": load[0], "load_average_end": load[1]}
    if args.record is not None:
        write_json_atomic(record, args.record)
    if not args.no_write:
        write_section(args, args.section, text, record)
    return record


if __name__ == "__main__":
    main()
