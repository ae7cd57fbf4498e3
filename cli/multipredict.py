"""``gptclf predict RUN`` of a multi-label run: label lists and every label's probability.

- ``jsonl``: ``{"id", "text", "labels": [...], "probs": {label: p}}`` (``labels`` may be empty)
- ``csv``/``tsv``: ``id,text,labels,p_<label>...``, the labels joined by ``|`` (empty: none)
- ``table``: a rich table per chunk, the labels listed (``(none)`` where there is none)

The thresholds are the run's, chosen per label on validation, unless ``--threshold P`` sets one
for all labels; ``--positive``, ``--min-confidence`` and ``--no-calibration`` are for softmax runs.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TextIO

from rich.console import Console
from rich.table import Table
from rich.text import Text

from cli.common import err_console, out_console
from gptclf.data.labelsets import DEFAULT_SEP, run_label_sep

if TYPE_CHECKING:
    from gptclf.engines.onnx_folder import OnnxExport
    from gptclf.inference.predict_multi import MultiPrediction
    from gptclf.rundir import LoadedRun

Writer = Callable[[list["MultiPrediction"]], None]
#: The table's cell of a text with no label.
NO_LABEL = "(none)"


def _id_cell(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def jsonl_writer(out: TextIO) -> Writer:
    def write(preds: list[MultiPrediction]) -> None:
        for p in preds:
            record = {"id": p.id, "text": p.text, "labels": p.labels,
                      "probs": {c: round(v, 6) for c, v in p.probs.items()}}  # fmt: skip
            out.write(json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n")

    return write


def _cells(p: MultiPrediction, sep: str) -> list[str]:
    return [_id_cell(p.id), p.text, sep.join(p.labels), *(str(round(v, 6)) for v in p.probs.values())]


def csv_writer(out: TextIO, classes: list[str], sep: str = DEFAULT_SEP) -> Writer:
    # As predict's CSV: a row holding a lone "\r" is quoted whole, so readers keep it one row.
    plain = csv.writer(out, lineterminator="\n")
    quoted = csv.writer(out, lineterminator="\n", quoting=csv.QUOTE_ALL)
    plain.writerow(["id", "text", "labels", *(f"p_{c}" for c in classes)])

    def write(preds: list[MultiPrediction]) -> None:
        for p in preds:
            (quoted if "\r" in p.text else plain).writerow(_cells(p, sep))

    return write


def tsv_writer(out: TextIO, classes: list[str], sep: str = DEFAULT_SEP) -> Writer:
    from gptclf.data.tables import tsv_line

    out.write(tsv_line(["id", "text", "labels", *(f"p_{c}" for c in classes)]))

    def write(preds: list[MultiPrediction]) -> None:
        for p in preds:
            out.write(tsv_line(_cells(p, sep)))

    return write


def table_writer(out: TextIO, classes: list[str], console: Console) -> Writer:
    def write(preds: list[MultiPrediction]) -> None:
        # Every column but the text keeps its full width; the text gets what is left (up to 60).
        listed = [", ".join(p.labels) or NO_LABEL for p in preds]
        label_width = max(len("labels"), *map(len, listed))
        fixed = 6 + label_width + sum(len(c) + 6 for c in classes) + 3 * (len(classes) + 3)
        table = Table(show_edge=False)
        table.add_column("id", justify="right", no_wrap=True)
        table.add_column(
            "text", overflow="ellipsis", no_wrap=True, max_width=min(60, max(8, console.width - fixed))
        )
        table.add_column("labels", style="bold", no_wrap=True, min_width=label_width)
        for c in classes:
            table.add_column(f"p({c})", justify="right", no_wrap=True)
        for p, names in zip(preds, listed, strict=True):
            shown = Text(" ".join(p.text.splitlines()))
            labels = Text(names)
            table.add_row(Text(_id_cell(p.id)), shown, labels, *(f"{v:.3f}" for v in p.probs.values()))
        with console.capture() as captured:  # written here, as predict's table is (quiet on | head)
            console.print(table)
        out.write(captured.get())

    return write


def writer(fmt: str, out: TextIO, classes: list[str], to_file: bool, sep: str = DEFAULT_SEP) -> Writer:
    """The writer of ``fmt`` (one of predict's formats); ``sep`` joins CSV/TSV label lists."""
    if fmt == "jsonl":
        return jsonl_writer(out)
    if fmt == "csv":
        return csv_writer(out, classes, sep)
    if fmt == "tsv":
        return tsv_writer(out, classes, sep)
    console = Console(file=io.StringIO(), width=100, color_system=None) if to_file else out_console
    return table_writer(out, classes, console)


def predict_multi(
    loaded: LoadedRun | OnnxExport,
    stream: Iterable[Any],
    out: TextIO,
    options: dict[str, Any],
    stream_to: Callable[[Iterable[list[Any]], Writer, TextIO, str], None],
) -> None:
    """Classify ``stream`` with a multi-label run and write each chunk as it comes.

    Args:
        loaded: The run.
        stream: Texts or ``(id, text)`` pairs.
        out: Where the results go.
        options: predict's options: ``fmt``, ``to_file``, ``where``, ``pause``, ``threshold``,
            ``positive``, ``min_confidence``, ``no_calibration``, ``device``, ``precision``,
            ``batch_size``, and ``engine``, ``quantize`` (torch when absent).
        stream_to: predict's streaming loop (flushes each chunk; a closed pipe ends quietly).

    Raises:
        BadInputError: An option of softmax runs, or a bad threshold.
    """
    from gptclf.inference.predict_multi import MultiPredictor, single_label_only

    single_label_only(
        positive=options["positive"], min_confidence=options["min_confidence"],
        no_calibration=options["no_calibration"],
    )  # fmt: skip
    predictor = MultiPredictor(
        loaded, threshold=options["threshold"], device=options["device"], precision=options["precision"],
        batch_size=options["batch_size"], engine=options.get("engine", "torch"),
        quantize=options.get("quantize", "none"), long_texts=options.get("long_texts"),
    )  # fmt: skip
    sep = run_label_sep(loaded.info)
    write = writer(options["fmt"], out, predictor.classes, options["to_file"], sep)
    stream_to(predictor.predict_chunks(stream, pause=options["pause"]), write, out, options["where"])
    if predictor.n_truncated:
        from gptclf.data.long_texts import LongCounts, describe_counts

        counts = LongCounts(predictor.n_texts, predictor.n_truncated, predictor.n_windows)
        line = describe_counts(counts, loaded.max_length, predictor.long_texts)
        err_console.print(f"gptclf: {line}", markup=False)
