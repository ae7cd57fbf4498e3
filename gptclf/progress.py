"""Progress of long steps for people: a rich bar on a terminal, plain periodic lines otherwise.

One mechanism serves every long step: downloads, the cache build, training, evaluations and
predictions. Library code reports through :class:`Progress` (whose methods do nothing, so library
calls stay silent); training reports through :class:`TrainProgress`, whose events map onto the
same four methods; the command line passes a :class:`ConsoleProgress` on stderr, which draws them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.progress import Progress as RichProgress

#: Seconds between plain progress lines when stderr is not a terminal.
PLAIN_INTERVAL = 30.0
#: The unit of downloads: the bar shows sizes and speed, plain lines also come at every 10%.
BYTES = "bytes"
#: The label training's steps are shown under.
TRAINING = "training"


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
    """Receives training events and maps them onto :class:`Progress`'s steps.

    ``start`` begins a step of ``total_steps`` optimizer steps, ``step`` advances it (with the
    epoch and the running loss as fields), ``evaluated`` shows the validation accuracy and says
    the history row, ``close`` ends it. A subclass may override any event (tests do, to act at
    a given step); the base class itself stays silent.
    """

    _epochs = 0
    _total = 0
    _at = 0  # the last step reported, so that advance() gets the steps since

    def start(self, total_steps: int, done_steps: int, epochs: int) -> None:
        """Training starts (or resumes at ``done_steps``) with ``total_steps`` optimizer steps."""
        self._epochs, self._total, self._at = epochs, total_steps, done_steps
        self.begin(TRAINING, total_steps, unit="steps", done=done_steps)

    def step(self, epoch: int, step: int, loss: float) -> None:
        """Optimizer step ``step`` (1-based, global) of ``epoch`` (1-based) is done."""
        self.advance(step - self._at, epoch=f"{epoch}/{self._epochs}", loss=loss)
        self._at = step

    def evaluated(self, row: dict[str, Any]) -> None:
        """An evaluation finished; ``row`` is the history row."""
        self.advance(0, val_acc=row.get("val_acc"))
        self.message(
            f"epoch {row['epoch']}/{self._epochs} step {row['step']}/{self._total}: "
            f"train loss {fmt_metric(row.get('train_loss'))}, val loss {fmt_metric(row.get('val_loss'))}, "
            f"val acc {fmt_metric(row.get('val_acc'))}, val F1 {fmt_metric(row.get('val_f1'))}"
            + (f", val micro-F1 {fmt_metric(row['val_micro_f1'])}" if "val_micro_f1" in row else "")
        )

    def close(self) -> None:
        """Training ended (normally or not)."""
        self.end()


def fmt_metric(value: float | None) -> str:
    """A metric for people: four decimals, ``n/a`` where there is none (no validation set)."""
    return "n/a" if value is None else f"{value:.4f}"


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def human_bytes(n: float) -> str:
    """Bytes in decimal units, as rich's DownloadColumn shows them."""
    for unit in ("B", "kB", "MB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


@dataclass
class _Step:
    """The step being shown, and when and where its last plain line was."""

    label: str
    total: int | None
    unit: str
    done: int
    started: float
    fields: dict[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.first = self.done  # for the rate: units done before this step began do not count
        self.last_line = self.started
        self.last_tenth = self.tenth()

    def tenth(self) -> int:
        return 10 * self.done // self.total if self.total else 0

    def eta(self, now: float) -> str:
        moved = self.done - self.first
        if moved <= 0 or self.total is None:
            return "-"
        return _duration((now - self.started) / moved * max(self.total - self.done, 0))


class ConsoleProgress(TrainProgress):
    """Progress on ``console`` (stderr): a live bar when it is a terminal, else plain lines.

    Plain lines come when a step begins, then at most every ``interval`` seconds (and at every
    10% of a download), so that logs and CI output stay short. Messages print above a live bar.
    """

    def __init__(self, console: Console, interval: float = PLAIN_INTERVAL) -> None:
        self.console = console
        self.interval = interval
        self.live = console.is_terminal
        self._step: _Step | None = None
        self._bar: RichProgress | None = None
        self._task: Any = None

    def begin(self, label: str, total: int | None = None, *, unit: str = "", done: int = 0) -> None:
        self.end()  # one step at a time: a retry begins again
        self._step = _Step(label, total, unit, done, time.monotonic())
        if self.live:
            self._bar = _rich_bar(self.console, unit)
            self._bar.start()
            self._task = self._bar.add_task(label, total=total, completed=done, info="")
        else:
            self.message(_begin_line(self._step))

    def advance(self, n: int = 1, **fields: object) -> None:
        step = self._step
        if step is None:
            return
        step.done += n
        step.fields.update(fields)
        if self._bar is not None:
            self._bar.update(self._task, advance=n, info=_fields_text(step.fields))
            return
        now, tenth = time.monotonic(), step.tenth()
        if now - step.last_line >= self.interval or (step.unit == BYTES and tenth > step.last_tenth):
            step.last_line, step.last_tenth = now, tenth
            self.message(_progress_line(step, now))

    def end(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
        self._step = None

    def message(self, text: str) -> None:
        # markup off: paths and URLs may hold [brackets]; soft wrap: log lines stay whole
        self.console.print(text, markup=False, highlight=False, soft_wrap=True)


def _rich_bar(console: Console, unit: str) -> RichProgress:
    """A transient bar: what the step leaves behind is said in messages, not in a frozen bar."""
    if unit == BYTES:
        counts: tuple[Any, ...] = (DownloadColumn(), TransferSpeedColumn())
    else:
        counts = (MofNCompleteColumn(), TextColumn(unit), TextColumn("{task.fields[info]}"))
    columns = (TextColumn("{task.description}"), BarColumn(), *counts, TimeRemainingColumn())
    return RichProgress(*columns, console=console, transient=True)


def _fields_text(fields: dict[str, object]) -> str:
    """``epoch 1/5, loss 0.3100, val acc n/a``: numbers as metrics, names with spaces."""
    shown = []
    for name, value in fields.items():
        text = fmt_metric(value) if value is None or isinstance(value, float) else str(value)
        shown.append(f"{name.replace('_', ' ')} {text}")
    return ", ".join(shown)


def _begin_line(step: _Step) -> str:
    """``downloading encoder.json (1.0 MB)``, ``resuming ... at ...``, ``caching ... (1,045 texts)``."""
    if step.unit == BYTES:
        size = human_bytes(step.total) if step.total is not None else "size unknown"
        if step.done:
            return f"resuming {step.label} at {human_bytes(step.done)} ({size})"
        return f"downloading {step.label} ({size})"
    if step.total is None:
        return step.label
    size = f"{step.total:,} {step.unit}".rstrip()
    return f"{step.label}: resuming at {step.done:,} of {size}" if step.done else f"{step.label} ({size})"


def _progress_line(step: _Step, now: float) -> str:
    """``encoder.json: 50% 0.5 MB at 2.0 MB/s``, or ``training: 12/50 steps, loss 0.3100 (...)``."""
    if step.unit == BYTES:
        rate = (step.done - step.first) / max(now - step.started, 1e-9)
        share = f"{100 * step.done // step.total}% " if step.total else ""
        return f"{step.label}: {share}{human_bytes(step.done)} at {human_bytes(rate)}/s"
    count = f"{step.done:,}/{step.total:,}" if step.total is not None else f"{step.done:,}"
    parts = [f"{count} {step.unit}".rstrip(), _fields_text(step.fields)]
    timing = f"{_duration(now - step.started)} elapsed, ETA {step.eta(now)}"
    return f"{step.label}: {', '.join(part for part in parts if part)} ({timing})"
