"""The tune core's small rules: durations, the torn journal line."""

from __future__ import annotations

from pathlib import Path

import pytest

from gptclf.errors import BadInputError
from gptclf.training.tune import _cut_torn_line, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"), [("90", 90), ("90s", 90), ("30m", 1800), ("1.5h", 5400), (" 2H ", 7200)]
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(("text", "message"), [
    ("soon", "is not a duration"), ("10m30s", "is not a duration"), ("-5", "is not a duration"),
    ("0", "cannot fit one trial"), ("9s", "cannot fit one trial"),
])  # fmt: skip
def test_bad_durations(text: str, message: str) -> None:
    with pytest.raises(BadInputError, match=message):
        parse_duration(text)


def test_a_torn_last_line_of_the_journal_is_dropped(tmp_path: Path) -> None:
    journal = tmp_path / "tune.journal"
    journal.write_bytes(b'{"op_code": 0}\n{"op_code": 1}\n{"op_co')
    _cut_torn_line(journal)
    assert journal.read_bytes() == b'{"op_code": 0}\n{"op_code": 1}\n'
    _cut_torn_line(journal)  # whole lines stay as they are
    assert journal.read_bytes() == b'{"op_code": 0}\n{"op_code": 1}\n'
    _cut_torn_line(tmp_path / "absent")
