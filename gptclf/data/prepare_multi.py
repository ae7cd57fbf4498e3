"""``gptclf prepare --multi-label``: a multi-label table -> a prepared folder.

The steps mirror :func:`gptclf.data.prepare.prepare`: read the table (:mod:`gptclf.data.labelsets`: a label
list per row, or 0/1 columns), check the labels against ``--classes``, with ``dedupe`` drop
repeated texts, split by iterative stratification (:mod:`gptclf.data.stratify`), then write the four
files all or nothing (:func:`gptclf.data.prepared.write_prepared`). Balancing is ``none``: resampling
rows to balance one label unbalances the others; ``finetune --class-weights balanced`` weights each
label's positives instead. Any bad input raises before anything is written.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import tiktoken

from gptclf.data.labelsets import (
    DEFAULT_SEP,
    MULTI_KEY,
    check_separator,
    cooccurrence,
    join_labels,
    label_counts,
    label_matrix,
    parse_label_columns,
    read_multilabel_table,
    select_labels,
)
from gptclf.data.lengths import length_report
from gptclf.data.prepare import DEFAULT_SPLIT, PrepareOptions, PrepareSummary, check_options
from gptclf.data.prepared import SPLITS, write_prepared
from gptclf.data.rows import DUPLICATE, Fractions, shared_texts
from gptclf.data.stratify import iterative_split, missing_from
from gptclf.data.tables import resolve_format
from gptclf.errors import BadInputError
from gptclf.fileio import sha256_file


@dataclass
class MultiPrepareSummary(PrepareSummary):
    """:class:`gptclf.data.prepare.PrepareSummary` of multi-label data, and what is its own.

    ``counts`` is split -> label -> rows carrying it, with ``(none)``: rows carrying no label.

    Attributes:
        multi_label: Always True (labels.json's mark of multi-label data).
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


def multi_problems(
    *, dataset: str | None, balance: str | None, label_sep: str | None, label_columns: Any, label_column: Any
) -> list[str]:
    """What keeps the options from a multi-label prepare (empty: none)."""
    problems = []
    if dataset is not None:
        problems.append(f"--multi-label reads --input FILE; the dataset {dataset!r} is single-label")
    if balance not in (None, "none"):
        problems.append(
            f"--balance {balance} is for single-label data: resampling rows for one label unbalances "
            "the others; leave it out and use finetune --class-weights balanced"
        )
    if label_columns is not None and label_column is not None:
        problems.append("--label-columns replaces --label-column: give one or the other")
    if label_sep is not None and label_columns is not None:
        problems.append("--label-sep applies to a label column, not to --label-columns")
    if label_sep == "":
        problems.append("--label-sep must not be empty")
    return problems


def check_multi_options(
    out: Path,
    *,
    dataset: str | None = None,
    fmt: str | None = None,
    text_column: str | None = None,
    label_column: str | None = None,
    label_columns: str | Sequence[str] | None = None,
    label_sep: str | None = None,
    classes: str | Sequence[str] | None = None,
    balance: str | None = None,
    split: str | Sequence[float | str] = DEFAULT_SPLIT,
    seed: int = 123,
    drop_unknown: bool = False,
    force: bool = False,
) -> PrepareOptions:
    """:func:`gptclf.data.prepare.check_options` and the multi-label rules, all in one message.

    Raises:
        BadInputError: Every problem found.
    """
    problems = multi_problems(
        dataset=dataset, balance=balance, label_sep=label_sep, label_columns=label_columns,
        label_column=label_column,
    )  # fmt: skip
    if drop_unknown:
        problems.append("--drop-unknown is for single-label data: name every label in --classes")
    try:
        parse_label_columns(label_columns)
    except BadInputError as exc:
        problems.append(str(exc))
    options = None
    try:
        options = check_options(
            out, dataset=dataset, fmt=fmt, text_column=text_column, label_column=label_column,
            classes=classes, balance=None, split=split, seed=seed, force=force,
        )  # fmt: skip
    except BadInputError as exc:
        problems.append(str(exc))
    if problems:
        raise BadInputError("; ".join(problems))
    assert options is not None
    return options


def prepare_multilabel(
    out: Path,
    input_path: Path,
    *,
    fmt: str | None = None,
    text_column: str | None = None,
    label_column: str | None = None,
    label_columns: str | Sequence[str] | None = None,
    label_sep: str | None = None,
    encoding: str = "utf-8",
    classes: str | Sequence[str] | None = None,
    balance: str | None = None,
    split: str | Sequence[float | str] = DEFAULT_SPLIT,
    seed: int = 123,
    dedupe: bool = False,
    drop_unknown: bool = False,
    force: bool = False,
    warn: Callable[[str], None] | None = None,
    tokenizer: tiktoken.Encoding | None = None,
    max_length: int | None = None,
) -> MultiPrepareSummary:
    """Read, check, split and write multi-label data (see the module docstring).

    Args:
        out: Folder to write the prepared set into.
        input_path: A CSV, TSV or JSONL file.
        label_columns: One 0/1 column per label (the column names are the labels), instead of
            one ``label_column`` holding a list per row.
        label_sep: What separates the labels of a list in one cell (default ``|``); a JSONL
            file may hold a JSON list instead.
        warn: Called with a line for people (labels named twice in a row), or None.
        tokenizer: GPT-2's tokenizer, to count the texts' lengths in tokens (None: not counted).
        max_length: Also count the texts longer than this many tokens.
        Others: As for :func:`gptclf.data.prepare.prepare`.

    Raises:
        BadInputError: Any bad option or input; ``out`` is then left as it was.
    """
    out, path = Path(out), Path(input_path)
    options = check_multi_options(
        out, fmt=fmt, text_column=text_column, label_column=label_column, label_columns=label_columns,
        label_sep=label_sep, classes=classes, balance=balance, split=split, seed=seed,
        drop_unknown=drop_unknown, force=force,
    )  # fmt: skip
    fractions = options.fractions
    columns = parse_label_columns(label_columns)
    sep = label_sep or DEFAULT_SEP
    table = read_multilabel_table(
        path, text_column=text_column, label_column=label_column, label_columns=columns,
        sep=sep, fmt=fmt, encoding=encoding,
    )  # fmt: skip
    frame, names = select_labels(table.frame, options.classes or columns, path)
    check_separator(names, sep)
    dropped = dict(table.dropped)
    duplicate_texts = int(frame["text"].duplicated().sum())
    if dedupe and duplicate_texts:
        frame = frame[~frame["text"].duplicated()]
        dropped[DUPLICATE] = duplicate_texts
    if table.repeated and warn is not None:
        warn(f"{table.repeated} labels were named twice in one row; each is kept once")
    parts, rare = _split(frame, names, fractions, seed)
    _check_training(parts["train"], names)
    summary = MultiPrepareSummary(
        out=out, classes=names,
        counts={s: label_counts(parts[s], names) for s in SPLITS},
        dropped=dropped, oversampled=0, duplicate_texts=duplicate_texts,
        duplicates_across_splits=shared_texts(parts),
        source=_source(path, fmt, encoding, text_column, label_column, columns), balance="none",
        split={s: float(f) for s, f in zip(SPLITS, fractions, strict=True)},
        stratify=True, dedupe=dedupe, seed=seed, label_sep=sep,
        cooccurrence=cooccurrence(frame, names), rare_labels=rare, repeated_labels=table.repeated,
    )  # fmt: skip
    if tokenizer is not None:
        summary.lengths = length_report(
            tokenizer, [t for s in SPLITS for t in parts[s]["text"].astype(str)], max_length
        )
    _write(out, parts, summary)
    return summary


def _source(
    path: Path,
    fmt: str | None,
    encoding: str,
    text_column: str | None,
    label_column: str | None,
    columns: list[str] | None,
) -> dict[str, Any]:
    """How labels.json records where the data came from."""
    source: dict[str, Any] = {"file": path.name, "format": resolve_format(path, fmt), "encoding": encoding}
    source |= {"text_column": text_column or "text"}
    source |= {"label_columns": columns} if columns else {"label_column": label_column or "label"}
    return {**source, "sha256": sha256_file(path)}


def _write(out: Path, parts: dict[str, pd.DataFrame], summary: MultiPrepareSummary) -> None:
    """The split files (a row's labels joined by the separator) and labels.json, all or nothing."""
    meta = summary.to_dict()
    del meta["out"]  # the folder may move; the files must not change with it
    assert meta[MULTI_KEY] is True
    sep = summary.label_sep
    written = {
        s: part.assign(label=[join_labels(r, sep) for r in part["label"]]) for s, part in parts.items()
    }
    write_prepared(out, written, meta)


def _split(
    frame: pd.DataFrame, names: list[str], fractions: Fractions, seed: int
) -> tuple[dict[str, pd.DataFrame], list[str]]:
    """The three splits (iterative stratification) and the labels too rare to be in each."""
    frame = frame.reset_index(drop=True)
    matrix = np.asarray(label_matrix(frame["label"], names), dtype=np.int64).reshape(-1, len(names))
    split_of = iterative_split(matrix, fractions, seed)
    parts = {}
    for index, name in enumerate(SPLITS):
        # Each split keeps the seeded shuffle of the rows, not the file order.
        rows = np.random.default_rng(seed + index).permutation(np.flatnonzero(split_of == index))
        parts[name] = frame.loc[rows, ["text", "label"]].reset_index(drop=True)
    rare = [names[i] for i in missing_from(matrix, split_of, fractions)]
    return parts, rare


def _check_training(train: pd.DataFrame, names: list[str]) -> None:
    """Refuse labels without a positive example in the training split (nothing to learn them from).

    Raises:
        BadInputError: Naming them.
    """
    counts = label_counts(train, names)
    absent = [n for n in names if counts[n] == 0]
    if absent:
        raise BadInputError(
            f"labels {', '.join(map(repr, absent))} have no positive example in the training split: "
            "add rows that carry them, or leave them out of --classes"
        )
