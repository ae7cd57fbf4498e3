"""Token ids held compactly for big tables: :class:`TokenIds` (one ``uint16`` buffer with offsets,
two bytes a token), built a chunk of texts at a time in buffers that grow in place
(:class:`GrowingArray`), and :func:`encode_compact`, which tokenises texts into them as they are
read (``evaluate`` and ``finetune``)."""

from __future__ import annotations

import itertools
import mmap
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import overload

import numpy as np
import tiktoken
import torch

from gptclf.model.tokenizer import EOT_ID, encode_batch
from gptclf.progress import Progress


class TokenIds(Sequence[Sequence[int]]):
    """Token ids of many texts in one flat ``uint16`` buffer with offsets: two bytes a token instead
    of a Python int (and a list per text). GPT-2's 50,257 ids fit; a batch is turned into int64 only
    when it is collated (:meth:`collate`), so the batches are those of the lists they replace.

    Indexing gives a text's ids as a numpy view; ``lengths`` are the tokens of each text.
    """

    def __init__(self, flat: np.ndarray, offsets: np.ndarray) -> None:
        self.flat = flat
        self.offsets = offsets  # (N + 1,) int64: text i is flat[offsets[i]:offsets[i + 1]]

    @classmethod
    def from_lists(cls, ids: Sequence[Sequence[int]]) -> TokenIds:
        """Pack lists of ids (each id < 65,536)."""
        builder = TokenIdsBuilder()
        builder.extend(ids)
        return builder.build()

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @overload
    def __getitem__(self, i: int) -> np.ndarray: ...

    @overload
    def __getitem__(self, i: slice) -> TokenIds: ...

    def __getitem__(self, i: int | slice) -> np.ndarray | TokenIds:
        if isinstance(i, slice):
            return TokenIds.from_lists([self[j] for j in range(*i.indices(len(self)))])
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        return self.flat[self.offsets[i] : self.offsets[i + 1]]

    def part(self, start: int, stop: int) -> TokenIds:
        """Texts ``start`` to ``stop - 1`` (their ids copied out of the buffer)."""
        first, last = int(self.offsets[start]), int(self.offsets[stop])
        return TokenIds(self.flat[first:last].copy(), self.offsets[start : stop + 1] - first)

    @property
    def lengths(self) -> list[int]:
        """Tokens of each text."""
        return np.diff(self.offsets).tolist()

    @property
    def nbytes(self) -> int:
        """Bytes held (the ids and their offsets)."""
        return int(self.flat.nbytes + self.offsets.nbytes)

    def truncated(self, max_length: int) -> TokenIds:
        """The first ``max_length`` ids of every text."""
        lengths = np.minimum(np.diff(self.offsets), max_length)
        if (lengths == np.diff(self.offsets)).all():
            return self
        keep = np.repeat(self.offsets[:-1], lengths) + _ranks(lengths)
        return TokenIds(self.flat[keep], np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))

    def padded(self, length: int, pad_id: int = EOT_ID) -> TokenIds:
        """Every text right-padded with ``pad_id`` to at least ``length`` ids."""
        lengths = np.diff(self.offsets)
        wide = np.maximum(lengths, length)
        offsets = np.concatenate([[0], np.cumsum(wide)]).astype(np.int64)
        flat = np.full(int(offsets[-1]), pad_id, dtype=np.uint16)
        flat[np.repeat(offsets[:-1], lengths) + _ranks(lengths)] = self.flat
        return TokenIds(flat, offsets)

    def collate(
        self, indices: Sequence[int], pad_id: int = EOT_ID, pad_to: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The texts at ``indices`` right-padded into a batch, as :func:`~gptclf.model.tokenizer.collate`
        pads lists: ``input_ids`` (B, T) int64 and ``lengths`` (B,) int64."""
        rows = np.asarray(indices, dtype=np.int64)
        starts, lengths = self.offsets[rows], self.offsets[rows + 1] - self.offsets[rows]
        width = int(lengths.max()) if pad_to is None else max(pad_to, int(lengths.max()))
        batch = np.full((len(rows), width), pad_id, dtype=np.int64)
        cols = _ranks(lengths)
        batch[np.repeat(np.arange(len(rows)), lengths), cols] = self.flat[np.repeat(starts, lengths) + cols]
        return torch.from_numpy(batch), torch.from_numpy(lengths.astype(np.int64))


def _ranks(lengths: np.ndarray) -> np.ndarray:
    """0, 1, ..., n-1 for each n of ``lengths``, concatenated: each id's place in its text."""
    total = int(lengths.sum())
    ends = np.cumsum(lengths)
    return np.arange(total, dtype=np.int64) - np.repeat(ends - lengths, lengths)


class GrowingArray:
    """A 1-D numpy array built by appending, in an anonymous memory map that grows in place
    (``mremap``: moved, not copied), so its values are never held twice and nothing is left behind.

    A growing heap buffer (``array``, a list of chunks joined at the end) is reallocated again and
    again; where it sits in the heap the old copies stay resident as holes (about 12 MB more at
    300,000 texts), and chunks joined at the end hold everything twice at the peak. The map's room
    beyond the values is never written, so it takes no memory.
    """

    def __init__(self, dtype: type | np.dtype) -> None:
        self.dtype = np.dtype(dtype)
        self._map = _anonymous(mmap.PAGESIZE)
        self._used = 0  # bytes

    def __len__(self) -> int:
        return self._used // self.dtype.itemsize

    def extend(self, values: np.ndarray | Sequence[int]) -> None:
        """Append ``values`` (converted to the array's type)."""
        data = np.ascontiguousarray(values, dtype=self.dtype).view(np.uint8)
        need = self._used + len(data)
        if need > len(self._map):
            self._grow(max(need, len(self._map) * 5 // 4))
        self._map[self._used : need] = data
        self._used = need

    def _grow(self, size: int) -> None:
        size = -(-size // mmap.PAGESIZE) * mmap.PAGESIZE
        try:
            self._map.resize(size)
        except (OSError, SystemError, ValueError):  # no mremap here: a new map, the values copied
            bigger = _anonymous(size)
            bigger[: self._used] = self._map[: self._used]
            self._map.close()
            self._map = bigger

    def array(self) -> np.ndarray:
        """The values, without a copy (the array keeps the map; append no more after this)."""
        return np.frombuffer(self._map, dtype=self.dtype, count=len(self))


def _anonymous(size: int) -> mmap.mmap:
    """Private anonymous memory of ``size`` bytes: a shared anonymous map cannot grow in place
    (its pages past the first size would be a bus error)."""
    if hasattr(mmap, "MAP_PRIVATE"):
        return mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    return mmap.mmap(-1, size)  # Windows: no flags; growing copies (see GrowingArray._grow)


class TokenIdsBuilder:
    """Gathers :class:`TokenIds` a chunk of texts at a time, into :class:`GrowingArray` buffers:
    the ids are never held twice (:meth:`build` wraps them without a copy)."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._flat = GrowingArray(np.uint16)
        self._ends = GrowingArray(np.int64)
        self._ends.extend([0])  # the offsets: 0, then each text's end
        self._last = 0

    def extend(self, ids: Sequence[Sequence[int]]) -> None:
        """Append the ids of more texts."""
        lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
        chunk = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int64, count=int(lengths.sum()))
        if chunk.size and (chunk.max() > np.iinfo(np.uint16).max or chunk.min() < 0):
            raise ValueError("token ids must fit in 16 bits (GPT-2's vocabulary does)")
        self._flat.extend(chunk)
        np.cumsum(lengths, out=lengths)
        lengths += self._last
        self._ends.extend(lengths)
        self._last = int(lengths[-1]) if len(lengths) else self._last

    def __len__(self) -> int:
        return len(self._ends) - 1

    def build(self) -> TokenIds:
        """The ids gathered, in one buffer (the builder starts empty again)."""
        flat, ends = self._flat.array(), self._ends.array()
        self._reset()
        return TokenIds(flat, ends)


#: Texts tokenised at once: the tokenizer's Python lists stay small, the progress moves.
ENCODE_CHUNK = 8192
#: Seconds of tokenising after which its progress is shown.
SHOW_AFTER = 2.0


def encode_compact(
    enc: tiktoken.Encoding,
    texts: Iterable[str],
    max_length: int | None,
    progress: Progress | None = None,
    total: int | None = None,
) -> tuple[TokenIds, np.ndarray]:
    """Tokenise ``texts`` a chunk at a time into :class:`TokenIds`, each cut to ``max_length``
    tokens (None: kept whole) and an empty text read as ``<|endoftext|>``, as :func:`encode_texts`.

    ``progress`` sees a step ``tokenising`` of ``total`` texts (when known): texts done, texts/s, ETA;
    it begins only once the step has run :data:`SHOW_AFTER` seconds, so a short step (or one that
    ends in a bad-input error, which stays the one line on stderr) shows nothing.

    Returns:
        ``(ids, cut)``: the ids, and which texts were longer than ``max_length`` (a bool per text).
    """
    builder = TokenIdsBuilder()
    cut: list[np.ndarray] = []
    progress = progress or Progress()
    started, done, shown = time.monotonic(), 0, False
    try:
        for chunk in _chunks(texts, ENCODE_CHUNK):
            ids = encode_batch(enc, chunk)
            long = np.zeros(len(ids), dtype=bool)
            for i, seq in enumerate(ids):
                if not seq:
                    ids[i] = [EOT_ID]
                elif max_length is not None and len(seq) > max_length:
                    ids[i] = seq[:max_length]
                    long[i] = True
            builder.extend(ids)
            cut.append(long)
            done += len(chunk)
            elapsed = time.monotonic() - started
            rate = f"{done / max(elapsed, 1e-9):,.0f} texts/s"
            if shown:
                progress.advance(len(chunk), rate=rate)
            elif elapsed >= SHOW_AFTER:
                shown = True
                progress.begin("tokenising", total=total, unit="texts", done=0)
                progress.advance(done, rate=rate)
    finally:
        if shown:
            progress.end()
    return builder.build(), np.concatenate(cut) if cut else np.zeros(0, dtype=bool)


def _chunks(items: Iterable[str], size: int) -> Iterator[list[str]]:
    """``items`` in lists of ``size`` (the last shorter)."""
    it = iter(items)
    while chunk := list(itertools.islice(it, size)):
        yield chunk
