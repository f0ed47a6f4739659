"""Resumable training: a "last" checkpoint that restores the whole run, and a sampler that skips what it saw.

* :class:`LastCheckpoint`: an Ignite handler that saves ``<save_dir>/last.pt`` (model, optimizer,
  LR scheduler, trainer counters, AMP scaler, RNG states of every rank) every epoch and every
  ``interval_iters`` iterations, and with ``resume=True`` restores all of it when the trainer starts. Resumed
  with more epochs (extending a run), the LR schedule continues as the new length's schedule from the
  restored step instead of restarting.
* :class:`ResumableSampler`: MONAI's ``DistributedSampler`` (also in one process) whose order depends only on
  ``seed + epoch`` and which can skip the samples already seen when a run resumes mid-epoch.

Exact resumption (the resumed run's weights equal an uninterrupted run's) holds on CPU with
``num_workers=0``: data order, augmentation RNG (every MONAI ``Randomizable`` transform of the training
data set), the global torch/numpy/python RNGs and named generators (the loss's teacher-forcing generator)
are all restored. With ``num_workers > 0`` the workers' augmentation streams are re-seeded, so a resumed run
continues correctly but is not bit-identical.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from ignite.engine import Engine, Events
from monai.data import DistributedSampler

from monai_mcx.engines.checkpoint import (
    CheckpointError,
    _rank,
    _remove_stale_temporaries,
    _unwrap,
    _world_size,
    load_checkpoint,
    save_checkpoint,
)
from monai_mcx.engines.rng import get_rng_state, set_rng_state
from monai_mcx.utils import as_bool

__all__ = ["LastCheckpoint", "ResumableSampler"]


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
