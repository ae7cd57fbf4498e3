"""Classification metrics from logits, with scikit-learn's definitions.

Decision quality (accuracy, per-class precision/recall/F1, macro and weighted F1, balanced accuracy,
MCC, confusion matrix), probability quality (NLL, Brier score, expected calibration error) and, for
two classes, ranking quality (ROC-AUC, average precision). Computed here with numpy: scikit-learn
is only a test dependency, for parity tests.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, stable for large logits."""
    e = logits - logits.max(axis=1, keepdims=True)
    if e.dtype.kind != "f":  # integer logits: np.exp gives float64
        e = e.astype(np.float64)
    np.exp(e, out=e)  # in place: the same values, one (N, K) array fewer at a time
    e /= e.sum(axis=1, keepdims=True)
    return e


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


#: Equal-width confidence bins of the expected calibration error (Guo et al., 2017, use 15).
ECE_BINS = 15


def average_precision(scores: np.ndarray, positive: np.ndarray) -> float | None:
    """Average precision, the area under the precision-recall curve, as scikit-learn computes it.

    ``sum_i (R_i - R_{i-1}) P_i`` over the thresholds at each distinct score, highest first (tied
    scores cross the threshold together): a step function, not the trapezoidal area, which is
    optimistic on precision-recall curves.

    Args:
        scores: (N,) scores, higher meaning more likely positive.
        positive: (N,) true where the text is of the positive class.

    Returns:
        The average precision, or None when no text is positive (recall is undefined; scikit-learn
        returns 0.0 with a warning there).
    """
    pos = positive.astype(bool)
    if not pos.any():
        return None
    order = np.argsort(-scores, kind="mergesort")
    ranked, hits = scores[order], pos[order]
    last = np.r_[np.flatnonzero(np.diff(ranked) != 0), len(ranked) - 1]  # end of each tie run
    tp = np.cumsum(hits)[last]
    precision = tp / (last + 1)
    recall_gain = np.diff(np.r_[0, tp]) / tp[-1]
    return float(np.sum(recall_gain * precision))


def _binned(probs: np.ndarray, labels: np.ndarray, n_bins: int) -> tuple[np.ndarray, ...]:
    """Per bin: edges, text count, summed top-label confidence and summed correctness."""
    pred = probs.argmax(axis=1)
    confidence = probs[np.arange(len(pred)), pred]
    edges = np.arange(n_bins + 1) / n_bins  # b / n_bins correctly rounded: 1/3 is an edge for 15 bins
    which = np.searchsorted(edges[1:-1], confidence, side="left")  # edges[b] < conf <= edges[b + 1]
    counts = np.bincount(which, minlength=n_bins)
    confidence_sum = np.bincount(which, weights=confidence, minlength=n_bins)
    correct_sum = np.bincount(which, weights=(pred == labels).astype(np.float64), minlength=n_bins)
    return edges, counts, confidence_sum, correct_sum


def reliability_bins(
    probs: np.ndarray, labels: np.ndarray, n_bins: int = ECE_BINS
) -> list[dict[str, float | int | None]]:
    """Top-label reliability table: confidence against accuracy in equal-width confidence bins.

    The confidence of a text is the probability of its predicted (argmax) class. Bin ``b`` holds the
    confidences in ``(b/n_bins, (b+1)/n_bins]`` (right-closed, as Guo et al.; a confidence is never 0).

    Args:
        probs: (N, K) class probabilities.
        labels: (N,) true class indices.
        n_bins: Number of bins over [0, 1].

    Returns:
        One dict per bin, low to high: ``lower``, ``upper``, ``n``, ``confidence`` (mean) and
        ``accuracy`` (both None for an empty bin).
    """
    edges, counts, confidence_sum, correct_sum = _binned(probs, labels, n_bins)
    return [
        {
            "lower": float(edges[b]),
            "upper": float(edges[b + 1]),
            "n": int(counts[b]),
            "confidence": float(confidence_sum[b] / counts[b]) if counts[b] else None,
            "accuracy": float(correct_sum[b] / counts[b]) if counts[b] else None,
        }
        for b in range(n_bins)
    ]


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """Top-label ECE: the text-weighted mean gap between accuracy and confidence over the bins.

    Args:
        probs: (N, K) class probabilities, N > 0.
        labels: (N,) true class indices.
        n_bins: Number of equal-width bins (see :func:`reliability_bins`).

    Returns:
        ``sum_b |B_b| / N * |accuracy(B_b) - confidence(B_b)|``, in [0, 1].
    """
    _, _, confidence_sum, correct_sum = _binned(probs, labels, n_bins)
    # |B|/N * |correct/|B| - confidence/|B|| is |correct - confidence|/N: empty bins add 0.
    return float(np.abs(correct_sum - confidence_sum).sum() / len(labels))


def brier_score(probs: np.ndarray, labels: np.ndarray) -> float:
    """Brier score as scikit-learn's ``brier_score_loss`` defines it (default ``scale_by_half="auto"``).

    Two classes: the mean squared error of the probability of the second class against the 0/1
    label, in [0, 1] (half the squared distance below). More classes: the mean over texts of the
    squared Euclidean distance between the probability vector and the one-hot label, in [0, 2].

    Args:
        probs: (N, K) class probabilities, N > 0.
        labels: (N,) true class indices.

    Returns:
        The Brier score (lower is better).
    """
    # probs - one_hot, in one array: p - 0.0 is p, and 1.0 is taken from each text's true class.
    diff = np.array(probs, dtype=np.float64)
    diff[np.arange(len(diff)), labels] -= 1.0
    np.square(diff, out=diff)
    distance = diff.sum(axis=1).mean()
    # For two classes both coordinates err by the same amount, so half the distance is the binary MSE.
    return float(distance / 2 if probs.shape[1] == 2 else distance)


def matthews_corrcoef(cm: np.ndarray) -> float | None:
    """Matthews correlation coefficient of a confusion matrix (scikit-learn's multi-class form).

    Args:
        cm: (K, K) counts, rows true class, columns predicted class.

    Returns:
        The MCC in [-1, 1]; None when the labels hold fewer than two classes (there is nothing to
        correlate with; scikit-learn returns 0.0). Constant predictions on mixed labels give 0.0,
        as in scikit-learn.
    """
    true, predicted = cm.sum(axis=1).astype(np.float64), cm.sum(axis=0).astype(np.float64)
    if np.count_nonzero(true) < 2:
        return None
    n, correct = true.sum(), float(np.trace(cm))
    denominator = np.sqrt((n * n - predicted @ predicted) * (n * n - true @ true))
    return float((correct * n - true @ predicted) / denominator) if denominator else 0.0


def classification_metrics(
    logits: np.ndarray | torch.Tensor,
    labels: Sequence[int] | np.ndarray,
    classes: Sequence[str],
    *,
    positive: int = 1,
) -> dict[str, Any]:
    """All metrics of a labelled set, with scikit-learn's definitions, on the whole set.

    Args:
        logits: (N, K) raw class scores (already divided by a calibration temperature, if any:
            the probability metrics judge the probabilities these logits give).
        labels: (N,) true class indices.
        classes: Class names, index order.
        positive: Two classes: the index of the class whose average precision is reported.

    Returns:
        A JSON-ready dict: ``n``, ``accuracy``, ``loss`` (mean cross-entropy, the NLL), ``macro_f1``
        (the mean F1 of the classes that occur in the labels or the predictions), ``per_class``
        (every class: name -> precision, recall, f1, support), ``confusion_matrix`` (rows: true
        class, columns: predicted class, both in ``classes`` order), and ``roc_auc`` for two classes
        (score: the logit margin of the second class over the first; the AUC is the same for
        either class). Also ``weighted_f1`` (F1 averaged with support weights),
        ``balanced_accuracy`` (mean recall of the classes in the labels), ``mcc`` (see
        :func:`matthews_corrcoef`), ``brier`` (see :func:`brier_score`), ``ece`` (top-label,
        :data:`ECE_BINS` equal-width bins) and, for two classes, ``pr_auc`` (average precision of
        class ``pr_auc_positive``, ranked by its logit margin; None when the set holds none of it).
        Undefined values are None, never NaN, so the dict always dumps as strict JSON.
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
        out.update(dict.fromkeys(("weighted_f1", "balanced_accuracy", "mcc", "brier", "ece", "pr_auc")))
        out["pr_auc_positive"] = classes[positive] if k == 2 else None
        return out
    z = logits - logits.max(axis=1, keepdims=True)
    log_probs = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    del z  # the (N, K) arrays alive at once bound evaluate's memory on a large set
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
    out.update(_agreement(cm, per_class))
    probs = np.exp(log_probs)
    del log_probs
    out["brier"] = brier_score(probs, y)
    out["ece"] = expected_calibration_error(probs, y)
    if k == 2:  # the same margin ranking as ROC-AUC, seen from the positive class
        margin = logits[:, positive] - logits[:, 1 - positive]
        out.update(pr_auc=average_precision(margin, y == positive), pr_auc_positive=classes[positive])
    else:
        out.update(pr_auc=None, pr_auc_positive=None)
    return out


def _agreement(cm: np.ndarray, per_class: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    """Weighted F1, balanced accuracy and MCC from the confusion matrix and the per-class rows.

    As scikit-learn: the weighted F1 weights each class's F1 by its support (a class absent from
    the labels weighs 0); the balanced accuracy averages the recall of the classes in the labels.
    """
    support = cm.sum(axis=1)
    f1 = np.array([row["f1"] for row in per_class.values()])
    recall = np.diag(cm)[support > 0] / support[support > 0]
    return {
        "weighted_f1": float(f1 @ support / support.sum()),
        "balanced_accuracy": float(recall.mean()),
        "mcc": matthews_corrcoef(cm),
    }


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
