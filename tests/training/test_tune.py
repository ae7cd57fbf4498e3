"""The tune core's small rules: durations, the torn journal line."""

from __future__ import annotations

from pathlib import Path

import pytest

from gptclf.errors import BadInputError
from gptclf.training.search_space import DEFAULT_SPACE, Param
from gptclf.training.settings import FinetuneSettings
from gptclf.training.tune import _cut_torn_line, base_cut, parse_duration


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


def test_the_base_cut_is_the_lowest_of_several_cuts_the_space_can_ask_for() -> None:
    fixed = FinetuneSettings()
    assert base_cut(DEFAULT_SPACE, fixed, 12) == 10  # head 12, last-block 11, last-blocks 2: 10
    two = (Param("trainable", choices=("head", "last-block", "lora", "all")),)
    assert base_cut(two, fixed, 12) == 11  # lora and all have no cache
    one = (Param("trainable", choices=("head", "lora")),)
    assert base_cut(one, fixed, 12) == 0  # one cut: nothing to share
    assert base_cut((), fixed, 12) == 0  # --trainable fixed: one cut
    assert base_cut((Param("trainable", choices=("last-blocks 4", "head")),), fixed, 2) == 0  # 4 > 2 blocks


def test_trials_are_handed_no_test_text(tmp_path: Path) -> None:
    """The search never looks at the test split: a trial's runner holds train and validation as
    prepared, and an empty test split."""
    from gptclf.data.prepared import read_prepared
    from gptclf.training.trials import TRIAL_SPLITS, TrialRunner
    from tests.finetune_helpers import prepared_folder

    prepared = read_prepared(prepared_folder(tmp_path, ["spam", "ham"], n=60))
    assert len(prepared.splits["test"]) > 0
    runner = TrialRunner(prepared, ["spam", "ham"], None, None, None, None, None, tmp_path, tmp_path)  # type: ignore[arg-type]
    assert TRIAL_SPLITS == ("train", "validation") and len(runner.splits["test"]) == 0
    for name in TRIAL_SPLITS:
        assert runner.splits[name].equals(prepared.splits[name])
