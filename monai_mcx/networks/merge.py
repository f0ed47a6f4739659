"""Weight surgery for MultiCheXNet: merge sub-models, load what fits, freeze the encoder.

MultiCheXNet's training protocol (Ibrahim et al., 2020) trains single-task sub-models first, then builds
one network from their parts -- the encoder from one model, each head from its own -- and fine-tunes it
jointly. Transfer to an unseen disease starts from a trained model, replaces the classifier and trains
it, optionally on a frozen encoder. MONAI's ``CheckpointLoader``/``copy_model_state`` load one state
dict into one model by name; what they lack, and this module adds, is loading *by module prefix from
several files* with errors that name the file and the keys, and a report of which key came from where.

Every checkpoint is read with ``torch.load(weights_only=True)``. A source may be a path or an in-memory
state dict; a file may hold the state dict itself (``model.pt`` written by the bundle), or a dict with a
``"model"`` entry (``last.pt``) or ``"state_dict"`` entry. A ``module.`` prefix (DDP) is stripped.

Key prefixes of a :class:`~monai_mcx.networks.MultiCheXNet` state dict (:data:`PART_PREFIXES`):
``encoder.``, ``classification_head.``, ``segmentation_head.``, ``localization_head.``.

Bundle use (``train.json`` ``initialize`` list; see the README section on merging sub-models)::

    {"_target_": "monai_mcx.networks.merge.MergeWeights", "network": "@network",
     "encoder_from": "models/cls/model.pt",
     "heads_from": {"classification": "models/cls/model.pt", "segmentation": "models/seg/model.pt",
                    "localization": "models/loc/model.pt"}}
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import torch
from torch import nn

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
]

logger = logging.getLogger(__name__)

StateSource = Union[str, os.PathLike, Mapping[str, Any]]

#: part of a MultiCheXNet -> the prefix of its keys in the state dict
PART_PREFIXES: dict[str, str] = {
    "encoder": "encoder.",
    "classification": "classification_head.",
    "segmentation": "segmentation_head.",
    "localization": "localization_head.",
}


class MergeError(ValueError):
    """A checkpoint does not fit the part of the network it should fill; the message names the file and keys."""


def _short(keys: Iterable[str], limit: int = 8) -> str:
    keys = list(keys)
    text = ", ".join(keys[:limit])
    return text + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def _name(source: StateSource) -> str:
    return str(source) if isinstance(source, (str, os.PathLike)) else "<in-memory state dict>"


def read_state_dict(source: StateSource, map_location: Any = "cpu") -> tuple[dict[str, torch.Tensor], str]:
    """``(state_dict, name)`` of ``source`` (a path or a state dict); ``name`` is the file for messages.

    Unwraps ``{"model": sd}`` / ``{"state_dict": sd}`` and a DDP ``module.`` prefix; non-tensor entries are
    dropped.

    Raises:
        MergeError: the file is missing, unreadable (not a weights-only checkpoint) or holds no tensors.
    """
    name = _name(source)
    if isinstance(source, Mapping):
        state: Any = source
    else:
        path = Path(source)
        if not path.is_file():
            raise MergeError(f"checkpoint {name!r} does not exist")
        try:
            state = torch.load(path, map_location=map_location, weights_only=True)
        except Exception as e:  # corrupt, truncated, or a pickled module refused by weights_only
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise MergeError(
                f"cannot read checkpoint {name!r} with torch.load(weights_only=True): it is corrupt, truncated or "
                f"not a state dict (a whole pickled model must be converted first: torch.save(model.state_dict(), "
                f"path)) [{type(e).__name__}: {first}]"
            ) from e
    if not isinstance(state, Mapping):
        raise MergeError(f"checkpoint {name!r} holds a {type(state).__name__}, expected a state dict")
    for wrapper in ("model", "state_dict"):
        if wrapper in state and isinstance(state[wrapper], Mapping):
            state = state[wrapper]
            break
    out = {str(k): v for k, v in state.items() if torch.is_tensor(v)}
    if out and all(k.startswith("module.") for k in out):
        out = {k[len("module."):]: v for k, v in out.items()}
    if not out:
        raise MergeError(f"checkpoint {name!r} holds no tensors")
    return out, name


def _part_state(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def _prefixes(state: Mapping[str, Any]) -> list[str]:
    return sorted({k.split(".", 1)[0] + "." for k in state})


def _check_part(module: nn.Module, part_state: Mapping[str, torch.Tensor], prefix: str, file: str, part: str) -> None:
    own = module.state_dict()
    missing = [prefix + k for k in own if k not in part_state]
    unexpected = [prefix + k for k in part_state if k not in own]
    shapes = [
        f"{prefix}{k} (checkpoint {tuple(v.shape)}, model {tuple(own[k].shape)})"
        for k, v in part_state.items()
        if k in own and tuple(v.shape) != tuple(own[k].shape)
    ]
    problems = []
    if shapes:
        problems.append(f"shape-mismatched keys: {_short(shapes)}")
    if missing:
        problems.append(f"keys the model needs but the checkpoint lacks: {_short(missing)}")
    if unexpected:
        problems.append(f"keys the checkpoint has but the model lacks: {_short(unexpected)}")
    if problems:
        raise MergeError(
            f"checkpoint {file!r} does not fit the {part} ({prefix}*) of the network "
            f"(built with another encoder, class count or head settings?):\n  " + "\n  ".join(problems)
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
            raise MergeError(f"the target network has no {module_name} (tasks={tasks}); cannot load it from {_name(src)!r}")
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


def _apply_init(network, pretrained_encoder, encoder_from, heads_from, pretrained_kwargs) -> MergeReport | None:
    if pretrained_encoder and encoder_from:
        raise ValueError("give either pretrained_encoder or encoder_from, not both: both would fill the encoder")
    if pretrained_encoder:
        from monai_mcx.networks.pretrained import load_pretrained_encoder

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
    ``"network": "$monai_mcx.networks.merge.init_network(@network_def, ...).to(@device)"``).

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

    Attributes: ``report`` (the :class:`MergeReport`, or None when no checkpoint was merged), ``network``.
    """

    def __init__(
        self,
        network: nn.Module,
        encoder_from: StateSource | None = None,
        heads_from: Mapping[str, StateSource | None] | None = None,
        pretrained_encoder: StateSource | None = None,
        pretrained_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        self.network = network
        self.report = _apply_init(network, pretrained_encoder, encoder_from, heads_from, pretrained_kwargs)


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
            lines += [f"  {top}.* ({n} tensors): not in the model (a part the new model does not build)" for top, n in absent.items()]
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
) -> nn.Module:
    """Prepare ``network`` (built for the new ``class_names``) for transfer; used by ``finetune.json``.

    Loads what fits from ``pretrained_ckpt`` with :func:`load_compatible`. The classifier is replaced (its
    keys skipped) when ``pretrained_class_names`` differ from the network's ``class_names`` -- even when the
    class count and so the shapes are equal -- or when its shape differs. Then :func:`freeze_encoder` when
    ``freeze``. ``pretrained_ckpt`` empty -> random initialisation (the baseline). Returns ``network``; the
    :class:`LoadReport` is in ``network.transfer_report``.
    """
    report = None
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
