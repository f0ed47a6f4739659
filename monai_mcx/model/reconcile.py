"""Config values against a model description: a difference is an error naming both values.

The bundle's configs read the settings of a trained model from its description; a value the user sets on the
command line (``--spatial_size``, ``--encoder``, ...) must agree with it, or be listed in ``description_opt_out`` to
replace it deliberately. ``ModelDescription.reconcile`` (used by the configs as ``@model_description.reconcile(...)``)
delegates to :func:`reconcile`.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

from monai_mcx.keys import ALL_TASKS
from monai_mcx.model.errors import DescriptionConflictError
from monai_mcx.model.values import jsonable, same_value

__all__ = ["ARCHITECTURE_FIELDS", "COMPARABLE_FIELDS", "reconcile"]

#: description fields that a config value may be compared with (``reconcile``); "architecture" ones change the
#: weights' layout or meaning, the others the post-processing or the input
ARCHITECTURE_FIELDS = ("encoder", "in_channels", "class_names", "tasks", "num_anchors", "network_kwargs")
COMPARABLE_FIELDS = ARCHITECTURE_FIELDS + (
    "spatial_size",
    "intensity",
    "base_anchor_shapes",
    "feature_map_scales",
    "class_thresholds",
    "mask_threshold",
    "box_score_threshold",
    "nms_thresh",
    "detections_per_img",
    "candidate_score_thresh",
    "gate_rule",
)


def reconcile(
    description: Any,
    values: Mapping[str, Any] | None = None,
    opt_out: Sequence[str] = (),
    where: str | None = None,
) -> Any:
    """Compare config values with ``description`` (a :class:`~monai_mcx.model.ModelDescription`); a difference is an
    error naming both values.

    Args:
        description: the model description.
        values: ``{field: config value}``, e.g. ``{"spatial_size": @spatial_size, "encoder": @encoder}``;
            ``None`` values are not compared (the config does not set them). ``class_thresholds`` may be a
            mapping or a list in ``class_names`` order; ``intensity`` may be a mapping or its ``name``.
        opt_out: fields whose config value deliberately replaces the description's (logged as a warning;
            architecture fields still have to fit the weights, which the loader checks).
        where: the description file, for the message (default: the file it was read from).

    Returns:
        ``description`` when everything agrees, else a copy with the opted-out values.

    Raises:
        DescriptionConflictError: ``"spatial_size: the model description <file> says [64, 64], the config says
            [256, 256]"`` (every conflicting field listed), or an unknown field name.
    """
    where = where or str(getattr(description, "path", None) or "<model description>")
    bad_opt = [f for f in opt_out if f not in COMPARABLE_FIELDS]
    unknown = [f for f in dict(values or {}) if f not in COMPARABLE_FIELDS]
    if bad_opt or unknown:
        raise DescriptionConflictError(
            f"unknown description fields {bad_opt + unknown}; valid: {list(COMPARABLE_FIELDS)}"
        )
    conflicts, changes = [], {}
    for name, value in dict(values or {}).items():
        if value is None:
            continue
        ours = description.field_value(name)
        if name == "class_thresholds" and not isinstance(value, Mapping):
            names = description.class_names
            vals = [float(v) for v in (value if isinstance(value, (list, tuple)) else [value] * len(names))]
            value = dict(zip(names, vals)) if len(vals) == len(names) else vals
        if name == "intensity" and isinstance(value, str):
            ours = description.intensity.get("name")
        if name == "tasks":
            value = [t for t in ALL_TASKS if t in list(value)] if not isinstance(value, str) else [value]
        if same_value(ours, value):
            continue
        if name in opt_out:
            warnings.warn(
                f"{name}: the config's {jsonable(value)} replaces the model description's "
                f"{jsonable(ours)} ({where}; listed in description_opt_out)",
                stacklevel=3,
            )
            if name == "num_anchors":
                continue
            changes[name] = value
        else:
            conflicts.append(
                f"{name}: the model description {where} says {jsonable(ours)!r}, the config says {jsonable(value)!r}"
            )
    if conflicts:
        raise DescriptionConflictError(
            "the configuration contradicts the model description (drop the override, use a checkpoint described "
            "with these settings, or list the field in description_opt_out to override it deliberately):\n  "
            + "\n  ".join(conflicts)
        )
    if not changes:
        return description
    if "intensity" in changes and isinstance(changes["intensity"], str):
        changes["intensity"] = {**description.intensity, "name": changes["intensity"]}
    return description.replace(**changes)
