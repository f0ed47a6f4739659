"""Export: TorchScript through ``monai.bundle ckpt_export`` and ONNX through ``monai_mcx.export`` (both built from the
checkpoint's model description; ``torch.export`` is covered in test_model.py), each matching eager PyTorch (max abs difference < 1e-4 on random inputs), for all heads and single heads."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from conftest import CONFIGS, REPO

ATOL = 1e-4
ANCHORS = [[8, 8], [12, 12], [16, 10]]
SHAPE = (2, 1, 64, 48)  # non-square: W != H


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A freshly built tiny MultiCheXNet, its state dict saved as the bundle saves it."""
    from monai_mcx.model import ModelDescription, save_model
    from monai_mcx.networks import MultiCheXNet

    torch.manual_seed(0)
    net = MultiCheXNet(encoder="densenet-tiny", num_anchors=len(ANCHORS)).eval()
    root = tmp_path_factory.mktemp("export")
    desc = ModelDescription(
        class_names=["pneumonia"],
        tasks=list(net.tasks),
        encoder="densenet-tiny",
        spatial_size=[64, 48],
        base_anchor_shapes=ANCHORS,
    )
    save_model(net, desc, root / "model.pt")  # model.pt + its description model.json
    return root, net


def _ckpt_export_args(root, name: str) -> list[str]:
    return [
        "--net_id",
        "network_export",
        "--filepath",
        str(root / name),
        "--ckpt_file",
        str(root / "model.pt"),
        "--meta_file",
        str(CONFIGS / "metadata.json"),
        "--config_file",
        str(CONFIGS / "inference.json"),
        "--ckpt_dir",
        str(root),
    ]  # inference.json builds the network from <ckpt_dir>/model.json


def test_ckpt_export_cli_torchscript_matches_eager(checkpoint):
    from monai_mcx.export import torchscript_parity

    root, net = checkpoint
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "ckpt_export", *_ckpt_export_args(root, "model.ts")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ts = torch.jit.load(str(root / "model.ts"))
    with torch.no_grad():
        out = ts(torch.rand(*SHAPE))
    assert len(out) == 4 and out[1].shape == (SHAPE[0], 1, *SHAPE[2:])
    diffs = torchscript_parity(net, root / "model.ts", SHAPE)
    assert max(diffs.values()) < ATOL, diffs


def test_ckpt_export_trace_matches_eager(checkpoint):
    """``--use_trace True --input_shape ...`` (same function as the CLI, called in-process)."""
    from monai.bundle import ckpt_export

    from monai_mcx.export import torchscript_parity

    root, net = checkpoint
    args = _ckpt_export_args(root, "model_traced.ts")
    kwargs = {a.lstrip("-"): v for a, v in zip(args[::2], args[1::2])}
    ckpt_export(use_trace=True, input_shape=[1, 1, 64, 48], **kwargs)
    diffs = torchscript_parity(net, root / "model_traced.ts", SHAPE)
    assert max(diffs.values()) < ATOL, diffs


def test_onnx_cli_export_and_onnxruntime_parity(checkpoint, capsys):
    pytest.importorskip("onnxruntime")
    from monai_mcx.export import main, onnx_parity

    root, net = checkpoint
    out = root / "model.onnx"
    rc = main(["--ckpt", str(root / "model.pt"), "--out", str(out), "--set", "encoder=densenet-tiny"])
    assert rc == 0, capsys.readouterr()
    assert "parity" in capsys.readouterr().out
    diffs = onnx_parity(net, out, (3, 1, 64, 48))  # dynamic batch: 3 != the export's 1
    assert set(diffs) == {"class_logits", "seg_logits", "box_cls_logits", "box_regression"}
    assert max(diffs.values()) < ATOL, diffs


@pytest.mark.parametrize("head", ["classification", "segmentation"])
def test_single_head_wrappers_onnx_and_torchscript(checkpoint, tmp_path, head):
    pytest.importorskip("onnxruntime")
    from monai_mcx.export import export_onnx, onnx_parity, torchscript_parity
    from monai_mcx.networks import MultiCheXNetHead

    _, net = checkpoint
    wrapper = MultiCheXNetHead(net, head).eval()
    export_onnx(wrapper, tmp_path / "head.onnx", (1, 1, 64, 48))
    diffs = onnx_parity(wrapper, tmp_path / "head.onnx", SHAPE)
    assert max(diffs.values()) < ATOL, diffs
    torch.jit.save(torch.jit.script(wrapper), str(tmp_path / "head.ts"))
    diffs = torchscript_parity(wrapper, tmp_path / "head.ts", SHAPE)
    assert max(diffs.values()) < ATOL, diffs
