"""Single-label classification: one class per text, a K-way softmax trained with cross-entropy.

After training the temperature is fitted on validation (:mod:`gptclf.tasks.calibration`) and a
``--target`` decision or abstention level chosen on the calibrated probabilities
(:mod:`gptclf.tasks.decisions`); predictions are the argmax, the stored two-class threshold, or an
abstention below ``min_confidence``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from gptclf.data.rows import label_ids
from gptclf.data.tables import load_table
from gptclf.errors import BadInputError, GptclfError
from gptclf.option_groups import DecisionOptions, TargetOptions
from gptclf.progress import fmt_metric
from gptclf.tasks.base import Decider, Finished, LabelledFile, Prediction, ReportTable, Task
from gptclf.tasks.calibration import fit_temperature, run_temperature
from gptclf.tasks.decisions import (
    Decision,
    check_min_confidence,
    check_target,
    choose,
    logits_decision_metrics,
    stored_decision,
    stored_min_confidence,
)
from gptclf.tasks.metrics import ECE_BINS, classification_metrics

#: The table's label of a text the run abstains on.
ABSTAINED = "(abstained)"


def class_weights(labels: Sequence[int], num_classes: int, mode: str) -> torch.Tensor | None:
    """Loss weight per class: None for ``none``; n / (K * count) for ``balanced`` (1 if absent)."""
    if mode == "none":
        return None
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes).astype(np.float64)
    weights = np.where(counts > 0, len(labels) / (num_classes * np.maximum(counts, 1)), 1.0)
    return torch.as_tensor(weights, dtype=torch.float32)


def make_decision(
    classes: Sequence[str],
    threshold: float | None,
    positive: str | None,
    stored: Decision | None = None,
) -> Decision | None:
    """Check ``--threshold`` / ``--positive`` against the run's classes.

    Args:
        classes: The run's class names.
        threshold: Probability in [0, 1], or None for the plain argmax.
        positive: Name of the positive class; required with ``threshold``.
        stored: The rule the run stores (:func:`gptclf.tasks.decisions.stored_decision`), used when
            neither option is given; the options replace it.

    Returns:
        The rule, or ``stored`` when neither option is given (None: predict the most probable class).

    Raises:
        BadInputError: Only one of the two options, a threshold outside [0, 1], a run with more than
            two classes, or a class the run does not have.
    """
    if threshold is None and positive is None:
        return stored
    problems = []
    if threshold is None:
        problems.append("--positive needs --threshold P")
    elif not 0.0 <= threshold <= 1.0:
        problems.append(f"--threshold must be a probability in [0, 1] (got {threshold})")
    if positive is None:
        problems.append(f"--threshold needs --positive CLASS (one of {', '.join(classes)})")
    elif positive not in classes:
        problems.append(f"--positive {positive!r} is not a class of this run ({', '.join(classes)})")
    if len(classes) != 2:
        problems.append(
            f"--threshold works for two classes only; this run has {len(classes)} ({', '.join(classes)})"
        )
    if problems:
        raise BadInputError("; ".join(problems))
    assert threshold is not None and positive is not None
    pos = list(classes).index(positive)
    return Decision(positive=pos, negative=1 - pos, threshold=float(threshold))


class SingleDecider(Decider):
    """Softmax probabilities (divided by the run's temperature unless ``calibrated`` is False), the
    argmax or the threshold rule, and abstention below ``min_confidence``.

    Attributes:
        decision: The two-class threshold rule, or None for the argmax.
        min_confidence: Abstain below this top calibrated probability; None never abstains.
        calibrated: Whether the shown probabilities are divided by the stored temperature.
        temperature: What the shown probabilities' logits are divided by.
        decision_temperature: The stored temperature: labels are always decided on calibrated
            probabilities (thresholds are chosen on those), so ``--no-calibration`` changes no label.
        stores_calibration: Whether the run stores a temperature at all.
    """

    def __init__(
        self,
        info: Mapping[str, Any],
        decision: Decision | None,
        min_confidence: float | None,
        calibrated: bool,
    ) -> None:
        self.classes = list(info["classes"])
        self.decision = decision
        self.min_confidence = min_confidence
        self.calibrated = calibrated
        self.decision_temperature = run_temperature(info)
        self.temperature = self.decision_temperature if calibrated else 1.0
        self.stores_calibration = "calibration" in info

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """(N, K) class probabilities: ``softmax(logits / temperature)``."""
        return torch.softmax(logits / self.temperature, dim=1)

    def labels(self, probs: torch.Tensor) -> list[str | None]:
        """Predicted class of each row of (N, K) calibrated probabilities: the argmax, or the
        threshold rule; None where the top probability is below ``min_confidence``."""
        if self.decision is None:
            idx = probs.argmax(dim=1)
        else:
            d = self.decision
            idx = torch.where(probs[:, d.positive] >= d.threshold, d.positive, d.negative)
        names: list[str | None] = [self.classes[i] for i in idx.tolist()]
        if self.min_confidence is not None:
            unsure = (probs.max(dim=1).values < self.min_confidence).tolist()
            names = [None if out else name for name, out in zip(names, unsure, strict=True)]
        return names

    def predictions(
        self, start: int, ids: Sequence[Any], texts: Sequence[str], logits: torch.Tensor
    ) -> list[Prediction]:
        labels = self.labels(torch.softmax(logits / self.decision_temperature, dim=1))
        rows = zip(ids, texts, labels, self.probabilities(logits).tolist(), strict=True)
        return [
            Prediction(
                start + i, text, label, dict(zip(self.classes, row, strict=True)), ident, label is None
            )
            for i, (ident, text, label, row) in enumerate(rows)
        ]

    @property
    def abstains(self) -> bool:
        """Whether records carry ``abstained`` (the run abstains at all)."""
        return self.min_confidence is not None

    def record(self, p: Prediction) -> dict[str, Any]:
        probs = {c: round(v, 6) for c, v in p.probs.items()}
        record: dict[str, Any] = {"id": p.id, "text": p.text, "label": p.label, "probs": probs}
        if self.abstains:
            record["abstained"] = p.abstained
        return record

    def columns(self) -> list[str]:
        return ["label", *(f"p_{c}" for c in self.classes), *(["abstained"] if self.abstains else [])]

    def cells(self, p: Prediction) -> list[Any]:
        abstained = [("true" if p.abstained else "false")] if self.abstains else []
        return [p.label or "", *(round(v, 6) for v in p.probs.values()), *abstained]

    def shown_label(self, p: Prediction) -> str:
        return p.label or ABSTAINED

    def label_width(self, shown: Sequence[str]) -> int:
        return max(5, len(ABSTAINED), *map(len, self.classes))

    def report(self, logits: torch.Tensor, labels: Sequence[Any], long: dict[str, Any]) -> dict[str, Any]:
        # The metrics are those of the probabilities predict prints: softmax(logits / T). Dividing by
        # T > 0 keeps every argmax and ranking, so only the probability metrics (loss, ...) move.
        # PR-AUC is reported for the decision's positive class where there is one (as the pictures show).
        positive = self.decision.positive if self.decision is not None else 1
        metrics = classification_metrics(
            logits, labels, self.classes, positive=positive, temperature=self.temperature
        )
        out: dict[str, Any] = {}
        if self.stores_calibration:  # a run without one has only raw probabilities
            out["calibration"] = {"applied": self.calibrated, "temperature": self.decision_temperature}
        # The decision rules read calibrated probabilities, whatever the metrics above are of.
        rules = logits_decision_metrics(
            logits, labels, self.classes, self.decision, self.min_confidence, self.decision_temperature
        )
        cut = 0 if long["mode"] == "window" else long["long"]
        return {**out, "truncated": cut, "long_texts": long, **metrics, **rules}

    def describe(self) -> str:
        if not self.stores_calibration:
            return "raw probabilities (the run stores no calibration)"
        if not self.calibrated:
            return "raw probabilities (--no-calibration)"
        return f"calibrated probabilities (temperature {self.temperature:.4g})"

    def error_report_probabilities(self, logits: torch.Tensor) -> torch.Tensor | None:
        return self.probabilities(logits)


class SingleLabel(Task):
    """One class per text: softmax and cross-entropy."""

    key: ClassVar[str] = "single_label"
    name: ClassVar[str] = "single-label"
    problem_type: ClassVar[str] = "single_label_classification"
    f1_key: ClassVar[str] = "macro_f1"
    #: Adding one number to every logit changes no softmax probability.
    shift_invariant: ClassVar[bool] = True
    stored_fields: ClassVar[tuple[str, ...]] = ("decision", "abstain")

    def _encode(self, frame: pd.DataFrame, classes: Sequence[str]) -> list[Any]:
        return label_ids(frame, classes)

    def label_tensor(self, labels: Sequence[Any]) -> torch.Tensor:
        return torch.as_tensor(list(labels), dtype=torch.long)

    def read_labelled_file(
        self, file: LabelledFile, info: Mapping[str, Any]
    ) -> tuple[pd.DataFrame, dict[str, int]]:
        f = file
        table = load_table(
            f.path, text_column=f.text_column, label_column=f.label_column, fmt=f.fmt, encoding=f.encoding
        )
        return table.frame, table.dropped

    def loss_weights(self, labels: Sequence[Any], num_classes: int, mode: str) -> torch.Tensor | None:
        return class_weights(labels, num_classes, mode)

    def loss(self, logits: torch.Tensor, y: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
        return F.cross_entropy(logits.float(), y, weight=weights, reduction="sum")

    def loss_denominator(self, weights: torch.Tensor | None, y: torch.Tensor) -> float:
        # With class weights, PyTorch's weighted mean divides by the texts' weights.
        return float(weights[y].sum()) if weights is not None else float(len(y))

    def correct(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (logits.argmax(dim=1) == y).sum()

    def metrics(self, logits: Any, labels: Sequence[Any], classes: Sequence[str]) -> dict[str, Any]:
        return classification_metrics(logits, labels, classes)

    def settings_problems(self, *, target: str | None, positive: str | None, monitor: str) -> list[str]:
        if monitor == "val_micro_f1":
            return ["--monitor val_micro_f1 is for multi-label data (prepare --multi-label): use val_f1"]
        return []

    def finish(
        self, logits: dict[str, Any], labels: dict[str, Any], classes: Sequence[str], target: TargetOptions
    ) -> Finished:
        """Fit the temperature on validation (every rank has all the logits, so every rank fits the
        same T), score the calibrated probabilities, and choose what ``--target`` asks for."""
        lines: list[str] = []
        calibration = None
        if "validation" in logits:
            calibration = fit_temperature(logits["validation"], labels["validation"], {"split": "validation"})
            c = calibration
            lines.append(
                f"calibration: temperature {c.temperature:.4g}; validation NLL {c.val_nll_before:.4f} -> "
                f"{c.val_nll_after:.4f}, ECE {c.val_ece_before:.4f} -> {c.val_ece_after:.4f}"
            )
            if c.note:  # why T = 1 was kept, or that the fit reached a bound (also in run.json)
                lines.append(f"calibration: {c.note}")
        t = calibration.temperature if calibration else 1.0
        scores = {
            name: classification_metrics(logits[name] / t, labels[name], classes) if name in logits else None
            for name in ("test", "validation")
        }
        finished = Finished(scores, calibration, lines=lines)
        chosen = check_target(target.target, target.positive, classes)
        if chosen is None or "validation" not in logits:
            return finished
        try:
            finished.choices = choose(
                logits["validation"], labels["validation"], t, classes, chosen, target.positive
            )
        except GptclfError as exc:  # unreachable, or no text of the positive class
            lines.append(f"warning: {exc}; no decision stored")
            finished.unmet = str(exc)
            return finished
        for key, record in finished.choices.items():
            shown = {k: round(v, 4) for k, v in record["validation"].items()}
            level = record.get("threshold", record.get("min_confidence"))
            lines.append(f"{key} for --target {chosen}: {level:.4f}; validation {shown}")
            if "note" in record:  # the target is met by labelling every text positive
                lines.append(f"{key}: {record['note']}")
        return finished

    def run_fields(self, data_meta: Mapping[str, Any]) -> dict[str, Any]:
        return {"task": self.key}

    def decider(
        self, info: Mapping[str, Any], decide: DecisionOptions | None = None, verb: str = "predict"
    ) -> SingleDecider:
        """The stored rules are the defaults; the options replace them (evaluate judges the stored ones)."""
        d = decide or DecisionOptions()
        threshold, positive, min_confidence = d.threshold, d.positive, d.min_confidence
        if verb == "evaluate" and threshold is not None:
            raise BadInputError(
                "--threshold on evaluate is for multi-label runs; a two-class run's threshold is chosen "
                "by `gptclf calibrate --target` or `finetune --target`"
            )
        decision = make_decision(info["classes"], threshold, positive, stored_decision(info))
        check_min_confidence(min_confidence)
        level = min_confidence if min_confidence is not None else stored_min_confidence(info)
        return SingleDecider(info, decision, level, not d.no_calibration)

    def report_tables(self, metrics: Mapping[str, Any]) -> list[ReportTable]:
        return [*_metric_tables(metrics), *_decision_tables(metrics)]


def _source_text(m: Mapping[str, Any]) -> str:
    source = m["source"]
    return f"{source['split']} split of {source['data']}" if "split" in source else source["input"]


def _summary_rows(m: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(label, key) of the summary's metrics: decisions, then probabilities, then ranking (two classes)."""
    rows = [
        ("accuracy", "accuracy"),
        ("balanced accuracy", "balanced_accuracy"),
        ("macro F1", "macro_f1"),
        ("weighted F1", "weighted_f1"),
        ("MCC", "mcc"),
        ("loss (NLL)", "loss"),
        ("Brier score", "brier"),
        (f"ECE ({ECE_BINS} bins)", "ece"),
    ]
    if len(m["classes"]) == 2:
        positive = m.get("pr_auc_positive")
        rows += [("ROC-AUC", "roc_auc"), (f"PR-AUC ({positive})" if positive else "PR-AUC", "pr_auc")]
    return rows


def _metric_tables(m: Mapping[str, Any]) -> list[ReportTable]:
    """Summary, per-class and confusion-matrix tables."""
    summary = [["data", _source_text(m)], ["texts", str(m["n"])]]
    # Metrics of an older gptclf may lack the newer keys.
    summary += [[label, fmt_metric(m[key])] for label, key in _summary_rows(m) if key in m]
    summary.append(["truncated", str(m["truncated"])])
    per_class = [
        [name, *(fmt_metric(row[k]) for k in ("precision", "recall", "f1")), str(row["support"])]
        for name, row in m["per_class"].items()
    ]
    matrix = [
        [name, *(str(c) for c in counts)]
        for name, counts in zip(m["classes"], m["confusion_matrix"], strict=True)
    ]
    return [
        ReportTable("Evaluation", ["metric", "value"], summary, header=False),
        ReportTable("Per class", ["class", "precision", "recall", "F1", "support"], per_class),
        ReportTable(
            "Confusion matrix (rows: true class, columns: predicted)",
            ["true \\ predicted", *m["classes"]],
            matrix,
        ),
    ]


def _decision_tables(m: Mapping[str, Any]) -> list[ReportTable]:
    """The stored threshold's metrics, the abstention's and the risk-coverage table."""
    out = []
    if "at_threshold" in m:
        t = m["at_threshold"]
        out.append(
            ReportTable(
                f"At the stored threshold: {t['positive']} when p >= {t['threshold']:.4f}",
                ["precision", "recall", "F1", "accuracy"],
                [[fmt_metric(t[k]) for k in ("precision", "recall", "f1", "accuracy")]],
                left=0,
            )
        )
    if "abstention" in m:
        a = m["abstention"]
        out.append(
            ReportTable(
                f"Abstention below confidence {a['min_confidence']:.4f}",
                ["coverage", "accuracy (covered)", "covered texts"],
                [[fmt_metric(a["coverage"]), fmt_metric(a["accuracy"]), str(a["n_covered"])]],
                left=0,
            )
        )
    if m.get("risk_coverage"):
        rows = [
            [f"{row['min_confidence']:g}", fmt_metric(row["coverage"]), fmt_metric(row["accuracy"])]
            for row in m["risk_coverage"]
        ]
        out.append(
            ReportTable(
                "Risk-coverage (texts whose top probability is >= the confidence)",
                ["confidence", "coverage", "accuracy (covered)"],
                rows,
                left=0,
            )
        )
    return out
