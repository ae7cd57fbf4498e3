"""What every command shares: one-line errors with exit codes, and stderr/stdout consoles.

Human messages and progress go to stderr; results go to stdout, so pipelines stay clean.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import typer
from rich.console import Console

from gptclf.errors import GptclfError

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
            return func(*args, **kwargs)
        except GptclfError as exc:
            raise fail(_escape(str(exc)), exc.exit_code) from None
        except KeyboardInterrupt:
            err_console.print("gptclf: interrupted")
            raise typer.Exit(130) from None
        except BrokenPipeError:  # `gptclf predict ... | head`: the reader left; that is fine
            sys.stderr.close()
            raise typer.Exit(0) from None

    return wrapper


def _escape(text: str) -> str:
    """Keep rich from reading [brackets] in user data as markup."""
    return text.replace("[", r"\[")
