"""Datasets: read the SMS Spam Collection and labelled tables without losing a row, stream texts for
prediction, and read back the folder that ``gptclf prepare`` writes (see :mod:`gptclf.prepare`).

Formats, chosen by extension or named explicitly:

- ``sms``: ``label<TAB>text`` per line, no header, split on the first tab and no quote handling, so
  the 54 SMS texts that begin with ``"`` stay whole (a CSV-style reader would merge lines).
- ``csv``: RFC 4180 with a header row; quoted fields may hold commas, quotes and newlines.
- ``tsv``: a header row, then tab-separated fields without quoting (like the SMS file, a ``"`` is an
  ordinary character), with the escapes of PostgreSQL's text format: ``\\t``, ``\\n``, ``\\r`` and
  ``\\\\`` stand for a tab, a newline, a carriage return and a backslash (see :func:`split_tsv`).
  ``gptclf predict --format tsv`` writes the same convention, so its output reads back losslessly.
- ``jsonl``: one JSON object per line; every object carries the text and label keys (null allowed).
- ``txt``: one text per line, no labels (for :func:`read_texts` only).

Files and stdin (``-``) go through one decoding path (:func:`_decoded_lines`): the encoding, a
UTF-8 byte-order mark, CRLF line ends, undecodable bytes and NUL bytes are handled alike.

Records are numbered from 1 in file order (header and blank lines not counted); that number is the
``row`` column of a :class:`LoadedTable`. Labels lose surrounding white space; texts are kept
byte for byte except for the line ending. A record whose text is empty (or only white space), or
whose label is empty, is dropped and counted under its reason.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import hashlib
import io
import itertools
import json
import re
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
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
#: The input name that means standard input.
STDIN = "-"
#: An input: a file, or :data:`STDIN`.
Source = Path | str
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


def resolve_format(path: Source, fmt: str | None, allowed: Sequence[str] = TABLE_FORMATS) -> str:
    """The format of ``path``: ``fmt`` when given, else from the extension (or the SMS file name).

    Stdin (``-``) has no name to go by: it is ``txt`` where that is allowed.

    Raises:
        BadInputError: ``fmt`` is not in ``allowed``, or the name says nothing usable.
    """
    choices = ", ".join(allowed)
    if fmt is not None:
        if fmt not in allowed:
            raise BadInputError(f"unknown format {fmt!r} (choose from: {choices})")
        return fmt
    if is_stdin(path):
        if "txt" in allowed:
            return "txt"
        raise BadInputError(f"stdin has no name to tell its format by; pass --input-format ({choices})")
    path = Path(path)
    guess = "sms" if path.name == _SMS_NAME else _EXTENSIONS.get(path.suffix.lower())
    if guess is None:
        raise BadInputError(
            f"cannot tell the format of {path} from its name; pass --input-format ({choices})"
        )
    if guess not in allowed:
        raise BadInputError(
            f"{path} looks like {guess}, which has no labels; give a labelled file or pass "
            f"--input-format ({choices})"
        )
    return guess


def load_sms_spam(path: Source, encoding: str = "utf-8") -> LoadedTable:
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
    path: Source,
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
    fmt = resolve_format(path, fmt)
    if fmt == "sms":
        return load_sms_spam(path, encoding)
    columns = (text_column or "text", label_column or "label")
    return _collect(path, _records(path, fmt, columns, encoding))


def read_texts(
    path: Source, text_column: str | None = None, fmt: str | None = None, encoding: str = "utf-8"
) -> Iterator[str]:
    """Stream the texts of a file or of stdin, one at a time, so memory stays flat.

    Nothing is dropped: an empty line or cell yields ``""`` so that outputs keep their place.

    Args:
        path: A ``.txt`` file (one text per line), a CSV, TSV, JSONL or SMS-format file, or ``-``
            for stdin (one text a line unless ``fmt`` says otherwise).
        text_column: Column (JSON key) with the texts; default ``text``.
        fmt: ``txt``, ``csv``, ``tsv``, ``jsonl`` or ``sms``; default from the extension.
        encoding: Text encoding of the input (stdin too).

    Raises:
        BadInputError: Missing file or unknown format (at once); a missing column, malformed
            record or undecodable bytes when the stream reaches them.
    """
    return (text for _, text in read_inputs(path, text_column, fmt=fmt, encoding=encoding, detect_id=False))


def read_inputs(
    path: Source,
    text_column: str | None = None,
    id_column: str | None = None,
    fmt: str | None = None,
    encoding: str = "utf-8",
    detect_id: bool = True,
) -> Iterator[tuple[Any, str]]:
    """Stream ``(id, text)`` pairs of a file or of stdin (see :func:`read_texts`).

    The id is the value of ``id_column``, or of a column (JSON key of the first record) named
    ``id`` when ``detect_id`` is set and none is named; else the record's 0-based position.

    Raises:
        BadInputError: As :func:`read_texts`; ``id_column`` for a format without columns, or a
            record without it.
    """
    fmt = resolve_format(path, fmt, (*TABLE_FORMATS, "txt"))
    if not is_stdin(path):
        _check_file(Path(path))
    _reading_encoding(encoding)
    if fmt in ("txt", "sms"):
        if id_column is not None:
            raise BadInputError(f"--id-column needs a CSV, TSV or JSONL input; {fmt} has no columns")
        if fmt == "txt":
            return enumerate(line for _, line in _lines(path, encoding, skip_blank=False))
        return enumerate(_sms_fields(path, ln, n)[0] for n, ln in _lines(path, encoding))
    text = text_column or "text"

    def choose(header: list[str]) -> list[str]:
        ids = id_column or ("id" if detect_id and "id" in header and text != "id" else None)
        return [text] if ids is None else [text, ids]

    records = _records(path, fmt, choose, encoding)
    return ((r[1] if len(r) > 1 else i, _cell(r[0])) for i, r in enumerate(records))


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


def _collect(path: Source, records: Iterator[tuple[Any, ...]]) -> LoadedTable:
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
        raise BadInputError(f"{_name(path)} has no rows")
    frame = pd.DataFrame({"text": texts, "label": labels, "row": pd.Series(rows, dtype="int64")})
    return LoadedTable(frame=frame, dropped=dict(dropped))


def _cell(value: Any) -> str:
    """A field as text: JSON null is empty, JSON numbers and booleans keep their JSON spelling."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


def _sms_fields(path: Source, line: str, line_no: int) -> tuple[str, str]:
    label, tab, text = line.partition("\t")
    if not tab:
        raise BadInputError(f"{_name(path)}: line {line_no} has no tab (expected label<TAB>text)")
    return text, label


def _check_file(path: Path) -> None:
    if not path.exists():
        raise BadInputError(f"no such file: {path}")
    if not path.is_file():
        raise BadInputError(f"not a file: {path}")


def is_stdin(source: Source) -> bool:
    """Whether ``source`` names standard input (``-``) rather than a file."""
    return str(source) == STDIN


def _name(source: Source) -> str:
    return "stdin" if is_stdin(source) else str(source)


def _reading_encoding(encoding: str) -> str:
    """The codec to read with: UTF-8 becomes utf-8-sig, so a byte-order mark never glues itself
    to the first column name or label."""
    try:
        name = codecs.lookup(encoding).name
    except LookupError:
        raise BadInputError(f"unknown encoding {encoding!r}") from None
    return "utf-8-sig" if name == "utf-8" else name


def _open_bytes(source: Source) -> contextlib.AbstractContextManager[IO[bytes]]:
    """The raw bytes of a file or of stdin, for :func:`_decoded_lines` to decode.

    Stdin gets a reader of its own on the same descriptor (not ``sys.stdin.buffer``), so that a
    reader thread blocked on it cannot hold the lock that the interpreter takes to close
    ``sys.stdin`` at exit. Where stdin has no descriptor (a test harness), its buffer is used.
    """
    if is_stdin(source):
        try:
            return open(sys.stdin.fileno(), "rb", closefd=False)
        except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is an OSError
            return contextlib.nullcontext(sys.stdin.buffer)
    path = Path(source)
    _check_file(path)
    if path.stat().st_size == 0:
        raise BadInputError(f"{path} is empty")
    return open(path, "rb")


def _decoded_lines(source: Source, encoding: str) -> Iterator[str]:
    """The lines of a file or of stdin, decoded, each with its ``\\n`` (the last may have none).

    The one decoding path of every format, files and stdin alike: the bytes are decoded
    incrementally, line by line, so a line number is exact (for ASCII-compatible encodings) and a
    pipe's line is delivered as soon as it arrives. Only ``\\n`` ends a line here; the callers
    strip a ``\\r`` before it, so CRLF input gives the same texts as LF input.

    Raises:
        BadInputError: Bytes that ``encoding`` cannot decode, or a NUL (binary data), naming the line.
    """
    decoder = codecs.getincrementaldecoder(_reading_encoding(encoding))()
    pending, line_no = "", 0
    with _open_bytes(source) as fh:
        for raw in itertools.chain(fh, [None]):  # None: the end, where a cut-off sequence fails
            try:
                text = pending + (decoder.decode(b"", final=True) if raw is None else decoder.decode(raw))
            except UnicodeDecodeError:
                raise _decode_error(source, line_no + 1, encoding) from None
            *complete, pending = text.split("\n")
            lines = [line + "\n" for line in complete]
            if raw is None and pending:
                lines.append(pending)  # a last line without a line ending
            for line in lines:
                line_no += 1
                if "\0" in line:
                    raise BadInputError(
                        f"{_name(source)}: line {line_no} holds a NUL byte: this is binary data, not "
                        f"{encoding} text (pass --encoding if it is text in another encoding)"
                    )
                yield line


def _lines(source: Source, encoding: str, skip_blank: bool = True) -> Iterator[tuple[int, str]]:
    """Numbered lines without their ending; only ``\\n`` (or ``\\r\\n``) ends a line, so a lone
    ``\\r`` or U+2028 inside a text stays in the text."""
    for line_no, line in enumerate(_decoded_lines(source, encoding), start=1):
        line = line.removesuffix("\n").removesuffix("\r")
        if skip_blank and not line.strip():
            continue
        yield line_no, line


def _csv_lines(source: Source, encoding: str) -> Iterator[str]:
    """Decoded lines cut where ``open(newline="")`` cuts them (``\\n``, ``\\r\\n`` and a lone
    ``\\r``), which is what the csv module expects; a quoted field spans them whole."""
    for line in _decoded_lines(source, encoding):
        if "\r" in line:
            yield from _LONE_CR.split(line)
        else:
            yield line


#: Where a line is cut after a ``\r`` that no ``\n`` follows.
_LONE_CR = re.compile(r"(?<=\r)(?!\n)(?!$)")


#: The columns to read: a fixed list, or chosen from the header (the first object's keys).
Columns = Sequence[str] | Callable[[list[str]], Sequence[str]]


def _records(source: Source, fmt: str, columns: Columns, encoding: str) -> Iterator[tuple[Any, ...]]:
    """The values of ``columns`` for each record of a CSV, TSV or JSONL file (or stdin)."""
    if fmt == "jsonl":
        yield from _jsonl_records(source, columns, encoding)
        return
    rows = _rows(source, fmt, encoding)
    header = next((r for _, r in rows if r), None)
    if header is None:
        raise BadInputError(f"{_name(source)} is empty")
    chosen = columns(header) if callable(columns) else columns
    index = [_column_index(source, header, c) for c in chosen]
    for line_no, record in rows:
        if not record:  # a blank line is no record
            continue
        if len(record) != len(header):
            raise BadInputError(
                f"{_name(source)}: line {line_no} has {len(record)} fields, the header has "
                f"{len(header)}" + (" (a tab inside a text?)" if fmt == "tsv" else "")
            )
        yield tuple(record[i] for i in index)


def _rows(source: Source, fmt: str, encoding: str) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) of each line of a CSV or TSV input; a blank line has no fields."""
    if fmt == "tsv":
        for line_no, line in _lines(source, encoding, skip_blank=False):
            yield line_no, split_tsv(line) if line else []
        return
    reader = csv.reader(_csv_lines(source, encoding), strict=True)
    try:
        for record in reader:
            yield reader.line_num, record
    except csv.Error as exc:
        raise BadInputError(f"{_name(source)}: line {reader.line_num}: malformed CSV ({exc})") from None


#: TSV escapes (the PostgreSQL text format): what a backslash and the next character stand for.
_TSV_UNESCAPE = {"\\\\": "\\", "\\t": "\t", "\\n": "\n", "\\r": "\r"}
_TSV_ESCAPED = re.compile(r"\\[\\tnr]")
_TSV_SPECIAL = re.compile(r"[\\\t\n\r]")


def split_tsv(line: str) -> list[str]:
    """The fields of one TSV line (without its line ending), escapes decoded.

    The convention, shared with :func:`tsv_line`: fields are split on tabs and never quoted (a
    ``"`` is an ordinary character); ``\\t``, ``\\n``, ``\\r`` and ``\\\\`` stand for a tab, a
    newline, a carriage return and a backslash; a backslash before any other character is kept
    as it is.
    """
    return [
        _TSV_ESCAPED.sub(lambda m: _TSV_UNESCAPE[m.group()], f) if "\\" in f else f for f in line.split("\t")
    ]


def tsv_line(fields: Iterable[str]) -> str:
    """One TSV line (with ``\\n``) that :func:`split_tsv` reads back as ``fields`` exactly."""
    escape = {v: k for k, v in _TSV_UNESCAPE.items()}
    return "\t".join(_TSV_SPECIAL.sub(lambda m: escape[m.group()], f) for f in fields) + "\n"


def _jsonl_records(source: Source, columns: Columns, encoding: str) -> Iterator[tuple[Any, ...]]:
    chosen: Sequence[str] | None = None if callable(columns) else columns
    for line_no, line in _lines(source, encoding):
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise BadInputError(f"{_name(source)}: line {line_no} is not valid JSON ({exc.msg})") from None
        if not isinstance(obj, dict):
            raise BadInputError(f"{_name(source)}: line {line_no} is not a JSON object")
        if chosen is None:  # chosen from the first object's keys
            assert callable(columns)
            chosen = columns(list(obj))
        for column in chosen:
            if column not in obj:
                raise BadInputError(
                    f"{_name(source)}: line {line_no} has no key {column!r} "
                    f"(keys there: {', '.join(obj) or 'none'}); choose with --text-column / "
                    "--label-column / --id-column"
                )
        yield tuple(obj[c] for c in chosen)


def _column_index(source: Source, header: list[str], column: str) -> int:
    if column not in header:
        raise BadInputError(
            f"{_name(source)} has no column {column!r} (columns: {', '.join(header)}); choose with "
            "--text-column / --label-column / --id-column"
        )
    if header.count(column) > 1:
        raise BadInputError(f"{_name(source)}: column {column!r} appears {header.count(column)} times")
    return header.index(column)


def _decode_error(source: Source, line_no: int, encoding: str) -> BadInputError:
    return BadInputError(
        f"{_name(source)}: line {line_no} is not valid {encoding}; pass --encoding with the input's "
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
