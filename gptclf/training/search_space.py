"""The search space of ``gptclf tune``: which finetune options a trial samples, and from what.

A space is a list of :class:`Param`: a finetune option (by its name) with a range (``low``..``high``,
log-uniform with ``log``) or a list of choices, optionally sampled only when another parameter has
a given value (``lora_rank`` only for ``trainable = "lora"``). :data:`DEFAULT_SPACE` is what a user
with a new table wants searched; ``--space FILE.toml`` replaces it, in the same terms::

    [lr]
    low = 1e-5
    high = 1e-3
    log = true

    [trainable]
    choices = ["head", "last-block", "last-blocks 2", "lora"]

    [lora_rank]
    choices = [4, 8, 16]
    when = { trainable = "lora" }

Every endpoint and choice is checked as finetune checks the option's value, so a space that names
an option finetune does not have, an empty range or a value finetune would refuse is one line and
exit 2 before anything is written. ``configs/tune-space.toml`` is the default space written out.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from gptclf.errors import BadInputError
from gptclf.model.classifier import parse_scope, pooling_problems
from gptclf.options import coerce, field_problems, option_specs
from gptclf.training.settings import FinetuneSettings, read_toml

#: Finetune options a space may search: how a model is trained, not where data, runs or devices are.
SEARCHABLE = frozenset(
    {
        "epochs", "batch_size", "grad_accum", "lr", "weight_decay", "clip_grad", "schedule", "warmup",
        "early_stop", "class_weights", "pad_to", "trainable", "lora_rank", "lora_alpha", "pooling",
        "max_length", "long_texts", "head_tokens", "stride", "aggregate",
    }
)  # fmt: skip
_SPECS = {spec.name: spec for spec in option_specs(FinetuneSettings)}
_KEYS = frozenset({"low", "high", "log", "choices", "when"})


class Suggests(Protocol):
    """What a :class:`Param` samples from (an ``optuna.Trial``)."""

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any: ...
    def suggest_int(self, name: str, low: int, high: int, *, log: bool = False) -> int: ...
    def suggest_float(self, name: str, low: float, high: float, *, log: bool = False) -> float: ...


@dataclass(frozen=True)
class Param:
    """One searched option.

    Attributes:
        name: The finetune option (underscores).
        low: The range's lowest value (None for choices).
        high: The range's highest value, included.
        log: Sample the range log-uniformly.
        choices: The values to choose among (None for a range).
        when: ``(option, value)``: sampled only when that option has that value in the trial.
    """

    name: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple[Any, ...] | None = None
    when: tuple[str, Any] | None = None

    def sample(self, trial: Suggests) -> Any:
        """This option's value in ``trial``."""
        if self.choices is not None:
            return trial.suggest_categorical(self.name, list(self.choices))
        assert self.low is not None and self.high is not None
        if _SPECS[self.name].kind is int:
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.name, float(self.low), float(self.high), log=self.log)

    def describe(self) -> str:
        """One short phrase: ``lr log-uniform in [1e-05, 0.001]``."""
        what = (
            "one of " + ", ".join(map(str, self.choices))
            if self.choices is not None
            else f"{'log-uniform' if self.log else 'uniform'} in [{self.low:g}, {self.high:g}]"
        )
        when = f" (when {self.when[0]} = {self.when[1]})" if self.when else ""
        return f"{self.name} {what}{when}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: study.json's record of the space."""
        out: dict[str, Any] = {"name": self.name}
        if self.choices is not None:
            out["choices"] = list(self.choices)
        else:
            out.update(low=self.low, high=self.high, log=self.log)
        if self.when:
            out["when"] = {self.when[0]: self.when[1]}
        return out


#: What ``gptclf tune`` searches by default: the learning rate over two decades, the epochs around
#: the book's 5, weight decay, the trainable scope (every cut the frozen-trunk cache serves), the
#: pooling (``last-position``, the book's pad-reading one, is left out: it costs accuracy), class
#: weights and the batch size. LoRA is not in it: it trains every block, so no cache serves it, and
#: one LoRA trial costs about ten cached ones (measured: 440 s against 45 s for a last-block trial
#: at gpt2-small's depth, width 384, on the SMS split); ``configs/spaces/with-lora.toml`` adds it.
DEFAULT_SPACE: tuple[Param, ...] = (
    Param("lr", 1e-5, 1e-3, log=True),
    Param("epochs", 2, 6),
    Param("weight_decay", 0.0, 0.2),
    Param("trainable", choices=("head", "last-block", "last-blocks 2")),
    Param("pooling", choices=("last-token", "mean")),
    Param("class_weights", choices=("none", "balanced")),
    Param("batch_size", choices=(8, 16, 32)),
)


def sample(space: Sequence[Param], trial: Suggests, fixed: Mapping[str, Any]) -> dict[str, Any]:
    """The options of one trial: each parameter whose condition holds (on the values sampled before
    it or on ``fixed``, the options the user set), in the space's order."""
    values: dict[str, Any] = {}
    for param in space:
        if param.when is not None:
            option, wanted = param.when
            if values.get(option, fixed.get(option)) != wanted:
                continue
        values[param.name] = param.sample(trial)
    return values


def choices_of(space: Sequence[Param], name: str) -> tuple[Any, ...]:
    """The values the space chooses ``name`` among (empty: it does not choose it)."""
    return next((p.choices for p in space if p.name == name and p.choices), ())


def without_fixed(space: Sequence[Param], fixed: frozenset[str]) -> tuple[Param, ...]:
    """``space`` less the options the user fixed on the command line or in a config file."""
    return tuple(p for p in space if p.name not in fixed)


def load_space(path: Path) -> tuple[Param, ...]:
    """Read ``--space FILE.toml``: one table per searched option.

    Raises:
        BadInputError: The file is missing or not TOML; a key that is not a finetune option or one
            that cannot be searched; an empty range or no choices; a value finetune refuses. Every
            problem is named in one line.
    """
    path = Path(path)
    raw = read_toml(path, "--space")
    problems: list[str] = []
    space = [p for key, table in raw.items() if (p := _param(key, table, problems)) is not None]
    problems += _condition_problems(space)
    if not space and not problems:
        problems.append("it searches nothing: add a table per option, e.g. [lr] low = 1e-5 high = 1e-3")
    if problems:
        raise BadInputError(f"--space {path}: " + "; ".join(problems))
    return tuple(space)


def _param(key: str, table: Any, problems: list[str]) -> Param | None:
    """The parameter of one table of a space file (None, with its problems noted, if it is bad)."""
    name = key.replace("-", "_")
    if name not in _SPECS:
        problems.append(f"{key} is not a finetune option (see `gptclf finetune --help`)")
        return None
    if name not in SEARCHABLE:
        problems.append(f"{key} cannot be searched (searchable: {', '.join(sorted(SEARCHABLE))})")
        return None
    if not isinstance(table, dict):
        problems.append(f"{key} must be a table with low and high, or choices (got {table!r})")
        return None
    n = len(problems)
    if unknown := sorted(set(table) - _KEYS):
        problems.append(
            f"[{key}] has unknown keys {', '.join(unknown)} (keys: low, high, log, choices, when)"
        )
    when = _when(key, table.get("when"), problems)
    if "choices" in table:
        if {"low", "high", "log"} & table.keys():
            problems.append(f"[{key}] gives both choices and a range: give one")
        choices = table["choices"]
        if not isinstance(choices, list) or not choices:
            problems.append(f"[{key}] choices must be a non-empty list")
            return None
        values = tuple(_value(key, name, c, problems) for c in choices)
        return None if len(problems) > n else Param(name, choices=values, when=when)
    if "low" not in table or "high" not in table:
        problems.append(f"[{key}] needs low and high, or choices")
        return None
    low, high = (_value(key, name, table[k], problems) for k in ("low", "high"))
    log = table.get("log", False)
    if not isinstance(log, bool):
        problems.append(f"[{key}] log must be true or false")
    if len(problems) > n:
        return None
    if not isinstance(low, int | float) or isinstance(low, bool) or not isinstance(high, int | float):
        problems.append(f"[{key}] is not a number option: give choices")
    elif low > high:
        problems.append(f"[{key}] is an empty range (low {low:g} > high {high:g})")
    elif log and low <= 0:
        problems.append(f"[{key}] log = true needs low > 0 (got {low:g})")
    return None if len(problems) > n else Param(name, low, high, log=log, when=when)


def _value(key: str, name: str, value: Any, problems: list[str]) -> Any:
    """``value`` for the option ``name``, checked as finetune checks it (a problem is noted)."""
    coerced, problem = coerce(_SPECS[name], value)
    if problem:
        problems.append(f"[{key}] {problem}")
        return value
    settings = FinetuneSettings().with_options({name: coerced})
    found = [*field_problems(settings), *field_problems(settings.train), *settings.train.problems()]
    if name == "trainable":
        try:
            parse_scope(coerced)
        except BadInputError as exc:
            found.append(str(exc))
    if name == "pooling":
        found += pooling_problems(coerced)
    if isinstance(coerced, float) and not math.isfinite(coerced):
        found.append(f"{coerced} is not finite")
    if found:  # the first check that refuses it says why (the later ones say it again in other words)
        problems.append(f"[{key}] {found[0]}")
    return coerced


def _when(key: str, when: Any, problems: list[str]) -> tuple[str, Any] | None:
    """A table's ``when = { option = value }``."""
    if when is None:
        return None
    if not isinstance(when, dict) or len(when) != 1:
        problems.append(
            f'[{key}] when must name one option and its value, e.g. when = {{ trainable = "lora" }}'
        )
        return None
    ((option, value),) = when.items()
    return option.replace("-", "_"), value


def _condition_problems(space: Sequence[Param]) -> list[str]:
    """Conditions that name no earlier parameter, or a value it never takes."""
    problems = []
    before: dict[str, Param] = {}
    for p in space:
        if p.when is not None:
            option, value = p.when
            other = before.get(option)
            if other is None:
                problems.append(f"[{p.name}] when names {option}, which is not searched before it")
            elif other.choices is not None and value not in other.choices:
                problems.append(f"[{p.name}] when {option} = {value!r}, which is not one of its choices")
        before[p.name] = p
    return problems
