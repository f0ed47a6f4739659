"""The one weights layer: read a checkpoint, find its state dict, compare it with a module, hash it.

Every place that reads network weights goes through here -- ``engines.checkpoint`` (``SafeCheckpointLoader``,
``engines.resume``), ``model.merge`` (merging sub-models, transfer), ``networks.pretrained`` (pretrained encoders),
``monai_mcx.model`` (model descriptions, ``load_model``), ``monai_mcx.export`` and the MONAI Label app -- so a missing,
truncated, pickled-code or foreign checkpoint gives the same :class:`WeightsError` everywhere, naming the file
and, for a mismatch, the missing / unexpected / shape-mismatched keys.

* :func:`load_weights_file`: ``torch.load(weights_only=True)`` with a clean error (no bare ``OSError`` /
  ``UnpicklingError`` from deep inside torch).
* :func:`find_state_dict` / :func:`read_state_dict`: the tensors of a checkpoint, unwrapping ``{"model": sd}``
  (``last.pt``), ``{"state_dict": sd}`` (Lightning and others) and a DDP/DataParallel ``module.`` prefix.
* :func:`state_dict_problems` / :func:`check_state_dict`: compare with a module (missing / unexpected / shape).
* :func:`load_weights`: all of the above, then ``load_state_dict``; nothing is loaded when a check fails.
* :func:`state_dict_sha256`: the content hash of a state dict that a model description records
  (:mod:`monai_mcx.model`); independent of the container (``model.pt`` or ``last.pt["model"]``), of the key
  order and of the file's zip layout.

MONAI's ``CheckpointLoader`` / ``copy_model_state`` and ignite's ``Checkpoint.load_objects`` raise torch's errors
without the file name (or, for ``copy_model_state``, silently skip keys); this module is the project's wrapper.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Union

import torch
from torch import nn

__all__ = [
    "WeightsError",
    "MergeError",
    "StateSource",
    "short_keys",
    "source_name",
    "load_weights_file",
    "find_state_dict",
    "read_state_dict",
    "strip_module_prefix",
    "unwrap_module",
    "state_dict_problems",
    "check_state_dict",
    "load_weights",
    "state_dict_sha256",
]

StateSource = Union[str, os.PathLike, Mapping[str, Any]]

#: keys under which checkpoints nest the network's state dict (MONAI ``last.pt``: ``model``; Lightning etc.)
WRAPPER_KEYS = ("model", "state_dict")


class WeightsError(RuntimeError):
    """A checkpoint cannot be read, holds no state dict, or does not fit the module it is loaded into.

    The message names the file and, for a mismatch, the keys. ``engines.checkpoint.CheckpointError`` and
    ``MergeError`` (merging, transfer) are subclasses (one family: ``except WeightsError`` catches every case)."""


class MergeError(WeightsError, ValueError):
    """A checkpoint does not fit the part of the network it should fill (merging sub-models, pretrained encoders,
    transfer); the message names the file and keys. Also a ``ValueError``, as before the weights layer existed."""


def short_keys(keys: Iterable[str], limit: int = 10) -> str:
    """``"a, b, c, ... (n more)"`` for messages."""
    keys = list(keys)
    text = ", ".join(keys[:limit])
    return text + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def source_name(source: Any) -> str:
    """The file name of a source for messages (``<in-memory state dict>`` for a mapping)."""
    return str(source) if isinstance(source, (str, os.PathLike)) else "<in-memory state dict>"


def load_weights_file(path: str | os.PathLike, map_location: Any = "cpu", error: type = WeightsError) -> Any:
    """``torch.load(path, weights_only=True)``; every failure is ``error`` (a :class:`WeightsError`) naming the file.

    Raises:
        WeightsError: the file is missing, is a folder, is empty / truncated / not a torch file, or holds
            pickled code (a whole ``nn.Module``) that ``weights_only`` refuses.
    """
    path = Path(path)
    if not path.is_file():
        raise error(f"checkpoint file {str(path)!r} does not exist" + (" (it is a folder)" if path.is_dir() else ""))
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated zip, garbage bytes, pickled code refused by weights_only
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        pickled = "weights only load failed" in str(e).lower() or "unsupported global" in str(e).lower()
        hint = (
            "it holds pickled Python objects (a whole model?), which torch.load(weights_only=True) refuses; "
            "convert it once with torch.save(model.state_dict(), path)"
            if pickled
            else "it is corrupt, truncated or not a PyTorch checkpoint"
        )
        raise error(
            f"cannot read checkpoint {str(path)!r} ({path.stat().st_size} bytes): {hint} [{type(e).__name__}: {reason}]"
        ) from e


def strip_module_prefix(state: Mapping[str, Any], module: nn.Module | None = None) -> dict[str, Any]:
    """Drop a DDP/DataParallel ``module.`` prefix carried by every key (unless ``module``'s own keys have it)."""
    keys = list(state)
    if keys and all(str(k).startswith("module.") for k in keys):
        if module is None or not any(k.startswith("module.") for k in module.state_dict()):
            return {str(k)[len("module.") :]: v for k, v in state.items()}
    return dict(state)


def find_state_dict(
    ckpt: Any, name: str = "<in-memory state dict>", key: str | None = None, error: type = WeightsError
) -> dict[str, torch.Tensor]:
    """The network state dict inside a loaded checkpoint: ``ckpt[key]`` when ``key`` is given, else ``ckpt`` itself,
    ``ckpt["model"]`` or ``ckpt["state_dict"]`` (the first that holds tensors); a ``module.`` prefix is removed and
    non-tensor entries are dropped.

    Raises:
        WeightsError: ``ckpt`` is not a mapping, ``key`` is absent, or there are no tensors (a foreign file).
    """
    if not isinstance(ckpt, Mapping):
        raise error(f"checkpoint {name!r} holds a {type(ckpt).__name__}, expected a state dict (a dict of tensors)")
    state: Any = ckpt
    if key:
        if key not in ckpt:
            raise error(f"checkpoint {name!r} has no entry {key!r}; it holds {short_keys(sorted(map(str, ckpt)))}")
        state = ckpt[key]
    else:
        for wrapper in WRAPPER_KEYS:
            if wrapper in ckpt and isinstance(ckpt[wrapper], Mapping):
                state = ckpt[wrapper]
                break
    if not isinstance(state, Mapping):
        raise error(f"checkpoint {name!r}: {key or 'the entry'} holds a {type(state).__name__}, expected a state dict")
    out = {str(k): v for k, v in state.items() if torch.is_tensor(v)}
    if not out:
        raise error(
            f"checkpoint {name!r} holds no tensors (entries: {short_keys(sorted(map(str, state)))}); "
            "it is not a network state dict"
        )
    return strip_module_prefix(out)


def read_state_dict(
    source: StateSource, map_location: Any = "cpu", key: str | None = None, error: type = WeightsError
) -> tuple[dict[str, torch.Tensor], str]:
    """``(state_dict, name)`` of ``source`` (a file read by :func:`load_weights_file`, or a mapping); see
    :func:`find_state_dict`. ``name`` is the file, for messages."""
    name = source_name(source)
    ckpt = source if isinstance(source, Mapping) else load_weights_file(source, map_location, error=error)
    return find_state_dict(ckpt, name, key, error=error), name


def unwrap_module(obj: Any) -> Any:
    """The module inside ``DistributedDataParallel`` / ``DataParallel`` wrappers."""
    while isinstance(obj, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        obj = obj.module
    return obj


def state_dict_problems(
    module: nn.Module, state: Mapping[str, Any], strict: bool = True, prefix: str = "", limit: int = 10
) -> list[str]:
    """What keeps ``state`` from loading into ``module``: missing keys (the model has them, the checkpoint not) and
    unexpected keys (the other way round), when ``strict``, and shape mismatches (always). Keys in the messages
    carry ``prefix`` (for a part of a network, e.g. ``"encoder."``). An empty list means it fits."""
    own = unwrap_module(module).state_dict()
    missing = [prefix + k for k in own if k not in state]
    unexpected = [prefix + k for k in state if k not in own]
    shapes = [
        f"{prefix}{k} (checkpoint {tuple(state[k].shape)}, model {tuple(own[k].shape)})"
        for k in own
        if k in state and torch.is_tensor(state[k]) and torch.is_tensor(own[k]) and state[k].shape != own[k].shape
    ]
    out = []
    if strict and missing:
        out.append(f"missing keys: {short_keys(sorted(missing), limit)}")
    if strict and unexpected:
        out.append(f"unexpected keys: {short_keys(sorted(unexpected), limit)}")
    if shapes:
        out.append(f"shape-mismatched keys: {short_keys(sorted(shapes), limit)}")
    return out


def check_state_dict(
    module: nn.Module,
    state: Mapping[str, Any],
    name: str,
    strict: bool = True,
    what: str = "",
    error: type = WeightsError,
    prefix: str = "",
) -> None:
    """Raise ``error`` naming ``name`` when :func:`state_dict_problems` finds any."""
    problems = state_dict_problems(module, state, strict, prefix)
    if problems:
        target = what or type(unwrap_module(module)).__name__
        raise error(
            f"checkpoint {name!r} does not fit the {target} (built with another encoder, class count, "
            f"task list or head settings?):\n  " + "\n  ".join(problems)
        )


def load_weights(
    module: nn.Module,
    source: StateSource,
    strict: bool = True,
    map_location: Any = "cpu",
    key: str | None = None,
    error: type = WeightsError,
) -> str:
    """Read ``source`` (:func:`read_state_dict`), check it against ``module`` (:func:`check_state_dict`), then
    load it (DDP wrappers unwrapped). Nothing is loaded when a check fails. Returns the state dict's
    :func:`state_dict_sha256`."""
    state, name = read_state_dict(source, map_location, key, error=error)
    target = unwrap_module(module)
    check_state_dict(target, state, name, strict, error=error)
    target.load_state_dict(state, strict=strict)
    return state_dict_sha256(state)


def state_dict_sha256(state: Mapping[str, Any]) -> str:
    """SHA-256 of a state dict's content: for every tensor in key order, the key, dtype, shape and the raw bytes
    of the contiguous CPU tensor. Independent of the container and of ``torch.save``'s file layout; a DDP
    ``module.`` prefix is ignored. Non-tensor entries are skipped."""
    h = hashlib.sha256()
    state = strip_module_prefix({str(k): v for k, v in state.items() if torch.is_tensor(v)})
    for k in sorted(state):
        t = state[k].detach().cpu().contiguous()
        h.update(k.encode())
        h.update(f"|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.numel():
            h.update(
                t.view(-1).view(torch.uint8).numpy().tobytes()
                if t.dtype != torch.bool
                else t.to(torch.uint8).numpy().tobytes()
            )
    return h.hexdigest()
