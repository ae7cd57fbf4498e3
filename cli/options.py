"""Typer commands from verb functions whose parameters are option groups.

A verb function declares each shared group as one parameter annotated with its class
(:mod:`gptclf.option_groups`); :func:`option_groups` makes the command Typer sees: each group
parameter becomes the group's options (their flags, short aliases, env vars, defaults and help, all
from the field declarations), and at call time the function gets one instance of each group,
checked by the group's rules (all problems of all groups in one line, exit 2, as ``finetune``
reports a bad value). Other parameters pass through as they are::

    @handle_errors
    @option_groups
    def calibrate(
        run: Path = RUN_DIR,
        source: Annotated[InputOptions, Use(help={"input_path": "A file to fit on"})] = InputOptions(),
        device: DeviceOptions = DeviceOptions(),
        output: OutputOptions = OutputOptions(),
    ) -> None: ...

The parameter's default, a group instance, holds the verb's defaults (``DeviceOptions(batch_size=8)``
shows and uses 8); :class:`Use` shows only some of a group's options, words a help for this verb, or
makes an option required. The names of the options of all groups and the other parameters must be
distinct: they are the parameters of one command.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, TypeVar

import typer

from gptclf.errors import BadInputError
from gptclf.options import OptionGroup, OptionSpec, dash, help_text, option_specs

R = TypeVar("R")

_KEYWORD = inspect.Parameter.KEYWORD_ONLY


@dataclass(frozen=True)
class Use:
    """How one verb shows an option group (``Annotated[DeviceOptions, Use(...)]``).

    Attributes:
        only: The options shown, by field name; the others keep the default (None: all).
        help: Field name -> the help text for this verb (without the default, which is appended).
        required: Field names this verb requires on the command line.
    """

    only: tuple[str, ...] | None = None
    help: Mapping[str, str] = field(default_factory=dict)
    required: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Group:
    """One group parameter of a verb: its instance of defaults and the options it shows."""

    name: str
    base: OptionGroup
    shown: tuple[str, ...]


def option_groups(func: Callable[..., R]) -> Callable[..., R]:
    """The command of ``func``: its group parameters expanded into options, the groups rebuilt and
    checked at call time (see the module docstring). Put it under ``@handle_errors``, which turns
    the BadInputError of a bad value into one line and exit 2.

    Raises:
        BadInputError: At call time, every problem of every group, in one line.
    """
    hints = typing.get_type_hints(func, include_extras=True)
    params: list[inspect.Parameter] = []
    groups: list[_Group] = []
    for param in inspect.signature(func).parameters.values():
        hint = hints.get(param.name, Any)
        cls, use = _group_class(hint)
        if cls is None:
            params.append(param.replace(kind=_KEYWORD, annotation=hint))
            continue
        base = param.default if isinstance(param.default, cls) else cls()
        specs = [s for s in option_specs(cls) if use.only is None or s.name in use.only]
        named = {*(use.only or ()), *use.help, *use.required}
        assert named <= {s.name for s in option_specs(cls)}, f"{param.name}: {cls.__name__} has no {named}"
        for spec in specs:
            shown = getattr(base, spec.name)
            text = help_text(use.help.get(spec.name, spec.metadata["help"]), spec.metadata, shown)
            params.append(typer_parameter(spec, shown, text, required=spec.name in use.required))
        groups.append(_Group(param.name, base, tuple(s.name for s in specs)))
    names = [p.name for p in params]
    assert len(names) == len(set(names)), f"{func.__name__}: an option name is used twice in {names}"

    @functools.wraps(func)
    def command(**kwargs: Any) -> R:
        # Every group's values are taken out first: a group may be named as another's option.
        given = [{name: kwargs.pop(name) for name in group.shown} for group in groups]
        problems: list[str] = []
        for group, values in zip(groups, given, strict=True):
            instance = dataclasses.replace(group.base, **values)  # type: ignore[type-var]
            problems += instance.problems()
            kwargs[group.name] = instance
        if problems:
            raise BadInputError("; ".join(problems))
        return func(**kwargs)

    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]  # what Typer reads
    # Typer also reads the annotations (typing.get_type_hints): the expanded ones, not the groups.
    command.__annotations__ = {p.name: p.annotation for p in params}
    return command


def _group_class(hint: Any) -> tuple[type[OptionGroup] | None, Use]:
    """``(group class, Use)`` of an annotation such as ``DeviceOptions`` or
    ``Annotated[InputOptions, Use(...)]``; ``(None, Use())`` for any other annotation."""
    use = Use()
    if typing.get_origin(hint) is Annotated:
        hint, *extras = typing.get_args(hint)
        use = next((e for e in extras if isinstance(e, Use)), use)
    if isinstance(hint, type) and issubclass(hint, OptionGroup) and dataclasses.is_dataclass(hint):
        return hint, use
    return None, use


def flags(spec: OptionSpec, default: Any) -> list[str]:
    """The spellings of an option: its long flag (``--x/--no-x`` for a flag that is on by
    default, so that it can be turned off), then its short aliases."""
    flag = spec.metadata.get("flag") or f"--{dash(spec.name)}"
    if spec.kind is bool and default is True:
        flag += f"/--no-{flag.removeprefix('--')}"
    return [flag, *spec.metadata.get("aliases", ())]


def typer_parameter(
    spec: OptionSpec, default: Any, help: str, *, not_given: bool = False, required: bool = False
) -> inspect.Parameter:
    """The Typer parameter of one declared option.

    Args:
        spec: The option.
        default: Its default on this command (as a value, and for the ``--no-`` spelling).
        help: The help text, the default shown in it (Typer's own display of it is off).
        not_given: Typer's default is None ("not given"), whatever ``default`` is: ``finetune``
            merges the given options over a config file.
        required: The command line must give it.
    """
    assert spec.kind is not list or not_given, f"--{dash(spec.name)}: a list option is finetune's alone"
    value = ... if required else None if not_given else default
    info = typer.Option(
        value,
        *flags(spec, default),
        help=help,
        rich_help_panel=spec.panel,
        envvar=spec.metadata.get("envvar"),
        metavar=spec.metadata.get("metavar"),
        show_default=False,  # the help shows it, from the field default
    )
    kind = str if spec.kind is list else spec.kind  # a list is given as one comma-separated string
    optional = spec.optional or not_given
    return inspect.Parameter(spec.name, _KEYWORD, default=info, annotation=kind | None if optional else kind)
