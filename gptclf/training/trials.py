"""One trial of ``gptclf tune``: train with a trial's settings on the train split, score on validation.

A trial is finetune's training without its run: the same classifier (built from one copy of the
base weights kept in memory), the same loop (:func:`gptclf.training.loop.fit`) and the same cached
frozen trunk (:class:`~gptclf.inference.cache_pool.CachePool`, one cache per cut for every trial),
but no checkpoints, no test split and nothing written. The texts are tokenised once per way of
cutting them (:func:`gptclf.training.run.input_key`). Each evaluation is handed to ``on_row``
(the study's pruning, the deadline, a signal), which may end the trial by raising.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from gptclf.data.long_texts import LongCounts
from gptclf.data.prepared import PreparedData
from gptclf.distributed import Shard
from gptclf.errors import BadInputError
from gptclf.inference.batching import LabelledSet, Source
from gptclf.inference.cache_pool import CachePool
from gptclf.inference.longtexts import Windowed, WindowedSource, WindowMap
from gptclf.inference.splits import encode_splits
from gptclf.model.classifier import Classifier, apply_scope, replace_head
from gptclf.model.gpt import GPT
from gptclf.model.weights import load_weights
from gptclf.progress import TrainProgress
from gptclf.tasks.base import Task
from gptclf.training.checkpoints import InterruptGuard
from gptclf.training.context import RunContext
from gptclf.training.loop import History, fit
from gptclf.training.plan import RunPlan, make_plan
from gptclf.training.run import input_key, split_mode, tell_long_texts
from gptclf.training.settings import FinetuneSettings

#: The splits a trial reads: the search never looks at the test split.
TRIAL_SPLITS = ("train", "validation")


@dataclass
class _Inputs:
    """The train and validation splits as one way of cutting texts makes them."""

    ids: dict[str, Any]
    labels: dict[str, list[Any]]
    pad_length: int | None
    maps: dict[str, WindowMap]


class TrialRunner:
    """Runs trials over shared inputs: the prepared splits, the base weights, the caches.

    Args:
        prepared: The prepared folder's data (its test split is never read here).
        classes: The run's classes, in order.
        task: The prepared data's task.
        enc: The tokenizer.
        weights_path: The preset's downloaded weights for ``--weights pretrained``.
        pool: The caches shared by the trials (and the final run).
        guard: The study's signal handling.
        out: The run directory being made (for messages).
        work: Its work folder.
    """

    def __init__(
        self,
        prepared: PreparedData,
        classes: list[str],
        task: Task,
        enc: Any,
        weights_path: Path | None,
        pool: CachePool,
        guard: InterruptGuard,
        out: Path,
        work: Path,
    ) -> None:
        empty = prepared.splits["test"].iloc[0:0]  # the search never looks at the test split
        self.splits = {**{n: prepared.splits[n] for n in TRIAL_SPLITS}, "test": empty}
        self.classes, self.task, self.enc, self.weights_path = classes, task, enc, weights_path
        self.pool, self.guard, self.out, self.work = pool, guard, out, work
        self._inputs: dict[tuple[Any, ...], _Inputs] = {}
        self._base: dict[tuple[Any, ...], GPT] = {}

    def context(self, settings: FinetuneSettings, progress: TrainProgress) -> RunContext:
        """A run context for ``settings`` (checked: a bad combination is a BadInputError)."""
        return RunContext(
            settings, make_plan(settings), self.out, self.work, None, self.guard, progress, Shard()
        )

    def run(
        self, settings: FinetuneSettings, on_row: Callable[[dict[str, Any]], None]
    ) -> tuple[History, dict[str, torch.Tensor]]:
        """Train one trial: its history and its kept (best by ``settings.train.monitor``) trainable
        weights, on the CPU.

        Raises:
            BadInputError: Settings that cannot go together (e.g. more blocks than the model has).
            TrainingError: The loss became NaN or infinite.
            Whatever ``on_row`` raises to end the trial.
        """
        hooks = _Hooks(on_row)
        ctx = self.context(settings, hooks)
        inputs = self.inputs(ctx)
        model = self.model(settings, ctx.plan)
        model.to(ctx.plan.device)
        sources = self.sources(ctx, model, inputs)
        sets = {
            name: LabelledSet(sources[name], inputs.labels[name], self.task, split_mode(inputs.maps, name))
            for name in TRIAL_SPLITS
        }
        p = ctx.plan
        history = fit(
            model, sets["train"], sets["validation"], p.train, device=p.device, precision=p.precision,
            seed=settings.seed, progress=hooks, shard=ctx.shard,
        )  # fmt: skip
        state = {n: t.detach().to("cpu", copy=True) for n, t in model.named_parameters() if t.requires_grad}
        return history, state

    def inputs(self, ctx: RunContext) -> _Inputs:
        """The token ids and labels of the trial splits for ``ctx``'s way of cutting texts (made once)."""
        key = input_key(ctx.settings)
        if key not in self._inputs:
            windowed: dict[str, Windowed] = {}
            counts: dict[str, LongCounts] = {}
            p = ctx.plan
            ids, labels, max_length, pad_length = encode_splits(
                self.splits, self.classes, self.enc, p.max_length, p.train.pad_to, self.task, p.long_texts,
                windowed, None, counts,
            )  # fmt: skip
            counts.pop("test", None)
            maps = tell_long_texts(ctx, counts, windowed, max_length)
            self._inputs[key] = _Inputs(
                {n: ids[n] for n in TRIAL_SPLITS}, {n: labels[n] for n in TRIAL_SPLITS}, pad_length, maps
            )
        return self._inputs[key]

    def model(self, settings: FinetuneSettings, plan: RunPlan) -> Classifier:
        """The classifier of ``settings``, as :func:`gptclf.training.run.build_classifier` makes it,
        from a copy of the base weights loaded once."""
        key = (settings.weights, settings.model, settings.seed)
        if key not in self._base:
            self._base[key] = load_weights(
                settings.weights,
                plan.config,
                plan.model_name,
                seed=settings.seed,
                pretrained=self.weights_path,
            )
        gpt = copy.deepcopy(self._base[key])
        replace_head(gpt, len(self.classes), seed=settings.seed)
        apply_scope(gpt, plan.scope, seed=settings.seed)
        return Classifier(gpt, self.classes, settings.pooling)

    def sources(self, ctx: RunContext, model: Classifier, inputs: _Inputs) -> dict[str, Source]:
        """The trial splits' sources from the pool (a windowed split read one row per text)."""
        p = ctx.plan
        rows = self.pool.sources(
            model, inputs.ids, scope=p.scope, use_cache=ctx.settings.cache, device=p.device,
            precision=p.precision, batch_size=p.train.eval_batch_size, pad_to=inputs.pad_length,
            windows=inputs.maps, inputs=input_key(ctx.settings),
        )  # fmt: skip
        return {n: WindowedSource(s, inputs.maps[n]) if n in inputs.maps else s for n, s in rows.items()}

    def close(self) -> None:
        """Drop the base weights (the pool is its owner's to close)."""
        self._base.clear()
        self._inputs.clear()


class _Hooks(TrainProgress):
    """The training progress of a trial: silent, but each evaluation goes to ``on_row``."""

    def __init__(self, on_row: Callable[[dict[str, Any]], None]) -> None:
        self.on_row = on_row

    def evaluated(self, row: dict[str, Any]) -> None:
        self.on_row(row)


def no_validation(prepared: PreparedData, data_dir: Path) -> BadInputError | None:
    """The error for a prepared folder the search cannot choose on (no validation texts)."""
    validation: pd.DataFrame = prepared.splits["validation"]
    if len(validation):
        return None
    return BadInputError(
        f"gptclf tune chooses on the validation split, and {data_dir} has none: prepare the data "
        "with a validation fraction (e.g. --split 0.7,0.1,0.2)"
    )
