"""Starting and stopping the server: graceful SIGTERM/SIGINT under load, start-up refusals before the
port is bound, the API key, and several worker processes behind one port."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from gptclf.model.config import GPTConfig
from tests.conftest import REPO
from tests.finetune_helpers import tiny_classifier
from tests.inference.test_predict import make_run
from tests.serving.server_helpers import Server, running, serve_command, start

pytest.importorskip("fastapi", reason="the serve extra is not installed")
pytest.importorskip("uvicorn", reason="the serve extra is not installed")
pytestmark = pytest.mark.slow
KEY = "s3cret-token-0123456789abcdef"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run(tmp_path_factory.mktemp("serve") / "run", max_length=12)


@pytest.fixture(scope="module")
def slow_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wider model reading 64 tokens: a batch takes long enough for a queue to build."""
    cfg = GPTConfig(n_layer=4, n_head=4, n_embd=256, n_positions=64)
    model = tiny_classifier(["ham", "spam"], cfg=cfg)
    return make_run(tmp_path_factory.mktemp("slow") / "run", max_length=64, model=model)


def refused(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run ``gptclf serve`` expecting it to stop at once: (exit code, stderr)."""
    proc = subprocess.run(
        [sys.executable, "-m", "cli.main", "serve", *args],
        cwd=REPO,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )
    return proc.returncode, proc.stderr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_under_load_answers_every_accepted_request_and_exits_0(slow_run: Path, sig: int) -> None:
    """200 requests in flight, the signal once the queue holds many of them: every request the
    server accepted is answered with its result, none twice; the rest are refused; exit 0."""
    server = start(slow_run, "--max-batch-size", "4", "--max-wait-ms", "1", "--max-texts", "4")
    texts = [f"request {i} " + "word " * 50 for i in range(200)]
    answers: list[httpx.Response | Exception] = []

    async def one(c: httpx.AsyncClient, i: int) -> httpx.Response | Exception:
        try:
            return await c.post("/v1/classify", json={"texts": [texts[i]], "ids": [i]})
        except httpx.TransportError as exc:  # refused: never accepted
            return exc

    async def load() -> None:
        limits = httpx.Limits(max_connections=200)
        async with httpx.AsyncClient(base_url=server.url, timeout=120, limits=limits) as c:
            answers.extend(await asyncio.gather(*(one(c, i) for i in range(200))))

    thread = threading.Thread(target=lambda: asyncio.run(load()))
    thread.start()
    deadline = time.monotonic() + 60
    queued = 0.0
    while queued < 40:  # watch the queue, not the clock
        assert time.monotonic() < deadline, "the queue never built up"
        queued = server.metric("gptclf_queue_depth_texts")
    code = server.stop(sig)
    thread.join(120)
    assert code == 0, "\n".join(server.lines)
    answered = [a for a in answers if isinstance(a, httpx.Response)]
    assert len(answers) == 200
    assert len(answered) >= queued  # at least every text that was waiting when the signal came
    for a in answered:
        assert a.status_code in (200, 503), a.text
        if a.status_code == 200:
            (record,) = a.json()["results"]
            assert record["text"] == texts[record["id"]]
    assert sum(a.status_code == 200 for a in answered) >= queued
    assert not any("Traceback" in line for line in server.lines), "\n".join(server.lines)


def test_a_bad_run_is_one_line_and_exit_2_before_the_port_is_bound(tmp_path: Path) -> None:
    port = free_port()
    code, err = refused(str(tmp_path / "nothing"), "--port", str(port))
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    not_a_run = tmp_path / "folder"
    not_a_run.mkdir()
    code, err = refused(str(not_a_run), "--port", str(port))
    assert code == 2 and "run" in err and "Traceback" not in err, err
    with socket.socket() as s:  # nothing held the port
        s.bind(("127.0.0.1", port))


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--max-batch-size", "0"], "--max-batch-size must be >= 1"),
        (["--max-texts", "5000"], "--max-texts (5000) must be at most --max-queue"),
        (["--max-wait-ms", "-1"], "--max-wait-ms"),
        (["--max-wait-ms", "nan"], "--max-wait-ms"),
        (["--request-timeout", "inf"], "--request-timeout"),
        (["--workers", "0"], "--workers"),
        (["--quantize", "int4"], "int4"),
        (["--engine", "tpu"], "tpu"),
        (["--threshold", "2", "--positive", "spam"], "--threshold"),
        (["--log-level", "loud"], "--log-level"),
        (["--host", "0.0.0.0"], "--api-key-file"),
    ],
)
def test_bad_options_are_refused_before_the_port_is_bound(run_dir: Path, args: list[str], words: str) -> None:
    port = free_port()
    code, err = refused(str(run_dir), "--port", str(port), *args)
    assert code == 2 and words in err and "Traceback" not in err, err
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_a_port_in_use_is_one_line(run_dir: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        code, err = refused(str(run_dir), "--port", str(s.getsockname()[1]))
    assert code == 2 and "cannot listen" in err and "--port" in err, err


def test_an_api_key_guards_the_api_and_metrics_but_not_the_probes(run_dir: Path, tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(KEY + "\n")
    code, err = refused(str(run_dir), "--api-key-file", str(tmp_path / "none"), "--port", str(free_port()))
    assert code == 2 and "--api-key-file" in err, err
    (tmp_path / "short").write_text("abc\n")
    code, err = refused(str(run_dir), "--api-key-file", str(tmp_path / "short"), "--port", str(free_port()))
    assert code == 2 and "16 characters" in err, err
    with running(run_dir, "--api-key-file", str(key_file)) as s, s.client() as c:
        body = {"texts": ["hello"]}
        for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": KEY}):
            answer = c.post("/v1/classify", json=body, headers=headers)
            assert answer.status_code == 401 and answer.headers["www-authenticate"] == "Bearer"
            assert list(answer.json()) == ["error"]
        assert c.get("/metrics").status_code == 401
        assert c.get("/v1/model").status_code == 401
        good = {"authorization": f"Bearer {KEY}"}
        assert c.post("/v1/classify", json=body, headers=good).status_code == 200
        assert c.get("/metrics", headers=good).status_code == 200
        assert c.get("/healthz").status_code == 200 and c.get("/readyz").status_code == 200


def test_a_non_loopback_bind_with_a_key_serves(run_dir: Path, tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(KEY)
    with running(run_dir, "--host", "0.0.0.0", "--api-key-file", str(key_file)) as s:
        port = s.url.rsplit(":", 1)[1]
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as c:
            answer = c.post("/v1/classify", json={"texts": ["x"]}, headers={"authorization": f"Bearer {KEY}"})
            assert answer.status_code == 200


def test_workers_share_one_port_and_stop_gracefully(run_dir: Path) -> None:
    with running(run_dir, "--workers", "2") as s, s.client() as c:
        for _ in range(20):
            answer = c.post("/v1/classify", json={"texts": ["hello", "win cash"]})
            assert answer.status_code == 200 and len(answer.json()["results"]) == 2
        pids = {c.get("/v1/model").json()["pid"] for _ in range(10)}
        assert s.proc.pid not in pids  # answered by the workers, not the parent
        # Metrics add up every worker's counts.
        assert s.metric("gptclf_texts_classified_total") == 40


def test_the_command_line_shows_every_option() -> None:
    out = subprocess.run(
        [*serve_command(Path("x"))[:4], "--help"], cwd=REPO, capture_output=True, text=True, timeout=60
    ).stdout
    for flag in (
        "--host",
        "--port",
        "--max-batch-size",
        "--max-wait-ms",
        "--max-queue",
        "--workers",
        "--api-key-file",
    ):
        assert flag in out, flag


def test_a_client_that_stops_halfway_gets_408_and_cannot_hold_up_the_stop(run_dir: Path) -> None:
    server = start(run_dir, "--request-timeout", "1")
    try:
        _half_body_is_408_and_the_stop_is_prompt(server)
    finally:
        server.stop(signal.SIGKILL)


def _half_body_is_408_and_the_stop_is_prompt(server: Server) -> None:
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port))) as half:
        head = "POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n"
        half.sendall(head.encode() + b'{"texts": ["a",')
        half.settimeout(30)
        answer = ""
        while "}" not in answer and (chunk := half.recv(4096).decode()):
            answer += chunk  # the headers and the body may come in two packets
        assert answer.startswith("HTTP/1.1 408") and "did not arrive within 1 s" in answer, answer
    # Another client holds a half body while the server is told to stop: it still exits 0, promptly.
    with socket.create_connection((host, int(port))) as half:
        half.sendall(head.encode() + b'{"texts": ')
        time.sleep(0.2)
        started = time.monotonic()
        assert server.stop() == 0, "\n".join(server.lines)
        assert time.monotonic() - started < 30


def test_the_announced_address_takes_connections_at_once(run_dir: Path) -> None:
    """A client that connects as soon as the line appears is not refused: the socket listens
    before the line is printed (the helper polls /readyz; here one try, no retry)."""
    proc = subprocess.Popen(serve_command(run_dir), cwd=REPO, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            if "serving" in line:
                url = line.split(" on ", 1)[1].split(" ", 1)[0]
                break
        answer = httpx.get(url + "/healthz", timeout=60)
        assert answer.status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0


def test_a_second_sigint_stops_at_once_with_130(slow_run: Path) -> None:
    server = start(slow_run, "--max-batch-size", "2")
    texts = ["word " * 60] * 400
    thread = threading.Thread(target=lambda: _quietly(server, texts))
    thread.start()
    deadline = time.monotonic() + 60
    while server.metric("gptclf_queue_depth_texts") == 0:
        assert time.monotonic() < deadline
    server.proc.send_signal(signal.SIGINT)
    time.sleep(0.3)
    assert server.stop(signal.SIGINT) == 130
    assert any("second SIGINT" in line for line in server.lines), server.lines
    thread.join(60)


def _quietly(server: Server, texts: list[str]) -> None:
    with contextlib.suppress(httpx.HTTPError):
        server.classify({"texts": texts})
