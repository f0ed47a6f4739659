"""Weight surgery for MultiCheXNet: merge sub-models, load what fits, freeze the encoder.

MultiCheXNet's training protocol (Ibrahim et al., 2020) trains single-task sub-models first, then builds
one network from their parts -- the encoder from one model, each head from its own -- and fine-tunes it
jointly. Transfer to an unseen disease starts from a trained model, replaces the classifier and trains
it, optionally on a frozen encoder. MONAI's ``CheckpointLoader``/``copy_model_state`` load one state
dict into one model by name; what they lack, and this module adds, is loading *by module prefix from
several files* with errors that name the file and the keys, and a report of which key came from where.

Every checkpoint is read through the weights layer (:mod:`monai_mcx.networks.weights`,
``torch.load(weights_only=True)``). A source may be a path or an in-memory
state dict; a file may hold the state dict itself (``model.pt`` written by the bundle), or a dict with a
``"model"`` entry (``last.pt``) or ``"state_dict"`` entry. A ``module.`` prefix (DDP) is stripped.

Key prefixes of a :class:`~monai_mcx.networks.MultiCheXNet` state dict (:data:`PART_PREFIXES`):
``encoder.``, ``classification_head.``, ``segmentation_head.``, ``localization_head.``.

Bundle use (``train.json`` ``initialize`` list; see the README section on merging sub-models)::

    {"_target_": "monai_mcx.model.merge.MergeWeights", "network": "@network",
     "encoder_from": "models/cls/model.pt",
     "heads_from": {"classification": "models/cls/model.pt", "segmentation": "models/seg/model.pt",
                    "localization": "models/loc/model.pt"}}
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from monai_mcx.keys import Task
from monai_mcx.model.errors import DescriptionError
from monai_mcx.model.files import description_path, load_description
from monai_mcx.model.values import same_value
from monai_mcx.networks import weights
from monai_mcx.networks.pretrained import load_pretrained_encoder
from monai_mcx.networks.weights import MergeError, StateSource
from monai_mcx.utils import as_bool

__all__ = [
    "PART_PREFIXES",
    "MergeError",
    "MergeReport",
    "LoadReport",
    "read_state_dict",
    "merge_multichexnet",
    "MergeWeights",
    "init_network",
    "load_compatible",
    "freeze_encoder",
    "trainable_parameters",
    "transfer_network",
    "check_source_descriptions",
]

logger = logging.getLogger(__name__)


#: part of a MultiCheXNet -> the prefix of its keys in the state dict
PART_PREFIXES: dict[str, str] = {
    "encoder": "encoder.",
    Task.CLASSIFICATION.value: "classification_head.",
    Task.SEGMENTATION.value: "segmentation_head.",
    Task.LOCALIZATION.value: "localization_head.",
}


def read_state_dict(source: StateSource, map_location: Any = "cpu") -> tuple[dict[str, torch.Tensor], str]:
    """``(state_dict, name)`` of ``source`` (a path or a state dict) through the weights layer
    (:func:`monai_mcx.networks.weights.read_state_dict`): ``{"model": sd}`` / ``{"state_dict": sd}`` and a DDP
    ``module.`` prefix unwrapped, non-tensor entries dropped; errors are :class:`MergeError` naming the file."""
    return weights.read_state_dict(source, map_location, error=MergeError)


def _short(keys: Iterable[str], limit: int = 8) -> str:
    return weights.short_keys(keys, limit)


def _name(source: StateSource) -> str:
    return weights.source_name(source)


def _part_state(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def _prefixes(state: Mapping[str, Any]) -> list[str]:
    return sorted({k.split(".", 1)[0] + "." for k in state})


def _check_part(module: nn.Module, part_state: Mapping[str, torch.Tensor], prefix: str, file: str, part: str) -> None:
    weights.check_state_dict(
        module,
        part_state,
        file,
        strict=True,
        what=f"{part} ({prefix}*) of the network",
        error=MergeError,
        prefix=prefix,
    )


@dataclass
class MergeReport:
    """What :func:`merge_multichexnet` loaded: ``parts`` = ``{part: file}``, ``key_sources`` = ``{key: file}``."""

    parts: dict[str, str] = field(default_factory=dict)
    key_sources: dict[str, str] = field(default_factory=dict)
    untouched: list[str] = field(default_factory=list)

    def keys_from(self, part: str) -> list[str]:
        prefix = PART_PREFIXES[part]
        return [k for k in self.key_sources if k.startswith(prefix)]

    def __str__(self) -> str:
        lines = [f"{part}: {len(self.keys_from(part))} tensors from {src}" for part, src in self.parts.items()]
        if self.untouched:
            lines.append(f"kept as initialised: {len(self.untouched)} tensors ({_short(self.untouched, 4)})")
        return "merged MultiCheXNet weights:\n  " + "\n  ".join(lines)


def merge_multichexnet(
    target: nn.Module,
    encoder_from: StateSource | None = None,
    heads_from: Mapping[str, StateSource | None] | None = None,
    map_location: Any = "cpu",
) -> MergeReport:
    """Load ``target``'s encoder from one checkpoint and each head from its own (single- or multi-task).

    Each part is taken from its source by key prefix (:data:`PART_PREFIXES`) and must match the target's part
    key for key and shape. Everything is checked before anything is loaded, so a failed merge leaves
    ``target`` unchanged.

    Args:
        target: a :class:`~monai_mcx.networks.MultiCheXNet` (or a module with the same attribute names).
        encoder_from: checkpoint (path or state dict) whose ``encoder.*`` keys fill ``target.encoder``.
        heads_from: ``{"classification" | "segmentation" | "localization": checkpoint}``; ``None`` values are
            skipped.

    Returns:
        a :class:`MergeReport` naming, for every loaded key, the file it came from.

    Raises:
        MergeError: a file is missing/unreadable, holds no keys for the part, or its keys/shapes differ (the
            message names the file and the keys); the target lacks a requested head; an unknown part name.
    """
    jobs: list[tuple[str, StateSource]] = []
    if encoder_from is not None:
        jobs.append(("encoder", encoder_from))
    for part, src in dict(heads_from or {}).items():
        if part not in PART_PREFIXES or part == "encoder":
            raise MergeError(f"unknown head {part!r} in heads_from; valid: classification, segmentation, localization")
        if src is not None:
            jobs.append((part, src))
    cache: dict[str, dict[str, torch.Tensor]] = {}
    staged: list[tuple[str, str, nn.Module, dict[str, torch.Tensor]]] = []
    for part, src in jobs:
        module_name = PART_PREFIXES[part][:-1]
        module = getattr(target, module_name, None)
        if module is None:
            tasks = getattr(target, "tasks", None)
            raise MergeError(
                f"the target network has no {module_name} (tasks={tasks}); cannot load it from {_name(src)!r}"
            )
        key = _name(src) if not isinstance(src, Mapping) else f"<state dict {id(src)}>"
        if key not in cache:
            cache[key] = read_state_dict(src, map_location)[0]
        state, file = cache[key], _name(src)
        prefix = PART_PREFIXES[part]
        part_state = _part_state(state, prefix)
        if not part_state:
            raise MergeError(
                f"checkpoint {file!r} has no {prefix}* keys for the {part}; its key prefixes are {_short(_prefixes(state))}"
            )
        _check_part(module, part_state, prefix, file, part)
        staged.append((part, file, module, part_state))
    report = MergeReport()
    loaded: set[str] = set()
    for part, file, module, part_state in staged:
        module.load_state_dict(part_state, strict=True)
        report.parts[part] = file
        prefix = PART_PREFIXES[part]
        for k in part_state:
            report.key_sources[prefix + k] = file
            loaded.add(prefix + k)
    report.untouched = [k for k in target.state_dict() if k not in loaded]
    if staged:
        logger.info(str(report))
    return report


#: description fields a merged part must share with the target's description
_PART_FIELDS = {
    "encoder": ("encoder", "in_channels"),
    Task.CLASSIFICATION.value: ("encoder", "in_channels", "class_names"),
    Task.SEGMENTATION.value: ("encoder", "in_channels"),
    Task.LOCALIZATION.value: ("encoder", "in_channels", "base_anchor_shapes", "feature_map_scales"),
}


def check_source_descriptions(
    description: Any,
    encoder_from: StateSource | None = None,
    heads_from: Mapping[str, StateSource | None] | None = None,
) -> None:
    """Check each source checkpoint's model description (when it has one) against the target's ``description``.

    A source file with a sidecar description (``model.json``) is verified against its weights (hash) and must agree
    with the target on the fields its part depends on (encoder and input channels; class names for the classifier;
    anchors for the localization head); a source without one is read as a legacy checkpoint, with a warning.

    Raises:
        MergeError: naming the source file, the field and both values; or a stale / broken description.
    """
    jobs = [("encoder", encoder_from)] + list(dict(heads_from or {}).items())
    for part, src in jobs:
        if not src or isinstance(src, Mapping) or part not in _PART_FIELDS:
            continue
        if not description_path(src).is_file():
            logger.warning(
                f"merge: {src} has no model description ({description_path(src).name}); merging its "
                f"{part} as a legacy checkpoint, unchecked"
            )
            continue
        try:
            theirs = load_description(src)
        except DescriptionError as e:
            raise MergeError(f"merge source {str(src)!r}: {e}") from e
        fields = _PART_FIELDS[part]
        if part == Task.LOCALIZATION and Task.LOCALIZATION not in description.tasks:
            continue
        bad = [
            f"{f}: {theirs.field_value(f)!r} in {str(theirs.path)!r}, {description.field_value(f)!r} in the target"
            for f in fields
            if not same_value(theirs.field_value(f), description.field_value(f))
        ]
        if bad:
            raise MergeError(
                f"cannot merge the {part} of {str(src)!r} into this network, the descriptions "
                "disagree:\n  " + "\n  ".join(bad)
            )


def _apply_init(
    network, pretrained_encoder, encoder_from, heads_from, pretrained_kwargs, description: Any = None
) -> MergeReport | None:
    if description is not None:
        check_source_descriptions(description, encoder_from, heads_from)
    if pretrained_encoder and encoder_from:
        raise ValueError("give either pretrained_encoder or encoder_from, not both: both would fill the encoder")
    if pretrained_encoder:
        load_pretrained_encoder(network, pretrained_encoder, **dict(pretrained_kwargs or {}))
    if encoder_from or any(v for v in dict(heads_from or {}).values()):
        return merge_multichexnet(network, encoder_from or None, heads_from)
    return None


def init_network(
    network: nn.Module,
    pretrained_encoder: StateSource | None = None,
    encoder_from: StateSource | None = None,
    heads_from: Mapping[str, StateSource | None] | None = None,
    pretrained_kwargs: Mapping[str, Any] | None = None,
) -> nn.Module:
    """Initialise ``network`` from files and return it (for a config expression
    ``"network": "$monai_mcx.model.merge.init_network(@network_def, ...).to(@device)"``).

    ``pretrained_encoder`` (a TorchXRayVision / torchvision DenseNet-121 state dict, see
    :func:`monai_mcx.networks.pretrained.load_pretrained_encoder`) and ``encoder_from`` (a MultiCheXNet
    checkpoint) are exclusive; ``heads_from`` as in :func:`merge_multichexnet`. Empty values (``null``, ``""``,
    ``{}``) do nothing, so the call can stay in a config.
    """
    _apply_init(network, pretrained_encoder, encoder_from, heads_from, pretrained_kwargs)
    return network


class MergeWeights:
    """Config-friendly form of :func:`init_network`: instantiating it loads the weights (an ``initialize`` item).

    Args:
        network: the bundle's ``@network``.
        encoder_from, heads_from, pretrained_encoder, pretrained_kwargs: as in :func:`init_network`;
            empty values do nothing, so the item can stay in ``train.json``.
        description: the target's :class:`~monai_mcx.model.ModelDescription` (``@model_description``); source
            files with a description are checked against it (:func:`check_source_descriptions`).

    Attributes: ``report`` (the :class:`MergeReport`, or None when no checkpoint was merged), ``network``.
    """

    def __init__(
        self,
        network: nn.Module,
        encoder_from: StateSource | None = None,
        heads_from: Mapping[str, StateSource | None] | None = None,
        pretrained_encoder: StateSource | None = None,
        pretrained_kwargs: Mapping[str, Any] | None = None,
        description: Any = None,
    ) -> None:
        self.network = network
        self.report = _apply_init(network, pretrained_encoder, encoder_from, heads_from, pretrained_kwargs, description)


# ------------------------------------------------------------------------------------------ transfer


@dataclass
class LoadReport:
    """What :func:`load_compatible` did.

    ``loaded``: keys copied from the checkpoint; ``skipped``: ``{key: reason}`` for checkpoint keys not loaded
    (shape differs, replaced on purpose, or no such key in the model); ``missing``: model keys the checkpoint
    lacks (kept as initialised).
    """

    file: str
    loaded: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"loaded {len(self.loaded)} tensors from {self.file}"]
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)} checkpoint keys:")
            absent: dict[str, int] = {}
            for k, r in self.skipped.items():
                if r.startswith("not in the model"):
                    top = k.split(".", 1)[0]
                    absent[top] = absent.get(top, 0) + 1
                else:
                    lines.append(f"  {k}: {r}")
            lines += [
                f"  {top}.* ({n} tensors): not in the model (a part the new model does not build)"
                for top, n in absent.items()
            ]
        if self.missing:
            lines.append(f"kept as initialised (not in the checkpoint or skipped): {_short(self.missing, 12)}")
        return "\n".join(lines)


def load_compatible(
    network: nn.Module,
    source: StateSource,
    skip_prefixes: Sequence[str] = (),
    require_prefixes: Sequence[str] = ("encoder.",),
    map_location: Any = "cpu",
    log: bool = True,
) -> LoadReport:
    """Load every tensor of ``source`` whose key and shape fit ``network``; report (and log) the rest.

    For transfer learning: a classifier for other class names has another ``classification_head.fc`` shape
    (skipped: "shape ..."), heads the new network does not build are skipped ("not in the model"), and
    ``skip_prefixes`` replaces a part even when its shapes happen to fit (e.g. a 1-class head for another
    class: ``["classification_head."]``).

    Args:
        network: the model to fill.
        source: checkpoint path or state dict.
        skip_prefixes: checkpoint keys starting with one of these are not loaded.
        require_prefixes: every model key with one of these prefixes must be loaded (default: the whole
            encoder), else :class:`MergeError` -- transfer from a checkpoint whose encoder does not fit is an
            error, not a silent random start.

    Returns:
        :class:`LoadReport`; with ``log`` its text is logged at WARNING level when keys were skipped or missing.
    """
    state, file = read_state_dict(source, map_location)
    own = network.state_dict()
    report = LoadReport(file=file)
    to_load: dict[str, torch.Tensor] = {}
    for k, v in state.items():
        if any(k.startswith(p) for p in skip_prefixes):
            report.skipped[k] = "replaced (skip_prefixes): the new model gets a fresh one"
        elif k not in own:
            report.skipped[k] = "not in the model (a part the new model does not build)"
        elif tuple(v.shape) != tuple(own[k].shape):
            report.skipped[k] = f"shape {tuple(v.shape)} in the checkpoint, {tuple(own[k].shape)} in the model"
        else:
            to_load[k] = v
    report.loaded = list(to_load)
    report.missing = [k for k in own if k not in to_load]
    need = [k for k in report.missing if any(k.startswith(p) for p in require_prefixes)]
    if need:
        why = [f"{k} ({report.skipped.get(k, 'absent from the checkpoint')})" for k in need]
        raise MergeError(f"checkpoint {file!r} does not fit the network's {'/'.join(require_prefixes)}*: {_short(why)}")
    network.load_state_dict(to_load, strict=False)
    if log:
        msg = str(report)
        (logger.warning if (report.skipped or report.missing) else logger.info)(msg)
    return report


def _keep_eval(module: nn.Module, _inputs: Any) -> None:
    if module.training:
        module.eval()


def freeze_encoder(network: nn.Module) -> nn.Module:
    """Freeze ``network.encoder``: no gradients, and kept in eval mode (BatchNorm statistics fixed) even when
    the trainer calls ``network.train()`` every iteration (a forward pre-hook switches it back). Returns
    ``network``."""
    encoder = getattr(network, "encoder", None)
    if encoder is None:
        raise ValueError(f"{type(network).__name__} has no encoder to freeze")
    encoder.requires_grad_(False)
    encoder.eval()
    if not getattr(encoder, "_mcx_frozen", False):
        encoder.register_forward_pre_hook(_keep_eval)
        encoder._mcx_frozen = True
    return network


def trainable_parameters(network: nn.Module) -> list[nn.Parameter]:
    """The parameters with ``requires_grad`` (the optimizer's ``params`` when the encoder is frozen)."""
    params = [p for p in network.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the network has no trainable parameters")
    return params


def transfer_network(
    network: nn.Module,
    pretrained_ckpt: StateSource | None,
    pretrained_class_names: Sequence[str] | None = None,
    freeze: bool = False,
    pretrained_description: Any = None,
) -> nn.Module:
    """Prepare ``network`` (built for the new ``class_names``) for transfer; used by ``finetune.json``.

    Loads what fits from ``pretrained_ckpt`` with :func:`load_compatible`. The classifier is replaced (its
    keys skipped) when ``pretrained_class_names`` differ from the network's ``class_names`` -- even when the
    class count and so the shapes are equal -- or when its shape differs. Then :func:`freeze_encoder` when
    ``freeze``. ``pretrained_ckpt`` empty -> random initialisation (the baseline). Returns ``network``; the
    :class:`LoadReport` is in ``network.transfer_report``.

    ``pretrained_description``: the :class:`~monai_mcx.model.ModelDescription` of ``pretrained_ckpt``
    (``finetune.json`` loads it, hash-verified); its ``class_names`` are the pretrained class names when
    ``pretrained_class_names`` is not given, and they must agree when both are.
    """
    freeze = as_bool(freeze, "freeze_encoder")
    report = None
    if pretrained_description is not None:
        described = list(pretrained_description.class_names)
        if pretrained_class_names is not None and list(pretrained_class_names) != described:
            raise MergeError(
                f"pretrained_class_names {list(pretrained_class_names)} contradict the model description "
                f"of {pretrained_ckpt!r}, which says {described}"
            )
        pretrained_class_names = described
    if pretrained_ckpt:
        names = list(getattr(network, "class_names", []) or [])
        same = pretrained_class_names is not None and list(pretrained_class_names) == names
        skip = () if same else ("classification_head.",)
        report = load_compatible(network, pretrained_ckpt, skip_prefixes=skip)
    else:
        logger.warning("transfer: no pretrained_ckpt given, the network starts from random initialisation")
    if freeze:
        freeze_encoder(network)
    network.transfer_report = report
    return network
