"""Small shared helpers: atomic file writes and command-line flags (file-type sniffing:
:func:`monai_mcx.data.formats.sniff_format`)."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO

__all__ = [
    "atomic_write",
    "write_bytes_atomic",
    "write_text_atomic",
    "write_json_atomic",
    "as_bool",
    "check_cli_paths",
]

_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0", "none", "")


def as_bool(value: object, name: str = "flag") -> bool:
    """A config / command-line flag as a bool.

    ``python -m monai.bundle run ... --resume false`` hands the bundle the STRING ``"false"`` (python-fire parses
    only ``False``/``True``), which Python counts as true. Every flag of the bundle goes through this function:
    booleans and ``0``/``1`` as they are, the strings ``true``/``yes``/``on``/``1`` and ``false``/``no``/``off``/
    ``0``/``none`` (any case), ``None`` as false.

    Raises:
        ValueError: naming ``name`` for anything else (e.g. ``--resume flase``).
    """
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        v = value.strip().lower()
        if v in _TRUE:
            return True
        if v in _FALSE:
            return False
    raise ValueError(f"option {name!r} must be true or false, got {value!r}.")


@contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file beside ``path``; on success fsync it and rename it over ``path``.

    Until the rename the previous ``path`` is untouched, so a crash or a kill at any point leaves either the
    old or the new file, never a partial one. On an exception the temporary file is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.chmod(tmp, 0o644)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:  # make the rename itself durable
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def write_bytes_atomic(data: bytes, path: str | os.PathLike) -> None:
    with atomic_write(path, "wb") as f:
        f.write(data)


def write_text_atomic(text: str, path: str | os.PathLike) -> None:
    with atomic_write(path, "w") as f:
        f.write(text)


def write_json_atomic(obj: object, path: str | os.PathLike) -> None:
    with atomic_write(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)


def check_cli_paths(argv: Sequence[str] | None = None) -> None:
    """Refuse a command-line value that MONAI would not read as the path it is.

    MONAI's ``ConfigParser`` evaluates a value starting with ``$`` as Python, follows one starting with ``@`` as a
    reference and one starting with ``%`` as a macro, so ``--input '$scans'`` (a folder named ``$scans``) fails
    with ``NameError: name 'scans' is not defined``, naming no path, before any of the bundle's code sees it. The
    bundle's configs call this first in ``initialize``: a ``--key value`` (or ``--key=value``) of ``argv`` whose
    value starts with one of these characters AND is an existing file or folder is an error that names it and says
    how to pass it (``./$scans``: MONAI reads a ``$`` that is not the first character literally). Expressions such
    as ``--x '$1 + 1'`` are not paths and pass.

    Args:
        argv: the command line (default ``sys.argv``).

    Raises:
        ValueError: naming the option, the value and the way to pass it.
    """
    argv = list(sys.argv if argv is None else argv)
    for i, arg in enumerate(argv):
        if not arg.startswith("--"):
            continue
        key, eq, value = arg[2:].partition("=")
        if not eq:
            if i + 1 >= len(argv):
                continue
            value = argv[i + 1]
        if value[:1] in ("$", "@", "%") and os.path.exists(value):
            raise ValueError(
                f"--{key} {value!r}: a value starting with {value[0]!r} is not a path to MONAI's ConfigParser (it "
                f"reads '$' as a Python expression, '@' as a reference, '%' as a macro), but {value!r} is a "
                f"{'folder' if os.path.isdir(value) else 'file'} here. Pass it so that it does not start with "
                f"{value[0]!r}: --{key} {os.path.join('.', value)!r} (or an absolute path)."
            )
