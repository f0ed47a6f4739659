"""The output folder of a prediction run: where it may be and which names its files may take.

:class:`monai_mcx.handlers.PredictionWriter` writes through these rules:

- the output folder may not be, contain or lie inside the folder of an input image
  (:func:`check_outside_inputs`): a run into the input folder would write beside the user's files (and
  ``a.png``'s mask output is named like a ground truth ``a_mask.png``);
- a run never replaces a file it did not create: a name already on disk is taken (:class:`OutputNames`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

__all__ = ["OutputFolderError", "check_outside_inputs", "input_folders", "OutputNames"]


class OutputFolderError(ValueError):
    """The output folder cannot be used as it is. The message names the folder, the problem and what to do."""


def _image_path(item: str | os.PathLike | Mapping) -> str | None:
    """The path of an input (an item ``{"image": path, ...}`` or a path); None for an item whose path names no
    file or folder (a datalist entry without a file: nothing there can be overwritten)."""
    if isinstance(item, Mapping):
        if item.get("error") and not os.path.lexists(str(item.get("image", ""))):
            return None
        item = item.get("image")
    if item is None or str(item) == "":
        return None
    return str(item)


def input_folders(inputs: Iterable[str | os.PathLike | Mapping]) -> list[Path]:
    """The folders an output folder must stay out of: the folder of every input image, in first-seen order.

    Args:
        inputs: the run's items (``{"image": path}``, as :func:`monai_mcx.data.inference_items` returns them,
            skipped entries included) or image paths.
    """
    seen: dict[str, Path] = {}
    for item in inputs:
        path = _image_path(item)
        if path is not None:
            folder = Path(path).parent
            seen.setdefault(str(folder), folder)
    return list(seen.values())


def check_outside_inputs(output_dir: str | os.PathLike, inputs: Iterable[str | os.PathLike | Mapping]) -> None:
    """Refuse an output folder that is, contains or lies inside the folder of an input image.

    Paths are compared after resolving symbolic links (the output folder need not exist yet).

    Raises:
        OutputFolderError: naming the output folder, the input folder and how they relate.
    """
    out = Path(os.path.realpath(output_dir))
    for folder in input_folders(inputs):
        real = Path(os.path.realpath(folder))
        if out == real:
            how = "is"
        elif real in out.parents:
            how = "lies inside"
        elif out in real.parents:
            how = "contains"
        else:
            continue
        raise OutputFolderError(
            f"{output_dir}: refused as the output folder: it {how} the input folder {folder}. Predictions written "
            "there would mix with (and could replace) the input files, e.g. a ground-truth '<name>_mask.png'; "
            "choose an --output_dir outside the folders of the input images."
        )


class OutputNames:
    """The file names taken in an output folder, so that no output replaces a file the run did not create.

    A name is taken when this run already claimed it (compared case-insensitively: two names that differ only in
    case are one file on macOS and Windows) or when a file or link of that name exists in the folder.

    Args:
        folder: the output folder.
        reserved: names no image output may take (``predictions.csv``).
    """

    def __init__(self, folder: str | os.PathLike, reserved: Iterable[str] = ()) -> None:
        self.folder = Path(folder)
        self.reserved = [str(n) for n in reserved]
        self._claimed: set[str] = set()
        self.clear()

    def clear(self) -> None:
        """Forget the claimed names (a new run); the reserved names stay taken."""
        self._claimed = {n.casefold() for n in self.reserved}

    def free(self, names: Iterable[str]) -> bool:
        """True when none of ``names`` is claimed or exists in the folder."""
        names = list(names)
        if any(n.casefold() in self._claimed for n in names):
            return False
        return not any(os.path.lexists(self.folder / n) for n in names)

    def claim(self, names: Iterable[str]) -> None:
        """Mark ``names`` as this run's."""
        self._claimed.update(n.casefold() for n in names)
