"""The Optuna study of one ``gptclf tune``: the loop that asks it for trials and tells it how they went.

:class:`Study` opens (or, on ``--resume``, reopens) the study in the work folder's journal
(Optuna's journal storage, one appended line per event: safe against kill -9), runs trials through
a :class:`gptclf.training.trials.TrialRunner` until ``--trials`` are done or ``--timeout`` has
passed, prunes on each evaluation's validation metric, keeps the weights of the best trial this
process ran, and writes what study.json records. A signal ends the running trial at its next
evaluation; it is queued to run again with the same settings on ``--resume``.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from gptclf.distributed import Shard
from gptclf.errors import BadInputError, CacheSpaceError, GptclfError, Interrupted, TrainingError
from gptclf.inference.cache_pool import CachePool
from gptclf.progress import TrainProgress, fmt_metric
from gptclf.rundir.layout import TUNE_JOURNAL
from gptclf.training.checkpoints import InterruptGuard, signal_name
from gptclf.training.search_space import Param, sample
from gptclf.training.trials import TrialRunner
from gptclf.training.tune_settings import METRICS, TuneSettings

if TYPE_CHECKING:
    import optuna

_STUDY = "gptclf-tune"


class Study:
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
            cut_torn_line(journal)
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

        fixed = {n: self.settings.finetune.option(n) for n in self.settings.finetune.given}
        for trial in self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            self.study._storage.set_trial_user_attr(trial._trial_id, "error", "interrupted; run again")
            self.study._storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)
            number = trial.number
            if not trial.params:  # killed before it drew a setting: nothing of it to run again
                self.progress.message(f"trial {number} was starting when the search stopped: a new trial "
                                      "takes its place")  # fmt: skip
                continue
            self.study.enqueue_trial(trial.params, user_attrs={"rerun_of": number})
            drawn = _drew_all(self.space, trial.params, fixed)
            self.progress.message(
                f"trial {number} was running when the search stopped: it runs again"
                + (
                    ""
                    if drawn
                    else " with the settings it had drawn ("
                    + ", ".join(f"{k} {show_value(v)}" for k, v in trial.params.items())
                    + "; the others are drawn anew)"
                )
            )

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
                self._stop_if_signalled()
                self._one(deadline)
                best, done = self._best_value(), min(self.done(), total)
                self.progress.advance(
                    done - shown, **({f"best {self.metric}": best} if best is not None else {})
                )
                shown = done
        finally:
            self.progress.end()

    def _stop_if_signalled(self) -> None:
        """A signal that came during the trial just told (its last epoch, or between trials) ends
        the search before the next one starts: nothing of it is lost."""
        signum = self.guard.signum
        if signum is not None:
            raise Interrupted(
                f"{signal_name(signum)}: stopped between trials; {self.done()} of "
                f"{self.settings.search.trials} trials are done and kept in {self.runner.work}; "
                f"continue with `gptclf tune --out {self.runner.out} --resume`",
                signum,
            )

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
            # A signal ends the trial here, unless this is its last epoch: then it completes and
            # counts (thrown away at its end, a 1-epoch trial would be all lost work).
            if self.guard.signum is not None and row.get("epoch", 0) < trial_settings.train.epochs:
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
        except (torch.OutOfMemoryError, MemoryError) as exc:  # this trial's batch or scope, not the search's
            state, error = optuna.trial.TrialState.FAIL, _out_of_memory(exc)
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
        shown = ", ".join(f"{k} {show_value(v)}" for k, v in params.items())
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
            "best": best_dict(best),
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


def _drew_all(space: Sequence[Param], params: dict[str, Any], fixed: dict[str, Any]) -> bool:
    """Whether ``params`` hold every option a trial draws given them (those whose condition holds)."""
    import optuna

    try:
        sample(space, optuna.trial.FixedTrial(params), fixed)
    except ValueError:  # FixedTrial: a parameter it was not given
        return False
    return True


class _Stopped(Exception):
    """A signal arrived: the trial ends at this evaluation."""


class _TimedOut(Exception):
    """``--timeout`` passed (and some trial has completed): the trial ends at this evaluation."""


def _out_of_memory(exc: BaseException) -> str:
    """A trial's out-of-memory error in one line; the device's cached blocks freed for the next."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return f"out of memory ({first})"


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


def show_value(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def best_dict(best: optuna.trial.FrozenTrial) -> dict[str, Any]:
    return {"number": best.number, "value": best.value, "params": dict(best.params)}


#: How the final run's weights were made: kept from the best trial (this process ran it), or
#: trained once more (another rank ran it, or a process before a --resume).
_HOW = {
    True: "kept from the best trial: its weights and history, evaluated on the test split",
    False: "trained once more on the train split with the best trial's settings",
}


def cut_torn_line(journal: Path) -> None:
    """Drop a last line that a killed process left half written (Optuna appends whole lines; a
    torn one would join the next line written and make the journal unreadable)."""
    if not journal.is_file():
        return
    data = journal.read_bytes()
    if data and not data.endswith(b"\n"):
        with journal.open("r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)
            os.fsync(f.fileno())
