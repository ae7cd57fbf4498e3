"""Decisions chosen on validation: a two-class threshold, and abstention for any number of classes.

Both work on calibrated probabilities (``softmax(logits / T)``, :mod:`gptclf.tasks.calibration`), so a
threshold means what it says. ``--target`` names what to choose (:func:`parse_target`, the one
parser of it):

- ``f1``: the threshold on the positive class's probability that maximises F1;
- ``precision=P``: among the thresholds whose precision reaches P, one of the highest recall, and of
  those the HIGHEST threshold (the fewest false positives for that recall);
- ``recall=R``: among the thresholds whose recall reaches R, one of the highest precision, and of
  those the LOWEST threshold (the most recall for that precision);
- ``coverage=C``: the ``min_confidence`` (top probability) that keeps at least C of the texts.

Every search looks only at the distinct probabilities of the validation texts: between two of
them every threshold gives the same predictions. The value stored is the midpoint between the
chosen probability and the next lower one, so the float noise of another batching (a probability
recomputed as 0.70000001 instead of 0.7) cannot flip a validation text to the other side.

A precision target is not a licence to admit false positives: on texts the model separates
perfectly every threshold in the gap between the classes has precision 1 and recall 1, and the
rule picks the highest of them (the gap's top), never one far below it that lets negatives in
until precision falls to P.

run.json keys (:func:`decision_record`, :func:`abstain_record`): ``decision`` = ``{positive,
threshold, target, validation: {precision, recall, f1, n}}``, with ``note`` (one line for people)
only when the threshold labels every text positive; ``abstain`` = ``{min_confidence, target,
validation: {coverage, accuracy, n}}``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from gptclf.errors import BadInputError, GateError
from gptclf.tasks.metrics import METRIC_CHUNK, softmax

#: What ``--target`` may name; all but ``f1`` take ``=VALUE`` in (0, 1].
THRESHOLD_KINDS = ("f1", "precision", "recall")
TARGET_KINDS = (*THRESHOLD_KINDS, "coverage")
#: The confidence levels of evaluate's risk-coverage table.
RISK_LEVELS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)
_SPELLING = "f1, precision=P, recall=R or coverage=C (P, R, C in (0, 1])"


@dataclass(frozen=True)
class Target:
    """A parsed ``--target``.

    Attributes:
        kind: One of :data:`TARGET_KINDS`.
        value: The level in (0, 1]; None for ``f1``.
    """

    kind: str
    value: float | None = None

    def __str__(self) -> str:
        return self.kind if self.value is None else f"{self.kind}={self.value:g}"

    @property
    def is_threshold(self) -> bool:
        """Whether this target chooses a two-class threshold (else abstention)."""
        return self.kind in THRESHOLD_KINDS


@dataclass(frozen=True)
class Decision:
    """Two-class decision rule: ``positive`` when its probability is at least ``threshold``.

    Attributes:
        positive: Index of the positive class.
        negative: Index of the other class.
        threshold: Probability of the positive class from which it is predicted.
    """

    positive: int
    negative: int
    threshold: float


def parse_target(text: str) -> Target:
    """Read ``--target``: ``f1``, ``precision=0.99``, ``recall=0.95`` or ``coverage=0.9``.

    Raises:
        BadInputError: Another name, a missing or extra value, or a value outside (0, 1].
    """
    kind, sep, raw = text.strip().partition("=")
    kind = kind.strip().lower()
    if kind not in TARGET_KINDS:
        raise BadInputError(f"--target {text!r} is not a target: use {_SPELLING}")
    if kind == "f1":
        if sep:
            raise BadInputError(f"--target f1 takes no value (got {text!r}): write --target f1")
        return Target("f1")
    try:
        value = float(raw)
    except ValueError:
        raise BadInputError(f"--target {text!r} needs a number: write e.g. --target {kind}=0.9") from None
    if not (math.isfinite(value) and 0.0 < value <= 1.0):
        raise BadInputError(f"--target {text!r}: {kind} must be in (0, 1] (got {raw.strip()})")
    return Target(kind, value)


def check_target(target: str | None, positive: str | None, classes: Sequence[str]) -> Target | None:
    """``--target`` and ``--positive`` checked together against a run's classes.

    Returns:
        The parsed target, or None when neither is given.

    Raises:
        BadInputError: A bad target; a threshold target without ``--positive``, with more than two
            classes, or naming a class the run does not have; ``--positive`` without a threshold
            target. Every problem in one line.
    """
    if target is None and positive is None:
        return None
    names = ", ".join(classes)
    if target is None:
        raise BadInputError(f"--positive needs --target f1, precision=P or recall=R ({positive!r} given)")
    parsed = parse_target(target)
    problems = []
    if parsed.is_threshold:
        if len(classes) != 2:
            problems.append(
                f"--target {parsed} chooses a two-class threshold; this run has {len(classes)} "
                f"classes ({names}): use --target coverage=C for abstention"
            )
        if positive is None:
            problems.append(f"--target {parsed} needs --positive CLASS (one of {names})")
    elif positive is not None:
        problems.append(f"--positive does not apply to --target {parsed} (abstention uses no positive class)")
    if positive is not None and positive not in classes:
        problems.append(f"--positive {positive!r} is not a class of this run ({names})")
    if problems:
        raise BadInputError("; ".join(problems))
    return parsed


def check_min_confidence(value: float | None) -> float | None:
    """``--min-confidence`` (None: not given) checked to be in (0, 1].

    Raises:
        BadInputError: Outside (0, 1] or not finite.
    """
    if value is not None and not (math.isfinite(value) and 0.0 < value <= 1.0):
        raise BadInputError(f"--min-confidence must be a probability in (0, 1] (got {value:g})")
    return value


def _cut_points(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct scores, highest first, and the threshold stored for each: the midpoint to the
    next lower distinct score (half the lowest for the lowest), which splits the texts alike."""
    distinct = np.unique(scores)[::-1]
    lower = np.append(distinct[1:], 0.0)
    return distinct, (distinct + lower) / 2.0


def threshold_counts(p_positive: np.ndarray, is_positive: np.ndarray, threshold: float) -> dict[str, float]:
    """Precision, recall, F1 and accuracy of "positive when p >= threshold" (0 where undefined).

    Args:
        p_positive: (N,) probability of the positive class.
        is_positive: (N,) whether each text truly is of the positive class.
        threshold: The rule's threshold.
    """
    predicted = np.asarray(p_positive) >= threshold
    truth = np.asarray(is_positive, dtype=bool)
    tp = int((predicted & truth).sum())
    fp = int((predicted & ~truth).sum())
    fn = int((~predicted & truth).sum())
    return _threshold_scores(tp, fp, fn, int((predicted == truth).sum()), len(truth))


def _threshold_scores(tp: int, fp: int, fn: int, agree: int, n: int) -> dict[str, float]:
    """Precision, recall, F1 and accuracy from the counts of a threshold rule (0 where undefined)."""
    return {
        "precision": tp / (tp + fp) if tp + fp else 0.0,
        "recall": tp / (tp + fn) if tp + fn else 0.0,
        "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0,
        "accuracy": agree / n if n else 0.0,
    }


def choose_threshold(p_positive: np.ndarray, is_positive: np.ndarray, target: Target) -> float:
    """The threshold ``target`` asks for on labelled texts (see the module docstring).

    Raises:
        BadInputError: The texts hold no text of the positive class.
        GateError: No threshold reaches a precision or recall target; the message names the best
            value reached.
    """
    p = np.asarray(p_positive, dtype=np.float64)
    y = np.asarray(is_positive, dtype=bool)
    if not y.any():
        raise BadInputError(
            "the labelled texts hold no text of the positive class: no threshold can be chosen"
        )
    distinct, cuts = _cut_points(p)
    # Cumulative counts with the distinct scores highest first: row i predicts p >= distinct[i].
    order = np.argsort(-p, kind="stable")
    tp_all, fp_all = np.cumsum(y[order]), np.cumsum(~y[order])
    last = np.searchsorted(-p[order], -distinct, side="right") - 1  # last text with p >= distinct[i]
    tp, fp = tp_all[last], fp_all[last]
    precision, recall = tp / (tp + fp), tp / y.sum()
    if target.kind == "f1":
        f1 = 2 * tp / (tp + fp + y.sum())
        return float(cuts[int(np.argmax(f1))])  # the highest threshold among equal F1s
    values, other = (precision, recall) if target.kind == "precision" else (recall, precision)
    ok = np.flatnonzero(values >= target.value - 1e-12)
    if not len(ok):
        raise GateError(
            f"--target {target} cannot be reached on these texts: the best {target.kind} is "
            f"{values.max():.4f}; choose a lower target"
        )
    # Of the thresholds that reach the target, those that give the most of the other measure (equal
    # fractions are equal floats: division is correctly rounded) ...
    best = ok[other[ok] == other[ok].max()]
    # ... and of those, for precision the highest threshold (first in highest-first order: the same
    # recall with the fewest false positives), for recall the lowest (the same precision, most recall).
    return float(cuts[best[0]] if target.kind == "precision" else cuts[best[-1]])


def choose_min_confidence(confidence: np.ndarray, coverage: float) -> float:
    """The highest ``min_confidence`` that keeps at least ``coverage`` of the texts.

    Args:
        confidence: (N,) top probability of each text (N >= 1).
        coverage: The share of texts to keep, in (0, 1].
    """
    c = np.asarray(confidence, dtype=np.float64)
    distinct, cuts = _cut_points(c)
    needed = math.ceil(coverage * len(c) - 1e-9)
    ascending = np.sort(-c)  # -c ascending: texts with c >= d are those with -c <= -d
    kept = np.searchsorted(ascending, -distinct, side="right")
    return float(cuts[int(np.flatnonzero(kept >= needed)[0])])


def coverage_counts(probs: np.ndarray, labels: np.ndarray, min_confidence: float) -> dict[str, Any]:
    """Coverage (share of texts whose top probability is >= ``min_confidence``) and the accuracy
    of the argmax on those texts (None where none is covered: no accuracy), with ``n_covered``."""
    probs = np.asarray(probs, dtype=np.float64)
    covered = probs.max(axis=1) >= min_confidence
    right = probs.argmax(axis=1) == np.asarray(labels)
    n = int(covered.sum())
    return {
        "coverage": n / len(probs) if len(probs) else 0.0,
        "accuracy": float(right[covered].mean()) if n else None,
        "n_covered": n,
    }


def decision_record(
    probs: np.ndarray, labels: np.ndarray, classes: Sequence[str], positive: str, target: Target
) -> dict[str, Any]:
    """Choose the threshold for ``target`` on labelled (N, 2) probabilities: run.json's ``decision``
    (with a ``note`` when the threshold labels every text positive).

    Raises:
        BadInputError, GateError: As :func:`choose_threshold`.
    """
    pos = list(classes).index(positive)
    p, y = np.asarray(probs)[:, pos], np.asarray(labels) == pos
    threshold = choose_threshold(p, y, target)
    counts = threshold_counts(p, y, threshold)
    validation = {k: counts[k] for k in ("precision", "recall", "f1")}
    record = {"positive": positive, "threshold": threshold, "target": str(target),
              "validation": {**validation, "n": len(y)}}  # fmt: skip
    if bool((p >= threshold).all()):  # the rule then says nothing about the texts: tell people
        record["note"] = (
            f"--target {target} is met by labelling every one of the {len(y)} texts {positive!r}: "
            "the threshold does not tell the classes apart"
        )
    return record


def abstain_record(probs: np.ndarray, labels: np.ndarray, target: Target) -> dict[str, Any]:
    """Choose ``min_confidence`` for a coverage ``target`` on labelled (N, K) probabilities:
    run.json's ``abstain``."""
    assert target.kind == "coverage" and target.value is not None
    probs = np.asarray(probs, dtype=np.float64)
    level = choose_min_confidence(probs.max(axis=1), target.value)
    counts = coverage_counts(probs, labels, level)
    validation = {"coverage": counts["coverage"], "accuracy": counts["accuracy"], "n": len(probs)}
    return {"min_confidence": level, "target": str(target), "validation": validation}


def choose(
    logits: np.ndarray | Any,
    labels: Sequence[int] | np.ndarray,
    temperature: float,
    classes: Sequence[str],
    target: Target,
    positive: str | None,
) -> dict[str, Any]:
    """Choose what ``target`` asks for on labelled texts' calibrated probabilities.

    Args:
        logits: (N, K) raw logits (numpy, or a CPU torch tensor).
        labels: (N,) true class indices.
        temperature: The run's temperature: the probabilities are ``softmax(logits / T)``.
        classes: The run's classes.
        target: From :func:`check_target`.
        positive: The positive class of a threshold target.

    Returns:
        The run.json change: ``{"decision": ...}`` or ``{"abstain": ...}``.

    Raises:
        BadInputError, GateError: As :func:`choose_threshold`.
    """
    probs = softmax(np.asarray(logits, dtype=np.float64) / temperature)
    y = np.asarray(labels)
    if target.is_threshold:
        assert positive is not None
        return {"decision": decision_record(probs, y, classes, positive, target)}
    return {"abstain": abstain_record(probs, y, target)}


def stored_decision(info: Mapping[str, Any]) -> Decision | None:
    """The threshold rule a run.json stores (None for a run without ``decision``)."""
    record = info.get("decision")
    if not isinstance(record, dict):
        return None
    pos = list(info["classes"]).index(record["positive"])
    return Decision(positive=pos, negative=1 - pos, threshold=float(record["threshold"]))


def stored_min_confidence(info: Mapping[str, Any]) -> float | None:
    """The ``min_confidence`` a run.json stores (None for a run without ``abstain``)."""
    record = info.get("abstain")
    return float(record["min_confidence"]) if isinstance(record, dict) else None


def decision_metrics(
    probs: np.ndarray,
    labels: Sequence[int] | np.ndarray,
    classes: Sequence[str],
    decision: Decision | None,
    min_confidence: float | None,
) -> dict[str, Any]:
    """What evaluate reports about the decision rules, on labelled (N, K) calibrated probabilities.

    Returns:
        ``risk_coverage`` (:func:`coverage_counts` at each of :data:`RISK_LEVELS`), always;
        ``at_threshold`` (``positive``, ``threshold``, ``precision``, ``recall``, ``f1``,
        ``accuracy`` of the positive class under the rule) with a decision; ``abstention``
        (``min_confidence``, ``coverage``, ``accuracy`` on the covered texts, ``n_covered``) with a
        ``min_confidence``.
    """
    tally = DecisionTally(decision, min_confidence)
    tally.add(np.asarray(probs, dtype=np.float64), np.asarray(labels))
    return tally.result(classes)


def logits_decision_metrics(
    logits: torch.Tensor,
    labels: Sequence[int] | np.ndarray,
    classes: Sequence[str],
    decision: Decision | None,
    min_confidence: float | None,
    temperature: float,
) -> dict[str, Any]:
    """:func:`decision_metrics` of ``softmax(logits / temperature)`` in float64, computed
    :data:`~gptclf.tasks.metrics.METRIC_CHUNK` texts at a time: the same numbers, without the
    (N, K) float64 probabilities (every one of them is a count)."""
    tally = DecisionTally(decision, min_confidence)
    y = np.asarray(labels)
    for start in range(0, len(y), METRIC_CHUNK):
        rows = logits[start : start + METRIC_CHUNK].double().numpy()
        rows /= temperature
        tally.add(softmax(rows), y[start : start + METRIC_CHUNK])
    return tally.result(classes)


class DecisionTally:
    """The counts behind :func:`decision_metrics`, gathered a chunk of texts at a time."""

    def __init__(self, decision: Decision | None, min_confidence: float | None) -> None:
        self.decision, self.min_confidence = decision, min_confidence
        self.levels = [*RISK_LEVELS, *([min_confidence] if min_confidence is not None else [])]
        self.covered = [0] * len(self.levels)
        self.right = [0] * len(self.levels)  # covered texts whose top class is their label
        self.n = 0
        self.threshold = [0, 0, 0, 0]  # true positives, false positives, false negatives, agreements

    def add(self, probs: np.ndarray, y: np.ndarray) -> None:
        """Count (n, K) float64 probabilities of texts labelled ``y``."""
        self.n += len(y)
        top, right = probs.max(axis=1), probs.argmax(axis=1) == y
        for i, level in enumerate(self.levels):
            covered = top >= level
            self.covered[i] += int(covered.sum())
            self.right[i] += int(right[covered].sum())
        if self.decision is not None:
            predicted = probs[:, self.decision.positive] >= self.decision.threshold
            truth = y == self.decision.positive
            counts = [predicted & truth, predicted & ~truth, ~predicted & truth, predicted == truth]
            self.threshold = [old + int(c.sum()) for old, c in zip(self.threshold, counts, strict=True)]

    def _coverage(self, i: int) -> dict[str, Any]:
        n = self.covered[i]
        # The accuracy of the covered texts: a count over a count, as the mean of their 0/1 rights.
        return {"coverage": n / self.n if self.n else 0.0, "accuracy": self.right[i] / n if n else None,
                "n_covered": n}  # fmt: skip

    def result(self, classes: Sequence[str]) -> dict[str, Any]:
        """The report of :func:`decision_metrics`."""
        rows = [{"min_confidence": level, **self._coverage(i)} for i, level in enumerate(RISK_LEVELS)]
        out: dict[str, Any] = {"risk_coverage": rows}
        if self.decision is not None:
            counts = _threshold_scores(*self.threshold, self.n)
            rule = {"positive": classes[self.decision.positive], "threshold": self.decision.threshold}
            out["at_threshold"] = {**rule, **counts}
        if self.min_confidence is not None:
            out["abstention"] = {"min_confidence": self.min_confidence, **self._coverage(len(RISK_LEVELS))}
        return out
