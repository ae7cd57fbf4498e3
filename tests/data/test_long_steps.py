"""How prepare shows its long steps (gptclf.data.long_steps): counted items with their rate, and a
step passed on only once it has run a while."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from gptclf.data.long_steps import LongSteps, counted
from gptclf.progress import Progress


class Recorder(Progress):
    """Keeps every call, to compare."""

    def __init__(self) -> None:
        self.calls: list[tuple[object, ...]] = []

    def begin(self, label: str, total: int | None = None, *, unit: str = "", done: int = 0) -> None:
        self.calls.append(("begin", label, total, unit, done))

    def advance(self, n: int = 1, **fields: object) -> None:
        self.calls.append(("advance", n, *sorted(fields)))

    def end(self) -> None:
        self.calls.append(("end",))


def test_counted_counts_every_item_once_with_its_rate() -> None:
    shown = Recorder()
    assert list(counted(range(20_000), shown, "reading x", 20_000)) == list(range(20_000))
    assert shown.calls[0] == ("begin", "reading x", 20_000, "rows", 0)
    advances = [c for c in shown.calls if c[0] == "advance"]
    assert sum(c[1] for c in advances) == 20_000  # type: ignore[misc]
    assert advances[0][2:] == ("rate",) and shown.calls[-1] == ("end",)


def test_counted_sizes_batches_and_ends_the_step_on_an_error() -> None:
    shown = Recorder()
    batches = counted([[1, 2, 3], [4]], shown, "counting", 4, unit="texts", size=len)
    assert list(batches) == [[1, 2, 3], [4]]
    assert sum(c[1] for c in shown.calls if c[0] == "advance") == 4  # type: ignore[misc]

    def failing() -> Iterator[int]:
        yield 1
        raise ValueError("bad row")

    shown = Recorder()
    with pytest.raises(ValueError, match="bad row"):
        list(counted(failing(), shown, "reading", None))
    assert shown.calls[-1] == ("end",)


def test_a_short_step_is_not_shown_a_long_one_is_from_its_start() -> None:
    inner = Recorder()
    quiet = LongSteps(inner, after=3600)
    quiet.begin("reading", 10, unit="rows")
    quiet.advance(10)
    quiet.end()
    assert inner.calls == []
    shown = LongSteps(inner, after=0)
    shown.begin("reading", 10, unit="rows")
    shown.advance(4, rate="1 rows/s")
    shown.end()
    # Begun from 0 (a begin with units done would read as a resumed step), then advanced.
    assert inner.calls == [
        ("begin", "reading", 10, "rows", 0),
        ("advance", 0),
        ("advance", 4, "rate"),
        ("end",),
    ]
