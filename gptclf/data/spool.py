"""Texts kept on disk while ``prepare`` decides where each row goes, so memory stays flat.

``prepare`` reads its input once, a record at a time (files and stdin alike: stdin cannot be read
twice). Each kept text goes into a :class:`TextSpool`, an unnamed temporary file beside the output
(a kill leaves nothing behind: the file has no name to leave), with its offset and a 128-bit hash
in compact arrays; the labels go into arrays of label ids. Selection, deduplication, balancing and
the split are then decided on those arrays (:mod:`gptclf.data.rows`), and the split files are
written by reading the chosen texts back by their row number. Memory is a few dozen bytes a row,
whatever the texts' length; the spool takes about as much disk as the kept texts.

Here too: :func:`first_occurrences` (dedupe on hashes) and :func:`token_lengths` (the length
report's numbers, a batch of texts at a time).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from array import array
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from gptclf.data.long_steps import counted
from gptclf.errors import write_error
from gptclf.progress import Progress

#: Texts tokenized at a time.
BATCH = 8192
#: Bytes of the spool's write buffer.
_BUFFER = 1 << 20


class TextSpool:
    """Texts appended one at a time to a temporary file and read back by row number.

    Each text costs 8 bytes of offset and 16 of hash in memory; its UTF-8 bytes go to the file.
    Use it as a context manager (the file goes away on close, or with the process).
    """

    def __init__(self, folder: Path, out: Path) -> None:
        """Open the spool in ``folder``; ``out`` names the output in a disk-full message."""
        self._out = out
        try:
            # Unnamed where the system allows (O_TMPFILE): a kill leaves nothing. Closed by close().
            self._file = tempfile.TemporaryFile(dir=folder, buffering=_BUFFER)  # noqa: SIM115
        except OSError as exc:
            raise write_error(exc, out) from None
        self._offsets = array("q", [0])
        self._hashes = bytearray()
        self._flushed = True

    def __enter__(self) -> TextSpool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def close(self) -> None:
        """Remove the file."""
        self._file.close()

    def add(self, text: str) -> None:
        """Append ``text`` (its row number is the count of texts before it)."""
        # surrogatepass: a lone surrogate from a JSON escape comes back as it went in.
        data = text.encode("utf-8", "surrogatepass")
        try:
            self._file.write(data)
        except OSError as exc:
            raise write_error(exc, self._out) from None
        self._offsets.append(self._offsets[-1] + len(data))
        self._hashes += hashlib.blake2b(data, digest_size=16).digest()
        self._flushed = False

    def hashes(self) -> np.ndarray:
        """(N,) 16-byte hashes of the texts (``V16``): equal texts, equal hashes."""
        return np.frombuffer(bytes(self._hashes), dtype="V16")

    def texts(self, rows: Iterable[int]) -> Iterator[str]:
        """The texts of ``rows`` (row numbers, any order, repeats allowed), in that order."""
        if not self._flushed:
            try:
                self._file.flush()
            except OSError as exc:
                raise write_error(exc, self._out) from None
            self._flushed = True
        fd, offsets = self._file.fileno(), self._offsets
        for row in rows:
            start = offsets[row]
            yield os.pread(fd, offsets[row + 1] - start, start).decode("utf-8", "surrogatepass")


def first_occurrences(hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Which rows hold a text for the first time, and a text id per row.

    Returns:
        A bool mask (True: no earlier row has this text) and an int array of text ids (equal
        texts, equal ids), both of ``len(hashes)``.
    """
    _, first, ids = np.unique(hashes, return_index=True, return_inverse=True)
    mask = np.zeros(len(hashes), dtype=bool)
    mask[first] = True  # np.unique's index is that of the first occurrence
    return mask, ids.reshape(-1)


def token_lengths(enc: Any, spool: TextSpool, rows: np.ndarray, progress: Progress) -> np.ndarray:
    """GPT-2 token counts of the texts of ``rows`` (spool row numbers, read in batches).

    Args:
        enc: GPT-2's tokenizer (tiktoken).
        spool: Where the texts are.
        rows: Row numbers, best sorted (the spool is then read front to back).
        progress: Shows the texts counted.
    """
    from gptclf.model.tokenizer import encode_batch

    out = np.zeros(len(rows), dtype=np.int64)
    batches = (list(spool.texts(rows[i : i + BATCH].tolist())) for i in range(0, len(rows), BATCH))
    start = 0
    for batch in counted(batches, progress, "counting tokens", len(rows), unit="texts", size=len):
        out[start : start + len(batch)] = [len(t) for t in encode_batch(enc, batch)]
        start += len(batch)
    return out


def length_summary(lengths: np.ndarray, max_length: int | None, context: int) -> dict[str, Any]:
    """What labels.json records under ``lengths`` (the dict of
    :func:`gptclf.data.lengths.length_report`), from the token count of every written text."""
    from gptclf.data.lengths import PERCENTILES

    counted_ = lengths if lengths.size else np.zeros(1, dtype=np.int64)
    out: dict[str, Any] = {
        "texts": int(lengths.size),
        "percentiles": {f"p{p}": int(np.percentile(counted_, p, method="higher")) for p in PERCENTILES},
        "max": int(counted_.max()),
        "context": context,
        "over_context": int((counted_ > context).sum()),
    }
    if max_length is not None:
        out["max_length"] = max_length
        out["over_max_length"] = int((counted_ > max_length).sum())
    return out
