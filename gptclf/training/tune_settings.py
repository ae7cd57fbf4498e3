"""Settings of ``gptclf tune``: the search's own options, the checks that need no data, and the
record a resumed search reads back.

The fixed settings of every trial are finetune's (:class:`gptclf.training.settings.FinetuneSettings`);
:class:`TuneOptions` declares what only the search has. :func:`check_settings` finds every problem
that needs no data at once (one line, exit 2, nothing written); :func:`save_settings` writes the
searched space and data fingerprint into the work folder when the study starts, and
:func:`checked_out` reads them back on ``--resume``, refusing what may not change.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gptclf.errors import BadInputError
from gptclf.fileio import atomic_write_json
from gptclf.options import field_problems, option
from gptclf.rundir import check_not_a_source, check_out, work_dir
from gptclf.rundir.layout import TUNE_DIR
from gptclf.training.plan import (
    RESUME_CHANGEABLE,
    finetune_sources,
    plan_problems,
    started_afresh_note,
    starts_afresh,
)
from gptclf.training.search_space import DEFAULT_SPACE, Param, choices_of, load_space, without_fixed
from gptclf.training.settings import FinetuneSettings

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


#: What a resumed search may change: how long it runs and where, not what it searches.
_TUNE_RESUMABLE = frozenset({"trials", "timeout"})
#: Options only a LoRA scope reads.
_LORA_OPTIONS = frozenset({"lora_rank", "lora_alpha"})


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


def checked_out(out: Path, settings: TuneSettings, note: Callable[[str], None] | None = None) -> TuneSettings:
    """The settings to search with (a resumed search's saved ones), once ``--out`` may be written.

    A ``--resume`` that finds no search to continue (killed before it saved its settings) and
    names the search to run (``--data`` and the rest) starts it, said in ``note``, as finetune does
    (:func:`~gptclf.training.plan.starts_afresh`)."""
    fs = settings.finetune
    if fs.resume and not (work_dir(out) / TUNE_DIR / _SETTINGS_FILE).is_file() and starts_afresh(out, fs):
        if note is not None:
            note(started_afresh_note(out, "search"))
        settings = dataclasses.replace(settings, finetune=fs.with_options({"resume": False}))
    if settings.finetune.resume:
        return _resumed(out, settings)
    check_not_a_source(out, finetune_sources(settings.finetune))
    check_out(out, force=settings.finetune.force, resume=False)
    return settings


def check_settings(settings: TuneSettings) -> tuple[tuple[Param, ...], float | None]:
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
        problems += _lora_problems(fs, without_fixed(space, fs.given))
        problems += _model_problems(fs, without_fixed(space, fs.given))
    if problems:
        raise BadInputError("; ".join(problems))
    searched = without_fixed(space, fs.given)
    if not searched:
        raise BadInputError("every option of the search space is fixed: nothing is left to search")
    return searched, timeout


def _lora_problems(fs: FinetuneSettings, space: tuple[Param, ...]) -> list[str]:
    """LoRA's options searched where no trial trains LoRA: every value would train the same
    model (finetune only warns of a flag it ignores; a search would spend its trials on it)."""
    trainables = choices_of(space, "trainable")
    if "lora" in trainables or (not trainables and fs.trainable.strip() == "lora"):
        return []
    names = [p.name for p in space if p.name in _LORA_OPTIONS]
    if not names:
        return []
    shown = " and ".join(n.replace("_", "-") for n in names)
    return [
        f"--space searches {shown}, which only --trainable lora reads, but no trial trains LoRA "
        f"(trainable {'one of ' + ', '.join(map(str, trainables)) if trainables else fs.trainable}): "
        "add lora to [trainable] choices with "
        f'when = {{ trainable = "lora" }}, or drop {shown}'
    ]


def _model_problems(fs: FinetuneSettings, space: tuple[Param, ...]) -> list[str]:
    """The space's values this model cannot take (``--max-length`` over its context, more blocks
    than it has, a LoRA rank over its width), each checked with the fixed settings as a finetune
    plan checks it: they would be trials that all fail. A value sampled only ``when`` another
    option has some value is checked with that value; LoRA's own options with LoRA, where the
    space can choose it."""
    problems = []
    trainables = choices_of(space, "trainable")
    for param in space:
        context: dict[str, Any] = {}
        if param.when is not None:
            context = dict([param.when])
        elif param.name in _LORA_OPTIONS and "lora" in trainables:
            context = {"trainable": "lora"}
        values = param.choices if param.choices is not None else (param.low, param.high)
        for value in values:
            found = plan_problems(fs.with_options({**context, param.name: value}))
            problems += [f"--space: {param.name} = {value!r}: {p}" for p in found]
    return list(dict.fromkeys(problems))


def save_settings(
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
        what = (
            "that run has finished"
            if done
            else f"{work_dir(out)} holds no interrupted tune search (the whole command with --resume "
            "starts it)"
        )
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

    searched = {p.name for p in space or ()}
    conflicts = [
        f"--{name.replace('_', '-')} {given.finetune.option(name)} (the study searches it)"
        if name in searched
        else f"--{name.replace('_', '-')} {given.finetune.option(name)} (the search used {fs.option(name)})"
        for name in sorted(given.finetune.given - RESUME_CHANGEABLE - {"force"})
        if name in searched or differs(name)
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
