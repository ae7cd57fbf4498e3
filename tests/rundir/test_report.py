"""What a run writes besides its weights: synced before the rename, with the umask's permissions."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

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


def test_curves_draw_the_validation_micro_f1_of_a_multi_label_run(tmp_path: Path) -> None:
    from gptclf.rundir.report import _plot_micro_f1

    class Axes:
        def __init__(self) -> None:
            self.lines: list[tuple[Any, ...]] = []
            self.title = ""

        def plot(self, xs: Any, ys: Any, *args: Any, label: str = "", **kwargs: Any) -> None:
            self.lines.append((list(xs), list(ys), label))

        def set_title(self, title: str) -> None:
            self.title = title

    ax = Axes()
    rows = [
        {"step": 1, "val_micro_f1": 0.5},
        {"step": 2, "val_micro_f1": None},
        {"step": 3, "val_micro_f1": 0.8},
    ]
    _plot_micro_f1(ax, [1, 2, 3], rows)
    assert ax.lines == [([1, 3], [0.5, 0.8], "Validation micro-F1")] and "micro-F1" in ax.title
    empty = Axes()
    _plot_micro_f1(empty, [1], [{"step": 1, "val_acc": 0.5}])
    assert empty.lines == []  # a single-label run's picture is as before
    pytest.importorskip("matplotlib")
    base = {"train_loss": 1.0, "val_loss": 0.9, "train_acc": 0.5, "val_acc": 0.6}
    full = [{**base, **rows[0]}, {**base, **rows[2]}]
    assert write_curves(tmp_path, full, 1.0) and (tmp_path / "curves.png").stat().st_size > 0
