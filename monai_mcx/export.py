"""Export of MultiCheXNet (single tensor per head) to ONNX, TorchScript and ``torch.export``, with parity checks.

Every export is built from the checkpoint's model description (:mod:`monai_mcx.model`, ``model.json`` beside
``model.pt``): the network, its weights and their hash check come from :func:`monai_mcx.model.load_model`
(through the weights layer, :mod:`monai_mcx.networks.weights`: clean errors naming the file), the example input is
``(1, in_channels, *spatial_size)``, and the description's JSON is embedded in the exported file (ONNX
``metadata_props["model_description"]``, TorchScript / ``torch.export`` extra file ``model.json``).

The exported graph is :class:`monai_mcx.networks.MultiCheXNetExport` (or a :class:`MultiCheXNetHead`):
input ``image`` ``(B, 1, W, H)`` float32; outputs ``class_logits`` ``(B, K)``, ``seg_logits``
``(B, 1, W, H)``, ``box_cls_logits`` ``(B, N, 1)``, ``box_regression`` ``(B, N, 4)`` (flattened in the
order of MONAI's anchor generator, see :func:`monai_mcx.networks.box_decoding.flatten_head_maps`). The
batch axis is dynamic; the spatial size is fixed to ``input_shape`` (re-export for another size).

Formats (``--format``, default ``onnx``):

* ``onnx``: :func:`export_onnx` (TorchScript-based exporter), checked with onnxruntime (:func:`onnx_parity`).
* ``torchscript``: ``torch.jit.script`` (``--trace``: ``torch.jit.trace``), checked with :func:`torchscript_parity`.
  TorchScript is deprecated in recent PyTorch; MONAI's ``python -m monai.bundle ckpt_export --net_id network_export``
  produces the same file from ``inference.json`` (which builds ``network_def`` from the description).
* ``torch_export``: ``torch.export.export`` with a dynamic batch dimension, saved with ``torch.export.save``
  (``.pt2``), checked with :func:`export_program_parity`.

Command line::

    python -m monai_mcx.export --ckpt bundle/models/model.pt --out bundle/models/model.onnx [--format onnx]
        [--input_shape 1 1 128 128] [--opset 17] [--head all]

It exports, then runs the exported file on random inputs and prints the max abs difference per output (non-zero
exit status when above ``--atol``, default 1e-4). A checkpoint without a description is exported only through the
explicit legacy path ``--config bundle/configs/train.json [--set id=value ...]`` (with a warning), or describe it
first (``python -m monai_mcx.model describe``). ``--set`` with a description may only repeat its values
(``spatial_size=[64,64]``); a contradicting one is an error naming both values.
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
from monai.bundle import ConfigParser
from torch import nn

from monai_mcx.keys import BatchKeys, PredKeys, Task
from monai_mcx.model import DescriptionError, has_description, load_description, load_model
from monai_mcx.networks import MultiCheXNet, MultiCheXNetExport, MultiCheXNetHead
from monai_mcx.networks.weights import WeightsError, load_weights
from monai_mcx.utils import atomic_write

__all__ = [
    "EXPORT_OUTPUT_NAMES",
    "FORMATS",
    "export_wrapper",
    "export_onnx",
    "export_torchscript",
    "export_program",
    "onnx_parity",
    "torchscript_parity",
    "export_program_parity",
    "load_network",
    "main",
]

#: ``--format`` values and their default file suffix
FORMATS = {"onnx": ".onnx", "torchscript": ".ts", "torch_export": ".pt2"}

#: output names of :class:`MultiCheXNetExport` in the ONNX graph
EXPORT_OUTPUT_NAMES = (
    PredKeys.CLASS_LOGITS.value,
    PredKeys.SEG_LOGITS.value,
    PredKeys.BOX_CLS_LOGITS.value,
    PredKeys.BOX_REGRESSION.value,
)


def export_wrapper(net: nn.Module) -> nn.Module:
    """``MultiCheXNetExport(net)`` for a :class:`MultiCheXNet`; export wrappers are returned as they are."""
    if isinstance(net, MultiCheXNet):
        return MultiCheXNetExport(net)
    if isinstance(net, (MultiCheXNetExport, MultiCheXNetHead)):
        return net
    raise TypeError(f"expected a MultiCheXNet or one of its export wrappers, got {type(net).__name__}")


def _output_names(model: nn.Module) -> list[str]:
    if isinstance(model, MultiCheXNetHead):
        return [PredKeys.CLASS_LOGITS.value if model.head == Task.CLASSIFICATION else PredKeys.SEG_LOGITS.value]
    return list(EXPORT_OUTPUT_NAMES)


def _as_tuple(out) -> tuple[torch.Tensor, ...]:
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def export_onnx(
    net: nn.Module,
    path: str | os.PathLike,
    input_shape: Sequence[int] = (1, 1, 128, 128),
    opset: int = 17,
    dynamic_batch: bool = True,
    description: dict | None = None,
) -> Path:
    """Export ``net`` (a MultiCheXNet, wrapped in :class:`MultiCheXNetExport`, or a wrapper) to ONNX.

    Uses the TorchScript-based exporter (``dynamo=False``): it handles the DenseNet encoder and the
    per-level head loops without graph breaks. The file is written to a temporary name and renamed.

    Args:
        net: the network (put in ``eval()`` mode and on CPU for the export).
        path: output ``.onnx`` file.
        input_shape: ``(B, C, W, H)`` of the example input; ``W, H`` are fixed in the graph.
        opset: ONNX opset version.
        dynamic_batch: make the batch axis dynamic.
        description: a model description (``ModelDescription.to_dict()``) stored as the ONNX metadata property
            ``model_description`` (JSON).

    Returns:
        the written path.
    """
    model = export_wrapper(net).eval().cpu()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    x = torch.rand(*[int(s) for s in input_shape])
    names = _output_names(model)
    dynamic_axes = {n: {0: "batch"} for n in [BatchKeys.IMAGE.value, *names]} if dynamic_batch else None
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TracerWarnings on shape arithmetic, deprecation notes
            torch.onnx.export(
                model,
                (x,),
                str(tmp),
                input_names=[BatchKeys.IMAGE.value],
                output_names=names,
                opset_version=int(opset),
                dynamic_axes=dynamic_axes,
                do_constant_folding=True,
                dynamo=False,
            )
        if description is not None:
            import onnx  # optional dependency (ONNX export only)

            proto = onnx.load(str(tmp))
            entry = proto.metadata_props.add()
            entry.key, entry.value = "model_description", json.dumps(description, sort_keys=True)
            onnx.save(proto, str(tmp))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def export_torchscript(
    net: nn.Module,
    path: str | os.PathLike,
    input_shape: Sequence[int] = (1, 1, 128, 128),
    trace: bool = False,
    description: dict | None = None,
) -> Path:
    """``torch.jit.script`` (or ``trace``) ``net`` (wrapped in :class:`MultiCheXNetExport`) and save it atomically,
    with ``description`` as the extra file ``model.json``. Returns the path."""
    model = export_wrapper(net).eval().cpu()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ts = torch.jit.trace(model, torch.rand(*[int(s) for s in input_shape])) if trace else torch.jit.script(model)
    extra = {"model.json": json.dumps(description, sort_keys=True)} if description is not None else {}
    path = Path(path)
    with atomic_write(path, "wb") as f:
        torch.jit.save(ts, f, _extra_files=extra)
    return path


def export_program(
    net: nn.Module,
    path: str | os.PathLike,
    input_shape: Sequence[int] = (1, 1, 128, 128),
    dynamic_batch: bool = True,
    description: dict | None = None,
) -> Path:
    """``torch.export.export`` ``net`` (wrapped in :class:`MultiCheXNetExport`; the successor of TorchScript) with a
    dynamic batch dimension and ``torch.export.save`` it atomically (``.pt2``), with ``description`` as the extra
    file ``model.json``. Load with ``torch.export.load(path).module()``. Returns the path."""
    model = export_wrapper(net).eval().cpu()
    shape = [int(s) for s in input_shape]
    if dynamic_batch:  # an example batch of 1 would be specialised (torch.export's 0/1 rule)
        shape[0] = max(shape[0], 2)
    x = torch.rand(*shape)
    dynamic = {BatchKeys.IMAGE.value: {0: torch.export.Dim("batch", min=1, max=1024)}} if dynamic_batch else None
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.export.export(model, (x,), dynamic_shapes=dynamic)
    extra = {"model.json": json.dumps(description, sort_keys=True)} if description is not None else {}
    path = Path(path)
    with atomic_write(path, "wb") as f:
        torch.export.save(program, f, extra_files=extra)
    return path


def _max_abs_diffs(
    ref: Sequence[torch.Tensor], got: Sequence[np.ndarray | torch.Tensor], names: Sequence[str]
) -> dict[str, float]:
    diffs = {}
    for name, r, g in zip(names, ref, got):
        g = torch.as_tensor(np.asarray(g)) if not isinstance(g, torch.Tensor) else g
        if tuple(r.shape) != tuple(g.shape):
            raise AssertionError(f"{name}: shape {tuple(g.shape)} differs from eager {tuple(r.shape)}")
        diffs[name] = float((r.float() - g.float()).abs().max()) if r.numel() else 0.0
    return diffs


def onnx_parity(
    net: nn.Module, path: str | os.PathLike, input_shape: Sequence[int], trials: int = 2, seed: int = 0
) -> dict[str, float]:
    """Max abs difference per output between eager ``net`` and the ONNX file run by onnxruntime (CPU).

    ``trials`` random inputs of ``input_shape`` (a different batch size than the export's works when the
    batch axis is dynamic). Returns ``{output name: max abs diff over the trials}``.
    """
    import onnxruntime as ort  # optional dependency (ONNX parity check only)

    model = export_wrapper(net).eval().cpu()
    names = _output_names(model)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    g = torch.Generator().manual_seed(seed)
    worst = dict.fromkeys(names, 0.0)
    for _ in range(trials):
        x = torch.rand(*[int(s) for s in input_shape], generator=g)
        with torch.no_grad():
            ref = _as_tuple(model(x))
        got = sess.run(names, {BatchKeys.IMAGE.value: x.numpy()})
        for k, v in _max_abs_diffs(ref, got, names).items():
            worst[k] = max(worst[k], v)
    return worst


def torchscript_parity(
    net: nn.Module, ts_path: str | os.PathLike, input_shape: Sequence[int], trials: int = 2, seed: int = 0
) -> dict[str, float]:
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


def export_program_parity(
    net: nn.Module, path: str | os.PathLike, input_shape: Sequence[int], trials: int = 2, seed: int = 0
) -> dict[str, float]:
    """Max abs difference per output between eager ``net`` and a ``torch.export`` file (``torch.export.load``)."""
    model = export_wrapper(net).eval().cpu()
    names = _output_names(model)
    program = torch.export.load(str(path)).module()
    g = torch.Generator().manual_seed(seed)
    worst = dict.fromkeys(names, 0.0)
    for _ in range(trials):
        x = torch.rand(*[int(s) for s in input_shape], generator=g)
        with torch.no_grad():
            ref = _as_tuple(model(x))
            got = _as_tuple(program(x))
        for k, v in _max_abs_diffs(ref, got, names).items():
            worst[k] = max(worst[k], v)
    return worst


def _parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def load_network(
    ckpt: str | os.PathLike | None,
    config: str | Sequence[str] | None = None,
    net_id: str = "network_def",
    overrides: dict | None = None,
    key_in_ckpt: str | None = None,
):
    """``(network, description)``: the network built from the checkpoint's model description with its weights loaded.

    * ``ckpt`` with a description (``model.json``): :func:`monai_mcx.model.load_model` (description, network,
      weights, hash verified), ``overrides`` reconciled with the description (a contradiction is an error naming
      both values).
    * ``ckpt`` without a description: the explicit legacy path -- ``config`` is required; ``net_id`` is built from it
      (with ``overrides``) and the weights loaded, with a warning; ``description`` is None.
    * ``ckpt`` None: random weights, from the config.

    Raises:
        monai_mcx.networks.weights.WeightsError: the checkpoint is missing, truncated, pickled or does not fit
            (names the file).
        monai_mcx.model.DescriptionError: no description and no config, a stale description, or a conflict.
    """
    if ckpt and has_description(ckpt):
        net, desc, _ = load_model(ckpt, weights_key=key_in_ckpt, overrides=overrides)
        return net.eval().cpu(), desc
    if config is None:
        if ckpt:
            load_description(ckpt)  # raises the "no model description" error with the legacy instructions
        raise DescriptionError("without a checkpoint, give --config to build the network")
    parser = ConfigParser()
    parser.read_config(config)
    for k, v in (overrides or {}).items():
        parser[k] = v
    net = parser.get_parsed_content(net_id)
    if ckpt:
        warnings.warn(
            f"{ckpt}: no model description; exporting it as a legacy checkpoint with the network of {config} "
            "(describe it once with python -m monai_mcx.model describe)",
            stacklevel=2,
        )
        load_weights(net, ckpt, strict=True, key=key_in_ckpt)
    return net.eval().cpu(), None


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m monai_mcx.export",
        description="Export MultiCheXNet (built from its model description) to ONNX, "
        "TorchScript "
        "or torch.export, and check parity with eager PyTorch.",
    )
    p.add_argument("--ckpt", default=None, help="checkpoint (model.pt with its model.json); omit for random weights")
    p.add_argument(
        "--config",
        nargs="+",
        default=None,
        help="legacy path only: bundle config file(s) building the network of a checkpoint without a "
        "description (or of random weights)",
    )
    p.add_argument("--key_in_ckpt", default=None, help="key of the weights in a nested checkpoint")
    p.add_argument("--out", required=True, help="output file (.onnx, .ts, .pt2)")
    p.add_argument(
        "--format",
        choices=sorted(FORMATS),
        default=None,
        help="default: from the suffix of --out (.ts torchscript, .pt2 torch_export), else onnx",
    )
    p.add_argument("--trace", action="store_true", help="torchscript: torch.jit.trace instead of torch.jit.script")
    p.add_argument("--net_id", default="network_def", help="legacy path: config id of the network (a MultiCheXNet)")
    p.add_argument(
        "--head",
        choices=["all", Task.CLASSIFICATION.value, Task.SEGMENTATION.value],
        default="all",
        help="export all outputs (MultiCheXNetExport) or one head (MultiCheXNetHead)",
    )
    p.add_argument(
        "--input_shape",
        type=int,
        nargs=4,
        default=None,
        metavar=("B", "C", "W", "H"),
        help="example input; default (1, in_channels, *spatial_size) from the description",
    )
    p.add_argument("--opset", type=int, default=17)
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="ID=VALUE",
        help="with a description: a description field that must agree with it; legacy path: a config "
        "override; VALUE parsed as JSON when possible (repeatable)",
    )
    p.add_argument("--atol", type=float, default=1e-4, help="parity tolerance (max abs difference)")
    p.add_argument("--no-check", action="store_true", help="skip the parity check")
    args = p.parse_args(argv)

    overrides = {}
    for item in args.overrides:
        if "=" not in item:
            p.error(f"--set expects ID=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        overrides[k] = _parse_value(v)
    config = None if not args.config else (args.config if len(args.config) > 1 else args.config[0])
    fmt = args.format or next((f for f, suf in FORMATS.items() if str(args.out).endswith(suf)), "onnx")
    try:
        net, desc = load_network(args.ckpt, config, args.net_id, overrides, args.key_in_ckpt)
    except (WeightsError, DescriptionError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    model = export_wrapper(net) if args.head == "all" else MultiCheXNetHead(net, args.head)
    if args.input_shape is None:
        if desc is not None:
            args.input_shape = [1, desc.in_channels, *desc.spatial_size]
        else:
            parser = ConfigParser()
            parser.read_config(config)
            for k, v in overrides.items():
                parser[k] = v
            spatial = parser.get_parsed_content("spatial_size") if "spatial_size" in parser else [128, 128]
            args.input_shape = [1, 1, *[int(s) for s in spatial]]
    meta = desc.to_dict() if desc is not None else None
    if fmt == "onnx":
        out = export_onnx(model, args.out, args.input_shape, args.opset, description=meta)
        what = f"opset {args.opset}"
    elif fmt == "torchscript":
        out = export_torchscript(model, args.out, args.input_shape, trace=args.trace, description=meta)
        what = "torch.jit." + ("trace" if args.trace else "script")
    else:
        out = export_program(model, args.out, args.input_shape, description=meta)
        what = "torch.export"
    print(
        f"wrote {out} ({fmt}, {what}, input image {list(args.input_shape)}, dynamic batch"
        + (", model description embedded)" if meta else ", no model description)")
    )
    if args.no_check:
        return 0
    shape = [2, *args.input_shape[1:]]
    check = {"onnx": onnx_parity, "torchscript": torchscript_parity, "torch_export": export_program_parity}[fmt]
    diffs = check(model, out, shape)
    worst = max(diffs.values()) if diffs else 0.0
    print(f"{fmt} parity (max abs diff): " + ", ".join(f"{k}={v:.2e}" for k, v in diffs.items()))
    if worst > args.atol:
        print(f"parity FAILED: {worst:.2e} > atol {args.atol:.0e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
