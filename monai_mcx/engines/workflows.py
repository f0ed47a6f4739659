"""Ignite/MONAI trainer and evaluator for MultiCheXNet's dict outputs and partially labelled batches.

Both follow MONAI's ``SupervisedTrainer``/``SupervisedEvaluator`` (handlers, events, AMP, key metrics) and
change only the iteration: the network returns a dict of head outputs, the loss returns a dict of per-task
terms, and batches are never decollated (boxes are per-item lists).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from ignite.engine import Engine, Events
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.utils.enums import CommonKeys as Keys
from torch.utils.data.distributed import DistributedSampler

from monai_mcx.engines.utils import batch_populations, prepare_cxr_batch
from monai_mcx.inferers import MultiCheXNetInferer
from monai_mcx.keys import PredKeys

__all__ = ["MultiTaskTrainer", "MultiTaskEvaluator"]


def _amp_on_cuda_only(device: torch.device | str, kwargs: dict) -> dict:
    """Turn ``amp`` off for a non-CUDA device (MONAI's engines would build a CUDA GradScaler/autocast)."""
    if kwargs.get("amp") and torch.device(device).type != "cuda":
        kwargs["amp"] = False
    return kwargs


def _autocast(device: torch.device | str, enabled: bool, amp_kwargs: dict):
    dev = torch.device(device) if not isinstance(device, torch.device) else device
    return torch.autocast(dev.type, enabled=enabled and dev.type == "cuda", **amp_kwargs)


class MultiTaskTrainer(SupervisedTrainer):
    """``SupervisedTrainer`` for a dict-output network and a dict-output loss.

    ``loss_function(pred: dict, targets: dict) -> dict`` must return ``loss`` (the scalar to optimise) and
    any number of per-task terms. ``engine.state.output`` then holds ``image``, ``label`` (the targets
    dict), ``pred`` (the head outputs), ``loss`` and ``losses`` (``{task: float}``), which
    :func:`monai_mcx.engines.loss_items` turns into scalars for StatsHandler/TensorBoard.

    AMP (``amp=True``) is used on CUDA only; on CPU it is ignored. Gradient clipping by ``clip_grad_norm``.

    ``skip_unlabelled_heads`` (default on): a head whose task has no usable sample in the batch (after teacher
    forcing, :meth:`monai_mcx.losses.MultiCheXNetLoss.select`) is not computed, nor is its loss (the anchor
    matching included); the loss of the heads that run is the same number as with every head computed. Its
    parameters get no gradient in that step: with ``optim_set_to_none=False`` (MONAI's default) their
    ``grad`` is zero once the head has had a first backward pass, so momentum and weight decay act as with every
    head computed (before that first pass, and with ``True``, it is ``None`` and the optimizer leaves the head
    alone; a resumed run restores the zero buffers, ``LastCheckpoint``). Also, the
    BatchNorm running statistics of the segmentation decoder are updated only by the
    batches in which it runs (the localization head uses GroupNorm, which keeps none).
    It needs a loss with ``select``/``needed_tasks`` and a network with ``tasks`` and a
    ``forward(image, tasks=...)`` (MultiCheXNet); under ``DistributedDataParallel`` it needs
    ``find_unused_parameters=True`` (ranks may then skip different heads); otherwise every head is computed.

    ``heads_on_selected_samples`` (default on, with ``skip_unlabelled_heads``): each head that runs sees only the
    samples its task trains on (``MultiCheXNet.forward(image, samples=selection)``; the encoder sees the whole
    batch): on disjoint data the segmentation decoder no longer runs on the images labelled for the classifier
    only, nor, with ``positive_only`` teacher forcing, on the negatives. The loss terms are the same numbers.
    Two things change with it: the segmentation decoder's BatchNorm statistics come from its selected samples
    only (its training batch is then the samples it learns from), and no gradient reaches an unselected image
    through those statistics. ``engine.state.output["pred"]`` then holds, per head, the rows of
    ``engine.state.output["selection"][task]``. A network whose ``forward`` has no ``samples`` argument runs its
    heads on the whole batch.
    """

    def __init__(
        self,
        *args: Any,
        prepare_batch: Callable = prepare_cxr_batch,
        clip_grad_norm: float | None = None,
        skip_unlabelled_heads: bool = True,
        heads_on_selected_samples: bool = True,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("decollate", False)
        device = kwargs.get("device", args[0] if args else "cpu")
        super().__init__(*args, prepare_batch=prepare_batch, **_amp_on_cuda_only(device, kwargs))
        self.clip_grad_norm = clip_grad_norm
        self.skip_unlabelled_heads = bool(skip_unlabelled_heads) and self._can_skip_heads()
        self.heads_on_selected_samples = (
            self.skip_unlabelled_heads and bool(heads_on_selected_samples) and self._network_takes_samples()
        )
        self._epoch_samplers()

    def _epoch_samplers(self) -> None:
        """Call ``set_epoch`` of the training sampler at every epoch start. MONAI's engines do it only for a
        ``DistributedSampler``; a sampler such as :class:`~monai_mcx.data.sampling.SourceWeightedSampler` would
        otherwise draw the same items in every epoch."""
        loader = self.data_loader
        samplers = [getattr(loader, "sampler", None), getattr(loader, "batch_sampler", None)]
        for sampler in samplers:
            if isinstance(sampler, DistributedSampler) or not callable(getattr(sampler, "set_epoch", None)):
                continue  # MONAI's Workflow already sets a DistributedSampler's epoch

            def set_epoch(engine: Engine, sampler: Any = sampler) -> None:
                sampler.set_epoch(engine.state.epoch)

            self.add_event_handler(Events.EPOCH_STARTED, set_epoch)

    def _can_skip_heads(self) -> bool:
        net = self.network
        if isinstance(net, torch.nn.parallel.DistributedDataParallel):
            if not net.find_unused_parameters:
                return False
            net = net.module
        loss = self.loss_function
        return hasattr(net, "tasks") and hasattr(loss, "select") and hasattr(loss, "needed_tasks")

    def _network_takes_samples(self) -> bool:
        """The network's ``forward`` has a ``samples`` argument (MultiCheXNet does; other networks run their
        heads on the whole batch)."""
        net = getattr(self.network, "module", self.network)
        return "samples" in inspect.signature(net.forward).parameters

    def _forward_and_loss(self, engine: MultiTaskTrainer, inputs: torch.Tensor, targets: dict) -> dict:
        """Forward pass (only the heads the batch needs, see the class docstring) and the loss dict."""
        if not self.skip_unlabelled_heads:
            pred = engine.inferer(inputs, engine.network)
            engine.state.output[Keys.PRED] = pred
            engine.fire_event(IterationEvents.FORWARD_COMPLETED)
            return engine.loss_function(pred, targets)
        tasks = list(getattr(engine.network, "module", engine.network).tasks)
        selection = engine.loss_function.select(targets, tasks)
        needed = engine.loss_function.needed_tasks(selection)
        engine.state.output["selection"] = selection
        gathered = bool(needed) and self.heads_on_selected_samples
        if gathered:
            samples = {t: selection[t] for t in needed}
            pred = engine.inferer(inputs, engine.network, tasks=needed, samples=samples)
        elif needed and len(needed) < len(tasks):
            pred = engine.inferer(inputs, engine.network, tasks=needed)
        else:  # all heads, or none needed: every head, the loss an exact zero in the graph
            pred = engine.inferer(inputs, engine.network)
        engine.state.output[Keys.PRED] = pred
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        return engine.loss_function(pred, targets, selection, gathered=gathered)

    def _iteration(self, engine: MultiTaskTrainer, batchdata: dict) -> dict:
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        inputs, targets = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
        engine.state.output = {Keys.IMAGE: inputs, Keys.LABEL: targets}
        engine.network.train()
        engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        use_amp = bool(engine.amp and engine.scaler is not None)
        with _autocast(engine.state.device, use_amp, engine.amp_kwargs):
            losses = self._forward_and_loss(engine, inputs, targets)
        loss = losses["loss"]
        engine.state.output[Keys.LOSS] = loss
        engine.state.output["losses"] = {
            k: float(v.detach()) for k, v in losses.items() if k != "loss" and not k.startswith("n_")
        }
        engine.fire_event(IterationEvents.LOSS_COMPLETED)
        if use_amp:
            engine.scaler.scale(loss).backward()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            if self.clip_grad_norm:
                engine.scaler.unscale_(engine.optimizer)
                torch.nn.utils.clip_grad_norm_(engine.network.parameters(), self.clip_grad_norm)
            engine.scaler.step(engine.optimizer)
            engine.scaler.update()
        else:
            loss.backward()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            if self.clip_grad_norm:
                torch.nn.utils.clip_grad_norm_(engine.network.parameters(), self.clip_grad_norm)
            engine.optimizer.step()
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output


class MultiTaskEvaluator(SupervisedEvaluator):
    """``SupervisedEvaluator`` for a dict-output network whose ``inferer`` post-processes.

    The ``inferer`` must be a :class:`monai_mcx.inferers.MultiCheXNetInferer` (or return what it returns): the
    network's head outputs plus ``class_probs``, ``gate``, ``seg_probs`` / ``seg_mask`` / ``seg_mask_gated`` and
    ``detections`` / ``detections_op`` / ``detections_gated`` in the network input's pixels, from the ONE
    post-processing component every consumer (metrics, report, overlays, prediction writer) reads.
    ``engine.state.output["pred"]`` is that dict.

    Each image is post-processed at the operating point of its population (``population``: ``adult`` /
    ``pediatric`` for every image, or None / ``"auto"``: per image from its DICOM age, datalist population or
    source, :func:`monai_mcx.engines.utils.batch_populations`); a model without per-population operating points
    gives every image its one operating point.
    """

    def __init__(
        self,
        device: torch.device | str,
        val_data_loader: Iterable,
        network: torch.nn.Module,
        prepare_batch: Callable = prepare_cxr_batch,
        population: str | None = None,
        **kwargs: Any,
    ) -> None:
        from monai_mcx.data.populations import check_population

        self.population = None if population in (None, "", "auto") else check_population(population, "population")
        kwargs.setdefault("decollate", False)
        _amp_on_cuda_only(device, kwargs)
        super().__init__(
            device=device, val_data_loader=val_data_loader, network=network, prepare_batch=prepare_batch, **kwargs
        )

    def _iteration(self, engine: MultiTaskEvaluator, batchdata: dict) -> dict:
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        inputs, targets = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
        engine.state.output = {Keys.IMAGE: inputs, Keys.LABEL: targets}
        with engine.mode(engine.network), torch.no_grad():
            with _autocast(engine.state.device, bool(engine.amp), engine.amp_kwargs):
                if isinstance(engine.inferer, MultiCheXNetInferer):
                    pops = batch_populations(batchdata, engine.population)
                    pred = engine.inferer(inputs, engine.network, populations=pops)
                else:
                    pred = engine.inferer(inputs, engine.network)
        if not isinstance(pred, Mapping) or PredKeys.GATE not in pred:
            raise TypeError(
                "MultiTaskEvaluator: the inferer must return post-processed predictions (a dict with "
                f"'{PredKeys.GATE}'); use monai_mcx.inferers.MultiCheXNetInferer, got {type(engine.inferer).__name__}."
            )
        engine.state.output[Keys.PRED] = dict(pred)
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output
