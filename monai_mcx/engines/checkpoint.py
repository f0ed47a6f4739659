"""Safe checkpoint files: atomic writes, ``weights_only`` loading with clear errors.

MONAI's ``CheckpointSaver`` (ignite ``Checkpoint`` + ``DiskSaver(atomic=True)``) keeps writing the best-metric
``model.pt``; what MONAI lacks, and this module adds:

* :func:`save_checkpoint`: ``torch.save`` to a temporary file in the same folder, ``fsync``, atomic rename
  (``os.replace``), ``fsync`` of the folder. A kill during the save leaves the previous file intact.
* :func:`load_checkpoint`: ``torch.load(weights_only=True)`` through the weights layer
  (:mod:`monai_mcx.networks.weights`); a missing, corrupt, truncated or mismatched
  checkpoint raises :class:`CheckpointError` naming the file and the missing / unexpected / shape-mismatched
  keys (MONAI's and ignite's loaders raise torch's bare errors, without the file name).
* :class:`SafeCheckpointLoader`: a drop-in for ``monai.handlers.CheckpointLoader`` built on :func:`load_checkpoint`.

Resumable "last" checkpoints (:class:`~monai_mcx.engines.resume.LastCheckpoint`,
:class:`~monai_mcx.engines.resume.ResumableSampler`) are in :mod:`monai_mcx.engines.resume`, the RNG states they
hold and :func:`~monai_mcx.engines.rng.configure_determinism` in :mod:`monai_mcx.engines.rng`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from ignite.engine import Engine, Events
from torch import nn

from monai_mcx.networks.weights import (
    WeightsError,
    load_weights_file,
    state_dict_problems,
    strip_module_prefix,
    unwrap_module,
)
from monai_mcx.utils import atomic_write

__all__ = ["CheckpointError", "save_checkpoint", "load_checkpoint", "SafeCheckpointLoader"]

logger = logging.getLogger(__name__)


class CheckpointError(WeightsError):
    """A checkpoint cannot be read or does not fit the objects it is loaded into (the message names the file).
    A :class:`~monai_mcx.networks.weights.WeightsError`: one error family for every checkpoint entry point."""


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


_unwrap = unwrap_module


# --------------------------------------------------------------------------------------------------- writing
def save_checkpoint(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj)`` to ``path`` atomically: a temporary file in the same folder, flushed and fsynced,
    then renamed over ``path``. Until the rename the previous ``path`` is untouched, so a crash or a kill at
    any point leaves either the old or the new checkpoint, never a partial one."""
    path = Path(path)
    with atomic_write(path, "wb") as f:
        torch.save(obj, f)
    return path


def _remove_stale_temporaries(path: Path) -> None:
    """Remove ``.<name>.*.tmp`` files left by a process killed during :func:`save_checkpoint`."""
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        try:
            tmp.unlink()
        except OSError:
            pass


# --------------------------------------------------------------------------------------------------- loading
def load_checkpoint(
    path: str | os.PathLike,
    modules_dict: Mapping[str, Any] | None = None,
    strict: bool = True,
    map_location: Any = "cpu",
) -> dict:
    """Load ``path`` with ``torch.load(weights_only=True)`` and, when ``modules_dict`` is given, load each entry
    into its object (``load_state_dict``; DDP/DataParallel wrappers are unwrapped).

    Args:
        path: the checkpoint file.
        modules_dict: ``{key: object}`` with ``load_state_dict`` (network, optimizer, LR scheduler, engine,
            scaler...). ``None`` values are skipped. When it holds a single key that the checkpoint lacks, the
            checkpoint itself is taken as that object's state dict (a weights-only ``model.pt``), as MONAI does.
        strict: the checkpoint must hold every key of ``modules_dict`` and every network must match key for
            key. Shape mismatches are an error in either mode.
        map_location: passed to ``torch.load``.

    Returns:
        the whole checkpoint (a dict), so callers can read extra entries such as ``rng``.

    Raises:
        CheckpointError: the file is missing, unreadable, corrupt or truncated, or does not match; the message
            names the file and the missing / unexpected / shape-mismatched keys.
    """
    path = Path(path)
    ckpt = load_weights_file(path, map_location, error=CheckpointError)
    if not modules_dict:
        return ckpt
    if not isinstance(ckpt, Mapping):
        raise CheckpointError(f"checkpoint {str(path)!r} holds a {type(ckpt).__name__}, expected a dict of state dicts")
    wanted = {k: v for k, v in modules_dict.items() if v is not None}
    entries: Mapping[str, Any] = ckpt
    if len(wanted) == 1 and next(iter(wanted)) not in ckpt:
        entries = {next(iter(wanted)): ckpt}
    absent = [k for k in wanted if k not in entries]
    if absent and strict:
        raise CheckpointError(
            f"checkpoint {str(path)!r} holds no entry for {absent}; it holds {sorted(map(str, ckpt))}"
        )
    problems: list[str] = []
    states: dict[str, Any] = {}
    for key, obj in wanted.items():
        if key not in entries:
            continue
        obj = _unwrap(obj)
        state = entries[key]
        if isinstance(obj, nn.Module):
            if not isinstance(state, Mapping):
                problems.append(f"'{key}': expected a state dict, found {type(state).__name__}")
                continue
            state = strip_module_prefix(state, obj)
            problems += [f"'{key}' {p}" for p in state_dict_problems(obj, state, strict)]
        states[key] = state
    if problems:
        raise CheckpointError(
            f"checkpoint {str(path)!r} does not match the objects it is loaded into:\n  " + "\n  ".join(problems)
        )
    for key, state in states.items():
        obj = _unwrap(wanted[key])
        try:
            if isinstance(obj, nn.Module):
                obj.load_state_dict(state, strict=strict)
            else:
                obj.load_state_dict(state)
        except Exception as e:
            raise CheckpointError(
                f"checkpoint {str(path)!r}: cannot load '{key}' into {type(obj).__name__}: {e}"
            ) from e
    return dict(ckpt)


class SafeCheckpointLoader:
    """Drop-in for ``monai.handlers.CheckpointLoader`` whose errors name the file and the mismatching keys.

    Loads at ``Events.STARTED`` with :func:`load_checkpoint` (``weights_only=True``). As MONAI's, it keeps the
    engine's own ``max_epochs`` when an engine state is loaded.

    Args:
        load_path: the checkpoint file.
        load_dict: ``{key: object}`` to load, e.g. ``{"model": network}``.
        name: logger name (default: the engine's logger).
        map_location: passed to ``torch.load`` (default ``"cpu"``: tensors are copied onto the model's device).
        strict: see :func:`load_checkpoint`.
    """

    def __init__(
        self,
        load_path: str | os.PathLike,
        load_dict: Mapping[str, Any],
        name: str | None = None,
        map_location: Any = None,
        strict: bool = True,
    ) -> None:
        if not load_dict:
            raise ValueError("load_dict must hold at least one object to load")
        self.load_path = load_path
        self.load_dict = dict(load_dict)
        self.map_location = "cpu" if map_location is None else map_location
        self.strict = strict
        self.logger = logging.getLogger(name) if name else None

    def attach(self, engine: Engine) -> None:
        if self.logger is None:
            self.logger = engine.logger
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine) -> None:
        prior_max_epochs = engine.state.max_epochs
        load_checkpoint(self.load_path, self.load_dict, strict=self.strict, map_location=self.map_location)
        if prior_max_epochs is not None and engine.state.max_epochs != prior_max_epochs:
            if engine.state.epoch > prior_max_epochs:
                raise CheckpointError(
                    f"checkpoint {str(self.load_path)!r} is at epoch {engine.state.epoch}, beyond this run's max_epochs "
                    f"({prior_max_epochs})"
                )
            engine.state.max_epochs = prior_max_epochs
        if self.logger is not None:
            self.logger.info(f"Restored {sorted(self.load_dict)} from {self.load_path}")
