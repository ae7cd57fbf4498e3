"""Exceptions that the command line turns into a one-line message and an exit code.

The library raises these instead of printing or exiting, so it can be used from Python too.
"""

from __future__ import annotations

import errno


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


class CacheSpaceError(BadInputError):
    """The frozen-trunk cache cannot be placed: the part beyond ``--cache-memory`` does not fit
    on the disk it spills to (checked before any work). Unlike other bad settings of one ``tune``
    trial, it ends the search: every trial that caches would fail alike."""


class DiskFullError(GptclfError):
    """The disk filled (or a quota was reached) while writing; temporary files were removed."""

    exit_code = 1


#: errno values that mean "this place cannot be written", as opposed to "the disk is full".
_UNWRITABLE = {errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EISDIR, errno.ENOENT}
_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def write_error(exc: OSError, folder: object, needed: int | None = None) -> GptclfError:
    """The one-line error for an ``OSError`` raised while writing into ``folder``.

    Args:
        exc: What the write raised.
        folder: The folder being written (named in the message).
        needed: Bytes the write needed, when known (named in the message).

    Returns:
        :class:`DiskFullError` (exit 1) for a full disk or quota, :class:`BadInputError` (exit 2)
        for a place that cannot be written (read-only, no permission, not a folder), else a plain
        :class:`GptclfError` (exit 1). Raise it ``from None``: the message says all there is.
    """
    reason = exc.strerror or type(exc).__name__
    if exc.errno in _FULL:
        size = f" ({needed:,} bytes needed)" if needed else ""
        return DiskFullError(
            f"no space left on the disk of {folder}{size}: free some space or write elsewhere"
        )
    if exc.errno in _UNWRITABLE:
        return BadInputError(f"cannot write into {folder} ({reason}): choose a folder you can write to")
    return GptclfError(f"writing into {folder} failed ({reason})")
