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


def _top_label_bins(probs: np.ndarray, labels: np.ndarray, n_bins: int) -> tuple[np.ndarray, ...]:
    """Per text: its confidence bin, its top-label confidence and whether the top label is right
    (0.0 or 1.0); and the bins' edges."""
    pred = probs.argmax(axis=1)
    confidence = probs[np.arange(len(pred)), pred]
    edges = np.arange(n_bins + 1) / n_bins  # b / n_bins correctly rounded: 1/3 is an edge for 15 bins
    which = np.searchsorted(edges[1:-1], confidence, side="left")  # edges[b] < conf <= edges[b + 1]
    return edges, which, confidence, (pred == labels).astype(np.float64)


def _binned(probs: np.ndarray, labels: np.ndarray, n_bins: int) -> tuple[np.ndarray, ...]:
    """Per bin: edges, text count, summed top-label confidence and summed correctness."""
    edges, which, confidence, correct = _top_label_bins(probs, labels, n_bins)
    counts = np.bincount(which, minlength=n_bins)
    confidence_sum = np.bincount(which, weights=confidence, minlength=n_bins)
    correct_sum = np.bincount(which, weights=correct, minlength=n_bins)
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
    distance = _squared_distance(probs, labels).mean()
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


#: Rows of logits made float64 probabilities at a time: the metrics keep (N,) vectors and counts,
#: never an (N, K) float64 array (24 MB each for a million texts of 3 classes).
METRIC_CHUNK = 65_536


def float64_rows(
    logits: np.ndarray | torch.Tensor, start: int, stop: int, temperature: float | None = None
) -> np.ndarray:
    """Rows ``start:stop`` of ``logits`` as float64 (divided by ``temperature`` first, in the
    logits' own type, as ``logits / temperature`` on the whole would be)."""
    part = logits[start:stop]
    if temperature is not None:
        part = part / temperature
    if isinstance(part, torch.Tensor):
        part = part.detach().float().cpu().numpy()
    return np.asarray(part, dtype=np.float64)


class _Tally:
    """What :func:`classification_metrics` needs of each text, gathered a chunk of rows at a time:
    counts, and the (N,) vectors whose means and rankings the metrics take over all texts (so each
    number is computed as over the whole (N, K) array, bit for bit: every operation is per row or a
    count, and the bins' confidence sums are added text by text in order, as ``np.bincount`` adds)."""

    def __init__(self, n: int, k: int, positive: int) -> None:
        self.k, self.positive = k, positive
        self.cm = np.zeros((k, k), dtype=np.int64)
        self.right = 0
        self.nll = np.empty(n)  # log-probability of each text's true class
        self.brier = np.empty(n)  # squared distance of each text's probabilities to its one-hot label
        self.margin = np.empty(n) if k == 2 else None  # second class's logit minus the first's
        self.pr_margin = np.empty(n) if k == 2 and positive != 1 else None
        self.bin_counts = np.zeros(ECE_BINS, dtype=np.int64)
        self.bin_confidence = np.zeros(ECE_BINS)
        self.bin_correct = np.zeros(ECE_BINS)

    def add(self, start: int, logits: np.ndarray, y: np.ndarray) -> None:
        """Tally the float64 ``logits`` of texts ``start``, ``start + 1``, ... with labels ``y``."""
        rows, stop = np.arange(len(y)), start + len(y)
        z = logits - logits.max(axis=1, keepdims=True)
        log_probs = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        del z
        pred = logits.argmax(axis=1)
        np.add.at(self.cm, (y, pred), 1)
        self.right += int((pred == y).sum())
        self.nll[start:stop] = log_probs[rows, y]
        if self.margin is not None:
            self.margin[start:stop] = logits[:, 1] - logits[:, 0]
        if self.pr_margin is not None:
            self.pr_margin[start:stop] = logits[:, self.positive] - logits[:, 1 - self.positive]
        probs = np.exp(log_probs)
        del log_probs
        self.brier[start:stop] = _squared_distance(probs, y)
        _, which, confidence, correct = _top_label_bins(probs, y, ECE_BINS)
        self.bin_counts += np.bincount(which, minlength=ECE_BINS)
        np.add.at(self.bin_confidence, which, confidence)  # in order, text by text: np.bincount's sums
        self.bin_correct += np.bincount(which, weights=correct, minlength=ECE_BINS)  # whole numbers: exact


def _squared_distance(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(N,) squared Euclidean distance of each row of ``probs`` to its one-hot label."""
    # probs - one_hot, in one array: p - 0.0 is p, and 1.0 is taken from each text's true class.
    diff = np.array(probs, dtype=np.float64)
    diff[np.arange(len(diff)), labels] -= 1.0
    np.square(diff, out=diff)
    return diff.sum(axis=1)


def classification_metrics(
    logits: np.ndarray | torch.Tensor,
    labels: Sequence[int] | np.ndarray,
    classes: Sequence[str],
    *,
    positive: int = 1,
    temperature: float | None = None,
) -> dict[str, Any]:
    """All metrics of a labelled set, with scikit-learn's definitions, on the whole set.

    The logits are read :data:`METRIC_CHUNK` rows at a time (the numbers are those of the whole
    array at once, bit for bit), so a large set needs a few (N,) vectors beside its logits.

    Args:
        logits: (N, K) raw class scores (already divided by a calibration temperature, if any:
            the probability metrics judge the probabilities these logits give).
        labels: (N,) true class indices.
        classes: Class names, index order.
        positive: Two classes: the index of the class whose average precision is reported.
        temperature: Judge ``logits / temperature`` instead (divided a chunk at a time).

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
    y = np.asarray(labels, dtype=np.int64)
    k = len(classes)
    n = len(y)
    out: dict[str, Any] = {"n": n, "classes": list(classes)}
    if n == 0:
        out.update(accuracy=None, loss=None, macro_f1=None, per_class={}, confusion_matrix=[], roc_auc=None)
        out.update(dict.fromkeys(("weighted_f1", "balanced_accuracy", "mcc", "brier", "ece", "pr_auc")))
        out["pr_auc_positive"] = classes[positive] if k == 2 else None
        return out
    tally = _Tally(n, k, positive)
    for start in range(0, n, METRIC_CHUNK):
        stop = min(start + METRIC_CHUNK, n)
        tally.add(start, float64_rows(logits, start, stop, temperature), y[start:stop])
    per_class, macro_f1 = _per_class(tally.cm, classes)
    out["accuracy"] = tally.right / n
    out["loss"] = float(-tally.nll.mean())
    out["macro_f1"] = macro_f1
    out["per_class"] = per_class
    out["confusion_matrix"] = tally.cm.tolist()
    # Rank by the margin, not by softmax probabilities: p(second class) = sigmoid(margin) orders
    # texts alike but rounds to exactly 1.0 in float64 beyond a margin of ~37, turning a perfect
    # ranking of confident texts into ties.
    out["roc_auc"] = roc_auc(tally.margin, y == 1) if tally.margin is not None else None
    out.update(_agreement(tally.cm, per_class))
    distance = tally.brier.mean()
    # For two classes both coordinates err by the same amount, so half the distance is the binary MSE.
    out["brier"] = float(distance / 2 if k == 2 else distance)
    out["ece"] = float(np.abs(tally.bin_correct - tally.bin_confidence).sum() / n)
    if tally.margin is not None:  # the same margin ranking as ROC-AUC, seen from the positive class
        margin = tally.margin if tally.pr_margin is None else tally.pr_margin
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
