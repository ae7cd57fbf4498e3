"""The ``gptclf tune`` verb: search finetune's settings on the validation split, keep the best run.

Read top to bottom, :func:`tune` is the job: check every setting, the search space and the data
before anything is written (:mod:`gptclf.training.tune_settings`); open the run's work folder beside
``--out`` (as finetune does); run trials (:class:`gptclf.training.trials.TrialRunner`) that an
Optuna study (TPE sampler seeded by ``--seed``, median or successive-halving pruning on each
evaluation's validation metric) asks for, every trial with the same cut of the network reading one
shared frozen-trunk cache; keep the best trial's weights as a complete finetune run, or train its
settings once more (:func:`gptclf.training.run.train_run`, which reuses the same caches and adds
the test split's); write ``tune/trials.csv``, ``tune/study.json`` and the pictures; swap the
finished run in.

The study (:class:`gptclf.training.study.Study`) lives in the work folder (``tune.journal``,
Optuna's journal storage: one appended line per event, safe against kill -9), so ``--resume``
continues it: finished trials are never run
again; a trial that was running when the process died is run again with the same settings. A
signal stops the running trial after its current evaluation (an epoch end) and exits 130/143 with
the study kept.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gptclf.data.prepared import prepared_fingerprint, read_prepared
from gptclf.distributed import Shard, divide_cpu_threads
from gptclf.errors import BadInputError, Interrupted, write_error
from gptclf.inference.cache_pool import CachePool
from gptclf.model.classifier import parse_scope
from gptclf.model.tokenizer import load_tokenizer
from gptclf.progress import Progress, TrainProgress, fmt_metric
from gptclf.rundir import RunBuild, work_dir
from gptclf.rundir.layout import TUNE_DIR, TUNE_JOURNAL
from gptclf.tasks.kinds import task_of
from gptclf.training.checkpoints import InterruptGuard
from gptclf.training.context import FinetuneResult, RunContext
from gptclf.training.finetune import fetch_artefacts
from gptclf.training.plan import RunPlan, make_plan, out_dir
from gptclf.training.run import bytes_needed, check_space, run_classes, train_run
from gptclf.training.search_space import Param, choices_of
from gptclf.training.settings import FinetuneSettings
from gptclf.training.study import Study, best_dict, show_value
from gptclf.training.trials import TrialRunner, no_validation
from gptclf.training.tune_report import write_report
from gptclf.training.tune_settings import METRICS, TuneSettings, check_settings, checked_out, save_settings

if TYPE_CHECKING:
    import optuna
    import torch


@dataclass
class TuneResult:
    """What :func:`tune` did.

    Attributes:
        out: The run directory (the best settings' run, with ``tune/``).
        run: The final finetune run's result.
        best: The best trial: number, value, params.
        counts: Trials by status (complete, pruned, failed).
        metric: The ``--metric`` searched.
        cache_builds: Every frozen-trunk cache the study and the final run built.
        identical: The final run's best validation value equals the best trial's (same settings,
            same seed, same cache: the same weights).
        seconds: Wall time of this invocation.
    """

    out: Path
    run: FinetuneResult
    best: dict[str, Any]
    counts: dict[str, int]
    metric: str
    cache_builds: list[dict[str, Any]]
    identical: bool
    seconds: float

    def summary(self) -> dict[str, Any]:
        """JSON-ready: the search and the final run's summary."""
        return {
            "run_dir": str(self.out),
            "metric": self.metric,
            "best_trial": self.best,
            "trials": self.counts,
            "cache_builds": len(self.cache_builds),
            "retrained_identical": self.identical,
            "seconds": self.seconds,
            "final_run": self.run.summary(),
        }


def tune(
    settings: TuneSettings,
    *,
    progress: TrainProgress | None = None,
    download_progress: Progress | None = None,
    shard: Shard = Shard(),  # frozen, so one shared default is safe
) -> TuneResult | None:
    """Run ``gptclf tune``: the study, then the best settings' run in ``--out``.

    Under torchrun the trials are spread over the ranks: each rank runs whole trials of its own
    (one process each, on its own device, with its own copy of the caches), all of them asked of
    and told to the one study in the shared journal; rank 0 then trains the best settings and
    writes the run, and the other ranks return None.

    Raises:
        BadInputError: Bad settings, space or data (nothing written), exit code 2.
        Interrupted: Ctrl-C or SIGTERM: the study is kept for ``--resume``.
        GptclfError: Every trial failed (the study is kept).
    """
    t_start = time.monotonic()
    progress = progress or TrainProgress()
    out = shard.from_main(out_dir(settings.finetune))
    with InterruptGuard() as guard:
        settings = checked_out(out, settings, progress.message if shard.is_main else None)
        space, timeout = check_settings(settings)
        _need_optuna()
        plan = make_plan(settings.finetune)  # checked by check_settings: the fixed settings plan
        found = _read(settings, plan, download_progress, shard)
        shard.barrier()  # every rank has looked at --out before rank 0 makes its work folder
        build = None
        if shard.is_main:
            build = RunBuild.open(out, force=settings.finetune.force, resume=settings.finetune.resume,
                                  note=progress.message)  # fmt: skip
        guard.deferring = True  # from here on a signal ends the running trial at its next evaluation
        guard.before = f"the study is kept in {work_dir(out)} for --resume"
        cut = base_cut(space, settings.finetune, plan.config.n_layer)
        pool = CachePool(
            plan.cache_memory, plan.cache_fallback, base_cut=cut, local_ranks=shard.local_world_size,
            note=progress.message if shard.is_main else None,
        )  # fmt: skip
        runner = TrialRunner(*found.trial_inputs, pool, guard, out, work_dir(out))
        try:
            if build is not None:
                _check_room(build.path, out, runner, settings.finetune, plan)
            try:
                study = _search(
                    settings, space, runner, progress, guard, shard, timeout, found.fingerprint, plan.device
                )
            except OSError as exc:  # the journal (and its lock) on a full or read-only disk: one line
                if exc.errno is None:
                    raise
                error = write_error(exc, work_dir(out))
                raise type(error)(
                    f"{error}; the study is kept: continue with `gptclf tune --out {out} --resume`"
                ) from None
            if build is None:
                return None
            best = study.best()
            kept = study.kept[1:] if study.kept is not None and study.kept[0] == best.number else None
            result = _final(settings, best, runner, found.tokenizer_dir, found.weights_path, progress, kept)
            record = study.record(best, pool, result.history.best, kept is not None)
            write_report(build.path / TUNE_DIR, study.study, record)
            counts = study.counts()
            _keep_journal(build.path)
            build.commit()
        except BaseException as exc:
            if build is not None:
                build.close(exc)
            raise
        finally:
            pool.close()
        build.close()
        identical = study.identical(best, result.history.best)
        progress.message(_final_line(best, identical, settings.search.metric, kept is not None))
        return TuneResult(
            out, result, best_dict(best), counts, settings.search.metric, pool.summary(), identical,
            time.monotonic() - t_start,
        )  # fmt: skip


def _check_room(work: Path, out: Path, runner: TrialRunner, fs: FinetuneSettings, plan: RunPlan) -> None:
    """The run's weights must fit on the disk before any trial is spent (finetune checks the same
    before its first step).

    Raises:
        DiskFullError: Less free space than the weights need.
    """
    model = runner.model(fs, plan)
    check_space(work, out, bytes_needed(sum(p.numel() for p in model.parameters()), 0))


@dataclass
class _Found:
    """What the search reads before it writes anything."""

    tokenizer_dir: Path
    weights_path: Path | None
    trial_inputs: tuple[
        Any, ...
    ]  # TrialRunner's first arguments: prepared, classes, task, tokenizer, weights
    fingerprint: str = ""  # the prepared folder's, saved for --resume


def _read(settings: TuneSettings, plan: RunPlan, download_progress: Progress | None, shard: Shard) -> _Found:
    """Download what is missing, read the prepared folder and check it fits the search.

    Raises:
        BadInputError: The folder is not prepared, has no validation texts, or its task does not
            take ``--metric`` (or ``--target``).
    """
    fs = settings.finetune
    tokenizer_dir, weights_path = fetch_artefacts(fs, plan, download_progress, shard)
    data_dir = Path(fs.data).expanduser().resolve()  # type: ignore[arg-type]  # check_settings: given
    prepared = read_prepared(data_dir)
    fingerprint = prepared_fingerprint(data_dir)
    if settings.data_fingerprint is not None and settings.data_fingerprint != fingerprint:
        raise BadInputError(
            f"the prepared data in {data_dir} changed since the search was interrupted (another split, "
            "seed or files): resume with the data it searched on, or start again with --force"
        )
    if (problem := no_validation(prepared, data_dir)) is not None:
        raise problem
    task = task_of(prepared.meta)
    monitor = METRICS[settings.search.metric][0]
    if problems := task.settings_problems(target=fs.target, positive=fs.positive, monitor=monitor):
        raise BadInputError("; ".join(_as_metric(p) for p in problems))
    classes = run_classes(fs.classes, prepared.classes, data_dir)
    enc = load_tokenizer(tokenizer_dir)
    return _Found(tokenizer_dir, weights_path, (prepared, classes, task, enc, weights_path), fingerprint)


def _as_metric(problem: str) -> str:
    """A problem worded for ``--monitor``, in ``--metric``'s words (``val_f1`` is ``val_macro_f1``)."""
    problem = problem.replace("--monitor", "--metric")
    for metric, (monitor, _) in METRICS.items():
        if monitor != metric:
            problem = re.sub(rf"\b{monitor}\b", metric, problem)
    return problem


def _search(
    settings: TuneSettings,
    space: tuple[Param, ...],
    runner: TrialRunner,
    progress: TrainProgress,
    guard: InterruptGuard,
    shard: Shard,
    timeout: float | None,
    fingerprint: str,
    device: torch.device,
) -> Study:
    """Run this process's trials of the study (rank 0 opens it first; every rank's trials are told
    before any rank goes on)."""
    divide_cpu_threads(device, shard)  # a no-op for one process
    if shard.is_main:
        save_settings(runner.work, settings, space, fingerprint)
        study = Study(settings, space, runner, progress, guard, shard)
    shard.barrier()
    if not shard.is_main:
        study = Study(settings, space, runner, TrainProgress(), guard, shard)
    study.run(timeout)
    runner.close()
    shard.slow_barrier()  # trials take as long as they take: not --dist-timeout
    return study


def base_cut(space: Sequence[Param], fixed: FinetuneSettings, n_layer: int) -> int:
    """The lowest cut the search can ask for, when it can ask for more than one (0: none): the
    pool builds it first and every higher cut on it (:class:`~gptclf.inference.cache_pool.CachePool`).

    The cuts are those of the trainable scopes the space samples (or the one ``--trainable``
    fixes); ``all`` and ``lora`` have none."""
    choices = choices_of(space, "trainable") or (fixed.trainable,)
    scopes = [parse_scope(str(choice)) for choice in choices]
    cuts = {n_layer - s.trainable_blocks(n_layer) for s in scopes if not s.problems(n_layer)} - {0}
    return min(cuts) if len(cuts) > 1 else 0


def _need_optuna() -> None:
    """Raises BadInputError when Optuna (the ``tune`` extra) is not installed."""
    import importlib.util

    if importlib.util.find_spec("optuna") is None:
        raise BadInputError("gptclf tune needs Optuna, the tune extra: pip install 'gptclf[tune]'")


def _final_line(best: optuna.trial.FrozenTrial, identical: bool, metric: str, kept: bool) -> str:
    if kept:
        return f"best: trial {best.number} ({metric} {fmt_metric(best.value)}); the run holds its weights"
    same = (
        "the same weights as the trial (same settings, seed and cache)"
        if identical
        else "its validation value differs from the trial's (see tune/study.json)"
    )
    return f"best: trial {best.number} ({metric} {fmt_metric(best.value)}), trained once more: {same}"


def _final(
    settings: TuneSettings,
    best: optuna.trial.FrozenTrial,
    runner: TrialRunner,
    tokenizer_dir: Path,
    weights_path: Path | None,
    progress: TrainProgress,
    kept: tuple[Any, dict[str, Any]] | None,
) -> FinetuneResult:
    """The best trial's settings as a complete finetune run in the work folder: its weights kept
    (``kept``: the trial's history and trainable weights), or trained once more."""
    monitor = METRICS[settings.search.metric][0]
    fs = settings.finetune
    best_settings = fs.with_options(
        {**best.params, "monitor": monitor, "resume": False}, given=fs.given | set(best.params) | {"monitor"}
    )
    how = "keeping its weights" if kept is not None else "training its settings once more"
    progress.message(
        f"the best trial is {best.number}; {how}, then the test split: "
        + ", ".join(f"{k} {show_value(v)}" for k, v in best.params.items())
    )
    ctx = RunContext(
        best_settings,
        make_plan(best_settings),
        runner.out,
        runner.work,
        None,
        runner.guard,
        progress,
        Shard(),
    )
    info = {"tune": {"trial": best.number, "metric": settings.search.metric, "value": best.value,
                     "study": f"{TUNE_DIR}/study.json"}}  # fmt: skip
    data_dir = Path(fs.data).expanduser().resolve()  # type: ignore[arg-type]
    try:
        return train_run(
            ctx, data_dir, tokenizer_dir, weights_path, pool=runner.pool, info_extra=info, kept=kept
        )
    except Interrupted as exc:  # the way on is tune's --resume (finetune's would leave no tune/ report)
        hint = f"continue with `gptclf tune --out {runner.out} --resume`"
        if kept is not None:  # the trial's weights were in this process's memory only
            hint += " (it trains the best trial's settings once more: the same weights)"
        message = re.sub(r"continue with `gptclf finetune --out .* --resume`", lambda _: hint, str(exc))
        raise Interrupted(message if hint in message else f"{message}; {hint}", exc.exit_code - 128) from None


def _keep_journal(work: Path) -> None:
    """Move the study's journal into ``tune/`` (a finished run holds no resumable state at its top)."""
    journal = work / TUNE_JOURNAL
    if journal.is_file():
        journal.replace(work / TUNE_DIR / "journal.log")
