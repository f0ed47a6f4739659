"""ONNX export of MultiCheXNet (single tensor per head) and parity checks against eager PyTorch.

The exported graph is :class:`monai_mcx.networks.MultiCheXNetExport` (or a :class:`MultiCheXNetHead`):
input ``image`` ``(B, 1, W, H)`` float32; outputs ``class_logits`` ``(B, K)``, ``seg_logits``
``(B, 1, W, H)``, ``box_cls_logits`` ``(B, N, 1)``, ``box_regression`` ``(B, N, 4)`` (flattened in the
order of MONAI's anchor generator, see :func:`monai_mcx.networks.box_decoding.flatten_head_maps`). The
batch axis is dynamic; the spatial size is fixed to ``input_shape`` (re-export for another size).

TorchScript export is MONAI's own ``python -m monai.bundle ckpt_export --net_id network_export ...``
(``network_export`` in ``bundle/configs/inference.json`` wraps the network in ``MultiCheXNetExport``);
:func:`torchscript_parity` checks such a file against eager.

Command line::

    python -m monai_mcx.export --config bundle/configs/inference.json --ckpt bundle/models/model.pt \\
        --out bundle/models/model.onnx [--input_shape 1 1 128 128] [--opset 17] [--set encoder=densenet-tiny]

It exports, then runs onnxruntime (CPU) on random inputs and prints the max abs difference per output
(non-zero exit status when above ``--atol``, default 1e-4).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from monai_mcx.networks import MultiCheXNet, MultiCheXNetExport, MultiCheXNetHead

__all__ = ["EXPORT_OUTPUT_NAMES", "export_wrapper", "export_onnx", "onnx_parity", "torchscript_parity", "main"]

#: output names of :class:`MultiCheXNetExport` in the ONNX graph
EXPORT_OUTPUT_NAMES = ("class_logits", "seg_logits", "box_cls_logits", "box_regression")


def export_wrapper(net: nn.Module) -> nn.Module:
    """``MultiCheXNetExport(net)`` for a :class:`MultiCheXNet`; export wrappers are returned as they are."""
    if isinstance(net, MultiCheXNet):
        return MultiCheXNetExport(net)
    if isinstance(net, (MultiCheXNetExport, MultiCheXNetHead)):
        return net
    raise TypeError(f"expected a MultiCheXNet or one of its export wrappers, got {type(net).__name__}")


def _output_names(model: nn.Module) -> list[str]:
    if isinstance(model, MultiCheXNetHead):
        return ["class_logits" if model.head == "classification" else "seg_logits"]
    return list(EXPORT_OUTPUT_NAMES)


def _as_tuple(out) -> tuple[torch.Tensor, ...]:
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def export_onnx(net: nn.Module, path: str | os.PathLike, input_shape: Sequence[int] = (1, 1, 128, 128),
                opset: int = 17, dynamic_batch: bool = True) -> Path:
    """Export ``net`` (a MultiCheXNet, wrapped in :class:`MultiCheXNetExport`, or a wrapper) to ONNX.

    Uses the TorchScript-based exporter (``dynamo=False``): it handles the DenseNet encoder and the
    per-level head loops without graph breaks. The file is written to a temporary name and renamed.

    Args:
        net: the network (put in ``eval()`` mode and on CPU for the export).
        path: output ``.onnx`` file.
        input_shape: ``(B, C, W, H)`` of the example input; ``W, H`` are fixed in the graph.
        opset: ONNX opset version.
        dynamic_batch: make the batch axis dynamic.

    Returns:
        the written path.
    """
    model = export_wrapper(net).eval().cpu()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    x = torch.rand(*[int(s) for s in input_shape])
    names = _output_names(model)
    dynamic_axes = {n: {0: "batch"} for n in ["image", *names]} if dynamic_batch else None
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TracerWarnings on shape arithmetic, deprecation notes
            torch.onnx.export(model, (x,), str(tmp), input_names=["image"], output_names=names, opset_version=int(opset),
                              dynamic_axes=dynamic_axes, do_constant_folding=True, dynamo=False)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def _max_abs_diffs(ref: Sequence[torch.Tensor], got: Sequence[np.ndarray | torch.Tensor], names: Sequence[str]) -> dict[str, float]:
    diffs = {}
    for name, r, g in zip(names, ref, got):
        g = torch.as_tensor(np.asarray(g)) if not isinstance(g, torch.Tensor) else g
        if tuple(r.shape) != tuple(g.shape):
            raise AssertionError(f"{name}: shape {tuple(g.shape)} differs from eager {tuple(r.shape)}")
        diffs[name] = float((r.float() - g.float()).abs().max()) if r.numel() else 0.0
    return diffs


def onnx_parity(net: nn.Module, path: str | os.PathLike, input_shape: Sequence[int], trials: int = 2,
                seed: int = 0) -> dict[str, float]:
    """Max abs difference per output between eager ``net`` and the ONNX file run by onnxruntime (CPU).

    ``trials`` random inputs of ``input_shape`` (a different batch size than the export's works when the
    batch axis is dynamic). Returns ``{output name: max abs diff over the trials}``.
    """
    import onnxruntime as ort

    model = export_wrapper(net).eval().cpu()
    names = _output_names(model)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    g = torch.Generator().manual_seed(seed)
    worst = dict.fromkeys(names, 0.0)
    for _ in range(trials):
        x = torch.rand(*[int(s) for s in input_shape], generator=g)
        with torch.no_grad():
            ref = _as_tuple(model(x))
        got = sess.run(names, {"image": x.numpy()})
        for k, v in _max_abs_diffs(ref, got, names).items():
            worst[k] = max(worst[k], v)
    return worst


def torchscript_parity(net: nn.Module, ts_path: str | os.PathLike, input_shape: Sequence[int], trials: int = 2,
                       seed: int = 0) -> dict[str, float]:
    """Max abs difference per output between eager ``net`` and a TorchScript file (``torch.jit.load``, CPU)."""
    model = export_wrapper(net).eval().cpu()
    names = _output_names(model)
    ts = torch.jit.load(str(ts_path), map_location="cpu").eval()
    g = torch.Generator().manual_seed(seed)
    worst = dict.fromkeys(names, 0.0)
    for _ in range(trials):
        x = torch.rand(*[int(s) for s in input_shape], generator=g)
        with torch.no_grad():
            ref = _as_tuple(model(x))
            got = _as_tuple(ts(x))
        for k, v in _max_abs_diffs(ref, got, names).items():
            worst[k] = max(worst[k], v)
    return worst


def _parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def load_network(config: str | Sequence[str], ckpt: str | os.PathLike | None, net_id: str = "network_def",
                 overrides: dict | None = None, key_in_ckpt: str | None = None) -> nn.Module:
    """Build ``net_id`` from bundle config file(s) (with ``overrides``) and load the checkpoint (strict)."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(config)
    for k, v in (overrides or {}).items():
        parser[k] = v
    net = parser.get_parsed_content(net_id)
    if ckpt:
        state = torch.load(str(ckpt), map_location="cpu", weights_only=True)
        if key_in_ckpt:
            state = state[key_in_ckpt]
        net.load_state_dict(state, strict=True)
    return net.eval().cpu()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m monai_mcx.export", description="Export MultiCheXNet to ONNX and check parity with onnxruntime.")
    p.add_argument("--config", nargs="+", default=["bundle/configs/inference.json"], help="bundle config file(s)")
    p.add_argument("--ckpt", default=None, help="checkpoint (state dict of the network); omit for random weights")
    p.add_argument("--key_in_ckpt", default=None, help="key of the weights in a nested checkpoint")
    p.add_argument("--out", required=True, help="output .onnx file")
    p.add_argument("--net_id", default="network_def", help="config id of the network (a MultiCheXNet)")
    p.add_argument("--head", choices=["all", "classification", "segmentation"], default="all",
                   help="export all outputs (MultiCheXNetExport) or one head (MultiCheXNetHead)")
    p.add_argument("--input_shape", type=int, nargs=4, default=None, metavar=("B", "C", "W", "H"),
                   help="example input; default (1, 1, *spatial_size) from the config")
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="ID=VALUE",
                   help="config override, VALUE parsed as JSON when possible (repeatable)")
    p.add_argument("--atol", type=float, default=1e-4, help="parity tolerance (max abs difference)")
    p.add_argument("--no-check", action="store_true", help="skip the onnxruntime parity check")
    args = p.parse_args(argv)

    overrides = {}
    for item in args.overrides:
        if "=" not in item:
            p.error(f"--set expects ID=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        overrides[k] = _parse_value(v)
    config = args.config if len(args.config) > 1 else args.config[0]
    net = load_network(config, args.ckpt, args.net_id, overrides, args.key_in_ckpt)
    model = export_wrapper(net) if args.head == "all" else MultiCheXNetHead(net, args.head)
    if args.input_shape is None:
        from monai.bundle import ConfigParser

        parser = ConfigParser()
        parser.read_config(config)
        for k, v in overrides.items():
            parser[k] = v
        spatial = parser.get_parsed_content("spatial_size") if "spatial_size" in parser else [128, 128]
        args.input_shape = [1, 1, *[int(s) for s in spatial]]
    out = export_onnx(model, args.out, args.input_shape, args.opset)
    print(f"wrote {out} (input image {list(args.input_shape)}, dynamic batch, opset {args.opset})")
    if args.no_check:
        return 0
    shape = [2, *args.input_shape[1:]]
    diffs = onnx_parity(model, out, shape)
    worst = max(diffs.values()) if diffs else 0.0
    print("onnxruntime parity (max abs diff): " + ", ".join(f"{k}={v:.2e}" for k, v in diffs.items()))
    if worst > args.atol:
        print(f"parity FAILED: {worst:.2e} > atol {args.atol:.0e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
