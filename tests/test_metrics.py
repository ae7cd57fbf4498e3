from __future__ import annotations

import numpy as np
import pytest

from gptclf.metrics import classification_metrics, roc_auc


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
