"""`gptclf prepare`: a labelled table on disk -> a prepared folder (:mod:`gptclf.data.prepared`),
reproducibly and without half-written output.

The steps: check the options (:func:`check_options`, which callers also run before they fetch
anything); read the table once, a record at a time (:mod:`gptclf.data.tables`), its texts into an
unnamed temporary file beside ``out`` and its labels and text hashes into compact arrays
(:mod:`gptclf.data.spool`; stdin alike, as it cannot be read twice); keep the requested classes;
with ``dedupe``, drop repeated texts; balance and split row positions (:mod:`gptclf.data.rows`).
Then the four files are written, the chosen texts read back from the spool, into a temporary
folder beside ``out`` and moved in, so any bad input leaves ``out`` as it was. Memory stays a few
dozen bytes a row whatever the texts' size. Every random step uses ``seed``: the same input and
options give byte-identical files (the same bytes as the in-memory version before, which
tests/fixtures/prepare_sha256.json records). Long steps show on ``progress`` (reading, counting
tokens, writing), each once it has run a moment (:mod:`gptclf.data.long_steps`).

Nothing is downloaded here: a known dataset (``dataset="sms-spam"``) is a file that the caller has
fetched already (:mod:`cli.prepare` does, through :mod:`gptclf.fetch.artefacts`); its name selects
how the file is read and its default balancing, and is recorded in labels.json.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import tiktoken

from gptclf.data.labels import ClassLabels, LabelReader, Parts, PrepareSummary, Read, Source
from gptclf.data.lengths import CONTEXT
from gptclf.data.long_steps import LongSteps
from gptclf.data.prepared import PREPARED_FILES, SPLITS, write_prepared_rows
from gptclf.data.rows import BALANCE_MODES, DUPLICATE, Fractions, parse_classes, parse_split, shared_texts
from gptclf.data.spool import TextSpool, first_occurrences, length_summary, token_lengths
from gptclf.errors import BadInputError
from gptclf.fileio import temp_dir_for
from gptclf.progress import Progress

DEFAULT_SPLIT = "0.7,0.1,0.2"


@dataclass(frozen=True)
class KnownDataset:
    """What the name of a known dataset implies about its file.

    Attributes:
        fmt: Format to read the file with.
        encoding: Text encoding of the file.
        balance: Default ``balance`` (the book's recipe for the SMS set).
    """

    fmt: str
    balance: str
    encoding: str = "utf-8"


#: Known datasets by name (the downloader knows where to get each).
KNOWN_DATASETS: dict[str, KnownDataset] = {"sms-spam": KnownDataset(fmt="sms", balance="undersample")}


@dataclass(frozen=True)
class PrepareOptions:
    """The options of :func:`prepare` as checked by :func:`check_options`.

    Attributes:
        fractions: Train, validation and test fractions.
        classes: Class names in order, or None for the sorted distinct labels.
        balance: ``undersample``, ``oversample`` or ``none`` (the default resolved).
    """

    fractions: Fractions
    classes: list[str] | None
    balance: str


@dataclass(frozen=True)
class PrepareRequest:
    """Everything ``prepare`` is asked, in one value (what the CLI builds once and passes down);
    each field as :func:`prepare`'s argument of the same name."""

    dataset: str | None = None
    fmt: str | None = None
    text_column: str | None = None
    label_column: str | None = None
    encoding: str = "utf-8"
    classes: str | Sequence[str] | None = None
    balance: str | None = None
    split: str | Sequence[float | str] = DEFAULT_SPLIT
    stratify: bool = True
    seed: int = 123
    dedupe: bool = False
    drop_unknown: bool = False
    force: bool = False
    max_length: int | None = None
    labels: LabelReader = field(default_factory=ClassLabels)

    def check(self, out: Path) -> PrepareOptions:
        """:func:`check_options` of this request."""
        r = self
        return check_options(
            out, dataset=r.dataset, fmt=r.fmt, text_column=r.text_column, label_column=r.label_column,
            classes=r.classes, balance=r.balance, split=r.split, seed=r.seed, force=r.force, labels=r.labels,
            drop_unknown=r.drop_unknown,
        )  # fmt: skip


def check_options(
    out: Path,
    *,
    dataset: str | None = None,
    fmt: str | None = None,
    text_column: str | None = None,
    label_column: str | None = None,
    classes: str | Sequence[str] | None = None,
    balance: str | None = None,
    split: str | Sequence[float | str] = DEFAULT_SPLIT,
    seed: int = 123,
    force: bool = False,
    labels: LabelReader | None = None,
    drop_unknown: bool = False,
) -> PrepareOptions:
    """Every check of :func:`prepare`'s options that needs no data, all reported at once.

    Run it before fetching a dataset, so that a bad option or an ``out`` that cannot be written is
    refused before any download. ``out`` is probed by writing (a folder made and removed at once).

    Args:
        out: The folder :func:`prepare` will write.
        dataset: The name of a known dataset, or None for a file of any format.
        fmt, text_column, label_column, classes, balance, split, seed, force, labels, drop_unknown:
            As for :func:`prepare` (the label reader's own problems are named first).

    Raises:
        BadInputError: Every problem found, in one message.
    """
    reader = labels or ClassLabels()
    problems = reader.problems(
        dataset=dataset, balance=balance, label_column=label_column, drop_unknown=drop_unknown
    )
    balance = reader.balance(balance)
    if dataset is not None:
        if dataset not in KNOWN_DATASETS:
            problems.append(f"unknown dataset {dataset!r} (known: {', '.join(KNOWN_DATASETS)})")
        if fmt or text_column or label_column:
            problems.append("--input-format, --text-column and --label-column go with --input, not --dataset")
    if balance is None:
        balance = KNOWN_DATASETS[dataset].balance if dataset in KNOWN_DATASETS else "none"
    elif balance not in BALANCE_MODES:
        problems.append(f"unknown --balance {balance!r} (choose from: {', '.join(BALANCE_MODES)})")
    if not 0 <= seed < 2**32:
        problems.append(f"--seed must be between 0 and 2**32 - 1 (got {seed})")
    fractions: Fractions = (Fraction(1), Fraction(0), Fraction(0))
    try:
        fractions = parse_split(split)
    except BadInputError as exc:
        problems.append(str(exc))
    names = None
    try:
        names = parse_classes(classes)
    except BadInputError as exc:
        problems.append(str(exc))
    if out_problem := _out_problem(Path(out), force):
        problems.append(out_problem)
    if problems:
        raise BadInputError("; ".join(problems))
    return PrepareOptions(fractions=fractions, classes=names, balance=balance)


def prepare(
    out: Path,
    input_path: Path,
    *,
    dataset: str | None = None,
    fmt: str | None = None,
    text_column: str | None = None,
    label_column: str | None = None,
    encoding: str = "utf-8",
    classes: str | Sequence[str] | None = None,
    balance: str | None = None,
    split: str | Sequence[float | str] = DEFAULT_SPLIT,
    stratify: bool = True,
    seed: int = 123,
    dedupe: bool = False,
    drop_unknown: bool = False,
    force: bool = False,
    tokenizer: tiktoken.Encoding | None = None,
    max_length: int | None = None,
    labels: LabelReader | None = None,
    warn: Callable[[str], None] | None = None,
) -> PrepareSummary:
    """Turn a labelled table into a prepared folder (see the module docstring for the steps).

    Args:
        out: Folder to write ``train.csv``, ``validation.csv``, ``test.csv`` and labels.json into.
        input_path: A labelled CSV, TSV, JSONL or SMS-format file (read, never fetched).
        dataset: The name of the known dataset that ``input_path`` holds (``"sms-spam"``): it
            sets the format, the encoding and the default ``balance``, and labels.json records
            it. None: any labelled file, read as ``fmt``, ``text_column``, ... say.
        fmt: Format of ``input_path``; default from its extension.
        text_column: Text column of ``input_path`` (default ``text``).
        label_column: Label column of ``input_path`` (default ``label``).
        encoding: Text encoding of ``input_path`` (a known dataset has its own).
        classes: Class names in order, e.g. ``"spam,ham"``; default: the sorted distinct labels.
        balance: ``undersample`` (down to the smallest class), ``oversample`` (training split
            replicated up to its largest class) or ``none``. Default: the dataset's
            (``undersample`` for ``sms-spam``, the book's recipe), ``none`` for other input.
        split: Train, validation and test fractions; with two, test is the rest.
        stratify: Split each class on its own, so each keeps its proportion in every split
            (within one row). False: the book's split of the shuffled table.
        seed: Seed of every random step.
        dedupe: Drop rows whose text appeared earlier (first occurrence kept).
        drop_unknown: Drop rows whose label is not among ``classes`` instead of refusing them.
        force: Replace a prepared set already in ``out``.
        tokenizer: GPT-2's tokenizer, to count the texts' lengths in tokens (None: not counted).
        max_length: Also count the texts longer than this many tokens.
        labels: How labels are read (:mod:`gptclf.data.labels`): one class per row (default), or
            :class:`~gptclf.data.labels.LabelLists` for ``--multi-label``.
        warn: Called with a line for people (labels named twice in a row), or None.

    Returns:
        The summary, also recorded in labels.json.

    Raises:
        BadInputError: Any bad option or input; ``out`` is then left as it was.
    """
    request = PrepareRequest(
        dataset=dataset, fmt=fmt, text_column=text_column, label_column=label_column, encoding=encoding,
        classes=classes, balance=balance, split=split, stratify=stratify, seed=seed, dedupe=dedupe,
        drop_unknown=drop_unknown, force=force, max_length=max_length, labels=labels or ClassLabels(),
    )  # fmt: skip
    return prepare_request(out, input_path, request, tokenizer=tokenizer, warn=warn)


def prepare_request(
    out: Path,
    input_path: Path,
    request: PrepareRequest,
    *,
    tokenizer: tiktoken.Encoding | None = None,
    warn: Callable[[str], None] | None = None,
    progress: Progress | None = None,
) -> PrepareSummary:
    """:func:`prepare` of one :class:`PrepareRequest` (the verb's core); ``progress`` shows the
    long steps (rows read, tokens counted, rows written)."""
    out, path, r = Path(out), Path(input_path), request
    reader, shown = r.labels, LongSteps(progress or Progress())  # short steps stay silent
    options = r.check(out)
    if r.dataset is not None:
        known = KNOWN_DATASETS[r.dataset]
        source = Source(path, r.dataset, fmt=known.fmt, encoding=known.encoding)
    else:
        source = Source(path, None, r.fmt, r.text_column, r.label_column, r.encoding)
    with TextSpool(_existing_folder(out), out) as spool:
        read = reader.read(source, options.classes, r.drop_unknown, warn, spool, shown)
        first, text_ids = first_occurrences(spool.hashes()[read.rows])
        duplicate_texts = int((~first).sum())
        if r.dedupe and duplicate_texts:
            read.keep(first)
            text_ids = text_ids[first]
            read.dropped[DUPLICATE] = duplicate_texts
        parts = reader.split(
            read, options.fractions, balance=options.balance, stratify=r.stratify, seed=r.seed
        )
        common = {
            "out": out, "classes": read.names, "duplicate_texts": duplicate_texts,
            "duplicates_across_splits": shared_texts({s: text_ids[p] for s, p in parts.parts.items()}),
            "source": read.source, "balance": options.balance, "stratify": r.stratify, "dedupe": r.dedupe,
            "seed": r.seed, "split": {s: float(f) for s, f in zip(SPLITS, options.fractions, strict=True)},
        }  # fmt: skip
        summary = reader.summary(common, read, parts)
        if tokenizer is not None:
            summary.lengths = _lengths(tokenizer, read, parts, r.max_length, shown)
        meta = summary.to_dict()
        del meta["out"]  # the folder may move; the files must not change with it
        rows = {
            s: zip(spool.texts(read.rows[p].tolist()), reader.cells(read, p), strict=True)
            for s, p in parts.parts.items()
        }
        total = sum(len(p) for p in parts.parts.values())
        write_prepared_rows(out, rows, meta, progress=shown, total=total)
    return summary


def _lengths(
    tokenizer: tiktoken.Encoding, read: Read, parts: Parts, max_length: int | None, progress: Progress
) -> dict[str, Any]:
    """The token-length report of every text written (copies included), each distinct row
    tokenized once, the spool read front to back."""
    written = np.concatenate([parts.parts[s] for s in SPLITS])
    distinct, inverse = np.unique(written, return_inverse=True)
    lengths = token_lengths(tokenizer, read.texts, read.rows[distinct], progress)
    return length_summary(lengths[inverse.reshape(-1)], max_length, CONTEXT)


def _existing_folder(out: Path) -> Path:
    """The folder nearest ``out`` that exists (the spool goes there: on the output's disk, and
    checked writable by :func:`check_options`, without making any folder before the data is read)."""
    folder = out.parent
    while not folder.is_dir() and folder != folder.parent:
        folder = folder.parent
    return folder


def _out_problem(out: Path, force: bool) -> str | None:
    """Why ``prepare`` cannot write ``out``, or None."""
    if out.exists() and not out.is_dir():
        return f"--out {out} is a file, not a folder"
    if out.is_dir() and os.path.ismount(out):  # the new set is swapped in as the folder
        return f"--out {out} is a mount point, which prepare cannot replace: name a folder inside it"
    if unwritable := _unwritable(out):
        return unwritable
    present = [name for name in PREPARED_FILES if (out / name).exists()]
    if present and not force:
        return f"{out} already holds a prepared set ({', '.join(present)}); pass --force to replace it"
    return None


def _unwritable(out: Path) -> str | None:
    """Why ``out`` cannot be written, or None. Found by writing (a folder made and removed at
    once), since permission bits say nothing of read-only mounts, /proc, or root: the temporary
    folder goes beside ``out``, and the files into ``out`` where it exists already."""
    ancestor = out.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent  # the folders up to here are made by the write
    if not ancestor.is_dir():
        return f"--out {out} is under {ancestor}, which is a file, not a folder"
    for folder in ([out] if out.is_dir() else []) + [ancestor]:
        try:  # named as gptclf's temporary folders: one a kill leaves is removed by the next run
            temp_dir_for(folder / "write-test").rmdir()
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            return f"--out {out}: cannot write into {folder} ({reason}); choose a folder you can write to"
    return None
