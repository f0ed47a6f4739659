"""The one exception every data adapter, the RLE codec and the CXR loader raise for bad input."""

from __future__ import annotations

import os

__all__ = ["DataError"]


class DataError(ValueError):
    """Bad input data. The message names the file (and CSV row, when there is one) and the problem.

    Attributes:
        file: the offending file (``str``) or ``None``.
        row: 1-based line number in ``file`` (the header is line 1) or an item index, or ``None``.
        problem: what is wrong, in words.

    Example::

        >>> str(DataError("run overruns the 1024x1024 image", file="train-rle.csv", row=17))
        'train-rle.csv, row 17: run overruns the 1024x1024 image'
    """

    def __init__(self, problem: str, file: str | os.PathLike | None = None, row: int | str | None = None):
        self.file = None if file is None else str(file)
        self.row = row
        self.problem = str(problem)
        where = self.file or ""
        if row is not None:
            where = f"{where}, row {row}" if where else f"row {row}"
        super().__init__(f"{where}: {self.problem}" if where else self.problem)

    def __reduce__(self):  # picklable across DataLoader workers
        return (type(self), (self.problem, self.file, self.row))

    def as_dict(self) -> dict:
        """``{"file", "row", "problem"}`` (for skip reports)."""
        return {"file": self.file, "row": self.row, "problem": self.problem}
