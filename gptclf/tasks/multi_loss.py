"""The training side of multi-label runs: the loss, its per-label positive weights, and the
per-label thresholds chosen on validation.

K sigmoid outputs, one per label, trained with ``binary_cross_entropy_with_logits``: the loss of
a text is the mean over its K labels, so the summed loss of a batch divided by its texts is
PyTorch's ``reduction="mean"``. With ``--class-weights balanced`` each label's positives weigh
``negatives / positives`` of the training split (``pos_weight``; 1 where a label has no positive).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from gptclf.tasks.decisions import Target, choose_threshold, threshold_counts
from gptclf.tasks.multi_metrics import sigmoid

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
