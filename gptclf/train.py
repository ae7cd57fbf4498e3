"""fit() and evaluate(): plain functions that train a classifier and return plain data.

The loop draws, every epoch, groups of ``batch_size * grad_accum * world_size`` texts (seeded by
seed and epoch) and splits each into micro-batches; the loss of a micro-batch is its summed
cross-entropy divided by the whole group's size (or class weight), so the accumulated gradient is
that of one large batch, also for the smaller last group of an epoch.

Under DDP (:class:`gptclf.distributed.Shard`) every rank draws the same groups and runs its share
(``--batch-size`` is per device). Each micro-batch's loss is multiplied by the world size because
DDP averages the ranks' gradients: the sum over ranks is again the large batch's gradient, so a
2-process run with batch b trains like one process with batch 2b. Gradients sync only on a rank's
last micro-batch (``no_sync`` before). The step's loss, accuracy and any pending signal are summed
over the ranks, and validation logits are gathered, so every rank sees the same numbers and makes
the same decisions (NaN stop, early stop, interrupt). Only rank 0 writes; under DDP it also saves a
resumable checkpoint at each epoch end, since one lost process ends the whole job.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from gptclf.batching import sorted_batches, train_batches
from gptclf.classifier import Classifier
from gptclf.device import Precision
from gptclf.distributed import Shard, wrap_ddp
from gptclf.errors import BadInputError, Interrupted, TrainingError
from gptclf.features import BatchLogits, Source, to_device
from gptclf.metrics import classification_metrics
from gptclf.progress import TrainProgress
from gptclf.resume import (
    InterruptGuard,
    check_world_size,
    restore_rng,
    rng_state,
    save_checkpoint,
    signal_name,
)
from gptclf.runconfig import TrainConfig

#: Columns of history.csv, in order.
HISTORY_COLUMNS = (
    "epoch",
    "step",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "val_f1",
    "lr",
    "elapsed",
)


@dataclass
class LabelledSet:
    """Model inputs of a split and the true class index of each text."""

    source: Source
    labels: list[int]

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class History:
    """What :func:`fit` did.

    Attributes:
        rows: One dict per evaluation, keys :data:`HISTORY_COLUMNS`.
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


def evaluate(
    model: Classifier,
    data: LabelledSet,
    *,
    device: torch.device,
    precision: Precision,
    batch_size: int = 32,
    shard: Shard = Shard(),  # frozen, so one shared default is safe
    between_batches: Callable[[], None] | None = None,
) -> tuple[dict[str, Any], np.ndarray]:
    """Metrics of ``model`` on the whole of ``data``.

    Batches are sorted by length (little padding); logits go back to their texts' rows. Under DDP
    each rank runs every ``world_size``-th of the same batches and the logits are summed over the
    ranks (each row is non-zero on one rank only): every rank gets all the logits, computed in
    the same batches as by one process, hence the same metrics.

    Args:
        between_batches: Called before each batch (e.g. to stop on a signal by raising).

    Returns:
        ``(metrics, logits)``: :func:`gptclf.metrics.classification_metrics` and the (N, K)
        float32 logits in input order.
    """
    logits = torch.zeros(len(data), len(model.classes), dtype=torch.float32)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for indices in shard.take(sorted_batches(data.source.lengths, batch_size)):
                if between_batches is not None:
                    between_batches()
                batch = data.source.batch(indices, device)
                with precision.autocast(device):
                    out = batch.logits(model)
                logits[torch.as_tensor(indices)] = out.float().cpu()
    finally:
        model.train(was_training)
    shard.all_sum(logits)
    return classification_metrics(logits, data.labels, model.classes), logits.numpy()


def class_weights(labels: list[int], num_classes: int, mode: str) -> torch.Tensor | None:
    """Loss weight per class: None for ``none``; n / (K * count) for ``balanced`` (1 if absent)."""
    if mode == "none":
        return None
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes).astype(np.float64)
    weights = np.where(counts > 0, len(labels) / (num_classes * np.maximum(counts, 1)), 1.0)
    return torch.as_tensor(weights, dtype=torch.float32)


def _score(metrics: dict[str, Any], monitor: str) -> tuple[float, ...]:
    """Higher is better; accuracy and F1 ties are broken by the lower loss."""
    loss = -float(metrics["loss"])
    if monitor == "val_loss":
        return (loss,)
    return (float(metrics["accuracy" if monitor == "val_acc" else "macro_f1"]), loss)


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


def _what_trains(train: dict[str, Any]) -> dict[str, Any]:
    """Training settings less those that only say when checkpoints are saved."""
    return {k: v for k, v in train.items() if k != "checkpoint_every"}


def stats_dtype(device: torch.device) -> torch.dtype:
    """The type of a step's summed loss and counts: float64, but float32 on MPS, which has no
    float64 (the counts stay exact in float32 up to 2**24 texts a step)."""
    return torch.float32 if device.type == "mps" else torch.float64


def data_signature(train: LabelledSet) -> dict[str, Any]:
    """What identifies a training set for resuming: its size and a hash of its labels and lengths.

    A checkpoint continues only on the same texts: other data (re-prepared with another split or
    seed) would give other batch groups, or a position past the end of an epoch.
    """
    digest = hashlib.sha256()
    digest.update(np.asarray(train.labels, dtype=np.int64).tobytes())
    digest.update(np.asarray(train.source.lengths, dtype=np.int64).tobytes())
    return {"n": len(train), "sha256": digest.hexdigest()}


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
        resume: A state read by :func:`gptclf.resume.load_checkpoint` to continue from.
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
        return trainer.run(_Saver(checkpoint, extra or {}, shard), active, progress or TrainProgress())


class _Saver:
    """Writes checkpoints (rank 0) and makes every rank wait until the file is complete."""

    def __init__(self, path: Path | None, extra: dict[str, Any], shard: Shard) -> None:
        self.path, self.extra, self.shard = path, extra, shard
        self.saved_step: int | None = None

    def save(self, state: Callable[[], dict[str, Any]], step: int) -> None:
        """Save ``state()`` once per step; every rank must call (the RNG states are gathered)."""
        if self.path is None or self.saved_step == step:
            return
        rngs = self.shard.gather_objects(rng_state())
        if self.shard.is_main:
            save_checkpoint(self.path, {**state(), "extra": self.extra, "rng": rngs[0], "rng_ranks": rngs})
        # A large checkpoint can take longer than --dist-timeout: the others wait on the slow group.
        self.shard.slow_barrier()
        self.saved_step = step


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
        self.named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.forward = wrap_ddp(BatchLogits(model), device, shard)
        # The fused kernel is several times faster than the default per-tensor loop, on a CPU too.
        fused = True if device.type in ("cpu", "cuda") else None
        self.optimizer = torch.optim.AdamW(
            [p for _, p in self.named], lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused
        )
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision.use_scaler)
        self.weights = class_weights(train.labels, len(model.classes), cfg.class_weights)
        self.weights_dev = None if self.weights is None else self.weights.to(device)
        self.labels = torch.as_tensor(train.labels, dtype=torch.long)
        self.group_size = cfg.batch_size * cfg.grad_accum * shard.world_size
        self.total = cfg.epochs * math.ceil(len(train) / self.group_size)
        self.data = data_signature(train)
        self.loop = _Loop()
        self.best_state: dict[str, torch.Tensor] | None = None
        self.signal: int | None = None  # a signal that some rank received, as of the last step
        self.stats_dtype = stats_dtype(device)
        self.started = time.monotonic()
        torch.manual_seed(seed)

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint: weights, optimizer, scaler, RNG and position.

        Raises:
            BadInputError: Other training settings, another world size, other training data, or
                trainable weights that do not fit.
        """
        # How often checkpoints are written does not change what is computed: it may differ.
        if _what_trains(state.get("train") or {}) != _what_trains(self.cfg.to_dict()):
            raise BadInputError(
                "the checkpoint was written with other training settings; keep them on --resume"
            )
        check_world_size(state, self.shard.world_size)
        saved_data = state.get("data")
        if saved_data is not None and saved_data != self.data:
            raise BadInputError(
                f"the training data differ from those of the interrupted run ({saved_data['n']} texts then, "
                f"{self.data['n']} now, or other texts): resume with the data it was trained on, "
                "or start again with --force"
            )
        saved = state["trainable"]
        if sorted(saved) != sorted(n for n, _ in self.named) or any(
            saved[n].shape != p.shape for n, p in self.named
        ):
            raise BadInputError("the checkpoint's trainable weights do not fit this model and scope")
        with torch.no_grad():
            for n, p in self.named:
                p.copy_(saved[n])
        self.optimizer.load_state_dict(state["optimizer"])
        # A run may resume in another precision: a scaler state only where both sides have one.
        if self.scaler.is_enabled() and state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        ranks = state.get("rng_ranks")
        restore_rng(ranks[self.shard.rank] if ranks else state["rng"])
        self.loop = _Loop(**state["loop"])
        self.best_state = state["best"]

    def run(self, saver: _Saver, guard: InterruptGuard | None, progress: TrainProgress) -> History:
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
        groups = train_batches(self.train.source.lengths, self.group_size, self.seed, epoch, self.cfg.bucket)
        if self.loop.group > len(groups):
            raise BadInputError(
                f"the checkpoint is at batch group {self.loop.group} of epoch {epoch + 1}, which has only "
                f"{len(groups)}: the training data changed; start again with --force"
            )
        return groups

    def restore_best(self) -> None:
        """Put the kept (best) weights back into the model."""
        if self.best_state is not None:
            with torch.no_grad():
                for n, p in self.named:
                    p.copy_(self.best_state[n])

    def elapsed(self) -> float:
        """Training seconds over every resumed part."""
        return self.loop.elapsed + time.monotonic() - self.started

    def step(self, indices: list[int], lr: float, epoch_groups: int, guard: InterruptGuard | None) -> None:
        """One optimizer step over a group of ``batch_size * grad_accum * world_size`` texts."""
        cfg, loop, shard = self.cfg, self.loop, self.shard
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        # The denominator is the whole group's (over every rank), so each micro-batch's gradient
        # is its share of one large batch's mean loss; DDP averages over ranks, hence world_size.
        group_labels = self.labels[indices]
        denom = float(self.weights[group_labels].sum()) if self.weights is not None else float(len(indices))
        mine = shard.take(indices)
        micros = [mine[start : start + cfg.batch_size] for start in range(0, len(mine), cfg.batch_size)]
        # A last group smaller than the world leaves some ranks nothing; they still run one text
        # with a zero loss weight, because every rank must take part in the gradient sync.
        scale = shard.world_size / denom if micros else 0.0
        self.forward.train()
        # [summed loss, correct, SIGINTs, SIGTERMs] over the ranks: one small collective per step.
        stats = torch.zeros(4, dtype=self.stats_dtype, device=self.device)
        for n, micro in enumerate(micros or [indices[:1]]):
            batch = self.train.source.batch(micro, self.device)
            y = to_device(self.labels[micro], self.device)
            # Only the last micro-batch's backward syncs: DDP then reduces the accumulated gradient.
            last = n == max(len(micros), 1) - 1
            sync = self.forward.no_sync() if shard.distributed and not last else contextlib.nullcontext()
            # TF32 (--precision tf32 or auto on CUDA) for the backward too, which runs outside autocast.
            with sync, self.precision.tf32_scope(self.device):
                with self.precision.autocast(self.device):
                    logits = self.forward(batch.input_ids, batch.lengths, batch.hidden, batch.start_block)
                ce = F.cross_entropy(logits.float(), y, weight=self.weights_dev, reduction="sum")
                self.scaler.scale(ce * scale).backward()
            if micros:
                # Reported on the footing of the validation loss: plain, unweighted cross-entropy.
                plain = ce if self.weights is None else F.cross_entropy(logits.float(), y, reduction="sum")
                stats[0] += plain.detach()
                stats[1] += (logits.detach().argmax(dim=1) == y).sum()
        pending = guard.signum if guard is not None else None
        stats[2], stats[3] = float(pending == signal.SIGINT), float(pending == signal.SIGTERM)
        loss, correct, sigints, sigterms = shard.all_sum(stats).tolist()  # the one host sync of a step
        if not math.isfinite(loss):
            raise TrainingError(
                f"the training loss became {loss} at step {loop.step + 1} (epoch {loop.epoch + 1}, batch "
                f"{loop.group + 1} of {epoch_groups}); stopped, the run directory was not written. "
                "Try a lower --lr, --clip-grad 1.0 or --precision fp32"
            )
        self.signal = signal.SIGINT if sigints else signal.SIGTERM if sigterms else None
        if cfg.clip_grad is not None:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_([p for _, p in self.named], cfg.clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        loop.step += 1
        loop.run_loss += loss
        loop.run_weight += len(indices)
        loop.run_correct += int(correct)
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
            metrics, _ = evaluate(
                self.model,
                self.val,
                device=self.device,
                precision=self.precision,
                batch_size=cfg.eval_batch_size,
                shard=self.shard,
            )
            row.update(val_loss=metrics["loss"], val_acc=metrics["accuracy"], val_f1=metrics["macro_f1"])
            score = list(_score(metrics, cfg.monitor))
            if loop.best_score is None or score > loop.best_score:
                loop.best_score, loop.best_row, loop.bad_evals = score, row, 0
                self.best_state = self.snapshot()
            else:
                loop.bad_evals += 1
                stop = cfg.early_stop is not None and loop.bad_evals >= cfg.early_stop
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
            "best": self.best_state,
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
        }

    def interrupt(self, saver: _Saver, signum: int) -> None:
        """Save a resumable checkpoint (rank 0) and raise :class:`Interrupted` on every rank."""
        saver.save(self.state, self.loop.step)
        where = f"saved a resumable checkpoint in {saver.path}" if saver.path else "nothing was saved"
        raise Interrupted(
            f"{signal_name(signum)} at step {self.loop.step} of {self.total}: {where}; "
            "continue with --resume",
            signum,
        )
