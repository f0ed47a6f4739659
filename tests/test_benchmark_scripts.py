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
            str(REPO / "scripts" / "benchmark_inference.py"),
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
