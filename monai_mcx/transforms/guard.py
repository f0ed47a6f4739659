"""Per-item error guard for inference: an unreadable input becomes a placeholder item, the run goes on.

MONAI's ``Dataset`` has no per-item error handling, hence this wrapper.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import MapTransform

from monai_mcx.data.errors import DataError
from monai_mcx.keys import BatchKeys

__all__ = ["GuardLoadd", "ERROR_KEY"]

logger = logging.getLogger(__name__)

#: item / batch key holding the read error ("" when the item was read)
ERROR_KEY = BatchKeys.ERROR.value


def _root_cause(e: BaseException) -> BaseException:
    """The ``DataError`` behind ``e`` (MONAI's ``Compose`` wraps errors in ``RuntimeError("applying
    transform ...")``), else the innermost cause."""
    seen, cur = [], e
    while cur is not None and cur not in seen:
        if isinstance(cur, DataError):
            return cur
        seen.append(cur)
        cur = cur.__cause__ or cur.__context__
    return seen[-1] if seen else e


class GuardLoadd(MapTransform):
    """Run ``transform`` on an item; if it raises, return a placeholder item carrying the error instead.

    The output item always has the same keys and types, so ``monai_mcx.data.collate_cxr`` stacks good and
    failed items alike:

    - ``image``: a ``(1, *spatial_size)`` float MetaTensor (zeros for a failed item) whose meta holds only
      ``filename_or_obj``, ``spatial_shape`` (the ORIGINAL ``(W, H)``, the network input size for a failed
      item), ``pixel_spacing`` (``(x, y)`` mm, ``(1, 1)`` when unknown) and ``patient_age_years`` (DICOM; NaN when
      unknown: it chooses the image's operating point). Other metadata is dropped: it
      differs between DICOM/PNG/NIfTI and would not collate.
    - ``error``: ``""`` or ``"<file>: <problem>"`` (``DataError`` messages already name the file). An input
      item that already carries a non-empty ``error`` (a path that :func:`monai_mcx.data.inference_items`
      lists as skipped: symlink loop, sub-folder, missing datalist file, ...) is not transformed; it becomes a
      placeholder with that error, i.e. an error row of ``predictions.csv``.

    Args:
        transform: the preprocessing (e.g. a ``Compose`` starting with ``LoadCXRd``).
        spatial_size: ``(W, H)`` of the network input (size of the placeholder image).
        keys: the image key.
        catch: exception types turned into placeholders (default: every ``Exception``).
    """

    def __init__(
        self,
        transform: Callable,
        spatial_size: Sequence[int],
        keys: str = BatchKeys.IMAGE.value,
        catch: tuple[type[BaseException], ...] = (Exception,),
    ) -> None:
        super().__init__(keys)
        self.transform = transform
        self.spatial_size = [int(s) for s in spatial_size]
        self.catch = tuple(catch)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        key = self.keys[0]
        src = str(data.get(key, "")) if not isinstance(data.get(key), torch.Tensor) else ""
        try:
            if data.get(ERROR_KEY):  # an input listed as skipped by monai_mcx.data.inference_items
                raise DataError(str(data[ERROR_KEY]))
            out = dict(self.transform(dict(data)))
            image = out[key]
            meta = getattr(image, "meta", {}) or {}
            src = str(meta.get("filename_or_obj", src))
            orig = [int(v) for v in np.asarray(meta.get("spatial_shape", image.shape[1:]))[:2]]
            spacing = meta.get("pixel_spacing") or (1.0, 1.0)
            age = float(meta.get("patient_age_years", float("nan")))
            error = ""
            tensor = torch.as_tensor(image).float()
        except self.catch as e:  # noqa: PERF203 - the point of this transform
            root = _root_cause(e)
            msg = str(root)
            error = msg if (src and src in msg) else f"{src}: {type(root).__name__}: {msg}"
            logger.warning("skipping unreadable input: %s", error)
            out = {k: v for k, v in dict(data).items() if k != key}
            orig, spacing, age = list(self.spatial_size), (1.0, 1.0), float("nan")
            tensor = torch.zeros([1, *self.spatial_size], dtype=torch.float32)
        out[key] = MetaTensor(
            tensor.as_subclass(torch.Tensor) if isinstance(tensor, MetaTensor) else tensor,
            meta={
                "filename_or_obj": src,
                "spatial_shape": np.asarray(orig),
                "pixel_spacing": np.asarray([float(s) for s in spacing], dtype=np.float64),
                "patient_age_years": age,
            },
        )
        out[ERROR_KEY] = error
        return out
