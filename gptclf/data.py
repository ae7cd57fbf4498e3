"""Datasets: read the SMS Spam Collection and labelled tables without losing a row, stream texts for
prediction, and read back the folder that ``gptclf prepare`` writes (see :mod:`gptclf.prepare`).

Formats, chosen by extension or named explicitly:

- ``sms``: ``label<TAB>text`` per line, no header, split on the first tab and no quote handling, so
  the 54 SMS texts that begin with ``"`` stay whole (a CSV-style reader would merge lines).
- ``csv``: RFC 4180 with a header row; quoted fields may hold commas, quotes and newlines.
- ``tsv``: a header row, then tab-separated fields without quoting (the IANA TSV format, like the
  SMS file): a ``"`` is an ordinary character and a field cannot hold a tab or a newline.
- ``jsonl``: one JSON object per line; every object carries the text and label keys (null allowed).
- ``txt``: one text per line, no labels (for :func:`read_texts` only).

Records are numbered from 1 in file order (header and blank lines not counted); that number is the
``row`` column of a :class:`LoadedTable`. Labels lose surrounding white space; texts are kept
byte for byte except for the line ending. A record whose text is empty (or only white space), or
whose label is empty, is dropped and counted under its reason.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import json
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pandas as pd

from gptclf.errors import BadInputError

#: The three splits, in the order they are written and reported.
SPLITS: tuple[str, ...] = ("train", "validation", "test")
#: The file holding the class names and the metadata of a prepared folder.
LABELS_FILE = "labels.json"
#: Everything a prepared folder holds; labels.json last, as it is written last.
PREPARED_FILES: tuple[str, ...] = (*(f"{s}.csv" for s in SPLITS), LABELS_FILE)
#: Formats a labelled table can have.
TABLE_FORMATS: tuple[str, ...] = ("csv", "tsv", "jsonl", "sms")
#: Reasons a record is dropped while loading.
EMPTY_TEXT = "empty text"
MISSING_LABEL = "missing label"

_EXTENSIONS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".txt": "txt",
}
# The UCI archive's file has no extension; recognise it by name so `--input` needs no `--format`.
_SMS_NAME = "SMSSpamCollection"


@dataclass
class LoadedTable:
    """Rows read from a file.

    Attributes:
        frame: Columns ``text``, ``label`` (stripped) and ``row`` (1-based record number).
        dropped: Records left out, by reason (``"empty text"``, ``"missing label"``); later steps
            add their own reasons.
    """

    frame: pd.DataFrame
    dropped: dict[str, int] = field(default_factory=dict)


@dataclass
class PreparedData:
    """A prepared folder read back.

    Attributes:
        classes: Class names; a class's index is its position.
        splits: ``"train"``, ``"validation"``, ``"test"`` -> frame with ``text`` and ``label``
            (the class name).
        meta: Everything labels.json holds (source, seed, split, balance, counts, ...).
    """

    classes: list[str]
    splits: dict[str, pd.DataFrame]
    meta: dict[str, Any]


def resolve_format(path: Path, fmt: str | None, allowed: Sequence[str] = TABLE_FORMATS) -> str:
    """The format of ``path``: ``fmt`` when given, else from the extension (or the SMS file name).

    Raises:
        BadInputError: ``fmt`` is not in ``allowed``, or the extension says nothing usable.
    """
    if fmt is not None:
        if fmt not in allowed:
            raise BadInputError(f"unknown format {fmt!r} (choose from: {', '.join(allowed)})")
        return fmt
    guess = "sms" if path.name == _SMS_NAME else _EXTENSIONS.get(path.suffix.lower())
    if guess is None:
        raise BadInputError(
            f"cannot tell the format of {path} from its name; pass --format ({', '.join(allowed)})"
        )
    if guess not in allowed:
        raise BadInputError(
            f"{path} looks like {guess}, which has no labels; give a labelled file or pass "
            f"--format ({', '.join(allowed)})"
        )
    return guess


def load_sms_spam(path: Path, encoding: str = "utf-8") -> LoadedTable:
    """Read the SMS Spam Collection (or any ``label<TAB>text`` file) without losing a line.

    Args:
        path: The ``SMSSpamCollection`` file.
        encoding: Text encoding of the file.

    Returns:
        The table: 5,574 rows (4,827 ham, 747 spam) for the UCI file.

    Raises:
        BadInputError: Missing or empty file, a line without a tab, or bytes not in ``encoding``.
    """
    rows = (_sms_fields(path, line, line_no) for line_no, line in _lines(path, encoding))
    return _collect(path, rows)


def load_table(
    path: Path,
    text_column: str | None = None,
    label_column: str | None = None,
    fmt: str | None = None,
    encoding: str = "utf-8",
) -> LoadedTable:
    """Read a labelled CSV, TSV, JSONL or SMS-format file.

    Args:
        path: The file.
        text_column: Column (JSON key) with the texts; default ``text``. Not used for ``sms``.
        label_column: Column (JSON key) with the labels; default ``label``. Not used for ``sms``.
        fmt: ``csv``, ``tsv``, ``jsonl`` or ``sms``; default from the extension.
        encoding: Text encoding of the file.

    Raises:
        BadInputError: Missing or empty file, unknown format, missing column (the message lists
            the columns there are), malformed record, or bytes not in ``encoding``.
    """
    path = Path(path)
    fmt = resolve_format(path, fmt)
    if fmt == "sms":
        return load_sms_spam(path, encoding)
    columns = (text_column or "text", label_column or "label")
    return _collect(path, _records(path, fmt, columns, encoding))


def read_texts(
    path: Path, text_column: str | None = None, fmt: str | None = None, encoding: str = "utf-8"
) -> Iterator[str]:
    """Stream the texts of a file, one at a time, so memory stays flat however long it is.

    Nothing is dropped: an empty line or cell yields ``""`` so that outputs keep their place.

    Args:
        path: A ``.txt`` file (one text per line), or a CSV, TSV, JSONL or SMS-format file.
        text_column: Column (JSON key) with the texts; default ``text``.
        fmt: ``txt``, ``csv``, ``tsv``, ``jsonl`` or ``sms``; default from the extension.
        encoding: Text encoding of the file.

    Raises:
        BadInputError: Missing file or unknown format (at once); a missing column, malformed
            record or undecodable bytes when the stream reaches them.
    """
    path = Path(path)
    fmt = resolve_format(path, fmt, (*TABLE_FORMATS, "txt"))
    _check_file(path)
    _reading_encoding(encoding)
    if fmt == "txt":
        return (line for _, line in _lines(path, encoding, skip_blank=False))
    if fmt == "sms":
        return (_sms_fields(path, ln, n)[0] for n, ln in _lines(path, encoding))
    return (_cell(text) for (text,) in _records(path, fmt, (text_column or "text",), encoding))


def read_prepared(directory: Path) -> PreparedData:
    """Read a folder written by ``gptclf prepare`` and check that its files belong together.

    Raises:
        BadInputError: A file is missing, labels.json is malformed, a split file does not match
            the checksum labels.json recorded for it, or a label is not one of the classes.
    """
    directory = Path(directory)
    _require_prepared(directory)
    meta = _read_labels_json(directory / LABELS_FILE)
    classes: list[str] = meta["classes"]
    splits: dict[str, pd.DataFrame] = {}
    for split in SPLITS:
        name = f"{split}.csv"
        data = (directory / name).read_bytes()
        recorded = meta.get("files", {}).get(name, {}).get("sha256")
        if recorded != hashlib.sha256(data).hexdigest():
            raise BadInputError(
                f"{directory / name} does not match labels.json (edited, or left from another "
                "prepare run); run `gptclf prepare --force` again"
            )
        frame = _read_prepared_csv(directory / name, data)
        unknown = sorted(set(frame["label"]) - set(classes))
        if unknown:
            raise BadInputError(f"{directory / name} has labels not in labels.json: {unknown}")
        splits[split] = frame
    return PreparedData(classes=classes, splits=splits, meta=meta)


def label_ids(frame: pd.DataFrame, classes: Sequence[str]) -> list[int]:
    """Class indices of ``frame["label"]``: the position of each label in ``classes``.

    Raises:
        BadInputError: A label is not one of ``classes``.
    """
    index = {name: i for i, name in enumerate(classes)}
    unknown = sorted(set(frame["label"]) - index.keys())
    if unknown:
        raise BadInputError(f"labels not among the classes {list(classes)}: {unknown}")
    return [index[label] for label in frame["label"]]


def prepared_fingerprint(directory: Path) -> str:
    """SHA-256 over the four files of a prepared folder, for recording which data a run saw.

    Raises:
        BadInputError: A file is missing.
    """
    directory = Path(directory)
    _require_prepared(directory)
    digest = hashlib.sha256()
    for name in PREPARED_FILES:
        file_hash = hashlib.sha256((directory / name).read_bytes()).hexdigest()
        digest.update(f"{name}\0{file_hash}\n".encode())
    return digest.hexdigest()


# --- reading -----------------------------------------------------------------------------------


def _collect(path: Path, records: Iterator[tuple[Any, ...]]) -> LoadedTable:
    """Turn raw (text, label) records into a table, dropping and counting unusable ones."""
    texts: list[str] = []
    labels: list[str] = []
    rows: list[int] = []
    dropped: Counter[str] = Counter()
    count = 0
    for count, (raw_text, raw_label) in enumerate(records, start=1):
        text, label = _cell(raw_text), _cell(raw_label).strip()
        if not text.strip():
            dropped[EMPTY_TEXT] += 1
        elif not label:
            dropped[MISSING_LABEL] += 1
        else:
            texts.append(text)
            labels.append(label)
            rows.append(count)
    if count == 0:
        raise BadInputError(f"{path} has no rows")
    frame = pd.DataFrame({"text": texts, "label": labels, "row": pd.Series(rows, dtype="int64")})
    return LoadedTable(frame=frame, dropped=dict(dropped))


def _cell(value: Any) -> str:
    """A field as text: JSON null is empty, JSON numbers and booleans keep their JSON spelling."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


def _sms_fields(path: Path, line: str, line_no: int) -> tuple[str, str]:
    label, tab, text = line.partition("\t")
    if not tab:
        raise BadInputError(f"{path}: line {line_no} has no tab (expected label<TAB>text)")
    return text, label


def _check_file(path: Path) -> None:
    if not path.exists():
        raise BadInputError(f"no such file: {path}")
    if not path.is_file():
        raise BadInputError(f"not a file: {path}")


def _reading_encoding(encoding: str) -> str:
    """The codec to read with: UTF-8 becomes utf-8-sig, so a byte-order mark never glues itself
    to the first column name or label."""
    try:
        name = codecs.lookup(encoding).name
    except LookupError:
        raise BadInputError(f"unknown encoding {encoding!r}") from None
    return "utf-8-sig" if name == "utf-8" else name


def _open(path: Path, encoding: str, newline: str) -> IO[str]:
    _check_file(path)
    if path.stat().st_size == 0:
        raise BadInputError(f"{path} is empty")
    return open(path, encoding=_reading_encoding(encoding), newline=newline)


def _lines(path: Path, encoding: str, skip_blank: bool = True) -> Iterator[tuple[int, str]]:
    """Numbered lines without their ending; only ``\\n`` (or ``\\r\\n``) ends a line, so a lone
    ``\\r`` or U+2028 inside a text stays in the text."""
    with _open(path, encoding, newline="\n") as fh:
        try:
            for line_no, line in enumerate(fh, start=1):
                line = line.removesuffix("\n").removesuffix("\r")
                if skip_blank and not line.strip():
                    continue
                yield line_no, line
        except UnicodeDecodeError:
            raise _decode_error(path, encoding) from None


def _records(path: Path, fmt: str, columns: Sequence[str], encoding: str) -> Iterator[tuple[Any, ...]]:
    """The values of ``columns`` for each record of a CSV, TSV or JSONL file."""
    if fmt == "jsonl":
        yield from _jsonl_records(path, columns, encoding)
        return
    with _open(path, encoding, newline="") as fh:
        if fmt == "csv":
            reader = csv.reader(fh, strict=True)
        else:
            reader = csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
        try:
            header = next((r for r in reader if r), None)
            if header is None:
                raise BadInputError(f"{path} is empty")
            index = [_column_index(path, header, c) for c in columns]
            for record in reader:
                if not record:  # a blank line is no record
                    continue
                if len(record) != len(header):
                    raise BadInputError(
                        f"{path}: line {reader.line_num} has {len(record)} fields, the header "
                        f"has {len(header)}" + (" (a tab inside a text?)" if fmt == "tsv" else "")
                    )
                yield tuple(record[i] for i in index)
        except csv.Error as exc:
            raise BadInputError(f"{path}: line {reader.line_num}: malformed CSV ({exc})") from None
        except UnicodeDecodeError:
            raise _decode_error(path, encoding) from None


def _jsonl_records(path: Path, columns: Sequence[str], encoding: str) -> Iterator[tuple[Any, ...]]:
    for line_no, line in _lines(path, encoding):
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise BadInputError(f"{path}: line {line_no} is not valid JSON ({exc.msg})") from None
        if not isinstance(obj, dict):
            raise BadInputError(f"{path}: line {line_no} is not a JSON object")
        for column in columns:
            if column not in obj:
                raise BadInputError(
                    f"{path}: line {line_no} has no key {column!r} "
                    f"(keys there: {', '.join(obj) or 'none'}); choose with --text-column / "
                    "--label-column"
                )
        yield tuple(obj[c] for c in columns)


def _column_index(path: Path, header: list[str], column: str) -> int:
    if column not in header:
        raise BadInputError(
            f"{path} has no column {column!r} (columns: {', '.join(header)}); choose with "
            "--text-column / --label-column"
        )
    if header.count(column) > 1:
        raise BadInputError(f"{path}: column {column!r} appears {header.count(column)} times")
    return header.index(column)


def _decode_error(path: Path, encoding: str) -> BadInputError:
    """Find the first line with bytes that ``encoding`` cannot decode (exact for ASCII-compatible
    encodings, where a newline byte is always a newline) and say how to fix it."""
    decoder = codecs.getincrementaldecoder(_reading_encoding(encoding))()
    line_no = 0
    with open(path, "rb") as fh:
        try:
            for raw in fh:
                line_no += 1
                decoder.decode(raw)
            decoder.decode(b"", final=True)  # a sequence cut off by the end of the file
        except UnicodeDecodeError:
            pass
    return BadInputError(
        f"{path}: line {line_no} is not valid {encoding}; pass --encoding with the file's "
        "encoding (for example --encoding latin-1)"
    )


def _require_prepared(directory: Path) -> None:
    missing = [name for name in PREPARED_FILES if not (directory / name).is_file()]
    if missing:
        raise BadInputError(
            f"{directory} is not a prepared data folder (missing {', '.join(missing)}); "
            f"run `gptclf prepare --out {directory}` first"
        )


def _read_labels_json(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadInputError(f"{path} is not valid JSON ({exc})") from None
    classes = meta.get("classes") if isinstance(meta, dict) else None
    if (
        not isinstance(classes, list)
        or len(classes) < 2
        or not all(isinstance(c, str) and c for c in classes)
        or len(set(classes)) != len(classes)
    ):
        raise BadInputError(f"{path}: 'classes' must list two or more distinct names")
    return meta


def _read_prepared_csv(path: Path, data: bytes) -> pd.DataFrame:
    reader = csv.reader(io.StringIO(data.decode("utf-8"), newline=""), strict=True)
    header = next(reader, None)
    if header != ["text", "label"]:
        raise BadInputError(f"{path}: expected the header text,label, found {header}")
    records = list(reader)
    return pd.DataFrame({"text": [r[0] for r in records], "label": [r[1] for r in records]})
