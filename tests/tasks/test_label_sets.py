"""Multi-label metrics equal scikit-learn's on random predictions."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from gptclf.tasks.label_sets import bce, multilabel_metrics, sigmoid

sklearn_metrics = pytest.importorskip("sklearn.metrics")
CLASSES = ["a", "b", "c", "d"]


def _random(seed: int, n: int = 80) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    truth = (rng.random((n, 4)) < [0.5, 0.3, 0.1, 0.02]).astype(int)
    logits = rng.normal(size=(n, 4)) + 1.5 * truth
    thresholds = rng.uniform(0.3, 0.7, size=4)
    return logits, truth, thresholds


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_parity_with_scikit_learn(seed: int) -> None:
    logits, truth, thresholds = _random(seed)
    m = multilabel_metrics(logits, truth, CLASSES, thresholds)
    pred = (sigmoid(logits) >= thresholds).astype(int)
    sk = sklearn_metrics
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # undefined ratios: 0 here, as scikit-learn's default
        for average in ("micro", "macro", "weighted", "samples"):
            assert m[f"{average}_f1"] == pytest.approx(
                sk.f1_score(truth, pred, average=average, zero_division=0)
            )
        assert m["micro_precision"] == pytest.approx(sk.precision_score(truth, pred, average="micro"))
        assert m["micro_recall"] == pytest.approx(sk.recall_score(truth, pred, average="micro"))
        p, r, f, s = sk.precision_recall_fscore_support(truth, pred, zero_division=0)
    assert m["subset_accuracy"] == m["accuracy"] == pytest.approx(sk.accuracy_score(truth, pred))
    assert m["hamming_loss"] == pytest.approx(sk.hamming_loss(truth, pred))
    assert m["loss"] == pytest.approx(sk.log_loss(truth.ravel(), sigmoid(logits).ravel()))
    confusion = sk.multilabel_confusion_matrix(truth, pred).tolist()
    assert [m["confusion_matrix"][c] for c in CLASSES] == confusion
    for i, name in enumerate(CLASSES):
        row = m["per_class"][name]
        assert (row["precision"], row["recall"], row["f1"]) == pytest.approx((p[i], r[i], f[i]))
        assert row["support"] == s[i]
        if 0 < truth[:, i].sum() < len(truth):
            assert row["roc_auc"] == pytest.approx(sk.roc_auc_score(truth[:, i], logits[:, i]))
        else:
            assert row["roc_auc"] is None


def test_a_label_never_true_has_no_auc_and_zero_f1() -> None:
    truth = np.zeros((5, 4), dtype=int)
    truth[:, 0] = [1, 0, 1, 0, 1]
    m = multilabel_metrics(np.zeros((5, 4)), truth, CLASSES)  # every probability 0.5: all predicted
    assert m["per_class"]["b"]["roc_auc"] is None and m["per_class"]["b"]["f1"] == 0.0
    assert m["per_class"]["a"]["recall"] == 1.0 and m["per_class"]["a"]["threshold"] == 0.5


def test_bce_is_torchs_and_tensors_are_read() -> None:
    logits, truth, _ = _random(9, n=10)
    want = torch.nn.functional.binary_cross_entropy_with_logits(
        torch.tensor(logits), torch.tensor(truth, dtype=torch.float64)
    )
    assert bce(logits, truth) == pytest.approx(float(want))
    assert multilabel_metrics(torch.tensor(logits, dtype=torch.float32), truth, CLASSES)["n"] == 10
