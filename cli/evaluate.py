"""``gptclf evaluate RUN``: metrics on a split of the prepared data or on a labelled file.

Without ``--json``, human tables go to stdout (summary, per-class precision/recall/F1, confusion
matrix). With ``--json``, stdout holds exactly one JSON object (see
:func:`gptclf.inference.evaluate.evaluate`).
Messages and progress go to stderr. A gate that is not met (``--min-accuracy``, ``--min-f1``) exits 3
after the metrics are printed (and after the reports below are written).

``--errors FILE`` writes every misclassified text (see :mod:`gptclf.inference.error_report`);
``--show-errors N`` prints the N most confident of them as a table beside the others (on stderr
under ``--json``).
``--plots DIR`` writes the pictures of :mod:`gptclf.inference.plots`.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TextIO

import typer
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table

from cli.common import DATA_DIR, RUN_DIR, err_console, handle_errors, out_console
from cli.options import Use, option_groups
from gptclf.errors import BadInputError, GptclfError
from gptclf.option_groups import DecisionOptions, DeviceOptions, InputOptions, LongTextOptions, OutputOptions
from gptclf.progress import ConsoleProgress, fmt_metric

if TYPE_CHECKING:
    from gptclf.inference.error_report import ErrorRow
    from gptclf.tasks.base import ReportTable

#: evaluate's wording of its shared options, and the ones it shows.
_INPUT = Use(help={"input_path": "A labelled CSV/TSV/JSONL file to evaluate on instead of a split"})
_DECIDE = Use(
    only=("threshold", "no_calibration"),
    help={
        "threshold": "Multi-label runs: one threshold P for every label instead of the run's",
        "no_calibration": "Metrics of the raw probabilities, without the run's temperature",
    },
)


def _render(report: ReportTable, base: Console | None = None) -> None:
    """Print one of the task's report tables (stdout by default)."""
    table = Table(title=report.title, show_header=report.header)
    for i, name in enumerate(report.columns):
        table.add_column(name, justify="left" if i < report.left else "right")
    for row in report.rows:
        table.add_row(*row)
    _show(table, base)


def _show(table: Table, base: Console | None = None) -> None:
    """Print ``table`` whole on ``base`` (default stdout): cells fold (wrap, long words too) instead
    of ending in an ellipsis, and where it is no terminal (a pipe, a log, `make demo`) there is no
    width to fit, so the table gets the width it needs instead of rich's default 80 columns."""
    base = base or out_console
    for column in table.columns:
        column.overflow = "fold"
    console = base
    if not base.is_terminal:
        options = base.options.update(max_width=_UNLIMITED)
        needed = Measurement.get(base, options, table).maximum
        console = Console(file=base.file, width=max(base.width, needed), highlight=False)
    # Rendered first, then written here: rich's own write exits 1 when the reader leaves (`| head`).
    with console.capture() as captured:
        console.print(table, markup=False)
    _emit(captured.get(), base.file)


def _emit(text: str, out: TextIO) -> None:
    """Write ``text`` to ``out`` (stdout) and flush it.

    Raises:
        BrokenPipeError: The reader left (``| head``); ``out`` now points at /dev/null, so that the
            interpreter's last flush cannot fail again, and :func:`cli.common.handle_errors` exits
            0 without a word, as ``predict`` does.
    """
    try:
        out.write(text)
        out.flush()
    except BrokenPipeError:
        with contextlib.suppress(OSError, ValueError):  # a stream without a descriptor has no pipe
            os.dup2(os.open(os.devnull, os.O_WRONLY), out.fileno())
        raise


#: A width no table reaches, to measure the one it needs.
_UNLIMITED = 100_000


def _show_errors(rows: list[ErrorRow], show: int, to_stderr: bool) -> None:
    """The ``show`` most confident errors as a table (stdout beside the tables; stderr under --json,
    whose stdout holds the JSON object only)."""
    table = Table(title=f"Most confident errors ({min(show, len(rows))} of {len(rows)})")
    for name in ("id", "true", "predicted", "confidence", "text"):
        table.add_column(name, justify="right" if name == "confidence" else "left")
    for row in rows[:show]:
        shown = row.id if isinstance(row.id, str) else json.dumps(row.id, ensure_ascii=False)
        table.add_row(shown, row.label, row.predicted, fmt_metric(row.confidence), row.text)
    _show(table, err_console if to_stderr else out_console)


@handle_errors
@option_groups
def evaluate(
    run: Path = RUN_DIR,
    split: str | None = typer.Option(
        None, "--split", help="train, validation or test split of the prepared data (default test)."
    ),
    data: Path | None = DATA_DIR,
    source: Annotated[InputOptions, _INPUT] = InputOptions(),
    old_format: str | None = typer.Option(None, "--format", hidden=True),  # the old name, kept working
    device: DeviceOptions = DeviceOptions(),
    decide: Annotated[DecisionOptions, _DECIDE] = DecisionOptions(),
    output: OutputOptions = OutputOptions(),
    min_accuracy: float | None = typer.Option(
        None, "--min-accuracy", help="Exit 3 when accuracy is below this (for CI)."
    ),
    min_f1: float | None = typer.Option(
        None, "--min-f1", help="Exit 3 when macro F1 (multi-label runs: micro-F1) is below this (for CI)."
    ),
    errors_path: Path | None = typer.Option(
        None,
        "--errors",
        help="Write every misclassified text (id, true and predicted class, probabilities) to FILE "
        "(.jsonl, .csv or .tsv), most confident first.",
    ),
    show_errors: int = typer.Option(0, "--show-errors", help="Print the N most confident errors."),
    plots_dir: Path | None = typer.Option(
        None,
        "--plots",
        help="Write PNGs into DIR: confusion matrix, ROC and precision-recall (two classes), "
        "reliability before/after calibration, F1 per class (needs the plot extra).",
    ),
    long: LongTextOptions = LongTextOptions(),
) -> None:
    """Metrics of a run: accuracy, per-class and macro F1, confusion matrix, ROC/PR-AUC, calibration."""
    from gptclf.inference.evaluate import Gates, evaluate_run, write_error_report, write_plot_report
    from gptclf.inference.labelled import DataChoice
    from gptclf.inference.reports import Reports

    s = source
    if old_format is not None and s.input_format not in (None, old_format):
        raise BadInputError("--format is the old name of --input-format: give one of them")
    fmt = s.input_format or old_format
    gates = Gates(min_accuracy, min_f1)
    reports = Reports(errors_path, show_errors, plots_dir)
    choice = DataChoice(s.input_path, split, data, s.text_column, s.label_column, fmt, s.encoding)
    progress = ConsoleProgress(err_console)
    result = evaluate_run(
        run, choice, device=device, decide=decide, long=long, reports=reports, progress=progress
    )
    if output.json_out:
        try:  # allow_nan=False: NaN is not JSON (non-finite logits are refused earlier; a backstop)
            line = json.dumps(result.metrics, ensure_ascii=False, allow_nan=False)
        except ValueError:
            raise GptclfError(f"the metrics of {result.predictor.run.path} hold a non-finite value") from None
        _emit(line + "\n", sys.stdout)
    else:
        for table in result.predictor.run.task.report_tables(result.metrics):
            _render(table)
    # Written before the gate is checked: a CI job that fails it still gets the report to look at.
    for line in result.skipped:
        err_console.print(line, markup=False)
    if result.errors is not None and errors_path is not None:
        err_console.print(write_error_report(result, errors_path), markup=False)
    if result.errors is not None and show_errors:
        _show_errors(result.errors, show_errors, to_stderr=output.json_out)
    if plots_dir is not None and not result.skipped:
        err_console.print(write_plot_report(result, plots_dir), markup=False)
    result.check_gates(gates)
