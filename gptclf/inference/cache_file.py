"""A frozen-trunk cache's states in a file, read and written a batch at a time, never mapped.

A memory-mapped file's pages count in the process's resident memory once they are touched, and
training touches every page every epoch: a cache "spilled to disk" through a mapping grew the
process exactly as much as one in RAM (measured: 815 MB peak RSS either way for a 100,000-row
table). :class:`StateFile` reads each batch's rows with explicit reads into a buffer of that
batch, so the process holds one batch of states, whatever the cache's size. The operating system's
page cache keeps the file's pages while memory is free, so a read is a copy from memory, not a disk
access; when memory is needed elsewhere it drops them (they are clean: written once, then only
read) instead of the process growing or being killed.

Writes go through the same descriptor; the file's room is reserved when it is created
(``posix_fallocate`` where the system has it), so a full disk is an error at that moment, not a
failed write halfway through a build. Every failure is one line naming the file
(:func:`gptclf.errors.write_error`; a file cut short under a run is a :class:`TrainingError`).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from gptclf.errors import TrainingError, write_error

#: Bytes of one stored value (states are kept in float32).
VALUE_BYTES = 4


class StateFile:
    """A (rows, width) float32 array in a file: :meth:`write` rows, :meth:`read` a range,
    :meth:`read_runs` each text's rows into a zero-padded (B, T, C) batch.

    A new file reads as zeros (what a data-parallel build sums into). Not for use from several
    threads at once (a read is a seek and a read on one descriptor).
    """

    def __init__(self, path: Path, rows: int, width: int) -> None:
        self.path = Path(path)
        self.shape = (rows, width)
        self._row_bytes = width * VALUE_BYTES
        size = rows * self._row_bytes
        try:
            self._file = open(self.path, "w+b", buffering=0)  # noqa: SIM115 - closed by close()
        except OSError as exc:
            raise self._error(exc, size) from None
        try:
            if size and hasattr(os, "posix_fallocate"):
                try:
                    os.posix_fallocate(self._file.fileno(), 0, size)
                except OSError as exc:  # a file system without it still gets its size below
                    if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                        raise
            self._file.truncate(size)
        except OSError as exc:
            self._file.close()
            raise self._error(exc, size) from None
        except BaseException:
            self._file.close()
            raise

    def _error(self, exc: OSError, needed: int | None = None) -> Exception:
        """One line for a failed write of the cache file (full disk, unwritable folder, ...)."""
        error = write_error(exc, self.path.parent, needed)
        return type(error)(f"the frozen-trunk cache: {error}; or raise --cache-memory, or pass --no-cache")

    @property
    def device(self) -> torch.device:
        """Rows come back as CPU tensors."""
        return torch.device("cpu")

    def numel(self) -> int:
        """Values stored (as a tensor's ``numel``)."""
        return self.shape[0] * self.shape[1]

    def element_size(self) -> int:
        """Bytes a value (as a tensor's ``element_size``)."""
        return VALUE_BYTES

    def write(self, start: int, values: torch.Tensor) -> None:
        """Store ``values`` (rows, width) as rows ``start..``."""
        assert values.shape[-1] == self.shape[1] and start >= 0
        data = np.ascontiguousarray(values.detach().to("cpu", torch.float32).numpy()).reshape(
            -1, self.shape[1]
        )
        assert start + len(data) <= self.shape[0], (start, len(data), self.shape)
        view = memoryview(data).cast("B")
        try:
            self._file.seek(start * self._row_bytes)
            while view:  # a regular file writes whole or raises; loop for the odd short write
                view = view[self._file.write(view) :]
        except OSError as exc:
            raise self._error(exc, len(view)) from None

    def read(self, start: int, stop: int) -> torch.Tensor:
        """Rows ``start..stop`` as a new (stop - start, width) tensor."""
        out = np.empty((stop - start, self.shape[1]), dtype=np.float32)
        self._read_into(out, start)
        return torch.from_numpy(out)

    def read_runs(self, starts: Sequence[int], counts: Sequence[int], width: int) -> torch.Tensor:
        """A (len(starts), width, C) batch: text ``i``'s ``counts[i]`` rows from ``starts[i]``,
        zeros after them."""
        out = np.zeros((len(starts), width, self.shape[1]), dtype=np.float32)
        for i, (start, count) in enumerate(zip(starts, counts, strict=True)):
            self._read_into(out[i, : min(int(count), width)], int(start))
        return torch.from_numpy(out)

    def _read_into(self, out: np.ndarray, start: int) -> None:
        view = memoryview(out).cast("B")
        try:
            self._file.seek(start * self._row_bytes)
            while view:
                got = self._file.readinto(view)
                if not got:
                    raise TrainingError(
                        f"the frozen-trunk cache file {self.path} ended early (another process cut it "
                        "short): run the command again (with --resume if it saved a checkpoint)"
                    )
                view = view[got:]
        except OSError as exc:
            raise TrainingError(
                f"reading the frozen-trunk cache file {self.path} failed ({exc.strerror or exc}): run the "
                "command again (with --resume if it saved a checkpoint)"
            ) from None

    def close(self) -> None:
        """Close the file (the folder holding it is the cache's to remove)."""
        self._file.close()
