"""Progress bar and TensorBoard hint for bundle runs."""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from collections.abc import Callable, Mapping
from typing import IO

from ignite.engine import Engine, Events
from ignite.handlers import ProgressBar as _IgniteProgressBar

__all__ = ["ProgressBar", "print_tensorboard_hint"]


def _is_terminal(stream: IO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


class ProgressBar:
    """Progress of an engine as a MONAI-style handler (``attach(engine)`` with no more arguments).

    On a terminal it is Ignite's tqdm ``ProgressBar``. Written to a file or a pipe (a CI log, ``nohup``, a
    scheduler's log), a bar would print every refresh as one endless line of carriage returns, so there the
    progress is written as plain lines instead: ``lines_per_epoch`` per epoch (the last at the epoch's end), e.g.
    ``MultiTaskTrainer epoch 2/50 iteration 24/238 (10%) loss=0.4121, 12s``.

    Args:
        output_transform: maps ``engine.state.output`` to the dict of numbers shown beside the bar.
        persist: keep each epoch's finished bar (terminal only).
        stream: where to write; default ``sys.stderr`` when attached (tqdm's default).
        lines_per_epoch: plain lines per epoch when ``stream`` is not a terminal.
    """

    def __init__(
        self,
        output_transform: Callable | None = None,
        persist: bool = False,
        stream: IO | None = None,
        lines_per_epoch: int = 10,
    ) -> None:
        if int(lines_per_epoch) < 1:
            raise ValueError(f"lines_per_epoch must be >= 1, got {lines_per_epoch}")
        self.output_transform = output_transform
        self.persist = bool(persist)
        self.stream = stream
        self.lines_per_epoch = int(lines_per_epoch)

    def attach(self, engine: Engine) -> None:
        stream = self.stream if self.stream is not None else sys.stderr
        if _is_terminal(stream):
            kwargs = {} if self.stream is None else {"file": stream}
            _IgniteProgressBar(persist=self.persist, **kwargs).attach(engine, output_transform=self.output_transform)
            return
        start = [time.monotonic()]
        engine.add_event_handler(Events.EPOCH_STARTED, lambda e: start.__setitem__(0, time.monotonic()))
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._log_line, stream, start)

    def _log_line(self, engine: Engine, stream: IO, start: list[float]) -> None:
        state = engine.state
        total = state.epoch_length
        done = (state.iteration - 1) % total + 1 if total else state.iteration
        every = math.ceil(total / self.lines_per_epoch) if total else 100
        if done % every and done != total:
            return
        text = f"{type(engine).__name__}"
        if (state.max_epochs or 1) > 1:
            text += f" epoch {state.epoch}/{state.max_epochs}"
        text += f" iteration {done}/{total} ({100 * done // total}%)" if total else f" iteration {done}"
        values = self.output_transform(state.output) if self.output_transform is not None else {}
        values = values if isinstance(values, Mapping) else {"output": values}
        text += "".join(f" {k}={float(v):.4g}" for k, v in values.items())
        stream.write(f"{text}, {time.monotonic() - start[0]:.0f}s\n")
        stream.flush()


def print_tensorboard_hint(log_dir: str) -> str:
    """Log (and return) the command that opens the run's TensorBoard logs."""
    cmd = f"tensorboard --logdir {os.path.abspath(log_dir)} --host 127.0.0.1"
    logging.getLogger("monai_mcx").info("TensorBoard logs go to %s; view them with:  %s", log_dir, cmd)
    print(f"[monai_mcx] TensorBoard: {cmd}", flush=True)
    return cmd
