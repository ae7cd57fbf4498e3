"""Entry point: ``gptclf <verb>``. Each verb lives in its own module and calls the library."""

from __future__ import annotations

import sys

import typer

from cli import signals
from cli.common import GptclfCommand, GptclfGroup, check_standard_streams
from gptclf import __version__

app = typer.Typer(
    cls=GptclfGroup,
    name="gptclf",
    help="Turn a pretrained GPT-2 into a text classifier: download, prepare, finetune, adapt, tune, "
    "evaluate, predict, export, import, serve.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"gptclf {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """gptclf: classification finetuning of GPT-2 from the shell."""


def _register() -> None:
    """Attach the verbs (imported here so `gptclf --help` stays fast)."""
    from cli import (
        adapt,
        calibrate,
        download,
        evaluate,
        export,
        finetune,
        importrun,
        predict,
        prepare,
        serve,
        tune,
    )

    for name, func in (
        ("download", download.download),
        ("prepare", prepare.prepare),
        ("finetune", finetune.finetune),
        ("adapt", adapt.adapt),
        ("tune", tune.tune),
        ("evaluate", evaluate.evaluate),
        ("predict", predict.predict),
        ("calibrate", calibrate.calibrate),
        ("export", export.export),
        ("import", importrun.import_),
        ("serve", serve.serve),
    ):
        app.command(name, cls=GptclfCommand)(func)


_register()


def main() -> None:
    """Console-script entry point."""
    signals.at_run_time()  # from here on a signal stops the command through its cleanup code
    check_standard_streams(sys.argv[1:])
    app()


if __name__ == "__main__":
    main()
