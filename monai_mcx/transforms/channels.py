"""Channel handling for chest X-rays loaded by MONAI's generic readers."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

from monai.config import KeysCollection
from monai.transforms import MapTransform

__all__ = ["ToSingleChanneld"]


class ToSingleChanneld(MapTransform):
    """Reduce a channel-first ``(C, W, H)`` image to one channel.

    RGB(A) files of gray radiographs (common for JPEG/PNG exports) are averaged over the colour channels
    (an alpha channel is dropped); one-channel images pass unchanged.
    """

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            if img.shape[0] == 4:
                img = img[:3]
            if img.shape[0] > 1:
                img = img.float().mean(dim=0, keepdim=True)
            d[key] = img
        return d
