"""Resumable training checkpoints and the Ctrl-C / SIGTERM handling that writes them.

A checkpoint holds what training needs to continue exactly where it stopped: the trainable
weights (the frozen ones come back from the same ``--weights``), the best weights so far, the
optimizer, the gradient scaler, the RNG states, the position (epoch, batch group, step), the
history and whatever the caller adds (the run's settings). It is written with ``torch.save`` to a
temporary name and renamed, so a second interrupt never leaves half a file, and read back with
``weights_only=True``, so loading one never runs code.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

import torch

from gptclf.errors import BadInputError, Interrupted, write_error
from gptclf.fileio import atomic_open

#: File name of the checkpoint inside a run directory.
CHECKPOINT_NAME = "checkpoint.pt"
CHECKPOINT_VERSION = 1


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically (temporary file, fsync, rename, folder fsync).

    Raises:
        GptclfError: The disk is full or the folder cannot be written (one line; the temporary
            file is removed and an earlier checkpoint at ``path`` is kept).
    """
    path = Path(path)
    try:
        # Through a Python file, so that a failed write (a full disk) surfaces as the OSError it
        # is: torch's own writer turns it into a RuntimeError that keeps it only as the context.
        with atomic_open(path, "wb", encoding=None) as fh:
            torch.save({"version": CHECKPOINT_VERSION, **state}, fh)
    except (OSError, RuntimeError) as exc:
        cause = exc if isinstance(exc, OSError) else exc.__context__
        if isinstance(cause, OSError):
            raise write_error(cause, path.parent, _tensor_bytes(state)) from None
        raise


def _tensor_bytes(obj: Any) -> int:
    """Bytes of the tensors in a nested state (what a checkpoint of it roughly takes on disk)."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (tensors on the CPU).

    Raises:
        BadInputError: Missing, unreadable, or written by an incompatible version.
    """
    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"no checkpoint to resume at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types, with many lines, for a damaged file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BadInputError(
            f"{path} is not a readable gptclf checkpoint ({first}): pass --force to start the run again"
        ) from None
    if not isinstance(state, dict) or state.get("version") != CHECKPOINT_VERSION:
        raise BadInputError(f"{path} is not a gptclf checkpoint of version {CHECKPOINT_VERSION}")
    return state


def check_world_size(state: dict[str, Any], world_size: int) -> None:
    """Refuse to continue a checkpoint with another number of data-parallel processes.

    The global batch is ``batch_size * grad_accum * world_size``: another world size would go on
    with other batches and another number of steps than the interrupted run.

    Raises:
        BadInputError: The checkpoint was written by a job of another world size.
    """
    saved = state.get("world_size", 1)
    if saved != world_size:
        raise BadInputError(
            f"the checkpoint was written by a run on {saved} process(es), this one has {world_size}: "
            f"resume with the same number (gptclf finetune --devices {saved}, or torchrun's --nproc_per_node)"
        )


def rng_state() -> dict[str, Any]:
    """The torch RNG states (CPU and every CUDA device) that dropout draws from."""
    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Put back what :func:`rng_state` returned."""
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class InterruptGuard:
    """SIGINT and SIGTERM handling for a whole ``finetune``, from its checks to its last file.

    While :attr:`deferring` is off (before training starts, when there is nothing to save) a
    signal raises :class:`Interrupted` at once, so ``finally`` blocks clean up. While it is on
    (training, and everything after it) a signal only sets :attr:`signum`: the training loop
    finishes its step and saves a checkpoint, the test evaluation stops at its next batch
    (:meth:`check`), and a run being written is finished first. A second signal always raises at
    once. Outside the main thread signals cannot be caught and the guard does nothing.

    Args:
        before: What an immediate interrupt says happened to the run (e.g. nothing was written).
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, before: str = "nothing was written") -> None:
        self.signum: int | None = None
        self.deferring = False
        self.before = before
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is None and self.deferring:
            self.signum = signum
            return
        self.signum = self.signum or signum
        raise Interrupted(f"{signal_name(signum)}: stopped at once; {self.before}", signum)

    def check(self, what: str) -> None:
        """Raise :class:`Interrupted` if a signal arrived; ``what`` says what is kept."""
        if self.signum is not None:
            raise Interrupted(f"{signal_name(self.signum)}: {what}", self.signum)

    def _restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def __enter__(self) -> InterruptGuard:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._restore()


def signal_name(signum: int) -> str:
    """``SIGINT``, ``SIGTERM`` or ``signal N``."""
    return {signal.SIGINT: "SIGINT", signal.SIGTERM: "SIGTERM"}.get(signum, f"signal {signum}")
