"""Options declared as dataclass fields: one declaration gives the type, default, help and range.

A settings dataclass declares each option once, as a field made by :func:`option`: the annotation
is its type, the field default its default, the metadata its help text, help panel and the simple
rules on its value. Everything else is derived from the fields: the command line of ``gptclf
finetune`` (:mod:`cli.finetune` builds its Typer parameters from :func:`option_specs`), the
reading of TOML values (:func:`coerce`), the help text with the default shown
(:attr:`OptionSpec.help`), the range checks (:func:`field_problems`) and what run.json records
(``dataclasses.asdict``). A field whose type is itself a dataclass is a nested config: its options
are options of the outer one, under their own names (which must be unique).

The options several verbs share are declared the same way, as :class:`OptionGroup` dataclasses
(:mod:`gptclf.option_groups`); :mod:`cli.options` turns a verb function whose parameters are such
groups into its Typer command, and hands the function one checked instance of each group. A
settings class that keeps its options flat (for the keys it records) takes a group's declaration
with :func:`reuse`.
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from dataclasses import dataclass, field
from types import NoneType, UnionType
from typing import Any, Self

from gptclf.errors import BadInputError

#: The help panels of ``gptclf finetune --help``, in the order they are shown. The other verbs
#: show every option in one panel (``panel=None``).
PANELS = ("Data", "Model", "Training", "Run")
#: What :func:`option` takes besides the help text, the panel and ``default_text``.
RULES = frozenset(
    {"choices", "at_least", "above", "at_most", "probability", "envvar", "int_as_text", "flag", "aliases",
     "metavar"}
)  # fmt: skip
#: The intervals ``probability`` accepts, each as it is named in a message.
PROBABILITY_INTERVALS = ("[0, 1]", "(0, 1]", "[0, 1)", "(0, 1)")


def option(
    default: Any,
    help: str,
    panel: str | None = None,
    *,
    default_text: str | None = None,
    **rules: Any,
) -> Any:
    """A dataclass field that is an option of the command line (and of TOML config files).

    Args:
        default: The default value (None: derived at run time, described by ``default_text``).
        help: One line for ``--help``, without the default (it is appended from ``default``).
        panel: One of :data:`PANELS`, or None: the command's one panel of options.
        default_text: What to show as the default instead of ``default`` (``the context``).
        rules: Further metadata (one of :data:`RULES`). The rules on the value, checked by
            :func:`field_problems`: ``choices`` (the accepted strings, listed in the help),
            ``at_least`` (an integer's minimum), ``above`` / ``at_most`` (a float's bounds;
            without ``above`` a float must be >= 0; every float must be finite), ``probability``
            (a float in one of :data:`PROBABILITY_INTERVALS`, e.g. ``"(0, 1]"``). How it is
            given: ``envvar`` (an environment variable that sets it on the command line),
            ``flag`` (the long option when it is not ``--<name>``, e.g. ``--input`` for
            ``input_path``), ``aliases`` (short spellings, e.g. ``("-i",)``), ``metavar`` (the
            value's name in the help, e.g. ``DIR``), ``int_as_text`` (a TOML integer is read as
            text).
    """
    assert panel is None or panel in PANELS, panel
    assert rules.keys() <= RULES, sorted(rules.keys() - RULES)
    assert rules.get("probability", "[0, 1]") in PROBABILITY_INTERVALS, rules["probability"]
    metadata = {"help": help, "panel": panel, "default_text": default_text, **rules}
    return field(default=default, metadata=metadata)


def reuse(group: type, name: str, **changes: Any) -> Any:
    """The field ``name`` of the option group ``group``, declared again in another dataclass.

    For a settings class that keeps its options flat, so that the keys it records stay as they
    are (``gptclf finetune``'s device and precision are :class:`gptclf.option_groups.DeviceOptions`'
    fields): the type stays the annotation written beside it, the rest comes from the group.

    Args:
        group: A dataclass whose fields are made by :func:`option`.
        name: The field to take.
        changes: What differs here: ``default``, ``help``, ``panel``, ``default_text`` or a rule.
    """
    source = next(f for f in dataclasses.fields(group) if f.name == name)
    default = changes.pop("default", source.default)
    return field(default=default, metadata={**source.metadata, **changes})


class OptionGroup:
    """A group of options that several verbs share: a frozen dataclass of :func:`option` fields.

    :mod:`cli.options` expands a verb parameter annotated with a group into the group's options,
    and hands the verb one instance, checked by :meth:`check`. A group adds its cross-option rules
    by extending :meth:`problems`.
    """

    def problems(self) -> list[str]:
        """Everything wrong with these values, as messages naming the option."""
        return field_problems(self)

    def check(self) -> Self:
        """These values, when they are right.

        Raises:
            BadInputError: Every problem of :meth:`problems`, in one line.
        """
        if problems := self.problems():
            raise BadInputError("; ".join(problems))
        return self


def dash(name: str) -> str:
    """The option spelling of a field name: ``batch_size`` -> ``batch-size``."""
    return name.replace("_", "-")


@dataclass(frozen=True)
class OptionSpec:
    """One option, derived from its field.

    Attributes:
        name: The field name (the long option with underscores).
        kind: What the value is: ``int``, ``float``, ``str``, ``bool`` or ``list`` (of strings,
            given on the command line as one comma-separated string).
        optional: Whether None is a value (``str | None``).
        default: The field default.
        help: The help text with the default shown.
        panel: The help panel.
        metadata: The field's metadata (``choices``, ``envvar``, ...).
    """

    name: str
    kind: type
    optional: bool
    default: Any
    help: str
    panel: str
    metadata: typing.Mapping[str, Any]


def option_specs(cls: type) -> list[OptionSpec]:
    """Every option of the dataclass ``cls``, nested configs' options in place of their field."""
    hints = typing.get_type_hints(cls)
    specs = []
    for f in dataclasses.fields(cls):
        kind, optional = _kind(hints[f.name])
        if isinstance(kind, type) and dataclasses.is_dataclass(kind):
            specs += option_specs(kind)
        elif "help" in f.metadata:
            specs.append(
                OptionSpec(f.name, kind, optional, f.default, _help(f), f.metadata["panel"], f.metadata)
            )
    return specs


def option_names(cls: type) -> frozenset[str]:
    """The names of :func:`option_specs`."""
    return frozenset(spec.name for spec in option_specs(cls))


def _kind(annotation: Any) -> tuple[Any, bool]:
    """``(base type, optional)`` of an annotation such as ``int | None`` or ``list[str]``."""
    optional = False
    if isinstance(annotation, UnionType) or typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not NoneType]
        optional = len(args) < len(typing.get_args(annotation))
        assert len(args) == 1, f"an option has one type besides None: {annotation}"
        annotation = args[0]
    return typing.get_origin(annotation) or annotation, optional


def _help(f: dataclasses.Field[Any]) -> str:
    """The field's help, with its choices and default appended."""
    return help_text(f.metadata["help"], f.metadata, f.default)


def help_text(text: str, metadata: typing.Mapping[str, Any], default: Any) -> str:
    """An option's help: ``text``, then its choices and its default (``default_text`` or
    ``default``, as :func:`show_value` shows it)."""
    if choices := metadata.get("choices"):
        text += f": {', '.join(choices)}"
    shown = metadata.get("default_text") or show_value(default)
    return f"{text} (default: {shown})." if shown else f"{text}."


def show_value(value: Any) -> str | None:
    """A default as the help shows it (None: nothing to show, as for an off flag)."""
    if value is None or value is False:
        return None
    if value is True:
        return "on"
    if isinstance(value, float):
        # 5e-05 -> 5e-5, 300.0 -> 300: as a user would type it.
        return re.sub(r"e([+-]?)0*(\d)", r"e\1\2", f"{value:g}")
    return str(value)


def coerce(spec: OptionSpec, value: Any) -> tuple[Any, str | None]:
    """Check one value (from TOML or a caller) against its option's type; return (value, problem).

    Integers are accepted where a float is asked for; a list of strings may also be one
    comma-separated string (as the command line gives it).
    """
    name = dash(spec.name)
    if value is None:
        return (None, None) if spec.optional else (None, f"{name} cannot be empty")
    if spec.kind is list:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            return None, f"{name} must be a list of names or a comma-separated string"
        return value, None
    is_int = isinstance(value, int) and not isinstance(value, bool)
    if spec.kind is bool:
        return (value, None) if isinstance(value, bool) else (None, f"{name} must be true or false")
    if spec.kind is int:
        return (value, None) if is_int else (None, f"{name} must be an integer (got {value!r})")
    if spec.kind is float:
        if is_int or isinstance(value, float):
            return float(value), None
        return None, f"{name} must be a number (got {value!r})"
    if is_int and spec.metadata.get("int_as_text"):
        return str(value), None
    if not isinstance(value, str):
        return None, f"{name} must be a string (got {value!r})"
    return value, None


def field_problems(obj: Any) -> list[str]:
    """What breaks the rules declared on the fields of the dataclass instance ``obj``.

    The rules: ``choices``, ``at_least`` for integers, ``probability`` for a float in an
    interval of [0, 1], and for every other float finiteness and ``above`` / ``at_most`` (see
    :func:`number_problems`). None passes: the option is not set.
    """
    hints = typing.get_type_hints(type(obj))
    out = []
    for f in dataclasses.fields(obj):
        value, meta = getattr(obj, f.name), f.metadata
        name = long_name(f.name, meta)  # as the messages name it: --<name>
        if value is None:
            continue
        if (choices := meta.get("choices")) and value not in choices:
            out.append(f"--{name} {value!r}: use one of {', '.join(choices)}")
        elif "at_least" in meta and value < meta["at_least"]:
            out.append(f"--{name} must be >= {meta['at_least']} (got {value})")
        elif "probability" in meta:
            out += probability_problems(name, value, meta["probability"])
        elif _kind(hints[f.name])[0] is float:
            out += number_problems((name, value, meta.get("above"), meta.get("at_most")))
    return out


def long_name(name: str, metadata: typing.Mapping[str, Any]) -> str:
    """The long option of a field without its ``--``: its ``flag``, else the field name dashed."""
    flag = metadata.get("flag")
    return flag.removeprefix("--") if flag else dash(name)


def number_problems(*checks: tuple[str, float | None, float | None, float | None]) -> list[str]:
    """Messages for numbers that are not finite or out of range.

    Args:
        checks: ``(name, value, above, at_most)``: the value (None: not given, fine) must be
            finite, ``> above`` (or ``>= 0`` where ``above`` is None) and ``<= at_most`` where
            that is given. NaN fails every comparison, so it is refused with the rest.
    """
    out = []
    for name, value, above, at_most in checks:
        if value is None:
            continue
        low_ok = value > above if above is not None else value >= 0
        if math.isfinite(value) and low_ok and (at_most is None or value <= at_most):
            continue
        bound = f"> {above:g}" if above is not None else ">= 0"
        bound += f" and <= {at_most:g}" if at_most is not None else " and finite"
        out.append(f"--{dash(name)} must be {bound} (got {value:g})")
    return out


def probability_problems(name: str, value: float | None, interval: str = "[0, 1]") -> list[str]:
    """A message for a probability that is not in ``interval`` (one of :data:`PROBABILITY_INTERVALS`;
    an open end leaves its bound out); none for None (not given). NaN is in no interval."""
    if value is None:
        return []
    low_ok = value > 0 if interval.startswith("(") else value >= 0
    high_ok = value < 1 if interval.endswith(")") else value <= 1
    if math.isfinite(value) and low_ok and high_ok:
        return []
    return [f"--{dash(name)} must be a probability in {interval} (got {value:g})"]
