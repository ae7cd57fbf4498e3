"""The ``finetune`` verb: settings -> a run directory, with everything in between.

Resolve and check every setting first (all problems in one message, nothing written); get the data
(a prepared folder, or the SMS Spam Collection downloaded and prepared with the book's settings
into ``<out>/data``), the tokenizer and the weights (downloaded when missing); build the classifier;
tokenise; cache the frozen trunk where that is exact; fit; evaluate on the test split; write the run
directory. The command line only parses options and prints what :func:`finetune` returns.
"""

from __future__ import annotations

import importlib.util
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gptclf.batching import Source, encode_texts
from gptclf.checkpoint import build_run_info, save_run
from gptclf.classifier import Classifier, apply_scope, replace_head
from gptclf.data import label_ids, prepared_fingerprint, read_prepared
from gptclf.download import Progress, ensure_tokenizer, ensure_weights
from gptclf.errors import BadInputError, Interrupted, write_error
from gptclf.features import FeatureCache, make_sources
from gptclf.fileio import atomic_write_json
from gptclf.prepare import prepare
from gptclf.progress import TrainProgress
from gptclf.report import CURVES_FILE, METRICS_FILE, write_curves, write_history
from gptclf.resume import CHECKPOINT_NAME, InterruptGuard
from gptclf.runconfig import FinetuneSettings
from gptclf.rundir import RunBuild, check_out, work_dir
from gptclf.runplan import RunPlan, make_plan, out_dir, resumed_settings
from gptclf.tokenizer import load_tokenizer
from gptclf.train import History, LabelledSet, Shard, evaluate, fit
from gptclf.weights import load_weights

#: The book's preparation of the SMS set (chapter 6): balanced by undersampling, a plain shuffled
#: 70/10/20 split, seed 123.
BOOK_SMS = {
    "dataset": "sms-spam",
    "balance": "undersample",
    "split": "0.7,0.1,0.2",
    "stratify": False,
    "seed": 123,
}


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
        }


def finetune(
    settings: FinetuneSettings,
    *,
    progress: TrainProgress | None = None,
    download_progress: Progress | None = None,
    shard: Shard = Shard(),  # frozen, so one shared default is safe
) -> FinetuneResult:
    """Run ``gptclf finetune``: train a classifier and write its run directory.

    The run is built in a work folder beside ``--out`` (:mod:`gptclf.rundir`) and swapped in whole
    at the end: ``--out`` is at every moment absent, the old run or the new one. A signal before
    training stops at once and writes nothing; from the first step on, it saves a checkpoint (in
    training), stops the test evaluation (training is saved), or lets the write finish, then
    raises :class:`Interrupted`.

    Args:
        settings: The merged options (see :func:`gptclf.runconfig.build_settings`).
        progress: Receives training progress and messages (default: silent).
        download_progress: A :class:`gptclf.download.Progress` for downloads (default: silent).
        shard: This process's place in a data-parallel job; only rank 0 writes.

    Returns:
        The result; the run directory holds the same.

    Raises:
        BadInputError: Bad settings or data (nothing written), exit code 2.
        DownloadError: Something missing could not be downloaded.
        TrainingError: The loss became NaN or infinite (nothing written).
        Interrupted: Ctrl-C or SIGTERM: a checkpoint was saved for ``--resume``.
        DiskFullError: The disk filled while writing (the checkpoint is kept for ``--resume``).
    """
    progress = progress or TrainProgress()
    # Rank 0's folder: the others could name another runs/<timestamp> a second later.
    out = shard.from_main(out_dir(settings))
    with InterruptGuard() as guard:
        resume_state = None
        if settings.resume:
            settings, resume_state = resumed_settings(out, settings)
        else:
            check_out(out, force=settings.force, resume=False)
        plan = make_plan(settings)
        build = None
        if shard.is_main:
            build = RunBuild.open(out, force=settings.force, resume=settings.resume, note=progress.message)
            if settings.resume:
                guard.before = f"the interrupted run in {build.path} is kept for --resume"
        shard.barrier()  # rank 0 has made the work folder before the others look into it
        try:
            result = _finetune(settings, plan, out, resume_state, guard, progress, download_progress, shard)
            if build is not None:
                build.commit()
        except BaseException as exc:
            if build is not None:
                build.close(exc)
            raise
        if build is not None:
            build.close()
        guard.check(f"stopped after the run was written completely to {out}")
        return result


def _finetune(
    settings: FinetuneSettings,
    p: RunPlan,
    out: Path,
    resume_state: dict[str, Any] | None,
    guard: InterruptGuard,
    progress: TrainProgress,
    download_progress: Progress | None,
    shard: Shard,
) -> FinetuneResult:
    """:func:`finetune` inside its work folder: everything but the final swap."""
    t_start = time.monotonic()
    work = work_dir(out)
    # Downloads first: they fill the cache, and a failed one leaves the run directory untouched.
    with shard.main_first():
        tokenizer_dir = ensure_tokenizer(p.home, settings.mirror, download_progress)
        if settings.weights == "pretrained":
            ensure_weights(p.model_name, p.home, settings.mirror, download_progress)
    enc = load_tokenizer(tokenizer_dir)
    data_dir = _data_dir(settings, p, work, download_progress, shard)
    prepared = read_prepared(data_dir)
    fingerprint = prepared_fingerprint(data_dir)
    _check_same_data(resume_state, fingerprint, data_dir)
    classes = _classes(settings.classes, prepared.classes, data_dir)
    model, trainable_params, total_params = build_classifier(settings, p, classes)
    needed = _bytes_needed(total_params, trainable_params)
    if shard.is_main:
        _check_space(work, out, needed)
    progress.message(
        f"model {p.model_name} ({settings.weights} weights), trainable scope {settings.trainable}: "
        f"{trainable_params:,} of {total_params:,} parameters train"
    )
    model.to(p.device)

    t0 = time.monotonic()
    ids, labels, max_length, pad_length = _tokenise(
        prepared.splits, classes, enc, p.max_length, p.train.pad_to
    )
    timings = {"tokenise": time.monotonic() - t0}
    t0 = time.monotonic()
    sources = make_sources(
        model,
        ids,
        scope=p.scope,
        use_cache=settings.cache,
        device=p.device,
        precision=p.precision,
        cache_memory=p.cache_memory,
        batch_size=p.train.eval_batch_size,
        pad_to=pad_length,
        shard=shard,
        note=progress.message,
        progress=progress,
    )
    timings["cache"] = time.monotonic() - t0
    cache = _cache_info(sources)
    if cache["blocks"]:
        progress.message(
            f"cached the hidden states after block {cache['blocks']} of {p.config.n_layer} "
            f"({cache['bytes'] / 2**20:,.1f} MiB, {cache['location']}) in {timings['cache']:.1f} s"
        )
    sizes = {name: len(v) for name, v in labels.items()}
    # The SMS set prepared here lives in the work folder now and in <out>/data after the swap.
    final_data = out / "data" if settings.data is None else data_dir
    data_info = {"dir": str(final_data), "fingerprint": fingerprint, "sizes": sizes}
    try:
        sets = {name: LabelledSet(sources[name], labels[name]) for name in ids}
        history = _fit(model, sets, settings, p, work, out, resume_state, data_info, guard, progress, shard)
        timings["train"] = history.train_seconds
        t0 = time.monotonic()
        saved = f"training has finished and is saved in {work / CHECKPOINT_NAME}; " + _resume_hint(out)
        scores: dict[str, dict[str, Any] | None] = {"test": None, "validation": None}
        for name in scores:
            if len(sets[name]):
                progress.message(f"evaluating the kept weights on the {name} split ({len(sets[name])} texts)")
                scores[name], _ = evaluate(
                    model,
                    sets[name],
                    device=p.device,
                    precision=p.precision,
                    batch_size=p.train.eval_batch_size,
                    shard=shard,
                    between_batches=lambda: guard.check(saved),
                )
        test, validation = scores["test"], scores["validation"]
        timings["evaluate"] = time.monotonic() - t0
    finally:
        for source in sources.values():
            source.close()
    timings["total"] = time.monotonic() - t_start
    result = FinetuneResult(
        out, model, classes, history, test, validation, trainable_params, total_params, cache, timings
    )
    if shard.is_main:
        train_info = {
            **p.train.to_dict(),
            "pad_length": pad_length,
            "device": str(p.device),
            "precision": p.precision.name,
            "tf32": p.precision.tf32,
            "cache": cache,
        }
        info = build_run_info(
            model_name=p.model_name,
            config=p.config,
            classes=classes,
            max_length=max_length,
            pooling=settings.pooling,
            trainable=p.scope.to_dict(),
            trainable_params=trainable_params,
            train=train_info,
            seed=settings.seed,
            weights=settings.weights,
            data={**data_info, "prepared": prepared.meta.get("source")},
        )
        steps_per_epoch = math.ceil(
            sizes["train"] / (p.train.batch_size * p.train.grad_accum * shard.world_size)
        )
        try:
            _write_run(work, model, info, tokenizer_dir, result, steps_per_epoch, progress)
        except OSError as exc:
            raise write_error(exc, out, needed) from None
    return result


def _fit(
    model: Classifier,
    sets: dict[str, LabelledSet],
    settings: FinetuneSettings,
    p: RunPlan,
    work: Path,
    out: Path,
    resume_state: dict[str, Any] | None,
    data_info: dict[str, Any],
    guard: InterruptGuard,
    progress: TrainProgress,
    shard: Shard,
) -> History:
    """:func:`gptclf.train.fit` with checkpoints in the work folder and a hint that names ``out``."""
    data = data_info["dir"] if settings.data is not None else None  # None: the SMS set, made here
    extra = {"settings": {**settings.to_dict(), "data": data, "out": str(out)}, "data": data_info}
    try:
        return fit(
            model,
            sets["train"],
            sets["validation"],
            p.train,
            device=p.device,
            precision=p.precision,
            seed=settings.seed,
            checkpoint=work / CHECKPOINT_NAME,
            resume=resume_state,
            extra=extra,
            progress=progress,
            shard=shard,
            guard=guard,
        )
    except Interrupted as exc:
        message = str(exc).removesuffix("; continue with --resume")
        raise Interrupted(f"{message}; {_resume_hint(out)}", exc.exit_code - 128) from None


def _resume_hint(out: Path) -> str:
    return f"continue with `gptclf finetune --out {out} --resume`"


def _check_same_data(resume_state: dict[str, Any] | None, fingerprint: str, data_dir: Path) -> None:
    """Refuse to resume on a prepared folder that changed since the run was interrupted.

    Raises:
        BadInputError: The fingerprint differs from the one the checkpoint recorded.
    """
    if resume_state is None:
        return
    recorded = (resume_state.get("extra", {}).get("data") or {}).get("fingerprint")
    if recorded is not None and recorded != fingerprint:
        raise BadInputError(
            f"the prepared data in {data_dir} changed since the run was interrupted (another split, seed "
            "or files): resume with the data it was trained on, or start again with --force"
        )


def _bytes_needed(total_params: int, trainable_params: int) -> int:
    """Rough disk space a run needs: fp32 weights, and two checkpoints (the last one stays until
    its successor is complete) of the trainable weights, the best ones and AdamW's two moments,
    plus room for the small files."""
    return 4 * total_params + 2 * 4 * 4 * trainable_params + (8 << 20)


def _check_space(work: Path, out: Path, needed: int) -> None:
    """Refuse to start when the run cannot fit on the disk (before any training time is spent).

    Raises:
        BadInputError: Less free space than the run needs, both named in the message.
    """
    free = shutil.disk_usage(work).free
    if free < needed:
        raise BadInputError(
            f"not enough space for the run in {out.parent}: it needs about {needed / 2**20:,.0f} MiB "
            f"(weights and checkpoint), {free / 2**20:,.0f} MiB are free; free some space or choose "
            "another --out"
        )


def build_classifier(
    settings: FinetuneSettings, p: RunPlan, classes: list[str]
) -> tuple[Classifier, int, int]:
    """GPT-2 from ``--weights`` with a class head and the trainable scope applied (on the CPU).

    Returns:
        The classifier, its trainable parameter count and its total parameter count.
    """
    gpt = load_weights(settings.weights, p.config, p.model_name, seed=settings.seed, home=p.home)
    replace_head(gpt, len(classes), seed=settings.seed)
    trainable = apply_scope(gpt, p.scope, seed=settings.seed)
    total = sum(t.numel() for t in gpt.parameters())
    return Classifier(gpt, classes, settings.pooling), trainable, total


def _data_dir(
    settings: FinetuneSettings, p: RunPlan, work: Path, download_progress: Progress | None, shard: Shard
) -> Path:
    """The prepared folder: ``--data``, or the SMS set prepared the book's way into the work
    folder's ``data`` (by rank 0, which alone writes the run; the other ranks wait and read it)."""
    if settings.data is not None:
        return Path(settings.data).expanduser().resolve()
    target = work / "data"
    with shard.main_first(per_node=False):
        if shard.is_main and not (settings.resume and target.is_dir()):
            prepare(
                target,
                classes=settings.classes,
                force=settings.force,
                home=p.home,
                mirror=settings.mirror,
                progress=download_progress,
                **BOOK_SMS,
            )
    return target


def _classes(given: list[str] | None, prepared: list[str], data_dir: Path) -> list[str]:
    """The run's classes: ``--classes`` (any order of the prepared ones), else the prepared order."""
    if not given:
        return list(prepared)
    if sorted(given) != sorted(prepared) or len(set(given)) != len(given):
        raise BadInputError(
            f"--classes {','.join(given)} does not match the classes of {data_dir} ({','.join(prepared)}): "
            "give the same names (in any order) or prepare the data again"
        )
    return list(given)


def _tokenise(
    splits: dict[str, Any], classes: list[str], enc: Any, max_length: int, pad_to: str
) -> tuple[dict[str, list[list[int]]], dict[str, list[int]], int, int | None]:
    """Token ids and label ids of each split.

    With ``pad_to="longest-train"`` (the book's loop) every text is cut to the longest training
    text and padded to it; the book's dataset class truncates validation and test texts the same way.

    Returns:
        ``(ids, labels, max_length, pad_length)``; ``pad_length`` is None for per-batch padding.
    """
    names = ("train", "validation", "test")
    ids = {n: encode_texts(enc, splits[n]["text"].astype(str).tolist(), max_length).ids for n in names}
    labels = {n: label_ids(splits[n], classes) for n in names}
    pad_length = None
    if pad_to == "longest-train" and ids["train"]:
        pad_length = max_length = max(len(x) for x in ids["train"])
        ids = {n: [x[:max_length] for x in v] for n, v in ids.items()}
    return ids, labels, max_length, pad_length


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
    steps_per_epoch: float,
    progress: TrainProgress,
) -> None:
    """Write the run's files into the work folder; its checkpoint stays until the swap is done, so a
    kill before the swap still leaves a run to resume."""
    save_run(folder, model, info, tokenizer_dir)
    write_history(folder, result.history.rows)
    metrics = {
        "test": result.test,
        "validation": result.validation,
        "best": result.history.best,
        "train": {k: v for k, v in result.history.to_dict().items() if k != "rows"},
        "trainable_params": result.trainable_params,
        "cache": result.cache,
        "timings": result.timings,
    }
    atomic_write_json(folder / METRICS_FILE, metrics)
    if not write_curves(folder, result.history.rows, steps_per_epoch):
        (folder / CURVES_FILE).unlink(missing_ok=True)  # never leave an older picture behind
        if importlib.util.find_spec("matplotlib") is None:
            progress.message(
                f"{CURVES_FILE} skipped: matplotlib is not installed (pip install 'gptclf[plot]')"
            )
    (folder / CHECKPOINT_NAME).unlink(missing_ok=True)  # the finished run replaces it
