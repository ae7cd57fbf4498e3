"""fit(): the training loop, flat, and the small objects it keeps its state in.

For each epoch (groups of texts drawn from seed and epoch), for each group: one optimizer step
(:class:`gptclf.training.step.Stepper`: micro-batches, accumulation, DDP, scaler), maybe an evaluation on the
whole validation split (keeping the best weights, :class:`BestKeeper`, and counting towards early
stopping), maybe a checkpoint (:class:`gptclf.training.checkpoints.Checkpointer`: every epoch end, every
``--checkpoint-every`` steps, when training ends, and on a signal). Under DDP every rank draws the
same groups and decides the same (NaN stop, early stop, interrupt) from numbers summed over the
ranks; only rank 0 writes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from gptclf.device import Precision
from gptclf.distributed import Shard
from gptclf.errors import BadInputError, Interrupted
from gptclf.inference.batching import LabelledSet, train_batches
from gptclf.inference.loop import labelled_metrics
from gptclf.model.classifier import Classifier
from gptclf.progress import TrainProgress
from gptclf.training.checkpoints import (
    RESUME_SUFFIX,
    Checkpointer,
    InterruptGuard,
    data_signature,
    restore_training,
    signal_name,
)
from gptclf.training.settings import TrainConfig
from gptclf.training.step import Stepper


@dataclass
class History:
    """What :func:`fit` did.

    Attributes:
        rows: One dict per evaluation, keys :data:`gptclf.rundir.HISTORY_COLUMNS`.
        best: The row whose weights were kept (None without validation data: the last weights).
        stopped_early: Early stopping ended training before the last epoch.
        steps: Optimizer steps taken.
        total_steps: Optimizer steps planned.
        train_seconds: Wall time of the loop, over every resumed part.
    """

    rows: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] | None = None
    stopped_early: bool = False
    steps: int = 0
    total_steps: int = 0
    train_seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "best": self.best,
            "stopped_early": self.stopped_early,
            "steps": self.steps,
            "total_steps": self.total_steps,
            "train_seconds": self.train_seconds,
        }


def _score(metrics: dict[str, Any], monitor: str) -> tuple[float, ...]:
    """Higher is better; accuracy and F1 ties are broken by the lower loss."""
    loss = -float(metrics["loss"])
    if monitor == "val_loss":
        return (loss,)
    key = {"val_acc": "accuracy", "val_micro_f1": "micro_f1"}.get(monitor, "macro_f1")
    return (float(metrics[key]), loss)


@dataclass
class _Loop:
    """The loop's position and everything a checkpoint must carry besides the tensors."""

    epoch: int = 0  # 0-based epoch being run
    group: int = 0  # next batch group within the epoch
    step: int = 0  # optimizer steps done
    rows: list[dict[str, Any]] = field(default_factory=list)
    best_row: dict[str, Any] | None = None
    best_score: list[float] | None = None
    bad_evals: int = 0
    run_loss: float = 0.0  # summed cross-entropy since the last evaluation ...
    run_weight: float = 0.0  # ... and the number of texts it sums over
    run_correct: int = 0
    run_seen: int = 0
    elapsed: float = 0.0
    stopped: bool = False  # early stopping ended training


def fit(
    model: Classifier,
    train: LabelledSet,
    val: LabelledSet | None,
    cfg: TrainConfig,
    *,
    device: torch.device,
    precision: Precision,
    seed: int,
    checkpoint: Path | None = None,
    resume: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    progress: TrainProgress | None = None,
    shard: Shard = Shard(),  # frozen, so one shared default is safe
    guard: InterruptGuard | None = None,
) -> History:
    """Train the trainable parameters of ``model`` (already on ``device``) and keep the best.

    Args:
        model: The classifier with its scope applied.
        train: Training inputs and labels.
        val: Validation inputs and labels (None or empty: no evaluation, the last weights stay).
        cfg: Optimisation settings.
        device: Where the model and the batches live.
        precision: Autocast type; fp16 uses a gradient scaler.
        seed: Seeds the batch order (with the epoch) and torch's RNG (dropout).
        checkpoint: Where a resumable state is saved at every epoch end, every
            ``cfg.checkpoint_every`` steps, when training ends and on Ctrl-C or SIGTERM; None:
            no checkpoints, and interrupts are not caught.
        resume: A state read by :func:`gptclf.training.checkpoints.load_checkpoint` to continue from.
        extra: Stored in the checkpoint as is (the caller's settings).
        progress: Receives progress events.
        shard: This process's rank and the world size.
        guard: The caller's signal handling (it stays in place after training); default: one
            of fit's own while it runs, when ``checkpoint`` is given.

    Returns:
        The history; ``model`` holds the best weights (by ``cfg.monitor``) when it returns.

    Raises:
        BadInputError: Bad settings, an empty training split, or a checkpoint that does not fit.
        TrainingError: The loss became NaN or infinite (nothing is written).
        Interrupted: A signal arrived; the checkpoint was saved (exit code 130 or 143).
    """
    problems = cfg.problems()
    if cfg.early_stop is not None and not val:
        problems.append("--early-stop needs a non-empty validation split")
    if len(train) == 0:
        problems.append("the training split is empty")
    if problems:
        raise BadInputError("; ".join(problems))
    trainer = _Trainer(model, train, val or None, cfg, device, precision, seed, shard)
    if resume is not None:
        trainer.restore(resume)
    own = guard is None and checkpoint is not None
    with InterruptGuard() if own else contextlib.nullcontext(guard) as active:
        if active is not None:
            active.deferring = True
        saver = Checkpointer(checkpoint, extra or {}, shard)
        return trainer.run(saver, active, progress or TrainProgress())


class BestKeeper:
    """Keeps the weights of the best evaluation so far and counts evaluations without progress.

    Its position (best score, best row, evaluations since) lives in the loop's state, which
    checkpoints carry; the weights are a CPU copy of the trainable tensors.
    """

    def __init__(self, loop: _Loop, monitor: str, patience: int | None) -> None:
        self.loop, self.monitor, self.patience = loop, monitor, patience
        self.state: dict[str, torch.Tensor] | None = None

    def offer(self, metrics: dict[str, Any], row: dict[str, Any], snapshot: Callable[[], Any]) -> bool:
        """Record an evaluation; True when early stopping says stop."""
        loop = self.loop
        score = list(_score(metrics, self.monitor))
        if loop.best_score is None or score > loop.best_score:
            loop.best_score, loop.best_row, loop.bad_evals = score, row, 0
            self.state = snapshot()
            return False
        loop.bad_evals += 1
        return self.patience is not None and loop.bad_evals >= self.patience


class _Trainer:
    """The state of one :func:`fit` call and the steps it takes."""

    def __init__(
        self,
        model: Classifier,
        train: LabelledSet,
        val: LabelledSet | None,
        cfg: TrainConfig,
        device: torch.device,
        precision: Precision,
        seed: int,
        shard: Shard,
    ) -> None:
        self.model, self.train, self.val, self.cfg = model, train, val, cfg
        self.device, self.precision, self.seed, self.shard = device, precision, seed, shard
        self.stepper = Stepper(model, train.source, train.labels, cfg, device, precision, shard, train.task)
        self.named = self.stepper.named
        self.group_size = cfg.batch_size * cfg.grad_accum * shard.world_size
        self.total = cfg.epochs * math.ceil(len(train) / self.group_size)
        self.data = data_signature(train.labels, train.lengths, train.long_texts)
        self.loop = _Loop()
        self.best = BestKeeper(self.loop, cfg.monitor, cfg.early_stop)
        self.signal: int | None = None  # a signal that some rank received, as of the last step
        self.started = time.monotonic()
        torch.manual_seed(seed)

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint: weights, optimizer, scaler, RNG (:func:`restore_training`),
        then the loop's position and the best weights so far."""
        restore_training(
            state,
            train=self.cfg.to_dict(),
            data=self.data,
            named=self.named,
            optimizer=self.stepper.optimizer,
            scaler=self.stepper.scaler,
            shard=self.shard,
        )
        self.loop = _Loop(**state["loop"])
        self.best = BestKeeper(self.loop, self.cfg.monitor, self.cfg.early_stop)
        self.best.state = state["best"]

    def run(self, saver: Checkpointer, guard: InterruptGuard | None, progress: TrainProgress) -> History:
        """The epochs, flat: for each epoch, for each batch group: a step, maybe an evaluation,
        maybe a checkpoint. Ends after the last epoch, on early stopping, on a signal (after
        saving) or on a non-finite loss."""
        cfg, loop = self.cfg, self.loop
        self.started = time.monotonic()
        progress.start(self.total, loop.step, cfg.epochs)
        try:
            for epoch in range(cfg.epochs if loop.stopped else loop.epoch, cfg.epochs):
                groups = self.epoch_groups(epoch)
                for index in range(loop.group, len(groups)):
                    lr = cfg.learning_rate(loop.step, self.total)
                    self.step(groups[index], lr, len(groups), guard)
                    # The mean since the last evaluation: steadier to watch than one step's loss.
                    progress.step(epoch + 1, loop.step, loop.run_loss / loop.run_weight)
                    loop.group = index + 1
                    epoch_end = loop.group == len(groups)
                    if epoch_end or (cfg.eval_every and loop.step % cfg.eval_every == 0):
                        loop.stopped = self.evaluate(lr, progress) and loop.step < self.total
                    if epoch_end:
                        loop.epoch, loop.group = epoch + 1, 0
                    # Under DDP the ranks act on the signal they agreed on in the step; alone, at once.
                    signum = self.signal if self.shard.distributed else guard.signum if guard else None
                    if signum is not None:
                        self.interrupt(saver, signum)
                    if epoch_end or (cfg.checkpoint_every and loop.step % cfg.checkpoint_every == 0):
                        saver.save(self.state, loop.step)
                    if loop.stopped:
                        break
                if loop.stopped:
                    break
            self.restore_best()
            saver.save(self.state, loop.step)  # training is over: a resume goes straight to the end
        finally:
            progress.close()
        return History(
            rows=loop.rows,
            best=loop.best_row,
            stopped_early=loop.stopped,
            steps=loop.step,
            total_steps=self.total,
            train_seconds=self.elapsed(),
        )

    def epoch_groups(self, epoch: int) -> list[list[int]]:
        """The batch groups of ``epoch``; a saved position past them is refused, never looped on."""
        groups = train_batches(self.train.lengths, self.group_size, self.seed, epoch, self.cfg.bucket)
        if self.loop.group > len(groups):
            raise BadInputError(
                f"the checkpoint is at batch group {self.loop.group} of epoch {epoch + 1}, which has only "
                f"{len(groups)}: the training data changed; start again with --force"
            )
        return groups

    def restore_best(self) -> None:
        """Put the kept (best) weights back into the model."""
        if self.best.state is not None:
            with torch.no_grad():
                for n, p in self.named:
                    p.copy_(self.best.state[n])

    def elapsed(self) -> float:
        """Training seconds over every resumed part."""
        return self.loop.elapsed + time.monotonic() - self.started

    def step(self, indices: list[int], lr: float, epoch_groups: int, guard: InterruptGuard | None) -> None:
        """One optimizer step (:class:`gptclf.training.step.Stepper`), then the loop's counts."""
        loop = self.loop
        pending = guard.signum if guard is not None else None

        def where() -> str:
            return f"step {loop.step + 1} (epoch {loop.epoch + 1}, batch {loop.group + 1} of {epoch_groups})"

        result = self.stepper.step(indices, lr, pending, where)
        self.signal = result.signal
        loop.step += 1
        loop.run_loss += result.loss
        loop.run_weight += len(indices)
        loop.run_correct += result.correct
        loop.run_seen += len(indices)

    def snapshot(self) -> dict[str, torch.Tensor]:
        """A CPU copy of the trainable weights."""
        return {n: p.detach().to("cpu", copy=True) for n, p in self.named}

    def evaluate(self, lr: float, progress: TrainProgress) -> bool:
        """Evaluate on the whole validation set, record a history row, keep the best weights.

        Returns:
            True when early stopping says stop.
        """
        loop, cfg = self.loop, self.cfg
        row: dict[str, Any] = {
            "epoch": loop.epoch + 1,
            "step": loop.step,
            "train_loss": loop.run_loss / loop.run_weight if loop.run_weight else None,
            "train_acc": loop.run_correct / loop.run_seen if loop.run_seen else None,
            "val_loss": None,
            "val_acc": None,
            "val_f1": None,
            "lr": lr,
        }
        loop.run_loss = loop.run_weight = 0.0
        loop.run_correct = loop.run_seen = 0
        stop = False
        if self.val is not None:
            metrics, _ = labelled_metrics(
                self.model,
                self.val,
                device=self.device,
                precision=self.precision,
                batch_size=cfg.eval_batch_size,
                shard=self.shard,
            )
            row.update(val_loss=metrics["loss"], val_acc=metrics["accuracy"], val_f1=metrics["macro_f1"])
            row.update(self.train.task.history_extra(metrics))  # history.csv gains the task's columns
            stop = self.best.offer(metrics, row, self.snapshot)
        row["elapsed"] = self.elapsed()
        loop.rows.append(row)
        progress.evaluated(row)
        return stop

    def state(self) -> dict[str, Any]:
        """Everything a checkpoint holds besides the RNG states and the caller's extra."""
        position = dataclasses.asdict(self.loop)
        position["elapsed"] = self.elapsed()
        return {
            "train": self.cfg.to_dict(),
            "world_size": self.shard.world_size,
            "data": self.data,
            "loop": position,
            "trainable": self.snapshot(),
            "best": self.best.state,
            "optimizer": self.stepper.optimizer.state_dict(),
            "scaler": self.stepper.scaler.state_dict(),
        }

    def interrupt(self, saver: Checkpointer, signum: int) -> None:
        """Save a resumable checkpoint (rank 0) and raise :class:`Interrupted` on every rank."""
        saver.save(self.state, self.loop.step)
        where = f"saved a resumable checkpoint in {saver.path}" if saver.path else "nothing was saved"
        raise Interrupted(
            f"{signal_name(signum)} at step {self.loop.step} of {self.total}: {where}{RESUME_SUFFIX}",
            signum,
        )
