"""Helpers for ``torchrun`` / ``torch.distributed`` runs of the bundle (``multi_gpu_train.json``).

PyTorch's own engine does the work (``init_process_group``, ``DistributedDataParallel``,
``monai.data.DistributedSampler``); these functions only make the JSON configs short:

* :func:`init_process_group` / :func:`destroy_process_group` for ``initialize`` / ``finalize``;
* :func:`local_device`: ``cuda:$LOCAL_RANK`` (and ``torch.cuda.set_device``) when CUDA is there, else CPU;
* :func:`wrap_ddp`: ``DistributedDataParallel`` around the network (the trainer's; ``network`` stays unwrapped);
* :func:`rank0_handlers`: drops logging, TensorBoard and file-writing handlers on ranks > 0;
* :func:`gather_shards` / :func:`merge_shards`: every rank's per-image records of an evaluation merged into those of
  the whole split (the metrics, the report), :func:`gather_rows`: rows of a per-image table on rank 0 (the
  prediction writer's summary);
* :func:`shard_items` / :func:`run_evaluator`: an inference run's items shared among the ranks, each rank running
  its share (``multi_gpu_inference.json``).
"""

from __future__ import annotations

import datetime
import logging
import os
import socket
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from monai_mcx.keys import DatalistKeys
from monai_mcx.utils import as_bool

__all__ = [
    "is_distributed",
    "get_rank",
    "get_world_size",
    "is_main_process",
    "local_device",
    "init_process_group",
    "destroy_process_group",
    "wrap_ddp",
    "unwrap",
    "rank0_handlers",
    "SyncBuffers",
    "gather_shards",
    "merge_shards",
    "gather_rows",
    "shard_items",
    "run_evaluator",
]

logger = logging.getLogger(__name__)


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else int(os.environ.get("RANK", 0))


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else int(os.environ.get("WORLD_SIZE", 1))


def is_main_process() -> bool:
    return get_rank() == 0


def local_device() -> torch.device:
    """``cuda:<LOCAL_RANK>`` (made the current CUDA device) when CUDA is available, else ``cpu``."""
    if torch.cuda.is_available():
        index = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    return torch.device("cpu")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_process_group(backend: str | None = None, timeout_s: float = 1800.0) -> int:
    """Initialise the default process group from torchrun's environment (``RANK``, ``WORLD_SIZE``,
    ``MASTER_ADDR``, ``MASTER_PORT``) and return this rank. Without torchrun's variables it starts a
    one-process group (with a warning), so the multi-GPU config also runs as ``python -m monai.bundle run``.
    Does nothing when a group already exists."""
    if is_distributed():
        return dist.get_rank()
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        warnings.warn("RANK/WORLD_SIZE not set (not launched by torchrun): starting a one-process group")
        os.environ.update({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"})
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    if backend == "nccl" and torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
    logger.info(f"process group: backend={backend} rank={dist.get_rank()}/{dist.get_world_size()}")
    return dist.get_rank()


def destroy_process_group() -> None:
    """Wait for every rank (so rank 0 finishes its writes) and destroy the default process group."""
    if is_distributed():
        try:
            dist.barrier()
        finally:
            dist.destroy_process_group()


def wrap_ddp(
    network: nn.Module,
    device: torch.device | str | None = None,
    find_unused_parameters: bool = False,
    sync_batchnorm: bool = False,
    broadcast_buffers: bool = True,
    backend: str | None = None,
) -> nn.Module:
    """``DistributedDataParallel(network)``, initialising the process group first (:func:`init_process_group`
    with ``backend``) if none exists yet, so the wrapper never depends on the order of a config's items.

    ``multi_gpu_train.json`` gives only the trainer the wrapper (``train#trainer#network: @ddp_network``) and
    leaves ``network`` unwrapped: weight loading in ``initialize`` (``MergeWeights``: ``--merge#...``,
    ``--pretrained_encoder``) and ``finetune.json``'s transfer network (frozen encoder) act on the plain module
    before DDP is built, and DDP registers only the parameters that still require gradients.

    ``find_unused_parameters=True`` (``multi_gpu_train.json``'s ``ddp_find_unused_parameters``) lets
    :class:`~monai_mcx.engines.MultiTaskTrainer` skip the heads whose task has no usable sample in a rank's
    batch (ranks may skip different heads; DDP reduces a zero gradient for a head a rank left out, and leaves
    the gradient of a head no rank ran as the trainer's ``zero_grad`` left it).
    With ``False`` the trainer computes every head in every
    step (the multi-task loss then keeps a task absent from a batch in the graph as ``0 * logits.sum()``).
    ``sync_batchnorm`` (CUDA only) converts BatchNorm to
    ``SyncBatchNorm``.
    """
    init_process_group(backend)
    find_unused_parameters = as_bool(find_unused_parameters, "ddp_find_unused_parameters")
    sync_batchnorm = as_bool(sync_batchnorm, "sync_batchnorm")
    device = torch.device(device) if device is not None else next(network.parameters()).device
    if sync_batchnorm and device.type == "cuda":
        network = nn.SyncBatchNorm.convert_sync_batchnorm(network)
    if device.type == "cuda":
        return nn.parallel.DistributedDataParallel(
            network,
            device_ids=[device.index],
            output_device=device.index,
            find_unused_parameters=find_unused_parameters,
            broadcast_buffers=broadcast_buffers,
        )
    return nn.parallel.DistributedDataParallel(
        network, find_unused_parameters=find_unused_parameters, broadcast_buffers=broadcast_buffers
    )


def unwrap(network: nn.Module) -> nn.Module:
    """The module inside ``DistributedDataParallel``/``DataParallel`` (evaluation runs on each rank's replica:
    no gradient, no collective per batch, so uneven validation shards cannot hang)."""
    while isinstance(network, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        network = network.module
    return network


class SyncBuffers:
    """Broadcast rank 0's buffers (BatchNorm running statistics) to every rank when an evaluation starts.

    DDP broadcasts buffers at the start of each training forward pass, so after the last iteration every
    rank's BatchNorm statistics still hold its own last batch. Without this, each rank would validate its
    shard with slightly different statistics and the gathered metrics would differ from a one-process
    evaluation of the saved (rank 0) weights. Attach to the evaluator (every rank)."""

    rank0_only = False

    def __init__(self, network: nn.Module, src: int = 0) -> None:
        self.network = network
        self.src = src

    def attach(self, engine: Any) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Any = None) -> None:
        if not is_distributed() or dist.get_world_size() == 1:
            return
        with torch.no_grad():
            for buf in unwrap(self.network).buffers():
                dist.broadcast(buf, self.src)


def _rank0_only_types() -> tuple[type, ...]:
    from monai import handlers as mh

    names = (
        "StatsHandler",
        "TensorBoardHandler",
        "CheckpointSaver",
        "MetricsSaver",
        "ClassificationSaver",
        "MLFlowHandler",
        "ClearMLHandler",
    )
    return tuple(getattr(mh, n) for n in names if hasattr(mh, n))


#: class-name fragments of handlers that log or write files (monai_mcx's own and most third-party ones)
RANK0_NAME_PARTS = ("Writer", "Saver", "TensorBoard", "Stats", "Report", "Progress", "Logger", "MLFlow", "ClearML")


def _summary_writers(handler: Any) -> list:
    from torch.utils.tensorboard import SummaryWriter

    return [v for v in vars(handler).values() if isinstance(v, SummaryWriter)] if hasattr(handler, "__dict__") else []


def _discard_tensorboard_file(handler: Any) -> None:
    """TensorBoard handlers may open their event file when built; on a rank > 0 close and remove it."""
    for writer in _summary_writers(handler):
        names = []
        for fw in (getattr(writer, "all_writers", None) or {}).values():
            name = getattr(getattr(fw, "event_writer", None), "_file_name", None)
            if name:
                names.append(name)
        try:
            writer.close()
        except Exception:
            pass
        for name in names:
            try:
                os.remove(name)
            except OSError:
                pass


def rank0_handlers(handlers: Sequence[Any] | None, rank: int | None = None) -> list:
    """``handlers`` on rank 0; on other ranks without the ones that log or write files: MONAI's StatsHandler,
    TensorBoard handlers, CheckpointSaver, MetricsSaver..., and any handler whose class name contains one of
    :data:`RANK0_NAME_PARTS` (``Writer``, ``Saver``, ``TensorBoard``, ``Report``, ``Progress``...). A handler
    class can decide for itself with a ``rank0_only`` attribute (``True``: rank 0 only; ``False``: every rank).
    Everything else (LR scheduler, ValidationHandler, early stopping — every rank computes the same reduced metrics, so every rank stops together — checkpoint
    loading, :class:`~monai_mcx.engines.resume.LastCheckpoint`) runs on every rank."""
    handlers = list(handlers or [])
    rank = get_rank() if rank is None else rank
    if rank == 0:
        return handlers
    drop = _rank0_only_types()
    kept = []
    for h in handlers:
        rank0_only = getattr(h, "rank0_only", None)
        if rank0_only is None:
            rank0_only = isinstance(h, drop) or any(part in type(h).__name__ for part in RANK0_NAME_PARTS)
        if rank0_only:
            _discard_tensorboard_file(h)
            continue
        kept.append(h)
    return kept


# ----------------------------------------------------------------------------------- gathering evaluation records
def _several_ranks() -> bool:
    return is_distributed() and dist.get_world_size() > 1


def merge_shards(
    parts: Sequence[Mapping[str, Any]], count: str, renumber: Mapping[str, Callable[[Any, int], Any]] | None = None
) -> dict[str, Any]:
    """Merge the per-image records of shards of one data set (one per rank, in rank order) into those of the set.

    Each field of a shard is merged by its type: a list is concatenated (the items of a field named in
    ``renumber`` refer to an image by its index within the shard: ``renumber[field](item, offset)`` returns the item
    for the merged set, ``offset`` being the images of the shards before); a dict of numbers is summed per key;
    anything else (a number, a numpy array of counts) is summed.

    Args:
        parts: the shards, e.g. from ``torch.distributed.all_gather_object``.
        count: the field holding a shard's number of images (summed).
        renumber: per list field, how to shift an item's image index by ``offset``.

    Returns:
        The merged fields.
    """
    renumber = dict(renumber or {})
    merged: dict[str, Any] = {}
    offset = 0
    for part in parts:
        for key, value in part.items():
            if key == count:
                continue
            if isinstance(value, list):
                items = [renumber[key](item, offset) for item in value] if key in renumber else list(value)
                merged.setdefault(key, []).extend(items)
            elif isinstance(value, dict):
                table = merged.setdefault(key, {})
                for k, v in value.items():
                    table[k] = table[k] + v if k in table else v
            else:
                merged[key] = merged[key] + value if key in merged else value
        offset += int(part[count])
    merged[count] = offset
    return merged


def gather_shards(
    shard: Mapping[str, Any], count: str, renumber: Mapping[str, Callable[[Any, int], Any]] | None = None
) -> dict[str, Any] | None:
    """Under ``torch.distributed`` with several ranks (each evaluated its shard of the data, e.g.
    ``multi_gpu_evaluate.json``'s ``DistributedSampler``): every rank's ``shard`` merged in rank order by
    :func:`merge_shards`, on EVERY rank (``all_gather_object``: a collective, every rank must call it at the same
    point). None in a one-process run (the shard is the whole set).

    Used by :class:`monai_mcx.handlers.MultiTaskMetrics` and :class:`monai_mcx.handlers.EvaluationReport`, so that
    ``metrics.json``, ``report.md`` and ``per_image.csv`` cover the whole split."""
    if not _several_ranks():
        return None
    parts: list = [None] * dist.get_world_size()
    dist.all_gather_object(parts, dict(shard))
    return merge_shards(parts, count, renumber)


def on_rank0(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` run on rank 0 only, its result given to every rank (collective, ``broadcast_object_list``).

    One process: ``fn(*args)``. Several ranks: rank 0 runs it while the others wait; an error it raises is raised
    on every rank (not only rank 0, which would leave the others waiting until the process-group timeout), so the
    result and the error must be picklable.
    """
    if not _several_ranks():
        return fn(*args)
    box: list = [None]
    if dist.get_rank() == 0:
        try:
            box = [(True, fn(*args))]
        except Exception as e:  # raised again on every rank below
            box = [(False, e)]
    dist.broadcast_object_list(box, src=0)
    ok, value = box[0]
    if not ok:
        raise value
    return value


def gather_rows(rows: Sequence[Mapping[str, Any]], unique: str | None = None) -> list | None:
    """The rows of a per-image table (one per image, small dicts) of every rank, for the rank that writes the table.

    One process: ``rows`` as given. Several ranks (collective, ``all_gather_object``): every rank's rows in rank
    order on rank 0, None on the other ranks. With ``unique``, a value of that field (e.g. a per-image file name)
    present in the rows of two ranks is an error raised on every rank: both ranks wrote the same file, so one
    image's output was overwritten by another's.

    Raises:
        RuntimeError: ``unique`` values shared by ranks, naming the file and both images."""
    if not _several_ranks():
        return list(rows)
    parts: list = [None] * dist.get_world_size()
    dist.all_gather_object(parts, [dict(r) for r in rows])
    if unique is not None:
        owner: dict[Any, tuple[int, Any]] = {}
        clashes = []
        for rank, part in enumerate(parts):
            for row in part:
                value = row.get(unique)
                if not value:
                    continue
                if value in owner and owner[value][0] != rank:
                    clashes.append(
                        f"{value} (rank {owner[value][0]}: {owner[value][1]}, rank {rank}: {row.get(DatalistKeys.IMAGE)})"
                    )
                owner.setdefault(value, (rank, row.get(DatalistKeys.IMAGE)))
        if clashes:
            raise RuntimeError(
                f"{len(clashes)} output file name(s) were written by two ranks for different images, so one image's "
                f"output replaced another's: {', '.join(clashes[:5])}. Give the inputs distinct file names or write "
                "the predictions from one process."
            )
    return [r for part in parts for r in part] if dist.get_rank() == 0 else None


# ------------------------------------------------------------------------------------------- sharded inference
def shard_items(items: Sequence[Mapping[str, Any]], key: str = "image") -> list:
    """This rank's share of an inference run's items (``multi_gpu_inference.json``), every item on exactly one rank.

    The distinct values of ``key`` (the image paths), in first-seen order, go to the ranks in turn (the j-th to rank
    ``j % world_size``); every item goes with its path, so an input named twice is written by one rank, in order.
    Nothing is padded or repeated (a padded duplicate would write an image twice): shares differ by at most one
    path, and a rank may get none (:func:`run_evaluator` keeps it in the run's collectives).

    Several ranks: a barrier (collective) after ``items`` is computed, so every rank has read the output folder
    (``pending_items`` with ``--resume``) before rank 0 prepares it for the run. One process: ``items`` as given.
    """
    items = list(items)
    if not _several_ranks():
        return items
    rank, world = dist.get_rank(), dist.get_world_size()
    owner: dict[str, int] = {}
    for item in items:
        owner.setdefault(str(item.get(key)), len(owner) % world)
    dist.barrier()
    return [item for item in items if owner[str(item.get(key))] == rank]


def run_evaluator(evaluator: Any) -> None:
    """``evaluator.run()``; on a rank with no data (:func:`shard_items` gave it nothing, and MONAI's workflow skips
    an empty run) the ``STARTED`` and ``COMPLETED`` handlers still run, so that the ones that take part in
    collectives there (:class:`monai_mcx.handlers.PredictionWriter`: the output folder, the summary) do not leave
    the other ranks waiting."""
    if evaluator.state.epoch_length or not _several_ranks():
        evaluator.run()
        return
    from ignite.engine import Events

    logger.info(f"rank {dist.get_rank()}: no items to run")
    evaluator.fire_event(Events.STARTED)
    evaluator.fire_event(Events.COMPLETED)
