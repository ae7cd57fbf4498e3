"""Classification metrics from logits: accuracy, loss, per-class P/R/F1, confusion matrix, ROC-AUC."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, stable for large logits."""
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float | None:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties).

    Returns None when only one class is present, where the AUC is undefined.
    """
    pos = positive.astype(bool)
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    i = 0
    while i < len(scores):  # average rank over runs of equal scores
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def classification_metrics(
    logits: np.ndarray | torch.Tensor, labels: Sequence[int] | np.ndarray, classes: Sequence[str]
) -> dict[str, Any]:
    """All metrics of a labelled set, with scikit-learn's definitions.

    Args:
        logits: (N, K) raw class scores.
        labels: (N,) true class indices.
        classes: Class names, index order.

    Returns:
        A JSON-ready dict: ``n``, ``accuracy``, ``loss`` (mean cross-entropy), ``macro_f1`` (the
        mean F1 of the classes that occur in the labels or the predictions), ``per_class`` (every
        class: name -> precision, recall, f1, support), ``confusion_matrix`` (rows: true class,
        columns: predicted class, both in ``classes`` order), and ``roc_auc`` for two classes
        (score: the logit margin of the second class over the first; the AUC is the same for
        either class).
    """
    if isinstance(logits, torch.Tensor):
        logits = logits.detach().float().cpu().numpy()
    logits = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    k = len(classes)
    n = len(y)
    out: dict[str, Any] = {"n": n, "classes": list(classes)}
    if n == 0:
        out.update(accuracy=None, loss=None, macro_f1=None, per_class={}, confusion_matrix=[], roc_auc=None)
        return out
    z = logits - logits.max(axis=1, keepdims=True)
    log_probs = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    pred = logits.argmax(axis=1)
    cm = np.zeros((k, k), dtype=np.int64)
    np.add.at(cm, (y, pred), 1)
    per_class, macro_f1 = _per_class(cm, classes)
    out["accuracy"] = float((pred == y).mean())
    out["loss"] = float(-log_probs[np.arange(n), y].mean())
    out["macro_f1"] = macro_f1
    out["per_class"] = per_class
    out["confusion_matrix"] = cm.tolist()
    # Rank by the margin, not by softmax probabilities: p(second class) = sigmoid(margin) orders
    # texts alike but rounds to exactly 1.0 in float64 beyond a margin of ~37, turning a perfect
    # ranking of confident texts into ties.
    out["roc_auc"] = roc_auc(logits[:, 1] - logits[:, 0], y == 1) if k == 2 else None
    return out


def _per_class(cm: np.ndarray, classes: Sequence[str]) -> tuple[dict[str, dict[str, Any]], float]:
    """Precision, recall, F1 and support of every class, and the macro F1, from a confusion matrix.

    The macro F1 averages only the classes that occur in the labels or the predictions, as
    scikit-learn does: a class of the run that this set neither holds nor was predicted says
    nothing about the model, and counting it as F1 0 would fail a ``--min-f1`` gate on a set
    classified perfectly. Its row is still reported (all zeros).
    """
    per_class = {}
    f1s = []
    for i, name in enumerate(classes):
        tp = int(cm[i, i])
        predicted, support = int(cm[:, i].sum()), int(cm[i, :].sum())
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[name] = {"precision": precision, "recall": recall, "f1": f1, "support": support}
        if predicted or support:
            f1s.append(f1)
    return per_class, float(np.mean(f1s))
