"""What a run writes besides its weights: synced before the rename, with the umask's permissions."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from gptclf.rundir import CURVES_FILE, HISTORY_FILE, METRICS_FILE, write_curves, write_history, write_metrics
from tests.test_fileio import assert_synced_then_renamed, record_syncs

ROWS = [
    {"step": 1, "epoch": 0, "train_loss": 0.9, "val_loss": 1.0, "train_acc": 0.5, "val_acc": 0.4},
    {"step": 2, "epoch": 1, "train_loss": 0.5, "val_loss": 0.7, "train_acc": 0.8, "val_acc": 0.7},
]


def test_curves_png_is_synced_before_its_rename(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("matplotlib")
    events = record_syncs(monkeypatch)
    assert write_curves(tmp_path, ROWS, steps_per_epoch=2)
    assert_synced_then_renamed(events, CURVES_FILE, tmp_path)
    assert (tmp_path / CURVES_FILE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == [CURVES_FILE]  # no temporary left


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_history_and_curves_get_the_umask_permissions(tmp_path: Path, umask: int) -> None:
    pytest.importorskip("matplotlib")
    before = os.umask(umask)
    try:
        write_history(tmp_path, ROWS)
        write_curves(tmp_path, ROWS, steps_per_epoch=2)
    finally:
        os.umask(before)
    for name in (HISTORY_FILE, CURVES_FILE):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask, name


def test_metrics_json_is_written_whole_and_synced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """metrics.json goes through the run directory's writer like the other files: synced, renamed."""
    events = record_syncs(monkeypatch)
    write_metrics(tmp_path, {"test": {"accuracy": 1.0}, "best": {"step": 2}})
    assert_synced_then_renamed(events, METRICS_FILE, tmp_path)
    assert json.loads((tmp_path / METRICS_FILE).read_text()) == {
        "test": {"accuracy": 1.0},
        "best": {"step": 2},
    }
    assert sorted(p.name for p in tmp_path.iterdir()) == [METRICS_FILE]


def test_history_gains_the_micro_f1_column_only_when_rows_have_it() -> None:
    from gptclf.rundir import HISTORY_COLUMNS, history_csv

    plain = [{"epoch": 1, "step": 2, "val_f1": 0.5}]
    assert history_csv(plain).splitlines()[0] == ",".join(HISTORY_COLUMNS)  # single-label: as before
    multi = [{**plain[0], "val_micro_f1": 0.75}]
    header, row = history_csv(multi).splitlines()
    assert header == ",".join((*HISTORY_COLUMNS, "val_micro_f1")) and row.endswith(",0.75")
