"""The splits of a prepared folder as model inputs: each text's token ids (or its windows, for
``--long-texts head-tail|window``), its target as the run's task encodes it, and the padding.

Truncated texts' ids are held compactly (:class:`~gptclf.inference.batching.TokenIds`: two bytes a
token), tokenised a chunk at a time with the progress shown (texts done, texts/s, ETA)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import tiktoken

from gptclf.data.long_texts import LongCounts, LongTexts
from gptclf.inference.longtexts import Windowed, windows_of
from gptclf.inference.token_ids import TokenIds, encode_compact
from gptclf.model.tokenizer import encode_batch
from gptclf.progress import Progress
from gptclf.tasks.base import Task
from gptclf.tasks.single_label import SingleLabel


def encode_splits(
    splits: dict[str, pd.DataFrame],
    classes: list[str],
    enc: tiktoken.Encoding,
    max_length: int,
    pad_to: str,
    task: Task | None = None,
    long: LongTexts | None = None,
    windows: dict[str, Windowed] | None = None,
    progress: Progress | None = None,
    counts: dict[str, LongCounts] | None = None,
) -> tuple[dict[str, Sequence[Sequence[int]]], dict[str, list[Any]], int, int | None]:
    """Token ids and label ids of each split of a prepared folder.

    With ``pad_to="longest-train"`` (the book's loop) every text is cut to the longest training
    text and padded to it; the book's dataset class truncates validation and test texts the same way.
    With ``long`` (resolved) the ids are each text's windows (:mod:`gptclf.inference.longtexts`; for
    ``truncate`` the same ids as without it; with ``longest-train`` made at that length), and each split's
    :class:`~gptclf.inference.longtexts.Windowed` (which text each window is of, what was cut) is put into
    ``windows``.

    Each split's labels are encoded by ``task`` (default single-label: class indices). Without
    ``long``, or for ``truncate``, each split's ids are :class:`~gptclf.inference.batching.TokenIds`
    tokenised with ``progress`` shown, and no split is put into ``windows`` (a text is its one row).
    ``counts`` receives each split's :class:`~gptclf.data.long_texts.LongCounts` (texts, long
    texts, windows).

    Returns:
        ``(ids, labels, max_length, pad_length)``; ``pad_length`` is None for per-batch padding.
    """
    names = ("train", "validation", "test")
    ids: dict[str, Sequence[Sequence[int]]]
    if long is None or long.mode == "truncate":
        compact, cut = _compact(splits, names, enc, max_length, progress)
        if long is not None and pad_to == "longest-train" and len(compact["train"]):
            # As text_windows at the longest training text (at least 1: an empty text is one token).
            max_length = min(max_length, max(compact["train"].lengths))
            cut = {n: cut[n] | (np.diff(v.offsets) > max_length) for n, v in compact.items()}
            compact = {n: v.truncated(max_length) for n, v in compact.items()}
        if counts is not None:
            counts.update({n: LongCounts(len(v), int(cut[n].sum()), len(v)) for n, v in compact.items()})
        ids = dict(compact)
    else:
        texts = {n: splits[n]["text"].astype(str).tolist() for n in names}
        tokens = {n: encode_batch(enc, texts[n]) for n in names}
        if pad_to == "longest-train" and tokens["train"]:
            # The book's length is the longest training text: the windows are made at that length.
            max_length = min(max_length, max(max(len(x), 1) for x in tokens["train"]))
            long = long.fitted(max_length)
        made = {n: windows_of(tokens[n], max_length, long) for n in names}
        ids = {n: w.ids for n, w in made.items()}
        if windows is not None:
            windows.update(made)
        if counts is not None:
            counts.update({n: w.counts for n, w in made.items()})
    encoder = task or SingleLabel()
    labels: dict[str, list[Any]] = {n: encoder.encode_labels(splits[n], classes) for n in names}
    pad_length = None
    if pad_to == "longest-train" and len(ids["train"]):
        pad_length = max_length = max(_lengths(ids["train"]))
        ids = {n: _cut(v, max_length) for n, v in ids.items()}
    return ids, labels, max_length, pad_length


def _compact(
    splits: dict[str, pd.DataFrame],
    names: Sequence[str],
    enc: tiktoken.Encoding,
    max_length: int,
    progress: Progress | None,
) -> tuple[dict[str, TokenIds], dict[str, np.ndarray]]:
    """Each split's truncated ids as :class:`TokenIds`, tokenised as one step of ``progress``, and
    which of its texts were cut."""
    sizes = [len(splits[n]) for n in names]
    texts = (str(text) for n in names for text in splits[n]["text"])
    every, cut = encode_compact(enc, texts, max_length, progress, total=sum(sizes))
    ids: dict[str, TokenIds] = {}
    long: dict[str, np.ndarray] = {}
    start = 0
    for name, size in zip(names, sizes, strict=True):
        ids[name], long[name] = every.part(start, start + size), cut[start : start + size]
        start += size
    return ids, long


def _lengths(ids: Sequence[Sequence[int]]) -> list[int]:
    return ids.lengths if isinstance(ids, TokenIds) else [len(x) for x in ids]


def _cut(ids: Sequence[Sequence[int]], length: int) -> Sequence[Sequence[int]]:
    """The first ``length`` ids of every text."""
    return ids.truncated(length) if isinstance(ids, TokenIds) else [list(x[:length]) for x in ids]
