"""The home guard: a test session that writes into the real home folder fails, naming the path."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.home_guard import listing, touched

INNER = '''
import os
from pathlib import Path


def test_inner() -> None:
    assert Path(os.environ["HOME"]) != Path(os.environ["REAL_HOME"])  # the session has its own home
    assert Path(os.environ["GPTCLF_HOME"]).is_relative_to(os.environ["HOME"])
    if os.environ.get("ESCAPE"):
        folder = Path(os.environ["REAL_HOME"]) / ".cache" / "gptclf"
        folder.mkdir(parents=True)
        (folder / "encoder.json").write_text("{}")
'''


def inner_session(tmp_path: Path, escape: bool) -> subprocess.CompletedProcess[str]:
    """A pytest session with the guard, in a child whose real home is ``tmp_path/real``."""
    real = tmp_path / "real"
    (real / ".cache").mkdir(parents=True, exist_ok=True)
    (tmp_path / "test_inner.py").write_text(INNER)
    env = {**os.environ, "HOME": str(real), "REAL_HOME": str(real), "PYTHONPATH": str(REPO),
           "ESCAPE": "1" if escape else ""}  # fmt: skip
    env.pop("GPTCLF_HOME", None)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "tests.home_guard", "-p", "no:cacheprovider",
         "--rootdir", str(tmp_path), str(tmp_path / "test_inner.py")],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120,
    )  # fmt: skip


@pytest.mark.slow
def test_a_session_that_leaves_the_real_home_alone_passes(tmp_path: Path) -> None:
    done = inner_session(tmp_path, escape=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert not (tmp_path / "real" / ".cache" / "gptclf").exists()


@pytest.mark.slow
def test_a_session_that_writes_into_the_real_home_fails_naming_the_path(tmp_path: Path) -> None:
    done = inner_session(tmp_path, escape=True)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "1 passed" in done.stdout  # the test itself passed: the guard failed the run
    assert "touched the real home folder" in done.stdout and ".cache/gptclf" in done.stdout


def test_the_listing_sees_a_file_written_two_levels_down(tmp_path: Path) -> None:
    (tmp_path / ".cache").mkdir()
    before = listing(tmp_path)
    (tmp_path / ".cache" / "gptclf").mkdir()
    (tmp_path / ".cache" / "gptclf" / "x").write_text("x")
    assert touched(before, listing(tmp_path)) == [".cache", ".cache/gptclf", ".cache/gptclf/x"]


def test_this_session_runs_in_a_home_of_its_own() -> None:
    home = Path(os.environ["HOME"])
    assert home.name.startswith("gptclf-test-home-")
    assert Path(os.environ["GPTCLF_HOME"]).is_relative_to(home) or "gptclf_home" in os.environ["GPTCLF_HOME"]
