"""tune's settings: ``--timeout`` durations."""

from __future__ import annotations

import pytest

from gptclf.errors import BadInputError
from gptclf.training.tune_settings import parse_duration


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
