"""Training progress for people: a rich bar on a terminal, plain periodic lines otherwise.

:class:`TrainProgress` ignores every event, so library calls stay silent; the command line passes
a :class:`ConsoleProgress` on stderr.
"""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
from rich.progress import Progress as RichProgress

#: Seconds between plain progress lines when stderr is not a terminal (evaluations always print).
PLAIN_INTERVAL = 30.0


class Progress:
    """Receives the progress of long steps (downloads, cache builds, evaluations, training).

    Every method does nothing here, so library calls stay silent; the command line passes a
    subclass that draws a bar on a terminal and prints plain lines otherwise. One step runs at a
    time: :meth:`begin`, any number of :meth:`advance`, :meth:`end`.
    """

    def begin(self, label: str, total: int | None = None, *, unit: str = "", done: int = 0) -> None:
        """A step named ``label`` starts: ``total`` units of ``unit`` if known, ``done`` already."""

    def advance(self, n: int = 1, **fields: object) -> None:
        """``n`` more units are done; ``fields`` (e.g. ``loss=0.31``) are shown beside the bar."""

    def end(self) -> None:
        """The step ended (normally or not)."""

    def message(self, text: str) -> None:
        """Something worth telling a person."""


class TrainProgress(Progress):
    """Receives training events. This base class ignores them."""

    def start(self, total_steps: int, done_steps: int, epochs: int) -> None:
        """Training starts (or resumes at ``done_steps``) with ``total_steps`` optimizer steps."""

    def step(self, epoch: int, step: int, loss: float) -> None:
        """Optimizer step ``step`` (1-based, global) of ``epoch`` (1-based) is done."""

    def evaluated(self, row: dict[str, Any]) -> None:
        """An evaluation finished; ``row`` is the history row."""

    def message(self, text: str) -> None:
        """Something worth telling a person."""

    def close(self) -> None:
        """Training ended (normally or not)."""


def _fmt(value: float | None, spec: str = ".4f") -> str:
    return "-" if value is None else format(value, spec)


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class ConsoleProgress(TrainProgress):
    """Progress on ``console`` (stderr): a live bar with epoch, step, loss, validation accuracy and
    ETA when it is a terminal, else a plain line at each evaluation and every ``interval`` seconds.
    """

    def __init__(self, console: Console, interval: float = PLAIN_INTERVAL) -> None:
        self.console = console
        self.interval = interval
        self.live = console.is_terminal
        self._bar: RichProgress | None = None
        self._task: Any = None
        self._epochs = 0
        self._total = 0
        self._started = 0.0
        self._first_step = 0
        self._last_line = 0.0
        self._loss: float | None = None
        self._val_acc: float | None = None
        self._epoch = 1
        self._step = 0

    def start(self, total_steps: int, done_steps: int, epochs: int) -> None:
        self._epochs, self._total, self._first_step, self._step = epochs, total_steps, done_steps, done_steps
        self._started = self._last_line = time.monotonic()
        if self.live:
            self._bar = RichProgress(
                TextColumn("epoch {task.fields[epoch]}/{task.fields[epochs]}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}  val acc {task.fields[val_acc]}"),
                TimeRemainingColumn(),
                console=self.console,
                transient=False,
            )
            self._bar.start()
            self._task = self._bar.add_task(
                "train",
                total=total_steps,
                completed=done_steps,
                epoch=1,
                epochs=epochs,
                loss="-",
                val_acc="-",
            )

    def step(self, epoch: int, step: int, loss: float) -> None:
        self._epoch, self._step, self._loss = epoch, step, loss
        if self._bar is not None:
            self._bar.update(self._task, completed=step, epoch=epoch, loss=_fmt(loss))
        elif time.monotonic() - self._last_line >= self.interval:
            self._line()

    def evaluated(self, row: dict[str, Any]) -> None:
        self._val_acc = row.get("val_acc")
        if self._bar is not None:
            self._bar.update(self._task, val_acc=_fmt(self._val_acc))
            self._bar.console.print(self._row_text(row))
        else:
            self._line(row)

    def message(self, text: str) -> None:
        self.console.print(text, markup=False, highlight=False, soft_wrap=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def _eta(self) -> str:
        done = self._step - self._first_step
        if done <= 0:
            return "-"
        rate = (time.monotonic() - self._started) / done
        return _duration(rate * (self._total - self._step))

    def _row_text(self, row: dict[str, Any]) -> str:
        return (
            f"epoch {row['epoch']}/{self._epochs} step {row['step']}/{self._total}: "
            f"train loss {_fmt(row.get('train_loss'))}, val loss {_fmt(row.get('val_loss'))}, "
            f"val acc {_fmt(row.get('val_acc'))}, val F1 {_fmt(row.get('val_f1'))}"
        )

    def _line(self, row: dict[str, Any] | None = None) -> None:
        self._last_line = time.monotonic()
        if row is not None:
            text = self._row_text(row)
        else:
            text = (
                f"epoch {self._epoch}/{self._epochs} step {self._step}/{self._total}: loss {_fmt(self._loss)}"
            )
        elapsed = _duration(time.monotonic() - self._started)
        line = f"{text} ({elapsed} elapsed, ETA {self._eta()})"
        self.console.print(line, markup=False, highlight=False, soft_wrap=True)
