"""experiments/gpu_check.sh --dry: the GPU script starts on CPU (tiny sizes) and writes its one results file."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO

pytestmark = pytest.mark.slow


def test_gpu_check_dry_mode_writes_results(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path), PYTHON=sys.executable, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        ["bash", str(REPO / "experiments" / "gpu_check.sh"), "--dry"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads((tmp_path / "gpu_check.json").read_text())
    assert res["dry"] is True and res["ok"] is True
    sections = res["sections"]
    assert set(sections) == {"amp_training", "amp_parity", "memory_format", "benchmark_rows", "training_throughput"}
    assert sections["amp_training"]["params_changed"] > 0
    assert {r["variant"] for r in sections["benchmark_rows"]["rows"]} >= {"multichexnet", "sum_single_task"}
    assert set(sections["training_throughput"]["img_s"]) == {
        "multichexnet",
        "single_classification",
        "single_segmentation",
        "single_localization",
    }
