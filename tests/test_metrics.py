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
