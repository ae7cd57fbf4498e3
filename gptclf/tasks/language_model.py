"""Next-token language modelling behind the task seam: what ``gptclf adapt`` trains.

The model is :class:`gptclf.model.lm.NextToken`, whose row per block of tokens holds the block's
summed next-token cross-entropy and its tokens predicted right. A block's label is the number of
tokens it predicts (its length less one). The loss of a group is the mean over its blocks of each
block's mean token cross-entropy; training blocks all have the same length, so that is the mean
token cross-entropy of the group, the quantity perplexity is the exponential of. The metrics of a
split are its mean token cross-entropy (``loss``), ``perplexity`` and next-token ``accuracy``.

The training loop, the optimizer step and the inference loop run this task unchanged: they see
rows, labels and sums only. What a classification task does with a finished run (decisions,
records, evaluate's tables, exports) has no meaning here and is refused with one line.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, NoReturn

import pandas as pd
import torch

from gptclf.errors import BadInputError
from gptclf.option_groups import DecisionOptions, TargetOptions
from gptclf.tasks.base import Decider, Finished, LabelledFile, ReportTable, Task


def _no(what: str) -> NoReturn:
    raise BadInputError(f"a language model (gptclf adapt) has no {what}: finetune a classifier on it")


class LanguageModel(Task):
    """Next-token prediction over packed blocks of tokens (see the module notes)."""

    key: ClassVar[str] = "language-model"
    name: ClassVar[str] = "language model"
    problem_type: ClassVar[str] = "causal_lm"
    f1_key: ClassVar[str] = "accuracy"
    no_error_report: ClassVar[str | None] = "a language model has no classes"

    # --- labels -------------------------------------------------------------------------------
    def _encode(self, frame: pd.DataFrame, classes: Sequence[str]) -> list[Any]:
        """Refused: blocks have no class labels."""
        _no("class labels")

    def label_tensor(self, labels: Sequence[Any]) -> torch.Tensor:
        """The tokens each block predicts, as float64 (they divide the blocks' sums)."""
        return torch.as_tensor(list(labels), dtype=torch.float64)

    def read_labelled_file(
        self, file: LabelledFile, info: Mapping[str, Any]
    ) -> tuple[pd.DataFrame, dict[str, int]]:
        """Refused: there are no labelled files."""
        _no("labelled files")

    # --- training -----------------------------------------------------------------------------
    def loss_weights(self, labels: Sequence[Any], num_classes: int, mode: str) -> torch.Tensor | None:
        """None: tokens are not weighted."""
        return None

    def loss(self, logits: torch.Tensor, y: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
        """Each block's mean token cross-entropy, summed over the blocks (float32)."""
        return (logits[:, 0] / y.to(logits.dtype).clamp(min=1)).sum()

    def loss_denominator(self, weights: torch.Tensor | None, y: torch.Tensor) -> float:
        """The group's blocks."""
        return float(len(y))

    def correct(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Zero: the step counts whole texts right, and a block is never right as a whole (the
        next-token accuracy is a validation metric)."""
        return torch.zeros((), dtype=logits.dtype, device=logits.device)

    def metrics(self, logits: Any, labels: Sequence[Any], classes: Sequence[str]) -> dict[str, Any]:
        """Mean token cross-entropy (``loss``), ``perplexity``, next-token ``accuracy``, over
        ``n`` blocks and ``tokens`` predicted tokens; ``macro_f1`` is None."""
        sums = torch.as_tensor(logits, dtype=torch.float64).reshape(-1, 2).sum(0)
        tokens = float(sum(labels))
        loss = float(sums[0]) / tokens if tokens else math.nan
        return {
            "loss": loss,
            "perplexity": perplexity(loss),
            "accuracy": float(sums[1]) / tokens if tokens else math.nan,
            "macro_f1": None,
            "n": len(labels),
            "tokens": int(tokens),
        }

    def history_extra(self, metrics: Mapping[str, Any]) -> dict[str, Any]:
        """The validation perplexity."""
        return {"val_ppl": metrics["perplexity"]}

    def settings_problems(self, *, target: str | None, positive: str | None, monitor: str) -> list[str]:
        """Only the validation loss can choose the kept weights."""
        return (
            []
            if monitor == "val_loss"
            else [f"--monitor {monitor}: a language model keeps the lowest val_loss"]
        )

    def finish(
        self, logits: dict[str, Any], labels: dict[str, Any], classes: Sequence[str], target: TargetOptions
    ) -> Finished:
        """Nothing is chosen; the scores are the splits' metrics."""
        return Finished({name: self.metrics(logits[name], labels[name], classes) for name in logits})

    def run_fields(self, data_meta: Mapping[str, Any]) -> dict[str, Any]:
        """The task's key."""
        return {"task": self.key}

    # --- using a run --------------------------------------------------------------------------
    def decider(
        self, info: Mapping[str, Any], decide: DecisionOptions | None = None, verb: str = "predict"
    ) -> Decider:
        """Refused: there are no labels to predict."""
        _no("labels to predict")

    def report_tables(self, metrics: Mapping[str, Any]) -> list[ReportTable]:
        """Refused: there is no classification report."""
        _no("classification report")


def perplexity(loss: float) -> float:
    """exp(mean token cross-entropy); infinite where that overflows, NaN for NaN."""
    try:
        return math.exp(loss)
    except OverflowError:
        return math.inf
