"""Progress bar and TensorBoard hint for bundle runs."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

from ignite.engine import Engine
from ignite.handlers import ProgressBar as _IgniteProgressBar

__all__ = ["ProgressBar", "print_tensorboard_hint"]


class ProgressBar:
    """Ignite's tqdm ``ProgressBar`` as a MONAI-style handler (``attach(engine)`` with no more arguments).

    Args:
        output_transform: maps ``engine.state.output`` to the dict of numbers shown beside the bar.
        persist: keep each epoch's finished bar.
    """

    def __init__(self, output_transform: Callable | None = None, persist: bool = False) -> None:
        self.output_transform = output_transform
        self.bar = _IgniteProgressBar(persist=persist)

    def attach(self, engine: Engine) -> None:
        self.bar.attach(engine, output_transform=self.output_transform)


def print_tensorboard_hint(log_dir: str) -> str:
    """Log (and return) the command that opens the run's TensorBoard logs."""
    cmd = f"tensorboard --logdir {os.path.abspath(log_dir)} --host 127.0.0.1"
    logging.getLogger("monai_mcx").info("TensorBoard logs go to %s; view them with:  %s", log_dir, cmd)
    print(f"[monai_mcx] TensorBoard: {cmd}", flush=True)
    return cmd
