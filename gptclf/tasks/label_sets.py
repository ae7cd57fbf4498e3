"""The mathematics of label sets (multi-label runs): the loss, its per-label positive weights, the
per-label thresholds chosen on validation, and the metrics, with scikit-learn's definitions.

K sigmoid outputs, one per label, trained with ``binary_cross_entropy_with_logits``: the loss of
a text is the mean over its K labels, so the summed loss of a batch divided by its texts is
PyTorch's ``reduction="mean"``. With ``--class-weights balanced`` each label's positives weigh
``negatives / positives`` of the training split (``pos_weight``; 1 where a label has no positive).

For the metrics each label is a yes/no decision: its sigmoid probability at or above the label's threshold.
Reported: micro, macro, weighted and samples F1 (and micro precision and recall), subset accuracy
(exact match of the whole label set; also under ``accuracy``, so the gates and summaries of
single-label runs read it), Hamming loss (the share of wrong label decisions), the mean binary
cross-entropy (``loss``), and per label: precision, recall, F1, support, ROC-AUC and its confusion
counts (``confusion_matrix``: per label ``[[tn, fp], [fn, tp]]``, scikit-learn's
``multilabel_confusion_matrix``). An undefined ratio (no predicted or no true positive) is 0, as
scikit-learn's ``zero_division=0`` has it; an undefined ROC-AUC (one class only) is null.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from gptclf.tasks.decisions import Target, choose_threshold, threshold_counts
from gptclf.tasks.metrics import roc_auc


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """Element-wise logistic function, stable for large logits."""
    x = np.asarray(logits, dtype=np.float64)
    return np.exp(-np.logaddexp(0.0, -x))


def bce(logits: np.ndarray, truth: np.ndarray) -> float:
    """Mean binary cross-entropy of (N, K) logits against 0/1 truth (what training minimises)."""
    x = np.asarray(logits, dtype=np.float64)
    y = np.asarray(truth, dtype=np.float64)
    if not x.size:
        return 0.0
    return float(np.mean(np.logaddexp(0.0, x) - x * y))


def _ratio(a: np.ndarray | float, b: np.ndarray | float) -> Any:
    """a / b, 0 where b is 0."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return np.divide(a, b, out=np.zeros_like(b), where=b != 0)


def decide(probs: np.ndarray, thresholds: Sequence[float] | np.ndarray) -> np.ndarray:
    """(N, K) bool: each label's probability at or above its threshold."""
    return np.asarray(probs) >= np.asarray(thresholds, dtype=np.float64)[None, :]


def _per_label(
    classes: Sequence[str],
    tp: np.ndarray,
    fp: np.ndarray,
    support: np.ndarray,
    probs: np.ndarray,
    y: np.ndarray,
    t: np.ndarray,
) -> dict[str, dict[str, Any]]:
    """Each label's precision, recall, F1, support, ROC-AUC and threshold."""
    f1 = _ratio(2 * tp, tp + fp + support)
    return {
        name: {
            "precision": float(_ratio(tp[i], tp[i] + fp[i])),
            "recall": float(_ratio(tp[i], support[i])),
            "f1": float(f1[i]),
            "support": int(support[i]),
            "roc_auc": roc_auc(probs[:, i], y[:, i]) if len(y) else None,
            "threshold": float(t[i]),
        }
        for i, name in enumerate(classes)
    }


def multilabel_metrics(
    logits: np.ndarray | torch.Tensor,
    truth: Sequence[Sequence[int]] | np.ndarray,
    classes: Sequence[str],
    thresholds: Sequence[float] | np.ndarray | None = None,
) -> dict[str, Any]:
    """Every multi-label metric of (N, K) logits against (N, K) 0/1 truth.

    Args:
        logits: Raw outputs; probabilities are their sigmoid.
        truth: Each text's labels as a 0/1 row, columns in class order.
        classes: The label names.
        thresholds: Per-label thresholds on the probabilities; default 0.5 for every label.

    Returns:
        A JSON-ready dict (see the module docstring), with ``multi_label: true``.
    """
    x = logits.double().numpy() if isinstance(logits, torch.Tensor) else np.asarray(logits, np.float64)
    k = len(classes)
    x = x.reshape(-1, k)
    y = np.asarray(truth, dtype=bool).reshape(-1, k)
    t = np.full(k, 0.5) if thresholds is None else np.asarray(thresholds, dtype=np.float64)
    probs = sigmoid(x)
    pred = decide(probs, t)
    tp = (pred & y).sum(axis=0)
    fp = (pred & ~y).sum(axis=0)
    fn = (~pred & y).sum(axis=0)
    tn = (~pred & ~y).sum(axis=0)
    support = y.sum(axis=0)
    f1 = _ratio(2 * tp, 2 * tp + fp + fn)
    per_label = _per_label(classes, tp, fp, support, probs, y, t)
    n = len(y)
    row_tp, row_fp, row_fn = (pred & y).sum(1), (pred & ~y).sum(1), (~pred & y).sum(1)
    aucs = [v["roc_auc"] for v in per_label.values() if v["roc_auc"] is not None]
    return {
        "n": n,
        "classes": list(classes),
        "multi_label": True,
        "accuracy": float((pred == y).all(axis=1).mean()) if n else 0.0,
        "subset_accuracy": float((pred == y).all(axis=1).mean()) if n else 0.0,
        "hamming_loss": float((pred != y).mean()) if n else 0.0,
        "loss": bce(x, y),
        "micro_precision": float(_ratio(tp.sum(), tp.sum() + fp.sum())),
        "micro_recall": float(_ratio(tp.sum(), support.sum())),
        "micro_f1": float(_ratio(2 * tp.sum(), 2 * tp.sum() + fp.sum() + fn.sum())),
        "macro_f1": float(f1.mean()),
        "weighted_f1": float(_ratio((f1 * support).sum(), support.sum())),
        "samples_f1": float(_ratio(2 * row_tp, 2 * row_tp + row_fp + row_fn).mean()) if n else 0.0,
        "macro_roc_auc": float(np.mean(aucs)) if aucs else None,
        "per_class": per_label,
        "confusion_matrix": {
            name: [[int(tn[i]), int(fp[i])], [int(fn[i]), int(tp[i])]] for i, name in enumerate(classes)
        },
        "label_cardinality": {
            "true": float(y.sum(1).mean()) if n else 0.0,
            "predicted": float(pred.sum(1).mean()) if n else 0.0,
        },
    }


#: A label needs this many positive validation texts for a threshold to be chosen on them;
#: below, its threshold stays 0.5 (an F1 of two texts says little).
MIN_POSITIVES = 3
#: The threshold of a label without enough validation positives, and of every label by default.
DEFAULT_THRESHOLD = 0.5


def pos_weights(labels: Sequence[Sequence[int]], mode: str) -> torch.Tensor | None:
    """Per-label positive weight: None for ``none``; negatives / positives for ``balanced``."""
    if mode == "none":
        return None
    y = np.asarray(labels, dtype=np.float64)
    pos = y.sum(axis=0)
    neg = len(y) - pos
    return torch.as_tensor(np.where(pos > 0, neg / np.maximum(pos, 1), 1.0), dtype=torch.float32)


def bce_sum(
    logits: torch.Tensor, target: torch.Tensor, pos_weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Summed over texts of each text's mean binary cross-entropy over its labels (float32)."""
    per = F.binary_cross_entropy_with_logits(logits.float(), target, pos_weight=pos_weight, reduction="none")
    return per.mean(dim=1).sum()


def exact_matches(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Texts whose every label is right at probability 0.5 (logit 0)."""
    return ((logits >= 0) == (target > 0.5)).all(dim=1).sum()


def choose_thresholds(logits: np.ndarray, truth: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    """Each label's threshold that maximises its F1 on validation (0.5 with too few positives).

    Returns:
        run.json's ``thresholds``: label -> ``{threshold, chosen, validation: {precision,
        recall, f1, positives}}`` (``chosen`` false where the default was kept).
    """
    probs = sigmoid(np.asarray(logits, dtype=np.float64).reshape(-1, len(classes)))
    y = np.asarray(truth, dtype=bool).reshape(-1, len(classes))
    out = {}
    for i, name in enumerate(classes):
        positives = int(y[:, i].sum())
        chosen = positives >= MIN_POSITIVES
        t = choose_threshold(probs[:, i], y[:, i], Target("f1")) if chosen else DEFAULT_THRESHOLD
        counts = threshold_counts(probs[:, i], y[:, i], t)
        shown = {k: round(counts[k], 6) for k in ("precision", "recall", "f1")}
        out[name] = {"threshold": float(t), "chosen": chosen, "validation": {**shown, "positives": positives}}
    return out


def stored_thresholds(info: dict[str, Any]) -> list[float]:
    """The per-label thresholds a multi-label run stores (0.5 for a label without one)."""
    stored = info.get("thresholds") or {}
    return [float(stored.get(name, {}).get("threshold", DEFAULT_THRESHOLD)) for name in info["classes"]]
