"""Exceptions that the command line turns into a one-line message and an exit code.

The library raises these instead of printing or exiting, so it can be used from Python too.
"""

from __future__ import annotations


class GptclfError(Exception):
    """Base class: a failure the user can understand from one line."""

    exit_code = 1


class BadInputError(GptclfError, ValueError):
    """Usage or input problem: wrong name, missing file, malformed data. Exit code 2."""

    exit_code = 2


class DownloadError(GptclfError):
    """A host could not be reached, answered with an error, or sent a file that fails checks."""

    exit_code = 1


class GateError(GptclfError):
    """A metric gate (``--min-accuracy``, ``--min-f1``) was not met. Exit code 3."""

    exit_code = 3


class TrainingError(GptclfError):
    """Training stopped on its own terms (for example a NaN loss)."""

    exit_code = 1


class Interrupted(GptclfError):
    """Ctrl-C or SIGTERM during a run; exit code 128 + signal number (130, 143)."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum
