"""Labelled tables and text streams, read without losing a row: the SMS Spam Collection, CSV, TSV
and JSONL tables for ``prepare`` and ``evaluate``, and texts (with ids) streamed for ``predict``.

Formats, chosen by extension or named explicitly:

- ``sms``: ``label<TAB>text`` per line, no header, split on the first tab and no quote handling, so
  the 54 SMS texts that begin with ``"`` stay whole (a CSV-style reader would merge lines).
- ``csv``: RFC 4180 with a header row; quoted fields may hold commas, quotes and newlines.
- ``tsv``: a header row, then tab-separated fields without quoting (like the SMS file, a ``"`` is an
  ordinary character), with the escapes of PostgreSQL's text format: ``\\t``, ``\\n``, ``\\r`` and
  ``\\\\`` stand for a tab, a newline, a carriage return and a backslash (see :func:`split_tsv`).
  ``gptclf predict --format tsv`` writes the same convention, so its output reads back losslessly.
- ``jsonl``: one JSON object per line; every object carries the text and label keys (null allowed).
- ``parquet``: an Apache Parquet file (pyarrow, the ``parquet`` extra), read a batch of rows at a
  time, row group by row group, so memory stays flat in the file's size; the text column must hold
  strings (labels and ids may be any scalar: numbers keep their JSON spelling). Not from stdin.
- ``txt``: one text per line, no labels (for :func:`read_texts` only).

Files and stdin (``-``) go through one decoding path (:mod:`gptclf.data.decoding`): the encoding, a
UTF-8 byte-order mark, CRLF line ends, undecodable bytes and NUL bytes are handled alike.

Records are numbered from 1 in file order (header and blank lines not counted); that number is the
``row`` column of a :class:`LoadedTable`. Labels lose surrounding white space; texts are kept
byte for byte except for the line ending. A record whose text is empty (or only white space), or
whose label is empty, is dropped and counted under its reason.
"""

from __future__ import annotations

import csv
import itertools
import json
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from gptclf.data.decoding import (
    COMPRESSED_SUFFIXES,
    Source,
    check_file,
    csv_lines,
    is_stdin,
    line_offsets,
    lines_by_bytes,
    numbered_lines,
    reading_encoding,
    source_name,
)
from gptclf.errors import BadInputError

#: Formats a labelled table can have.
TABLE_FORMATS: tuple[str, ...] = ("csv", "tsv", "jsonl", "sms", "parquet")
#: Reasons a record is dropped while loading.
EMPTY_TEXT = "empty text"
MISSING_LABEL = "missing label"

_EXTENSIONS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
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


def resolve_format(path: Source, fmt: str | None, allowed: Sequence[str] = TABLE_FORMATS) -> str:
    """The format of ``path``: ``fmt`` when given, else from the extension (or the SMS file name).

    Stdin (``-``) has no name to go by: it is ``txt`` where that is allowed.

    Raises:
        BadInputError: ``fmt`` is not in ``allowed``, or the name says nothing usable.
    """
    choices = ", ".join(allowed)
    if fmt is not None:
        # A compression suffix says how the bytes are packed, not the format: the bytes themselves
        # tell the reader that (:mod:`gptclf.data.decoding`), so ``csv.gz`` is ``csv``.
        fmt = _without_compression(fmt)
        if fmt not in allowed:
            raise BadInputError(f"unknown format {fmt!r} (choose from: {choices})")
        return fmt
    if is_stdin(path):
        if "txt" in allowed:
            return "txt"
        raise BadInputError(f"stdin has no name to tell its format by; pass --input-format ({choices})")
    path = Path(path)
    name = _without_compression(path.name)
    guess = "sms" if name == _SMS_NAME else _EXTENSIONS.get(Path(name).suffix.lower())
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


def _without_compression(name: str) -> str:
    """``name`` without a trailing ``.gz``, ``.bz2`` or ``.xz`` (any case)."""
    stem, dot, suffix = name.rpartition(".")
    return stem if dot and f".{suffix.lower()}" in COMPRESSED_SUFFIXES else name


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
    rows = (_sms_fields(path, line, line_no) for line_no, line in numbered_lines(path, encoding))
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


def iter_table(
    path: Source,
    dropped: Counter[str],
    text_column: str | None = None,
    label_column: str | None = None,
    fmt: str | None = None,
    encoding: str = "utf-8",
) -> Iterator[tuple[str, str]]:
    """The ``(text, label)`` records of a labelled table one at a time, as :func:`load_table`
    keeps them (labels stripped, unusable records counted in ``dropped`` by reason), so that a
    caller can hold less than the whole table; arguments and errors as :func:`load_table`'s (an
    input without any record is refused when the stream ends)."""
    fmt = resolve_format(path, fmt)
    records = _records(path, fmt, (text_column or "text", label_column or "label"), encoding)
    empty = True
    for raw_text, raw_label in records:
        empty = False
        pair = labelled_pair(raw_text, raw_label, dropped)
        if pair is not None:
            yield pair
    if empty:
        raise BadInputError(f"{source_name(path)} has no rows")


def read_columns(
    path: Source, columns: Sequence[str], fmt: str, encoding: str = "utf-8"
) -> Iterator[tuple[Any, ...]]:
    """The raw values of ``columns`` of each record of a CSV, TSV, JSONL or Parquet file (of an SMS
    file its text and label), nothing dropped (JSON values as they are): for readers with their own
    rules, such as multi-label lists."""
    return _records(path, fmt, columns, encoding)


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
    keep: Sequence[str] | None = None,
    shard: tuple[int, int] | None = None,
    unit: int = 1,
    skip: int = 0,
) -> Iterator[tuple[Any, ...]]:
    """Stream ``(id, text)`` pairs of a file or of stdin (see :func:`read_texts`).

    The id is the value of ``id_column``, or of a column (JSON key of the first record) named
    ``id`` when ``detect_id`` is set and none is named; else the record's 0-based position. With
    ``keep``, each pair is a triple ``(id, text, {column: value})`` of those columns' values.
    With ``shard=(k, n)``, only the k-th (1-based) of n contiguous parts of the records, with their
    positions in the whole input, parts made of whole blocks of ``unit`` records (:func:`shard_rows`).
    ``skip`` leaves out the first records (of the part): a resumed job's, done already.

    Raises:
        BadInputError: As :func:`read_texts`; ``id_column`` for a format without columns, or a
            record without it; a shard of stdin.
    """
    fmt = resolve_format(path, fmt, (*TABLE_FORMATS, "txt"))
    if not is_stdin(path):
        check_file(Path(path))
    elif shard is not None:
        raise BadInputError("--shard needs a file to split: stdin cannot be read in parts")
    reading_encoding(encoding)
    plain = fmt == "txt" and not id_column and not keep
    if shard is not None and plain and lines_by_bytes(Path(path), encoding):
        # Lines found in the bytes: the part is read from its own first byte, the rest never decoded.
        total, offsets = line_offsets(Path(path), unit)
        start, end = part_rows(total, shard, unit)
        start = min(end, start + skip)
        if start % unit == 0 and start // unit < len(offsets) and start < end:
            at = offsets[start // unit]
            lines = numbered_lines(path, encoding, skip_blank=False, offset=at, first_line=start + 1)
            return enumerate(itertools.islice((line for _, line in lines), end - start), start=start)
    if shard is not None:
        start, end = shard_rows(path, fmt, text_column, encoding, shard, unit)
        start = min(end, start + skip)
        return itertools.islice(
            _read_inputs(path, fmt, text_column, id_column, encoding, detect_id, keep, start), end - start
        )
    return _read_inputs(path, fmt, text_column, id_column, encoding, detect_id, keep, skip)


def shard_rows(
    path: Source, fmt: str, text_column: str | None, encoding: str, shard: tuple[int, int], unit: int = 1
) -> tuple[int, int]:
    """The rows ``[start, end)`` of the k-th of n contiguous parts of a file's records: parts of
    whole blocks of ``unit`` records (predict's chunks), their block counts differing by at most
    one (a part may be empty when there are fewer blocks than parts). A Parquet file's row count
    is its metadata; other files are read once to count their records (compressed ones decompressed)."""
    if fmt == "parquet":
        total = parquet_rows(path)
        if total is None:  # not Parquet: reading it says why
            list(_parquet_records(path, [text_column or "text"]))
            total = 0
    elif fmt == "txt":
        total = sum(1 for _ in numbered_lines(path, encoding, skip_blank=False))
    elif fmt == "sms":
        total = sum(1 for _ in numbered_lines(path, encoding))
    else:
        total = sum(1 for _ in _records(path, fmt, [text_column or "text"], encoding))
    return part_rows(total, shard, unit)


def part_rows(total: int, shard: tuple[int, int], unit: int = 1) -> tuple[int, int]:
    """Rows ``[start, end)`` of part k of n of ``total`` rows, in whole blocks of ``unit`` (a
    shard's progress counts its rows the same way)."""
    k, n = shard
    blocks = -(-total // unit)
    return min(total, (k - 1) * blocks // n * unit), min(total, k * blocks // n * unit)


def _read_inputs(
    path: Source,
    fmt: str,
    text_column: str | None,
    id_column: str | None,
    encoding: str,
    detect_id: bool,
    keep: Sequence[str] | None,
    start: int,
) -> Iterator[tuple[Any, ...]]:
    """:func:`read_inputs` from the ``start``-th record on (the records before it are skipped: a
    Parquet file's whole row groups unread)."""
    if fmt in ("txt", "sms"):
        for flag, value in (("--id-column", id_column), ("--keep-columns", keep)):
            if value:
                raise BadInputError(f"{flag} needs a CSV, TSV, JSONL or Parquet input; {fmt} has no columns")
        if fmt == "txt":
            lines = (line for _, line in numbered_lines(path, encoding, skip_blank=False))
        else:
            lines = (_sms_fields(path, ln, n)[0] for n, ln in numbered_lines(path, encoding))
        return enumerate(itertools.islice(lines, start, None), start=start)
    text = text_column or "text"

    kept = list(keep or [])
    has_id: list[bool] = []

    def choose(header: list[str]) -> list[str]:
        ids = id_column or ("id" if detect_id and "id" in header and text != "id" else None)
        has_id.append(ids is not None)
        return [text, *kept] if ids is None else [text, *kept, ids]

    if fmt == "parquet":
        records = _parquet_records(path, choose, start)
    else:
        records = itertools.islice(_records(path, fmt, choose, encoding), start, None)
    if not kept:
        return ((r[1] if len(r) > 1 else i, _cell(r[0])) for i, r in enumerate(records, start=start))
    n = len(kept)
    return (
        (r[-1] if has_id[0] else i, _cell(r[0]), dict(zip(kept, r[1 : 1 + n], strict=True)))
        for i, r in enumerate(records, start=start)
    )


# --- reading -----------------------------------------------------------------------------------


def _collect(path: Source, records: Iterator[tuple[Any, ...]]) -> LoadedTable:
    """Turn raw (text, label) records into a table, dropping and counting unusable ones."""
    texts: list[str] = []
    labels: list[str] = []
    rows: list[int] = []
    dropped: Counter[str] = Counter()
    count = 0
    for count, (raw_text, raw_label) in enumerate(records, start=1):
        pair = labelled_pair(raw_text, raw_label, dropped)
        if pair is not None:
            text, label = pair
            texts.append(text)
            labels.append(label)
            rows.append(count)
    if count == 0:
        raise BadInputError(f"{source_name(path)} has no rows")
    frame = pd.DataFrame({"text": texts, "label": labels, "row": pd.Series(rows, dtype="int64")})
    return LoadedTable(frame=frame, dropped=dict(dropped))


def labelled_pair(raw_text: Any, raw_label: Any, dropped: Counter[str]) -> tuple[str, str] | None:
    """A record's ``(text, label)`` as cells, or None (counted in ``dropped``) for an empty text or
    a missing label: the one rule every reader of labelled rows applies."""
    text, label = _cell(raw_text), _cell(raw_label).strip()
    if not text.strip():
        dropped[EMPTY_TEXT] += 1
    elif not label:
        dropped[MISSING_LABEL] += 1
    else:
        return text, label
    return None


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
        raise BadInputError(f"{source_name(path)}: line {line_no} has no tab (expected label<TAB>text)")
    return text, label


#: The columns to read: a fixed list, or chosen from the header (the first object's keys).
Columns = Sequence[str] | Callable[[list[str]], Sequence[str]]


def _records(source: Source, fmt: str, columns: Columns, encoding: str) -> Iterator[tuple[Any, ...]]:
    """The values of ``columns`` for each record of a CSV, TSV, JSONL or Parquet file (or stdin);
    of an SMS-format file (``label<TAB>text``), its ``(text, label)``."""
    if fmt == "sms":
        yield from (_sms_fields(source, line, line_no) for line_no, line in numbered_lines(source, encoding))
        return
    if fmt == "parquet":
        yield from _parquet_records(source, columns)
        return
    if fmt == "jsonl":
        yield from _jsonl_records(source, columns, encoding)
        return
    rows = _rows(source, fmt, encoding)
    header = next((r for _, r in rows if r), None)
    if header is None:
        raise BadInputError(f"{source_name(source)} is empty")
    chosen = columns(header) if callable(columns) else columns
    index = [_column_index(source, header, c) for c in chosen]
    for line_no, record in rows:
        if not record:  # a blank line is no record
            continue
        if len(record) != len(header):
            raise BadInputError(
                f"{source_name(source)}: line {line_no} has {len(record)} fields, the header has "
                f"{len(header)}" + (" (a tab inside a text?)" if fmt == "tsv" else "")
            )
        yield tuple(record[i] for i in index)


def _rows(source: Source, fmt: str, encoding: str) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) of each line of a CSV or TSV input; a blank line has no fields."""
    if fmt == "tsv":
        for line_no, line in numbered_lines(source, encoding, skip_blank=False):
            yield line_no, split_tsv(line) if line else []
        return
    reader = csv.reader(csv_lines(source, encoding), strict=True)
    try:
        for record in reader:
            yield reader.line_num, record
    except csv.Error as exc:
        raise BadInputError(f"{source_name(source)}: line {reader.line_num}: malformed CSV ({exc})") from None


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
    for line_no, line in numbered_lines(source, encoding):
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            message = f"{source_name(source)}: line {line_no} is not valid JSON ({exc.msg})"
            raise BadInputError(message) from None
        if not isinstance(obj, dict):
            raise BadInputError(f"{source_name(source)}: line {line_no} is not a JSON object")
        if chosen is None:  # chosen from the first object's keys
            assert callable(columns)
            chosen = columns(list(obj))
        for column in chosen:
            if column not in obj:
                raise BadInputError(
                    f"{source_name(source)}: line {line_no} has no key {column!r} "
                    f"(keys there: {', '.join(obj) or 'none'}); choose with --text-column / "
                    "--label-column / --id-column"
                )
        yield tuple(obj[c] for c in chosen)


#: Rows read from a Parquet file at a time (within its row groups).
PARQUET_BATCH = 8192


def _parquet_records(source: Source, columns: Columns, start: int = 0) -> Iterator[tuple[Any, ...]]:
    """The values of ``columns`` (the first one the texts) of each row of a Parquet file, from
    its ``start``-th row on (the row groups wholly before it are not read)."""
    if is_stdin(source):
        raise BadInputError(
            "Parquet cannot be read from stdin (a reader must seek to its end): give the file"
        )
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise BadInputError("reading Parquet needs pyarrow: pip install 'gptclf[parquet]'") from None
    path = Path(source)
    check_file(path)
    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise BadInputError(f"{path} is not a Parquet file ({str(exc).splitlines()[0][:120]})") from None
    with parquet:
        schema = parquet.schema_arrow
        header = list(schema.names)
        chosen = list(columns(header) if callable(columns) else columns)
        for column in chosen:
            _column_index(source, header, column)
        texts = schema.field(chosen[0]).type
        if not (
            pa.types.is_string(texts) or pa.types.is_large_string(texts) or pa.types.is_string_view(texts)
        ):
            raise BadInputError(
                f"{path}: column {chosen[0]!r} holds {texts}, not text: name the text column (--text-column)"
            )
        first, skip = 0, start  # the first row group to read, and the rows of it to skip
        while first < parquet.num_row_groups and skip >= (size := parquet.metadata.row_group(first).num_rows):
            first, skip = first + 1, skip - size
        groups = list(range(first, parquet.num_row_groups))
        try:
            batches = parquet.iter_batches(
                batch_size=PARQUET_BATCH, columns=list(dict.fromkeys(chosen)), row_groups=groups
            )
            for batch in batches if groups else []:
                if skip:
                    cut = min(skip, batch.num_rows)
                    batch, skip = batch.slice(cut), skip - cut
                values = [batch.column(c).to_pylist() for c in chosen]
                yield from zip(*values, strict=True)
        except (pa.ArrowException, OSError) as exc:
            raise BadInputError(f"{path}: cannot read its rows ({str(exc).splitlines()[0][:120]})") from None


def parquet_rows(path: Source) -> int | None:
    """The number of rows a Parquet file says it has (its metadata; None if it cannot be read)."""
    try:
        import pyarrow.parquet as pq

        return int(pq.ParquetFile(path).metadata.num_rows)
    except Exception:
        return None


def estimate_rows(path: Source, fmt: str | None) -> int | None:
    """About how many records a file holds, for a long job's progress and ETA: a Parquet file's
    metadata; else its line ends counted at disk speed (a header line less for CSV and TSV; a CSV
    text spanning lines makes this an over-estimate). None for stdin, compressed data (it would
    have to be decompressed twice) or an unreadable file."""
    if is_stdin(path):
        return None
    try:
        fmt = resolve_format(path, fmt, (*TABLE_FORMATS, "txt"))
    except BadInputError:
        return None
    if fmt == "parquet":
        return parquet_rows(path)
    try:
        with open(path, "rb") as fh:
            if fh.read(6)[:2] in (b"\x1f\x8b", b"BZ", b"\xfd7"):
                return None
            fh.seek(0)
            lines, last = 0, b"\n"
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                lines += chunk.count(b"\n")
                last = chunk[-1:]
    except OSError:
        return None
    lines += last != b"\n"
    return max(0, lines - (fmt in ("csv", "tsv")))


def _column_index(source: Source, header: list[str], column: str) -> int:
    if column not in header:
        raise BadInputError(
            f"{source_name(source)} has no column {column!r} (columns: {', '.join(header)}); choose with "
            "--text-column / --label-column / --id-column / --keep-columns"
        )
    if header.count(column) > 1:
        raise BadInputError(f"{source_name(source)}: column {column!r} appears {header.count(column)} times")
    return header.index(column)
