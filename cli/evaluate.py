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
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import typer
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table

from cli.common import (
    AGGREGATE,
    BATCH_SIZE,
    DATA_DIR,
    DEVICE,
    ENCODING,
    HEAD_TOKENS,
    INPUT_FORMAT,
    JSON_OUT,
    LABEL_COLUMN,
    LONG_TEXTS,
    PRECISION,
    RUN_DIR,
    STRIDE,
    TEXT_COLUMN,
    err_console,
    handle_errors,
    out_console,
)
from gptclf.errors import BadInputError, GptclfError, write_error
from gptclf.fileio import check_writable
from gptclf.progress import ConsoleProgress, fmt_metric

if TYPE_CHECKING:
    import torch

    from gptclf.inference.evaluate import LabelledData
    from gptclf.inference.predict import Predictor
    from gptclf.tasks.base import ReportTable


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


def _check_reports(errors_path: Path | None, show_errors: int, plots_dir: Path | None) -> None:
    """Refuse report destinations that cannot be written, before the model runs.

    Raises:
        BadInputError: A bad --errors name or folder, a negative --show-errors, a --plots file.
    """
    from gptclf.inference.error_report import error_format

    if show_errors < 0:
        raise BadInputError(f"--show-errors must be >= 0 (got {show_errors})")
    if errors_path is not None:
        error_format(errors_path)
        if errors_path.is_dir():
            raise BadInputError(f"--errors {errors_path} is a folder: name the file to write")
        if not errors_path.parent.is_dir():
            raise BadInputError(f"--errors {errors_path}: the folder {errors_path.parent} does not exist")
    if plots_dir is not None and plots_dir.exists() and not plots_dir.is_dir():
        raise BadInputError(f"--plots {plots_dir} is a file: name a folder (it is created if missing)")
    if errors_path is not None:
        _check_writable("--errors", errors_path, errors_path.parent)
    if plots_dir is not None:
        _check_writable("--plots", plots_dir, plots_dir)


def _check_writable(flag: str, target: Path, folder: Path) -> None:
    """Write, sync and remove a small file in ``folder`` (or the nearest of its ancestors that
    exists, for a folder still to be made): permission bits say nothing of a read-only mount or a
    full disk, so this is found out by writing, before the model runs.

    Raises:
        BadInputError: The place cannot be written (read-only, no permission, under a file).
        DiskFullError: The disk is full.
    """
    home = _nearest_existing(folder)
    if not home.is_dir():
        raise BadInputError(f"{flag} {target}: {home} is a file, not a folder")
    with _writing(flag, target, home):
        check_writable(home)


def _nearest_existing(path: Path) -> Path:
    """``path``, or its nearest ancestor that exists (the folders below it are made by a write)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


@contextlib.contextmanager
def _writing(flag: str, target: Path, folder: Path) -> Iterator[None]:
    """Turn an ``OSError`` of writing ``target`` into ``folder`` into its one-line error.

    Raises:
        DiskFullError: A full disk or quota (exit 1).
        BadInputError: A place that cannot be written (exit 2).
        GptclfError: Any other failure to write (exit 1).
    """
    try:
        yield
    except OSError as exc:
        error = write_error(exc, folder)
        raise type(error)(f"{flag} {target}: {error}") from None


def _report_errors(
    predictor: Predictor,
    data: LabelledData,
    logits: torch.Tensor,
    path: Path | None,
    show: int,
    *,
    to_stderr: bool,
) -> None:
    """Write the error report to ``path`` and print its first ``show`` rows (stdout beside the
    tables; stderr under --json, whose stdout holds the JSON object only)."""
    from gptclf.inference.error_report import error_rows, write_errors

    shown = predictor.decider.error_report_probabilities(logits)
    assert shown is not None  # only asked of a task that has an error report
    probs = shown.double().numpy()  # the probabilities the metrics judge
    rows = error_rows(probs, data.labels, predictor.classes, data.texts, data.ids)
    if path is not None:
        with _writing("--errors", path, path.parent):
            write_errors(path, rows, predictor.classes)
        err_console.print(f"gptclf: wrote {len(rows)} misclassified texts to {path}", markup=False)
    if show:
        table = Table(title=f"Most confident errors ({min(show, len(rows))} of {len(rows)})")
        for name in ("id", "true", "predicted", "confidence", "text"):
            table.add_column(name, justify="right" if name == "confidence" else "left")
        for row in rows[:show]:
            shown = row.id if isinstance(row.id, str) else json.dumps(row.id, ensure_ascii=False)
            table.add_row(shown, row.label, row.predicted, fmt_metric(row.confidence), row.text)
        _show(table, err_console if to_stderr else out_console)


def _write_plots(folder: Path, predictor: Predictor, data: LabelledData, logits: torch.Tensor) -> None:
    """Write the pictures into ``folder``, or say in one line that matplotlib is missing."""
    from gptclf.inference.plots import SKIPPED_NOTE, plot_inputs, write_plots

    source = data.source
    title = f"{source['split']} split" if "split" in source else Path(source["input"]).name
    inputs = plot_inputs(logits.numpy(), data.labels, predictor.classes, predictor.run.info, title)
    with _writing("--plots", folder, _nearest_existing(folder)):
        written = write_plots(folder, inputs)
    if written is None:
        err_console.print(f"gptclf: plots {SKIPPED_NOTE}", markup=False)
    else:
        err_console.print(f"gptclf: wrote {len(written)} plots to {folder}", markup=False)


def _input_format(input_format: str | None, old_format: str | None) -> str | None:
    """``--input-format``, or its old name ``--format`` (not both, unless they agree)."""
    if old_format is not None and input_format not in (None, old_format):
        raise BadInputError("--format is the old name of --input-format: give one of them")
    return input_format or old_format


def _warn_about(source: dict[str, Any]) -> None:
    """Say on stderr what may make these numbers misleading: another prepared folder, dropped rows."""
    if source.get("same_as_training") is False:
        err_console.print(
            "gptclf: warning: this prepared folder is not the one the run was trained on "
            "(its fingerprint differs), so its split may overlap the training texts"
        )
    dropped = sum(source.get("dropped", {}).values())
    if dropped:
        err_console.print(f"gptclf: {dropped} rows without a text or a label were skipped")


@handle_errors
def evaluate(
    run: Path = RUN_DIR,
    split: str | None = typer.Option(
        None, "--split", help="train, validation or test split of the prepared data (default test)."
    ),
    data: Path | None = DATA_DIR,
    input_path: Path | None = typer.Option(
        None, "--input", "-i", help="A labelled CSV/TSV/JSONL file to evaluate on instead of a split."
    ),
    text_column: str | None = TEXT_COLUMN,
    label_column: str | None = LABEL_COLUMN,
    input_format: str | None = INPUT_FORMAT,
    old_format: str | None = typer.Option(None, "--format", hidden=True),  # the old name, kept working
    encoding: str = ENCODING,
    batch_size: int = BATCH_SIZE,
    device: str = DEVICE,
    precision: str = PRECISION,
    no_calibration: bool = typer.Option(
        False, "--no-calibration", help="Metrics of the raw probabilities, without the run's temperature."
    ),
    json_out: bool = JSON_OUT,
    min_accuracy: float | None = typer.Option(
        None, "--min-accuracy", help="Exit 3 when accuracy is below this (for CI)."
    ),
    min_f1: float | None = typer.Option(
        None, "--min-f1", help="Exit 3 when macro F1 (multi-label runs: micro-F1) is below this (for CI)."
    ),
    threshold: float | None = typer.Option(
        None, "--threshold", help="Multi-label runs: one threshold P for every label instead of the run's."
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
    long_texts: str | None = LONG_TEXTS,
    head_tokens: int | None = HEAD_TOKENS,
    stride: int | None = STRIDE,
    aggregate: str | None = AGGREGATE,
) -> None:
    """Metrics of a run: accuracy, per-class and macro F1, confusion matrix, ROC/PR-AUC, calibration."""
    from gptclf.data.long_texts import describe_counts
    from gptclf.distributed import refuse_distributed
    from gptclf.inference.evaluate import DataChoice, Gates, evaluate_with_logits
    from gptclf.inference.predict import LongTextOptions, Predictor, resolve_long_texts
    from gptclf.rundir import load_run

    refuse_distributed("evaluate")  # a single-process verb: several copies would print N times
    input_format = _input_format(input_format, old_format)
    gates = Gates(min_accuracy, min_f1)
    _check_reports(errors_path, show_errors, plots_dir)  # before the model runs: nothing written
    choice = DataChoice(input_path, split, data, text_column, label_column, input_format, encoding)
    choice.check()
    loaded = load_run(run)
    long, warnings = resolve_long_texts(loaded, LongTextOptions(long_texts, head_tokens, stride, aggregate))
    for warning in warnings:  # given, but not used by the mode
        err_console.print(warning, markup=False)
    task = loaded.task
    reports = task.no_error_report is None and (errors_path is not None or show_errors > 0)
    # Judged as predict applies them: the run's stored decision and abstention (or thresholds).
    predictor = Predictor(
        loaded,
        device=device,
        precision=precision,
        batch_size=batch_size,
        threshold=threshold,
        calibrated=not no_calibration,
        long_texts=long,
        verb="evaluate",
    )
    labelled = choice.load(loaded, "test", "evaluate", read_ids=reports)
    _warn_about(labelled.source)
    err_console.print(
        f"gptclf: evaluating {len(labelled.texts)} texts on {predictor.device} ({predictor.precision.name}), "
        + predictor.decider.describe()
    )
    metrics, logits = evaluate_with_logits(predictor, labelled, progress=ConsoleProgress(err_console))
    if predictor.n_truncated:
        line = describe_counts(predictor.long_counts(), loaded.max_length, long)
        err_console.print(f"gptclf: {line}", markup=False)
    if json_out:
        try:  # allow_nan=False: NaN is not JSON (non-finite logits are refused earlier; a backstop)
            line = json.dumps(metrics, ensure_ascii=False, allow_nan=False)
        except ValueError:
            raise GptclfError(f"the metrics of {loaded.path} hold a non-finite value") from None
        _emit(line + "\n", sys.stdout)
    else:
        for table in task.report_tables(metrics):
            _render(table)
    # Written before the gate is checked: a CI job that fails it still gets the report to look at.
    if task.no_error_report is not None:
        asked = {"--errors": errors_path is not None, "--show-errors": show_errors > 0}
        skipped = [flag for flag, on in {**asked, "--plots": plots_dir is not None}.items() if on]
        if skipped:
            err_console.print(f"gptclf: {', '.join(skipped)} skipped: {task.no_error_report}", markup=False)
    else:
        if errors_path is not None or show_errors:
            _report_errors(predictor, labelled, logits, errors_path, show_errors, to_stderr=json_out)
        if plots_dir is not None:
            _write_plots(plots_dir, predictor, labelled, logits)
    gates.check(metrics, task.f1_key)
