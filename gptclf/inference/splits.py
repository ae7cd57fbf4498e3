"""The splits of a prepared folder as model inputs: each text's token ids (or its windows, for
``--long-texts head-tail|window``), its target as the run's task encodes it, and the padding."""

from __future__ import annotations

from typing import Any

import pandas as pd
import tiktoken

from gptclf.data.long_texts import LongTexts
from gptclf.inference.batching import encode_texts
from gptclf.inference.longtexts import Windowed, windows_of
from gptclf.model.tokenizer import encode_batch
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
) -> tuple[dict[str, list[list[int]]], dict[str, list[Any]], int, int | None]:
    """Token ids and label ids of each split of a prepared folder.

    With ``pad_to="longest-train"`` (the book's loop) every text is cut to the longest training
    text and padded to it; the book's dataset class truncates validation and test texts the same way.
    With ``long`` (resolved) the ids are each text's windows (:mod:`gptclf.inference.longtexts`; for
    ``truncate`` the same ids as without it; with ``longest-train`` made at that length), and each split's
    :class:`~gptclf.inference.longtexts.Windowed` (which text each window is of, what was cut) is put into
    ``windows``.

    Each split's labels are encoded by ``task`` (default single-label: class indices).

    Returns:
        ``(ids, labels, max_length, pad_length)``; ``pad_length`` is None for per-batch padding.
    """
    names = ("train", "validation", "test")
    texts = {n: splits[n]["text"].astype(str).tolist() for n in names}
    if long is None:
        ids = {n: encode_texts(enc, texts[n], max_length).ids for n in names}
    else:
        tokens = {n: encode_batch(enc, texts[n]) for n in names}
        if pad_to == "longest-train" and tokens["train"]:
            # The book's length is the longest training text: the windows are made at that length.
            max_length = min(max_length, max(max(len(x), 1) for x in tokens["train"]))
            long = long.fitted(max_length)
        made = {n: windows_of(tokens[n], max_length, long) for n in names}
        ids = {n: w.ids for n, w in made.items()}
        if windows is not None:
            windows.update(made)
    encoder = task or SingleLabel()
    labels: dict[str, list[Any]] = {n: encoder.encode_labels(splits[n], classes) for n in names}
    pad_length = None
    if pad_to == "longest-train" and ids["train"]:
        pad_length = max_length = max(len(x) for x in ids["train"])
        ids = {n: [x[:max_length] for x in v] for n, v in ids.items()}
    return ids, labels, max_length, pad_length
