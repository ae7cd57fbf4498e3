"""The error report of ``gptclf evaluate --errors FILE``: every misclassified text, most confident first.

Each row holds the text's ``id`` (the input's own id, from a column named ``id``, else its 0-based
position in the file or split), the ``text``, its true ``label``, the ``predicted`` class (the
argmax, as in the confusion matrix, so the report holds exactly its off-diagonal counts), the
``confidence`` (the probability of the predicted class) and every class's probability, as
``evaluate`` reports them (calibrated unless ``--no-calibration``). The most confident mistakes
come first: they are the ones a threshold cannot catch, and often mislabelled data.

The file formats follow ``gptclf predict``'s output, so the same tools read both:

- ``jsonl``: ``{"id", "text", "label", "predicted", "confidence", "probs": {class: p}}`` per line
- ``csv``: a header ``id,text,label,predicted,confidence,p_<class>...``, RFC 4180 rows
- ``tsv``: the same columns, with gptclf's TSV escapes (:func:`gptclf.data.tables.tsv_line`)
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from gptclf.errors import BadInputError
from gptclf.fileio import atomic_open

#: Error-report formats by file extension.
ERROR_FORMATS = {".jsonl": "jsonl", ".csv": "csv", ".tsv": "tsv"}
#: Probabilities are rounded as ``predict`` rounds them.
DIGITS = 6


@dataclass(frozen=True)
class ErrorRow:
    """One misclassified text.

    Attributes:
        id: The input's id (a JSON value) or the text's 0-based position.
        text: The text.
        label: Its true class.
        predicted: The class the run gave it (argmax).
        confidence: The probability of ``predicted``.
        probs: Every class's probability, in the run's class order.
    """

    id: Any
    text: str
    label: str
    predicted: str
    confidence: float
    probs: dict[str, float]


def error_format(path: Path) -> str:
    """The report format ``path``'s extension names.

    Raises:
        BadInputError: Any other extension (checked before the model runs, so nothing is written).
    """
    fmt = ERROR_FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise BadInputError(
            f"--errors {path}: the name must end in {', '.join(ERROR_FORMATS)} (the format is taken from it)"
        )
    return fmt


def error_rows(
    probs: np.ndarray,
    labels: Sequence[int],
    classes: Sequence[str],
    texts: Sequence[str],
    ids: Sequence[Any] | None = None,
) -> list[ErrorRow]:
    """Every text whose argmax is not its label, most confident first.

    Args:
        probs: (N, K) class probabilities (calibrated or raw, as the metrics are).
        labels: (N,) true class indices.
        classes: Class names, index order.
        texts: The N texts.
        ids: The N ids; default the 0-based positions.

    Returns:
        The errors, by decreasing confidence; equal confidences keep input order.
    """
    probs = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    pred = probs.argmax(axis=1)
    confidence = probs[np.arange(len(pred)), pred]
    wrong = np.flatnonzero(pred != y)
    order = wrong[np.argsort(-confidence[wrong], kind="stable")]
    ids = list(range(len(texts))) if ids is None else ids
    return [
        ErrorRow(
            id=ids[i],
            text=texts[i],
            label=classes[y[i]],
            predicted=classes[pred[i]],
            confidence=float(confidence[i]),
            probs={c: float(p) for c, p in zip(classes, probs[i], strict=True)},
        )
        for i in order.tolist()
    ]


def write_errors(path: Path, rows: Sequence[ErrorRow], classes: Sequence[str]) -> None:
    """Write the report to ``path`` atomically, in the format its extension names.

    An empty report still gets its header (CSV, TSV) or is an empty file (JSONL), so a pipeline
    can tell "no errors" from "no report".

    Raises:
        BadInputError: An extension that names no report format.
        OSError: The disk filled or the folder cannot be written; no file is left (neither a
            partial report nor its temporary file). ``gptclf evaluate`` turns it into one line.
    """
    fmt = error_format(path)
    with atomic_open(Path(path), "w", encoding="utf-8") as out:
        _WRITERS[fmt](out, rows, classes)


def _id_cell(value: Any) -> str:
    """An id as a CSV/TSV cell: strings as they are, other JSON values in their JSON spelling."""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _header(classes: Sequence[str]) -> list[str]:
    return ["id", "text", "label", "predicted", "confidence", *(f"p_{c}" for c in classes)]


def _cells(row: ErrorRow) -> list[str]:
    values = (row.confidence, *row.probs.values())
    return [_id_cell(row.id), row.text, row.label, row.predicted, *(str(round(v, DIGITS)) for v in values)]


def _write_jsonl(out: TextIO, rows: Sequence[ErrorRow], classes: Sequence[str]) -> None:
    for row in rows:
        record = {
            "id": row.id,
            "text": row.text,
            "label": row.label,
            "predicted": row.predicted,
            "confidence": round(row.confidence, DIGITS),
            "probs": {c: round(p, DIGITS) for c, p in row.probs.items()},
        }
        out.write(json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n")


def _write_csv(out: TextIO, rows: Sequence[ErrorRow], classes: Sequence[str]) -> None:
    # As predict's CSV: a lone "\r" would be left bare by minimal quoting and read as a line break.
    plain = csv.writer(out, lineterminator="\n")
    quoted = csv.writer(out, lineterminator="\n", quoting=csv.QUOTE_ALL)
    plain.writerow(_header(classes))
    for row in rows:
        (quoted if "\r" in row.text else plain).writerow(_cells(row))


def _write_tsv(out: TextIO, rows: Sequence[ErrorRow], classes: Sequence[str]) -> None:
    from gptclf.data.tables import tsv_line

    out.write(tsv_line(_header(classes)))
    for row in rows:
        out.write(tsv_line(_cells(row)))


_WRITERS = {"jsonl": _write_jsonl, "csv": _write_csv, "tsv": _write_tsv}
