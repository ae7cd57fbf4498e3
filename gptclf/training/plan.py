"""Settings checked and resolved before anything is written, and the rules of the run directory.

:func:`make_plan` turns :class:`gptclf.training.settings.FinetuneSettings` into the objects a run needs
(model config, trainable scope, device, precision, sizes), collecting every problem into one
message. :func:`resumed_settings` says with which settings an interrupted run continues (whether a
run may write into its folder is :func:`gptclf.rundir.check_out`).
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gptclf.data.long_texts import LongTexts
from gptclf.device import LocalJob, Precision, resolve_device, resolve_precision
from gptclf.distributed import local_job
from gptclf.errors import BadInputError
from gptclf.model.classifier import TrainableScope, parse_scope, pooling_problems
from gptclf.model.config import GPTConfig
from gptclf.model.hfconfig import resolve_base_model
from gptclf.model.weights import weights_problems
from gptclf.rundir import check_not_a_source, check_out, nothing_to_resume, work_dir
from gptclf.rundir.layout import CHECKPOINT_NAME
from gptclf.training.checkpoints import check_world_size, load_checkpoint
from gptclf.training.settings import (
    FinetuneSettings,
    TrainConfig,
    default_cache_memory,
    parse_size,
    ram_share,
)

#: The labels of the SMS Spam Collection, the data of a run given no --data.
SMS_LABELS = frozenset({"ham", "spam"})
#: Settings a resumed run may change: where and how fast it runs, not what it computes.
RESUME_CHANGEABLE = frozenset(
    {"device", "precision", "cache", "cache_memory", "checkpoint_every", "home", "mirror", "out", "resume"}
)


@dataclass(frozen=True)
class RunPlan:
    """Settings resolved into the objects a run needs."""

    model_name: str
    config: GPTConfig
    scope: TrainableScope
    train: TrainConfig
    device: torch.device
    precision: Precision
    cache_memory: int
    max_length: int
    home: Path | None
    long_texts: LongTexts = LongTexts()  # noqa: RUF009 - frozen, so one shared default is safe
    #: RAM the caches may take instead where the spill folder lacks room (without --cache-memory).
    cache_fallback: int = 0


def attempt(problems: list[str], func: Any, *args: Any) -> Any:
    """Call ``func``; on a BadInputError note its message and return None (to report all at once)."""
    try:
        return func(*args)
    except BadInputError as exc:
        problems.append(str(exc))
        return None


def make_plan(settings: FinetuneSettings, job: LocalJob | None = None) -> RunPlan:
    """Check every setting that needs no data, and resolve it.

    Each rule is checked by the component that owns it (the training options by
    :class:`TrainConfig`, the scope by :class:`TrainableScope`, the pooling by the classifier, the
    weights by :mod:`gptclf.model.weights`, the device by :mod:`gptclf.device`); the rules here are those
    of the run itself. Every problem found is reported at once.

    Args:
        settings: The merged options.
        job: The data-parallel job to plan for (a launcher's ``LocalJob(0, N)``); default: this
            process's own, from torchrun's environment (none for a single process).

    Raises:
        BadInputError: Listing every problem found.
    """
    problems: list[str] = []
    resolved = attempt(problems, resolve_base_model, settings.model, settings.weights)
    scope = attempt(problems, parse_scope, settings.trainable, settings.lora_rank, settings.lora_alpha)
    problems += pooling_problems(settings.pooling) + settings.train.problems()
    device = attempt(problems, resolve_device, settings.device, job or local_job())
    precision = attempt(problems, resolve_precision, settings.precision, device) if device else None
    cache_memory, cache_fallback = default_cache_memory(), ram_share()
    if settings.cache_memory is not None:  # what the user asked for, exactly
        cache_memory, cache_fallback = attempt(problems, parse_size, settings.cache_memory) or 0, 0
    problems += weights_problems(settings.weights, resolved[0] if resolved else None)
    max_length = 0
    if resolved is not None:
        name, cfg = resolved
        problems += scope.problems(cfg.n_layer, cfg.n_embd) if scope else []
        max_length = cfg.n_positions if settings.max_length is None else settings.max_length
        if not 1 <= max_length <= cfg.n_positions:
            problems.append(
                f"--max-length must be in 1..{cfg.n_positions} (the model's context), got {max_length}"
            )
        else:
            problems += settings.long().problems(max_length)
    problems += _data_problems(settings)
    if problems:
        raise BadInputError("; ".join(problems))
    name, cfg = resolved
    home = Path(settings.home).expanduser() if settings.home else None
    long = settings.long().resolved(max_length)
    return RunPlan(
        name,
        cfg,
        scope,
        settings.train,
        device,
        precision,
        cache_memory,
        max_length,
        home,
        long,
        cache_fallback,
    )


def plan_problems(settings: FinetuneSettings) -> list[str]:
    """What :func:`make_plan` refuses in ``settings``, as one message in a list (empty: it plans)."""
    problems: list[str] = []
    attempt(problems, make_plan, settings)
    return problems


def data_folder_problem(data: str) -> str | None:
    """What keeps ``--data`` from being a prepared folder before it is read: absent, or a file."""
    path = Path(data).expanduser()
    if path.is_dir():
        return None
    what = "is a file, not a folder" if path.exists() else "no such folder"
    return f"--data {data}: {what} (give a folder written by `gptclf prepare`)"


def _data_problems(settings: FinetuneSettings) -> list[str]:
    """What is wrong with ``--data`` and ``--classes`` before the data is read."""
    if settings.data is not None and (problem := data_folder_problem(settings.data)):
        return [problem]
    if settings.data is None and settings.classes and set(settings.classes) != SMS_LABELS:
        return [
            f"--classes {','.join(settings.classes)}: without --data the SMS set is used, whose classes are "
            "spam and ham (in any order); pass --data DIR for other classes"
        ]
    return []


def out_dir(settings: FinetuneSettings) -> Path:
    """The run directory: ``--out``, else ``runs/<timestamp>`` (made unique).

    Raises:
        BadInputError: ``--resume`` without ``--out``: a new timestamp names no run to continue.
    """
    if settings.out:
        return Path(settings.out).expanduser().resolve()
    if settings.resume:
        raise BadInputError("--resume needs --out RUN, the run to continue (its folder)")
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    path, n = Path("runs") / stamp, 1
    while path.exists():
        n += 1
        path = Path("runs") / f"{stamp}-{n}"
    return path.resolve()


def resumed_settings(out: Path, given: FinetuneSettings) -> tuple[FinetuneSettings, dict[str, Any]]:
    """The settings and checkpoint of the interrupted run of ``out`` (in its work folder).

    Options given again must agree with the saved ones, except those in :data:`RESUME_CHANGEABLE`.

    Raises:
        BadInputError: No interrupted run (or it had finished), or options that conflict.
    """
    check_out(out, force=False, resume=True)
    path = work_dir(out) / CHECKPOINT_NAME
    if not path.is_file():  # a run interrupted by an older gptclf kept its checkpoint in --out
        path = out / CHECKPOINT_NAME
    state = load_checkpoint(path)
    record = dict(state["extra"]["settings"])
    if record.get("data") == str(out / "data"):  # older runs recorded the SMS set they prepared
        record["data"] = None
    saved = FinetuneSettings.from_dict(record)
    conflicts = []
    for name in sorted(given.given - RESUME_CHANGEABLE - {"force"}):
        value, before = given.option(name), saved.option(name)
        if name == "data" and value is not None:
            value = str(Path(value).expanduser().resolve())
        if value != before:
            conflicts.append(f"--{name.replace('_', '-')} {value} (the run used {before})")
    if conflicts:
        raise BadInputError("cannot change these on --resume: " + "; ".join(conflicts))
    changed = {name: given.option(name) for name in given.given & RESUME_CHANGEABLE}
    return saved.with_options({**changed, "out": str(out), "resume": True}, given=given.given), state


def starts_afresh(out: Path, settings: FinetuneSettings) -> bool:
    """``--resume`` with no interrupted run to continue (killed before its first checkpoint, or a
    scheduler that always passes --resume) and a command that names the run to make (options
    beyond where and how it runs): the run starts from the beginning, as predict's job does.
    ``--out RUN --resume`` alone keeps its refusal: it names no run to start."""
    return settings.resume and bool(settings.given - RESUME_CHANGEABLE - {"force"}) and nothing_to_resume(out)


def started_afresh_note(out: Path, what: str = "run") -> str:
    """The note of a ``--resume`` that :func:`starts_afresh` (``what``: a run, or tune's search)."""
    work = work_dir(out)
    saved = CHECKPOINT_NAME if what == "run" else "search"
    held = f"{work} holds no {saved}" if work.is_dir() else "none was saved"
    return f"gptclf: nothing to resume for {out} ({held}): starting the {what} from the beginning"


def check_launch(settings: FinetuneSettings, devices: int) -> Path:
    """What ``gptclf finetune --devices N`` checks before it starts N processes, so that bad input
    exits 2 with one line instead of failing N times under torchrun. Writes nothing.

    Args:
        settings: The merged options.
        devices: The number of local processes to start (>= 1, as
            :class:`gptclf.distributed.LaunchSettings` checks).

    Returns:
        The run directory, to pass on to every process (they must agree on it).

    Raises:
        BadInputError: A setting, the run directory, or a device that ``devices`` processes cannot use.
    """
    out = out_dir(settings)
    if starts_afresh(out, settings):
        settings = settings.with_options({"resume": False})
    if settings.resume:
        settings, state = resumed_settings(out, settings)
        check_world_size(state, devices)
    else:
        check_not_a_source(out, finetune_sources(settings))
        check_out(out, force=settings.force, resume=False)
    make_plan(settings, LocalJob(0, devices))  # the device as rank 0 of the job will resolve it
    return out


def finetune_sources(settings: FinetuneSettings) -> dict[str, str | None]:
    """What a finetune reads from disk, by option: ``--out`` may hold or replace none of it."""
    weights = None if settings.weights in ("pretrained", "random") else settings.weights
    return {"--data": settings.data, "--model": settings.model, "--weights": weights}
