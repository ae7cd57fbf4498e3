"""The ``gptclf tune`` verb: search finetune's settings on the validation split, keep the best run.

Read top to bottom, :func:`tune` is the job: check every setting, the search space and the data
before anything is written; open the run's work folder beside ``--out`` (as finetune does); run
trials (:class:`gptclf.training.trials.TrialRunner`) that an Optuna study (TPE sampler seeded by
``--seed``, median or successive-halving pruning on each evaluation's validation metric) asks for,
every trial with the same cut of the network reading one shared frozen-trunk cache; train the best
settings once more as a complete finetune run (:func:`gptclf.training.run.train_run`, which reuses
the same caches and adds the test split's); write ``tune/trials.csv``, ``tune/study.json`` and the
pictures; swap the finished run in.

The study lives in the work folder (``tune.journal``, Optuna's journal storage: one appended line
per event, safe against kill -9), so ``--resume`` continues it: finished trials are never run
again; a trial that was running when the process died is run again with the same settings. A
signal stops the running trial after its current evaluation (an epoch end) and exits 130/143 with
the study kept.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gptclf.data.prepared import prepared_fingerprint, read_prepared
from gptclf.distributed import Shard, divide_cpu_threads
from gptclf.errors import BadInputError, CacheSpaceError, GptclfError, Interrupted, TrainingError, write_error
from gptclf.fileio import atomic_write_json
from gptclf.inference.cache_pool import CachePool
from gptclf.model.classifier import parse_scope
from gptclf.model.tokenizer import load_tokenizer
from gptclf.options import field_problems, option
from gptclf.progress import Progress, TrainProgress, fmt_metric
from gptclf.rundir import RunBuild, check_not_a_source, check_out, work_dir
from gptclf.rundir.layout import TUNE_DIR, TUNE_JOURNAL
from gptclf.tasks.kinds import task_of
from gptclf.training.checkpoints import InterruptGuard
from gptclf.training.context import FinetuneResult, RunContext
from gptclf.training.finetune import fetch_artefacts
from gptclf.training.plan import (
    RESUME_CHANGEABLE,
    RunPlan,
    finetune_sources,
    make_plan,
    out_dir,
    plan_problems,
)
from gptclf.training.run import bytes_needed, check_space, run_classes, train_run
from gptclf.training.search_space import DEFAULT_SPACE, Param, load_space, sample, without_fixed
from gptclf.training.settings import FinetuneSettings
from gptclf.training.trials import TrialRunner, no_validation
from gptclf.training.tune_report import write_report

if TYPE_CHECKING:
    import optuna
    import torch

#: ``--metric`` -> the finetune ``--monitor`` that keeps the weights best at it, and its history column.
METRICS = {
    "val_loss": ("val_loss", "val_loss"),
    "val_acc": ("val_acc", "val_acc"),
    "val_macro_f1": ("val_f1", "val_f1"),
    "val_micro_f1": ("val_micro_f1", "val_micro_f1"),
}
PRUNERS = ("median", "halving", "none")
#: The shortest ``--timeout``: loading the model and training one epoch take longer than this.
MIN_TIMEOUT = 10.0
_SETTINGS_FILE = "settings.json"
_STUDY = "gptclf-tune"
#: What a resumed search may change: how long it runs and where, not what it searches.
_TUNE_RESUMABLE = frozenset({"trials", "timeout"})


@dataclass(frozen=True)
class TuneOptions:
    """The options of ``gptclf tune`` that finetune does not have."""

    trials: int = option(20, "Trials in the study (pruned and failed ones count)", "Run", at_least=1)
    timeout: str | None = option(
        None, "Start no trial after this long, e.g. 90s, 30m, 2h", "Run", default_text="no limit"
    )
    metric: str = option(
        "val_loss", "What the search optimises, on validation", "Run", choices=tuple(METRICS)
    )
    space: str | None = option(None, "TOML file of the search space", "Run", default_text="the default space")
    pruner: str = option("halving", "Stop unpromising trials early", "Run", choices=PRUNERS)


@dataclass(frozen=True)
class TuneSettings:
    """Everything ``gptclf tune`` takes: finetune's settings (the fixed ones) and the search's."""

    finetune: FinetuneSettings
    search: TuneOptions = field(default_factory=TuneOptions)
    #: The search options given (for ``--resume``).
    given: frozenset[str] = frozenset()
    #: A resumed search's space, as it was saved when the study started (None: read ``--space``).
    saved_space: tuple[Param, ...] | None = None
    #: A resumed search's prepared data fingerprint (None: not resumed, or saved by an older gptclf).
    data_fingerprint: str | None = None


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


def parse_duration(text: str) -> float:
    """``--timeout``: ``90``, ``90s``, ``30m``, ``2h``, ``1.5h`` -> seconds.

    Raises:
        BadInputError: Not a duration, or too short for one trial.
    """
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", str(text).lower())
    if not match:
        raise BadInputError(f"--timeout {text!r} is not a duration: write e.g. 90s, 30m or 2h")
    seconds = float(match[1]) * {"": 1, "s": 1, "m": 60, "h": 3600}[match[2]]
    if seconds < MIN_TIMEOUT:
        raise BadInputError(
            f"--timeout {text} cannot fit one trial (loading the model and training one epoch take "
            f"longer): give at least {MIN_TIMEOUT:g}s, e.g. 30m"
        )
    return seconds


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
        settings = _checked_out(out, settings)
        space, timeout = _check(settings)
        _need_optuna()
        plan = make_plan(settings.finetune)  # checked by _check: the fixed settings plan
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
            plan.cache_memory, plan.cache_fallback, base_cut=cut, local_ranks=shard.local_world_size
        )
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
            out, result, _best_dict(best), counts, settings.search.metric, pool.summary(), identical,
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


def _checked_out(out: Path, settings: TuneSettings) -> TuneSettings:
    """The settings to search with (a resumed search's saved ones), once ``--out`` may be written."""
    if settings.finetune.resume:
        return _resumed(out, settings)
    check_not_a_source(out, finetune_sources(settings.finetune))
    check_out(out, force=settings.finetune.force, resume=False)
    return settings


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
    data_dir = Path(fs.data).expanduser().resolve()  # type: ignore[arg-type]  # _check: given
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
) -> _Study:
    """Run this process's trials of the study (rank 0 opens it first; every rank's trials are told
    before any rank goes on)."""
    divide_cpu_threads(device, shard)  # a no-op for one process
    if shard.is_main:
        _save_settings(runner.work, settings, space, fingerprint)
        study = _Study(settings, space, runner, progress, guard, shard)
    shard.barrier()
    if not shard.is_main:
        study = _Study(settings, space, runner, TrainProgress(), guard, shard)
    study.run(timeout)
    runner.close()
    shard.slow_barrier()  # trials take as long as they take: not --dist-timeout
    return study


def base_cut(space: Sequence[Param], fixed: FinetuneSettings, n_layer: int) -> int:
    """The lowest cut the search can ask for, when it can ask for more than one (0: none): the
    pool builds it first and every higher cut on it (:class:`~gptclf.inference.cache_pool.CachePool`).

    The cuts are those of the trainable scopes the space samples (or the one ``--trainable``
    fixes); ``all`` and ``lora`` have none."""
    choices = next((p.choices for p in space if p.name == "trainable" and p.choices), (fixed.trainable,))
    scopes = [parse_scope(str(choice)) for choice in choices]
    cuts = {n_layer - s.trainable_blocks(n_layer) for s in scopes if not s.problems(n_layer)} - {0}
    return min(cuts) if len(cuts) > 1 else 0


def _check(settings: TuneSettings) -> tuple[tuple[Param, ...], float | None]:
    """Every problem of the settings that needs no data, at once; the space less the fixed options,
    and the timeout in seconds."""
    fs, search = settings.finetune, settings.search
    problems: list[str] = []
    if fs.data is None:
        problems.append("gptclf tune needs --data DIR, a folder written by `gptclf prepare`")
    problems += plan_problems(fs)
    problems += field_problems(search)
    timeout = None
    if search.timeout is not None:
        try:
            timeout = parse_duration(search.timeout)
        except BadInputError as exc:
            problems.append(str(exc))
    space: tuple[Param, ...] = DEFAULT_SPACE
    space_loaded = search.space is None
    if settings.saved_space is not None:  # --resume: the space the study started with
        space, space_loaded = settings.saved_space, True
    elif search.space is not None:
        try:
            space = load_space(Path(search.space).expanduser())
            space_loaded = True
        except BadInputError as exc:
            problems.append(str(exc))
    monitor = METRICS.get(search.metric, ("",))[0]
    if "monitor" in fs.given and fs.train.monitor != monitor:
        problems.append(f"--monitor {fs.train.monitor} differs from --metric {search.metric}: tune sets it")
    if search.space is not None and space_loaded and (both := sorted({p.name for p in space} & fs.given)):
        names = ", ".join(f"--{n.replace('_', '-')}" for n in both)
        problems.append(f"{names} fixed on the command line and searched by --space {search.space}: drop one")
    if not problems:
        problems += _model_problems(fs, without_fixed(space, fs.given))
    if problems:
        raise BadInputError("; ".join(problems))
    searched = without_fixed(space, fs.given)
    if not searched:
        raise BadInputError("every option of the search space is fixed: nothing is left to search")
    return searched, timeout


def _model_problems(fs: FinetuneSettings, space: tuple[Param, ...]) -> list[str]:
    """The space's values this model cannot take (``--max-length`` over its context, more blocks
    than it has), each checked with the fixed settings as a finetune plan checks it: they would be
    trials that all fail."""
    problems = []
    for param in space:
        values = param.choices if param.choices is not None else (param.low, param.high)
        for value in values:
            found = plan_problems(fs.with_options({param.name: value}))
            problems += [f"--space: {param.name} = {value!r}: {p}" for p in found]
    return list(dict.fromkeys(problems))


def _need_optuna() -> None:
    """Raises BadInputError when Optuna (the ``tune`` extra) is not installed."""
    import importlib.util

    if importlib.util.find_spec("optuna") is None:
        raise BadInputError("gptclf tune needs Optuna, the tune extra: pip install 'gptclf[tune]'")


class _Study:
    """The Optuna study of one ``gptclf tune`` and the loop that asks it for trials."""

    def __init__(
        self,
        settings: TuneSettings,
        space: tuple[Param, ...],
        runner: TrialRunner,
        progress: TrainProgress,
        guard: InterruptGuard,
        shard: Shard,
    ) -> None:
        import optuna
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        self.settings, self.space, self.runner = settings, space, runner
        self.progress, self.guard, self.shard = progress, guard, shard
        self.metric = settings.search.metric
        self.column = METRICS[self.metric][1]
        self.direction = "minimize" if self.metric == "val_loss" else "maximize"
        journal = runner.work / TUNE_JOURNAL
        if shard.is_main:  # the first to open it (the other ranks wait for it)
            # A process killed while it wrote left the journal's lock file: this process holds the
            # work folder's lock (gptclf.rundir), so no other job writes the journal: it is stale.
            Path(f"{journal}.lock").unlink(missing_ok=True)
            _cut_torn_line(journal)
        try:
            storage = JournalStorage(JournalFileBackend(str(journal)))
            ran = 0
            if any(s.study_name == _STUDY for s in storage.get_all_studies()):
                ran = len(optuna.load_study(study_name=_STUDY, storage=storage).trials)
            # A resumed study draws on from a new seed: the same one would repeat the first draws.
            self.study = optuna.create_study(
                study_name=_STUDY,
                storage=storage,
                direction=self.direction,
                # Each rank draws from its own seed: the same one would ask the same settings.
                sampler=optuna.samplers.TPESampler(seed=settings.finetune.seed + ran + 7919 * shard.rank),
                pruner=_pruner(settings.search.pruner),
                load_if_exists=True,
            )
        except (ValueError, KeyError, TypeError, AssertionError) as exc:  # JSONDecodeError: ValueError
            raise BadInputError(
                f"the study's journal {journal} is damaged ({type(exc).__name__}: {exc}); "
                f"start the search again with --force"
            ) from None
        #: The best trial this process ran (number, history, trainable weights): the run, if it stays best.
        self.kept: tuple[int, Any, dict[str, Any]] | None = None
        if shard.is_main:
            self._rerun_interrupted()

    def _rerun_interrupted(self) -> None:
        """Trials a killed process left running: marked failed, and their settings queued again."""
        import optuna

        for trial in self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            self.study._storage.set_trial_user_attr(trial._trial_id, "error", "interrupted; run again")
            self.study._storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)
            self.study.enqueue_trial(trial.params, user_attrs={"rerun_of": trial.number})
            self.progress.message(f"trial {trial.number} was running when the search stopped: it runs again")

    def done(self) -> int:
        """Trials that count towards ``--trials``: complete, pruned, and failed ones (not interrupted)."""
        return sum(self.counts().values())

    def counts(self) -> dict[str, int]:
        """Finished trials by status."""
        import optuna

        states = {"complete": 0, "pruned": 0, "failed": 0}
        for t in self.study.get_trials(deepcopy=False):
            if t.state == optuna.trial.TrialState.COMPLETE:
                states["complete"] += 1
            elif t.state == optuna.trial.TrialState.PRUNED:
                states["pruned"] += 1
            elif t.state == optuna.trial.TrialState.FAIL and not _interrupted(t):
                states["failed"] += 1
        return states

    def run(self, timeout: float | None) -> None:
        """Ask for trials until ``--trials`` are done or the timeout has passed."""
        total = self.settings.search.trials
        deadline = None if timeout is None else time.monotonic() + timeout
        space = "; ".join(p.describe() for p in self.space)
        self.progress.message(f"searching {total} trials for the best {self.metric} on validation: {space}")
        shown = min(self.done(), total)
        self.progress.begin("trials", total, unit="trials", done=shown)
        try:
            # Under torchrun the other ranks' running trials count too: the study ends at --trials.
            while self.done() + self.running() < total:
                if deadline is not None and time.monotonic() > deadline and self.counts()["complete"]:
                    self.progress.message(f"--timeout reached after {self.done()} of {total} trials")
                    break
                self._one(deadline)
                best, done = self._best_value(), min(self.done(), total)
                self.progress.advance(
                    done - shown, **({f"best {self.metric}": best} if best is not None else {})
                )
                shown = done
        finally:
            self.progress.end()

    def running(self) -> int:
        """Trials running now (in other ranks' processes)."""
        import optuna

        return len(self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)))

    def _one(self, deadline: float | None) -> None:
        """Ask for one trial, train it, tell the study how it went."""
        import optuna

        trial = self.study.ask()
        trial.set_user_attr("rank", self.shard.rank)
        fixed = {n: self.settings.finetune.option(n) for n in self.settings.finetune.given}
        params = sample(self.space, trial, fixed)
        monitor = METRICS[self.metric][0]
        trial_settings = self.settings.finetune.with_options({**params, "monitor": monitor})
        curve: list[float] = []
        t0 = time.monotonic()

        def on_row(row: dict[str, Any]) -> None:
            value = row.get(self.column)
            if value is None or not math.isfinite(value):
                return
            curve.append(float(value))
            trial.report(float(value), len(curve))
            if self.guard.signum is not None:
                raise _Stopped()
            if deadline is not None and time.monotonic() > deadline and self.counts()["complete"]:
                raise _TimedOut()
            if trial.should_prune():
                raise optuna.TrialPruned()

        state, value, error = optuna.trial.TrialState.COMPLETE, None, None
        try:
            history, weights = self.runner.run(trial_settings, on_row)
            value = history.best[self.column] if history.best else None
            if value is None or not math.isfinite(value):
                state, error = optuna.trial.TrialState.FAIL, "no finite validation value"
            elif self._better(value):  # the best so far: its weights become the run if it stays best
                self.kept = (trial.number, history, weights)
        except optuna.TrialPruned:
            state = optuna.trial.TrialState.PRUNED
        except _TimedOut:
            state, error = optuna.trial.TrialState.FAIL, "stopped by --timeout"
        except _Stopped:
            self._tell_stopped(trial, curve, t0)
        except CacheSpaceError:  # no room for a cache: every trial that caches would fail alike
            raise
        except (TrainingError, BadInputError) as exc:  # a NaN at a wild learning rate, a bad combination
            state, error = optuna.trial.TrialState.FAIL, str(exc)
        trial.set_user_attr("seconds", time.monotonic() - t0)
        trial.set_user_attr("curve", curve)  # once: a journal line per evaluation would grow as its square
        if error:
            trial.set_user_attr("error", error)
        self.study.tell(trial, value if state == optuna.trial.TrialState.COMPLETE else None, state=state)
        status = {"COMPLETE": "complete", "PRUNED": "pruned"}.get(state.name, "failed")
        self.progress.message(self._trial_line(trial.number, status, value, params, error, t0))

    def _tell_stopped(self, trial: optuna.Trial, curve: list[float], t0: float) -> None:
        """A signal ended the trial: it is run again on ``--resume``; the search stops here."""
        import optuna

        trial.set_user_attr("seconds", time.monotonic() - t0)
        trial.set_user_attr("curve", curve)
        trial.set_user_attr("error", "interrupted; run again")
        self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
        self.study.enqueue_trial(trial.params, user_attrs={"rerun_of": trial.number})
        signum = self.guard.signum or 2
        from gptclf.training.checkpoints import signal_name

        raise Interrupted(
            f"{signal_name(signum)}: stopped trial {trial.number} after {len(curve)} evaluation(s); "
            f"{self.done()} of {self.settings.search.trials} trials are done and kept in "
            f"{self.runner.work}; continue with `gptclf tune --out {self.runner.out} --resume`",
            signum,
        )

    def _trial_line(
        self,
        number: int,
        state: str,
        value: float | None,
        params: dict[str, Any],
        error: str | None,
        t0: float,
    ) -> str:
        shown = ", ".join(f"{k} {_show(v)}" for k, v in params.items())
        what = f"{self.metric} {fmt_metric(value)}" if value is not None else state
        why = f" ({error})" if error else ""
        return f"trial {number}: {what}{why} in {time.monotonic() - t0:.1f} s [{shown}]"

    def _better(self, value: float) -> bool:
        """Whether ``value`` beats every complete trial of the study so far (ties: the earlier)."""
        best = self._best_value()
        return best is None or (value < best if self.direction == "minimize" else value > best)

    def _best_value(self) -> float | None:
        try:
            return self.study.best_value
        except ValueError:
            return None

    def best(self) -> optuna.trial.FrozenTrial:
        """The best complete trial.

        Raises:
            GptclfError: No trial completed (each one's reason is in the study).
        """
        try:
            return self.study.best_trial
        except ValueError:
            errors = {t.user_attrs.get("error") for t in self.study.trials if t.user_attrs.get("error")}
            raise GptclfError(
                f"no trial completed ({'; '.join(sorted(e for e in errors if e)) or 'all were pruned'}): "
                "widen the space or give fixed settings that train"
            ) from None

    def identical(self, best: optuna.trial.FrozenTrial, final_best: dict[str, Any] | None) -> bool:
        """Whether the final run's best validation value is the trial's, to the last bit."""
        return final_best is not None and final_best.get(self.column) == best.value

    def record(
        self, best: optuna.trial.FrozenTrial, pool: CachePool, final_best: dict[str, Any] | None, kept: bool
    ) -> dict[str, Any]:
        """study.json's content."""
        s = self.settings
        return {
            "metric": self.metric,
            "direction": self.direction,
            "trials": s.search.trials,
            "counts": self.counts(),
            "best": _best_dict(best),
            "space": [p.to_dict() for p in self.space],
            "fixed": {n: s.finetune.option(n) for n in sorted(s.finetune.given - {"force", "resume"})},
            "sampler": {"name": "TPE", "seed": s.finetune.seed},
            "pruner": s.search.pruner,
            "cache_builds": pool.summary(),
            "final_run": {
                "how": _HOW[kept],
                "identical_to_trial": self.identical(best, final_best),
            },
            "test_split": "never read by the search; only the final run is evaluated on it",
        }


class _Stopped(Exception):
    """A signal arrived: the trial ends at this evaluation."""


class _TimedOut(Exception):
    """``--timeout`` passed (and some trial has completed): the trial ends at this evaluation."""


def _interrupted(trial: optuna.trial.FrozenTrial) -> bool:
    return str(trial.user_attrs.get("error", "")).startswith("interrupted")


def _pruner(name: str) -> Any:
    """``--pruner``: the median rule after 3 complete trials, successive halving (rate 3), or none."""
    import optuna

    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0)
    if name == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    return optuna.pruners.NopPruner()


def _show(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _best_dict(best: optuna.trial.FrozenTrial) -> dict[str, Any]:
    return {"number": best.number, "value": best.value, "params": dict(best.params)}


#: How the final run's weights were made: kept from the best trial (this process ran it), or
#: trained once more (another rank ran it, or a process before a --resume).
_HOW = {
    True: "kept from the best trial: its weights and history, evaluated on the test split",
    False: "trained once more on the train split with the best trial's settings",
}


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
        + ", ".join(f"{k} {_show(v)}" for k, v in best.params.items())
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
        message = re.sub(r"continue with `gptclf finetune --out .* --resume`", lambda _: hint, str(exc))
        raise Interrupted(message if hint in message else f"{message}; {hint}", exc.exit_code - 128) from None


def _save_settings(
    work: Path, settings: TuneSettings, space: tuple[Param, ...] = (), fingerprint: str = ""
) -> None:
    """The settings of the search, for ``--resume`` (written once, when the study starts): the
    data folder resolved, the space itself (not only its file, which may change) and the prepared
    data's fingerprint."""
    path = work / TUNE_DIR / _SETTINGS_FILE
    if path.is_file():
        return
    path.parent.mkdir(exist_ok=True)
    fs = settings.finetune
    record = fs.to_dict()
    if fs.data is not None:
        record["data"] = str(Path(fs.data).expanduser().resolve())
    atomic_write_json(
        path,
        {
            "finetune": record,
            "given": sorted(fs.given),
            "search": settings.search.__dict__,
            "search_given": sorted(settings.given),
            "space": [p.to_dict() for p in space],
            "data_fingerprint": fingerprint,
        },
    )


def _param_of(record: dict[str, Any]) -> Param:
    """Inverse of :meth:`Param.to_dict` (settings.json's record of the space)."""
    when = record.get("when")
    choices = record.get("choices")
    return Param(
        record["name"],
        record.get("low"),
        record.get("high"),
        bool(record.get("log", False)),
        None if choices is None else tuple(choices),
        None if not when else next(iter(when.items())),
    )


def _resumed(out: Path, given: TuneSettings) -> TuneSettings:
    """The saved settings of the interrupted search of ``out``, with what may change on resume.

    Raises:
        BadInputError: No search to resume, or options that differ from the saved ones.
    """
    path = work_dir(out) / TUNE_DIR / _SETTINGS_FILE
    if not path.is_file():
        done = (out / "run.json").is_file() and not work_dir(out).exists()
        what = "that run has finished" if done else f"{work_dir(out)} holds no interrupted tune search"
        raise BadInputError(f"nothing to resume for {out}: {what}")
    check_out(out, force=False, resume=True)
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        fs = FinetuneSettings.from_dict(saved["finetune"], frozenset(saved["given"]))
        search = TuneOptions(**saved["search"])
        search_given = frozenset(saved["search_given"])
        space = None if saved.get("space") is None else tuple(_param_of(p) for p in saved["space"])
        fingerprint = saved.get("data_fingerprint") or None
        plan_problems(fs)  # a value of the wrong type fails here, not later with a traceback
        field_problems(search)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise BadInputError(
            f"the search's settings {path} are damaged ({type(exc).__name__}: {exc}); "
            "start the search again with --force"
        ) from None

    def differs(name: str) -> bool:
        value = given.finetune.option(name)
        if name == "data" and value is not None:
            value = str(Path(value).expanduser().resolve())
        return value != fs.option(name)

    conflicts = [
        f"--{name.replace('_', '-')} {given.finetune.option(name)} (the search used {fs.option(name)})"
        for name in sorted(given.finetune.given - RESUME_CHANGEABLE - {"force"})
        if differs(name)
    ]
    conflicts += [
        f"--{name} {getattr(given.search, name)} (the search used {getattr(search, name)})"
        for name in sorted(given.given - _TUNE_RESUMABLE)
        if getattr(given.search, name) != getattr(search, name)
    ]
    if conflicts:
        raise BadInputError("cannot change these on --resume: " + "; ".join(conflicts))
    changed = {n: given.finetune.option(n) for n in given.finetune.given & RESUME_CHANGEABLE}
    fs = fs.with_options({**changed, "out": str(out), "resume": True})
    search_changes = {n: getattr(given.search, n) for n in given.given & _TUNE_RESUMABLE}
    return TuneSettings(
        fs, TuneOptions(**{**search.__dict__, **search_changes}), search_given, space, fingerprint
    )


def _cut_torn_line(journal: Path) -> None:
    """Drop a last line that a killed process left half written (Optuna appends whole lines; a
    torn one would join the next line written and make the journal unreadable)."""
    if not journal.is_file():
        return
    data = journal.read_bytes()
    if data and not data.endswith(b"\n"):
        with journal.open("r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)
            os.fsync(f.fileno())


def _keep_journal(work: Path) -> None:
    """Move the study's journal into ``tune/`` (a finished run holds no resumable state at its top)."""
    journal = work / TUNE_JOURNAL
    if journal.is_file():
        journal.replace(work / TUNE_DIR / "journal.log")
