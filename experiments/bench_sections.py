"""Helpers shared by the benchmarks: sections of ``docs/benchmarks.md`` and keys of ``docs/benchmarks.json``, their
command-line options, the machine line, and peak-memory probes in a fresh process.

:mod:`experiments.benchmark` writes the forward-pass part of both files; :mod:`experiments.benchmark_train` and
:mod:`experiments.benchmark_inference` each own one marked section of the Markdown (``<!-- BEGIN name -->`` ...
``<!-- END name -->``) and one top-level key of the JSON, and every script keeps what the others wrote.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import subprocess
import sys
from pathlib import Path

from experiments.common import REPO
from monai_mcx.utils import write_text_atomic

__all__ = [
    "update_markdown_section",
    "kept_sections",
    "update_json_key",
    "write_section",
    "add_output_options",
    "command_line",
    "load_average",
    "machine_line",
    "run_footer",
    "main_or_memory_probe",
    "MEMORY_PROBE",
    "run_memory_probe",
    "memory_probe_args",
    "reset_peak_rss",
    "peak_rss",
]

#: the hidden option that makes a benchmark module run one memory probe (in a fresh process) instead of its main
MEMORY_PROBE = "--_memory-probe"


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
    """The 1, 5 and 15 minute load averages (None where the platform has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def machine_line(threads: int) -> str:
    import monai
    import torch

    return (
        f"{os.cpu_count()} logical CPUs, torch {torch.__version__}, monai {monai.__version__}, "
        f"Python {platform.python_version()}, `torch.set_num_threads({threads})`"
    )


def write_section(args, name: str, text: str, value: dict) -> None:
    """Section ``name`` of ``args.out_md`` and key ``name`` of ``args.out_json`` (the other sections and keys kept)."""
    update_markdown_section(args.out_md, name, text)
    update_json_key(args.out_json, name, value)


def add_output_options(p: argparse.ArgumentParser) -> None:
    """``--out-md`` / ``--out-json`` (default ``docs/benchmarks.md`` / ``.json``) and ``--no-write``."""
    p.add_argument("--out-md", type=Path, default=REPO / "docs" / "benchmarks.md")
    p.add_argument("--out-json", type=Path, default=REPO / "docs" / "benchmarks.json")
    p.add_argument("--no-write", action="store_true", help="print the results only")


def command_line(module: str, argv: list[str] | None = None) -> str:
    """``python -m <module> <options>``, the command that ran (``argv``: the options; default this process's)."""
    return f"python -m {module} " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))


def run_footer(load: tuple, elapsed: float, command: str) -> list[str]:
    """The last lines of a section: machine, load average at start and end (``load``), minutes, command."""
    import torch

    return [
        "",
        f"- {machine_line(torch.get_num_threads())}; load average (1, 5, 15 min) at start {load[0]}, "
        f"at end {load[1]}; {elapsed / 60:.1f} min.",
        f"- command: `{command}`",
    ]


# ------------------------------------------------------------------------------------------ peak memory
def run_memory_probe(module: str, probe_args: list) -> float:
    """Run ``python -m <module> --_memory-probe <probe_args>`` in a fresh process from the repository root (in a
    long-running process malloc keeps freed memory, so RSS deltas read ~0); the number it prints last (MiB).

    Raises:
        subprocess.CalledProcessError / subprocess.TimeoutExpired / ValueError: the probe failed.
    """
    cmd = [sys.executable, "-m", module, MEMORY_PROBE, *(str(a) for a in probe_args)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=True, cwd=REPO).stdout
    return float(out.strip().splitlines()[-1])


def memory_probe_args(argv: list[str] | None = None) -> list[str] | None:
    """The five probe arguments when this process was started by :func:`run_memory_probe`, else None."""
    argv = sys.argv if argv is None else argv
    return argv[2:] if len(argv) == 7 and argv[1] == MEMORY_PROBE else None


def main_or_memory_probe(main, probe) -> None:
    """A benchmark module's entry point: ``probe(variant_or_tasks, encoder, size, batch, threads)`` when started by
    :func:`run_memory_probe`, else ``main()``."""
    args = memory_probe_args()
    if args:
        probe(args[0], args[1], *(int(a) for a in args[2:]))
    else:
        main()


def reset_peak_rss() -> bool:
    """Reset this process's peak-RSS counter (``VmHWM``, Linux); False where it cannot be reset."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def peak_rss() -> int:
    """This process's peak resident set size in bytes (``VmHWM``; ``ru_maxrss`` without ``/proc``)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM"))
    except (OSError, StopIteration):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
