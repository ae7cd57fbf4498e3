"""``gptclf serve RUN``: the run behind HTTP, texts of concurrent requests batched together.

The core is :mod:`gptclf.serving` (FastAPI on uvicorn, the ``serve`` extra); this module parses the
options and prints the one line that says where the server listens. Endpoints, limits and exit
codes are in :mod:`gptclf.serving.app` and :mod:`gptclf.serving.server`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli.common import err_console, handle_errors
from cli.options import Use, option_groups
from gptclf.errors import BadInputError
from gptclf.option_groups import DecisionOptions, DeviceOptions, LongTextOptions

#: ``--batch-size``'s default (gptclf.serving.service.PASS_SIZE, not imported: serve's extra may be absent).
PASS_SIZE = 64

_DEVICE = Use(
    help={
        "batch_size": "Most texts per forward pass: a gathered batch is sorted by length and cut into "
        "passes of at most this many, a pass ending where padding would pass 25% of its tokens"
    }
)
_LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


@handle_errors
@option_groups
def serve(
    run: Path = typer.Argument(
        ..., help="Run directory written by `gptclf finetune`, or a folder of `gptclf export --format onnx`."
    ),
    host: str = typer.Option(
        "127.0.0.1", "--host", help="Address to bind; any but a loopback address needs --api-key-file."
    ),
    port: int = typer.Option(8000, "--port", help="TCP port (0: any free port, announced on stderr)."),
    engine: str | None = typer.Option(
        None, "--engine", help="torch or onnx (ONNX Runtime, CPU); default: torch, onnx for an export folder."
    ),
    quantize: str = typer.Option("none", "--quantize", help="none or int8 (dynamic int8, CPU, fp32)."),
    device: Annotated[DeviceOptions, _DEVICE] = DeviceOptions(batch_size=PASS_SIZE),
    max_batch_size: int = typer.Option(
        64, "--max-batch-size", help="Most texts gathered into one batch across requests."
    ),
    max_wait_ms: float = typer.Option(
        5.0, "--max-wait-ms", help="Most time a batch waits for more texts after its first."
    ),
    max_queue: int = typer.Option(
        4096, "--max-queue", help="Most texts waiting for a batch; beyond it requests get 503."
    ),
    max_texts: int = typer.Option(1024, "--max-texts", help="Most texts in one request (413 beyond)."),
    max_body_bytes: int = typer.Option(
        1 << 20, "--max-body-bytes", help="Largest request body in bytes (413 beyond)."
    ),
    max_windows: int | None = typer.Option(
        None,
        "--max-windows",
        help="With --long-texts window: most windows one request's texts may take (413 beyond).",
        show_default="--max-texts",
    ),
    request_timeout: float = typer.Option(
        60.0, "--request-timeout", help="Seconds a request may wait for its results (504 beyond)."
    ),
    workers: int = typer.Option(
        1, "--workers", help="Server processes behind the port, each with its own model and CPU threads."
    ),
    api_key_file: Path | None = typer.Option(
        None, "--api-key-file", help="File holding a bearer token that /v1/* and /metrics require."
    ),
    log_level: str = typer.Option("info", "--log-level", help="critical, error, warning, info or debug."),
    access_log: bool = typer.Option(True, "--access-log/--no-access-log", help="A log line per request."),
    decide: DecisionOptions = DecisionOptions(),
    long: LongTextOptions = LongTextOptions(),
) -> None:
    """Serve a run over HTTP: POST /v1/classify, GET /v1/model, /healthz, /readyz, /metrics, /docs."""
    if log_level not in _LOG_LEVELS:
        raise BadInputError(f"unknown --log-level {log_level!r}: use one of {', '.join(_LOG_LEVELS)}")
    try:
        from gptclf.serving.server import Listen, serve
        from gptclf.serving.service import ServeSettings
    except ImportError as exc:
        raise BadInputError(
            f"serve needs the serve extra ({exc.name} is missing): pip install 'gptclf[serve]'"
        ) from None
    settings = ServeSettings(
        run=str(run), engine=engine, quantize=quantize, device=device, decide=decide, long=long,
        max_batch_size=max_batch_size, max_wait_ms=max_wait_ms, max_queue=max_queue, max_texts=max_texts,
        max_body_bytes=max_body_bytes, max_windows=max_windows, request_timeout=request_timeout,
        api_key_file=str(api_key_file) if api_key_file is not None else None,
    )  # fmt: skip
    listen = Listen(host=host, port=port, workers=workers, log_level=log_level, access_log=access_log)
    serve(settings, listen, lambda line: err_console.print(line, markup=False, soft_wrap=True))
