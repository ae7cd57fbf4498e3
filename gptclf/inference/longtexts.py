"""Texts longer than ``max_length``: cut them (``truncate``, ``head-tail``) or read them whole in
overlapping windows (``window``) whose logits are aggregated back into one row per text.

The settings (:class:`gptclf.data.long_texts.LongTexts`) live with the data; here
:func:`text_windows` turns one token list into its windows (one for ``truncate`` and ``head-tail``,
or for any text that fits); :func:`windows_of` does it for a list of texts and keeps which text
each window belongs to (:class:`WindowMap`); :func:`aggregate` turns per-window logits back into
per-text logits (differentiable: training takes its loss on them, so a text counts once however
many windows it has). :class:`WindowedSource` presents the windows' model inputs as a source of one
row per text, so that training, the inference loop and the cache build take texts read in windows
like any others. :func:`piecewise_logits` runs a stream's windows through the inference loop in
pieces of a bounded number of windows, so a 100,000-token line costs no more memory than a chunk of
ordinary texts.

A text that fits in one window is one window under every mode, and the aggregate of one row is
that row exactly, so short texts get bit-identical logits whatever the mode. Each window is an
ordinary text to the batching (padded per batch, read at its last real token), so a window's logits
never depend on the other texts of its batch.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch

from gptclf.data.long_texts import LongCounts, LongTexts
from gptclf.inference.batching import Batch, Rows, Source, to_device
from gptclf.model.tokenizer import EOT_ID
from gptclf.progress import Progress


def window_count(n_tokens: int, max_length: int, long: LongTexts) -> int:
    """How many windows (model inputs) a text of ``n_tokens`` tokens is read in: those of
    :func:`text_windows`, counted without making them."""
    if long.mode != "window" or n_tokens <= max_length:
        return 1
    stride = long.stride or max_length
    return len(range(0, n_tokens - max_length, stride)) + 1


def text_windows(ids: list[int], max_length: int, long: LongTexts) -> list[list[int]]:
    """The windows one text is read in (``long`` resolved); an empty text is ``<|endoftext|>``.

    ``window``: windows of ``max_length`` tokens starting every ``stride`` tokens, the last one
    ending at the text's end, so every token is in at least one window.
    """
    if not ids:
        return [[EOT_ID]]
    n = len(ids)
    if n <= max_length:
        return [ids]
    if long.mode == "head-tail":
        head = long.head_tokens or 0
        return [ids[:head] + ids[n - (max_length - head) :]]
    if long.mode != "window":
        return [ids[:max_length]]
    stride = long.stride or max_length
    starts = [*range(0, n - max_length, stride), n - max_length]
    return [ids[s : s + max_length] for s in starts]


@dataclass
class WindowMap:
    """Which windows belong to which text: text ``i`` is rows ``starts[i] .. starts[i] + counts[i]``.

    Attributes:
        starts: First window row of each text.
        counts: Windows of each text (>= 1).
        aggregate: ``mean`` or ``max``.
        mode: The long-texts mode the windows were made with (part of a resume's data signature).
    """

    starts: list[int]
    counts: list[int]
    aggregate: str = "mean"
    mode: str = "window"
    owner: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.owner = torch.repeat_interleave(
            torch.arange(len(self.counts)), torch.as_tensor(self.counts, dtype=torch.long)
        )

    def rows(self, texts: Sequence[int]) -> tuple[list[int], torch.Tensor]:
        """The window rows of ``texts`` and, for each row, the position of its text in ``texts``."""
        rows: list[int] = []
        local: list[int] = []
        for pos, t in enumerate(texts):
            rows.extend(range(self.starts[t], self.starts[t] + self.counts[t]))
            local.extend([pos] * self.counts[t])
        return rows, torch.as_tensor(local, dtype=torch.long)

    def combine(self, logits: torch.Tensor) -> torch.Tensor:
        """(N, K) per-text logits from the (W, K) logits of every window, in text order."""
        return aggregate(logits, self.owner.to(logits.device), len(self.counts), self.aggregate)

    def text_lengths(self, window_lengths: Sequence[int]) -> list[int]:
        """Tokens of each text over its windows (for grouping texts of similar cost into batches)."""
        return [sum(window_lengths[s : s + c]) for s, c in zip(self.starts, self.counts, strict=True)]


def aggregate(logits: torch.Tensor, owner: torch.Tensor, n: int, how: str) -> torch.Tensor:
    """(n, K) logits: the ``mean`` or ``max`` over the rows of ``logits`` (W, K) of each text.

    ``owner`` (W,) holds each row's text (every text has a row). A text of one row gets that row
    exactly (0 + x and x / 1 are exact). Differentiable, for the loss of training.
    """
    k = logits.shape[1]
    if how == "max":
        out = torch.zeros(n, k, dtype=logits.dtype, device=logits.device)
        index = owner[:, None].expand(-1, k)
        return out.scatter_reduce(0, index, logits, reduce="amax", include_self=False)
    sums = torch.zeros(n, k, dtype=logits.dtype, device=logits.device).index_add(0, owner, logits)
    counts = torch.bincount(owner, minlength=n).to(logits.dtype)
    return sums / counts[:, None]


class WindowedSource:
    """Texts read in windows: a :class:`~gptclf.inference.batching.Source` of one row per text over
    ``inner``, whose rows are the windows (``windows`` says which are whose and how they combine).

    Training batches texts: :meth:`batch` runs every window of its texts in one batch, whose
    :meth:`~gptclf.inference.batching.Batch.per_text` folds the windows' logits into one row per
    text (:func:`aggregate` in float32, after the forward, before the loss: a text counts once). The
    inference loop runs :meth:`rows`: the windows, batched by their own lengths like any texts, and
    every window's logits combined into one row per text at the end; its progress counts texts.

    Attributes:
        inner: The windows' model inputs (token ids, or cached states), a row per window.
        windows: Which windows belong to which text, and the aggregate of their logits.
        lengths: Tokens of each text over its windows (training groups texts of similar cost).
        start_block: The first block the model runs (the inner source's).
    """

    def __init__(self, inner: Source, windows: WindowMap) -> None:
        self.inner, self.windows = inner, windows
        self.lengths = windows.text_lengths(inner.lengths)
        self.start_block = inner.start_block

    def batch(self, indices: Sequence[int], device: torch.device) -> Batch:
        """Every window of the texts ``indices``, and how to fold their logits into one row each."""
        rows, owner = self.windows.rows(indices)
        fold = partial(_fold, to_device(owner, device), len(indices), self.windows.aggregate)
        return dataclasses.replace(self.inner.batch(rows, device), fold=fold)

    def rows(self) -> Rows:
        """The windows, each text's logits the aggregate of its windows' (:meth:`WindowMap.combine`)."""
        return Rows(self.inner, self.windows.owner, self.windows.combine)

    def close(self) -> None:
        """Release the inner source."""
        self.inner.close()


def _fold(owner: torch.Tensor, n: int, how: str, logits: torch.Tensor) -> torch.Tensor:
    """(n, K) float32 logits of a batch's texts from those of their windows (``owner``: each one's text)."""
    return aggregate(logits.float(), owner, n, how)


@dataclass
class Windowed:
    """Texts as windows: the model inputs, which text each belongs to, and what was cut."""

    ids: list[list[int]]
    map: WindowMap
    counts: LongCounts


def windows_of(token_lists: Sequence[list[int]], max_length: int, long: LongTexts) -> Windowed:
    """The windows of already tokenised texts (see :func:`text_windows`)."""
    ids: list[list[int]] = []
    starts, counts = [], []
    long_texts = 0
    for seq in token_lists:
        windows = text_windows(seq, max_length, long)
        long_texts += len(seq) > max_length
        starts.append(len(ids))
        counts.append(len(windows))
        ids.extend(windows)
    stats = LongCounts(len(token_lists), long_texts, len(ids))
    return Windowed(ids, WindowMap(starts, counts, long.aggregate, long.mode), stats)


#: Runs a piece of windows through the inference loop and returns their (W, K) logits, a row per
#: window; it is given the windows, which of the piece's texts each belongs to (run them as a
#: :class:`WindowedSource` of that map, so that the progress counts texts) and the progress.
RunWindows = Callable[[list[list[int]], WindowMap, Progress], torch.Tensor]


def piecewise_logits(
    token_lists: Sequence[list[int]],
    max_length: int,
    long: LongTexts,
    run: RunWindows,
    num_classes: int,
    piece: int,
    progress: Progress | None = None,
) -> tuple[torch.Tensor, LongCounts]:
    """(N, K) per-text logits, the windows run ``piece`` at a time (a long text over several pieces).

    The windows of each text are made only when its piece is built, and each piece's logits are
    folded into running per-text sums (or maxima) at once, so memory holds one piece of windows
    whatever the texts' lengths. Texts of one window each in one piece go through ``run`` exactly
    as a plain list of truncated texts would. ``progress`` sees one step over the N texts, however
    many pieces and windows they take (see :class:`_OneStep`).
    """
    n = len(token_lists)
    acc = torch.full((n, num_classes), -torch.inf if long.aggregate == "max" else 0.0)
    seen = torch.zeros(n, dtype=torch.float32)
    counts = LongCounts(texts=n)
    windows: list[list[int]] = []
    owners: list[int] = []
    shown = _OneStep(progress or Progress(), n)

    def flush(unfinished: bool = False) -> None:
        if not windows:
            return
        owner = torch.as_tensor(owners, dtype=torch.long)
        out = run(windows, _piece_map(owners, long), shown).float()
        shown.early += unfinished  # the piece's last text counted as done, yet more windows follow
        if long.aggregate == "max":
            acc.scatter_reduce_(0, owner[:, None].expand(-1, num_classes), out, reduce="amax")
        else:
            acc.index_add_(0, owner, out)
        seen.index_add_(0, owner, torch.ones(len(owners)))
        windows.clear()
        owners.clear()

    try:
        for i, seq in enumerate(token_lists):
            counts.long += len(seq) > max_length
            made = _iter_windows(seq, max_length, long)
            window = next(made, None)  # every text has one (an empty text: <|endoftext|>)
            while window is not None:
                following = next(made, None)  # one ahead: does the text go on past this piece?
                windows.append(window)
                owners.append(i)
                counts.windows += 1
                if len(windows) == piece:
                    flush(unfinished=following is not None)
                window = following
        flush()
    finally:
        shown.finish()
    return (acc if long.aggregate == "max" else acc / seen[:, None]), counts


def _piece_map(owners: list[int], long: LongTexts) -> WindowMap:
    """Which of a piece's texts each of its windows is of (``owners``: the texts, in runs)."""
    counts = [len(list(run)) for _, run in itertools.groupby(owners)]
    return WindowMap([*itertools.accumulate(counts, initial=0)][:-1], counts, long.aggregate, long.mode)


class _OneStep(Progress):
    """The progress of every piece as one step over all the texts.

    Each piece's pass (a :class:`WindowedSource` through ``run_batches``) begins its own step over
    the texts of the piece and counts a text once its last window in the piece is run. Here the
    first begins one step of all ``texts``; the later ones go on in it; and a text whose windows
    continue into the next piece (counted early, in ``early``) is not counted again when the piece
    that ends it does.
    """

    def __init__(self, inner: Progress, texts: int) -> None:
        self.inner = inner
        self.texts = texts
        self.early = 0
        self.started = False

    def begin(self, label: str, total: int | None = None, *, unit: str = "", done: int = 0) -> None:
        """The first piece begins the step of all the texts; the later ones go on in it."""
        if not self.started:
            self.inner.begin(label, self.texts, unit=unit)
            self.started = True

    def advance(self, n: int = 1, **fields: object) -> None:
        """``n`` texts done, less those already counted at the end of an earlier piece."""
        owed = min(self.early, n)
        self.early -= owed
        self.inner.advance(n - owed, **fields)

    def end(self) -> None:
        """A piece ended; the step goes on until :meth:`finish`."""

    def message(self, text: str) -> None:
        """Passed on."""
        self.inner.message(text)

    def finish(self) -> None:
        """The last piece ended (or one failed): end the step."""
        if self.started:
            self.inner.end()


def _iter_windows(seq: list[int], max_length: int, long: LongTexts) -> Any:
    """The windows of one text, made one at a time (a 100,000-token text's are never all held)."""
    n = len(seq)
    if long.mode != "window" or n <= max_length:
        yield from text_windows(seq, max_length, long)
        return
    stride = long.stride or max_length
    for start in [*range(0, n - max_length, stride), n - max_length]:
        yield seq[start : start + max_length]
