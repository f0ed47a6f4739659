"""Which images an infer request may read (no MONAI Label import here: tested at function level).

A request's ``image`` is a datastore image id, or a path: a study in the studies folder, or a file that MONAI Label's
``POST /infer`` wrote for an upload (with ``tempfile.NamedTemporaryFile``, i.e. into ``tempfile.gettempdir()``).
:func:`make_upload_dir` points that at a folder of the app's own (created private, ``0700``), so that uploads are
allowed without allowing the whole system temp folder, where other processes' files are. A path elsewhere is
answered exactly as a missing one (same status, same message shape), so that a client cannot learn which paths
exist on the server.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Sequence

__all__ = ["ImageRequestError", "check_image", "make_upload_dir"]


class ImageRequestError(Exception):
    """A request's ``image`` that is not served: ``status`` (HTTP) and ``detail`` (the message)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def make_upload_dir() -> str:
    """Create the app's private upload folder (removed at exit) and make it ``tempfile``'s default folder, where
    MONAI Label's ``POST /infer`` writes uploaded files; return its path."""
    path = os.path.realpath(tempfile.mkdtemp(prefix="mcx-monailabel-uploads-"))  # mode 0700
    atexit.register(shutil.rmtree, path, True)
    tempfile.tempdir = path
    return path


def _inside(path: str, folders: Iterable[str]) -> bool:
    real = os.path.realpath(path)
    for folder in folders:
        top = os.path.realpath(folder)
        if real == top or real.startswith(top.rstrip(os.sep) + os.sep):
            return True
    return False


def check_image(image: object, image_ids: Callable[[], Sequence[str]], folders: Iterable[str]) -> None:
    """Refuse a request's ``image`` unless it is one datastore id or an existing path under one of ``folders``.

    Mirrors ``MONAILabelApp.infer``: a string that exists as a path is read as that path (after symbolic links),
    any other string is looked up among ``image_ids()``.

    Args:
        image: the request's ``image``.
        image_ids: the datastore's image ids (called only for a string that is not an existing path).
        folders: the folders a path may lie in (the studies and the upload folder).

    Raises:
        ImageRequestError: 422 for an image that is not one string (a list or dict of images would skip these
            checks and is not what this app's single-image task takes); 404 for a path outside ``folders`` and for
            an unknown id alike.
    """
    if not isinstance(image, str):
        raise ImageRequestError(
            422, f"image must be one image id or uploaded file (a string), got a {type(image).__name__}"
        )
    known = _inside(image, folders) if os.path.exists(image) else image in image_ids()
    if not known:
        raise ImageRequestError(
            404,
            f"unknown image {image!r}: neither an image id of the datastore (see GET /datastore/?output=all) nor "
            "an uploaded file",
        )
