"""Progress written to a file or a pipe (issue 24 item 20): plain lines at an interval, no carriage returns."""

from __future__ import annotations

import io
import sys

from ignite.engine import Engine

from monai_mcx.handlers import ProgressBar


def _run(bar: ProgressBar, num_batches: int = 238, epochs: int = 2) -> None:
    engine = Engine(lambda e, batch: {"loss": 0.25 * batch})
    bar.attach(engine)
    engine.run(range(num_batches), max_epochs=epochs)


def test_progress_to_a_non_terminal_is_plain_bounded_lines(monkeypatch):
    """A 238-batch run logged 476 bar states on one line of carriage returns; now about ten lines per epoch."""
    log = io.StringIO()  # a log file or a pipe: not a terminal
    monkeypatch.setattr(sys, "stderr", log)  # where a bar goes by default (the bundle's configs give no stream)
    _run(ProgressBar(output_transform=lambda out: out))
    text = log.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert 2 <= len(lines) <= 2 * 11, lines
    assert lines[-1].startswith("Engine epoch 2/2 iteration 238/238 (100%)"), lines[-1]
    assert "loss=59.25" in lines[-1]


def test_progress_to_an_explicit_stream_and_interval():
    log = io.StringIO()
    _run(ProgressBar(stream=log, lines_per_epoch=3), num_batches=9, epochs=1)
    lines = log.getvalue().splitlines()
    assert [line.split(" (")[0] for line in lines] == [f"Engine iteration {i}/9" for i in (3, 6, 9)]


def test_progress_on_a_terminal_is_a_tqdm_bar():
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    log = Terminal()
    _run(ProgressBar(stream=log), num_batches=5, epochs=1)
    assert "\r" in log.getvalue()  # tqdm's refreshes
