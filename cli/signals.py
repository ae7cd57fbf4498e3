"""SIGINT and SIGTERM while a command runs: both stop it the same way, through the cleanup code.

SIGINT raises ``KeyboardInterrupt`` (Python's own handler) and SIGTERM raises :class:`Terminated`, a
``KeyboardInterrupt`` too, so every ``finally`` and ``except BaseException`` that removes a temporary
file or a work folder runs for both, and :func:`cli.common.handle_errors` prints one line and exits
with 128 + the signal number (130, 143). Verbs that must finish a step first (finetune's training)
install their own handlers for that stretch and put these back afterwards.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program happens to be (``signum`` 15)."""

    signum = signal.SIGTERM


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise Terminated()


def at_run_time() -> None:
    """Install the run-time handlers (from the main thread; elsewhere signals cannot be caught)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, _terminate)


def exit_code(exc: KeyboardInterrupt) -> int:
    """130 for SIGINT (a plain ``KeyboardInterrupt``), 143 for SIGTERM."""
    return 128 + int(getattr(exc, "signum", signal.SIGINT))


def name(exc: KeyboardInterrupt) -> str:
    """``SIGINT`` or ``SIGTERM``."""
    return "SIGTERM" if getattr(exc, "signum", signal.SIGINT) == signal.SIGTERM else "SIGINT"
