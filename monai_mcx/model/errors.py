"""Errors of model descriptions (each message names the file and the problem)."""

from __future__ import annotations

from monai_mcx.networks.weights import WeightsError

__all__ = ["DescriptionError", "StaleDescriptionError", "DescriptionConflictError", "root_cause"]


class DescriptionError(ValueError):
    """A model description is missing, malformed, or cannot describe the checkpoint (the message names the file)."""


class StaleDescriptionError(DescriptionError):
    """The description's ``weights_sha256`` differs from the checkpoint's weights: it belongs to another model."""


class DescriptionConflictError(DescriptionError):
    """A config value contradicts the model description (the message names both values and the file)."""


def root_cause(error: BaseException) -> BaseException:
    """The :class:`DescriptionError` / :class:`~monai_mcx.networks.weights.WeightsError` inside an exception chain
    (MONAI's ``ConfigParser`` wraps errors of config expressions in ``RuntimeError("Failed to evaluate ...")``), or
    ``error`` itself when there is none."""
    seen = set()
    e: BaseException | None = error
    while e is not None and id(e) not in seen:
        if isinstance(e, (DescriptionError, WeightsError)):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return error
