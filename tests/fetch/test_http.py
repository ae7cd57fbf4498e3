"""The HTTP client against a real HTTP server on 127.0.0.1: resume, retries, verification, progress."""

from __future__ import annotations

import ast
import hashlib
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from safetensors.torch import save

import gptclf.fetch.http
from gptclf.errors import DownloadError
from gptclf.fetch.artefacts import Placed, ensure_weights, weights_file, weights_url_path
from gptclf.fetch.http import Retry, download_file
from gptclf.model.config import GPTConfig, cache_home
from gptclf.model.gpt import build_model
from gptclf.model.weights import CONV1D_SUFFIXES
from gptclf.progress import BYTES, Progress

#: A GPT small enough that its checkpoint is a few tens of kB.
TINY = GPTConfig(vocab_size=256, n_positions=16, n_embd=16, n_layer=2, n_head=2)
#: Retries without sleeping, so failure paths stay fast.
FAST = Retry(retries=2, backoff=0.0, timeout=5.0)
WEIGHTS = "/" + weights_url_path("gpt2-small")


def tiny_checkpoint() -> bytes:
    """A checkpoint laid out as the hub's gpt2 file: no prefix, Conv1D (in, out), mask buffers."""
    tensors = {}
    for name, tensor in build_model(TINY, seed=0).state_dict().items():
        if name == "lm_head.weight":  # tied to wte; the hub's file does not hold it either
            continue
        if name.endswith(CONV1D_SUFFIXES):
            tensor = tensor.t()
        tensors[name.removeprefix("transformer.")] = tensor.contiguous().clone()
    for i in range(TINY.n_layer):
        n = TINY.n_positions
        tensors[f"h.{i}.attn.bias"] = torch.tril(torch.ones(n, n)).view(1, 1, n, n)
    return save(tensors)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class FileServer:
    """An HTTP server on 127.0.0.1 serving files by URL path, with the misbehaviours tests need.

    Attributes:
        files: URL path -> content.
        headers: URL path -> extra response headers (an ETag, ...).
        redirects: URL path -> (target path, headers of the 302), as the Hugging Face hub does.
        drop_after: URL path -> for each of the next requests, bytes to send before closing.
        fail: URL path -> statuses to answer with before serving the file.
        ignore_range: Answer Range requests with the whole file (200), as some servers do.
        requests: (URL path, Range header) of every request received.
    """

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.headers: dict[str, dict[str, str]] = {}
        self.redirects: dict[str, tuple[str, dict[str, str]]] = {}
        self.drop_after: dict[str, list[int]] = {}
        self.fail: dict[str, list[int]] = {}
        self.ignore_range = False
        self.requests: list[tuple[str, str | None]] = []
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.owner = self  # type: ignore[attr-defined]
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        # a short poll interval: shutdown() waits for it, once per test
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.01,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        srv: FileServer = self.server.owner  # type: ignore[attr-defined]
        rng = self.headers.get("Range")
        srv.requests.append((self.path, rng))
        if self.path in srv.redirects:
            target, extra = srv.redirects[self.path]
            self.send_response(302)
            self.send_header("Location", target)
            for key, value in extra.items():
                self.send_header(key, value)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if srv.fail.get(self.path):
            self.send_error(srv.fail[self.path].pop(0))
            return
        data = srv.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        start = 0
        if rng and not srv.ignore_range:
            start = int(rng.removeprefix("bytes=").rstrip("-"))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        for key, value in srv.headers.get(self.path, {}).items():
            self.send_header(key, value)
        self.end_headers()
        cuts = srv.drop_after.get(self.path)
        cut = cuts.pop(0) if cuts else None
        self.wfile.write(body if cut is None else body[:cut])  # HTTP/1.0: the socket closes after


class Recorder(Progress):
    """Keeps the events a download reports; ``ended`` is given to the ``ensure_*`` as ``placed``."""

    def __init__(self) -> None:
        self.begun: list[tuple[str, int | None, int]] = []
        self.units: set[str] = set()
        self.bytes = 0
        self.open = 0  # steps begun and not yet ended
        self.notes: list[str] = []
        self.ended: list[Placed] = []

    def begin(self, label: str, total: int | None = None, *, unit: str = "", done: int = 0) -> None:
        assert self.open == 0, "a step began while another was running"
        self.open += 1
        self.begun.append((label, total, done))
        self.units.add(unit)

    def advance(self, n: int = 1, **fields: object) -> None:
        self.bytes += n

    def end(self) -> None:
        self.open -= 1

    def message(self, text: str) -> None:
        self.notes.append(text)


@pytest.fixture
def server() -> Iterator[FileServer]:
    srv = FileServer()
    yield srv
    srv.close()


@pytest.fixture(scope="module")
def checkpoint() -> bytes:
    return tiny_checkpoint()


def dead_url() -> str:
    """A URL on a local port nobody listens on: connections are refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def cached_weights() -> Path:
    return weights_file("gpt2-small")


def cached_part() -> Path:
    return cached_weights().with_name("model.safetensors.part")


# --- weights over HTTP ------------------------------------------------------------------------


def test_clean_download_lands_in_the_cache(
    server: FileServer, checkpoint: bytes, isolated_home: Path
) -> None:
    server.files[WEIGHTS] = checkpoint
    progress = Recorder()
    path = ensure_weights(
        "gpt2-small", progress=progress, config=TINY, hosts=[server.url], retry=FAST, placed=progress.ended
    )
    assert path == isolated_home / "models" / "gpt2-small" / "model.safetensors"
    assert path.read_bytes() == checkpoint
    assert not path.with_name("model.safetensors.part").exists()
    assert server.requests == [(WEIGHTS, None)]
    assert progress.begun == [("gpt2-small weights", len(checkpoint), 0)]
    assert progress.bytes == len(checkpoint)
    assert progress.ended == [("gpt2-small weights", path, True)]


def test_second_call_fetches_nothing(server: FileServer, checkpoint: bytes) -> None:
    server.files[WEIGHTS] = checkpoint
    path = ensure_weights("gpt2-small", config=TINY, hosts=[server.url], retry=FAST)
    progress = Recorder()
    again = ensure_weights(
        "124M", progress=progress, config=TINY, hosts=[server.url], retry=FAST, placed=progress.ended
    )
    assert again == path
    assert len(server.requests) == 1  # the second call never contacted the host
    assert progress.ended == [("gpt2-small weights", path, False)]
    assert download_file([f"{server.url}{WEIGHTS}"], path, sha256=sha(checkpoint)) is False


def test_damaged_cached_file_is_fetched_again(server: FileServer, checkpoint: bytes) -> None:
    server.files[WEIGHTS] = checkpoint
    path = ensure_weights("gpt2-small", config=TINY, hosts=[server.url], retry=FAST)
    path.write_bytes(checkpoint[:-10])  # e.g. a disk that filled up while someone copied it in
    ensure_weights("gpt2-small", config=TINY, hosts=[server.url], retry=FAST)
    assert path.read_bytes() == checkpoint
    assert len(server.requests) == 2


def test_dropped_connection_is_resumed_with_a_range_request(server: FileServer, checkpoint: bytes) -> None:
    half = len(checkpoint) // 2
    server.files[WEIGHTS] = checkpoint
    server.drop_after[WEIGHTS] = [half]
    progress = Recorder()
    path = ensure_weights("gpt2-small", progress=progress, config=TINY, hosts=[server.url], retry=FAST)
    assert path.read_bytes() == checkpoint
    assert server.requests == [(WEIGHTS, None), (WEIGHTS, f"bytes={half}-")]
    assert progress.begun[1][2] == half  # the second attempt started where the first one stopped
    assert progress.bytes == len(checkpoint)  # no byte was fetched twice
    assert any("retrying" in note for note in progress.notes)


def test_a_flaky_link_that_keeps_moving_forward_still_finishes(server: FileServer, checkpoint: bytes) -> None:
    server.files[WEIGHTS] = checkpoint
    server.drop_after[WEIGHTS] = [1000, 1000, 1000]
    one_retry = Retry(retries=1, backoff=0.0, timeout=5.0)
    path = ensure_weights("gpt2-small", config=TINY, hosts=[server.url], retry=one_retry)
    assert path.read_bytes() == checkpoint
    assert [rng for _, rng in server.requests] == [None, "bytes=1000-", "bytes=2000-", "bytes=3000-"]


def test_an_interrupted_run_is_resumed_by_the_next_run(server: FileServer, checkpoint: bytes) -> None:
    half = len(checkpoint) // 2
    server.files[WEIGHTS] = checkpoint
    server.drop_after[WEIGHTS] = [half]
    no_retry = Retry(retries=0, backoff=0.0, timeout=5.0)
    with pytest.raises(DownloadError, match="connection closed after"):
        ensure_weights("gpt2-small", config=TINY, hosts=[server.url], retry=no_retry)
    part = cached_part()
    assert part.stat().st_size == half  # kept for the next run
    path = ensure_weights("gpt2-small", config=TINY, hosts=[server.url], retry=no_retry)
    assert path.read_bytes() == checkpoint
    assert server.requests[-1] == (WEIGHTS, f"bytes={half}-")
    assert not part.exists()


def test_host_that_ignores_range_restarts_from_zero(server: FileServer, checkpoint: bytes) -> None:
    server.files[WEIGHTS] = checkpoint
    server.ignore_range = True
    part = cached_part()
    part.parent.mkdir(parents=True)
    stale = b"stale bytes from another file"
    part.write_bytes(stale)
    path = ensure_weights("gpt2-small", config=TINY, hosts=[server.url], retry=FAST)
    assert path.read_bytes() == checkpoint
    assert server.requests == [(WEIGHTS, f"bytes={len(stale)}-")]  # asked to resume, got a 200


def test_complete_part_file_is_renamed_after_a_416(server: FileServer, checkpoint: bytes) -> None:
    server.files[WEIGHTS] = checkpoint
    part = cached_part()
    part.parent.mkdir(parents=True)
    part.write_bytes(checkpoint)  # a run that died between the last byte and the rename
    path = ensure_weights("gpt2-small", config=TINY, hosts=[server.url], retry=FAST)
    assert path.read_bytes() == checkpoint
    assert server.requests == [(WEIGHTS, f"bytes={len(checkpoint)}-")]


def test_server_errors_are_retried(server: FileServer, checkpoint: bytes) -> None:
    server.files[WEIGHTS] = checkpoint
    server.fail[WEIGHTS] = [503, 502]
    path = ensure_weights("gpt2-small", config=TINY, hosts=[server.url], retry=FAST)
    assert path.read_bytes() == checkpoint
    assert len(server.requests) == 3


def test_retries_run_out_then_the_next_host_is_tried(server: FileServer, checkpoint: bytes) -> None:
    server.files[WEIGHTS] = checkpoint
    path = ensure_weights("gpt2-small", config=TINY, hosts=[dead_url(), server.url], retry=FAST)
    assert path.read_bytes() == checkpoint


def test_404_is_one_line_naming_the_url_and_the_mirror_option(server: FileServer) -> None:
    with pytest.raises(DownloadError) as info:
        ensure_weights("gpt2-small", config=TINY, hosts=[server.url], retry=FAST)
    message = str(info.value)
    assert "\n" not in message
    assert f"{server.url}{WEIGHTS}" in message
    assert "HTTP 404" in message
    assert "--mirror" in message
    assert len(server.requests) == 1  # a 404 is not retried


def test_unreachable_hosts_are_all_named(server: FileServer) -> None:
    first, second = dead_url(), dead_url()
    with pytest.raises(DownloadError) as info:
        ensure_weights("gpt2-small", config=TINY, hosts=[first, second], retry=FAST)
    message = str(info.value)
    assert "\n" not in message
    assert f"could not download {first}{WEIGHTS}" in message
    assert f"also tried {second}{WEIGHTS}" in message
    assert "--mirror" in message


# --- verification -------------------------------------------------------------------------------


def test_checksum_mismatch_removes_the_file(server: FileServer) -> None:
    server.files["/f.bin"] = b"x" * 1000
    dest = cache_home() / "f.bin"
    with pytest.raises(DownloadError, match="sha256"):
        download_file([f"{server.url}/f.bin"], dest, sha256="0" * 64, retry=FAST)
    assert not dest.exists()
    assert not dest.with_name("f.bin.part").exists()


@pytest.mark.parametrize("good", [True, False])
def test_sha256_stated_as_etag_is_checked(server: FileServer, good: bool) -> None:
    data = b"weights" * 500
    server.files["/f.bin"] = data
    server.headers["/f.bin"] = {"ETag": f'"{sha(data if good else b"other")}"'}
    dest = cache_home() / "f.bin"
    if good:
        assert download_file([f"{server.url}/f.bin"], dest, retry=FAST) is True
        assert dest.read_bytes() == data
    else:
        with pytest.raises(DownloadError, match="sha256"):
            download_file([f"{server.url}/f.bin"], dest, retry=FAST)
        assert not dest.exists()


def test_hub_redirect_headers_verify_and_resume(server: FileServer, checkpoint: bytes) -> None:
    blob = "/cdn/blobs/abc"
    server.files[blob] = checkpoint
    linked = {"X-Linked-Etag": f'"{sha(checkpoint)}"', "X-Linked-Size": str(len(checkpoint))}
    server.redirects[WEIGHTS] = (blob, linked)
    server.drop_after[blob] = [100]
    path = ensure_weights("gpt2-small", config=TINY, hosts=[server.url], retry=FAST)
    assert path.read_bytes() == checkpoint
    # the Range header went through the redirect to the storage host
    assert server.requests == [(WEIGHTS, None), (blob, None), (WEIGHTS, "bytes=100-"), (blob, "bytes=100-")]


@pytest.mark.parametrize(
    ("header", "value", "error"),
    [("X-Linked-Etag", '"' + "ab" * 32 + '"', "sha256"), ("X-Linked-Size", "12345", "12,345")],
)
def test_hub_redirect_headers_that_disagree_refuse_the_file(
    server: FileServer, checkpoint: bytes, header: str, value: str, error: str
) -> None:
    server.files["/cdn/blob"] = checkpoint
    server.redirects[WEIGHTS] = ("/cdn/blob", {header: value})
    with pytest.raises(DownloadError, match=error):
        ensure_weights("gpt2-small", config=TINY, hosts=[server.url], retry=FAST)
    assert not cached_part().exists()
    assert not cached_weights().exists()


def test_each_transfer_is_one_step_in_bytes_ended_even_when_it_breaks(
    server: FileServer, checkpoint: bytes
) -> None:
    half = len(checkpoint) // 2
    server.files[WEIGHTS] = checkpoint
    server.drop_after[WEIGHTS] = [half]
    progress = Recorder()  # it refuses a step that begins before the last one ended
    ensure_weights("gpt2-small", progress=progress, config=TINY, hosts=[server.url], retry=FAST)
    assert len(progress.begun) == 2 and progress.open == 0
    assert progress.units == {BYTES}
    assert any(note == f"fetched gpt2-small weights: {cached_weights()}" for note in progress.notes)


def test_the_client_knows_nothing_of_what_it_downloads() -> None:
    tree = ast.parse(Path(gptclf.fetch.http.__file__).read_text(encoding="utf-8"))
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    ours = {name for name in imported if name and name.startswith("gptclf")}
    assert ours <= {"gptclf", "gptclf.errors", "gptclf.fileio", "gptclf.progress"}, ours
