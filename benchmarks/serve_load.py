"""``gptclf serve`` under load: texts/s and latency for 1 to 128 concurrent clients, against the
same server without batching, a hand-written FastAPI + ``transformers.pipeline`` server, and the
offline ``gptclf predict`` as the ceiling.

One gpt2-small classifier of random weights (``common.make_run``, max length 128; speed does not
depend on what weights learnt), or the run given with ``--run``. Texts: ``--texts`` SMS messages
drawn with a fixed seed (with replacement, empty ones left out) from the SMS Spam Collection in
../shared. Arms, each a server started here (CPU, fp32) and stopped with SIGTERM:

    (a) batched   gptclf serve RUN --max-batch-size 64 --max-wait-ms 5 --no-access-log --log-level warning
    (b) batch 1   the same with --max-batch-size 1
    (c) pipeline  serve_baseline.py under uvicorn: an ``async def`` FastAPI route calling
                  ``pipeline("text-classification")`` on ``gptclf export RUN --format transformers``
                  (the route most tutorials show: one request at a time on the event loop)
    offline       gptclf predict RUN --input texts.txt --format jsonl --batch-size 64 (one process)

For every client count (``--clients``), the clients run in a closed loop, one text per request
(send, wait for the answer, send the next), for ``--duration`` seconds (texts/s and latencies from
the requests answered within it) or ``--requests`` requests each (texts/s up to the last answer).
Each server is warmed up first (``--warmup`` seconds at the largest client count, not measured),
and every client opens its connection before the clock starts. Columns: texts/s answered;
p50/p95/p99 latency seen by the client (ms); peak RSS of the server's process tree (psutil, sampled
every 0.1 s during the measurement); the mean texts per forward pass (from the server's /metrics;
gptclf serve only); the CPU cores the load generator itself used; failed requests; and the
largest difference of any probability from the offline predict's for the same text (a check of
the answers).

The offline row is the ceiling: its texts/s is that of the classify phase, start-up and model
loading left out: (wall time on N texts - wall time on 64 of them) / (N - 64), N the texts repeated
until that difference is 8 s or more (the whole command's texts/s is printed under the table); its
RSS is the process's own peak (``os.wait4``). The time of one full batch of 64 texts offline is
64 / that texts/s. Under the table: the round trip of ``GET /readyz`` on one keep-alive connection
to each idle server (about 1 ms; it was about 40 ms before serve's socket was made IPPROTO_TCP,
when answers waited for delayed ACKs).

The load generator runs in this process, on the same cores as the server (as a client on the same
host would): run it with nothing else on them, and read its cores in the table. Each client has
its own ``httpx.AsyncClient`` of one connection (``--pool per-client``, the default). ``--pool
shared`` gives all clients one AsyncClient with ``httpx.Limits(max_connections=clients)``: httpcore's
pool scans every connection for every request, so that costs the load generator about 2 ms of CPU
a request at 8 clients, 6 at 32 and 20 to 75 at 128 (per-client: about 1.5 at any count), which at
128 clients caps the load at 13 to 50 requests/s, whatever the server.
Ratios at the end, at 32 clients (the largest count measured when 32 is not), each PASS or FAIL:
(a) / offline >= 0.70, (a) / (b) >= 5, (a) / (c) >= 10, and p99 of (a) <= 3 x (one offline batch
of 64 + --max-wait-ms).

    python benchmarks/serve_load.py                                  # the table: gpt2-small, 20 s a point
    python benchmarks/serve_load.py --quick                          # 1, 8, 32 clients, 4 s a point
    python benchmarks/serve_load.py --model n_layer=2,n_head=4,n_embd=128 --clients 1,8 --quick
    python benchmarks/serve_load.py --run runs/sms --arms a,offline --requests 50
    python benchmarks/serve_load.py --arms a,b --clients 32 --serve-args '--workers 2'

Exit status: 1 when a server failed (did not start, died, answered with errors, or did not exit
cleanly on SIGTERM: gptclf serve must exit 0, uvicorn 0 or -SIGTERM). Needs the dev and serve
extras (transformers, httpx, psutil; fastapi, uvicorn) and ../shared/data.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import re
import shlex
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # this clone's gptclf, not an installed one
from common import REPO, SMS_FILE, make_home, print_table, require_shared, run_child

ARMS = {
    "a": "(a) serve, batched",
    "b": "(b) serve, batch 1",
    "c": "(c) FastAPI + pipeline",
    "offline": "offline predict",
}
#: The load generator's httpx clients: --pool value -> how the table's header says it.
POOLS = {
    "per-client": "an AsyncClient per client",
    "shared": "one AsyncClient, max_connections=clients",
}
#: The line gptclf serve prints once its port is bound.
ANNOUNCE = re.compile(r"gptclf: serving .* on (http://\S+) \(docs")
#: Seconds a server may take to stop after SIGTERM before it is killed.
STOP_TIMEOUT = 60.0
#: Seconds a server may take to load its model and answer /readyz.
START_TIMEOUT = 600.0
#: The shortest classify phase the offline row times (seconds), and the most times it repeats the texts.
OFFLINE_PHASE_S = 8.0
OFFLINE_MAX_REPEAT = 50
#: A keep-alive round trip to an idle server above this (ms) is a stall, not work.
STALL_MS = 20.0


class BenchError(Exception):
    """A server misbehaved: the message says how (the benchmark exits 1)."""


# ---------------------------------------------------------------------------------------------
# Inputs: the run, its transformers export, the texts.


def build_run(run: Path, model: str, seed: int, max_length: int) -> None:
    """The child of :func:`make_run_dir` (torch is imported there, never in this process)."""
    from common import make_run

    make_run(run, model, seed, max_length=max_length)


def make_run_dir(work: Path, model: str, seed: int, max_length: int) -> Path:
    """A run of random weights, built in a child process (this process stays small: a parent's
    peak RSS at fork is passed on to its children's ru_maxrss)."""
    run = work / "run"
    run_child([sys.executable, __file__, "--build", str(run), model, str(seed), str(max_length)])
    return run


def export_hf(run: Path, work: Path, home: Path) -> Path:
    """``gptclf export RUN --format transformers`` (the folder arm (c) loads)."""
    out = work / "hf"
    cmd = [
        sys.executable,
        "-m",
        "cli.main",
        "export",
        str(run),
        "--format",
        "transformers",
        "--out",
        str(out),
    ]
    run_child(cmd, env={"GPTCLF_HOME": str(home)})
    return out


def sample_texts(n: int, seed: int) -> list[str]:
    """``n`` SMS texts drawn with replacement (a fixed seed); empty ones are left out."""
    texts = []
    for line in SMS_FILE.read_text(encoding="utf-8").splitlines():
        text = line.split("\t", 1)[1] if "\t" in line else ""
        if text.strip():
            texts.append(text)
    rng = random.Random(seed)
    return [rng.choice(texts) for _ in range(n)]


# ---------------------------------------------------------------------------------------------
# The offline ceiling.


@dataclass
class Offline:
    """``gptclf predict`` on the texts: classify-phase texts/s, peak RSS, every text's probabilities."""

    texts_per_s: float
    whole_texts_per_s: float
    peak_rss_mb: float
    probs: list[dict[str, float]]
    repeat: int

    @property
    def batch64_s(self) -> float:
        """Seconds for one full batch of 64 texts (the classify phase's mean)."""
        return 64 / self.texts_per_s


def run_offline(run: Path, texts: list[str], work: Path, home: Path) -> Offline:
    """``gptclf predict`` on the first 64 texts (start-up and loading only), then on all of them,
    repeated until the classify phase lasts :data:`OFFLINE_PHASE_S` or more (a small model
    classifies 2,000 texts well within the noise of its start-up time)."""
    if len(texts) <= 64:
        raise SystemExit("the offline row needs more than 64 texts (--texts)")

    def predict(items: list[str], name: str) -> tuple[float, float, list[dict[str, float]]]:
        path, out = work / f"{name}.txt", work / f"{name}.jsonl"
        path.write_text("".join(t + "\n" for t in items), encoding="utf-8")
        cmd = [
            sys.executable, "-m", "cli.main", "predict", str(run), "--input", str(path),
            "--format", "jsonl", "--device", "cpu", "--precision", "fp32", "--batch-size", "64",
        ]  # fmt: skip
        child = run_child(cmd, env={"GPTCLF_HOME": str(home)}, stdout_path=out)
        records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
        if len(records) != len(items):
            raise BenchError(f"gptclf predict gave {len(records)} records for {len(items)} texts")
        return child.seconds, child.peak_rss_mb, [r["probs"] for r in records]

    base, _, _ = predict(texts[:64], "offline64")
    seconds, rss, probs = predict(texts, "offline")
    whole = len(texts) / seconds
    repeat = 1
    if seconds - base < OFFLINE_PHASE_S:
        repeat = min(OFFLINE_MAX_REPEAT, math.ceil(OFFLINE_PHASE_S / max(seconds - base, 0.05)))
    if repeat > 1:
        seconds, rss, _ = predict(texts * repeat, "offline-repeated")
    phase = (len(texts) * repeat - 64) / max(seconds - base, 1e-9)
    return Offline(phase, whole, rss, probs, repeat)


# ---------------------------------------------------------------------------------------------
# Servers.


class RssSampler:
    """The peak RSS of a process and all its descendants, sampled in a thread."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        self.proc = psutil.Process(pid)
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)

    def tree_rss(self) -> int:
        total = 0
        with contextlib.suppress(psutil.Error):
            procs = [self.proc, *self.proc.children(recursive=True)]
            for p in procs:
                with contextlib.suppress(psutil.Error):
                    total += p.memory_info().rss
        return total

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self.tree_rss())

    def __enter__(self) -> RssSampler:
        self.peak = self.tree_rss()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.tree_rss())

    @property
    def peak_mb(self) -> float:
        return self.peak / 2**20


@dataclass
class Server:
    """A started server: its process, base URL, the stderr it printed, and its exit code."""

    name: str
    proc: subprocess.Popen[str]
    clean_exits: tuple[int, ...]
    url: str = ""
    lines: list[str] = field(default_factory=list)
    returncode: int | None = None

    def tail(self, n: int = 30) -> str:
        return "".join(self.lines[-n:]).rstrip()

    def check_alive(self, when: str = "while being measured") -> None:
        if self.proc.poll() is not None:
            raise BenchError(f"{self.name} exited with {self.proc.returncode} {when}:\n{self.tail()}")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for uvicorn, which cannot announce port 0's choice)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def start_server(name: str, cmd: list[str], env: dict[str, str], url: str | None) -> Iterator[Server]:
    """Start ``cmd`` in its own session, wait until ``GET /readyz`` answers 200, stop it at the end.

    ``url`` None: read it from gptclf serve's announcement on stderr. At the end (also on an error
    or Ctrl-C) the server gets SIGTERM, then SIGKILL after :data:`STOP_TIMEOUT`; an exit code other
    than a clean one raises :class:`BenchError`.
    """
    clean = (0,) if url is None else (0, -signal.SIGTERM)
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # Ctrl-C reaches this process only; the server gets SIGTERM below
    )
    server = Server(name, proc, clean, url or "")
    announced = threading.Event()

    def read_stderr() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            server.lines.append(line)
            if not announced.is_set() and (m := ANNOUNCE.search(line)):
                server.url = m.group(1)
                announced.set()

    reader = threading.Thread(target=read_stderr, name=f"{name}-stderr", daemon=True)
    reader.start()
    try:
        wait_ready(server, announced if url is None else None)
        yield server
    finally:
        stop_server(server)
        reader.join(timeout=5)
    if server.returncode not in server.clean_exits:
        raise BenchError(f"{name} exited with {server.returncode} after SIGTERM:\n{server.tail()}")


def wait_ready(server: Server, announced: threading.Event | None) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while announced is not None and not announced.wait(0.2):
        server.check_alive("before it was ready")
        if time.monotonic() > deadline:
            raise BenchError(f"{server.name} did not announce its address in {START_TIMEOUT:.0f} s")
    with httpx.Client(base_url=server.url, timeout=10) as client:
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if client.get("/readyz").status_code == 200:
                    return
            server.check_alive("before it was ready")
            if time.monotonic() > deadline:
                raise BenchError(f"{server.name}: /readyz not 200 within {START_TIMEOUT:.0f} s")
            time.sleep(0.2)


def stop_server(server: Server) -> None:
    """SIGTERM, then SIGKILL (to the whole session) after :data:`STOP_TIMEOUT`."""
    proc = server.proc
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            server.lines.append(f"[benchmark] no exit {STOP_TIMEOUT:.0f} s after SIGTERM: SIGKILL\n")
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    server.returncode = proc.returncode


def idle_round_trip_ms(server: Server, n: int = 10) -> float:
    """The median time of ``GET /readyz`` on one keep-alive connection to the idle server.

    About 40 ms instead of about 1 means that every answer waits for a delayed ACK: the server
    writes a response in two parts and its sockets lack TCP_NODELAY (Nagle's algorithm).
    """
    times = []
    with httpx.Client(base_url=server.url, timeout=30) as client:
        client.get("/readyz")
        for _ in range(n):
            t0 = time.perf_counter()
            client.get("/readyz")
            times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def batch_metrics(server: Server) -> tuple[float, float] | None:
    """gptclf serve's (sum, count) of texts per batch from /metrics; None for the baseline."""
    try:
        text = httpx.get(server.url + "/metrics", timeout=30).text
    except httpx.HTTPError:
        return None
    values = {}
    for line in text.splitlines():
        for key in ("sum", "count"):
            if line.startswith(f"gptclf_batch_size_texts_{key} "):
                values[key] = float(line.rsplit(" ", 1)[1])
    return (values["sum"], values["count"]) if len(values) == 2 else None


# ---------------------------------------------------------------------------------------------
# The load generator.


@dataclass
class Load:
    """One measurement: answered texts/s, latencies (s) of the answered requests, failures, and the
    CPU cores this process (the load generator) used meanwhile."""

    texts_per_s: float
    latencies: list[float]
    errors: Counter[str]
    max_dprob: float | None
    client_cores: float


def http_clients(url: str, clients: int, pool: str, timeout: float) -> list[httpx.AsyncClient]:
    """One ``httpx.AsyncClient`` per simulated client (``per-client``), or one shared by all with a
    pool of ``clients`` connections (``shared``): the list has ``clients`` entries either way."""
    tls = ssl.create_default_context()  # unused (plain HTTP), but loaded once, not once per client
    if pool == "shared":
        limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
        return [httpx.AsyncClient(base_url=url, limits=limits, timeout=timeout, verify=tls)] * clients
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    return [
        httpx.AsyncClient(base_url=url, limits=limits, timeout=timeout, verify=tls) for _ in range(clients)
    ]


async def closed_loop(
    url: str,
    texts: list[str],
    clients: int,
    *,
    duration: float | None,
    requests: int | None,
    timeout: float,
    pool: str,
    expected: list[dict[str, float]] | None = None,
) -> Load:
    """``clients`` clients, each sending one text a request and the next once answered.

    Every client opens its connection first (``GET /readyz``); then the clock starts. Duration mode:
    stop sending at the deadline; what was answered by then counts. Requests mode: ``requests``
    each; texts/s up to the last answer. Client i starts at text i * len(texts) / clients.
    """
    answered: list[tuple[float, float]] = []  # (time answered, latency)
    errors: Counter[str] = Counter()
    dprob = [0.0]

    async def client_loop(client: httpx.AsyncClient, first: int, deadline: float | None) -> None:
        n = 0
        while (requests is None or n < requests) and (deadline is None or time.perf_counter() < deadline):
            index = (first + n) % len(texts)
            n += 1
            t0 = time.perf_counter()
            try:
                response = await client.post("/v1/classify", json={"texts": [texts[index]]})
            except httpx.HTTPError as exc:
                errors[type(exc).__name__] += 1
                await asyncio.sleep(0.05)  # a dead server: do not spin
                continue
            t1 = time.perf_counter()
            if response.status_code != 200:
                errors[f"HTTP {response.status_code}"] += 1
                continue
            results = response.json().get("results")
            if not (
                isinstance(results, list) and len(results) == 1 and results[0].get("text") == texts[index]
            ):
                errors["bad answer"] += 1
                continue
            if expected is not None:
                probs = results[0]["probs"]
                want = expected[index]
                if set(probs) != set(want):
                    errors["bad classes"] += 1
                    continue
                dprob[0] = max(dprob[0], *(abs(probs[k] - want[k]) for k in want))
            answered.append((t1, t1 - t0))

    sessions = http_clients(url, clients, pool, timeout)
    async with contextlib.AsyncExitStack() as stack:
        for session in {id(s): s for s in sessions}.values():
            await stack.enter_async_context(session)
        await asyncio.gather(*(session.get("/readyz") for session in sessions))
        cpu0, start = psutil.Process().cpu_times(), time.perf_counter()
        deadline = start + duration if duration is not None else None
        await asyncio.gather(
            *(client_loop(session, i * len(texts) // clients, deadline) for i, session in enumerate(sessions))
        )
        cpu1, wall = psutil.Process().cpu_times(), time.perf_counter() - start
    if deadline is not None:
        answered = [a for a in answered if a[0] <= deadline]
        elapsed = duration or 0.0
    else:
        elapsed = max((a[0] for a in answered), default=start) - start
    rate = len(answered) / elapsed if elapsed > 0 else 0.0
    cores = (cpu1.user + cpu1.system - cpu0.user - cpu0.system) / wall if wall > 0 else 0.0
    return Load(rate, [a[1] for a in answered], errors, dprob[0] if expected is not None else None, cores)


def percentile(values: list[float], q: float) -> float:
    """The nearest-rank ``q`` percentile (0 < q <= 100)."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))
    return ordered[int(rank) - 1]


# ---------------------------------------------------------------------------------------------
# One arm: a server, warmed up, measured at every client count.


@dataclass
class Point:
    arm: str
    clients: int
    load: Load
    peak_rss_mb: float
    mean_batch: float | None
    idle_rtt_ms: float

    def p(self, q: float) -> float | None:
        return percentile(self.load.latencies, q) * 1000 if self.load.latencies else None


def measure_arm(
    arm: str, server_cmd: tuple[list[str], dict[str, str], str | None], args: argparse.Namespace,
    texts: list[str], expected: list[dict[str, float]] | None,
) -> list[Point]:  # fmt: skip
    cmd, env, url = server_cmd
    points = []
    with start_server(ARMS[arm], cmd, env, url) as server:
        rtt = idle_round_trip_ms(server)
        print(
            f"{ARMS[arm]}: ready at {server.url}, idle keep-alive round trip {rtt:.1f} ms; warming up",
            file=sys.stderr,
            flush=True,
        )
        warm = asyncio.run(
            closed_loop(server.url, texts, max(args.clients), duration=args.warmup, requests=None,
                        timeout=args.timeout, pool=args.pool)
        )  # fmt: skip
        server.check_alive()
        if warm.errors:
            raise BenchError(f"{ARMS[arm]}: failures while warming up: {dict(warm.errors)}\n{server.tail()}")
        for clients in args.clients:
            before = batch_metrics(server)
            with RssSampler(server.proc.pid) as rss:
                load = asyncio.run(
                    closed_loop(server.url, texts, clients, duration=args.duration, requests=args.requests,
                                timeout=args.timeout, pool=args.pool, expected=expected)
                )  # fmt: skip
            server.check_alive()
            after = batch_metrics(server)
            mean_batch = None
            if before is not None and after is not None and after[1] > before[1]:
                mean_batch = (after[0] - before[0]) / (after[1] - before[1])
            point = Point(arm, clients, load, rss.peak_mb, mean_batch, rtt)
            points.append(point)
            p99 = point.p(99)
            print(
                f"  {clients} clients: {load.texts_per_s:.1f} texts/s, p99 "
                f"{'-' if p99 is None else f'{p99:.0f}'} ms, errors {sum(load.errors.values())}",
                file=sys.stderr,
                flush=True,
            )
    return points


def server_commands(
    args: argparse.Namespace, run: Path, hf: Path | None, home: Path
) -> dict[str, tuple[list[str], dict[str, str], str | None]]:
    """Each server arm's (command, environment, URL: None when the server announces it)."""
    serve = [
        sys.executable, "-m", "cli.main", "serve", str(run), "--host", "127.0.0.1", "--port", "0",
        "--device", "cpu", "--precision", "fp32", "--max-wait-ms", f"{args.max_wait_ms:g}",
        "--no-access-log", "--log-level", "warning", *shlex.split(args.serve_args),
    ]  # fmt: skip
    env = {"GPTCLF_HOME": str(home)}
    out: dict[str, tuple[list[str], dict[str, str], str | None]] = {
        "a": ([*serve, "--max-batch-size", str(args.max_batch_size)], env, None),
        "b": ([*serve, "--max-batch-size", "1"], env, None),
    }
    if hf is not None:
        port = free_port()
        cmd = [
            sys.executable, "-m", "uvicorn", "serve_baseline:app", "--app-dir", str(Path(__file__).parent),
            "--host", "127.0.0.1", "--port", str(port), "--no-access-log", "--log-level", "warning",
        ]  # fmt: skip
        baseline_env = {"SERVE_BASELINE_MODEL": str(hf), "SERVE_BASELINE_ROUTE": args.baseline_route}
        out["c"] = (cmd, baseline_env, f"http://127.0.0.1:{port}")
    return out


# ---------------------------------------------------------------------------------------------
# The report.


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def report(
    args: argparse.Namespace, points: list[Point], offline: Offline | None, texts: list[str]
) -> list[str]:
    """Print the table and the ratios; return the failed targets."""
    mode = f"{args.duration:g} s a point" if args.requests is None else f"{args.requests} requests a client"
    model = args.run or f"{args.model} (random weights, max length {args.max_length})"
    print(
        f"{len(texts):,} SMS texts, run {model}, "
        f"one text a request, closed loop, {mode}, warm-up {args.warmup:g} s; CPU fp32, {os.cpu_count()} "
        f"cores shared with the load generator; --max-batch-size {args.max_batch_size}, "
        f"--max-wait-ms {args.max_wait_ms:g}; (c): {args.baseline_route} def route; httpx: {POOLS[args.pool]}"
    )
    rows = []
    for pt in points:
        errors = sum(pt.load.errors.values())
        rows.append([
            ARMS[pt.arm], str(pt.clients), f"{pt.load.texts_per_s:.1f}", fmt(pt.p(50), ".1f"),
            fmt(pt.p(95), ".1f"), fmt(pt.p(99), ".1f"), f"{pt.peak_rss_mb:,.0f}", fmt(pt.mean_batch, ".1f"),
            f"{pt.load.client_cores:.2f}", str(errors) if not errors else f"{errors} {dict(pt.load.errors)}",
            fmt(pt.load.max_dprob, ".1e"),
        ])  # fmt: skip
    if offline is not None:
        rows.append([
            ARMS["offline"] + " (ceiling)", "-", f"{offline.texts_per_s:.1f}", "-", "-", "-",
            f"{offline.peak_rss_mb:,.0f}", "64", "-", "0", "-",
        ])  # fmt: skip
    headers = ["arm", "clients", "texts/s", "p50 ms", "p95 ms", "p99 ms", "peak RSS MB", "batch",
               "client cores", "errors", "max abs dp"]  # fmt: skip
    print_table(headers, rows)
    if offline is not None:
        print(
            f"offline: texts/s of the classify phase ({offline.repeat} x the texts; whole command on the "
            f"texts once: {offline.whole_texts_per_s:.1f} texts/s); one batch of 64: "
            f"{offline.batch64_s * 1000:.1f} ms"
        )
    rtts = {pt.arm: pt.idle_rtt_ms for pt in points}
    if rtts:
        print(
            "idle keep-alive GET /readyz round trip: "
            + ", ".join(f"{ARMS[arm]} {ms:.1f} ms" for arm, ms in rtts.items())
        )
        if any(ms > STALL_MS for ms in rtts.values()):
            print(
                f"  over {STALL_MS:g} ms: each answer waits for a delayed ACK (Nagle's algorithm; the "
                "server's sockets lack TCP_NODELAY), which caps a client at about 25 requests/s"
            )
    return targets(args, points, offline)


def targets(args: argparse.Namespace, points: list[Point], offline: Offline | None) -> list[str]:
    """The ratios at 32 clients (or the largest count measured), each with PASS or FAIL."""
    at = 32 if 32 in args.clients else max(args.clients)
    by_arm = {pt.arm: pt for pt in points if pt.clients == at}
    a = by_arm.get("a")
    print(f"\ntargets at {at} clients:")
    failed = []

    def line(name: str, value: float | None, goal: float, text: str, higher: bool = True) -> None:
        if value is None:
            print(f"  {name}: n/a ({text})")
            return
        ok = value >= goal if higher else value <= goal
        print(f"  {name}: {text} -> {'PASS' if ok else 'FAIL'}")
        if not ok:
            failed.append(name)

    def ratio(other: float | None, goal: float, name: str, what: str) -> None:
        if a is None or other is None or other <= 0:
            line(name, None, goal, f"needs arms a and {what}")
            return
        value = a.load.texts_per_s / other
        line(name, value, goal, f"{value:.2f} (target >= {goal:g})")

    ratio(offline.texts_per_s if offline else None, 0.70, "(a) / offline predict", "offline")
    ratio(by_arm["b"].load.texts_per_s if "b" in by_arm else None, 5, "(a) / (b)", "b")
    ratio(by_arm["c"].load.texts_per_s if "c" in by_arm else None, 10, "(a) / (c)", "c")
    p99 = a.p(99) if a is not None else None
    if p99 is None or offline is None:
        line("p99 of (a)", None, 0, "needs arms a and offline")
    else:
        bound = 3 * (offline.batch64_s * 1000 + args.max_wait_ms)
        line(
            "p99 of (a)", p99, bound,
            f"{p99:.1f} ms (target <= 3 x ({offline.batch64_s * 1000:.1f} ms + {args.max_wait_ms:g} ms) "
            f"= {bound:.1f} ms)",
            higher=False,
        )  # fmt: skip
    return failed


# ---------------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--clients", help="comma-separated client counts (default 1,8,32,128; --quick 1,8,32)"
    )
    parser.add_argument("--duration", type=float, help="seconds measured a point (default 20; --quick 4)")
    parser.add_argument("--requests", type=int, help="instead of --duration: requests each client sends")
    parser.add_argument("--warmup", type=float, help="seconds of warm-up a server (default 5; --quick 2)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 1,8,32 clients, 4 s a point")
    parser.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated, of {', '.join(ARMS)}")
    parser.add_argument("--run", type=Path, help="an existing run directory (default: random weights)")
    parser.add_argument(
        "--model", default="gpt2-small", help="preset or custom size (n_layer=2,n_head=4,...)"
    )
    parser.add_argument("--max-length", type=int, default=128, help="the random run's max length (128)")
    parser.add_argument("--texts", type=int, help="SMS texts drawn (default 2,000; --quick 500)")
    parser.add_argument("--max-batch-size", type=int, default=64, help="arm (a)'s --max-batch-size (64)")
    parser.add_argument("--max-wait-ms", type=float, default=5.0, help="arms (a), (b)'s --max-wait-ms (5)")
    parser.add_argument("--serve-args", default="", help="more gptclf serve options, e.g. '--workers 2'")
    parser.add_argument(
        "--baseline-route", choices=("async", "sync"), default="async", help="arm (c)'s route"
    )
    parser.add_argument(
        "--pool", choices=tuple(POOLS), default="per-client", help="httpx clients of the load generator"
    )
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds a request may take (300)")
    parser.add_argument("--seed", type=int, default=123)
    args = parser.parse_args()
    args.arms = [k for k in args.arms.split(",") if k]
    if unknown := set(args.arms) - set(ARMS):
        parser.error(f"unknown arms {sorted(unknown)}: use {', '.join(ARMS)}")
    try:
        args.clients = [
            int(c) for c in (args.clients or ("1,8,32" if args.quick else "1,8,32,128")).split(",")
        ]
    except ValueError:
        parser.error("--clients takes comma-separated whole numbers, e.g. 1,8,32")
    if not args.clients or min(args.clients) < 1:
        parser.error("--clients must be >= 1")
    if args.requests is not None and args.duration is not None:
        parser.error("give --duration or --requests, not both")
    if args.requests is None:
        args.duration = args.duration or (4.0 if args.quick else 20.0)
    args.warmup = args.warmup if args.warmup is not None else (2.0 if args.quick else 5.0)
    args.texts = args.texts or (500 if args.quick else 2_000)
    return args


def interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> int:
    args = parse_args()
    require_shared()
    signal.signal(signal.SIGTERM, interrupt)  # SIGTERM: stop the servers as on Ctrl-C
    texts = sample_texts(args.texts, args.seed)
    points: list[Point] = []
    offline = None
    try:
        with tempfile.TemporaryDirectory(prefix="gptclf-serve-bench-") as tmp:
            work = Path(tmp)
            home = make_home(work)
            run = args.run or make_run_dir(work, args.model, args.seed, args.max_length)
            hf = export_hf(run, work, home) if "c" in args.arms else None
            if "offline" in args.arms:
                print("offline predict ...", file=sys.stderr, flush=True)
                offline = run_offline(run, texts, work, home)
                print(f"offline predict: {offline.texts_per_s:.1f} texts/s", file=sys.stderr, flush=True)
            commands = server_commands(args, run, hf, home)
            for arm in (k for k in ("a", "b", "c") if k in args.arms):
                expected = offline.probs if offline is not None else None
                points += measure_arm(arm, commands[arm], args, texts, expected)
    except BenchError as exc:
        print(f"serve_load: {exc}", file=sys.stderr)
        if points or offline:
            report(args, points, offline, texts)
        return 1
    except KeyboardInterrupt:
        print("serve_load: interrupted (every server started was stopped)", file=sys.stderr)
        return 130
    report(args, points, offline, texts)
    if any(pt.load.errors for pt in points):
        print("serve_load: some requests failed (errors column)", file=sys.stderr)
        return 1
    return 0  # a missed target (``failed``) is a result, not a failure of the run


if __name__ == "__main__":
    if sys.argv[1:2] == ["--build"]:
        build_run(Path(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
    else:
        sys.exit(main())
