"""Resumable training checkpoints (``checkpoint.pt``: save, load, restore) and the Ctrl-C / SIGTERM
handling that writes them.

A checkpoint holds what training needs to continue exactly where it stopped: the trainable
weights (the frozen ones come back from the same ``--weights``), the best weights so far, the
optimizer, the gradient scaler, the RNG states, the position (epoch, batch group, step), the
history and whatever the caller adds (the run's settings). It is written with ``torch.save`` to a
temporary name and renamed, so a second interrupt never leaves half a file, and read back with
``weights_only=True``, so loading one never runs code.
"""

from __future__ import annotations

import hashlib
import signal
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

import numpy as np
import torch

from gptclf.distributed import Shard
from gptclf.errors import BadInputError, Interrupted, write_error
from gptclf.fileio import atomic_open

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


def data_signature(
    labels: Sequence[int], lengths: Sequence[int], long_texts: str | None = None
) -> dict[str, Any]:
    """What identifies a training set for resuming: its size and a hash of its labels and lengths,
    and of the ``--long-texts`` mode where it is not ``truncate`` (None: the signature of old runs).

    A checkpoint continues only on the same texts: other data (re-prepared with another split or
    seed) would give other batch groups, or a position past the end of an epoch.
    """
    digest = hashlib.sha256()
    digest.update(np.asarray(labels, dtype=np.int64).tobytes())
    digest.update(np.asarray(lengths, dtype=np.int64).tobytes())
    if long_texts is not None:
        digest.update(f"long-texts:{long_texts}".encode())
    return {"n": len(labels), "sha256": digest.hexdigest()}


def check_same_data(resume_state: dict[str, Any] | None, fingerprint: str, data_dir: Path) -> None:
    """Refuse to resume on a prepared folder that changed since the run was interrupted (the
    checkpoint's extra records the folder's fingerprint).

    Raises:
        BadInputError: The fingerprint differs from the one the checkpoint recorded.
    """
    if resume_state is None:
        return
    recorded = (resume_state.get("extra", {}).get("data") or {}).get("fingerprint")
    if recorded is not None and recorded != fingerprint:
        raise BadInputError(
            f"the prepared data in {data_dir} changed since the run was interrupted (another split, seed "
            "or files): resume with the data it was trained on, or start again with --force"
        )


class Checkpointer:
    """Saves the training state at the moments the loop chooses: rank 0 writes, every rank waits.

    Args:
        path: Where ``checkpoint.pt`` goes; None: no checkpoints.
        extra: Stored as is (the caller's settings, its data's fingerprint).
        shard: This process's place in a data-parallel job.
    """

    def __init__(self, path: Path | None, extra: dict[str, Any], shard: Shard) -> None:
        self.path, self.extra, self.shard = path, extra, shard
        self.saved_step: int | None = None

    def save(self, state: Callable[[], dict[str, Any]], step: int) -> None:
        """Save ``state()`` once per step; every rank must call (the RNG states are gathered)."""
        if self.path is None or self.saved_step == step:
            return
        rngs = self.shard.gather_objects(rng_state())
        if self.shard.is_main:
            save_checkpoint(self.path, {**state(), "extra": self.extra, "rng": rngs[0], "rng_ranks": rngs})
        # A large checkpoint can take longer than --dist-timeout: the others wait on the slow group.
        self.shard.slow_barrier()
        self.saved_step = step


def _what_trains(train: dict[str, Any]) -> dict[str, Any]:
    """Training settings less those that only say when checkpoints are saved."""
    return {k: v for k, v in train.items() if k != "checkpoint_every"}


def restore_training(
    state: dict[str, Any],
    *,
    train: dict[str, Any],
    data: dict[str, Any],
    named: list[tuple[str, torch.nn.Parameter]],
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    shard: Shard,
) -> None:
    """Put a checkpoint's tensors back: trainable weights, optimizer, scaler, this rank's RNG.

    Args:
        state: What :func:`load_checkpoint` read.
        train: The training settings of this run (``TrainConfig.to_dict()``).
        data: The training set's signature (size and hash of labels and lengths).
        named: The trainable parameters, by name.
        optimizer: The optimizer to load.
        scaler: The gradient scaler; a run may resume in another precision, so a scaler state
            is loaded only where both sides have one.
        shard: This process's rank and the world size.

    Raises:
        BadInputError: Other training settings, another world size, other training data, or
            trainable weights that do not fit.
    """
    # How often checkpoints are written does not change what is computed: it may differ.
    if _what_trains(state.get("train") or {}) != _what_trains(train):
        raise BadInputError("the checkpoint was written with other training settings; keep them on --resume")
    check_world_size(state, shard.world_size)
    saved_data = state.get("data")
    if saved_data is not None and saved_data != data:
        raise BadInputError(
            f"the training data differ from those of the interrupted run ({saved_data['n']} texts then, "
            f"{data['n']} now, or other texts): resume with the data it was trained on, "
            "or start again with --force"
        )
    saved = state["trainable"]
    if sorted(saved) != sorted(n for n, _ in named) or any(saved[n].shape != p.shape for n, p in named):
        raise BadInputError("the checkpoint's trainable weights do not fit this model and scope")
    with torch.no_grad():
        for n, p in named:
            p.copy_(saved[n])
    optimizer.load_state_dict(state["optimizer"])
    if scaler.is_enabled() and state["scaler"]:
        scaler.load_state_dict(state["scaler"])
    ranks = state.get("rng_ranks")
    restore_rng(ranks[shard.rank] if ranks else state["rng"])


#: How an interrupt that saved a checkpoint ends its message (:meth:`TrainState.interrupt`).
RESUME_SUFFIX = "; continue with --resume"


def with_resume_hint(message: str, hint: str) -> str:
    """An interrupt's message with the verb's own resume ``hint`` where a checkpoint was saved; an
    interrupt that saved nothing (stopped at once) keeps its message: there is nothing to resume."""
    if not message.endswith(RESUME_SUFFIX):
        return message
    return f"{message.removesuffix(RESUME_SUFFIX)}; {hint}"
