"""Multi-label classification: any number of labels per text (none included), a sigmoid per label
trained with binary cross-entropy (:mod:`gptclf.tasks.label_sets`).

After training each label's threshold is chosen on validation (0.5 without enough positives); a
prediction is the list of labels whose probability reaches its threshold, or ``--threshold P`` for
all. There is no temperature and no two-class rule: calibration, ``--target``, ``--positive``,
``--min-confidence`` and ``--no-calibration`` are for single-label runs and are refused here.
A multi-label run stores ``task: multi_label`` (and ``multi_label: true``, which older runs have
alone) and ``thresholds`` in run.json, and the separator of its label lists in ``data.label_sep``.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch

from gptclf.data.labelsets import (
    DEFAULT_SEP,
    check_separator,
    dropped_rows,
    iter_multilabel,
    label_matrix,
    read_multilabel_table,
    records_frame,
    run_label_sep,
)
from gptclf.errors import BadInputError
from gptclf.option_groups import DecisionOptions, TargetOptions
from gptclf.progress import fmt_metric
from gptclf.tasks.base import Decider, Finished, LabelledFile, Prediction, ReportTable, Task
from gptclf.tasks.label_sets import (
    DEFAULT_THRESHOLD,
    bce_sum,
    choose_thresholds,
    exact_matches,
    multilabel_metrics,
    pos_weights,
    stored_thresholds,
)

#: The table's cell of a text with no label.
NO_LABEL = "(none)"
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


def single_label_only(
    *, positive: str | None = None, min_confidence: float | None = None, no_calibration: bool = False
) -> None:
    """Refuse the options of softmax runs on a multi-label run, in one line.

    Raises:
        BadInputError: Naming the options given.
    """
    flags = {"--positive": positive is not None, "--min-confidence": min_confidence is not None}
    given = [flag for flag, on in {**flags, "--no-calibration": no_calibration}.items() if on]
    if given:
        verb = "applies" if len(given) == 1 else "apply"
        raise BadInputError(
            f"{', '.join(given)} {verb} to single-label runs; this run is multi-label "
            "(use --threshold P to set one threshold for every label)"
        )


def check_threshold(threshold: float | None) -> float | None:
    """``--threshold`` of a multi-label run: a probability in [0, 1], or None.

    Raises:
        BadInputError: Outside [0, 1].
    """
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise BadInputError(f"--threshold must be a probability in [0, 1] (got {threshold})")
    return threshold


class MultiDecider(Decider):
    """Independent sigmoid probabilities and, per text, the labels at or above their thresholds.

    Attributes:
        thresholds: Each label's threshold, in class order.
        given: Whether ``--threshold`` replaced the stored thresholds.
        sep: What joins a label list in a CSV/TSV cell (the run's ``data.label_sep``).
    """

    label_header: ClassVar[str] = "labels"

    def __init__(self, info: Mapping[str, Any], threshold: float | None) -> None:
        self.classes = list(info["classes"])
        self.given = threshold is not None
        k = len(self.classes)
        self.thresholds = [float(threshold)] * k if threshold is not None else stored_thresholds(dict(info))
        self.sep = run_label_sep(info)

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """(N, K) independent label probabilities: ``sigmoid(logits)``."""
        return torch.sigmoid(logits.double()).float()

    def label_sets(self, probs: torch.Tensor) -> list[list[str]]:
        """Each row's labels: those whose probability reaches their threshold."""
        on = probs.double() >= torch.as_tensor(self.thresholds, dtype=torch.float64)[None, :]
        return [[c for c, yes in zip(self.classes, row, strict=True) if yes] for row in on.tolist()]

    def predictions(
        self, start: int, ids: Sequence[Any], texts: Sequence[str], logits: torch.Tensor
    ) -> list[Prediction]:
        probs = self.probabilities(logits)
        rows = zip(ids, texts, self.label_sets(probs), probs.tolist(), strict=True)
        return [
            Prediction(start + i, text, None, dict(zip(self.classes, row, strict=True)), ident, labels=labels)
            for i, (ident, text, labels, row) in enumerate(rows)
        ]

    def record(self, p: Prediction) -> dict[str, Any]:
        return {"id": p.id, "text": p.text, "labels": p.labels,
                "probs": {c: round(v, 6) for c, v in p.probs.items()}}  # fmt: skip

    def columns(self) -> list[str]:
        return ["labels", *(f"p_{c}" for c in self.classes)]

    def cells(self, p: Prediction) -> list[Any]:
        return [self.sep.join(p.labels or []), *(str(round(v, 6)) for v in p.probs.values())]

    def shown_label(self, p: Prediction) -> str:
        return ", ".join(p.labels or []) or NO_LABEL

    def label_width(self, shown: Sequence[str]) -> int:
        return max(len(self.label_header), *map(len, shown))

    def report(self, logits: torch.Tensor, labels: Sequence[Any], long: dict[str, Any]) -> dict[str, Any]:
        metrics = multilabel_metrics(logits, labels, self.classes, self.thresholds)
        return {"truncated": long["long"], **metrics}

    def describe(self) -> str:
        where = "one threshold for all labels" if self.given else "the run's per-label thresholds"
        return f"multi-label, {where}"


class MultiLabel(Task):
    """Any number of labels per text: a sigmoid per label and binary cross-entropy."""

    key: ClassVar[str] = "multi_label"
    name: ClassVar[str] = "multi-label"
    problem_type: ClassVar[str] = "multi_label_classification"
    f1_key: ClassVar[str] = "micro_f1"
    #: Each sigmoid reads its own logit: no constant may be added to them.
    shift_invariant: ClassVar[bool] = False
    stored_fields: ClassVar[tuple[str, ...]] = ("multi_label", "thresholds")
    required_fields: ClassVar[tuple[str, ...]] = ("thresholds",)
    pipeline_function: ClassVar[str | None] = "sigmoid"
    no_error_report: ClassVar[str | None] = "the error report and the plots are for single-label runs"

    def _encode(self, frame: pd.DataFrame, classes: Sequence[str]) -> list[Any]:
        return label_matrix(frame["label"], classes)

    def label_tensor(self, labels: Sequence[Any]) -> torch.Tensor:
        return torch.as_tensor(list(labels), dtype=torch.float32)

    def read_labelled_file(
        self, file: LabelledFile, info: Mapping[str, Any]
    ) -> tuple[pd.DataFrame, dict[str, int]]:
        """The label column holds lists joined by the run's separator (JSONL: JSON lists too); an
        empty cell is a text with no label."""
        f = file
        table = read_multilabel_table(
            f.path, text_column=f.text_column, label_column=f.label_column, sep=run_label_sep(info),
            fmt=f.fmt,
            encoding=f.encoding,
        )  # fmt: skip
        return table.frame, table.dropped

    def labelled_frames(
        self, file: LabelledFile, info: Mapping[str, Any], dropped: Counter[str], chunk: int
    ) -> Iterator[pd.DataFrame]:
        """The file read ``chunk`` rows at a time, as :meth:`read_labelled_file` reads it whole."""
        f, tally = file, Counter[str]()
        records = iter_multilabel(
            f.path, tally, text_column=f.text_column, label_column=f.label_column, sep=run_label_sep(info),
            fmt=f.fmt, encoding=f.encoding,
        )  # fmt: skip
        while block := list(itertools.islice(records, chunk)):
            yield records_frame(block)
        dropped.update(dropped_rows(tally))

    def loss_weights(self, labels: Sequence[Any], num_classes: int, mode: str) -> torch.Tensor | None:
        return pos_weights(labels, mode)

    def loss(self, logits: torch.Tensor, y: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
        return bce_sum(logits, y, weights)

    def loss_denominator(self, weights: torch.Tensor | None, y: torch.Tensor) -> float:
        return float(len(y))  # pos_weight weighs within a text: the mean stays over texts

    def correct(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return exact_matches(logits, y)

    def metrics(self, logits: Any, labels: Sequence[Any], classes: Sequence[str]) -> dict[str, Any]:
        # Thresholds 0.5 while training; the run's own are chosen after it.
        return multilabel_metrics(logits, labels, classes)

    def history_extra(self, metrics: Mapping[str, Any]) -> dict[str, Any]:
        return {"val_micro_f1": metrics["micro_f1"]}

    def settings_problems(self, *, target: str | None, positive: str | None, monitor: str) -> list[str]:
        if target is not None or positive is not None:
            return [
                "--target and --positive choose a two-class threshold; a multi-label run chooses one "
                "threshold per label on validation by itself: leave them out"
            ]
        return []

    def finish(
        self, logits: dict[str, Any], labels: dict[str, Any], classes: Sequence[str], target: TargetOptions
    ) -> Finished:
        """Per-label thresholds chosen on validation (0.5 for all without one), and the test and
        validation metrics of the kept weights at those thresholds."""
        if "validation" in logits:
            chosen = choose_thresholds(logits["validation"], np.asarray(labels["validation"]), classes)
        else:
            chosen = {name: {"threshold": DEFAULT_THRESHOLD, "chosen": False} for name in classes}
        t = [chosen[name]["threshold"] for name in classes]
        scores = {
            name: multilabel_metrics(logits[name], labels[name], classes, t) if name in logits else None
            for name in ("test", "validation")
        }
        choices = {"multi_label": True, "thresholds": chosen}
        return Finished(scores, None, choices, lines=threshold_lines(chosen))

    def run_fields(self, data_meta: Mapping[str, Any]) -> dict[str, Any]:
        return {"task": self.key}

    def data_fields(self, data_meta: Mapping[str, Any]) -> dict[str, Any]:
        """How evaluate --input reads, and predict writes, label lists."""
        return {"label_sep": data_meta.get("label_sep", DEFAULT_SEP)}

    def summary(self, result: Any) -> dict[str, Any]:
        test = result.test or {}
        return {
            "multi_label": True,
            "test_micro_f1": test.get("micro_f1"),
            "best_val_micro_f1": (result.history.best or {}).get("val_micro_f1"),
            "thresholds": result.choices.get("thresholds"),
        }

    def summary_lines(self, summary: Mapping[str, Any]) -> list[str]:
        if summary.get("test_accuracy") is None:
            return []
        return [
            f"test: micro-F1 {fmt_metric(summary['test_micro_f1'])}, exact-match accuracy "
            f"{fmt_metric(summary['test_accuracy'])} at the per-label thresholds chosen on validation"
        ]

    def decider(
        self, info: Mapping[str, Any], decide: DecisionOptions | None = None, verb: str = "predict"
    ) -> MultiDecider:
        d = decide or DecisionOptions()
        single_label_only(
            positive=d.positive, min_confidence=d.min_confidence, no_calibration=d.no_calibration
        )
        check_threshold(d.threshold)
        return MultiDecider(info, d.threshold)

    def report_tables(self, metrics: Mapping[str, Any]) -> list[ReportTable]:
        source = metrics["source"]
        where = f"{source['split']} split of {source['data']}" if "split" in source else source["input"]
        summary = [["data", where], ["texts", str(metrics["n"])]]
        summary += [[label, fmt_metric(metrics[key])] for label, key in _SUMMARY]
        summary.append(["truncated", str(metrics["truncated"])])
        per = [
            [name, *(fmt_metric(row[k]) for k in ("threshold", "precision", "recall", "f1", "roc_auc")),
             str(row["support"])]
            for name, row in metrics["per_class"].items()
        ]  # fmt: skip
        confusion = [
            [name, str(tp), str(fp), str(fn), str(tn)]
            for name, ((tn, fp), (fn, tp)) in metrics["confusion_matrix"].items()
        ]
        return [
            ReportTable("Evaluation (multi-label)", ["metric", "value"], summary, header=False),
            ReportTable(
                "Per label", ["label", "threshold", "precision", "recall", "F1", "ROC-AUC", "support"], per
            ),
            ReportTable(
                "Per-label confusion (true/false positives and negatives)",
                ["label", "TP", "FP", "FN", "TN"],
                confusion,
            ),
        ]

    def export_fields(self, info: Mapping[str, Any]) -> dict[str, Any]:
        """What joins its labels in files (evaluate --input, predict's CSV)."""
        return {"label_sep": run_label_sep(info)}

    def import_defaults(self, classes: Sequence[str]) -> dict[str, Any]:
        return {
            "multi_label": True,
            "thresholds": {n: {"threshold": DEFAULT_THRESHOLD, "chosen": False} for n in classes},
        }

    def import_data_fields(
        self, custom: Mapping[str, Any], classes: Sequence[str], source: str
    ) -> dict[str, Any]:
        """The folder's ``gptclf.label_sep`` (else ``|``), refused when a label holds it, as
        ``prepare --multi-label`` refuses such labels (a list of them could not be read back)."""
        sep = custom.get("label_sep")
        sep = sep if isinstance(sep, str) and sep else DEFAULT_SEP
        check_separator(classes, sep, hint=f"rename them in {source}'s id2label (and label2id)")
        return {"label_sep": sep}

    def card_lines(self, info: Mapping[str, Any]) -> list[str]:
        thresholds = info.get("thresholds")
        if not isinstance(thresholds, dict):
            return []
        listed = ", ".join(f"`{name}` {r.get('threshold', 0.5):.4g}" for name, r in thresholds.items())
        return [
            f"- multi-label: each label is predicted where its sigmoid probability reaches its threshold "
            f"({listed}; chosen on validation, config.json's `gptclf.thresholds`)"
        ]

    def check_calibrate(self, run: Path) -> None:
        raise BadInputError(
            f"{run} is a multi-label run: calibrate fits softmax runs; its per-label thresholds "
            "were chosen on validation by finetune (evaluate/predict --threshold P sets one for all)"
        )


def threshold_lines(thresholds: Mapping[str, Any]) -> list[str]:
    """One line per label for people: its threshold and the validation F1 it gives."""
    out = []
    for name, record in thresholds.items():
        how = "chosen on validation" if record.get("chosen") else "default (too few validation positives)"
        f1 = (record.get("validation") or {}).get("f1")
        tail = f", validation F1 {f1:.4f}" if f1 is not None else ""
        out.append(f"threshold of {name}: {record['threshold']:.4f} ({how}{tail})")
    return out
