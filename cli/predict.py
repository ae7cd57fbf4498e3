"""``gptclf predict RUN``: classify texts from arguments, a file or stdin, streamed in input order.

Output, one record per input text in input order (``id`` is the input's own id, from ``--id-column``
or a column named ``id``, else the text's 0-based position: the argument, line or data row number):

- ``jsonl`` (default when stdout is not a terminal): ``{"id", "text", "label", "probs": {class: p}}``
- ``csv``: a header ``id,text,label,p_<class>...`` then one RFC 4180 row per text
- ``tsv``: the same columns, never quoted, with the backslash escapes ``\\t \\n \\r \\\\`` that
  ``--input x.tsv`` (and ``prepare``) read back (see :func:`gptclf.data.tables.split_tsv`)
- ``table`` (default on a terminal): a rich table per chunk of texts

With abstention (``--min-confidence P`` or a run's stored ``abstain``), a text whose top calibrated
probability is below P gets no label: JSONL ``"label": null, "abstained": true`` (every record has
``abstained``), CSV/TSV an empty label and an ``abstained`` column (``true``/``false``), the table
``(abstained)``. The labels follow the run's stored decision (``decision``: a threshold chosen by
``calibrate``/``finetune --target``) unless ``--threshold`` replaces it.

Probabilities are rounded to 6 decimals; output is UTF-8 whatever the locale. Results are written
and flushed a chunk at a time, and a chunk from stdin ends early when input pauses, so a pipeline
sees them while the input is still being read. With ``--output FILE`` the results go to a temporary
file beside FILE that is renamed into place at the end: a run that fails leaves no partial file.

Engines (:mod:`gptclf.engines.load`): ``--engine torch`` (default) at ``--precision``; ``--quantize int8``
(torch's dynamic int8, CPU); ``--engine onnx`` (ONNX Runtime, CPU: a run is exported on the fly, so
export once with ``gptclf export RUN --format onnx`` and predict on that folder, whose engine is
onnx). All run the same batches and give the same formats and decisions.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from cli.common import (
    AGGREGATE,
    BATCH_SIZE,
    DEVICE,
    HEAD_TOKENS,
    LONG_TEXTS,
    PRECISION,
    STRIDE,
    err_console,
    handle_errors,
    out_console,
)
from gptclf.errors import BadInputError, write_error
from gptclf.fileio import remove_stale_temp_files, temp_path_for

if TYPE_CHECKING:
    from gptclf.tasks.base import Decider, Prediction

FORMATS = ("jsonl", "csv", "tsv", "table")
#: Seconds without a new line on stdin after which the texts read so far are predicted and written.
STDIN_PAUSE = 0.2

#: Writes one chunk of predictions.
Writer = Callable[[list["Prediction"]], None]


def _inputs(
    texts: list[str],
    input_path: str | None,
    text_column: str | None,
    id_column: str | None,
    input_format: str | None,
    encoding: str,
) -> Iterable[str | tuple[Any, str]]:
    """The input stream chosen by the arguments, checked before the run is loaded."""
    if texts == ["-"] and input_path is None:
        input_path = "-"
        texts = []
    if texts and input_path is not None:
        raise BadInputError("give texts as arguments or --input FILE, not both")
    if input_path is None:
        if not texts:
            raise BadInputError("nothing to classify: give texts as arguments, --input FILE, or - for stdin")
        stray = [f for f, v in {"--text-column": text_column, "--id-column": id_column}.items() if v]
        stray += ["--input-format"] if input_format is not None else []
        if stray:
            verb = "applies" if len(stray) == 1 else "apply"
            raise BadInputError(f"{', '.join(stray)} only {verb} to --input FILE or -")
        return texts
    from gptclf.data.tables import read_inputs

    # Stdin and files share one reader: --encoding, a BOM, CRLF and bad bytes are handled alike.
    source = input_path if input_path == "-" else Path(input_path)
    return read_inputs(source, text_column, id_column, fmt=input_format, encoding=encoding)


def _id_cell(value: Any) -> str:
    """An id as a CSV/TSV/table cell: strings as they are, JSON values in their JSON spelling."""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _jsonl_writer(out: TextIO, decider: Decider) -> Writer:
    def write(preds: list[Prediction]) -> None:
        for p in preds:
            # allow_nan=False: a NaN would make the line invalid JSON (logits are checked already).
            out.write(json.dumps(decider.record(p), ensure_ascii=False, allow_nan=False) + "\n")

    return write


def _csv_writer(out: TextIO, decider: Decider) -> Writer:
    # csv quotes a field holding the delimiter, a quote or "\n", so texts round-trip; but it leaves a
    # lone "\r" bare, which readers take for a line break, so a row holding one is quoted whole.
    plain = csv.writer(out, lineterminator="\n")
    quoted = csv.writer(out, lineterminator="\n", quoting=csv.QUOTE_ALL)
    plain.writerow(["id", "text", *decider.columns()])

    def write(preds: list[Prediction]) -> None:
        for p in preds:
            row = [_id_cell(p.id), p.text, *decider.cells(p)]
            (quoted if "\r" in p.text else plain).writerow(row)

    return write


def _tsv_writer(out: TextIO, decider: Decider) -> Writer:
    from gptclf.data.tables import tsv_line

    # The convention gptclf's TSV reader uses (escapes, no quoting), so the output reads back as is.
    out.write(tsv_line(["id", "text", *decider.columns()]))

    def write(preds: list[Prediction]) -> None:
        for p in preds:
            out.write(tsv_line([_id_cell(p.id), p.text, *(str(c) for c in decider.cells(p))]))

    return write


def _table_writer(out: TextIO, decider: Decider, console: Console) -> Writer:
    classes = decider.classes

    def write(preds: list[Prediction]) -> None:
        # Every column but the text keeps its full width; the text gets what is left of the console
        # (up to 60 characters) and ends in an ellipsis where it is longer (jsonl has it whole).
        ids = [_id_cell(p.id) for p in preds]
        shown = [decider.shown_label(p) for p in preds]
        id_width = max(2, *map(len, ids))
        label_width = decider.label_width(shown)
        prob_widths = [len(c) + 3 for c in classes]
        fixed = id_width + label_width + sum(prob_widths) + 3 * (len(classes) + 3)
        table = Table(show_edge=False)
        table.add_column("id", justify="right", no_wrap=True, min_width=id_width)
        table.add_column(
            "text", overflow="ellipsis", no_wrap=True, max_width=min(60, max(8, console.width - fixed))
        )
        table.add_column(decider.label_header, style="bold", no_wrap=True, min_width=label_width)
        for c, width in zip(classes, prob_widths, strict=True):
            table.add_column(f"p({c})", justify="right", no_wrap=True, min_width=width)
        for ident, p, label in zip(ids, preds, shown, strict=True):
            text = Text(" ".join(p.text.splitlines()))  # one line per row; never read as markup
            table.add_row(Text(ident), text, Text(label), *(f"{v:.3f}" for v in p.probs.values()))
        # Rendered to a string and written here, not by rich: rich answers a closed pipe with
        # SystemExit(1), where `| head` must end quietly with 0 like the other formats.
        with console.capture() as captured:
            console.print(table)
        out.write(captured.get())

    return write


def _writer(fmt: str, out: TextIO, decider: Decider, to_file: bool) -> Writer:
    if fmt == "jsonl":
        return _jsonl_writer(out, decider)
    if fmt == "csv":
        return _csv_writer(out, decider)
    if fmt == "tsv":
        return _tsv_writer(out, decider)
    console = Console(file=io.StringIO(), width=100, color_system=None) if to_file else out_console
    return _table_writer(out, decider, console)


@contextlib.contextmanager
def _destination(output: Path | None, fmt: str) -> Iterator[TextIO]:
    """Stdout (as UTF-8), or a temporary file beside ``output`` renamed onto it at the end.

    The temporary file is made first, before the run is loaded, so an unwritable place fails at
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
    if not output.parent.is_dir():  # a missing folder, or a file: said as any unwritable place
        code = errno.ENOTDIR if output.parent.exists() else errno.ENOENT
        raise write_error(OSError(code, os.strerror(code)), output.parent)
    try:  # named with this process's id: what a kill -9 leaves, the next predict beside it removes
        remove_stale_temp_files(output.parent)
        tmp = temp_path_for(output)
        fd = os.open(tmp, os.O_WRONLY | os.O_TRUNC)
    except OSError as exc:
        raise write_error(exc, output.parent) from None
    fh = open(fd, "w", encoding="utf-8", newline="")  # noqa: SIM115 (closed below, on every path)
    try:
        yield fh
        try:  # only the file's own last steps: an OSError of the work above is not a write error
            fh.flush()
            os.fsync(fh.fileno())
            fh.close()
            os.replace(tmp, output)
        except OSError as exc:
            raise write_error(exc, output.parent) from None
    finally:
        with contextlib.suppress(OSError):  # after a full disk, closing fails too
            fh.close()
        tmp.unlink(missing_ok=True)


def _stream(predictions: Iterable[list[Prediction]], write: Writer, out: TextIO, where: str) -> None:
    """Write and flush each chunk as it comes, so a pipeline sees results while input flows."""
    for preds in predictions:
        try:
            write(preds)
            out.flush()
        except BrokenPipeError:
            # The reader left (`| head`): point stdout at /dev/null so that the interpreter's final
            # flush cannot fail again and turn a quiet exit into exit code 120.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise
        except OSError as exc:  # a full disk under the file or under a redirected stdout
            raise write_error(exc, where) from None


@handle_errors
def predict(
    run: Path = typer.Argument(
        ..., help="Run directory written by `gptclf finetune`, or a folder of `gptclf export --format onnx`."
    ),
    texts: list[str] | None = typer.Argument(None, help="Texts to classify; a single '-' reads stdin."),
    input_path: str | None = typer.Option(
        None, "--input", "-i", help="File: one text a line, or CSV/TSV/JSONL with --text-column; - for stdin."
    ),
    text_column: str | None = typer.Option(None, "--text-column", help="Column holding the text."),
    id_column: str | None = typer.Option(
        None, "--id-column", help="Column whose value is each output's id (default: a column named id)."
    ),
    input_format: str | None = typer.Option(
        None, "--input-format", help="txt, csv, tsv, jsonl or sms; default: from the name (stdin: txt)."
    ),
    encoding: str = typer.Option("utf-8", "--encoding", help="Text encoding of the input (stdin too)."),
    fmt: str | None = typer.Option(
        None, "--format", "-f", help="jsonl, csv, tsv or table (default: table on a terminal, else jsonl)."
    ),
    output: Path | None = typer.Option(
        None, "--output", "-o", help="Write the results to this file (whole or not at all), not stdout."
    ),
    batch_size: int = BATCH_SIZE,
    threshold: float | None = typer.Option(
        None, "--threshold", help="Two classes: predict --positive when its probability is >= P."
    ),
    positive: str | None = typer.Option(None, "--positive", help="The positive class for --threshold."),
    min_confidence: float | None = typer.Option(
        None,
        "--min-confidence",
        help="Abstain (label null) where the top calibrated probability is below P, in (0, 1].",
    ),
    no_calibration: bool = typer.Option(
        False, "--no-calibration", help="Raw softmax probabilities, without the run's fitted temperature."
    ),
    device: str = DEVICE,
    precision: str = PRECISION,
    engine: str | None = typer.Option(
        None, "--engine", help="torch or onnx (ONNX Runtime, CPU); default: torch, onnx for an export folder."
    ),
    quantize: str = typer.Option(
        "none", "--quantize", help="none or int8: dynamic int8 quantization of the weights (CPU, fp32)."
    ),
    long_texts: str | None = LONG_TEXTS,
    head_tokens: int | None = HEAD_TOKENS,
    stride: int | None = STRIDE,
    aggregate: str | None = AGGREGATE,
) -> None:
    """Classify texts with a finetuned run: one result per text, in input order."""
    from gptclf.distributed import refuse_distributed
    from gptclf.inference.predict import LongTextOptions, Predictor, open_run, resolve_long_texts
    from gptclf.tasks.decisions import check_min_confidence

    refuse_distributed("predict")  # a single-process verb: several copies would print N times
    if fmt is None:
        fmt = "table" if sys.stdout.isatty() and output is None else "jsonl"
    if fmt not in FORMATS:
        raise BadInputError(f"unknown --format {fmt!r}: use one of {', '.join(FORMATS)}")
    check_min_confidence(min_confidence)
    stream = _inputs(texts or [], input_path, text_column, id_column, input_format, encoding)
    with _destination(output, fmt) as out:
        loaded = open_run(run)
        given = LongTextOptions(long_texts, head_tokens, stride, aggregate)
        long, warnings = resolve_long_texts(loaded, given)
        for warning in warnings:  # given, but not used by the mode
            err_console.print(warning, markup=False)
        exported = _is_export(loaded)
        engine = engine or ("onnx" if exported else "torch")
        if engine == "onnx" and not exported:
            err_console.print("gptclf: exporting the run to ONNX first (`gptclf export` does it once)")
        # The run's stored rules are the defaults; the options replace them (the run's task says how).
        predictor = Predictor(
            loaded,
            device=device,
            precision=precision,
            engine=engine,
            quantize=quantize,
            batch_size=batch_size,
            threshold=threshold,
            positive=positive,
            calibrated=not no_calibration,
            min_confidence=min_confidence,
            long_texts=long,
        )
        write = _writer(fmt, out, predictor.decider, output is not None)
        pause = STDIN_PAUSE if input_path == "-" or texts == ["-"] else None
        where = str(output.parent) if output is not None else "stdout"
        _stream(predictor.predict_chunks(stream, pause=pause), write, out, where)
    if predictor.n_truncated:
        from gptclf.data.long_texts import describe_counts

        line = describe_counts(predictor.long_counts(), loaded.max_length, long)
        err_console.print(f"gptclf: {line}", markup=False)


def _is_export(loaded: object) -> bool:
    """Whether ``loaded`` is an ONNX export folder (whose one engine is onnx)."""
    from gptclf.engines.onnx_folder import OnnxExport

    return isinstance(loaded, OnnxExport)
