"""The benchmark scripts still run end to end on tiny settings (they are not run by CI otherwise)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_benchmark_inference_runs_with_a_described_model(tmp_path):
    """inference.json loads only described checkpoints: the benchmark must write a description with its weights."""
    out_json, out_md = tmp_path / "b.json", tmp_path / "b.md"
    out_md.write_text("# benchmarks\n")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.benchmark_inference",
            "--images",
            "2",
            "--file-size",
            "64",
            "--size",
            "32",
            "--encoder",
            "densenet-tiny",
            "--batch-size",
            "2",
            "--repeats",
            "1",
            "--threads",
            "1",
            "--out-json",
            str(out_json),
            "--out-md",
            str(out_md),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    records = json.loads(out_json.read_text())
    assert "end_to_end" in json.dumps(records)
    assert "forward only" in out_md.read_text()


def test_benchmark_inference_processes_times_torchrun_runs(tmp_path):
    """--processes 1 2: inference.json + multi_gpu_inference.json under torchrun, a record per process count with
    both ranks' run timed, and the per-image cost outside the forward pass from the JSON's end-to-end records."""
    out_json, out_md = tmp_path / "b.json", tmp_path / "b.md"
    out_md.write_text("# benchmarks\n")
    fwd = {"config": "forward only", "images": 10, "median_s": 1.0}
    e2e = {"records": [fwd, {"config": "png all", "median_s": 1.5}], "command": "x --file-size 1024 --size 256"}
    out_json.write_text(json.dumps({"end_to_end_1024": e2e}))
    cmd = [sys.executable, "-m", "experiments.benchmark_inference", "--processes", "1", "2", "--images", "3"]
    cmd += ["--file-size", "64", "--size", "32", "--encoder", "densenet-tiny", "--batch-size", "2", "--repeats", "1"]
    cmd += ["--threads", "1", "--out-json", str(out_json), "--out-md", str(out_md)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    record = json.loads(out_json.read_text())["archive_processes"]
    assert [row["processes"] for row in record["records"]][-1] == 2 and record["records"][0]["processes"] == 1
    assert all(row["run_img_per_s"] > 0 and row["median_command_s"] > row["median_run_s"] for row in record["records"])
    assert record["outside_forward"] == [
        {
            "key": "end_to_end_1024",
            "file_px": 1024,
            "config": "png all",
            "forward_ms_per_image": 100.0,
            "outside_forward_ms_per_image": 50.0,
        }
    ]
    assert "An archive in several processes" in out_md.read_text()


def test_benchmark_train_measures_whole_batch_heads_beside_the_default(tmp_path):
    """A tiny disjoint run: the default MultiCheXNet, the task-grouped and the whole-batch-heads variants and the
    single-task models all train, and the table has a row for each MultiCheXNet variant."""
    out_json, out_md = tmp_path / "t.json", tmp_path / "t.md"
    out_md.write_text("# benchmarks\n")
    cmd = [sys.executable, "-m", "experiments.benchmark_train", "--datasets", "demo_disjoint"]
    cmd += ["--demo-images", "30", "--size", "32", "--epochs", "1", "--batch-size", "8", "--max-val", "6"]
    cmd += ["--threads", "1", "--memory-sizes", "--whole-batch-heads", "--out-json", str(out_json)]
    cmd += ["--out-md", str(out_md)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    (record,) = json.loads(out_json.read_text())["training"]["records"]
    assert set(record["alternatives"]) == {"multichexnet_grouped", "multichexnet_whole_batch_heads"}
    assert record["alternatives"]["multichexnet_whole_batch_heads"]["ratio_epoch_vs_sum_single"] > 0
    text = out_md.read_text()
    assert "demo_disjoint, heads on the whole batch" in text and "demo_disjoint, task-grouped batches" in text


def test_benchmark_pacs_quick_times_every_stage(tmp_path):
    """Two studies per thread setting (2 and 1, interleaved) through a throw-away Orthanc, search to SEG + SR stored,
    and the one-study command line: the record has every stage's quantiles per setting, a total, the goal
    verdicts and the CLI row, and docs are not written."""
    import pytest

    from monai_mcx.dicom.orthanc import OrthancUnavailable, find_orthanc

    try:
        find_orthanc()
    except OrthancUnavailable as e:
        pytest.skip(f"NOT RUN: PACS benchmark: {e}")
    record_path, out_md = tmp_path / "pacs.json", tmp_path / "b.md"
    cmd = [sys.executable, "-m", "experiments.benchmark_pacs", "--quick", "--record", str(record_path)]
    cmd += ["--out-md", str(out_md)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    assert not out_md.exists()  # --quick writes no docs
    record = json.loads(record_path.read_text())
    stages = ("qido", "wado", "headers", "decode_preprocess", "forward", "postprocess", "seg_build", "sr_build")
    assert [run["threads"] for run in record["runs"]] == [2, 1]
    for run in record["runs"]:
        assert set(run["stages"]) == {*stages, "file_writes", "stow", "total"}
        for q in run["stages"].values():
            assert set(q) == {"median_s", "p90_s", "mean_s", "min_s", "max_s"}
            assert 0 <= q["min_s"] <= q["median_s"] <= q["p90_s"] <= q["max_s"]
        assert run["stages"]["forward"]["median_s"] > 0 and run["stages"]["stow"]["median_s"] > 0
        assert run["studies"] == 2 and len({s["study"] for s in run["per_study"]}) == 2
        assert run["goal_met"] == (run["stages"]["total"]["median_s"] < record["goal_s"])
    studies = [s["study"] for run in record["runs"] for s in run["per_study"]]
    assert len(set(studies)) == 4  # each setting has studies of its own
    assert record["cli"]["stored"] == ["stored"] and record["cli"]["wall_s"] > 0
    assert len(record["load_average_start"]) == 3
