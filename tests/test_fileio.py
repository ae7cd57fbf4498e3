"""Atomic writes: permissions from the umask, fsync before the rename, and leftovers a killed
writer leaves behind, told apart from a live writer's files."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from gptclf.fileio import (
    atomic_open,
    atomic_path,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    remove_stale_temp_files,
    temp_file_pid,
    temp_path_for,
)
from gptclf.rundir import save_weights
from tests.conftest import REPO

TEMP_NAME = re.compile(r"^\.model\.safetensors\.gptclf-(\d+)-[0-9a-f]+\.tmp$")


@pytest.fixture(params=[0o022, 0o077, 0o002], ids=lambda m: f"umask={m:03o}")
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    """Run the test under this umask, restored afterwards."""
    before = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(before)


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def _with_atomic_path(path: Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(b"written by path")


WRITERS: dict[str, Callable[[Path], None]] = {
    "atomic_write_text": lambda p: atomic_write_text(p, "text"),
    "atomic_write_bytes": lambda p: atomic_write_bytes(p, b"bytes"),
    "atomic_write_json": lambda p: atomic_write_json(p, {"a": 1}),
    "atomic_path": _with_atomic_path,
    "save_weights": lambda p: save_weights(p, {"w": torch.zeros(3)}),
}


@pytest.mark.parametrize("writer", WRITERS)
def test_written_files_get_the_umask_permissions_not_0600(tmp_path: Path, umask: int, writer: str) -> None:
    target = tmp_path / "model.safetensors"
    WRITERS[writer](target)
    assert mode(target) == 0o666 & ~umask
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]  # no temporary left


def test_a_temporary_file_already_has_the_final_permissions(tmp_path: Path, umask: int) -> None:
    tmp = temp_path_for(tmp_path / "x.bin")
    assert mode(tmp) == 0o666 & ~umask


def record_syncs(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int, str]]:
    """Record every fsync (the inode synced) and rename (the inode renamed, and the new name)."""
    events: list[tuple[str, int, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append(("fsync", os.fstat(fd).st_ino, ""))
        real_fsync(fd)

    def replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        events.append(("replace", os.stat(src).st_ino, Path(dst).name))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return events


def assert_synced_then_renamed(events: list[tuple[str, int, str]], name: str, folder: Path) -> None:
    """The file was synced before its rename to ``name``, and the folder after it."""
    renames = [i for i, e in enumerate(events) if e[0] == "replace" and e[2] == name]
    assert len(renames) == 1, events
    at = renames[0]
    inode = events[at][1]
    assert ("fsync", inode, "") in events[:at], "renamed into place without an fsync of the data"
    if hasattr(os, "O_DIRECTORY"):
        assert ("fsync", folder.stat().st_ino, "") in events[at + 1 :], "the rename itself was not synced"


def test_weights_are_synced_before_the_rename(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    events = record_syncs(monkeypatch)
    save_weights(tmp_path / "model.safetensors", {"w": torch.ones(4)})
    assert_synced_then_renamed(events, "model.safetensors", tmp_path)


def test_atomic_open_syncs_the_file_and_the_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    events = record_syncs(monkeypatch)
    atomic_write_text(tmp_path / "run.json", "{}")
    assert_synced_then_renamed(events, "run.json", tmp_path)


def test_a_failed_write_leaves_no_temporary_and_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "model.safetensors"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("boom")
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"] and target.read_bytes() == b"old"


def test_temporary_names_carry_the_writer_pid(tmp_path: Path) -> None:
    tmp = temp_path_for(tmp_path / "model.safetensors")
    match = TEMP_NAME.match(tmp.name)
    assert match and int(match[1]) == os.getpid() == temp_file_pid(tmp)
    assert temp_file_pid(tmp_path / ".model.safetensors.abc123.tmp") is None  # not ours (mkstemp's)
    assert temp_file_pid(tmp_path / "notes.txt") is None


#: A child that starts writing ``argv[1]`` the way gptclf does and is killed half-way.
CHILD = """
import sys
from pathlib import Path

import torch

import gptclf.rundir.files as files
from gptclf.fileio import atomic_open

target = Path(sys.argv[1])
if sys.argv[2] == "atomic_open":
    with atomic_open(target, "wb", encoding=None) as fh:
        fh.write(b"x" * 4096)
        fh.flush()
        sys.stdin.read()  # hold the half-written file open until killed
else:
    def half_save(state, path, metadata=None):
        # as safetensors does: its own temporary beside the target, renamed at the end
        (Path(path).parent / ".tmpAbC123").write_bytes(b"half a safetensors file")
        sys.stdin.read()

    files.save_file = half_save
    files.save_weights(target, {"w": torch.zeros(2)})
"""


def wait_for_temp(folder: Path, child: subprocess.Popen[bytes]) -> Path:
    """The child's temporary file, as soon as it appears (polling, not a guessed sleep)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        found = [p for p in folder.iterdir() if temp_file_pid(p) == child.pid]
        if found:
            return found[0]
        assert child.poll() is None, child.stderr.read() if child.stderr else ""
        time.sleep(0.01)
    raise AssertionError("the child never started writing")


@pytest.mark.parametrize("writer", ["atomic_open", "save_weights"])
@pytest.mark.slow
def test_a_killed_writers_leftover_is_removed_and_a_live_ones_kept(tmp_path: Path, writer: str) -> None:
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "notes.txt").write_text("the user's file")
    (folder / ".model.safetensors.abc123.tmp").write_text("not ours: no pid in the name")
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(folder / "model.safetensors"), writer],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        tmp = wait_for_temp(folder, child)
        assert remove_stale_temp_files(folder) == [] and tmp.exists()  # its writer is alive
        child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=60) == -signal.SIGKILL
    finally:
        child.kill()
        child.wait()
    assert tmp.exists()  # kill -9 runs no cleanup: this is the debris
    assert remove_stale_temp_files(folder) == [tmp]
    names = sorted(p.name for p in folder.iterdir())
    assert names == [".model.safetensors.abc123.tmp", "notes.txt"]  # never model.safetensors
    assert remove_stale_temp_files(folder) == []


def test_this_process_files_are_never_removed(tmp_path: Path) -> None:
    with atomic_open(tmp_path / "run.json") as fh:
        fh.write("{}")
        assert remove_stale_temp_files(tmp_path) == []
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]
    assert remove_stale_temp_files(tmp_path / "missing") == []


def test_pid_less_leftovers_of_older_versions_go_only_when_asked(tmp_path: Path) -> None:
    old = [".model.safetensors.k2j4_x9a.tmp", ".run.json.ab12cd.tmp", ".tmpFLD6HG"]
    keep = [".hidden", "notes.tmp", ".config.toml"]
    for name in old + keep:
        (tmp_path / name).write_text("x")
    assert remove_stale_temp_files(tmp_path) == []  # whose they are is unknown: kept by default
    removed = remove_stale_temp_files(tmp_path, legacy=True)
    assert sorted(p.name for p in removed) == sorted(old)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(keep)
