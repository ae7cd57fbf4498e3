"""``gptclf evaluate RUN`` of a multi-label run: the metrics, as tables or ``--json``, and the gates.

``--min-f1`` gates micro-F1 and ``--min-accuracy`` the exact-match (subset) accuracy. The error
report and the pictures of :mod:`gptclf.inference.error_report` and :mod:`gptclf.inference.plots`
are those of softmax runs: for a multi-label run they are skipped with a note on stderr.
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any

from rich.table import Table

from cli.common import err_console
from gptclf.errors import GptclfError
from gptclf.progress import ConsoleProgress, fmt_metric

if TYPE_CHECKING:
    from gptclf.inference.evaluate import DataChoice, Gates
    from gptclf.rundir import LoadedRun

_SUMMARY = (
    ("micro F1", "micro_f1"),
    ("micro precision", "micro_precision"),
    ("micro recall", "micro_recall"),
    ("macro F1", "macro_f1"),
    ("weighted F1", "weighted_f1"),
    ("samples F1", "samples_f1"),
    ("subset accuracy (exact match)", "subset_accuracy"),
    ("Hamming loss", "hamming_loss"),
    ("loss (mean BCE)", "loss"),
    ("macro ROC-AUC", "macro_roc_auc"),
)


def evaluate_multi_run(
    loaded: LoadedRun,
    choice: DataChoice,
    gates: Gates,
    threshold: float | None,
    no_calibration: bool,
    settings: dict[str, Any],
    reports: dict[str, Any],
) -> None:
    """Evaluate a multi-label run and apply the gates (see the module docstring).

    Raises:
        BadInputError: Bad data or options (``--no-calibration`` is for softmax runs).
        GateError: A gate is not met (after the metrics are printed).
    """
    from cli.evaluate import _emit, _warn_about  # here: cli.evaluate calls this module
    from gptclf.inference.evaluate import evaluate_with_logits
    from gptclf.inference.predict_multi import MultiPredictor, check_threshold, single_label_only

    single_label_only(no_calibration=no_calibration)
    check_threshold(threshold)
    labelled = choice.load(loaded, "test", "evaluate")
    predictor = MultiPredictor(
        loaded,
        threshold=threshold,
        device=settings["device"],
        precision=settings["precision"],
        batch_size=settings["batch_size"],
        long_texts=settings.get("long_texts"),
    )
    _warn_about(labelled.source)
    where = "one threshold for all labels" if threshold is not None else "the run's per-label thresholds"
    err_console.print(
        f"gptclf: evaluating {len(labelled.texts)} texts on {predictor.device} "
        f"({predictor.precision.name}), multi-label, {where}"
    )
    metrics, _ = evaluate_with_logits(predictor, labelled, progress=ConsoleProgress(err_console))
    if predictor.n_truncated:
        from gptclf.data.long_texts import LongCounts, describe_counts

        counts = LongCounts(predictor.n_texts, predictor.n_truncated, predictor.n_windows)
        line = describe_counts(counts, loaded.max_length, predictor.long_texts)
        err_console.print(f"gptclf: {line}", markup=False)
    if settings["json_out"]:
        try:
            line = json.dumps(metrics, ensure_ascii=False, allow_nan=False)
        except ValueError:
            raise GptclfError(f"the metrics of {loaded.path} hold a non-finite value") from None
        _emit(line + "\n", sys.stdout)  # a reader that leaves (`| head`): exit 0, quiet
    else:
        print_tables(metrics)
    asked = {"--errors": reports["errors"] is not None, "--show-errors": reports["show_errors"] > 0}
    skipped = [flag for flag, on in {**asked, "--plots": reports["plots"] is not None}.items() if on]
    if skipped:
        err_console.print(
            f"gptclf: {', '.join(skipped)} skipped: the error report and the plots are for single-label runs",
            markup=False,
        )
    gates.check(metrics)


def print_tables(m: dict[str, Any]) -> None:
    """Summary, per-label and per-label confusion tables on stdout."""
    from cli.evaluate import _show  # here: cli.evaluate calls this module

    summary = Table(title="Evaluation (multi-label)", show_header=False)
    summary.add_column("metric")
    summary.add_column("value", justify="right")
    source = m["source"]
    summary.add_row(
        "data", f"{source['split']} split of {source['data']}" if "split" in source else source["input"]
    )
    summary.add_row("texts", str(m["n"]))
    for label, key in _SUMMARY:
        summary.add_row(label, fmt_metric(m[key]))
    summary.add_row("truncated", str(m["truncated"]))
    _show(summary)
    per = Table(title="Per label")
    for name in ("label", "threshold", "precision", "recall", "F1", "ROC-AUC", "support"):
        per.add_column(name, justify="left" if name == "label" else "right")
    for name, row in m["per_class"].items():
        cells = [fmt_metric(row[k]) for k in ("threshold", "precision", "recall", "f1", "roc_auc")]
        per.add_row(name, *cells, str(row["support"]))
    _show(per)
    confusion = Table(title="Per-label confusion (true/false positives and negatives)")
    for name in ("label", "TP", "FP", "FN", "TN"):
        confusion.add_column(name, justify="left" if name == "label" else "right")
    for name, ((tn, fp), (fn, tp)) in m["confusion_matrix"].items():
        confusion.add_row(name, str(tp), str(fp), str(fn), str(tn))
    _show(confusion)
