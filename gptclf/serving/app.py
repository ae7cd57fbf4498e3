"""The HTTP application: FastAPI routes over one :class:`~gptclf.serving.service.Service`.

Endpoints:

- ``POST /v1/classify``: ``{"texts": [...], "ids"?, options?}`` -> ``{"results": [record, ...]}``,
  one record per text in order, the record ``gptclf predict --format jsonl`` writes.
- ``GET /v1/model``: the run's classes, task, decision, calibration, max length and engine.
- ``GET /healthz``: the process is alive. ``GET /readyz``: the model is loaded and the server is not
  draining (503 otherwise), for a load balancer.
- ``GET /metrics``: Prometheus' text format: requests by endpoint and status, texts classified,
  request latency and batch-size histograms, queue depth.
- ``GET /docs``: the OpenAPI documentation (``/openapi.json``).

Every error is JSON ``{"error": "..."}`` in one line: no traceback and no file path reaches a
client (the server's log has the traceback of an unexpected failure). With an API key, ``/v1/*``
and ``/metrics`` need ``Authorization: Bearer <key>`` (compared in constant time; 401 otherwise);
the probes and the docs stay open. No endpoint reads or writes a file a client names.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import math
import os
import signal
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from gptclf import __version__
from gptclf.serving.batcher import BatchStats, Draining, QueueFull
from gptclf.serving.metrics import Metrics
from gptclf.serving.requests import RequestError, parse_body
from gptclf.serving.service import ServeSettings, Service

log = logging.getLogger("gptclf.serve")
#: Paths that need the API key when the server has one.
_GUARDED = ("/v1/", "/metrics")


class ClassifyBody(BaseModel):
    """``POST /v1/classify``'s body (documentation: the server reads and checks it itself)."""

    texts: list[str] = Field(description="The texts to classify (at least one; no null bytes).")
    ids: list[str | int] | None = Field(None, description="One id per text; default: the text's position.")
    threshold: float | None = Field(None, description="As predict --threshold (two classes, or every label).")
    positive: str | None = Field(None, description="As predict --positive.")
    min_confidence: float | None = Field(None, description="As predict --min-confidence: abstain below it.")
    no_calibration: bool | None = Field(None, description="As predict --no-calibration.")
    long_texts: str | None = Field(None, description="truncate, head-tail or window.")
    head_tokens: int | None = Field(None, description="head-tail: tokens kept from the start.")
    stride: int | None = Field(None, description="window: tokens between window starts.")
    aggregate: str | None = Field(None, description="window: mean or max.")


class Record(BaseModel):
    """One text's result: predict --format jsonl's record."""

    id: str | int
    text: str
    label: str | None = Field(None, description="Single-label runs: the label (null: abstained).")
    labels: list[str] | None = Field(None, description="Multi-label runs: the labels that apply.")
    probs: dict[str, float]
    abstained: bool | None = Field(None, description="Present where the run abstains.")


class ClassifyResult(BaseModel):
    results: list[Record]
    warnings: list[str] | None = Field(None, description="Options given that the mode in force ignores.")


class ErrorBody(BaseModel):
    error: str


def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """The one JSON shape of every error."""
    return JSONResponse({"error": message}, status_code=status, headers=headers)


async def read_body(request: Request, limit: int, timeout: float) -> bytes:
    """The request's body, refused (413) as soon as it passes ``limit`` bytes, and (408) when it
    has not all arrived within ``timeout`` seconds: a client that stops halfway holds nothing for long,
    and cannot hold up a graceful shutdown."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError(413, f"the body is {int(declared)} bytes; the server takes at most {limit}")

    async def read() -> bytes:
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise RequestError(413, f"the body is over {limit} bytes; the server takes at most {limit}")
        return bytes(body)

    try:
        return await asyncio.wait_for(read(), timeout)
    except TimeoutError:
        raise RequestError(408, f"the body did not arrive within {timeout:g} s (--request-timeout)") from None
    except ClientDisconnect:
        raise RequestError(400, "the client went away before its body arrived") from None


def create_app(service: Service, metrics: Metrics | None = None) -> FastAPI:
    """The application serving ``service`` (started and stopped by the app's lifespan)."""
    metrics = metrics or Metrics()
    service.stats = BatchStats(on_batch=metrics.batch_size.observe, on_queue=metrics.queue_depth.set)
    state = {"ready": False, "draining": False}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service.start()
        restore = _watch_signals(lambda: state.update(draining=True))
        state["ready"] = True
        try:
            yield
        finally:
            state["draining"] = True
            restore()
            assert service.batcher is not None
            await service.batcher.stop()

    app = FastAPI(
        title="gptclf",
        version=__version__,
        summary="A GPT-2 text classifier finetuned with gptclf",
        lifespan=lifespan,
    )

    @app.exception_handler(RequestError)
    async def _request_error(request: Request, exc: RequestError) -> JSONResponse:
        return error(exc.status, exc.message)

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
        message = {404: "no such endpoint: see /docs", 405: "method not allowed on this endpoint"}
        return error(exc.status_code, message.get(exc.status_code, str(exc.detail)), exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error(422, "the request is not valid: see /docs")

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected failure on %s", request.url.path)
        return error(500, "internal error: the server's log has the details")

    key = service.api_key.encode() if service.api_key else None

    @app.middleware("http")
    async def _guard_and_count(request: Request, call_next: Callable[[Request], Any]) -> Response:
        start = time.perf_counter()
        path = request.url.path
        if key is not None and path.startswith(_GUARDED) and not _authorized(request, key):
            response: Response = error(
                401,
                "missing or wrong API key: send Authorization: Bearer <key>",
                {"WWW-Authenticate": "Bearer"},
            )
        else:
            try:
                response = await call_next(request)
            except Exception:  # answered 500 by the handler of unexpected failures: count it too
                count(request, "500", start)
                raise
        count(request, str(response.status_code), start)
        return response

    def count(request: Request, status: str, start: float) -> None:
        endpoint = getattr(request.scope.get("route"), "path", "other")
        metrics.requests.labels(endpoint, status).inc()
        metrics.latency.labels(endpoint).observe(time.perf_counter() - start)

    @app.post(
        "/v1/classify",
        response_model=ClassifyResult,
        responses={s: {"model": ErrorBody} for s in (400, 401, 408, 413, 422, 503, 504)},
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": ClassifyBody.model_json_schema()}},
            }
        },
    )
    async def classify(request: Request) -> Response:
        """Classify texts: one record per text, in order (predict --format jsonl's records).

        Texts from concurrent requests share batches (at most --max-batch-size texts, waiting at
        most --max-wait-ms): the results do not depend on it."""
        if state["draining"]:
            return error(503, "the server is shutting down: retry on another replica", {"Retry-After": "1"})
        s = service.settings
        parsed = parse_body(await read_body(request, s.max_body_bytes, s.request_timeout), s.max_texts)
        try:
            results, warnings = await service.classify(parsed)
        except QueueFull:
            assert service.batcher is not None
            wait = max(1, math.ceil(service.batcher.queued / s.max_batch_size * 0.05))
            return error(
                503, "the server is busy (its queue is full): retry later", {"Retry-After": str(wait)}
            )
        except Draining:
            return error(503, "the server is shutting down: retry on another replica", {"Retry-After": "1"})
        except TimeoutError:
            return error(504, f"no result within {s.request_timeout:g} s (--request-timeout)")
        answer = JSONResponse({"results": results, **({"warnings": warnings} if warnings else {})})
        metrics.texts.inc(len(results))
        return answer

    @app.get("/v1/model")
    async def model() -> dict[str, Any]:
        """The run being served: classes, task, decision, calibration, max length, engine."""
        return service.model_info()

    @app.api_route("/healthz", methods=["GET", "HEAD"])
    async def healthz() -> dict[str, str]:
        """The process is alive."""
        return {"status": "ok"}

    @app.api_route("/readyz", methods=["GET", "HEAD"], responses={503: {"model": ErrorBody}})
    async def readyz() -> Response:
        """The model is loaded and the server takes requests (503 while starting or draining)."""
        if not state["ready"] or state["draining"]:
            return error(503, "draining" if state["draining"] else "starting")
        return JSONResponse({"status": "ready", "pid": os.getpid()})

    @app.get("/metrics", response_class=Response)
    async def prometheus() -> Response:
        """Prometheus' text format."""
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    return app


def _authorized(request: Request, key: bytes) -> bool:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), key)


def _watch_signals(on_signal: Callable[[], None]) -> Callable[[], None]:
    """Call ``on_signal`` on SIGTERM or SIGINT before the handler already installed (uvicorn's,
    which starts the graceful shutdown); returns what puts the old handlers back."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        prev = signal.getsignal(sig)
        previous[sig] = prev

        def handler(signum: int, frame: Any, prev: Any = prev) -> None:
            on_signal()
            if callable(prev):
                prev(signum, frame)

        signal.signal(sig, handler)

    def restore() -> None:
        for sig, prev in previous.items():
            if prev is not None:
                signal.signal(sig, prev)

    return restore


def app_from_environment() -> FastAPI:
    """The application of a ``--workers`` process: the settings the parent put in the environment."""
    from gptclf.serving.service import SETTINGS_ENV

    settings = ServeSettings.from_json(os.environ[SETTINGS_ENV])
    return create_app(Service(settings), Metrics(multiprocess="PROMETHEUS_MULTIPROC_DIR" in os.environ))
