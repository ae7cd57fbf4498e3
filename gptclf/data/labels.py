"""How ``prepare`` reads labels: the seam between one class per row and a list of labels per row.

:func:`gptclf.data.prepare.prepare` runs the same steps for every kind of label (check the options,
read the table, drop repeated texts, split, count, write all or nothing); a :class:`LabelReader`
does what differs. :class:`ClassLabels` reads one class per row and balances and splits each class
on its own (:mod:`gptclf.data.rows`); :class:`LabelLists` (``prepare --multi-label``) reads a list
of labels per row, or 0/1 columns (:mod:`gptclf.data.labelsets`), and splits by iterative
stratification (:mod:`gptclf.data.stratify`); balancing is ``none`` there: resampling rows to
balance one label unbalances the others (``finetune --class-weights balanced`` weights each label's
positives instead). Which reader a prepared folder was written by is what its labels.json says
(:func:`reader_of`): a folder keeps its format whatever reads it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from array import array
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd

from gptclf.data.decoding import is_stdin
from gptclf.data.labelsets import (
    DEFAULT_SEP,
    MULTI_KEY,
    REPEATED,
    check_separator,
    choose_labels,
    iter_multilabel,
    iter_pairs,
    join_labels,
    matrix_cooccurrence,
    matrix_counts,
    parse_label_columns,
    parse_prepared_labels,
)
from gptclf.data.long_steps import counted
from gptclf.data.rows import (
    DUPLICATE,
    UNDERSAMPLED,
    UNKNOWN_LABEL,
    Fractions,
    choose_classes,
    plan_split,
)
from gptclf.data.spool import TextSpool
from gptclf.data.stratify import iterative_split, missing_from
from gptclf.data.tables import EMPTY_TEXT, MISSING_LABEL, estimate_rows, iter_table, resolve_format
from gptclf.errors import BadInputError
from gptclf.fileio import sha256_file
from gptclf.progress import Progress

#: Reasons a row is left out, in the order the steps run (and the summary lists them).
REASONS = (EMPTY_TEXT, MISSING_LABEL, UNKNOWN_LABEL, DUPLICATE, UNDERSAMPLED)
T = TypeVar("T")
#: Co-occurring pairs listed in a multi-label report (the most frequent); --json has them all.
PAIRS_SHOWN = 5


@dataclass(frozen=True)
class Source:
    """Where ``prepare`` reads from and how: the file, a known dataset's name (whose format and
    encoding are given with it), the columns."""

    path: Path
    dataset: str | None = None
    fmt: str | None = None
    text_column: str | None = None
    label_column: str | None = None
    encoding: str = "utf-8"


@dataclass
class Read:
    """A table read and its labels checked: the kept rows (their texts in a spool, their labels
    in an array), why others were left out, the classes, how labels.json records the source, and
    labels named twice in one row (label lists).

    Attributes:
        texts: The spool holding the texts, by row number.
        rows: The spool row number of each kept row, in file order.
        labels: Each kept row's class (an index into ``names``); for label lists a (N, K) bool
            matrix, columns in class order.
        dropped: Rows left out so far, by reason.
        names: The classes in order.
        source: labels.json's record of the input.
        repeated: Labels named twice in one row (label lists).
    """

    texts: TextSpool
    rows: np.ndarray
    labels: np.ndarray
    dropped: dict[str, int]
    names: list[str]
    source: dict[str, Any]
    repeated: int = 0

    def keep(self, mask: np.ndarray) -> None:
        """Keep only the rows where ``mask`` is True."""
        self.rows, self.labels = self.rows[mask], self.labels[mask]


@dataclass
class Parts:
    """The three splits as positions into a :class:`Read`'s rows (in the order the split files
    list them; oversampled rows repeat), and what balancing did: rows left out, copies added,
    rare labels."""

    parts: dict[str, np.ndarray]
    undersampled: int = 0
    oversampled: int = 0
    rare: list[str] = field(default_factory=list)


@dataclass
class PrepareSummary:
    """What ``prepare`` did; :meth:`to_dict` is what ``--json`` prints and labels.json records.

    Attributes:
        out: The folder written.
        classes: Class names in order (index = position).
        counts: Split -> class -> rows (label lists: rows carrying the label, and ``(none)``).
        dropped: Reason -> rows left out (``empty text``, ``missing label``, ``unknown label``,
            ``duplicate``, ``undersampled``).
        oversampled: Copies added to the training split by ``oversample``.
        duplicate_texts: Rows whose text already appeared in an earlier kept row (before
            ``dedupe``; 403 in the SMS file).
        duplicates_across_splits: ``"train/test"`` etc. -> distinct texts found in both splits.
        source: Where the data came from (dataset or file, format, columns, sha256).
        balance: ``undersample``, ``oversample`` or ``none``.
        split: Split -> fraction.
        stratify: Whether each class was split on its own.
        dedupe: Whether repeated texts were dropped.
        seed: Seed of every random step.
        lengths: Token lengths of the kept texts (:func:`gptclf.data.lengths.length_report`);
            None when no tokenizer was given (labels.json then has no ``lengths``).
    """

    out: Path
    classes: list[str]
    counts: dict[str, dict[str, int]]
    dropped: dict[str, int]
    oversampled: int
    duplicate_texts: int
    duplicates_across_splits: dict[str, int]
    source: dict[str, Any]
    balance: str
    split: dict[str, float]
    stratify: bool
    dedupe: bool
    seed: int
    lengths: dict[str, Any] | None = None

    #: The report table's title tail and first column.
    kind_note = ""
    first_column = "class"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        out = {**asdict(self), "out": str(self.out)}
        if out["lengths"] is None:  # not counted: labels.json stays as it was without a tokenizer
            del out["lengths"]
        return out

    def rows(self) -> list[tuple[str, list[int], bool]]:
        """The report's count rows: name, count per split, whether it is a total (bold)."""
        splits = list(self.counts)
        rows = [(name, [self.counts[s][name] for s in splits], False) for name in self.classes]
        return [*rows, ("total", [sum(self.counts[s].values()) for s in splits], True)]

    def notes(self) -> list[str]:
        """The report's notes for people, one line each (the token lengths' line is the caller's)."""
        how = "stratified" if self.stratify else "plain shuffled"
        notes = [f"balance {self.balance}, {how} split, seed {self.seed}"]
        notes += self._dropped_note()
        if self.oversampled:
            notes.append(f"oversampled: {self.oversampled:,} copies added to train")
        notes += self._duplicates_note()
        shared = {pair: n for pair, n in self.duplicates_across_splits.items() if n}
        if shared:
            notes.append("texts in two splits: " + ", ".join(f"{pair} {n:,}" for pair, n in shared.items()))
        return notes

    def _dropped_note(self) -> list[str]:
        if not self.dropped:
            return []
        return ["dropped: " + ", ".join(f"{n:,} {reason}" for reason, n in self.dropped.items())]

    def _duplicates_note(self) -> list[str]:
        if self.duplicate_texts and not self.dedupe:
            return [f"{self.duplicate_texts:,} rows repeat an earlier text (--dedupe drops them)"]
        return []


@dataclass
class MultiPrepareSummary(PrepareSummary):
    """:class:`PrepareSummary` of label lists, and what is its own.

    ``counts`` is split -> label -> rows carrying it, with ``(none)``: rows carrying no label.

    Attributes:
        multi_label: Always True (labels.json's mark of label lists).
        label_sep: What joins a row's labels in the split files.
        cooccurrence: label -> label -> rows carrying both, over all splits.
        rare_labels: Labels too rare to be in every split that has a fraction above 0.
        repeated_labels: Labels named twice in one row (deduplicated).
    """

    multi_label: bool = True
    label_sep: str = DEFAULT_SEP
    cooccurrence: dict[str, dict[str, int]] = field(default_factory=dict)
    rare_labels: list[str] = field(default_factory=list)
    repeated_labels: int = 0

    kind_note = " (multi-label)"
    first_column = "label"

    def rows(self) -> list[tuple[str, list[int], bool]]:
        return [
            (name, [self.counts[s][name] for s in self.counts], False) for name in (*self.classes, "(none)")
        ]

    def notes(self) -> list[str]:
        notes = [f"multi-label, iterative stratified split, seed {self.seed}"]
        pairs = sorted(iter_pairs(self.cooccurrence), key=lambda p: -p[2])
        if pairs:
            shown = ", ".join(f"{a}+{b} {n:,}" for a, b, n in pairs[:PAIRS_SHOWN])
            notes.append(f"labels together: {shown}" + (" ..." if len(pairs) > PAIRS_SHOWN else ""))
        if self.rare_labels:
            rare = ", ".join(self.rare_labels)
            notes.append(f"too rare to be in every split: {rare} (add rows that carry them)")
        return [*notes, *self._dropped_note(), *self._duplicates_note()]


class LabelReader(ABC):
    """What ``prepare`` does differently for a kind of label (see the module docstring)."""

    def problems(self, *, dataset: str | None, balance: str | None, label_column: str | None,
                 drop_unknown: bool) -> list[str]:  # fmt: skip
        """What keeps the options from this kind of label (empty: nothing)."""
        return []

    def balance(self, balance: str | None) -> str | None:
        """The ``--balance`` the common checks see."""
        return balance

    @abstractmethod
    def read(
        self,
        source: Source,
        classes: list[str] | None,
        drop_unknown: bool,
        warn: Callable[[str], None] | None,
        spool: TextSpool,
        progress: Progress,
    ) -> Read:
        """Read the table, its texts into ``spool``, and check its labels against ``classes``
        (None: the sorted labels); ``progress`` shows the rows read."""

    @abstractmethod
    def split(self, read: Read, fractions: Fractions, *, balance: str, stratify: bool, seed: int) -> Parts:
        """Balance and split the rows."""

    @abstractmethod
    def summary(self, common: dict[str, Any], read: Read, parts: Parts) -> PrepareSummary:
        """The summary of the folder, from the fields every kind has (``common``)."""

    @abstractmethod
    def cells(self, read: Read, positions: np.ndarray) -> Iterator[str]:
        """The label cells of the rows at ``positions``, as the split files hold them."""

    @abstractmethod
    def parse(
        self, frame: pd.DataFrame, classes: list[str], meta: Mapping[str, Any], where: str
    ) -> pd.DataFrame:
        """A split read back from its file: the ``label`` column as the reader holds it in memory."""


class ClassLabels(LabelReader):
    """One class per row; balanced (``--balance``) and split per class (``--stratify``)."""

    def read(
        self,
        source: Source,
        classes: list[str] | None,
        drop_unknown: bool,
        warn: Callable[[str], None] | None,
        spool: TextSpool,
        progress: Progress,
    ) -> Read:
        path, s = source.path, source
        dropped: Counter[str] = Counter()
        if s.dataset is not None:
            records = iter_table(path, dropped, fmt=s.fmt, encoding=s.encoding)
        else:
            records = iter_table(path, dropped, s.text_column, s.label_column, s.fmt, s.encoding)
        # A label id per row, in the order labels first appear; the texts go to the spool.
        codes, index = array("i"), dict[str, int]()
        for text, label in _counted(records, path, s.fmt, progress):
            codes.append(index.setdefault(label, len(index)))
            spool.add(text)
        if s.dataset is not None:
            record: dict[str, Any] = {"dataset": s.dataset, "file": _file_name(path)}
        else:
            record = {"file": _file_name(path), "format": resolve_format(path, s.fmt)}
            if record["format"] != "sms":
                record |= {"text_column": s.text_column or "text", "label_column": s.label_column or "label"}
            record["encoding"] = s.encoding
        record |= _file_sha256(path)
        ids = np.frombuffer(codes, dtype=np.int32) if codes else np.zeros(0, dtype=np.int32)
        counts = dict(zip(index, np.bincount(ids, minlength=len(index)).tolist(), strict=True))
        names = choose_classes(counts, classes, drop_unknown, path, dict(dropped))
        position = {name: i for i, name in enumerate(names)}
        labels = np.array([position.get(label, -1) for label in index], dtype=np.int64)[ids]
        kept = labels >= 0
        read = Read(spool, np.flatnonzero(kept), labels[kept], dict(dropped), names, record)
        if not kept.all():  # only with drop_unknown: choose_classes refused them otherwise
            read.dropped[UNKNOWN_LABEL] = int((~kept).sum())
        return read

    def split(self, read: Read, fractions: Fractions, *, balance: str, stratify: bool, seed: int) -> Parts:
        result = plan_split(read.labels, read.names, fractions, balance=balance, stratify=stratify, seed=seed)
        read.dropped[UNDERSAMPLED] = result.undersampled
        return Parts(result.parts, result.undersampled, result.oversampled)

    def summary(self, common: dict[str, Any], read: Read, parts: Parts) -> PrepareSummary:
        k = len(read.names)
        counts = {
            s: dict(zip(read.names, np.bincount(read.labels[p], minlength=k).tolist(), strict=True))
            for s, p in parts.parts.items()
        }
        dropped = {r: read.dropped[r] for r in REASONS if read.dropped.get(r)}
        return PrepareSummary(counts=counts, dropped=dropped, oversampled=parts.oversampled, **common)

    def cells(self, read: Read, positions: np.ndarray) -> Iterator[str]:
        names = read.names
        return (names[i] for i in read.labels[positions].tolist())

    def parse(
        self, frame: pd.DataFrame, classes: list[str], meta: Mapping[str, Any], where: str
    ) -> pd.DataFrame:
        unknown = sorted(set(frame["label"]) - set(classes))
        if unknown:
            raise BadInputError(f"{where} has labels not in labels.json: {unknown}")
        return frame


class LabelLists(LabelReader):
    """A list of labels per row (possibly empty), or one 0/1 column per label.

    Attributes:
        sep: What separates the labels of a list in one cell (default ``|``); a JSONL file may
            hold a JSON list instead.
        columns: One 0/1 column per label (their names are the labels), instead of a label column.
    """

    def __init__(self, sep: str | None = None, columns: str | Sequence[str] | None = None) -> None:
        self.given_sep, self.given_columns = sep, columns
        self.sep = sep or DEFAULT_SEP
        self.columns: list[str] | None = None

    def problems(self, *, dataset: str | None, balance: str | None, label_column: str | None,
                 drop_unknown: bool) -> list[str]:  # fmt: skip
        problems = []
        if dataset is not None:
            problems.append(f"--multi-label reads --input FILE; the dataset {dataset!r} is single-label")
        if balance not in (None, "none"):
            problems.append(
                f"--balance {balance} is for single-label data: resampling rows for one label unbalances "
                "the others; leave it out and use finetune --class-weights balanced"
            )
        if self.given_columns is not None and label_column is not None:
            problems.append("--label-columns replaces --label-column: give one or the other")
        if self.given_sep is not None and self.given_columns is not None:
            problems.append("--label-sep applies to a label column, not to --label-columns")
        if self.given_sep == "":
            problems.append("--label-sep must not be empty")
        if drop_unknown:
            problems.append("--drop-unknown is for single-label data: name every label in --classes")
        try:
            self.columns = parse_label_columns(self.given_columns)
        except BadInputError as exc:
            problems.append(str(exc))
        return problems

    def balance(self, balance: str | None) -> str | None:
        return None  # refused above unless none: the common check then resolves it to none

    def read(
        self,
        source: Source,
        classes: list[str] | None,
        drop_unknown: bool,
        warn: Callable[[str], None] | None,
        spool: TextSpool,
        progress: Progress,
    ) -> Read:
        s, tally = source, Counter[str]()
        records = iter_multilabel(
            s.path, tally, text_column=s.text_column, label_column=s.label_column, label_columns=self.columns,
            sep=self.sep, fmt=s.fmt, encoding=s.encoding,
        )  # fmt: skip
        # Each row's labels as label ids (in the order labels first appear), end to end.
        codes, ends, index = array("i"), array("q"), dict[str, int]()
        for _, text, names in _counted(records, s.path, s.fmt, progress):
            codes.extend(index.setdefault(name, len(index)) for name in names)
            ends.append(len(codes))
            spool.add(text)
        if not ends:
            raise BadInputError(f"{s.path} has no row with a text")
        ids = np.frombuffer(codes, dtype=np.int32) if codes else np.zeros(0, dtype=np.int32)
        counts = dict(zip(index, np.bincount(ids, minlength=len(index)).tolist(), strict=True))
        names = choose_labels(counts, classes or self.columns, s.path)
        check_separator(names, self.sep)
        repeated = tally[REPEATED]
        if repeated and warn is not None:
            warn(f"{repeated} labels were named twice in one row; each is kept once")
        record: dict[str, Any] = {
            "file": _file_name(s.path),
            "format": resolve_format(s.path, s.fmt),
            "encoding": s.encoding,
        }
        record |= {"text_column": s.text_column or "text"}
        record |= (
            {"label_columns": self.columns} if self.columns else {"label_column": s.label_column or "label"}
        )
        record |= _file_sha256(s.path)
        position = np.array([names.index(name) for name in index], dtype=np.int64)
        matrix = np.zeros((len(ends), len(names)), dtype=bool)
        row_of = np.repeat(np.arange(len(ends)), np.diff(np.frombuffer(ends, dtype=np.int64), prepend=0))
        matrix[row_of, position[ids]] = True
        dropped = {EMPTY_TEXT: tally[EMPTY_TEXT]} if tally[EMPTY_TEXT] else {}
        return Read(spool, np.arange(len(ends)), matrix, dropped, names, record, repeated)

    def split(self, read: Read, fractions: Fractions, *, balance: str, stratify: bool, seed: int) -> Parts:
        """Iterative stratification; every label needs a positive row in the training split."""
        matrix, names = read.labels, read.names
        split_of = iterative_split(matrix, fractions, seed)
        parts = {}
        for index, name in enumerate(("train", "validation", "test")):
            # Each split keeps the seeded shuffle of the rows, not the file order.
            parts[name] = np.random.default_rng(seed + index).permutation(np.flatnonzero(split_of == index))
        counts = matrix_counts(matrix[parts["train"]], names)
        absent = [n for n in names if counts[n] == 0]
        if absent:  # nothing to learn them from
            raise BadInputError(
                f"labels {', '.join(map(repr, absent))} have no positive example in the training split: "
                "add rows that carry them, or leave them out of --classes"
            )
        return Parts(parts, rare=[names[i] for i in missing_from(matrix, split_of, fractions)])

    def summary(self, common: dict[str, Any], read: Read, parts: Parts) -> PrepareSummary:
        counts = {s: matrix_counts(read.labels[p], read.names) for s, p in parts.parts.items()}
        common = {**common, "balance": "none", "stratify": True}
        return MultiPrepareSummary(
            counts=counts, dropped=read.dropped, oversampled=0, label_sep=self.sep,
            cooccurrence=matrix_cooccurrence(read.labels, read.names), rare_labels=parts.rare,
            repeated_labels=read.repeated, **common,
        )  # fmt: skip

    def cells(self, read: Read, positions: np.ndarray) -> Iterator[str]:
        names, matrix, joined = read.names, read.labels, dict[bytes, str]()
        for p in positions.tolist():
            row = matrix[p]
            key = row.tobytes()
            if key not in joined:
                joined[key] = join_labels(
                    [n for n, on in zip(names, row.tolist(), strict=True) if on], self.sep
                )
            yield joined[key]

    def parse(
        self, frame: pd.DataFrame, classes: list[str], meta: Mapping[str, Any], where: str
    ) -> pd.DataFrame:
        """Each cell a list of labels, held as a tuple in memory."""
        sep = meta.get("label_sep", DEFAULT_SEP)
        frame["label"] = parse_prepared_labels(frame["label"], classes, sep, where)
        return frame


def label_reader(multi_label: bool, sep: str | None, columns: str | None) -> LabelReader:
    """The reader ``prepare``'s flags ask for.

    Raises:
        BadInputError: ``--label-sep`` or ``--label-columns`` without ``--multi-label``.
    """
    if not multi_label:
        if sep is not None or columns is not None:
            raise BadInputError("--label-sep and --label-columns go with --multi-label")
        return ClassLabels()
    return LabelLists(sep, columns)


def reader_of(meta: Mapping[str, Any] | None) -> LabelReader:
    """The reader a prepared folder was written by, from its labels.json (label lists are marked
    ``multi_label: true``; absent: one class per row)."""
    if meta and meta.get(MULTI_KEY) is True:
        return LabelLists(meta.get("label_sep"))
    return ClassLabels()


def _file_name(path: Path) -> str:
    """How the prepared set's record names its input: the file's name, or ``stdin``."""
    return "stdin" if is_stdin(path) else path.name


def _counted(records: Iterator[T], path: Path, fmt: str | None, progress: Progress) -> Iterator[T]:
    """``records`` counted on ``progress`` as the step of reading ``path`` (rows, rows/s, and an
    ETA where the file's size tells about how many rows it holds)."""
    return counted(records, progress, f"reading {_file_name(path)}", estimate_rows(path, fmt))


def _file_sha256(path: Path) -> dict[str, str]:
    """The input's sha256 for the record; a stream read from stdin has no file to hash again."""
    return {} if is_stdin(path) else {"sha256": sha256_file(path)}
