"""Helpers shared by the benchmark scripts: sections of ``docs/benchmarks.md`` and keys of ``docs/benchmarks.json``.

``scripts/benchmark.py`` writes the forward-pass part of both files; ``scripts/benchmark_train.py`` and
``scripts/benchmark_inference.py`` each own one marked section of the Markdown (``<!-- BEGIN name -->`` ...
``<!-- END name -->``) and one top-level key of the JSON, and every script keeps what the others wrote.
"""

from __future__ import annotations

import json
import os
import platform
import re
from pathlib import Path

from monai_mcx.utils import write_text_atomic

__all__ = ["update_markdown_section", "kept_sections", "update_json_key", "load_average", "machine_line"]


def _block(name: str, text: str) -> str:
    return f"<!-- BEGIN {name} -->\n{text.rstrip()}\n<!-- END {name} -->\n"


def kept_sections(path: Path) -> str:
    """Every marked section of ``path`` (empty string if none or no file), for a script that rewrites the rest."""
    if not path.is_file():
        return ""
    blocks = re.findall(r"<!-- BEGIN [\w-]+ -->\n.*?<!-- END [\w-]+ -->\n", path.read_text(), flags=re.S)
    return "".join("\n" + b for b in blocks)


def update_markdown_section(path: Path, name: str, text: str) -> None:
    """Replace (or append) the section ``name`` of the Markdown file ``path``, atomically."""
    old = path.read_text() if path.is_file() else "# Benchmarks\n"
    pattern = re.compile(rf"<!-- BEGIN {re.escape(name)} -->\n.*?<!-- END {re.escape(name)} -->\n", flags=re.S)
    block = _block(name, text)
    new = pattern.sub(lambda _: block, old) if pattern.search(old) else old.rstrip() + "\n\n" + block
    write_text_atomic(new, path)


def update_json_key(path: Path, key: str, value: object) -> None:
    """Set the top-level ``key`` of the JSON object in ``path`` (created if missing), atomically."""
    data = json.loads(path.read_text()) if path.is_file() else {}
    data[key] = value
    write_text_atomic(json.dumps(data, indent=1) + "\n", path)


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def machine_line(threads: int) -> str:
    import monai
    import torch

    return (
        f"{os.cpu_count()} logical CPUs, torch {torch.__version__}, monai {monai.__version__}, "
        f"Python {platform.python_version()}, `torch.set_num_threads({threads})`"
    )
