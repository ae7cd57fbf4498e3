"""One optimizer step over a group of texts: micro-batches, accumulation, DDP, scaler, clipping.

A group holds ``batch_size * grad_accum * world_size`` texts. Each rank runs its share (under DDP
``--batch-size`` is per device) in micro-batches of ``batch_size``; the loss of a micro-batch is
its summed cross-entropy divided by the whole group's size (or class weight), so the accumulated
gradient is that of one large batch, also for the smaller last group of an epoch. Each
micro-batch's loss is multiplied by the world size because DDP averages the ranks' gradients: the
sum over ranks is again the large batch's gradient. Gradients sync only on a rank's last
micro-batch (``no_sync`` before). The step's loss, accuracy and any pending signal are summed over
the ranks in one small collective, so every rank sees the same numbers and decides the same.

A micro-batch is a list of texts; the source gives all their rows (a text's windows with
``--long-texts``, :class:`gptclf.inference.longtexts.WindowedSource`) and the batch folds the
logits into one row per text (float32) before the loss, so a text counts once however it is read.
"""

from __future__ import annotations

import contextlib
import math
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from gptclf.device import Precision
from gptclf.distributed import Shard, wrap_ddp
from gptclf.errors import TrainingError
from gptclf.inference.batching import Source, to_device
from gptclf.model.classifier import Classifier
from gptclf.tasks.base import Task
from gptclf.tasks.single_label import SingleLabel
from gptclf.training.settings import TrainConfig


def stats_dtype(device: torch.device) -> torch.dtype:
    """The type of a step's summed loss and counts: float64, but float32 on MPS, which has no
    float64 (the counts stay exact in float32 up to 2**24 texts a step)."""
    return torch.float32 if device.type == "mps" else torch.float64


@dataclass(frozen=True)
class StepResult:
    """What one step saw, summed over the ranks.

    Attributes:
        loss: Summed plain (unweighted) cross-entropy of the group's texts: on the footing of the
            validation loss also when the objective is class-weighted.
        correct: Texts whose argmax was their label.
        signal: SIGINT or SIGTERM if some rank had one pending, else None.
    """

    loss: float
    correct: int
    signal: int | None


class Stepper:
    """The optimizer, the gradient scaler and the loss of a run; :meth:`step` takes one step.

    Attributes:
        named: The trainable parameters, by name.
        optimizer: AdamW over them (fused on CPU and CUDA: several times faster).
        scaler: The gradient scaler (enabled for fp16).
    """

    def __init__(
        self,
        model: Classifier,
        source: Source,
        labels: Sequence[Any],
        cfg: TrainConfig,
        device: torch.device,
        precision: Precision,
        shard: Shard,
        task: Task | None = None,
    ) -> None:
        self.source, self.cfg, self.device, self.precision, self.shard = source, cfg, device, precision, shard
        self.named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.forward = wrap_ddp(model, device, shard)  # DDP wraps the classifier itself
        fused = True if device.type in ("cpu", "cuda") else None
        self.optimizer = torch.optim.AdamW(
            [p for _, p in self.named], lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused
        )
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision.use_scaler)
        task = task or SingleLabel()
        self.task = task  # the loss, its weights and what counts as right
        self.weights = task.loss_weights(labels, len(model.classes), cfg.class_weights)
        self.labels = task.label_tensor(labels)
        self.weights_dev = None if self.weights is None else self.weights.to(device)
        self.stats_dtype = stats_dtype(device)

    def step(
        self, indices: list[int], lr: float, pending: int | None, where: Callable[[], str]
    ) -> StepResult:
        """One optimizer step over the group ``indices`` at learning rate ``lr``.

        Args:
            indices: The group's texts (the same on every rank).
            lr: This step's learning rate.
            pending: A signal this process has received, shared with the other ranks.
            where: Describes the step for the message of a non-finite loss.

        Raises:
            TrainingError: The loss is NaN or infinite; the weights are left as they were.
        """
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        stats = self._accumulate(indices)
        stats[2], stats[3] = float(pending == signal.SIGINT), float(pending == signal.SIGTERM)
        loss, correct, sigints, sigterms = self.shard.all_sum(stats).tolist()  # the one host sync
        if not math.isfinite(loss):
            raise TrainingError(
                f"the training loss became {loss} at {where()}; stopped, the run directory was not "
                "written. Try a lower --lr, --clip-grad 1.0 or --precision fp32"
            )
        if self.cfg.clip_grad is not None:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_([p for _, p in self.named], self.cfg.clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        found = signal.SIGINT if sigints else signal.SIGTERM if sigterms else None
        return StepResult(loss, int(correct), found)

    def _accumulate(self, indices: list[int]) -> torch.Tensor:
        """Forward and backward of this rank's micro-batches; [loss, correct, 0, 0] of this rank."""
        shard, size = self.shard, self.cfg.batch_size
        # The denominator is the whole group's (over every rank), so each micro-batch's gradient
        # is its share of one large batch's mean loss; DDP averages over ranks, hence world_size.
        group_labels = self.labels[indices]
        denom = self.task.loss_denominator(self.weights, group_labels)
        mine = shard.take(indices)
        micros = [mine[start : start + size] for start in range(0, len(mine), size)]
        # A last group smaller than the world leaves some ranks nothing; they still run one text
        # with a zero loss weight, because every rank must take part in the gradient sync.
        scale = shard.world_size / denom if micros else 0.0
        self.forward.train()
        stats = torch.zeros(4, dtype=self.stats_dtype, device=self.device)
        for n, micro in enumerate(micros or [indices[:1]]):
            batch = self.source.batch(micro, self.device)  # every row of the texts ``micro``
            y = to_device(self.labels[micro], self.device)
            # Only the last micro-batch's backward syncs: DDP then reduces the accumulated gradient.
            last = n == max(len(micros), 1) - 1
            sync = self.forward.no_sync() if shard.distributed and not last else contextlib.nullcontext()
            # TF32 (--precision tf32 or auto on CUDA) for the backward too, which runs outside autocast.
            with sync, self.precision.tf32_scope(self.device):
                with self.precision.autocast(self.device):
                    logits = self.forward(
                        batch.input_ids, batch.lengths, hidden=batch.hidden, start_block=batch.start_block
                    )
                logits = batch.per_text(logits)  # a text's windows' logits: aggregated, in float32
                ce = self.task.loss(logits, y, self.weights_dev)
                self.scaler.scale(ce * scale).backward()
            if micros:
                # Reported on the footing of the validation loss: plain, unweighted cross-entropy.
                plain = ce if self.weights is None else self.task.loss(logits, y, None)
                stats[0] += plain.detach()
                stats[1] += self.task.correct(logits.detach(), y)
        return stats
