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
``calibrate``/``finetune --target``) unless ``--threshold`` replaces it. A multi-label run writes
``labels`` (a list, joined by the run's separator in CSV/TSV) instead of ``label``: the record is the
run's task's (:mod:`gptclf.tasks`), the writers those of :mod:`gptclf.inference.outputs`.

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

import io
import sys
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TextIO

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from cli.common import err_console, handle_errors, out_console
from cli.options import Use, option_groups
from gptclf.errors import BadInputError
from gptclf.option_groups import DecisionOptions, DeviceOptions, InputOptions, LongTextOptions

if TYPE_CHECKING:
    from gptclf.inference.outputs import Writer
    from gptclf.inference.predict import Predictor
    from gptclf.tasks.base import Decider, Prediction

FORMATS = ("jsonl", "csv", "tsv", "parquet", "table")
#: Seconds without a new line on stdin after which the texts read so far are predicted and written.
STDIN_PAUSE = 0.2
#: predict's wording of the input options it shows (its --input is a string: ``-`` is stdin).
_INPUT = Use(
    only=("text_column", "input_format", "encoding"),
    help={
        "text_column": "Column holding the text",
        "input_format": "txt, csv, tsv, jsonl, sms or parquet (stdin: txt); .gz, .bz2, .xz read too",
        "encoding": "Text encoding of the input (stdin too)",
    },
)


def _table_writer(out: TextIO, decider: Decider, console: Console) -> Writer:
    from gptclf.inference.outputs import id_cell

    classes = decider.classes

    def write(preds: list[Prediction]) -> None:
        # Every column but the text keeps its full width; the text gets what is left of the console
        # (up to 60 characters) and ends in an ellipsis where it is longer (jsonl has it whole).
        ids = [id_cell(p.id) for p in preds]
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


@handle_errors
@option_groups
def predict(
    run: Path = typer.Argument(
        ..., help="Run directory written by `gptclf finetune`, or a folder of `gptclf export --format onnx`."
    ),
    texts: list[str] | None = typer.Argument(None, help="Texts to classify; a single '-' reads stdin."),
    input_path: str | None = typer.Option(
        None, "--input", "-i", help="File: one text a line, or CSV/TSV/JSONL with --text-column; - for stdin."
    ),
    source: Annotated[InputOptions, _INPUT] = InputOptions(),
    id_column: str | None = typer.Option(
        None, "--id-column", help="Column whose value is each output's id (default: a column named id)."
    ),
    fmt: str | None = typer.Option(
        None,
        "--format",
        "-f",
        help="jsonl, csv, tsv, parquet (with --output) or table (default: what --output's name says, "
        "*.jsonl/.csv/.tsv/.parquet; else table on a terminal, jsonl otherwise).",
    ),
    keep_columns: str | None = typer.Option(
        None, "--keep-columns", help="Input columns to copy into each result, comma-separated (a,b)."
    ),
    shard: str | None = typer.Option(
        None, "--shard", metavar="K/N", help="Only the K-th of N contiguous parts of --input (K from 1)."
    ),
    output: Path | None = typer.Option(
        None, "--output", "-o", help="Write the results to this file (whole or not at all), not stdout."
    ),
    resume: bool = typer.Option(
        False,
        "--resume",
        help="Continue an interrupted --input FILE --output FILE job from its last whole chunk.",
    ),
    decide: DecisionOptions = DecisionOptions(),
    device: DeviceOptions = DeviceOptions(),
    engine: str | None = typer.Option(
        None, "--engine", help="torch or onnx (ONNX Runtime, CPU); default: torch, onnx for an export folder."
    ),
    quantize: str = typer.Option(
        "none", "--quantize", help="none or int8: dynamic int8 quantization of the weights (CPU, fp32)."
    ),
    long: LongTextOptions = LongTextOptions(),
) -> None:
    """Classify texts with a finetuned run: one result per text, in input order."""
    from gptclf.distributed import world_size
    from gptclf.inference.outputs import destination, stream
    from gptclf.inference.predict import parse_shard, text_stream

    ranks = world_size()
    if ranks > 1:
        import os

        if os.environ.get("RANK", "0") != "0":  # rank 0 says what is said; the others only work
            err_console.quiet = True
        if not (output is not None and input_path not in (None, "-") and not texts):
            raise BadInputError(
                f"under torchrun ({ranks} processes) predict needs --input FILE and --output FILE: the ranks "
                "split the file and rank 0 writes the output"
            )
    if output is not None and output.suffix.lower() in _COMPRESSED:
        raise BadInputError(
            f"--output {output}: predict writes uncompressed files; write {output.with_suffix('').name} "
            f"and compress it, or compress stdout (`gptclf predict ... | "
            f"{_COMPRESSED[output.suffix.lower()]} > {output.name}`)"
        )
    named = _SUFFIX_FORMATS.get(output.suffix.lower()) if output is not None else None
    if fmt is not None and named is not None and fmt != named:
        suffix = ".txt" if fmt == "table" else f".{fmt}"
        raise BadInputError(
            f"--format {fmt} but --output {output} is named as {named}: name the file for what it "
            f"holds (e.g. {output.with_suffix(suffix).name}) or drop --format"
        )
    if fmt is None and named is not None:  # the name says it (JSONL into a .csv file read back as CSV fails)
        fmt = named
    if fmt is None:
        fmt = "table" if sys.stdout.isatty() and output is None else "jsonl"
    if fmt not in FORMATS:
        raise BadInputError(f"unknown --format {fmt!r}: use one of {', '.join(FORMATS)}")
    if fmt == "parquet" and output is None:
        raise BadInputError("--format parquet writes a file: give --output FILE.parquet")
    keep = [c.strip() for c in keep_columns.split(",") if c.strip()] if keep_columns else []
    if keep_columns is not None and not keep:
        raise BadInputError("--keep-columns names no column: give NAME[,NAME...]")
    s, part = source, parse_shard(shard) if shard is not None else None
    target = _job_target(output, input_path, texts, resume)
    if target is not None:
        options = {
            "format": fmt,
            "text_column": s.text_column,
            "id_column": id_column,
            "input_format": s.input_format,
            "encoding": s.encoding,
            "keep_columns": keep,
            "shard": shard,
            "engine": engine,
            "quantize": quantize,
            **asdict(device),
            **asdict(decide),
            **asdict(long),
        }
        from gptclf.inference.jobs import JobRequest, predict_job

        req = JobRequest(run, Path(input_path or ""), target, options, resume, part)
        predictor = predict_job(
            req,
            lambda out, decider, header: _writer(fmt, out, decider, True, keep, header),
            lambda chunks, done: _with_progress(chunks, Path(input_path or ""), s.input_format, part, done),
            note=lambda line: err_console.print(line, markup=False),
        )
        _say_long(predictor)
        return
    given = text_stream(
        texts or [], input_path, s.text_column, id_column, s.input_format, s.encoding, keep, part
    )
    with destination(output, fmt) as out:
        predictor = _open(run, engine, quantize, device, decide, long)
        # Parts after the first write no CSV/TSV header: `cat` of the parts in order is the whole.
        header = part is None or part[0] == 1
        write = _writer(fmt, out, predictor.decider, output is not None, keep, header)
        pause = STDIN_PAUSE if input_path == "-" or texts == ["-"] else None
        where = str(output.parent) if output is not None else "stdout"
        chunks = predictor.predict_chunks(given, pause=pause)
        # A long job from a file shows its progress on stderr, unless its results go to the terminal.
        if input_path not in (None, "-") and (output is not None or not sys.stdout.isatty()):
            chunks = _with_progress(chunks, Path(input_path), s.input_format, part)
        elif pause is not None and (output is not None or not sys.stdout.isatty()):
            # A stream on stdin: its size is unknown; texts done and texts/s, once it has run 2 s
            # (a short pipeline's stderr stays as it was).
            from gptclf.data.long_steps import LongSteps
            from gptclf.inference.predict import with_progress
            from gptclf.progress import ConsoleProgress

            chunks = with_progress(chunks, LongSteps(ConsoleProgress(err_console)), None)
        stream(chunks, write, out, where)
        finish = getattr(write, "close", None)
        if finish is not None:  # Parquet's footer: before the file is renamed into place
            finish()
    _say_long(predictor)


#: Output names that say their format: it is the default, and --format must agree (CSV text in a
#: .parquet file reads as a damaged Parquet file later).
_SUFFIX_FORMATS = {".jsonl": "jsonl", ".csv": "csv", ".tsv": "tsv", ".parquet": "parquet", ".pq": "parquet"}
#: Output names of compressed data, which predict does not write (it reads them).
_COMPRESSED = {".gz": "gzip", ".bz2": "bzip2", ".xz": "xz"}


def _open(
    run: Path,
    engine: str | None,
    quantize: str,
    device: DeviceOptions,
    decide: DecisionOptions,
    long: LongTextOptions,
) -> Predictor:
    from gptclf.inference.predict import open_predictor

    return open_predictor(
        run, engine=engine, quantize=quantize, device=device, decide=decide, long=long,
        note=lambda line: err_console.print(line, markup=False),
    )  # fmt: skip


def _say_long(predictor: Predictor) -> None:
    from gptclf.data.long_texts import describe_counts

    if predictor.n_truncated:
        line = describe_counts(predictor.long_counts(), predictor.run.max_length, predictor.long_texts)
        err_console.print(f"gptclf: {line}", markup=False)


def _with_progress(
    chunks: Iterator[list[Prediction]],
    path: Path,
    input_format: str | None,
    part: tuple[int, int] | None,
    done: int = 0,
) -> Iterator[list[Prediction]]:
    """``chunks`` shown on stderr: texts done, texts/s and the ETA where the rows can be counted."""
    from gptclf.data.tables import estimate_rows, part_rows
    from gptclf.inference.predict import CHUNK_SIZE, with_progress
    from gptclf.progress import ConsoleProgress

    total = estimate_rows(path, input_format)
    if total is not None and part is not None:  # this part's rows: whole chunks, as the shard takes them
        start, end = part_rows(total, part, CHUNK_SIZE)
        total = end - start
    if total is not None:
        total = max(0, total - done)
    return with_progress(chunks, ConsoleProgress(err_console), total)


def _job_target(
    output: Path | None, input_path: str | None, texts: list[str] | None, resume: bool
) -> Path | None:
    """The file a resumable job writes (``--output``'s, a link's target), or None where the job
    is not one: results on stdout or into a device, texts from arguments or stdin.

    Raises:
        BadInputError: ``--resume`` where there is no job to resume.
    """
    from gptclf.distributed import world_size

    from_file = input_path is not None and input_path != "-" and not texts
    if output is None or not from_file:
        if resume:
            why = "results on stdout" if output is None else "stdin or arguments cannot be read again"
            raise BadInputError(f"--resume needs --input FILE and --output FILE ({why}): name both")
        return None
    if output.is_dir() or (output.exists() and not output.is_file()):
        if resume or world_size() > 1:
            raise BadInputError(f"--resume and torchrun need --output to be a file; {output} is not one")
        return None  # destination() refuses a folder and writes into a device
    try:
        return output.resolve(strict=False) if output.is_symlink() else output
    except (RuntimeError, OSError) as exc:  # a loop of links
        raise BadInputError(f"--output {output} cannot be followed ({exc}): name a file") from None


def _writer(
    fmt: str, out: TextIO, decider: Decider, to_file: bool, keep: list[str], header: bool = True
) -> Writer:
    """The record writer of ``fmt``, or the table (rendered here: it is for people)."""
    if fmt != "table":
        from gptclf.inference.outputs import record_writer

        return record_writer(fmt, out, decider, keep, header)
    console = Console(file=io.StringIO(), width=100, color_system=None) if to_file else out_console
    return _table_writer(out, decider, console)
