"""The finetune component: a prepared folder, the tokenizer files and the weights -> a trained run.

:func:`train_run` builds the classifier from ``--weights``, tokenises the splits, caches the frozen
trunk where that is exact, fits, evaluates the kept weights on the test and validation splits
(through the same inference loop as ``gptclf evaluate``, so the numbers are the same) and writes the
run's files into the work folder it is given. It reads only what is on disk and fetches nothing:
the ``gptclf finetune`` verb (:func:`gptclf.training.finetune.finetune`) downloads what is missing, prepares
the SMS set when no ``--data`` is given, and swaps the finished work folder in.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gptclf.data.long_texts import INFO_KEY, LongCounts, describe_counts
from gptclf.data.prepared import prepared_fingerprint, read_prepared
from gptclf.errors import BadInputError, DiskFullError, Interrupted, write_error
from gptclf.inference.batching import LabelledSet, Source
from gptclf.inference.cache import FeatureCache, make_sources
from gptclf.inference.cache_pool import CachePool
from gptclf.inference.longtexts import Windowed, WindowedSource, WindowMap
from gptclf.inference.loop import batched_logits
from gptclf.inference.plots import SKIPPED_NOTE, write_run_plots
from gptclf.inference.splits import encode_splits
from gptclf.model.classifier import Classifier, apply_scope, replace_head
from gptclf.model.tokenizer import load_tokenizer
from gptclf.model.weights import load_weights
from gptclf.option_groups import TargetOptions
from gptclf.progress import TrainProgress
from gptclf.rundir import CURVES_FILE, build_run_info, save_run, write_curves, write_history, write_metrics
from gptclf.rundir.layout import CHECKPOINT_NAME
from gptclf.tasks.decisions import check_target
from gptclf.tasks.kinds import task_of
from gptclf.training.checkpoints import check_same_data, with_resume_hint
from gptclf.training.context import FinetuneResult, RunContext
from gptclf.training.loop import History, fit
from gptclf.training.plan import RunPlan
from gptclf.training.settings import FinetuneSettings


def train_run(
    ctx: RunContext,
    data_dir: Path,
    tokenizer_dir: Path,
    weights_path: Path | None = None,
    *,
    pool: CachePool | None = None,
    info_extra: dict[str, Any] | None = None,
    kept: tuple[History, dict[str, Any]] | None = None,
) -> FinetuneResult:
    """Train on the prepared folder ``data_dir`` and write the run's files into ``ctx.work``.

    ``tokenizer_dir`` holds GPT-2's tokenizer files and ``weights_path`` the preset's downloaded
    weights for ``--weights pretrained``: what the recipe fetched; nothing is fetched here.
    ``pool`` (``gptclf tune``) supplies the caches built before and keeps the ones built here (its
    owner closes them); ``info_extra`` is added to run.json; ``kept`` (the history and trainable
    weights of a tune trial with these very settings) takes the place of training.

    Raises:
        BadInputError: Data that do not fit the settings, or not enough disk space (nothing trained).
        TrainingError: The loss became NaN or infinite.
        Interrupted: A signal (a checkpoint is kept from the first step on).
        DiskFullError: The disk filled while writing (the checkpoint is kept).
    """
    t_start = time.monotonic()
    prepared, model, counts = _inputs(ctx, data_dir, weights_path)
    task = task_of(prepared.meta)  # the prepared folder's labels say which task the run is
    enc = load_tokenizer(tokenizer_dir)
    t0 = time.monotonic()
    windowed: dict[str, Windowed] = {}
    long_counts: dict[str, LongCounts] = {}
    ids, labels, max_length, pad_length = encode_splits(
        prepared.splits, model.classes, enc, ctx.plan.max_length, ctx.plan.train.pad_to,
        task, ctx.plan.long_texts, windowed, ctx.progress, long_counts,
    )  # fmt: skip
    timings = {"tokenise": time.monotonic() - t0}
    prepared.splits.clear()  # the texts are token ids now: their frames would stay in memory all run
    maps = tell_long_texts(ctx, long_counts, windowed, max_length)
    t0 = time.monotonic()
    rows = _sources(ctx, model, ids, pad_length, maps, pool)
    timings["cache"] = time.monotonic() - t0
    cache = _cache_info(rows)
    # A split read in windows is a source of one row per text over its windows' rows.
    sources = {name: WindowedSource(s, maps[name]) if name in maps else s for name, s in rows.items()}
    if cache["blocks"]:
        ctx.progress.message(
            f"cached the hidden states after block {cache['blocks']} of {ctx.plan.config.n_layer} "
            f"({cache['bytes'] / 2**20:,.1f} MiB, {cache['location']}) in {timings['cache']:.1f} s"
        )
    sizes = {name: len(v) for name, v in labels.items()}
    # The SMS set prepared in the work folder is <out>/data once the run is swapped in.
    final_data = ctx.out / "data" if ctx.settings.data is None else data_dir
    data_info = {"dir": str(final_data), "fingerprint": counts["fingerprint"], "sizes": sizes}
    try:
        sets = {name: LabelledSet(sources[name], labels[name], task, split_mode(maps, name)) for name in ids}
        if kept is None:
            history = _fit(model, sets, ctx, data_info)
        else:  # trained already (a tune trial of these settings): its weights and history
            history = _restore_kept(model, kept)
        timings["train"] = history.train_seconds
        t0 = time.monotonic()
        logits = _final_logits(model, sets, ctx)
        target = TargetOptions(ctx.settings.target, ctx.settings.positive)
        finished = task.finish(logits, {n: sets[n].labels for n in logits}, model.classes, target)
        for line in finished.lines:  # the temperature, thresholds or decision chosen on validation
            ctx.progress.message(line)
        timings["evaluate"] = time.monotonic() - t0
    finally:
        for source in sources.values() if pool is None else ():  # a pool's sources are its own
            source.close()  # a windowed split's closes the rows it reads
    timings["total"] = time.monotonic() - t_start
    result = FinetuneResult(
        ctx.out, model, model.classes, history, finished.scores["test"], finished.scores["validation"],
        counts["trainable"], counts["total"], cache, timings, finished.calibration,
        logits, {name: sets[name].labels for name in logits}, finished.choices, finished.unmet, task,
    )  # fmt: skip
    if ctx.shard.is_main:
        data = {**data_info, "prepared": prepared.meta.get("source")}
        data.update(task.data_fields(prepared.meta))  # what the task reads back later (a label separator)
        info = {**_run_info(ctx, result, max_length, pad_length, data), **task.run_fields(prepared.meta)}
        info.update(info_extra or {})
        try:
            _write_run(ctx.work, model, info, tokenizer_dir, result, ctx.progress)
        except OSError as exc:
            raise write_error(exc, ctx.out, counts["needed"]) from None
    return result


def _inputs(
    ctx: RunContext, data_dir: Path, weights_path: Path | None
) -> tuple[Any, Classifier, dict[str, Any]]:
    """The prepared data (checked against a resumed run's), and the classifier on its device."""
    prepared = read_prepared(data_dir)
    fingerprint = prepared_fingerprint(data_dir)
    check_same_data(ctx.resume_state, fingerprint, data_dir)
    classes = run_classes(ctx.settings.classes, prepared.classes, data_dir)
    s = ctx.settings
    if problems := task_of(prepared.meta).settings_problems(
        target=s.target, positive=s.positive, monitor=ctx.plan.train.monitor
    ):
        raise BadInputError("; ".join(problems))
    # A bad --target or --positive is refused before any training time is spent.
    target = check_target(ctx.settings.target, ctx.settings.positive, classes)
    if target is not None and prepared.splits["validation"].empty:
        raise BadInputError(
            f"--target {target} is chosen on the validation split, and {data_dir} has none: "
            "prepare the data with a validation fraction, or leave --target out"
        )
    model, trainable, total = build_classifier(ctx.settings, ctx.plan, classes, weights_path)
    needed = bytes_needed(total, trainable)
    if ctx.shard.is_main:
        check_space(ctx.work, ctx.out, needed)
    ctx.progress.message(
        f"model {ctx.plan.model_name} ({ctx.settings.weights} weights), trainable scope "
        f"{ctx.settings.trainable}: {trainable:,} of {total:,} parameters train"
    )
    model.to(ctx.plan.device)
    counts = {"fingerprint": fingerprint, "trainable": trainable, "total": total, "needed": needed}
    return prepared, model, counts


def _sources(
    ctx: RunContext,
    model: Classifier,
    ids: dict[str, list[list[int]]],
    pad_length: int | None,
    maps: Mapping[str, WindowMap | None] | None = None,
    pool: CachePool | None = None,
) -> dict[str, Source]:
    """Each split's model rows: the frozen-trunk cache where it is exact, token batches otherwise
    (``maps``: which texts a split's rows, its windows, are of, so that the build's progress counts
    texts; ``pool``: caches shared with other models of the same cut)."""
    p = ctx.plan
    if pool is not None:
        return pool.sources(
            model, ids, scope=p.scope, use_cache=ctx.settings.cache, device=p.device, precision=p.precision,
            batch_size=p.train.eval_batch_size, pad_to=pad_length, windows=maps, note=ctx.progress.message,
            progress=ctx.progress, inputs=input_key(ctx.settings),
        )  # fmt: skip
    return make_sources(
        model,
        ids,
        scope=p.scope,
        use_cache=ctx.settings.cache,
        device=p.device,
        precision=p.precision,
        cache_memory=p.cache_memory,
        ram_fallback=p.cache_fallback,
        batch_size=p.train.eval_batch_size,
        pad_to=pad_length,
        shard=ctx.shard,
        note=ctx.progress.message,
        progress=ctx.progress,
        windows=maps,
    )


def _final_logits(model: Classifier, sets: dict[str, LabelledSet], ctx: RunContext) -> dict[str, np.ndarray]:
    """The raw logits of the kept weights on the test and validation splits (those with texts); a
    signal stops this (training is saved). The task scores them and chooses on validation."""
    checkpoint = ctx.work / CHECKPOINT_NAME
    saved = (
        f"training has finished and is saved in {checkpoint}"
        if checkpoint.is_file()  # not where tune's run keeps a trial's weights: those live in memory
        else "stopped before the kept weights were evaluated"
    ) + f"; {_resume_hint(ctx.out)}"
    logits: dict[str, np.ndarray] = {}
    for name in ("test", "validation"):
        if len(sets[name]):
            logits[name] = batched_logits(
                model,
                sets[name].source,
                device=ctx.plan.device,
                precision=ctx.plan.precision,
                batch_size=ctx.plan.train.eval_batch_size,
                shard=ctx.shard,
                between_batches=lambda: ctx.guard.check(saved),
                progress=ctx.progress,
                label=f"evaluating the kept weights on the {name} split",
            ).numpy()
    return logits


def _run_info(
    ctx: RunContext, result: FinetuneResult, max_length: int, pad_length: int | None, data: dict[str, Any]
) -> dict[str, Any]:
    """The content of run.json."""
    p = ctx.plan
    train_info = {
        **p.train.to_dict(),
        "pad_length": pad_length,
        "device": str(p.device),
        "precision": p.precision.name,
        "tf32": p.precision.tf32,
        "cache": result.cache,
    }
    info = build_run_info(
        model_name=p.model_name,
        config=p.config,
        classes=result.classes,
        max_length=max_length,
        pooling=ctx.settings.pooling,
        trainable=p.scope.to_dict(),
        trainable_params=result.trainable_params,
        train=train_info,
        seed=ctx.settings.seed,
        weights=ctx.settings.weights,
        data=data,
        calibration=result.calibration.to_dict() if result.calibration else None,
    )
    info[INFO_KEY] = p.long_texts.fitted(max_length).to_dict()  # --pad-to longest-train lowers the length
    return {**info, **result.choices}  # the decision / abstain level chosen on validation


def tell_long_texts(
    ctx: RunContext, counts: dict[str, LongCounts], windowed: dict[str, Windowed], max_length: int
) -> dict[str, WindowMap]:
    """Say per split how many texts were cut or windowed; the window maps of the splits (none for
    ``truncate``, whose rows are the texts)."""
    long = ctx.plan.long_texts.fitted(max_length)
    for name, c in counts.items():
        if c.long:
            ctx.progress.message(f"{name} split: " + describe_counts(c, max_length, long))
    if long.mode == "truncate":
        return {}
    return {name: w.map for name, w in windowed.items()}


def input_key(settings: FinetuneSettings) -> tuple[Any, ...]:
    """The options that decide a run's model rows (how texts are cut, windowed and padded): runs
    that agree on them read the same token ids, and can share a frozen-trunk cache."""
    s = settings
    return (s.max_length, s.train.pad_to, s.long_texts, s.head_tokens, s.stride)


def split_mode(maps: Mapping[str, WindowMap], name: str) -> str | None:
    """The ``--long-texts`` mode split ``name`` is read with, for the data signature of a resume
    (None for ``truncate``, as in the runs from before the windows)."""
    return maps[name].mode if name in maps else None


def _fit(model: Classifier, sets: dict[str, LabelledSet], ctx: RunContext, data: dict[str, Any]) -> History:
    """:func:`gptclf.training.loop.fit` with checkpoints in the work folder and a hint that names ``out``."""
    settings, p = ctx.settings, ctx.plan
    given = data["dir"] if settings.data is not None else None  # None: the SMS set, made here
    extra = {"settings": {**settings.to_dict(), "data": given, "out": str(ctx.out)}, "data": data}
    try:
        return fit(
            model,
            sets["train"],
            sets["validation"],
            p.train,
            device=p.device,
            precision=p.precision,
            seed=settings.seed,
            checkpoint=ctx.work / CHECKPOINT_NAME,
            resume=ctx.resume_state,
            extra=extra,
            progress=ctx.progress,
            shard=ctx.shard,
            guard=ctx.guard,
        )
    except Interrupted as exc:
        raise Interrupted(with_resume_hint(str(exc), _resume_hint(ctx.out)), exc.exit_code - 128) from None


def _restore_kept(model: Classifier, kept: tuple[History, dict[str, Any]]) -> History:
    """Put a finished trial's trainable weights into ``model`` (built with the same settings)."""
    history, state = kept
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.requires_grad:
                param.copy_(state[name])
    return history


def _resume_hint(out: Path) -> str:
    """What to run to continue the interrupted run of ``out``."""
    return f"continue with `gptclf finetune --out {out} --resume`"


def bytes_needed(total_params: int, trainable_params: int) -> int:
    """Rough disk space a run needs: fp32 weights, and two checkpoints (the last one stays until
    its successor is complete) of the trainable weights, the best ones and AdamW's two moments,
    plus room for the small files."""
    return 4 * total_params + 2 * 4 * 4 * trainable_params + (8 << 20)


def check_space(work: Path, out: Path, needed: int) -> None:
    """Refuse to start when the run cannot fit on the disk (before any training time is spent).

    What the work folder holds already (a resumed run's checkpoint, which its successor replaces)
    is part of ``needed``, not an addition to it.

    Raises:
        DiskFullError: Less free space than the run needs, both named in the message.
    """
    free = shutil.disk_usage(work).free
    present = sum(p.stat().st_size for p in work.rglob("*") if p.is_file() and not p.is_symlink())
    needed = max(needed - present, 0)
    if free < needed:  # a full disk, as every verb reports one: exit 1
        raise DiskFullError(
            f"not enough space for the run in {out.parent}: it needs about {needed / 2**20:,.0f} MiB "
            f"(weights and checkpoint), {free / 2**20:,.0f} MiB are free; free some space or choose "
            "another --out"
        )


def build_classifier(
    settings: FinetuneSettings, p: RunPlan, classes: list[str], weights_path: Path | None = None
) -> tuple[Classifier, int, int]:
    """GPT-2 from ``--weights`` (``weights_path``: the downloaded preset's file, for
    ``pretrained``) with a class head and the trainable scope applied (on the CPU).

    Returns:
        The classifier, its trainable parameter count and its total parameter count.
    """
    gpt = load_weights(settings.weights, p.config, p.model_name, seed=settings.seed, pretrained=weights_path)
    replace_head(gpt, len(classes), seed=settings.seed)
    trainable = apply_scope(gpt, p.scope, seed=settings.seed)
    total = sum(t.numel() for t in gpt.parameters())
    return Classifier(gpt, classes, settings.pooling), trainable, total


def run_classes(given: list[str] | None, prepared: list[str], data_dir: Path) -> list[str]:
    """The run's classes: ``--classes`` (any order of the prepared ones), else the prepared order."""
    if not given:
        return list(prepared)
    if sorted(given) != sorted(prepared) or len(set(given)) != len(given):
        raise BadInputError(
            f"--classes {','.join(given)} does not match the classes of {data_dir} ({','.join(prepared)}): "
            "give the same names (in any order) or prepare the data again"
        )
    return list(given)


def _cache_info(sources: dict[str, Source]) -> dict[str, Any]:
    caches = [s for s in sources.values() if isinstance(s, FeatureCache)]
    if not caches:
        return {"blocks": 0, "location": "none", "bytes": 0}
    locations = sorted({c.location for c in caches})
    return {
        "blocks": caches[0].start_block,
        "location": "+".join(locations),
        "bytes": sum(c.nbytes for c in caches),
    }


def _write_run(
    folder: Path,
    model: Classifier,
    info: dict[str, Any],
    tokenizer_dir: Path,
    result: FinetuneResult,
    progress: TrainProgress,
) -> None:
    """Write the run's files into the work folder; its checkpoint stays until the swap is done, so a
    kill before the swap still leaves a run to resume."""
    save_run(folder, model, info, tokenizer_dir)
    history = result.history
    write_history(folder, history.rows)
    metrics = {
        "test": result.test,
        "validation": result.validation,
        "calibration": info.get("calibration"),
        "best": history.best,
        "train": {k: v for k, v in history.to_dict().items() if k != "rows"},
        "trainable_params": result.trainable_params,
        "cache": result.cache,
        "timings": result.timings,
    }
    write_metrics(folder, metrics)
    epochs = info["train"]["epochs"]
    # The test split's plots read the task's probabilities: a task without an error report has none.
    test_logits = result.logits.get("test") if result.task.no_error_report is None else None
    plots = write_run_plots(folder, test_logits, result.labels.get("test"), result.classes, info)
    if not write_curves(folder, history.rows, history.total_steps / epochs):
        (folder / CURVES_FILE).unlink(missing_ok=True)  # never leave an older picture behind
        if plots is None:  # one line for every picture: the reason is the same
            progress.message(f"{CURVES_FILE} {SKIPPED_NOTE}, and so were the test split's plots")
