from __future__ import annotations

import inspect
import json
from collections.abc import Iterator

import numpy as np
import pytest

from gptclf.tasks.metrics import classification_metrics, expected_calibration_error, reliability_bins, roc_auc


def test_known_confusion_matrix() -> None:
    # true:  a a a b b c ; predicted: a a b b c c
    logits = np.eye(3)[[0, 0, 1, 1, 2, 2]] * 5.0
    labels = [0, 0, 0, 1, 1, 2]
    m = classification_metrics(logits, labels, ["a", "b", "c"])
    assert m["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["per_class"]["a"] == {
        "precision": 1.0,
        "recall": pytest.approx(2 / 3),
        "f1": pytest.approx(0.8),
        "support": 3,
    }
    assert m["per_class"]["b"]["precision"] == pytest.approx(0.5)
    assert m["per_class"]["c"]["recall"] == 1.0
    assert m["macro_f1"] == pytest.approx(np.mean([0.8, 0.5, 2 / 3]))
    assert m["roc_auc"] is None


def test_loss_is_mean_cross_entropy() -> None:
    logits = np.array([[0.0, 0.0], [2.0, 0.0]])
    m = classification_metrics(logits, [0, 1], ["x", "y"])
    expected = (np.log(2) + np.log(1 + np.exp(2.0))) / 2
    assert m["loss"] == pytest.approx(expected)


def test_roc_auc_with_ties_matches_pairwise_count() -> None:
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, 200).astype(float)
    pos = rng.random(200) < 0.4
    pairs = [(s1 > s0) + 0.5 * (s1 == s0) for s1 in scores[pos] for s0 in scores[~pos]]
    assert roc_auc(scores, pos) == pytest.approx(np.mean(pairs))
    assert roc_auc(scores, np.ones(200, bool)) is None


def test_two_class_auc_perfect_and_empty() -> None:
    m = classification_metrics(np.array([[2.0, 0.0], [0.0, 3.0], [1.0, 0.5]]), [0, 1, 0], ["ham", "spam"])
    assert m["roc_auc"] == 1.0
    assert classification_metrics(np.zeros((0, 2)), [], ["a", "b"])["accuracy"] is None


def test_macro_f1_averages_only_classes_in_labels_or_predictions() -> None:
    # A three-class run evaluated on a file holding only a and b, all classified right.
    logits = np.eye(3)[[0, 1, 0, 1]] * 4.0
    m = classification_metrics(logits, [0, 1, 0, 1], ["a", "b", "c"])
    assert m["macro_f1"] == 1.0
    assert set(m["per_class"]) == {"a", "b", "c"} and m["per_class"]["c"]["support"] == 0
    # A class never in the labels but predicted counts (as F1 0), as in scikit-learn.
    m = classification_metrics(np.eye(3)[[0, 2, 0, 1]] * 4.0, [0, 1, 0, 1], ["a", "b", "c"])
    assert m["macro_f1"] == pytest.approx(np.mean([1.0, 2 / 3, 0.0]))


def test_roc_auc_ranks_by_the_logit_margin_not_saturated_probabilities() -> None:
    # Margins 60, 50, 45 (positives) against 40, 39, 38: softmax gives p = 1.0 for all six.
    margins = np.array([60.0, 50.0, 45.0, 40.0, 39.0, 38.0])
    logits = np.stack([np.zeros(6), margins], axis=1)
    m = classification_metrics(logits, [1, 1, 1, 0, 0, 0], ["ham", "spam"])
    assert m["roc_auc"] == 1.0


@pytest.mark.parametrize("k", [2, 3, 5])
def test_metrics_match_scikit_learn(k: int) -> None:
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(k)
    for trial in range(20):
        n = int(rng.integers(1, 60))
        present = rng.choice(k, size=int(rng.integers(1, k + 1)), replace=False)
        labels = rng.choice(present, size=n)
        logits = rng.normal(size=(n, k)) * rng.choice([0.5, 5.0, 80.0])
        if trial % 3 == 0:  # ties: a few distinct scores only
            logits = np.round(logits)
        m = classification_metrics(logits, labels, [f"c{i}" for i in range(k)])
        pred = logits.argmax(axis=1)
        assert m["accuracy"] == pytest.approx(sk.accuracy_score(labels, pred))
        assert m["macro_f1"] == pytest.approx(sk.f1_score(labels, pred, average="macro", zero_division=0))
        p, r, f, s = sk.precision_recall_fscore_support(labels, pred, labels=list(range(k)), zero_division=0)
        rows = [m["per_class"][f"c{i}"] for i in range(k)]
        assert [row["precision"] for row in rows] == pytest.approx(p)
        assert [row["recall"] for row in rows] == pytest.approx(r)
        assert [row["f1"] for row in rows] == pytest.approx(f)
        assert [row["support"] for row in rows] == list(s)
        assert m["confusion_matrix"] == sk.confusion_matrix(labels, pred, labels=list(range(k))).tolist()
        if k == 2 and len(set(labels)) == 2:
            assert m["roc_auc"] == pytest.approx(sk.roc_auc_score(labels, logits[:, 1] - logits[:, 0]))
        elif k == 2:
            assert m["roc_auc"] is None


def _random_cases(k: int, trials: int = 40) -> Iterator[tuple[np.ndarray, np.ndarray, float]]:
    """Random logits and labels: absent classes, ties (rounded logits, repeated rows) and saturation."""
    rng = np.random.default_rng(100 + k)
    for trial in range(trials):
        n = int(rng.integers(1, 80))
        present = rng.choice(k, size=int(rng.integers(1, k + 1)), replace=False)
        labels = rng.choice(present, size=n)
        scale = rng.choice([0.5, 5.0, 80.0])  # 80: probabilities round to exactly 0 and 1
        logits = rng.normal(size=(n, k)) * scale
        if trial % 3 == 0:  # ties: a few distinct scores only
            logits = np.round(logits / scale) * scale
        if trial % 4 == 1:  # repeated rows: equal scores with different labels
            logits = logits[rng.integers(0, max(1, n // 4), size=n)]
        yield labels, logits, scale


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def _reference_ece(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    """Guo et al.'s top-label ECE, written out bin by bin: bins (b/15, (b+1)/15]."""
    conf, pred = probs.max(axis=1), probs.argmax(axis=1)
    total = 0.0
    for b in range(n_bins):
        inside = (conf > b / n_bins) & (conf <= (b + 1) / n_bins)
        if inside.any():
            total += (
                inside.sum()
                / len(labels)
                * abs((pred[inside] == labels[inside]).mean() - conf[inside].mean())
            )
    return total


@pytest.mark.filterwarnings("ignore")  # scikit-learn warns about absent classes and a single class
@pytest.mark.parametrize("k", [2, 3, 5])
def test_probability_and_agreement_metrics_match_scikit_learn(k: int) -> None:
    sk = pytest.importorskip("sklearn.metrics")
    for labels, logits, scale in _random_cases(k):
        m = classification_metrics(logits, labels, [f"c{i}" for i in range(k)])
        pred, probs = logits.argmax(axis=1), _softmax(logits)
        assert m["weighted_f1"] == pytest.approx(
            sk.f1_score(labels, pred, average="weighted", zero_division=0)
        )
        assert m["balanced_accuracy"] == pytest.approx(sk.balanced_accuracy_score(labels, pred))
        mcc = sk.matthews_corrcoef(labels, pred)
        # One class in the labels: nothing to correlate with (scikit-learn says 0.0).
        assert m["mcc"] == (pytest.approx(mcc) if len(set(labels)) > 1 else None)
        # Brier: two classes as brier_score_loss(y, p(second class)); more: the mean squared
        # distance of the probability vector to the one-hot label (brier_score_loss from 1.7).
        if k == 2:
            assert m["brier"] == pytest.approx(sk.brier_score_loss(labels, probs[:, 1], pos_label=1))
        else:
            distance = ((probs - np.eye(k)[labels]) ** 2).sum(axis=1).mean()
            assert m["brier"] == pytest.approx(distance)
            if "labels" in inspect.signature(sk.brier_score_loss).parameters:
                assert m["brier"] == pytest.approx(sk.brier_score_loss(labels, probs, labels=list(range(k))))
        assert m["ece"] == pytest.approx(_reference_ece(probs, labels), abs=1e-12)
        if scale < 80:  # log_loss clips probabilities at 1e-15; ours is exact at any margin
            assert m["loss"] == pytest.approx(sk.log_loss(labels, probs, labels=list(range(k))))
        if k == 2:
            margin = logits[:, 1] - logits[:, 0]
            expected = sk.average_precision_score(labels == 1, margin) if (labels == 1).any() else None
            assert m["pr_auc"] == (None if expected is None else pytest.approx(expected))
            assert m["pr_auc_positive"] == "c1"
        else:
            assert m["pr_auc"] is None and m["pr_auc_positive"] is None


@pytest.mark.filterwarnings("ignore")
def test_average_precision_of_the_first_class_when_it_is_the_positive_one() -> None:
    sk = pytest.importorskip("sklearn.metrics")
    for labels, logits, _ in _random_cases(2):
        m = classification_metrics(logits, labels, ["spam", "ham"], positive=0)
        assert m["pr_auc_positive"] == "spam"
        if (labels == 0).any():
            expected = sk.average_precision_score(labels == 0, logits[:, 0] - logits[:, 1])
            assert m["pr_auc"] == pytest.approx(expected)
        assert m["roc_auc"] == classification_metrics(logits, labels, ["spam", "ham"])["roc_auc"]


def test_ece_by_hand_and_bins_closed_on_the_right() -> None:
    # Ten texts at confidence 0.9 with 7 right, five at 0.6 all right: (10 * 0.2 + 5 * 0.4) / 15.
    p = np.array([0.9] * 10 + [0.6] * 5)
    probs = np.stack([p, 1 - p], axis=1)
    labels = np.array([0] * 7 + [1] * 3 + [0] * 5)
    assert expected_calibration_error(probs, labels) == pytest.approx(4 / 15)
    # Three equal logits give confidence 1/3 exactly, the upper edge of bin 4: (4/15, 5/15].
    bins = reliability_bins(_softmax(np.zeros((4, 3))), np.array([0, 1, 2, 0]))
    assert [row["n"] for row in bins] == [0, 0, 0, 0, 4] + [0] * 10
    assert bins[4]["accuracy"] == 0.5 and bins[4]["confidence"] == pytest.approx(1 / 3)
    assert bins[0]["accuracy"] is None and bins[-1]["upper"] == 1.0


def test_undefined_metrics_are_none_and_the_result_is_strict_json() -> None:
    saturated = np.array([[0.0, 900.0], [0.0, 800.0], [700.0, 0.0]])
    one_class = classification_metrics(saturated, [0, 0, 0], ["ham", "spam"])
    assert one_class["mcc"] is None  # the labels hold one class: nothing to correlate with
    assert one_class["pr_auc"] is None  # no spam: recall is undefined
    assert one_class["balanced_accuracy"] == pytest.approx(1 / 3)
    assert one_class["brier"] == pytest.approx(2 / 3) and one_class["ece"] == pytest.approx(2 / 3)
    all_spam = classification_metrics(saturated, [1, 1, 1], ["ham", "spam"])
    assert all_spam["pr_auc"] == 1.0 and all_spam["mcc"] is None
    constant = classification_metrics(saturated[:2], [0, 1], ["ham", "spam"])
    assert constant["mcc"] == 0.0  # mixed labels, one predicted class: no correlation
    empty = classification_metrics(np.zeros((0, 3)), [], ["a", "b", "c"])
    new_keys = ("weighted_f1", "balanced_accuracy", "mcc", "brier", "ece", "pr_auc", "pr_auc_positive")
    assert all(empty[key] is None for key in new_keys)
    for m in (one_class, all_spam, constant, empty):
        json.dumps(m, allow_nan=False)


def _whole_array_metrics(logits: np.ndarray, y: np.ndarray, k: int, positive: int) -> dict:
    """loss, Brier, ECE, ROC-AUC and PR-AUC as computed on the whole (N, K) float64 array at once
    (the formulas before the metrics were read a chunk of rows at a time)."""
    from gptclf.tasks.metrics import average_precision

    z = logits - logits.max(axis=1, keepdims=True)
    log_probs = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    probs = np.exp(log_probs)
    diff = np.array(probs)
    diff[np.arange(len(y)), y] -= 1.0
    distance = np.square(diff).sum(axis=1).mean()
    pred = probs.argmax(axis=1)
    confidence = probs[np.arange(len(y)), pred]
    edges = np.arange(16) / 15
    which = np.searchsorted(edges[1:-1], confidence, side="left")
    confidence_sum = np.bincount(which, weights=confidence, minlength=15)
    correct_sum = np.bincount(which, weights=(pred == y).astype(np.float64), minlength=15)
    out = {
        "loss": float(-log_probs[np.arange(len(y)), y].mean()),
        "brier": float(distance / 2 if k == 2 else distance),
        "ece": float(np.abs(correct_sum - confidence_sum).sum() / len(y)),
        "accuracy": float((logits.argmax(axis=1) == y).mean()),
    }
    if k == 2:
        out["roc_auc"] = roc_auc(logits[:, 1] - logits[:, 0], y == 1)
        out["pr_auc"] = average_precision(logits[:, positive] - logits[:, 1 - positive], y == positive)
    return out


@pytest.mark.parametrize(("k", "positive"), [(2, 1), (2, 0), (3, 1), (7, 1)])
def test_metrics_read_a_chunk_of_rows_at_a_time_are_those_of_the_whole_array_bit_for_bit(
    k: int, positive: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    from gptclf.tasks import metrics

    rng = np.random.default_rng(k + positive)
    n = 1000
    raw = rng.normal(scale=4.0, size=(n, k)).astype(np.float32)
    raw[::7] = np.round(raw[::7])  # ties: equal margins and equal confidences
    logits, y = torch.from_numpy(raw), rng.integers(0, k, size=n)
    classes = [f"c{i}" for i in range(k)]
    dumps = set()
    for chunk in (1, 7, 64, 10**9):
        monkeypatch.setattr(metrics, "METRIC_CHUNK", chunk)
        got = classification_metrics(logits, y, classes, positive=positive, temperature=1.7)
        dumps.add(json.dumps(got))
        whole = _whole_array_metrics((logits / 1.7).numpy().astype(np.float64), y, k, positive)
        assert {key: got[key] for key in whole} == whole
    assert len(dumps) == 1
