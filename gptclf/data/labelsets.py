"""Multi-label data: texts that carry any number of the labels (none of them included).

Labels are read from one column holding a delimited list (``billing|bug``; in JSONL also a JSON
list of strings) or from several 0/1 columns, one per label (``--label-columns toxic,insult``). A
row with no label is kept: "none of them" is a real answer. In memory a row's labels are a tuple of
names in the order of the classes; in a prepared folder they are joined by labels.json's
``label_sep``.

What a prepared folder records for multi-label data (:func:`label_summary`): ``multi_label:
true``, ``label_sep``, per-label counts per split and the co-occurrence counts (how many rows carry
both labels of a pair; the diagonal is each label's own count).

A list in one cell is cut at every separator: quotes do not protect one (``food|"sci|tech"`` is
refused, as is any label that begins or ends with ``"``), and a label may not hold the separator
(choose another ``--label-sep``). In JSONL a label cell is a string, a list of strings or null; a
number, an object, or a list item that is not a string is refused.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from gptclf.data.tables import EMPTY_TEXT, read_columns, resolve_format
from gptclf.errors import BadInputError

#: The labels.json / run.json key that marks multi-label data and runs.
MULTI_KEY = "multi_label"
#: Default separator of a label list in one cell.
DEFAULT_SEP = "|"
# Listing a thousand unknown labels helps nobody: say how many more there are instead.
_MAX_LISTED = 10
_FLAGS = {"0": False, "1": True, "0.0": False, "1.0": True}


def run_label_sep(info: Mapping[str, Any]) -> str:
    """What joins a multi-label run's labels in files: the separator of the data it was trained on
    (run.json's ``data.label_sep``; ``|`` for a run that records none). ``evaluate --input`` reads
    label lists with it and ``predict`` writes its CSV/TSV ``labels`` column with it."""
    sep = (info.get("data") or {}).get("label_sep")
    return sep if isinstance(sep, str) and sep else DEFAULT_SEP


@dataclass
class MultiTable:
    """A multi-label table read from a file.

    Attributes:
        frame: ``text``, ``label`` (a tuple of label names, possibly empty) and ``row`` (1-based).
        dropped: Rows left out, by reason (empty text).
        repeated: Labels named twice (or more) in one row, removed from that row.
    """

    frame: pd.DataFrame
    dropped: dict[str, int] = field(default_factory=dict)
    repeated: int = 0


def parse_label_columns(spec: str | Sequence[str] | None) -> list[str] | None:
    """Column names from ``"toxic,insult"`` (order kept); None stays None.

    Raises:
        BadInputError: An empty name, or a name given twice.
    """
    if spec is None:
        return None
    names = [n.strip() for n in (spec.split(",") if isinstance(spec, str) else spec)]
    if not names or any(not n for n in names):
        raise BadInputError(f"--label-columns {spec!r}: a column name is empty")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise BadInputError(f"--label-columns names {', '.join(map(repr, twice))} more than once")
    return names


def split_cell(value: Any, sep: str, where: str = "a label cell") -> list[str]:
    """The label names of one cell: a JSON list of strings as it is, a string cut at ``sep``; empty
    pieces and surrounding white space are dropped, so ``""`` and JSON null hold no label.

    Raises:
        BadInputError: A JSON list with an item that is not a string (``[1, {"a": 2}]``), or a cell
            that is neither a string, a list nor null (a number, an object): its label names would
            be Python's spelling of them.
    """
    if value is None:
        return []
    if isinstance(value, list):
        odd = [v for v in value if not isinstance(v, str)]
        if odd:
            raise BadInputError(
                f"{where}: the label list holds {json.dumps(odd[0], ensure_ascii=False)}, which is not a "
                'string: a JSON label list must hold label names as strings (["a", "b"])'
            )
        return [v.strip() for v in value if v.strip()]
    if not isinstance(value, str):
        raise BadInputError(
            f"{where}: the label cell holds {json.dumps(value, ensure_ascii=False)}: give the labels as a "
            f"string joined by {sep!r} or as a JSON list of strings"
        )
    return [piece.strip() for piece in value.split(sep) if piece.strip()]


def check_unquoted(value: Any, sep: str, where: str) -> None:
    """Refuse a label list in one string that quotes a label (``food|"sci|tech"``).

    A separator is never protected by quotes inside a list (the list is one cell, already read by
    the CSV or TSV rules): such a cell would give labels holding quote characters, and a label may
    not hold the separator anyway (:func:`check_separator`). So a label that begins or ends with
    ``"`` is refused rather than read; a ``"`` inside a label (``5"-disk``) is an ordinary character.

    Raises:
        BadInputError: Naming the cell and what to do instead.
    """
    if not isinstance(value, str) or '"' not in value:
        return
    quoted = [p.strip() for p in value.split(sep) if p.strip().startswith('"') or p.strip().endswith('"')]
    if quoted:
        raise BadInputError(
            f"{where}: the label list {value!r} quotes a label ({quoted[0]}); quotes do not protect "
            f"{sep!r} inside a list and a label may not hold it: write the labels unquoted, choosing a "
            "--label-sep that no label holds"
        )


def _dedupe(names: list[str]) -> tuple[list[str], int]:
    """``names`` without repeats (first kept), and how many repeats there were."""
    kept = list(dict.fromkeys(names))
    return kept, len(names) - len(kept)


def _flag(value: Any, column: str, where: str) -> bool:
    """A 0/1 cell as a bool (JSON 0/1 and true/false too)."""
    if isinstance(value, bool):
        return value
    key = str(value).strip() if value is not None else ""
    if key in _FLAGS:
        return _FLAGS[key]
    raise BadInputError(
        f"{where}: column {column!r} holds {value!r}; --label-columns must hold 0 or 1 in every row"
    )


#: Where :func:`iter_multilabel` counts the labels named twice in one row (dropped rows are
#: counted under their reason, :data:`~gptclf.data.tables.EMPTY_TEXT`).
REPEATED = "repeated labels"


def read_multilabel_table(
    path: Path,
    *,
    text_column: str | None = None,
    label_column: str | None = None,
    label_columns: Sequence[str] | None = None,
    sep: str = DEFAULT_SEP,
    fmt: str | None = None,
    encoding: str = "utf-8",
) -> MultiTable:
    """Read a multi-label CSV, TSV or JSONL file (all of :func:`iter_multilabel` in one frame).

    Raises:
        BadInputError: As :func:`iter_multilabel`.
    """
    tally: Counter[str] = Counter()
    records = iter_multilabel(
        path, tally, text_column=text_column, label_column=label_column, label_columns=label_columns,
        sep=sep, fmt=fmt, encoding=encoding,
    )  # fmt: skip
    frame = records_frame(list(records))
    return MultiTable(frame=frame, dropped=dropped_rows(tally), repeated=tally[REPEATED])


def records_frame(records: Sequence[tuple[int, str, tuple[str, ...]]]) -> pd.DataFrame:
    """``text``, ``label`` and ``row`` of :func:`iter_multilabel`'s records."""
    return pd.DataFrame(
        {
            "text": [r[1] for r in records],
            "label": [r[2] for r in records],
            "row": pd.Series([r[0] for r in records], dtype="int64"),
        }
    )


def dropped_rows(tally: Counter[str]) -> dict[str, int]:
    """The rows :func:`iter_multilabel` left out, by reason, from its tally."""
    return {EMPTY_TEXT: tally[EMPTY_TEXT]} if tally[EMPTY_TEXT] else {}


def iter_multilabel(
    path: Path,
    tally: Counter[str],
    *,
    text_column: str | None = None,
    label_column: str | None = None,
    label_columns: Sequence[str] | None = None,
    sep: str = DEFAULT_SEP,
    fmt: str | None = None,
    encoding: str = "utf-8",
) -> Iterator[tuple[int, str, tuple[str, ...]]]:
    """The ``(record number, text, labels)`` of each row of a multi-label CSV, TSV or JSONL file,
    one at a time (a row's labels as named, each once).

    Args:
        path: The file (or ``-``).
        tally: Counts rows dropped for an empty text (:data:`~gptclf.data.tables.EMPTY_TEXT`) and
            labels named twice in one row (:data:`REPEATED`, removed from that row).
        text_column: The text column; default ``text``.
        label_column: The column holding each row's label list; default ``label``.
        label_columns: One 0/1 column per label instead (the column names are the labels).
        sep: What separates the labels of a list held in one string.
        fmt: ``csv``, ``tsv`` or ``jsonl``; default from the extension.
        encoding: Text encoding of the file.

    Raises:
        BadInputError: An unreadable file, a missing column, a 0/1 column holding anything else, a
            label cell that is not a string or a JSON list of strings, a list that quotes a
            label (:func:`check_unquoted`), or no record at all (when the stream ends).
    """
    fmt = resolve_format(path, fmt)
    if fmt == "sms":
        raise BadInputError("--multi-label reads CSV, TSV or JSONL files, not the SMS format")
    columns = [text_column or "text", *(label_columns or [label_column or "label"])]
    number = 0
    for number, record in enumerate(read_columns(path, columns, fmt, encoding), start=1):
        text = "" if record[0] is None else str(record[0])
        where = f"{path}: record {number}"
        if label_columns:
            names = [c for c, v in zip(label_columns, record[1:], strict=True) if _flag(v, c, where)]
        else:
            check_unquoted(record[1], sep, where)
            names = split_cell(record[1], sep, where)
        if not text.strip():
            tally[EMPTY_TEXT] += 1
            continue
        kept, twice = _dedupe(names)
        tally[REPEATED] += twice
        yield number, text, tuple(kept)
    if number == 0:
        raise BadInputError(f"{path} has no rows")


def select_labels(
    frame: pd.DataFrame, names: list[str] | None, path: Path | str
) -> tuple[pd.DataFrame, list[str]]:
    """Check a multi-label table's labels and order each row's labels as the classes are.

    Args:
        frame: ``text`` and ``label`` (tuples of names).
        names: The labels in order (``--classes``), or None: the sorted distinct labels.
        path: The input, for messages.

    Returns:
        The frame with each row's labels in class order, and the classes.

    Raises:
        BadInputError: As :func:`choose_labels`.
    """
    if frame.empty:
        raise BadInputError(f"{path} has no row with a text")
    counts: dict[str, int] = {}
    for row in frame["label"]:
        for name in row:
            counts[name] = counts.get(name, 0) + 1
    names = choose_labels(counts, names, path)
    order = {n: i for i, n in enumerate(names)}
    ordered = frame.assign(label=[tuple(sorted(row, key=order.__getitem__)) for row in frame["label"]])
    return ordered, names


def choose_labels(counts: dict[str, int], names: list[str] | None, path: Path | str) -> list[str]:
    """The labels of a multi-label table whose labels were counted (of rows with a text).

    Args:
        counts: Label -> rows carrying it, in the order the labels first appear.
        names: The labels in order (``--classes``), or None: the sorted distinct labels.
        path: The input, for messages.

    Raises:
        BadInputError: No label anywhere, fewer than two labels, a label not among ``names``, or
            a name of ``names`` that no row carries; all problems in one message.
    """
    if not counts:
        raise BadInputError(
            f"{path}: the label column is empty in every row; --multi-label needs labels "
            "(a list such as a|b in the label column, or --label-columns A,B with 0/1 values)"
        )
    if names is None:
        names = sorted(counts)
        if len(names) < 2:
            raise BadInputError(f"{path} has a single label ({names[0]!r}); a classifier needs two or more")
    problems = []
    # Most rows first, ties in order of appearance (what pandas' value_counts gives).
    unknown = [
        (label, n) for label, n in sorted(counts.items(), key=lambda item: -item[1]) if label not in names
    ]
    if unknown:
        listed = ", ".join(f"{label!r} ({n} rows)" for label, n in unknown[:_MAX_LISTED])
        more = f" and {len(unknown) - _MAX_LISTED} more" if len(unknown) > _MAX_LISTED else ""
        problems.append(f"labels not among --classes: {listed}{more}; add them to --classes")
    absent = [n for n in names if n not in counts]
    if absent:
        problems.append(
            f"--classes names {', '.join(map(repr, absent))}, which no row of {path} carries: "
            "a label needs positive examples to be learnt"
        )
    if problems:
        raise BadInputError("; ".join(problems))
    return list(names)


def check_separator(classes: Sequence[str], sep: str, hint: str = "choose another --label-sep") -> None:
    """Refuse an empty separator, or label names that hold it (they could not be joined back).

    Args:
        classes: The label names.
        sep: What joins a row's labels in files.
        hint: What to do about labels that hold it (prepare: another ``--label-sep``; import:
            rename them).

    Raises:
        BadInputError: Naming the labels.
    """
    if not sep:
        raise BadInputError("--label-sep must not be empty")
    holding = [c for c in classes if sep in c]
    if holding:
        raise BadInputError(f"labels {', '.join(map(repr, holding))} hold the separator {sep!r}: {hint}")


def label_matrix(labels: Iterable[Sequence[str]], classes: Sequence[str]) -> list[list[int]]:
    """(N, K) 0/1 rows of each text's labels, columns in class order.

    Raises:
        BadInputError: A label that is not one of ``classes``.
    """
    index = {name: i for i, name in enumerate(classes)}
    out = []
    for row in labels:
        vector = [0] * len(classes)
        for name in row:
            if name not in index:
                raise BadInputError(f"label {name!r} is not among the labels {list(classes)}")
            vector[index[name]] = 1
        out.append(vector)
    return out


def label_counts(frame: pd.DataFrame, classes: Sequence[str]) -> dict[str, int]:
    """Rows carrying each label, and ``(none)``: rows carrying none."""
    matrix = np.asarray(label_matrix(frame["label"], classes), dtype=np.int64).reshape(-1, len(classes))
    return matrix_counts(matrix, classes)


def matrix_counts(matrix: np.ndarray, classes: Sequence[str]) -> dict[str, int]:
    """:func:`label_counts` of the rows of a (N, K) 0/1 label matrix."""
    matrix = np.asarray(matrix, dtype=np.int64).reshape(-1, len(classes))
    counts = {name: int(n) for name, n in zip(classes, matrix.sum(axis=0), strict=True)}
    return {**counts, "(none)": int((matrix.sum(axis=1) == 0).sum())}


def cooccurrence(frame: pd.DataFrame, classes: Sequence[str]) -> dict[str, dict[str, int]]:
    """label -> label -> rows carrying both (the diagonal: rows carrying the label)."""
    return matrix_cooccurrence(label_matrix(frame["label"], classes), classes)


def matrix_cooccurrence(
    matrix: np.ndarray | list[list[int]], classes: Sequence[str]
) -> dict[str, dict[str, int]]:
    """:func:`cooccurrence` of the rows of a (N, K) 0/1 label matrix."""
    matrix = np.asarray(matrix, dtype=np.int64).reshape(-1, len(classes))
    both = matrix.T @ matrix
    return {a: {b: int(both[i, j]) for j, b in enumerate(classes)} for i, a in enumerate(classes)}


def join_labels(labels: Sequence[str], sep: str) -> str:
    """A row's labels as one cell of a prepared split file."""
    return sep.join(labels)


def parse_prepared_labels(
    cells: Iterable[str], classes: Sequence[str], sep: str, where: str
) -> list[tuple[str, ...]]:
    """The label tuples of a prepared split's label cells, checked against the classes.

    Raises:
        BadInputError: A label that is not a class of labels.json.
    """
    known = set(classes)
    out = [tuple(split_cell(cell, sep)) for cell in cells]
    unknown = sorted({n for row in out for n in row} - known)
    if unknown:
        raise BadInputError(f"{where} has labels not in labels.json: {unknown}")
    return out


def iter_pairs(mapping: Mapping[str, Mapping[str, int]]) -> Iterator[tuple[str, str, int]]:
    """(a, b, rows) of each pair of different labels that occur together, a before b."""
    names = list(mapping)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            if mapping[a][b]:
                yield a, b, mapping[a][b]
