"""A real ``gptclf serve`` in a subprocess on 127.0.0.1 (a free port), and what tests ask of it."""

from __future__ import annotations

import atexit
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import REPO

_ANNOUNCE = re.compile(r"serving .* on (http://[^ ]+) \(docs")


class Server:
    """A started server: its process, base URL and the stderr lines it printed so far."""

    def __init__(self, proc: subprocess.Popen[str], url: str, lines: list[str]) -> None:
        self.proc = proc
        self.url = url
        self.lines = lines

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60, **kwargs)

    def classify(self, body: Any, **kwargs: Any) -> httpx.Response:
        with self.client() as c:
            return c.post("/v1/classify", json=body, **kwargs)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        """Send ``sig`` and wait for the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"the server did not exit within {timeout} s of signal {sig}") from None

    def metric(self, name: str, headers: dict[str, str] | None = None) -> float:
        """The sum of a metric's samples named exactly ``name`` (any labels)."""
        with self.client(headers=headers or {}) as c:
            text = c.get("/metrics").text
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name + "{") or line.startswith(name + " "):
                total += float(line.rsplit(" ", 1)[1])
        return total


def serve_command(run: Path, *args: str) -> list[str]:
    return [
        sys.executable, "-m", "cli.main", "serve", str(run), "--port", "0", "--no-access-log",
        "--device", "cpu", "--precision", "fp32", *args,
    ]  # fmt: skip


def start(run: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 120) -> Server:
    """Start a server and wait until ``/readyz`` answers 200.

    Raises:
        AssertionError: It exited or did not get ready in time (with what it printed).
    """
    proc = subprocess.Popen(
        serve_command(run, *args),
        cwd=REPO,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    atexit.register(proc.kill)  # a test that failed half-way leaves no server behind (no-op once exited)
    lines: list[str] = []
    found = threading.Event()

    def drain() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line.rstrip("\n"))
            if _ANNOUNCE.search(line):
                found.set()

    threading.Thread(target=drain, daemon=True).start()
    deadline = time.monotonic() + timeout
    while not found.is_set():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("the server did not start:\n" + "\n".join(lines))
        time.sleep(0.05)
    url = next(m.group(1) for line in lines if (m := _ANNOUNCE.search(line)))
    server = Server(proc, url, lines)
    while True:
        try:
            if httpx.get(url + "/readyz", timeout=5).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("the server did not get ready:\n" + "\n".join(lines))
        time.sleep(0.05)


@contextmanager
def running(run: Path, *args: str, env: dict[str, str] | None = None) -> Iterator[Server]:
    """A server for the block; stopped (SIGTERM, exit 0 checked) after it."""
    server = start(run, *args, env=env)
    try:
        yield server
    finally:
        code = server.stop()
    assert code == 0, "\n".join(server.lines)
