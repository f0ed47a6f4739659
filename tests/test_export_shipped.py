"""Every export command of the README's "Export" section, run as documented on the shipped model
(``bundle/models/model.pt``, a ResNet-18 encoder that ``torch.jit.script`` cannot compile; issue 24 item 21).
Only the output paths differ (a temporary folder instead of ``bundle/models``). Each result is checked against the
eager shipped model."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from conftest import BUNDLE, REPO

pytestmark = pytest.mark.slow

SHIPPED = BUNDLE / "models" / "model.pt"
CKPT_EXPORT = [
    "ckpt_export",
    "--net_id",
    "network_export",
    "--ckpt_file",
    "bundle/models/model.pt",
    "--ckpt_dir",
    "bundle/models",
    "--meta_file",
    "bundle/configs/metadata.json",
    "--config_file",
    "bundle/configs/inference.json",
]


def _run(*args: str) -> str:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, " ".join(args) + "\n" + proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def shipped():
    if not SHIPPED.is_file() or SHIPPED.stat().st_size < 1_000_000:
        pytest.skip(f"no shipped model at {SHIPPED}")
    from monai_mcx.export import export_wrapper, load_network

    net, desc = load_network(str(SHIPPED))
    assert desc.encoder == "resnet18"  # the case this test is about: an encoder torch.jit.script cannot compile
    return export_wrapper(net).eval(), desc


def _max_diff(ts_path, model, shape) -> float:
    torch.manual_seed(0)
    x = torch.rand(*shape)
    ts = torch.jit.load(str(ts_path), map_location="cpu").eval()
    with torch.no_grad():
        return max(float((a - b).abs().max()) for a, b in zip(ts(x), model(x)) if a.numel())


@pytest.mark.parametrize("suffix", [".onnx", ".pt2", ".ts"])
def test_monai_mcx_export_commands(shipped, tmp_path, suffix):
    out = tmp_path / f"model{suffix}"
    text = _run("monai_mcx.export", "--ckpt", "bundle/models/model.pt", "--out", str(out))
    assert out.is_file() and "parity (max abs diff)" in text, text  # the command checks parity itself (rc 1 if not)


def test_ckpt_export_commands(shipped, tmp_path):
    model, desc = shipped
    scripted, traced = tmp_path / "model.ts", tmp_path / "model_traced.ts"
    _run("monai.bundle", *CKPT_EXPORT, "--filepath", str(scripted))
    _run(
        "monai.bundle",
        *CKPT_EXPORT,
        "--filepath",
        str(traced),
        "--use_trace",
        "True",
        "--input_shape",
        "[1, 1, 128, 128]",
    )
    for path in (scripted, traced):
        assert _max_diff(path, model, (2, 1, *desc.spatial_size)) < 1e-4, path  # the shipped weights, not random
