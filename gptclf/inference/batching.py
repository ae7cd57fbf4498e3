"""Tokenised examples, length-aware batches, collation to (input_ids, lengths), and the sources
that turn a batch's indices into model inputs on a device.

Each batch is right-padded to its own longest text only. Training batches group texts of similar
length (so padding stays small) and are shuffled among themselves every epoch from the seed;
evaluation and prediction sort by length and the caller restores the original order
(:mod:`gptclf.inference.loop`). A :class:`Source` gives a batch's model inputs: token ids
(:class:`TokenSource`) or hidden states cached after the frozen first blocks
(:class:`gptclf.inference.cache.FeatureCache`), one row per text; or a text's windows, several rows
folded back into one (:class:`gptclf.inference.longtexts.WindowedSource`).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, overload

import numpy as np
import tiktoken
import torch

from gptclf.inference.token_ids import TokenIds
from gptclf.model.tokenizer import EOT_ID, collate, encode_batch
from gptclf.tasks.base import Task
from gptclf.tasks.single_label import SingleLabel

#: Training batches are drawn from pools of this many batches, sorted by length within the pool:
#: similar lengths share a batch while the pools keep the epoch's order random.
POOL_BATCHES = 50


@dataclass
class Encoded:
    """Token ids of a list of texts, truncated to ``max_length``.

    Attributes:
        ids: One list of token ids per text.
        truncated: How many texts were longer than ``max_length`` and were cut.
    """

    ids: list[list[int]]
    truncated: int

    @property
    def lengths(self) -> list[int]:
        return [len(x) for x in self.ids]


def encode_texts(enc: tiktoken.Encoding, texts: Sequence[str], max_length: int) -> Encoded:
    """Tokenise ``texts`` and keep the first ``max_length`` tokens of each.

    An empty text becomes the single token ``<|endoftext|>``, so every example has at least one
    real position to pool.
    """
    ids = encode_batch(enc, list(texts))
    truncated = 0
    for i, seq in enumerate(ids):
        if not seq:
            ids[i] = [EOT_ID]
        elif len(seq) > max_length:
            ids[i] = seq[:max_length]
            truncated += 1
    return Encoded(ids, truncated)


def train_batches(
    lengths: Sequence[int], batch_size: int, seed: int, epoch: int, bucket: bool = True
) -> list[list[int]]:
    """Index batches for one training epoch, reproducible from (seed, epoch).

    With ``bucket``, the shuffled indices are cut into pools of :data:`POOL_BATCHES` batches,
    each pool is sorted by length and cut into batches, and the batches are shuffled, so a batch
    holds texts of similar length. Without it, batches are consecutive slices of a plain shuffle
    (the book's DataLoader with ``shuffle=True``).
    """
    rng = random.Random(f"{seed}:{epoch}")
    order = list(range(len(lengths)))
    rng.shuffle(order)
    if not bucket:
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    pool = batch_size * POOL_BATCHES
    batches: list[list[int]] = []
    for start in range(0, len(order), pool):
        chunk = sorted(order[start : start + pool], key=lambda i: lengths[i])
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


#: Tokens an inference batch may hold per text of its batch size: a batch of ``batch_size`` texts
#: longer than this is cut to ``batch_size * TOKENS_PER_TEXT`` tokens (at least one text), so that a
#: forward pass over long texts or a long text's windows needs no more memory than one over texts of
#: this length. Short texts (every SMS: at most 132 tokens) are batched as without it, which matters
#: to the int8 engines: they quantize activations per batch, so their results depend a little on
#: a batch's company. A batch of 32 windows of 1,024 tokens becomes 4 batches of 8.
TOKENS_PER_TEXT = 256


def sorted_batches(
    lengths: Sequence[int], batch_size: int, max_tokens: int | None = None, max_padding: float | None = None
) -> list[list[int]]:
    """Index batches for evaluation or prediction: longest first, so padding is minimal.

    Each batch holds at most ``batch_size`` texts and, with ``max_tokens``, at most that many tokens
    once padded to its longest (first) text, but always at least one text. With ``max_padding``, a
    batch also ends where adding the next text would make padding more than that share of its
    padded tokens (``serve``: a few dozen texts of random lengths, where one pass would mostly
    compute padding). The caller writes each result back to its index, which restores the input order.
    The batches of :class:`BatchPlan`, as lists.
    """
    return list(BatchPlan(lengths, batch_size, max_tokens, max_padding))


class BatchPlan(Sequence[list[int]]):
    """The batches of :func:`sorted_batches`, held as one array of text indices (longest first)
    and where each batch starts: 4 bytes a text, not a Python int and a list slot. A batch is made a
    list of ints only when it is read, so a pass over a million texts holds no million ints.

    Slicing (``plan[rank::world]``: a rank's share, as :meth:`gptclf.distributed.Shard.take`) gives a
    plan of those batches.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        max_tokens: int | None = None,
        max_padding: float | None = None,
    ) -> None:
        sizes = narrow_lengths(np.asarray(lengths))  # in 16 bits the sort needs less room
        # Longest first, equal lengths in input order (a stable sort): numpy's keeps no key per text.
        order = np.argsort(-sizes, kind="stable")
        self.order = order.astype(np.int32) if len(order) <= np.iinfo(np.int32).max else order
        del order
        starts = _batch_starts(sizes[self.order], batch_size, max_tokens, max_padding)
        self.starts, self.stops = starts, np.append(starts[1:], len(self.order)).astype(np.int64)

    def __len__(self) -> int:
        return len(self.starts)

    @overload
    def __getitem__(self, i: int) -> list[int]: ...

    @overload
    def __getitem__(self, i: slice) -> BatchPlan: ...

    def __getitem__(self, i: int | slice) -> list[int] | BatchPlan:
        if isinstance(i, slice):
            part = object.__new__(BatchPlan)
            part.order, part.starts, part.stops = self.order, self.starts[i], self.stops[i]
            return part
        return self.order[self.starts[i] : self.stops[i]].tolist()

    @property
    def total(self) -> int:
        """Texts in these batches."""
        return int((self.stops - self.starts).sum())


def narrow_lengths(lengths: np.ndarray) -> np.ndarray:
    """Token counts as int16 where they fit (a context of 1,024 tokens: 2 bytes a text), else int64."""
    if len(lengths) and lengths.min() >= 0 and lengths.max() <= np.iinfo(np.int16).max:
        return lengths.astype(np.int16)
    return lengths.astype(np.int64)


def _batch_starts(
    sizes: np.ndarray, batch_size: int, max_tokens: int | None, max_padding: float | None
) -> np.ndarray:
    """Where each batch of the length-sorted ``sizes`` starts (see :func:`sorted_batches`)."""
    n = len(sizes)
    if max_tokens is None and max_padding is None:
        return np.arange(0, n, batch_size, dtype=np.int64)
    if max_padding is None:
        # A batch led by a text of n tokens takes the most texts whose padded size stays in budget.
        assert max_tokens is not None
        starts, i = [], 0
        while i < n:
            starts.append(i)
            size = int(sizes[i])
            i += batch_size if size == 0 else max(1, min(batch_size, max_tokens // size))
        return np.asarray(starts, dtype=np.int64)
    budget = max_tokens if max_tokens is not None else float("inf")
    keep = 1 - max_padding  # the real share a batch keeps
    lengths = sizes.tolist()
    starts, first, count, real = [], 0, 0, 0
    for i, size in enumerate(lengths):
        padded = (count + 1) * lengths[first] if count else 0
        if count and (count == batch_size or padded > budget or real + size < keep * padded):
            count, real = 0, 0
        if not count:
            starts.append(i)
            first = i
        count += 1
        real += size
    return np.asarray(starts, dtype=np.int64)


@dataclass
class Batch:
    """One batch of model inputs: token ids, or cached hidden states entering ``start_block``.

    Attributes:
        input_ids: (B, T) token ids, or None when ``hidden`` is given.
        hidden: (B, T, C) hidden states after block ``start_block - 1``, or None.
        lengths: (B,) real tokens per text.
        start_block: First block to run.
        fold: Turns the model's (B, K) output into one row per text of the batch, when its rows are
            the texts' windows (:class:`gptclf.inference.longtexts.WindowedSource`); None: a row is a text.
    """

    input_ids: torch.Tensor | None
    hidden: torch.Tensor | None
    lengths: torch.Tensor
    start_block: int
    fold: Callable[[torch.Tensor], torch.Tensor] | None = None

    def per_text(self, out: torch.Tensor) -> torch.Tensor:
        """The model's output on this batch, one row per text (``fold``ed where a text is several rows)."""
        return out if self.fold is None else self.fold(out)


class Source(Protocol):
    """Model inputs of some texts: :meth:`batch` turns a list of text indices into a :class:`Batch`
    on a device (every row of those texts: one each, or a text's windows), :meth:`rows` says how the
    inference loop runs them.

    Attributes:
        lengths: Tokens of each text (over all its rows): training groups texts of similar cost.
        start_block: The first block the model runs on its batches.
    """

    lengths: Sequence[int]
    start_block: int

    def batch(self, indices: Sequence[int], device: torch.device) -> Batch: ...

    def rows(self) -> Rows: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Rows:
    """A source as the inference loop runs it: the rows of ``source`` (one model input each) are
    batched by their own lengths like texts, and the outputs of all of them are then turned into one
    row per text. A source of a row per text is its own rows.

    Attributes:
        source: The rows: one model input per index.
        owner: (R,) the text of each row (the progress counts texts); None: row ``i`` is text ``i``.
        fold: The (N, K) per-text output from the (R, K) output of every row; None: the rows are the texts.
    """

    source: Source
    owner: torch.Tensor | None = None
    fold: Callable[[torch.Tensor], torch.Tensor] | None = None

    def per_text(self, out: torch.Tensor) -> torch.Tensor:
        """One row per text from the output of every row, in row order."""
        return out if self.fold is None else self.fold(out)


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Copy a CPU tensor to ``device``; through pinned memory without blocking on CUDA."""
    if device.type == "cuda" and tensor.device.type == "cpu":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


class TokenSource:
    """Token-id batches, right-padded to the batch's longest text (or to ``pad_to``); the ids are
    lists, or :class:`TokenIds` (made int64 a batch at a time: the same batches)."""

    start_block = 0

    def __init__(self, ids: Sequence[Sequence[int]], pad_to: int | None = None) -> None:
        self.ids = ids
        # Compact ids keep their lengths as an array: no Python int per text.
        compact = isinstance(ids, TokenIds)
        self.lengths: Sequence[int] = (
            np.diff(ids.offsets).astype(np.int32) if compact else [len(x) for x in ids]
        )
        self.pad_to = pad_to

    def batch(self, indices: Sequence[int], device: torch.device) -> Batch:
        if isinstance(self.ids, TokenIds):
            input_ids, lengths = self.ids.collate(indices, EOT_ID, self.pad_to)
        else:
            input_ids, lengths = collate([self.ids[i] for i in indices], EOT_ID, self.pad_to)
        return Batch(to_device(input_ids, device), None, to_device(lengths, device), 0)

    def rows(self) -> Rows:
        """A row per text."""
        return Rows(self)

    def close(self) -> None:
        """Nothing to release."""


@dataclass
class LabelledSet:
    """Model inputs of a split, each text's target as its ``task`` encodes it (a class index, a
    0/1 row), and the task (its loss, statistics and metrics are what training computes).

    The source gives one logit row per text however it reads them (texts read in windows are a
    :class:`~gptclf.inference.longtexts.WindowedSource`). ``long_texts`` names the ``--long-texts``
    mode of such a source (None for ``truncate``): part of a resumed run's data signature.
    """

    source: Source
    labels: list[Any]
    task: Task = field(default_factory=SingleLabel)
    long_texts: str | None = None

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def lengths(self) -> list[int]:
        """Tokens per text (over its windows)."""
        return self.source.lengths
