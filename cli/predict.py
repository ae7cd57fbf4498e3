"""``gptclf predict RUN``: classify texts from arguments, a file or stdin, streamed in input order.

Output, one record per input text in input order (``id`` is the text's 0-based position in the
input: the argument, line or data row number):

- ``jsonl`` (default when stdout is not a terminal): ``{"id", "text", "label", "probs": {class: p}}``
- ``csv`` / ``tsv``: a header ``id,text,label,p_<class>...`` then one quoted row per text
- ``table`` (default on a terminal): a rich table per chunk of texts

Probabilities are rounded to 6 decimals. Results are written and flushed a chunk at a time, so a
pipeline sees them while the input is still being read.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.table import Table
from rich.text import Text

from cli.common import err_console, handle_errors, out_console
from gptclf.errors import BadInputError

if TYPE_CHECKING:
    from gptclf.predict import Prediction

FORMATS = ("jsonl", "csv", "tsv", "table")

#: Writes one chunk of predictions to stdout.
Writer = Callable[[list["Prediction"]], None]


def _stdin_lines() -> Iterator[str]:
    """Lines of stdin without their line ending, read lazily (an empty line is an empty text)."""
    for line in sys.stdin:
        yield line[:-1] if line.endswith("\n") else line


def _texts(
    texts: list[str], input_path: str | None, text_column: str | None, input_format: str | None, encoding: str
) -> Iterable[str]:
    """The input stream chosen by the arguments, checked before the run is loaded."""
    if texts == ["-"] and input_path is None:
        input_path = "-"
        texts = []
    if texts and input_path is not None:
        raise BadInputError("give texts as arguments or --input FILE, not both")
    if input_path is None:
        if not texts:
            raise BadInputError("nothing to classify: give texts as arguments, --input FILE, or - for stdin")
        return texts
    if input_path == "-":
        if text_column is not None or input_format is not None:
            raise BadInputError("stdin is read one text a line: --text-column and --input-format need a file")
        return _stdin_lines()
    from gptclf.data import read_texts

    return read_texts(Path(input_path), text_column=text_column, fmt=input_format, encoding=encoding)


def _jsonl_writer() -> Writer:
    def write(preds: list[Prediction]) -> None:
        for p in preds:
            probs = {c: round(v, 6) for c, v in p.probs.items()}
            record = {"id": p.index, "text": p.text, "label": p.label, "probs": probs}
            sys.stdout.write(json.dumps(record, ensure_ascii=False) + "\n")

    return write


def _delimited_writer(classes: list[str], delimiter: str) -> Writer:
    # csv quotes a field holding the delimiter, a quote or "\n", so texts round-trip; but it leaves a
    # lone "\r" bare, which readers take for a line break, so a row holding one is quoted whole.
    plain = csv.writer(sys.stdout, delimiter=delimiter, lineterminator="\n")
    quoted = csv.writer(sys.stdout, delimiter=delimiter, lineterminator="\n", quoting=csv.QUOTE_ALL)
    plain.writerow(["id", "text", "label", *(f"p_{c}" for c in classes)])

    def write(preds: list[Prediction]) -> None:
        for p in preds:
            row = [p.index, p.text, p.label, *(round(v, 6) for v in p.probs.values())]
            (quoted if "\r" in p.text else plain).writerow(row)

    return write


def _table_writer(classes: list[str]) -> Writer:
    def write(preds: list[Prediction]) -> None:
        # Every column but the text keeps its full width; the text gets what is left of the console
        # (up to 60 characters) and ends in an ellipsis where it is longer.
        id_width = max(2, len(str(preds[-1].index)))
        label_width = max(5, *map(len, classes))
        prob_widths = [len(c) + 3 for c in classes]
        fixed = id_width + label_width + sum(prob_widths) + 3 * (len(classes) + 3)
        table = Table(show_edge=False)
        table.add_column("id", justify="right", no_wrap=True, min_width=id_width)
        table.add_column(
            "text", overflow="ellipsis", no_wrap=True, max_width=min(60, max(8, out_console.width - fixed))
        )
        table.add_column("label", style="bold", no_wrap=True, min_width=label_width)
        for c, width in zip(classes, prob_widths, strict=True):
            table.add_column(f"p({c})", justify="right", no_wrap=True, min_width=width)
        for p in preds:
            shown = Text(" ".join(p.text.splitlines()))  # one line per row; never read as markup
            table.add_row(str(p.index), shown, Text(p.label), *(f"{v:.3f}" for v in p.probs.values()))
        out_console.print(table)

    return write


def _writer(fmt: str, classes: list[str]) -> Writer:
    if fmt == "jsonl":
        return _jsonl_writer()
    if fmt in ("csv", "tsv"):
        return _delimited_writer(classes, "," if fmt == "csv" else "\t")
    return _table_writer(classes)


@handle_errors
def predict(
    run: Path = typer.Argument(..., help="Run directory written by `gptclf finetune`."),
    texts: list[str] | None = typer.Argument(None, help="Texts to classify; a single '-' reads stdin."),
    input_path: str | None = typer.Option(
        None, "--input", "-i", help="File: one text a line, or CSV/TSV/JSONL with --text-column; - for stdin."
    ),
    text_column: str | None = typer.Option(None, "--text-column", help="Column holding the text."),
    input_format: str | None = typer.Option(
        None, "--input-format", help="Input file format (txt, csv, tsv, jsonl, sms); default: from its name."
    ),
    encoding: str = typer.Option("utf-8", "--encoding", help="Text encoding of the input file."),
    fmt: str | None = typer.Option(
        None, "--format", "-f", help="jsonl, csv, tsv or table (default: table on a terminal, else jsonl)."
    ),
    batch_size: int = typer.Option(32, "--batch-size", help="Texts per forward pass."),
    threshold: float | None = typer.Option(
        None, "--threshold", help="Two classes: predict --positive when its probability is >= P."
    ),
    positive: str | None = typer.Option(None, "--positive", help="The positive class for --threshold."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N or mps."),
    precision: str = typer.Option("auto", "--precision", help="auto, fp32, bf16 or fp16."),
) -> None:
    """Classify texts with a finetuned run: one result per text, in input order."""
    from gptclf.checkpoint import load_run
    from gptclf.distributed import refuse_distributed
    from gptclf.predict import Predictor, make_decision

    refuse_distributed("predict")  # a single-process verb: several copies would print N times
    if fmt is None:
        fmt = "table" if sys.stdout.isatty() else "jsonl"
    if fmt not in FORMATS:
        raise BadInputError(f"unknown --format {fmt!r}: use one of {', '.join(FORMATS)}")
    stream = _texts(texts or [], input_path, text_column, input_format, encoding)
    loaded = load_run(run)
    decision = make_decision(loaded.classes, threshold, positive)
    predictor = Predictor(
        loaded, device=device, precision=precision, batch_size=batch_size, decision=decision
    )
    write = _writer(fmt, predictor.classes)
    try:
        # Flush each chunk before the next is read, so a pipeline sees results while input flows.
        for preds in predictor.predict_chunks(stream):
            write(preds)
            sys.stdout.flush()
    except BrokenPipeError:
        # The reader left (`| head`): point stdout at /dev/null so that the interpreter's final
        # flush cannot fail again and turn a quiet exit into exit code 120.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise
    if predictor.n_truncated:
        err_console.print(
            f"gptclf: {predictor.n_truncated} of {predictor.n_texts} texts were longer than "
            f"{loaded.max_length} tokens and were truncated"
        )
