"""The ``gptclf finetune`` verb, a recipe over components that each take one input.

Read top to bottom, :func:`finetune` is the job a user runs: check every setting (nothing written
on bad input); open the run's work folder beside ``--out`` (:mod:`gptclf.rundir`); download what
is missing (the tokenizer files, the pretrained weights: :mod:`gptclf.fetch.artefacts`); with no
``--data``, prepare the SMS Spam Collection the book's way into the work folder
(:func:`prepare_book_sms`, over :func:`gptclf.data.prepare.prepare`); train and evaluate
(:func:`gptclf.training.run.train_run`, which reads only what is on disk); swap the finished run in.
The command line only parses options and prints what :func:`finetune` returns.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from gptclf.data.prepare import prepare
from gptclf.distributed import Shard, launch, torchrun_env
from gptclf.errors import BadInputError, GateError
from gptclf.fetch.artefacts import base_weights, ensure_sms_spam, ensure_tokenizer
from gptclf.progress import Progress, TrainProgress
from gptclf.rundir import RunBuild, check_not_a_source, check_out, work_dir
from gptclf.training.checkpoints import InterruptGuard
from gptclf.training.context import FinetuneResult, RunContext
from gptclf.training.plan import (
    RunPlan,
    check_launch,
    finetune_sources,
    make_plan,
    out_dir,
    resumed_settings,
    started_afresh_note,
    starts_afresh,
)
from gptclf.training.run import train_run
from gptclf.training.settings import FinetuneSettings

#: The book's preparation of the SMS set (chapter 6): balanced by undersampling, a plain shuffled
#: 70/10/20 split, seed 123.
BOOK_SMS: dict[str, Any] = {
    "balance": "undersample",
    "split": "0.7,0.1,0.2",
    "stratify": False,
    "seed": 123,
}


def finetune(
    settings: FinetuneSettings,
    *,
    progress: TrainProgress | None = None,
    download_progress: Progress | None = None,
    shard: Shard = Shard(),  # frozen, so one shared default is safe
) -> FinetuneResult:
    """Run ``gptclf finetune``: train a classifier and write its run directory.

    The run is built in a work folder beside ``--out`` and swapped in whole at the end: ``--out``
    is at every moment absent, the old run or the new one. A signal before training stops at once
    and writes nothing; from the first step on, it saves a checkpoint (in training), stops the
    test evaluation (training is saved), or lets the write finish, then raises
    :class:`~gptclf.errors.Interrupted`.

    Args:
        settings: The merged options (see :func:`gptclf.training.settings.build_settings`).
        progress: Receives training progress and messages (default: silent).
        download_progress: Receives download progress (default: silent).
        shard: This process's place in a data-parallel job; only rank 0 writes.

    Raises:
        BadInputError: Bad settings or data (nothing written), exit code 2.
        DownloadError: Something missing could not be downloaded.
        TrainingError: The loss became NaN or infinite (nothing written).
        Interrupted: Ctrl-C or SIGTERM: a checkpoint was saved for ``--resume``.
        DiskFullError: The disk filled while writing (the checkpoint is kept for ``--resume``).
        GateError: ``--target`` could not be reached on the validation split (exit 3; the run is
            written, without a decision).
    """
    progress = progress or TrainProgress()
    # Rank 0's folder: the others could name another runs/<timestamp> a second later.
    out = shard.from_main(out_dir(settings))
    with InterruptGuard() as guard:
        settings, resume_state = _checked_settings(out, settings, progress.message if shard.is_main else None)
        # Every rank has looked at --out before rank 0 makes its work folder: a rank still checking
        # once it exists took it for another process's build and stopped with exit 2 (now and then).
        shard.barrier()
        plan = make_plan(settings)
        build = None
        if shard.is_main:
            build = RunBuild.open(out, force=settings.force, resume=settings.resume, note=progress.message)
            if settings.resume:
                guard.before = f"the interrupted run in {build.path} is kept for --resume"
        shard.barrier()  # rank 0 has made the work folder before the others look into it
        ctx = RunContext(settings, plan, out, work_dir(out), resume_state, guard, progress, shard)
        try:
            tokenizer_dir, weights_path = fetch_artefacts(settings, plan, download_progress, shard)
            data_dir = _data(ctx, download_progress)
            result = train_run(ctx, data_dir, tokenizer_dir, weights_path)
            if build is not None:
                build.commit()
        except BaseException as exc:
            if build is not None:
                build.close(exc)
            raise
        if build is not None:
            build.close()
        guard.check(f"stopped after the run was written completely to {out}")
        if result.unmet:  # the run is kept; the decision the user asked for could not be made
            raise GateError(f"{result.unmet}; the run was written to {out} without a decision")
        return result


def _checked_settings(
    out: Path, settings: FinetuneSettings, note: Callable[[str], None] | None = None
) -> tuple[FinetuneSettings, dict[str, Any] | None]:
    """The settings to run with: a resumed run's saved ones (and its checkpoint), or the given ones
    once ``--out`` may be written (also for a ``--resume`` that finds nothing to resume and names
    the run to make: :func:`~gptclf.training.plan.starts_afresh`, said in a note)."""
    if starts_afresh(out, settings):
        if note is not None:
            note(started_afresh_note(out))
        settings = settings.with_options({"resume": False})
    if settings.resume:
        return resumed_settings(out, settings)
    check_not_a_source(out, finetune_sources(settings))
    check_out(out, force=settings.force, resume=False)
    return settings, None


def fetch_artefacts(
    settings: FinetuneSettings, plan: RunPlan, progress: Progress | None, shard: Shard
) -> tuple[Path, Path | None]:
    """Download what the run needs and the cache lacks: the tokenizer folder, and the pretrained
    weights' file (None for ``--weights random`` or a path; a local ``--model DIR``'s own file).

    Downloads come first: they fill the cache, and a failed one leaves the run directory untouched.
    One process per machine downloads; the others wait and find the files in place.
    """
    weights = None
    with shard.main_first():
        tokenizer_dir = ensure_tokenizer(plan.home, settings.mirror, progress)
        if settings.weights == "pretrained":
            weights = base_weights(plan.model_name, plan.home, settings.mirror, progress)
    return tokenizer_dir, weights


def _data(ctx: RunContext, progress: Progress | None) -> Path:
    """The prepared folder: ``--data``, or the SMS set prepared the book's way into the work
    folder's ``data`` (by rank 0, which alone writes the run; the other ranks wait and read it)."""
    settings = ctx.settings
    if settings.data is not None:
        return Path(settings.data).expanduser().resolve()
    target = ctx.work / "data"
    with ctx.shard.main_first(per_node=False):
        if ctx.shard.is_main and not (settings.resume and target.is_dir()):
            prepare_book_sms(target, settings.classes, ctx.plan.home, settings.mirror, progress)
    return target


def prepare_book_sms(
    out: Path,
    classes: list[str] | None,
    home: Path | None,
    mirror: str | None,
    progress: Progress | None = None,
) -> None:
    """The SMS Spam Collection (downloaded when missing) prepared as chapter 6 does into ``out``:
    747/747 balanced by undersampling, a plain shuffled 70/10/20 split (1,045/149/300), seed 123.
    """
    path = ensure_sms_spam(home, mirror, progress)
    prepare(out, path, dataset="sms-spam", classes=classes, force=True, **BOOK_SMS)


def launch_finetune(
    settings: FinetuneSettings,
    devices: int,
    options: dict[str, Any],
    config: Path | None,
    timeout: float,
    as_json: bool,
) -> int:
    """Check the settings, then run ``gptclf finetune`` under torchrun on ``devices`` local
    processes, with the options given (``options``: by name, as the command line spells them).

    Returns:
        torchrun's exit code.

    Raises:
        BadInputError: Already under torchrun, or settings a data-parallel run cannot take.
    """
    if torchrun_env() is not None:
        raise BadInputError("--devices starts torchrun itself: under torchrun, use its --nproc_per_node")
    out = check_launch(settings, devices)
    args = [] if config is None else ["--config", str(config)]
    for name, value in {**options, "out": str(out)}.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            args.append(flag if value else f"--no-{name}")  # --cache/--no-cache, --force, --resume
        elif value is not None:
            args += [flag, str(value)]
    args += ["--dist-timeout", str(timeout), *(["--json"] if as_json else [])]
    return launch(devices, args)
