"""``gptclf import DIR --out RUN``: a Hugging Face ``GPT2ForSequenceClassification`` folder as a run.

The run (:mod:`gptclf.interop.transformers_import`) is what ``predict`` and ``evaluate`` read, written
like every run (a work folder beside ``--out``, swapped in whole; ``--force`` as finetune's). Stdout: the run
directory (``--json``: one object with its classes and max length); messages on stderr.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from cli.common import err_console, handle_errors
from cli.options import option_groups
from gptclf.interop.transformers_import import import_run
from gptclf.option_groups import OutputOptions
from gptclf.rundir import read_run_info


@handle_errors
@option_groups
def import_(
    folder: Path = typer.Argument(..., help="A Hugging Face GPT2ForSequenceClassification folder."),
    out: Path = typer.Option(..., "--out", "-o", help="Run directory to write."),
    force: bool = typer.Option(False, "--force", help="Overwrite a non-empty run directory."),
    output: OutputOptions = OutputOptions(),
) -> None:
    """Turn a transformers GPT-2 sequence classifier into a run directory."""
    written = import_run(folder, out, force=force, note=lambda m: err_console.print(m, markup=False))
    if output.json_out:
        info = read_run_info(written)
        record = {"run": str(written), "classes": info["classes"], "max_length": info["max_length"]}
        typer.echo(json.dumps(record))
    else:
        typer.echo(str(written))
