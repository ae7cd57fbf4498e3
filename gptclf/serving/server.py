"""``gptclf serve``'s core: check everything, bind the port, run uvicorn (one process or N workers).

Order of events: the settings and the run are checked and the run is loaded (a bad RUN or option is
the CLI's one line and exit 2, before any port is bound); then the address is checked (binding
anything but a loopback address needs an API key) and the socket bound; then uvicorn serves.

SIGTERM or SIGINT: the server stops accepting connections, ``/readyz`` turns 503, every request
already accepted is finished and answered, and the process exits 0. A second SIGINT forces the exit.
With ``--workers N`` the parent binds the one socket, starts N worker processes (spawned: each loads
its own model, with ``torch``'s threads divided between them) that accept on it, restarts a worker
that dies, and on SIGTERM stops every worker the same graceful way.
"""

from __future__ import annotations

import contextlib
import gc
import ipaddress
import os
import shutil
import signal
import socket
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import uvicorn
from uvicorn.supervisors import Multiprocess

from gptclf.errors import BadInputError, Interrupted
from gptclf.serving.service import SETTINGS_ENV, ServeSettings, Service


@dataclass(frozen=True)
class Listen:
    """Where and how the server listens.

    Attributes:
        host: The address to bind (127.0.0.1 by default; others need an API key).
        port: The TCP port (0: any free port; the one bound is announced).
        workers: Server processes behind the port.
        log_level: uvicorn's log level.
        access_log: One log line per request.
    """

    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    log_level: str = "info"
    access_log: bool = True


#: Connections the kernel holds for the server before it accepts them (uvicorn's default).
BACKLOG = 2048


def is_loopback(host: str) -> bool:
    """Whether ``host`` is only reachable from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check(settings: ServeSettings, listen: Listen) -> None:
    """Refuse what cannot work, before anything is loaded or bound.

    Raises:
        BadInputError: A bad number, or a non-loopback address without ``--api-key-file``.
    """
    if problems := settings.problems():
        raise BadInputError(problems[0])
    if listen.workers < 1:
        raise BadInputError(f"--workers must be >= 1 (got {listen.workers})")
    if not 0 <= listen.port <= 65535:
        raise BadInputError(f"--port must be in 0..65535 (got {listen.port})")
    if not is_loopback(listen.host) and settings.api_key_file is None:
        raise BadInputError(
            f"--host {listen.host} is reachable from other machines: give --api-key-file FILE (a bearer "
            "token every request must send), or bind 127.0.0.1"
        )


def bind(listen: Listen) -> socket.socket:
    """The listening socket.

    Raises:
        BadInputError: The address cannot be bound (in use, not this machine's, not permitted).
    """
    family = socket.AF_INET6 if ":" in listen.host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY on accepted connections only for a socket that
    # says it is TCP; without it each keep-alive response's body waits ~40 ms for a delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((listen.host.strip("[]"), listen.port))
    except OSError as exc:
        sock.close()
        why = exc.strerror or str(exc)
        raise BadInputError(
            f"cannot listen on {listen.host}:{listen.port} ({why}): choose another --port or --host"
        ) from None
    sock.set_inheritable(True)
    # Listening from here on: a client that connects as soon as the address is announced waits in
    # the backlog until uvicorn accepts, instead of being refused.
    sock.listen(BACKLOG)
    return sock


def serve(
    settings: ServeSettings,
    listen: Listen,
    announce: Callable[[str], None],
) -> None:
    """Serve the run until SIGTERM or SIGINT, then finish the accepted requests and return.

    Args:
        settings: The run and the server's options.
        listen: Address, port and processes.
        announce: Receives the lines for people (the address once it is bound).

    Raises:
        BadInputError: A bad run, option, address or API key file (before the port is bound).
    """
    check(settings, listen)
    # Loading the run checks it and every option: a bad one fails here, before the bind. With
    # several workers each loads its own copy, so this one is only a check.
    service: Service | None = Service(settings)
    if listen.workers > 1:
        service = None
        gc.collect()
    sock = bind(listen)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    where = f"http://{shown}:{port}"
    announce(f"gptclf: serving {settings.run} on {where} (docs: {where}/docs; workers: {listen.workers})")
    # A request reads its body and waits for its results within --request-timeout each, so every
    # accepted request is answered within twice that; the graceful stop waits no longer.
    grace = 2 * settings.request_timeout + 5
    common: dict[str, Any] = {
        "log_level": listen.log_level, "access_log": listen.access_log, "backlog": BACKLOG,
        "timeout_graceful_shutdown": grace,
    }  # fmt: skip
    if service is not None:
        from gptclf.serving.app import create_app

        config = uvicorn.Config(create_app(service), **common)
        server = _Server(config)
        server.run(sockets=[sock])
        if server.force_exit:  # a second SIGINT: requests still in flight were cut off
            raise Interrupted("serve: stopped at once by a second SIGINT; requests in flight were cut", 2)
        return
    threads = max(1, (os.cpu_count() or 1) // listen.workers)
    shared = ServeSettings(**{**settings.__dict__, "threads": settings.threads or threads})
    with _multiprocess_metrics(), _environment(SETTINGS_ENV, shared.to_json()):
        config = uvicorn.Config(
            "gptclf.serving.app:app_from_environment", factory=True, workers=listen.workers, **common
        )
        Multiprocess(config, sockets=[sock]).run()
    sock.close()


class _Server(uvicorn.Server):
    """uvicorn's server, except that after a graceful shutdown on a signal it returns (exit 0)
    instead of raising the signal again."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        original = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)


@contextlib.contextmanager
def _environment(name: str, value: str) -> Iterator[None]:
    before = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


@contextlib.contextmanager
def _multiprocess_metrics() -> Iterator[None]:
    """A fresh folder for the workers' metric files (prometheus-client's multiprocess mode)."""
    folder = tempfile.mkdtemp(prefix="gptclf-serve-metrics-")
    try:
        with _environment("PROMETHEUS_MULTIPROC_DIR", folder):
            yield
    finally:
        shutil.rmtree(folder, ignore_errors=True)
