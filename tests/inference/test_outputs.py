"""Where predict's records go: a file whole or not at all, and never a device or FIFO replaced."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from gptclf.inference.outputs import destination


def test_a_fifo_is_written_into_not_replaced(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    got: list[str] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_text()))
    reader.start()
    with destination(fifo, "jsonl") as out:
        out.write('{"id": 0}\n')
    reader.join(timeout=10)
    assert got == ['{"id": 0}\n'] and stat.S_ISFIFO(fifo.stat().st_mode)


def test_dev_null_stays_a_device() -> None:
    with destination(Path(os.devnull), "jsonl") as out:
        out.write("x\n")
    assert stat.S_ISCHR(os.stat(os.devnull).st_mode)


def test_a_symlinks_file_is_replaced_and_the_link_kept(tmp_path: Path) -> None:
    target = tmp_path / "out.jsonl"
    target.write_text("old\n")
    link = tmp_path / "link.jsonl"
    link.symlink_to(target)
    with destination(link, "jsonl") as out:
        out.write("new\n")
    assert link.is_symlink() and target.read_text() == "new\n"


def test_a_failed_run_leaves_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "out.jsonl"
    target.write_text("old\n")
    with pytest.raises(RuntimeError), destination(target, "jsonl") as out:
        out.write("half")
        raise RuntimeError("stopped")
    assert target.read_text() == "old\n" and sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl"]


def test_a_signal_just_after_the_temporary_file_is_made_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gptclf.inference.outputs as outputs

    def interrupted(*args: object, **kwargs: object) -> int:
        raise KeyboardInterrupt  # SIGINT (or SIGTERM's Terminated) between the file's making and its use

    monkeypatch.setattr(outputs.os, "open", interrupted)
    with pytest.raises(KeyboardInterrupt), destination(tmp_path / "out.jsonl", "jsonl"):
        pass
    assert list(tmp_path.iterdir()) == []
