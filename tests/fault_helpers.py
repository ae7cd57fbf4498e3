"""Helpers for fault tests: finetune children to kill at chosen moments, small or read-only disks."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app
from tests.conftest import REPO
from tests.finetune_helpers import TINY_SPEC

TINY = ["--model", TINY_SPEC, "--weights", "random", "--device", "cpu"]
#: A tiny model that learns the keyword data of ``prepared_folder`` within a few epochs.
LEARN = [*TINY, "--trainable", "all", "--lr", "2e-3", "--epochs", "5"]
runner = CliRunner()


def cli(*args: str) -> tuple[int, str, str]:
    """``gptclf ARGS`` in this process: exit code, stdout, stderr."""
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def spawn(*args: str, cwd: Path) -> subprocess.Popen[str]:
    """``gptclf ARGS`` as a child process (a real process to send signals to)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-m", "cli.main", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=cwd,
    )


def wait_for(proc: subprocess.Popen[str], seen: Callable[[], bool], timeout: float = 120.0) -> bool:
    """Poll ``seen()`` every half millisecond until it is true (True) or the child ends (False)."""
    deadline = time.monotonic() + timeout
    while not seen():
        if proc.poll() is not None:
            return seen()
        assert time.monotonic() < deadline, "the moment to watch for never came"
        time.sleep(0.0005)
    return True


def accuracy(run: Path) -> float:
    """Test accuracy through ``gptclf evaluate --json`` (weights and a run.json of two runs score low)."""
    code, stdout, stderr = cli("evaluate", str(run), "--json")
    assert code == 0, stderr
    return float(json.loads(stdout)["accuracy"])


@contextlib.contextmanager
def tmpfs(where: Path, size: str, read_only: bool = False) -> Iterator[Path]:
    """A small (or read-only) tmpfs at ``where``; skips the test where mounting is not allowed."""
    where.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True, check=False
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.decode().strip() or 'not root'})")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True, check=False)


def fill(folder: Path, keep: int = 0) -> Path:
    """Fill the file system of ``folder`` up to ``keep`` free bytes with one file; returns it."""
    filler = folder / "filler.bin"
    with open(filler, "wb") as fh, contextlib.suppress(OSError):
        while True:
            free = os.statvfs(folder).f_bavail * os.statvfs(folder).f_frsize - keep
            if free <= 0:
                break
            fh.write(b"\0" * min(free, 1 << 20))
            fh.flush()
    return filler


def entering_marks(barrier: Callable[[], None], marker: Path) -> Callable[[], None]:
    """``barrier`` that writes ``in`` to ``marker`` while it waits (``out`` once it has passed).

    For tests of waits that must outlast a timeout: the rank that makes the others wait
    (:func:`outlast`) starts counting only once another rank is seen waiting, not after a guessed sleep.
    """

    def wrapped() -> None:
        marker.write_text("in")
        barrier()
        marker.write_text("out")

    return wrapped


def outlast(marker: Path, seconds: float, timeout: float = 120.0) -> None:
    """Wait until ``marker`` says another rank is waiting in its barrier, then ``seconds`` more."""
    deadline = time.monotonic() + timeout
    while not (marker.is_file() and marker.read_text() == "in"):
        assert time.monotonic() < deadline, "the other rank never reached its barrier"
        time.sleep(0.001)
    time.sleep(seconds)  # the other rank is now known to wait this long: longer than the timeout
