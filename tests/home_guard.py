"""A pytest plugin: the test run never touches the real home folder.

At the start of the session the real home (``~``) is listed a few levels deep; then ``HOME``,
``XDG_CACHE_HOME``, ``XDG_CONFIG_HOME`` and ``GPTCLF_HOME`` point into a fresh folder of the session,
so neither a test nor a child process it starts finds a cache there, even after a test undid its own
settings. At the end the real home is listed again, and a run in which anything appeared or changed
there fails, naming the paths. ``.ci/run`` runs the suite with ``HOME`` itself a fresh empty folder,
so a test that passes only because of a cache on the developer's machine fails in CI too.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

#: How deep the real home is listed: ``~/.cache/gptclf/gpt2`` changes ``~/.cache/gptclf``'s entries.
DEPTH = 3
#: The variables pointed into the session's own home.
REDIRECTED = ("HOME", "XDG_CACHE_HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME", "GPTCLF_HOME")
_state: dict[str, object] = {}


def listing(root: Path, depth: int = DEPTH) -> dict[str, int]:
    """Every path under ``root`` down to ``depth`` levels, with its modification time (ns)."""
    found: dict[str, int] = {}

    def walk(folder: Path, level: int) -> None:
        try:
            entries = list(os.scandir(folder))
        except OSError:
            return
        for entry in entries:
            try:
                found[str(Path(entry.path).relative_to(root))] = entry.stat(follow_symlinks=False).st_mtime_ns
            except OSError:
                continue
            if level < depth and entry.is_dir(follow_symlinks=False):
                walk(Path(entry.path), level + 1)

    walk(root, 1)
    return found


def touched(before: dict[str, int], after: dict[str, int]) -> list[str]:
    """The paths that appeared, vanished or changed between two listings."""
    return sorted(p for p in before.keys() | after.keys() if before.get(p) != after.get(p))


def pytest_configure(config: pytest.Config) -> None:
    real = Path(os.path.expanduser("~")).resolve()
    session_home = Path(tempfile.mkdtemp(prefix="gptclf-test-home-"))
    _state.update(real=real, before=listing(real), session_home=session_home,
                  saved={name: os.environ.get(name) for name in REDIRECTED})  # fmt: skip
    os.environ["HOME"] = str(session_home)
    os.environ["XDG_CACHE_HOME"] = str(session_home / ".cache")
    os.environ["XDG_CONFIG_HOME"] = str(session_home / ".config")
    os.environ["XDG_DATA_HOME"] = str(session_home / ".local" / "share")
    os.environ["GPTCLF_HOME"] = str(session_home / ".cache" / "gptclf")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if "real" not in _state:
        return
    saved: dict[str, str | None] = _state["saved"]  # type: ignore[assignment]
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    real: Path = _state["real"]  # type: ignore[assignment]
    changed = touched(_state["before"], listing(real))  # type: ignore[arg-type]
    if changed:
        shown = ", ".join(changed[:10]) + (f" and {len(changed) - 10} more" if len(changed) > 10 else "")
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        message = f"the test run touched the real home folder {real}: {shown}"
        if reporter is not None:
            reporter.write_line(f"home guard: FAILED: {message}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
