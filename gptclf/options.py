"""Options declared as dataclass fields: one declaration gives the type, default, help and range.

A settings dataclass declares each option once, as a field made by :func:`option`: the annotation
is its type, the field default its default, the metadata its help text, help panel and the simple
rules on its value. Everything else is derived from the fields: the command line of ``gptclf
finetune`` (:mod:`cli.finetune` builds its Typer parameters from :func:`option_specs`), the
reading of TOML values (:func:`coerce`), the help text with the default shown
(:attr:`OptionSpec.help`), the range checks (:func:`field_problems`) and what run.json records
(``dataclasses.asdict``). A field whose type is itself a dataclass is a nested config: its options
are options of the outer one, under their own names (which must be unique).
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from dataclasses import dataclass, field
from types import NoneType, UnionType
from typing import Any

#: The help panels of ``gptclf finetune --help``, in the order they are shown.
PANELS = ("Data", "Model", "Training", "Run")


def option(
    default: Any,
    help: str,
    panel: str,
    *,
    default_text: str | None = None,
    **rules: Any,
) -> Any:
    """A dataclass field that is an option of the command line and of TOML config files.

    Args:
        default: The default value (None: derived at run time, described by ``default_text``).
        help: One line for ``--help``, without the default (it is appended from ``default``).
        panel: One of :data:`PANELS`.
        default_text: What to show as the default instead of ``default`` (``the context``).
        rules: Further metadata: ``choices`` (the accepted strings, listed in the help),
            ``at_least`` (an integer's minimum), ``above`` / ``at_most`` (a float's bounds;
            without ``above`` a float must be >= 0; every float must be finite), ``envvar``
            (an environment variable that sets it on the command line), ``int_as_text`` (a TOML
            integer is read as text).
    """
    assert panel in PANELS, panel
    metadata = {"help": help, "panel": panel, "default_text": default_text, **rules}
    return field(default=default, metadata=metadata)


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
        if dataclasses.is_dataclass(kind):
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
    text = f.metadata["help"]
    if choices := f.metadata.get("choices"):
        text += f": {', '.join(choices)}"
    shown = f.metadata.get("default_text") or show_value(f.default)
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

    The rules: ``choices``, ``at_least`` for integers, and for every float finiteness and
    ``above`` / ``at_most`` (see :func:`number_problems`). None passes: the option is not set.
    """
    hints = typing.get_type_hints(type(obj))
    out = []
    for f in dataclasses.fields(obj):
        value, meta = getattr(obj, f.name), f.metadata
        if value is None:
            continue
        if (choices := meta.get("choices")) and value not in choices:
            out.append(f"--{dash(f.name)} {value!r}: use one of {', '.join(choices)}")
        elif "at_least" in meta and value < meta["at_least"]:
            out.append(f"--{dash(f.name)} must be >= {meta['at_least']} (got {value})")
        elif _kind(hints[f.name])[0] is float:
            out += number_problems((f.name, value, meta.get("above"), meta.get("at_most")))
    return out


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
