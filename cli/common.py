"""What every command shares: one-line errors with exit codes, and stderr/stdout consoles.

Human messages and progress go to stderr; results go to stdout, so pipelines stay clean.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, ParamSpec, TextIO, TypeVar

import typer
from rich.console import Console
from typer.core import TyperCommand, TyperGroup

from cli import signals
from gptclf.errors import GptclfError, write_error

try:  # Typer >= 0.2x carries its own copy of click; older ones use click itself
    from typer._click import Context, Parameter
    from typer._click.exceptions import ClickException, UsageError
except ImportError:  # pragma: no cover - depends on the Typer installed
    from click import Context, Parameter
    from click.exceptions import ClickException, UsageError

P = ParamSpec("P")
R = TypeVar("R")

#: Messages, tables and progress for people.
err_console = Console(stderr=True, highlight=False, soft_wrap=True)
#: Results (JSON lines, CSV, tables) for whoever reads stdout.
out_console = Console(highlight=False, soft_wrap=True)


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print ``gptclf: error: <message>`` on stderr and return an Exit to raise."""
    err_console.print(f"[bold red]gptclf: error:[/] {message}", markup=True, highlight=False, soft_wrap=True)
    return typer.Exit(code)


def handle_errors(func: Callable[P, R]) -> Callable[P, R]:
    """Turn library errors into one line on stderr and their exit code, never a traceback."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            result = func(*args, **kwargs)
            sys.stdout.flush()  # here, not at the interpreter's exit: a full disk is one line too
            return result
        except GptclfError as exc:
            raise fail(_escape(str(exc)), exc.exit_code) from None
        except KeyboardInterrupt as exc:  # SIGINT, and SIGTERM (cli.signals.Terminated)
            err_console.print(f"gptclf: interrupted ({signals.name(exc)})")
            raise typer.Exit(signals.exit_code(exc)) from None
        except BrokenPipeError:  # `gptclf predict ... | head`: the reader left; that is fine
            sys.stderr.close()
            raise typer.Exit(0) from None
        except OSError as exc:  # writing the results failed (stdout on a full disk, /dev/full)
            if exc.filename is not None:
                raise  # a file of the library's: its own message names it, or it is a bug to see
            _silence_stdout()
            error = write_error(exc, "standard output")
            raise fail(_escape(str(error)), error.exit_code) from None

    return wrapper


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's last flush cannot fail once more."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


class _Diagnostics:
    """Standard error that outlives its reader: progress, notes and warnings are for a person, so
    when nobody reads them any more (``2>&1 | head -1``, a log collector that went away) they are
    dropped and the job goes on, as with a closed stderr. Results go to stdout or files, whose
    failures still end the command."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self.gone = False

    def write(self, text: str) -> int:
        if not self.gone:
            try:
                self._stream.write(text)
            except BrokenPipeError:
                self.gone = True
        return len(text)

    def flush(self) -> None:
        if not self.gone:
            try:
                self._stream.flush()
            except BrokenPipeError:
                self.gone = True

    def __getattr__(self, name: str) -> Any:  # isatty, fileno, encoding, ... as the stream's
        return getattr(self._stream, name)


def check_standard_streams(argv: Sequence[str]) -> None:
    """Give a process started with a closed stream (``>&-``, ``<&-``) one line instead of a
    traceback: a closed stdout is an error (results would be lost), a closed stdin reads as empty
    unless ``-`` asks for it, a closed stderr is /dev/null, and a stderr whose reader has gone
    drops what is written to it (:class:`_Diagnostics`)."""
    if sys.stderr is None:
        sys.stderr = open(os.devnull, "w")  # noqa: SIM115 (for the life of the process)
    elif not isinstance(sys.stderr, _Diagnostics):
        sys.stderr = _Diagnostics(sys.stderr)  # type: ignore[assignment]
    if sys.stdout is None:
        sys.stderr.write("gptclf: error: standard output is closed: redirect it to a file or /dev/null\n")
        sys.exit(2)
    if sys.stdin is None:
        if "-" in argv:
            sys.stderr.write("gptclf: error: standard input is closed, and `-` reads it: give the texts "
                             "another way\n")
            sys.exit(2)
        sys.stdin = open(os.devnull)  # noqa: SIM115 (for the life of the process)


def _escape(text: str) -> str:
    """Keep rich from reading [brackets] in user data as markup."""
    return text.replace("[", r"\[")


def _no_flag_metavar(params: Sequence[Parameter]) -> None:
    """Give flags an empty metavar: they take no value, yet Typer's help shows ``<bool>`` for them."""
    for param in params:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""


class _CommonParsing:
    """What the app and each command add to Typer's classes (a mixin, listed first).

    Flags (``--json``, ``--force``, ``--help``) get no ``<bool>`` metavar in the help, and usage
    errors raised while parsing carry the context that names the command.
    """

    params: list[Parameter]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _no_flag_metavar(self.params)

    def get_help_option(self, ctx: Context) -> Any:
        option = super().get_help_option(ctx)  # made on demand, so not among self.params
        _no_flag_metavar([option] if option is not None else [])
        return option

    def parse_args(self, ctx: Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except UsageError as exc:
            if exc.ctx is None:  # click's parser raises some (`--split` without a value) bare
                exc.ctx, exc.cmd = ctx, ctx.command
            raise


class GptclfCommand(_CommonParsing, TyperCommand):
    """The class of every command (``app.command(name, cls=GptclfCommand)``)."""


class GptclfGroup(_CommonParsing, TyperGroup):
    """The app: usage errors are one line, like every other bad input.

    A usage error (an unknown option, ``--epochs abc``, a missing argument) is raised by click
    while the command line is parsed, before any command runs, so :func:`handle_errors` cannot see
    it; Typer would draw it as a boxed panel under the usage. Here it becomes ``gptclf: error:
    <message> (see <command> --help)`` with click's exit code (2).
    """

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        """Run the app; exits with the command's code (standalone) or returns it."""
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except ClickException as exc:
            if not standalone_mode:
                raise
            if type(exc).__name__ == "NoArgsIsHelpError":  # `gptclf` alone: the help is shown
                sys.exit(exc.exit_code)
            sys.exit(_usage_error(exc))
        except typer.Abort:
            if not standalone_mode:
                raise
            sys.exit(fail("aborted", 1).exit_code)
        code = code if isinstance(code, int) else 0
        if standalone_mode:
            sys.exit(code)
        return code


def _usage_error(exc: ClickException) -> int:
    """Print a click error as one ``gptclf: error:`` line; return its exit code."""
    message = " ".join(exc.format_message().split())  # click may wrap; one line it is
    ctx = getattr(exc, "ctx", None)
    if ctx is not None and ctx.command.get_help_option(ctx) is not None:
        message += f" (see {ctx.command_path} {ctx.help_option_names[0]})"
    return fail(_escape(message), exc.exit_code).exit_code


# Options that several verbs share, declared once (each verb's own options stay in its module).
RUN_DIR = typer.Argument(..., help="Run directory written by `gptclf finetune`.")
DATA_DIR = typer.Option(
    None, "--data", help="Prepared folder to take the split from (default: the one the run recorded)."
)
