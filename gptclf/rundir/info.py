"""run.json: what it holds (:func:`build_run_info`), its one schema (:data:`RUN_SCHEMA`), and
reading it back checked against that schema (:func:`read_run_info`).

Every problem of a run.json is collected and told in one line that names each wrong key and what
it must be, so that a damaged or hand-edited file is exit 2, never a traceback further on.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import math
import platform
import re
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from gptclf.data.long_texts import AGGREGATES, MODES
from gptclf.errors import BadInputError
from gptclf.model.classifier import POOLINGS
from gptclf.model.config import GPTConfig
from gptclf.model.tokenizer import EOT_ID
from gptclf.rundir.layout import INFO_FILE, REQUIRED_FILES, RUN_FORMAT, RUN_FORMAT_VERSION
from gptclf.tasks.kinds import TASKS, task_of


def package_versions() -> dict[str, str]:
    """Versions of Python and the packages a run depends on, for run.json."""
    out = {"python": platform.python_version()}
    for name in ("gptclf", "torch", "tiktoken", "safetensors", "pandas", "numpy"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def build_run_info(
    *,
    model_name: str,
    config: GPTConfig,
    classes: list[str],
    max_length: int,
    pooling: str,
    trainable: dict[str, Any],
    trainable_params: int,
    train: dict[str, Any],
    seed: int,
    weights: str,
    data: dict[str, Any] | None = None,
    calibration: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The content of run.json (``calibration``: :meth:`gptclf.tasks.calibration.Calibration.to_dict`,
    left out when None, as for a run without validation data)."""
    info = {
        "format": RUN_FORMAT,
        "format_version": RUN_FORMAT_VERSION,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "model": {"name": model_name, "config": config.to_dict()},
        "weights": weights,
        "classes": list(classes),
        "max_length": int(max_length),
        "pad_id": EOT_ID,
        "pooling": pooling,
        "trainable": trainable,
        "trainable_params": int(trainable_params),
        "train": train,
        "seed": int(seed),
        "data": data or {},
        "versions": package_versions(),
    }
    if calibration is not None:
        info["calibration"] = calibration
    return info


#: A key of run.json that holds no value (absent): told apart from a JSON ``null``.
_ABSENT = object()

Check = Callable[[Any, dict[str, Any]], bool]


@dataclass(frozen=True)
class Rule:
    """One key of run.json: where it is, what it must be, and whether it may be absent.

    Attributes:
        key: Dotted path from the top of the file, e.g. ``model.config.n_layer``.
        must: What the value must be, for the message; ``{n_positions}`` and ``{max_length}``
            are filled in from the file.
        ok: Whether a value (and the whole file, for limits set by other keys) is right.
        required: Whether the key must be present.
        needs: Other keys this rule reads; it is skipped when one of them is wrong.
    """

    key: str
    must: str
    ok: Check
    required: bool = True
    needs: tuple[str, ...] = ()


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)  # JSON true is not a number of layers


def _is_number(v: Any) -> bool:
    return (_is_int(v) or isinstance(v, float)) and math.isfinite(v)


def _n_positions(info: dict[str, Any]) -> int:
    return info["model"]["config"].get("n_positions", GPTConfig.n_positions)


def _classes_ok(v: Any, _: dict[str, Any]) -> bool:
    # A class named twice would collapse into one key of every prediction's "probs".
    return (
        isinstance(v, list)
        and len(v) >= 2
        and all(isinstance(c, str) and c.strip() for c in v)
        and len(set(v)) == len(v)
    )


def _thresholds_ok(v: Any, info: dict[str, Any]) -> bool:
    """Per-label thresholds: a key of the run's task (multi-label), one for each class, each in [0, 1]."""
    try:
        holds = "thresholds" in task_of(info).stored_fields
    except BadInputError:  # task and multi_label disagree: reported once, below the rules
        holds = True
    return (
        holds
        and isinstance(v, dict)
        and set(v) == set(info["classes"])
        and all(
            isinstance(r, dict) and _is_number(r.get("threshold")) and 0 <= r["threshold"] <= 1
            for r in v.values()
        )
    )


def _optional(kind: str, ok: Callable[[Any], bool]) -> tuple[str, Check]:
    return f"{kind} or null", lambda v, _: v is None or ok(v)


_CONFIG_RULES = (
    *(
        Rule(f"model.config.{f.name}", "an integer >= 1", lambda v, _: _is_int(v) and v >= 1, required=False)
        for f in dataclasses.fields(GPTConfig)
        if f.type in ("int", int)
    ),
    Rule("model.config.dropout", "a number in [0, 1)", lambda v, _: _is_number(v) and 0 <= v < 1, False),
    Rule("model.config.layer_norm_epsilon", "a number > 0", lambda v, _: _is_number(v) and v > 0, False),
)
_CONFIG_KEYS = tuple(f.name for f in dataclasses.fields(GPTConfig))
#: What run.json's ``calibration`` must hold (:class:`gptclf.tasks.calibration.Calibration`).
_CALIBRATION_KEYS = (
    "method",
    "temperature",
    "val_nll_before",
    "val_nll_after",
    "val_ece_before",
    "val_ece_after",
)

#: The one schema of run.json, checked on every load. Keys not listed are allowed (and ignored).
RUN_SCHEMA: tuple[Rule, ...] = (
    Rule("format", repr(RUN_FORMAT), lambda v, _: v == RUN_FORMAT),
    Rule(
        "format_version",
        f"an integer from 1 to {RUN_FORMAT_VERSION}",
        lambda v, _: _is_int(v) and 1 <= v <= RUN_FORMAT_VERSION,
    ),
    Rule("model", "an object with the keys name and config", lambda v, _: isinstance(v, dict)),
    Rule("model.name", "a string", lambda v, _: isinstance(v, str), required=False),
    Rule(
        "model.config",
        f"an object of GPT-2 sizes with keys among {', '.join(_CONFIG_KEYS)}",
        lambda v, _: isinstance(v, dict) and set(v) <= set(_CONFIG_KEYS),
    ),
    *_CONFIG_RULES,
    Rule("classes", "a list of at least 2 distinct non-empty strings", _classes_ok),
    Rule(
        "max_length",
        "an integer from 1 to model.config.n_positions{n_positions}",
        lambda v, info: _is_int(v) and 1 <= v <= _n_positions(info),
        needs=("model.config.n_positions",),
    ),
    Rule(
        "pad_id",
        f"{EOT_ID} (<|endoftext|>, gptclf's padding)",
        lambda v, _: _is_int(v) and v == EOT_ID,
    ),
    Rule("pooling", f"one of {', '.join(POOLINGS)}", lambda v, _: isinstance(v, str) and v in POOLINGS),
    Rule("train", "an object", lambda v, _: isinstance(v, dict), required=False),
    Rule(
        "train.pad_length",
        "null or an integer from max_length{max_length} to model.config.n_positions{n_positions}",
        lambda v, info: v is None or (_is_int(v) and info["max_length"] <= v <= _n_positions(info)),
        required=False,
        needs=("max_length", "model.config.n_positions"),
    ),
    Rule("data", "an object", lambda v, _: isinstance(v, dict), required=False),
    Rule("data.dir", *_optional("a string", lambda v: isinstance(v, str)), required=False),
    Rule("data.fingerprint", *_optional("a string", lambda v: isinstance(v, str)), required=False),
    Rule(
        "weights_sha256",
        "64 lower-case hexadecimal digits",
        lambda v, _: isinstance(v, str) and re.fullmatch("[0-9a-f]{64}", v) is not None,
        required=False,
    ),
    Rule("trainable", "an object", lambda v, _: isinstance(v, dict), required=False),
    Rule("trainable_params", "an integer >= 0", lambda v, _: _is_int(v) and v >= 0, required=False),
    Rule("seed", "an integer", lambda v, _: _is_int(v), required=False),
    Rule("weights", "a string", lambda v, _: isinstance(v, str), required=False),
    Rule("versions", "an object", lambda v, _: isinstance(v, dict), required=False),
    # Absent in runs written before calibration existed or without validation data: T = 1.
    Rule(
        "calibration",
        f"an object with the keys {', '.join(_CALIBRATION_KEYS)}",
        lambda v, _: isinstance(v, dict) and set(_CALIBRATION_KEYS) <= set(v),
        required=False,
    ),
    Rule("calibration.method", "'temperature'", lambda v, _: v == "temperature", required=False),
    Rule("calibration.temperature", "a number > 0", lambda v, _: _is_number(v) and v > 0, required=False),
    *(
        Rule(f"calibration.{key}", "a number >= 0", lambda v, _: _is_number(v) and v >= 0, required=False)
        for key in _CALIBRATION_KEYS[2:]
    ),
    # Present only in runs made by `gptclf import` from a Hugging Face folder (interop's import).
    Rule("imported", "an object with the key path", lambda v, _: isinstance(v, dict) and "path" in v, False),
    Rule("imported.path", "a string", lambda v, _: isinstance(v, str), required=False),
    # Absent unless a threshold or a coverage was chosen (gptclf.tasks.decisions, calibrate or finetune).
    Rule(
        "decision",
        "an object with the keys positive, threshold, target, validation, in a run of two classes",
        lambda v, info: (
            isinstance(v, dict)
            and {"positive", "threshold", "target", "validation"} <= set(v)
            and len(info["classes"]) == 2
        ),
        required=False,
        needs=("classes",),
    ),
    Rule(
        "decision.positive",
        "one of the run's classes",
        lambda v, info: isinstance(v, str) and v in info["classes"],
        required=False,
        needs=("classes",),
    ),
    Rule("decision.threshold", "a number in [0, 1]", lambda v, _: _is_number(v) and 0 <= v <= 1, False),
    Rule("decision.target", "a string", lambda v, _: isinstance(v, str), required=False),
    Rule("decision.validation", "an object", lambda v, _: isinstance(v, dict), required=False),
    Rule(
        "abstain",
        "an object with the keys min_confidence, target, validation",
        lambda v, _: isinstance(v, dict) and {"min_confidence", "target", "validation"} <= set(v),
        required=False,
    ),
    Rule(
        "abstain.min_confidence",
        "a number in (0, 1]",
        lambda v, _: _is_number(v) and 0 < v <= 1,
        required=False,
    ),
    Rule("abstain.target", *_optional("a string", lambda v: isinstance(v, str)), required=False),
    Rule("abstain.validation", "an object", lambda v, _: isinstance(v, dict), required=False),
    # The run's task (gptclf.tasks.kinds.task_of); absent in runs from before it was recorded, which
    # mark a multi-label run with multi_label: true alone and a single-label run with nothing.
    Rule("task", f"one of {', '.join(TASKS)}", lambda v, _: v in TASKS, required=False),
    Rule("multi_label", "true or false", lambda v, _: isinstance(v, bool), required=False),
    Rule(
        "thresholds",
        "an object mapping each class to an object whose threshold is in [0, 1], in a multi-label run",
        _thresholds_ok,
        required=False,
        needs=("classes", "task", "multi_label"),
    ),
    # Absent in runs from before --long-texts: they truncate (gptclf.data.long_texts.stored_long_texts).
    Rule(
        "long_texts", "an object with the key mode", lambda v, _: isinstance(v, dict) and "mode" in v, False
    ),
    Rule("long_texts.mode", f"one of {', '.join(MODES)}", lambda v, _: v in MODES, required=False),
    Rule(
        "long_texts.head_tokens",
        "null or an integer from 0 to below max_length{max_length}",
        lambda v, info: v is None or (_is_int(v) and 0 <= v < info["max_length"]),
        required=False,
        needs=("max_length",),
    ),
    Rule(
        "long_texts.stride",
        "null or an integer from 1 to max_length{max_length}",
        lambda v, info: v is None or (_is_int(v) and 1 <= v <= info["max_length"]),
        required=False,
        needs=("max_length",),
    ),
    Rule("long_texts.aggregate", f"one of {', '.join(AGGREGATES)}", lambda v, _: v in AGGREGATES, False),
)


def _lookup(info: dict[str, Any], key: str) -> Any:
    """The value at a dotted ``key``, or :data:`_ABSENT` (parents are known to be objects)."""
    value: Any = info
    for part in key.split("."):
        value = value.get(part, _ABSENT) if isinstance(value, dict) else _ABSENT
        if value is _ABSENT:
            break
    return value


def _blocked(key: str, bad: set[str]) -> bool:
    """Whether ``key`` or one of its parents was already found wrong or absent."""
    return any(key == b or key.startswith(b + ".") for b in bad)


def _shown(value: Any) -> str:
    text = repr(value) if isinstance(value, float) else json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 40 else text[:37] + "..."


def _limits(info: dict[str, Any], bad: set[str]) -> dict[str, str]:
    """The values that ``Rule.must`` texts quote from other keys, where those are valid."""
    config = _lookup(info, "model.config")
    n = config.get("n_positions", GPTConfig.n_positions) if isinstance(config, dict) else None
    n_positions = f" ({n})" if _is_int(n) and not _blocked("model.config.n_positions", bad) else ""
    m = info.get("max_length")
    max_length = f" ({m})" if _is_int(m) and not _blocked("max_length", bad) else ""
    return {"n_positions": n_positions, "max_length": max_length}


def run_info_problems(info: Any) -> list[str]:
    """Every way ``info`` (a parsed run.json) breaks :data:`RUN_SCHEMA`, one phrase each.

    Returns:
        Phrases such as ``max_length must be an integer from 1 to ... (got 0)``; empty when valid.
    """
    if not isinstance(info, dict):
        return [f"the file must hold a JSON object (got {type(info).__name__} {_shown(info)})"]
    bad: set[str] = set()
    problems = []
    for rule in RUN_SCHEMA:
        if _blocked(rule.key, bad):  # a parent is wrong or absent: that is the problem to report
            continue
        value = _lookup(info, rule.key)
        if value is _ABSENT:
            if rule.required:
                bad.add(rule.key)
                problems.append(
                    f"{rule.key} is missing (it must be {rule.must.format_map(_limits(info, bad))})"
                )
        elif not any(_blocked(need, bad) for need in rule.needs) and not rule.ok(value, info):
            bad.add(rule.key)
            problems.append(
                f"{rule.key} must be {rule.must.format_map(_limits(info, bad))} (got {_shown(value)})"
            )
        if rule.key == "format" and bad:  # not a gptclf run.json at all: the rest would be noise
            return [f"{problems[0]}: this is not a gptclf run.json"]
    # Only when model.config, its parent and all of its keys are well typed:
    if not any(_blocked("model.config", {b}) or _blocked(b, {"model.config"}) for b in bad):
        try:  # what the types allow but GPTConfig does not (n_embd not divisible by n_head)
            GPTConfig.from_dict(info["model"]["config"])
        except BadInputError as exc:
            problems.append(f"model.config: {exc}")
    if not bad & {"task", "multi_label"}:
        try:  # the task's own keys (a multi-label run's thresholds); task and multi_label agree
            task = task_of(info)
        except BadInputError as exc:
            return [*problems, str(exc)]
        problems += [
            f"{key} is missing (a {task.name} run stores it; finetune and import write it)"
            for key in task.required_fields
            if key not in info
        ]
    return problems


def read_run_info(run_dir: Path) -> dict[str, Any]:
    """Read run.json and check it against :data:`RUN_SCHEMA` (the tokenizer is not loaded).

    Raises:
        BadInputError: Not a run directory, a file missing, or run.json malformed (one line that
            names every wrong key and what it must be).
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise BadInputError(
            f"run directory {run_dir} does not exist: pass the --out folder of `gptclf finetune`"
        )
    missing = [name for name in REQUIRED_FILES if not (run_dir / name).is_file()]
    if missing:
        raise BadInputError(
            f"{run_dir} is not a complete gptclf run (missing {', '.join(missing)}): "
            "pass the --out folder of a finished `gptclf finetune`"
        )
    path = run_dir / INFO_FILE
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BadInputError(f"{path} is not valid JSON ({exc})") from exc
    version = info.get("format_version") if isinstance(info, dict) else None
    if info_is_ours(info) and _is_int(version) and version > RUN_FORMAT_VERSION:
        # A newer layout may differ in any key: say so instead of listing its differences.
        raise BadInputError(
            f"{path}: format_version {version} is newer than this gptclf reads: upgrade gptclf"
        )
    problems = run_info_problems(info)
    if problems:
        raise BadInputError(
            f"{path}: " + "; ".join(problems) + ": restore the run.json written with this run's "
            "weights, or train the run again"
        )
    return info


def info_is_ours(info: Any) -> bool:
    """Whether a parsed run.json says it is a gptclf run (whatever its version)."""
    return isinstance(info, dict) and info.get("format") == RUN_FORMAT
