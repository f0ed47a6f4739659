"""Command line of model descriptions: ``python -m monai_mcx.model {show,verify,describe} ...`` (``--help``).

* ``show CKPT``: print the checkpoint's description (verified against the weights);
* ``verify CKPT``: check that the description belongs to its checkpoint (exit status 1 if not);
* ``describe --ckpt CKPT --config train.json [--set id=value ...]``: describe a legacy checkpoint
  (:func:`~monai_mcx.model.describe_legacy_checkpoint`).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from monai_mcx.model.errors import DescriptionError
from monai_mcx.model.files import description_path, load_description
from monai_mcx.model.legacy import describe_legacy_checkpoint
from monai_mcx.networks.weights import WeightsError

__all__ = ["main"]


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m monai_mcx.model", description="Model descriptions of checkpoints.")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("show", help="print a checkpoint's description (verified against the weights)")
    s.add_argument("ckpt")
    v = sub.add_parser("verify", help="check that a description belongs to its checkpoint (exit status 1 if not)")
    v.add_argument("ckpt")
    d = sub.add_parser("describe", help="write the description of a legacy checkpoint from its training config")
    d.add_argument("--ckpt", required=True, help="the checkpoint (model.pt, or last.pt with --weights_key model)")
    d.add_argument("--config", nargs="+", default=["bundle/configs/train.json"], help="the training config file(s)")
    d.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="ID=VALUE",
        help="the training run's overrides, VALUE parsed as JSON when possible (repeatable)",
    )
    d.add_argument("--weights_key", default=None)
    d.add_argument("--force", action="store_true", help="replace an existing description")
    args = p.parse_args(argv)
    try:
        if args.cmd in ("show", "verify"):
            desc = load_description(args.ckpt)
            print(
                json.dumps(desc.to_dict(), indent=2)
                if args.cmd == "show"
                else f"ok: {description_path(args.ckpt)} describes {args.ckpt} (sha256 {desc.weights_sha256})"
            )
            return 0
        overrides = {}
        for item in args.overrides:
            if "=" not in item:
                p.error(f"--set expects ID=VALUE, got {item!r}")
            k, val = item.split("=", 1)
            overrides[k] = _parse_value(val)
        config = args.config if len(args.config) > 1 else args.config[0]
        desc = describe_legacy_checkpoint(args.ckpt, config, overrides, weights_key=args.weights_key, force=args.force)
        print(
            f"wrote {description_path(args.ckpt)} (sha256 {desc.weights_sha256[:16]}..., encoder {desc.encoder}, "
            f"classes {desc.class_names}, spatial_size {desc.spatial_size}, tasks {desc.tasks})"
        )
        return 0
    except (DescriptionError, WeightsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
