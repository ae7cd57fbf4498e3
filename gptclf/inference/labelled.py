"""Labelled texts for the verbs that judge a run: a split of its prepared data or a labelled file.

A run records the prepared folder it was trained on (``run.json``: ``data.dir``), so
``evaluate RUN --split test`` finds the test split again; ``data_dir`` overrides it. A labelled file
(CSV, TSV, JSONL) is read with the same loader that ``prepare`` uses; its labels must be classes of
the run, read and encoded by the run's task (:meth:`gptclf.tasks.base.Task.read_labelled_file`).
``evaluate`` and ``calibrate`` share :class:`DataChoice`.

For ``evaluate`` (``compact``) the texts are tokenised as they are read, a chunk at a time, into
:class:`~gptclf.inference.batching.TokenIds` (two bytes a token), the labels into a numpy array, and
the texts themselves are kept (packed, :class:`PackedTexts`) only where the error report needs them
(or, for long texts read in pieces or windows, instead of the ids). Nothing is held whole: a
single-label file of any format is streamed a record at a time, a multi-label file and a prepared
split a chunk of rows at a time.
"""

from __future__ import annotations

from array import array
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import tiktoken

from gptclf.data.decoding import is_stdin, source_name
from gptclf.data.prepared import (
    SPLITS,
    iter_split,
    prepared_fingerprint,
    read_meta,
    read_prepared,
    split_rows,
)
from gptclf.data.tables import (
    estimate_rows,
    labelled_pair,
    read_columns,
    read_inputs,
    resolve_format,
)
from gptclf.errors import BadInputError
from gptclf.inference.token_ids import GrowingArray, TokenIds, encode_compact
from gptclf.progress import Progress
from gptclf.rundir import LoadedRun
from gptclf.tasks.base import LabelledFile, Task
from gptclf.tasks.kinds import task_of


@dataclass
class LabelledData:
    """Texts with their true class indices, and where they came from.

    Attributes:
        texts: The texts.
        labels: Index of each text's class in the run's classes.
        source: JSON-ready description of the data: ``{"split", "data", "same_as_training"}`` for
            a split (``same_as_training``: the folder's fingerprint is the one run.json recorded;
            None when the run recorded none), ``{"input", "dropped"}`` for a file.
        ids: Each text's id for the error report: a file's ``id`` column (see :func:`file_data`),
            else its 0-based record position; None: the positions in ``texts`` (a split).
        tokens: The texts' token ids, cut to the run's length (``compact`` reading), else None.
        cut: With ``tokens``: how many texts were longer than the run's length.
        id_file: ``(path, text_column, fmt, encoding)`` of a file whose ``id`` column gives the ids
            of the texts :meth:`ids_of` is asked for (read again then: only the error report needs them).
    """

    texts: Sequence[str]
    labels: Sequence[Any]
    source: dict[str, Any]
    ids: Sequence[Any] | None = None
    tokens: TokenIds | None = None
    cut: int = 0
    id_file: tuple[Path, str | None, str | None, str] | None = field(default=None, repr=False)

    @property
    def size(self) -> int:
        """How many labelled texts."""
        return len(self.labels)

    def ids_of(self, indices: Sequence[int]) -> list[Any]:
        """The ids of the texts at ``indices`` (in that order), as JSON values."""
        if self.id_file is not None:
            positions = [int(self.ids[i]) for i in indices] if self.ids is not None else list(indices)
            return _ids_at(*self.id_file, positions)
        if self.ids is None:
            return [int(i) for i in indices]
        return [_plain(self.ids[i]) for i in indices]


class PackedTexts(Sequence[str]):
    """Texts in one UTF-8 buffer with offsets: a few bytes of overhead a text instead of a Python
    string's fifty-odd."""

    def __init__(self) -> None:
        self._data = bytearray()
        self._ends = array("q")

    def append(self, text: str) -> None:
        """Add one text at the end."""
        self._data += text.encode("utf-8", "surrogatepass")
        self._ends.append(len(self._data))

    def __len__(self) -> int:
        return len(self._ends)

    def __getitem__(self, i: int) -> str:  # type: ignore[override]
        if i < 0:
            i += len(self)
        start = self._ends[i - 1] if i > 0 else 0
        return self._data[start : self._ends[i]].decode("utf-8", "surrogatepass")

    def __iter__(self) -> Iterator[str]:
        return (self[i] for i in range(len(self)))


class KeptPositions(Sequence[int]):
    """The 0-based record position of each of the ``n`` kept rows of a file, from the records
    dropped (usually none or few): no number held a row. Kept row ``i`` is record ``i`` plus the
    dropped records before it.
    """

    def __init__(self, dropped: np.ndarray, n: int) -> None:
        self.n = n
        # Dropped record j (the positions are sorted) has dropped[j] - j kept records before it.
        self._kept_before = dropped - np.arange(len(dropped), dtype=np.int64)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:  # type: ignore[override]
        if not 0 <= i < self.n:
            raise IndexError(i)
        return int(i + np.searchsorted(self._kept_before, i, side="right"))


def _plain(value: Any) -> Any:
    """A numpy scalar as the Python value it holds (ids are dumped as JSON)."""
    return value.item() if isinstance(value, np.generic) else value


def _labelled(
    frame: pd.DataFrame,
    task: Task,
    classes: list[str],
    where: str,
    source: dict[str, Any],
    purpose: str = "evaluate",
) -> LabelledData:
    """Texts and targets of a (text, label) frame, encoded by the run's task and checked against
    the run's classes (a class index, or a 0/1 row over the labels)."""
    if frame.empty:
        raise BadInputError(f"{where} has no rows to {purpose}")
    return LabelledData(frame["text"].astype(str).tolist(), task.encode_labels(frame, classes, where), source)


def recorded_data_dir(run: LoadedRun) -> Path:
    """The prepared folder a run was trained on, as recorded in its run.json.

    A relative path is taken from the working directory first, then from the run directory.

    Raises:
        BadInputError: The run records no folder, or it is gone.
    """
    recorded = (run.info.get("data") or {}).get("dir")
    if not recorded:
        raise BadInputError(
            f"{run.path / 'run.json'} records no prepared data folder: pass --data DIR or --input FILE"
        )
    path = Path(recorded)
    for candidate in (path, run.path / path):
        if candidate.is_dir():
            return candidate
    raise BadInputError(
        f"the data folder this run was trained on ({recorded}) is not there any more: "
        "pass --data DIR (a folder written by `gptclf prepare`) or --input FILE"
    )


def split_data(
    run: LoadedRun,
    split: str = "test",
    data_dir: Path | None = None,
    purpose: str = "evaluate",
    compact: Compact | None = None,
) -> LabelledData:
    """One split of a prepared folder (``data_dir``, or the one the run was trained on).

    ``purpose`` names what the texts are for in the message about an empty split; with ``compact``
    the texts are tokenised (see :class:`Compact`).

    Raises:
        BadInputError: An unknown split, no folder, or labels that are not classes of the run.
    """
    if split not in SPLITS:
        raise BadInputError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")
    directory = Path(data_dir) if data_dir is not None else recorded_data_dir(run)
    meta = read_meta(directory)
    held = task_of(meta)
    if held.key != run.task.key:
        raise BadInputError(
            f"this run is {run.task.name} and {directory} holds {held.name} data: "
            "pass the data the run was trained on"
        )
    recorded = (run.info.get("data") or {}).get("fingerprint")
    # A test split from a different prepare run may overlap the texts this run was trained on.
    same = None if not recorded else recorded == prepared_fingerprint(directory)
    source = {"split": split, "data": str(directory), "same_as_training": same}
    where = f"the {split} split of {directory}"
    if compact is not None:  # a chunk of rows at a time: memory in the texts' token ids
        frames = iter_split(directory, split, meta)
        return _gathered(run, frames, where, purpose, compact, split_rows(meta, split), source)
    frame = read_prepared(directory).splits[split]
    return _labelled(frame, run.task, run.classes, where, source, purpose)


def file_data(
    run: LoadedRun,
    path: Path,
    *,
    text_column: str | None = None,
    label_column: str | None = None,
    fmt: str | None = None,
    encoding: str = "utf-8",
    purpose: str = "evaluate",
    read_ids: bool = False,
    compact: Compact | None = None,
) -> LabelledData:
    """A labelled CSV, TSV or JSONL file (columns found as ``prepare`` finds them, or named).

    With ``compact`` the texts are tokenised as they are read (see :class:`Compact`); a single-label
    CSV, TSV, JSONL or Parquet file is then streamed, and its ids are read (``read_ids``) only for the
    texts that :meth:`LabelledData.ids_of` is asked about.

    ``purpose`` names what the texts are for in the message about an empty file.

    Rows without a text or a label are dropped by the loader and counted in ``source["dropped"]``.
    Each text's id is its 0-based record position (dropped records counted, as ``predict``
    counts them); with ``read_ids``, a column (JSON key) named ``id`` gives it instead, as
    ``predict`` reads it (the file is read a second time, so only when an error report wants it).

    Raises:
        BadInputError: An unreadable file, missing columns, or labels that are not classes of the run.
    """
    id_file = None if not read_ids or is_stdin(path) else (path, text_column, fmt, encoding)
    if compact is not None and run.task.key == "single_label":
        chosen = resolve_format(path, fmt)
        if chosen in STREAMED:
            data = _streamed(run, path, (text_column or "text", label_column or "label"), chosen, encoding,
                             purpose, compact)  # fmt: skip
            data.id_file = id_file
            return data
    file = LabelledFile(path, text_column, label_column, fmt, encoding)
    if compact is not None:  # label lists for a multi-label run, a chunk of rows at a time
        dropped: Counter[str] = Counter()
        source = {"input": str(path), "dropped": {}}
        frames = run.task.labelled_frames(file, run.info, dropped, LABEL_CHUNK)
        total = None if is_stdin(path) else estimate_rows(path, resolve_format(path, fmt))
        data = _gathered(run, frames, str(path), purpose, compact, total, source, positions=True)
        source["dropped"] = dict(dropped)
        data.id_file = id_file
        return data
    frame, counts = run.task.read_labelled_file(file, run.info)  # an empty list: no label
    source = {"input": str(path), "dropped": dict(counts)}
    data = _labelled(frame, run.task, run.classes, str(path), source, purpose)
    positions = (frame["row"] - 1).tolist()  # row is the 1-based record number
    data.ids = _record_ids(path, text_column, fmt, encoding, positions) if read_ids else positions
    return data


#: Labels of a streamed file gathered before they join the others; rows of a multi-label file
#: read at a time.
LABEL_CHUNK = 8192
#: The formats a single-label file is streamed from.
STREAMED = ("csv", "tsv", "jsonl", "parquet", "sms")


@dataclass(frozen=True)
class Compact:
    """How ``evaluate`` holds labelled texts as it reads them, a chunk at a time: token ids cut to
    ``max_length`` (the run's) instead of texts, and the texts only with ``keep_texts`` (packed,
    for the error report); without ``tokenise`` (long texts read in pieces or windows) the packed
    texts alone. ``progress`` shows the reading and tokenising (texts done, texts/s, and an ETA
    where the size is known)."""

    enc: tiktoken.Encoding
    max_length: int
    keep_texts: bool = False
    progress: Progress | None = None
    tokenise: bool = True

    def encode(self, texts: Iterable[str], total: int | None) -> tuple[TokenIds | None, int]:
        """The token ids of ``texts`` and how many were cut (without ``tokenise``: the texts are
        only read, None and 0)."""
        if not self.tokenise:
            for _ in texts:
                pass
            return None, 0
        tokens, cut = encode_compact(self.enc, texts, self.max_length, self.progress, total=total)
        return tokens, int(cut.sum())


def _gathered(
    run: LoadedRun,
    frames: Iterable[pd.DataFrame],
    where: str,
    purpose: str,
    compact: Compact,
    total: int | None,
    source: dict[str, Any],
    positions: bool = False,
) -> LabelledData:
    """Texts and targets of ``frames`` (``text``, ``label``, and with ``positions`` the 1-based
    ``row`` that gives each text's id), read one frame after another: each frame's labels encoded
    by the run's task and checked against its classes, its texts tokenised (``compact``); no frame
    is held after its turn.

    Raises:
        BadInputError: No rows, or labels that are not classes of the run (named with ``where``).
    """
    labels: list[np.ndarray] = []
    rows = GrowingArray(np.int64) if positions else None
    texts = PackedTexts() if compact.keep_texts or not compact.tokenise else None

    def each() -> Iterator[str]:
        for frame in frames:
            labels.append(_label_array(run.task.encode_labels(frame, run.classes, where)))
            if rows is not None:
                rows.extend(frame["row"].to_numpy(dtype=np.int64) - 1)
            for text in frame["text"].astype(str):
                if texts is not None:
                    texts.append(text)
                yield text

    tokens, cut = compact.encode(each(), total)
    if not sum(len(part) for part in labels):
        raise BadInputError(f"{where} has no rows to {purpose}")
    data = LabelledData(texts if texts is not None else [], np.concatenate(labels), source)
    data.ids = rows.array() if rows is not None else None
    data.tokens, data.cut = tokens, cut
    return data


def _label_array(labels: Sequence[Any]) -> np.ndarray:
    """Class indices as int64, 0/1 label rows as an (N, K) uint8 array."""
    if len(labels) and not np.isscalar(labels[0]):
        return np.asarray(labels, dtype=np.uint8)
    return np.asarray(labels, dtype=np.int64)


def _streamed(
    run: LoadedRun,
    path: Path,
    columns: tuple[str, str],
    fmt: str,
    encoding: str,
    purpose: str,
    compact: Compact,
) -> LabelledData:
    """A single-label file read and tokenised a chunk at a time, as :func:`file_data` reads it
    whole: the same rows dropped and counted, the same messages for a bad file or label."""
    index = {name: i for i, name in enumerate(run.classes)}
    # The labels, gathered a chunk at a time: two bytes a text (a class index, -1 for an unknown label).
    labels, pending = GrowingArray(np.int16 if len(run.classes) < 2**15 else np.int64), array("q")
    skipped = array("q")  # the records dropped: the kept rows' positions follow from them
    texts = PackedTexts() if compact.keep_texts else None
    unknown: set[str] = set()
    dropped: Counter[str] = Counter()
    records = 0

    def kept() -> Iterator[str]:
        nonlocal records
        for records, (raw_text, raw_label) in enumerate(read_columns(path, columns, fmt, encoding), start=1):
            pair = labelled_pair(raw_text, raw_label, dropped)
            if pair is None:
                skipped.append(records - 1)
                continue
            text, label = pair
            if label not in index:
                unknown.add(label)
            pending.append(index.get(label, -1))
            if len(pending) == LABEL_CHUNK:
                labels.extend(pending)
                del pending[:]
            if texts is not None:
                texts.append(text)
            yield text

    tokens, cut = compact.encode(kept(), estimate_rows(path, fmt))
    labels.extend(np.frombuffer(pending, dtype=np.int64) if pending else [])
    if records == 0:
        raise BadInputError(f"{source_name(path)} has no rows")
    if not labels:
        raise BadInputError(f"{path} has no rows to {purpose}")
    if unknown:
        raise BadInputError(f"{path}: labels not among the classes {list(run.classes)}: {sorted(unknown)}")
    source = {"input": str(path), "dropped": dict(dropped)}
    dropped_at = np.frombuffer(skipped, dtype=np.int64) if skipped else np.zeros(0, dtype=np.int64)
    ids = KeptPositions(dropped_at, len(labels))
    data = LabelledData(texts if texts is not None else [], labels.array(), source, ids)
    data.tokens, data.cut = tokens, cut
    return data


def _ids_at(
    path: Path, text_column: str | None, fmt: str | None, encoding: str, positions: list[int]
) -> list[Any]:
    """The ``id`` column's value of the records at ``positions`` (in that order), read as ``predict``
    reads ids, streaming: only the ids asked for are kept."""
    wanted = set(positions)
    found = {}
    for p, (ident, _) in enumerate(read_inputs(path, text_column, fmt=fmt, encoding=encoding)):
        if p in wanted:
            found[p] = ident
    return [found[p] for p in positions]


def _record_ids(
    path: Path, text_column: str | None, fmt: str | None, encoding: str, positions: list[int]
) -> list[Any]:
    """The ``id`` column's value of the records at ``positions``, read as ``predict`` reads ids.

    Without an ``id`` column (or from stdin, which cannot be read twice) the positions are the ids.
    """
    if is_stdin(path):
        return positions
    every = [i for i, _ in read_inputs(path, text_column, fmt=fmt, encoding=encoding)]
    return [every[p] for p in positions]


@dataclass(frozen=True)
class DataChoice:
    """Which labelled texts a verb reads: a file (``--input``, with its columns, format and
    encoding) or a split of a prepared folder (``--split``, ``--data``). Checked before the run is
    loaded (:meth:`check`), then read (:meth:`load`): ``evaluate`` and ``calibrate`` share it."""

    input_path: Path | None = None
    split: str | None = None
    data: Path | None = None
    text_column: str | None = None
    label_column: str | None = None
    fmt: str | None = None
    encoding: str = "utf-8"

    def check(self) -> None:
        """Refuse a file together with a split, and file-only flags without a file.

        Raises:
            BadInputError: Naming the flags.
        """
        if self.input_path is not None and (self.split is not None or self.data is not None):
            raise BadInputError("--input FILE replaces --split/--data: give one or the other")
        file_only = {"--text-column": self.text_column, "--label-column": self.label_column,
                     "--input-format": self.fmt}  # fmt: skip
        stray = [flag for flag, value in file_only.items() if value is not None and self.input_path is None]
        if stray:
            raise BadInputError(f"{', '.join(stray)} only apply to --input FILE")

    def load(
        self,
        run: LoadedRun,
        default_split: str,
        purpose: str,
        read_ids: bool = False,
        compact: Compact | None = None,
    ) -> LabelledData:
        """The labelled texts: the file, or the split (``default_split`` when none was named);
        tokenised as they are read with ``compact``."""
        if self.input_path is None:
            return split_data(run, self.split or default_split, self.data, purpose=purpose, compact=compact)
        return file_data(
            run,
            self.input_path,
            text_column=self.text_column,
            label_column=self.label_column,
            fmt=self.fmt,
            encoding=self.encoding,
            purpose=purpose,
            read_ids=read_ids,
            compact=compact,
        )
