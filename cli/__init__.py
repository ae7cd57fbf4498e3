"""gptclf's command line: one thin Typer command per verb over the :mod:`gptclf` library.

The first thing the program does, before it imports anything heavy (torch alone takes seconds), is to
take over SIGINT and SIGTERM: a signal that arrives while the program is still starting up ends it at
once with one line and the conventional exit code (130, 143), not a ``KeyboardInterrupt`` traceback
out of ``import torch``. Nothing has been written then. :func:`cli.signals.at_run_time` replaces these
handlers once the command runs and can clean up.
"""

import os as _os
import signal as _signal
import sys as _sys


def _while_starting(signum: int, frame: object) -> None:
    name = "SIGTERM" if signum == _signal.SIGTERM else "SIGINT"
    _os.write(2, f"gptclf: interrupted ({name}) while starting; nothing was written\n".encode())
    _os._exit(128 + signum)


# Only as the program (the `gptclf` script, or `python -m cli.main`, where argv[0] is "-m" while this
# package is imported); a process that imports the package as a library keeps its own handlers, and
# so does a child that multiprocessing spawns (`serve --workers`: it re-imports the main module with
# the parent's argv, and its server handles the signals).
_SPAWNED = "multiprocessing.spawn" in _sys.modules
if _os.path.basename(_sys.argv[0]) in ("gptclf", "-m", "gptclf.exe") and not _SPAWNED:
    for _sig in (_signal.SIGINT, _signal.SIGTERM):
        _signal.signal(_sig, _while_starting)
