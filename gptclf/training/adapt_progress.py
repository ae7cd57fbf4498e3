"""Training progress of ``gptclf adapt``: the loop's events shown with tokens/s and perplexities.

:class:`TokenRate` stands between the training loop and the caller's :class:`TrainProgress`: the
bar keeps its steps and ETA, and gains the running perplexity and the training tokens per second;
each evaluation becomes a line with the validation perplexity. It also times the training steps
alone (the validation passes left out), which is what ``tokens_per_second`` reports.
"""

from __future__ import annotations

import time
from typing import Any

from gptclf.progress import TrainProgress, fmt_metric
from gptclf.tasks.language_model import perplexity


class TokenRate(TrainProgress):
    """Wraps ``inner``; ``planned_tokens`` is every epoch's training tokens together.

    Attributes:
        train_seconds: Seconds of training steps in this process (evaluations left out).
        tokens: Training tokens of the steps this process ran.
    """

    def __init__(self, inner: TrainProgress, planned_tokens: int) -> None:
        self.inner = inner
        self.planned_tokens = planned_tokens
        self.train_seconds = 0.0
        self.tokens = 0.0
        self._mark = 0.0  # when the current training stretch began

    @property
    def tokens_per_second(self) -> float:
        """Training tokens per second of the steps this process ran."""
        return self.tokens / self.train_seconds if self.train_seconds > 0 else 0.0

    # The steps' display is the inner progress's.
    def begin(self, label: str, total: int | None = None, *, unit: str = "", done: int = 0) -> None:
        """Passed on."""
        self.inner.begin(label, total, unit=unit, done=done)

    def advance(self, n: int = 1, **fields: object) -> None:
        """Passed on."""
        self.inner.advance(n, **fields)

    def end(self) -> None:
        """Passed on."""
        self.inner.end()

    def message(self, text: str) -> None:
        """Passed on."""
        self.inner.message(text)

    def start(self, total_steps: int, done_steps: int, epochs: int) -> None:
        """Training starts: the clock of its steps too."""
        super().start(total_steps, done_steps, epochs)
        self._per_step = self.planned_tokens / max(total_steps, 1)
        self._mark = time.monotonic()

    def step(self, epoch: int, step: int, loss: float) -> None:
        """A step is done: the bar moves, with the running perplexity and tokens/s."""
        now = time.monotonic()
        self.train_seconds += now - self._mark
        self.tokens += (step - self._at) * self._per_step
        self._mark = now
        rate = f"{self.tokens_per_second:,.0f}"
        self.advance(
            step - self._at, epoch=f"{epoch}/{self._epochs}", ppl=f"{perplexity(loss):,.2f}", tok_s=rate
        )
        self._at = step

    def evaluated(self, row: dict[str, Any]) -> None:
        """An evaluation finished: a line with the validation perplexity."""
        self.message(
            f"epoch {row['epoch']}/{self._epochs} step {row['step']}/{self._total}: "
            f"train loss {fmt_metric(row.get('train_loss'))}, val loss {fmt_metric(row.get('val_loss'))}, "
            f"val perplexity {_ppl(row.get('val_ppl'))}, {self.tokens_per_second:,.0f} training tokens/s"
        )
        self._mark = (
            time.monotonic()
        )  # the evaluation (and what follows it before the next step) is not training


def _ppl(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.2f}"
