"""What a finetune run carries through its steps (:class:`RunContext`) and what it gives back
(:class:`FinetuneResult`, also written to its run directory)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gptclf.distributed import Shard
from gptclf.model.classifier import Classifier
from gptclf.progress import TrainProgress
from gptclf.tasks.base import Task
from gptclf.tasks.calibration import Calibration
from gptclf.tasks.single_label import SingleLabel
from gptclf.training.checkpoints import InterruptGuard
from gptclf.training.loop import History
from gptclf.training.plan import RunPlan
from gptclf.training.settings import FinetuneSettings


@dataclass
class FinetuneResult:
    """What a finished run produced (also written to its directory).

    Attributes:
        run_dir: The run directory.
        model: The trained classifier (best weights, on the run's device, LoRA not merged).
        classes: Class names in order.
        history: Training history.
        test: Test metrics (None when the test split is empty).
        validation: Validation metrics of the kept weights (None without validation data).
        trainable_params: Parameters trained.
        total_params: Parameters of the classifier.
        cache: How the frozen trunk was handled: ``blocks`` cached and ``location``.
        timings: Seconds per phase: ``tokenise``, ``cache``, ``train``, ``evaluate``, ``total``.
        calibration: The temperature fitted on the validation split (None without validation data).
        logits: Raw (N, K) logits of the kept weights on the test and validation splits (those
            with texts), in split order.
        labels: The true class indices of those splits.
        choices: What ``--target`` chose on the validation split, as run.json stores it
            (``{"decision": ...}`` or ``{"abstain": ...}``); empty without a target.
        unmet: Why a ``--target`` was not met (the best value reached); nothing is then stored.
        task: The run's task.
    """

    run_dir: Path
    model: Classifier
    classes: list[str]
    history: History
    test: dict[str, Any] | None
    validation: dict[str, Any] | None
    trainable_params: int
    total_params: int
    cache: dict[str, Any]
    timings: dict[str, float]
    calibration: Calibration | None = None
    logits: dict[str, np.ndarray] = field(default_factory=dict)
    labels: dict[str, list[int]] = field(default_factory=dict)
    choices: dict[str, Any] = field(default_factory=dict)
    unmet: str | None = None
    task: Task = field(default_factory=SingleLabel)

    def summary(self) -> dict[str, Any]:
        """JSON-ready summary (what ``--json`` prints)."""
        best = self.history.best or {}
        test = self.test or {}
        return {
            "run_dir": str(self.run_dir),
            "classes": self.classes,
            "test_accuracy": test.get("accuracy"),
            "test_loss": test.get("loss"),
            "test_macro_f1": test.get("macro_f1"),
            "test_roc_auc": test.get("roc_auc"),
            "best_val_acc": best.get("val_acc"),
            "best_val_loss": best.get("val_loss"),
            "best_step": best.get("step"),
            "steps": self.history.steps,
            "stopped_early": self.history.stopped_early,
            "trainable_params": self.trainable_params,
            "total_params": self.total_params,
            "cache": self.cache,
            "timings": self.timings,
            "test": self.test,
            "calibration": self.calibration.to_dict() if self.calibration else None,
            "decision": self.choices.get("decision"),
            "abstain": self.choices.get("abstain"),
            **self.task.summary(self),  # the keys only the run's task has
        }


@dataclass
class RunContext:
    """What one run's steps share.

    Attributes:
        settings: The run's options (after ``--resume`` merged them with the saved ones).
        plan: Those settings resolved (model config, scope, training config, device, ...).
        out: The run directory the work folder becomes.
        work: The work folder the run is built in.
        resume_state: The checkpoint to continue from, or None.
        guard: The run's signal handling.
        progress: Receives progress and messages.
        shard: This process's place in a data-parallel job; only rank 0 writes.
    """

    settings: FinetuneSettings
    plan: RunPlan
    out: Path
    work: Path
    resume_state: dict[str, Any] | None
    guard: InterruptGuard
    progress: TrainProgress
    shard: Shard
