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
