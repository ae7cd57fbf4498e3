"""What ``finetune`` does differently for multi-label data: its checks, the per-label thresholds
chosen on validation after training, and the metrics of the kept weights at those thresholds.

There is no temperature (calibration is for softmax runs) and no ``--target``/``--positive``
(two-class rules): a multi-label run stores ``multi_label: true`` and ``thresholds`` in run.json.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from gptclf.tasks.multi_loss import DEFAULT_THRESHOLD, choose_thresholds
from gptclf.tasks.multi_metrics import multilabel_metrics


def settings_problems(
    *, multi_label: bool, target: str | None, positive: str | None, monitor: str
) -> list[str]:
    """What keeps the finetune options from this data (multi-label or not); empty: nothing."""
    problems = []
    if multi_label and (target is not None or positive is not None):
        problems.append(
            "--target and --positive choose a two-class threshold; a multi-label run chooses one "
            "threshold per label on validation by itself: leave them out"
        )
    if not multi_label and monitor == "val_micro_f1":
        problems.append("--monitor val_micro_f1 is for multi-label data (prepare --multi-label): use val_f1")
    return problems


def thresholds_of(
    logits: dict[str, np.ndarray], labels: dict[str, Any], classes: Sequence[str]
) -> dict[str, Any]:
    """run.json's ``thresholds``, chosen on the validation split (0.5 for all without one)."""
    if "validation" not in logits:
        return {name: {"threshold": DEFAULT_THRESHOLD, "chosen": False} for name in classes}
    return choose_thresholds(logits["validation"], np.asarray(labels["validation"]), classes)


def multi_scores(
    logits: dict[str, np.ndarray], labels: dict[str, Any], classes: Sequence[str]
) -> dict[str, dict[str, Any] | None]:
    """Test and validation metrics of the kept weights at the thresholds chosen on validation."""
    chosen = thresholds_of(logits, labels, classes)
    t = [chosen[name]["threshold"] for name in classes]
    return {
        name: multilabel_metrics(logits[name], labels[name], classes, t) if name in logits else None
        for name in ("test", "validation")
    }


def multi_choices(
    logits: dict[str, np.ndarray], labels: dict[str, Any], classes: Sequence[str]
) -> dict[str, Any]:
    """The run.json keys of a multi-label run: the mark and the per-label thresholds."""
    return {"multi_label": True, "thresholds": thresholds_of(logits, labels, classes)}


def threshold_lines(thresholds: dict[str, Any]) -> list[str]:
    """One line per label for people: its threshold and the validation F1 it gives."""
    out = []
    for name, record in thresholds.items():
        how = "chosen on validation" if record.get("chosen") else "default (too few validation positives)"
        f1 = (record.get("validation") or {}).get("f1")
        tail = f", validation F1 {f1:.4f}" if f1 is not None else ""
        out.append(f"threshold of {name}: {record['threshold']:.4f} ({how}{tail})")
    return out
