"""How ``prepare`` shows its long steps (reading, counting tokens, writing) on the one progress
mechanism (:mod:`gptclf.progress`): :func:`counted` counts the items of a step with their rate,
and :class:`LongSteps` passes a step on only once it has lasted a moment, so a run over a small
table shows its summary (or its one-line error) alone, as it always did, while a long one says
what it is doing: rows read with rows/s and an ETA, then the tokens counted and the rows written.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from gptclf.progress import Progress

#: Seconds a step runs before it is shown.
SHOW_AFTER = 2.0
#: Items between two progress updates.
EVERY = 8192
T = TypeVar("T")


def counted(
    items: Iterable[T],
    progress: Progress,
    label: str,
    total: int | None,
    *,
    unit: str = "rows",
    size: Callable[[T], int] | None = None,
) -> Iterator[T]:
    """``items`` as they come, counted on ``progress`` as a step ``label`` of ``total`` (None:
    unknown) units, with their rate; the step ends with the items (or an error).

    Args:
        items: What the step goes through.
        progress: Where the step is shown.
        label: The step's name (``reading data.csv``).
        total: The units the step will count, where known (for an ETA).
        unit: What is counted (``rows``, ``texts``).
        size: The units in one item (batches); None: one each.
    """
    progress.begin(label, total=total, unit=unit)
    started, done, shown = time.monotonic(), 0, 0
    try:
        for item in items:
            done += 1 if size is None else size(item)
            if done - shown >= EVERY:
                rate = done / max(time.monotonic() - started, 1e-9)
                progress.advance(done - shown, rate=f"{rate:,.0f} {unit}/s")
                shown = done
            yield item
        progress.advance(done - shown)
    finally:
        progress.end()


class LongSteps(Progress):
    """Passes each step on to ``inner`` once it has run ``after`` seconds (checked as it advances);
    a shorter step is not shown at all. Messages pass at once.
    """

    def __init__(self, inner: Progress, after: float | None = None) -> None:
        self.inner = inner
        self.after = SHOW_AFTER if after is None else after
        self._step: dict[str, Any] | None = None
        self._shown = False

    def begin(self, label: str, total: int | None = None, *, unit: str = "", done: int = 0) -> None:
        self.end()
        self._step = {"label": label, "total": total, "unit": unit, "done": done, "at": time.monotonic()}
        self._shown = False
        self._show_if_long()

    def advance(self, n: int = 1, **fields: object) -> None:
        if self._shown:
            self.inner.advance(n, **fields)
        elif self._step is not None:
            self._step["done"] += n
            if self._show_if_long():
                self.inner.advance(0, **fields)

    def end(self) -> None:
        if self._shown:
            self.inner.end()
        self._step, self._shown = None, False

    def message(self, text: str) -> None:
        self.inner.message(text)

    def _show_if_long(self) -> bool:
        """Begin the step on ``inner`` if it has run long enough; whether it is shown now."""
        step = self._step
        if step is None or time.monotonic() - step["at"] < self.after:
            return False
        # Begun from 0 and advanced at once: a begin with units done reads as a resumed step.
        self.inner.begin(step["label"], total=step["total"], unit=step["unit"])
        self.inner.advance(step["done"])
        self._shown = True
        return True
