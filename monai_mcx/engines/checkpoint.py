"""Safe checkpoints: atomic writes, ``weights_only`` loading with clear errors, resumable "last" checkpoints.

MONAI's ``CheckpointSaver`` (ignite ``Checkpoint`` + ``DiskSaver(atomic=True)``) keeps writing the best-metric
``model.pt``; what MONAI lacks, and this module adds:

* :func:`save_checkpoint`: ``torch.save`` to a temporary file in the same folder, ``fsync``, atomic rename
  (``os.replace``), ``fsync`` of the folder. A kill during the save leaves the previous file intact.
* :func:`load_checkpoint`: ``torch.load(weights_only=True)`` through the weights layer
  (:mod:`monai_mcx.networks.weights`); a missing, corrupt, truncated or mismatched
  checkpoint raises :class:`CheckpointError` naming the file and the missing / unexpected / shape-mismatched
  keys (MONAI's and ignite's loaders raise torch's bare errors, without the file name).
* :class:`SafeCheckpointLoader`: a drop-in for ``monai.handlers.CheckpointLoader`` built on :func:`load_checkpoint`.
* :class:`LastCheckpoint`: an Ignite handler that saves ``<save_dir>/last.pt`` (model, optimizer,
  LR scheduler, trainer counters, AMP scaler, RNG states of every rank) every epoch and every
  ``interval_iters`` iterations, and with ``resume=True`` restores all of it when the trainer starts. Resumed
  with more epochs (extending a run), the LR schedule continues as the new length's schedule from the
  restored step instead of restarting.
* :class:`ResumableSampler`: MONAI's ``DistributedSampler`` (also in one process) whose order depends only on
  ``seed + epoch`` and which can skip the samples already seen when a run resumes mid-epoch.
* :func:`configure_determinism`: ``monai.utils.set_determinism`` plus ``torch.use_deterministic_algorithms``.

Exact resumption (the resumed run's weights equal an uninterrupted run's) holds on CPU with
``num_workers=0``: data order, augmentation RNG (every MONAI ``Randomizable`` transform of the training
data set), the global torch/numpy/python RNGs and named generators (the loss's teacher-forcing generator)
are all restored. With ``num_workers > 0`` the workers' augmentation streams are re-seeded, so a resumed run
continues correctly but is not bit-identical.
"""

from __future__ import annotations

import logging
import os
import random
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from ignite.engine import Engine, Events
from monai.data import DistributedSampler
from torch import nn

from monai_mcx.networks.weights import (
    WeightsError,
    load_weights_file,
    state_dict_problems,
    strip_module_prefix,
    unwrap_module,
)
from monai_mcx.utils import as_bool, atomic_write

__all__ = [
    "CheckpointError",
    "save_checkpoint",
    "load_checkpoint",
    "SafeCheckpointLoader",
    "LastCheckpoint",
    "ResumableSampler",
    "configure_determinism",
    "get_rng_state",
    "set_rng_state",
]

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


# --------------------------------------------------------------------------------------------------- RNG state
def _randomizables(transform: Any) -> list:
    """Every MONAI ``Randomizable`` reachable from ``transform`` (Compose children and wrapped transforms),
    in a fixed order, each once."""
    from monai.transforms import Randomizable

    found: list = []
    seen: set[int] = set()

    def visit(obj: Any, depth: int) -> None:
        if depth > 6 or id(obj) in seen:
            return
        seen.add(id(obj))
        if isinstance(obj, Randomizable):
            found.append(obj)
        children: list = []
        if isinstance(obj, (list, tuple)):
            children = list(obj)
        elif hasattr(obj, "__dict__") and (
            isinstance(obj, Randomizable) or type(obj).__module__.startswith(("monai", "monai_mcx"))
        ):
            for key in sorted(vars(obj)):
                value = vars(obj)[key]
                if key != "R" and (
                    isinstance(value, (list, tuple)) or type(value).__module__.startswith(("monai", "monai_mcx"))
                ):
                    children.append(value)
        for child in children:
            visit(child, depth + 1)

    visit(transform, 0)
    return found


def _np_state_to_dict(state: tuple) -> dict:
    return {
        "name": state[0],
        "keys": torch.from_numpy(np.asarray(state[1], dtype=np.int64)),
        "pos": int(state[2]),
        "has_gauss": int(state[3]),
        "cached_gaussian": float(state[4]),
    }


def _np_state_from_dict(d: Mapping) -> tuple:
    return (
        d["name"],
        d["keys"].numpy().astype(np.uint32),
        int(d["pos"]),
        int(d["has_gauss"]),
        float(d["cached_gaussian"]),
    )


def get_rng_state(generators: Mapping[str, torch.Generator] | None = None, transforms: Any = None) -> dict:
    """RNG states as plain tensors/lists (loadable with ``weights_only=True``): torch (CPU and CUDA), numpy,
    python ``random``, the named ``generators`` and every ``Randomizable`` in ``transforms``."""
    py = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": _np_state_to_dict(np.random.get_state()),
        "python": {"version": py[0], "state": list(py[1]), "gauss": py[2]},
        "generators": {k: g.get_state() for k, g in (generators or {}).items() if g is not None},
        "transforms": [_np_state_to_dict(t.R.get_state()) for t in _randomizables(transforms)]
        if transforms is not None
        else [],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(
    state: Mapping, generators: Mapping[str, torch.Generator] | None = None, transforms: Any = None
) -> None:
    """Restore what :func:`get_rng_state` returned."""
    torch.set_rng_state(state["torch"].cpu())
    np.random.set_state(_np_state_from_dict(state["numpy"]))
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    for k, g in (generators or {}).items():
        if g is not None and k in state.get("generators", {}):
            g.set_state(state["generators"][k].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    if transforms is not None:
        rand = _randomizables(transforms)
        saved = state.get("transforms", [])
        if len(saved) != len(rand):
            warnings.warn(
                f"the checkpoint holds {len(saved)} transform RNG states but the training transforms have "
                f"{len(rand)} random transforms; augmentation RNG not restored"
            )
        else:
            for t, s in zip(rand, saved):
                t.R.set_state(_np_state_from_dict(s))


def configure_determinism(seed: int | None = 0, deterministic: bool = False) -> None:
    """Seed every RNG (``monai.utils.set_determinism``: torch, numpy, python, cuDNN deterministic) and, with
    ``deterministic=True``, make PyTorch use deterministic algorithms (``warn_only``: an op without a
    deterministic kernel warns instead of failing) with the cuBLAS workspace setting CUDA requires."""
    from monai.utils import set_determinism

    deterministic = as_bool(deterministic, "deterministic")
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    set_determinism(seed=seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)


# --------------------------------------------------------------------------------------------------- sampler
class ResumableSampler(DistributedSampler):
    """``monai.data.DistributedSampler`` that also works without a process group (one replica), whose order in
    an epoch depends only on ``seed + epoch`` (``set_epoch`` is called by MONAI's engines at every
    ``EPOCH_STARTED``), and that skips the first ``n`` samples of its next pass after :meth:`skip_next` —
    which is how :class:`LastCheckpoint` resumes a run killed mid-epoch on the batches it had not seen.
    Use it instead of ``shuffle=True`` in the training ``DataLoader``; under ``torchrun`` it shards the data.
    """

    def __init__(
        self,
        dataset: Any,
        shuffle: bool = True,
        seed: int = 0,
        even_divisible: bool = True,
        num_replicas: int | None = None,
        rank: int | None = None,
        drop_last: bool = False,
    ) -> None:
        if num_replicas is None and _world_size() == 1 and not (dist.is_available() and dist.is_initialized()):
            num_replicas, rank = 1, 0
        super().__init__(
            dataset=dataset,
            even_divisible=even_divisible,
            num_replicas=num_replicas,
            rank=rank,
            shuffle=shuffle,
            seed=int(seed),
            drop_last=drop_last,
        )
        self._skip = 0

    def skip_next(self, num_samples: int) -> None:
        self._skip = max(0, int(num_samples))

    def __iter__(self):
        indices = list(super().__iter__())
        skip, self._skip = self._skip, 0
        return iter(indices[skip:])


# --------------------------------------------------------------------------------------------------- resume
def _key_metric_savers(engine: Engine | None) -> list:
    """MONAI ``CheckpointSaver`` handlers attached to ``engine`` that track the best key metric."""
    from monai.handlers import CheckpointSaver

    found = []
    if engine is None:
        return found
    for handlers in engine._event_handlers.values():
        for h, _, _ in handlers:
            obj = getattr(h, "__self__", None)
            if (
                isinstance(obj, CheckpointSaver)
                and getattr(obj, "_key_metric_checkpoint", None) is not None
                and obj not in found
            ):
                found.append(obj)
    return found


#: LR-scheduler state entries that record progress (restored from the checkpoint) rather than settings
#: (``ReduceLROnPlateau``'s plateau tracking, ``CosineAnnealingWarmRestarts``' position in its cycle);
#: ``base_lrs`` (the optimizer's initial learning rates) also stays the checkpoint's
_SCHEDULE_PROGRESS = (
    "last_epoch",
    "base_lrs",
    "verbose",
    "best",
    "num_bad_epochs",
    "cooldown_counter",
    "mode_worse",
    "T_cur",
    "T_i",
)


def _schedule_settings(scheduler: Any) -> dict:
    """The settings of an LR scheduler (``T_max``, ``eta_min``, ``step_size``...): its public state entries
    other than the progress counters."""
    return {k: v for k, v in scheduler.state_dict().items() if not k.startswith("_") and k not in _SCHEDULE_PROGRESS}


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(torch.equal(a, b)) if torch.is_tensor(a) and torch.is_tensor(b) else bool(a == b)
    except Exception:
        return repr(a) == repr(b)


def _continue_schedule(scheduler: Any, configured: Mapping[str, Any], path: Path, key: str, engine: Engine) -> None:
    """After a resume, make ``scheduler`` follow this run's settings from the restored step.

    The checkpoint decides *where* the run is (``last_epoch``, the optimizer's learning rates); the config
    decides the *schedule*. They differ when a run is extended (``--epochs 8`` after 4 epochs: the
    ``CosineAnnealingLR`` of ``train.json`` has ``T_max = epochs``). Without this, the restored ``T_max = 4``
    would stay and the cosine would climb back to the peak rate over epochs 5-8. Here the new settings are
    applied and the learning rate set to the scheduler's closed form at the restored step, i.e. the rate the
    new-length schedule has at that step; the rates then decrease to ``eta_min`` at the new last epoch.

    Raises:
        CheckpointError: the settings changed but the scheduler has no closed form (e.g. ``OneCycleLR``,
            ``ReduceLROnPlateau``), so the new schedule cannot be continued from the restored step.
    """
    restored = _schedule_settings(scheduler)
    changed = {k: v for k, v in configured.items() if k in restored and not _same(v, restored[k])}
    if not changed:
        return
    what = ", ".join(f"{k}: {restored[k]!r} in the checkpoint, {v!r} in this run" for k, v in changed.items())
    closed_form = getattr(scheduler, "_get_closed_form_lr", None)
    if closed_form is None:
        raise CheckpointError(
            f"cannot resume from {str(path)!r}: the '{key}' {type(scheduler).__name__} settings changed ({what}) and "
            f"this scheduler cannot continue a changed schedule from step {scheduler.last_epoch}. Resume with the "
            "original settings, or start a new run from the weights (e.g. --merge#encoder_from / finetune.json)"
        )
    for k, v in changed.items():
        setattr(scheduler, k, v)
    lrs = [float(lr) for lr in closed_form()]
    for group, lr in zip(scheduler.optimizer.param_groups, lrs):
        group["lr"] = lr
    scheduler._last_lr = lrs
    engine.logger.info(
        f"resume: '{key}' {type(scheduler).__name__} rebuilt for this run's settings ({what}) at step "
        f"{scheduler.last_epoch}; learning rate now {', '.join(f'{lr:.3g}' for lr in lrs)}"
    )


def _restore_grad_buffers(optimizer: torch.optim.Optimizer) -> None:
    """Give a zero ``.grad`` to every parameter the optimizer has already stepped (it has state) but whose
    ``grad`` is ``None`` after a resume.

    In the interrupted run such a parameter kept a (zeroed, with ``zero_grad(set_to_none=False)``) ``grad``
    after its first backward, so optimizers such as AdamW kept updating it (momentum, weight decay) in
    steps where it got no gradient, e.g. a head skipped by ``MultiTaskTrainer(skip_unlabelled_heads=True)``.
    A fresh process has ``grad is None`` for it, and the optimizer would skip it until its next backward:
    the resumed run would no longer equal the uninterrupted one. With ``set_to_none=True`` the trainer's
    ``zero_grad`` resets these buffers to ``None`` again, as in the uninterrupted run."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            if p.grad is None and p.requires_grad and optimizer.state.get(p):
                p.grad = torch.zeros_like(p)


class LastCheckpoint:
    """Save a resumable ``<save_dir>/<filename>`` and, with ``resume=True``, restore it when training starts.

    Attach it to the trainer after the LR-scheduler and validation handlers (last in ``train#handlers``), so
    that the epoch-end save holds the state after validation and the scheduler step.

    Saved (rank 0 writes, atomically; every rank contributes its RNG state): each object of ``save_dict``
    (``None`` entries, e.g. the AMP scaler on CPU, are skipped; DDP wrappers are unwrapped), ``rng`` (one
    :func:`get_rng_state` per rank, with ``generators`` and the random transforms of the trainer's data set),
    the best-metric bookkeeping of ``validator`` (its ``best_metric`` and its ``CheckpointSaver``'s record, so
    ``model.pt`` is not overwritten by a worse model after resuming).

    Args:
        save_dir: folder of the checkpoint.
        save_dict: ``{"model": network, "optimizer": ..., "lr_scheduler": ...}``; the trainer it is attached to
            (``"trainer"``: epoch/iteration counters) and its AMP ``scaler`` (when there is one) are added.
        filename: default ``last.pt``.
        interval_iters: also save every this many iterations (``0``: only at epoch ends). The iteration that
            ends an epoch is left to the epoch-end save.
        resume: load ``save_dir/filename`` at ``Events.STARTED`` when it exists (otherwise start afresh, so a
            job script can always pass ``--resume true``). A run may be resumed with a larger ``max_epochs``
            (extending it): an LR scheduler whose settings differ from the checkpoint's (``train.json``'s
            ``CosineAnnealingLR`` has ``T_max = epochs``) is rebuilt with this run's settings at the restored
            step; a scheduler without a closed form refuses (:class:`CheckpointError`).
        generators: named ``torch.Generator`` to save/restore, e.g. ``{"loss": loss.generator}``.
        validator: the evaluator run by ``ValidationHandler`` (optional).
        map_location: for loading.
    """

    def __init__(
        self,
        save_dir: str | os.PathLike,
        save_dict: Mapping[str, Any],
        filename: str = "last.pt",
        interval_iters: int = 0,
        resume: bool = False,
        generators: Mapping[str, torch.Generator] | None = None,
        validator: Engine | None = None,
        map_location: Any = "cpu",
    ) -> None:
        self.path = Path(save_dir) / filename
        self.save_dict = dict(save_dict)
        self.interval_iters = int(interval_iters or 0)
        self.resume = as_bool(resume, "resume")
        self.generators = dict(generators or {})
        self.validator = validator
        self.map_location = map_location
        self._pending_rng: dict | None = None
        self.resumed_from: int | None = None  # the trainer iteration restored from the checkpoint

    # ------------------------------------------------------------------ helpers
    def _transforms(self, engine: Engine) -> Any:
        loader = getattr(engine, "data_loader", None)
        return getattr(getattr(loader, "dataset", None), "transform", None)

    def _objects(self) -> dict:
        return {k: v for k, v in self.save_dict.items() if v is not None}

    # ------------------------------------------------------------------ Ignite
    def attach(self, engine: Engine) -> None:
        self.save_dict.setdefault("trainer", engine)
        if getattr(engine, "scaler", None) is not None:  # MONAI trainers hold their AMP GradScaler
            self.save_dict.setdefault("scaler", engine.scaler)
        engine.add_event_handler(Events.STARTED, self.load)
        if self.interval_iters > 0:
            engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.interval_iters), self._iteration_save)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.save)
        engine.add_event_handler(Events.EPOCH_STARTED, self._restore_rng_at_epoch_start)
        engine.add_event_handler(Events.GET_BATCH_STARTED, self._restore_rng_before_batch)
        if _rank() == 0:
            _remove_stale_temporaries(self.path)

    def _iteration_save(self, engine: Engine) -> None:
        epoch_length = engine.state.epoch_length
        if epoch_length and engine.state.iteration % epoch_length == 0:
            return  # the epoch-end save (after validation and the LR step) covers it
        self.save(engine)

    def save(self, engine: Engine) -> None:
        """Collective under ``torch.distributed`` (every rank must call it); rank 0 writes."""
        rng = get_rng_state(self.generators, self._transforms(engine))
        if _world_size() > 1:
            all_rng: list = [None] * _world_size()
            dist.all_gather_object(all_rng, rng)
        else:
            all_rng = [rng]
        if _rank() != 0:
            return
        ckpt: dict[str, Any] = {}
        for key, obj in self._objects().items():
            ckpt[key] = _unwrap(obj).state_dict()
        ckpt["rng"] = all_rng
        if self.validator is not None:
            ckpt["validator"] = {
                "best_metric": float(getattr(self.validator.state, "best_metric", -1)),
                "best_metric_epoch": int(getattr(self.validator.state, "best_metric_epoch", -1)),
                "key_metric_savers": [
                    s._key_metric_checkpoint.state_dict() for s in _key_metric_savers(self.validator)
                ],
            }
        save_checkpoint(ckpt, self.path)

    def load(self, engine: Engine) -> None:
        if not self.resume:
            return
        if not self.path.is_file():
            engine.logger.info(f"resume: no checkpoint at {self.path}, starting from scratch")
            return
        prior_max_epochs = engine.state.max_epochs
        schedulers = {k: v for k, v in self._objects().items() if isinstance(v, torch.optim.lr_scheduler.LRScheduler)}
        configured = {k: _schedule_settings(v) for k, v in schedulers.items()}  # this run's config, before loading
        ckpt = load_checkpoint(self.path, self._objects(), strict=True, map_location=self.map_location)
        if prior_max_epochs is not None:
            if engine.state.epoch > prior_max_epochs:
                raise CheckpointError(
                    f"checkpoint {str(self.path)!r} is at epoch {engine.state.epoch}, beyond max_epochs={prior_max_epochs}"
                )
            engine.state.max_epochs = prior_max_epochs
        for key, scheduler in schedulers.items():
            _continue_schedule(scheduler, configured[key], self.path, key, engine)
        for obj in self._objects().values():
            if isinstance(obj, torch.optim.Optimizer):
                _restore_grad_buffers(obj)
        rngs = ckpt.get("rng") or []
        if rngs:
            if len(rngs) != _world_size():
                warnings.warn(
                    f"{self.path} was written by {len(rngs)} processes, this run has {_world_size()}: "
                    "every rank restores rank 0's RNG state"
                )
            self._pending_rng = rngs[_rank()] if len(rngs) == _world_size() else rngs[0]
        val = ckpt.get("validator")
        if val and self.validator is not None:
            self.validator.state.best_metric = val["best_metric"]
            self.validator.state.best_metric_epoch = val["best_metric_epoch"]
            for saver, state in zip(_key_metric_savers(self.validator), val.get("key_metric_savers", [])):
                saver._key_metric_checkpoint.load_state_dict(state)
        self.resumed_from = int(engine.state.iteration)
        epoch_length = engine.state.epoch_length or 0
        self._in_epoch = engine.state.iteration % epoch_length if epoch_length else 0
        if self._in_epoch:
            loader = getattr(engine, "data_loader", None)
            sampler = getattr(loader, "sampler", None)
            batch_sampler = getattr(loader, "batch_sampler", None)
            if hasattr(batch_sampler, "skip_next_batches"):  # e.g. TaskGroupedSampler
                batch_sampler.skip_next_batches(self._in_epoch)
            elif hasattr(sampler, "skip_next"):
                sampler.skip_next(self._in_epoch * int(loader.batch_size or 1))
            else:
                warnings.warn(
                    "resuming mid-epoch without a ResumableSampler: the rest of this epoch sees "
                    "batches in a new order, not the ones the interrupted run had left"
                )
        engine.logger.info(
            f"resumed from {self.path} at epoch {engine.state.epoch}, iteration {engine.state.iteration}"
        )

    # the RNG states are restored where the uninterrupted run stood when it saved them: before the data
    # iterator of the next epoch is created (epoch-end checkpoint) or before the next batch (mid-epoch)
    def _restore_rng_at_epoch_start(self, engine: Engine) -> None:
        if self._pending_rng is not None and not getattr(self, "_in_epoch", 0):
            set_rng_state(self._pending_rng, self.generators, self._transforms(engine))
            self._pending_rng = None

    def _restore_rng_before_batch(self, engine: Engine) -> None:
        if self._pending_rng is not None:
            set_rng_state(self._pending_rng, self.generators, self._transforms(engine))
            self._pending_rng = None
