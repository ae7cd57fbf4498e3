"""Where ``predict``'s records go and how they are spelt: JSONL, CSV, TSV (the table format is
the CLI's), written a chunk at a time to stdout or to a file that appears whole at the end.

- ``jsonl``: one record per line, the run's task's record (:meth:`gptclf.tasks.base.Decider.record`)
- ``csv``: a header ``id,text,<the task's columns>`` then one RFC 4180 row per text
- ``tsv``: the same columns, never quoted, with the backslash escapes ``\\t \\n \\r \\\\`` that
  ``--input x.tsv`` (and ``prepare``) read back (see :func:`gptclf.data.tables.split_tsv`)
- ``parquet``: the same columns typed (``labels`` a list, ``p_<class>`` floats), a row group per
  chunk (:class:`ParquetWriter`; a file only)

Columns of the input kept with ``--keep-columns`` follow the record's own in every format, so the
results join back to the source.

With a file, the records go to a temporary file beside it (named with the process id, made before
the run is loaded so an unwritable place fails at once) that is renamed onto it at the end: a run
that fails leaves no partial file and an older file as it was.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO, TextIO

from gptclf.errors import BadInputError, write_error
from gptclf.fileio import remove_own_temp_files, remove_stale_temp_files, temp_path_for
from gptclf.tasks.base import Decider, Prediction

#: The formats of predict's output (``table`` is rendered by the CLI).
FORMATS = ("jsonl", "csv", "tsv", "parquet", "table")

#: Writes one chunk of predictions.
Writer = Callable[[list[Prediction]], None]


def id_cell(value: Any) -> str:
    """An id as a CSV/TSV/table cell: strings as they are, JSON values in their JSON spelling."""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def jsonl_writer(out: TextIO, decider: Decider, keep: Sequence[str] = ()) -> Writer:
    def write(preds: list[Prediction]) -> None:
        for p in preds:
            # allow_nan=False: a NaN would make the line invalid JSON (logits are checked already).
            record = decider.record(p) | _kept(p, keep)
            out.write(json.dumps(record, ensure_ascii=False, allow_nan=False, default=str) + "\n")

    return write


def _kept(p: Prediction, keep: Sequence[str]) -> dict[str, Any]:
    """The kept input columns of a prediction, in ``keep``'s order."""
    extra = p.extra or {}
    return {name: extra.get(name) for name in keep}


def check_keep_columns(keep: Sequence[str], decider: Decider) -> None:
    """Refuse a kept column whose name a record already uses (``--keep-columns label``).

    Raises:
        BadInputError: A clash, or a column named twice.
    """
    own = {"id", "text", *decider.columns(), *decider.record(_probe(decider))}
    for name in keep:
        if name in own:
            raise BadInputError(f"--keep-columns {name}: predict writes its own {name!r}; rename that column")
        if list(keep).count(name) > 1:
            raise BadInputError(f"--keep-columns names {name!r} twice")


def _probe(decider: Decider) -> Prediction:
    return Prediction(0, "", None, dict.fromkeys(decider.classes, 0.0), 0)


def csv_writer(out: TextIO, decider: Decider, keep: Sequence[str] = (), header: bool = True) -> Writer:
    # csv quotes a field holding the delimiter, a quote or "\n", so texts round-trip; but it leaves a
    # lone "\r" bare, which readers take for a line break, so a row holding one is quoted whole.
    plain = csv.writer(out, lineterminator="\n")
    quoted = csv.writer(out, lineterminator="\n", quoting=csv.QUOTE_ALL)
    if header:
        plain.writerow(["id", "text", *decider.columns(), *keep])

    def write(preds: list[Prediction]) -> None:
        for p in preds:
            row = [id_cell(p.id), p.text, *decider.cells(p), *_kept_cells(p, keep)]
            (quoted if "\r" in p.text else plain).writerow(row)

    return write


def _kept_cells(p: Prediction, keep: Sequence[str]) -> list[str]:
    return ["" if v is None else id_cell(v) for v in _kept(p, keep).values()]


def tsv_writer(out: TextIO, decider: Decider, keep: Sequence[str] = (), header: bool = True) -> Writer:
    from gptclf.data.tables import tsv_line

    # The convention gptclf's TSV reader uses (escapes, no quoting), so the output reads back as is.
    if header:
        out.write(tsv_line(["id", "text", *decider.columns(), *keep]))

    def write(preds: list[Prediction]) -> None:
        for p in preds:
            cells = [id_cell(p.id), p.text, *(str(c) for c in decider.cells(p)), *_kept_cells(p, keep)]
            out.write(tsv_line(cells))

    return write


class ParquetWriter:
    """Records as an Apache Parquet file: ``id``, ``text``, the label (``label``, or ``labels`` as a
    list for multi-label runs), a ``p_<class>`` float column per class, ``abstained`` where the run
    abstains, then the kept columns; a row group per chunk. :meth:`close` writes the footer: a file
    that was not closed is not Parquet (and ``--output`` only renames it into place after that)."""

    def __init__(self, out: TextIO | BinaryIO, decider: Decider, keep: Sequence[str] = ()) -> None:
        """Write to ``out``: a binary file, or a text file's ``buffer``.

        Raises:
            BadInputError: A kept column named like a record's own or twice (as the text formats).
        """
        check_keep_columns(keep, decider)
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise BadInputError("--format parquet needs pyarrow: pip install 'gptclf[parquet]'") from None
        self.pa, self.pq = pa, pq
        self.sink: BinaryIO = getattr(out, "buffer", out)
        self.decider, self.keep = decider, list(keep)
        self.writer: Any = None
        self.schema: Any = None

    def rows(self, preds: list[Prediction]) -> list[dict[str, Any]]:
        """The rows of a chunk of predictions, as :meth:`write_rows` takes them."""
        rows = []
        for p in preds:
            record = self.decider.record(p)
            probs = record.pop("probs")
            row = {k: v for k, v in record.items()} | {f"p_{c}": v for c, v in probs.items()}
            rows.append(row | _kept(p, self.keep))
        return rows

    def _schema(self, rows: list[dict[str, Any]]) -> Any:
        pa = self.pa
        fields = []
        for name in rows[0] if rows else ["id", "text", "label", *(f"p_{c}" for c in self.decider.classes)]:
            values = [r.get(name) for r in rows]
            kind = pa.array(values).type if rows else pa.string()
            if pa.types.is_null(kind):  # nothing to tell the type by yet: labels and kept cells are text
                kind = pa.list_(pa.string()) if name == "labels" else pa.string()
            fields.append(pa.field(name, kind))
        return pa.schema(fields)

    def __call__(self, preds: list[Prediction]) -> None:
        self.write_rows(self.rows(preds))

    def write_rows(self, rows: list[dict[str, Any]]) -> None:
        """Write one chunk's rows (:meth:`rows`) as a row group; the first chunk fixes the types."""
        if self.writer is None:
            self.schema = self._schema(rows)
            self.writer = self.pq.ParquetWriter(self.sink, self.schema)
        try:
            table = self.pa.Table.from_pylist(rows, schema=self.schema)
        except (self.pa.ArrowException, TypeError, ValueError) as exc:
            raise BadInputError(
                f"a column changes type within the input ({str(exc).splitlines()[0][:100]}): Parquet columns "
                "hold one type; write --format jsonl instead"
            ) from None
        self.writer.write_table(table)

    def close(self) -> None:
        """Write the footer (and, for an input without texts, the empty file's columns)."""
        if self.writer is None:
            self.schema = self._schema([])
            self.writer = self.pq.ParquetWriter(self.sink, self.schema)
        self.writer.close()


def record_writer(
    fmt: str, out: TextIO, decider: Decider, keep: Sequence[str] = (), header: bool = True
) -> Writer:
    """The writer of ``fmt`` (jsonl, csv, tsv or parquet) for the run's task, with the input
    columns ``keep`` after the record's own. A parquet writer must be closed (:class:`ParquetWriter`)."""
    check_keep_columns(keep, decider)
    if fmt == "jsonl":
        return jsonl_writer(out, decider, keep)
    if fmt == "csv":
        return csv_writer(out, decider, keep, header)
    if fmt == "tsv":
        return tsv_writer(out, decider, keep, header)
    if fmt == "parquet":
        return ParquetWriter(out, decider, keep)
    raise BadInputError(f"unknown --format {fmt!r}: use one of {', '.join(FORMATS)}")


@contextlib.contextmanager
def destination(output: Path | None, fmt: str) -> Iterator[TextIO]:
    """Stdout (as UTF-8), or a temporary file beside ``output`` renamed onto it at the end.

    A symbolic link's file is the one replaced (the link stays); a file that is not a regular one
    (a device such as ``/dev/null``, a FIFO) is written into as it is, never replaced. The temporary
    file is made first, before the run is loaded, so an unwritable place fails at
    once; it is removed on any failure, which leaves no partial results and an older FILE as it was.
    """
    if output is None:
        reconfigure = getattr(sys.stdout, "reconfigure", None)
        if reconfigure is not None and fmt == "table":  # for people: a "?" for what cannot be shown
            reconfigure(errors="replace")
        elif reconfigure is not None:  # for programs: UTF-8, whatever the locale (LC_ALL=C, ...)
            reconfigure(encoding="utf-8", errors="strict")
        yield sys.stdout
        return
    if output.is_dir():
        raise BadInputError(f"--output {output} is a folder: name a file")
    if output.exists() and not output.is_file():  # a device, a FIFO, a socket: written into, never replaced
        yield from _into_special(output)
        return
    output = output.resolve() if output.is_symlink() else output  # the link stays; its file is replaced
    if not output.parent.is_dir():  # a missing folder, or a file: said as any unwritable place
        code = errno.ENOTDIR if output.parent.exists() else errno.ENOENT
        raise write_error(OSError(code, os.strerror(code)), output.parent)
    fh: TextIO | None = None
    try:  # from before the temporary file exists: a signal at any moment leaves nothing behind
        try:  # named with this process's id: what a kill -9 leaves, the next predict beside it removes
            remove_stale_temp_files(output.parent)
            tmp = temp_path_for(output)
            fd = os.open(tmp, os.O_WRONLY | os.O_TRUNC)
        except OSError as exc:
            raise write_error(exc, output.parent) from None
        fh = open(fd, "w", encoding="utf-8", newline="")  # noqa: SIM115 (closed below, on every path)
        yield fh
        try:  # only the file's own last steps: an OSError of the work above is not a write error
            fh.flush()
            os.fsync(fh.fileno())
            fh.close()
            os.replace(tmp, output)
        except OSError as exc:
            raise write_error(exc, output.parent) from None
    finally:
        if fh is not None:
            with contextlib.suppress(OSError):  # after a full disk, closing fails too
                fh.close()
        remove_own_temp_files(output)


def _into_special(output: Path) -> Iterator[TextIO]:
    """Write straight into a file that is not a regular one (``/dev/null``, a FIFO a reader waits
    on): replacing it by a regular file would destroy it, and it holds no results to keep whole.

    Raises:
        GptclfError, BadInputError: It cannot be opened or written (one line).
    """
    try:
        fh = open(output, "w", encoding="utf-8", newline="")  # noqa: SIM115 (closed below)
    except OSError as exc:
        raise write_error(exc, output.parent) from None
    try:
        yield fh
        try:
            fh.flush()
        except OSError as exc:
            raise write_error(exc, output.parent) from None
    finally:
        with contextlib.suppress(OSError):
            fh.close()


def stream(chunks: Iterable[list[Prediction]], write: Writer, out: TextIO, where: str) -> None:
    """Write and flush each chunk as it comes, so a pipeline sees results while input flows.

    Raises:
        BrokenPipeError: The reader left (``| head``); stdout then points at /dev/null, so that the
            interpreter's final flush cannot fail again and turn a quiet exit into exit code 120.
        DiskFullError, GptclfError: Writing failed (a full disk under the file or a redirected stdout).
    """
    for preds in chunks:
        try:
            write(preds)
            out.flush()
        except BrokenPipeError:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise
        except OSError as exc:
            raise write_error(exc, where) from None
