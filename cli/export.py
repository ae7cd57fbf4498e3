"""``gptclf export RUN --format transformers|onnx --out DIR``: a run as a folder other tools load.

``transformers``: a ``GPT2ForSequenceClassification`` folder (:mod:`gptclf.interop.transformers_export`) that
``from_pretrained`` and ``pipeline("text-classification", ...)`` load with no extra code.
``onnx``: an ONNX model (``gptclf.engines.onnx_build``, the onnx extra), optionally int8 (``--quantize``).

Everything is checked before anything is written and the folder appears whole at the end
(:mod:`gptclf.interop.export`). Stdout: the folder's path (``--json``: one object); messages on stderr.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from cli.common import RUN_DIR, err_console, handle_errors
from cli.options import option_groups
from gptclf.interop.export import FORMATS, QUANTIZE, export_run
from gptclf.option_groups import OutputOptions


@handle_errors
@option_groups
def export(
    run: Path = RUN_DIR,
    fmt: str = typer.Option("transformers", "--format", help=f"{', '.join(FORMATS)}."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder to write (must not exist or be empty)."),
    force: bool = typer.Option(False, "--force", help="Replace a non-empty --out."),
    quantize: str = typer.Option(
        "none", "--quantize", help=f"{', '.join(QUANTIZE)} (int8 only with --format onnx)."
    ),
    output: OutputOptions = OutputOptions(),
) -> None:
    """Export a run as a transformers or ONNX folder."""
    written = export_run(
        run, out, fmt=fmt, quantize=quantize, force=force, note=lambda m: err_console.print(m, markup=False)
    )
    if output.json_out:
        typer.echo(json.dumps({"run": str(run), "format": fmt, "quantize": quantize, "out": str(written)}))
    else:
        typer.echo(str(written))
