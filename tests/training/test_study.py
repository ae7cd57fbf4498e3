"""The tune study's journal: a line torn by kill -9 is dropped before Optuna reads it."""

from __future__ import annotations

from pathlib import Path

from gptclf.training.study import cut_torn_line


def test_a_torn_last_line_of_the_journal_is_dropped(tmp_path: Path) -> None:
    journal = tmp_path / "tune.journal"
    journal.write_bytes(b'{"op_code": 0}\n{"op_code": 1}\n{"op_co')
    cut_torn_line(journal)
    assert journal.read_bytes() == b'{"op_code": 0}\n{"op_code": 1}\n'
    cut_torn_line(journal)  # whole lines stay as they are
    assert journal.read_bytes() == b'{"op_code": 0}\n{"op_code": 1}\n'
    cut_torn_line(tmp_path / "absent")
